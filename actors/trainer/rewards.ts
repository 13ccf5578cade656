/**
 * The reward manager: one number per trajectory, the score the advantage estimators work from.
 *
 * By default the score is exactly the environment's reward (the sum of its step rewards), so an environment
 * that already pays what it means needs no configuration. Shaping terms are opt-in:
 *
 *   score = Σ turnRewards
 *         + successBonus                          if the episode succeeded
 *         − invalidPenalty × (invalid assistant turns)
 *         + efficiencyBonus × (maxTurns − numTurns) if the episode succeeded
 *
 * Any `(trajectory) => number` is a reward function; pass your own to replace this one entirely.
 */
import type { Trajectory, Turn } from "../../src/Trajectory.ts"

export interface RewardConfig {
  /** Added once when the episode succeeded. Default 0. */
  readonly successBonus?: number
  /** Subtracted per assistant turn whose info marks it invalid (`invalid` or `invalid_action`). Default 0. */
  readonly invalidPenalty?: number
  /** Paid per unused turn (maxTurns − numTurns), on successful episodes only. Default 0. */
  readonly efficiencyBonus?: number
  /** The turn budget the efficiency bonus counts from; required when efficiencyBonus is not 0. */
  readonly maxTurns?: number
}

export type RewardFunction = (trajectory: Trajectory) => number

/** The info object a turn carries, when it carries one (optional on the record; older records lack it). */
const infoOf = (turn: Turn): Readonly<Record<string, unknown>> | undefined => {
  const info: unknown = turn.info
  return typeof info === "object" && info !== null ? (info as Record<string, unknown>) : undefined
}

/**
 * Whether the episode succeeded. The environment's own word is preferred: the last assistant turn's
 * `info.success`. Records whose environment reports no info at all fall back to "ended on done with a
 * positive reward", the best evidence the record itself holds.
 */
export const succeeded = (trajectory: Trajectory): boolean => {
  if (trajectory.turns.some((turn) => infoOf(turn) !== undefined)) {
    const lastAssistant = trajectory.turns.findLast((turn) => turn.role === "assistant")
    return lastAssistant !== undefined && infoOf(lastAssistant)?.["success"] === true
  }
  return trajectory.finishReason === "done" && trajectory.reward > 0
}

/** Assistant turns the environment flagged as invalid (either spelling: `invalid` or the seed's `invalid_action`). */
export const invalidTurnCount = (trajectory: Trajectory): number =>
  trajectory.turns.filter((turn) => {
    if (turn.role !== "assistant") return false
    const info = infoOf(turn)
    return info?.["invalid"] === true || info?.["invalid_action"] === true
  }).length

const finiteOr = (value: number | undefined, fallback: number, field: string): number => {
  if (value === undefined) return fallback
  if (typeof value !== "number" || !Number.isFinite(value)) {
    throw new Error(`${field} must be a finite number, got ${String(value)}`)
  }
  return value
}

export const rewardManager = (config: RewardConfig = {}): RewardFunction => {
  const successBonus = finiteOr(config.successBonus, 0, "rewards.successBonus")
  const invalidPenalty = finiteOr(config.invalidPenalty, 0, "rewards.invalidPenalty")
  const efficiencyBonus = finiteOr(config.efficiencyBonus, 0, "rewards.efficiencyBonus")
  const maxTurns = config.maxTurns
  if (efficiencyBonus !== 0 && maxTurns === undefined) {
    throw new Error("rewards.maxTurns is required when rewards.efficiencyBonus is not 0 (the bonus counts unused turns)")
  }
  if (maxTurns !== undefined && !(Number.isInteger(maxTurns) && maxTurns > 0)) {
    throw new Error(`rewards.maxTurns must be a positive integer, got ${String(maxTurns)}`)
  }

  return (trajectory) => {
    let score = 0
    for (const reward of trajectory.turnRewards) score += reward
    const success = succeeded(trajectory)
    if (success) score += successBonus
    score -= invalidPenalty * invalidTurnCount(trajectory)
    // Brevity is paid only on success (the seed pays it always): paying it on failures would reward giving
    // up early, the shortest failure being the best one. Clamped at 0 so an episode that overran maxTurns
    // is never worth less for having succeeded.
    if (success && efficiencyBonus !== 0) {
      score += efficiencyBonus * Math.max(0, maxTurns! - trajectory.numTurns)
    }
    return score
  }
}
