/**
 * Held-out evaluation: the experiment's environment on seeds the run never trained on, played by the same
 * engine and model, greedy by default. A training run evaluates after its warm start and at its end.
 */
import { type Deferred, Effect, Stream } from "effect"
import { mkdirSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import { Engine } from "./Engine.ts"
import type { EnvironmentRegistry } from "./environments/registry.ts"
import type { ResolvedExperiment } from "./Experiment.ts"
import { SamplingParams } from "./Generation.ts"
import * as JsonlWriter from "./JsonlWriter.ts"
import { RunMonitor } from "./RunMonitor.ts"

export interface EvaluationSummary {
  readonly episodes: number
  readonly seed: number
  readonly greedy: boolean
  readonly mean_reward: number
  /** Share of episodes the environment reports won (`info.success`; without info, done with a reward above zero). */
  readonly success_rate: number
  /** Assistant turns per episode (grid-quest's moves, guess-number's guesses). */
  readonly mean_turns: number
  /** With `evaluation.splits`: each split's figures (the top-level ones are the first split's). */
  readonly splits?: Readonly<Record<string, EvaluationSplit>>
}

export interface EvaluationSplit {
  readonly episodes: number
  readonly mean_reward: number
  readonly success_rate: number
  readonly mean_turns: number
}

/**
 * Held-out seeds of the experiment's environment, played by the same engine (and model), greedy by default.
 * With `evaluation.splits`, each split in turn (its config over the environment's), written beside `file` in a
 * folder named after it.
 */
export const evaluate = (
  experiment: ResolvedExperiment,
  registry: EnvironmentRegistry,
  file: string,
  stop: Deferred.Deferred<void> | undefined,
  idPrefix = "eval-"
) =>
  Effect.gen(function*() {
    const splits = Object.entries(experiment.evaluation!.splits ?? {})
    if (splits.length === 0) return yield* evaluateRows(experiment, registry, file, stop, idPrefix, {})
    const results: Record<string, EvaluationSplit> = {}
    let first: EvaluationSummary | undefined
    for (const [split, config] of splits) {
      const played = yield* evaluateRows(
        experiment,
        registry,
        path.join(path.dirname(file), split, path.basename(file)),
        stop,
        `${idPrefix}${split}-`,
        config
      )
      first ??= played
      results[split] = { episodes: played.episodes, mean_reward: played.mean_reward, success_rate: played.success_rate, mean_turns: played.mean_turns }
    }
    return { ...first!, splits: results } satisfies EvaluationSummary
  })

const evaluateRows = (
  experiment: ResolvedExperiment,
  registry: EnvironmentRegistry,
  file: string,
  stop: Deferred.Deferred<void> | undefined,
  idPrefix: string,
  splitConfig: Record<string, unknown>
) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    const settings = experiment.evaluation!
    const { name } = experiment.environment!
    const config = { ...experiment.environmentConfig[name], ...splitConfig }
    const rows = registry.get(name).rows!({ seed: settings.seed, count: settings.episodes, config })
    mkdirSync(path.dirname(file), { recursive: true })
    writeFileSync(file, "")
    const writer = yield* JsonlWriter.open(file)
    const sampling = settings.greedy ? new SamplingParams({ ...experiment.sampling, temperature: 0 }) : experiment.sampling
    const monitor = new RunMonitor(`${experiment.name}/eval`, rows.length)
    yield* engine.run(Stream.fromIterable(rows), { stop, sampling, samplesPerRow: 1, idPrefix }).pipe(
      Stream.runForEach((trajectory) => writer.write(trajectory).pipe(Effect.andThen(Effect.sync(() => monitor.record(trajectory)))))
    )
    const played = monitor.snapshot()
    return {
      episodes: played.done,
      seed: settings.seed,
      greedy: settings.greedy,
      mean_reward: played.meanReward,
      success_rate: played.successRate,
      mean_turns: played.meanTurns
    } satisfies EvaluationSummary
  })

