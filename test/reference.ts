/**
 * Independent references for the inference actor's tests: a cache-free, unbatched forward pass of a whole
 * sequence, and the log-probability of a sampled token under the sampling settings, written here from the
 * definitions (float64, sorted by hand) rather than shared with the actor's sampler.
 */
import type { OnnxCausalLM } from "../actors/inference/OnnxCausalLM.ts"

/** Logits at every position of `ids`, run alone with no cache: [ids.length, vocab]. */
export const fullForward = async (model: OnnxCausalLM, ids: ReadonlyArray<number>): Promise<Float32Array> => {
  const n = ids.length
  const empty = Array.from({ length: model.shape.numLayers }, () => new Float32Array(0))
  const { logits } = await model.forward({
    batch: 1, sequenceLength: n, pastLength: 0,
    inputIds: BigInt64Array.from(ids, (id) => BigInt(id)),
    positionIds: BigInt64Array.from(ids, (_, i) => BigInt(i)),
    attentionMask: new BigInt64Array(n).fill(1n),
    pastKeys: empty, pastValues: empty
  })
  return logits
}

export interface SamplingSettings {
  readonly temperature: number
  readonly topK: number
  readonly topP: number
}

/**
 * The log-probability of `token` under the distribution a sampler with these settings draws from:
 * softmax(logits / T) restricted to the top-k tokens, then to the smallest prefix (by probability) whose
 * mass reaches top-p, renormalised. Greedy (T = 0) is log softmax(logits). `slack` is the logit distance
 * under which two tokens count as tied at the cut, and the share of the total mass within which the top-p
 * threshold counts as met either way: a batched and an unbatched pass differ by about 1e-5 in the logits,
 * which can move a token across the cut. `undefined` is returned when the cut is that ambiguous, so the
 * caller can skip the token (a wrong key moves logits by far more than this).
 */
export const sampledLogprob = (
  logits: ArrayLike<number>,
  token: number,
  settings: SamplingSettings,
  slack = 1e-4
): number | undefined => {
  const t = settings.temperature === 0 ? 1 : settings.temperature
  const n = logits.length
  let max = -Infinity
  for (let i = 0; i < n; i++) max = Math.max(max, logits[i]!)
  const weight = (i: number) => Math.exp((logits[i]! - max) / t)
  let total = 0
  for (let i = 0; i < n; i++) total += weight(i)
  const truncates = settings.temperature > 0 && (settings.topK > 0 || settings.topP < 1)
  if (!truncates) return (logits[token]! - max) / t - Math.log(total)
  const order = Array.from({ length: n }, (_, i) => i).sort((a, b) => logits[b]! - logits[a]! || a - b)
  const k = settings.topK > 0 ? Math.min(settings.topK, n) : n
  let mass = 0
  let kept = 0
  while (kept < k) {
    mass += weight(order[kept]!)
    kept++
    if (mass >= settings.topP * total) break
  }
  // The cut falls between order[kept - 1] and order[kept]: too close to call means the set is ambiguous.
  if (kept < n && Math.abs(logits[order[kept - 1]!]! - logits[order[kept]!]!) < slack) return undefined
  // So does a top-p threshold met within float noise, on either side: the last kept token only just
  // reached it, or the mass before it was only just short of it.
  if (settings.topP < 1 && kept < k) {
    const threshold = settings.topP * total
    if (mass - threshold < slack * total || threshold - (mass - weight(order[kept - 1]!)) < slack * total) return undefined
  }
  if (!order.slice(0, kept).includes(token)) return -Infinity
  return (logits[token]! - max) / t - Math.log(mass)
}

/** Whether `token` is the argmax of `logits`, up to ties within `slack`. */
export const isArgmax = (logits: ArrayLike<number>, token: number, slack = 1e-5): boolean => {
  let max = -Infinity
  for (let i = 0; i < logits.length; i++) max = Math.max(max, logits[i]!)
  return logits[token]! >= max - slack
}
