/**
 * Environments for test/engine-workers.test.ts, loaded by each engine worker from this module (functions
 * cannot cross threads): one whose steps wait until the episode is interrupted, and one whose thread dies.
 */
import type { EnvironmentDefinition } from "../src/Environment.ts"
import { gridQuest } from "../src/environments/gridQuest.ts"

/** grid-quest whose steps never answer: an episode waits in `interacting` until it is stopped. */
const waiting: EnvironmentDefinition = {
  ...gridQuest,
  name: "waiting-grid-quest",
  make: (config) => ({
    ...gridQuest.make(config),
    step: (_action, { signal }) =>
      new Promise((_, reject) => signal.addEventListener("abort", () => reject(new Error("aborted")), { once: true }))
  })
}

/** grid-quest whose first step throws outside any promise: the worker thread dies of it. */
const crashing: EnvironmentDefinition = {
  ...gridQuest,
  name: "crashing-grid-quest",
  make: (config) => ({
    ...gridQuest.make(config),
    step: () =>
      new Promise(() => {
        setTimeout(() => {
          throw new Error("the environment blew up its thread")
        })
      })
  })
}

export default { environments: [waiting, crashing] }
