/**
 * One decoder-only ONNX model with the Optimum / transformers.js KV-cache I/O, as an ONNX Runtime session.
 * It reads the architecture from the directory's config.json, finds the cache inputs by name, and runs one
 * batched forward pass. Our own models and onnx-community exports (Llama, Qwen2/Qwen3, GPT-2) share this I/O.
 */
import * as ort from "onnxruntime-node"
import onnxProto from "onnx-proto"
import { existsSync, readFileSync } from "node:fs"
import * as path from "node:path"
import { defaultHeadDim } from "../../src/model/family.ts"
import { graphFor, publishedGraph, type GraphDtype } from "../../src/model/huggingFace.ts"
import { fromFloat16, toFloat16 } from "../../src/model/safetensors.ts"

export type ExecutionProvider = "cpu" | "cuda"

export interface ModelShape {
  readonly numLayers: number
  readonly kvHeads: number
  readonly headDim: number
  readonly vocabSize: number
}

/**
 * Where each row's real positions sit in the tensors the actor builds.
 * - "left": rows end at a common column (left padding); the cached and new parts of a row are padded
 *   separately. Any graph that attends by its attention mask runs this way (episodic's, optimum's).
 * - "right": each row's cache is a left-aligned prefix (columns 0..n-1 of the past) and its new tokens are
 *   the first columns of the new part. com.microsoft GroupQueryAttention needs this: it reads only each
 *   row's real-token count (`seqlens_k`, the attention mask summed) and takes the row's cache to be the
 *   first columns of the past, its present being the past prefix followed by the new tokens. It also refuses
 *   a prefill of more than one row when there is a past, so the scheduler runs such prefills one row at a time.
 */
export type CacheLayout = "left" | "right"

/** Why a graph's rows run one forward pass each (see OnnxCausalLM.rowsAlone); "asked": the load option. */
export type RowsAlone = "quantized activations" | "positions from the layout" | "asked"

export interface ForwardInputs {
  readonly batch: number
  readonly sequenceLength: number
  readonly pastLength: number
  /** [batch, sequenceLength] */
  readonly inputIds: BigInt64Array
  /** [batch, sequenceLength] */
  readonly positionIds: BigInt64Array
  /** [batch, pastLength + sequenceLength] */
  readonly attentionMask: BigInt64Array
  /** Per layer [batch, kvHeads, pastLength, headDim]; empty arrays when pastLength is 0. */
  readonly pastKeys: ReadonlyArray<Float32Array>
  readonly pastValues: ReadonlyArray<Float32Array>
  /** [batch]: per row, the column whose logits the sampling head weighs (the last when absent). */
  readonly sampleColumns?: Int32Array
  /** [batch]: per row, the temperature the sampling head divides those logits by (1 when absent). */
  readonly temperatures?: Float32Array
  /** [batch]: per row, the uniform number in [0, 1) the head draws the row's token with (see samplingHead). */
  readonly uniforms?: Float32Array
  /**
   * Which vocabulary-wide outputs to fetch (both when absent); one not fetched comes back empty. Each is as
   * large as the batch times the vocabulary, fresh memory every step that the garbage collector then has
   * to reclaim, so a step fetches only what its samplers read.
   */
  readonly fetch?: { readonly logits: boolean; readonly probs: boolean }
}

export interface ForwardOutputs {
  /** [batch, sequenceLength, vocab]; empty when not fetched */
  readonly logits: Float32Array
  /**
   * [batch, vocab]: per row, softmax(logits at the row's sample column / the row's temperature), computed
   * in float32 by the graph's sampling head (see samplingHead); empty when not fetched.
   */
  readonly probs: Float32Array
  /** [batch]: per row, the token the head drew with the row's uniform number, and its logprob (graphs of opset 11 on). */
  readonly draws: { readonly tokens: BigInt64Array; readonly logprobs: Float32Array } | undefined
  /**
   * Per layer [batch, kvHeads, sequenceLength, headDim]: the keys and values of the positions just run,
   * position j of a row being the row's input column j.
   */
  readonly newKeys: ReadonlyArray<Float32Array>
  readonly newValues: ReadonlyArray<Float32Array>
}

export class ModelLoadError extends Error {
  override readonly name = "ModelLoadError"
}

const readShape = (directory: string): ModelShape => {
  const file = path.join(directory, "config.json")
  if (!existsSync(file)) throw new ModelLoadError(`${file} does not exist: is ${directory} a model directory?`)
  const raw = JSON.parse(readFileSync(file, "utf8")) as Record<string, number | undefined>
  // GPT-2 names its sizes differently.
  const heads = raw.num_attention_heads ?? raw.n_head
  const hidden = raw.hidden_size ?? raw.n_embd
  const layers = raw.num_hidden_layers ?? raw.n_layer
  if (heads === undefined || hidden === undefined || layers === undefined || raw.vocab_size === undefined) {
    throw new ModelLoadError(`${file} lacks num_attention_heads, hidden_size, num_hidden_layers or vocab_size`)
  }
  return {
    numLayers: layers,
    kvHeads: raw.num_key_value_heads ?? heads,
    headDim: raw.head_dim ?? defaultHeadDim((raw as Record<string, unknown>).model_type, hidden, heads),
    vocabSize: raw.vocab_size
  }
}

/**
 * The graph the actor runs. When a graph offers new_key_values.N.* (our exporter's do), the present.N.*
 * outputs, and the nodes only they need, are cut: ONNX Runtime runs every node of a graph whatever is
 * fetched, and copying the whole cache into present every step would cost about as much as the step.
 * Every graph gets the sampling head (see samplingHead).
 */
export const actorGraph = (bytes: Uint8Array): Uint8Array => prepareGraph(bytes).graph

/** The graph the actor runs (see actorGraph) and the layout it needs, from one decoding of the model. */
export interface PreparedGraph {
  readonly graph: Uint8Array
  readonly layout: CacheLayout
  readonly positionLimit: number | undefined
  /** The graph quantizes activations per tensor (DynamicQuantizeLinear): rows of one batch change each other's numbers. */
  readonly rowsCoupled: boolean
}

export const prepareGraph = (bytes: Uint8Array): PreparedGraph => {
  const model = onnxProto.onnx.ModelProto.decode(bytes)
  const graph = model.graph
  const ops = opTypes(graph)
  const layout: CacheLayout = ops.has("GroupQueryAttention") ? "right" : "left"
  const positionLimit = rotaryRows(graph)
  const rowsCoupled = ops.has("DynamicQuantizeLinear")
  if (graph == null) throw new ModelLoadError("the ONNX file holds no graph")
  if ((graph.output ?? []).some((o) => o.name === "new_key_values.0.key")) {
    const outputs = (graph.output ?? []).filter((o) => !o.name?.startsWith("present."))
    graph.output = outputs
    // Remove nodes whose outputs nothing reads, until none is left.
    let nodes = graph.node ?? []
    for (let removed = true; removed;) {
      const needed = new Set<string>(outputs.map((o) => o.name ?? ""))
      for (const node of nodes) for (const input of node.input ?? []) needed.add(input)
      const before = nodes.length
      nodes = nodes.filter((node) => (node.output ?? []).some((output) => needed.has(output)))
      removed = nodes.length < before
    }
    graph.node = nodes
  }
  samplingHead(graph, Number(model.opsetImport?.find((o) => (o.domain ?? "") === "")?.version ?? 1))
  return { graph: onnxProto.onnx.ModelProto.encode(model).finish(), layout, positionLimit, rowsCoupled }
}

/** The sampling head's inputs and outputs (see samplingHead). */
const SAMPLE_ROWS = "episodic.sample_rows"
const SAMPLE_TEMPERATURES = "episodic.sample_temperatures"
const SAMPLE_UNIFORMS = "episodic.sample_uniforms"
const SAMPLE_PROBS = "episodic.sample_probs"
const SAMPLE_TOKENS = "episodic.sample_tokens"
const SAMPLE_LOGPROBS = "episodic.sample_logprobs"

/**
 * Appends the vocabulary-wide arithmetic of sampling to the graph, where ONNX Runtime's vectorized kernels
 * do it: for each of `sample_rows` (a row of the logits flattened to [batch * sequence, vocab]), softmax of
 * that row divided by its `sample_temperatures` entry. A sampler then draws with additions only (no exp per
 * vocabulary entry in JavaScript) and reads the drawn token's probability off. The row's maximum is
 * subtracted before dividing, as the float64 definition does: dividing large logits first would round
 * them at their own magnitude. The head computes each row on its own, so a row's probabilities do not
 * depend on the rows batched with it. From opset 11 on the head also draws (see drawNodes).
 */
const samplingHead = (graph: onnxProto.onnx.IGraphProto, opset: number): void => {
  const logits = (graph.output ?? []).find((o) => o.name === "logits")
  if (logits === undefined) return
  const { FLOAT, FLOAT16, INT32, INT64 } = onnxProto.onnx.TensorProto.DataType
  const { node, int, int64s, name } = headBuilders
  const picked = logits.type?.tensorType?.elemType === FLOAT16 ? name("picked16") : name("picked")
  const draws = opset >= 11
  graph.initializer = [...(graph.initializer ?? []), int64s("column", [-1n, 1n]), int64s("vocab_axis", [1n])]
  // ReduceMax takes its axes as an input from opset 18 on, as an attribute before.
  const reduceMax = opset >= 18
    ? node("ReduceMax", [name("picked"), name("vocab_axis")], name("max"))
    : node("ReduceMax", [name("picked")], name("max"), [{ name: "axes", ints: [1], type: onnxProto.onnx.AttributeProto.AttributeType.INTS }])
  const vocab = Number(logits.type?.tensorType?.shape?.dim?.at(-1)?.dimValue ?? 0)
  graph.node = [
    ...(graph.node ?? []),
    node("Flatten", ["logits"], name("rows"), [int("axis", 2)]),
    node("Gather", [name("rows"), SAMPLE_ROWS], picked, [int("axis", 0)]),
    ...(picked === name("picked") ? [] : [node("Cast", [picked], name("picked"), [int("to", FLOAT)])]),
    reduceMax,
    node("Sub", [name("picked"), name("max")], name("shifted")),
    node("Reshape", [SAMPLE_TEMPERATURES, name("column")], name("temperatures")),
    node("Div", [name("shifted"), name("temperatures")], name("scaled")),
    node("Softmax", [name("scaled")], SAMPLE_PROBS, [int("axis", 1)]),
    ...(draws ? drawNodes(graph, opset, vocab) : [])
  ]
  const tensor = (input: string, elemType: number, dims: Array<string>) =>
    ({ name: input, type: { tensorType: { elemType, shape: { dim: dims.map((dimParam) => ({ dimParam })) } } } })
  graph.input = [
    ...(graph.input ?? []),
    tensor(SAMPLE_ROWS, INT32, ["sample_count"]),
    tensor(SAMPLE_TEMPERATURES, FLOAT, ["sample_count"]),
    ...(draws ? [tensor(SAMPLE_UNIFORMS, FLOAT, ["sample_count"])] : [])
  ]
  graph.output = [
    ...(graph.output ?? []),
    tensor(SAMPLE_PROBS, FLOAT, ["sample_count", "vocab_size"]),
    ...(draws ? [tensor(SAMPLE_TOKENS, INT64, ["sample_count"]), tensor(SAMPLE_LOGPROBS, FLOAT, ["sample_count"])] : [])
  ]
}

/** Helpers for the nodes and constants of the sampling head, all named under `episodic.sample/`. */
const headBuilders = {
  name: (part: string) => `episodic.sample/${part}`,
  // Named after what they make: several nodes share an op type.
  node: (opType: string, input: Array<string>, output: string, attribute: Array<onnxProto.onnx.IAttributeProto> = []) =>
    ({ opType, input, output: [output], name: `${output}/${opType}`, attribute }),
  int: (attribute: string, i: number) => ({ name: attribute, i, type: onnxProto.onnx.AttributeProto.AttributeType.INT }),
  int64s: (part: string, values: Array<bigint>, dims: Array<number> = [values.length]): onnxProto.onnx.ITensorProto =>
    ({ name: `episodic.sample/${part}`, dims, dataType: onnxProto.onnx.TensorProto.DataType.INT64, rawData: new Uint8Array(BigInt64Array.from(values).buffer) })
}

/**
 * The head's draw: given per row a uniform number u in [0, 1) from the request's seeded stream
 * (`sample_uniforms`), the token is the first whose cumulative probability exceeds u times the row's total,
 * and its logprob log(p / total). So plain temperature sampling needs nothing vocabulary-wide to cross into
 * JavaScript: a step fetches two numbers per row, not the whole distribution (fresh memory each step, which
 * the garbage collector has to reclaim). It is the JavaScript sampler's inverse-CDF draw over float32 sums
 * instead of float64 ones.
 *
 * In two levels, since ONNX Runtime's CumSum is slow (over whole rows of probabilities it cost about as much
 * as one of the tiny model's attention products): the vocabulary as blocks of `size` columns, the block
 * whose running sum passes u times the total, then the column within it. Where rounding leaves no sum past
 * the threshold (u times the total rounds up to the total), the choice is the last block, and column, with
 * any probability.
 */
const drawNodes = (graph: onnxProto.onnx.IGraphProto, opset: number, vocab: number): Array<onnxProto.onnx.INodeProto> => {
  const { node, int, int64s, name } = headBuilders
  const { FLOAT } = onnxProto.onnx.TensorProto.DataType
  // The largest power of two up to sqrt(vocab) that divides it (1 when the vocabulary's size is not static).
  let size = 1
  while (vocab > 0 && (2 * size) ** 2 <= vocab && vocab % (2 * size) === 0) size *= 2
  graph.initializer = [
    ...(graph.initializer ?? []),
    int64s("last", [-1n]),
    int64s("end", [BigInt(Number.MAX_SAFE_INTEGER)]),
    int64s("axis", [1n], []),
    int64s("block_axis", [2n]),
    int64s("blocks_shape", [0n, -1n, BigInt(size)]),
    int64s("block_shape", [-1n, BigInt(size)]),
    int64s("one_by_one", [-1n, 1n, 1n]),
    int64s("across_block", [1n, 1n, BigInt(size)]),
    int64s("block_size", [BigInt(size)]),
    { name: name("zero"), dims: [1], dataType: FLOAT, rawData: new Uint8Array(Float32Array.of(0).buffer) }
  ]
  // ReduceSum takes its axes as an input from opset 13 on, as an attribute before.
  const blockSums = opset >= 13
    ? node("ReduceSum", [name("blocks"), name("block_axis")], name("block_sums"), [int("keepdims", 0)])
    : node("ReduceSum", [name("blocks")], name("block_sums"), [int("keepdims", 0), { name: "axes", ints: [2], type: onnxProto.onnx.AttributeProto.AttributeType.INTS }])
  /** The first column of `sums` (running sums) past `threshold`, or else the first that reaches `total`, as [rows, 1]. */
  const firstPast = (sums: string, threshold: string, total: string, out: string) => [
    node("Greater", [sums, threshold], `${out}_past`),
    node("Equal", [sums, total], `${out}_reached`),
    node("Or", [`${out}_past`, `${out}_reached`], `${out}_chosen`),
    node("Cast", [`${out}_chosen`], `${out}_float`, [int("to", FLOAT)]),
    node("ArgMax", [`${out}_float`], out, [int("axis", 1), int("keepdims", 1)])
  ]
  return [
    node("Reshape", [SAMPLE_PROBS, name("blocks_shape")], name("blocks")),
    blockSums,
    node("CumSum", [name("block_sums"), name("axis")], name("block_running")),
    node("CumSum", [name("block_sums"), name("axis")], name("block_before"), [int("exclusive", 1)]),
    node("Slice", [name("block_running"), name("last"), name("end"), name("vocab_axis")], name("total")),
    node("Reshape", [SAMPLE_UNIFORMS, name("column")], name("uniforms")),
    node("Mul", [name("uniforms"), name("total")], name("threshold")),
    ...firstPast(name("block_running"), name("threshold"), name("total"), name("block")),
    // The block's own probabilities, and what is left of the threshold once the blocks before it are passed.
    node("GatherElements", [name("block_before"), name("block")], name("before"), [int("axis", 1)]),
    node("Sub", [name("threshold"), name("before")], name("left_signed")),
    node("Max", [name("left_signed"), name("zero")], name("left")),
    node("Reshape", [name("block"), name("one_by_one")], name("block_3d")),
    node("Expand", [name("block_3d"), name("across_block")], name("block_columns")),
    node("GatherElements", [name("blocks"), name("block_columns")], name("chosen_block_3d"), [int("axis", 1)]),
    node("Reshape", [name("chosen_block_3d"), name("block_shape")], name("chosen_block")),
    node("CumSum", [name("chosen_block"), name("axis")], name("within_running")),
    node("Slice", [name("within_running"), name("last"), name("end"), name("vocab_axis")], name("within_total")),
    ...firstPast(name("within_running"), name("left"), name("within_total"), name("within")),
    node("Mul", [name("block"), name("block_size")], name("block_start")),
    node("Add", [name("block_start"), name("within")], name("token")),
    node("Reshape", [name("token"), name("last")], SAMPLE_TOKENS),
    node("GatherElements", [name("chosen_block"), name("within")], name("drawn"), [int("axis", 1)]),
    node("Div", [name("drawn"), name("total")], name("share")),
    node("Log", [name("share")], name("logprob")),
    node("Reshape", [name("logprob"), name("last")], SAMPLE_LOGPROBS)
  ]
}

/**
 * The rows of the cos / sin cache a GroupQueryAttention (input 7) or RotaryEmbedding (input 2) node reads:
 * positions at or past it cannot be rotated (GroupQueryAttention refuses a total length above it).
 */
const rotaryRows = (graph: onnxProto.onnx.IGraphProto | null | undefined): number | undefined => {
  const initializers = new Map((graph?.initializer ?? []).map((t) => [t.name ?? "", t]))
  let rows: number | undefined
  for (const node of graph?.node ?? []) {
    const input = node.opType === "GroupQueryAttention" ? node.input?.[7] : node.opType === "RotaryEmbedding" ? node.input?.[2] : undefined
    const dims = input === undefined ? undefined : initializers.get(input)?.dims
    if (dims != null && dims.length === 2) rows = Math.min(rows ?? Infinity, Number(dims[0]))
  }
  return rows
}

/** Op types anywhere in the graph, its subgraphs (an `If`'s branches) included. */
const opTypes = (root: onnxProto.onnx.IGraphProto | null | undefined): Set<string> => {
  const found = new Set<string>()
  const visit = (graph: onnxProto.onnx.IGraphProto | null | undefined): void => {
    for (const node of graph?.node ?? []) {
      found.add(node.opType ?? "")
      for (const attribute of node.attribute ?? []) {
        visit(attribute.g)
        for (const g of attribute.graphs ?? []) visit(g)
      }
    }
  }
  visit(root)
  return found
}

/**
 * The layout a graph needs: right padding when it has a GroupQueryAttention node anywhere, as
 * onnxruntime-genai's graphs do; left otherwise.
 */
export const layoutFor = (bytes: Uint8Array): CacheLayout => prepareGraph(bytes).layout

/** Which execution provider was asked for, and which runs: CUDA falls back to CPU when it is not installed. */
const createSession = async (
  graph: Uint8Array,
  provider: ExecutionProvider,
  threads: number | undefined,
  /** Where the graph's external data files are (`model.onnx_data`). */
  folder?: string
): Promise<{ session: ort.InferenceSession; provider: ExecutionProvider; fallback?: string }> => {
  const create = (executionProviders: Array<string>) =>
    ort.InferenceSession.create(graph, {
      graphOptimizationLevel: "all",
      ...(threads === undefined ? {} : { intraOpNumThreads: threads, interOpNumThreads: 1 }),
      extra: {
        session: {
          // Idle compute threads sleep instead of spinning: between steps the episodes' own work
          // (environments, tokenization, episode machines) needs the cores.
          intra_op: { allow_spinning: "0" },
          // A graph loaded from bytes (one the actor rewrote) resolves its external data files from here,
          // not from the working directory.
          ...(folder === undefined ? {} : { model_external_initializers_file_folder_path: folder })
        }
      },
      executionProviders
    })
  if (provider === "cuda") {
    // A missing CUDA provider is expected and reported once as the fallback below, not as an ORT error log.
    ort.env.logLevel = "fatal"
    try {
      return { session: await create(["cuda"]), provider: "cuda" }
    } catch (cause) {
      return { session: await create(["cpu"]), provider: "cpu", fallback: `CUDA unavailable (${String(cause).split("\n")[0]}); running on CPU` }
    }
  }
  return { session: await create(["cpu"]), provider: "cpu" }
}

export class OnnxCausalLM {
  readonly directory: string
  readonly shape: ModelShape
  readonly provider: ExecutionProvider
  /** Set when CUDA was asked for but the CPU runs. */
  readonly fallback: string | undefined
  /** How the scheduler lays rows out for this graph (see CacheLayout). */
  readonly layout: CacheLayout
  /**
   * Whether a prefill with a past may hold several rows. GroupQueryAttention refuses it, so the right layout
   * runs such prefills (an episode's next turn over its cache) one row at a time, whatever the graph.
   */
  readonly batchedContinuation: boolean
  /** Rows of the graph's rotary cos / sin cache, when it has one: the longest sequence it can run. */
  readonly positionLimit: number | undefined
  /**
   * Why each row runs alone, if it does (one forward pass per row, cut to its real positions, past and new:
   * a row gets the numbers it would get unbatched and unpadded, at the cost of batching):
   * - "quantized activations": the graph quantizes activations per tensor (transformers.js's q8 files:
   *   DynamicQuantizeLinear before each MatMulInteger), so a row's numbers depend on every row and padded
   *   position it runs with;
   * - "positions from the layout": the graph has no position_ids input and does not derive positions from
   *   attention_mask (a gap in a row moves its later positions), so padding would shift them.
   */
  get rowsAlone(): RowsAlone | undefined {
    return this.#rowsAlone
  }
  #rowsAlone: RowsAlone | undefined
  #session: ort.InferenceSession
  readonly #threads: number | undefined
  readonly #hasPositionIds: boolean
  /** The outputs fetched: logits, and the new positions' keys and values (our exporter's graphs) or the present cache. */
  readonly #fetches: Array<string>
  /** `#fetches` without the logits and / or the probabilities, indexed by (logits ? 2 : 0) + (probs ? 1 : 0): made once, not per step. */
  readonly #fetchLists: ReadonlyArray<Array<string>>
  /** The graph's head draws tokens (see samplingHead). */
  readonly drawsInGraph: boolean
  readonly #fetchesNewOnly: boolean
  readonly #keyName: (layer: number) => string
  readonly #valueName: (layer: number) => string
  /** The merged decoder's `use_cache_branch` input (optimum's older `decoder_model_merged.onnx`). */
  readonly #hasCacheBranch: boolean
  /** Whether the graph's cache inputs are float16 (fp16 / q4f16 exports): converted at the boundary. */
  readonly #float16: boolean

  private constructor(
    directory: string,
    shape: ModelShape,
    created: { session: ort.InferenceSession; provider: ExecutionProvider; fallback?: string },
    threads: number | undefined,
    layout: CacheLayout,
    positionLimit: number | undefined,
    rowsCoupled: boolean
  ) {
    this.#rowsAlone = rowsCoupled ? "quantized activations" : undefined
    this.directory = directory
    this.layout = layout
    this.positionLimit = positionLimit
    this.batchedContinuation = layout === "left"
    this.shape = shape
    this.#session = created.session
    this.provider = created.provider
    this.fallback = created.fallback
    this.#threads = threads
    const inputs = created.session.inputNames
    this.#hasPositionIds = inputs.includes("position_ids")
    if (!inputs.includes("input_ids") || !inputs.includes("attention_mask")) {
      throw new ModelLoadError(`${directory}: the ONNX graph needs input_ids and attention_mask inputs; it has ${inputs.join(", ")}`)
    }
    // Optimum names them past_key_values.N.key; a few older exports use past_key_values.N.decoder.key.
    const style = inputs.includes("past_key_values.0.key") ? "" : inputs.includes("past_key_values.0.decoder.key") ? "decoder." : undefined
    if (style === undefined) throw new ModelLoadError(`${directory}: the ONNX graph has no past_key_values.0.key input (export it with the KV cache)`)
    const outputs = created.session.outputNames
    this.#fetchesNewOnly = outputs.includes("new_key_values.0.key")
    this.drawsInGraph = outputs.includes(SAMPLE_TOKENS)
    const draws = this.drawsInGraph ? [SAMPLE_TOKENS, SAMPLE_LOGPROBS] : []
    this.#fetches = this.#fetchesNewOnly
      ? ["logits", SAMPLE_PROBS, ...draws, ...Array.from({ length: shape.numLayers }, (_, i) => [`new_key_values.${i}.key`, `new_key_values.${i}.value`]).flat()]
      : ["logits", SAMPLE_PROBS, ...draws, ...Array.from({ length: shape.numLayers }, (_, i) => [`present.${i}.key`, `present.${i}.value`]).flat()]
    this.#fetchLists = [0, 1, 2, 3].map((bits) =>
      this.#fetches.filter((name) => (name !== "logits" || (bits & 2) !== 0) && (name !== SAMPLE_PROBS || (bits & 1) !== 0)))
    this.#keyName = (layer) => `past_key_values.${layer}.${style}key`
    this.#valueName = (layer) => `past_key_values.${layer}.${style}value`
    this.#hasCacheBranch = inputs.includes("use_cache_branch")
    const past = created.session.inputMetadata.find((m) => m.name === this.#keyName(0))
    this.#float16 = past !== undefined && past.isTensor && past.type === "float16"
  }

  /**
   * Loads the directory's graph (or the file given): `onnx/model.onnx`, or for a Hugging Face checkpoint the
   * graph episodic exports from its weights and caches (src/model/huggingFace.ts).
   */
  static async load(
    directory: string,
    options: {
      readonly provider?: ExecutionProvider
      readonly threads?: number
      readonly file?: string
      readonly dtype?: GraphDtype | undefined
      /**
       * Overrides the layout read from the graph (tests: a graph that attends by its mask and has
       * new_key_values outputs runs either way; a GroupQueryAttention graph runs only "right").
       */
      readonly layout?: CacheLayout
      /** Runs each row alone whatever the graph (tests: the row-by-row path on a graph that would batch). */
      readonly rowsAlone?: boolean
    } = {}
  ): Promise<OnnxCausalLM> {
    const absolute = path.resolve(directory)
    const shape = readShape(absolute)
    let file = options.file
    if (file === undefined) {
      try {
        file = options.dtype === undefined ? graphFor(absolute).file : publishedGraph(absolute, options.dtype)
      } catch (cause) {
        throw new ModelLoadError(`${cause instanceof Error ? cause.message : String(cause)} (make a model with \`npx episodic model init --out ${directory}\`)`)
      }
    }
    if (!existsSync(file)) throw new ModelLoadError(`${file} does not exist: make a model with \`npx episodic model init --out ${directory}\``)
    const bytes = readFileSync(file)
    const { graph, layout: detected, positionLimit, rowsCoupled } = prepareGraph(bytes)
    // The rewritten graph loads from bytes, told where its external data files are.
    const created = await createSession(graph, options.provider ?? "cpu", options.threads, path.dirname(path.resolve(file)))
    const layout = options.layout ?? detected
    if (layout === "left" && detected === "right") {
      await created.session.release()
      throw new ModelLoadError(`${file}: a GroupQueryAttention graph needs right padding (each row's cache a left-aligned prefix); it cannot run left-padded`)
    }
    const model = new OnnxCausalLM(absolute, shape, created, options.threads, layout, positionLimit, rowsCoupled)
    if (options.rowsAlone === true) model.#rowsAlone ??= "asked"
    if (model.#rowsAlone === undefined && !model.#hasPositionIds && layout === "left" && !(await model.#positionsFromMask())) {
      model.#rowsAlone = "positions from the layout"
    }
    return model
  }

  /** Replaces the session with one built from `bytes` (same architecture, new weights). */
  async reload(bytes: Uint8Array): Promise<void> {
    const created = await createSession(actorGraph(bytes), this.provider, this.#threads)
    const old = this.#session
    this.#session = created.session
    await old.release()
  }

  async forward(inputs: ForwardInputs): Promise<ForwardOutputs> {
    return this.#rowsAlone !== undefined ? this.#forwardRows(inputs) : this.#forwardBatch(inputs)
  }

  /**
   * Whether a graph without position_ids derives positions from attention_mask (transformers' cumsum), as
   * the left layout's gaps need: two tokens with a masked one between them must give the logits they give
   * side by side. A graph that counts positions by column (`range(past, past + sequence)`) moves the second.
   */
  async #positionsFromMask(): Promise<boolean> {
    const { numLayers, vocabSize } = this.shape
    const empty = Array.from({ length: numLayers }, () => new Float32Array(0))
    const run = (ids: ReadonlyArray<number>, mask: ReadonlyArray<number>) =>
      this.#forwardBatch({
        batch: 1, sequenceLength: ids.length, pastLength: 0,
        inputIds: BigInt64Array.from(ids, BigInt), positionIds: new BigInt64Array(ids.length),
        attentionMask: BigInt64Array.from(mask, BigInt), pastKeys: empty, pastValues: empty
      })
    const [a, b] = [1 % vocabSize, 2 % vocabSize]
    const together = (await run([a, b], [1, 1])).logits.subarray(vocabSize)
    const apart = (await run([a, 0, b], [1, 0, 1])).logits.subarray(2 * vocabSize)
    let scale = 0
    let difference = 0
    for (let i = 0; i < vocabSize; i++) {
      scale = Math.max(scale, Math.abs(together[i]!))
      difference = Math.max(difference, Math.abs(together[i]! - apart[i]!))
    }
    return difference <= 1e-4 * Math.max(1, scale)
  }

  /**
   * Each row alone, cut to its real positions: the new part to its real columns, the past to its real
   * columns (copied out when there is padding). Outputs are laid out as one batched pass's; padded
   * positions stay zero.
   */
  async #forwardRows(inputs: ForwardInputs): Promise<ForwardOutputs> {
    const { batch: b, sequenceLength: s, pastLength: p } = inputs
    const { numLayers, kvHeads, headDim, vocabSize } = this.shape
    const { logits: fetchLogits, probs: fetchProbs } = fetched(inputs)
    const logits = fetchLogits ? new Float32Array(b * s * vocabSize) : NOTHING
    const probs = fetchProbs ? new Float32Array(b * vocabSize) : NOTHING
    const draws = this.drawsInGraph ? { tokens: new BigInt64Array(b), logprobs: new Float32Array(b) } : undefined
    const newKeys = Array.from({ length: numLayers }, () => new Float32Array(b * kvHeads * s * headDim))
    const newValues = Array.from({ length: numLayers }, () => new Float32Array(b * kvHeads * s * headDim))
    for (let r = 0; r < b; r++) {
      const mask = inputs.attentionMask.subarray(r * (p + s), (r + 1) * (p + s))
      let lo = s
      let hi = 0
      for (let j = 0; j < s; j++) {
        if (mask[p + j] !== 0n) {
          lo = Math.min(lo, j)
          hi = j + 1
        }
      }
      // A free slot: nothing reads its outputs.
      if (hi === 0) continue
      const n = hi - lo
      const columns: Array<number> = []
      for (let c = 0; c < p; c++) if (mask[c] !== 0n) columns.push(c)
      const q = columns.length
      const rowMask = new BigInt64Array(q + n).fill(1n)
      rowMask.set(mask.subarray(p + lo, p + hi), q)
      const past = (data: Float32Array) => {
        const row = data.subarray(r * kvHeads * p * headDim, (r + 1) * kvHeads * p * headDim)
        if (q === p) return row
        const out = new Float32Array(kvHeads * q * headDim)
        for (let h = 0; h < kvHeads; h++) {
          columns.forEach((c, i) => out.set(row.subarray((h * p + c) * headDim, (h * p + c + 1) * headDim), (h * q + i) * headDim))
        }
        return out
      }
      const out = await this.#forwardBatch({
        batch: 1, sequenceLength: n, pastLength: q,
        inputIds: inputs.inputIds.subarray(r * s + lo, r * s + hi),
        positionIds: inputs.positionIds.subarray(r * s + lo, r * s + hi),
        attentionMask: rowMask,
        pastKeys: inputs.pastKeys.map(past),
        pastValues: inputs.pastValues.map(past),
        sampleColumns: Int32Array.of(Math.min(Math.max((inputs.sampleColumns?.[r] ?? s - 1) - lo, 0), n - 1)),
        temperatures: Float32Array.of(inputs.temperatures?.[r] ?? 1),
        uniforms: Float32Array.of(inputs.uniforms?.[r] ?? 0),
        ...(inputs.fetch === undefined ? {} : { fetch: inputs.fetch })
      })
      if (fetchLogits) logits.set(out.logits, (r * s + lo) * vocabSize)
      if (fetchProbs) probs.set(out.probs, r * vocabSize)
      if (draws !== undefined && out.draws !== undefined) {
        draws.tokens[r] = out.draws.tokens[0]!
        draws.logprobs[r] = out.draws.logprobs[0]!
      }
      for (let layer = 0; layer < numLayers; layer++) {
        for (let h = 0; h < kvHeads; h++) {
          const to = ((r * kvHeads + h) * s + lo) * headDim
          newKeys[layer]!.set(out.newKeys[layer]!.subarray(h * n * headDim, (h + 1) * n * headDim), to)
          newValues[layer]!.set(out.newValues[layer]!.subarray(h * n * headDim, (h + 1) * n * headDim), to)
        }
      }
    }
    return { logits, probs, draws, newKeys, newValues }
  }

  async #forwardBatch(inputs: ForwardInputs): Promise<ForwardOutputs> {
    const { batch: b, sequenceLength: s, pastLength: p } = inputs
    const { numLayers, kvHeads, headDim } = this.shape
    const feeds: Record<string, ort.Tensor> = {
      input_ids: new ort.Tensor("int64", inputs.inputIds, [b, s]),
      attention_mask: new ort.Tensor("int64", inputs.attentionMask, [b, p + s])
    }
    if (this.#hasPositionIds) feeds.position_ids = new ort.Tensor("int64", inputs.positionIds, [b, s])
    if (this.#hasCacheBranch) feeds.use_cache_branch = new ort.Tensor("bool", Uint8Array.of(p > 0 ? 1 : 0), [1])
    // The sampling head's rows of the logits flattened to [b * s, vocab]: row r's sample column.
    const rows = new Int32Array(b)
    for (let r = 0; r < b; r++) rows[r] = r * s + (inputs.sampleColumns?.[r] ?? s - 1)
    feeds[SAMPLE_ROWS] = new ort.Tensor("int32", rows, [b])
    feeds[SAMPLE_TEMPERATURES] = new ort.Tensor("float32", inputs.temperatures ?? new Float32Array(b).fill(1), [b])
    const cache = (data: Float32Array) =>
      this.#float16
        ? float16Tensor(toFloat16Bits(data), [b, kvHeads, p, headDim])
        : new ort.Tensor("float32", data, [b, kvHeads, p, headDim])
    for (let layer = 0; layer < numLayers; layer++) {
      feeds[this.#keyName(layer)] = cache(inputs.pastKeys[layer]!)
      feeds[this.#valueName(layer)] = cache(inputs.pastValues[layer]!)
    }
    // Fetching the whole present cache costs more than the step itself (a copy into JavaScript of every
    // key and value); when the graph offers the new positions alone, only those cross over.
    if (this.drawsInGraph) feeds[SAMPLE_UNIFORMS] = new ort.Tensor("float32", inputs.uniforms ?? new Float32Array(b), [b])
    const { logits: fetchLogits, probs: fetchProbs } = fetched(inputs)
    const out = await this.#session.run(feeds, this.#fetchLists[(fetchLogits ? 2 : 0) + (fetchProbs ? 1 : 0)]!)
    const float32 = (name: string) => asFloat32(out[name]!)
    const newKeys: Array<Float32Array> = []
    const newValues: Array<Float32Array> = []
    // A GroupQueryAttention present is, per row, the row's past prefix then its new positions: a row's new
    // positions start at its real past length (the mask's ones among the past columns).
    const starts = this.#fetchesNewOnly || this.layout === "left" ? undefined : pastCounts(inputs.attentionMask, b, p, s)
    for (let layer = 0; layer < numLayers; layer++) {
      if (this.#fetchesNewOnly) {
        newKeys.push(float32(`new_key_values.${layer}.key`))
        newValues.push(float32(`new_key_values.${layer}.value`))
      } else if (starts === undefined) {
        newKeys.push(lastPositions(float32(`present.${layer}.key`), b * kvHeads, p + s, s, headDim))
        newValues.push(lastPositions(float32(`present.${layer}.value`), b * kvHeads, p + s, s, headDim))
      } else {
        newKeys.push(rowPositions(out[`present.${layer}.key`]!, starts, kvHeads, s, headDim))
        newValues.push(rowPositions(out[`present.${layer}.value`]!, starts, kvHeads, s, headDim))
      }
    }
    return {
      logits: fetchLogits ? float32("logits") : NOTHING,
      probs: fetchProbs ? float32(SAMPLE_PROBS) : NOTHING,
      draws: this.drawsInGraph ? { tokens: out[SAMPLE_TOKENS]!.data as BigInt64Array, logprobs: float32(SAMPLE_LOGPROBS) } : undefined,
      newKeys,
      newValues
    }
  }

  async release(): Promise<void> {
    await this.#session.release()
  }
}

const NOTHING = new Float32Array(0)

/** Which vocabulary-wide outputs a forward pass fetches (both unless told otherwise). */
const fetched = (inputs: ForwardInputs): { readonly logits: boolean; readonly probs: boolean } =>
  ({ logits: inputs.fetch?.logits ?? true, probs: inputs.fetch?.probs ?? true })

/** The last `count` of `length` positions of each of `rows` rows of [rows, length, headDim]. */
const lastPositions = (data: Float32Array, rows: number, length: number, count: number, headDim: number): Float32Array => {
  const out = new Float32Array(rows * count * headDim)
  for (let r = 0; r < rows; r++) out.set(data.subarray((r * length + length - count) * headDim, (r * length + length) * headDim), r * count * headDim)
  return out
}

/** Per row, how many of the first `past` mask columns are real. */
const pastCounts = (mask: BigInt64Array, batch: number, past: number, sequence: number): Array<number> =>
  Array.from({ length: batch }, (_, b) => {
    let count = 0
    for (let c = 0; c < past; c++) if (mask[b * (past + sequence) + c] !== 0n) count++
    return count
  })

/**
 * From a present of [rows, kvHeads, length, headDim] whose row b holds its new positions from column
 * starts[b]: `count` columns per row and head (columns past the present's end, padding only, stay zero).
 */
const rowPositions = (present: ort.Tensor, starts: ReadonlyArray<number>, kvHeads: number, count: number, headDim: number): Float32Array => {
  const data = asFloat32(present)
  const length = Number(present.dims[2])
  const out = new Float32Array(starts.length * kvHeads * count * headDim)
  starts.forEach((start, b) => {
    const n = Math.max(0, Math.min(count, length - start))
    for (let h = 0; h < kvHeads; h++) {
      const from = ((b * kvHeads + h) * length + start) * headDim
      out.set(data.subarray(from, from + n * headDim), (b * kvHeads + h) * count * headDim)
    }
  })
  return out
}

/**
 * float16 at the boundary: the actor keeps its caches in float32 and converts for graphs with float16 I/O.
 * onnxruntime-node's native side reads a float16 tensor's raw bits from a Uint16Array: it sees a Float16Array
 * as empty ("not enough space: expected N, got 0"), yet where Float16Array exists (Node 24) ort.Tensor's
 * constructor wraps a Uint16Array as one. So the tensor keeps the Uint16Array it was given.
 */
const float16Tensor = (bits: Uint16Array, dims: ReadonlyArray<number>): ort.Tensor => {
  const tensor = new ort.Tensor("float16", bits, dims)
  if (!(tensor.data instanceof Uint16Array)) (tensor as unknown as { cpuData: Uint16Array }).cpuData = bits
  return tensor
}

const toFloat16Bits = (data: Float32Array): Uint16Array => {
  const out = new Uint16Array(data.length)
  for (let i = 0; i < data.length; i++) out[i] = toFloat16(data[i]!)
  return out
}

const asFloat32 = (tensor: ort.Tensor): Float32Array => {
  if (tensor.type === "float32") return tensor.data as Float32Array
  if (tensor.type !== "float16") throw new ModelLoadError(`the ONNX graph's ${tensor.type} outputs are not supported (float32 or float16)`)
  const data = tensor.data as ArrayLike<number>
  // Node 24's Float16Array holds numbers already; a Uint16Array holds the bits.
  if (!(data instanceof Uint16Array)) return Float32Array.from(data)
  const out = new Float32Array(data.length)
  for (let i = 0; i < data.length; i++) out[i] = fromFloat16(data[i]!)
  return out
}
