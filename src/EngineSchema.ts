/**
 * The numbers an engine runs by, checked in one place for the CLI (experiments) and for library users
 * (Engine.layer): a bad one is an error naming its field, never a hang or an overflowing timer.
 */
import { Schema } from "effect"

export const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))

/** Node's timers overflow past 2^31 - 1 ms (and then fire at once). */
export const Milliseconds = PositiveInt.check(Schema.isLessThanOrEqualTo(2_147_483_647))

/** The schema of machines/episode.ts's EpisodeLimits. */
export const EpisodeLimits = Schema.Struct({
  maxTurns: PositiveInt,
  maxResponseTokens: PositiveInt,
  maxNewTokens: PositiveInt,
  timeoutMs: Milliseconds
})

export const EngineNumbers = Schema.Struct({
  concurrency: PositiveInt,
  samplesPerRow: PositiveInt,
  bufferCapacity: PositiveInt,
  envCallTimeoutMs: Milliseconds,
  seed: Schema.Int,
  limits: EpisodeLimits
})

/** The first problem, as one line naming the field. */
export const firstProblem = (schema: Schema.Top, value: unknown): string | undefined => {
  const result = Schema.decodeUnknownExit(schema as Schema.Codec<unknown, unknown>)(value, { errors: "first" })
  if (result._tag === "Success") return undefined
  const reason = (result.cause as { readonly reasons?: ReadonlyArray<{ readonly error?: { readonly message?: string } }> })
    .reasons?.[0]?.error?.message
  return String(reason ?? result.cause).replace(/\s+/g, " ").trim()
}
