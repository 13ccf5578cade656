/**
 * Chat: OpenEnv's ChatEnvironment. It keeps the conversation (system prompt, then every turn), answers each
 * assistant turn with the next scripted follow-up, and lets transforms score or rewrite each step, as
 * OpenEnv's Transform hooks do. With no transforms every step pays 0: the reward is theirs to give.
 */
import type { DatasetRow } from "../DatasetRow.ts"
import { define, type Environment } from "../Environment.ts"
import type { MessageInit } from "../Message.ts"

/** What a transform sees after each step, and returns, changed or not. */
export interface ChatObservation {
  /** The conversation so far, the assistant's latest turn last. Transforms read it; the history is not theirs to edit. */
  readonly messages: ReadonlyArray<MessageInit>
  /** The next user turn (empty once the episode is done). */
  readonly observation: string
  readonly reward: number
  readonly done: boolean
  readonly metadata: Record<string, unknown>
}

export type ChatTransform = (observation: ChatObservation) => ChatObservation | Promise<ChatObservation>

export type ChatConfig = {
  /** Put first in the conversation, replacing a system message the row's prompt starts with. */
  readonly systemPrompt?: string
  /** Scripted user turns, one after each assistant turn; the episode is done once the last is answered. */
  readonly followUps?: ReadonlyArray<string>
  /** Run in order after every step. */
  readonly transforms?: ReadonlyArray<ChatTransform>
  /** The first user turn when the row's prompt is empty. */
  readonly firstMessage?: string
}

export const defaultFirstMessage = "Hello! How can you help me today?"

const rowPrompts = [
  "Say hello in one short sentence.",
  "Name three colours.",
  "What is the capital of France?",
  "Give me one tip for staying focused.",
  "Describe the sea in five words.",
  "What is 2 + 2?",
  "Suggest a name for a pet turtle.",
  "Tell me a fact about the Moon."
] as const

/** OpenEnv's LengthRewardTransform: rewards the latest message by its length in characters, times `scale`. */
export const lengthReward =
  (scale: number): ChatTransform =>
  (observation) => ({ ...observation, reward: (observation.messages.at(-1)?.content.length ?? 0) * scale })

const makeChat = (config: ChatConfig): Environment => {
  const followUps = config.followUps ?? []
  const transforms = config.transforms ?? []
  let history: Array<MessageInit> = []
  let turns = 0

  return {
    reset({ row }) {
      const opening: Array<MessageInit> =
        row.prompt.length > 0
          ? row.prompt.map(({ role, content }) => ({ role, content }))
          : [{ role: "user", content: config.firstMessage ?? defaultFirstMessage }]
      const withoutSystem = config.systemPrompt !== undefined && opening[0]?.role === "system" ? opening.slice(1) : opening
      history =
        config.systemPrompt === undefined ? withoutSystem : [{ role: "system", content: config.systemPrompt }, ...withoutSystem]
      turns = 0
      return { observation: [...history] }
    },
    async step(action) {
      history.push({ role: "assistant", content: action })
      const followUp = followUps[turns]
      turns += 1
      let observation: ChatObservation = {
        messages: [...history],
        observation: followUp ?? "",
        reward: 0,
        done: followUp === undefined,
        metadata: { turn: turns }
      }
      for (const transform of transforms) observation = await transform(observation)
      if (!observation.done) history.push({ role: "user", content: observation.observation })
      return {
        observation: observation.observation,
        reward: observation.reward,
        done: observation.done,
        info: observation.metadata
      }
    }
  }
}

export const chat = define<ChatConfig>({
  name: "chat",
  description: "A plain conversation with scripted follow-ups; transforms give the reward (OpenEnv's ChatEnvironment).",
  make: makeChat,
  rows: ({ seed, count }): ReadonlyArray<DatasetRow> =>
    Array.from({ length: count }, (_, i) => {
      const rowSeed = seed * 100_003 + i
      const prompt = rowPrompts[((rowSeed % rowPrompts.length) + rowPrompts.length) % rowPrompts.length]!
      return {
        prompt: [{ role: "user", content: prompt }],
        extra_info: { interaction_kwargs: { name: "chat" }, seed: rowSeed }
      }
    })
})
