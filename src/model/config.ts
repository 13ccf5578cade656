/**
 * The architecture description every model component agrees on: the exporter, the inference actor and the
 * trainer's tfjs twin read the same `config.json` a Hugging Face directory carries, through `family.ts`.
 */
import { existsSync, readFileSync } from "node:fs"
import * as path from "node:path"
import { describe, ModelConfigError, type ModelConfig } from "./family.ts"

export { ModelConfigError, type ModelConfig } from "./family.ts"

/** The name the project used before other families: every model component takes any `ModelConfig`. */
export type LlamaConfig = ModelConfig

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

/** Reads a Hugging Face `config.json` (Llama, Mistral, Qwen2, Qwen3), refusing in one line what episodic cannot run. */
export const readConfig = (directory: string): ModelConfig => {
  const file = path.join(directory, "config.json")
  if (!existsSync(file)) throw new ModelConfigError({ message: `${file} does not exist` })
  return describe(JSON.parse(readFileSync(file, "utf8")) as Record<string, unknown>, file)
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
