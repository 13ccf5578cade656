import { describe, expect, it } from "vitest"
import {
  feedbackIgnoringGuess,
  guessNumber,
  guessNumberDefaults,
  randomGuess,
  secretOf,
  solveGuessNumber,
  type GuessNumberConfig
} from "../src/environments/guessNumber.ts"
import { mulberry32 } from "../src/Seed.ts"

const signal = new AbortController().signal

const start = async (seed: number, config: GuessNumberConfig = {}) => {
  const environment = guessNumber.make(config)
  const [row] = guessNumber.rows!({ seed: 0, count: 1, config })
  const reset = await environment.reset({ seed, row: row!, signal })
  return { environment, observation: reset.observation as string, systemPrompt: reset.systemPrompt }
}

/** Plays one game; the policy sees the whole conversation so far, and how many guesses it has made. */
const play = async (seed: number, policy: (conversation: string, guesses: number) => string) => {
  const { environment, observation } = await start(seed)
  let conversation = observation
  let total = 0
  for (let guesses = 0; ; guesses++) {
    const action = policy(conversation, guesses)
    const result = await environment.step(action, { signal })
    total += result.reward
    conversation += `\n${action}\n${result.observation}`
    if (result.done) return { ...result, guesses: guesses + 1, total }
  }
}

const successRate = async (games: number, policy: (seed: number) => (conversation: string, guesses: number) => string) => {
  let wins = 0
  for (let seed = 0; seed < games; seed++) if ((await play(seed, policy(seed))).info?.["success"] === true) wins += 1
  return wins / games
}

describe("guess-number", () => {
  it("hides a seeded secret from 1 to 100: the same for the same seed, spread across seeds", async () => {
    expect(secretOf(42)).toBe(secretOf(42))
    const secrets = Array.from({ length: 2000 }, (_, seed) => secretOf(seed))
    expect(Math.min(...secrets)).toBe(1)
    expect(Math.max(...secrets)).toBe(100)
    expect(new Set(secrets).size).toBe(100)
    // The first observation says nothing about the secret.
    const openings = new Set(await Promise.all(Array.from({ length: 20 }, async (_, seed) => (await start(seed)).observation)))
    expect(openings.size).toBe(1)
    const a = await start(7)
    const b = await start(7)
    for (const guess of ["50", "25", "hello", "75"]) {
      expect(await a.environment.step(guess, { signal })).toEqual(await b.environment.step(guess, { signal }))
    }
  })

  it("answers higher, lower or correct", async () => {
    const seed = Array.from({ length: 500 }, (_, s) => s).find((s) => secretOf(s) === 37)!
    const { environment, systemPrompt } = await start(seed)
    expect(systemPrompt).toContain("whole number from 1 to 100")
    expect((await environment.step("50", { signal })).observation).toBe("Lower than 50.")
    expect((await environment.step("20", { signal })).observation).toBe("Higher than 20.")
    const found = await environment.step(" 37. ", { signal })
    expect(found).toMatchObject({ done: true, info: { success: true, guesses: 3 } })
    expect(found.observation).toBe("Correct! 37 found in 3 guesses.")
  })

  it("is always won by the binary-search solver within 7 guesses", async () => {
    for (let seed = 0; seed < 1000; seed++) {
      const result = await play(seed, solveGuessNumber)
      expect(result.info).toMatchObject({ success: true })
      expect(result.guesses).toBeLessThanOrEqual(7)
      expect(result.total).toBeGreaterThan(guessNumberDefaults.successBonus - 0.15)
    }
  })

  it("is rarely won by random guesses, and at most maxGuesses / 100 of the time by a policy that ignores the replies", async () => {
    expect(await successRate(2000, (seed) => {
      const random = mulberry32(seed + 1_000_000)
      return () => randomGuess(random)
    })).toBeLessThanOrEqual(0.12)
    expect(await successRate(2000, () => (_conversation, guesses) => feedbackIgnoringGuess(guesses))).toBeLessThanOrEqual(
      guessNumberDefaults.maxGuesses / 100 + 0.02
    )
  })

  it("answers a reply that is not a guess with a clear message and the invalid penalty, without ending the game", async () => {
    const { environment } = await start(3)
    for (const reply of ["fifty", "0", "101", "50 or 51", ""]) {
      const result = await environment.step(reply, { signal })
      expect(result).toMatchObject({ done: false, info: { success: false, invalid: true } })
      expect(result.observation).toBe("Reply with one whole number from 1 to 100.")
      expect(result.reward).toBeCloseTo(-guessNumberDefaults.guessPenalty - guessNumberDefaults.invalidPenalty)
    }
  })

  it("charges a guess the replies already ruled out", async () => {
    const seed = Array.from({ length: 500 }, (_, s) => s).find((s) => secretOf(s) === 80)!
    const { environment } = await start(seed)
    expect((await environment.step("50", { signal })).info).toMatchObject({ ruled_out: false })
    const again = await environment.step("40", { signal })
    expect(again).toMatchObject({ done: false, info: { ruled_out: true, invalid: false } })
    expect(again.reward).toBeCloseTo(-guessNumberDefaults.guessPenalty - guessNumberDefaults.ruledOutPenalty)
  })

  it("ends in failure at the guess limit and then tells the secret", async () => {
    const seed = Array.from({ length: 500 }, (_, s) => s).find((s) => secretOf(s) !== 1)!
    const { environment } = await start(seed, { maxGuesses: 3 })
    for (let i = 1; i < 3; i++) expect((await environment.step("1", { signal })).done).toBe(false)
    const last = await environment.step("1", { signal })
    expect(last).toMatchObject({ done: true, info: { success: false } })
    expect(last.observation).toBe(`Higher than 1. Out of guesses: it was ${secretOf(seed)}.`)
  })

  it("makes rows with an empty prompt and distinct seeds", () => {
    const rows = guessNumber.rows!({ seed: 0, count: 3, config: {} })
    expect(rows.map((row) => row.extra_info.seed)).toEqual([0, 1, 2])
    expect(rows.every((row) => row.prompt.length === 0 && row.extra_info.interaction_kwargs.name === "guess-number")).toBe(true)
    expect(guessNumber.rows!({ seed: 1, count: 1, config: {} })[0]?.extra_info.seed).not.toBe(0)
  })
})
