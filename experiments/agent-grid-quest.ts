/**
 * Grid-quest played by an agent written with the AI SDK: `generateText` with a `move` tool and a step limit,
 * its model `@ai-sdk/openai-compatible` pointed at the episode's own URL (the tool's code picks the treasure
 * up and completes the quest once the agent stands on it, so the policy's task is the walk). episodic records every call token for token and trains the model behind that URL (docs/agents.md).
 *
 * 1. Warm start: the scripted solver answers the agent's calls with the tool calls it would make, through
 *    the same endpoint and template, and SFT on them (docs/agents.md has what one run on 2 cores reached).
 * 2. GRPO on the agent's own episodes; the agent's reward is the environment's.
 * 3. Greedy play on held-out seeds, after the warm start and at the end.
 *
 * `npx episodic run experiments/agent-grid-quest.ts`
 */
import { createOpenAICompatible } from "@ai-sdk/openai-compatible"
import { generateText, jsonSchema, stepCountIs, tool } from "ai"
import type { AgentArgs } from "../src/AgentEpisode.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment } from "../src/index.ts"
import type { TextPolicyInput } from "../src/TextPolicy.ts"

const maxSteps = 10

/** The agent: the game lives in its tools, the policy decides which to call. */
export const agent = async ({ row, openai, signal, seed }: AgentArgs) => {
  const game = gridQuest.make({})
  const first = await game.reset({ seed, row, signal })
  let reward = 0
  let success = false
  let over = false
  const act = async (command: string) => {
    if (over) return "The game is over."
    const step = await game.step(command, { signal })
    reward += step.reward
    over = step.done
    success = step.info?.["success"] === true
    return step.observation
  }
  const provider = createOpenAICompatible({ name: "policy", baseURL: openai.baseURL, apiKey: openai.apiKey })
  await generateText({
    model: provider("policy"),
    system: "You play Grid Quest: move to the treasure.",
    prompt: typeof first.observation === "string" ? first.observation : "Play.",
    tools: {
      move: tool({
        description: "Move one step.",
        inputSchema: jsonSchema<{ direction: "north" | "south" | "east" | "west" }>({
          type: "object",
          properties: { direction: { type: "string", enum: ["north", "south", "east", "west"] } }
        }),
        // The agent's own code picks the treasure up and completes the quest once it stands on it.
        execute: async ({ direction }) => {
          let observation = await act(`move ${direction}`)
          if (observation.includes("The treasure is here")) observation = await act("pick up treasure")
          if (observation.includes("with the treasure")) observation = await act("complete quest")
          return observation
        }
      })
    },
    stopWhen: [stepCountIs(maxSteps), () => over],
    abortSignal: signal,
    maxRetries: 0
  })
  await game.close?.()
  return { reward, info: { success } }
}

/** The solver's move for the latest observation the context holds, as a tool call. */
export const demonstrations = ({ context }: TextPolicyInput) =>
  `<tool_call>\n{"name": "move", "arguments": {"direction": "${solveGridQuest(context.slice(context.lastIndexOf("You are at"))).replace("move ", "")}"}}\n</tool_call>`

export default defineExperiment({
  name: "agent-grid-quest",
  // The micro model, its tokenizer also trained on tool calls: a `move` call is 2 tokens, not 60 bytes of JSON.
  model: "models/micro-agent",
  modelInit: { preset: "micro", seed: 0, toolCalls: true },
  // The rows: seeds the agent's own game is played with.
  environment: { name: "grid-quest", episodes: 512 },
  agent,
  samplesPerRow: 8,
  concurrency: 64,
  // With that tokenizer a tool call and its result are about 16 tokens, the prompt with the tool about 50.
  limits: { maxTurns: maxSteps, maxNewTokens: 16, maxResponseTokens: 320, timeoutMs: 120_000 },
  sampling: { temperature: 1 },
  trainer: {
    promptsPerUpdate: 8,
    maxMinutes: 8,
    algorithm: { estimator: "grpo" },
    optimizer: { learningRate: 1e-3, schedule: { kind: "cosine", totalSteps: 160, minRatio: 0.1 } },
    warmStart: { episodes: 128, steps: 40, policy: demonstrations }
  },
  evaluation: { episodes: 100 },
  seed: 0
})
