/**
 * The batch scheduler on the real tiny model, driven directly (no worker): sequences that once corrupted
 * the KV buffer or lost requests, each checked against a cache-free forward pass of the exact sequence.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BatchScheduler, type SchedulerRequest, type SchedulerResult } from "../actors/inference/BatchScheduler.ts"
import { OnnxCausalLM } from "../actors/inference/OnnxCausalLM.ts"
import { fullForward, isArgmax, sampledLogprob } from "./reference.ts"
import { tinyModel } from "./support.ts"

let directory: string
let model: OnnxCausalLM
let reference: OnnxCausalLM

beforeAll(async () => {
  directory = await tinyModel()
  model = await OnnxCausalLM.load(directory, { threads: 1 })
  reference = await OnnxCausalLM.load(directory, { threads: 1 })
})

afterAll(async () => {
  await model?.release()
  await reference?.release()
})

const greedyRequest = (episodeId: string, contextIds: ReadonlyArray<number>, maxNewTokens: number): SchedulerRequest => ({
  episodeId, contextIds, temperature: 0, topK: 0, topP: 1, maxNewTokens, stop: [], stopTokenIds: [], seed: 0
})

/** The largest difference between recorded logprobs and a full forward pass; every token must be the argmax there. */
const worstDifference = async (request: SchedulerRequest, result: SchedulerResult): Promise<number> => {
  const ids = [...request.contextIds, ...result.tokenIds]
  const logits = await fullForward(reference, ids)
  const vocab = model.shape.vocabSize
  let worst = 0
  result.tokenIds.forEach((token, i) => {
    const row = logits.subarray((request.contextIds.length + i - 1) * vocab, (request.contextIds.length + i) * vocab)
    worst = Math.max(worst, Math.abs(sampledLogprob(row, token, request)! - result.logprobs[i]!))
    expect(isArgmax(row, token, 1e-4)).toBe(true)
  })
  return worst
}

const context = (seed: number, length: number) => Array.from({ length }, (_, i) => 3 + ((seed * 31 + i * 7) % 200))

describe("the batch scheduler's KV buffer", () => {
  it("keeps every row inside the buffer when all rows leave on the step that fills it", async () => {
    // Max batch 4: a one-token request starts the loop; eight requests with 10-token contexts and
    // maxNewTokens 33 arrive meanwhile. The first four fill the buffer's 32 columns of headroom exactly and
    // all leave on that step; the next four must not be placed at the full buffer's end.
    const scheduler = new BatchScheduler(model, { maxBatchSize: 4, maxPrefillTokens: 4096, cacheBudgetBytes: 1 << 26, maxPositions: 1024 })
    const starter = greedyRequest("starter", [5], 1)
    const requests = Array.from({ length: 8 }, (_, i) => greedyRequest(`e${i}`, context(i, 10), 33))
    const settled = await Promise.allSettled([starter, ...requests].map((request) => scheduler.generate(request)))
    await scheduler.close()
    const failures = settled.flatMap((s) => (s.status === "rejected" ? [String(s.reason)] : []))
    expect(failures).toEqual([])
    for (const [i, request] of requests.entries()) {
      const result = (settled[i + 1] as PromiseFulfilledResult<SchedulerResult>).value
      expect(result.tokenIds).toHaveLength(33)
      expect(await worstDifference(request, result)).toBeLessThan(1e-4)
    }
  })
})

/**
 * The tiny model behind a switch: `fault` decides, per forward pass (counted from 1), whether that pass
 * throws, returns outputs of the wrong size (a copy that cannot be done), or never returns.
 */
const faulty = (fault: (call: number) => "throw" | "short" | "hang" | undefined) => {
  let calls = 0
  return {
    shape: model.shape,
    directory: model.directory,
    reload: (bytes: Uint8Array) => model.reload(bytes),
    forward: async (inputs: Parameters<OnnxCausalLM["forward"]>[0]) => {
      const kind = fault(++calls)
      if (kind === "throw") throw new Error(`injected failure in forward pass ${calls}`)
      if (kind === "hang") return new Promise<never>(() => undefined)
      const out = await model.forward(inputs)
      return kind === "short" ? { ...out, newKeys: out.newKeys.map((k) => k.subarray(0, k.length - 1)) } : out
    }
  } as unknown as OnnxCausalLM
}

const options = { maxBatchSize: 4, maxPrefillTokens: 4096, cacheBudgetBytes: 1 << 26, maxPositions: 1024 }

describe("the batch scheduler when something fails", () => {
  const busyBatch = (prefix: string) => Array.from({ length: 10 }, (_, i) => greedyRequest(`${prefix}${i}`, context(i, 5 + i), 20))

  for (const kind of ["throw", "short"] as const) {
    it(`fails every request it holds at once when a forward pass ${kind === "throw" ? "throws" : "returns outputs of the wrong size"}, then serves the next ones exactly`, async () => {
      // Ten requests on a batch of four: when the 6th pass fails, four are running and the rest are queued.
      const scheduler = new BatchScheduler(faulty((call) => (call === 6 ? kind : undefined)), options)
      const started = performance.now()
      const settled = await Promise.allSettled(busyBatch("a").map((request) => scheduler.generate(request)))
      expect(performance.now() - started).toBeLessThan(10_000)
      const reasons = settled.map((s) => (s.status === "rejected" ? String(s.reason) : "resolved"))
      expect(reasons.every((reason) => reason !== "resolved")).toBe(true)
      expect(reasons[0]).toMatch(kind === "throw" ? /inference failed: injected failure in forward pass 6/ : /inference failed: the model's .* returned .* numbers of layer 0's new keys/)
      expect(scheduler.inFlight).toBe(0)
      expect(scheduler.stats.failures).toBe(1)
      // The actor starts clean: the next requests decode exactly.
      const next = busyBatch("b").slice(0, 6)
      const results = await Promise.all(next.map((request) => scheduler.generate(request)))
      for (const [i, request] of next.entries()) expect(await worstDifference(request, results[i]!)).toBeLessThan(1e-4)
      await scheduler.close()
    })
  }

  it("fails a request that makes no progress within the stall limit, naming it, instead of hanging", async () => {
    const scheduler = new BatchScheduler(faulty((call) => (call === 3 ? "hang" : undefined)), { ...options, stallTimeoutMs: 300 })
    const started = performance.now()
    const settled = await Promise.allSettled(busyBatch("h").slice(0, 6).map((request) => scheduler.generate(request)))
    expect(performance.now() - started).toBeLessThan(5_000)
    const rejected = settled.flatMap((s) => (s.status === "rejected" ? [String(s.reason)] : []))
    expect(rejected.length).toBe(6)
    expect(rejected[0]).toMatch(/episode h0: no progress for \d+ ms while running/)
    expect(rejected[4]).toMatch(/episode h4: no progress for \d+ ms while queued/)
    expect(scheduler.inFlight).toBe(0)
    expect(scheduler.stats.stalled).toBe(6)
  })

  it("ends a request cancelled while its prefill runs as aborted, and keeps no cache for it", async () => {
    const scheduler = new BatchScheduler(model, options)
    const request = greedyRequest("c", context(1, 40), 30)
    const pending = scheduler.generate(request)
    // The loop has started this request's prefill; the cancel arrives before it returns.
    await Promise.resolve()
    scheduler.cancel("c")
    const result = await pending
    expect(result.finishReason).toBe("aborted")
    expect(result.tokenIds).toHaveLength(1)
    // Its next turn cannot have a cache: it runs its whole context again.
    const before = scheduler.stats.prefillTokens
    await scheduler.generate(greedyRequest("c", [...request.contextIds, ...result.tokenIds, 7], 1))
    expect(scheduler.stats.prefillTokens - before).toBe(request.contextIds.length + 2)
    await scheduler.close()
  })
})
