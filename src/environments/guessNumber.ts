/**
 * Guess the Number: a task that needs the conversation. A seeded secret from 1 to 100 is never shown; each
 * guess is answered "Higher than N." or "Lower than N." until it is found or the guesses run out. The first
 * observation says nothing about the secret, so only a policy that reads the replies can win: binary search
 * finds any secret in at most 7 guesses, while a policy that ignores the replies wins at most
 * maxGuesses / 100 of its games (its guesses are the same whatever the secret is).
 */
import type { DatasetRow } from "../DatasetRow.ts"
import { define, type Environment } from "../Environment.ts"
import { mulberry32 } from "../Seed.ts"

export type GuessNumberConfig = {
  /** Guesses before the episode ends in failure. */
  readonly maxGuesses?: number
  /** Paid when the secret is guessed. */
  readonly successBonus?: number
  /** Charged on every guess, so shorter wins pay more. */
  readonly guessPenalty?: number
  /** Charged for a reply that is not a whole number from 1 to 100. */
  readonly invalidPenalty?: number
  /** Charged for a guess the replies so far already ruled out (a repeat, or outside the range still open). */
  readonly ruledOutPenalty?: number
}

/** 10 guesses leave room for binary search's 7 and three slips. */
export const guessNumberDefaults = {
  maxGuesses: 10,
  successBonus: 1,
  guessPenalty: 0.02,
  invalidPenalty: 0.1,
  ruledOutPenalty: 0.05
} as const

export const LOWEST = 1
export const HIGHEST = 100

const rules = `I picked a whole number from ${LOWEST} to ${HIGHEST}. Guess it: after each guess I say higher or lower.`

const systemPrompt = `You play Guess the Number. Reply with exactly one whole number from ${LOWEST} to ${HIGHEST}.`

/** The secret: uniform over 1..100. */
export const secretOf = (seed: number): number => LOWEST + Math.floor(mulberry32(seed)() * (HIGHEST - LOWEST + 1))

/** Trimmed, a trailing period tolerated; anything else is not a guess. */
const parseGuess = (action: string): number | undefined => {
  const text = action.trim().replace(/\.+$/, "").trim()
  if (!/^\d{1,3}$/.test(text)) return undefined
  const guess = Number(text)
  return guess >= LOWEST && guess <= HIGHEST ? guess : undefined
}

const checkPositiveInteger = (name: string, value: number): number => {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`guess-number: ${name} must be a positive integer, got ${value}`)
  return value
}

interface Game {
  readonly secret: number
  /** The range the replies so far leave open. */
  low: number
  high: number
  guesses: number
  done: boolean
}

const makeGuessNumber = (config: GuessNumberConfig): Environment => {
  const maxGuesses = checkPositiveInteger("maxGuesses", config.maxGuesses ?? guessNumberDefaults.maxGuesses)
  const successBonus = config.successBonus ?? guessNumberDefaults.successBonus
  const guessPenalty = config.guessPenalty ?? guessNumberDefaults.guessPenalty
  const invalidPenalty = config.invalidPenalty ?? guessNumberDefaults.invalidPenalty
  const ruledOutPenalty = config.ruledOutPenalty ?? guessNumberDefaults.ruledOutPenalty
  let game: Game | undefined

  return {
    reset({ seed }) {
      game = { secret: secretOf(seed), low: LOWEST, high: HIGHEST, guesses: 0, done: false }
      return { systemPrompt, observation: rules }
    },
    step(action) {
      if (game === undefined) throw new Error("guess-number: step() called before reset()")
      if (game.done) throw new Error("guess-number: step() called after the episode ended")
      game.guesses += 1
      const guess = parseGuess(action)
      let feedback: string
      let invalid = false
      let ruledOut = false
      let success = false
      if (guess === undefined) {
        feedback = `Reply with one whole number from ${LOWEST} to ${HIGHEST}.`
        invalid = true
      } else {
        ruledOut = guess < game.low || guess > game.high
        if (guess === game.secret) {
          feedback = `Correct! ${guess} found in ${game.guesses} guesses.`
          success = true
        } else if (guess < game.secret) {
          feedback = `Higher than ${guess}.`
          game.low = Math.max(game.low, guess + 1)
        } else {
          feedback = `Lower than ${guess}.`
          game.high = Math.min(game.high, guess - 1)
        }
      }
      const reward =
        -guessPenalty - (invalid ? invalidPenalty : 0) - (ruledOut ? ruledOutPenalty : 0) + (success ? successBonus : 0)
      game.done = success || game.guesses >= maxGuesses
      const observation = !success && game.done ? `${feedback} Out of guesses: it was ${game.secret}.` : feedback
      return { observation, reward, done: game.done, info: { success, invalid, ruled_out: ruledOut, guesses: game.guesses } }
    }
  }
}

/**
 * The scripted policy: binary search over the range the replies so far leave open. It reads every
 * "Higher than N." / "Lower than N." in the conversation (the whole context, as the model would), so it
 * needs at most 7 guesses for 1..100.
 */
export const solveGuessNumber = (conversation: string): string => {
  let low = LOWEST
  let high = HIGHEST
  for (const [, direction, number] of conversation.matchAll(/(Higher|Lower) than (\d+)\./g)) {
    if (direction === "Higher") low = Math.max(low, Number(number) + 1)
    else high = Math.min(high, Number(number) - 1)
  }
  return String(Math.floor((low + high) / 2))
}

/** The uniformly random baseline over the valid guesses; `random` returns numbers in [0, 1). */
export const randomGuess = (random: () => number): string => String(LOWEST + Math.floor(random() * (HIGHEST - LOWEST + 1)))

/**
 * A policy that ignores the replies: the guesses binary search would make if every reply were "Lower",
 * then the numbers after them. Any policy that ignores the replies makes the same guesses whatever the
 * secret, so it wins at most maxGuesses / 100 of the games.
 */
export const feedbackIgnoringGuess = (guessesSoFar: number): string => String([50, 25, 12, 6, 3, 1, 2, 4, 5, 7, 8, 9, 10][guessesSoFar] ?? 11 + guessesSoFar)

export const guessNumber = define<GuessNumberConfig>({
  name: "guess-number",
  description: "Find a hidden number from 1 to 100 from higher / lower replies within a guess limit.",
  make: makeGuessNumber,
  rows: ({ seed, count }): ReadonlyArray<DatasetRow> =>
    Array.from({ length: count }, (_, i) => ({
      prompt: [],
      extra_info: { interaction_kwargs: { name: "guess-number" }, seed: seed * 100_003 + i }
    }))
})
