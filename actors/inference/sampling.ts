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

/** log sum exp of `values` scaled by 1/temperature. */
const logSumExp = (logits: Float32Array, temperature: number, max: number): number => {
  let sum = 0
  for (let i = 0; i < logits.length; i++) sum += Math.exp((logits[i]! - max) / temperature)
  return max / temperature + Math.log(sum)
}

const argmax = (logits: Float32Array): number => {
  let best = 0
  for (let i = 1; i < logits.length; i++) if (logits[i]! > logits[best]!) best = i
  return best
}

/** A sampler for one generation request: its random stream is seeded by the request's (episode, turn) seed. */
export const makeSampler = (settings: SamplingSettings, seed: number) => {
  const random = mulberry32(seed)
  const truncates = settings.topK > 0 || settings.topP < 1
  return (logits: Float32Array): Sample => {
    const best = argmax(logits)
    const max = logits[best]!
    if (settings.temperature === 0) {
      return { token: best, logprob: max - logSumExp(logits, 1, max) }
    }
    const t = settings.temperature
    const normaliser = logSumExp(logits, t, max)
    if (!truncates) {
      // Inverse CDF over the whole vocabulary.
      let u = random()
      for (let i = 0; i < logits.length; i++) {
        const p = Math.exp(logits[i]! / t - normaliser)
        if (u < p) return { token: i, logprob: logits[i]! / t - normaliser }
        u -= p
      }
      return { token: best, logprob: max / t - normaliser }
    }
    // Top-k then top-p over tokens sorted by probability; ties keep the lower id first.
    const order = Array.from(logits.keys()).sort((a, b) => logits[b]! - logits[a]! || a - b)
    const k = settings.topK > 0 ? Math.min(settings.topK, order.length) : order.length
    const kept: Array<number> = []
    let mass = 0
    for (let i = 0; i < k; i++) {
      const token = order[i]!
      kept.push(token)
      mass += Math.exp(logits[token]! / t - normaliser)
      if (mass >= settings.topP) break
    }
    let u = random() * mass
    let chosen = kept.at(-1)!
    for (const token of kept) {
      const p = Math.exp(logits[token]! / t - normaliser)
      if (u < p) {
        chosen = token
        break
      }
      u -= p
    }
    return { token: chosen, logprob: logits[chosen]! / t - normaliser - Math.log(mass) }
  }
}

export type Sampler = ReturnType<typeof makeSampler>
