/**
 * The tiny model's tokenizer: byte-level BPE (GPT-2's scheme, so any text round-trips exactly) whose merges
 * are learned from the built-in environments' own text, plus ChatML special tokens and a chat template.
 * A learned vocabulary makes an observation 15-25 tokens instead of 60-100 bytes, which is most of what
 * makes a CPU-sized model quick to run and to train. Training is deterministic: the same code always
 * writes the same tokenizer.json.
 */
import type { DatasetRow } from "../DatasetRow.ts"
import type { Environment } from "../Environment.ts"
import { randomValidAction, solveGridQuest } from "../environments/gridQuest.ts"
import { EnvironmentRegistry } from "../environments/registry.ts"
import { mulberry32 } from "../Seed.ts"

export const specialTokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] as const

/** ChatML, as Qwen writes it: `<|im_start|>role\ncontent<|im_end|>\n`, then `<|im_start|>assistant\n`. */
export const chatTemplate =
  "{%- for message in messages %}" +
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}" +
  "{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"

// GPT-2's pre-tokenizer: words, numbers, punctuation runs and spaces each become separate pieces, so merges
// never cross a word boundary. transformers.js applies the same pattern when it loads the tokenizer.
const pieces = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu

// GPT-2's bytes_to_unicode: every byte gets a printable character, so BPE symbols are plain strings.
const byteToChar: ReadonlyArray<string> = (() => {
  const printable = new Set<number>()
  for (const [from, to] of [[33, 126], [161, 172], [174, 255]] as const) for (let b = from; b <= to; b++) printable.add(b)
  let extra = 0
  return Array.from({ length: 256 }, (_, b) => String.fromCodePoint(printable.has(b) ? b : 256 + extra++))
})()

const toSymbols = (piece: string): Array<string> => [...new TextEncoder().encode(piece)].map((b) => byteToChar[b]!)

/** Text the built-in environments produce: prompts, observations, feedback, and the commands that answer them. */
export const environmentCorpus = async (episodesPerEnvironment = 400): Promise<Array<string>> => {
  const registry = EnvironmentRegistry.builtins()
  const signal = new AbortController().signal
  const texts: Array<string> = ["system", "user", "assistant", "tool", "tool"]
  const random = mulberry32(7)
  const cannedReplies = ["#### 12", "The answer is #### 42", "I think it is 7.", "Sure! Here is a tip: take short breaks.", "Waves, salt, wind, blue, deep."]
  for (const name of registry.names()) {
    const definition = registry.get(name)
    const rows: ReadonlyArray<DatasetRow> = definition.rows?.({ seed: 0, count: episodesPerEnvironment, config: {} }) ?? []
    for (const [i, row] of rows.entries()) {
      for (const message of row.prompt) texts.push(message.content)
      const environment: Environment = definition.make({})
      const reset = await environment.reset({ seed: Number(row.extra_info?.seed ?? i), row, signal })
      if (reset.systemPrompt !== undefined) texts.push("system", reset.systemPrompt)
      let observation = typeof reset.observation === "string" ? reset.observation : ""
      if (Array.isArray(reset.observation)) for (const message of reset.observation) texts.push(message.content)
      else texts.push(observation)
      // Solve half the grid-quest games and wander in the rest, sometimes with commands the game cannot read,
      // so every kind of feedback is seen.
      const wander = i % 2 === 1
      for (let step = 0; step < 14; step++) {
        const action =
          name === "grid-quest"
            ? wander ? random() < 0.3 ? "go somewhere" : randomValidAction(random) : solveGridQuest(observation)
            : cannedReplies[Math.floor(random() * cannedReplies.length)]!
        // Every message is framed by its role in the chat template, so role names are frequent words.
        texts.push("user", "assistant", action)
        const result = await environment.step(action, { signal })
        texts.push(result.observation)
        observation = result.observation
        if (result.done) break
      }
      await environment.close?.()
    }
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

/** Learns `vocabSize - 256 - 3` byte-pair merges from `texts` (most frequent pair first, ties by name). */
export const trainTokenizer = (texts: ReadonlyArray<string>, vocabSize: number): TrainedTokenizer => {
  const wordCounts = new Map<string, number>()
  for (const text of texts) for (const match of text.matchAll(pieces)) wordCounts.set(match[0], (wordCounts.get(match[0]) ?? 0) + 1)
  const words = [...wordCounts.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([piece, count]) => ({ symbols: toSymbols(piece), count }))

  const vocab: Array<string> = [...specialTokens, ...byteToChar]
  const merges: Array<string> = []
  while (vocab.length < vocabSize) {
    const pairCounts = new Map<string, number>()
    for (const { symbols, count } of words) {
      for (let i = 0; i + 1 < symbols.length; i++) {
        const pair = `${symbols[i]} ${symbols[i + 1]}`
        pairCounts.set(pair, (pairCounts.get(pair) ?? 0) + count)
      }
    }
    let best: string | undefined
    let bestCount = 1
    for (const [pair, count] of pairCounts) {
      if (count > bestCount || (count === bestCount && best !== undefined && pair < best)) {
        best = pair
        bestCount = count
      }
    }
    // Nothing occurs twice any more: a larger vocabulary would only memorise.
    if (best === undefined) break
    const [left, right] = best.split(" ") as [string, string]
    merges.push(best)
    vocab.push(left + right)
    for (const word of words) {
      const merged: Array<string> = []
      for (let i = 0; i < word.symbols.length; i++) {
        if (i + 1 < word.symbols.length && word.symbols[i] === left && word.symbols[i + 1] === right) {
          merged.push(left + right)
          i++
        } else merged.push(word.symbols[i]!)
      }
      word.symbols = merged
    }
  }

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
    pre_tokenizer: { type: "ByteLevel", add_prefix_space: false, trim_offsets: true, use_regex: true },
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
