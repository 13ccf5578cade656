import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import type { DatasetRow } from "../src/DatasetRow.ts"
import type { Environment } from "../src/Environment.ts"
import * as Episode from "../src/Episode.ts"
import { GenerationResult } from "../src/Generation.ts"
import { Inference } from "../src/Inference.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { limits, policyLayer, sampling } from "./support.ts"

const row: DatasetRow = {
  prompt: [{ role: "user", content: "Count up from 1. Say one number per turn." }],
  extra_info: { interaction_kwargs: { name: "counter" } }
}

/** Says "next" until the policy has said `goal`, paying 1 per correct number. */
const counter = (goal: number, calls: Array<string> = []): Environment => {
  let expected = 1
  return {
    reset: () => ({}),
    step: (action) => {
      calls.push(action)
      const correct = action.trim() === String(expected)
      if (correct) expected++
      return { observation: correct ? "next" : `no, say ${expected}`, reward: correct ? 1 : 0, done: expected > goal }
    }
  }
}

/** Says the next number: one more than the assistant turns in its context. */
const countingPolicy = (input: { readonly context: string }) => {
  const said = input.context.match(/<\|im_start\|>assistant\n(\d+)/g) ?? []
  return String(said.length + 1)
}

const spec = (environment: () => Environment, overrides: Partial<Episode.EpisodeSpec> = {}): Episode.EpisodeSpec => ({
  input: { id: "e1", groupId: "g1", interaction: "counter", seed: 7, limits: limits() },
  row,
  makeEnvironment: environment,
  sampling,
  sample: 0,
  envCallTimeoutMs: 5_000,
  ...overrides
})

describe("Episode.run", () => {
  it.effect("plays a multi-turn episode to the environment's done, token-exact", () =>
    Effect.gen(function*() {
      const calls: Array<string> = []
      const t = yield* Episode.run(spec(() => counter(3, calls)))
      assert.strictEqual(t.finishReason, "done")
      assert.deepStrictEqual(calls, ["1", "2", "3"])
      assert.strictEqual(t.numTurns, 3)
      assert.deepStrictEqual(t.turnRewards, [1, 1, 1])
      assert.strictEqual(t.reward, 3)
      assert.strictEqual(Trajectory.violation(t), undefined)
      assert.deepStrictEqual(t.messages.map((m) => m.role), ["user", "assistant", "user", "assistant", "user", "assistant", "user"])
      // The JSON form round-trips through the schema with verl's names.
      const json = Trajectory.encode(t)
      assert.deepStrictEqual(Object.keys(json).sort(), [
        "error", "finish_reason", "group_id", "id", "interaction", "messages", "num_turns", "prompt_ids",
        "response_ids", "response_logprobs", "response_mask", "reward", "seed", "turn_rewards", "turns"
      ])
      assert.deepStrictEqual(Trajectory.decode(JSON.parse(JSON.stringify(json))), t)
    }).pipe(Effect.provide(policyLayer(countingPolicy))))
})

describe("policy versions in the record", () => {
  it.effect("keeps the version of every token when new weights arrive mid-turn, and one version per turn otherwise", () =>
    Effect.gen(function*() {
      const t = yield* Episode.run(spec(() => counter(2))).pipe(
        // The backend reports per-token versions: the first turn spans a swap from version 3 to 4.
        Effect.provideServiceEffect(Inference, Effect.gen(function*() {
          const inner = yield* Inference
          return Inference.of({
            ...inner,
            generate: (request) =>
              Effect.map(inner.generate(request), (result) =>
                new GenerationResult({
                  ...result,
                  policyVersion: request.turn === 0 ? 3 : 4,
                  policyVersions: result.tokenIds.map((_, i) => (request.turn === 0 && i === 0 ? 3 : 4))
                }))
          })
        }))
      )
      const assistant = t.turns.filter((turn) => turn.role === "assistant")
      assert.strictEqual(assistant[0]!.policyVersion, 3)
      assert.deepStrictEqual(assistant[0]!.policyVersions, [3, ...new Array(assistant[0]!.tokenEnd - assistant[0]!.tokenStart - 1).fill(4)])
      assert.strictEqual(assistant[1]!.policyVersion, 4)
      assert.strictEqual(assistant[1]!.policyVersions, undefined)
      const json = Trajectory.encode(t) as unknown as { turns: Array<Record<string, unknown>> }
      assert.deepStrictEqual(json.turns[0]!.policy_versions, assistant[0]!.policyVersions)
      assert.strictEqual("policy_versions" in json.turns[2]!, false)
      assert.deepStrictEqual(Trajectory.decode(JSON.parse(JSON.stringify(json))).turns, t.turns)
    }).pipe(Effect.provide(policyLayer(countingPolicy))))
})
