/**
 * RemoteEnvironment: an OpenEnv-compatible env server (`episodic serve-env`, or OpenEnv's own) as an
 * environment for the engine. Each episode is one session: by default one WebSocket connection to `/ws`
 * (as OpenEnv's EnvClient has it), or, with `transport: "http"`, an HTTP session id from `POST /reset`
 * (episodic's servers only: OpenEnv's own HTTP endpoints are stateless).
 *
 * Every call has a time limit; failures a retry cannot make worse are retried with backoff; each endpoint
 * has a circuit breaker that fails new episodes fast while the server keeps failing (src/remote/Endpoint.ts).
 * Replies are matched to requests: the WebSocket carries one reply per request, in order, so each reply
 * goes to the oldest request still waiting, and the reply to a request that timed out is dropped when it
 * comes, never read as the answer to the next one (OpenEnv's client reads the next message off the socket,
 * whatever it answers).
 *
 * The server's `GET /schema` says what its actions are. When they are token ids (OpenEnv's chat_env, or
 * `episodic serve-env --tokenizer`), each step sends the assistant turn's token ids exactly as the policy
 * sampled them, the observation is the messages the environment added after the assistant's, and the
 * environment's own tokens of the conversation are compared with the policy's: the first position where
 * they differ goes in the turn's info as `token_drift`, once per episode, so a run whose environment
 * tokenizes differently from its policy says so.
 */
import * as NodeWS from "@effect/platform-node/NodeWS"
import { Result, Schema } from "effect"
import type { DatasetRow } from "../DatasetRow.ts"
import {
  define,
  type Environment,
  type EnvironmentDefinition,
  type ResetResult,
  type StepOptions,
  type StepResult
} from "../Environment.ts"
import { Message } from "../Message.ts"
import { ChatObservation, tokenDrift, wantsTokens } from "./ChatProtocol.ts"
import {
  connectionFailure,
  decodeReply,
  Endpoint,
  EndpointConfig,
  endpointOptions,
  RemoteCallError,
  tokenOf
} from "./Endpoint.ts"
import { fetchJson } from "./fetchJson.ts"
import {
  AnyObservationReply,
  describeProblems,
  fieldProblems,
  parseOptions,
  ServerMessage
} from "./OpenEnvProtocol.ts"

export const RemoteConfig = Schema.Struct({
  ...EndpointConfig,
  /** "websocket" (default; any OpenEnv server) or "http" (session ids; episodic's servers). */
  transport: Schema.optionalKey(Schema.Literals(["websocket", "http"])),
  /** The action field the assistant's text goes in (default "message"); setting it means text, whatever the schema says. */
  actionKey: Schema.optionalKey(Schema.String),
  /** The observation field read as the observation text (default "text"). */
  observationKey: Schema.optionalKey(Schema.String)
})
export type RemoteConfig = typeof RemoteConfig.Type

/** Checks a remote environment's config; the error names the bad field. */
export const checkConfig = <S extends Schema.Codec<any, unknown>>(schema: S, config: unknown, name: string): S["Type"] => {
  const decoded = Schema.decodeUnknownResult(schema)(config ?? {}, parseOptions)
  if (Result.isFailure(decoded)) {
    throw new Error(`environment "${name}" config: ${describeProblems(fieldProblems(decoded.failure.issue))}`)
  }
  return decoded.success
}

/** Seeded rows naming `name`, seeded as the built-in environments seed theirs. */
export const seededRows = (name: string, seed: number, count: number): ReadonlyArray<DatasetRow> =>
  Array.from({ length: count }, (_, i) => ({
    prompt: [],
    extra_info: { interaction_kwargs: { name }, seed: seed * 100_003 + i }
  }))

// --- observations ----------------------------------------------------------------------------------------

const textFields = ["text", "prompt", "message", "echoed_message", "content"]

/**
 * The observation's text: the configured field; null there means none (a reset that leaves the row's
 * prompt as the first turn). A server with its own field names gives its first text field, or else the
 * whole observation as JSON.
 */
const textOf = (observation: Record<string, unknown>, key: string): string | undefined => {
  const value = observation[key]
  if (typeof value === "string") return value
  if (value === null) return undefined
  for (const field of textFields) {
    const text = observation[field]
    if (typeof text === "string") return text
  }
  return JSON.stringify(observation)
}

const infoOf = (reply: AnyObservationReply) => (reply.metadata ? { info: reply.metadata } : {})

const toResetResult = (reply: AnyObservationReply, observationKey: string): ResetResult => {
  const observation = reply.observation
  const messages = Schema.decodeUnknownResult(Schema.Array(Message))(observation["messages"])
  const systemPrompt = observation["system_prompt"]
  const text = textOf(observation, observationKey)
  return {
    ...(Result.isSuccess(messages) ? { observation: messages.success } : text !== undefined ? { observation: text } : {}),
    ...(typeof systemPrompt === "string" ? { systemPrompt } : {}),
    ...infoOf(reply)
  }
}

const toStepResult = (reply: AnyObservationReply, observationKey: string): StepResult => ({
  observation: textOf(reply.observation, observationKey) ?? "",
  ...(reply.observation["role"] === "tool" ? { role: "tool" as const } : {}),
  reward: reply.reward ?? 0,
  done: reply.done ?? false,
  ...infoOf(reply)
})

/** How one episode's actions go out and its observations come back. */
interface View {
  action(action: string, options: StepOptions): Record<string, unknown>
  reset(reply: AnyObservationReply): ResetResult
  step(reply: AnyObservationReply, options: StepOptions): StepResult
}

const textView = (actionKey: string, observationKey: string): View => ({
  action: (action) => ({ [actionKey]: action }),
  reset: (reply) => toResetResult(reply, observationKey),
  step: (reply) => toStepResult(reply, observationKey)
})

const chatObservationOf = (reply: AnyObservationReply, what: string): ChatObservation =>
  decodeReply(ChatObservation, reply.observation, `the ${what} reply's observation`)

/**
 * OpenEnv's chat_env: token ids out; the messages the environment adds after the assistant's come back as
 * the observation. Its first messages replace the row's prompt when they hold a user turn; otherwise its
 * system message (OpenEnv's ChatEnvironment has nothing else at reset) goes before the row's prompt.
 */
const tokenView = (): View => {
  // The environment's messages seen so far; later ones are new.
  let seen = 0
  let drifted = false
  return {
    action: (_action, { tokenIds }) => {
      if (tokenIds === undefined || tokenIds.length === 0) {
        throw new RemoteCallError("rejected", "the server takes token ids, and this step has none (OpenEnv's ChatAction needs at least one)")
      }
      return { tokens: [...tokenIds] }
    },
    reset: (reply) => {
      const { messages } = chatObservationOf(reply, "reset")
      seen = messages.length
      drifted = false
      const asMessages = Schema.decodeUnknownResult(Schema.Array(Message))(messages)
      if (messages.some((message) => message.role === "user") && Result.isSuccess(asMessages)) {
        return { observation: asMessages.success, ...infoOf(reply) }
      }
      const system = messages[0]?.role === "system" ? messages[0].content : undefined
      return { ...(system !== undefined ? { systemPrompt: system } : {}), ...infoOf(reply) }
    },
    step: (reply, { contextIds }) => {
      const observation = chatObservationOf(reply, "step")
      const added = observation.messages.slice(seen)
      seen = observation.messages.length
      // The environment's own record of the assistant's message comes first; what follows is its answer.
      const answer = added[0]?.role === "assistant" ? added.slice(1) : added
      const drift = drifted || contextIds === undefined ? undefined : tokenDrift(observation.tokens, contextIds)
      if (drift !== undefined) drifted = true
      const info = { ...reply.metadata, ...(drift !== undefined ? { token_drift: drift } : {}) }
      return {
        observation: answer.map((message) => message.content).join("\n\n"),
        ...(answer.at(-1)?.role === "tool" ? { role: "tool" as const } : {}),
        reward: reply.reward ?? 0,
        done: reply.done ?? false,
        ...(Object.keys(info).length > 0 ? { info } : {})
      }
    }
  }
}

// --- WebSocket -------------------------------------------------------------------------------------------

interface Waiting {
  readonly resolve: (message: ServerMessage) => void
  readonly reject: (error: unknown) => void
  /** Answered, timed out or abandoned: a reply that still comes for it is dropped. */
  settled: boolean
  readonly cleanup: () => void
}

/** One WebSocket session. Requests are answered in order; each reply settles the oldest request still queued. */
class Connection {
  readonly #socket: NodeWS.WebSocket
  readonly #queue: Array<Waiting> = []
  #failure: RemoteCallError | undefined

  private constructor(socket: NodeWS.WebSocket) {
    this.#socket = socket
    socket.on("message", (data, isBinary) => this.#onReply(isBinary ? Buffer.from(data as Buffer).toString("utf8") : String(data)))
    socket.on("close", (code, reason) =>
      this.#fail(new RemoteCallError("disconnected", `the connection closed (code ${code}${reason.length > 0 ? `: ${reason.toString()}` : ""})`))
    )
  }

  static open(url: string, token: string | undefined, signal: AbortSignal): Promise<Connection> {
    return new Promise((resolve, reject) => {
      const socket = new NodeWS.WebSocket(url, {
        headers: token !== undefined ? { authorization: `Bearer ${token}` } : {},
        perMessageDeflate: false
      })
      // A socket without an error listener would throw its errors at the process.
      socket.on("error", () => {})
      const onAbort = () => {
        socket.terminate()
        reject(signal.reason)
      }
      const settle = () => signal.removeEventListener("abort", onAbort)
      socket.once("open", () => {
        settle()
        resolve(new Connection(socket))
      })
      socket.once("error", (error) => {
        settle()
        reject(handshakeFailure(error))
      })
      if (signal.aborted) return onAbort()
      signal.addEventListener("abort", onAbort, { once: true })
    })
  }

  request(message: unknown, signal: AbortSignal): Promise<ServerMessage> {
    if (this.#failure === undefined && this.#socket.readyState !== NodeWS.WebSocket.OPEN) {
      // The server has said goodbye; the close event comes once the TCP connection is down too.
      this.#fail(new RemoteCallError("disconnected", "the connection is closing: the server ended the session"))
    }
    if (this.#failure !== undefined) return Promise.reject(this.#failure)
    return new Promise((resolve, reject) => {
      const onAbort = () => {
        // The request stays queued: its reply, if it ever comes, must not answer a later request.
        waiting.settled = true
        reject(signal.reason)
      }
      const waiting: Waiting = {
        resolve,
        reject,
        settled: false,
        cleanup: () => signal.removeEventListener("abort", onAbort)
      }
      if (signal.aborted) return reject(signal.reason)
      signal.addEventListener("abort", onAbort, { once: true })
      this.#queue.push(waiting)
      this.#socket.send(JSON.stringify(message), (error) => {
        if (error) this.#fail(connectionFailure(error))
      })
    })
  }

  /** Whether requests can still be sent. */
  get open(): boolean {
    return this.#failure === undefined && this.#socket.readyState === NodeWS.WebSocket.OPEN
  }

  /** Says goodbye as OpenEnv's client does, and closes; never throws. */
  close(): void {
    if (this.#failure === undefined && this.#socket.readyState === NodeWS.WebSocket.OPEN) {
      this.#socket.send(JSON.stringify({ type: "close" }), () => this.#socket.close(1000))
    } else {
      this.#socket.terminate()
    }
    this.#fail(new RemoteCallError("disconnected", "the session was closed"))
  }

  #onReply(text: string): void {
    const waiting = this.#queue.shift()
    let message: ServerMessage | undefined
    let problem: RemoteCallError | undefined
    try {
      message = decodeReply(ServerMessage, JSON.parse(text), "the reply")
    } catch (cause) {
      problem = cause instanceof RemoteCallError ? cause : new RemoteCallError("protocol", `the reply is not JSON: ${text.slice(0, 200)}`)
    }
    if (waiting === undefined) {
      // Nothing was asked: an error the server sends on its own (a full server says so and hangs up)
      // fails whatever is asked next; anything else unasked for is dropped.
      if (message?.type === "error") this.#failure = serverError(message.data)
      return
    }
    if (waiting.settled) return
    waiting.settled = true
    waiting.cleanup()
    if (message !== undefined) waiting.resolve(message)
    else waiting.reject(problem)
  }

  #fail(error: RemoteCallError): void {
    this.#failure ??= error
    for (const waiting of this.#queue.splice(0)) {
      if (waiting.settled) continue
      waiting.settled = true
      waiting.cleanup()
      waiting.reject(this.#failure)
    }
  }
}

/** ws says "Unexpected server response: 401" when the server answers the upgrade with an HTTP status. */
const handshakeFailure = (error: Error): RemoteCallError => {
  const status = /Unexpected server response: (\d+)/.exec(error.message)?.[1]
  if (status === undefined) return connectionFailure(error)
  const code = Number(status)
  const hint = code === 401 ? " (missing or wrong bearer token)" : code === 404 ? " (no /ws endpoint: is this an OpenEnv server?)" : ""
  return new RemoteCallError(code >= 500 ? "server" : "rejected", `the server refused the WebSocket with HTTP ${code}${hint}`)
}

/** An OpenEnv error reply as a classified failure. */
const serverError = (data: { readonly message: string; readonly code?: string }): RemoteCallError => {
  const what = `server error ${data.code ?? "(no code)"}: ${data.message}`
  switch (data.code) {
    case "CAPACITY_REACHED":
      return new RemoteCallError("capacity", what)
    case "INVALID_JSON":
    case "UNKNOWN_TYPE":
    case "VALIDATION_ERROR":
    case "UNAUTHORIZED":
      return new RemoteCallError("rejected", what)
    default:
      return new RemoteCallError("server", what)
  }
}

const observationOf = (message: ServerMessage): AnyObservationReply => {
  if (message.type === "observation") return message.data
  if (message.type === "error") throw serverError(message.data)
  throw new RemoteCallError("protocol", `expected an observation, got a "${message.type}" message`)
}

const websocketUrl = (url: string) => `${url.replace(/^http/, "ws").replace(/\/+$/, "")}/ws`
const httpUrl = (url: string) => url.replace(/^ws/, "http").replace(/\/+$/, "")

interface Resolved {
  readonly endpoint: Endpoint
  readonly token: string | undefined
  /** A fresh view for an episode, in the format the server's schema asks for. */
  readonly view: (signal: AbortSignal) => Promise<View>
}

const overWebSocket = ({ endpoint, token, view: makeView }: Resolved): Environment => {
  const url = websocketUrl(endpoint.url)
  let connection: Connection | undefined
  let view: View | undefined
  return {
    async reset({ seed, row, signal }) {
      let attempts = 0
      const reply = await endpoint.call("reset", async (attemptSignal) => {
        view = await makeView(attemptSignal)
        // A second reset reuses the session's connection, as OpenEnv's sessions allow; a retried one starts
        // over on a new connection, since the old one's session is in an unknown state.
        const retry = attempts++ > 0
        if (retry || connection === undefined || !connection.open) {
          connection?.close()
          connection = await Connection.open(url, token, attemptSignal)
        }
        return observationOf(await connection.request({ type: "reset", data: { seed, row } }, attemptSignal))
      }, { signal, idempotent: true, admit: true })
      return view!.reset(reply)
    },
    async step(action, options) {
      const session = connection
      const episode = view
      if (session === undefined || episode === undefined) throw new Error("step before reset")
      const data = episode.action(action, options)
      const reply = await endpoint.call(
        "step",
        async (attemptSignal) => observationOf(await session.request({ type: "step", data }, attemptSignal)),
        { signal: options.signal, idempotent: false, admit: false }
      )
      return episode.step(reply, options)
    },
    close() {
      connection?.close()
      connection = undefined
    }
  }
}

const SessionReply = Schema.Struct({ session_id: Schema.optionalKey(Schema.String) })

const overHttp = ({ endpoint, token, view: makeView }: Resolved): Environment => {
  const base = httpUrl(endpoint.url)
  let sessionId: string | undefined
  let view: View | undefined
  return {
    async reset({ seed, row, signal }) {
      const reply = await endpoint.call("reset", async (attemptSignal) => {
        view = await makeView(attemptSignal)
        // A second reset of this environment resets its session rather than opening another.
        const request = { seed, row, ...(sessionId !== undefined ? { session_id: sessionId } : {}) }
        const body = await fetchJson(`${base}/reset`, { method: "POST", body: request, token, signal: attemptSignal })
        const { session_id } = decodeReply(SessionReply, body, "the reset reply")
        if (session_id === undefined) {
          throw new RemoteCallError("protocol", "the reset reply has no session_id: OpenEnv's own HTTP endpoints are stateless, use the WebSocket transport")
        }
        sessionId = session_id
        return decodeReply(AnyObservationReply, body, "the reset reply")
      }, { signal, idempotent: true, admit: true })
      return view!.reset(reply)
    },
    async step(action, options) {
      const episode = view
      if (sessionId === undefined || episode === undefined) throw new Error("step before reset")
      const body = { session_id: sessionId, action: episode.action(action, options) }
      const reply = await endpoint.call(
        "step",
        async (attemptSignal) =>
          decodeReply(AnyObservationReply, await fetchJson(`${base}/step`, { method: "POST", body, token, signal: attemptSignal }), "the step reply"),
        { signal: options.signal, idempotent: false, admit: false }
      )
      return episode.step(reply, options)
    },
    async close() {
      if (sessionId === undefined) return
      const body = { session_id: sessionId }
      sessionId = undefined
      // Best effort: a session the server never hears about again is reaped when idle.
      await fetchJson(`${base}/close`, { method: "POST", body, token, signal: AbortSignal.timeout(2_000) }).catch(() => undefined)
    }
  }
}

const SchemaReply = Schema.Struct({ action: Schema.optionalKey(Schema.Unknown) })

/**
 * Whether the server at `base` takes token ids, from its `GET /schema`. A server without one (a 4xx) takes
 * text; a failure that may pass (unreachable, 5xx, timeout) is thrown, for the reset's retries. A refused
 * token says nothing about the server (undefined): the session's own request then says what is wrong.
 */
const readActionFormat = async (base: string, token: string | undefined, signal: AbortSignal): Promise<"text" | "tokens" | undefined> => {
  try {
    const body = await fetchJson(`${base}/schema`, { method: "GET", token, signal })
    return wantsTokens(decodeReply(SchemaReply, body, "the schema reply").action) ? "tokens" : "text"
  } catch (cause) {
    if (cause instanceof RemoteCallError && (cause.kind === "rejected" || cause.kind === "protocol")) {
      return /^HTTP 401/.test(cause.message) ? undefined : "text"
    }
    throw cause
  }
}

/**
 * The OpenEnv server at `url` (`ws://`, `wss://`, `http://` or `https://`; the WebSocket is at `/ws`) as an
 * environment definition named by its URL. `options` are defaults for every episode; an experiment's
 * `environment.config` adds to them. The endpoint's breaker is made with the settings of its first episode.
 */
export const remoteEnvironment = (url: string, options: RemoteConfig = {}): EnvironmentDefinition<RemoteConfig> => {
  if (!/^(wss?|https?):\/\/[^/]/.test(url)) {
    throw new Error(`remote environment "${url}": the URL must start with ws://, wss://, http:// or https://`)
  }
  let endpoint: Endpoint | undefined
  // What the server's schema says its actions are: read once, by the first episode that gets an answer.
  let actionFormat: Promise<"text" | "tokens" | undefined> | undefined
  const resolve = (config: RemoteConfig): Resolved & { readonly transport: "websocket" | "http" } => {
    const checked: RemoteConfig = checkConfig(RemoteConfig, { ...options, ...config }, url)
    endpoint ??= new Endpoint(url, endpointOptions(checked))
    const token = tokenOf(checked)
    const actionKey = checked.actionKey ?? "message"
    const observationKey = checked.observationKey ?? "text"
    const format = (signal: AbortSignal) => {
      if (checked.actionKey !== undefined) return Promise.resolve("text" as const)
      const reading = actionFormat ??= readActionFormat(httpUrl(url), token, signal)
      // A failed or undecided read is not kept: the next attempt asks again.
      reading.then(
        (format) => { if (format === undefined && actionFormat === reading) actionFormat = undefined },
        () => { if (actionFormat === reading) actionFormat = undefined }
      )
      return reading
    }
    return {
      endpoint,
      token,
      view: async (signal) => (await format(signal)) === "tokens" ? tokenView() : textView(actionKey, observationKey),
      transport: checked.transport ?? "websocket"
    }
  }
  return define<RemoteConfig>({
    name: url,
    description: `the OpenEnv server at ${url}`,
    make: (config) => {
      const resolved = resolve(config)
      return resolved.transport === "http" ? overHttp(resolved) : overWebSocket(resolved)
    },
    rows: ({ seed, count, config }) => {
      checkConfig(RemoteConfig, { ...options, ...config }, url)
      return seededRows(url, seed, count)
    }
  })
}
