/**
 * Fixtures for published ONNX exports, written with onnx-proto from a model's weights or from episodic's own
 * graph of them, each faithful to one family of published graphs in its op types, input and output names,
 * dtypes and attributes:
 *
 * - `genaiGraph`: onnxruntime-genai's builder: SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization,
 *   one com.microsoft GroupQueryAttention per layer fed `seqlens_k` (attention_mask summed per row, minus one,
 *   int32) and `total_sequence_length` (attention_mask's width, int32) computed in the graph, and either the
 *   rotary fused into it (`do_rotary`, with `cos_cache` / `sin_cache` initializers; no position_ids input) or
 *   separate com.microsoft RotaryEmbedding nodes on q and k (fed position_ids). I/O: input_ids,
 *   attention_mask, [position_ids], past_key_values.N.key/value -> logits, present.N.key/value.
 * - `mergedDecoder`: optimum's decoder_model_merged.onnx: one `If` on `use_cache_branch` whose then-branch
 *   runs the decoder with the past and whose else-branch runs it without (the past inputs unread).
 * - `q8Graph`: transformers.js's model_quantized.onnx (its scripts/quantize.py: onnxruntime's dynamic
 *   IntegerOps quantization, QInt8 symmetric per-tensor weights, QUInt8 activations): every MatMul by a
 *   weight becomes DynamicQuantizeLinear + MatMulInteger + Cast + Mul(scales) + Mul, and the embedding
 *   Gather reads int8 weights through DequantizeLinear.
 * - `nBitsGraph`: transformers.js's / onnxruntime-genai's q4 and q2 files: every MatMul by a weight becomes a
 *   com.microsoft MatMulNBits (symmetric, zero point 2^(bits-1), blocks of 32, one float scale per column and
 *   block, the first element in a byte's low bits).
 * - `bnb4Graph`: transformers.js's bnb4 file: MatMulBnb4 (NF4 codes of the transposed weight, blocks of 64).
 * - `withoutPositionIds`: a graph with no position_ids input that derives positions from attention_mask as
 *   transformers does (cumsum - 1, the last sequence-length columns), or from the layout (column indexes).
 */
import onnxProto from "onnx-proto"
import { inverseFrequencies, weightShapes, type ModelConfig } from "../src/model/family.ts"
import type { Weights } from "../src/model/safetensors.ts"

const { onnx } = onnxProto
type NodeProto = onnxProto.onnx.INodeProto
type TensorProto = onnxProto.onnx.ITensorProto
type AttributeProto = onnxProto.onnx.IAttributeProto
type GraphProto = onnxProto.onnx.IGraphProto

const FLOAT = onnx.TensorProto.DataType.FLOAT
const INT64 = onnx.TensorProto.DataType.INT64
const INT32 = onnx.TensorProto.DataType.INT32
const INT8 = onnx.TensorProto.DataType.INT8
const BOOL = onnx.TensorProto.DataType.BOOL
const A = onnx.AttributeProto.AttributeType

const int = (name: string, i: number): AttributeProto => ({ name, i, type: A.INT })
const ints = (name: string, values: ReadonlyArray<number>): AttributeProto => ({ name, ints: [...values], type: A.INTS })
const float = (name: string, f: number): AttributeProto => ({ name, f, type: A.FLOAT })

const bytesOf = (data: Float32Array | Int8Array | BigInt64Array | Int32Array): Uint8Array =>
  new Uint8Array(data.buffer.slice(data.byteOffset, data.byteOffset + data.byteLength))

const valueInfo = (name: string, elemType: number, dims: ReadonlyArray<number | string>) => ({
  name,
  type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) } } }
})

/** [out, in] (Hugging Face's layout) as [in, out] (MatMul's). */
const transposed = (data: Float32Array, out: number, inp: number): Float32Array => {
  const t = new Float32Array(data.length)
  for (let o = 0; o < out; o++) for (let i = 0; i < inp; i++) t[i * out + o] = data[o * inp + i]!
  return t
}

class Builder {
  readonly nodes: Array<NodeProto> = []
  readonly initializers: Array<TensorProto> = []
  #counter = 0
  node(opType: string, input: ReadonlyArray<string>, attribute: ReadonlyArray<AttributeProto> = [], output?: ReadonlyArray<string> | string, domain = ""): string {
    const outputs = output === undefined ? [`${opType}_${this.#counter++}`] : typeof output === "string" ? [output] : [...output]
    this.nodes.push({ opType, input: [...input], output: outputs, name: `${opType}_n${this.#counter++}`, attribute: [...attribute], domain })
    return outputs[0]!
  }
  floats(name: string, dims: ReadonlyArray<number>, data: Float32Array): string {
    this.initializers.push({ name, dims: [...dims], dataType: FLOAT, rawData: bytesOf(data) })
    return name
  }
  int64s(name: string, values: ReadonlyArray<number>, scalar = false): string {
    this.initializers.push({ name, dims: scalar ? [] : [values.length], dataType: INT64, rawData: bytesOf(BigInt64Array.from(values, BigInt)) })
    return name
  }
}

export interface GenaiOptions {
  /** "fused": GroupQueryAttention's do_rotary; "separate": com.microsoft RotaryEmbedding nodes before it. */
  readonly rotary: "fused" | "separate"
}

/** An onnxruntime-genai style graph of a Llama-family decoder (no q/k norms, no biases) with `weights`. */
export const genaiGraph = (config: ModelConfig, weights: Weights, options: GenaiOptions): Uint8Array => {
  const shapes = weightShapes(config)
  const { numHeads, numKeyValueHeads: kvHeads, headDim: d, numLayers, maxPositions } = config
  if (config.qkNorm || config.qkvBias || config.outputBias) throw new Error("genaiGraph: a plain Llama-family config only")
  const g = new Builder()
  const weight = (name: string) => g.floats(name, shapes.get(name)!, weights.get(name)!.data)
  const linear = (name: string) => {
    const [out, inp] = shapes.get(name) as [number, number]
    return g.floats(`${name}.MatMul.weight`, [inp, out], transposed(weights.get(name)!.data, out, inp))
  }
  // The builder's cos / sin caches: [max positions, head_dim / 2], float32 position x inverse frequency.
  const inv = inverseFrequencies(config)
  const cos = new Float32Array(maxPositions * (d / 2))
  const sin = new Float32Array(maxPositions * (d / 2))
  for (let p = 0; p < maxPositions; p++) {
    for (let i = 0; i < d / 2; i++) {
      const angle = Math.fround(p * inv[i]!)
      cos[p * (d / 2) + i] = Math.cos(angle)
      sin[p * (d / 2) + i] = Math.sin(angle)
    }
  }
  g.floats("cos_cache", [maxPositions, d / 2], cos)
  g.floats("sin_cache", [maxPositions, d / 2], sin)
  // attention_mask -> seqlens_k (per row: real tokens - 1) and total_sequence_length (the mask's width), as int32.
  const summed = g.node("ReduceSum", ["attention_mask", g.int64s("one_axis", [1])], [int("keepdims", 0)], "/model/attn_mask_reformat/attn_mask_subgraph/ReduceSum/output_0")
  const minusOne = g.node("Sub", [summed, g.int64s("one", [1], true)])
  g.node("Cast", [minusOne], [int("to", INT32)], "seqlens_k")
  const width = g.node("Gather", [g.node("Shape", ["attention_mask"]), g.int64s("index_one", [1], true)], [int("axis", 0)])
  g.node("Cast", [width], [int("to", INT32)], "total_seq_len")

  const eps = config.rmsNormEps
  const embeds = g.node("Gather", [weight("model.embed_tokens.weight"), "input_ids"])
  let residual = embeds
  let hidden = g.node("SimplifiedLayerNormalization", [embeds, weight("model.layers.0.input_layernorm.weight")], [int("axis", -1), float("epsilon", eps), int("stash_type", 1)])
  for (let i = 0; i < numLayers; i++) {
    const p = `model.layers.${i}`
    let q = g.node("MatMul", [hidden, linear(`${p}.self_attn.q_proj.weight`)])
    let k = g.node("MatMul", [hidden, linear(`${p}.self_attn.k_proj.weight`)])
    const v = g.node("MatMul", [hidden, linear(`${p}.self_attn.v_proj.weight`)])
    if (options.rotary === "separate") {
      const rotary = (x: string, heads: number) =>
        g.node("RotaryEmbedding", [x, "position_ids", "cos_cache", "sin_cache"], [int("interleaved", 0), int("num_heads", heads), int("rotary_embedding_dim", 0)], undefined, "com.microsoft")
      q = rotary(q, numHeads)
      k = rotary(k, kvHeads)
    }
    const fused = options.rotary === "fused"
    const attention = g.node(
      "GroupQueryAttention",
      [q, k, v, `past_key_values.${i}.key`, `past_key_values.${i}.value`, "seqlens_k", "total_seq_len", ...(fused ? ["cos_cache", "sin_cache"] : [])],
      [int("num_heads", numHeads), int("kv_num_heads", kvHeads), int("do_rotary", fused ? 1 : 0), int("rotary_interleaved", 0), int("local_window_size", -1), float("scale", 1 / Math.sqrt(d))],
      [`/model/layers.${i}/attn/GroupQueryAttention/output_0`, `present.${i}.key`, `present.${i}.value`],
      "com.microsoft"
    )
    const attended = g.node("MatMul", [attention, linear(`${p}.self_attn.o_proj.weight`)])
    const post = `/model/layers.${i}/post_attention_layernorm/output_0`
    const sum = `/model/layers.${i}/post_attention_layernorm/output_3`
    g.node("SkipSimplifiedLayerNormalization", [attended, residual, weight(`${p}.post_attention_layernorm.weight`)], [float("epsilon", eps)], [post, "", "", sum], "com.microsoft")
    residual = sum
    const gate = g.node("MatMul", [post, linear(`${p}.mlp.gate_proj.weight`)])
    const up = g.node("MatMul", [post, linear(`${p}.mlp.up_proj.weight`)])
    const activated = g.node("Mul", [g.node("Mul", [gate, g.node("Sigmoid", [gate])]), up])
    const down = g.node("MatMul", [activated, linear(`${p}.mlp.down_proj.weight`)])
    const nextNorm = i + 1 < numLayers ? `model.layers.${i + 1}.input_layernorm.weight` : "model.norm.weight"
    const normed = `/model/layers.${i + 1}/input_layernorm/output_0`
    const nextSum = `/model/layers.${i + 1}/input_layernorm/output_3`
    g.node("SkipSimplifiedLayerNormalization", [down, residual, weight(nextNorm)], [float("epsilon", eps)], [normed, "", "", nextSum], "com.microsoft")
    residual = nextSum
    hidden = normed
  }
  const head = config.tieWordEmbeddings ? "model.embed_tokens.weight" : "lm_head.weight"
  const [vocab, width_] = shapes.get(head) as [number, number]
  g.node("MatMul", [hidden, g.floats(`${head}.MatMul.weight`, [width_, vocab], transposed(weights.get(head)!.data, vocab, width_))], [], "logits")

  const inputs = [valueInfo("input_ids", INT64, ["batch_size", "sequence_length"]), valueInfo("attention_mask", INT64, ["batch_size", "total_sequence_length"])]
  if (options.rotary === "separate") inputs.push(valueInfo("position_ids", INT64, ["batch_size", "sequence_length"]))
  const outputs = [valueInfo("logits", FLOAT, ["batch_size", "sequence_length", vocab])]
  for (let i = 0; i < numLayers; i++) {
    for (const kind of ["key", "value"]) {
      inputs.push(valueInfo(`past_key_values.${i}.${kind}`, FLOAT, ["batch_size", kvHeads, "past_sequence_length", d]))
      outputs.push(valueInfo(`present.${i}.${kind}`, FLOAT, ["batch_size", kvHeads, "total_sequence_length", d]))
    }
  }
  return onnx.ModelProto.encode(onnx.ModelProto.create({
    irVersion: 8,
    producerName: "onnxruntime-genai",
    opsetImport: [{ domain: "", version: 17 }, { domain: "com.microsoft", version: 1 }],
    graph: { name: "main_graph", node: g.nodes, initializer: g.initializers, input: inputs, output: outputs }
  })).finish()
}

/** episodic's graph as a published one: its new_key_values outputs (and what only they need) gone. */
const publishedOutputs = (graph: GraphProto): void => {
  graph.output = graph.output!.filter((o) => !o.name!.startsWith("new_key_values."))
}

/**
 * optimum's merged decoder: the graph's body twice, inside an `If` on a bool `use_cache_branch` input. The
 * then-branch is the decoder with its past; the else-branch the decoder without one (it reads an empty
 * slice of each past input, so a past fed with use_cache_branch false is ignored, as in optimum's).
 */
export const mergedDecoder = (bytes: Uint8Array): Uint8Array => {
  const model = onnx.ModelProto.decode(bytes)
  const graph = model.graph!
  publishedOutputs(graph)
  model.producerName = "optimum"
  const outer = new Set([...graph.input!.map((i) => i.name!), ...graph.initializer!.map((t) => t.name!)])
  const branch = (prefix: string, withPast: boolean): GraphProto => {
    const rename = (name: string) => (name === "" || outer.has(name) ? name : `${prefix}${name}`)
    const nodes: Array<NodeProto> = []
    const pastInputs = graph.input!.filter((i) => i.name!.startsWith("past_key_values.")).map((i) => i.name!)
    const replaced = new Map<string, string>()
    if (!withPast) {
      // [B, kv, 0, D]: the past sliced to nothing.
      for (const past of pastInputs) {
        const empty = `${prefix}${past}_empty`
        nodes.push({ opType: "Slice", input: [past, "merged_zero", "merged_zero", "merged_axis2"], output: [empty], name: `${prefix}slice_${past}`, domain: "" })
        replaced.set(past, empty)
      }
    }
    for (const node of graph.node!) {
      nodes.push({
        ...node,
        name: `${prefix}${node.name}`,
        input: node.input!.map((name) => replaced.get(name) ?? rename(name)),
        output: node.output!.map((name) => (graph.output!.some((o) => o.name === name) ? `${prefix}${name}` : rename(name)))
      })
    }
    // Nodes only the dropped outputs needed still run; harmless.
    return {
      name: prefix,
      node: nodes,
      input: [],
      output: graph.output!.map((o) => ({ ...o, name: `${prefix}${o.name}` }))
    }
  }
  graph.initializer!.push(
    { name: "merged_zero", dims: [1], dataType: INT64, rawData: bytesOf(BigInt64Array.of(0n)) },
    { name: "merged_axis2", dims: [1], dataType: INT64, rawData: bytesOf(BigInt64Array.of(2n)) }
  )
  graph.input!.push(valueInfo("use_cache_branch", BOOL, [1]))
  graph.node = [{
    opType: "If", name: "optimum::if", input: ["use_cache_branch"], output: graph.output!.map((o) => o.name!), domain: "",
    attribute: [
      { name: "then_branch", type: A.GRAPH, g: branch("with_past/", true) },
      { name: "else_branch", type: A.GRAPH, g: branch("no_past/", false) }
    ]
  }]
  return onnx.ModelProto.encode(model).finish()
}

/**
 * transformers.js's q8 file (onnxruntime IntegerOps dynamic quantization, QInt8 per-tensor symmetric weights):
 * MatMul(x, W) -> DynamicQuantizeLinear(x) -> MatMulInteger(x_q, W_q, x_zp, W_zp) -> Cast -> Mul(x_scale * W_scale);
 * the embedding Gather reads W_q and dequantizes. Returns the bytes and how many nodes were quantized.
 */
export const q8Graph = (bytes: Uint8Array): { bytes: Uint8Array; matMuls: number; gathers: number } => {
  const model = onnx.ModelProto.decode(bytes)
  const graph = model.graph!
  publishedOutputs(graph)
  model.producerName = "onnx.quantize"
  const initializers = new Map(graph.initializer!.map((t) => [t.name!, t]))
  const quantized = new Map<string, { q: string; scale: string; zero: string }>()
  const quantize = (name: string) => {
    const existing = quantized.get(name)
    if (existing !== undefined) return existing
    const tensor = initializers.get(name)!
    const w = new Float32Array(Uint8Array.from(tensor.rawData!).buffer)
    let max = 0
    for (const x of w) max = Math.max(max, Math.abs(x))
    const scale = max / 127 || 1
    const q = Int8Array.from(w, (x) => Math.max(-127, Math.min(127, Math.round(x / scale))))
    const names = { q: `${name}_quantized`, scale: `${name}_scale`, zero: `${name}_zero_point` }
    graph.initializer!.push(
      { name: names.q, dims: tensor.dims, dataType: INT8, rawData: bytesOf(q) },
      { name: names.scale, dims: [], dataType: FLOAT, rawData: bytesOf(Float32Array.of(scale)) },
      { name: names.zero, dims: [], dataType: INT8, rawData: new Uint8Array(1) }
    )
    quantized.set(name, names)
    return names
  }
  let matMuls = 0
  let gathers = 0
  graph.node = graph.node!.flatMap((node): Array<NodeProto> => {
    const out = node.output![0]!
    if (node.opType === "MatMul" && initializers.has(node.input![1]!) && initializers.get(node.input![1]!)!.dims!.length === 2) {
      const w = quantize(node.input![1]!)
      const x = node.input![0]!
      matMuls++
      const base = `${node.name}_quant`
      return [
        { opType: "DynamicQuantizeLinear", name: `${x}_QuantizeLinear_${base}`, input: [x], output: [`${base}/x_q`, `${base}/x_scale`, `${base}/x_zp`], domain: "" },
        { opType: "MatMulInteger", name: base, input: [`${base}/x_q`, w.q, `${base}/x_zp`, w.zero], output: [`${base}/int32`], domain: "" },
        { opType: "Cast", name: `${base}_cast`, input: [`${base}/int32`], output: [`${base}/float`], attribute: [int("to", FLOAT)], domain: "" },
        { opType: "Mul", name: `${base}_scales_mul`, input: [`${base}/x_scale`, w.scale], output: [`${base}/scale`], domain: "" },
        { opType: "Mul", name: `${base}_output_scale_mul`, input: [`${base}/float`, `${base}/scale`], output: [out], domain: "" }
      ]
    }
    if (node.opType === "Gather" && initializers.has(node.input![0]!)) {
      const w = quantize(node.input![0]!)
      gathers++
      return [
        { opType: "Gather", name: `${node.name}_quant`, input: [w.q, node.input![1]!], output: [`${out}_quantized`], attribute: node.attribute, domain: "" },
        { opType: "DequantizeLinear", name: `${node.name}_dequant`, input: [`${out}_quantized`, w.scale, w.zero], output: [out], domain: "" }
      ]
    }
    return [node]
  })
  const used = new Set(graph.node.flatMap((n) => n.input!))
  graph.initializer = graph.initializer!.filter((t) => used.has(t.name!))
  return { bytes: onnx.ModelProto.encode(model).finish(), matMuls, gathers }
}

/**
 * The graph with no position_ids input. "mask": positions come from attention_mask as transformers derives
 * them (cumsum over the row - 1, padding set to 1, the last sequence_length columns). "layout": they count
 * columns, range(past length, past length + sequence length), as graphs traced without position_ids do.
 */
export const withoutPositionIds = (bytes: Uint8Array, from: "mask" | "layout" = "mask"): Uint8Array => {
  const model = onnx.ModelProto.decode(bytes)
  const graph = model.graph!
  publishedOutputs(graph)
  model.producerName = "optimum"
  graph.input = graph.input!.filter((i) => i.name !== "position_ids")
  const g = new Builder()
  if (from === "mask") {
    const cumsum = g.node("CumSum", ["attention_mask", g.int64s("pos_axis", [1], true)])
    const minusOne = g.node("Sub", [cumsum, g.int64s("pos_one", [1], true)])
    const padded = g.node("Equal", ["attention_mask", g.int64s("pos_zero", [0], true)])
    const all = g.node("Where", [padded, "pos_one", minusOne])
    const seq = g.node("Shape", ["input_ids"], [int("start", 1), int("end", 2)])
    const negative = g.node("Neg", [seq])
    g.node("Slice", [all, negative, g.int64s("pos_end", [Number.MAX_SAFE_INTEGER]), g.int64s("pos_axes", [1])], [], "position_ids")
  } else {
    const past = g.node("Gather", [g.node("Shape", ["past_key_values.0.key"]), g.int64s("pos_two", [2], true)], [int("axis", 0)])
    const seq = g.node("Gather", [g.node("Shape", ["input_ids"]), g.int64s("pos_index_one", [1], true)], [int("axis", 0)])
    const range = g.node("Range", [past, g.node("Add", [past, seq]), g.int64s("pos_step", [1], true)])
    g.node("Expand", [g.node("Unsqueeze", [range, g.int64s("pos_axis0", [0])]), g.node("Shape", ["input_ids"])], [], "position_ids")
  }
  graph.node = [...g.nodes, ...graph.node!]
  graph.initializer = [...graph.initializer!, ...g.initializers]
  return onnx.ModelProto.encode(model).finish()
}

/** Every MatMul by a 2-D weight as a com.microsoft MatMulNBits of `bits` bits (see the file's header). */
export const nBitsGraph = (bytes: Uint8Array, bits: 2 | 4 | 8): { bytes: Uint8Array; quantized: number } => {
  const model = onnx.ModelProto.decode(bytes)
  const graph = model.graph!
  publishedOutputs(graph)
  model.producerName = "onnxruntime-genai"
  model.opsetImport!.push({ domain: "com.microsoft", version: 1 })
  const initializers = new Map(graph.initializer!.map((t) => [t.name!, t]))
  const blockSize = 32
  const zero = 1 << (bits - 1)
  let quantized = 0
  graph.node = graph.node!.map((node) => {
    const weight = node.opType === "MatMul" ? initializers.get(node.input![1]!) : undefined
    if (weight === undefined || weight.dims!.length !== 2) return node
    const [k, n] = weight.dims!.map(Number) as [number, number]
    if (k % blockSize !== 0) return node
    const w = new Float32Array(Uint8Array.from(weight.rawData!).buffer)
    const blocks = k / blockSize
    const perBlock = (blockSize * bits) / 8
    const packed = new Uint8Array(n * blocks * perBlock)
    const scales = new Float32Array(n * blocks)
    for (let column = 0; column < n; column++) {
      for (let block = 0; block < blocks; block++) {
        let max = 0
        for (let j = 0; j < blockSize; j++) max = Math.max(max, Math.abs(w[(block * blockSize + j) * n + column]!))
        const scale = max / zero || 1
        scales[column * blocks + block] = scale
        for (let j = 0; j < blockSize; j++) {
          const q = Math.min(2 * zero - 1, Math.max(0, Math.round(w[(block * blockSize + j) * n + column]! / scale) + zero))
          const bit = j * bits
          const at = (column * blocks + block) * perBlock + (bit >> 3)
          packed[at] = packed[at]! | (q << (bit & 7))
        }
      }
    }
    const name = weight.name!
    graph.initializer!.push(
      { name: `${name}.q${bits}`, dims: [n, blocks, perBlock], dataType: onnx.TensorProto.DataType.UINT8, rawData: packed },
      { name: `${name}.scales`, dims: [n * blocks], dataType: FLOAT, rawData: bytesOf(scales) }
    )
    quantized++
    return {
      opType: "MatMulNBits", domain: "com.microsoft", name: `${node.name}_Q${bits}`, input: [node.input![0]!, `${name}.q${bits}`, `${name}.scales`], output: node.output,
      attribute: [int("K", k), int("N", n), int("bits", bits), int("block_size", blockSize)]
    }
  })
  const used = new Set(graph.node.flatMap((node) => node.input!))
  graph.initializer = graph.initializer!.filter((t) => used.has(t.name!))
  return { bytes: onnx.ModelProto.encode(model).finish(), quantized }
}

/**
 * transformers.js's bnb4 file (onnxruntime's MatMulBnb4Quantizer): every MatMul by a 2-D weight becomes a
 * com.microsoft MatMulBnb4 of NF4 codes, blocks of 64 along the transposed weight with one absmax each, two
 * codes a byte.
 */
export const bnb4Graph = (bytes: Uint8Array): { bytes: Uint8Array; quantized: number } => {
  const nf4 = [-1, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1]
  const model = onnx.ModelProto.decode(bytes)
  const graph = model.graph!
  publishedOutputs(graph)
  model.opsetImport!.push({ domain: "com.microsoft", version: 1 })
  const initializers = new Map(graph.initializer!.map((t) => [t.name!, t]))
  const blockSize = 64
  let quantized = 0
  graph.node = graph.node!.map((node) => {
    const weight = node.opType === "MatMul" ? initializers.get(node.input![1]!) : undefined
    if (weight === undefined || weight.dims!.length !== 2) return node
    const [k, n] = weight.dims!.map(Number) as [number, number]
    const w = new Float32Array(Uint8Array.from(weight.rawData!).buffer)
    // [N, K] row-major, as the quantizer transposes the [K, N] initializer.
    const t = new Float32Array(n * k)
    for (let i = 0; i < k; i++) for (let j = 0; j < n; j++) t[j * k + i] = w[i * n + j]!
    const blocks = Math.ceil((n * k) / blockSize)
    const absmax = new Float32Array(blocks)
    const packed = new Uint8Array(Math.ceil((n * k) / 2))
    for (let b = 0; b < blocks; b++) {
      let max = 0
      for (let i = b * blockSize; i < Math.min(n * k, (b + 1) * blockSize); i++) max = Math.max(max, Math.abs(t[i]!))
      absmax[b] = max
      for (let i = b * blockSize; i < Math.min(n * k, (b + 1) * blockSize); i++) {
        const x = max === 0 ? 0 : t[i]! / max
        let best = 0
        for (let c = 1; c < 16; c++) if (Math.abs(nf4[c]! - x) < Math.abs(nf4[best]! - x)) best = c
        // The first of two codes in a byte's high bits.
        packed[i >> 1] = packed[i >> 1]! | (i % 2 === 0 ? best << 4 : best)
      }
    }
    const name = weight.name!
    graph.initializer!.push(
      { name: `${name}.bnb4`, dims: [packed.length], dataType: onnx.TensorProto.DataType.UINT8, rawData: packed },
      { name: `${name}.absmax`, dims: [blocks], dataType: FLOAT, rawData: bytesOf(absmax) }
    )
    quantized++
    return {
      opType: "MatMulBnb4", domain: "com.microsoft", name: `${node.name}_Bnb4`, input: [node.input![0]!, `${name}.bnb4`, `${name}.absmax`], output: node.output,
      attribute: [int("K", k), int("N", n), int("block_size", blockSize), int("quant_type", 1)]
    }
  })
  const used = new Set(graph.node.flatMap((node) => node.input!))
  graph.initializer = graph.initializer!.filter((t) => used.has(t.name!))
  return { bytes: onnx.ModelProto.encode(model).finish(), quantized }
}

/**
 * The same graph with its weights in an external data file, as exports over 2 GB ship (`model.onnx` +
 * `model.onnx_data`): every initializer of at least `minBytes` moves to `location`, each at a 4096-aligned
 * offset as onnx's `convert_model_to_external_data` writes them, the graph keeping only where they are.
 */
export const withExternalData = (bytes: Uint8Array, location: string, minBytes = 1024): { graph: Uint8Array; data: Uint8Array; moved: number } => {
  const model = onnx.ModelProto.decode(bytes)
  const chunks: Array<Uint8Array> = []
  let offset = 0
  let moved = 0
  const visit = (graph: GraphProto) => {
    for (const tensor of graph.initializer ?? []) {
      const raw = tensor.rawData
      if (raw === undefined || raw === null || raw.length < minBytes) continue
      const padding = (4096 - (offset % 4096)) % 4096
      if (padding > 0) chunks.push(new Uint8Array(padding))
      offset += padding
      chunks.push(Uint8Array.from(raw))
      tensor.externalData = [
        { key: "location", value: location },
        { key: "offset", value: String(offset) },
        { key: "length", value: String(raw.length) }
      ]
      tensor.dataLocation = onnx.TensorProto.DataLocation.EXTERNAL
      tensor.rawData = new Uint8Array(0)
      offset += raw.length
      moved += 1
    }
    for (const node of graph.node ?? []) for (const attribute of node.attribute ?? []) if (attribute.g) visit(attribute.g)
  }
  visit(model.graph!)
  const data = new Uint8Array(offset)
  let at = 0
  for (const chunk of chunks) {
    data.set(chunk, at)
    at += chunk.length
  }
  return { graph: onnx.ModelProto.encode(model).finish(), data, moved }
}
