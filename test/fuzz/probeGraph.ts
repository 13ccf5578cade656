/**
 * A probe model for the inference actor's KV bookkeeping: an ONNX graph with the same I/O as a real decoder
 * (input_ids, attention_mask, position_ids, past_key_values.N.key/value -> logits, new_key_values.N.*) whose
 * keys and values encode what they are, and whose logits say exactly what each query saw.
 *
 * The key (value) of the token `t` at position `p`, for layer `l` and head `h`, is a one-hot vector at `p`
 * scaled by code(t, l, h, kind) = 1 + t + vocab * (kind + 2 * (h + heads * l)) + variant * 8 * vocab. A query
 * does not attend: it sums the keys and values of every position the mask and causality let it see. So its
 * logits, laid out as [layer][key|value][head][position], hold at slot p the code of the token at position
 * p when p is visible once, 0 when it is hidden, and any other number when the actor handed the model a
 * wrong, shifted, duplicated or stale cache column. `variant` plays the part of different weights: keys
 * computed by one variant and read with another show the wrong codes.
 */
import onnxProto from "onnx-proto"

const { onnx } = onnxProto
type NodeProto = onnxProto.onnx.INodeProto
type TensorProto = onnxProto.onnx.ITensorProto

const FLOAT = onnx.TensorProto.DataType.FLOAT
const INT64 = onnx.TensorProto.DataType.INT64
const BOOL = onnx.TensorProto.DataType.BOOL

export interface ProbeShape {
  readonly layers: number
  readonly heads: number
  /** Positions the model takes: also each head's width, since keys are one-hot over positions. */
  readonly positions: number
}

export const probeShape: ProbeShape = { layers: 2, heads: 2, positions: 128 }

export const probeVocab = (shape: ProbeShape): number => shape.layers * 2 * shape.heads * shape.positions

/** The config.json a probe model directory carries (the actor reads its shape from it). */
export const probeConfig = (shape: ProbeShape) => ({
  architectures: ["ProbeForCausalLM"],
  model_type: "probe",
  vocab_size: probeVocab(shape),
  hidden_size: shape.heads * shape.positions,
  num_hidden_layers: shape.layers,
  num_attention_heads: shape.heads,
  num_key_value_heads: shape.heads,
  head_dim: shape.positions,
  max_position_embeddings: shape.positions
})

export const probeCode = (shape: ProbeShape, token: number, layer: number, head: number, kind: 0 | 1, variant: number): number => {
  const vocab = probeVocab(shape)
  return 1 + token + vocab * (kind + 2 * (head + shape.heads * layer)) + variant * 8 * vocab
}

/** The logits a query at `position` of `sequence` must get: every earlier position visible exactly once. */
export const expectedProbeLogits = (shape: ProbeShape, sequence: ReadonlyArray<number>, position: number, variant: number): Float32Array => {
  const logits = new Float32Array(probeVocab(shape))
  for (let l = 0; l < shape.layers; l++) {
    for (const kind of [0, 1] as const) {
      for (let h = 0; h < shape.heads; h++) {
        const base = ((l * 2 + kind) * shape.heads + h) * shape.positions
        for (let p = 0; p <= position; p++) logits[base + p] = probeCode(shape, sequence[p]!, l, h, kind, variant)
      }
    }
  }
  return logits
}

/** The probe graph for one variant, as ONNX bytes. */
export const probeGraph = (shape: ProbeShape, variant: number): Uint8Array => {
  const { layers, heads, positions } = shape
  const vocab = probeVocab(shape)
  const nodes: Array<NodeProto> = []
  const initializers: Array<TensorProto> = []
  let counter = 0
  const node = (opType: string, input: ReadonlyArray<string>, attribute: Array<onnxProto.onnx.IAttributeProto> = [], output?: string) => {
    const out = output ?? `${opType}_${counter++}`
    nodes.push({ opType, input: [...input], output: [out], name: `${opType}_n${counter++}`, attribute })
    return out
  }
  const int64s = (name: string, values: ReadonlyArray<number>, scalar = false) => {
    initializers.push({ name, dims: scalar ? [] : [values.length], dataType: INT64, rawData: new Uint8Array(BigInt64Array.from(values, BigInt).buffer) })
    return name
  }
  const floats = (name: string, dims: ReadonlyArray<number>, values: ReadonlyArray<number>) => {
    initializers.push({ name, dims: [...dims], dataType: FLOAT, rawData: new Uint8Array(Float32Array.from(values).buffer) })
    return name
  }
  const attrInt = (name: string, i: number) => ({ name, i, type: onnx.AttributeProto.AttributeType.INT })
  const attrInts = (name: string, ints: ReadonlyArray<number>) => ({ name, ints: [...ints], type: onnx.AttributeProto.AttributeType.INTS })

  // One-hot of each new token's position id: [B,1,S,P]; its token id as a float: [B,1,S].
  const oneHot = node("OneHot", ["position_ids", int64s("depth", [positions], true), floats("onehot_values", [2], [0, 1])], [attrInt("axis", -1)])
  const oneHot4 = node("Unsqueeze", [oneHot, int64s("axis1", [1])])
  const token = node("Unsqueeze", [node("Cast", ["input_ids"], [attrInt("to", FLOAT)]), "axis1"])
  // Which columns each query sees: real (mask 1) and not after it: [B,1,S,T] as 0/1 floats.
  const zero = int64s("zero", [0], true)
  const one = int64s("one", [1], true)
  const total = node("Gather", [node("Shape", ["attention_mask"]), one], [attrInt("axis", 0)])
  const seqLen = node("Gather", [node("Shape", ["input_ids"]), one], [attrInt("axis", 0)])
  const keyIndex = node("Range", [zero, total, one])
  const queryIndex = node("Unsqueeze", [node("Range", [node("Sub", [total, seqLen]), total, one]), "axis1"])
  const causal = node("LessOrEqual", [keyIndex, queryIndex])
  const real = node("Unsqueeze", [node("Cast", ["attention_mask"], [attrInt("to", BOOL)]), int64s("axes12", [1, 2])])
  const visible = node("Cast", [node("And", [causal, real])], [attrInt("to", FLOAT)])
  const flat = int64s("flat_shape", [0, 0, heads * positions])
  const blocks: Array<string> = []
  for (let l = 0; l < layers; l++) {
    for (const [kind, name] of [[0, "key"], [1, "value"]] as const) {
      const offsets = Array.from({ length: heads }, (_, h) => probeCode(shape, 0, l, h, kind, variant))
      const code = node("Unsqueeze", [node("Add", [token, floats(`offsets_${l}_${kind}`, [1, heads, 1], offsets)]), int64s(`axis3_${l}_${kind}`, [3])])
      const fresh = node("Identity", [node("Mul", [oneHot4, code])], [], `new_key_values.${l}.${name}`)
      const all = node("Concat", [`past_key_values.${l}.${name}`, fresh], [attrInt("axis", 2)])
      const seen = node("MatMul", [visible, all]) // [B,H,S,P]
      blocks.push(node("Reshape", [node("Transpose", [seen], [attrInts("perm", [0, 2, 1, 3])]), flat]))
    }
  }
  node("Concat", blocks, [attrInt("axis", -1)], "logits")

  const valueInfo = (name: string, elemType: number, dims: ReadonlyArray<number | string>) => ({
    name,
    type: { tensorType: { elemType, shape: { dim: dims.map((d) => (typeof d === "number" ? { dimValue: d } : { dimParam: d })) } } }
  })
  const inputs = [
    valueInfo("input_ids", INT64, ["batch", "sequence"]),
    valueInfo("attention_mask", INT64, ["batch", "total"]),
    valueInfo("position_ids", INT64, ["batch", "sequence"])
  ]
  const outputs = [valueInfo("logits", FLOAT, ["batch", "sequence", vocab])]
  for (let l = 0; l < layers; l++) {
    for (const name of ["key", "value"]) {
      inputs.push(valueInfo(`past_key_values.${l}.${name}`, FLOAT, ["batch", heads, "past", positions]))
      outputs.push(valueInfo(`new_key_values.${l}.${name}`, FLOAT, ["batch", heads, "sequence", positions]))
    }
  }
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: "episodic-probe",
    opsetImport: [{ domain: "", version: 17 }],
    graph: { name: "probe", node: nodes, initializer: initializers, input: inputs, output: outputs }
  })
  return onnx.ModelProto.encode(model).finish()
}
