/**
 * Grid-quest played by its scripted solver instead of a model: every episode runs through the whole engine
 * (episode machines, real chat-template tokenization, environment, JSONL sink). Its trajectories are
 * demonstrations (an SFT warm start) and its success rate is the task's upper bound.
 *
 * The solver's text is tokenized with the tiny model's tokenizer, so these demonstrations are in the
 * model's own tokens; the model is made on first use, as in the default experiment.
 */
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment } from "../src/index.ts"

export default defineExperiment({
  name: "grid-quest-solver",
  model: "models/tiny",
  modelInit: { preset: "tiny", seed: 0 },
  // The latest observation is the last "You are at ..." the context holds.
  policy: ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at"))),
  environment: { name: "grid-quest", episodes: 200 },
  concurrency: 32,
  limits: { maxTurns: 12, maxNewTokens: 16 },
  seed: 0
})
