/**
 * Our own ONNX exporter: writes a Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) as an
 * opset-17 graph straight from the weights, with the KV-cache I/O that Optimum and transformers.js use:
 *
 *   input_ids [batch, seq], attention_mask [batch, past + seq], position_ids [batch, seq],
 *   past_key_values.N.key/value [batch, kv_heads, past, head_dim]
 *     -> logits [batch, seq, vocab], present.N.key/value [batch, kv_heads, past + seq, head_dim]
 *        (and new_key_values.N.key/value [batch, kv_heads, seq, head_dim]: present's last seq positions)
 *
 * Attention follows the mask, not the layout: a key is visible to a query when the mask says it is real and
 * it does not come later in the sequence. So rows may carry padding anywhere (the inference actor pads in
 * the middle when it prefills several episodes with caches of different lengths), and position ids come in
 * as an input rather than being derived from the layout.
 *
 * Every family quirk comes from the one description in `family.ts` (the trainer's twin reads the same):
 * q/k/v and o_proj biases, Qwen3's per-head q/k RMSNorm, head_dim apart from hidden / heads, tied
 * embeddings, and rotary frequencies with Llama 3's scaling. The rotary angles are computed in the graph
 * from position_ids (position x inverse frequency in float32, as transformers does), so no table of
 * max_position_embeddings rows is stored.
 *
 * Only standard ONNX operators are used; ONNX Runtime's graph optimiser fuses what it can.
 */
import onnxProto from "onnx-proto"
import { checkWeights, inverseFrequencies, weightShapes, type ModelConfig } from "./family.ts"
import type { Weights } from "./safetensors.ts"

export { ropeTables, weightShapes } from "./family.ts"

const { onnx } = onnxProto
type NodeProto = onnxProto.onnx.INodeProto
type TensorProto = onnxProto.onnx.ITensorProto
type AttributeProto = onnxProto.onnx.IAttributeProto

const FLOAT = onnx.TensorProto.DataType.FLOAT
const INT64 = onnx.TensorProto.DataType.INT64
const BOOL = onnx.TensorProto.DataType.BOOL

const floatTensor = (name: string, dims: ReadonlyArray<number>, data: Float32Array): TensorProto => ({
  name,
  dims: [...dims],
  dataType: FLOAT,
  rawData: new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))
})

const int64Tensor = (name: string, values: ReadonlyArray<number>, scalar = false): TensorProto => ({
  name,
  dims: scalar ? [] : [values.length],
  dataType: INT64,
  rawData: new Uint8Array(BigInt64Array.from(values.map(BigInt)).buffer)
})

const transpose2d = (data: Float32Array, rows: number, cols: number): Float32Array => {
  const out = new Float32Array(data.length)
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c]!
  return out
}

class GraphBuilder {
  readonly nodes: Array<NodeProto> = []
  readonly initializers: Array<TensorProto> = []
  #counter = 0

  fresh(hint: string): string {
    return `${hint}_${this.#counter++}`
  }

  node(opType: string, inputs: ReadonlyArray<string>, attributes: ReadonlyArray<AttributeProto> = [], output?: string): string {
    const out = output ?? this.fresh(opType)
    this.nodes.push({ opType, input: [...inputs], output: [out], name: `${opType}_${this.nodes.length}`, attribute: [...attributes] })
    return out
  }

  constant(tensor: TensorProto): string {
    this.initializers.push(tensor)
    return tensor.name!
  }
}

const ints = (name: string, values: ReadonlyArray<number>): AttributeProto => ({ name, ints: [...values], type: onnx.AttributeProto.AttributeType.INTS })
const int = (name: string, value: number): AttributeProto => ({ name, i: value, type: onnx.AttributeProto.AttributeType.INT })

const valueInfo = (name: string, elemType: number, dims: ReadonlyArray<number | string>) => ({
  name,
  type: {
    tensorType: {
      elemType,
      shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) }
    }
  }
})

/** The ONNX model (serialised ModelProto bytes) computing `config`'s decoder with `weights`. */
export const exportOnnx = (config: ModelConfig, weights: Weights): Uint8Array => {
  const shapes = weightShapes(config)
  checkWeights(config, weights, "exportOnnx")
  const { hiddenSize: h, numHeads, numKeyValueHeads: kvHeads, headDim: d, numLayers } = config
  const group = numHeads / kvHeads
  const g = new GraphBuilder()
  const weight = (name: string) => g.constant(floatTensor(name, shapes.get(name)!, weights.get(name)!.data))
  // MatMul wants [in, out]; Hugging Face stores [out, in].
  const linearWeight = (name: string) => {
    const [out, inp] = shapes.get(name) as [number, number]
    return g.constant(floatTensor(`${name}.T`, [inp, out], transpose2d(weights.get(name)!.data, out, inp)))
  }
  /** Several [out, in] weights side by side as one [in, sum of outs] MatMul weight. */
  const fusedWeight = (name: string, parts: ReadonlyArray<string>) => {
    const shapesOf = parts.map((part) => shapes.get(part) as [number, number])
    const inputs = shapesOf[0]![1]
    const outs = shapesOf.reduce((sum, [out]) => sum + out, 0)
    const data = new Float32Array(inputs * outs)
    let column = 0
    parts.forEach((part, i) => {
      const [out] = shapesOf[i]!
      const w = weights.get(part)!.data
      for (let o = 0; o < out; o++) for (let c = 0; c < inputs; c++) data[c * outs + column + o] = w[o * inputs + c]!
      column += out
    })
    return g.constant(floatTensor(`${name}.T`, [inputs, outs], data))
  }
  /** Several bias vectors end to end, matching a fused weight's columns. */
  const fusedBias = (name: string, parts: ReadonlyArray<string>) => {
    const vectors = parts.map((part) => weights.get(part)!.data)
    const data = new Float32Array(vectors.reduce((sum, v) => sum + v.length, 0))
    let at = 0
    for (const v of vectors) {
      data.set(v, at)
      at += v.length
    }
    return g.constant(floatTensor(name, [data.length], data))
  }
  const split = (x: string, sizes: string) => {
    const outputs = [0, 1, 2].slice(0, sizes === gateUpSizes ? 2 : 3).map(() => g.fresh("split"))
    g.nodes.push({ opType: "Split", input: [x, sizes], output: outputs, name: g.fresh("Split"), attribute: [int("axis", -1)] })
    return outputs
  }
  const scalar = (name: string, value: number) => g.constant(floatTensor(name, [], Float32Array.of(value)))
  const shape64 = (name: string, values: ReadonlyArray<number>) => g.constant(int64Tensor(name, values))

  const eps = scalar("rms_norm_eps", config.rmsNormEps)
  const qkvSizes = shape64("qkv_sizes", [numHeads * d, kvHeads * d, kvHeads * d])
  const gateUpSizes = shape64("gate_up_sizes", [config.intermediateSize, config.intermediateSize])
  const scale = scalar("attention_scale", 1 / Math.sqrt(d))
  const rmsNorm = (x: string, w: string) => {
    const variance = g.node("ReduceMean", [g.node("Mul", [x, x])], [ints("axes", [-1]), int("keepdims", 1)])
    const normalised = g.node("Div", [x, g.node("Sqrt", [g.node("Add", [variance, eps])])])
    return g.node("Mul", [normalised, w])
  }

  // Rotary angles at each token's position (float32 position x inverse frequency), shaped to broadcast over heads.
  const inv = inverseFrequencies(config)
  const positions = g.node("Unsqueeze", [g.node("Cast", ["position_ids"], [int("to", FLOAT)]), shape64("axis_last", [-1])]) // [B,S,1]
  const half = g.node("Mul", [positions, g.constant(floatTensor("rope_inv_freq", [d / 2], inv))]) // [B,S,D/2]
  const angles = g.node("Concat", [half, half], [int("axis", -1)]) // [B,S,D]
  const cosK = g.node("Unsqueeze", [g.node("Cos", [angles]), shape64("axis_1", [1])]) // [B,1,S,D]
  const sinK = g.node("Unsqueeze", [g.node("Sin", [angles]), "axis_1"])
  const cosQ = g.node("Unsqueeze", [cosK, "axis_1"]) // [B,1,1,S,D]
  const sinQ = g.node("Unsqueeze", [sinK, "axis_1"])
  const halves = shape64("rope_halves", [d / 2, d / 2])
  const rotate = (x: string, c: string, s: string) => {
    const [x1, x2] = [g.fresh("rope_x1"), g.fresh("rope_x2")]
    g.nodes.push({ opType: "Split", input: [x, halves], output: [x1, x2], name: g.fresh("Split"), attribute: [int("axis", -1)] })
    const rotated = g.node("Concat", [g.node("Neg", [x2]), x1], [int("axis", -1)])
    return g.node("Add", [g.node("Mul", [x, c]), g.node("Mul", [rotated, s])])
  }

  // Which keys each query may see: real (mask 1) and not later in the sequence. Computed once: [B,1,1,S,T].
  const zero = g.constant(int64Tensor("zero", [0], true))
  const one = g.constant(int64Tensor("one", [1], true))
  const maskShape = g.node("Shape", ["attention_mask"])
  const total = g.node("Gather", [maskShape, one], [int("axis", 0)]) // T
  const seqLen = g.node("Gather", [g.node("Shape", ["input_ids"]), one], [int("axis", 0)]) // S
  const keyIndex = g.node("Range", [zero, total, one]) // [T]
  const queryIndex = g.node("Unsqueeze", [g.node("Range", [g.node("Sub", [total, seqLen]), total, one]), "axis_1"]) // [S,1]
  const causal = g.node("LessOrEqual", [keyIndex, queryIndex]) // [S,T]
  const real = g.node("Unsqueeze", [g.node("Cast", ["attention_mask"], [int("to", BOOL)]), shape64("axes_12", [1, 2])])
  const visible = g.node("And", [causal, real]) // [B,1,S,T]
  // [past, seq]: where a row of attention probabilities divides into cached and new positions.
  const axis0 = shape64("axis_0", [0])
  const splitSizes = g.node("Concat", [g.node("Sub", [total, seqLen]), seqLen].map((x) => g.node("Unsqueeze", [x, axis0])), [int("axis", 0)])
  // Repeated for each query head of a group: attention rows are (head in group, position), [B,1,group*S,T].
  const attentionBias = g.node("Tile", [
    g.node("Where", [visible, scalar("zero_f", 0), scalar("masked_f", -1e9)]),
    shape64("bias_repeats", [1, 1, group, 1])
  ])

  let x = g.node("Gather", [weight("model.embed_tokens.weight"), "input_ids"])
  const qShape = shape64("q_shape", [0, 0, kvHeads, group, d])
  const kvShape = shape64("kv_shape", [0, 0, kvHeads, d])
  const outShape = shape64("attn_out_shape", [0, 0, numHeads * d])
  // A group's query heads and positions as one axis of rows: one product per key/value head, not per query.
  const rowsShape = shape64("attn_rows_shape", [0, 0, -1, d])
  const groupsShape = shape64("attn_groups_shape", [0, 0, group, -1, d])
  for (let i = 0; i < numLayers; i++) {
    const p = `model.layers.${i}`
    const hidden = rmsNorm(x, weight(`${p}.input_layernorm.weight`))
    // Queries as [B, kv_heads, group, S, D] so each group of query heads shares one key/value head by broadcasting.
    // One MatMul for q, k and v (and one for gate and up below): fewer, wider products run faster.
    const projected = g.node("MatMul", [hidden, fusedWeight(`${p}.qkv`, [`${p}.self_attn.q_proj.weight`, `${p}.self_attn.k_proj.weight`, `${p}.self_attn.v_proj.weight`])])
    const [qFlat, kFlat, vFlat] = split(
      config.qkvBias
        ? g.node("Add", [projected, fusedBias(`${p}.qkv.bias`, [`${p}.self_attn.q_proj.bias`, `${p}.self_attn.k_proj.bias`, `${p}.self_attn.v_proj.bias`])])
        : projected,
      qkvSizes
    ) as [string, string, string]
    // Qwen3 normalises each head's query and key over head_dim before the rotation.
    const qHeads = g.node("Reshape", [qFlat, qShape])
    const kHeads = g.node("Reshape", [kFlat, kvShape])
    const q = g.node("Transpose", [config.qkNorm ? rmsNorm(qHeads, weight(`${p}.self_attn.q_norm.weight`)) : qHeads], [ints("perm", [0, 2, 3, 1, 4])])
    const k = g.node("Transpose", [config.qkNorm ? rmsNorm(kHeads, weight(`${p}.self_attn.k_norm.weight`)) : kHeads], [ints("perm", [0, 2, 1, 3])])
    const v = g.node("Transpose", [g.node("Reshape", [vFlat, kvShape])], [ints("perm", [0, 2, 1, 3])])
    const qRotated = g.node("Mul", [rotate(q, cosQ, sinQ), scale])
    // The new positions' keys and values are also outputs of their own (new_key_values.N.*): the inference
    // actor keeps its caches itself and fetches only these, instead of the whole present cache every step.
    const newKey = g.node("Identity", [rotate(k, cosK, sinK)], [], `new_key_values.${i}.key`)
    const newValue = g.node("Identity", [v], [], `new_key_values.${i}.value`)
    g.node("Concat", [`past_key_values.${i}.key`, newKey], [int("axis", 2)], `present.${i}.key`)
    g.node("Concat", [`past_key_values.${i}.value`, newValue], [int("axis", 2)], `present.${i}.value`)
    // Attention reads the cached and the new keys and values where they are, rather than from their
    // concatenation: a caller that fetches only logits and new_key_values never pays for copying the cache.
    // Scores are concatenated instead (T numbers per query, not T x head_dim).
    const transposed = (x: string) => g.node("Transpose", [x], [ints("perm", [0, 1, 3, 2])])
    const queries = g.node("Reshape", [qRotated, rowsShape]) // [B,kv,group*S,D]
    const pastScores = g.node("MatMul", [queries, transposed(`past_key_values.${i}.key`)])
    const newScores = g.node("MatMul", [queries, transposed(newKey)])
    const scores = g.node("Add", [g.node("Concat", [pastScores, newScores], [int("axis", -1)]), attentionBias])
    const probs = g.node("Softmax", [scores], [int("axis", -1)])
    const [pastProbs, newProbs] = [g.fresh("past_probs"), g.fresh("new_probs")]
    g.nodes.push({ opType: "Split", input: [probs, splitSizes], output: [pastProbs, newProbs], name: g.fresh("Split"), attribute: [int("axis", -1)] })
    const rows = g.node("Add", [
      g.node("MatMul", [pastProbs, `past_key_values.${i}.value`]),
      g.node("MatMul", [newProbs, newValue])
    ]) // [B,kv,group*S,D]
    const context = g.node("Reshape", [rows, groupsShape]) // [B,kv,group,S,D]
    const merged = g.node("Reshape", [g.node("Transpose", [context], [ints("perm", [0, 3, 1, 2, 4])]), outShape])
    const attended = g.node("MatMul", [merged, linearWeight(`${p}.self_attn.o_proj.weight`)])
    x = g.node("Add", [x, config.outputBias ? g.node("Add", [attended, weight(`${p}.self_attn.o_proj.bias`)]) : attended])
    const post = rmsNorm(x, weight(`${p}.post_attention_layernorm.weight`))
    const [gate, up] = split(
      g.node("MatMul", [post, fusedWeight(`${p}.gate_up`, [`${p}.mlp.gate_proj.weight`, `${p}.mlp.up_proj.weight`])]),
      gateUpSizes
    ) as [string, string]
    const activated = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up])
    x = g.node("Add", [x, g.node("MatMul", [activated, linearWeight(`${p}.mlp.down_proj.weight`)])])
  }
  const final = rmsNorm(x, weight("model.norm.weight"))
  const head = config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
  const [vocab, hiddenSize] = shapes.get(head) as [number, number]
  const headT = g.constant(floatTensor(`${head}.T`, [hiddenSize, vocab], transpose2d(weights.get(head)!.data, vocab, hiddenSize)))
  g.node("MatMul", [final, headT], [], "logits")
  void h

  const inputs = [
    valueInfo("input_ids", INT64, ["batch_size", "sequence_length"]),
    valueInfo("attention_mask", INT64, ["batch_size", "total_sequence_length"]),
    valueInfo("position_ids", INT64, ["batch_size", "sequence_length"])
  ]
  const outputs = [valueInfo("logits", FLOAT, ["batch_size", "sequence_length", config.vocabSize])]
  for (let i = 0; i < numLayers; i++) {
    for (const kind of ["key", "value"]) {
      inputs.push(valueInfo(`past_key_values.${i}.${kind}`, FLOAT, ["batch_size", kvHeads, "past_sequence_length", d]))
      outputs.push(valueInfo(`present.${i}.${kind}`, FLOAT, ["batch_size", kvHeads, "total_sequence_length", d]))
      outputs.push(valueInfo(`new_key_values.${i}.${kind}`, FLOAT, ["batch_size", kvHeads, "sequence_length", d]))
    }
  }
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: "episodic",
    opsetImport: [{ domain: "", version: 17 }],
    graph: { name: config.family, node: g.nodes, initializer: g.initializers, input: inputs, output: outputs }
  })
  return onnx.ModelProto.encode(model).finish()
}
