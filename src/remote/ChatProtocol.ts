/**
 * OpenEnv's chat_env wire shapes (meta-pytorch/OpenEnv `envs/chat_env/models.py`), as `episodic serve-env
 * --tokenizer` speaks them and RemoteEnvironment reads them:
 *
 * - ChatAction `{tokens: [int, ...], metadata?}`: at least one token; nested lists (a tensor's `tolist()`)
 *   are flattened, as OpenEnv's validator flattens them.
 * - ChatObservation `{messages: [{role, content}...], tokens: [int, ...]}`: the conversation, and the
 *   environment's own tokenization of it. A reply carries it as `{observation, reward, done}`.
 * - ChatState `{episode_id, step_count, history_messages, history_tokens}`.
 *
 * The environment owns a tokenizer: it decodes the action's tokens into the assistant message. Comparing its
 * `tokens` with what the policy saw (`tokenDrift`) tells whether the two tokenizers and templates agree.
 */
import { Schema } from "effect"

const JsonObject = Schema.Record(Schema.String, Schema.Unknown)

/** A token list as OpenEnv accepts it: token ids, or lists of them nested to any depth. */
type NestedIds = number | ReadonlyArray<NestedIds>

const isTokenId = (value: unknown): value is number => typeof value === "number" && Number.isSafeInteger(value) && value >= 0

/** The problems of a nested token list, each with its path; OpenEnv flattens first, then asks for one token. */
const tokenProblems = (value: ReadonlyArray<unknown>): Array<Schema.FilterIssue> => {
  const problems: Array<Schema.FilterIssue> = []
  let count = 0
  const visit = (item: unknown, path: ReadonlyArray<number>, depth: number) => {
    if (Array.isArray(item) && depth < 8) item.forEach((inner, i) => visit(inner, [...path, i], depth + 1))
    else if (isTokenId(item)) count++
    else problems.push({ path, issue: `a token id must be a non-negative integer, got ${JSON.stringify(item)}` })
  }
  value.forEach((item, i) => visit(item, [i], 1))
  if (problems.length === 0 && count === 0) problems.push({ path: [], issue: "List should have at least 1 item after validation, not 0" })
  return problems
}

/** Token ids as OpenEnv's ChatAction takes them: flat or nested lists of non-negative integers, at least one. */
export const TokenList = Schema.Array(Schema.Unknown).check(Schema.makeFilter(tokenProblems))

/** The action of a chat_env server: the assistant turn's token ids. */
export const ChatAction = Schema.Struct({
  tokens: TokenList,
  metadata: Schema.optionalKey(JsonObject)
})
export type ChatAction = typeof ChatAction.Type

/** The token ids of a decoded ChatAction, flattened in order. */
export const flattenTokens = (tokens: ReadonlyArray<unknown>): Array<number> => {
  const ids: Array<number> = []
  const visit = (item: unknown) => {
    if (Array.isArray(item)) item.forEach(visit)
    else ids.push(item as number)
  }
  ;(tokens as ReadonlyArray<NestedIds>).forEach(visit)
  return ids
}

/** OpenEnv's Message: any role (OpenEnv does not restrict them), and its content. */
export const ChatMessage = Schema.Struct({ role: Schema.String, content: Schema.String })
export type ChatMessage = typeof ChatMessage.Type

/** A chat_env observation as a client reads it: other fields, if any, are ignored. */
export const ChatObservation = Schema.Struct({
  messages: Schema.Array(ChatMessage),
  tokens: Schema.Array(Schema.Int)
})
export type ChatObservation = typeof ChatObservation.Type

/**
 * The JSON Schemas OpenEnv's server publishes at `GET /schema` for chat_env: pydantic's `model_json_schema()`
 * of ChatAction and ChatObservation, and of ChatState for the state (OpenEnv's own publishes its base State).
 */
export const chatJsonSchemas = {
  action: {
    additionalProperties: false,
    properties: {
      metadata: { additionalProperties: true, description: "Additional metadata for the action", title: "Metadata", type: "object" },
      tokens: { items: { type: "integer" }, minItems: 1, title: "Tokens", type: "array" }
    },
    required: ["tokens"],
    title: "ChatAction",
    type: "object"
  },
  observation: {
    $defs: {
      Message: {
        additionalProperties: false,
        properties: { role: { title: "Role", type: "string" }, content: { title: "Content", type: "string" } },
        required: ["role", "content"],
        title: "Message",
        type: "object"
      }
    },
    additionalProperties: false,
    properties: {
      done: { default: false, description: "Whether the episode has terminated", title: "Done", type: "boolean" },
      reward: {
        anyOf: [{ type: "boolean" }, { type: "integer" }, { type: "number" }, { type: "null" }],
        default: null,
        description: "Reward signal from the last action",
        title: "Reward"
      },
      metadata: { additionalProperties: true, description: "Additional metadata for the observation", title: "Metadata", type: "object" },
      messages: { items: { $ref: "#/$defs/Message" }, title: "Messages", type: "array" },
      tokens: { items: { type: "integer" }, title: "Tokens", type: "array" }
    },
    title: "ChatObservation",
    type: "object"
  },
  state: {
    $defs: {
      Message: {
        additionalProperties: true,
        properties: { role: { title: "Role", type: "string" }, content: { title: "Content", type: "string" } },
        required: ["role", "content"],
        title: "Message",
        type: "object"
      }
    },
    additionalProperties: true,
    properties: {
      episode_id: {
        anyOf: [{ type: "string" }, { type: "null" }],
        default: null,
        description: "Unique identifier for the current episode",
        title: "Episode Id"
      },
      step_count: { default: 0, description: "Number of steps taken in the current episode", minimum: 0, title: "Step Count", type: "integer" },
      history_messages: { items: { $ref: "#/$defs/Message" }, title: "History Messages", type: "array" },
      history_tokens: { items: { items: { type: "integer" }, type: "array" }, title: "History Tokens", type: "array" }
    },
    title: "ChatState",
    type: "object"
  }
} as const

/** Whether a published action schema asks for token ids (OpenEnv's ChatAction) rather than text. */
export const wantsTokens = (actionSchema: unknown): boolean => {
  if (typeof actionSchema !== "object" || actionSchema === null) return false
  const tokens = (actionSchema as { readonly properties?: Record<string, { readonly type?: unknown }> }).properties?.["tokens"]
  return tokens?.type === "array"
}

/**
 * Where the environment's tokens first differ from the policy's: the conversation as the policy saw it
 * (prompt_ids then response_ids, its latest turn included). The environment may have rendered more (the next
 * turn); fewer tokens than the policy's is a difference at the first missing position.
 */
export interface TokenDrift {
  /** Index into prompt_ids followed by response_ids. */
  readonly position: number
  /** The environment's token there (null: the environment's tokens end before it). */
  readonly environment_token: number | null
  readonly policy_token: number
  readonly environment_tokens: number
  readonly policy_tokens: number
}

export const tokenDrift = (environment: ReadonlyArray<number>, policy: ReadonlyArray<number>): TokenDrift | undefined => {
  for (let i = 0; i < policy.length; i++) {
    if (environment[i] !== policy[i]) {
      return {
        position: i,
        environment_token: environment[i] ?? null,
        policy_token: policy[i]!,
        environment_tokens: environment.length,
        policy_tokens: policy.length
      }
    }
  }
  return undefined
}
