/**
 * The env server's sessions: each one its own environment instance (behind the local environment actor's
 * time limits and result checks) under an unguessable id, at most `maxSessions` at once, idle ones reaped.
 * A session runs one call at a time; a second call while one is running is refused, never interleaved.
 */
import { Effect, Schema } from "effect"
import { randomInt, randomUUID } from "node:crypto"
import type { DatasetRow } from "../../src/DatasetRow.ts"
import type { EnvironmentDefinition } from "../../src/Environment.ts"
import { errorMessage } from "../../src/errorMessage.ts"
import { ErrorCode, type ResetParameters, type State } from "../../src/remote/OpenEnvProtocol.ts"
import * as EnvironmentActor from "../environment/index.ts"
import type { Wire, WireSession } from "./wire.ts"

/** A refused or failed request: an OpenEnv error code, the HTTP status it answers with, and what went wrong. */
export class RequestError extends Schema.TaggedError<RequestError>()("RequestError", {
  code: ErrorCode,
  status: Schema.Int,
  message: Schema.String,
  details: Schema.optionalKey(Schema.Record(Schema.String, Schema.Unknown))
}) {}

export interface Session {
  readonly id: string
  readonly environment: EnvironmentActor.EnvironmentActor
  /** How this session's actions and observations look on the wire. */
  readonly wire: WireSession
  episodeId: string | null
  stepCount: number
  totalReward: number
  phase: "new" | "running" | "done"
  busy: boolean
  lastActivity: number
  /** Ends the session's transport (closes its WebSocket, saying why) when the server ends the session. */
  onEnd: ((reason: string) => void) | undefined
}

export interface SessionTableOptions {
  readonly definition: EnvironmentDefinition<any>
  readonly config: Record<string, unknown>
  readonly wire: Wire
  readonly maxSessions: number
  readonly idleTimeoutMs: number
  /** Time limit of one environment call. */
  readonly callTimeoutMs: number
}

export interface SessionTable {
  readonly size: () => number
  readonly maxSessions: number
  /** A new session with a fresh environment; refused with CAPACITY_REACHED when the table is full. */
  readonly open: Effect.Effect<Session, RequestError>
  /** The session, or a 404 naming the id. */
  readonly find: (id: string) => Effect.Effect<Session, RequestError>
  /** Runs one call on the session: refused while another runs, and the session counts as active meanwhile. */
  readonly use: <A>(session: Session, call: Effect.Effect<A, RequestError>) => Effect.Effect<A, RequestError>
  readonly reset: (session: Session, parameters: ResetParameters) => Effect.Effect<Reply, RequestError>
  /** `action` is decoded with the wire's action schema. */
  readonly step: (session: Session, action: unknown) => Effect.Effect<Reply, RequestError>
  readonly state: (session: Session | undefined) => State & Record<string, unknown>
  /** Ends the session once: its transport is closed, its environment closed. */
  readonly end: (session: Session, reason: string) => Effect.Effect<void>
  /** Ends sessions idle for longer than the idle timeout; returns how many. */
  readonly reapIdle: Effect.Effect<number>
  readonly endAll: (reason: string) => Effect.Effect<void>
}

/** A reset's or a step's answer, as OpenEnv's serialize_observation makes it, with the environment's info as metadata. */
export interface Reply {
  readonly observation: Record<string, unknown>
  readonly reward: number | null
  readonly done: boolean
  readonly metadata?: Record<string, unknown>
}

const executionError = (message: string) => new RequestError({ code: "EXECUTION_ERROR", status: 500, message })

export const make = (options: SessionTableOptions): SessionTable => {
  const { definition, config, wire, maxSessions, idleTimeoutMs, callTimeoutMs } = options
  const sessions = new Map<string, Session>()
  // Sessions whose environment is being made count against the capacity too.
  let opening = 0

  const open: Effect.Effect<Session, RequestError> = Effect.suspend(() => {
    const active = sessions.size + opening
    if (active >= maxSessions) {
      return Effect.fail(
        new RequestError({
          code: "CAPACITY_REACHED",
          status: 503,
          message: `server at capacity: ${active} of ${maxSessions} sessions in use; retry later`,
          details: { active_sessions: active, max_sessions: maxSessions }
        })
      )
    }
    opening++
    return EnvironmentActor.make(definition.name, () => definition.make(config), callTimeoutMs).pipe(
      Effect.mapError((error) => new RequestError({ code: "FACTORY_ERROR", status: 500, message: error.message })),
      Effect.map((environment): Session => {
        const session: Session = {
          id: randomUUID(),
          environment,
          wire: wire.open(),
          episodeId: null,
          stepCount: 0,
          totalReward: 0,
          phase: "new",
          busy: false,
          lastActivity: Date.now(),
          onEnd: undefined
        }
        sessions.set(session.id, session)
        return session
      }),
      Effect.ensuring(Effect.sync(() => opening--))
    )
  })

  const find = (id: string) =>
    Effect.suspend(() => {
      const session = sessions.get(id)
      return session === undefined
        ? Effect.fail(new RequestError({ code: "SESSION_ERROR", status: 404, message: `unknown session_id "${id}" (never opened, closed, or reaped after being idle)` }))
        : Effect.succeed(session)
    })

  const use = <A>(session: Session, call: Effect.Effect<A, RequestError>) =>
    Effect.suspend(() => {
      if (session.busy) {
        return Effect.fail(new RequestError({ code: "SESSION_ERROR", status: 409, message: `session ${session.id} is busy with another request; send one request at a time` }))
      }
      session.busy = true
      session.lastActivity = Date.now()
      return call.pipe(Effect.ensuring(Effect.sync(() => {
        session.busy = false
        session.lastActivity = Date.now()
      })))
    })

  const reset = (session: Session, parameters: ResetParameters) =>
    Effect.gen(function*() {
      const { seed: givenSeed, episode_id, row: givenRow, ...kwargs } = parameters
      const seed = givenSeed ?? givenRow?.extra_info.seed ?? randomInt(2 ** 31)
      const row: DatasetRow = givenRow ?? {
        prompt: [],
        extra_info: { interaction_kwargs: { ...kwargs, name: definition.name }, seed }
      }
      const result = yield* session.environment.reset({ seed, row }).pipe(
        Effect.mapError((error) => executionError(error.message))
      )
      session.episodeId = episode_id ?? randomUUID()
      session.stepCount = 0
      session.totalReward = 0
      session.phase = "running"
      return {
        observation: session.wire.reset(row, result),
        reward: null,
        done: false,
        ...(result.info !== undefined ? { metadata: result.info } : {})
      } satisfies Reply
    })

  const step = (session: Session, action: unknown) =>
    Effect.gen(function*() {
      // Checked here so that a client's mistake gets a clear answer instead of whatever the environment throws.
      if (session.phase === "new") return yield* executionError("step before reset: reset the session first")
      if (session.phase === "done") return yield* executionError("the episode is done: reset the session to start another")
      const text = yield* Effect.try({
        try: () => session.wire.action(action),
        catch: (cause) => new RequestError({ code: "VALIDATION_ERROR", status: 422, message: `the action cannot be read: ${errorMessage(cause)}` })
      })
      const result = yield* session.environment.step(text).pipe(
        Effect.mapError((error) => executionError(error.message))
      )
      session.stepCount++
      session.totalReward += result.reward
      if (result.done) session.phase = "done"
      return {
        observation: session.wire.step(action, text, result),
        reward: result.reward,
        done: result.done,
        ...(result.info !== undefined ? { metadata: result.info } : {})
      } satisfies Reply
    })

  const state = (session: Session | undefined) => ({
    episode_id: session?.episodeId ?? null,
    step_count: session?.stepCount ?? 0,
    ...(session?.wire ?? wire.open()).state(),
    session_id: session?.id ?? null,
    done: session?.phase === "done",
    total_reward: session?.totalReward ?? 0
  })

  const end = (session: Session, reason: string) =>
    Effect.suspend(() => {
      if (!sessions.delete(session.id)) return Effect.void
      session.onEnd?.(reason)
      return session.environment.close
    })

  const reapIdle = Effect.suspend(() => {
    const now = Date.now()
    const idle = [...sessions.values()].filter((session) => !session.busy && now - session.lastActivity > idleTimeoutMs)
    const reason = `idle for more than ${idleTimeoutMs} ms`
    return Effect.forEach(idle, (session) => end(session, reason), { discard: true, concurrency: "unbounded" }).pipe(Effect.as(idle.length))
  })

  const endAll = (reason: string) =>
    Effect.suspend(() => Effect.forEach([...sessions.values()], (session) => end(session, reason), { discard: true, concurrency: "unbounded" }))

  return { size: () => sessions.size, maxSessions, open, find, use, reset, step, state, end, reapIdle, endAll }
}
