/**
 * The default experiment: `npx episodic run` trains the project's own tiny model to play grid-quest.
 *
 * 1. Warm start: the scripted solver plays 64 demonstration episodes through the engine (in the model's own
 *    tokens and chat template), and a short SFT on them teaches the command format and some of the task.
 * 2. GRPO: 8 prompts x 8 samples per update at temperature 1, group-normalised advantages, clipped ratios
 *    over the generated tokens; the new weights go to the inference actor after every update.
 * 3. Greedy play on 200 held-out seeds, after the warm start and at the end: warmstart_success and
 *    eval_success in summary.json.
 */
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment } from "../src/index.ts"

export default defineExperiment({
  name: "grid-quest",
  model: "models/micro",
  // Made with `episodic model init` on first use: nothing is downloaded.
  modelInit: { preset: "micro", seed: 0 },
  // Rows to train on: promptsPerUpdate of them per update, samplesPerRow episodes each.
  environment: { name: "grid-quest", episodes: 1024 },
  samplesPerRow: 8,
  concurrency: 64,
  limits: { maxTurns: 12, maxNewTokens: 8, maxResponseTokens: 1024, timeoutMs: 120_000 },
  sampling: { temperature: 1 },
  trainer: {
    promptsPerUpdate: 8,
    maxMinutes: 8,
    algorithm: { estimator: "grpo" },
    optimizer: { learningRate: 1e-3 },
    // The latest observation is the last "You are at ..." the context holds.
    warmStart: { episodes: 128, steps: 40, policy: ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at"))) }
  },
  // Greedy play on 200 held-out seeds: warmstart_success and eval_success in summary.json.
  evaluation: { episodes: 200 },
  seed: 0
})
