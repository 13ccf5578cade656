/**
 * The trainer's losses, in tfjs ops on [B, T] tensors: B sequences, T response positions, right-padded, with
 * `mask` (float32, 1 for tokens the policy generated, 0 for environment tokens and padding) of the same shape.
 *
 * Everything here is differentiable and reads nothing back from the backend, so it can run inside
 * `tf.grads` / `tf.variableGrads`. Losses return scalars; the per-token helpers return [B, T].
 */
import * as tf from "@tensorflow/tfjs"

/**
 * How a [B, T] matrix of per-token losses becomes one number (verl's `loss_agg_mode`).
 * - "token-mean": every generated token in the batch weighs the same, so long responses weigh by their
 *   tokens (verl's default, and DAPO's fix for long bad responses being under-penalised).
 * - "seq-mean-token-mean": each sequence weighs the same whatever its length (the original GRPO).
 * - "seq-mean-token-sum": per-sequence sums averaged over sequences (Dr. GRPO's length-unbiased form).
 */
export type LossAggregation = "token-mean" | "seq-mean-token-mean" | "seq-mean-token-sum"

const aggregations: ReadonlyArray<LossAggregation> = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]

const checkAggregation = (mode: LossAggregation): void => {
  if (!aggregations.includes(mode)) {
    throw new Error(`aggregation must be one of ${aggregations.map((m) => `"${m}"`).join(", ")}, got ${String(mode)}`)
  }
}

const checkSameShape = (name: string, tensor: tf.Tensor, like: tf.Tensor, likeName: string): void => {
  if (tensor.shape.length !== like.shape.length || tensor.shape.some((d, i) => d !== like.shape[i])) {
    throw new Error(`${name} has shape [${tensor.shape.join(", ")}], ${likeName} has [${like.shape.join(", ")}]; they must match`)
  }
}

/** Divisions by a token or sequence count use max(count, 1): an all-padding batch gives loss 0, not NaN. */
const atLeastOne = (count: tf.Tensor): tf.Tensor => tf.maximum(count, 1)

/** Reduces [B, T] per-token losses to a scalar over the mask-1 tokens. */
export const aggregate = (lossMat: tf.Tensor, mask: tf.Tensor, mode: LossAggregation = "token-mean"): tf.Scalar => {
  checkAggregation(mode)
  checkSameShape("loss", lossMat, mask, "mask")
  if (lossMat.rank !== 2) throw new Error(`loss must be [B, T], got rank ${lossMat.rank}`)
  return tf.tidy(() => {
    // Multiplying by the mask (not gathering) keeps shapes static; masked positions contribute 0 and get 0 gradient.
    const masked = tf.mul(lossMat, mask)
    if (mode === "token-mean") return tf.div(tf.sum(masked), atLeastOne(tf.sum(mask))) as tf.Scalar
    const perSequence = tf.sum(masked, 1)
    const tokens = tf.sum(mask, 1)
    // Sequences with no generated token (padding rows) are left out of the mean rather than counted as 0.
    const present = tf.cast(tf.greater(tokens, 0), "float32")
    const sequences = atLeastOne(tf.sum(present))
    const perSequenceLoss = mode === "seq-mean-token-mean" ? tf.div(perSequence, atLeastOne(tokens)) : perSequence
    return tf.div(tf.sum(tf.mul(perSequenceLoss, present)), sequences) as tf.Scalar
  })
}

/** Mean over the mask-1 tokens of a [B, T] value (metrics: fractions, KL estimates). */
const maskedMean = (values: tf.Tensor, mask: tf.Tensor): tf.Scalar =>
  tf.tidy(() => tf.div(tf.sum(tf.mul(values, mask)), atLeastOne(tf.sum(mask))) as tf.Scalar)

/** The clipped surrogate per token, any shape: max(−A·r, −A·clip(r, 1 − clipLow, 1 + clipHigh)). */
export const clippedSurrogate = (
  logprobs: tf.Tensor,
  oldLogprobs: tf.Tensor,
  advantages: tf.Tensor,
  clipLow: number,
  clipHigh: number
): tf.Tensor =>
  tf.tidy(() => {
    const ratio = tf.exp(tf.sub(logprobs, oldLogprobs))
    return tf.maximum(tf.neg(tf.mul(advantages, ratio)), tf.neg(tf.mul(advantages, tf.clipByValue(ratio, 1 - clipLow, 1 + clipHigh))))
  })

/** 1 where the clipped term of the surrogate wins (the token's gradient is 0), else 0; any shape. */
export const clippedTokens = (
  logprobs: tf.Tensor,
  oldLogprobs: tf.Tensor,
  advantages: tf.Tensor,
  clipLow: number,
  clipHigh: number
): tf.Tensor =>
  tf.tidy(() => {
    const ratio = tf.exp(tf.sub(logprobs, oldLogprobs))
    const unclipped = tf.neg(tf.mul(advantages, ratio))
    const clipped = tf.neg(tf.mul(advantages, tf.clipByValue(ratio, 1 - clipLow, 1 + clipHigh)))
    return tf.cast(tf.greater(clipped, unclipped), "float32")
  })

/** ½(log π_θ − log π_old)² per token: the k2 estimate of KL(π_old ‖ π_θ). */
export const k2 = (logprobs: tf.Tensor, oldLogprobs: tf.Tensor): tf.Tensor => tf.tidy(() => tf.mul(0.5, tf.square(tf.sub(logprobs, oldLogprobs))))

/** The clipped value error per token, any shape: ½·max((v − R)², (clip(v, old − c, old + c) − R)²). */
export const clippedValueError = (values: tf.Tensor, oldValues: tf.Tensor, returns: tf.Tensor, clip: number): tf.Tensor =>
  tf.tidy(() => {
    const clippedValues = tf.add(oldValues, tf.clipByValue(tf.sub(values, oldValues), -clip, clip))
    return tf.mul(0.5, tf.maximum(tf.square(tf.sub(values, returns)), tf.square(tf.sub(clippedValues, returns))))
  })

/**
 * Per-token weights w, one array per sequence, such that Σ loss·w over the whole batch equals
 * `aggregate(loss, mask, mode)`: the trainer splits a minibatch into micro-batches that fit in memory, and
 * with these weights their losses (and gradients) add up to the minibatch's.
 */
export const aggregationWeights = (tokensPerSequence: ReadonlyArray<number>, mode: LossAggregation = "token-mean"): Array<number> => {
  checkAggregation(mode)
  const total = tokensPerSequence.reduce((a, b) => a + b, 0)
  const sequences = Math.max(1, tokensPerSequence.filter((n) => n > 0).length)
  return tokensPerSequence.map((n) =>
    n === 0 ? 0 : mode === "token-mean" ? 1 / Math.max(1, total) : mode === "seq-mean-token-mean" ? 1 / (sequences * n) : 1 / sequences
  )
}

export interface PolicyLossInput {
  /** log π_θ(token) under the policy being trained, [B, T]. */
  readonly logprobs: tf.Tensor
  /** log π_old(token) under the policy that generated the batch, [B, T]. */
  readonly oldLogprobs: tf.Tensor
  /** Per-token advantages, [B, T]. */
  readonly advantages: tf.Tensor
  readonly mask: tf.Tensor
  /** The ratio is clipped below at 1 − clipLow. Default 0.2. */
  readonly clipLow?: number
  /** The ratio is clipped above at 1 + clipHigh. Default 0.2; DAPO's clip-higher raises it (0.28) so low-probability tokens can grow. */
  readonly clipHigh?: number
  readonly aggregation?: LossAggregation
}

export interface PolicyLoss {
  readonly loss: tf.Scalar
  /** Share of generated tokens where the clipped term won (their gradient is 0). */
  readonly clipFraction: tf.Scalar
  /** Mean over generated tokens of ½(log π_θ − log π_old)², the k2 estimate of KL(π_old ‖ π_θ). */
  readonly approxKl: tf.Scalar
}

const checkClip = (value: number, field: string, max: number): number => {
  if (!(Number.isFinite(value) && value >= 0 && value < max)) {
    throw new Error(`${field} must be a number in [0, ${max}), got ${String(value)}`)
  }
  return value
}

/**
 * PPO's clipped surrogate (verl's `compute_policy_loss`), per token:
 *   r = exp(log π_θ − log π_old),   loss = max(−A·r, −A·clip(r, 1 − clipLow, 1 + clipHigh)).
 * The max (a pessimistic bound) stops the update once the ratio has moved past the clip in the direction the
 * advantage favours; moves in the other direction are never clipped, so a bad step can always be undone.
 */
export const policyLoss = (input: PolicyLossInput): PolicyLoss => {
  const { logprobs, oldLogprobs, advantages, mask } = input
  const clipLow = checkClip(input.clipLow ?? 0.2, "clipLow", 1)
  const clipHigh = checkClip(input.clipHigh ?? 0.2, "clipHigh", Infinity)
  const aggregation = input.aggregation ?? "token-mean"
  checkAggregation(aggregation)
  checkSameShape("oldLogprobs", oldLogprobs, logprobs, "logprobs")
  checkSameShape("advantages", advantages, logprobs, "logprobs")
  checkSameShape("mask", mask, logprobs, "logprobs")
  return tf.tidy(() => {
    return {
      loss: aggregate(clippedSurrogate(logprobs, oldLogprobs, advantages, clipLow, clipHigh), mask, aggregation),
      clipFraction: maskedMean(clippedTokens(logprobs, oldLogprobs, advantages, clipLow, clipHigh), mask),
      approxKl: maskedMean(k2(logprobs, oldLogprobs), mask)
    }
  })
}

export interface ValueLossInput {
  /** The critic's values now, [B, T]. */
  readonly values: tf.Tensor
  /** The critic's values when the batch was scored, [B, T]. */
  readonly oldValues: tf.Tensor
  /** GAE returns, the regression target, [B, T]. */
  readonly returns: tf.Tensor
  readonly mask: tf.Tensor
  /** How far the value may move from oldValues before its error stops counting. Default 0.2. */
  readonly clip?: number
  readonly aggregation?: LossAggregation
}

export interface ValueLoss {
  readonly loss: tf.Scalar
  /** Share of generated tokens where the clipped error was the larger one. */
  readonly clipFraction: tf.Scalar
}

/**
 * PPO's clipped value loss (verl's `compute_value_loss`), per token:
 *   ½·max((v − R)², (clip(v, old − c, old + c) − R)²).
 * The max keeps the critic from jumping far from the values the advantages were computed with in one batch.
 */
export const valueLoss = (input: ValueLossInput): ValueLoss => {
  const { values, oldValues, returns, mask } = input
  const clip = input.clip ?? 0.2
  if (!(clip >= 0)) throw new Error(`clip must be a number ≥ 0, got ${String(clip)}`)
  const aggregation = input.aggregation ?? "token-mean"
  checkAggregation(aggregation)
  checkSameShape("oldValues", oldValues, values, "values")
  checkSameShape("returns", returns, values, "values")
  checkSameShape("mask", mask, values, "values")
  return tf.tidy(() => {
    const clippedValues = tf.add(oldValues, tf.clipByValue(tf.sub(values, oldValues), -clip, clip))
    const unclippedError = tf.square(tf.sub(values, returns))
    const clippedError = tf.square(tf.sub(clippedValues, returns))
    return {
      loss: aggregate(clippedValueError(values, oldValues, returns, clip), mask, aggregation),
      clipFraction: maskedMean(tf.cast(tf.greater(clippedError, unclippedError), "float32"), mask)
    }
  })
}

/** Entropy of the softmax at each position: [B, T, V] logits → [B, T], H = −Σ p·log p. */
export const entropyFromLogits = (logits: tf.Tensor): tf.Tensor =>
  tf.tidy(() => {
    const logp = tf.logSoftmax(logits, -1)
    return tf.neg(tf.sum(tf.mul(tf.exp(logp), logp), -1))
  })

export type KlEstimator = "k1" | "k3"

/**
 * Per-token estimate of KL(π_θ ‖ π_ref) from the sampled token's logprobs (Schulman's estimators), [B, T].
 * - "k1": log π_θ − log π_ref. Unbiased, but negative on some tokens and high-variance.
 * - "k3": exp(ref − lp) − (ref − lp) − 1. Unbiased and never negative, lower variance: what GRPO uses as a
 *   loss term. Clamped to [0, 10] as verl's low_var_kl: 0 because float rounding can dip below it near
 *   lp = ref; 10 so one token whose reference probability collapsed cannot dominate the gradient.
 */
export const klPenalty = (logprobs: tf.Tensor, refLogprobs: tf.Tensor, kind: KlEstimator = "k3"): tf.Tensor => {
  checkSameShape("refLogprobs", refLogprobs, logprobs, "logprobs")
  if (kind === "k1") return tf.sub(logprobs, refLogprobs)
  if (kind !== "k3") throw new Error(`kl kind must be "k1" or "k3", got ${String(kind)}`)
  return tf.tidy(() => {
    const logRatio = tf.sub(refLogprobs, logprobs)
    return tf.clipByValue(tf.sub(tf.sub(tf.exp(logRatio), logRatio), 1), 0, 10)
  })
}

export interface SftLossInput {
  readonly logprobs: tf.Tensor
  readonly mask: tf.Tensor
  readonly aggregation?: LossAggregation
}

/** Supervised fine-tuning: the negative log-likelihood of the mask-1 tokens. */
export const sftLoss = (input: SftLossInput): tf.Scalar => {
  checkSameShape("mask", input.mask, input.logprobs, "logprobs")
  return tf.tidy(() => aggregate(tf.neg(input.logprobs), input.mask, input.aggregation ?? "token-mean"))
}
