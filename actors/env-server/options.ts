/**
 * The env server's options, their defaults and their checks: apart from the server, so the CLI can show the
 * defaults without loading the HTTP stack.
 */
import { Effect, Result, Schema } from "effect"
import { decodeOrProblem, Milliseconds, PositiveInt } from "../../src/EngineSchema.ts"
import type { EnvironmentDefinition } from "../../src/Environment.ts"

export interface EnvServerOptions {
  /** The environment every session runs. */
  readonly definition: EnvironmentDefinition<any>
  /** Passed to the definition's `make` for every session. */
  readonly config?: Record<string, unknown> | undefined
  /** Default 127.0.0.1: the server is reachable from this machine only unless told otherwise. */
  readonly host?: string | undefined
  /** Default 8000; 0 picks a free port. */
  readonly port?: number | undefined
  readonly maxSessions?: number | undefined
  /** Sessions with no request for this long are ended. */
  readonly idleTimeoutMs?: number | undefined
  /** Time limit of one environment call (reset, step, close). */
  readonly callTimeoutMs?: number | undefined
  /** Largest request body or WebSocket message. */
  readonly maxBodyBytes?: number | undefined
  /** When set, every endpoint but /health needs `Authorization: Bearer <token>`. */
  readonly token?: string | undefined
  /**
   * A model directory (tokenizer.json, tokenizer_config.json with a chat_template): the server speaks OpenEnv's
   * chat_env shapes, token ids in and the conversation with the environment's tokens out, instead of text.
   */
  readonly tokenizer?: string | undefined
}

export const defaults = {
  host: "127.0.0.1",
  port: 8000,
  maxSessions: 1024,
  idleTimeoutMs: 300_000,
  callTimeoutMs: 30_000,
  maxBodyBytes: 1024 * 1024
} as const

export const Settings = Schema.Struct({
  host: Schema.String.check(Schema.isMinLength(1)),
  port: Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 65_535 })),
  maxSessions: PositiveInt,
  idleTimeoutMs: Milliseconds,
  callTimeoutMs: Milliseconds,
  maxBodyBytes: PositiveInt,
  token: Schema.optional(Schema.String.check(Schema.isMinLength(1)))
})
export type Settings = typeof Settings.Type

export class EnvServerError extends Schema.TaggedError<EnvServerError>()("EnvServerError", {
  message: Schema.String
}) {}

export const resolveSettings = (options: EnvServerOptions): Effect.Effect<Settings, EnvServerError> => {
  const checked = decodeOrProblem(Settings, {
    host: options.host ?? defaults.host,
    port: options.port ?? defaults.port,
    maxSessions: options.maxSessions ?? defaults.maxSessions,
    idleTimeoutMs: options.idleTimeoutMs ?? defaults.idleTimeoutMs,
    callTimeoutMs: options.callTimeoutMs ?? defaults.callTimeoutMs,
    maxBodyBytes: options.maxBodyBytes ?? defaults.maxBodyBytes,
    token: options.token
  })
  return Result.isFailure(checked)
    ? Effect.fail(new EnvServerError({ message: `env server options: ${checked.failure}` }))
    : Effect.succeed(checked.success)
}
