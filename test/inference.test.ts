/**
 * The shared inference actor on the real tiny model: greedy decoding through continuous batching, with
 * episodes joining and leaving the batch at different times over several turns, gives exactly the tokens
 * transformers.js `generate()` gives for each conversation alone; recorded logprobs match a full forward
 * pass; prefix reuse prefills only new tokens; weights swap without dropping requests.
 */
import { AutoModelForCausalLM, env, type PreTrainedModel, Tensor } from "@huggingface/transformers"
import { Effect, Layer, Stream } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import { OnnxCausalLM } from "../actors/inference/OnnxCausalLM.ts"
import { makeSampler } from "../actors/inference/sampling.ts"
import { Engine } from "../src/Engine.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { gridQuest } from "../src/environments/gridQuest.ts"
import { GenerationRequest, SamplingParams } from "../src/Generation.ts"
import * as Safetensors from "../src/model/safetensors.ts"
import { load as loadTokenizer, Tokenizer, type ChatTokenizer } from "../src/Tokenizer.ts"
import type { Trajectory } from "../src/Trajectory.ts"
import { mulberry32 } from "../src/Seed.ts"
import { limits, tinyModel } from "./support.ts"

let directory: string
let tokenizer: ChatTokenizer
let reference: PreTrainedModel

beforeAll(async () => {
  directory = await tinyModel()
  tokenizer = await loadTokenizer(directory)
  env.allowRemoteModels = false
  env.localModelPath = "/"
  reference = await AutoModelForCausalLM.from_pretrained(directory, { local_files_only: true, dtype: "fp32" })
})

afterAll(async () => {
  await reference?.dispose()
})

/** transformers.js greedy generate() on one conversation, alone: the new token ids. */
const referenceGenerate = async (model: PreTrainedModel, context: ReadonlyArray<number>, maxNewTokens: number): Promise<Array<number>> => {
  const output = (await model.generate({
    input_ids: new Tensor("int64", BigInt64Array.from(context.map(BigInt)), [1, context.length]),
    max_new_tokens: maxNewTokens,
    do_sample: false,
    eos_token_id: [...tokenizer.stopTokenIds]
  })) as Tensor
  return (output.tolist() as Array<Array<bigint>>)[0]!.slice(context.length).map(Number)
}

const greedy = (maxNewTokens: number) => new SamplingParams({ ...SamplingParams.greedy, maxNewTokens })

const request = (episodeId: string, turn: number, contextIds: ReadonlyArray<number>, sampling: SamplingParams, seed = 0) =>
  new GenerationRequest({ episodeId, turn, contextIds: [...contextIds], sampling, stopTokenIds: tokenizer.stopTokenIds, seed })

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** Grid-quest episodes through the whole engine on the tiny model, greedy. */
const runEngine = async (rows: number, options: { maxBatchSize: number; concurrency: number }) =>
  Effect.runPromise(
    Effect.gen(function*() {
      const engine = yield* Engine
      return Array.from(yield* Stream.runCollect(engine.run(Stream.fromIterable(gridQuest.rows!({ seed: 3, count: rows, config: {} })))))
    }).pipe(
      Effect.provide(
        Engine.layer({
          environments: EnvironmentRegistry.builtins(),
          concurrency: options.concurrency,
          samplesPerRow: 1,
          limits: limits({ maxTurns: 4, maxNewTokens: 8 }),
          sampling: greedy(8),
          envCallTimeoutMs: 30_000,
          seed: 0,
          bufferCapacity: 64
        }).pipe(
          Layer.provideMerge(InferenceActor.layer({ model: directory, maxBatchSize: options.maxBatchSize })),
          Layer.provideMerge(Tokenizer.layer(directory))
        )
      )
    )
  )

/** Each assistant turn of a trajectory: the context it was generated from and the tokens it got. */
const assistantTurns = (trajectory: Trajectory) =>
  trajectory.turns
    .filter((turn) => turn.role === "assistant")
    .map((turn) => ({
      context: [...trajectory.promptIds, ...trajectory.responseIds.slice(0, turn.tokenStart)],
      tokens: trajectory.responseIds.slice(turn.tokenStart, turn.tokenEnd),
      logprobs: trajectory.responseLogprobs.slice(turn.tokenStart, turn.tokenEnd)
    }))

describe("greedy decoding through the actor", () => {
  let trajectories: Array<Trajectory>
  beforeAll(async () => {
    // 20 episodes through a batch of 6: requests queue, join as rows free up, and leave when their turn ends.
    trajectories = await runEngine(20, { maxBatchSize: 6, concurrency: 20 })
  })

  it("gives exactly the tokens transformers.js generate() gives each conversation alone, turn after turn", async () => {
    expect(trajectories).toHaveLength(20)
    let turns = 0
    for (const trajectory of trajectories) {
      expect(trajectory.finishReason).not.toBe("inference_error")
      for (const turn of assistantTurns(trajectory)) {
        expect(turn.tokens).toEqual(await referenceGenerate(reference, turn.context, 8))
        turns++
      }
    }
    expect(turns).toBeGreaterThanOrEqual(60)
  })

  it("records the logprobs a full forward pass of the whole sequence gives", async () => {
    const model = await OnnxCausalLM.load(directory)
    const { vocabSize, numLayers, kvHeads, headDim } = model.shape
    let largest = 0
    for (const trajectory of trajectories.slice(0, 5)) {
      const ids = [...trajectory.promptIds, ...trajectory.responseIds]
      const n = ids.length
      const empty = Array.from({ length: numLayers }, () => new Float32Array(0))
      const { logits } = await model.forward({
        batch: 1, sequenceLength: n, pastLength: 0,
        inputIds: BigInt64Array.from(ids.map(BigInt)),
        positionIds: BigInt64Array.from(ids.map((_, i) => BigInt(i))),
        attentionMask: new BigInt64Array(n).fill(1n),
        pastKeys: empty, pastValues: empty
      })
      void kvHeads, headDim
      trajectory.responseIds.forEach((token, i) => {
        if (trajectory.responseMask[i] !== 1) return
        const at = trajectory.promptIds.length + i - 1
        const row = logits.subarray(at * vocabSize, (at + 1) * vocabSize)
        const max = Math.max(...row)
        const logSum = max + Math.log(row.reduce((sum, value) => sum + Math.exp(value - max), 0))
        largest = Math.max(largest, Math.abs(row[token]! - logSum - trajectory.responseLogprobs[i]!))
      })
    }
    await model.release()
    expect(largest).toBeLessThan(1e-4)
  })
})

describe("the actor's batching and caches", () => {
  /** Several multi-turn conversations with different lengths and arrival times; returns every turn. */
  const staggered = async (actor: InferenceActor, episodes: number) => {
    const random = mulberry32(11)
    const turns: Array<{ context: Array<number>; tokens: ReadonlyArray<number>; maxNewTokens: number; version: number }> = []
    await Promise.all(Array.from({ length: episodes }, async (_, e) => {
      let context = tokenizer.renderPrompt([{ role: "user", content: `You are at (${e % 5}, ${(e * 3) % 5}). Go.` }])
      for (let turn = 0; turn < 3; turn++) {
        await sleep(Math.floor(random() * 30))
        const maxNewTokens = 1 + Math.floor(random() * 12)
        const result = await actor.generate(request(`s${e}`, turn, context, greedy(maxNewTokens)))
        turns.push({ context, tokens: result.tokenIds, maxNewTokens, version: result.policyVersion })
        context = [...context, ...result.tokenIds, ...tokenizer.appendMessage({ role: "user", content: `Unknown command. ${9 - turn} steps left.` }, result.tokenIds)]
      }
    }))
    return turns
  }

  it("matches generate() with staggered arrivals and lengths, and prefills only new tokens", async () => {
    const actor = await InferenceActor.start({ model: directory, maxBatchSize: 4 })
    try {
      const turns = await staggered(actor, 10)
      for (const turn of turns) expect(turn.tokens).toEqual(await referenceGenerate(reference, turn.context, turn.maxNewTokens))
      const stats = await actor.stats()
      expect(stats.prefillTokens).toBe(stats.newTokens)
      const contextTokens = turns.reduce((sum, turn) => sum + turn.context.length, 0)
      expect(stats.prefillTokens).toBeLessThan(contextTokens * 0.6)
      expect(stats.evictions).toBe(0)
    } finally {
      await actor.close()
    }
  })

  it("re-prefills evicted episodes transparently when the cache budget is small", async () => {
    const actor = await InferenceActor.start({ model: directory, maxBatchSize: 4, cacheBudgetBytes: 200_000 })
    try {
      const turns = await staggered(actor, 8)
      for (const turn of turns) expect(turn.tokens).toEqual(await referenceGenerate(reference, turn.context, turn.maxNewTokens))
      const stats = await actor.stats()
      expect(stats.evictions).toBeGreaterThan(0)
      expect(stats.prefillTokens).toBeGreaterThan(stats.newTokens)
    } finally {
      await actor.close()
    }
  })

  it("lets a short request finish while a long one is still decoding", async () => {
    const actor = await InferenceActor.start({ model: directory, maxBatchSize: 8 })
    try {
      const prompt = tokenizer.renderPrompt([{ role: "user", content: "Hello" }])
      const finished: Array<string> = []
      const long = actor.generate(request("long", 0, prompt, greedy(300))).then(() => finished.push("long"))
      await sleep(20)
      const short = actor.generate(request("short", 0, prompt, greedy(2))).then(() => finished.push("short"))
      await Promise.all([long, short])
      expect(finished).toEqual(["short", "long"])
    } finally {
      await actor.close()
    }
  })

  it("swaps weights between steps without dropping requests, and records the new version", async () => {
    const actor = await InferenceActor.start({ model: directory, maxBatchSize: 8 })
    const other = await tinyModel(1)
    try {
      const prompt = tokenizer.renderPrompt([{ role: "user", content: "You are at (0, 0). The treasure is at (4, 4)." }])
      const inFlight = Array.from({ length: 4 }, (_, i) => actor.generate(request(`w${i}`, 0, prompt, greedy(200))))
      await sleep(30)
      await actor.updateWeights(Safetensors.read(path.join(other, "model.safetensors")), 1)
      const results = await Promise.all(inFlight)
      for (const result of results) expect(result.tokenIds).toHaveLength(200)
      const after = await actor.generate(request("after", 0, prompt, greedy(10)))
      expect(after.policyVersion).toBe(1)
      const otherModel = await AutoModelForCausalLM.from_pretrained(other, { local_files_only: true, dtype: "fp32" })
      expect(after.tokenIds).toEqual(await referenceGenerate(otherModel, prompt, 10))
      await otherModel.dispose()
    } finally {
      await actor.close()
    }
  })

  it("reproduces a sampled turn from its seed", async () => {
    const actor = await InferenceActor.start({ model: directory })
    try {
      const prompt = tokenizer.renderPrompt([{ role: "user", content: "Hello" }])
      const sampled = new SamplingParams({ ...SamplingParams.defaults, temperature: 1, topK: 50, topP: 0.9, maxNewTokens: 24 })
      const [a, b, c] = await Promise.all([
        actor.generate(request("a", 0, prompt, sampled, 42)),
        actor.generate(request("b", 0, prompt, sampled, 42)),
        actor.generate(request("c", 0, prompt, sampled, 43))
      ])
      expect(a!.tokenIds).toEqual(b!.tokenIds)
      a!.logprobs.forEach((logprob, i) => expect(logprob).toBeCloseTo(b!.logprobs[i]!, 5))
      expect(c!.tokenIds).not.toEqual(a!.tokenIds)
    } finally {
      await actor.close()
    }
  })

  it("refuses bad requests with the reason, and keeps serving", async () => {
    const actor = await InferenceActor.start({ model: directory })
    try {
      await expect(actor.generate(request("bad", 0, [1, 99_999], greedy(4)))).rejects.toThrow(/token id 99999 is outside the vocabulary/)
      await expect(actor.generate(request("long", 0, new Array(5000).fill(5), greedy(4)))).rejects.toThrow(/5000 tokens does not fit/)
      const ok = await actor.generate(request("ok", 0, tokenizer.renderPrompt([{ role: "user", content: "Hi" }]), greedy(3)))
      expect(ok.tokenIds.length).toBeGreaterThan(0)
    } finally {
      await actor.close()
    }
  })

  it("runs on the CPU when CUDA is asked for but not installed, and says so", async () => {
    const actor = await InferenceActor.start({ model: directory, provider: "cuda" })
    try {
      if (actor.info.provider === "cpu") expect(actor.info.fallback).toMatch(/CUDA unavailable/)
      else expect(actor.info.fallback).toBeUndefined()
      const ok = await actor.generate(request("cuda", 0, tokenizer.renderPrompt([{ role: "user", content: "Hi" }]), greedy(3)))
      expect(ok.tokenIds.length).toBeGreaterThan(0)
    } finally {
      await actor.close()
    }
  })
})

describe("sampling", () => {
  const logits = Float32Array.of(2, 1, 0.5, -1, 0)
  const logSoftmax = (values: ReadonlyArray<number>, i: number) => values[i]! - Math.log(values.reduce((s, v) => s + Math.exp(v), 0))
  /** What the graph's sampling head gives: softmax(logits / temperature), as float32. */
  const softmax = (values: Float32Array, temperature = 1) => Float32Array.from(values, (_, i) => Math.exp(logSoftmax([...values].map((v) => v / temperature), i)))

  it("greedy takes the argmax and records the model's logprob", () => {
    const sample = makeSampler({ temperature: 0, topK: 0, topP: 1 }, 0)(logits, softmax(logits))
    expect(sample.token).toBe(0)
    expect(sample.logprob).toBeCloseTo(logSoftmax([...logits], 0), 6)
  })

  it("records the logprob under softmax(logits / temperature)", () => {
    const sampler = makeSampler({ temperature: 0.5, topK: 0, topP: 1 }, 3)
    const scaled = [...logits].map((v) => v / 0.5)
    for (let i = 0; i < 20; i++) {
      const sample = sampler(logits, softmax(logits, 0.5))
      expect(sample.logprob).toBeCloseTo(logSoftmax(scaled, sample.token), 6)
    }
  })

  it("top-k keeps the k likeliest and renormalises over them", () => {
    const sampler = makeSampler({ temperature: 1, topK: 2, topP: 1 }, 9)
    const seen = new Set<number>()
    for (let i = 0; i < 200; i++) {
      const sample = sampler(logits, softmax(logits))
      seen.add(sample.token)
      const kept = Math.log(Math.exp(2) + Math.exp(1))
      expect(sample.logprob).toBeCloseTo(logits[sample.token]! - kept, 6)
    }
    expect([...seen].sort()).toEqual([0, 1])
  })

  it("the graph's sampling head draws, for each uniform number u, the first token whose cumulative probability passes u, and records its logprob", async () => {
    const model = await OnnxCausalLM.load(directory, { threads: 1 })
    try {
      const { numLayers, vocabSize } = model.shape
      expect(model.drawsInGraph).toBe(true)
      const batch = 64
      // Evenly spread u, one near 1 (u times the total may round up to the total), several temperatures.
      const uniforms = Float32Array.from({ length: batch }, (_, b) => (b === batch - 1 ? 1 - 2 ** -24 : (b + 0.5) / batch))
      const temperatures = Float32Array.from({ length: batch }, (_, b) => [0.5, 1, 1.7, 40][b % 4]!)
      const empty = Array.from({ length: numLayers }, () => new Float32Array(0))
      const out = await model.forward({
        batch, sequenceLength: 1, pastLength: 0,
        inputIds: BigInt64Array.from({ length: batch }, (_, b) => BigInt((b * 7) % vocabSize)),
        positionIds: new BigInt64Array(batch),
        attentionMask: new BigInt64Array(batch).fill(1n),
        pastKeys: empty, pastValues: empty, temperatures, uniforms
      })
      const tokens = new Set<number>()
      for (let b = 0; b < batch; b++) {
        const probs = out.probs.subarray(b * vocabSize, (b + 1) * vocabSize)
        const token = Number(out.draws!.tokens[b])
        tokens.add(token)
        // The same inverse CDF in float64 over the head's probabilities: u's place must fall in the token's interval.
        let before = 0
        for (let i = 0; i < token; i++) before += probs[i]!
        const total = probs.reduce((sum, p) => sum + p, 0)
        const threshold = uniforms[b]! * total
        expect(probs[token]!).toBeGreaterThan(0)
        if (b < batch - 1) {
          expect(before).toBeLessThanOrEqual(threshold + 1e-6)
          expect(before + probs[token]!).toBeGreaterThan(threshold - 1e-6)
        }
        expect(out.draws!.logprobs[b]!).toBeCloseTo(Math.log(probs[token]! / total), 5)
      }
      // The draws follow u across the vocabulary, not one likeliest token.
      expect(tokens.size).toBeGreaterThan(20)
    } finally {
      await model.release()
    }
  })

  it("top-p keeps the smallest set reaching p", () => {
    // Probabilities 0.5, 0.3, 0.2: p = 0.7 keeps the first two.
    const probs = Float32Array.of(Math.log(0.5), Math.log(0.3), Math.log(0.2))
    const sampler = makeSampler({ temperature: 1, topK: 0, topP: 0.7 }, 1)
    const seen = new Set<number>()
    for (let i = 0; i < 200; i++) {
      const sample = sampler(probs, softmax(probs))
      seen.add(sample.token)
      expect(sample.logprob).toBeCloseTo(Math.log(sample.token === 0 ? 0.5 / 0.8 : 0.3 / 0.8), 5)
    }
    expect([...seen].sort()).toEqual([0, 1])
  })
})
