import * as tf from "@tensorflow/tfjs"
import { beforeAll, describe, expect, it } from "vitest"
import { gae, groupAdvantages, tokenRewards, whiten } from "../actors/trainer/advantages.ts"
import { aggregate, entropyFromLogits, klPenalty, policyLoss, sftLoss, valueLoss } from "../actors/trainer/losses.ts"
import { AdamW, learningRateAt } from "../actors/trainer/optimizer.ts"
import { rewardManager, type RewardFunction } from "../actors/trainer/rewards.ts"
import type { Trajectory, Turn } from "../src/Trajectory.ts"

beforeAll(async () => {
  await tf.setBackend("cpu")
  await tf.ready()
})

const values = (t: tf.Tensor): Array<number> => Array.from(t.dataSync())

const expectClose = (actual: ArrayLike<number>, expected: ReadonlyArray<number>, digits = 5) => {
  expect(actual.length).toBe(expected.length)
  expected.forEach((e, i) => expect(actual[i], `index ${i}`).toBeCloseTo(e, digits))
}

// --- trajectory builders -------------------------------------------------------------------------------

const turn = (role: Turn["role"], tokenStart: number, tokenEnd: number, reward = 0, info?: Record<string, unknown>): Turn => ({
  role,
  text: "",
  tokenStart,
  tokenEnd,
  reward,
  policyVersion: role === "assistant" ? 0 : null,
  timings: { startMs: 0, durationMs: 0 },
  ...(info === undefined ? {} : { info })
})

const trajectory = (fields: Partial<Trajectory>): Trajectory => ({
  id: "0-0",
  groupId: "0",
  interaction: "test",
  messages: [],
  promptIds: [1, 2],
  responseIds: [],
  responseMask: [],
  responseLogprobs: [],
  turns: [],
  reward: 0,
  turnRewards: [],
  numTurns: 0,
  finishReason: "done",
  error: null,
  seed: 0,
  ...fields
})

/**
 * Three assistant turns of 2 tokens each, with environment turns of 1 token between them:
 * tokens 0-1 assistant, 2 user, 3-4 assistant, 5 user, 6-7 assistant.
 * Step rewards 0, −0.1, 1 (sum 0.9); infos: invalid, invalid_action, success.
 */
const threeTurnEpisode = (lastInfo: Record<string, unknown> = { success: true }): Trajectory =>
  trajectory({
    responseIds: [10, 11, 12, 13, 14, 15, 16, 17],
    responseMask: [1, 1, 0, 1, 1, 0, 1, 1],
    responseLogprobs: [-0.1, -0.1, 0, -0.1, -0.1, 0, -0.1, -0.1],
    turns: [
      turn("assistant", 0, 2, 0, { invalid: true }),
      turn("user", 2, 3, 0, { invalid: true }), // an environment turn's flag is not the policy's fault
      turn("assistant", 3, 5, -0.1, { invalid_action: true }),
      turn("user", 5, 6),
      turn("assistant", 6, 8, 1, lastInfo)
    ],
    turnRewards: [0, -0.1, 1],
    reward: 0.9,
    numTurns: 3
  })

// --- rewards ---------------------------------------------------------------------------------------------

describe("rewardManager", () => {
  const shaped = { successBonus: 5, invalidPenalty: 0.5, efficiencyBonus: 0.1, maxTurns: 10 }

  it("by default is the environment's own reward sum", () => {
    expect(rewardManager()(threeTurnEpisode())).toBeCloseTo(0 - 0.1 + 1, 10)
  })

  it("adds the success bonus, subtracts a penalty per invalid assistant turn, pays unused turns on success", () => {
    // 0.9 (steps) + 5 (success) − 0.5 × 2 (turns 1 and 3 invalid; the user turn does not count) + 0.1 × (10 − 3)
    expect(rewardManager(shaped)(threeTurnEpisode())).toBeCloseTo(0.9 + 5 - 1 + 0.7, 10)
  })

  it("pays neither the success nor the efficiency bonus on failure, but still the penalties", () => {
    expect(rewardManager(shaped)(threeTurnEpisode({ success: false }))).toBeCloseTo(0.9 - 1, 10)
    // Info on some turns but no success flag on the last assistant turn: not a success.
    expect(rewardManager(shaped)(threeTurnEpisode({}))).toBeCloseTo(0.9 - 1, 10)
  })

  it("counts only the last assistant turn's success", () => {
    const episode = threeTurnEpisode({ success: false })
    const early = trajectory({ ...episode, turns: [turn("assistant", 0, 2, 0, { success: true }), ...episode.turns.slice(1)] })
    expect(rewardManager({ successBonus: 5 })(early)).toBeCloseTo(0.9, 10)
  })

  it("falls back to done with a positive reward when no turn has info", () => {
    const plain = (finishReason: Trajectory["finishReason"], reward: number) =>
      trajectory({ turns: [turn("assistant", 0, 1, reward)], turnRewards: [reward], reward, numTurns: 1, finishReason })
    const manager = rewardManager({ successBonus: 2, efficiencyBonus: 0.5, maxTurns: 4 })
    expect(manager(plain("done", 1))).toBeCloseTo(1 + 2 + 0.5 * (4 - 1), 10)
    expect(manager(plain("max_turns", 1))).toBeCloseTo(1, 10)
    expect(manager(plain("done", 0))).toBeCloseTo(0, 10)
  })

  it("never pays a negative efficiency bonus when numTurns exceeds maxTurns", () => {
    expect(rewardManager({ efficiencyBonus: 1, maxTurns: 2 })(threeTurnEpisode())).toBeCloseTo(0.9, 10)
  })

  it("names the bad field in its errors", () => {
    expect(() => rewardManager({ efficiencyBonus: 0.1 })).toThrow(/rewards\.maxTurns/)
    expect(() => rewardManager({ efficiencyBonus: 0.1, maxTurns: 0 })).toThrow(/rewards\.maxTurns/)
    expect(() => rewardManager({ successBonus: Number.NaN })).toThrow(/rewards\.successBonus/)
    expect(() => rewardManager({ invalidPenalty: Infinity })).toThrow(/rewards\.invalidPenalty/)
  })

  it("accepts any function of a trajectory as a reward function", () => {
    const custom: RewardFunction = (t) => t.numTurns * 2
    expect(custom(threeTurnEpisode())).toBe(6)
  })
})

// --- advantages ------------------------------------------------------------------------------------------

describe("groupAdvantages", () => {
  // Groups interleaved on purpose: a = {1, 0, 0} at 0, 2, 5; b = {1, 3} at 1, 4; c = {5} at 3.
  const scores = [1, 1, 0, 5, 3, 0]
  const ids = ["a", "b", "a", "c", "b", "a"]

  it("normalises each score by its group's mean and sample std; a singleton gets 0", () => {
    // a: mean 1/3, deviations 2/3, −1/3, −1/3; sample var = (4/9 + 1/9 + 1/9) / 2 = 1/3, std = √(1/3)
    const stdA = Math.sqrt(1 / 3)
    // b: mean 2, deviations −1, 1; sample var = 2 / 1, std = √2
    const stdB = Math.sqrt(2)
    expectClose(groupAdvantages(scores, ids, { epsilon: 0 }), [
      2 / 3 / stdA,
      -1 / stdB,
      -1 / 3 / stdA,
      0,
      1 / stdB,
      -1 / 3 / stdA
    ], 10)
  })

  it("adds epsilon to the std", () => {
    const [first] = groupAdvantages([1, 3], ["g", "g"], { epsilon: 1 })
    expect(first).toBeCloseTo(-1 / (Math.sqrt(2) + 1), 10)
  })

  it("only centres when normalizeStd is false (Dr. GRPO)", () => {
    expectClose(groupAdvantages(scores, ids, { normalizeStd: false }), [2 / 3, -1, -1 / 3, 0, 1, -1 / 3], 10)
  })

  it("gives 0, not NaN, to a group of equal scores", () => {
    expectClose(groupAdvantages([2, 2], ["g", "g"]), [0, 0], 10)
  })

  it("rejects mismatched lengths", () => {
    expect(() => groupAdvantages([1, 2], ["a"])).toThrow(/differ in length/)
  })
})

describe("gae", () => {
  it("matches a hand-unrolled 3-step example", () => {
    const gamma = 0.9
    const lambda = 0.8
    // t=2 (terminal): δ = 1 + 0 − 0.7 = 0.3;          A2 = 0.3
    // t=1: δ = 0 + 0.9·0.7 − 0.6 = 0.03;              A1 = 0.03 + 0.72·0.3 = 0.246
    // t=0: δ = 0 + 0.9·0.6 − 0.5 = 0.04;              A0 = 0.04 + 0.72·0.246 = 0.21712
    const { advantages, returns } = gae([0, 0, 1], [0.5, 0.6, 0.7], gamma, lambda)
    expectClose(advantages, [0.21712, 0.246, 0.3], 10)
    expectClose(returns, [0.21712 + 0.5, 0.246 + 0.6, 0.3 + 0.7], 10)
  })

  it("with γ = λ = 1 gives reward-to-go minus value", () => {
    const { advantages, returns } = gae([1, 2, 3], [0.5, 0.5, 0.5], 1, 1)
    expectClose(advantages, [6 - 0.5, 5 - 0.5, 3 - 0.5], 10)
    expectClose(returns, [6, 5, 3], 10)
  })

  it("with λ = 0 gives one-step TD errors", () => {
    const { advantages } = gae([1, 0], [2, 3], 0.5, 0)
    // δ0 = 1 + 0.5·3 − 2 = 0.5; δ1 = 0 + 0 − 3 = −3
    expectClose(advantages, [0.5, -3], 10)
  })
})

describe("tokenRewards", () => {
  it("puts the whole score on the last generated token", () => {
    expectClose(tokenRewards(threeTurnEpisode(), 3), [0, 0, 0, 0, 0, 0, 0, 3], 10)
  })

  it("per-turn puts each assistant turn's reward on its last token and the remainder on the last token", () => {
    // Turn rewards 0 (token 1), −0.1 (token 4), 1 (token 7); remainder 3 − 0.9 = 2.1 joins token 7.
    const rewards = tokenRewards(threeTurnEpisode(), 3, "per-turn")
    expectClose(rewards, [0, 0, 0, 0, -0.1, 0, 0, 1 + 2.1], 10)
    expect(rewards.reduce((a, b) => a + b, 0)).toBeCloseTo(3, 10)
  })

  it("skips trailing mask-0 tokens when finding the last generated token", () => {
    const t = trajectory({ responseIds: [1, 2, 3], responseMask: [1, 1, 0], responseLogprobs: [0, 0, 0] })
    expectClose(tokenRewards(t, 2), [0, 2, 0], 10)
  })

  it("returns zeros when nothing was generated", () => {
    const t = trajectory({ responseIds: [1, 2], responseMask: [0, 0], responseLogprobs: [0, 0] })
    expectClose(tokenRewards(t, 5), [0, 0], 10)
  })
})

describe("whiten", () => {
  it("normalises the masked entries with the unbiased variance and zeroes the rest", () => {
    // masked values 0, 4, 2: mean 2, squares 4 + 4 + 0 = 8, var = 8 / 2 = 4, std 2
    expectClose(whiten([0, 4, 100, 2], [1, 1, 0, 1]), [-1, 1, 0, 0], 6)
  })

  it("keeps the mean when shiftMean is false", () => {
    expectClose(whiten([0, 4, 100, 2], [1, 1, 0, 1], { shiftMean: false }), [1, 3, 0, 2], 6)
  })
})

// --- losses ----------------------------------------------------------------------------------------------

describe("aggregate", () => {
  // Row 2 is padding (no mask-1 token); its losses must not count anywhere.
  const loss = () => tf.tensor2d([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
  const mask = () => tf.tensor2d([[1, 1, 0], [1, 0, 0], [0, 0, 0]])

  it("token-mean: sum over generated tokens / their count", () => {
    expect(aggregate(loss(), mask(), "token-mean").dataSync()[0]).toBeCloseTo((1 + 2 + 4) / 3, 6)
  })

  it("seq-mean-token-mean: each sequence's token mean, averaged over sequences with tokens", () => {
    // (1 + 2) / 2 = 1.5 and 4 / 1 = 4; the padding row is left out
    expect(aggregate(loss(), mask(), "seq-mean-token-mean").dataSync()[0]).toBeCloseTo((1.5 + 4) / 2, 6)
  })

  it("seq-mean-token-sum: each sequence's token sum, averaged over sequences with tokens", () => {
    expect(aggregate(loss(), mask(), "seq-mean-token-sum").dataSync()[0]).toBeCloseTo((3 + 4) / 2, 6)
  })

  it("gives 0 for an all-padding batch", () => {
    for (const mode of ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"] as const) {
      expect(aggregate(loss(), tf.zeros([3, 3]), mode).dataSync()[0]).toBe(0)
    }
  })

  it("rejects an unknown mode and mismatched shapes", () => {
    expect(() => aggregate(loss(), mask(), "mean" as never)).toThrow(/aggregation/)
    expect(() => aggregate(loss(), tf.ones([3, 2]), "token-mean")).toThrow(/shape/)
  })
})

describe("policyLoss", () => {
  // Row 0: ratios 1, 1.5, 0.5 with advantages 1, 1, −1.
  // Row 1: ratios 1.3, 0.7, (masked) with advantages −2, 2, 1e6.
  const ratios = [[1, 1.5, 0.5], [1.3, 0.7, 1]]
  const oldLogprobs = () => tf.tensor2d([[-1, -1, -1], [-2, -2, -2]])
  const logprobsOf = (rs: Array<Array<number>>) => tf.tensor2d(rs.map((row, b) => row.map((r) => Math.log(r) - (b === 0 ? 1 : 2))))
  const advantages = (masked = 1e6) => tf.tensor2d([[1, 1, -1], [-2, 2, masked]])
  const mask = () => tf.tensor2d([[1, 1, 1], [1, 1, 0]])

  // Per-token loss max(−A·r, −A·clip(r, 0.8, 1.2)):
  //   r=1,   A=1:  max(−1, −1)       = −1
  //   r=1.5, A=1:  max(−1.5, −1.2)    = −1.2  (clipped)
  //   r=0.5, A=−1: max(0.5, 0.8)      = 0.8   (clipped)
  //   r=1.3, A=−2: max(2.6, 2.4)      = 2.6   (not clipped: moving against the advantage is never clipped)
  //   r=0.7, A=2:  max(−1.4, −1.6)    = −1.4  (not clipped, same reason)
  const perToken = [[-1, -1.2, 0.8], [2.6, -1.4]]

  it("is the clipped surrogate, token-mean over the mask, with clip fraction and k2 KL", () => {
    const { loss, clipFraction, approxKl } = policyLoss({
      logprobs: logprobsOf(ratios),
      oldLogprobs: oldLogprobs(),
      advantages: advantages(),
      mask: mask()
    })
    expect(loss.rank).toBe(0)
    expect(loss.dataSync()[0]).toBeCloseTo((-1 - 1.2 + 0.8 + 2.6 - 1.4) / 5, 5)
    expect(clipFraction.dataSync()[0]).toBeCloseTo(2 / 5, 6)
    const squares = [1, 1.5, 0.5, 1.3, 0.7].map((r) => Math.log(r) ** 2)
    expect(approxKl.dataSync()[0]).toBeCloseTo((0.5 * squares.reduce((a, b) => a + b, 0)) / 5, 5)
  })

  it("aggregates per sequence when asked", () => {
    const base = { logprobs: logprobsOf(ratios), oldLogprobs: oldLogprobs(), advantages: advantages(), mask: mask() }
    const row0 = perToken[0]!.reduce((a, b) => a + b, 0) // −1.4
    const row1 = perToken[1]!.reduce((a, b) => a + b, 0) // 1.2
    expect(policyLoss({ ...base, aggregation: "seq-mean-token-mean" }).loss.dataSync()[0]).toBeCloseTo((row0 / 3 + row1 / 2) / 2, 5)
    expect(policyLoss({ ...base, aggregation: "seq-mean-token-sum" }).loss.dataSync()[0]).toBeCloseTo((row0 + row1) / 2, 5)
  })

  it("ignores a masked token, however large its advantage", () => {
    const lossWith = (masked: number) =>
      policyLoss({ logprobs: logprobsOf(ratios), oldLogprobs: oldLogprobs(), advantages: advantages(masked), mask: mask() }).loss.dataSync()[0]!
    expect(lossWith(1e6)).toBeCloseTo(lossWith(0), 6)
    expect(lossWith(-1e6)).toBeCloseTo(lossWith(0), 6)
  })

  it("has zero gradient where the clip is active, −A·r/N where it is not, and none under the mask", () => {
    const old = oldLogprobs()
    const adv = advantages()
    const m = mask()
    const grad = tf.grad((lp: tf.Tensor) => policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv, mask: m }).loss)
    // d/d lp of −A·r/5 is −A·r/5 (dr/dlp = r); clipped tokens and the masked one get 0.
    expectClose(values(grad(logprobsOf(ratios))), [-1 / 5, 0, 0, (2 * 1.3) / 5, (-2 * 0.7) / 5, 0], 5)
  })

  it("clips asymmetrically (clip-higher): a wider upper bound lets r = 1.5 through", () => {
    const old = oldLogprobs()
    const adv = advantages()
    const m = mask()
    const lossOf = (lp: tf.Tensor) => policyLoss({ logprobs: lp, oldLogprobs: old, advantages: adv, mask: m, clipHigh: 0.6 })
    const { loss, clipFraction } = lossOf(logprobsOf(ratios))
    // r=1.5 < 1.6 now counts unclipped: −1.5 instead of −1.2; only r=0.5 (below 1 − 0.2) stays clipped.
    expect(loss.dataSync()[0]).toBeCloseTo((-1 - 1.5 + 0.8 + 2.6 - 1.4) / 5, 5)
    expect(clipFraction.dataSync()[0]).toBeCloseTo(1 / 5, 6)
    const grad = tf.grad((lp: tf.Tensor) => lossOf(lp).loss)
    expect(values(grad(logprobsOf(ratios)))[1]).toBeCloseTo(-1.5 / 5, 5)
  })

  it("rejects a bad clip", () => {
    const base = { logprobs: logprobsOf(ratios), oldLogprobs: oldLogprobs(), advantages: advantages(), mask: mask() }
    expect(() => policyLoss({ ...base, clipLow: 1 })).toThrow(/clipLow/)
    expect(() => policyLoss({ ...base, clipHigh: -0.1 })).toThrow(/clipHigh/)
  })
})

describe("valueLoss", () => {
  it("is ½·max of the unclipped and clipped squared errors, over the mask", () => {
    const { loss, clipFraction } = valueLoss({
      values: tf.tensor2d([[1, 0.5, 0], [2, 0, 9]]),
      oldValues: tf.tensor2d([[0.5, 0.5, 0.5], [1, 0, 0]]),
      returns: tf.tensor2d([[1, 2, 0], [0, 1, 9]]),
      mask: tf.tensor2d([[1, 1, 1], [1, 1, 0]]),
      clip: 0.2
    })
    // v=1,   old 0.5 → clipped 0.7, R=1: max(0, 0.09)    → 0.045 (clipped wins)
    // v=0.5, old 0.5 → 0.5,         R=2: max(2.25, 2.25) → 1.125
    // v=0,   old 0.5 → clipped 0.3, R=0: max(0, 0.09)    → 0.045 (clipped wins)
    // v=2,   old 1   → clipped 1.2, R=0: max(4, 1.44)    → 2
    // v=0,   old 0   → 0,           R=1: max(1, 1)       → 0.5
    // (v=9 masked)
    expect(loss.dataSync()[0]).toBeCloseTo((0.045 + 1.125 + 0.045 + 2 + 0.5) / 5, 5)
    expect(clipFraction.dataSync()[0]).toBeCloseTo(2 / 5, 6)
  })
})

describe("entropyFromLogits", () => {
  it("is ln V for uniform logits and −Σ p ln p otherwise", () => {
    // Row 2: probabilities ∝ 1, 1, 2, 4 → 1/8, 1/8, 1/4, 1/2;
    // H = 2·(1/8)·ln 8 + (1/4)·ln 4 + (1/2)·ln 2 = (3/4 + 1/2 + 1/2)·ln 2 = 1.75·ln 2
    const logits = tf.tensor3d([[[0, 0, 0, 0], [0, 0, Math.log(2), Math.log(4)]]])
    const entropy = entropyFromLogits(logits)
    expect(entropy.shape).toEqual([1, 2])
    expectClose(values(entropy), [Math.log(4), 1.75 * Math.log(2)], 5)
  })
})

describe("klPenalty", () => {
  const logprobs = () => tf.tensor2d([[-1, -2, -0.5]])
  const ref = () => tf.tensor2d([[-1, -1, -2]])

  it("k1 is the log-ratio", () => {
    expectClose(values(klPenalty(logprobs(), ref(), "k1")), [0, 1, -1.5].map((x) => -x), 6)
  })

  it("k3 is exp(x) − x − 1 with x = ref − lp", () => {
    // x = 0, 1, −1.5
    expectClose(values(klPenalty(logprobs(), ref(), "k3")), [0, Math.E - 2, Math.exp(-1.5) + 0.5], 5)
  })

  it("k3 is never negative, where k1 is; and capped at 10", () => {
    const lp = tf.randomNormal([8, 16], -2, 1, "float32", 7)
    const rf = tf.randomNormal([8, 16], -2, 1, "float32", 8)
    expect(Math.min(...values(klPenalty(lp, rf, "k3")))).toBeGreaterThanOrEqual(0)
    expect(Math.min(...values(klPenalty(lp, rf, "k1")))).toBeLessThan(0)
    // x = 5: exp(5) − 6 ≈ 142 → 10
    expect(values(klPenalty(tf.tensor2d([[-6]]), tf.tensor2d([[-1]]), "k3"))[0]).toBe(10)
  })
})

describe("sftLoss", () => {
  const logprobs = () => tf.tensor2d([[-1, -2, -3], [-0.5, -4, -9]])
  const mask = () => tf.tensor2d([[1, 1, 0], [1, 0, 0]])

  it("is the negative log-likelihood of the generated tokens, per aggregation", () => {
    expect(sftLoss({ logprobs: logprobs(), mask: mask() }).dataSync()[0]).toBeCloseTo((1 + 2 + 0.5) / 3, 6)
    expect(sftLoss({ logprobs: logprobs(), mask: mask(), aggregation: "seq-mean-token-mean" }).dataSync()[0]).toBeCloseTo((1.5 + 0.5) / 2, 6)
    expect(sftLoss({ logprobs: logprobs(), mask: mask(), aggregation: "seq-mean-token-sum" }).dataSync()[0]).toBeCloseTo((3 + 0.5) / 2, 6)
  })

  it("has gradient −1/N on generated tokens and 0 elsewhere", () => {
    const m = mask()
    const grad = tf.grad((lp: tf.Tensor) => sftLoss({ logprobs: lp, mask: m }))
    expectClose(values(grad(logprobs())), [-1 / 3, -1 / 3, 0, -1 / 3, 0, 0], 6)
  })
})

// --- optimizer -------------------------------------------------------------------------------------------

describe("learningRateAt", () => {
  it("constant, with and without warmup", () => {
    expect(learningRateAt(1e-3, { kind: "constant" }, 1)).toBe(1e-3)
    expect(learningRateAt(1e-3, { kind: "constant" }, 1000)).toBe(1e-3)
    const warm = { kind: "constant", warmupSteps: 4 } as const
    expect([1, 2, 4, 5].map((s) => learningRateAt(1, warm, s))).toEqual([0.25, 0.5, 1, 1])
  })

  it("linear: warmup, then down to minRatio at totalSteps, then flat", () => {
    const schedule = { kind: "linear", warmupSteps: 2, totalSteps: 10, minRatio: 0.1 } as const
    // step 6: progress (6 − 2) / (10 − 2) = 0.5 → 0.1 + 0.9·(1 − 0.5) = 0.55
    expectClose([1, 2, 6, 10, 20].map((s) => learningRateAt(1, schedule, s)), [0.5, 1, 0.55, 0.1, 0.1], 12)
  })

  it("cosine: half a cosine from base to minRatio", () => {
    const schedule = { kind: "cosine", totalSteps: 4 } as const
    // progress s/4: 0.5·(1 + cos(π/4)), 0.5·(1 + cos(π/2)) = 0.5, 0.5·(1 + cos π) = 0
    expectClose([1, 2, 4].map((s) => learningRateAt(2, schedule, s)), [1 + Math.SQRT1_2, 1, 0], 12)
    expect(learningRateAt(2, { kind: "cosine", totalSteps: 4, minRatio: 0.5 }, 4)).toBeCloseTo(1, 12)
  })

  it("names the bad schedule field", () => {
    expect(() => learningRateAt(1, { kind: "linear", totalSteps: 0 }, 1)).toThrow(/optimizer\.schedule\.totalSteps/)
    expect(() => learningRateAt(1, { kind: "cosine", totalSteps: 5, warmupSteps: 6 }, 1)).toThrow(/optimizer\.schedule\.warmupSteps/)
    expect(() => learningRateAt(1, { kind: "cosine", totalSteps: 5, minRatio: 2 }, 1)).toThrow(/optimizer\.schedule\.minRatio/)
  })
})

describe("AdamW", () => {
  const b1 = 0.9
  const b2 = 0.999
  const eps = 1e-8

  /** One AdamW coordinate, unrolled by hand: returns w after each step. */
  const handAdamW = (w0: number, gradients: Array<number>, lr: number, wd: number): Array<number> => {
    let w = w0
    let m = 0
    let v = 0
    const out: Array<number> = []
    gradients.forEach((g, i) => {
      const t = i + 1
      m = b1 * m + (1 - b1) * g
      v = b2 * v + (1 - b2) * g * g
      const mHat = m / (1 - b1 ** t)
      const vHat = v / (1 - b2 ** t)
      w = w - lr * (mHat / (Math.sqrt(vHat) + eps) + wd * w)
      out.push(w)
    })
    return out
  }

  const setup = () => {
    const weight = tf.variable(tf.tensor2d([[1, -2]]))
    const bias = tf.variable(tf.tensor1d([0.5]))
    return { weight, bias, variables: new Map<string, tf.Variable>([["weight", weight], ["bias", bias]]) }
  }

  it("first step: the bias-corrected update is sign(g), plus decoupled decay on the matrix only", () => {
    const { weight, bias, variables } = setup()
    const opt = new AdamW(variables, { learningRate: 0.1, weightDecay: 0.1, maxGradNorm: 0 })
    const result = opt.step({ weight: tf.tensor2d([[0.2, -0.4]]), bias: tf.tensor1d([0.1]) })
    // weight: 1 − 0.1·(1 + 0.1·1) = 0.89;  −2 − 0.1·(−1 + 0.1·(−2)) = −1.88
    // bias (1-D, not decayed): 0.5 − 0.1·1 = 0.4
    expectClose(values(weight), [0.89, -1.88], 6)
    expectClose(values(bias), [0.4], 6)
    expect(result.learningRate).toBe(0.1)
    expect(result.clipped).toBe(false)
    expect(result.gradNorm).toBeCloseTo(Math.sqrt(0.04 + 0.16 + 0.01), 6)
    expect(opt.stepCount).toBe(1)
    opt.dispose()
  })

  it("second step matches the hand-unrolled update, with and without weight decay", () => {
    for (const wd of [0, 0.1]) {
      const { weight, bias, variables } = setup()
      const opt = new AdamW(variables, { learningRate: 0.1, weightDecay: wd, maxGradNorm: 0 })
      opt.step({ weight: tf.tensor2d([[0.2, -0.4]]), bias: tf.tensor1d([0.1]) })
      opt.step({ weight: tf.tensor2d([[-0.1, 0.3]]), bias: tf.tensor1d([0.3]) })
      expectClose(values(weight), [handAdamW(1, [0.2, -0.1], 0.1, wd)[1]!, handAdamW(-2, [-0.4, 0.3], 0.1, wd)[1]!], 5)
      expectClose(values(bias), [handAdamW(0.5, [0.1, 0.3], 0.1, 0)[1]!], 5)
      expect(opt.stepCount).toBe(2)
      opt.dispose()
    }
  })

  it("with a zero gradient only decays, and never decays a 1-D parameter", () => {
    const { weight, bias, variables } = setup()
    const opt = new AdamW(variables, { learningRate: 0.1, weightDecay: 0.5 })
    opt.step({ weight: tf.zeros([1, 2]), bias: tf.zeros([1]) })
    // w·(1 − lr·wd) = w·0.95; the bias is untouched
    expectClose(values(weight), [0.95, -1.9], 6)
    expectClose(values(bias), [0.5], 7)
    opt.dispose()
  })

  it("clips the global gradient norm before the moments", () => {
    const { variables } = setup()
    const opt = new AdamW(variables, { learningRate: 0.1, maxGradNorm: 1 })
    const result = opt.step({ weight: tf.tensor2d([[3, 0]]), bias: tf.tensor1d([4]) })
    // ‖(3, 0, 4)‖ = 5 > 1: scaled by 1/5 to (0.6, 0, 0.8); m = 0.1·g, v = 0.001·g²
    expect(result.gradNorm).toBeCloseTo(5, 5)
    expect(result.clipped).toBe(true)
    const { moments } = opt.state()
    expectClose(moments.get("weight")!.m, [0.06, 0], 6)
    expectClose(moments.get("bias")!.m, [0.08], 6)
    expectClose(moments.get("bias")!.v, [0.001 * 0.64], 8)
    opt.dispose()
  })

  it("leaves gradients under the limit alone", () => {
    const { variables } = setup()
    const opt = new AdamW(variables, { learningRate: 0.1, maxGradNorm: 1 })
    const result = opt.step({ weight: tf.tensor2d([[0.3, 0]]), bias: tf.tensor1d([0.4]) })
    expect(result.gradNorm).toBeCloseTo(0.5, 6)
    expect(result.clipped).toBe(false)
    expectClose(opt.state().moments.get("bias")!.m, [0.04], 7)
    opt.dispose()
  })

  it("follows its schedule: warmup's first step uses base/warmupSteps", () => {
    const { weight, variables } = setup()
    const opt = new AdamW(variables, { learningRate: 0.1, weightDecay: 0, maxGradNorm: 0 }, { kind: "linear", warmupSteps: 4, totalSteps: 10 })
    const result = opt.step(new Map([["weight", tf.tensor2d([[1, 1]])]]))
    expect(result.learningRate).toBeCloseTo(0.025, 12)
    // sign-like first step at lr 0.025
    expectClose(values(weight), [1 - 0.025, -2 - 0.025], 6)
    opt.dispose()
  })

  it("restores its state: a restored optimizer steps exactly like the original", () => {
    const a = setup()
    const b = setup()
    const optA = new AdamW(a.variables, { learningRate: 0.1 })
    optA.step({ weight: tf.tensor2d([[0.2, -0.4]]), bias: tf.tensor1d([0.1]) })
    b.weight.assign(a.weight)
    b.bias.assign(a.bias)
    const optB = new AdamW(b.variables, { learningRate: 0.1 })
    optB.loadState(optA.state())
    expect(optB.stepCount).toBe(1)
    const grads = () => ({ weight: tf.tensor2d([[-0.1, 0.3]]), bias: tf.tensor1d([0.3]) })
    optA.step(grads())
    optB.step(grads())
    expectClose(values(b.weight), values(a.weight), 7)
    expectClose(values(b.bias), values(a.bias), 7)
    optA.dispose()
    optB.dispose()
  })

  it("does not leak tensors across steps", () => {
    const { variables } = setup()
    const opt = new AdamW(variables, { learningRate: 0.1, maxGradNorm: 0.5 })
    const weightGrad = tf.tensor2d([[3, 0]])
    const biasGrad = tf.tensor1d([4])
    opt.step({ weight: weightGrad, bias: biasGrad })
    const before = tf.memory().numTensors
    for (let i = 0; i < 5; i++) opt.step({ weight: weightGrad, bias: biasGrad })
    expect(tf.memory().numTensors).toBe(before)
    opt.dispose()
    expect(tf.memory().numTensors).toBe(before - 4)
  })

  it("rejects bad config and unknown gradients, naming them", () => {
    const { variables } = setup()
    expect(() => new AdamW(variables, { learningRate: 0 })).toThrow(/optimizer\.learningRate/)
    expect(() => new AdamW(variables, { learningRate: 0.1, beta2: 1 })).toThrow(/optimizer\.beta2/)
    expect(() => new AdamW(variables, { learningRate: 0.1, weightDecay: -1 })).toThrow(/optimizer\.weightDecay/)
    const opt = new AdamW(variables, { learningRate: 0.1 })
    expect(() => opt.step({ embedding: tf.zeros([2]) })).toThrow(/"embedding"/)
    expect(() => opt.step({ bias: tf.zeros([2]) })).toThrow(/"bias"/)
    expect(() => opt.step({ bias: tf.tensor1d([Number.NaN]) })).toThrow(/NaN/)
    expect(opt.stepCount).toBe(0)
    opt.dispose()
  })
})
