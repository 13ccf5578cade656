/**
 * Episodes on worker threads (EngineOptions.workers): when one event loop is not enough for the engine's own
 * work per turn (machine, fibers, environment, tokenizer), each worker thread runs episodes with its own
 * environments and tokenizer, and the main thread keeps what must stay one: the Inference service (so every
 * worker's requests batch together on the one inference actor, and weights swap in one place) and the stream
 * of trajectories the trainer reads.
 *
 * Two RPC groups, both Effect RPC. `EpisodeRpcs`, main thread to workers: one call per episode over
 * `RpcClient.layerProtocolWorker`, whose pool of workers deals the calls out (no scheduler of ours) and
 * answers with the trajectory. `InferenceRpcs`, each worker to the main thread: generation, release and the
 * run's stop, over a MessageChannel of the worker's own (MessagePortRpc), served here by the main thread's
 * Inference. A worker plays the episode the main thread specified (id, seed, limits, sampling), so its record
 * is the one the calling thread would have made.
 */
import { NodeWorker } from "@effect/platform-node"
import { Deferred, Effect, Layer, Schema, Scope } from "effect"
import { Rpc, RpcClient, type RpcClientError, RpcGroup, RpcServer, RpcWorker } from "effect/rpc"
import * as path from "node:path"
import { MessageChannel, Worker } from "node:worker_threads"
import { DatasetRow } from "./DatasetRow.ts"
import { EpisodeLimits } from "./EngineSchema.ts"
import type { EpisodeSpec } from "./Episode.ts"
import { GenerationRequest, GenerationResult, InferenceError, SamplingParams } from "./Generation.ts"
import { errorMessage } from "./errorMessage.ts"
import { Inference } from "./Inference.ts"
import { serverProtocol } from "./MessagePortRpc.ts"
import { Tokenizer } from "./Tokenizer.ts"
import type { Trajectory } from "./Trajectory.ts"

export interface WorkersOptions {
  /** Worker threads that run the episodes; 0 runs them on the calling thread. */
  readonly count: number
  /**
   * A module (a path or file URL) whose default export has `environments`, as an experiment file's does: each
   * worker imports it and registers them beside the built-in ones. Environments are functions and cannot
   * cross threads; without a module the workers know only the built-in environments and URLs.
   */
  readonly module?: string | undefined
}

/**
 * A trajectory crossing from a worker as it is: that worker's episode machine made it, and checking it again
 * here would cost the main thread about 200 µs per record (see Trajectory.encode), the thread workers relieve.
 */
const TrajectoryFromWorker = Schema.declare((u: unknown): u is Trajectory => typeof u === "object" && u !== null)

export class EpisodeRpcs extends RpcGroup.make(
  Rpc.make("Episode", {
    payload: {
      input: Schema.Struct({ id: Schema.String, groupId: Schema.String, interaction: Schema.String, seed: Schema.Int, limits: EpisodeLimits }),
      row: DatasetRow,
      sampling: SamplingParams,
      sample: Schema.Int,
      /** The run whose stop interrupts this episode, when the run can be stopped. */
      run: Schema.optionalKey(Schema.Int)
    },
    success: TrajectoryFromWorker
  })
) {}

export class InferenceRpcs extends RpcGroup.make(
  Rpc.make("Generate", { payload: GenerationRequest, success: GenerationResult, error: InferenceError }),
  Rpc.make("Release", { payload: { episodeId: Schema.String } }),
  /** Answers true once the run is stopped, false once it has ended unstopped; a worker asks once per run. */
  Rpc.make("AwaitStop", { payload: { run: Schema.Int }, success: Schema.Boolean })
) {}

/** No span per call: a call per turn, and a span costs more than the call's own work (see Episode.run). */
export const untraced = { disableTracing: true } as const

/** What a worker starts from: the RPC workers' initial message. */
export const WorkerSettings = Schema.Struct({
  tokenizer: Schema.String,
  module: Schema.optionalKey(Schema.String),
  environmentConfig: Schema.Record(Schema.String, Schema.Record(Schema.String, Schema.Unknown)),
  envCallTimeoutMs: Schema.Int,
  /** Whether the main thread's Inference keeps anything per episode (a KV cache) to release. */
  release: Schema.Boolean,
  /**
   * The worker's end of its channel to the main thread's Inference, a MessagePort (transferred, not cloned):
   * `Any`, the one schema whose JSON codec lets a value that is not JSON through; the worker checks it.
   */
  inference: Schema.Any
})
export type WorkerSettings = typeof WorkerSettings.Type

/** A worker died (its thread threw, its module would not load): the run cannot go on without its episodes. */
export class EngineWorkerError extends Schema.TaggedError<EngineWorkerError>()("EngineWorkerError", {
  message: Schema.String
}) {}

/** The worker thread's entry: a checkout runs engineWorker.ts; the installed package its compiled engineWorker.js. */
const entry = new URL(import.meta.url.endsWith(".ts") ? "./engineWorker.ts" : "./engineWorker.js", import.meta.url)

export interface EngineWorkers {
  /**
   * One run's episodes on the workers. Its `stop` reaches every worker that plays one of them; `end` (once the
   * run's stream is over) tells the workers still listening for that stop that none will come.
   */
  startRun(stop: Deferred.Deferred<void> | undefined): {
    readonly episode: (spec: EpisodeSpec) => Effect.Effect<Trajectory>
    readonly end: Effect.Effect<void>
  }
}

/** Starts `workers.count` worker threads, for as long as the scope lasts. */
export const make = Effect.fnUntraced(function*(options: {
  readonly workers: WorkersOptions
  readonly concurrency: number
  readonly environmentConfig: Readonly<Record<string, Record<string, unknown>>>
  readonly envCallTimeoutMs: number
}) {
  const inference = yield* Inference
  const tokenizer = yield* Tokenizer
  const scope = yield* Effect.scope
  const runs = new Map<number, { readonly stop: Deferred.Deferred<void>; readonly ended: Deferred.Deferred<boolean> }>()
  let nextRun = 0

  const handlers = InferenceRpcs.toLayer({
    Generate: (request) => inference.generate(request),
    Release: ({ episodeId }) => inference.release?.(episodeId) ?? Effect.void,
    AwaitStop: ({ run }) => {
      const entry = runs.get(run)
      return entry === undefined ? Effect.succeed(false) : Effect.raceFirst(Deferred.await(entry.stop).pipe(Effect.as(true)), Deferred.await(entry.ended))
    }
  })

  // Each worker, as it starts, gets its own channel to this thread's Inference, served for as long as the engine.
  const initialMessage = Effect.gen(function*() {
    const channel = new MessageChannel()
    const protocol = yield* serverProtocol(channel.port1).pipe(Scope.provide(scope))
    yield* RpcServer.make(InferenceRpcs, untraced).pipe(Effect.provideService(RpcServer.Protocol, protocol), Effect.provide(handlers), Effect.forkIn(scope))
    const settings: WorkerSettings = {
      tokenizer: path.resolve(tokenizer.directory),
      ...(options.workers.module === undefined ? {} : { module: options.workers.module }),
      environmentConfig: options.environmentConfig,
      envCallTimeoutMs: options.envCallTimeoutMs,
      release: inference.release !== undefined,
      inference: channel.port2
    }
    return [settings, [channel.port2]] as const
  })

  // Why each worker died, in its own words: Effect's worker pool reports only that one did.
  const deaths: Array<string> = []
  const spawn = (id: number) => {
    const worker = new Worker(entry, { name: `episodic engine worker ${id}` })
    worker.on("error", (error) => deaths.push(`engine worker ${id} failed: ${errorMessage(error)}`))
    worker.on("exit", (code) => code !== 0 && deaths.push(`engine worker ${id} exited with code ${code}`))
    return worker
  }
  const protocol = yield* Layer.build(
    RpcClient.layerProtocolWorker({ size: options.workers.count, concurrency: Math.ceil(options.concurrency / options.workers.count) }).pipe(
      Layer.provide(NodeWorker.layer(spawn)),
      Layer.provide(Layer.succeed(RpcWorker.InitialMessage)(initialMessage))
    )
  ).pipe(Effect.mapError((error) => new EngineWorkerError({ message: `could not start the engine workers: ${error.message}` })))
  const client = yield* RpcClient.make(EpisodeRpcs, untraced).pipe(Effect.provideContext(protocol))

  // A dead worker ends the run as a defect: the run's stream fails only with its rows' errors, and a worker
  // that cannot play its episodes is the engine failing, as a defect in Episode.run would be.
  const died = (error: RpcClientError.RpcClientError) =>
    Effect.die(new EngineWorkerError({ message: deaths[0] ?? `an engine worker failed: ${error.message}` }))

  return {
    startRun: (stop) => {
      const run = stop === undefined ? undefined : nextRun++
      const ended = Deferred.makeUnsafe<boolean>()
      if (run !== undefined) runs.set(run, { stop: stop!, ended })
      return {
        episode: (spec) =>
          client.Episode({ input: spec.input, row: spec.row, sampling: spec.sampling, sample: spec.sample, ...(run === undefined ? {} : { run }) }).pipe(
            Effect.catchTag("RpcClientError", died)
          ),
        end: Effect.sync(() => {
          if (run === undefined) return
          runs.delete(run)
          Deferred.doneUnsafe(ended, Effect.succeed(false))
        })
      }
    }
  } satisfies EngineWorkers
})
