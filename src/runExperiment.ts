/**
 * Experiments from code, without Effect: the same run as `npx episodic run` (the run directory is
 * written the same way), as an async iterable of its events.
 *
 *   const run = runExperiment(defineExperiment({...}), { abortSignal })
 *   for await (const event of run) if (event.type === "trajectory") console.log(event.trajectory.reward)
 *   const { directory, summary } = await run.result
 *
 * Aborting stops the run gently: running episodes end `interrupted` and are still delivered and written.
 * `Run.stream` is the same thing as an Effect Stream.
 */
import { Deferred, Effect, Exit } from "effect"
import { resolve, type ExperimentConfig } from "./Experiment.ts"
import * as Run from "./Run.ts"
import type { RunMonitor } from "./RunMonitor.ts"

export interface RunExperimentOptions {
  readonly abortSignal?: AbortSignal
  /** Called once the run directory exists, with the run's live monitor. */
  readonly onStart?: (directory: string, monitor: RunMonitor) => void
}

export interface ExperimentRun extends AsyncIterable<Run.RunEvent> {
  /** Resolves when the run has ended and its summary is written; rejects if it could not run. */
  readonly result: Promise<Run.RunResult>
}

export const runExperiment = (config: ExperimentConfig, options: RunExperimentOptions = {}): ExperimentRun => {
  const events: Array<Run.RunEvent> = []
  let wake: (() => void) | undefined
  let ended = false
  const push = (event: Run.RunEvent) => {
    events.push(event)
    wake?.()
  }
  const result = Effect.runPromise(
    Effect.gen(function*() {
      const experiment = yield* Effect.try({ try: () => resolve(config), catch: (cause) => cause })
      const stop = yield* Deferred.make<void>()
      const abort = () => Deferred.doneUnsafe(stop, Exit.void)
      if (options.abortSignal?.aborted) abort()
      options.abortSignal?.addEventListener("abort", abort, { once: true })
      return yield* Run.run(experiment, config, { stop, onEvent: push, onStart: options.onStart }).pipe(
        Effect.ensuring(Effect.sync(() => options.abortSignal?.removeEventListener("abort", abort)))
      )
    })
  ).finally(() => {
    ended = true
    wake?.()
  })
  // Unhandled if nobody awaits `result`; iteration rethrows the failure itself.
  result.catch(() => undefined)
  return {
    result,
    async *[Symbol.asyncIterator]() {
      while (true) {
        const event = events.shift()
        if (event !== undefined) {
          yield event
          continue
        }
        if (ended) {
          await result
          return
        }
        await new Promise<void>((resolve) => (wake = resolve))
        wake = undefined
      }
    }
  }
}
