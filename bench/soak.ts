/**
 * The inference scheduler's differential fuzz (test/fuzz/harness.ts) as a soak: seeded cases, rotating
 * over the real tiny architecture, the probe model, the probe in the right-padded layout and the tiny
 * architecture as a GroupQueryAttention graph (right-padded), until the time is up. Each case draws its own scheduler
 * and schedule from its seed, so any failure it prints is reproduced by `runCase(bench, seed)`.
 *
 *   SOAK_MINUTES=30 npm run bench -- soak        # default 2 minutes; SOAK_SEED sets the first seed (default 1000)
 *
 * Prints a table per model (cases, requests, tokens checked, worst differences, failures), the first
 * failures if any, and a final JSON line. Exits non-zero when any case failed.
 */
import { availableParallelism, cpus } from "node:os"
import { type FuzzBench, type FuzzReport, probeBench, realBench, runCase } from "../test/fuzz/harness.ts"
import { tinyModel } from "../test/support.ts"

export default async () => {
  const minutes = Number(process.env.SOAK_MINUTES ?? 2)
  const firstSeed = Number(process.env.SOAK_SEED ?? 1000)
  if (!(minutes > 0) || !Number.isInteger(firstSeed)) throw new Error(`SOAK_MINUTES must be > 0 and SOAK_SEED an integer, got ${process.env.SOAK_MINUTES} and ${process.env.SOAK_SEED}`)
  const tiny = await tinyModel()
  const benches: Record<"real" | "probe" | "probe-right" | "gqa", FuzzBench> = {
    real: await realBench(tiny), probe: await probeBench(), "probe-right": await probeBench("right"), gqa: await realBench(tiny, "gqa")
  }
  const names = Object.keys(benches) as Array<keyof typeof benches>
  const deadline = performance.now() + minutes * 60_000
  const reports: Array<FuzzReport & { readonly bench: string }> = []
  const batchSizes = new Set<number>()
  let seed = firstSeed
  while (performance.now() < deadline) {
    const name = names[seed % names.length]!
    const report = { ...(await runCase(benches[name], seed, { hangAfterMs: 120_000 })), bench: name }
    reports.push(report)
    batchSizes.add(report.maxBatchSize)
    if (report.failures.length > 0) console.log(`seed ${seed} (${report.bench}) FAILED:\n  ${report.failures.slice(0, 5).join("\n  ")}`)
    seed += 1
  }
  for (const bench of Object.values(benches)) await bench.close()

  const sum = (rs: ReadonlyArray<FuzzReport>, f: (r: FuzzReport) => number) => rs.reduce((n, r) => n + f(r), 0)
  const rows = names.map((model) => {
    const rs = reports.filter((r) => r.bench === model)
    return {
      model,
      cases: rs.length,
      requests: sum(rs, (r) => r.requests),
      settled: sum(rs, (r) => r.settled),
      tokens_checked: sum(rs, (r) => r.tokensChecked),
      ambiguous_tokens: sum(rs, (r) => r.ambiguousTokens),
      worst_logprob_difference: Math.max(0, ...rs.map((r) => r.worstLogprobDifference)),
      worst_logit_difference: Math.max(0, ...rs.map((r) => r.worstLogitDifference)),
      swaps: sum(rs, (r) => r.swaps),
      cancels: sum(rs, (r) => r.cancels),
      evictions: sum(rs, (r) => r.evictions),
      failed_cases: rs.filter((r) => r.failures.length > 0).length
    }
  })
  console.log(`\nscheduler soak: ${minutes} min, seeds ${firstSeed}..${seed - 1}, max batch sizes ${[...batchSizes].sort((a, b) => a - b).join(",")} (${availableParallelism()} cores, ${cpus()[0]?.model ?? "unknown CPU"})`)
  console.log("| model | cases | requests | settled | tokens checked | at a top-k/p cut | worst logprob diff | worst logit diff | swaps | cancels | evictions | failed cases |")
  console.log("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for (const r of rows) {
    console.log(`| ${r.model} | ${r.cases} | ${r.requests} | ${r.settled} | ${r.tokens_checked} | ${r.ambiguous_tokens} | ${r.worst_logprob_difference.toExponential(2)} | ${r.worst_logit_difference.toExponential(2)} | ${r.swaps} | ${r.cancels} | ${r.evictions} | ${r.failed_cases} |`)
  }
  const failed = reports.filter((r) => r.failures.length > 0)
  console.log(JSON.stringify({
    bench: "soak", minutes, first_seed: firstSeed, last_seed: seed - 1,
    cases: reports.length, requests: sum(reports, (r) => r.requests), settled: sum(reports, (r) => r.settled),
    tokens_checked: sum(reports, (r) => r.tokensChecked),
    ambiguous_tokens: sum(reports, (r) => r.ambiguousTokens),
    worst_logprob_difference: Math.max(0, ...reports.map((r) => r.worstLogprobDifference)),
    worst_logit_difference: Math.max(0, ...reports.map((r) => r.worstLogitDifference)),
    failed_seeds: failed.map((r) => r.seed), by_model: rows
  }))
  if (failed.length > 0) process.exitCode = 1
}
