/**
 * Published ONNX exports with float16 inputs and outputs (onnxruntime-genai's fp16 and q4f16 builds keep
 * past, present and logits in float16): the actor converts at the boundary. The fixture is the tiny model's
 * graph rewritten with onnx-proto as such an export: the cache inputs, logits and present outputs declared
 * float16 (Cast nodes inside), no new_key_values outputs (published graphs have none), in a directory of its
 * own (and a variant with the merged decoder's `use_cache_branch` input, which must be fed). Greedy decoding
 * through the actor, batched, gives the tokens transformers.js `generate()` gives on the
 * same file, each conversation alone.
 */
import { AutoModelForCausalLM, env, Tensor } from "@huggingface/transformers"
import onnxProto from "onnx-proto"
import { describe, expect, it } from "vitest"
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import { GenerationRequest, SamplingParams } from "../src/Generation.ts"
import { graphFor, publishedGraph } from "../src/model/huggingFace.ts"
import { load as loadTokenizer } from "../src/Tokenizer.ts"
import { tinyModel } from "./support.ts"

const { onnx } = onnxProto
const FLOAT16 = onnx.TensorProto.DataType.FLOAT16
const FLOAT = onnx.TensorProto.DataType.FLOAT

/** The graph with float16 cache inputs and float16 logits / present outputs, as an fp16-I/O export has them. */
const float16Io = (bytes: Uint8Array, cacheBranch: boolean): Uint8Array => {
  const model = onnx.ModelProto.decode(bytes)
  const graph = model.graph!
  // The merged decoder's flag input; the graph must be fed it (ONNX Runtime refuses a run missing an input).
  if (cacheBranch) graph.input!.push({ name: "use_cache_branch", type: { tensorType: { elemType: onnx.TensorProto.DataType.BOOL, shape: { dim: [{ dimValue: 1 }] } } } })
  model.producerName = "onnxruntime-genai"
  graph.output = graph.output!.filter((o) => !o.name!.startsWith("new_key_values."))
  const casts: Array<onnxProto.onnx.INodeProto> = []
  for (const input of graph.input!) {
    if (!input.name!.startsWith("past_key_values.")) continue
    const inner = `${input.name}_f32`
    for (const node of graph.node!) node.input = node.input!.map((name) => (name === input.name ? inner : name))
    casts.push({ opType: "Cast", input: [input.name!], output: [inner], name: `cast_${input.name}`, attribute: [{ name: "to", i: FLOAT, type: onnx.AttributeProto.AttributeType.INT }] })
    input.type!.tensorType!.elemType = FLOAT16
  }
  for (const output of graph.output!) {
    const inner = `${output.name}_f32`
    for (const node of graph.node!) node.output = node.output!.map((name) => (name === output.name ? inner : name))
    for (const node of graph.node!) node.input = node.input!.map((name) => (name === output.name ? inner : name))
    casts.push({ opType: "Cast", input: [inner], output: [output.name!], name: `cast_${output.name}`, attribute: [{ name: "to", i: FLOAT16, type: onnx.AttributeProto.AttributeType.INT }] })
    output.type!.tensorType!.elemType = FLOAT16
  }
  graph.node = [...casts.filter((c) => c.input![0]!.startsWith("past_key_values.")), ...graph.node!, ...casts.filter((c) => !c.input![0]!.startsWith("past_key_values."))]
  return onnx.ModelProto.encode(model).finish()
}

/**
 * The graph with every MatMul by a weight replaced by com.microsoft MatMulNBits (4 bits, blocks of 32,
 * symmetric: zero point 8, one float scale per column and block), as onnxruntime-genai's and
 * transformers.js's q4 files have it, and no new_key_values outputs.
 */
const q4 = (bytes: Uint8Array): Uint8Array => {
  const model = onnx.ModelProto.decode(bytes)
  const graph = model.graph!
  model.producerName = "onnxruntime-genai"
  model.opsetImport!.push({ domain: "com.microsoft", version: 1 })
  graph.output = graph.output!.filter((o) => !o.name!.startsWith("new_key_values."))
  const initializers = new Map(graph.initializer!.map((t) => [t.name!, t]))
  const blockSize = 32
  let quantized = 0
  graph.node = graph.node!.map((node) => {
    const weight = node.opType === "MatMul" ? initializers.get(node.input![1]!) : undefined
    if (weight === undefined || weight.dims!.length !== 2) return node
    const [k, n] = weight.dims!.map(Number) as [number, number]
    if (k % blockSize !== 0) return node
    const raw = weight.rawData!
    const w = new Float32Array(Uint8Array.from(raw).buffer)
    const blocks = k / blockSize
    const packed = new Uint8Array(n * blocks * (blockSize / 2))
    const scales = new Float32Array(n * blocks)
    for (let column = 0; column < n; column++) {
      for (let block = 0; block < blocks; block++) {
        let max = 0
        for (let j = 0; j < blockSize; j++) max = Math.max(max, Math.abs(w[(block * blockSize + j) * n + column]!))
        const scale = max / 7 || 1
        scales[column * blocks + block] = scale
        for (let j = 0; j < blockSize; j++) {
          const q = Math.min(15, Math.max(0, Math.round(w[(block * blockSize + j) * n + column]! / scale) + 8))
          const at = (column * blocks + block) * (blockSize / 2) + (j >> 1)
          packed[at] = packed[at]! | (j % 2 === 0 ? q : q << 4)
        }
      }
    }
    const name = weight.name!
    graph.initializer!.push(
      { name: `${name}.q4`, dims: [n, blocks, blockSize / 2], dataType: onnx.TensorProto.DataType.UINT8, rawData: packed },
      { name: `${name}.scales`, dims: [n * blocks], dataType: FLOAT, rawData: new Uint8Array(scales.buffer) }
    )
    quantized++
    const int = (attribute: string, i: number) => ({ name: attribute, i, type: onnx.AttributeProto.AttributeType.INT })
    return {
      opType: "MatMulNBits", domain: "com.microsoft", name: `${node.name}_q4`, input: [node.input![0]!, `${name}.q4`, `${name}.scales`], output: node.output,
      attribute: [int("K", k), int("N", n), int("bits", 4), int("block_size", blockSize)]
    }
  })
  const used = new Set(graph.node.flatMap((node) => node.input!))
  graph.initializer = graph.initializer!.filter((t) => used.has(t.name!))
  expect(quantized).toBeGreaterThan(0)
  return onnx.ModelProto.encode(model).finish()
}

/** transformers.js greedy generate() on each prompt alone, on the directory's graph for `dtype`. */
const generateEach = async (directory: string, dtype: "fp32" | "q4", prompts: ReadonlyArray<ReadonlyArray<number>>, stop: ReadonlyArray<number>, maxNewTokens: number) => {
  env.allowRemoteModels = false
  env.localModelPath = "/"
  const reference = await AutoModelForCausalLM.from_pretrained(directory, { local_files_only: true, dtype })
  try {
    const out: Array<Array<number>> = []
    for (const prompt of prompts) {
      const output = (await reference.generate({
        input_ids: new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]),
        max_new_tokens: maxNewTokens,
        do_sample: false,
        eos_token_id: [...stop]
      })) as Tensor
      out.push((output.tolist() as Array<Array<bigint>>)[0]!.slice(prompt.length).map(Number))
    }
    return out
  } finally {
    await reference.dispose()
  }
}

describe("a published q4 export (MatMulNBits), chosen by dtype as transformers.js chooses it", () => {
  it("decodes greedily through the actor, batched, as transformers.js generate() does with dtype q4", async () => {
    const source = await tinyModel()
    const directory = path.join(mkdtempSync(path.join(tmpdir(), "episodic-q4-")), "model")
    mkdirSync(path.join(directory, "onnx"), { recursive: true })
    for (const file of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]) copyFileSync(path.join(source, file), path.join(directory, file))
    const bytes = readFileSync(path.join(source, "onnx", "model.onnx"))
    writeFileSync(path.join(directory, "onnx", "model.onnx"), bytes)
    writeFileSync(path.join(directory, "onnx", "model_q4.onnx"), q4(bytes))
    expect(publishedGraph(directory, "q4")).toBe(path.join(directory, "onnx", "model_q4.onnx"))
    expect(() => publishedGraph(directory, "q4f16")).toThrow(/dtype "q4f16": onnx\/model_q4f16\.onnx is not in .* \(its graphs: model\.onnx, model_q4\.onnx\)/)

    const tokenizer = await loadTokenizer(directory)
    const prompts = [
      tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1). The treasure is at (2, 3)." }]),
      tokenizer.renderPrompt([{ role: "user", content: "Hi" }]),
      tokenizer.renderPrompt([{ role: "system", content: "Be brief." }, { role: "user", content: "What is 2 + 3?" }])
    ]
    const expected = await generateEach(directory, "q4", prompts, tokenizer.stopTokenIds, 12)
    expect(expected.flat().length).toBeGreaterThan(prompts.length)
    // Quantization changed the model: the fp32 graph decodes something else for at least one prompt.
    expect(await generateEach(directory, "fp32", prompts, tokenizer.stopTokenIds, 12)).not.toEqual(expected)
    const actor = await InferenceActor.start({ model: directory, threads: 1, dtype: "q4" })
    try {
      const sampling = new SamplingParams({ ...SamplingParams.greedy, maxNewTokens: 12 })
      const results = await Promise.all(prompts.map((prompt, i) =>
        actor.generate(new GenerationRequest({ episodeId: `e${i}`, turn: 0, contextIds: prompt, sampling, stopTokenIds: tokenizer.stopTokenIds, seed: 0 }))
      ))
      expect(results.map((r) => r.tokenIds)).toEqual(expected)
    } finally {
      await actor.close()
    }
  })
})

describe("a published export with float16 inputs and outputs", () => {
  it.each([
    { title: "plain decoder", cacheBranch: false },
    { title: "with the merged decoder's use_cache_branch input", cacheBranch: true }
  ])("$title: decodes greedily through the actor, batched, as transformers.js generate() does on the same file", async ({ cacheBranch }) => {
    const source = await tinyModel()
    const directory = path.join(mkdtempSync(path.join(tmpdir(), "episodic-fp16-io-")), "model")
    mkdirSync(path.join(directory, "onnx"), { recursive: true })
    for (const file of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]) copyFileSync(path.join(source, file), path.join(directory, file))
    writeFileSync(path.join(directory, "onnx", "model.onnx"), float16Io(readFileSync(path.join(source, "onnx", "model.onnx")), cacheBranch))
    expect(graphFor(directory).source).toBe("published")

    const tokenizer = await loadTokenizer(directory)
    const prompts = [
      tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1). The treasure is at (2, 3)." }]),
      tokenizer.renderPrompt([{ role: "user", content: "Hi" }]),
      tokenizer.renderPrompt([{ role: "system", content: "Be brief." }, { role: "user", content: "What is 2 + 3?" }])
    ]
    const maxNewTokens = 12
    env.allowRemoteModels = false
    env.localModelPath = "/"
    const reference = await AutoModelForCausalLM.from_pretrained(directory, { local_files_only: true, dtype: "fp32" })
    const expected: Array<Array<number>> = []
    try {
      for (const prompt of prompts) {
        const output = (await reference.generate({
          input_ids: new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]),
          max_new_tokens: maxNewTokens,
          do_sample: false,
          eos_token_id: [...tokenizer.stopTokenIds]
        })) as Tensor
        expected.push((output.tolist() as Array<Array<bigint>>)[0]!.slice(prompt.length).map(Number))
      }
    } finally {
      await reference.dispose()
    }

    expect(expected.flat().length).toBeGreaterThan(prompts.length)
    const actor = await InferenceActor.start({ model: directory, threads: 1 })
    try {
      const sampling = new SamplingParams({ ...SamplingParams.greedy, maxNewTokens })
      const results = await Promise.all(prompts.map((prompt, i) =>
        actor.generate(new GenerationRequest({ episodeId: `e${i}`, turn: 0, contextIds: prompt, sampling, stopTokenIds: tokenizer.stopTokenIds, seed: 0 }))
      ))
      expect(results.map((r) => r.tokenIds)).toEqual(expected)
      for (const result of results) for (const logprob of result.logprobs) expect(Number.isFinite(logprob) && logprob <= 0).toBe(true)
    } finally {
      await actor.close()
    }
  })
})
