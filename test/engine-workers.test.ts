/**
 * Episodes on worker threads (EngineOptions.workers): real worker threads, the real Qwen3 tokenizer, grid-quest
 * played by its scripted solver on the main thread. Records match the calling thread's; a stop reaches every
 * worker; a worker that cannot load its environments, or dies, fails the run with its reason.
 */
import { assert, describe, it, layer } from "@effect/vitest"
import { Deferred, Effect, Exit, Layer, Stream } from "effect"
import { fileURLToPath } from "node:url"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { Engine, type EngineOptions } from "../src/Engine.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { resolve } from "../src/Experiment.ts"
import { SamplingParams } from "../src/Generation.ts"
import * as TextPolicy from "../src/TextPolicy.ts"
import { Tokenizer } from "../src/Tokenizer.ts"
import type { Trajectory } from "../src/Trajectory.ts"
import { tokenizerDirs } from "./support.ts"

const environmentsModule = fileURLToPath(new URL("./engine-workers-environments.ts", import.meta.url))
const solver = (context: string) => solveGridQuest(context.slice(context.lastIndexOf("You are at")))
const rowsOf = (count: number, name = "grid-quest"): ReadonlyArray<DatasetRow> =>
  gridQuest.rows!({ seed: 7, count, config: {} }).map((row) => ({
    ...row,
    extra_info: { ...row.extra_info, interaction_kwargs: { ...row.extra_info.interaction_kwargs, name } }
  }))

const options = (overrides: Partial<EngineOptions> = {}): EngineOptions => ({
  environments: EnvironmentRegistry.builtins(),
  concurrency: 16,
  samplesPerRow: 2,
  limits: { maxTurns: 12, maxResponseTokens: 2048, maxNewTokens: 16, timeoutMs: 60_000 },
  sampling: SamplingParams.greedy,
  envCallTimeoutMs: 60_000,
  seed: 3,
  bufferCapacity: 16,
  ...overrides
})

/** The scripted policy; `heard` (set by a test) hears each turn it answers. */
let heard = () => {}
const engineLayer = (engineOptions: EngineOptions) =>
  Engine.layer(engineOptions).pipe(
    Layer.provideMerge(TextPolicy.layer(({ context }) => {
      heard()
      return solver(context)
    })),
    Layer.provideMerge(Tokenizer.layer(tokenizerDirs.qwen3))
  )

const collect = (rows: ReadonlyArray<DatasetRow>, runOptions: { stop?: Deferred.Deferred<void>; idPrefix?: string } = {}) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    return yield* Stream.runCollect(engine.run(Stream.fromIterable(rows), runOptions))
  })

/** The record without its timings, which differ from run to run. */
const untimed = (t: Trajectory) => JSON.stringify({ ...t, turns: t.turns.map(({ timings: _, ...turn }) => turn) })

// One engine on two workers for the runs below: starting workers (each loads the tokenizer) is most of their time.
layer(engineLayer(options({ workers: { count: 2, module: environmentsModule } })), { timeout: 60_000 })("Engine on two worker threads", (it) => {
  it.effect("makes the records the calling thread makes, one per row and sample", () =>
    Effect.gen(function*() {
      const rows = rowsOf(12)
      const here = yield* collect(rows).pipe(Effect.provide(engineLayer(options())))
      const onWorkers = yield* collect(rows)
      assert.strictEqual(onWorkers.length, 24)
      const ids = onWorkers.map((t) => t.id).sort()
      assert.deepStrictEqual(ids, rows.flatMap((_, row) => [`${row}-0`, `${row}-1`]).sort())
      const expected = new Map(here.map((t) => [t.id, untimed(t)]))
      for (const record of onWorkers) assert.strictEqual(untimed(record), expected.get(record.id), record.id)
      assert.isTrue(onWorkers.every((t) => t.finishReason === "done" && t.reward > 0))
    }), 60_000)

  it.effect("a stop interrupts the running episodes of every worker; each is still emitted", () =>
    Effect.gen(function*() {
      const stop = yield* Deferred.make<void>()
      let turns = 0
      // Every episode has generated its first turn and waits on its environment: stop them all.
      heard = () => void (++turns === 16 && Deferred.doneUnsafe(stop, Effect.void))
      const records = yield* collect(rowsOf(8, "waiting-grid-quest"), { stop }).pipe(Effect.ensuring(Effect.sync(() => (heard = () => {}))))
      assert.strictEqual(records.length, 16)
      assert.isTrue(records.every((t) => t.finishReason === "interrupted"), records.map((t) => t.finishReason).join(","))
    }), 60_000)

  it.effect("a consumer that takes 3 records interrupts the rest across threads, and the engine runs again", () =>
    Effect.gen(function*() {
      const engine = yield* Engine
      const first = yield* Stream.runCollect(engine.run(Stream.fromIterable(rowsOf(8))).pipe(Stream.take(3)))
      assert.strictEqual(first.length, 3)
      const second = yield* collect(rowsOf(4), { idPrefix: "again-" })
      assert.deepStrictEqual(second.map((t) => t.id).sort(), rowsOf(4).flatMap((_, row) => [`again-${row}-0`, `again-${row}-1`]).sort())
      assert.isTrue(second.every((t) => t.finishReason === "done"))
    }), 60_000)
})

describe("Engine workers that cannot go on", () => {
  it.effect("a worker module that cannot be loaded fails the run, naming the worker and the module", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(collect(rowsOf(2)).pipe(Effect.provide(engineLayer(options({ workers: { count: 1, module: "/nowhere/environments.ts" } })))))
      assert.isTrue(Exit.isFailure(exit))
      const message = String(Exit.isFailure(exit) ? exit.cause : "")
      assert.match(message, /engine worker 0 failed: cannot load the environments of \/nowhere\/environments\.ts/)
    }), 60_000)

  it.effect("a worker whose thread dies fails the run with its reason instead of hanging", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(collect(rowsOf(2, "crashing-grid-quest")).pipe(Effect.provide(engineLayer(options({ workers: { count: 1, module: environmentsModule } })))))
      assert.isTrue(Exit.isFailure(exit))
      assert.match(String(Exit.isFailure(exit) ? exit.cause : ""), /engine worker 0 failed: the environment blew up its thread/)
    }), 60_000)

  it.effect("workers refuse an inspector: its function cannot cross threads", () =>
    Effect.gen(function*() {
      const exit = yield* Effect.exit(collect(rowsOf(1)).pipe(Effect.provide(engineLayer(options({ workers: { count: 2 }, inspect: () => {} })))))
      assert.match(String(Exit.isFailure(exit) ? exit.cause : ""), /workers cannot run episodes with an inspector/)
    }))

  it("an experiment's `workers` defaults to 0 and refuses an agent", () => {
    const experiment = { name: "x", model: "m", environment: { name: "grid-quest", episodes: 4 } }
    assert.strictEqual(resolve(experiment).workers, 0)
    assert.strictEqual(resolve({ ...experiment, workers: 2 }).workers, 2)
    assert.throws(() => resolve({ ...experiment, workers: 2, agent: async () => 0 }), /`workers` cannot play episodes with an `agent`/)
    assert.throws(() => resolve({ ...experiment, workers: -1 }), /workers/)
  })
})
