/**
 * The one description of a decoder every model component works from: the exporter (`onnxExport.ts`), the
 * trainer's tfjs twin (`actors/trainer/PolicyModel.ts`) and the checkpoint writer all read a `ModelConfig`
 * and implement each of its quirks; none of them looks at `config.json` itself.
 *
 * `describe` reads a Hugging Face `config.json` of the families episodic exports, as transformers' own
 * config classes and modeling files define them:
 *
 * | family  | attention biases          | q/k norm            | head_dim default    | rope                 |
 * | ------- | ------------------------- | ------------------- | ------------------- | -------------------- |
 * | llama   | q,k,v,o if attention_bias | no                  | hidden / heads      | default, llama3      |
 * | mistral | none                      | no                  | hidden / heads      | default              |
 * | qwen2   | q,k,v always, o never     | no                  | hidden / heads      | default              |
 * | qwen3   | q,k,v,o if attention_bias | per head (head_dim) | 128 (Qwen3Config)   | default              |
 *
 * Anything else (another model_type or activation, a rope type, quantized weights, sliding-window layers,
 * partial rotary, MLP biases) is refused in one line naming the field, instead of exporting a model that
 * computes something else.
 */
import { Schema } from "effect"

export type Family = "llama" | "mistral" | "qwen2" | "qwen3"

/** head_dim when config.json leaves it out, as the family's config class defaults it (Qwen3Config: 128). */
export const defaultHeadDim = (modelType: unknown, hiddenSize: number, numHeads: number): number =>
  modelType === "qwen3" ? 128 : hiddenSize / numHeads

export const families: ReadonlyArray<Family> = ["llama", "mistral", "qwen2", "qwen3"]

/** Rotary embeddings: Hugging Face's default, or Llama 3's frequency-dependent scaling. */
export type Rope =
  | { readonly type: "default" }
  | {
    readonly type: "llama3"
    readonly factor: number
    readonly lowFreqFactor: number
    readonly highFreqFactor: number
    readonly originalMaxPositions: number
  }

export interface ModelConfig {
  readonly family: Family
  readonly vocabSize: number
  readonly hiddenSize: number
  readonly intermediateSize: number
  readonly numLayers: number
  readonly numHeads: number
  readonly numKeyValueHeads: number
  readonly headDim: number
  readonly rmsNormEps: number
  readonly ropeTheta: number
  readonly rope: Rope
  readonly maxPositions: number
  readonly tieWordEmbeddings: boolean
  /** q_proj, k_proj and v_proj carry biases. */
  readonly qkvBias: boolean
  /** o_proj carries a bias (Llama's and Qwen3's `attention_bias`). */
  readonly outputBias: boolean
  /** RMSNorm over each head's head_dim, on queries and keys before the rotation (Qwen3). */
  readonly qkNorm: boolean
}

export class ModelConfigError extends Schema.TaggedError<ModelConfigError>()("ModelConfigError", {
  message: Schema.String
}) {}

const refuse = (file: string, message: string): never => {
  throw new ModelConfigError({ message: `${file}: ${message}` })
}

const positiveInt = (raw: Record<string, unknown>, key: string, file: string): number => {
  const value = raw[key]
  if (typeof value !== "number" || !Number.isInteger(value) || value < 1) {
    return refuse(file, `"${key}" must be a positive integer, got ${JSON.stringify(value)}`)
  }
  return value
}

const numberOr = (value: unknown, fallback: number): number => (typeof value === "number" ? value : fallback)

const readRope = (raw: Record<string, unknown>, file: string): { theta: number; rope: Rope } => {
  // transformers 5 writes rope_parameters (theta included); earlier versions rope_theta and rope_scaling.
  const parameters = (raw.rope_parameters ?? raw.rope_scaling) as Record<string, unknown> | null | undefined
  const field = raw.rope_parameters !== undefined ? "rope_parameters" : "rope_scaling"
  const theta = numberOr(raw.rope_theta, numberOr(parameters?.rope_theta, 10_000))
  if (parameters === null || parameters === undefined) return { theta, rope: { type: "default" } }
  const type = parameters.rope_type ?? parameters.type ?? "default"
  if (type === "default") return { theta, rope: { type: "default" } }
  if (type === "llama3") {
    const need = (key: string) => {
      const value = parameters[key]
      return typeof value === "number" ? value : refuse(file, `${field}.${key} must be a number for rope type "llama3", got ${JSON.stringify(value)}`)
    }
    return {
      theta,
      rope: {
        type: "llama3",
        factor: need("factor"),
        lowFreqFactor: need("low_freq_factor"),
        highFreqFactor: need("high_freq_factor"),
        originalMaxPositions: need("original_max_position_embeddings")
      }
    }
  }
  return refuse(file, `${field}.rope_type ${JSON.stringify(type)} is not supported (episodic implements "default" and "llama3")`)
}

/**
 * The model a Hugging Face `config.json` describes, or a `ModelConfigError` naming the field episodic cannot
 * honour. `file` names the config in messages.
 */
export const describe = (raw: Record<string, unknown>, file = "config.json"): ModelConfig => {
  // Our own models before families were named carry model_type "llama"; a config without one is read as Llama.
  const modelType = raw.model_type ?? "llama"
  if (typeof modelType !== "string" || !(families as ReadonlyArray<string>).includes(modelType)) {
    return refuse(file, `model_type ${JSON.stringify(modelType)} is not supported (episodic trains and exports ${families.join(", ")}; see docs/models.md)`)
  }
  const family = modelType as Family
  if (raw.quantization_config !== undefined && raw.quantization_config !== null) {
    const method = (raw.quantization_config as Record<string, unknown>).quant_method
    return refuse(file, `quantization_config (quant_method ${JSON.stringify(method)}): quantized weights are not supported; use the unquantized checkpoint`)
  }
  const activation = raw.hidden_act ?? "silu"
  if (activation !== "silu") return refuse(file, `hidden_act ${JSON.stringify(activation)} is not supported (the families episodic exports use "silu")`)
  if (raw.mlp_bias === true) return refuse(file, `mlp_bias true is not supported`)
  if (raw.partial_rotary_factor !== undefined && raw.partial_rotary_factor !== 1) {
    return refuse(file, `partial_rotary_factor ${JSON.stringify(raw.partial_rotary_factor)} is not supported (rotary over the whole head only)`)
  }
  const maxPositions = numberOr(raw.max_position_embeddings, 2048)
  if (raw.use_sliding_window === true) return refuse(file, `use_sliding_window true is not supported (episodic attends to every earlier position)`)
  if (family === "mistral" && typeof raw.sliding_window === "number" && raw.sliding_window < maxPositions) {
    return refuse(file, `sliding_window ${raw.sliding_window} is not supported (below max_position_embeddings ${maxPositions}; episodic attends to every earlier position)`)
  }
  if (Array.isArray(raw.layer_types)) {
    const other = raw.layer_types.find((type) => type !== "full_attention")
    if (other !== undefined) return refuse(file, `layer_types ${JSON.stringify(other)} is not supported (only "full_attention" layers)`)
  }
  const numHeads = positiveInt(raw, "num_attention_heads", file)
  const hiddenSize = positiveInt(raw, "hidden_size", file)
  const numKeyValueHeads = raw.num_key_value_heads === undefined || raw.num_key_value_heads === null ? numHeads : positiveInt(raw, "num_key_value_heads", file)
  if (numHeads % numKeyValueHeads !== 0) return refuse(file, `num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKeyValueHeads}`)
  const headDim = raw.head_dim === undefined || raw.head_dim === null
    ? defaultHeadDim(family, hiddenSize, numHeads)
    : positiveInt(raw, "head_dim", file)
  if (!Number.isInteger(headDim) || headDim % 2 !== 0) return refuse(file, `head_dim ${headDim} must be an even integer`)
  const attentionBias = raw.attention_bias === true
  const { theta, rope } = readRope(raw, file)
  if (rope.type === "llama3" && family !== "llama") return refuse(file, `rope type "llama3" is only defined for model_type "llama"`)
  return {
    family,
    vocabSize: positiveInt(raw, "vocab_size", file),
    hiddenSize,
    intermediateSize: positiveInt(raw, "intermediate_size", file),
    numLayers: positiveInt(raw, "num_hidden_layers", file),
    numHeads,
    numKeyValueHeads,
    headDim,
    rmsNormEps: numberOr(raw.rms_norm_eps, 1e-6),
    ropeTheta: theta,
    rope,
    maxPositions,
    tieWordEmbeddings: raw.tie_word_embeddings === true,
    qkvBias: family === "qwen2" || ((family === "llama" || family === "qwen3") && attentionBias),
    outputBias: (family === "llama" || family === "qwen3") && attentionBias,
    qkNorm: family === "qwen3"
  }
}

/** The Hugging Face names of a model's weights with their shapes (linear weights [out, in]), in the family's layout. */
export const weightShapes = (config: ModelConfig): Map<string, ReadonlyArray<number>> => {
  const { hiddenSize: h, intermediateSize: m, numHeads, numKeyValueHeads, headDim: d, vocabSize: v } = config
  const shapes = new Map<string, ReadonlyArray<number>>([["model.embed_tokens.weight", [v, h]]])
  for (let i = 0; i < config.numLayers; i++) {
    const p = `model.layers.${i}`
    shapes.set(`${p}.input_layernorm.weight`, [h])
    shapes.set(`${p}.self_attn.q_proj.weight`, [numHeads * d, h])
    shapes.set(`${p}.self_attn.k_proj.weight`, [numKeyValueHeads * d, h])
    shapes.set(`${p}.self_attn.v_proj.weight`, [numKeyValueHeads * d, h])
    if (config.qkvBias) {
      shapes.set(`${p}.self_attn.q_proj.bias`, [numHeads * d])
      shapes.set(`${p}.self_attn.k_proj.bias`, [numKeyValueHeads * d])
      shapes.set(`${p}.self_attn.v_proj.bias`, [numKeyValueHeads * d])
    }
    if (config.qkNorm) {
      shapes.set(`${p}.self_attn.q_norm.weight`, [d])
      shapes.set(`${p}.self_attn.k_norm.weight`, [d])
    }
    shapes.set(`${p}.self_attn.o_proj.weight`, [h, numHeads * d])
    if (config.outputBias) shapes.set(`${p}.self_attn.o_proj.bias`, [h])
    shapes.set(`${p}.post_attention_layernorm.weight`, [h])
    shapes.set(`${p}.mlp.gate_proj.weight`, [m, h])
    shapes.set(`${p}.mlp.up_proj.weight`, [m, h])
    shapes.set(`${p}.mlp.down_proj.weight`, [h, m])
  }
  shapes.set("model.norm.weight", [h])
  if (!config.tieWordEmbeddings) shapes.set("lm_head.weight", [v, h])
  return shapes
}

/** Checks that `weights` holds every tensor the family needs, with its shape; extra tensors are ignored. */
export const checkWeights = (
  config: ModelConfig,
  weights: ReadonlyMap<string, { readonly shape: ReadonlyArray<number> }>,
  who: string
): void => {
  for (const [name, shape] of weightShapes(config)) {
    const tensor = weights.get(name)
    if (tensor === undefined) throw new Error(`${who}: weight ${name} is missing (a ${config.family} model${config.tieWordEmbeddings ? " with tied embeddings" : ""} needs it)`)
    if (tensor.shape.join() !== shape.join()) throw new Error(`${who}: ${name} has shape [${tensor.shape}], expected [${shape}]`)
  }
}

/**
 * The rotary inverse frequencies theta^(-2i/d), i < d/2, with Llama 3's scaling when the config asks for it
 * (transformers' `_compute_llama3_parameters`): long wavelengths slowed by `factor`, short ones kept, the
 * band between interpolated. Rounded to float32, as transformers keeps them.
 */
export const inverseFrequencies = (config: ModelConfig): Float32Array => {
  const d = config.headDim
  const out = new Float32Array(d / 2)
  for (let i = 0; i < d / 2; i++) out[i] = 1 / Math.pow(config.ropeTheta, (2 * i) / d)
  const rope = config.rope
  if (rope.type === "llama3") {
    const lowFreqWavelen = rope.originalMaxPositions / rope.lowFreqFactor
    const highFreqWavelen = rope.originalMaxPositions / rope.highFreqFactor
    for (let i = 0; i < d / 2; i++) {
      const f = out[i]!
      const wavelen = (2 * Math.PI) / f
      if (wavelen < highFreqWavelen) continue
      if (wavelen > lowFreqWavelen) {
        out[i] = f / rope.factor
        continue
      }
      const smooth = (rope.originalMaxPositions / wavelen - rope.lowFreqFactor) / (rope.highFreqFactor - rope.lowFreqFactor)
      out[i] = (1 - smooth) * (f / rope.factor) + smooth * f
    }
  }
  return out
}

/**
 * cos and sin of position * inverse frequency for positions [0, n), each half repeated (Hugging Face's
 * rotate-half layout): [n, head_dim] each. The angle is rounded to float32 before cos and sin, as the
 * exported graph (and transformers) compute it.
 */
export const ropeTables = (config: ModelConfig, n = config.maxPositions): { cos: Float32Array; sin: Float32Array } => {
  const d = config.headDim
  const inv = inverseFrequencies(config)
  const cos = new Float32Array(n * d)
  const sin = new Float32Array(n * d)
  for (let p = 0; p < n; p++) {
    for (let i = 0; i < d / 2; i++) {
      const angle = Math.fround(p * inv[i]!)
      cos[p * d + i] = cos[p * d + i + d / 2] = Math.cos(angle)
      sin[p * d + i] = sin[p * d + i + d / 2] = Math.sin(angle)
    }
  }
  return { cos, sin }
}

/** Parameters, counting a tied head once. */
export const parameterCount = (config: ModelConfig): number => {
  let total = 0
  for (const shape of weightShapes(config).values()) total += shape.reduce((a, b) => a * b, 1)
  return total
}

/** One line: what the config describes, as `episodic model import` prints it. */
export const summary = (config: ModelConfig): string => {
  const rope = config.rope.type === "llama3"
    ? `llama3 (factor ${config.rope.factor}, low ${config.rope.lowFreqFactor}, high ${config.rope.highFreqFactor}, original ${config.rope.originalMaxPositions})`
    : "default"
  const quirks = [
    config.qkvBias ? "q/k/v biases" : undefined,
    config.outputBias ? "o_proj bias" : undefined,
    config.qkNorm ? "q/k RMSNorm" : undefined
  ].filter((q) => q !== undefined)
  return `${config.family}: ${config.numLayers} layers, hidden ${config.hiddenSize}, ${config.numHeads} heads (${config.numKeyValueHeads} key/value), ` +
    `head_dim ${config.headDim}, MLP ${config.intermediateSize}, vocabulary ${config.vocabSize}, ` +
    `${config.tieWordEmbeddings ? "tied" : "untied"} embeddings, rope theta ${config.ropeTheta} ${rope}, rms eps ${config.rmsNormEps}` +
    (quirks.length > 0 ? `, ${quirks.join(", ")}` : "")
}
