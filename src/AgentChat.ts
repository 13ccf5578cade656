/**
 * OpenAI's chat-completions shapes for agents, on top of the chat template: a request's messages and tools
 * as the template takes them, the generated text split into content and `tool_calls`, and the answer as a
 * JSON body or as server-sent-event chunks (what `streamText` of the AI SDK reads).
 *
 * Tool calls are read in the formats templates teach their models: Qwen / Hermes
 * `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>` blocks, and Llama 3's bare
 * `{"name": ..., "parameters": {...}}` (after an optional `<|python_tag|>`). Each call's `arguments` is the
 * generated JSON text verbatim, so that when the agent sends the call back, the template renders exactly
 * the tokens the policy generated and the next call extends the record instead of starting a new chain.
 */
import type { Message } from "./Message.ts"

type ChatMessage = Message

export interface ToolCall {
  readonly id: string
  readonly type: "function"
  readonly function: { readonly name: string; readonly arguments: string }
}

export interface ParsedReply {
  readonly content: string
  readonly toolCalls: ReadonlyArray<ToolCall>
}

export class ChatRequestError extends Error {
  readonly param: string | undefined
  constructor(message: string, param?: string) {
    super(message)
    this.param = param
  }
}

type Json = Record<string, unknown>

const textOf = (content: unknown, where: string): string => {
  if (content === undefined || content === null) return ""
  if (typeof content === "string") return content
  if (Array.isArray(content) && content.every((part) => (part as Json | null)?.["type"] === "text" && typeof (part as Json)["text"] === "string")) {
    return content.map((part) => (part as Json)["text"]).join("")
  }
  throw new ChatRequestError(`${where}.content must be text (a string or a list of text parts)`, `${where}.content`)
}

/** The request's messages as the chat template takes them (tool calls and tool results kept). */
export const templateMessages = (value: unknown): Array<Json> => {
  if (!Array.isArray(value) || value.length === 0) throw new ChatRequestError("messages must be a non-empty list", "messages")
  return value.map((message, i) => {
    const m = (message ?? {}) as Json
    const role = m["role"] === "developer" ? "system" : m["role"]
    if (role !== "system" && role !== "user" && role !== "assistant" && role !== "tool") {
      throw new ChatRequestError(`messages[${i}].role must be system, user, assistant or tool`, `messages[${i}].role`)
    }
    const content = textOf(m["content"], `messages[${i}]`)
    if (role === "assistant" && Array.isArray(m["tool_calls"]) && m["tool_calls"].length > 0) {
      const toolCalls = (m["tool_calls"] as Array<Json>).map((call) => {
        const fn = (call["function"] ?? {}) as Json
        const args = fn["arguments"]
        return { id: call["id"], type: "function", function: { name: String(fn["name"]), arguments: typeof args === "string" ? args : JSON.stringify(args ?? {}) } }
      })
      return { role, content, tool_calls: toolCalls }
    }
    if (role === "tool") {
      return { role, content, ...(typeof m["tool_call_id"] === "string" ? { tool_call_id: m["tool_call_id"] } : {}), ...(typeof m["name"] === "string" ? { name: m["name"] } : {}) }
    }
    return { role, content }
  })
}

const sameJson = (a: string, b: string) => {
  try {
    return JSON.stringify(JSON.parse(a)) === JSON.stringify(JSON.parse(b))
  } catch {
    return false
  }
}

/**
 * Clients parse a call's arguments and serialize them again (the AI SDK does), which changes spacing: an
 * assistant tool call whose id this episode gave and whose arguments mean the same JSON gets back the text
 * the policy generated, so the template renders the generated tokens again.
 */
export const restoreToolCalls = (messages: Array<Json>, given: ReadonlyMap<string, string>): Array<Json> =>
  messages.map((m) => {
    const calls = m["tool_calls"] as ReadonlyArray<ToolCall> | undefined
    if (calls === undefined) return m
    return {
      ...m,
      tool_calls: calls.map((call) => {
        const raw = given.get(call.id)
        return raw !== undefined && raw !== call.function.arguments && sameJson(raw, call.function.arguments)
          ? { ...call, function: { ...call.function, arguments: raw } }
          : call
      })
    }
  })

const hermesCall = (call: ToolCall) => `<tool_call>\n{"name": "${call.function.name}", "arguments": ${call.function.arguments}}\n</tool_call>`

// Qwen's words for the tools, for templates that have none of their own.
const toolsPrompt = (tools: ReadonlyArray<Json>) =>
  "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" +
  tools.map((tool) => `\n${JSON.stringify(tool)}`).join("") +
  "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call>"

/**
 * For a chat template that knows no tools (the project's tiny model, plain Llama 3 templates): the tools go
 * into the system message and an assistant's tool calls into its content, both in the Hermes format that
 * `parseReply` reads, so tool calls still round-trip token for token. Templates with tools get the request as is.
 */
export const forTemplate = (
  template: string,
  messages: Array<Json>,
  tools: Array<Json>,
  /** The generated text of the reply that made a tool call, by the call's id: restored verbatim. */
  replyOf: (toolCallId: string) => string | undefined = () => undefined
): { readonly messages: Array<Json>; readonly tools: Array<Json> } => {
  const knowsCalls = template.includes("tool_calls")
  const knowsTools = /\btools\b/.test(template)
  let folded = knowsCalls
    ? messages
    : messages.map((m) => {
      const calls = m["tool_calls"] as ReadonlyArray<ToolCall> | undefined
      if (calls === undefined) return m
      const { tool_calls: _calls, ...rest } = m
      const replies = new Set(calls.map((call) => replyOf(call.id)))
      const [reply] = replies
      if (replies.size === 1 && reply !== undefined && parseReply(reply, () => "").content === m["content"]) return { ...rest, content: reply }
      return { ...rest, content: [m["content"] as string, ...calls.map(hermesCall)].filter((part) => part !== "").join("\n") }
    })
  if (!knowsTools && tools.length > 0) {
    const first = folded[0]
    folded = first?.["role"] === "system"
      ? [{ ...first, content: `${first["content"] as string}\n\n${toolsPrompt(tools)}` }, ...folded.slice(1)]
      : [{ role: "system", content: toolsPrompt(tools) }, ...folded]
  }
  return { messages: folded, tools: knowsTools ? tools : [] }
}

/** The messages as the record keeps them: role and text; an assistant's tool calls as the template's text. */
export const recordMessages = (messages: ReadonlyArray<Json>): Array<ChatMessage> =>
  messages.map((m) => {
    const calls = (m["tool_calls"] as ReadonlyArray<ToolCall> | undefined) ?? []
    const content = [m["content"] as string, ...calls.map(hermesCall)]
      .filter((part) => part !== "")
      .join("\n")
    return { role: m["role"] as ChatMessage["role"], content }
  })

/** The request's tools, checked: OpenAI's `[{ type: "function", function: { name, parameters } }]`. */
export const tools = (value: unknown): Array<Json> => {
  if (value === undefined || value === null) return []
  if (!Array.isArray(value)) throw new ChatRequestError("tools must be a list", "tools")
  return value.map((tool, i) => {
    const fn = (tool as Json | null)?.["function"] as Json | undefined
    if (typeof fn?.["name"] !== "string") throw new ChatRequestError(`tools[${i}].function.name must be a string`, `tools[${i}].function.name`)
    return tool as Json
  })
}

const HERMES = /<tool_call>\s*([\s\S]*?)\s*<\/tool_call>/g
// `{"name": "x", "arguments": <json>}` with the arguments' text kept verbatim.
const CALL_BODY = /^\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"(?:arguments|parameters)"\s*:\s*([\s\S]*?)\s*\}$/

const callOf = (body: string, id: string): ToolCall | undefined => {
  const match = CALL_BODY.exec(body.trim())
  if (match === null) return undefined
  try {
    const name = JSON.parse(match[1]!) as string
    const args = JSON.parse(match[2]!) as unknown
    if (typeof args !== "object" || args === null || Array.isArray(args)) return undefined
    return { id, type: "function", function: { name, arguments: match[2]! } }
  } catch {
    return undefined
  }
}

/** Splits generated text into content and tool calls; text that holds no well-formed call is all content. */
export const parseReply = (text: string, idOf: (index: number) => string): ParsedReply => {
  const blocks = [...text.matchAll(HERMES)]
  if (blocks.length > 0) {
    const calls = blocks.map((block, i) => callOf(block[1]!, idOf(i)))
    if (calls.every((call) => call !== undefined)) {
      // The template writes a newline between the content and the first call.
      const content = text.slice(0, blocks[0]!.index).replace(/\n$/, "")
      return { content, toolCalls: calls as Array<ToolCall> }
    }
    return { content: text, toolCalls: [] }
  }
  const bare = text.replace(/^<\|python_tag\|>/, "").trim()
  if (bare.startsWith("{")) {
    const call = callOf(bare, idOf(0))
    if (call !== undefined) return { content: "", toolCalls: [call] }
  }
  return { content: text, toolCalls: [] }
}

export interface Completion {
  readonly id: string
  readonly model: string
  readonly reply: ParsedReply
  readonly finishReason: "stop" | "length" | "tool_calls" | "abort"
  readonly promptTokens: number
  readonly tokenIds: ReadonlyArray<number>
  readonly logprobs: ReadonlyArray<number>
  readonly tokenText: (id: number) => string
  readonly policyVersion: number
  readonly wantsLogprobs: boolean
}

const logprobsOf = (c: Completion) =>
  c.wantsLogprobs
    ? { content: c.tokenIds.map((id, i) => ({ token: c.tokenText(id), logprob: c.logprobs[i], bytes: [...Buffer.from(c.tokenText(id))], top_logprobs: [] })) }
    : null

const usageOf = (c: Completion) => ({ prompt_tokens: c.promptTokens, completion_tokens: c.tokenIds.length, total_tokens: c.promptTokens + c.tokenIds.length })

/** OpenAI's `chat.completion` body. */
export const completionBody = (c: Completion) => ({
  id: c.id,
  object: "chat.completion",
  created: Math.floor(Date.now() / 1000),
  model: c.model,
  choices: [{
    index: 0,
    message: {
      role: "assistant",
      content: c.reply.content === "" && c.reply.toolCalls.length > 0 ? null : c.reply.content,
      ...(c.reply.toolCalls.length > 0 ? { tool_calls: c.reply.toolCalls } : {})
    },
    logprobs: logprobsOf(c),
    finish_reason: c.finishReason,
    token_ids: c.tokenIds
  }],
  usage: usageOf(c),
  policy_version: c.policyVersion
})

/** The same answer as `chat.completion.chunk` events, then `[DONE]`. */
export const completionChunks = (c: Completion, includeUsage: boolean): string => {
  const head = { id: c.id, object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000), model: c.model }
  const chunks: Array<unknown> = [
    { ...head, choices: [{ index: 0, delta: { role: "assistant", content: c.reply.content }, logprobs: logprobsOf(c), finish_reason: null }] },
    ...c.reply.toolCalls.map((call, index) => ({
      ...head,
      choices: [{ index: 0, delta: { tool_calls: [{ index, id: call.id, type: "function", function: call.function }] }, logprobs: null, finish_reason: null }]
    })),
    { ...head, choices: [{ index: 0, delta: {}, logprobs: null, finish_reason: c.finishReason }] },
    ...(includeUsage ? [{ ...head, choices: [], usage: usageOf(c) }] : [])
  ]
  return chunks.map((chunk) => `data: ${JSON.stringify(chunk)}\n\n`).join("") + "data: [DONE]\n\n"
}

const TOOL_CALL = "<tool_call>"

/**
 * The start of a reply being generated that is content whatever tokens come next: everything before a tool
 * call or what may begin one (a `<tool_call>` prefix, the newline the template writes before it, a reply
 * that may be Llama 3's bare JSON call), less a trailing incomplete character. `parseReply`'s content of
 * the finished reply always starts with it.
 */
export const settledContent = (text: string): string => {
  const bare = text.replace(/^<\|python_tag\|>/, "").trimStart()
  if (bare === "" || bare.startsWith("{") || "<|python_tag|>".startsWith(text)) return ""
  let end = text.indexOf(TOOL_CALL)
  if (end < 0) {
    end = text.length
    for (let k = Math.min(text.length, TOOL_CALL.length - 1); k > 0; k--) {
      if (TOOL_CALL.startsWith(text.slice(-k))) {
        end = text.length - k
        break
      }
    }
  }
  return text.slice(0, end).replace(/\n+$/, "").replace(/\uFFFD+$/, "")
}

/**
 * A streamed answer as it is generated: the role, then a content delta whenever the settled content grows
 * (token by token for plain text), then the rest of the content with the logprobs, the tool calls, the finish
 * reason and the usage once the generation has ended, then `[DONE]`.
 */
export async function* streamedChunks(options: {
  readonly id: string
  readonly model: string
  /** The reply's token ids as they are sampled; ends when the generation does. */
  readonly tokens: AsyncIterable<number>
  readonly decode: (ids: ReadonlyArray<number>) => string
  /** The finished answer. */
  readonly completion: Promise<Completion>
  readonly includeUsage: boolean
}): AsyncGenerator<string> {
  const head = { id: options.id, object: "chat.completion.chunk", created: Math.floor(Date.now() / 1000), model: options.model }
  const frame = (chunk: unknown) => `data: ${JSON.stringify(chunk)}\n\n`
  const delta = (value: Record<string, unknown>, logprobs: unknown = null, finish: string | null = null) =>
    frame({ ...head, choices: [{ index: 0, delta: value, logprobs, finish_reason: finish }] })
  yield delta({ role: "assistant", content: "" })
  const ids: Array<number> = []
  let sent = ""
  for await (const id of options.tokens) {
    ids.push(id)
    const content = settledContent(options.decode(ids))
    if (content.length > sent.length && content.startsWith(sent)) {
      yield delta({ content: content.slice(sent.length) })
      sent = content
    }
  }
  const c = await options.completion
  const rest = c.reply.content.startsWith(sent) ? c.reply.content.slice(sent.length) : ""
  if (rest !== "" || c.wantsLogprobs) yield delta({ content: rest }, logprobsOf(c))
  for (const [index, call] of c.reply.toolCalls.entries()) {
    yield delta({ tool_calls: [{ index, id: call.id, type: "function", function: call.function }] })
  }
  yield delta({}, null, c.finishReason)
  if (options.includeUsage) yield frame({ ...head, choices: [], usage: usageOf(c) })
  yield "data: [DONE]\n\n"
}
