/**
 * Seeded randomness. Seeds are derived from a tuple of integers, as nanochat derives them from (step,
 * example, sample): the same tuple always gives the same seed, and neighbouring tuples give unrelated ones.
 */

// splitmix32's finaliser: a bijective mix of 32 bits.
const mix = (x: number): number => {
  let z = (x + 0x9e3779b9) | 0
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b)
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35)
  return (z ^ (z >>> 16)) >>> 0
}

/** A 31-bit non-negative seed for the tuple. */
export const deriveSeed = (...parts: ReadonlyArray<number>): number =>
  parts.reduce((acc, part) => mix(acc ^ mix(part | 0)), 0x2545f491) & 0x7fffffff

/** mulberry32: a tiny deterministic PRNG, enough for laying out games and for random baselines. */
export const mulberry32 = (seed: number): (() => number) => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}
