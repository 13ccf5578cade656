/**
 * The inference benches' workload: grid-quest whose every step takes ENV_LATENCY_MS, as a remote
 * environment's would, and its seeded rows. Shared so that `inference` and `remote` measure the same thing.
 */
import type { DatasetRow } from "../../src/DatasetRow.ts"
import { define, type Environment } from "../../src/Environment.ts"
import { gridQuest } from "../../src/environments/gridQuest.ts"

export const ENV_LATENCY_MS = 20

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

export const slowGridQuest = define({
  name: "grid-quest-slow",
  description: "grid-quest with a simulated step latency",
  make: (config: Record<string, unknown>): Environment => {
    const inner = gridQuest.make(config)
    return {
      reset: (options) => inner.reset(options),
      step: async (action, options) => {
        await sleep(ENV_LATENCY_MS)
        return inner.step(action, options)
      }
    }
  }
})

/** `count` seeded grid-quest rows played on slowGridQuest. */
export const slowGridQuestRows = (count: number): Array<DatasetRow> =>
  gridQuest.rows!({ seed: 1, count, config: {} }).map((row) => ({
    ...row,
    extra_info: { ...row.extra_info, interaction_kwargs: { name: "grid-quest-slow" } }
  }))
