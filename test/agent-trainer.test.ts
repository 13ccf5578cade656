/**
 * The trainer trains every chain of an agent's record: a trajectory whose agent rewrote its history keeps its
 * other token-consistent chains in `sequences`, and each chain's generated tokens count in the loss with the
 * episode's score and advantage (docs/agents.md).
 */
import * as tf from "@tensorflow/tfjs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Trainer } from "../actors/trainer/Trainer.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { tinyModel } from "./support.ts"

/** A chain: a prompt, then `generated` copies of `token` (mask 1) after one observation token (mask 0). */
const chain = (prompt: ReadonlyArray<number>, token: number, generated: number) => {
  const responseIds = [7, ...Array.from({ length: generated }, () => token)]
  return {
    messages: [{ role: "user" as const, content: "go" }, { role: "assistant" as const, content: "x" }],
    promptIds: prompt,
    responseIds,
    responseMask: responseIds.map((_, i) => (i === 0 ? 0 : 1) as 0 | 1),
    responseLogprobs: responseIds.map((_, i) => (i === 0 ? 0 : -6)),
    turns: [
      { role: "user" as const, text: "o", tokenStart: 0, tokenEnd: 1, reward: 0, policyVersion: null, timings: { startMs: 0, durationMs: 0 } },
      { role: "assistant" as const, text: "x", tokenStart: 1, tokenEnd: responseIds.length, reward: 0, policyVersion: 0, timings: { startMs: 0, durationMs: 0 } }
    ]
  }
}

/** An agent's record: the main chain generates token 40, the rewritten history's chain token 90. */
const record = (id: string, groupId: string, reward: number, withSequence: boolean): Trajectory.Trajectory => {
  const main = chain([11, 12, 13], 40, 6)
  const t: Trajectory.Trajectory = {
    id,
    groupId,
    interaction: "agent",
    ...main,
    reward,
    turnRewards: [reward],
    numTurns: 1,
    finishReason: "done",
    error: null,
    seed: 0,
    ...(withSequence ? { sequences: [chain([21, 22, 23, 24], 90, 5)] } : {})
  }
  expect(Trajectory.violation(t)).toBeUndefined()
  return t
}

/** The model's mean logprob of `token` after each position of `sequence` from `from` on. */
const meanLogprob = (trainer: Trainer, prefix: ReadonlyArray<number>, token: number, count: number) => {
  const sequence = [...prefix, 7, ...Array.from({ length: count }, () => token)]
  const scored = Array.from({ length: count }, (_, i) => prefix.length + 1 + i)
  const logprobs = tf.tidy(() => Array.from(trainer.model.score({ sequences: [sequence], scored: [scored] }, 1).logprobs.dataSync()))
  return logprobs.reduce((a, b) => a + b, 0) / logprobs.length
}

describe("the trainer on an agent's record with history rewrites", () => {
  let model: string
  beforeAll(async () => {
    model = await tinyModel(0)
  })
  const trainers: Array<Trainer> = []
  afterAll(() => trainers.forEach((trainer) => trainer.dispose()))

  it("SFT learns the tokens of every chain, not only the main one", async () => {
    const trainer = await Trainer.create({ model, backend: "wasm" })
    trainers.push(trainer)
    const before = meanLogprob(trainer, [21, 22, 23, 24], 90, 5)
    const metrics = trainer.sft([record("a", "0", 1, true)], { steps: 8, learningRate: 1e-2 })
    // 6 generated tokens in the main chain and 5 in the other.
    expect(metrics.tokens).toBe(8 * 11)
    const after = meanLogprob(trainer, [21, 22, 23, 24], 90, 5)
    expect(after - before).toBeGreaterThan(1)
  })

  it("a GRPO update scores each chain's tokens with its episode's advantage, one advantage per episode", async () => {
    const trainer = await Trainer.create({ model, backend: "wasm", optimizer: { learningRate: 1e-2 }, algorithm: { rewards: (t) => t.reward } })
    trainers.push(trainer)
    const before = meanLogprob(trainer, [21, 22, 23, 24], 90, 5)
    // A group of two: the one with the rewritten history won.
    const batch = [record("win", "g", 1, true), record("lose", "g", 0, false)]
    const metrics = trainer.update(batch)
    expect(metrics.trajectories).toBe(2)
    expect(metrics.skipped).toBe(0)
    expect(metrics.tokens).toBe(6 + 5 + 6)
    expect(metrics.score_mean).toBeCloseTo(0.5)
    for (let i = 0; i < 4; i++) trainer.update(batch)
    // The winner's other chain is reinforced (its main chain's tokens equal the loser's and cancel out).
    expect(meanLogprob(trainer, [21, 22, 23, 24], 90, 5) - before).toBeGreaterThan(0.5)
  })
})
