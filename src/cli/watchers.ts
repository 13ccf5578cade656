/**
 * Everything that watches a run from the command line: the progress line, the dashboard (`--dashboard`)
 * and the Stately inspector connection (`--inspect`). The dashboard and inspector modules load only when
 * asked for.
 */
import { Effect } from "effect"
import type { InspectionEvent } from "xstate"
import { errorMessage } from "../errorMessage.ts"
import { ExperimentError } from "../Experiment.ts"
import type { RunMonitor } from "../RunMonitor.ts"
import { load as loadTokenizer } from "../Tokenizer.ts"
import { startProgress } from "./progress.ts"

export interface WatcherOptions {
  readonly dashboard: boolean
  readonly dashboardPort: number | undefined
  /** The Stately inspector server's URL, when --inspect is on. */
  readonly inspect: string | undefined
  /** The model directory, whose tokenizer shows the dashboard's tokens as text. */
  readonly model: string
  /** Keep the dashboard up after the run until Ctrl-C. */
  readonly lingerDashboard: boolean
}

export interface Watchers {
  /** For the run's episode actors; set when --inspect is on. */
  readonly inspect: ((event: InspectionEvent) => void) | undefined
  start(monitor: RunMonitor): void
  /** A line for the person watching (before start, or without a progress line, straight to stdout). */
  log(line: string): void
  stop(): Promise<void>
}

export const make = (options: WatcherOptions): Effect.Effect<Watchers, ExperimentError> =>
  Effect.tryPromise({
    try: async () => {
      // Connected before the run starts, so that the first episode's events reach it.
      const inspector = options.inspect === undefined ? undefined : await (await import("../inspect.ts")).connectInspector(options.inspect)
      if (inspector !== undefined) process.stdout.write(`episodic run: sending episode actors to the Stately inspector at ${inspector.url}\n`)
      const stops: Array<() => Promise<void> | void> = []
      let log: (line: string) => void = (line) => void process.stdout.write(`${line}\n`)
      return {
        log: (line) => log(line),
        inspect: inspector?.inspect,
        start: (monitor) => {
          const progress = startProgress(monitor)
          log = progress.log
          stops.push(() => progress.stop())
          if (options.dashboard) {
            const started = (async () => {
              const tokenizer = await loadTokenizer(options.model).catch(() => undefined)
              const { startDashboard } = await import("../dashboard/index.ts")
              const dashboard = await startDashboard({ monitor, tokenizer, port: options.dashboardPort ?? 0 })
              process.stdout.write(`episodic run: dashboard at ${dashboard.url}\n`)
              return dashboard
            })()
            stops.push(async () => {
              const dashboard = await started.catch(() => undefined)
              if (dashboard === undefined) return
              if (options.lingerDashboard) {
                process.stdout.write(`\nthe run has ended; the dashboard stays at ${dashboard.url} until Ctrl-C\n`)
                await new Promise<void>((resolve) => process.once("SIGINT", () => resolve()))
              }
              await dashboard.close()
            })
            started.catch((cause: unknown) => process.stderr.write(`episodic run: the dashboard could not start: ${errorMessage(cause)}\n`))
          }
        },
        stop: async () => {
          for (const stop of stops.reverse()) await stop()
          await inspector?.close()
        }
      } satisfies Watchers
    },
    catch: (cause) => cause instanceof ExperimentError ? cause : new ExperimentError({ message: errorMessage(cause) })
  })
