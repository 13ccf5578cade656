/**
 * Differential fuzzing of the inference actor's scheduler (test/fuzz/harness.ts), a short fixed-seed run:
 * random schedules on the real tiny architecture (three genuinely different weight sets) and on the probe
 * model whose logits show exactly which cache columns each query saw. Every request must settle, and every
 * token must match a cache-free forward pass of its sequence under the weights that produced it. The same
 * for the right-padded layout GroupQueryAttention graphs need: the probe model laid out that way, and the
 * tiny architecture written as an onnxruntime-genai graph (GroupQueryAttention with fused rotary). The long
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
    let fed = 0
    for (let seed = 1; seed <= 16; seed++) {
      const report = await runCase(probe, seed, { hangAfterMs: 30_000 })
      expect(report.failures.slice(0, 5)).toEqual([])
      expect(report.settled).toBe(report.requests)
      tokens += report.tokensChecked
      fed += report.fedRequests
      if (report.feedMaxTokens === 0) expect(report.fedRequests).toBe(0)
    }
    expect(tokens).toBeGreaterThan(10_000)
    expect(fed).toBeGreaterThan(10)
  }, 120_000)

  it("records logits, logprobs and greedy tokens a full forward pass gives, under the version that produced each (real model, 10 seeds)", async () => {
    let tokens = 0
    let swapped = 0
    let fed = 0
    for (let seed = 1; seed <= 10; seed++) {
      const report = await runCase(real, seed, { hangAfterMs: 60_000 })
      expect(report.failures.slice(0, 5)).toEqual([])
      expect(report.settled).toBe(report.requests)
      expect(report.worstLogprobDifference).toBeLessThan(1e-4)
      tokens += report.tokensChecked
      swapped += report.recomputedTokens > 0 ? 1 : 0
      fed += report.fedRequests
    }
    expect(tokens).toBeGreaterThan(10_000)
    expect(swapped).toBeGreaterThan(3)
    expect(fed).toBeGreaterThan(10)
  }, 180_000)

  it("feeds a continuing turn's new tokens through decode steps as a prefill would run them (every cache kept; probe 16 seeds, real 6)", async () => {
    let fed = 0
    let requests = 0
    for (const [bench, seeds] of [[probe, 16], [real, 6]] as const) {
      for (let seed = 1; seed <= seeds; seed++) {
        const report = await runCase(bench, seed, { hangAfterMs: 60_000, feedMaxTokens: 64, cacheBudgetBytes: 1 << 30 })
        expect(report.failures.slice(0, 5)).toEqual([])
        expect(report.settled).toBe(report.requests)
        fed += report.fedRequests
        requests += report.requests
      }
    }
    // Most continuing turns join this way (the rest: first turns, rewritten histories, turns after a swap).
    expect(fed).toBeGreaterThan(requests / 3)
  }, 180_000)

  it("records the same logprobs and greedy tokens when no one watches the logits, so that steps fetch them only for samplers that read them (real model, 8 seeds)", async () => {
    let tokens = 0
    for (let seed = 101; seed <= 108; seed++) {
      const report = await runCase(real, seed, { hangAfterMs: 60_000, watchLogits: false })
      expect(report.failures.slice(0, 5)).toEqual([])
      expect(report.settled).toBe(report.requests)
      expect(report.worstLogprobDifference).toBeLessThan(1e-4)
      tokens += report.tokensChecked
    }
    expect(tokens).toBeGreaterThan(3_000)
  }, 180_000)
})

describe("the inference scheduler's right-padded layout (GroupQueryAttention graphs) under random schedules", () => {
  let probe: FuzzBench
  let gqa: FuzzBench
  beforeAll(async () => {
    probe = await probeBench("right")
    gqa = await realBench(await tinyModel(), "gqa")
  })
  afterAll(async () => {
    await probe?.close()
    await gqa?.close()
  })

  it("shows every query exactly its own positions, with each row's cache a left-aligned prefix (probe model, right layout, 6 seeds)", async () => {
    let tokens = 0
    for (let seed = 1; seed <= 6; seed++) {
      const report = await runCase(probe, seed, { hangAfterMs: 30_000 })
      expect(report.layout).toBe("right")
      expect(report.failures.slice(0, 5)).toEqual([])
      expect(report.settled).toBe(report.requests)
      tokens += report.tokensChecked
    }
    expect(tokens).toBeGreaterThan(3_000)
  }, 60_000)

  it("runs rows one forward pass each (the q8 path), cut to their real positions, in both layouts (probe model, 3 + 3 seeds)", async () => {
    let tokens = 0
    for (const layout of ["left", "right"] as const) {
      const bench = await probeBench(layout, true)
      try {
        for (let seed = 7; seed <= 9; seed++) {
          const report = await runCase(bench, seed, { hangAfterMs: 30_000 })
          expect(report.layout).toBe(layout)
          expect(report.rowsAlone).toBe("asked")
          expect(report.failures.slice(0, 5)).toEqual([])
          expect(report.settled).toBe(report.requests)
          tokens += report.tokensChecked
        }
      } finally {
        await bench.close()
      }
    }
    expect(tokens).toBeGreaterThan(1_000)
  }, 60_000)

  it("records what a full forward pass gives on a GroupQueryAttention graph, under the version that produced each token (4 seeds)", async () => {
    let tokens = 0
    let swapped = 0
    for (let seed = 1; seed <= 4; seed++) {
      const report = await runCase(gqa, seed, { hangAfterMs: 60_000 })
      expect(report.layout).toBe("right")
      expect(report.failures.slice(0, 5)).toEqual([])
      expect(report.settled).toBe(report.requests)
      expect(report.worstLogprobDifference).toBeLessThan(1e-4)
      tokens += report.tokensChecked
      swapped += report.recomputedTokens > 0 ? 1 : 0
    }
    expect(tokens).toBeGreaterThan(2_000)
    expect(swapped).toBeGreaterThan(0)
  }, 90_000)
})
