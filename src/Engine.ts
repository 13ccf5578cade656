/**
 * The Engine runs episodes over a stream of dataset rows: `samplesPerRow` episodes per row (a GRPO group),
 * at most `concurrency` at once, each supervised by Episode.run. Every row yields exactly one trajectory per
 * sample, whatever goes wrong in it; only a stopped run leaves rows (and the rest of a group) unstarted. Trajectories leave through a bounded buffer, so a slow consumer (a
 * disk, the trainer) holds back new episodes instead of piling records up in memory.
 */
import { Context, Deferred, Effect, Layer, Result, Schema, Stream } from "effect"
import type { InspectionEvent } from "xstate"
import type { EpisodeLimits } from "../machines/episode.ts"
import { AgentGateway, make as makeGateway } from "./AgentGateway.ts"
import * as AgentEpisode from "./AgentEpisode.ts"
import type { DatasetRow } from "./DatasetRow.ts"
import { decodeOrProblem, EngineNumbers } from "./EngineSchema.ts"
import type { Environment } from "./Environment.ts"
import type { EnvironmentRegistry } from "./environments/registry.ts"
import * as EngineWorkers from "./EngineWorkers.ts"
import * as Episode from "./Episode.ts"
import type { SamplingParams } from "./Generation.ts"
import { Inference } from "./Inference.ts"
import { deriveSeed } from "./Seed.ts"
import { Tokenizer } from "./Tokenizer.ts"
import type { Trajectory } from "./Trajectory.ts"

export interface EngineOptions {
  readonly environments: EnvironmentRegistry
  /** Per-environment config, by registered name, passed to the definition's `make`. */
  readonly environmentConfig?: Readonly<Record<string, Record<string, unknown>>> | undefined
  readonly concurrency: number
  readonly samplesPerRow: number
  readonly limits: EpisodeLimits
  /** Its maxNewTokens is replaced each turn by what `limits` leave for that turn. */
  readonly sampling: SamplingParams
  readonly envCallTimeoutMs: number
  /** Seeds rows that carry no `extra_info.seed`. */
  readonly seed: number
  /** Finished trajectories waiting for the consumer, at most. */
  readonly bufferCapacity: number
  readonly inspect?: ((event: InspectionEvent) => void) | undefined
  /**
   * The user's own agent plays every episode instead of an environment (docs/agents.md): it gets the row and
   * a base URL of its own, served by a loopback gateway the engine starts; its reward is the episode's.
   */
  readonly agent?: AgentEpisode.Agent | undefined
  /**
   * Episodes on worker threads, when one event loop is not enough (docs/benchmarks.md, "More cores"): the
   * records are the ones this thread would make; generation still goes through this thread's Inference. Not
   * with `agent` or `inspect`, whose functions cannot cross threads.
   */
  readonly workers?: EngineWorkers.WorkersOptions | undefined
}

export interface RunOptions {
  /** Completing it stops the run gently: no new episodes, running ones end `interrupted` and are emitted. */
  readonly stop?: Deferred.Deferred<void> | undefined
  /** This run's sampling and samples per row instead of the engine's (greedy evaluation, say). */
  readonly sampling?: SamplingParams | undefined
  readonly samplesPerRow?: number | undefined
  /** Put before every episode id, so that episodes of different runs never share one (nor a KV cache). */
  readonly idPrefix?: string | undefined
}

export class Engine extends Context.Service<Engine, {
  readonly options: EngineOptions
  run<E, R>(rows: Stream.Stream<DatasetRow, E, R>, runOptions?: RunOptions): Stream.Stream<Trajectory, E, R>
}>()("episodic/Engine") {
  static readonly layer = (options: EngineOptions): Layer.Layer<Engine, EngineOptionsError, Inference | Tokenizer> =>
    Layer.effect(Engine, make(options))
}

export class EngineOptionsError extends Schema.TaggedError<EngineOptionsError>()("EngineOptionsError", {
  message: Schema.String
}) {}

const make = (options: EngineOptions) =>
  Effect.gen(function*() {
    const checked = decodeOrProblem(EngineNumbers, options)
    if (Result.isFailure(checked)) return yield* new EngineOptionsError({ message: `engine options: ${checked.failure}` })
    const context = yield* Effect.context<Inference | Tokenizer>()
    const gateway = options.agent === undefined ? undefined : yield* makeGateway()
    const workerCount = options.workers?.count ?? 0
    if (!Number.isSafeInteger(workerCount) || workerCount < 0) {
      return yield* new EngineOptionsError({ message: `engine options: workers.count must be a whole number >= 0, got ${workerCount}` })
    }
    if (workerCount > 0 && (options.agent !== undefined || options.inspect !== undefined)) {
      return yield* new EngineOptionsError({ message: `engine options: workers cannot run episodes with ${options.agent !== undefined ? "an agent" : "an inspector"} (a function on this thread); leave workers out` })
    }
    const workers = workerCount === 0 ? undefined : yield* EngineWorkers.make({
      workers: options.workers!,
      concurrency: options.concurrency,
      environmentConfig: options.environmentConfig ?? {},
      envCallTimeoutMs: options.envCallTimeoutMs
    }).pipe(Effect.catchTag("EngineWorkerError", (error) => Effect.fail(new EngineOptionsError({ message: error.message }))))

    const episodeOf = (row: DatasetRow, rowIndex: number, sample: number, runOptions: RunOptions | undefined): Episode.EpisodeSpec => {
      const name = row.extra_info.interaction_kwargs.name
      const seed = row.extra_info.seed ?? deriveSeed(options.seed, rowIndex)
      return {
        input: {
          id: `${runOptions?.idPrefix ?? ""}${rowIndex}-${sample}`,
          groupId: row.extra_info.group_id ?? String(rowIndex),
          interaction: name,
          seed,
          limits: options.limits
        },
        row,
        makeEnvironment: (): Environment => options.environments.get(name).make(options.environmentConfig?.[name] ?? {}),
        sampling: runOptions?.sampling ?? options.sampling,
        sample,
        envCallTimeoutMs: options.envCallTimeoutMs,
        inspect: options.inspect,
        stop: runOptions?.stop
      }
    }

    const run = <E, R>(rows: Stream.Stream<DatasetRow, E, R>, runOptions?: RunOptions): Stream.Stream<Trajectory, E, R> =>
      workers === undefined ? runWith(rows, runOptions, undefined) : Stream.suspend(() => {
        const onWorkers = workers.startRun(runOptions?.stop)
        return runWith(rows, runOptions, onWorkers.episode).pipe(Stream.ensuring(onWorkers.end))
      })

    const runWith = <E, R>(
      rows: Stream.Stream<DatasetRow, E, R>,
      runOptions: RunOptions | undefined,
      /** Plays an episode on a worker thread instead of this one. */
      onWorker: ((spec: Episode.EpisodeSpec) => Effect.Effect<Trajectory>) | undefined
    ): Stream.Stream<Trajectory, E, R> => {
      const stop = runOptions?.stop
      const stopped = () => stop !== undefined && Deferred.isDoneUnsafe(stop)
      // Stop reading rows once stopped; rows already read (streams hand them over in chunks) are skipped at
      // admission, so only episodes that were running when the stop came end `interrupted`.
      const admitted = stop === undefined ? rows : rows.pipe(Stream.interruptWhen(Deferred.await(stop)))
      return admitted.pipe(
        Stream.zipWithIndex,
        // An array per row rather than a stream per row: a stream costs tens of µs to start.
        Stream.map(([row, rowIndex]) =>
          Array.from({ length: runOptions?.samplesPerRow ?? options.samplesPerRow }, (_, sample) => episodeOf(row, rowIndex, sample, runOptions))
        ),
        Stream.flattenIterable,
        Stream.mapEffect(
          (spec) =>
            stopped()
              ? Effect.succeed(undefined)
              : onWorker !== undefined
              ? onWorker(spec)
              : options.agent !== undefined
              ? AgentEpisode.run({ ...spec, agent: options.agent }).pipe(Effect.provideContext(context), Effect.provideService(AgentGateway, gateway!))
              : Episode.run(spec).pipe(Effect.provideContext(context)),
          { concurrency: options.concurrency, unordered: true }
        ),
        Stream.filter((trajectory): trajectory is Trajectory => trajectory !== undefined),
        // Stream.buffer hands the consumer its whole queue at once and refills behind it, so a queue of half
        // the capacity keeps the records waiting for the consumer within bufferCapacity (plus the one in hand).
        Stream.buffer({ capacity: Math.max(1, Math.ceil(options.bufferCapacity / 2)) })
      )
    }

    return Engine.of({ options, run })
  })
