/**
 * Choosing the next token from a row of logits, with the log-probability the trajectory records.
 *
 * Which distribution the logprob is under: the one the token was actually drawn from. That is
 * softmax(logits / temperature), restricted to the top-k and top-p (nucleus) set when those are on and
 * renormalised over it. Greedy decoding (temperature 0) draws from no distribution, so it records the
 * model's own log-probability, log softmax(logits), which is what a trainer recomputes.
 */
import { mulberry32 } from "../../src/Seed.ts"

export interface SamplingSettings {
  readonly temperature: number
  readonly topK: number
  readonly topP: number
}

export interface Sample {
  readonly token: number
  readonly logprob: number
}

/**
 * The tokens a top-k / top-p sampler keeps, most probable first (ties: the lower id first): the top-k, then
 * the shortest prefix of them whose mass reaches topP of the whole. `weights[i]` is exp((logit_i - max) / T)
 * and `total` their sum. The trainer scores tokens under the same set (actors/trainer/PolicyModel.ts).
 */
export const keptTokens = (logits: ArrayLike<number>, weights: ArrayLike<number>, total: number, topK: number, topP: number): Array<number> => {
  const order = Array.from({ length: logits.length }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b)
  const k = topK > 0 ? Math.min(topK, order.length) : order.length
  const kept: Array<number> = []
  let mass = 0
  for (let i = 0; i < k; i++) {
    const token = order[i]!
    kept.push(token)
    mass += weights[token]!
    if (mass >= topP * total) break
  }
  return kept
}

/**
 * Weighs a row of logits and, with `pick`, picks its token. Fills `weights[0..n)` with
 * exp((logit - max) / T) (T = temperature, 1 for greedy) and writes to `out`: [token, logprob, max, sum,
 * argmax]. With `pick` false it only weighs (out[0] and out[1] are the argmax's); greedy (temperature 0)
 * picks the argmax; otherwise the token where `draw * sum` falls in the cumulative weights over the whole
 * vocabulary, with its logprob under softmax(logits / T). One pass for the argmax, one for the weights, and
 * the walk: no allocation.
 */
export function weighAndPick(logits: Float32Array, temperature: number, draw: number, pick: boolean, weights: Float64Array, out: Float64Array): void {
  const n = logits.length
  const t = temperature === 0 ? 1 : temperature
  // The first of the largest logits (argmax).
  let best = 0
  let max = logits[0]!
  for (let i = 1; i < n; i++) {
    const value = logits[i]!
    if (value > max) {
      max = value
      best = i
    }
  }
  let sum = 0
  // Dividing by a temperature of 1 changes nothing, so that loop skips it (the same numbers, bit for bit).
  if (t === 1) {
    for (let i = 0; i < n; i++) {
      const weight = Math.exp(logits[i]! - max)
      weights[i] = weight
      sum += weight
    }
  } else {
    for (let i = 0; i < n; i++) {
      const weight = Math.exp((logits[i]! - max) / t)
      weights[i] = weight
      sum += weight
    }
  }
  let token = best
  if (pick && temperature !== 0) {
    // Inverse CDF over the whole vocabulary.
    let u = draw * sum
    for (let i = 0; i < n; i++) {
      const weight = weights[i]!
      if (u < weight) {
        token = i
        break
      }
      u -= weight
    }
  }
  out[0] = token
  out[1] = (logits[token]! - max) / t - Math.log(sum)
  out[2] = max
  out[3] = sum
  out[4] = best
}

/**
 * One weights buffer shared by every sampler (a sampler runs start to finish without yielding),
 * so a batch's rows reuse memory already in cache rather than each request keeping its own.
 */
let shared = new Float64Array(0)
const picked = new Float64Array(5)

/** A sampler for one generation request: its random stream is seeded by the request's (episode, turn) seed. */
export const makeSampler = (settings: SamplingSettings, seed: number) => {
  const random = mulberry32(seed)
  const truncates = settings.topK > 0 || settings.topP < 1
  const t = settings.temperature === 0 ? 1 : settings.temperature
  return (logits: Float32Array): Sample => {
    if (shared.length < logits.length) shared = new Float64Array(logits.length)
    const weights = shared
    if (!truncates) {
      weighAndPick(logits, settings.temperature, settings.temperature === 0 ? 0 : random(), true, weights, picked)
      return { token: picked[0]!, logprob: picked[1]! }
    }
    weighAndPick(logits, settings.temperature, 0, false, weights, picked)
    const max = picked[2]!
    const sum = picked[3]!
    const best = picked[4]!
    if (settings.temperature === 0) return { token: best, logprob: (logits[best]! - max) / t - Math.log(sum) }
    const kept = keptTokens(logits, weights, sum, settings.topK, settings.topP)
    let mass = 0
    for (const token of kept) mass += weights[token]!
    let u = random() * mass
    let chosen = kept.at(-1)!
    for (const token of kept) {
      if (u < weights[token]!) {
        chosen = token
        break
      }
      u -= weights[token]!
    }
    return { token: chosen, logprob: (logits[chosen]! - max) / t - Math.log(mass) }
  }
}

export type Sampler = ReturnType<typeof makeSampler>
