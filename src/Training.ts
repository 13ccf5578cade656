/**
 * The training loop of a run: trajectories stream from the engine to the trainer actor, which updates the
 * policy and sends the new weights back to the inference actor, in memory, with a version.
 *
 *   [warm start: the scripted policy's demonstrations -> SFT -> sync -> held-out evaluation]
 *   rows, `promptsPerUpdate` at a time -> engine (samplesPerRow episodes each) -> trajectories.jsonl
 *     -> trainer.update -> inference.updateWeights(version) -> metrics.jsonl -> checkpoint every N updates
 *
 * On-policy by default: a batch is generated, then trained on. With `maxPolicyLag` > 0 the next batches
 * are generated while the trainer works, with the weights of the moment; a trajectory whose oldest turn is
 * more than `maxPolicyLag` versions behind the trainer is dropped (and counted), or trained on with the
 * clipped importance ratio correcting for its age (`staleTrajectories: "correct"`).
 */
import { type Cause, Deferred, Effect, Layer, Queue, Stream } from "effect"
import { mkdirSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import * as Checkpoint from "../actors/trainer/checkpoint.ts"
import type { LearningRateSchedule } from "../actors/trainer/optimizer.ts"
import { TrainerThread } from "../actors/trainer/thread.ts"
import type { UpdateMetrics } from "../actors/trainer/Trainer.ts"
import type { DatasetRow } from "./DatasetRow.ts"
import type * as Dataset from "./Dataset.ts"
import { Engine } from "./Engine.ts"
import type { EnvironmentRegistry } from "./environments/registry.ts"
import { errorMessage } from "./errorMessage.ts"
import { evaluate, type EvaluationSummary } from "./Evaluation.ts"
import { ExperimentError, type ExperimentConfig, type ResolvedExperiment } from "./Experiment.ts"
import { Inference } from "./Inference.ts"
import * as JsonlWriter from "./JsonlWriter.ts"
import type { RunMonitor, TrainingPoint } from "./RunMonitor.ts"
import * as TextPolicy from "./TextPolicy.ts"
import { Tokenizer } from "./Tokenizer.ts"
import type { Trajectory } from "./Trajectory.ts"
import * as RemoteRun from "./remote-inference/run.ts"

export interface TrainingSummary {
  readonly backend: string
  readonly updates: number
  readonly version: number
  readonly warmstart_success: number | null
  /** The held-out evaluation right after the warm start (each split's figures too). */
  readonly warmstart_evaluation: EvaluationSummary | null
  readonly warmstart_seconds: number | null
  readonly train_seconds: number
  readonly stale_dropped: number
  readonly mean_update_seconds: number
  readonly mean_sync_seconds: number
  /** Over the run's updates: the largest rollout/trainer logprob difference, and the tokens over 1e-3, on tokens the trainer's own weights produced. */
  readonly logprob_diff_max: number
  readonly logprob_diff_over_1e3: number
  readonly checkpoint: string
}

export interface TrainingInput {
  readonly experiment: ResolvedExperiment
  readonly config: ExperimentConfig
  readonly registry: EnvironmentRegistry
  readonly rows: Stream.Stream<DatasetRow, Dataset.DatasetError>
  readonly monitor: RunMonitor
  readonly directory: string
  readonly stop: Deferred.Deferred<void> | undefined
  /** Records a finished trajectory (file, monitor, listeners). */
  readonly record: (trajectory: Trajectory) => Effect.Effect<void, unknown>
  /** Writes a metrics point now. */
  readonly writePoint: () => Effect.Effect<void, unknown>
  readonly log: (line: string) => void
}

const fail = (message: string) => (cause: unknown) => new ExperimentError({ message: `${message}: ${errorMessage(cause)}` })

/** The oldest policy version that generated any of the trajectory's turns. */
export const oldestVersion = (trajectory: Trajectory): number =>
  Math.min(...trajectory.turns.flatMap((turn) => (turn.policyVersion === null ? [] : [turn.policyVersion])))

/**
 * The lag bound: trajectories whose oldest turn is at most `maxPolicyLag` versions behind the trainer's
 * `version`, and the rest.
 */
export const splitByLag = (batch: ReadonlyArray<Trajectory>, version: number, maxPolicyLag: number) => {
  const fresh: Array<Trajectory> = []
  const stale: Array<Trajectory> = []
  for (const trajectory of batch) (version - oldestVersion(trajectory) <= maxPolicyLag ? fresh : stale).push(trajectory)
  return { fresh, stale }
}

export const train = (input: TrainingInput) =>
  Effect.gen(function*() {
    const { experiment, config, monitor, directory, log } = input
    const settings = experiment.trainer!
    const engine = yield* Engine
    const inference = yield* Inference
    if (inference.updateWeights === undefined) {
      return yield* new ExperimentError({ message: "training needs the inference actor (a model), not a hand-written policy" })
    }
    const modelDirectory = path.resolve(RemoteRun.localModel(experiment))
    const checkpointDirectory = Checkpoint.directoryOf(directory)
    const trainer = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () =>
          TrainerThread.start({
            model: modelDirectory,
            algorithm: { ...settings.algorithm, ...(config.trainer?.reward === undefined ? {} : { rewards: config.trainer.reward }) },
            optimizer: {
              ...settings.optimizer,
              // A decaying schedule without totalSteps is refused by the optimizer, naming the field.
              schedule: settings.optimizer.schedule as LearningRateSchedule
            },
            // The recorded logprobs and the trainer's are of one distribution (raw ones from vLLM: temperature 1, no truncation).
            ...RemoteRun.trainerScoring(experiment),
            microBatchTokens: settings.microBatchTokens,
            backend: settings.backend,
            thread: settings.thread,
            seed: experiment.seed
          }),
        catch: fail("cannot start the trainer")
      }),
      (trainer) => Effect.promise(() => trainer.close())
    )
    log(`trainer: TensorFlow.js backend ${trainer.backend} on ${settings.thread === "worker" ? "its own thread" : "the run's thread"}, ${settings.algorithm.estimator}, ${experiment.samplesPerRow} samples x ${settings.promptsPerUpdate} prompts per update`)

    /** Asks the trainer thread; a failure names what was being done. */
    const ask = <A>(what: string, call: () => Promise<A>) => Effect.tryPromise({ try: call, catch: fail(what) })

    const sync = Effect.fnUntraced(function*() {
      const started = performance.now()
      const weights = yield* ask("cannot read the trainer's weights", () => trainer.policyWeights())
      yield* inference.updateWeights!(weights, trainer.version)
      return (performance.now() - started) / 1000
    })

    let updates = 0
    let rowsConsumed = 0
    let staleDropped = 0
    let warmstartSuccess: number | null = null
    let warmstartEvaluation: EvaluationSummary | null = null
    let warmstartSeconds: number | null = null
    let updateSeconds = 0
    let syncSeconds = 0
    let diffMax = 0
    let diffOver = 0
    const trainStarted = performance.now()

    const resumed = settings.resume ? Checkpoint.load(checkpointDirectory) : undefined
    if (resumed !== undefined) {
      yield* ask(`cannot resume from ${checkpointDirectory}`, () => trainer.restore(resumed.weights, resumed.optimizer, resumed.state.version))
      updates = resumed.state.updates
      rowsConsumed = resumed.state.rowsConsumed
      staleDropped = resumed.state.staleDropped
      warmstartSuccess = resumed.state.warmstartSuccess
      yield* sync()
      log(`trainer: resumed from ${checkpointDirectory} at version ${trainer.version}, update ${updates}, ${rowsConsumed} rows done`)
    } else if (settings.warmStart !== undefined) {
      // The warm start: the scripted policy plays demonstrations through the same engine (so they are in the
      // model's own tokens and template), SFT on them, then the held-out evaluation of the result.
      const warmStart = settings.warmStart
      const started = performance.now()
      monitor.setPhase("warm start")
      const { name } = experiment.environment!
      const demoRows = input.registry.get(name).rows!({ seed: experiment.seed + 2_000_003, count: warmStart.episodes, config: experiment.environmentConfig[name] ?? {} })
      const demoFile = path.join(directory, "warmstart", "demonstrations.jsonl")
      mkdirSync(path.dirname(demoFile), { recursive: true })
      writeFileSync(demoFile, "")
      const demoWriter = yield* JsonlWriter.open(demoFile)
      const demoEngine = Engine.layer({ ...engine.options, inspect: undefined, samplesPerRow: 1 }).pipe(
        Layer.provide(TextPolicy.layer(config.trainer!.warmStart!.policy!)),
        Layer.provide(Tokenizer.layer(RemoteRun.localModel(experiment)))
      )
      const demonstrations = yield* Effect.gen(function*() {
        const demo = yield* Engine
        return yield* demo.run(Stream.fromIterable(demoRows), { idPrefix: "demo-" }).pipe(
          Stream.tap((trajectory) => demoWriter.write(trajectory)),
          Stream.runCollect
        )
      }).pipe(Effect.provide(demoEngine))
      const sft = yield* ask("warm start failed", () =>
        trainer.sft(demonstrations, { steps: warmStart.steps, batchSize: warmStart.batchSize, learningRate: warmStart.learningRate, seed: experiment.seed }))
      yield* sync()
      warmstartSeconds = (performance.now() - started) / 1000
      if (experiment.evaluation !== undefined) {
        monitor.setPhase("evaluation")
        const evaluation = yield* evaluate(experiment, input.registry, path.join(directory, "warmstart", "eval.jsonl"), input.stop, "warmstart-eval-")
        warmstartSuccess = evaluation.success_rate
        warmstartEvaluation = evaluation
      }
      log(`warm start: ${warmStart.episodes} demonstrations, ${sft.steps} SFT steps (loss ${sft.loss.toFixed(3)}) in ${warmstartSeconds.toFixed(1)} s${warmstartSuccess === null ? "" : `; held-out greedy success ${warmstartSuccess.toFixed(3)}`}`)
      monitor.setPhase("run")
    }

    const deadline = trainStarted + settings.maxMinutes * 60_000
    const batches = yield* Queue.bounded<ReadonlyArray<Trajectory>, Cause.Done>(Math.max(1, settings.maxPolicyLag))

    // Generation: batch after batch of rows, each batch's trajectories written as they finish. Batch k is
    // trained when the trainer has made k updates; started after u updates, its turns are at most k - u
    // versions old. So batch k starts once u >= k - maxPolicyLag: a permit per batch, maxPolicyLag + 1 of
    // them at first and one more after each update's weights reach the actor. With maxPolicyLag 0 that is
    // strictly on-policy; above it, generation runs ahead exactly as far as the bound lets it train.
    const permits = yield* Queue.unbounded<void>()
    for (let i = 0; i <= settings.maxPolicyLag; i++) yield* Queue.offer(permits, undefined)
    const firstBatch = updates
    const producer = input.rows.pipe(
      Stream.drop(rowsConsumed),
      Stream.grouped(settings.promptsPerUpdate),
      Stream.zipWithIndex,
      Stream.runForEach(([group, index]) =>
        Effect.gen(function*() {
          yield* Queue.take(permits)
          if (performance.now() > deadline) return yield* Effect.interrupt
          const rows: ReadonlyArray<DatasetRow> = group
          const batch = yield* engine.run(Stream.fromIterable(rows), { stop: input.stop, idPrefix: `u${firstBatch + index}-` }).pipe(
            Stream.tap((trajectory) => input.record(trajectory)),
            Stream.runCollect
          )
          yield* Queue.offer(batches, batch)
        })
      ),
      Effect.ensuring(Queue.end(batches)),
      Effect.forkScoped
    )
    yield* producer

    while (true) {
      const next = yield* Queue.take(batches).pipe(Effect.option)
      if (next._tag === "None") break
      const stopped = input.stop !== undefined && Deferred.isDoneUnsafe(input.stop)
      const batch = next.value
      rowsConsumed += new Set(batch.map((t) => t.groupId)).size
      if (stopped) break
      const { fresh, stale } = splitByLag(batch, trainer.version, settings.maxPolicyLag)
      staleDropped += settings.staleTrajectories === "drop" ? stale.length : 0
      const trainOn = settings.staleTrajectories === "drop" ? fresh : batch
      const metrics: UpdateMetrics = yield* ask(`update ${updates + 1} failed`, () => trainer.update(trainOn))
      const syncTime = yield* sync()
      updates += 1
      updateSeconds += metrics.update_seconds
      diffMax = Math.max(diffMax, metrics.logprob_diff_max)
      diffOver += metrics.logprob_diff_over_1e3
      syncSeconds += syncTime
      const point: TrainingPoint = {
        version: trainer.version,
        updates,
        policy_loss: metrics.policy_loss,
        ...(metrics.value_loss === undefined ? {} : { value_loss: metrics.value_loss }),
        entropy: metrics.entropy,
        ...(metrics.kl === undefined ? {} : { kl: metrics.kl }),
        approx_kl: metrics.approx_kl,
        clip_fraction: metrics.clip_fraction,
        grad_norm: metrics.grad_norm,
        learning_rate: metrics.learning_rate,
        score_mean: metrics.score_mean,
        logprob_diff_max: metrics.logprob_diff_max,
        logprob_diff_mean: metrics.logprob_diff_mean,
        logprob_diff_tokens: metrics.logprob_diff_tokens,
        logprob_diff_over_1e3: metrics.logprob_diff_over_1e3,
        other_version_tokens: metrics.other_version_tokens,
        ...(metrics.logprob_diff_at === undefined ? {} : { logprob_diff_at: metrics.logprob_diff_at }),
        update_seconds: metrics.update_seconds,
        sync_seconds: syncTime,
        trainer_tokens_per_second: metrics.tokens_per_second,
        stale_dropped: staleDropped
      }
      monitor.setTraining(point)
      yield* input.writePoint()
      if (settings.checkpointEvery > 0 && updates % settings.checkpointEvery === 0) {
        yield* saveCheckpoint()
      }
      yield* Queue.offer(permits, undefined)
    }

    function saveCheckpoint() {
      return ask(`cannot write the checkpoint at ${checkpointDirectory}`, () =>
        trainer.checkpoint(checkpointDirectory, modelDirectory, {
          version: trainer.version,
          updates,
          rowsConsumed,
          warmstartSuccess,
          staleDropped,
          elapsedSeconds: (performance.now() - trainStarted) / 1000
        }))
    }
    yield* saveCheckpoint()
    return {
      backend: trainer.backend,
      updates,
      version: trainer.version,
      warmstart_success: warmstartSuccess,
      warmstart_evaluation: warmstartEvaluation,
      warmstart_seconds: warmstartSeconds,
      train_seconds: (performance.now() - trainStarted) / 1000,
      stale_dropped: staleDropped,
      mean_update_seconds: updates > 0 ? updateSeconds / updates : 0,
      mean_sync_seconds: updates > 0 ? syncSeconds / updates : 0,
      logprob_diff_max: diffMax,
      logprob_diff_over_1e3: diffOver,
      checkpoint: checkpointDirectory
    } satisfies TrainingSummary
  })

