/**
 * The tiny model's tokenizer: byte-level BPE (GPT-2's scheme, so any text round-trips exactly) whose merges
 * are learned from the built-in environments' own conversations, plus ChatML special tokens and a chat
 * template. Merges may cross spaces, so the environments' stock phrases become single tokens: a grid-quest
 * observation is about 12 tokens instead of 80 bytes, which is most of what makes a CPU-sized model quick
 * to run and to train. Training is deterministic: the same code always
 * writes the same tokenizer.json.
 */
import type { DatasetRow } from "../DatasetRow.ts"
import type { Environment } from "../Environment.ts"
import { forTemplate } from "../AgentChat.ts"
import { gridQuest, randomValidAction, solveGridQuest } from "../environments/gridQuest.ts"
import { randomGuess, solveGuessNumber } from "../environments/guessNumber.ts"
import { EnvironmentRegistry } from "../environments/registry.ts"
import type { MessageInit } from "../Message.ts"
import { mulberry32 } from "../Seed.ts"

export const specialTokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] as const

/** ChatML, as Qwen writes it: `<|im_start|>role\ncontent<|im_end|>\n`, then `<|im_start|>assistant\n`. */
export const chatTemplate =
  "{%- for message in messages %}" +
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

// GPT-2's bytes_to_unicode: every byte gets a printable character, so BPE symbols are plain strings.
const byteToChar: ReadonlyArray<string> = (() => {
  const printable = new Set<number>()
  for (const [from, to] of [[33, 126], [161, 172], [174, 255]] as const) for (let b = from; b <= to; b++) printable.add(b)
  let extra = 0
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(printable.has(b) ? b : 256 + extra++))
})()


/**
 * Text as the tokenizer will meet it: the built-in environments' conversations rendered with the chat
 * template and cut at the special tokens (which never merge with their neighbours), plus the commands
 * alone, as a policy's reply is encoded on its own.
 */
export const environmentCorpus = async (episodesPerEnvironment = 150): Promise<Array<string>> => {
  const registry = EnvironmentRegistry.builtins()
  const signal = new AbortController().signal
  const texts: Array<string> = []
  const random = mulberry32(7)
  const cannedReplies = ["#### 12", "The answer is #### 42", "I think it is 7.", "Sure! Here is a tip: take short breaks.", "Waves, salt, wind, blue, deep."]
  const render = (messages: ReadonlyArray<MessageInit>) =>
    messages.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join("") + "<|im_start|>assistant\n"
  for (const name of registry.names()) {
    const definition = registry.get(name)
    const rows: ReadonlyArray<DatasetRow> = definition.rows?.({ seed: 0, count: episodesPerEnvironment, config: {} }) ?? []
    for (const [i, row] of rows.entries()) {
      const environment: Environment = definition.make({})
      const reset = await environment.reset({ seed: Number(row.extra_info?.seed ?? i), row, signal })
      const messages: Array<MessageInit> = [...row.prompt]
      if (reset.systemPrompt !== undefined) messages.unshift({ role: "system", content: reset.systemPrompt })
      if (Array.isArray(reset.observation)) messages.push(...reset.observation)
      else if (typeof reset.observation === "string") messages.push({ role: "user", content: reset.observation })
      let observation = typeof reset.observation === "string" ? reset.observation : ""
      // Solve half the grid-quest and guess-number games and wander in the rest, sometimes with commands the
      // game cannot read, so every kind of feedback is seen.
      const wander = i % 2 === 1
      for (let step = 0; step < 14; step++) {
        const action =
          name === "grid-quest"
            ? wander ? random() < 0.3 ? "go somewhere" : randomValidAction(random) : solveGridQuest(observation)
            : name === "guess-number"
            ? wander ? random() < 0.2 ? "fifty" : randomGuess(random) : solveGuessNumber(render(messages))
            : cannedReplies[Math.floor(random() * cannedReplies.length)]!
        texts.push(action)
        messages.push({ role: "assistant", content: action })
        const result = await environment.step(action, { signal })
        observation = result.observation
        if (result.done) break
        messages.push({ role: result.role ?? "user", content: result.observation })
      }
      await environment.close?.()
      texts.push(...render(messages).split(/<\|im_start\|>|<\|im_end\|>|<\|endoftext\|>/).filter((piece) => piece.length > 0))
    }
  }
  return texts
}

/** Grid-quest's `move` tool as an agent declares it (the AI SDK's `tool` with a `direction` enum). */
export const moveTool = {
  type: "function",
  function: {
    name: "move",
    description: "Move one step.",
    parameters: { type: "object", properties: { direction: { type: "string", enum: ["north", "south", "east", "west"] } } }
  }
} as const

/**
 * Text an agent's calls are rendered as (docs/agents.md): grid-quest played through a `move` tool, the tool
 * in the system message in Qwen's words, each move a Hermes `<tool_call>` block and each observation a `tool`
 * message, as the agent gateway renders them for a template that knows no tools. With it in the corpus a
 * tool call is a couple of tokens instead of sixty bytes of JSON.
 */
export const toolCallCorpus = async (episodes = 150): Promise<Array<string>> => {
  const signal = new AbortController().signal
  const texts: Array<string> = []
  for (const [i, row] of (gridQuest.rows?.({ seed: 0, count: episodes, config: {} }) ?? []).entries()) {
    const game = gridQuest.make({})
    const reset = await game.reset({ seed: Number(row.extra_info?.seed ?? i), row, signal })
    let observation = typeof reset.observation === "string" ? reset.observation : ""
    const messages: Array<Record<string, unknown>> = [{ role: "user", content: observation }]
    for (let step = 0; step < 14; step++) {
      const action = solveGridQuest(observation)
      if (!action.startsWith("move ")) break
      const call = `<tool_call>\n{"name": "move", "arguments": {"direction": "${action.slice("move ".length)}"}}\n</tool_call>`
      texts.push(call)
      messages.push({ role: "assistant", content: call })
      const result = await game.step(action, { signal })
      observation = result.observation
      messages.push({ role: "tool", content: observation })
      if (result.done) break
    }
    await game.close?.()
    // Each role's header is a piece of its own, so no merge spans a header and the content after it: a
    // re-rendered conversation then tokenizes as the generation prompt plus the generated tokens did.
    for (const m of forTemplate("", messages, [moveTool]).messages) texts.push(`${String(m["role"])}\n`, String(m["content"]), "\n")
  }
  return texts
}

export interface TrainedTokenizer {
  /** tokenizer.json, as Hugging Face tokenizers and transformers.js read it. */
  readonly tokenizerJson: Record<string, unknown>
  readonly tokenizerConfig: Record<string, unknown>
  readonly vocabSize: number
  readonly ids: { readonly endOfText: number; readonly imStart: number; readonly imEnd: number }
}

/**
 * Learns `vocabSize - 256 - 3` byte-pair merges from `texts` (most frequent pair first, ties to the lower
 * pair). Texts are not split at spaces, so merges may span words: "You are at (" can become one token.
 */
export const trainTokenizer = (texts: ReadonlyArray<string>, vocabSize: number): TrainedTokenizer => {
  const pieceCounts = new Map<string, number>()
  for (const text of texts) pieceCounts.set(text, (pieceCounts.get(text) ?? 0) + 1)
  const encoder = new TextEncoder()
  // Symbols are numbers: 0..255 the bytes, then one per merge.
  const pieces = [...pieceCounts.entries()]
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([text, count]) => ({ symbols: Array.from(encoder.encode(text)), count }))
  const symbolText: Array<string> = [...byteToChar]
  const merges: Array<string> = []
  const width = 1 << 16
  while (specialTokens.length + symbolText.length < vocabSize) {
    const pairCounts = new Map<number, number>()
    for (const { symbols, count } of pieces) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const pair = symbols[i]! * width + symbols[i + 1]!
        pairCounts.set(pair, (pairCounts.get(pair) ?? 0) + count)
      }
    }
    let best = -1
    let bestCount = 1
    for (const [pair, count] of pairCounts) {
      if (count > bestCount || (count === bestCount && best >= 0 && pair < best)) {
        best = pair
        bestCount = count
      }
    }
    // Nothing occurs twice any more: a larger vocabulary would only memorise.
    if (best < 0) break
    const left = Math.floor(best / width)
    const right = best % width
    const merged = symbolText.length
    merges.push(`${symbolText[left]} ${symbolText[right]}`)
    symbolText.push(symbolText[left]! + symbolText[right]!)
    for (const piece of pieces) {
      const { symbols } = piece
      let out = -1
      for (let i = 0; i < symbols.length; i++) {
        if (symbols[i] === left && symbols[i + 1] === right) {
          if (out < 0) out = i
          symbols[out++] = merged
          i++
        } else if (out >= 0) symbols[out++] = symbols[i]!
      }
      if (out >= 0) symbols.length = out
    }
  }
  const vocab: Array<string> = [...specialTokens, ...symbolText]

  const ids = { endOfText: 0, imStart: 1, imEnd: 2 }
  const addedTokens = specialTokens.map((content, id) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true
  }))
  const tokenizerJson = {
    version: "1.0",
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    // No split at spaces (use_regex false): the text between special tokens is one piece for BPE.
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: false },
    post_processor: null,
    decoder: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: {
      type: "BPE",
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab.map((token, id) => [token, id])),
      merges
    }
  }
  const tokenizerConfig = {
    tokenizer_class: "PreTrainedTokenizerFast",
    add_bos_token: false,
    add_eos_token: false,
    add_prefix_space: false,
    bos_token: null,
    eos_token: "<|im_end|>",
    pad_token: "<|endoftext|>",
    unk_token: null,
    // Decoding must give back exactly the text the policy wrote: no " ." -> "." clean-up.
    clean_up_tokenization_spaces: false,
    model_max_length: 1024,
    chat_template: chatTemplate,
    added_tokens_decoder: Object.fromEntries(addedTokens.map(({ id, ...token }) => [String(id), token]))
  }
  return { tokenizerJson, tokenizerConfig, vocabSize: vocab.length, ids }
}
