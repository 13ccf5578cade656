/**
 * The local environment actor: one environment instance behind the guards every episode relies on. Each
 * call gets the caller's AbortSignal (interruption reaches the environment) and a time limit; whatever comes
 * back is checked against the protocol's schemas; a throw, a hang or garbage becomes an EnvironmentError
 * whose message names the call and the problem. `close` runs at most once and never fails.
 */
import { Effect, Result, Schema } from "effect"
import type { DatasetRow } from "../../src/DatasetRow.ts"
import {
  type Environment,
  EnvironmentError,
  ResetResultSchema,
  StepResultSchema,
  type StepOptions
} from "../../src/Environment.ts"
import { errorMessage } from "../../src/errorMessage.ts"

export interface EnvironmentActor {
  reset(options: { readonly seed: number; readonly row: DatasetRow }): Effect.Effect<typeof ResetResultSchema.Type, EnvironmentError>
  /** `tokens` are the turn's token ids and the context's, for environments that take tokens. */
  step(action: string, tokens?: Omit<StepOptions, "signal">): Effect.Effect<typeof StepResultSchema.Type, EnvironmentError>
  /** Closes the environment once; later calls do nothing. A failing close is logged, not raised. */
  readonly close: Effect.Effect<void>
}

/**
 * Calls the environment with a time limit and checks what it returns against a schema. The call's signal
 * aborts when the call is abandoned: it timed out, or the episode was interrupted.
 *
 * One callback with a timer, not tryPromise + timeoutOption: those fork a fiber and make an AbortController
 * on every call, about 15 µs a call where the engine's whole budget is 50 µs a turn. For the same reason the
 * AbortController is made only when the environment reads its signal (most never do).
 */
const call = <A>(
  what: string,
  timeoutMs: number,
  decode: (raw: unknown) => Result.Result<A, Schema.SchemaError>,
  run: (signal: () => AbortSignal) => unknown
): Effect.Effect<A, EnvironmentError> =>
  // Checked where the answer arrives, in the same callback: a decoding effect after it cost a few more fiber
  // steps on every call.
  Effect.callback<A, EnvironmentError>((resume) => {
    let controller: AbortController | undefined
    const abandon = () => controller?.abort(new Error(`the episode abandoned the environment's ${what} call`))
    const timer = setTimeout(() => {
      abandon()
      resume(Effect.fail(new EnvironmentError({ message: `${what} did not answer within ${timeoutMs} ms` })))
    }, timeoutMs)
    const threw = (cause: unknown) => {
      clearTimeout(timer)
      resume(Effect.fail(new EnvironmentError({ message: `${what} threw: ${errorMessage(cause)}` })))
    }
    try {
      Promise.resolve(run(() => (controller ??= new AbortController()).signal)).then((raw) => {
        clearTimeout(timer)
        const decoded = decode(raw)
        resume(Result.isSuccess(decoded)
          ? Effect.succeed(decoded.success)
          : Effect.fail(new EnvironmentError({ message: `${what} returned an invalid result: ${decoded.failure.message}` })))
      }, threw)
    } catch (cause) {
      threw(cause)
    }
    return Effect.sync(() => {
      clearTimeout(timer)
      abandon()
    })
  })

const decodeReset = Schema.decodeUnknownResult(ResetResultSchema)
const decodeStep = Schema.decodeUnknownResult(StepResultSchema)
const acceptAnything = (raw: unknown) => Result.succeed(raw)

/** Makes the environment (a throwing factory is an EnvironmentError naming it) and guards it. */
export const make = (
  name: string,
  makeEnvironment: () => Environment,
  callTimeoutMs: number
): Effect.Effect<EnvironmentActor, EnvironmentError> =>
  Effect.try({
    try: makeEnvironment,
    catch: (cause) => new EnvironmentError({ message: `could not make environment "${name}": ${errorMessage(cause)}` })
  }).pipe(Effect.map((environment): EnvironmentActor => {
    let closed = false
    return {
      reset: ({ seed, row }) =>
        call("reset", callTimeoutMs, decodeReset, (signal) =>
          environment.reset({
            seed,
            row,
            get signal() {
              return signal()
            }
          })),
      step: (action, tokens) =>
        call("step", callTimeoutMs, decodeStep, (signal) =>
          environment.step(action, {
            // Getters, not a spread: the context's ids are copied only if the environment reads them.
            get tokenIds() {
              return tokens?.tokenIds
            },
            get contextIds() {
              return tokens?.contextIds
            },
            get signal() {
              return signal()
            }
          })),
      close: Effect.suspend(() => {
        if (closed || environment.close === undefined) return Effect.void
        closed = true
        return call("close", callTimeoutMs, acceptAnything, () => environment.close?.()).pipe(
          Effect.catch((error) => Effect.logWarning(`environment "${name}": ${error.message}`))
        )
      })
    }
  }))
