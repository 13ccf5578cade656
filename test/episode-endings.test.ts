/**
 * Every way an episode can end, each checked the way a trainer would notice it: the finish reason, the
 * error record (its type and a message that names what went wrong), the token-level invariant, and the
 * environment's `close` called exactly once — with environments and policies that throw, hang, ignore their
 * AbortSignal, or return garbage.
 */
import { assert, describe, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber } from "effect"
import type { DatasetRow } from "../src/DatasetRow.ts"
import type { Environment, ResetOptions, ResetResult, StepOptions, StepResult } from "../src/Environment.ts"
import * as Episode from "../src/Episode.ts"
import type { TextPolicy } from "../src/TextPolicy.ts"
import { Tokenizer } from "../src/Tokenizer.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { limits, policyLayer, sampling } from "./support.ts"

const row: DatasetRow = {
  prompt: [{ role: "user", content: "Play along, one short answer per turn." }],
  extra_info: { interaction_kwargs: { name: "probe" } }
}

/** What an environment saw: every action, every signal it was handed, how often it was closed. */
interface Probe {
  made: number
  closes: number
  actions: Array<string>
  resetSignals: Array<AbortSignal>
  stepSignals: Array<AbortSignal>
}

const newProbe = (): Probe => ({ made: 0, closes: 0, actions: [], resetSignals: [], stepSignals: [] })

interface Behaviour {
  readonly reset?: (options: ResetOptions) => unknown
  /** `turn` is 0-based: the number of steps before this one. */
  readonly step?: (action: string, options: StepOptions, turn: number) => unknown
}

/** An environment that records into `probe` and otherwise does what `behaviour` says (by default: never done). */
const probed = (probe: Probe, behaviour: Behaviour = {}) => (): Environment => {
  probe.made++
  return {
    reset: (options) => {
      probe.resetSignals.push(options.signal)
      return (behaviour.reset === undefined ? {} : behaviour.reset(options)) as ResetResult
    },
    step: (action, options) => {
      const turn = probe.actions.length
      probe.actions.push(action)
      probe.stepSignals.push(options.signal)
      return (behaviour.step === undefined
        ? { observation: "go on", reward: 0, done: false }
        : behaviour.step(action, options, turn)) as StepResult
    },
    close: () => {
      probe.closes++
    }
  }
}

/** A promise that never settles and ignores its signal: the rudest possible environment or policy. */
const never = <A>(): Promise<A> => new Promise<A>(() => {})

/** A promise that settles only when its signal aborts (then rejects), as a well-behaved slow call does. */
const untilAborted = <A>(signal: AbortSignal): Promise<A> =>
  new Promise<A>((_, reject) => signal.addEventListener("abort", () => reject(new Error("aborted")), { once: true }))

/** A latch a JS callback can open and an Effect can wait on. */
const latch = () => {
  let open!: () => void
  const opened = new Promise<void>((resolve) => (open = resolve))
  return { open: () => open(), wait: Effect.promise(() => opened) }
}

const spec = (makeEnvironment: () => Environment, overrides: Partial<Episode.EpisodeSpec> = {}): Episode.EpisodeSpec => ({
  input: { id: "ep-1", groupId: "g-1", interaction: "probe", seed: 11, limits: limits() },
  row,
  makeEnvironment,
  sampling,
  sample: 0,
  envCallTimeoutMs: 5_000,
  ...overrides
})

const withLimits = (overrides: Parameters<typeof limits>[0]) => ({
  input: { id: "ep-1", groupId: "g-1", interaction: "probe", seed: 11, limits: limits(overrides) }
})

const say = (text: (turn: number) => string): TextPolicy => (input) => text(input.turn)

/** The checks every ending shares. */
const assertEnding = (
  t: Trajectory.Trajectory,
  probe: Probe,
  expected: {
    readonly reason: Trajectory.FinishReason
    readonly error?: { readonly type: string; readonly message: RegExp } | undefined
    readonly closes?: number
  }
) => {
  assert.strictEqual(t.finishReason, expected.reason, `finish reason (error: ${JSON.stringify(t.error)})`)
  if (expected.error === undefined) {
    assert.strictEqual(t.error, null)
  } else {
    assert.isNotNull(t.error, "an errored episode records its error")
    assert.strictEqual(t.error!.type, expected.error.type)
    assert.match(t.error!.message, expected.error.message)
  }
  assert.strictEqual(Trajectory.violation(t), undefined)
  // The record survives the on-disk schema.
  assert.doesNotThrow(() => Trajectory.encode(t))
  assert.strictEqual(probe.closes, expected.closes ?? 1, "close is called exactly once")
  assert.strictEqual(t.numTurns, t.turnRewards.length)
  assert.strictEqual(t.numTurns, t.turns.filter((turn) => turn.role === "assistant").length)
}

const envError = (message: RegExp) => ({ type: "EnvironmentError", message })

/** Actions that are easy to get wrong at a token boundary: whitespace, multi-byte text, empty, tag-like text. */
const trickyActions = [
  "  leading and trailing spaces  ",
  "ünïcödé 🚀 and 中文",
  "line one\nline two\n\n",
  "",
  "<think>\nlet me see\n</think>\n\nmove east",
  "literal <|im_start|>user\nnot really"
]

/**
 * The policy the running test uses. The layer (with the real Qwen3 tokenizer, slow to load) is built once
 * for the file; tests run one after another and each sets its policy first.
 */
let currentPolicy: TextPolicy = () => ""
const withPolicy = (policy: TextPolicy) => <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    currentPolicy = policy
    return self
  })

// Test services excluded: these tests run on the real clock (episode and env-call timeouts are real time).
layer(policyLayer((input) => currentPolicy(input)), { excludeTestServices: true })("episode endings", (it) => {
  it.effect("done: the environment ends it; the final observation is a message but not tokens", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const probe = newProbe()
      const t = yield* Episode.run(spec(probed(probe, {
        step: (_, __, turn) => ({ observation: turn === 1 ? "you win" : "again", reward: turn + 0.5, done: turn === 1 })
      })))
      assertEnding(t, probe, { reason: "done" })
      assert.strictEqual(t.numTurns, 2)
      assert.deepStrictEqual(t.turnRewards, [0.5, 1.5])
      assert.strictEqual(t.reward, 2)
      assert.deepStrictEqual(t.messages.at(-1), { role: "user", content: "you win" })
      // Tokens end with the last assistant turn: it closed with the template's end-of-turn token.
      assert.strictEqual(t.responseMask.at(-1), 1)
      assert.include(tokenizer.stopTokenIds, t.responseIds.at(-1)!)
      assert.deepStrictEqual(probe.actions, ["answer 0", "answer 1"])
    }).pipe(withPolicy(say((turn) => `answer ${turn}`))))

  it.effect("max_turns: numTurns is maxTurns; the last observation is in messages, not in the tokens", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const probe = newProbe()
      const t = yield* Episode.run(spec(probed(probe, {
        step: (_, __, turn) => ({ observation: `observation ${turn}`, reward: 1, done: false })
      }), withLimits({ maxTurns: 3 })))
      assertEnding(t, probe, { reason: "max_turns" })
      assert.strictEqual(t.numTurns, 3)
      assert.strictEqual(probe.actions.length, 3)
      assert.strictEqual(t.reward, 3)
      assert.deepStrictEqual(t.messages.map((m) => m.role), ["user", "assistant", "user", "assistant", "user", "assistant", "user"])
      assert.deepStrictEqual(t.messages.at(-1), { role: "user", content: "observation 2" })
      // prompt_ids + response_ids end exactly with the last assistant turn's tokens (its text, then end-of-turn).
      const lastAssistant = [...tokenizer.encode("step 2"), tokenizer.stopTokenIds.at(-1)!]
      const all = [...t.promptIds, ...t.responseIds]
      assert.deepStrictEqual(all.slice(-lastAssistant.length), lastAssistant)
      assert.deepStrictEqual(t.responseMask.slice(-lastAssistant.length), lastAssistant.map(() => 1))
      const lastTurn = t.turns.at(-1)!
      assert.strictEqual(lastTurn.role, "user")
      assert.strictEqual(lastTurn.tokenStart, t.responseIds.length)
      assert.strictEqual(lastTurn.tokenEnd, t.responseIds.length)
      assert.notInclude(tokenizer.decode(t.responseIds), "observation 2")
      assert.include(tokenizer.decode(t.responseIds), "observation 1")
    }).pipe(withPolicy(say((turn) => `step ${turn}`))))

  it.effect("zero limits end the episode before the policy is asked", () =>
    Effect.gen(function*() {
      let asked = 0
      const policy: TextPolicy = () => {
        asked++
        return "never"
      }
      for (const [overrides, reason] of [[{ maxTurns: 0 }, "max_turns"], [{ maxResponseTokens: 0 }, "max_tokens"]] as const) {
        const probe = newProbe()
        const t = yield* Episode.run(spec(probed(probe), withLimits(overrides))).pipe(withPolicy(policy))
        assertEnding(t, probe, { reason })
        assert.strictEqual(t.numTurns, 0)
        assert.deepStrictEqual(t.responseIds, [])
        assert.isAbove(t.promptIds.length, 0, "the prompt was rendered")
      }
      assert.strictEqual(asked, 0)
    }))

  it.effect("a turn cut at maxNewTokens is sent as cut, and the observation's tokens close it (mask 0)", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const probe = newProbe()
      const long = "one two three four five six seven eight nine ten"
      const t = yield* Episode.run(spec(probed(probe, {
        step: (_, __, turn) => ({ observation: "shorter please", reward: 0, done: turn === 1 })
      }), withLimits({ maxNewTokens: 4 })))
      assertEnding(t, probe, { reason: "done" })
      const cut = tokenizer.decode(tokenizer.encode(long).slice(0, 4))
      assert.deepStrictEqual(probe.actions, [cut, cut])
      // The whole context reads as a well-formed chat: the cut turn is closed by the template, not left open.
      const first = t.turns[0]!
      assert.strictEqual(first.tokenEnd - first.tokenStart, 4)
      const closing = t.responseIds[first.tokenEnd]!
      assert.include(tokenizer.stopTokenIds, closing)
      assert.strictEqual(t.responseMask[first.tokenEnd], 0)
      assert.include(
        tokenizer.decode([...t.promptIds, ...t.responseIds], { skipSpecialTokens: false }),
        `<|im_start|>assistant\n${cut}<|im_end|>\n<|im_start|>user\nshorter please<|im_end|>\n<|im_start|>assistant\n${cut}`
      )
    }).pipe(withPolicy(say(() => "one two three four five six seven eight nine ten"))))

  it.effect("max_tokens: a turn that uses up the budget ends the episode before the environment sees it", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const t = yield* Episode.run(spec(probed(probe), withLimits({ maxResponseTokens: 12 })))
      assertEnding(t, probe, { reason: "max_tokens" })
      assert.strictEqual(t.responseIds.length, 12)
      assert.strictEqual(t.numTurns, 1)
      assert.deepStrictEqual(probe.actions, [], "a truncated turn is never sent to the environment")
    }).pipe(withPolicy(say(() => "a rather long answer that keeps going well past any twelve token budget at all"))))

  it.effect("max_tokens: an observation that would overflow the budget ends the episode, not appended", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const long = "the environment rambles on ".repeat(20)
      const t = yield* Episode.run(spec(probed(probe, {
        step: () => ({ observation: long, reward: 1, done: false })
      }), withLimits({ maxResponseTokens: 40 })))
      assertEnding(t, probe, { reason: "max_tokens" })
      assert.isAtMost(t.responseIds.length, 40)
      assert.strictEqual(t.numTurns, 1)
      assert.deepStrictEqual(t.turnRewards, [1], "the step that was taken is still paid")
      assert.deepStrictEqual(t.messages.at(-1), { role: "user", content: long })
      assert.strictEqual(t.responseMask.at(-1), 1)
    }).pipe(withPolicy(say(() => "ok"))))

  it.effect("max_tokens: over many budgets, response_ids never exceed maxResponseTokens", () =>
    Effect.gen(function*() {
      for (let budget = 1; budget <= 60; budget += 3) {
        const probe = newProbe()
        const t = yield* Episode.run(spec(probed(probe, {
          step: (_, __, turn) => ({ observation: `turn ${turn} over`, reward: 0, done: false })
        }), withLimits({ maxResponseTokens: budget, maxTurns: 100 })))
        assertEnding(t, probe, { reason: "max_tokens" })
        assert.isAtMost(t.responseIds.length, budget, `budget ${budget}`)
        assert.isAbove(t.responseIds.length, 0)
      }
    }).pipe(withPolicy(say((turn) => `move ${turn} north`))))

  it.effect("timeout: a policy that never answers (and ignores its signal) is cut off at timeoutMs, its signal aborted", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const signals: Array<AbortSignal> = []
      const policy: TextPolicy = (input) => {
        signals.push(input.signal)
        return input.turn === 0 ? "first" : never<string>()
      }
      const started = Date.now()
      const t = yield* Episode.run(spec(probed(probe), withLimits({ timeoutMs: 200 }))).pipe(
        withPolicy(policy)
      )
      const elapsed = Date.now() - started
      assertEnding(t, probe, { reason: "timeout", error: { type: "EpisodeTimeout", message: /ran longer than its \d+ ms limit/ } })
      assert.isBelow(elapsed, 2_000, "the episode does not wait for the hung policy")
      assert.strictEqual(t.numTurns, 1)
      assert.strictEqual(signals.length, 2)
      assert.isTrue(signals[1]!.aborted, "the in-flight generation's signal is aborted")
    }))

  it.effect("timeout: an environment step that outlives the episode is aborted", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const t = yield* Episode.run(spec(probed(probe, {
        step: (_, options) => untilAborted(options.signal)
      }), { ...withLimits({ timeoutMs: 150 }), envCallTimeoutMs: 10_000 }))
      assertEnding(t, probe, { reason: "timeout", error: { type: "EpisodeTimeout", message: /ran longer than its \d+ ms limit/ } })
      assert.strictEqual(probe.stepSignals.length, 1)
      assert.isTrue(probe.stepSignals[0]!.aborted)
      assert.strictEqual(t.numTurns, 1)
    }).pipe(withPolicy(say(() => "wait"))))

  it.effect("timeout: a reset that hangs past the episode's time limit", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const t = yield* Episode.run(spec(probed(probe, { reset: () => never() }), {
        ...withLimits({ timeoutMs: 120 }),
        envCallTimeoutMs: 10_000
      }))
      assertEnding(t, probe, { reason: "timeout", error: { type: "EpisodeTimeout", message: /ran longer than its \d+ ms limit/ } })
      assert.isTrue(probe.resetSignals[0]!.aborted)
      assert.strictEqual(t.numTurns, 0)
    }).pipe(withPolicy(say(() => "unused"))))

  describe("env_error", () => {
    it.effect("reset throws", () =>
      Effect.gen(function*() {
        const probe = newProbe()
        const t = yield* Episode.run(spec(probed(probe, {
          reset: () => {
            throw new Error("the grid failed to load")
          }
        })))
        assertEnding(t, probe, { reason: "env_error", error: envError(/reset threw: the grid failed to load/) })
        assert.strictEqual(t.numTurns, 0)
      }).pipe(withPolicy(say(() => "unused"))))

    it.effect("reset rejects with a non-Error value", () =>
      Effect.gen(function*() {
        const probe = newProbe()
        const t = yield* Episode.run(spec(probed(probe, { reset: () => Promise.reject("server said 503") })))
        assertEnding(t, probe, { reason: "env_error", error: envError(/reset threw: server said 503/) })
      }).pipe(withPolicy(say(() => "unused"))))

    it.effect("step throws", () =>
      Effect.gen(function*() {
        const probe = newProbe()
        const t = yield* Episode.run(spec(probed(probe, {
          step: (_, __, turn) => {
            if (turn === 1) throw new Error("illegal move")
            return { observation: "fine", reward: 2, done: false }
          }
        })))
        assertEnding(t, probe, { reason: "env_error", error: envError(/step threw: illegal move/) })
        assert.strictEqual(t.numTurns, 2)
        assert.deepStrictEqual(t.turnRewards, [2, 0])
      }).pipe(withPolicy(say((turn) => `try ${turn}`))))

    it.effect("step hangs past envCallTimeoutMs (ignoring its signal)", () =>
      Effect.gen(function*() {
        const probe = newProbe()
        const started = Date.now()
        const t = yield* Episode.run(spec(probed(probe, { step: () => never() }), { envCallTimeoutMs: 100 }))
        assertEnding(t, probe, { reason: "env_error", error: envError(/step did not answer within 100 ms/) })
        assert.isBelow(Date.now() - started, 3_000)
        assert.isTrue(probe.stepSignals[0]!.aborted, "the timed-out call's signal is aborted")
      }).pipe(withPolicy(say(() => "hello?"))))

    it.effect("reset hangs past envCallTimeoutMs", () =>
      Effect.gen(function*() {
        const probe = newProbe()
        const t = yield* Episode.run(spec(probed(probe, { reset: (options) => untilAborted(options.signal) }), {
          envCallTimeoutMs: 80
        }))
        assertEnding(t, probe, { reason: "env_error", error: envError(/reset did not answer within 80 ms/) })
        assert.isTrue(probe.resetSignals[0]!.aborted)
      }).pipe(withPolicy(say(() => "unused"))))

    const garbage: ReadonlyArray<readonly [string, unknown, RegExp]> = [
      ["reward NaN", { observation: "x", reward: Number.NaN, done: false }, /reward/],
      ["reward Infinity", { observation: "x", reward: Number.POSITIVE_INFINITY, done: false }, /reward/],
      ["reward a string", { observation: "x", reward: "abc", done: false }, /reward/],
      ["done missing", { observation: "x", reward: 1 }, /done/],
      ["observation a number", { observation: 42, reward: 1, done: true }, /observation/],
      ["undefined", undefined, /./],
      ["null", null, /./],
      ["a string", "done!", /./]
    ]
    for (const [what, value, names] of garbage) {
      it.effect(`step returns garbage: ${what}`, () =>
        Effect.gen(function*() {
          const probe = newProbe()
          const t = yield* Episode.run(spec(probed(probe, { step: () => value })))
          assertEnding(t, probe, { reason: "env_error", error: envError(/step returned an invalid result/) })
          assert.match(t.error!.message, names, `the message names the bad field: ${t.error!.message}`)
          assert.strictEqual(t.numTurns, 1)
          assert.deepStrictEqual(t.turnRewards, [0])
        }).pipe(withPolicy(say(() => "move"))))
    }

    it.effect("reset returns garbage", () =>
      Effect.gen(function*() {
        const probe = newProbe()
        const t = yield* Episode.run(spec(probed(probe, { reset: () => ({ observation: 42 }) })))
        assertEnding(t, probe, { reason: "env_error", error: envError(/reset returned an invalid result/) })
        assert.match(t.error!.message, /observation/)
      }).pipe(withPolicy(say(() => "unused"))))

    it.effect("makeEnvironment throws: nothing to close", () =>
      Effect.gen(function*() {
        const probe = newProbe()
        const t = yield* Episode.run(spec(() => {
          throw new Error("no such board size")
        }))
        assertEnding(t, probe, {
          reason: "env_error",
          error: envError(/could not make environment "probe": no such board size/),
          closes: 0
        })
        assert.strictEqual(t.numTurns, 0)
        assert.deepStrictEqual(t.responseIds, [])
      }).pipe(withPolicy(say(() => "unused"))))

    it.effect("reset gives no user turn and the row's prompt is empty", () =>
      Effect.gen(function*() {
        for (const reset of [{}, { systemPrompt: "You are a game." }, { observation: [] }]) {
          const probe = newProbe()
          const t = yield* Episode.run(spec(probed(probe, { reset: () => reset }), {
            row: { prompt: [], extra_info: { interaction_kwargs: { name: "probe" } } }
          }))
          assertEnding(t, probe, { reason: "env_error", error: envError(/no user turn/) })
          assert.strictEqual(t.numTurns, 0)
        }
      }).pipe(withPolicy(say(() => "unused"))))
  })

  it.effect("inference_error: the policy throws", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const t = yield* Episode.run(spec(probed(probe)))
      assertEnding(t, probe, { reason: "inference_error", error: { type: "InferenceError", message: /model server unreachable/ } })
      assert.strictEqual(t.numTurns, 1, "the turn before the failure is kept")
      assert.deepStrictEqual(probe.actions, ["fine"])
    }).pipe(withPolicy((input) => {
      if (input.turn === 1) throw new Error("model server unreachable")
      return "fine"
    })))

  it.effect("interrupted: completing `stop` while a step is in flight returns the trajectory and aborts the step", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const inStep = latch()
      const stop = yield* Deferred.make<void>()
      const fiber = yield* Effect.forkChild(Episode.run(spec(probed(probe, {
        step: (_, options, turn) => {
          if (turn === 0) return { observation: "more", reward: 1, done: false }
          inStep.open()
          return untilAborted(options.signal)
        }
      }), { stop, envCallTimeoutMs: 10_000 })))
      yield* inStep.wait
      yield* Deferred.succeed(stop, undefined)
      const t = yield* Fiber.join(fiber).pipe(Effect.timeout(2_000))
      assertEnding(t, probe, { reason: "interrupted" })
      assert.strictEqual(t.numTurns, 2)
      assert.deepStrictEqual(t.turnRewards, [1, 0])
      assert.isTrue(probe.stepSignals[1]!.aborted, "the in-flight step's signal is aborted")
      assert.isFalse(probe.stepSignals[0]!.aborted, "a finished step's signal is left alone")
    }).pipe(withPolicy(say((turn) => `go ${turn}`))))

  it.effect("interrupted: a `stop` completed before the episode starts still yields one trajectory", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const stop = yield* Deferred.make<void>()
      yield* Deferred.succeed(stop, undefined)
      const t = yield* Episode.run(spec(probed(probe, { reset: (options) => untilAborted(options.signal) }), { stop })).pipe(
        Effect.timeout(2_000)
      )
      assert.strictEqual(t.finishReason, "interrupted")
      assert.strictEqual(Trajectory.violation(t), undefined)
      assert.isAtMost(probe.closes, 1)
      assert.strictEqual(probe.closes, probe.made)
    }).pipe(withPolicy(say(() => "unused"))))

  it.effect("Fiber.interrupt during a step aborts the step's signal and closes the environment once", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const inStep = latch()
      let stepAbortedAtClose: boolean | undefined
      const fiber = yield* Effect.forkChild(Episode.run(spec(() => {
        const environment = probed(probe, {
          step: () => {
            inStep.open()
            return never()
          }
        })()
        return {
          ...environment,
          close: () => {
            stepAbortedAtClose = probe.stepSignals[0]?.aborted
            return environment.close?.()
          }
        }
      }, { envCallTimeoutMs: 10_000 })))
      yield* inStep.wait
      yield* Fiber.interrupt(fiber).pipe(Effect.timeout(2_000))
      const exit = yield* Fiber.await(fiber)
      assert.isTrue(Exit.hasInterrupts(exit))
      assert.isTrue(probe.stepSignals[0]!.aborted)
      assert.isTrue(stepAbortedAtClose, "the step is aborted before the environment is closed")
      assert.strictEqual(probe.closes, 1)
      yield* Effect.sleep(50)
      assert.strictEqual(probe.closes, 1, "close is not called again later")
    }).pipe(withPolicy(say(() => "stuck"))))

  it.effect("Fiber.interrupt during generation aborts the policy's signal and closes the environment once", () =>
    Effect.gen(function*() {
      const probe = newProbe()
      const inPolicy = latch()
      const signals: Array<AbortSignal> = []
      const policy: TextPolicy = (input) => {
        signals.push(input.signal)
        inPolicy.open()
        return never<string>()
      }
      const fiber = yield* Effect.forkChild(Episode.run(spec(probed(probe))).pipe(withPolicy(policy)))
      yield* inPolicy.wait
      yield* Fiber.interrupt(fiber).pipe(Effect.timeout(2_000))
      assert.strictEqual(signals.length, 1)
      assert.isTrue(signals[0]!.aborted)
      assert.strictEqual(probe.closes, 1)
      assert.isFalse(probe.resetSignals[0]!.aborted, "reset had finished; only the call in flight is aborted")
    }))

  it.effect("close that throws or hangs does not change the outcome", () =>
    Effect.gen(function*() {
      for (const close of [() => {
        throw new Error("close failed")
      }, () => never<void>()]) {
        let closes = 0
        const started = Date.now()
        const t = yield* Episode.run(spec(() => ({
          reset: () => ({}),
          step: () => ({ observation: "bye", reward: 1, done: true }),
          close: () => {
            closes++
            return close()
          }
        }), { envCallTimeoutMs: 100 }))
        assert.strictEqual(t.finishReason, "done")
        assert.strictEqual(t.error, null)
        assert.strictEqual(closes, 1)
        assert.isBelow(Date.now() - started, 3_000)
      }
    }).pipe(withPolicy(say(() => "done"))))

  it.effect("each assistant span (mask 1) decodes to exactly the action the environment received", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const probe = newProbe()
      const t = yield* Episode.run(spec(probed(probe, {
        step: (_, __, turn) => ({ observation: `obs ${turn}`, reward: 0, done: turn === trickyActions.length - 1 })
      })))
      assertEnding(t, probe, { reason: "done" })
      assert.strictEqual(probe.actions.length, trickyActions.length)
      // Maximal runs of mask 1.
      const spans: Array<[number, number]> = []
      for (let i = 0; i < t.responseMask.length; i++) {
        if (t.responseMask[i] === 1 && t.responseMask[i - 1] !== 1) spans.push([i, i])
        if (t.responseMask[i] === 1) spans[spans.length - 1] = [spans.at(-1)![0], i + 1]
      }
      assert.deepStrictEqual(spans.map(([a, b]) => tokenizer.decode(t.responseIds.slice(a, b))), probe.actions)
      // The turns index the same spans, and cover the response end to end.
      const assistant = t.turns.filter((turn) => turn.role === "assistant")
      assert.deepStrictEqual(assistant.map((turn) => [turn.tokenStart, turn.tokenEnd]), spans)
      assert.deepStrictEqual(assistant.map((turn) => turn.text), probe.actions)
      let at = 0
      for (const turn of t.turns) {
        assert.strictEqual(turn.tokenStart, at)
        const mask = t.responseMask.slice(turn.tokenStart, turn.tokenEnd)
        assert.isTrue(mask.every((m) => m === (turn.role === "assistant" ? 1 : 0)))
        at = turn.tokenEnd
      }
      assert.strictEqual(at, t.responseIds.length)
    }).pipe(withPolicy(say((turn) => trickyActions[turn]!))))
})
