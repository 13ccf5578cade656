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
  /** Share of episodes with a total reward above zero. */
  readonly success_rate: number
}

/** Held-out seeds of the experiment's environment, played by the same engine (and model), greedy by default. */
export const evaluate = (
  experiment: ResolvedExperiment,
  registry: EnvironmentRegistry,
  file: string,
  stop: Deferred.Deferred<void> | undefined,
  idPrefix = "eval-"
) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    const settings = experiment.evaluation!
    const { name } = experiment.environment!
    const rows = registry.get(name).rows!({ seed: settings.seed, count: settings.episodes, config: experiment.environmentConfig[name] ?? {} })
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
      success_rate: played.successRate
    } satisfies EvaluationSummary
  })

