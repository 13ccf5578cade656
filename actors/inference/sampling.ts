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
 * One weights buffer shared by every sampler (a sampler runs start to finish without yielding),
 * so a batch's rows reuse memory already in cache rather than each request keeping its own.
 */
let shared = new Float64Array(0)
const weighed = new Float64Array(2)

/**
 * Weighs a row of logits in float64: fills `weights[0..n)` with exp((logit - max) / t) and writes [max, sum]
 * to `out`. No allocation.
 */
function weigh(logits: Float32Array, t: number, weights: Float64Array, out: Float64Array): void {
  const n = logits.length
  let max = logits[0]!
  for (let i = 1; i < n; i++) if (logits[i]! > max) max = logits[i]!
  let sum = 0
  for (let i = 0; i < n; i++) {
    const weight = Math.exp((logits[i]! - max) / t)
    weights[i] = weight
    sum += weight
  }
  out[0] = max
  out[1] = sum
}

/** The first of the largest values (argmax). */
const argmax = (values: Float32Array): number => {
  let best = 0
  let max = values[0]!
  for (let i = 1; i < values.length; i++) {
    if (values[i]! > max) {
      max = values[i]!
      best = i
    }
  }
  return best
}

/** The smallest positive normal float32: below it a probability has lost precision (or is 0). */
const NORMAL = 2 ** -126

/**
 * The model's own log softmax(logits)[token], given `probs` = softmax(logits) from the graph's sampling head
 * (temperature 1): read off the probabilities when the token's is a normal float32, else computed from the
 * logits in float64 (a token far out in the tail, as a replayed one can be).
 */
export const tokenLogprob = (logits: Float32Array, probs: Float32Array, token: number): number => {
  const p = probs[token]!
  if (p >= NORMAL) return Math.log(p)
  if (shared.length < logits.length) shared = new Float64Array(logits.length)
  weigh(logits, 1, shared, weighed)
  return logits[token]! - weighed[0]! - Math.log(weighed[1]!)
}

/** The temperature the graph's sampling head divides a request's logits by (greedy: 1, the model's own distribution). */
export const headTemperature = (settings: SamplingSettings): number => (settings.temperature === 0 ? 1 : settings.temperature)

/**
 * Plain temperature sampling (not greedy, no top-k / top-p, not a replay): its draw needs only the sampling
 * head's probabilities, so the graph's head can make it. Every other sampler also reads the logits (greedy,
 * top-k / top-p, and a replayed token far out in the tail).
 */
export const plainTemperature = (settings: SamplingSettings & { readonly replay?: unknown }): boolean =>
  settings.temperature > 0 && settings.topK <= 0 && settings.topP >= 1 && settings.replay === undefined

/** The largest float32 below 1: a uniform number must stay below 1 once it is a float32. */
const BELOW_ONE = 1 - 2 ** -24

/**
 * The uniform numbers in [0, 1) the graph's head draws a request's tokens with (see samplingHead in
 * OnnxCausalLM.ts): one per token, from the stream the request's seed starts, as the JavaScript sampler's.
 */
export const makeUniforms = (seed: number): (() => number) => {
  const random = mulberry32(seed)
  return () => Math.min(random(), BELOW_ONE)
}

/**
 * A sampler for one generation request: its random stream is seeded by the request's (episode, turn) seed.
 * It takes a row of logits and `probs`, softmax(logits / headTemperature) from the graph's sampling head.
 * Greedy takes the logits' argmax; temperature sampling walks the cumulative probabilities (additions only);
 * top-k / top-p weigh the logits here, in float64.
 */
export const makeSampler = (settings: SamplingSettings, seed: number) => {
  const random = mulberry32(seed)
  const truncates = settings.topK > 0 || settings.topP < 1
  const t = headTemperature(settings)
  return (logits: Float32Array, probs: Float32Array): Sample => {
    const n = probs.length
    if (settings.temperature === 0) {
      const token = argmax(logits)
      return { token, logprob: tokenLogprob(logits, probs, token) }
    }
    if (!truncates) {
      // Inverse CDF over the whole vocabulary, under probs renormalised by their float64 sum.
      let sum = 0
      for (let i = 0; i < n; i++) sum += probs[i]!
      let u = random() * sum
      let token = -1
      for (let i = 0; i < n; i++) {
        const p = probs[i]!
        if (u < p) {
          token = i
          break
        }
        u -= p
      }
      // Rounding left the draw past the last weight: the likeliest token.
      if (token < 0) token = argmax(probs)
      return { token, logprob: Math.log(probs[token]! / sum) }
    }
    if (shared.length < n) shared = new Float64Array(n)
    const weights = shared
    weigh(logits, t, weights, weighed)
    const max = weighed[0]!
    const sum = weighed[1]!
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
