/**
 * Tokenization for episodes, over a transformers.js tokenizer loaded from a local model directory.
 *
 * The rule that keeps trajectories exact: text is encoded once and never again. The prompt is rendered by
 * the chat template and encoded; assistant tokens are kept as the policy sampled them; each observation is
 * encoded as the template's *delta* (the tokens that close the assistant turn, the new user turn and the next
 * generation prompt), computed without re-rendering earlier turns. So prompt ids + response ids is always
 * exactly the context the policy saw, even with templates that rewrite history (Qwen3 drops earlier
 * reasoning), and no token can drift from BPE merges across a turn boundary.
 */
import { AutoTokenizer, env, type PreTrainedTokenizer } from "@huggingface/transformers"
import { Context, Effect, Layer, Schema } from "effect"
import { existsSync, readFileSync } from "node:fs"
import * as path from "node:path"
import type { MessageInit } from "./Message.ts"

export interface ChatTokenizer {
  /** The directory the tokenizer was loaded from. */
  readonly directory: string
  /** The chat template's Jinja source. */
  readonly chatTemplate: string
  /** Token ids that end an assistant turn: eos, the template's end-of-turn token, generation_config's eos. */
  readonly stopTokenIds: ReadonlyArray<number>
  /** Renders the conversation with the chat template, ending with the generation prompt, as token ids. */
  renderPrompt(messages: ReadonlyArray<MessageInit>): Array<number>
  /**
   * Renders chat messages as the template takes them (assistant `tool_calls`, `tool` results) with tool
   * definitions, ending with the generation prompt, as token ids. A template without tools ignores them.
   */
  renderChat(messages: ReadonlyArray<Readonly<Record<string, unknown>>>, tools?: ReadonlyArray<unknown>): Array<number>
  /**
   * The tokens to append after an assistant turn so that the next turn is `message`: whatever closes the
   * assistant turn (unless the policy already emitted it), the message, and the next generation prompt.
   */
  appendMessage(message: MessageInit, assistantIds: ReadonlyArray<number>): Array<number>
  /** Text of the ids; with `skipSpecialTokens` (the default) the text an environment receives. */
  decode(ids: ReadonlyArray<number>, options?: { readonly skipSpecialTokens?: boolean }): string
  encode(text: string): Array<number>
}

export class TokenizerError extends Schema.TaggedError<TokenizerError>()("TokenizerError", {
  directory: Schema.String,
  message: Schema.String
}) {}

// A string no template rewrites and no tokenizer merges with its neighbours' meaning; it marks where an
// assistant message's content sits in a rendered conversation.
const SENTINEL = "\u0001episodic-assistant-content\u0001"
// A neutral conversation to render deltas against: templates that insist on alternating roles accept it.
const BASE: ReadonlyArray<MessageInit> = [
  { role: "user", content: "." },
  { role: "assistant", content: SENTINEL }
]

const readJson = (file: string): Record<string, unknown> | undefined =>
  existsSync(file) ? (JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>) : undefined

const asIdList = (value: unknown): Array<number> =>
  typeof value === "number" ? [value] : Array.isArray(value) ? value.filter((v) => typeof v === "number") : []

/** Loads `tokenizer.json` + `tokenizer_config.json` (with a `chat_template`) from a local directory. */
export const load = async (directory: string): Promise<ChatTokenizer> => {
  const absolute = path.resolve(directory)
  for (const file of ["tokenizer.json", "tokenizer_config.json"]) {
    if (!existsSync(path.join(absolute, file))) {
      throw new TokenizerError({ directory: absolute, message: `${path.join(absolute, file)} does not exist` })
    }
  }
  // Everything is local: never reach for the Hugging Face hub.
  env.allowRemoteModels = false
  env.allowLocalModels = true
  env.localModelPath = "/"
  const tokenizer = await AutoTokenizer.from_pretrained(absolute, { local_files_only: true })
  if (!tokenizer.chat_template) {
    throw new TokenizerError({ directory: absolute, message: "tokenizer_config.json has no chat_template" })
  }
  return fromPreTrained(tokenizer, absolute)
}

const fromPreTrained = (tokenizer: PreTrainedTokenizer, directory: string): ChatTokenizer => {
  const render = (messages: ReadonlyArray<MessageInit>, addGenerationPrompt: boolean): string => {
    try {
      return tokenizer.apply_chat_template(messages.map((m) => ({ role: m.role, content: m.content })), {
        tokenize: false,
        add_generation_prompt: addGenerationPrompt
      }) as string
    } catch (cause) {
      throw new TokenizerError({ directory, message: `chat template failed: ${String(cause)}` })
    }
  }
  const encode = (text: string): Array<number> => tokenizer.encode(text, { add_special_tokens: false })
  const afterSentinel = (text: string): string => {
    const at = text.indexOf(SENTINEL)
    if (at < 0) throw new TokenizerError({ directory, message: "chat template drops assistant content" })
    return text.slice(at + SENTINEL.length)
  }

  // The template's end-of-turn token is the first token after an assistant message's content, when that
  // token is a special one (Qwen's <|im_end|>, Llama 3's <|eot_id|>, Gemma's <end_of_turn>).
  const endOfTurnIds = encode(afterSentinel(render(BASE, false))).slice(0, 1)
  // A special token is one that decoding with skip_special_tokens drops.
  const isSpecial = (id: number) => tokenizer.decode([id], { skip_special_tokens: true }) === ""
  const generationConfig = readJson(path.join(directory, "generation_config.json"))
  const stopTokenIds = [
    ...asIdList(tokenizer.eos_token_id),
    ...endOfTurnIds.filter(isSpecial),
    ...asIdList(generationConfig?.eos_token_id)
  ].filter((id, i, all) => all.indexOf(id) === i)

  return {
    directory,
    chatTemplate: String(tokenizer.chat_template),
    stopTokenIds,
    renderPrompt: (messages) => encode(render(messages, true)),
    renderChat: (messages, tools) => {
      try {
        return encode(tokenizer.apply_chat_template(messages as unknown as Parameters<typeof tokenizer.apply_chat_template>[0], {
          tokenize: false,
          add_generation_prompt: true,
          ...(tools !== undefined && tools.length > 0 ? { tools: tools as Array<Record<string, unknown>> } : {})
        }) as string)
      } catch (cause) {
        throw new TokenizerError({ directory, message: `chat template failed: ${String(cause)}` })
      }
    },
    appendMessage: (message, assistantIds) => {
      let delta = afterSentinel(render([...BASE, message], true))
      // The policy's own stop token already closed the turn: keep its token, skip its text in the delta.
      const last = assistantIds.at(-1)
      if (last !== undefined && stopTokenIds.includes(last)) {
        const closing = tokenizer.decode([last], { skip_special_tokens: false })
        if (delta.startsWith(closing)) delta = delta.slice(closing.length)
      }
      return encode(delta)
    },
    decode: (ids, options) =>
      tokenizer.decode([...ids], { skip_special_tokens: options?.skipSpecialTokens ?? true }),
    encode
  }
}

/** The tokenizer of the model an engine runs, as a service. */
export class Tokenizer extends Context.Service<Tokenizer, ChatTokenizer>()("episodic/Tokenizer") {
  static readonly layer = (directory: string): Layer.Layer<Tokenizer, TokenizerError> =>
    Layer.effect(
      Tokenizer,
      Effect.tryPromise({
        try: () => load(directory),
        catch: (cause) =>
          cause instanceof TokenizerError
            ? cause
            : new TokenizerError({ directory: path.resolve(directory), message: String(cause) })
      })
    )
}
