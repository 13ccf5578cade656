import { describe, expect, it } from "vitest"
import type { DatasetRow } from "../src/DatasetRow.ts"
import {
  arithmetic,
  ArithmeticInteraction,
  extractAnswer,
  generateProblem,
  incorrectFeedback,
  type ArithmeticConfig,
  type ArithmeticProblem
} from "../src/environments/arithmetic.ts"
import { fromInteraction } from "../src/Interaction.ts"

const signal = new AbortController().signal

const recompute = (problem: ArithmeticProblem): number => {
  switch (problem.kind) {
    case "addition":
      return problem.a + problem.b
    case "subtraction":
      return problem.a - problem.b
    case "multiplication":
      return problem.a * problem.b
    case "two-step":
      return problem.a + problem.b * problem.c
  }
}

const firstRow = (config: ArithmeticConfig = {}): DatasetRow => arithmetic.rows!({ seed: 3, count: 1, config })[0]!
const groundTruth = (row: DatasetRow): string => String(row.extra_info.interaction_kwargs["ground_truth"])

const episode = async (config: ArithmeticConfig = {}) => {
  const row = firstRow(config)
  const environment = arithmetic.make(config)
  await environment.reset({ seed: 0, row, signal })
  return { environment, answer: groundTruth(row) }
}

describe("arithmetic problems", () => {
  it("have integer answers that match their numbers, for every template", () => {
    const kinds = new Set<string>()
    for (let seed = 0; seed < 1000; seed++) {
      const problem = generateProblem(seed)
      kinds.add(problem.kind)
      expect(Number.isInteger(problem.answer)).toBe(true)
      expect(problem.answer).toBeGreaterThanOrEqual(0)
      expect(problem.answer).toBe(recompute(problem))
      expect(problem.question).toContain(String(problem.a))
      expect(problem.question).toContain(String(problem.b))
    }
    expect([...kinds].sort()).toEqual(["addition", "multiplication", "subtraction", "two-step"])
  })

  it("makes the same verl rows for the same seed, with the answer format in the system prompt", () => {
    const rows = arithmetic.rows!({ seed: 11, count: 5, config: {} })
    expect(arithmetic.rows!({ seed: 11, count: 5, config: {} })).toEqual(rows)
    expect(arithmetic.rows!({ seed: 12, count: 5, config: {} })).not.toEqual(rows)
    for (const row of rows) {
      const problem = generateProblem(row.extra_info.seed!)
      expect(row.prompt[0]).toMatchObject({ role: "system" })
      expect(row.prompt[0]?.content).toContain("####")
      expect(row.prompt[1]).toEqual({ role: "user", content: problem.question })
      expect(row.extra_info.interaction_kwargs).toEqual({ name: "arithmetic", ground_truth: String(problem.answer) })
    }
  })
})

describe("arithmetic scoring", () => {
  it("reads the answer after '####' strictly, and the last number flexibly", () => {
    expect(extractAnswer("3 + 4 = 7\n#### 7", "strict")).toBe("7")
    expect(extractAnswer("#### 1,234.", "strict")).toBe("1234")
    expect(extractAnswer("The answer is 7", "strict")).toBeUndefined()
    expect(extractAnswer("3 + 4 = 7, so 7.", "flexible")).toBe("7")
  })

  it("pays 1 and ends the episode on a correct answer", async () => {
    const { environment, answer } = await episode()
    const result = await environment.step(`Adding up gives ${answer}.\n#### ${answer}`, { signal })
    expect(result).toMatchObject({ reward: 1, done: true })
  })

  it("asks for another try after a wrong answer, until maxTurns", async () => {
    const { environment, answer } = await episode({ maxTurns: 3 })
    const wrong = `#### ${Number(answer) + 1}`
    for (let turn = 1; turn < 3; turn++) {
      expect(await environment.step(wrong, { signal })).toMatchObject({ observation: incorrectFeedback, reward: 0, done: false })
    }
    expect(await environment.step(wrong, { signal })).toMatchObject({ reward: 0, done: true })
  })

  it("ignores an answer without '####' unless the format is flexible", async () => {
    const strict = await episode()
    expect((await strict.environment.step(`It is ${strict.answer}`, { signal })).reward).toBe(0)
    const flexible = await episode({ format: "flexible" })
    expect((await flexible.environment.step(`It is ${flexible.answer}`, { signal })).reward).toBe(1)
  })

  it("scores the best attempt so far", () => {
    const interaction = new ArithmeticInteraction()
    interaction.start("a", { name: "arithmetic", ground_truth: "12" })
    interaction.generateResponse("a", [{ role: "assistant", content: "#### 11" }])
    expect(interaction.calculateScore("a")).toBe(0)
    interaction.generateResponse("a", [{ role: "assistant", content: "#### 12" }])
    expect(interaction.calculateScore("a")).toBe(1)
  })

  it("rejects a config it cannot run", () => {
    expect(() => arithmetic.make({ maxTurns: 0 })).toThrow("maxTurns")
  })
})

describe("arithmetic through the interaction adapter", () => {
  class CountingArithmetic extends ArithmeticInteraction {
    finalized = 0
    override finalize(instanceId: string): void {
      this.finalized += 1
      super.finalize(instanceId)
    }
  }

  it("finalizes after a finished episode", async () => {
    const interaction = new CountingArithmetic()
    const environment = fromInteraction(interaction)
    const row = firstRow()
    await environment.reset({ seed: 0, row, signal })
    await environment.step(`#### ${groundTruth(row)}`, { signal })
    await environment.close?.()
    expect(interaction.finalized).toBe(1)
  })

  it("finalizes when a step throws", async () => {
    class Exploding extends CountingArithmetic {
      override generateResponse(): never {
        throw new Error("scorer crashed")
      }
    }
    const interaction = new Exploding()
    const environment = fromInteraction(interaction)
    await environment.reset({ seed: 0, row: firstRow(), signal })
    await expect(Promise.resolve().then(() => environment.step("#### 1", { signal }))).rejects.toThrow("scorer crashed")
    await environment.close?.()
    expect(interaction.finalized).toBe(1)
  })

  it("finalizes when the row has no ground truth and reset throws", async () => {
    const interaction = new CountingArithmetic()
    const environment = fromInteraction(interaction)
    const row: DatasetRow = { prompt: [], extra_info: { interaction_kwargs: { name: "arithmetic" } } }
    await expect(Promise.resolve().then(() => environment.reset({ seed: 0, row, signal }))).rejects.toThrow("ground_truth")
    await environment.close?.()
    expect(interaction.finalized).toBe(1)
  })
})
