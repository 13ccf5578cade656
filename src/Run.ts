/**
 * Runs a resolved experiment end to end: rows -> Engine -> `runs/<name>/trajectories.jsonl`, then
 * `summary.json`. The run directory also gets the resolved `config.json`, so a run can be read back and
 * repeated from its directory.
 */
import { type Deferred, Effect, Layer, Queue, Schedule, Stream } from "effect"
import { existsSync, mkdirSync, renameSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import * as Dataset from "./Dataset.ts"
import type { DatasetRow } from "./DatasetRow.ts"
import { Engine } from "./Engine.ts"
import { EnvironmentRegistry } from "./environments/registry.ts"
import { errorMessage } from "./errorMessage.ts"
import { ExperimentError, type ExperimentConfig, type ResolvedExperiment } from "./Experiment.ts"
import { InferenceActor } from "../actors/inference/index.ts"
import * as Checkpoint from "../actors/trainer/checkpoint.ts"
import type { InferenceError } from "./Generation.ts"
import { Inference } from "./Inference.ts"
import { hasModel } from "./model/huggingFace.ts"
import { initModel } from "./model/init.ts"
import * as JsonlWriter from "./JsonlWriter.ts"
import * as TextPolicy from "./TextPolicy.ts"
import { Tokenizer } from "./Tokenizer.ts"
import type { FinishReason, Trajectory } from "./Trajectory.ts"
import { RunMonitor, tokenDriftOf, type MetricsPoint } from "./RunMonitor.ts"
import { SamplingParams } from "./Generation.ts"
import { writeTrajectoriesParquet } from "./ParquetOutput.ts"
import { writePlots, writePngs } from "./plots.ts"
import { evaluate, type EvaluationSummary } from "./Evaluation.ts"
import { train, type TrainingSummary } from "./Training.ts"
import * as RemoteRun from "./remote-inference/run.ts"
import type { InspectionEvent } from "xstate"

export type { EvaluationSummary }

export interface Summary {
  readonly name: string
  readonly episodes: number
  readonly finish_reasons: Partial<Record<FinishReason, number>>
  readonly mean_reward: number
  readonly mean_turns: number
  readonly response_tokens: number
  readonly wall_seconds: number
  readonly episodes_per_second: number
  readonly interrupted: boolean
  /** The held-out evaluation, when the experiment asks for one. */
  readonly eval_success?: number
  readonly eval_mean_reward?: number
  readonly evaluation?: EvaluationSummary
  /** Held-out greedy success right after the warm start (SFT), when the run trains with one. */
  readonly warmstart_success?: number | null
  readonly training?: TrainingSummary
  /** Which distribution response_logprobs are of: sampled (the in-process actor), temperature or raw (inference servers). */
  readonly logprob_kind: string
  /** Episodes whose remote environment tokenized the conversation differently from the policy, when any did. */
  readonly token_drift_episodes?: number
}

/** What a run streams: every finished trajectory, and a metrics point (also a line of metrics.jsonl) now and then. */
export type RunEvent =
  | { readonly type: "trajectory"; readonly trajectory: Trajectory }
  | { readonly type: "metrics"; readonly metrics: MetricsPoint }

export interface RunOptions {
  /** Completing it stops the run gently (Ctrl-C): running episodes end `interrupted` and are written. */
  readonly stop?: Deferred.Deferred<void> | undefined
  /** Called once the run directory exists, before the first episode, with the run's live monitor. */
  readonly onStart?: ((directory: string, monitor: RunMonitor) => void) | undefined
  /** Called for every trajectory and metrics point, in order. */
  readonly onEvent?: ((event: RunEvent) => void) | undefined
  /** Lines worth telling the person running it (the trainer's backend, the warm start's result). */
  readonly onLog?: ((line: string) => void) | undefined
  /** Receives every episode actor's inspection events (the Stately inspector). */
  readonly inspect?: ((event: InspectionEvent) => void) | undefined
}

export interface RunResult {
  readonly directory: string
  readonly summary: Summary
}

/** Where a run writes. */
export const runDirectory = (experiment: ResolvedExperiment) => path.resolve(experiment.out, experiment.name)

/** Writes a file whole or not at all: readers never see half a summary. */
const writeAtomically = (file: string, text: string) => {
  const partial = `${file}.partial`
  writeFileSync(partial, text)
  renameSync(partial, file)
}

/**
 * The policy a run generates with: the experiment's own text policy, or the model through the shared
 * inference actor. A missing model is made first when the experiment asks for that (the default one does),
 * and is otherwise one clear line before anything starts.
 */
const inferenceFor = (
  experiment: ResolvedExperiment,
  config: ExperimentConfig
): Effect.Effect<Layer.Layer<Inference, InferenceError, Tokenizer>, ExperimentError> =>
  Effect.gen(function*() {
    const directory = path.resolve(RemoteRun.localModel(experiment))
    // A text policy needs only the tokenizer; the model needs its graph too. Either is made when missing,
    // if the experiment says how.
    const missing = config.policy !== undefined
      ? !existsSync(path.join(directory, "tokenizer.json"))
      : !hasModel(directory)
    if (missing) {
      const init = experiment.modelInit
      if (init === undefined) {
        return yield* new ExperimentError({
          message: `experiment "${experiment.name}" needs a model at ${directory} (no ${config.policy === undefined ? "onnx/model.onnx or safetensors weights" : "tokenizer.json"} there); make one with \`npx episodic model init --out ${experiment.model}\``
        })
      }
      yield* Effect.logInfo(`making the ${init.preset} model at ${directory} (first use)`)
      yield* Effect.tryPromise({
        try: () => initModel(directory, { ...init, replace: false }),
        catch: (cause) => new ExperimentError({ message: `cannot make the model at ${directory}: ${errorMessage(cause)}` })
      })
    }
    if (config.policy !== undefined) return TextPolicy.layer(config.policy)
    const settings = experiment.inference
    return InferenceActor.layer({
      model: directory,
      maxBatchSize: settings.maxBatchSize,
      maxPrefillTokens: settings.maxPrefillTokens,
      ...(settings.feedMaxTokens === undefined ? {} : { feedMaxTokens: settings.feedMaxTokens }),
      cacheBudgetBytes: settings.cacheBudgetMiB * 1024 ** 2,
      provider: settings.provider,
      ...(settings.threads === undefined ? {} : { threads: settings.threads }),
      ...(settings.dtype === undefined ? {} : { dtype: settings.dtype })
    })
  })

const rowsFor = (experiment: ResolvedExperiment, registry: EnvironmentRegistry): Stream.Stream<DatasetRow, Dataset.DatasetError> => {
  if (experiment.dataset !== undefined) return Dataset.readRows(experiment.dataset)
  const { name, episodes } = experiment.environment!
  const definition = registry.get(name)
  if (definition.rows === undefined) {
    throw new ExperimentError({ message: `environment "${name}" makes no seeded rows; give the experiment a dataset` })
  }
  return Stream.fromIterable(definition.rows({ seed: experiment.seed, count: episodes, config: experiment.environmentConfig[name] ?? {} }))
}

export const run = (requested: ResolvedExperiment, config: ExperimentConfig, options: RunOptions = {}) => {
  const registry = EnvironmentRegistry.builtins()
  for (const definition of config.environments ?? []) registry.register(definition)
  return Effect.gen(function*() {
    // Inference servers are asked what they are first: the run records their tokenizer and logprob kind.
    const remote = yield* RemoteRun.prepare(requested, runDirectory(requested))
    const experiment = remote?.experiment ?? requested
    const inference = remote?.layer ?? (yield* inferenceFor(experiment, config))
    if (experiment.dataset !== undefined) {
      // Refuse bad data before the first episode, naming every bad row, rather than fail halfway through.
      const problems = yield* Dataset.validateRows(experiment.dataset)
      if (problems.length > 0) {
        const shown = problems.slice(0, 10).map((problem) => problem.message)
        if (problems.length > shown.length) shown.push(`... and ${problems.length - shown.length} more`)
        return yield* new ExperimentError({ message: `${problems.length} bad row(s), nothing was run:\n  ${shown.join("\n  ")}` })
      }
    }
    const rows = yield* Effect.try({
      try: () => rowsFor(experiment, registry),
      catch: (cause) =>
        cause instanceof ExperimentError
          ? cause
          : new ExperimentError({ message: errorMessage(cause) })
    })
    const monitor = new RunMonitor(
      experiment.name,
      experiment.environment === undefined ? undefined : experiment.environment.episodes * experiment.samplesPerRow
    )
    const workers = yield* workersFor(experiment, config, options)
    const engine = Engine.layer({
      // Episodes on worker threads send no inspection events here: the monitor then counts finished episodes only.
      inspect: workers !== undefined ? undefined : (event) => {
        monitor.observe(event)
        options.inspect?.(event)
      },
      workers,
      environments: registry,
      environmentConfig: experiment.environmentConfig,
      concurrency: experiment.concurrency,
      samplesPerRow: experiment.samplesPerRow,
      limits: experiment.limits,
      sampling: experiment.sampling,
      envCallTimeoutMs: experiment.envCallTimeoutMs,
      seed: experiment.seed,
      bufferCapacity: Math.max(16, experiment.concurrency),
      agent: config.agent
    }).pipe(Layer.provideMerge(inference), Layer.provideMerge(Tokenizer.layer(RemoteRun.localModel(experiment))))
    return yield* rollout(experiment, config, rows, registry, monitor, options).pipe(Effect.scoped, Effect.provide(engine))
  })
}

/** The engine's worker threads: each imports the experiment file when the experiment has environments of its own. */
const workersFor = (experiment: ResolvedExperiment, config: ExperimentConfig, options: RunOptions) => {
  if (experiment.workers === 0) return Effect.succeed(undefined)
  if (options.inspect !== undefined) {
    return Effect.fail(new ExperimentError({ message: "the inspector cannot watch episodes on worker threads: leave out `workers` or --inspect" }))
  }
  if ((config.environments ?? []).length === 0) return Effect.succeed({ count: experiment.workers })
  if (experiment.source === undefined) {
    return Effect.fail(new ExperimentError({ message: "`workers` load the experiment's `environments` from its file: run it with `episodic run FILE` (or set `source`)" }))
  }
  return Effect.succeed({ count: experiment.workers, module: experiment.source })
}

const rollout = (
  experiment: ResolvedExperiment,
  config: ExperimentConfig,
  rows: Stream.Stream<DatasetRow, Dataset.DatasetError>,
  registry: EnvironmentRegistry,
  monitor: RunMonitor,
  options: RunOptions
) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    const inference = yield* Inference
    const directory = runDirectory(experiment)
    mkdirSync(directory, { recursive: true })
    writeAtomically(path.join(directory, "config.json"), JSON.stringify(experiment, null, 2) + "\n")
    const trajectoriesFile = path.join(directory, "trajectories.jsonl")
    // A run directory holds one run: start its trajectories and metrics afresh, unless a training run goes
    // on from its checkpoint, when they continue.
    const resuming = experiment.trainer?.resume === true && Checkpoint.exists(Checkpoint.directoryOf(directory))
    if (!resuming) writeFileSync(trajectoriesFile, "")
    const writer = yield* JsonlWriter.open(trajectoriesFile)
    const metricsFile = path.join(directory, "metrics.jsonl")
    if (!resuming) writeFileSync(metricsFile, "")
    const metricsWriter = yield* JsonlWriter.openLines(metricsFile)
    monitor.begin()
    options.onStart?.(directory, monitor)

    // The inference actor's batch, sampled twice a second for the monitor.
    if (inference.gauges !== undefined) {
      const gauges = inference.gauges
      yield* gauges().pipe(
        Effect.tap((value) => Effect.sync(() => monitor.setInference(value))),
        Effect.ignore,
        Effect.repeat(Schedule.spaced("500 millis")),
        Effect.forkScoped
      )
    }

    // The summary is the monitor's view of the run, in summary.json's words.
    const summary = (): Summary => {
      const now = monitor.snapshot()
      return {
        name: experiment.name,
        episodes: now.done,
        finish_reasons: now.finishReasons,
        mean_reward: now.meanReward,
        mean_turns: now.meanTurns,
        response_tokens: now.responseTokens,
        wall_seconds: now.elapsedSeconds,
        episodes_per_second: now.elapsedSeconds > 0 ? now.done / now.elapsedSeconds : 0,
        logprob_kind: RemoteRun.logprobKindOf(experiment),
        interrupted: (now.finishReasons.interrupted ?? 0) > 0,
        ...(monitor.tokenDriftEpisodes > 0 ? { token_drift_episodes: monitor.tokenDriftEpisodes } : {})
      }
    }
    // A metrics point every 1% of the run (every 10 episodes when the total is not known) but at most one a
    // second, so that a window's rates are measured over real time; and one at the end.
    const pointEvery = monitor.total === undefined ? 10 : Math.max(1, Math.ceil(monitor.total / 100))
    let lastPoint = Date.now()
    let sincePoint = 0
    const writePoint = () =>
      Effect.suspend(() => {
        lastPoint = Date.now()
        sincePoint = 0
        const metrics = monitor.point()
        options.onEvent?.({ type: "metrics", metrics })
        return metricsWriter.write(metrics)
      })

    // Said once per run: the environment and the policy see different tokens, so the run trains on one view
    // of the conversation while the environment answers another.
    let driftWarned = false
    const warnDrift = (trajectory: Trajectory) =>
      Effect.suspend(() => {
        const drift = driftWarned ? undefined : tokenDriftOf(trajectory)
        if (drift === undefined) return Effect.void
        driftWarned = true
        const line = `warning: episode ${trajectory.id} (${trajectory.interaction}): the environment's tokens differ from the policy's ` +
          `at position ${drift.position} of prompt_ids + response_ids (environment ${drift["environment_token"] ?? "none"}, ` +
          `policy ${drift["policy_token"]}): its tokenizer or chat template is not the policy's; metrics.jsonl counts such episodes (token_drift_episodes)`
        return options.onLog !== undefined ? Effect.sync(() => options.onLog!(line)) : Effect.logWarning(line)
      })
    const record = (trajectory: Trajectory) =>
      writer.write(trajectory).pipe(
        Effect.andThen(Effect.sync(() => {
          monitor.record(trajectory)
          options.onEvent?.({ type: "trajectory", trajectory })
        })),
        Effect.andThen(warnDrift(trajectory)),
        Effect.andThen(Effect.suspend(() => (++sincePoint >= pointEvery && Date.now() - lastPoint >= 1000 ? writePoint() : Effect.void)))
      )
    // A training run interleaves generation and updates (src/Training.ts); otherwise the rows just play.
    const training = experiment.trainer === undefined
      ? undefined
      : yield* train({
        experiment,
        config,
        registry,
        rows,
        monitor,
        directory,
        stop: options.stop,
        record,
        writePoint,
        log: (line) => options.onLog?.(line)
      })
    if (training === undefined) yield* engine.run(rows, { stop: options.stop }).pipe(Stream.runForEach(record))
    if (sincePoint > 0 || monitor.snapshot().done === 0) yield* writePoint()
    if (experiment.outputs.parquet) {
      yield* Effect.try({
        try: () => writeTrajectoriesParquet(trajectoriesFile, path.join(directory, "trajectories.parquet")),
        catch: (cause) => new ExperimentError({ message: `cannot write trajectories.parquet: ${errorMessage(cause)}` })
      })
    }
    const ran = summary()
    const evaluates = experiment.evaluation !== undefined && !ran.interrupted
    if (evaluates) monitor.setPhase("evaluation")
    const evaluation = evaluates
      ? yield* evaluate(experiment, registry, path.join(directory, "eval", "trajectories.jsonl"), options.stop)
      : undefined
    // The curves as images, readable without the dashboard.
    yield* Effect.tryPromise({
      try: () => writePngs(writePlots(directory, monitor.history())),
      catch: (cause) => new ExperimentError({ message: `cannot write the plots: ${errorMessage(cause)}` })
    })
    const evaluated: Summary = evaluation === undefined
      ? ran
      : { ...ran, eval_success: evaluation.success_rate, eval_mean_reward: evaluation.mean_reward, evaluation }
    monitor.finish()
    const result: Summary = training === undefined
      ? evaluated
      : { ...evaluated, warmstart_success: training.warmstart_success, wall_seconds: monitor.snapshot().elapsedSeconds, training }
    writeAtomically(path.join(directory, "summary.json"), JSON.stringify(result, null, 2) + "\n")
    return { directory, summary: result } satisfies RunResult
  })

/**
 * The run as a stream of its events (every trajectory, and the metrics points), for code that runs
 * experiments: the run directory is written as by `run`.
 */
export const stream = (experiment: ResolvedExperiment, config: ExperimentConfig, options: Omit<RunOptions, "onEvent"> = {}) =>
  Stream.callback<RunEvent, unknown>((queue) =>
    run(experiment, config, { ...options, onEvent: (event) => Queue.offerUnsafe(queue, event) }).pipe(
      Effect.matchCauseEffect({
        onFailure: (cause) => Queue.failCause(queue, cause),
        onSuccess: () => Queue.end(queue)
      }),
      Effect.forkScoped
    )
  )
