/**
 * A test double of OpenEnv's chat_env server (meta-pytorch/OpenEnv `envs/chat_env/server/app.py` on
 * `core/env_server/http_server.py`), written from its code so that episodic's client meets what a user's
 * `chat-env` Docker image answers:
 *
 * - ChatEnvironment: reset keeps only the system prompt (its reset takes no arguments, so the seed and row a
 *   client sends are dropped, as `_get_valid_kwargs` drops them); its tokens are
 *   `apply_chat_template([system], tokenize=True)`. A step stores the action's tokens as they came, decodes
 *   them with `skip_special_tokens=True` into an assistant message, and answers the flattened history. It
 *   never ends an episode and pays no reward unless a transform does. Its state never counts steps.
 * - HTTP endpoints are stateless: each request gets a fresh environment (a step without a reset included).
 * - Replies are `serialize_observation`'s `{observation: {messages, tokens}, reward, done}` (no metadata).
 * - Validation: FastAPI's 422 `{"detail": [{type, loc, msg, input}]}` for bodies; a bad action's `detail` is
 *   pydantic's `e.errors()` of ChatAction, whose `loc` starts at the action's own fields. A validator's
 *   TypeError is no ValidationError: HTTP 500, and EXECUTION_ERROR on the WebSocket, as pydantic lets it through.
 * - WebSocket `/ws`: one environment per connection, OpenEnv's message and error shapes.
 */
import { AutoTokenizer, env, type PreTrainedTokenizer } from "@huggingface/transformers"
import * as NodeWS from "@effect/platform-node/NodeWS"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"

interface Message {
  readonly role: string
  readonly content: string
}

interface ChatObservation {
  messages: Array<Message>
  tokens: Array<number>
  reward: number | null
  done: boolean
  metadata: Record<string, unknown>
}

/** OpenEnv's Transform: takes the observation and returns it, changed or not. */
export type Transform = (observation: ChatObservation) => ChatObservation

interface PydanticError {
  readonly type: string
  readonly loc: ReadonlyArray<string | number>
  readonly msg: string
  readonly input: unknown
  readonly ctx?: Record<string, unknown>
}

class ValidationError extends Error {
  readonly errors: ReadonlyArray<PydanticError>
  constructor(errors: ReadonlyArray<PydanticError>) {
    super("validation error")
    this.errors = errors
  }
}

/** Python's ValueError, which a pydantic validator turns into a `value_error`. */
class PythonValueError extends Error {}

/** Python's int() on a JSON value: truncates floats, takes bools and numeric strings, refuses the rest. */
const pythonInt = (value: unknown): number => {
  if (typeof value === "boolean") return value ? 1 : 0
  if (typeof value === "number") return Math.trunc(value)
  if (typeof value === "string" && /^\s*[-+]?\d+\s*$/.test(value)) return Number.parseInt(value, 10)
  if (typeof value === "string") throw new PythonValueError(`invalid literal for int() with base 10: '${value}'`)
  throw new TypeError(`int() argument must be a string, a bytes-like object or a real number, not '${value === null ? "NoneType" : Array.isArray(value) ? "list" : "dict"}'`)
}

/** models.py `_flatten_tokens`. */
const flatten = (value: unknown): Array<number> => (Array.isArray(value) ? value.flatMap(flatten) : [pythonInt(value)])

/** `ChatAction.model_validate(data)`: pydantic's errors, and the validator's TypeError let through. */
const validateChatAction = (data: unknown): { readonly tokens: Array<number>; readonly metadata: Record<string, unknown> } => {
  if (typeof data !== "object" || data === null || Array.isArray(data)) {
    throw new ValidationError([{ type: "model_type", loc: [], msg: "Input should be a valid dictionary or instance of ChatAction", input: data, ctx: { class_name: "ChatAction" } }])
  }
  const errors: Array<PydanticError> = []
  const record = data as Record<string, unknown>
  let tokens: Array<number> = []
  if (!("tokens" in record)) {
    errors.push({ type: "missing", loc: ["tokens"], msg: "Field required", input: data })
  } else if (!Array.isArray(record["tokens"])) {
    throw new TypeError("tokens must be provided as a sequence of token ids")
  } else {
    try {
      tokens = flatten(record["tokens"])
      if (tokens.length === 0) {
        errors.push({
          type: "too_short",
          loc: ["tokens"],
          msg: "List should have at least 1 item after validation, not 0",
          input: tokens,
          ctx: { field_type: "List", min_length: 1, actual_length: 0 }
        })
      }
    } catch (cause) {
      if (!(cause instanceof PythonValueError)) throw cause
      errors.push({ type: "value_error", loc: ["tokens"], msg: `Value error, ${cause.message}`, input: record["tokens"], ctx: { error: cause.message } })
    }
  }
  const metadata = record["metadata"] ?? {}
  if (typeof metadata !== "object" || metadata === null || Array.isArray(metadata)) {
    errors.push({ type: "dict_type", loc: ["metadata"], msg: "Input should be a valid dictionary", input: metadata })
  }
  for (const key of Object.keys(record)) {
    if (key !== "tokens" && key !== "metadata") errors.push({ type: "extra_forbidden", loc: [key], msg: "Extra inputs are not permitted", input: record[key] })
  }
  if (errors.length > 0) throw new ValidationError(errors)
  return { tokens, metadata: metadata as Record<string, unknown> }
}

/** chat_environment.py's ChatEnvironment. */
class ChatEnvironment {
  readonly #tokenizer: PreTrainedTokenizer
  readonly #systemPrompt: string | undefined
  readonly #transform: Transform | undefined
  historyMessages: Array<Message> = []
  historyTokens: Array<Array<number>> = []

  constructor(tokenizer: PreTrainedTokenizer, systemPrompt: string | undefined, transform: Transform | undefined) {
    this.#tokenizer = tokenizer
    this.#systemPrompt = systemPrompt
    this.#transform = transform
    if (systemPrompt) this.#start()
  }

  #start() {
    this.historyMessages = []
    this.historyTokens = []
    if (this.#systemPrompt) {
      const system = { role: "system", content: this.#systemPrompt }
      this.historyMessages = [system]
      this.historyTokens = [this.#tokenize([system])]
    }
  }

  #tokenize(conversation: ReadonlyArray<Message>): Array<number> {
    return flatten(this.#tokenizer.apply_chat_template(conversation.map((m) => ({ ...m })), { tokenize: true, return_tensor: false, return_dict: false }))
  }

  reset(): ChatObservation {
    this.#start()
    return this.#observation()
  }

  step(tokens: ReadonlyArray<number>): ChatObservation {
    this.historyTokens.push([...tokens])
    const content = this.#tokenizer.decode([...tokens], { skip_special_tokens: true })
    this.historyMessages.push({ role: "assistant", content })
    return this.#observation()
  }

  #observation(): ChatObservation {
    const observation: ChatObservation = {
      messages: [...this.historyMessages],
      tokens: this.historyTokens.flat(),
      reward: null,
      done: false,
      metadata: {}
    }
    return this.#transform === undefined ? observation : this.#transform(observation)
  }

  get state() {
    return { episode_id: null, step_count: 0, history_messages: this.historyMessages, history_tokens: this.historyTokens }
  }
}

/** serialization.py `serialize_observation`. */
const serialize = (observation: ChatObservation) => ({
  observation: { messages: observation.messages, tokens: observation.tokens },
  reward: observation.reward,
  done: observation.done
})

// pydantic's model_json_schema() of ChatAction and ChatObservation, and of the base State (what OpenEnv publishes).
const schemas = {
  action: {
    additionalProperties: false,
    properties: {
      metadata: { additionalProperties: true, description: "Additional metadata for the action", title: "Metadata", type: "object" },
      tokens: { items: { type: "integer" }, minItems: 1, title: "Tokens", type: "array" }
    },
    required: ["tokens"],
    title: "ChatAction",
    type: "object"
  },
  observation: {
    $defs: {
      Message: {
        additionalProperties: false,
        properties: { role: { title: "Role", type: "string" }, content: { title: "Content", type: "string" } },
        required: ["role", "content"],
        title: "Message",
        type: "object"
      }
    },
    additionalProperties: false,
    properties: {
      done: { default: false, description: "Whether the episode has terminated", title: "Done", type: "boolean" },
      reward: { anyOf: [{ type: "boolean" }, { type: "integer" }, { type: "number" }, { type: "null" }], default: null, description: "Reward signal from the last action", title: "Reward" },
      metadata: { additionalProperties: true, description: "Additional metadata for the observation", title: "Metadata", type: "object" },
      messages: { items: { $ref: "#/$defs/Message" }, title: "Messages", type: "array" },
      tokens: { items: { type: "integer" }, title: "Tokens", type: "array" }
    },
    title: "ChatObservation",
    type: "object"
  },
  state: {
    additionalProperties: true,
    properties: {
      episode_id: { anyOf: [{ type: "string" }, { type: "null" }], default: null, description: "Unique identifier for the current episode", title: "Episode Id" },
      step_count: { default: 0, description: "Number of steps taken in the current episode", minimum: 0, title: "Step Count", type: "integer" }
    },
    title: "State",
    type: "object"
  }
}

export interface OpenEnvChatServer {
  readonly url: string
  /** Every action a step received, in order: the token ids as validated. */
  readonly actions: Array<ReadonlyArray<number>>
  close(): Promise<void>
}

export interface OpenEnvChatOptions {
  /** The TOKENIZER_NAME of OpenEnv's Docker image: here a local model directory. */
  readonly tokenizer: string
  /** SYSTEM_PROMPT. */
  readonly systemPrompt?: string
  readonly transform?: Transform
}

const json = (response: ServerResponse, status: number, body: unknown) => {
  response.writeHead(status, { "content-type": "application/json" })
  response.end(JSON.stringify(body))
}

const readBody = (request: IncomingMessage) =>
  new Promise<string>((resolve, reject) => {
    let text = ""
    request.setEncoding("utf8")
    request.on("data", (chunk) => (text += chunk))
    request.on("end", () => resolve(text))
    request.on("error", reject)
  })

/** FastAPI's RequestValidationError for a body that is not JSON, not an object, or lacks a field. */
const bodyProblems = (
  text: string,
  required: ReadonlyArray<string>,
  optionalBody: boolean
): { readonly body?: Record<string, unknown>; readonly detail?: ReadonlyArray<PydanticError> } => {
  if (text.trim() === "" && optionalBody) return { body: {} }
  let body: unknown
  try {
    body = JSON.parse(text)
  } catch (cause) {
    return { detail: [{ type: "json_invalid", loc: ["body", 0], msg: "JSON decode error", input: {}, ctx: { error: String(cause) } }] }
  }
  if (typeof body !== "object" || body === null || Array.isArray(body)) {
    return { detail: [{ type: "model_attributes_type", loc: ["body"], msg: "Input should be a valid dictionary or object to extract fields from", input: body }] }
  }
  const record = body as Record<string, unknown>
  const detail: Array<PydanticError> = required.filter((key) => !(key in record)).map((key) => ({ type: "missing", loc: ["body", key], msg: "Field required", input: body }))
  if ("action" in record && (typeof record["action"] !== "object" || record["action"] === null || Array.isArray(record["action"]))) {
    detail.push({ type: "dict_type", loc: ["body", "action"], msg: "Input should be a valid dictionary", input: record["action"] })
  }
  if ("seed" in record && record["seed"] !== null && !(Number.isInteger(record["seed"]) && (record["seed"] as number) >= 0)) {
    detail.push({ type: "greater_than_equal", loc: ["body", "seed"], msg: "Input should be greater than or equal to 0", input: record["seed"], ctx: { ge: 0 } })
  }
  return detail.length > 0 ? { detail } : { body: record }
}

export const startOpenEnvChatServer = async (options: OpenEnvChatOptions): Promise<OpenEnvChatServer> => {
  env.allowRemoteModels = false
  env.allowLocalModels = true
  env.localModelPath = "/"
  const tokenizer = await AutoTokenizer.from_pretrained(path.resolve(options.tokenizer), { local_files_only: true })
  const makeEnvironment = () => new ChatEnvironment(tokenizer, options.systemPrompt, options.transform)
  const actions: Array<ReadonlyArray<number>> = []
  const step = (environment: ChatEnvironment, data: unknown) => {
    const action = validateChatAction(data)
    actions.push(action.tokens)
    return environment.step(action.tokens)
  }

  const server = createServer(async (request, response) => {
    const route = `${request.method} ${new URL(request.url ?? "/", "http://localhost").pathname}`
    try {
      switch (route) {
        case "GET /health":
          return json(response, 200, { status: "healthy" })
        case "GET /schema":
          return json(response, 200, schemas)
        case "GET /metadata":
          return json(response, 200, { name: "ChatEnvironment", description: "ChatEnvironment environment", readme_content: null, version: null, author: null, documentation_url: null })
        case "GET /state":
          return json(response, 200, makeEnvironment().state)
        case "POST /reset": {
          const { detail } = bodyProblems(await readBody(request), [], true)
          if (detail !== undefined) return json(response, 422, { detail })
          return json(response, 200, serialize(makeEnvironment().reset()))
        }
        case "POST /step": {
          const { body, detail } = bodyProblems(await readBody(request), ["action"], false)
          if (detail !== undefined) return json(response, 422, { detail })
          try {
            return json(response, 200, serialize(step(makeEnvironment(), body!["action"])))
          } catch (cause) {
            if (cause instanceof ValidationError) return json(response, 422, { detail: cause.errors })
            throw cause
          }
        }
        default:
          return json(response, 404, { detail: "Not Found" })
      }
    } catch {
      response.writeHead(500, { "content-type": "text/plain; charset=utf-8" })
      response.end("Internal Server Error")
    }
  })

  const sockets = new NodeWS.WebSocketServer({ noServer: true })
  server.on("upgrade", (request, socket, head) => {
    if (new URL(request.url ?? "/", "http://localhost").pathname !== "/ws") return socket.destroy()
    sockets.handleUpgrade(request, socket, head, (ws) => {
      const send = (message: unknown) => ws.send(JSON.stringify(message))
      let environment: ChatEnvironment
      try {
        environment = makeEnvironment()
      } catch (cause) {
        send({ type: "error", data: { message: String(cause), code: "SESSION_ERROR" } })
        return ws.close()
      }
      const error = (message: string, code: string, extra: Record<string, unknown> = {}) => send({ type: "error", data: { message, code, ...extra } })
      ws.on("message", (raw) => {
        let message: Record<string, unknown>
        try {
          message = JSON.parse(String(raw))
        } catch (cause) {
          return error(`Invalid JSON: ${String(cause)}`, "INVALID_JSON")
        }
        const type = message["type"] ?? ""
        const extra = Object.keys(message).filter((key) => key !== "type" && key !== "data")
        try {
          if (extra.length > 0 && ["reset", "step", "state", "close"].includes(String(type))) {
            throw new ValidationError(extra.map((key) => ({ type: "extra_forbidden", loc: [key], msg: "Extra inputs are not permitted", input: message[key] })))
          }
          switch (type) {
            case "reset":
              return send({ type: "observation", data: serialize(environment.reset()) })
            case "step":
              if (!("data" in message)) throw new ValidationError([{ type: "missing", loc: ["data"], msg: "Field required", input: message }])
              return send({ type: "observation", data: serialize(step(environment, message["data"])) })
            case "state":
              return send({ type: "state", data: environment.state })
            case "close":
              return ws.close()
            default:
              return error(`Unknown message type: ${String(type)}`, "UNKNOWN_TYPE")
          }
        } catch (cause) {
          if (cause instanceof ValidationError) return error("Invalid message", "VALIDATION_ERROR", { errors: cause.errors })
          return error(cause instanceof Error ? cause.message : String(cause), "EXECUTION_ERROR")
        }
      })
    })
  })

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  return {
    url: `http://127.0.0.1:${port}`,
    actions,
    close: () =>
      new Promise<void>((resolve) => {
        for (const client of sockets.clients) client.terminate()
        sockets.close()
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
