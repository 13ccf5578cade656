/**
 * Differential fuzzing of the inference actor's scheduler (test/fuzz/harness.ts), a short fixed-seed run:
 * random schedules on the real tiny architecture (three genuinely different weight sets) and on the probe
 * model whose logits show exactly which cache columns each query saw. Every request must settle, and every
 * token must match a cache-free forward pass of its sequence under the weights that produced it. The long
 * run is `npm run bench -- soak`.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { type FuzzBench, probeBench, realBench, runCase } from "./fuzz/harness.ts"
import { tinyModel } from "./support.ts"

describe("the inference scheduler under random schedules", () => {
  let real: FuzzBench
  let probe: FuzzBench
  beforeAll(async () => {
    real = await realBench(await tinyModel())
    probe = await probeBench()
  })
  afterAll(async () => {
    await real?.close()
    await probe?.close()
  })

  it("shows every query exactly its own positions, once each, from the right weights (probe model, 16 seeds)", async () => {
    let tokens = 0
    for (let seed = 1; seed <= 16; seed++) {
      const report = await runCase(probe, seed, { hangAfterMs: 30_000 })
      expect(report.failures.slice(0, 5)).toEqual([])
      expect(report.settled).toBe(report.requests)
      tokens += report.tokensChecked
    }
    expect(tokens).toBeGreaterThan(10_000)
  }, 120_000)

  it("records logits, logprobs and greedy tokens a full forward pass gives, under the version that produced each (real model, 10 seeds)", async () => {
    let tokens = 0
    let swapped = 0
    for (let seed = 1; seed <= 10; seed++) {
      const report = await runCase(real, seed, { hangAfterMs: 60_000 })
      expect(report.failures.slice(0, 5)).toEqual([])
      expect(report.settled).toBe(report.requests)
      expect(report.worstLogprobDifference).toBeLessThan(1e-4)
      tokens += report.tokensChecked
      swapped += report.recomputedTokens > 0 ? 1 : 0
    }
    expect(tokens).toBeGreaterThan(10_000)
    expect(swapped).toBeGreaterThan(3)
  }, 180_000)
})
