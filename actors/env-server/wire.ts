/**
 * What a served environment's actions and observations look like on the wire. Every environment speaks
 * text (`{message}` in, `{text, messages?, system_prompt?, role?}` out). Given a tokenizer, the server speaks
 * OpenEnv's chat_env instead (src/remote/ChatProtocol.ts): the action is the assistant turn's token ids, which
 * the environment's tokenizer decodes into the text the environment receives; the observation is the whole
 * conversation as messages and as the environment's tokens.
 *
 * The environment's tokens are built as the engine builds a trajectory: the opening rendered by the chat
 * template with its generation prompt, each action's tokens as sent (OpenEnv's ChatEnvironment keeps them
 * as they came), each observation as the template's delta tokens. So with the policy's own tokenizer they
 * are exactly prompt_ids + response_ids, and a client can tell from them whether its tokenizer agrees.
 */
import { Schema } from "effect"
import type { DatasetRow } from "../../src/DatasetRow.ts"
import type { ResetResult, StepResult } from "../../src/Environment.ts"
import type { MessageInit } from "../../src/Message.ts"
import { ChatAction, chatJsonSchemas, flattenTokens } from "../../src/remote/ChatProtocol.ts"
import { Action, jsonSchemas } from "../../src/remote/OpenEnvProtocol.ts"
import type { ChatTokenizer } from "../../src/Tokenizer.ts"

/** One session's view of the wire: it turns actions into the environment's text and results into observations. */
export interface WireSession {
  reset(row: DatasetRow, result: ResetResult): Record<string, unknown>
  /** The text the environment receives for this action. */
  action(action: unknown): string
  /** The observation after the environment answered the action that `action` turned into `text`. */
  step(action: unknown, text: string, result: StepResult): Record<string, unknown>
  /** What the session's state adds to `episode_id` and `step_count`. */
  state(): Record<string, unknown>
}

export interface Wire {
  /** The action the server decodes every step with. */
  readonly action: Schema.Codec<any, unknown>
  /** What `GET /schema` publishes. */
  readonly schemas: { readonly action: unknown; readonly observation: unknown; readonly state: unknown }
  readonly open: () => WireSession
}

/** Actions and observations as text: `{message}` in, `{text, messages?, system_prompt?, role?}` out. */
export const text: Wire = {
  action: Action,
  schemas: jsonSchemas(),
  open: () => ({
    reset: (_row, result) => {
      const observation = result.observation
      return {
        text: typeof observation === "string" ? observation : null,
        ...(typeof observation === "object" ? { messages: observation } : {}),
        ...(result.systemPrompt !== undefined ? { system_prompt: result.systemPrompt } : {})
      }
    },
    action: (action) => (action as Action).message,
    step: (_action, _text, result) => ({ text: result.observation, role: result.role ?? "user" }),
    state: () => ({})
  })
}

/** The first turn as the engine makes it: the environment's messages, or the row's prompt and the observation; the system prompt first. */
const openingMessages = (row: DatasetRow, result: ResetResult): Array<MessageInit> => {
  const observation = result.observation
  const messages: Array<MessageInit> = typeof observation === "object"
    ? [...observation]
    : [...row.prompt, ...(observation !== undefined ? [{ role: "user" as const, content: observation }] : [])]
  return result.systemPrompt !== undefined && messages[0]?.role !== "system"
    ? [{ role: "system", content: result.systemPrompt }, ...messages]
    : messages
}

/** OpenEnv's chat_env shapes, with `tokenizer` as the environment's own. */
export const tokens = (tokenizer: ChatTokenizer): Wire => ({
  action: ChatAction,
  schemas: chatJsonSchemas,
  open: () => {
    let messages: Array<MessageInit> = []
    // One entry per segment (the opening, then each action and each observation); flattened, the observation's tokens.
    let segments: Array<Array<number>> = []
    const observation = () => ({ messages: [...messages], tokens: segments.flat() })
    return {
      reset: (row, result) => {
        messages = openingMessages(row, result)
        segments = [tokenizer.renderPrompt(messages)]
        return observation()
      },
      action: (action) => tokenizer.decode(flattenTokens((action as ChatAction).tokens)),
      step: (action, content, result) => {
        const ids = flattenTokens((action as ChatAction).tokens)
        messages.push({ role: "assistant", content })
        segments.push(ids)
        if (!result.done) {
          const next: MessageInit = { role: result.role ?? "user", content: result.observation }
          messages.push(next)
          segments.push(tokenizer.appendMessage(next, ids))
        }
        return observation()
      },
      state: () => ({ history_messages: [...messages], history_tokens: segments.map((segment) => [...segment]) })
    }
  }
})
