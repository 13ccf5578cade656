import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import type { DatasetRow } from "../src/DatasetRow.ts"
import type { Environment } from "../src/Environment.ts"
import * as Episode from "../src/Episode.ts"
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
