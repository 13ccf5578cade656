/**
 * The Engine under load and under failure: many rows at high concurrency through an environment registry
 * whose environments throw, hang or return garbage; unknown environments; GRPO groups; backpressure from a
 * slow consumer; and a gentle stop mid-run.
 */
import { assert, layer } from "@effect/vitest"
import { Deferred, Effect, Stream } from "effect"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { Engine, type EngineOptions } from "../src/Engine.ts"
import { define, type Environment } from "../src/Environment.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import type { TextPolicy, TextPolicyInput } from "../src/TextPolicy.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { limits, policyLayer, sampling } from "./support.ts"

/** A small seeded PRNG (mulberry32), so the mix of failures is the same every run. */
const prng = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

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

/** Done after two steps, paying 1 each; sleeps a little (seeded) so episodes finish out of order. */
const healthy = (delayMs: number): Environment => {
  let steps = 0
  return {
    reset: async () => {
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

const expectedMessage: Record<Failure, RegExp> = {
  "throws-in-reset": /reset threw: reset exploded/,
  "throws-in-step": /step threw: step exploded/,
  hangs: /step did not answer within 50 ms/,
  "hangs-politely": /step did not answer within 50 ms/,
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
  envCallTimeoutMs: 50,
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
      const random = prng(20240601)
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
        .register(define({ name: "healthy", description: "done after two steps", make: () => made.track(healthy(0)) }))
      // One definition per failure, so a row names its environment the way a dataset would.
      for (const kind of failures) {
        registry.register(define({ name: kind, description: kind, make: () => made.track(failing(kind)) }))
      }
      // Healthy rows with a delay get their own definition per delay, to shuffle completion order.
      for (const delay of [1, 2, 3]) {
        registry.register(define({ name: `healthy-${delay}`, description: "slow", make: () => made.track(healthy(delay)) }))
      }
      const rows = plan.map(({ kind, delay }) => rowFor(kind === "healthy" && delay > 0 ? `healthy-${delay}` : kind))

      const started = Date.now()
      const records = yield* collect(options(registry, { concurrency: 64, bufferCapacity: 32 }), rows)
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
      // 64 at a time: the ~33 hanging episodes (50 ms each) overlap instead of queueing.
      assert.isBelow(elapsed, 10_000)
    }).pipe(withPolicy(play)))

  it.effect("a row naming an unregistered environment yields one env_error record naming it; the run goes on", () =>
    Effect.gen(function*() {
      const registry = new EnvironmentRegistry().register(define({ name: "ok", description: "", make: () => healthy(0) }))
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
      const registry = new EnvironmentRegistry().register(define({ name: "ok", description: "", make: () => healthy(0) }))
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

  it.effect("backpressure: a slow consumer holds back new episodes", () =>
    Effect.gen(function*() {
      let started = 0
      let consumed = 0
      let mostOutstanding = 0
      const registry = new EnvironmentRegistry().register(define({
        name: "counted",
        description: "",
        make: (): Environment => ({
          reset: () => {
            started++
            mostOutstanding = Math.max(mostOutstanding, started - consumed)
            return {}
          },
          step: () => ({ observation: "bye", reward: 1, done: true })
        })
      }))
      const concurrency = 4
      const bufferCapacity = 4
      const engine = Engine.layer(options(registry, { concurrency, bufferCapacity }))
      const total = yield* Effect.gen(function*() {
        const engine = yield* Engine
        return yield* engine.run(Stream.fromIterable(Array.from({ length: 40 }, () => rowFor("counted")))).pipe(
          Stream.mapEffect(() =>
            Effect.sleep(20).pipe(Effect.andThen(Effect.sync(() => ++consumed))), { concurrency: 1 }),
          Stream.runCount
        )
      }).pipe(Effect.provide(engine))
      assert.strictEqual(total, 40)
      assert.strictEqual(started, 40)
      assert.isAtMost(mostOutstanding, concurrency + bufferCapacity + 4, `at most ${mostOutstanding} episodes ahead of the consumer`)
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
})
