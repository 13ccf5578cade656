/**
 * Differential fuzzing of the inference actor's batch scheduler. One case draws, from its seed, a scheduler
 * (max batch 1..64, a prefill budget, a KV cache budget small enough to force evictions) and a workload of
 * multi-turn episodes: context lengths, per-turn budgets near multiples of the batch's headroom, stop tokens
 * and stop strings, greedy / temperature / top-k / top-p sampling, cancellations mid-turn (queued, during
 * prefill, while decoding), episodes forgotten mid-turn, contexts rewritten so the cache no longer fits, and
 * weight swaps to genuinely different weights at random moments.
 *
 * Time is counted in tokens: every event (an arrival, a cancel, a swap) is due after some number of tokens
 * the scheduler has produced, and fires between two of its steps. So a seed replays the same schedule.
 *
 * Every request must settle, and every token it got is checked against a reference that shares nothing
 * with the actor's batching: a cache-free forward pass of that exact sequence, alone, under the weights
 * of the version the token records. The row of logits the token was drawn from must equal the reference's
 * (the probe model's must equal the exact pattern of positions each query may see), the recorded logprob
 * must be the reference's under the sampling settings (test/reference.ts), and a greedy token its argmax.
 */
import { copyFileSync, mkdirSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { BatchScheduler, type SchedulerRequest, type SchedulerResult } from "../../actors/inference/BatchScheduler.ts"
import { type CacheLayout, OnnxCausalLM } from "../../actors/inference/OnnxCausalLM.ts"
import { readConfig } from "../../src/model/config.ts"
import { randomWeights } from "../../src/model/init.ts"
import { exportOnnx } from "../../src/model/onnxExport.ts"
import { mulberry32 } from "../../src/Seed.ts"
import { load as loadTokenizer } from "../../src/Tokenizer.ts"
import { genaiGraph } from "../published-fixtures.ts"
import { fullForward, isArgmax, sampledLogprob } from "../reference.ts"
import { expectedProbeLogits, probeConfig, probeGraph, probeShape, probeVocab } from "./probeGraph.ts"

export type FuzzModel = "real" | "probe" | "gqa"

/** The model a case runs on: weight variants (each its ONNX bytes and a reference session) and its limits. */
export interface FuzzBench {
  readonly kind: FuzzModel
  readonly directory: string
  readonly variants: ReadonlyArray<{ readonly bytes: Uint8Array; readonly file: string; readonly reference: OnnxCausalLM }>
  readonly vocab: number
  readonly maxPositions: number
  readonly decode: ((ids: ReadonlyArray<number>) => string) | undefined
  /** The scheduler's layout, when not the graph's own (the probe runs either way). */
  readonly layout?: CacheLayout
  /** Runs each row as its own forward pass (the path q8 graphs take), whatever the graph. */
  readonly rowsAlone?: boolean
  close(): Promise<void>
}

const WEIGHT_VARIANTS = 3

/**
 * The real bench: the project's tiny architecture and tokenizer (from `modelDirectory`), with three sets of
 * random weights drawn at 6x Hugging Face's init scale, so attention and logits are far from uniform and a
 * wrong key shows in the numbers.
 */
export const realBench = async (modelDirectory: string, graph: "episodic" | "gqa" = "episodic"): Promise<FuzzBench> => {
  const config = readConfig(modelDirectory)
  const tokenizer = await loadTokenizer(modelDirectory)
  const directory = path.join(tmpdir(), `episodic-fuzz-real-${process.pid}-${Date.now()}`)
  mkdirSync(path.join(directory, "onnx"), { recursive: true })
  for (const name of ["config.json", "tokenizer.json", "tokenizer_config.json"]) copyFileSync(path.join(modelDirectory, name), path.join(directory, name))
  const variants = await Promise.all(Array.from({ length: WEIGHT_VARIANTS }, async (_, v) => {
    const weights = randomWeights(config, 1000 + v)
    for (const [name, tensor] of weights) if (!name.endsWith("norm.weight")) tensor.data.forEach((x, i, data) => (data[i] = 6 * x))
    // "gqa": the same weights as an onnxruntime-genai graph (GroupQueryAttention, fused rotary), which runs right-padded.
    const bytes = graph === "gqa" ? genaiGraph(config, weights, { rotary: "fused" }) : exportOnnx(config, weights)
    const file = path.join(directory, "onnx", `variant-${v}.onnx`)
    writeFileSync(file, bytes)
    return { bytes, file, reference: await OnnxCausalLM.load(directory, { file, threads: 1 }) }
  }))
  return {
    kind: graph === "gqa" ? "gqa" : "real", directory, variants, vocab: config.vocabSize, maxPositions: Math.min(config.maxPositions, 512),
    decode: (ids) => tokenizer.decode(ids),
    close: async () => void (await Promise.all(variants.map((v) => v.reference.release())))
  }
}

/** The probe bench: see probeGraph.ts. */
export const probeBench = async (layout?: CacheLayout, rowsAlone = false): Promise<FuzzBench> => {
  const directory = path.join(tmpdir(), `episodic-fuzz-probe-${process.pid}-${Date.now()}`)
  mkdirSync(path.join(directory, "onnx"), { recursive: true })
  writeFileSync(path.join(directory, "config.json"), JSON.stringify(probeConfig(probeShape)))
  const variants = await Promise.all(Array.from({ length: WEIGHT_VARIANTS }, async (_, v) => {
    const bytes = probeGraph(probeShape, v)
    const file = path.join(directory, "onnx", `variant-${v}.onnx`)
    writeFileSync(file, bytes)
    return { bytes, file, reference: await OnnxCausalLM.load(directory, { file, threads: 1 }) }
  }))
  return {
    kind: "probe", directory, variants, vocab: probeVocab(probeShape), maxPositions: probeShape.positions, decode: undefined,
    ...(layout === undefined ? {} : { layout }),
    ...(rowsAlone ? { rowsAlone } : {}),
    close: async () => void (await Promise.all(variants.map((v) => v.reference.release())))
  }
}

export interface FuzzReport {
  readonly seed: number
  readonly model: FuzzModel
  /** The layout the scheduler ran, and why rows ran one forward pass each, if they did. */
  readonly layout: CacheLayout
  readonly rowsAlone: string | undefined
  readonly maxBatchSize: number
  /** The scheduler's feedMaxTokens, and how many turns joined with their new tokens fed rather than prefilled. */
  readonly feedMaxTokens: number
  readonly fedRequests: number
  readonly requests: number
  readonly settled: number
  readonly tokensChecked: number
  /** Tokens at a top-k / top-p cut too close to call within float noise: their logprob is not compared (their logits are). */
  readonly ambiguousTokens: number
  readonly worstLogprobDifference: number
  readonly worstLogitDifference: number
  readonly swaps: number
  readonly cancels: number
  readonly evictions: number
  readonly recomputedTokens: number
  readonly finishReasons: Record<string, number>
  /** What went wrong, each naming the seed, episode, turn and token: empty when the case passed. */
  readonly failures: ReadonlyArray<string>
}

interface Turn {
  readonly episode: number
  readonly turn: number
  readonly request: SchedulerRequest
  readonly logits: Array<Float32Array>
  cancelled: boolean
  outcome: SchedulerResult | Error | undefined
}

const HEADROOM = 32
const LOGPROB_TOLERANCE = 1e-4
const LOGIT_TOLERANCE = 1e-3

/** Runs one seeded case to the end: every request settled (or reported as hung), every token checked. */
export interface CaseOptions {
  readonly hangAfterMs?: number
  /** Instead of the seed's draws: to aim a set of seeds at one path (turns fed through decode steps). */
  readonly feedMaxTokens?: number
  readonly cacheBudgetBytes?: number
  /**
   * Record each token's row of logits through the scheduler's onLogits (default). Without it the scheduler
   * fetches logits only for rows whose sampler reads them, and the case checks logprobs and greedy tokens.
   */
  readonly watchLogits?: boolean
}

export const runCase = async (bench: FuzzBench, seed: number, options: CaseOptions = {}): Promise<FuzzReport> => {
  const random = mulberry32(seed)
  const below = (n: number) => Math.floor(random() * n)
  const pick = <T>(values: ReadonlyArray<T>): T => values[below(values.length)]!
  const chance = (p: number) => random() < p

  const maxBatchSize = pick([1, 2, 3, 4, 5, 7, 8, 12, 16, 24, 32, 48, 64])
  // Drawn even when the options give one, so that the seed's later draws stay as they were.
  const drawnBudget = pick([0, 30_000, 300_000, 3_000_000, 1 << 30])
  const cacheBudgetBytes = options.cacheBudgetBytes ?? drawnBudget
  const maxPrefillTokens = pick([16, 64, 256, 1024, 4096])
  const episodes = 1 + below(Math.min(3 * maxBatchSize + 2, 40))
  const maxSwaps = pick([0, 1, 3, 6])
  // From a stream of its own, so that adding it left every earlier seed's schedule as it was.
  const feedMaxTokens = options.feedMaxTokens ?? [0, 2, 8, 16, 64, 64][Math.floor(mulberry32(seed + 0x5eed)() * 6)]!
  const stopTokens = Array.from({ length: pick([0, 1, 3]) }, () => below(bench.vocab))
  const stopStrings = bench.decode === undefined ? [] : pick([[], [], ["e"], ["the", "\n"], ["at"]])

  const model = await OnnxCausalLM.load(bench.directory, { file: bench.variants[0]!.file, threads: 1, ...(bench.layout === undefined ? {} : { layout: bench.layout }), ...(bench.rowsAlone === true ? { rowsAlone: true } : {}) })
  const current = new Map<string, Turn>()
  let clock = 0
  const events: Array<{ at: number; fire: () => void }> = []
  const at = (delay: number, fire: () => void) => events.push({ at: clock + delay, fire })
  const fireDue = () => {
    events.sort((a, b) => a.at - b.at)
    while (events.length > 0 && events[0]!.at <= clock) events.shift()!.fire()
  }
  /** A token was chosen: the clock moves on. Events fire between two steps, as messages from other threads would arrive. */
  const tick = () => {
    clock += 1
    queueMicrotask(fireDue)
  }
  const scheduler = new BatchScheduler(model, {
    maxBatchSize, maxPrefillTokens, feedMaxTokens, cacheBudgetBytes, maxPositions: bench.maxPositions, stallTimeoutMs: 60_000,
    ...(bench.decode === undefined ? {} : { decode: bench.decode }),
    ...(options.watchLogits === false ? {} : {
      onLogits: (episodeId: string, logits: Float32Array) => {
        current.get(episodeId)?.logits.push(logits.slice())
        tick()
      }
    })
  })

  const turns: Array<Turn> = []
  const variantOf = new Map<number, number>([[0, 0]])
  let version = 0
  let swaps = 0
  let cancels = 0
  let inFlight = 0
  let episodesLeft = episodes
  let finishAll: () => void = () => undefined
  const allDone = new Promise<void>((resolve) => (finishAll = resolve))
  /** When nothing runs, time jumps to the next event so the case never idles. */
  const idle = () => {
    while (inFlight === 0 && events.length > 0) {
      clock = Math.max(clock, Math.min(...events.map((e) => e.at)))
      fireDue()
    }
  }

  const sampling = () => pick([
    { temperature: 0, topK: 0, topP: 1 },
    { temperature: 0, topK: 0, topP: 1 },
    { temperature: 1, topK: 0, topP: 1 },
    { temperature: 0.7, topK: 0, topP: 1 },
    { temperature: 1.3, topK: 0, topP: 1 },
    { temperature: 1, topK: pick([1, 5, 40]), topP: 1 },
    { temperature: 1, topK: 0, topP: pick([0.5, 0.9]) },
    { temperature: 0.8, topK: 20, topP: 0.8 },
    // The probe's logits are in the thousands: a hot temperature makes its sampling random too.
    { temperature: bench.kind === "probe" ? 2000 : 2, topK: 0, topP: 1 }
  ])

  const episode = (e: number) => {
    const episodeId = `f${seed}-e${e}`
    let context = Array.from({ length: 1 + below(bench.kind === "probe" ? 30 : 60) }, () => below(bench.vocab))
    let turn = 0
    const end = () => {
      scheduler.forget(episodeId)
      if (--episodesLeft === 0) finishAll()
    }
    const submit = () => {
      const room = bench.maxPositions - context.length - 1
      if (room < 1 || turn >= 6) return end()
      const maxNewTokens = Math.min(room, chance(0.5) ? pick([HEADROOM - 1, HEADROOM, HEADROOM + 1, 2 * HEADROOM - 1, 2 * HEADROOM, 2 * HEADROOM + 1]) : 1 + below(40))
      const request: SchedulerRequest = {
        episodeId, contextIds: context, ...sampling(), maxNewTokens,
        stop: chance(0.5) ? stopStrings : [], stopTokenIds: chance(0.7) ? stopTokens : [], seed: seed * 1000 + e * 10 + turn
      }
      const record: Turn = { episode: e, turn, request, logits: [], cancelled: false, outcome: undefined }
      turns.push(record)
      current.set(episodeId, record)
      inFlight += 1
      // Cancel some requests: straight away (queued or in prefill), or some tokens in.
      if (chance(0.08)) {
        at(chance(0.5) ? 0 : 1 + below(30), () => {
          if (record.outcome !== undefined) return
          record.cancelled = true
          cancels += 1
          scheduler.cancel(episodeId)
        })
      }
      // The episode ends mid-turn sometimes (its request runs on, but it must not leave a cache behind).
      const forgetMidTurn = chance(0.04)
      if (forgetMidTurn) at(below(10), () => scheduler.forget(episodeId))
      scheduler.generate(request, options.watchLogits === false ? tick : undefined).then(
        (result) => (record.outcome = result),
        (error: Error) => (record.outcome = error)
      ).then(() => {
        inFlight -= 1
        current.delete(episodeId)
        const outcome = record.outcome!
        turn += 1
        if (outcome instanceof Error || outcome.finishReason === "aborted" || forgetMidTurn) {
          end()
        } else {
          // The next turn: the tokens as generated, then an observation; sometimes a rewritten history.
          const observation = Array.from({ length: 1 + below(16) }, () => below(bench.vocab))
          context = chance(0.1) && context.length > 2
            ? [...context.slice(0, 1 + below(context.length - 1)), ...observation]
            : [...context, ...outcome.tokenIds, ...observation]
          at(below(40), submit)
        }
        idle()
      })
    }
    at(below(60), submit)
  }
  for (let e = 0; e < episodes; e++) episode(e)
  for (let s = 0; s < maxSwaps; s++) {
    at(5 + below(400), () => {
      version += 1
      swaps += 1
      const variant = version % WEIGHT_VARIANTS
      variantOf.set(version, variant)
      // A swap superseded before it loads fails its promise; that is not a failure of any request.
      scheduler.updateWeights(bench.variants[variant]!.bytes, version).catch(() => undefined)
    })
  }
  idle()

  const failures: Array<string> = []
  const hangAfterMs = options.hangAfterMs ?? 120_000
  let timer: ReturnType<typeof setTimeout> | undefined
  const hung = await Promise.race([
    allDone.then(() => false),
    new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), hangAfterMs)))
  ])
  clearTimeout(timer)
  if (hung) {
    const pending = turns.filter((t) => t.outcome === undefined)
    failures.push(`seed ${seed}: ${pending.length} request(s) never settled within ${hangAfterMs} ms: ${pending.slice(0, 5).map((t) => `episode ${t.episode} turn ${t.turn}`).join(", ")}`)
  }
  if (scheduler.inFlight > 0 && !hung) failures.push(`seed ${seed}: the scheduler still holds ${scheduler.inFlight} request(s) after all settled`)
  const stats = { ...scheduler.stats }
  const layout = model.layout
  const rowsAlone = model.rowsAlone
  await scheduler.close()
  await model.release()

  // Check every settled request against the references.
  let tokensChecked = 0
  let ambiguous = 0
  let worstLogprob = 0
  let worstLogit = 0
  const finishReasons: Record<string, number> = {}
  for (const t of turns) {
    const where = `seed ${seed}: episode ${t.episode} turn ${t.turn}`
    const outcome = t.outcome
    if (outcome === undefined) continue
    if (outcome instanceof Error) {
      failures.push(`${where}: rejected: ${outcome.message}`)
      continue
    }
    finishReasons[outcome.finishReason] = (finishReasons[outcome.finishReason] ?? 0) + 1
    const { request } = t
    const tokens = outcome.tokenIds
    const versions = outcome.policyVersions ?? tokens.map(() => outcome.policyVersion)
    if (outcome.logprobs.length !== tokens.length || versions.length !== tokens.length) {
      failures.push(`${where}: ${tokens.length} tokens, ${outcome.logprobs.length} logprobs, ${versions.length} versions`)
      continue
    }
    if (outcome.finishReason === "aborted" && !t.cancelled) failures.push(`${where}: aborted without a cancel`)
    if (tokens.length > request.maxNewTokens) failures.push(`${where}: ${tokens.length} tokens for maxNewTokens ${request.maxNewTokens}`)
    const finish = finishProblem(request, tokens, outcome.finishReason, bench)
    if (finish !== undefined) failures.push(`${where}: ${finish}`)
    if (versions.some((v, i) => i > 0 && v < versions[i - 1]!)) failures.push(`${where}: versions go backwards: ${versions.join(",")}`)
    if (tokens.length === 0) continue
    const sequence = [...request.contextIds, ...tokens]
    for (const v of new Set(versions)) {
      const variant = variantOf.get(v)
      if (variant === undefined) {
        failures.push(`${where}: version ${v} was never loaded`)
        continue
      }
      const reference = await fullForward(bench.variants[variant]!.reference, sequence)
      tokens.forEach((token, i) => {
        if (versions[i] !== v) return
        const position = request.contextIds.length + i - 1
        const row = reference.subarray(position * bench.vocab, (position + 1) * bench.vocab)
        const token_ = `${where} token ${i} (version ${v})`
        tokensChecked += 1
        const seen = t.logits[i]
        if (seen !== undefined) {
          const expected = bench.kind === "probe" ? expectedProbeLogits(probeShape, sequence, position, variant) : row
          let difference = 0
          let at = -1
          for (let j = 0; j < expected.length; j++) {
            const d = Math.abs(seen[j]! - expected[j]!)
            if (d > difference) [difference, at] = [d, j]
          }
          worstLogit = Math.max(worstLogit, difference)
          if (difference > LOGIT_TOLERANCE) failures.push(`${token_}: logits differ from the reference by ${difference.toPrecision(3)} at ${at} (${seen[at]} vs ${expected[at]})`)
        }
        if (request.temperature === 0 && !isArgmax(row, token, 1e-4)) failures.push(`${token_}: greedy token ${token} is not the reference's argmax`)
        const expected = sampledLogprob(row, token, request)
        if (expected === undefined) {
          ambiguous += 1
          return
        }
        const difference = Math.abs(expected - outcome.logprobs[i]!)
        if (Number.isFinite(difference)) worstLogprob = Math.max(worstLogprob, difference)
        if (!(difference <= LOGPROB_TOLERANCE)) failures.push(`${token_}: logprob ${outcome.logprobs[i]} recorded, ${expected} from the reference`)
      })
    }
  }
  return {
    seed, model: bench.kind, layout, rowsAlone, maxBatchSize, feedMaxTokens, fedRequests: stats.fedRequests ?? 0, requests: turns.length, settled: turns.filter((t) => t.outcome !== undefined).length,
    tokensChecked, ambiguousTokens: ambiguous, worstLogprobDifference: worstLogprob, worstLogitDifference: worstLogit, swaps, cancels,
    evictions: stats.evictions ?? 0, recomputedTokens: stats.recomputedTokens ?? 0, finishReasons, failures
  }
}

/** Whether the turn ended where it should have: at the first stop token or stop string, else at its budget. */
const finishProblem = (request: SchedulerRequest, tokens: ReadonlyArray<number>, reason: string, bench: FuzzBench): string | undefined => {
  if (reason === "aborted") return undefined
  const stopsAt = (i: number) =>
    request.stopTokenIds.includes(tokens[i]!) ? "eos"
      : request.stop.length > 0 && bench.decode !== undefined && request.stop.some((s) => bench.decode!(tokens.slice(0, i + 1)).includes(s)) ? "stop"
      : undefined
  for (let i = 0; i < tokens.length - 1; i++) {
    if (stopsAt(i) !== undefined) return `went on past a ${stopsAt(i)} at token ${i}`
  }
  const last = stopsAt(tokens.length - 1)
  if (last !== undefined) return last === reason ? undefined : `finished "${reason}" at a ${last}`
  if (reason !== "length") return `finished "${reason}" with no stop`
  const atLimit = tokens.length === request.maxNewTokens || request.contextIds.length + tokens.length >= bench.maxPositions
  return atLimit ? undefined : `finished "length" after ${tokens.length} of ${request.maxNewTokens} tokens`
}
