/**
 * An experiment's settings for generating on inference servers (`inference.remote`), with their defaults:
 * apart from the client, so the experiment schema can name them without loading it.
 */
import { Schema } from "effect"
import { Milliseconds, NonNegativeInt, PositiveInt } from "../EngineSchema.ts"

export const RemoteInferenceSettings = Schema.Struct({
  /** Requests in flight on one server at most; more wait for a slot. */
  maxInFlight: PositiveInt,
  /** Time limit of one generation request (one attempt). */
  timeoutMs: Milliseconds,
  /** Further attempts of a failed request, each with a new request id, on another server when there is one. */
  retries: NonNegativeInt,
  /** Consecutive failures that take a server out. */
  failureThreshold: PositiveInt,
  /** How long a server stays out before a health check may bring it back. */
  cooldownMs: Milliseconds,
  /** How often every server's `/health` is asked (a failing one is taken out at once). */
  healthIntervalMs: Milliseconds,
  /**
   * Which distribution the servers' logprobs are of: `auto` takes what the server is known to return
   * (vLLM: raw; SGLang: temperature-scaled; episodic serve: sampled). Say `sampled` for a vLLM server started
   * with `--logprobs-mode processed_logprobs`. The run records the answer as `logprob_kind`.
   */
  logprobs: Schema.Literals(["auto", "sampled", "temperature", "raw"]),
  /** vLLM's token endpoint (`/inference/v1/generate`), `/v1/completions`, or `auto`: the first when the server has it. */
  endpoint: Schema.Literals(["auto", "generate", "completions"]),
  /** Time limit of each control call of a weight sync (pause, load, resume). */
  syncTimeoutMs: Milliseconds,
  /** Where synced weights are written as model directories (default: `<run directory>/weights`); the servers must see it. */
  weightsDirectory: Schema.optional(Schema.String),
  /** Sent as `Authorization: Bearer <token>`; default: the EPISODIC_INFERENCE_TOKEN environment variable. */
  token: Schema.optional(Schema.String.check(Schema.isMinLength(1)))
})
export type RemoteInferenceSettings = typeof RemoteInferenceSettings.Type

export const remoteDefaults = {
  maxInFlight: 64,
  timeoutMs: 300_000,
  retries: 2,
  failureThreshold: 3,
  cooldownMs: 10_000,
  healthIntervalMs: 5_000,
  logprobs: "auto",
  endpoint: "auto",
  syncTimeoutMs: 300_000
} as const satisfies Partial<RemoteInferenceSettings>
