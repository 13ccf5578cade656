/**
 * A task that needs the conversation: `npx episodic run experiments/guess-number.ts` trains the project's micro
 * model to find a hidden number from 1 to 100 from "Higher than N." / "Lower than N." replies (guess-number).
 * The first observation is the same in every game, so a policy that ignores the replies wins at most 10 of
 * 100 games; binary search wins every game in at most 7 guesses.
 *
 * 1. Warm start: the binary-search solver, reading the whole conversation as the model would, plays 256
 *    demonstration episodes through the engine; 100 SFT steps on them.
 * 2. GRPO: 8 prompts x 8 samples per update at temperature 1, AdamW at 3e-4; the trainer on its own thread,
 *    generation one version ahead of it. A guess the replies already ruled out costs 0.25 (the environment's
 *    default is 0.05): at 1e-3 with the default penalty GRPO made the policy worse (0.715 -> 0.460 held out),
 *    reinforcing lucky wins full of such guesses. Updates stop after 7 minutes, so the run fits in 10 on two
 *    CPU cores.
 * 3. Greedy play on 200 held-out seeds, after the warm start and at the end: warmstart_success and
 *    eval_success in summary.json (docs/training.md has what it reached).
 */
import { solveGuessNumber } from "../src/environments/guessNumber.ts"
import { defineExperiment } from "../src/index.ts"

export default defineExperiment({
  name: "guess-number",
  model: "models/micro",
  // Made with `episodic model init` on first use: nothing is downloaded.
  modelInit: { preset: "micro", seed: 0 },
  environment: { name: "guess-number", episodes: 1536, config: { ruledOutPenalty: 0.25 } },
  samplesPerRow: 8,
  concurrency: 64,
  // A guess is at most "100" and the end of turn: a few tokens.
  limits: { maxTurns: 10, maxNewTokens: 6, maxResponseTokens: 1024, timeoutMs: 120_000 },
  sampling: { temperature: 1 },
  trainer: {
    promptsPerUpdate: 8,
    maxPolicyLag: 1,
    maxMinutes: 7,
    algorithm: { estimator: "grpo" },
    optimizer: { learningRate: 3e-4, schedule: { kind: "cosine", totalSteps: 120, minRatio: 0.1 } },
    // The solver reads every reply in the context, as the model has to.
    warmStart: { episodes: 256, steps: 100, policy: ({ context }) => solveGuessNumber(context) }
  },
  evaluation: { episodes: 200 },
  seed: 0
})
