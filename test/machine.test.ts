/**
 * The episode statechart on its own, driven by a plain promise host (no Effect, no tokenizer), as a host
 * that embeds it or the Stately visualizer sees it.
 */
import { readdirSync, readFileSync } from "node:fs"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { type Actor, createActor, toPromise } from "xstate"
import {
  type EpisodeEvent,
  type EpisodeInput,
  episodeMachine,
  generateInput,
  type GenerateInput,
  type GenerateOutput,
  interactInput,
  type InteractInput,
  type InteractOutput,
  type ResetOutput
} from "../machines/episode.ts"

const input = (limits: Partial<EpisodeInput["limits"]> = {}): EpisodeInput => ({
  id: "e",
  groupId: "g",
  interaction: "test",
  seed: 3,
  limits: { maxTurns: 5, maxResponseTokens: 100, maxNewTokens: 10, timeoutMs: 5_000, ...limits }
})

interface Handlers {
  readonly reset: (input: EpisodeInput) => Promise<ResetOutput>
  readonly generate: (input: GenerateInput) => Promise<GenerateOutput>
  readonly interact: (input: InteractInput) => Promise<InteractOutput>
}

/** The smallest host: do what the state names, report it as the event, until the machine is done. */
const drive = async (actor: Actor<typeof episodeMachine>, handlers: Handlers) => {
  const done = toPromise(actor)
  for (let snapshot = actor.getSnapshot(); snapshot.status === "active"; snapshot = actor.getSnapshot()) {
    const state = (snapshot.value as { readonly running: string }).running
    const event: EpisodeEvent = await (state === "pending"
      ? handlers.reset(snapshot.context.input).then((output) => ({ type: "RESET_DONE", output }) as const)
      : state === "generating"
      ? handlers.generate(generateInput(snapshot.context)).then((output) => ({ type: "GENERATE_DONE", output }) as const)
      : handlers.interact(interactInput(snapshot.context)).then((output) => ({ type: "INTERACT_DONE", output }) as const)
    ).catch((error: unknown) => ({ type: "FAILED", error }) as const)
    actor.send(event)
  }
  return done
}

/** A policy that says two tokens per turn and an environment that is done after `doneAfter` steps. */
const host = (options: { readonly doneAfter?: number; readonly observationTokens?: number } = {}) => {
  const generateInputs: Array<GenerateInput> = []
  let steps = 0
  const handlers: Handlers = {
    reset: async () => ({
      messages: [{ role: "user", content: "start" }],
      promptIds: [1, 2, 3]
    }),
    generate: async (input) => {
      generateInputs.push(input)
      return { tokenIds: [10 + input.turn, 99], logprobs: [-0.5, -0.25], text: `a${input.turn}`, policyVersion: 4 }
    },
    interact: async (input) => {
      steps++
      return {
        observation: `o${input.turn}`,
        role: "user" as const,
        reward: 0.5,
        done: steps === options.doneAfter,
        observationIds: Array.from({ length: options.observationTokens ?? 3 }, () => 7)
      }
    }
  }
  return { handlers, generateInputs }
}

const never = () => new Promise<never>(() => {})

describe("the episode machine", () => {
  it("walks pending -> generating -> interacting -> ... -> done and outputs the trajectory", async () => {
    const { handlers, generateInputs } = host({ doneAfter: 2 })
    const actor = createActor(episodeMachine, { input: input() })
    const states: Array<string> = []
    actor.subscribe((snapshot) => states.push(JSON.stringify(snapshot.value)))
    actor.start()
    const t = await drive(actor, handlers)
    expect([...new Set(states)]).toEqual([
      `{"running":"pending"}`,
      `{"running":"generating"}`,
      `{"running":"interacting"}`,
      `"done"`
    ])
    expect(t.finishReason).toBe("done")
    expect(t.responseIds).toEqual([10, 99, 7, 7, 7, 11, 99])
    expect(t.responseMask).toEqual([1, 1, 0, 0, 0, 1, 1])
    expect(t.responseLogprobs).toEqual([-0.5, -0.25, 0, 0, 0, -0.5, -0.25])
    expect(t.turnRewards).toEqual([0.5, 0.5])
    expect(t.reward).toBe(1)
    expect(t.turns.map((turn) => [turn.role, turn.tokenStart, turn.tokenEnd, turn.policyVersion])).toEqual([
      ["assistant", 0, 2, 4],
      ["user", 2, 5, null],
      ["assistant", 5, 7, 4],
      ["user", 7, 7, null]
    ])
    // The second turn's context is the prompt and everything before it.
    expect(generateInputs[1]!.contextIds).toEqual([1, 2, 3, 10, 99, 7, 7, 7])
  })

  it("ends with max_turns after the last allowed turn, without appending the unread observation", async () => {
    const t = await drive(createActor(episodeMachine, { input: input({ maxTurns: 3 }) }).start(), host().handlers)
    expect(t.finishReason).toBe("max_turns")
    expect(t.numTurns).toBe(3)
    expect(t.responseIds.at(-1)).toBe(99)
    expect(t.messages.at(-1)).toEqual({ role: "user", content: "o2" })
  })

  it("asks for no more tokens than the budget has left, and ends with max_tokens", async () => {
    const { handlers, generateInputs } = host({ observationTokens: 4 })
    const t = await drive(createActor(episodeMachine, { input: input({ maxResponseTokens: 9, maxNewTokens: 10 }) }).start(), handlers)
    expect(generateInputs.map((g) => g.maxNewTokens)).toEqual([9, 3])
    expect(t.finishReason).toBe("max_tokens")
    expect(t.responseIds.length).toBeLessThanOrEqual(9)
  })

  it("ends interrupted on INTERRUPT, from any running state", async () => {
    const actor = createActor(episodeMachine, { input: input() }).start()
    const t = drive(actor, { ...host().handlers, reset: never })
    actor.send({ type: "INTERRUPT" })
    expect(actor.getSnapshot().status).toBe("done")
    // The host's reset never answers: the machine ended without it.
    const record = await Promise.race([t, toPromise(actor)])
    expect(record.finishReason).toBe("interrupted")
    expect(record.responseIds).toEqual([])
  })

  it("ends with timeout when the episode outlives limits.timeoutMs", async () => {
    const actor = createActor(episodeMachine, { input: input({ timeoutMs: 30 }) }).start()
    void drive(actor, { ...host().handlers, reset: never })
    const t = await toPromise(actor)
    expect(t.finishReason).toBe("timeout")
    expect(t.error).toEqual({ type: "EpisodeTimeout", message: "the episode ran longer than its 30 ms limit" })
  })

  it("records the error of a failed call with its tag, as the state's finish reason", async () => {
    class InferenceError extends Error { readonly _tag = "InferenceError" }
    const failing = { ...host().handlers, generate: () => Promise.reject(new InferenceError("model fell over")) }
    const t = await drive(createActor(episodeMachine, { input: input() }).start(), failing)
    expect(t.finishReason).toBe("inference_error")
    expect(t.error).toEqual({ type: "InferenceError", message: "model fell over" })

    const resetFails = { ...host().handlers, reset: () => Promise.reject(new TypeError("no such environment")) }
    const r = await drive(createActor(episodeMachine, { input: input() }).start(), resetFails)
    expect(r.finishReason).toBe("env_error")
    expect(r.error).toEqual({ type: "TypeError", message: "no such environment" })
  })

  it("ignores a result that arrives after the machine ended", async () => {
    const actor = createActor(episodeMachine, { input: input() }).start()
    actor.send({ type: "INTERRUPT" })
    actor.send({ type: "RESET_DONE", output: { messages: [], promptIds: [1] } })
    const t = await toPromise(actor)
    expect(t.finishReason).toBe("interrupted")
    expect(t.promptIds).toEqual([])
  })
})

describe("machines/", () => {
  it("imports nothing but xstate and types: no effect, onnx, tfjs or fs", () => {
    const dir = path.resolve(import.meta.dirname, "..", "machines")
    for (const file of readdirSync(dir).filter((f) => f.endsWith(".ts"))) {
      const source = readFileSync(path.join(dir, file), "utf8")
      const imports = [...source.matchAll(/^import\s+(type\s+)?.*?from\s+"([^"]+)"/gms)]
      for (const [, typeOnly, from] of imports) {
        expect(typeOnly !== undefined || from === "xstate", `${file} imports ${from}`).toBe(true)
      }
    }
  })
})
