/**
 * The batch scheduler on the real tiny model, driven directly (no worker): sequences that once corrupted
 * the KV buffer or lost requests, each checked against a cache-free forward pass of the exact sequence.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { BatchScheduler, type SchedulerRequest, type SchedulerResult } from "../actors/inference/BatchScheduler.ts"
import { OnnxCausalLM } from "../actors/inference/OnnxCausalLM.ts"
import { fullForward, isArgmax } from "./reference.ts"
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
    let max = -Infinity
    for (const value of row) max = Math.max(max, value)
    let sum = 0
    for (const value of row) sum += Math.exp(value - max)
    worst = Math.max(worst, Math.abs(row[token]! - max - Math.log(sum) - result.logprobs[i]!))
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
