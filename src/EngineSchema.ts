/**
 * The numbers an engine runs by, checked in one place for the CLI (experiments) and for library users
 * (Engine.layer): a bad one is an error naming its field, never a hang or an overflowing timer.
 */
import { Result, Schema } from "effect"

export const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
export const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

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

/** Decodes `value`; on failure, the first problem as one line naming the field. */
export const decodeOrProblem = <A>(schema: Schema.Codec<A, unknown>, value: unknown): Result.Result<A, string> => {
  const exit = Schema.decodeUnknownExit(schema)(value, { errors: "first" })
  if (exit._tag === "Success") return Result.succeed(exit.value)
  const reason = (exit.cause as { readonly reasons?: ReadonlyArray<{ readonly error?: { readonly message?: string } }> })
    .reasons?.[0]?.error?.message
  return Result.fail(String(reason ?? exit.cause).replace(/\s+/g, " ").trim())
}
