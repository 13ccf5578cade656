/**
 * The env server: any registered Environment served with OpenEnv's wire protocol (src/remote/OpenEnvProtocol.ts)
 * on Effect's HTTP server (effect/http on @effect/platform-node's NodeHttpServer, whose WebSocket upgrades
 * run on `ws`). `episodic serve-env` runs it; tests and benchmarks start it in-process with `start`.
 *
 * Each session (a WebSocket connection, or an HTTP session id from POST /reset) has its own environment
 * instance behind the local environment actor (time limits, result checks, close once). The server
 * refuses new sessions past `maxSessions` with CAPACITY_REACHED, reaps sessions idle for `idleTimeoutMs`,
 * checks every request against its schema (422 naming each bad field), caps bodies and WebSocket messages
 * at `maxBodyBytes`, binds to 127.0.0.1 unless told otherwise, and asks for a bearer token when given
 * one. A bad request is answered and forgotten: it never ends the server or touches another session.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { ByteSize, Cause, Effect, Exit, Result, Schedule, Schema, Scope } from "effect"
import { HttpIncomingMessage, HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "effect/http"
import { Socket } from "effect/socket"
import { createHash, timingSafeEqual } from "node:crypto"
import { createServer } from "node:http"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import type { EnvironmentDefinition } from "../../src/Environment.ts"
import { EnvironmentRegistry } from "../../src/environments/registry.ts"
import { errorMessage } from "../../src/errorMessage.ts"
import {
  clientMessage,
  CloseRequest,
  describeProblems,
  fieldProblems,
  parseOptions,
  type ResetParameters,
  ResetRequest,
  stepRequest
} from "../../src/remote/OpenEnvProtocol.ts"
import { type EnvServerOptions, EnvServerError, resolveSettings, type Settings } from "./options.ts"
import * as Sessions from "./sessions.ts"
import * as Wire from "./wire.ts"

export { defaults, EnvServerError, type EnvServerOptions } from "./options.ts"
export { RequestError } from "./sessions.ts"

export interface EnvServer {
  /** `http://host:port`; the WebSocket is at `ws://host:port/ws`. */
  readonly url: string
  readonly host: string
  readonly port: number
  readonly sessions: Sessions.SessionTable
}

type Problem = ReturnType<typeof fieldProblems>[number]

// --- HTTP ------------------------------------------------------------------------------------------------

const errorResponse = (error: Sessions.RequestError) =>
  HttpServerResponse.jsonUnsafe(
    { detail: error.message, code: error.code, ...error.details },
    {
      status: error.status,
      headers: {
        ...(error.status === 503 ? { "retry-after": "1" } : {}),
        ...(error.status === 401 ? { "www-authenticate": "Bearer" } : {})
      }
    }
  )

/** 422 as FastAPI (and so OpenEnv) answers it: `detail` lists every bad field with its location. */
const invalidResponse = (problems: ReadonlyArray<Problem>) =>
  HttpServerResponse.jsonUnsafe({ detail: problems, code: "VALIDATION_ERROR" }, { status: 422 })

type Invalid = { readonly _tag: "Invalid"; readonly problems: ReadonlyArray<Problem> }

/** The request's JSON body decoded with `schema`; an empty body reads as `{}` (OpenEnv's reset body is optional). */
const readBody = <S extends Schema.Codec<any, unknown>>(
  request: HttpServerRequest.HttpServerRequest,
  schema: S,
  maxBodyBytes: number
): Effect.Effect<S["Type"], Sessions.RequestError | Invalid> =>
  Effect.gen(function*() {
    const tooLarge = new Sessions.RequestError({
      code: "VALIDATION_ERROR",
      status: 413,
      message: `request body is larger than the server's limit of ${maxBodyBytes} bytes`
    })
    const declared = Number(request.headers["content-length"] ?? 0)
    if (declared > maxBodyBytes) return yield* tooLarge
    const text = yield* request.text.pipe(
      Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(maxBodyBytes)),
      Effect.mapError((error) => error.reason._tag === "RequestParseError" && error.reason.reason === "BodyTooLarge"
        ? tooLarge
        : new Sessions.RequestError({ code: "VALIDATION_ERROR", status: 400, message: `could not read the request body: ${error.message}` }))
    )
    let json: unknown
    try {
      json = text.trim() === "" ? {} : JSON.parse(text)
    } catch (cause) {
      return yield* Effect.fail<Invalid>({ _tag: "Invalid", problems: [{ loc: ["body"], msg: `invalid JSON: ${errorMessage(cause)}`, type: "value_error" }] })
    }
    const decoded = Schema.decodeUnknownResult(schema)(json, parseOptions)
    if (Result.isFailure(decoded)) {
      return yield* Effect.fail<Invalid>({ _tag: "Invalid", problems: fieldProblems(decoded.failure.issue, ["body"]) })
    }
    return decoded.success
  })

/** Answers with the handler's JSON, or with the error it failed with. */
const respond = <A, R>(handler: Effect.Effect<A, Sessions.RequestError | Invalid, R>) =>
  handler.pipe(
    Effect.map((body) => HttpServerResponse.jsonUnsafe(body)),
    Effect.catch((error) => Effect.succeed(error._tag === "Invalid" ? invalidResponse(error.problems) : errorResponse(error)))
  )

// --- WebSocket -------------------------------------------------------------------------------------------

const wsError = (message: string, code: string, extra: Record<string, unknown> = {}) =>
  ({ type: "error", data: { message, code, ...extra } }) as const

const knownTypes = new Set(["reset", "step", "state", "close"])

/** A decoded WebSocket message; a step's data is an action of the server's wire. */
type Incoming =
  | { readonly type: "reset"; readonly data?: ResetParameters }
  | { readonly type: "step"; readonly data: unknown }
  | { readonly type: "state" }
  | { readonly type: "close" }

/** One session for the life of the connection; messages are handled one at a time, each answered in order. */
const serveWebSocket = (
  request: HttpServerRequest.HttpServerRequest,
  sessions: Sessions.SessionTable,
  ClientMessage: Schema.Codec<any, unknown>
): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const socket = yield* request.upgrade
    const writer = yield* socket.writer
    const reader = yield* socket.reader
    const send = (reply: unknown) => writer.write(JSON.stringify(reply))
    const opened = yield* Effect.result(sessions.open)
    if (Result.isFailure(opened)) {
      const error = opened.failure
      return yield* send(wsError(error.message, error.code, error.details))
    }
    const session = opened.success
    session.onEnd = (reason) => {
      Effect.runFork(writer.write(new Socket.CloseEvent(1001, reason)).pipe(Effect.ignore))
    }
    const decoder = new TextDecoder()

    const handle = (frame: string | Uint8Array): Effect.Effect<unknown | "close"> => {
      const text = typeof frame === "string" ? frame : decoder.decode(frame)
      let json: unknown
      try {
        json = JSON.parse(text)
      } catch (cause) {
        return Effect.succeed(wsError(`Invalid JSON: ${errorMessage(cause)}`, "INVALID_JSON"))
      }
      const type = typeof json === "object" && json !== null ? (json as { readonly type?: unknown }).type : undefined
      if (typeof type !== "string" || !knownTypes.has(type)) {
        return Effect.succeed(wsError(`Unknown message type: ${JSON.stringify(type ?? null)}; expected reset, step, state or close`, "UNKNOWN_TYPE"))
      }
      const decoded = Schema.decodeUnknownResult(ClientMessage)(json, parseOptions)
      if (Result.isFailure(decoded)) {
        const errors = fieldProblems(decoded.failure.issue)
        return Effect.succeed(wsError(`Invalid message: ${describeProblems(errors)}`, "VALIDATION_ERROR", { errors }))
      }
      const message = decoded.success as Incoming
      switch (message.type) {
        case "close":
          return Effect.succeed("close")
        case "state":
          return Effect.succeed({ type: "state", data: sessions.state(session) })
        case "reset":
        case "step":
          return sessions.use(
            session,
            message.type === "reset" ? sessions.reset(session, message.data ?? {}) : sessions.step(session, message.data)
          ).pipe(
            Effect.map((data): unknown => ({ type: "observation", data })),
            Effect.catch((error) => Effect.succeed(wsError(error.message, error.code, error.details)))
          )
      }
    }

    yield* Effect.gen(function*() {
      while (true) {
        for (const frame of yield* reader.pull) {
          const reply = yield* handle(frame)
          if (reply === "close") return
          yield* send(reply)
        }
      }
    }).pipe(Effect.ensuring(Effect.suspend(() => {
      // The connection is ending anyway: its scope closes the socket with the right code.
      session.onEnd = undefined
      return sessions.end(session, "connection closed")
    })))
  }).pipe(
    // The peer went away (or sent a message over the size limit): the session ends with its connection.
    Effect.catch(() => Effect.void)
  )

// --- the server ------------------------------------------------------------------------------------------

const digest = (text: string) => createHash("sha256").update(text).digest()

const makeApp = (settings: Settings, definition: EnvironmentDefinition<any>, sessions: Sessions.SessionTable, wire: Wire.Wire) => {
  const expected = settings.token === undefined ? undefined : digest(`Bearer ${settings.token}`)
  const authorized = (request: HttpServerRequest.HttpServerRequest) =>
    expected === undefined || timingSafeEqual(digest(request.headers["authorization"] ?? ""), expected)
  const unauthorized = errorResponse(new Sessions.RequestError({
    code: "UNAUTHORIZED",
    status: 401,
    message: "missing or wrong bearer token (send Authorization: Bearer <token>)"
  }))
  const guarded = <R>(handler: (request: HttpServerRequest.HttpServerRequest) => Effect.Effect<HttpServerResponse.HttpServerResponse, never, R>) =>
    (request: HttpServerRequest.HttpServerRequest) => authorized(request) ? handler(request) : Effect.succeed(unauthorized)
  const { maxBodyBytes } = settings
  const schemas = wire.schemas
  const StepRequest = stepRequest(wire.action)
  const ClientMessage = clientMessage(wire.action)

  return HttpRouter.addAll([
    HttpRouter.route("GET", "/health", Effect.sync(() =>
      HttpServerResponse.jsonUnsafe({ status: "healthy", active_sessions: sessions.size(), max_sessions: sessions.maxSessions })
    )),
    HttpRouter.route("GET", "/metadata", guarded(() =>
      Effect.succeed(HttpServerResponse.jsonUnsafe({ name: definition.name, description: definition.description }))
    )),
    HttpRouter.route("GET", "/schema", guarded(() => Effect.succeed(HttpServerResponse.jsonUnsafe(schemas)))),
    HttpRouter.route("POST", "/reset", guarded((request) =>
      respond(Effect.gen(function*() {
        const { session_id, ...parameters } = yield* readBody(request, ResetRequest, maxBodyBytes)
        if (session_id !== undefined) {
          const session = yield* sessions.find(session_id)
          const reply = yield* sessions.use(session, sessions.reset(session, parameters))
          return { ...reply, session_id }
        }
        // A new session whose first reset fails is ended at once, so a retried reset never leaks one.
        const session = yield* sessions.open
        const reply = yield* sessions.use(session, sessions.reset(session, parameters)).pipe(
          Effect.onError(() => sessions.end(session, "reset failed"))
        )
        return { ...reply, session_id: session.id }
      }))
    )),
    HttpRouter.route("POST", "/step", guarded((request) =>
      respond(Effect.gen(function*() {
        const { action, session_id } = yield* readBody(request, StepRequest, maxBodyBytes)
        const session = yield* sessions.find(session_id)
        return yield* sessions.use(session, sessions.step(session, action))
      }))
    )),
    HttpRouter.route("GET", "/state", guarded(() =>
      respond(Effect.gen(function*() {
        const query = yield* HttpServerRequest.ParsedSearchParams
        const id = query["session_id"]
        // OpenEnv answers GET /state without a session with a fresh environment's state.
        if (id === undefined) return sessions.state(undefined)
        return sessions.state(yield* sessions.find(String(id)))
      }))
    )),
    HttpRouter.route("POST", "/close", guarded((request) =>
      respond(Effect.gen(function*() {
        const { session_id } = yield* readBody(request, CloseRequest, maxBodyBytes)
        yield* sessions.end(yield* sessions.find(session_id), "closed by the client")
        return { closed: true, session_id }
      }))
    )),
    HttpRouter.route("GET", "/ws", guarded((request) =>
      request.headers["upgrade"]?.toLowerCase() !== "websocket"
        ? Effect.succeed(HttpServerResponse.jsonUnsafe({ detail: "GET /ws needs a WebSocket upgrade", code: "VALIDATION_ERROR" }, { status: 426 }))
        : serveWebSocket(request, sessions, ClientMessage).pipe(Effect.as(HttpServerResponse.empty()))
    ))
  ])
}

/** The environment's own tokenizer and chat template, from a local model directory (transformers.js loads only then). */
const loadTokenizer = (directory: string) =>
  Effect.tryPromise({
    try: async () => (await import("../../src/Tokenizer.ts")).load(directory),
    catch: (cause) => new EnvServerError({ message: `--tokenizer ${directory}: ${errorMessage(cause)}` })
  })

/** Serves `options.definition` until the scope closes; the scope's end ends every session first. */
export const serve = (options: EnvServerOptions): Effect.Effect<EnvServer, EnvServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const settings = yield* resolveSettings(options)
    const wire = options.tokenizer === undefined ? Wire.text : Wire.tokens(yield* loadTokenizer(options.tokenizer))
    const sessions = Sessions.make({
      definition: options.definition,
      config: options.config ?? {},
      wire,
      maxSessions: settings.maxSessions,
      idleTimeoutMs: settings.idleTimeoutMs,
      callTimeoutMs: settings.callTimeoutMs
    })
    const server = yield* NodeHttpServer.make(() => createServer(), {
      host: settings.host,
      port: settings.port,
      // Without client tracking, closing the WebSocket server does not wait for the open connections, which
      // the sessions' own ending closes.
      websocket: { maxPayload: settings.maxBodyBytes, clientTracking: false },
      gracefulShutdownTimeout: "2 seconds"
    }).pipe(Effect.mapError((error) => new EnvServerError({ message: `cannot listen on ${settings.host}:${settings.port}: ${errorMessage(error.cause)}` })))
    const handler = yield* HttpRouter.toHttpEffect(makeApp(settings, options.definition, sessions, wire))
    yield* server.serve(handler)
    // Added after the server's own finalizers, so it runs before them: open WebSockets would hold the
    // server's close open.
    yield* Effect.addFinalizer(() => sessions.endAll("server stopped"))
    const reapEvery = Math.min(10_000, Math.max(25, Math.floor(settings.idleTimeoutMs / 4)))
    yield* Effect.forkScoped(sessions.reapIdle.pipe(Effect.repeat(Schedule.spaced(reapEvery))))
    const address = server.address
    const port = address._tag === "UnixPathAddress" ? settings.port : address.port
    return { url: HttpServer.formatAddress(address), host: settings.host, port, sessions }
  })

/** `serve` as a promise, for scripts and tests: the address, and `close` to stop it. */
export const start = async (options: EnvServerOptions): Promise<EnvServer & { close(): Promise<void> }> => {
  const scope = Effect.runSync(Scope.make())
  const exit = await Effect.runPromiseExit(serve(options).pipe(Scope.provide(scope)))
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, exit))
    throw Cause.squash(exit.cause)
  }
  return { ...exit.value, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}

/**
 * The environment named `name`: a built-in one, or one from `module` (a file that default-exports an
 * environment definition or a list of them), so `serve-env` can serve users' environments too.
 */
export const findEnvironment = async (name: string, module?: string): Promise<EnvironmentDefinition<any>> => {
  const registry = EnvironmentRegistry.builtins()
  if (module !== undefined) {
    const loaded = await import(pathToFileURL(path.resolve(module)).href) as { readonly default?: unknown }
    const definitions = Array.isArray(loaded.default) ? loaded.default : [loaded.default]
    for (const definition of definitions) {
      if (typeof definition !== "object" || definition === null || typeof (definition as EnvironmentDefinition).make !== "function") {
        throw new EnvServerError({ message: `${module} must default-export an environment definition (defineEnvironment({...})) or a list of them` })
      }
      registry.register(definition as EnvironmentDefinition<Record<string, unknown>>)
    }
  }
  return registry.get(name)
}
