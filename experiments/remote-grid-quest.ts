/**
 * Grid-quest served by `episodic serve-env` in another process and named here by its URL, played by the
 * scripted solver (as in grid-quest-solver.ts, tokenized with the tiny model's tokenizer):
 *
 *   npx episodic serve-env grid-quest --port 8765 &
 *   npx episodic run experiments/remote-grid-quest.ts
 *
 * Each episode is one WebSocket session on the server; the rows are seeded as grid-quest's own, so the
 * games (and the rewards) are the ones grid-quest-solver.ts plays in-process.
 */
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment } from "../src/index.ts"

export default defineExperiment({
  name: "remote-grid-quest",
  model: "models/tiny",
  modelInit: { preset: "tiny", seed: 0 },
  // The latest observation is the last "You are at ..." the context holds.
  policy: ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at"))),
  environment: {
    name: "http://127.0.0.1:8765",
    episodes: 64,
    // RemoteEnvironment's options: per-call time limit, retries, the breaker (docs/remote-environments.md).
    config: { timeoutMs: 10_000, retries: 3 }
  },
  concurrency: 16,
  limits: { maxTurns: 12, maxNewTokens: 16 },
  seed: 0
})
