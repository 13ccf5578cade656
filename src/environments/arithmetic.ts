/**
 * Arithmetic: verl's Gsm8kInteraction on generated word problems. The model answers after '####'; a correct
 * answer scores 1 and ends the episode, a wrong one gets verl's "reflect and try again" feedback until the
 * turn limit. Written as an Interaction and run through `defineInteraction`, as verl would run it.
 */
import type { DatasetRow } from "../DatasetRow.ts"
import { defineInteraction, type Interaction, type InteractionKwargs, type InteractionResponse } from "../Interaction.ts"
import type { MessageInit } from "../Message.ts"
import { mulberry32 } from "../Seed.ts"

export type ArithmeticConfig = {
  /** "strict" (verl's default) reads the number after '####'; "flexible" reads the last number in the reply. */
  readonly format?: AnswerFormat
  /** Assistant turns before the episode ends unanswered. */
  readonly maxTurns?: number
}

export type AnswerFormat = "strict" | "flexible"

export const arithmeticDefaults = { format: "strict", maxTurns: 3 } as const

export const correctFeedback = "Your response is correct!"
export const incorrectFeedback = "Your response is incorrect! You need to reflect on your answer and try again."

const systemPrompt =
  "Solve the math problem. Think step by step, then write the final answer as an integer after '####', " +
  "for example '#### 42'."

/** A generated problem with its parts, so its answer can be checked independently of the question text. */
export type ArithmeticProblem =
  | { readonly kind: "addition"; readonly a: number; readonly b: number; readonly question: string; readonly answer: number }
  | { readonly kind: "subtraction"; readonly a: number; readonly b: number; readonly question: string; readonly answer: number }
  | { readonly kind: "multiplication"; readonly a: number; readonly b: number; readonly question: string; readonly answer: number }
  | {
      readonly kind: "two-step"
      readonly a: number
      readonly b: number
      readonly c: number
      readonly question: string
      readonly answer: number
    }

const names = ["Ava", "Ben", "Chloe", "Diego", "Emma", "Farah", "Gus", "Hana", "Ivan", "Jade"] as const
const items = ["apples", "marbles", "stickers", "pencils", "cookies", "shells", "coins", "books"] as const

/** One word problem per seed: the template, the person, the item and the numbers all come from the seed. */
export const generateProblem = (seed: number): ArithmeticProblem => {
  const random = mulberry32(seed)
  const between = (low: number, high: number): number => low + Math.floor(random() * (high - low + 1))
  const pick = <A>(options: ReadonlyArray<A>): A => options[Math.floor(random() * options.length)]!
  const name = pick(names)
  const item = pick(items)
  switch (pick(["addition", "subtraction", "multiplication", "two-step"] as const)) {
    case "addition": {
      const a = between(2, 50)
      const b = between(2, 50)
      const question = `${name} has ${a} ${item} and finds ${b} more. How many ${item} does ${name} have now?`
      return { kind: "addition", a, b, question, answer: a + b }
    }
    case "subtraction": {
      const a = between(10, 60)
      const b = between(1, a - 1)
      const question = `${name} has ${a} ${item} and gives away ${b}. How many ${item} does ${name} have left?`
      return { kind: "subtraction", a, b, question, answer: a - b }
    }
    case "multiplication": {
      const a = between(2, 9)
      const b = between(2, 12)
      const question = `${name} buys ${a} bags with ${b} ${item} in each bag. How many ${item} does ${name} buy?`
      return { kind: "multiplication", a, b, question, answer: a * b }
    }
    case "two-step": {
      const a = between(2, 30)
      const b = between(2, 6)
      const c = between(2, 9)
      const question = `${name} has ${a} ${item} and buys ${b} bags of ${c} ${item} each. How many ${item} does ${name} have now?`
      return { kind: "two-step", a, b, c, question, answer: a + b * c }
    }
  }
}

// verl's gsm8k scorer reads only the reply's last 300 characters.
const answerWindow = 300

/**
 * verl's gsm8k extraction: strict takes the last number after '####', flexible the last number anywhere.
 * Commas and '$' are dropped as verl drops them; a trailing period is dropped too, so "#### 42." counts.
 */
export const extractAnswer = (reply: string, format: AnswerFormat): string | undefined => {
  const tail = reply.slice(-answerWindow)
  const pattern = format === "strict" ? /####\s*\$?(-?[0-9.,]+)/g : /(-?[0-9.,]+)/g
  const candidates = [...tail.matchAll(pattern)]
    .map((match) => (match[1] ?? "").replace(/[,$]/g, "").replace(/\.+$/, ""))
    .filter((candidate) => candidate !== "" && candidate !== "-")
  return candidates.at(-1)
}

interface Attempts {
  readonly groundTruth: string
  turns: number
  bestScore: number
}

/** verl's Gsm8kInteraction, with a turn limit and the best score kept across attempts. */
export class ArithmeticInteraction implements Interaction {
  readonly #format: AnswerFormat
  readonly #maxTurns: number
  readonly #instances = new Map<string, Attempts>()

  constructor(config: ArithmeticConfig = {}) {
    this.#format = config.format ?? arithmeticDefaults.format
    this.#maxTurns = config.maxTurns ?? arithmeticDefaults.maxTurns
    if (this.#format !== "strict" && this.#format !== "flexible") {
      throw new RangeError(`arithmetic: format must be "strict" or "flexible", got ${String(this.#format)}`)
    }
    if (!Number.isInteger(this.#maxTurns) || this.#maxTurns < 1) {
      throw new RangeError(`arithmetic: maxTurns must be a positive integer, got ${this.#maxTurns}`)
    }
  }

  start(instanceId: string, kwargs: InteractionKwargs): void {
    const groundTruth = kwargs["ground_truth"]
    if (typeof groundTruth !== "string" && typeof groundTruth !== "number") {
      throw new Error("arithmetic: interaction_kwargs.ground_truth is missing")
    }
    this.#instances.set(instanceId, { groundTruth: String(groundTruth), turns: 0, bestScore: 0 })
  }

  generateResponse(instanceId: string, messages: ReadonlyArray<MessageInit>): InteractionResponse {
    const attempts = this.#attempts(instanceId)
    const reply = messages.findLast((message) => message.role === "assistant")?.content ?? ""
    const answer = extractAnswer(reply, this.#format)
    const score = answer === attempts.groundTruth ? 1 : 0
    attempts.turns += 1
    attempts.bestScore = Math.max(attempts.bestScore, score)
    return {
      terminate: score === 1 || attempts.turns >= this.#maxTurns,
      text: score === 1 ? correctFeedback : incorrectFeedback,
      score,
      metadata: { turn: attempts.turns, answer: answer ?? null, correct: score === 1 }
    }
  }

  calculateScore(instanceId: string): number {
    return this.#attempts(instanceId).bestScore
  }

  finalize(instanceId: string): void {
    this.#instances.delete(instanceId)
  }

  #attempts(instanceId: string): Attempts {
    const attempts = this.#instances.get(instanceId)
    if (attempts === undefined) throw new Error(`arithmetic: no interaction started for instance ${instanceId}`)
    return attempts
  }
}

export const arithmetic = defineInteraction<ArithmeticConfig>({
  name: "arithmetic",
  description: "Generated arithmetic word problems scored like verl's GSM8K interaction: the answer after '####'.",
  interaction: (config) => new ArithmeticInteraction(config),
  rows: ({ seed, count }): ReadonlyArray<DatasetRow> =>
    Array.from({ length: count }, (_, i) => {
      const rowSeed = seed * 100_003 + i
      const problem = generateProblem(rowSeed)
      return {
        prompt: [
          { role: "system", content: systemPrompt },
          { role: "user", content: problem.question }
        ],
        extra_info: { interaction_kwargs: { name: "arithmetic", ground_truth: String(problem.answer) }, seed: rowSeed }
      }
    })
})
