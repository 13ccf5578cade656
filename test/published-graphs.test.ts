/**
 * Published graph families the actor runs for generation, each as a fixture written with onnx-proto
 * (test/published-fixtures.ts) from the tiny model's weights or graph: onnxruntime-genai's GroupQueryAttention
 * graphs (rotary fused into the attention, or separate RotaryEmbedding nodes; both need the scheduler's
 * right-padded layout), optimum's merged decoder (an `If` on use_cache_branch), transformers.js's q8 file
 * (MatMulInteger) chosen by `dtype: "q8"`, and graphs without position_ids (positions from the mask, or
 * counted by column).
 *
 * For each: two turns of three conversations, batched through the actor (the second turn continues each
 * episode's cache), give exactly the tokens transformers.js `generate()` gives on the same file for each
 * conversation alone, and the same tokens and logprobs (within 1e-4) as the actor decoding one request at
 * a time.
 */
import { AutoModelForCausalLM, env, Tensor } from "@huggingface/transformers"
import { describe, expect, it } from "vitest"
import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import { layoutFor, OnnxCausalLM } from "../actors/inference/OnnxCausalLM.ts"
import { GenerationRequest, SamplingParams } from "../src/Generation.ts"
import { readConfig } from "../src/model/config.ts"
import { publishedGraph } from "../src/model/huggingFace.ts"
import { readModel } from "../src/model/safetensors.ts"
import { load as loadTokenizer } from "../src/Tokenizer.ts"
import { fullForward } from "./reference.ts"
import { bnb4Graph, genaiGraph, mergedDecoder, nBitsGraph, q8Graph, withExternalData, withoutPositionIds } from "./published-fixtures.ts"
import { tinyModel } from "./support.ts"

type Dtype = "fp32" | "q8" | "q2" | "bnb4"

/** A model directory of the tiny model's config and tokenizer with the given onnx/ files. */
const directoryWith = async (files: Record<string, Uint8Array>): Promise<string> => {
  const source = await tinyModel()
  const directory = path.join(mkdtempSync(path.join(tmpdir(), "episodic-published-")), "model")
  mkdirSync(path.join(directory, "onnx"), { recursive: true })
  for (const file of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]) copyFileSync(path.join(source, file), path.join(directory, file))
  for (const [name, bytes] of Object.entries(files)) writeFileSync(path.join(directory, "onnx", name), bytes)
  return directory
}

/** transformers.js greedy generate() on each context alone. */
const generateEach = async (directory: string, dtype: Dtype, contexts: ReadonlyArray<ReadonlyArray<number>>, stop: ReadonlyArray<number>, maxNewTokens: number) => {
  env.allowRemoteModels = false
  env.localModelPath = "/"
  const reference = await AutoModelForCausalLM.from_pretrained(directory, { local_files_only: true, dtype })
  try {
    const out: Array<Array<number>> = []
    for (const context of contexts) {
      const output = (await reference.generate({
        input_ids: new Tensor("int64", BigInt64Array.from(context.map(BigInt)), [1, context.length]),
        max_new_tokens: maxNewTokens,
        do_sample: false,
        eos_token_id: [...stop]
      })) as Tensor
      out.push((output.tolist() as Array<Array<bigint>>)[0]!.slice(context.length).map(Number))
    }
    return out
  } finally {
    await reference.dispose()
  }
}

/**
 * transformers.js greedy generate() over two turns of each conversation alone, the second continuing the
 * first's cache (generate() with past_key_values runs only the tokens the cache lacks), as the actor does.
 */
const generateTurns = async (
  directory: string,
  dtype: Dtype,
  prompts: ReadonlyArray<ReadonlyArray<number>>,
  observations: ReadonlyArray<ReadonlyArray<number>>,
  stop: ReadonlyArray<number>,
  maxNewTokens: number
) => {
  env.allowRemoteModels = false
  env.localModelPath = "/"
  const reference = await AutoModelForCausalLM.from_pretrained(directory, { local_files_only: true, dtype })
  const ids = (context: ReadonlyArray<number>) => new Tensor("int64", BigInt64Array.from(context.map(BigInt)), [1, context.length])
  try {
    const first: Array<Array<number>> = []
    const second: Array<Array<number>> = []
    for (const [i, prompt] of prompts.entries()) {
      const one = (await reference.generate({ input_ids: ids(prompt), max_new_tokens: maxNewTokens, do_sample: false, eos_token_id: [...stop], return_dict_in_generate: true })) as unknown as { sequences: Tensor; past_key_values: { dispose(): Promise<void> } }
      const tokens = (one.sequences.tolist() as Array<Array<bigint>>)[0]!.slice(prompt.length).map(Number)
      first.push(tokens)
      const context = [...prompt, ...tokens, ...observations[i]!]
      const two = (await reference.generate({
        input_ids: ids(context), attention_mask: new Tensor("int64", new BigInt64Array(context.length).fill(1n), [1, context.length]),
        past_key_values: one.past_key_values, max_new_tokens: maxNewTokens, do_sample: false, eos_token_id: [...stop]
      } as unknown as Parameters<typeof reference.generate>[0])) as Tensor
      second.push((two.tolist() as Array<Array<bigint>>)[0]!.slice(context.length).map(Number))
      await one.past_key_values.dispose()
    }
    return { first, second }
  } finally {
    await reference.dispose()
  }
}

const MAX_NEW = 12

/**
 * Two turns of three conversations through the actor, batched and one at a time, against transformers.js.
 * Returns the batched first turn's tokens (so a caller can tell two files apart).
 */
const decodesLikeTransformersJs = async (directory: string, dtype: Dtype | undefined) => {
  const tokenizer = await loadTokenizer(directory)
  const stop = tokenizer.stopTokenIds
  const prompts = [
    tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1). The treasure is at (2, 3)." }]),
    tokenizer.renderPrompt([{ role: "user", content: "Hi" }]),
    tokenizer.renderPrompt([{ role: "system", content: "Be brief." }, { role: "user", content: "What is 2 + 3?" }])
  ]
  const observations = ["Wrong, try again.", "ok", "You moved north. You are at (1, 2)."].map((text) => tokenizer.encode(`\n${text}\n`))
  const { first: expectedFirst, second: expectedSecond } = await generateTurns(directory, dtype ?? "fp32", prompts, observations, stop, MAX_NEW)
  expect(expectedFirst.flat().length).toBeGreaterThan(prompts.length)
  const secondContexts = prompts.map((prompt, i) => [...prompt, ...expectedFirst[i]!, ...observations[i]!])
  // A float graph gives the same second turn from scratch; a q8 one need not (its activations are quantized
  // per forward pass, over whichever tokens that pass runs), so there the cached continuation is the reference.
  if (dtype !== "q8") expect(await generateEach(directory, dtype ?? "fp32", secondContexts, stop, MAX_NEW)).toEqual(expectedSecond)

  const sampling = new SamplingParams({ ...SamplingParams.greedy, maxNewTokens: MAX_NEW })
  const request = (i: number, turn: number, contextIds: ReadonlyArray<number>) =>
    new GenerationRequest({ episodeId: `e${i}`, turn, contextIds: [...contextIds], sampling, stopTokenIds: stop, seed: 0 })
  const run = async (maxBatchSize: number) => {
    const actor = await InferenceActor.start({ model: directory, threads: 1, maxBatchSize, ...(dtype === undefined ? {} : { dtype }) })
    try {
      const turn = (contexts: ReadonlyArray<ReadonlyArray<number>>, t: number) =>
        maxBatchSize > 1
          ? Promise.all(contexts.map((context, i) => actor.generate(request(i, t, context))))
          : contexts.reduce<Promise<Array<Awaited<ReturnType<typeof actor.generate>>>>>(async (done, context, i) => [...(await done), await actor.generate(request(i, t, context))], Promise.resolve([]))
      const first = await turn(prompts, 0)
      const second = await turn(prompts.map((prompt, i) => [...prompt, ...first[i]!.tokenIds, ...observations[i]!]), 1)
      return { first, second, stats: await actor.stats() }
    } finally {
      await actor.close()
    }
  }
  const batched = await run(64)
  expect(batched.first.map((r) => r.tokenIds)).toEqual(expectedFirst)
  expect(batched.second.map((r) => r.tokenIds)).toEqual(expectedSecond)
  // The second turn ran over each episode's cache: only its observation (and the last sampled token) was prefilled.
  const contextTokens = [...prompts, ...secondContexts].reduce((sum, c) => sum + c.length, 0)
  expect(batched.stats.prefillTokens).toBeLessThan(contextTokens - prompts.reduce((sum, p) => sum + p.length, 0))
  const alone = await run(1)
  expect(alone.first.map((r) => r.tokenIds)).toEqual(expectedFirst)
  expect(alone.second.map((r) => r.tokenIds)).toEqual(expectedSecond)
  for (const [a, b] of [[batched.first, alone.first], [batched.second, alone.second]] as const) {
    a.forEach((result, i) => result.logprobs.forEach((logprob, j) => {
      expect(Number.isFinite(logprob) && logprob <= 0).toBe(true)
      expect(Math.abs(logprob - b[i]!.logprobs[j]!)).toBeLessThan(1e-4)
    }))
  }
  return batched.first.map((r) => r.tokenIds)
}

describe("onnxruntime-genai graphs (com.microsoft GroupQueryAttention, right-padded caches)", () => {
  it.each([
    { rotary: "fused" as const, title: "rotary fused into GroupQueryAttention (do_rotary, cos_cache / sin_cache, no position_ids)" },
    { rotary: "separate" as const, title: "separate com.microsoft RotaryEmbedding nodes fed position_ids" }
  ])("$title: decodes as transformers.js generate() does, batched and one at a time", async ({ rotary }) => {
    const source = await tinyModel()
    const bytes = genaiGraph(readConfig(source), readModel(source), { rotary })
    expect(layoutFor(bytes)).toBe("right")
    const directory = await directoryWith({ "model.onnx": bytes })
    // The fixture computes the tiny model's function: its logits match episodic's own graph of the same weights.
    const [genai, own] = await Promise.all([OnnxCausalLM.load(directory, { threads: 1 }), OnnxCausalLM.load(source, { threads: 1 })])
    try {
      expect(genai.layout).toBe("right")
      expect(genai.positionLimit).toBe(readConfig(source).maxPositions)
      const ids = [5, 17, 99, 3, 250, 7, 7, 41]
      const [a, b] = await Promise.all([fullForward(genai, ids), fullForward(own, ids)])
      let worst = 0
      for (let i = 0; i < a.length; i++) worst = Math.max(worst, Math.abs(a[i]! - b[i]!))
      expect(worst).toBeLessThan(1e-4)
    } finally {
      await Promise.all([genai.release(), own.release()])
    }
    await decodesLikeTransformersJs(directory, undefined)
  }, 120_000)

  it("refuses to run a GroupQueryAttention graph left-padded, in one line", async () => {
    const source = await tinyModel()
    const directory = await directoryWith({ "model.onnx": genaiGraph(readConfig(source), readModel(source), { rotary: "fused" }) })
    await expect(OnnxCausalLM.load(directory, { threads: 1, layout: "left" })).rejects.toThrow(/GroupQueryAttention graph needs right padding/)
  })
})

describe("optimum's merged decoder (an If on use_cache_branch)", () => {
  it("decodes as transformers.js generate() does, batched and one at a time", async () => {
    const source = await tinyModel()
    const bytes = mergedDecoder(readFileSync(path.join(source, "onnx", "model.onnx")))
    const directory = await directoryWith({ "model.onnx": bytes })
    await decodesLikeTransformersJs(directory, undefined)
  }, 120_000)
})

describe("transformers.js's q8 file (DynamicQuantizeLinear + MatMulInteger), chosen by dtype q8", () => {
  it("decodes as transformers.js generate() does with dtype q8, batched and one at a time, and differently from fp32", async () => {
    const source = await tinyModel()
    const plain = readFileSync(path.join(source, "onnx", "model.onnx"))
    const q8 = q8Graph(plain)
    expect(q8.matMuls).toBeGreaterThan(10)
    expect(q8.gathers).toBe(1)
    const directory = await directoryWith({ "model.onnx": plain, "model_quantized.onnx": q8.bytes })
    expect(publishedGraph(directory, "q8")).toBe(path.join(directory, "onnx", "model_quantized.onnx"))
    const model = await OnnxCausalLM.load(directory, { threads: 1, dtype: "q8" })
    expect(model.rowsAlone).toBe("quantized activations")
    await model.release()
    const quantized = await decodesLikeTransformersJs(directory, "q8")
    // Quantization changed the model, so the test sees which file ran.
    const tokenizer = await loadTokenizer(directory)
    const prompts = [
      tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1). The treasure is at (2, 3)." }]),
      tokenizer.renderPrompt([{ role: "user", content: "Hi" }]),
      tokenizer.renderPrompt([{ role: "system", content: "Be brief." }, { role: "user", content: "What is 2 + 3?" }])
    ]
    expect(await generateEach(directory, "fp32", prompts, tokenizer.stopTokenIds, MAX_NEW)).not.toEqual(quantized)
  }, 180_000)
})

describe.each([
  { dtype: "q2" as const, file: "model_q2.onnx", title: "a q2 file (2-bit MatMulNBits)", make: (plain: Uint8Array) => nBitsGraph(plain, 2) },
  { dtype: "bnb4" as const, file: "model_bnb4.onnx", title: "a bnb4 file (MatMulBnb4, NF4)", make: bnb4Graph }
])("$title, chosen by dtype $dtype", ({ dtype, file, make }) => {
  it("decodes as transformers.js generate() does with the same dtype, batched and one at a time, and differently from fp32", async () => {
    const source = await tinyModel()
    const plain = readFileSync(path.join(source, "onnx", "model.onnx"))
    const made = make(plain)
    expect(made.quantized).toBeGreaterThan(10)
    const directory = await directoryWith({ "model.onnx": plain, [file]: made.bytes })
    expect(publishedGraph(directory, dtype)).toBe(path.join(directory, "onnx", file))
    const quantized = await decodesLikeTransformersJs(directory, dtype)
    const tokenizer = await loadTokenizer(directory)
    const prompts = [
      tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1). The treasure is at (2, 3)." }]),
      tokenizer.renderPrompt([{ role: "user", content: "Hi" }]),
      tokenizer.renderPrompt([{ role: "system", content: "Be brief." }, { role: "user", content: "What is 2 + 3?" }])
    ]
    expect(await generateEach(directory, "fp32", prompts, tokenizer.stopTokenIds, MAX_NEW)).not.toEqual(quantized)
  }, 180_000)
})

describe("graphs without position_ids", () => {
  it.each([
    { from: "mask" as const, rowsAlone: undefined, title: "positions from attention_mask (cumsum, as transformers derives them): batched, left-padded with gaps" },
    { from: "layout" as const, rowsAlone: "positions from the layout", title: "positions counted by column: detected at load, each row runs alone and unpadded" }
  ])("$title; decodes as transformers.js generate() does, batched and one at a time", async ({ from, rowsAlone }) => {
    const source = await tinyModel()
    const bytes = withoutPositionIds(readFileSync(path.join(source, "onnx", "model.onnx")), from)
    const directory = await directoryWith({ "model.onnx": bytes })
    const model = await OnnxCausalLM.load(directory, { threads: 1 })
    expect(model.layout).toBe("left")
    expect(model.rowsAlone).toBe(rowsAlone)
    await model.release()
    await decodesLikeTransformersJs(directory, undefined)
  }, 120_000)
})

describe("external data files (model.onnx + model.onnx_data, as exports over 2 GB ship)", () => {
  it.each([
    { title: "a graph the actor only gives its sampling head (optimum's merged decoder)", make: (bytes: Uint8Array) => mergedDecoder(bytes) },
    { title: "a graph the actor also cuts to its new keys and values (episodic's own)", make: (bytes: Uint8Array) => bytes }
  ])("$title decodes exactly as the same graph with its weights inside", async ({ make }) => {
    const source = await tinyModel()
    const inside = make(readFileSync(path.join(source, "onnx", "model.onnx")))
    const { graph, data, moved } = withExternalData(inside, "model.onnx_data")
    expect(moved).toBeGreaterThan(10)
    // The weights really are outside: the graph file keeps only where they are.
    expect(graph.length).toBeLessThan(inside.length / 20)
    const embedded = await directoryWith({ "model.onnx": inside })
    const external = await directoryWith({ "model.onnx": graph, "model.onnx_data": data })
    const tokenizer = await loadTokenizer(embedded)
    const contexts = [
      tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1). The treasure is at (2, 3)." }]),
      tokenizer.renderPrompt([{ role: "user", content: "Hi" }])
    ]
    const sampling = new SamplingParams({ ...SamplingParams.greedy, temperature: 1, maxNewTokens: MAX_NEW })
    // One request at a time: two at once share steps as their messages happen to arrive, and the batch's
    // padding then moves the logits' last bits (attention sums over padded columns too), which is not what
    // this compares.
    const play = async (directory: string) => {
      const actor = await InferenceActor.start({ model: directory, threads: 1 })
      try {
        const results = []
        for (const [i, contextIds] of contexts.entries()) {
          results.push(await actor.generate(new GenerationRequest({ episodeId: `e${i}`, turn: 0, contextIds, sampling, stopTokenIds: tokenizer.stopTokenIds, seed: 7 + i })))
        }
        return results
      } finally {
        await actor.close()
      }
    }
    const [a, b] = [await play(embedded), await play(external)]
    expect(b.map((r) => r.tokenIds)).toEqual(a.map((r) => r.tokenIds))
    expect(b.map((r) => r.logprobs)).toEqual(a.map((r) => r.logprobs))
    expect(a.flatMap((r) => r.tokenIds).length).toBeGreaterThan(4)
  }, 120_000)
})
