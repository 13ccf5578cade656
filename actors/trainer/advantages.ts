/**
 * Advantage estimators and the placement of rewards on tokens: plain arithmetic on number arrays, no tensors,
 * so every value here can be checked by hand.
 *
 * - `groupAdvantages`: GRPO's outcome advantage, each score against the other samples of its prompt.
 * - `gae`: generalised advantage estimation over one trajectory's steps, for PPO with a critic.
 * - `tokenRewards`: where a trajectory's score lands among its response tokens.
 * - `whiten`: masked normalisation of advantages across a batch, as verl's `masked_whiten`.
 */
import type { Trajectory } from "../../src/Trajectory.ts"

export interface GroupAdvantageOptions {
  /** Divide by the group's standard deviation (GRPO). false centres only (Dr. GRPO). Default true. */
  readonly normalizeStd?: boolean
  /** Added to the standard deviation so a group of equal scores divides by something. Default 1e-6. */
  readonly epsilon?: number
}

/**
 * GRPO: advantage = (score − group mean) / (group std + ε), one value per trajectory.
 *
 * The std is the unbiased sample std (n − 1), as verl's `torch.std`. A group of one has no other sample to
 * be compared with, so its advantage is 0 (verl instead passes the raw score through, mean 0 and std 1,
 * which turns a lone sample into an absolute reward signal that no other advantage in the batch has).
 * Dr. GRPO (`normalizeStd: false`) keeps the centring but drops the division, which otherwise up-weights
 * prompts whose samples barely differ.
 */
export const groupAdvantages = (
  scores: ReadonlyArray<number>,
  groupIds: ReadonlyArray<string>,
  options: GroupAdvantageOptions = {}
): Float64Array => {
  if (scores.length !== groupIds.length) {
    throw new Error(`groupAdvantages: scores (${scores.length}) and groupIds (${groupIds.length}) differ in length`)
  }
  const normalizeStd = options.normalizeStd ?? true
  const epsilon = options.epsilon ?? 1e-6
  if (!(Number.isFinite(epsilon) && epsilon >= 0)) {
    throw new Error(`groupAdvantages: epsilon must be a finite number ≥ 0, got ${epsilon}`)
  }
  const members = new Map<string, Array<number>>()
  scores.forEach((score, i) => {
    if (!Number.isFinite(score)) throw new Error(`groupAdvantages: scores[${i}] is not finite (${score})`)
    const id = groupIds[i]!
    const list = members.get(id)
    if (list === undefined) members.set(id, [i])
    else list.push(i)
  })
  const advantages = new Float64Array(scores.length)
  for (const indices of members.values()) {
    const n = indices.length
    if (n === 1) continue // no baseline to compare with: advantage 0
    let mean = 0
    for (const i of indices) mean += scores[i]!
    mean /= n
    let squares = 0
    for (const i of indices) squares += (scores[i]! - mean) ** 2
    const std = Math.sqrt(squares / (n - 1))
    const scale = normalizeStd ? 1 / (std + epsilon) : 1
    for (const i of indices) advantages[i] = (scores[i]! - mean) * scale
  }
  return advantages
}

export interface GaeResult {
  readonly advantages: Float64Array
  /** advantages + values: the critic's regression target. */
  readonly returns: Float64Array
}

/**
 * Generalised advantage estimation over one trajectory's steps (Schulman et al. 2016):
 *   δ_t = r_t + γ·V_{t+1} − V_t,   A_t = δ_t + γλ·A_{t+1},
 * with the last step terminal (V after it is 0: the episode is over, there is nothing left to earn).
 * λ trades bias (λ = 0: one-step TD) against variance (λ = 1: Monte-Carlo return minus V).
 */
export const gae = (rewards: ArrayLike<number>, values: ArrayLike<number>, gamma: number, lambda: number): GaeResult => {
  if (rewards.length !== values.length) {
    throw new Error(`gae: rewards (${rewards.length}) and values (${values.length}) differ in length`)
  }
  if (!(gamma >= 0 && gamma <= 1)) throw new Error(`gae: gamma must be in [0, 1], got ${gamma}`)
  if (!(lambda >= 0 && lambda <= 1)) throw new Error(`gae: lambda must be in [0, 1], got ${lambda}`)
  const n = rewards.length
  const advantages = new Float64Array(n)
  const returns = new Float64Array(n)
  let nextValue = 0
  let nextAdvantage = 0
  for (let t = n - 1; t >= 0; t--) {
    const delta = rewards[t]! + gamma * nextValue - values[t]!
    nextAdvantage = delta + gamma * lambda * nextAdvantage
    advantages[t] = nextAdvantage
    returns[t] = nextAdvantage + values[t]!
    nextValue = values[t]!
  }
  return { advantages, returns }
}

export type RewardPlacement = "last-token" | "per-turn"

const lastMaskedIndex = (mask: ArrayLike<number>, start: number, end: number): number => {
  for (let i = end - 1; i >= start; i--) if (mask[i] === 1) return i
  return -1
}

/**
 * Spreads a trajectory's score over its response tokens (one entry per responseIds entry, 0 elsewhere).
 *
 * - "last-token": the whole score on the last generated (mask-1) token, verl's convention for outcome
 *   rewards: the policy is judged once, on the action that ended its part of the episode.
 * - "per-turn": each assistant turn's own reward on that turn's last generated token, so GAE can credit
 *   the turn that earned it; whatever the score adds beyond the turn rewards (bonuses, penalties) stays an
 *   outcome reward on the last generated token.
 *
 * Either way the entries sum to the score. A response with no generated token has nowhere to put it: all
 * zeros (its tokens are all masked out of every loss anyway).
 */
export const tokenRewards = (trajectory: Trajectory, score: number, where: RewardPlacement = "last-token"): Float64Array => {
  const mask = trajectory.responseMask
  const rewards = new Float64Array(trajectory.responseIds.length)
  const last = lastMaskedIndex(mask, 0, mask.length)
  if (last < 0) return rewards
  if (where === "last-token") {
    rewards[last] = score
    return rewards
  }
  if (where !== "per-turn") throw new Error(`tokenRewards: where must be "last-token" or "per-turn", got ${String(where)}`)
  let placed = 0
  for (const turn of trajectory.turns) {
    if (turn.role !== "assistant") continue
    const at = lastMaskedIndex(mask, Math.max(0, turn.tokenStart), Math.min(mask.length, turn.tokenEnd))
    // A turn with no generated token (an empty span) cannot hold its reward; it joins the remainder.
    if (at < 0) continue
    rewards[at]! += turn.reward
    placed += turn.reward
  }
  rewards[last]! += score - placed
  return rewards
}

/**
 * Masked whitening, as verl's `masked_whiten`: (x − mean) / √(var + 1e-8) over the mask-1 entries, with the
 * unbiased (n − 1) variance. Used on PPO advantages so the policy step has the same scale whatever the
 * reward scale. Entries under mask 0 come back as 0 (verl leaves them whitened garbage; nothing reads them).
 * `shiftMean: false` restores the mean after scaling, as verl's option of that name.
 */
export const whiten = (
  values: ArrayLike<number>,
  mask: ArrayLike<number>,
  options: { readonly shiftMean?: boolean; readonly epsilon?: number } = {}
): Float64Array => {
  if (values.length !== mask.length) {
    throw new Error(`whiten: values (${values.length}) and mask (${mask.length}) differ in length`)
  }
  const shiftMean = options.shiftMean ?? true
  const epsilon = options.epsilon ?? 1e-8
  let count = 0
  let sum = 0
  for (let i = 0; i < values.length; i++) {
    if (mask[i]! !== 0) {
      count += 1
      sum += values[i]!
    }
  }
  const out = new Float64Array(values.length)
  if (count === 0) return out
  const mean = sum / count
  let squares = 0
  for (let i = 0; i < values.length; i++) if (mask[i]! !== 0) squares += (values[i]! - mean) ** 2
  const variance = count > 1 ? squares / (count - 1) : 0
  const scale = 1 / Math.sqrt(variance + epsilon)
  for (let i = 0; i < values.length; i++) {
    if (mask[i]! !== 0) out[i] = (values[i]! - mean) * scale + (shiftMean ? 0 : mean)
  }
  return out
}
