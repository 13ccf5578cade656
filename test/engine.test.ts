/**
 * The Engine under load and under failure: many rows at high concurrency through an environment registry
 * whose environments throw, hang or return garbage; unknown environments; GRPO groups; backpressure from a
 * slow consumer; and a gentle stop mid-run.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Fiber, Option, Stream } from "effect"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { Engine, type EngineOptions } from "../src/Engine.ts"
import { define, type Environment } from "../src/Environment.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { mulberry32 } from "../src/Seed.ts"
import type { TextPolicy, TextPolicyInput } from "../src/TextPolicy.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { limits, policyLayer, sampling } from "./support.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))
const never = <A>(): Promise<A> => new Promise<A>(() => {})
const untilAborted = <A>(signal: AbortSignal): Promise<A> =>
  new Promise<A>((_, reject) => signal.addEventListener("abort", () => reject(new Error("aborted")), { once: true }))

const rowFor = (name: string, kwargs: Record<string, unknown> = {}, extra: Record<string, unknown> = {}): DatasetRow => ({
  prompt: [{ role: "user", content: `Play ${name}.` }],
  extra_info: { interaction_kwargs: { name, ...kwargs }, ...extra }
})

/** Counts instances made and closes, so every instance can be checked to be closed exactly once. */
const instances = () => {
  const closes: Array<number> = []
  return {
    closes,
    track: (environment: Environment): Environment => {
      const index = closes.push(0) - 1
      return {
        ...environment,
        close: () => {
          closes[index]!++
        }
      }
    }
  }
}

/**
 * Done after two steps, paying 1 each. Each call first sleeps the row's `delay` (ms, default 0), so that
 * episodes finish out of order.
 */
const healthy = (): Environment => {
  let steps = 0
  let delayMs = 0
  return {
    reset: async ({ row }) => {
      delayMs = Number(row.extra_info.interaction_kwargs["delay"] ?? 0)
      await sleep(delayMs)
      return { observation: "Start." }
    },
    step: async () => {
      await sleep(delayMs)
      steps++
      return { observation: steps === 2 ? "Well played." : "Again.", reward: 1, done: steps === 2 }
    }
  }
}

type Failure = "throws-in-reset" | "throws-in-step" | "hangs" | "hangs-politely" | "reward-nan" | "reward-string" | "no-done"
const failures: ReadonlyArray<Failure> = ["throws-in-reset", "throws-in-step", "hangs", "hangs-politely", "reward-nan", "reward-string", "no-done"]

const failing = (kind: Failure): Environment => ({
  reset: () => {
    if (kind === "throws-in-reset") throw new Error("reset exploded")
    return {}
  },
  step: (_, { signal }) => {
    switch (kind) {
      case "throws-in-step":
        return Promise.reject(new Error("step exploded"))
      case "hangs":
        return never()
      case "hangs-politely":
        return untilAborted(signal)
      case "reward-nan":
        return { observation: "x", reward: Number.NaN, done: false }
      case "reward-string":
        return { observation: "x", reward: "abc", done: false } as never
      default:
        return { observation: "x", reward: 1 } as never
    }
  }
})

const hangMs = 200

const expectedMessage: Record<Failure, RegExp> = {
  "throws-in-reset": /reset threw: reset exploded/,
  "throws-in-step": /step threw: step exploded/,
  hangs: /step did not answer within 200 ms/,
  "hangs-politely": /step did not answer within 200 ms/,
  "reward-nan": /step returned an invalid result.*reward/s,
  "reward-string": /step returned an invalid result.*reward/s,
  "no-done": /step returned an invalid result.*done/s
}

const options = (environments: EnvironmentRegistry, overrides: Partial<EngineOptions> = {}): EngineOptions => ({
  environments,
  concurrency: 8,
  samplesPerRow: 1,
  limits: limits({ maxTurns: 4 }),
  sampling,
  envCallTimeoutMs: 1_000,
  seed: 1,
  bufferCapacity: 16,
  ...overrides
})

/** Runs `rows` through an engine with `engineOptions`, collecting every trajectory. */
const collect = (engineOptions: EngineOptions, rows: ReadonlyArray<DatasetRow>) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    return yield* Stream.runCollect(engine.run(Stream.fromIterable(rows)))
  }).pipe(Effect.provide(Engine.layer(engineOptions)))

const assertRecordsSound = (records: ReadonlyArray<Trajectory.Trajectory>) => {
  for (const t of records) {
    assert.strictEqual(Trajectory.violation(t), undefined, `record ${t.id}`)
    assert.doesNotThrow(() => Trajectory.encode(t), `record ${t.id} encodes`)
  }
}

/** The policy the running test uses; the layer (and its real Qwen3 tokenizer) is built once for the file. */
let currentPolicy: TextPolicy = () => "ok"
const policyInputs: Array<TextPolicyInput> = []
const withPolicy = (policy: TextPolicy) => <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.suspend(() => {
    currentPolicy = policy
    policyInputs.length = 0
    return self
  })

const play: TextPolicy = (input) => `move ${input.turn}`

// Real clock: env-call timeouts and the slow consumer are real time.
layer(policyLayer((input) => {
  policyInputs.push(input)
  return currentPolicy(input)
}), { excludeTestServices: true })("Engine", (it) => {
  it.effect("300 rows at concurrency 64, a third of them failing: one record per row, each ending as it should", () =>
    Effect.gen(function*() {
      // Seeded, so the mix of failures is the same every run.
      const random = mulberry32(20240601)
      const plan = Array.from({ length: 300 }, () =>
        random() < 1 / 3
          ? { kind: failures[Math.floor(random() * failures.length)]!, delay: 0 }
          : { kind: "healthy" as const, delay: Math.floor(random() * 4) })
      const counts = new Map<string, number>()
      for (const { kind } of plan) counts.set(kind, (counts.get(kind) ?? 0) + 1)
      // The seed gives a real mix: every kind of failure shows up, and about a third fail.
      for (const kind of failures) assert.isAbove(counts.get(kind) ?? 0, 3, kind)
      assert.approximately(300 - counts.get("healthy")!, 100, 30)

      const made = instances()
      const registry = new EnvironmentRegistry()
        .register(define({ name: "healthy", description: "done after two steps", make: () => made.track(healthy()) }))
      // One definition per failure, so a row names its environment the way a dataset would.
      for (const kind of failures) {
        registry.register(define({ name: kind, description: kind, make: () => made.track(failing(kind)) }))
      }
      const rows = plan.map(({ kind, delay }) => rowFor(kind, kind === "healthy" ? { delay } : {}))

      const started = Date.now()
      // The env-call limit is wall-clock time on the event loop the engine shares: with 64 episodes tokenizing on
      // it, a healthy 1 ms call was measured finishing past a 50 ms limit (the loop stalled up to ~120 ms on 2
      // cores), so the limit here leaves room for that and the hanging environments still cost only 200 ms.
      const records = yield* collect(options(registry, { concurrency: 64, bufferCapacity: 32, envCallTimeoutMs: hangMs }), rows)
      const elapsed = Date.now() - started

      assert.strictEqual(records.length, 300)
      assert.deepStrictEqual(new Set(records.map((t) => t.id)), new Set(plan.map((_, i) => `${i}-0`)))
      for (const t of records) {
        const index = Number(t.id.split("-")[0])
        const { kind } = plan[index]!
        assert.strictEqual(t.groupId, String(index))
        if (kind === "healthy") {
          assert.strictEqual(t.finishReason, "done", `row ${index}: ${JSON.stringify(t.error)}`)
          assert.strictEqual(t.error, null)
          assert.strictEqual(t.numTurns, 2)
          assert.strictEqual(t.reward, 2)
        } else {
          assert.strictEqual(t.finishReason, "env_error", `row ${index} (${kind})`)
          assert.strictEqual(t.error?.type, "EnvironmentError")
          assert.match(t.error!.message, expectedMessage[kind], `row ${index} (${kind})`)
        }
      }
      assertRecordsSound(records)
      assert.strictEqual(made.closes.length, 300, "one environment per episode")
      assert.deepStrictEqual(made.closes.filter((n) => n !== 1), [], "every environment closed exactly once")
      // 64 at a time: the hanging episodes (200 ms each) overlap instead of queueing.
      assert.isBelow(elapsed, 10_000)
    }).pipe(withPolicy(play)))

  it.effect("a row naming an unregistered environment yields one env_error record naming it; the run goes on", () =>
    Effect.gen(function*() {
      const registry = new EnvironmentRegistry().register(define({ name: "ok", description: "", make: () => healthy() }))
      const records = yield* collect(options(registry), [rowFor("ok"), rowFor("no-such-env"), rowFor("ok")])
      assert.strictEqual(records.length, 3)
      const byId = new Map(records.map((t) => [t.id, t]))
      const bad = byId.get("1-0")!
      assert.strictEqual(bad.finishReason, "env_error")
      assert.strictEqual(bad.error?.type, "EnvironmentError")
      assert.match(bad.error!.message, /unknown environment "no-such-env"/)
      assert.match(bad.error!.message, /\bok\b/, "the message lists the known environments")
      assert.strictEqual(bad.interaction, "no-such-env")
      assert.strictEqual(byId.get("0-0")!.finishReason, "done")
      assert.strictEqual(byId.get("2-0")!.finishReason, "done")
      assertRecordsSound(records)
    }).pipe(withPolicy(play)))

  it.effect("samplesPerRow 4: four records per row sharing group_id and the env seed, with distinct ids and sampling seeds", () =>
    Effect.gen(function*() {
      const registry = new EnvironmentRegistry().register(define({ name: "ok", description: "", make: () => healthy() }))
      const rows = [rowFor("ok"), rowFor("ok", {}, { group_id: "prompt-b", seed: 99 }), rowFor("ok")]
      const records = yield* collect(options(registry, { samplesPerRow: 4, concurrency: 5 }), rows)
      assert.strictEqual(records.length, 12)
      assert.strictEqual(new Set(records.map((t) => t.id)).size, 12)
      const groups = new Map<string, Array<Trajectory.Trajectory>>()
      for (const t of records) groups.set(t.groupId, [...(groups.get(t.groupId) ?? []), t])
      assert.deepStrictEqual([...groups.keys()].sort(), ["0", "2", "prompt-b"])
      for (const [groupId, group] of groups) {
        assert.strictEqual(group.length, 4, groupId)
        assert.strictEqual(new Set(group.map((t) => t.seed)).size, 1, `${groupId}: one environment seed per group`)
        // GRPO needs different samples: the sampling seed differs across the group's episodes.
        const seeds = new Set(policyInputs.filter((p) => group.some((t) => t.id === p.episodeId) && p.turn === 0).map((p) => p.seed))
        assert.strictEqual(seeds.size, 4, `${groupId}: distinct sampling seeds`)
      }
      assert.isTrue(groups.get("prompt-b")!.every((t) => t.seed === 99))
      assert.notStrictEqual(groups.get("0")![0]!.seed, groups.get("2")![0]!.seed, "rows without a seed get different ones")
      assert.isTrue(records.every((t) => t.finishReason === "done"))
      assertRecordsSound(records)
    }).pipe(withPolicy(play)))

  /** 40 quick episodes through an engine whose consumer takes 20 ms per record; counts what runs ahead of it. */
  const slowConsumer = (concurrency: number, bufferCapacity: number) =>
    Effect.gen(function*() {
      let started = 0
      let finished = 0
      let consumed = 0
      let mostStarted = 0
      let mostFinished = 0
      const registry = new EnvironmentRegistry().register(define({
        name: "counted",
        description: "",
        make: (): Environment => ({
          reset: () => {
            started++
            mostStarted = Math.max(mostStarted, started - consumed)
            return {}
          },
          step: () => {
            finished++
            mostFinished = Math.max(mostFinished, finished - consumed)
            return { observation: "bye", reward: 1, done: true }
          }
        })
      }))
      const total = yield* Effect.gen(function*() {
        const engine = yield* Engine
        return yield* engine.run(Stream.fromIterable(Array.from({ length: 40 }, () => rowFor("counted")))).pipe(
          Stream.mapEffect(() => Effect.sleep(20).pipe(Effect.andThen(Effect.sync(() => ++consumed))), { concurrency: 1 }),
          Stream.runCount
        )
      }).pipe(Effect.provide(Engine.layer(options(registry, { concurrency, bufferCapacity }))))
      assert.strictEqual(total, 40)
      assert.strictEqual(started, 40)
      return { mostStarted, mostFinished }
    })

  it.effect("backpressure: a slow consumer holds back new episodes", () =>
    Effect.gen(function*() {
      const { mostStarted } = yield* slowConsumer(4, 4)
      // Without backpressure all 40 quick episodes would start long before the consumer (20 ms each) took the
      // 10th. The bound allows every stage its share: 4 running, the buffer's 4 twice over (see below), the
      // consumer's one, and a record on its way.
      assert.isAtMost(mostStarted, 4 + 2 * 4 + 2, `${mostStarted} episodes started ahead of the consumer`)
    }).pipe(withPolicy(play)))

  // EngineOptions.bufferCapacity promises "finished trajectories waiting for the consumer, at most". Stream.buffer
  // in effect 4 hands the consumer everything queued in one chunk (Queue.takeAll) and refills behind it, so a
  // consumer that handles one record at a time has up to 2 x bufferCapacity finished records waiting on it.
  it.effect("bufferCapacity bounds the finished trajectories waiting for a slow consumer", () =>
    Effect.gen(function*() {
      const bufferCapacity = 8
      const { mostFinished } = yield* slowConsumer(1, bufferCapacity)
      // The buffer's capacity, the one finished episode waiting to enter it, the one the consumer holds.
      assert.isAtMost(mostFinished, bufferCapacity + 2, `${mostFinished} finished records waiting for the consumer`)
    }).pipe(withPolicy(play)))

  it.effect("stop: completing it mid-run admits no more rows; in-flight episodes end interrupted, are emitted, and the stream completes", () =>
    Effect.gen(function*() {
      const stop = yield* Deferred.make<void>()
      let resets = 0
      let resetsAtStop = -1
      const made = instances()
      const registry = new EnvironmentRegistry().register(define({
        name: "endless",
        description: "answers only when aborted",
        make: () =>
          made.track({
            reset: () => {
              resets++
              // Once every slot is busy, stop the run.
              if (resets === 4) {
                resetsAtStop = resets
                Effect.runFork(Deferred.succeed(stop, undefined))
              }
              return {}
            },
            step: (_, { signal }) => untilAborted(signal)
          })
      }))
      const rows = Array.from({ length: 200 }, () => rowFor("endless"))
      const records = yield* Effect.gen(function*() {
        const engine = yield* Engine
        return yield* Stream.runCollect(engine.run(Stream.fromIterable(rows), { stop }))
      }).pipe(
        Effect.provide(Engine.layer(options(registry, { concurrency: 4, envCallTimeoutMs: 30_000 }))),
        Effect.timeoutOrElse({ duration: 5_000, orElse: () => Effect.die(new Error("the stream did not complete after stop")) })
      )
      assert.strictEqual(resetsAtStop, 4)
      assert.isAtMost(resets, 4 + 4, `stop admitted ${resets} episodes of 200`)
      assert.strictEqual(records.length, made.closes.length, "every episode that started is emitted")
      assert.isAtLeast(records.length, 4)
      assert.isTrue(records.every((t) => t.finishReason === "interrupted"), records.map((t) => t.finishReason).join())
      assert.strictEqual(new Set(records.map((t) => t.id)).size, records.length)
      assert.deepStrictEqual(made.closes.filter((n) => n !== 1), [])
      assertRecordsSound(records)
    }).pipe(withPolicy(play)))

  it.effect("stop while the row source is blocked: the run still completes with the in-flight episodes", () =>
    Effect.gen(function*() {
      const stop = yield* Deferred.make<void>()
      const made = instances()
      const registry = new EnvironmentRegistry().register(define({
        name: "endless",
        description: "",
        make: () => made.track({ reset: () => ({}), step: (_, { signal }) => untilAborted(signal) })
      }))
      // Two rows, then a dataset that never yields another (a stalled reader, a live queue).
      const rows = Stream.concat(Stream.fromIterable([rowFor("endless"), rowFor("endless")]), Stream.never)
      const fiber = yield* Effect.gen(function*() {
        const engine = yield* Engine
        return yield* Stream.runCollect(engine.run(rows, { stop }))
      }).pipe(Effect.provide(Engine.layer(options(registry, { concurrency: 4, envCallTimeoutMs: 30_000 }))), Effect.forkChild)
      while (made.closes.length < 2) yield* Effect.sleep(5)
      yield* Deferred.succeed(stop, undefined)
      const records = yield* Fiber.join(fiber).pipe(
        Effect.timeoutOrElse({ duration: 3_000, orElse: () => Effect.die(new Error("the stream did not complete after stop")) })
      )
      assert.deepStrictEqual(records.map((t) => t.finishReason), ["interrupted", "interrupted"])
      assert.deepStrictEqual(made.closes, [1, 1])
    }).pipe(withPolicy(play)))

  it.effect("a consumer that stops early (take 5) interrupts the rest, and every environment is closed once", () =>
    Effect.gen(function*() {
      const made = instances()
      const stepSignals: Array<AbortSignal> = []
      const registry = new EnvironmentRegistry()
        .register(define({ name: "quick", description: "", make: () => made.track(healthy()) }))
        .register(define({
          name: "endless",
          description: "",
          make: () =>
            made.track({
              reset: () => ({}),
              step: (_, { signal }) => {
                stepSignals.push(signal)
                return never()
              }
            })
        }))
      const rows = Array.from({ length: 50 }, (_, i) => rowFor(i % 2 === 0 ? "quick" : "endless"))
      const records = yield* Effect.gen(function*() {
        const engine = yield* Engine
        return yield* Stream.runCollect(engine.run(Stream.fromIterable(rows)).pipe(Stream.take(5)))
      }).pipe(
        Effect.provide(Engine.layer(options(registry, { concurrency: 16, envCallTimeoutMs: 30_000 }))),
        Effect.timeoutOrElse({ duration: 5_000, orElse: () => Effect.die(new Error("take(5) did not end the run")) })
      )
      assert.strictEqual(records.length, 5)
      assert.isTrue(records.every((t) => t.finishReason === "done"))
      assert.isAbove(stepSignals.length, 0)
      assert.isTrue(stepSignals.every((signal) => signal.aborted), "in-flight steps are aborted")
      assert.deepStrictEqual(made.closes.filter((n) => n !== 1), [], "every environment made is closed exactly once")
    }).pipe(withPolicy(play)))

  it.effect("a dataset that fails mid-run fails the run; the episodes in flight end first and every environment is closed once", () =>
    Effect.gen(function*() {
      const made = instances()
      const stepSignals: Array<AbortSignal> = []
      const registry = new EnvironmentRegistry().register(define({
        name: "endless",
        description: "",
        make: () =>
          made.track({
            reset: () => ({}),
            step: (_, { signal }) => {
              stepSignals.push(signal)
              return untilAborted(signal)
            }
          })
      }))
      const rows = Stream.concat(
        Stream.fromIterable([rowFor("endless"), rowFor("endless"), rowFor("endless")]),
        Stream.fromEffect(Effect.sleep(50).pipe(Effect.andThen(Effect.fail("line 4 is not JSON" as const))))
      )
      const emitted: Array<Trajectory.Trajectory> = []
      const exit = yield* Effect.gen(function*() {
        const engine = yield* Engine
        return yield* Stream.runForEach(engine.run(rows), (t) => Effect.sync(() => emitted.push(t)))
      }).pipe(
        Effect.provide(Engine.layer(options(registry, { concurrency: 4, envCallTimeoutMs: 30_000, limits: limits({ timeoutMs: 300 }) }))),
        Effect.timeoutOrElse({ duration: 5_000, orElse: () => Effect.die(new Error("the run hung on the dataset error")) }),
        Effect.exit
      )
      assert.deepStrictEqual(Exit.findErrorOption(exit), Option.some<unknown>("line 4 is not JSON"))
      // The three admitted episodes were stopped (here by their 300 ms limit) and closed; whatever was emitted
      // before the failure is a sound record.
      assert.strictEqual(stepSignals.length, 3)
      assert.isTrue(stepSignals.every((signal) => signal.aborted))
      assert.deepStrictEqual(made.closes, [1, 1, 1])
      assert.isAtMost(emitted.length, 3)
      assertRecordsSound(emitted)
    }).pipe(withPolicy(play)))
})

describe("Engine options", () => {
  it.effect("a bad option is an error naming the field, before anything runs", () =>
    Effect.gen(function*() {
      const registry = EnvironmentRegistry.builtins()
      for (const [overrides, field] of [
        [{ concurrency: 0 }, `["concurrency"]`],
        [{ bufferCapacity: 1.5 }, `["bufferCapacity"]`],
        [{ limits: limits({ timeoutMs: 3_000_000_000 }) }, `["limits"]["timeoutMs"]`]
      ] as const) {
        const exit = yield* Effect.gen(function*() { yield* Engine }).pipe(
          Effect.provide(Engine.layer(options(registry, overrides))),
          Effect.exit
        )
        const error = Exit.findErrorOption(exit)
        assert.isTrue(Option.isSome(error))
        assert.include(String((error as Option.Some<{ message: string }>).value.message), field)
      }
    }).pipe(Effect.provide(policyLayer(() => "ok"))))
})
