/**
 * The warm start's SFT does not depend on the order the demonstrations finished in: an engine hands records
 * over as episodes end, which varies with the machine's timing, and SFT puts them in the order of their ids
 * before its seeded shuffle. The same demonstrations and seed give the same weights; another seed, others.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Trainer } from "../actors/trainer/Trainer.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { tinyModel } from "./support.ts"

/** A one-turn demonstration whose assistant says `token` four times after a prompt of its own. */
const demonstration = (id: string, token: number): Trajectory.Trajectory => {
  const responseIds = [token, token, token, token]
  const t: Trajectory.Trajectory = {
    id,
    groupId: id,
    interaction: "demo",
    messages: [{ role: "user", content: "go" }, { role: "assistant", content: "x" }],
    promptIds: [11, 12, token % 50],
    responseIds,
    responseMask: [1, 1, 1, 1],
    responseLogprobs: [0, 0, 0, 0],
    turns: [{ role: "assistant", text: "x", tokenStart: 0, tokenEnd: 4, reward: 1, policyVersion: 0, timings: { startMs: 0, durationMs: 0 } }],
    reward: 1,
    turnRewards: [1],
    numTurns: 1,
    finishReason: "done",
    error: null,
    seed: 0
  }
  expect(Trajectory.violation(t)).toBeUndefined()
  return t
}

describe("SFT on demonstrations", () => {
  let model: string
  const trainers: Array<Trainer> = []
  beforeAll(async () => {
    model = await tinyModel(0)
  })
  afterAll(() => trainers.forEach((trainer) => trainer.dispose()))

  const trainedWeights = async (demonstrations: ReadonlyArray<Trajectory.Trajectory>, seed: number) => {
    const trainer = await Trainer.create({ model, backend: "wasm" })
    trainers.push(trainer)
    // Fewer demonstrations per minibatch than there are: the order decides what each step sees.
    trainer.sft(demonstrations, { steps: 5, batchSize: 2, learningRate: 1e-2, seed })
    return trainer.model.weights()
  }

  it("gives the same weights whatever order the demonstrations finished in, and other weights for another seed", async () => {
    const demonstrations = Array.from({ length: 7 }, (_, i) => demonstration(`demo-${i}-0`, 40 + 13 * i))
    const shuffled = [3, 6, 0, 5, 1, 4, 2].map((i) => demonstrations[i]!)
    const inOrder = await trainedWeights(demonstrations, 3)
    const outOfOrder = await trainedWeights(shuffled, 3)
    const otherSeed = await trainedWeights(demonstrations, 4)
    const differs = (a: typeof inOrder, b: typeof inOrder) =>
      [...a.keys()].some((name) => a.get(name)!.data.some((x, i) => x !== b.get(name)!.data[i]))
    expect(differs(inOrder, outOfOrder)).toBe(false)
    expect(differs(inOrder, otherSeed)).toBe(true)
  })
})
