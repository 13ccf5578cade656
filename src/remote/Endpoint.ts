/**
 * A remote endpoint (an env server's base URL) and the guards every call to it goes through: a time limit
 * per attempt, retries with exponential backoff for failures a retry cannot make worse, and a circuit
 * breaker that stops new episodes from hammering an endpoint that keeps failing, then lets them back once a
 * trial call succeeds.
 *
 * Whether a retry is safe depends on the failure and on the call: a refused connection or a full server
 * means the request was never acted on, so any call may be retried; a timeout, a 5xx or a dropped
 * connection may come after the server acted, so only idempotent calls (a reset) are retried then.
 */
import { Result, Schema } from "effect"
import { Milliseconds, PositiveInt } from "../EngineSchema.ts"
import { errorMessage } from "../errorMessage.ts"
import { describeProblems, fieldProblems } from "./OpenEnvProtocol.ts"

/** What went wrong with a remote call; decides retries and whether the endpoint is to blame. */
export type FailureKind =
  /** The connection was refused or could not be made: nothing was sent. */
  | "unreachable"
  /** The server is full (CAPACITY_REACHED): nothing was done. */
  | "capacity"
  /** No reply within the time limit. */
  | "timeout"
  /** A 5xx, or the server's own error reply. */
  | "server"
  /** The connection dropped before the reply. */
  | "disconnected"
  /** The reply was not JSON or not the protocol's shape. */
  | "protocol"
  /** The server refused the request as bad (4xx): the caller's fault, not the endpoint's. */
  | "rejected"

export class RemoteCallError extends Error {
  readonly kind: FailureKind
  constructor(kind: FailureKind, message: string) {
    super(message)
    this.name = "RemoteCallError"
    this.kind = kind
  }
}

/** A retry is safe when nothing happened on the server, or when the call may harmlessly happen twice. */
const retryable = (kind: FailureKind, idempotent: boolean): boolean =>
  kind === "unreachable" || kind === "capacity" ||
  (idempotent && (kind === "timeout" || kind === "server" || kind === "disconnected"))

/** Failures that say the endpoint is unwell; the caller's mistakes and a full server do not count. */
const endpointFault = (kind: FailureKind): boolean => kind !== "rejected" && kind !== "capacity"

export interface CircuitBreakerOptions {
  /** Consecutive endpoint failures that open the breaker. */
  readonly failureThreshold: number
  /** How long an open breaker refuses new work before letting one trial call through. */
  readonly cooldownMs: number
}

/**
 * closed: calls go through. open: new work fails fast until the cooldown has passed. half-open: one trial
 * call goes through; its success closes the breaker, its failure opens it for another cooldown.
 */
export class CircuitBreaker {
  readonly #options: CircuitBreakerOptions
  #state: "closed" | "open" | "half-open" = "closed"
  #failures = 0
  #openedAt = 0
  #trialStartedAt: number | undefined

  constructor(options: CircuitBreakerOptions) {
    this.#options = options
  }

  get state(): "closed" | "open" | "half-open" {
    return this.#state
  }

  /** Undefined when new work may start now; otherwise why not. */
  refusal(): string | undefined {
    const now = Date.now()
    if (this.#state === "open") {
      const waited = now - this.#openedAt
      if (waited < this.#options.cooldownMs) {
        return `circuit open after ${this.#failures} consecutive failures; next trial in ${this.#options.cooldownMs - waited} ms`
      }
      this.#state = "half-open"
      this.#trialStartedAt = undefined
    }
    if (this.#state === "half-open") {
      // A trial that never reported back (its caller gave up) does not block the next one forever.
      if (this.#trialStartedAt !== undefined && now - this.#trialStartedAt < this.#options.cooldownMs) {
        return "circuit half-open: a trial call is in flight"
      }
      this.#trialStartedAt = now
    }
    return undefined
  }

  succeeded(): void {
    this.#state = "closed"
    this.#failures = 0
    this.#trialStartedAt = undefined
  }

  failed(): void {
    this.#failures++
    if (this.#state === "half-open" || this.#failures >= this.#options.failureThreshold) {
      this.#state = "open"
      this.#openedAt = Date.now()
      this.#trialStartedAt = undefined
    }
  }
}

export interface EndpointOptions extends CircuitBreakerOptions {
  /** Time limit of one attempt. */
  readonly timeoutMs: number
  /** Further attempts after a retryable failure. */
  readonly retries: number
  /** The first backoff; each retry doubles it, up to maxBackoffMs, with jitter. */
  readonly backoffMs: number
  readonly maxBackoffMs: number
}

export const endpointDefaults: EndpointOptions = {
  timeoutMs: 10_000,
  retries: 3,
  backoffMs: 100,
  maxBackoffMs: 2_000,
  failureThreshold: 5,
  cooldownMs: 5_000
}

export interface CallOptions {
  /** The caller's signal: the episode was interrupted or timed out. */
  readonly signal: AbortSignal
  /** Whether the call may harmlessly run twice (a reset), so that timeouts and 5xx are retried too. */
  readonly idempotent: boolean
  /** Whether this call starts new work (a new episode): refused while the breaker is open. */
  readonly admit: boolean
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason)
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal.reason)
    }
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort)
      resolve()
    }, ms)
    signal.addEventListener("abort", onAbort, { once: true })
  })

export class Endpoint {
  readonly url: string
  readonly options: EndpointOptions
  readonly breaker: CircuitBreaker

  constructor(url: string, options: EndpointOptions) {
    this.url = url
    this.options = options
    this.breaker = new CircuitBreaker(options)
  }

  /**
   * Runs `attempt` under a time limit (its signal aborts at the limit or when the caller's does), retrying
   * what is safe to retry, and records each outcome in the breaker. Fails with a RemoteCallError whose
   * message names the call, the endpoint, the problem and the attempts made.
   */
  async call<A>(what: string, attempt: (signal: AbortSignal) => Promise<A>, options: CallOptions): Promise<A> {
    const { timeoutMs, retries, backoffMs, maxBackoffMs } = this.options
    for (let attemptIndex = 0; ; attemptIndex++) {
      if (options.admit || attemptIndex > 0) {
        const refusal = this.breaker.refusal()
        if (refusal !== undefined) throw new RemoteCallError("unreachable", `${what} ${this.url}: ${refusal}`)
      }
      const timeout = AbortSignal.timeout(timeoutMs)
      let failure: RemoteCallError
      try {
        const result = await attempt(AbortSignal.any([options.signal, timeout]))
        this.breaker.succeeded()
        return result
      } catch (cause) {
        if (options.signal.aborted) throw cause
        failure = cause instanceof RemoteCallError
          ? cause
          : timeout.aborted
            ? new RemoteCallError("timeout", `no reply within ${timeoutMs} ms`)
            : new RemoteCallError("protocol", errorMessage(cause))
      }
      if (endpointFault(failure.kind)) this.breaker.failed()
      else this.breaker.succeeded()
      if (!retryable(failure.kind, options.idempotent) || attemptIndex >= retries) {
        const attempts = attemptIndex + 1
        throw new RemoteCallError(
          failure.kind,
          `${what} ${this.url}: ${failure.message}${attempts > 1 ? ` (${attempts} attempts)` : ""}`
        )
      }
      const ceiling = Math.min(maxBackoffMs, backoffMs * 2 ** attemptIndex)
      await sleep(ceiling / 2 + Math.random() * ceiling / 2, options.signal)
    }
  }
}

/** What a failed `fetch` or socket error says about the connection. */
export const connectionFailure = (cause: unknown): RemoteCallError => {
  const code = errorCode(cause)
  if (code === "ECONNREFUSED" || code === "ENOTFOUND" || code === "EHOSTUNREACH" || code === "ENETUNREACH" || code === "EAI_AGAIN") {
    return new RemoteCallError("unreachable", `cannot connect (${code})`)
  }
  return new RemoteCallError("disconnected", `connection failed: ${code ?? errorMessage(cause)}`)
}

const errorCode = (cause: unknown): string | undefined => {
  for (let error = cause, depth = 0; typeof error === "object" && error !== null && depth < 4; depth++) {
    const code = (error as { readonly code?: unknown }).code
    if (typeof code === "string") return code
    error = (error as { readonly cause?: unknown }).cause
  }
  return undefined
}

/** The guards every remote environment shares: time limits, retries, the breaker, and the bearer token. */
export const EndpointConfig = {
  /** Sent as `Authorization: Bearer <token>`; default: the EPISODIC_ENV_TOKEN environment variable. */
  token: Schema.optionalKey(Schema.String.check(Schema.isMinLength(1))),
  /** Time limit of one attempt of one call. */
  timeoutMs: Schema.optionalKey(Milliseconds),
  /** Further attempts after a failure that is safe to retry. */
  retries: Schema.optionalKey(Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))),
  backoffMs: Schema.optionalKey(Milliseconds),
  maxBackoffMs: Schema.optionalKey(Milliseconds),
  /** Consecutive failures that open an endpoint's breaker. */
  failureThreshold: Schema.optionalKey(PositiveInt),
  /** How long an open breaker fails new episodes before trying the endpoint again. */
  cooldownMs: Schema.optionalKey(Milliseconds)
}

export const endpointOptions = (config: Partial<EndpointOptions>): EndpointOptions => ({
  timeoutMs: config.timeoutMs ?? endpointDefaults.timeoutMs,
  retries: config.retries ?? endpointDefaults.retries,
  backoffMs: config.backoffMs ?? endpointDefaults.backoffMs,
  maxBackoffMs: config.maxBackoffMs ?? endpointDefaults.maxBackoffMs,
  failureThreshold: config.failureThreshold ?? endpointDefaults.failureThreshold,
  cooldownMs: config.cooldownMs ?? endpointDefaults.cooldownMs
})

export const tokenOf = (config: { readonly token?: string }): string | undefined =>
  config.token ?? (process.env["EPISODIC_ENV_TOKEN"] || undefined)

/** A reply decoded with `schema`, or a protocol error naming the fields that are wrong. */
export const decodeReply = <S extends Schema.Codec<any, unknown>>(schema: S, value: unknown, what: string): S["Type"] => {
  const decoded = Schema.decodeUnknownResult(schema)(value)
  if (Result.isFailure(decoded)) {
    throw new RemoteCallError("protocol", `${what} is not what the protocol says: ${describeProblems(fieldProblems(decoded.failure.issue))}`)
  }
  return decoded.success
}

