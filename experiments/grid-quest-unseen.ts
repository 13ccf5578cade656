/**
 * The default experiment (experiments/grid-quest.ts) on layouts it never trains on. Grid Quest has only 600
 * layouts and a run plays about 12,000 episodes, so held-out seeds of the default run are not held-out tasks.
 * Here the training rows and the warm start's demonstrations draw only "seen" layouts (isUnseenLayout false:
 * 500 of 600), and the evaluation plays 200 seeds of the 100 held-out layouts (offsets from start to treasure
 * with dx + 2 * dy a multiple of 5) and 200 of the seen ones: evaluation.splits.unseen and .seen in
 * summary.json, eval_success (and warmstart_success) the unseen one's. Everything else is the default experiment.
 */
import { defineExperiment } from "../src/index.ts"
import gridQuest from "./grid-quest.ts"

export default defineExperiment({
  ...gridQuest,
  name: "grid-quest-unseen",
  environment: { name: "grid-quest", episodes: 1536, config: { layouts: "seen" } },
  evaluation: { episodes: 200, splits: { unseen: { layouts: "unseen" }, seen: { layouts: "seen" } } }
})
