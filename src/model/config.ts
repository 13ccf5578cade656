/**
 * The Llama-family architecture description every model component agrees on: the exporter, the inference
 * actor and (later) the trainer's tfjs twin read the same `config.json` a Hugging Face directory carries.
 */
import { Schema } from "effect"
import { existsSync, readFileSync } from "node:fs"
import * as path from "node:path"

export interface LlamaConfig {
  readonly vocabSize: number
  readonly hiddenSize: number
  readonly intermediateSize: number
  readonly numLayers: number
  readonly numHeads: number
  readonly numKeyValueHeads: number
  readonly headDim: number
  readonly rmsNormEps: number
  readonly ropeTheta: number
  readonly maxPositions: number
  readonly tieWordEmbeddings: boolean
}

/** The sizes `episodic model init --preset` offers; the vocabulary comes from the tokenizer. */
export const presets = {
  /**
   * Fast enough to train on two CPU cores in minutes. Eight query heads of 16 dimensions in two groups of
   * four share two key/value heads: decoding on a CPU is bound by reading the KV cache, and this keeps it
   * at 64 numbers per token and layer.
   */
  /**
   * What the default experiment trains on two CPU cores: a quarter of tiny's compute per token (2 layers of
   * width 96, six 16-dimensional query heads over 2 key/value heads), enough for grid-quest.
   */
  micro: { hiddenSize: 96, intermediateSize: 256, numLayers: 2, numHeads: 6, numKeyValueHeads: 2, maxPositions: 1024 },
  tiny: { hiddenSize: 128, intermediateSize: 352, numLayers: 4, numHeads: 8, numKeyValueHeads: 2, maxPositions: 1024 },
  /** Eight times the compute of tiny: for benchmarks and GPUs. */
  small: { hiddenSize: 256, intermediateSize: 704, numLayers: 8, numHeads: 8, numKeyValueHeads: 4, maxPositions: 2048 }
} as const

export type Preset = keyof typeof presets

export class ModelConfigError extends Schema.TaggedError<ModelConfigError>()("ModelConfigError", {
  message: Schema.String
}) {}

const positiveInt = (raw: Record<string, unknown>, key: string, file: string): number => {
  const value = raw[key]
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    throw new ModelConfigError({ message: `${file}: "${key}" must be a positive integer, got ${JSON.stringify(value)}` })
  }
  return value
}

/** Reads a Hugging Face `config.json` (Llama, Qwen2/Qwen3 and Mistral use the same keys). */
export const readConfig = (directory: string): LlamaConfig => {
  const file = path.join(directory, "config.json")
  if (!existsSync(file)) throw new ModelConfigError({ message: `${file} does not exist` })
  const raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>
  const numHeads = positiveInt(raw, "num_attention_heads", file)
  const hiddenSize = positiveInt(raw, "hidden_size", file)
  return {
    vocabSize: positiveInt(raw, "vocab_size", file),
    hiddenSize,
    intermediateSize: positiveInt(raw, "intermediate_size", file),
    numLayers: positiveInt(raw, "num_hidden_layers", file),
    numHeads,
    numKeyValueHeads: typeof raw.num_key_value_heads === "number" ? raw.num_key_value_heads : numHeads,
    headDim: typeof raw.head_dim === "number" ? raw.head_dim : hiddenSize / numHeads,
    rmsNormEps: typeof raw.rms_norm_eps === "number" ? raw.rms_norm_eps : 1e-6,
    ropeTheta: typeof raw.rope_theta === "number" ? raw.rope_theta : 10_000,
    maxPositions: typeof raw.max_position_embeddings === "number" ? raw.max_position_embeddings : 2048,
    tieWordEmbeddings: raw.tie_word_embeddings === true
  }
}

/** The `config.json` transformers.js and Hugging Face transformers load as a LlamaForCausalLM. */
export const configJson = (
  config: LlamaConfig,
  tokens: { readonly bosTokenId: number; readonly eosTokenId: number; readonly padTokenId: number }
): Record<string, unknown> => ({
  architectures: ["LlamaForCausalLM"],
  model_type: "llama",
  vocab_size: config.vocabSize,
  hidden_size: config.hiddenSize,
  intermediate_size: config.intermediateSize,
  num_hidden_layers: config.numLayers,
  num_attention_heads: config.numHeads,
  num_key_value_heads: config.numKeyValueHeads,
  head_dim: config.headDim,
  hidden_act: "silu",
  rms_norm_eps: config.rmsNormEps,
  rope_theta: config.ropeTheta,
  max_position_embeddings: config.maxPositions,
  tie_word_embeddings: config.tieWordEmbeddings,
  attention_bias: false,
  mlp_bias: false,
  bos_token_id: tokens.bosTokenId,
  eos_token_id: tokens.eosTokenId,
  pad_token_id: tokens.padTokenId,
  torch_dtype: "float32",
  use_cache: true
})
