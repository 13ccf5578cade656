/**
 * The trainer's twin of the policy: the same decoder the ONNX exporter writes (RMSNorm, RoPE in Hugging
 * Face's rotate-half layout, grouped-query attention, SwiGLU), in TensorFlow.js, from the same weights. It
 * computes the log-probability of every recorded token, differentiably. Each family quirk comes from the
 * one description in src/model/family.ts, as in the exporter: q/k/v and o_proj biases, Qwen3's per-head
 * q/k RMSNorm, head_dim apart from hidden / heads, tied embeddings (the head is the embedding's transpose,
 * one variable, so its gradient is the sum of both uses), Llama 3's rotary scaling.
 *
 * Written for the wasm backend, the one that runs everywhere:
 * - Linear weights are kept as [in, out] and every matrix product is a plain 2-D `matMul`: the wasm backend
 *   sends only those to XNNPACK (about 30 GFLOPS here); a transposed or batched product falls to a naive loop
 *   (about 2.5). The gradients are written by hand (`linear`) so that they, too, transpose explicitly.
 * - Lookups (the embedding, the rows whose logprobs are wanted) gather forward and scatter back: the wasm
 *   backend has no UnsortedSegmentSum, the kernel `gather`'s own gradient needs.
 * - Only the positions that predict a scored token go through the head: in a multi-turn episode most tokens
 *   are the environment's, and the head is the widest product in the model.
 */
import * as tf from "@tensorflow/tfjs"
import { checkWeights, ropeTables, weightShapes, type ModelConfig } from "../../src/model/family.ts"
import { keptTokens } from "../inference/sampling.ts"
import type { Weights } from "../../src/model/safetensors.ts"

/** y = x·W for x [n, in], W [in, out], with both gradients as untransposed products. */
const linear = tf.customGrad(((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
  const [x, w, save] = args as [tf.Tensor, tf.Tensor, tf.GradSaveFunc]
  save([x, w])
  return {
    value: tf.matMul(x as tf.Tensor2D, w as tf.Tensor2D),
    gradFunc: (dy: tf.Tensor, saved: Array<tf.Tensor>) => {
      const [xs, ws] = saved as [tf.Tensor2D, tf.Tensor2D]
      return [tf.matMul(dy as tf.Tensor2D, tf.transpose(ws)), tf.matMul(tf.transpose(xs), dy as tf.Tensor2D)]
    }
  }
}) as Parameters<typeof tf.customGrad>[0]) as (x: tf.Tensor2D, w: tf.Tensor2D) => tf.Tensor2D

/** Rows of `table` at `indices`; the gradient scatters back, adding rows that were taken more than once. */
const takeRows = (table: tf.Tensor2D, indices: tf.Tensor1D): tf.Tensor2D => {
  const rows = table.shape[0]
  const op = tf.customGrad(((...args: Array<tf.Tensor | tf.GradSaveFunc>) => {
    const [t, save] = args as [tf.Tensor, tf.GradSaveFunc]
    save([indices])
    return {
      value: tf.gather(t, indices),
      gradFunc: (dy: tf.Tensor, saved: Array<tf.Tensor>) => [
        tf.scatterND(tf.expandDims(saved[0]!, 1), dy, [rows, table.shape[1]])
      ]
    }
  }) as Parameters<typeof tf.customGrad>[0]) as (t: tf.Tensor2D) => tf.Tensor2D
  return op(table)
}

/**
 * Whether the twin keeps a weight transposed from Hugging Face's layout: linear weights are [out, in] there
 * and [in, out] here; the embedding (a lookup table) and the value head (ours) are kept as they are.
 */
const transposed = (name: string, shape: ReadonlyArray<number>) =>
  shape.length === 2 && name !== "model.embed_tokens.weight" && name !== "value_head.weight"

/**
 * A batch to score: each sequence is prompt + response ids, right-padded to one length. `scored` lists, per
 * sequence, the positions (in the unpadded sequence) whose token's logprob is wanted; position p is predicted
 * by the hidden state at p - 1.
 */
export interface ScoreBatch {
  readonly sequences: ReadonlyArray<ReadonlyArray<number>>
  readonly scored: ReadonlyArray<ReadonlyArray<number>>
}

export interface ScoreOutput {
  /** The logprob of each scored token, in batch order then position order: [N]. */
  readonly logprobs: tf.Tensor1D
  /** The entropy of the distribution each scored token was drawn from: [N]. */
  readonly entropy: tf.Tensor1D
  /** The value head's estimate at each scored position, when the model has one: [N]. */
  readonly values: tf.Tensor1D | undefined
}

let twins = 0

export class PolicyModel {
  readonly config: ModelConfig
  /** Trainable variables by Hugging Face name (linear ones stored [in, out]), plus `value_head.weight` for PPO. */
  readonly variables: Map<string, tf.Variable>
  /** Rotary tables for the first positions, grown as longer sequences come. */
  #rope: { readonly cos: tf.Tensor2D; readonly sin: tf.Tensor2D; readonly length: number } | undefined

  private constructor(config: ModelConfig, variables: Map<string, tf.Variable>) {
    this.config = config
    this.variables = variables
  }

  /** cos and sin for positions [0, s), [s, head_dim] each: the exporter's angles (family.ts). */
  #ropeFor(s: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
    if (this.#rope === undefined || this.#rope.length < s) {
      this.#rope?.cos.dispose()
      this.#rope?.sin.dispose()
      const length = Math.min(this.config.maxPositions, Math.max(s, 2 * (this.#rope?.length ?? 128)))
      const { cos, sin } = ropeTables(this.config, length)
      this.#rope = { cos: tf.keep(tf.tensor2d(cos, [length, this.config.headDim])), sin: tf.keep(tf.tensor2d(sin, [length, this.config.headDim])), length }
    }
    const d = this.config.headDim
    return { cos: tf.slice(this.#rope.cos, [0, 0], [s, d]), sin: tf.slice(this.#rope.sin, [0, 0], [s, d]) }
  }

  /** Builds the twin from a model's weights (as `model.safetensors` holds them); `valueHead` adds PPO's critic. */
  static fromWeights(config: ModelConfig, weights: Weights, options: { readonly valueHead?: boolean } = {}): PolicyModel {
    checkWeights(config, weights, "PolicyModel")
    const variables = new Map<string, tf.Variable>()
    // tfjs variable names are unique per process, and a process may hold several twins (a reference policy,
    // tests): each twin prefixes its own.
    const prefix = `twin${++twins}/`
    for (const [name, shape] of weightShapes(config)) {
      const tensor = weights.get(name)!
      const value = tf.tensor(tensor.data, [...shape])
      const stored = transposed(name, shape) ? tf.transpose(value) : value
      variables.set(name, tf.variable(stored, true, `${prefix}${name}`))
      if (stored !== value) value.dispose()
      stored.dispose()
    }
    if (options.valueHead === true) {
      const saved = weights.get("value_head.weight")
      const init = saved !== undefined ? tf.tensor(saved.data, [config.hiddenSize, 1]) : tf.zeros([config.hiddenSize, 1])
      variables.set("value_head.weight", tf.variable(init, true, `${prefix}value_head.weight`))
      init.dispose()
    }
    return new PolicyModel(config, variables)
  }

  /** The weights in Hugging Face's layout, ready for safetensors or the inference actor. */
  weights(): Map<string, { readonly shape: ReadonlyArray<number>; readonly data: Float32Array }> {
    const out = new Map<string, { readonly shape: ReadonlyArray<number>; readonly data: Float32Array }>()
    for (const [name, variable] of this.variables) {
      const tensor = transposed(name, variable.shape) ? tf.transpose(variable) : variable
      out.set(name, { shape: tensor.shape, data: tensor.dataSync() as Float32Array })
      if (tensor !== variable) tensor.dispose()
    }
    return out
  }

  /** Overwrites the variables with `weights` (same names and Hugging Face shapes). */
  assign(weights: Weights): void {
    for (const [name, variable] of this.variables) {
      const tensor = weights.get(name)
      if (tensor === undefined) continue
      tf.tidy(() => {
        const value = tf.tensor(tensor.data, [...tensor.shape])
        variable.assign(transposed(name, variable.shape) ? tf.transpose(value) : value)
      })
    }
  }

  /** Gradients from `tf.variableGrads` (keyed by tfjs variable name) under the Hugging Face names. */
  gradientsByName(grads: Readonly<Record<string, tf.Tensor>>): Map<string, tf.Tensor> {
    const out = new Map<string, tf.Tensor>()
    for (const [name, variable] of this.variables) {
      const grad = grads[variable.name]
      if (grad !== undefined) out.set(name, grad)
    }
    return out
  }

  get hasValueHead(): boolean {
    return this.variables.has("value_head.weight")
  }

  #v(name: string): tf.Tensor2D {
    return this.variables.get(name) as unknown as tf.Tensor2D
  }

  /**
   * Logprobs (and entropies, and values) of the scored tokens. `temperature` divides the logits, as the
   * sampler did, and `truncation` (top-k / top-p) keeps the tokens the sampler keeps and renormalises over
   * them, so the logprobs are of the distribution the tokens were drawn from.
   */
  score(batch: ScoreBatch, temperature = 1, truncation?: Truncation): ScoreOutput {
    const { numHeads, numKeyValueHeads: kvHeads, headDim: d, numLayers, rmsNormEps } = this.config
    const b = batch.sequences.length
    const s = Math.max(...batch.sequences.map((seq) => seq.length))
    if (s > this.config.maxPositions) throw new Error(`PolicyModel: a sequence of ${s} tokens exceeds max_position_embeddings ${this.config.maxPositions}`)
    const ids = new Int32Array(b * s)
    const rows: Array<number> = []
    const targets: Array<number> = []
    batch.sequences.forEach((sequence, i) => {
      ids.set(sequence, i * s)
      for (const position of batch.scored[i] ?? []) {
        if (position < 1 || position >= sequence.length) throw new Error(`PolicyModel: scored position ${position} is outside sequence ${i} (length ${sequence.length})`)
        rows.push(i * s + position - 1)
        targets.push(sequence[position]!)
      }
    })
    const group = numHeads / kvHeads

    const rmsNorm = <T extends tf.Tensor>(x: T, weight: tf.Tensor): T =>
      tf.mul(tf.div(x, tf.sqrt(tf.add(tf.mean(tf.square(x), -1, true), rmsNormEps))), weight)
    const { qkvBias, outputBias, qkNorm } = this.config
    /** A projection, plus its bias when the family has one. */
    const project = (x: tf.Tensor2D, name: string, bias: boolean): tf.Tensor2D => {
      const y = linear(x, this.#v(`${name}.weight`))
      return bias ? tf.add(y, this.#v(`${name}.bias`)) : y
    }

    // Right padding: a real token only sees earlier positions, all real, so a causal mask is the whole mask.
    const causal = tf.tidy(() => {
      const upper = tf.sub(tf.ones([s, s]), tf.linalg.bandPart(tf.ones([s, s]), -1, 0))
      return tf.mul(upper, -1e9)
    })
    const tables = this.#ropeFor(s)
    const cos = tables.cos.reshape([1, s, 1, d])
    const sin = tables.sin.reshape([1, s, 1, d])
    const rotate = (x: tf.Tensor4D): tf.Tensor4D => {
      const [x1, x2] = tf.split(x, 2, 3)
      return tf.add(tf.mul(x, cos), tf.mul(tf.concat([tf.neg(x2!), x1!], 3), sin))
    }

    let x = takeRows(this.#v("model.embed_tokens.weight"), tf.tensor1d(ids, "int32")) // [b*s, h]
    for (let layer = 0; layer < numLayers; layer++) {
      const p = `model.layers.${layer}`
      const normed = rmsNorm(x, this.#v(`${p}.input_layernorm.weight`))
      const qHeads = project(normed, `${p}.self_attn.q_proj`, qkvBias).reshape([b, s, numHeads, d]) as tf.Tensor4D
      const kHeads = project(normed, `${p}.self_attn.k_proj`, qkvBias).reshape([b, s, kvHeads, d]) as tf.Tensor4D
      // Qwen3: each head's query and key normalised over head_dim before the rotation.
      const q = rotate(qkNorm ? rmsNorm(qHeads, this.#v(`${p}.self_attn.q_norm.weight`)) : qHeads)
      const k = rotate(qkNorm ? rmsNorm(kHeads, this.#v(`${p}.self_attn.k_norm.weight`)) : kHeads)
      const v = project(normed, `${p}.self_attn.v_proj`, qkvBias).reshape([b, s, kvHeads, d])
      // One product per key/value head: the group's query heads share its keys, as in the exporter.
      const qg = tf.transpose(q.reshape([b, s, kvHeads, group, d]), [0, 2, 3, 1, 4]).reshape([b * kvHeads, group * s, d])
      const kt = tf.transpose(k, [0, 2, 3, 1]).reshape([b * kvHeads, d, s])
      const vg = tf.transpose(v, [0, 2, 1, 3]).reshape([b * kvHeads, s, d])
      const scores = tf.mul(tf.matMul(qg, kt), 1 / Math.sqrt(d)).reshape([b * kvHeads, group, s, s])
      const attention = tf.softmax(tf.add(scores, causal), -1).reshape([b * kvHeads, group * s, s])
      const mixed = tf.matMul(attention, vg).reshape([b, kvHeads, group, s, d])
      const merged = tf.transpose(mixed, [0, 3, 1, 2, 4]).reshape([b * s, numHeads * d]) as tf.Tensor2D
      x = tf.add<tf.Tensor2D>(x, project(merged, `${p}.self_attn.o_proj`, outputBias))
      const normed2 = rmsNorm(x, this.#v(`${p}.post_attention_layernorm.weight`))
      const gate = linear(normed2, this.#v(`${p}.mlp.gate_proj.weight`))
      const up = linear(normed2, this.#v(`${p}.mlp.up_proj.weight`))
      x = tf.add<tf.Tensor2D>(x, linear(tf.mul(tf.mul(gate, tf.sigmoid(gate)), up), this.#v(`${p}.mlp.down_proj.weight`)))
    }
    const hidden = rmsNorm(takeRows(x, tf.tensor1d(rows, "int32")), this.#v("model.norm.weight")) // [n, h]
    // A tied head is the embedding table transposed: the same variable, so both uses train it.
    const head = this.config.tieWordEmbeddings ? tf.transpose(this.#v("model.embed_tokens.weight")) : this.#v("lm_head.weight")
    const scaled = tf.div(linear(hidden, head), temperature)
    const logits = truncation !== undefined && (truncation.topK > 0 || truncation.topP < 1) ? truncate(scaled as tf.Tensor2D, truncation) : scaled
    const logSoftmax = tf.logSoftmax(logits, -1)
    const picked = tf.sum(tf.mul(logSoftmax, tf.oneHot(tf.tensor1d(targets, "int32"), this.config.vocabSize)), -1)
    const entropy = tf.neg(tf.sum(tf.mul(tf.exp(logSoftmax), logSoftmax), -1))
    const values = this.hasValueHead ? linear(hidden, this.#v("value_head.weight")).reshape([rows.length]) : undefined
    return { logprobs: picked as tf.Tensor1D, entropy: entropy as tf.Tensor1D, values: values as tf.Tensor1D | undefined }
  }

  dispose(): void {
    for (const variable of this.variables.values()) variable.dispose()
    this.#rope?.cos.dispose()
    this.#rope?.sin.dispose()
  }
}

export interface Truncation {
  readonly topK: number
  readonly topP: number
}

/**
 * Logits with every token the sampler would not keep pushed out of the softmax: the set is a step
 * function of the logits (no gradient), chosen from their values as the sampler chose it.
 */
const truncate = (logits: tf.Tensor2D, truncation: Truncation): tf.Tensor2D => {
  const [rows, vocab] = logits.shape
  const data = logits.dataSync()
  const mask = new Float32Array(rows * vocab).fill(-1e9)
  const weights = new Float64Array(vocab)
  for (let r = 0; r < rows; r++) {
    const row = data.subarray(r * vocab, (r + 1) * vocab)
    let max = -Infinity
    for (const value of row) max = Math.max(max, value)
    let total = 0
    for (let i = 0; i < vocab; i++) total += weights[i] = Math.exp(row[i]! - max)
    for (const token of keptTokens(row, weights, total, truncation.topK, truncation.topP)) mask[r * vocab + token] = 0
  }
  return tf.add(logits, tf.tensor2d(mask, [rows, vocab]))
}
