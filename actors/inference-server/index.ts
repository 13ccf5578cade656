/**
 * `episodic serve`: the shared inference actor behind the protocols inference engines speak, so one model
 * server feeds many rollout processes and any OpenAI client can use it. On Effect's HTTP server
 * (NodeHttpServer), like the env server:
 *
 * - `GET /health`, `GET /v1/models` (the model directory, its context length, and in `episodic` the logprob
 *   kind and the policy version);
 * - `POST /v1/completions` (prompt as text or token ids; `return_token_ids` adds `token_ids` and
 *   `prompt_token_ids`; `logprobs`; `stream`), `POST /v1/chat/completions` (the model's chat template;
 *   `logprobs`, `return_token_ids`, `stream`), vLLM's token endpoint `POST /inference/v1/generate`;
 * - `POST /tokenize`, `POST /detokenize`;
 * - `POST /pause`, `POST /update_weights {weight_dir, version?}` (model.safetensors from that directory, in
 *   between two decode steps), `POST /resume`, as prime-rl's vLLM server has them; `GET /stats`.
 *
 * Replies carry `policy_version`, the weights that served them. `X-Session-ID` names the actor's KV cache
 * entry, so an episode's later turns prefill only their new tokens. Logprobs are of the distribution each
 * token was sampled from, as in-process. A bad request gets a 4xx naming the field (OpenAI's error shape);
 * a client that disconnects cancels its request; the server binds 127.0.0.1 unless told otherwise and asks
 * for a bearer token when given one.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { ByteSize, Cause, Effect, Exit, Schema, Scope } from "effect"
import { HttpIncomingMessage, HttpRouter, HttpServer, HttpServerRequest, HttpServerResponse } from "effect/http"
import { randomUUID, createHash, timingSafeEqual } from "node:crypto"
import { existsSync } from "node:fs"
import { createServer } from "node:http"
import * as path from "node:path"
import { errorMessage } from "../../src/errorMessage.ts"
import { GenerationRequest, type GenerationResult, SamplingParams } from "../../src/Generation.ts"
import type { MessageInit } from "../../src/Message.ts"
import { hasModel } from "../../src/model/huggingFace.ts"
import * as Safetensors from "../../src/model/safetensors.ts"
import { load as loadTokenizer, type ChatTokenizer } from "../../src/Tokenizer.ts"
import { start as startActor, type InferenceActor } from "../inference/index.ts"

export interface InferenceServerOptions {
  /** A model directory: config.json, tokenizer files, onnx/model.onnx. */
  readonly model: string
  /** Default 127.0.0.1: this machine only unless told otherwise. */
  readonly host?: string | undefined
  /** Default 8000; 0 picks a free port. */
  readonly port?: number | undefined
  /** The actor's decode batch at most (default 64). */
  readonly maxBatchSize?: number | undefined
  /** When set, every endpoint but /health needs `Authorization: Bearer <token>`. */
  readonly token?: string | undefined
  /** Largest request body (default 16 MiB). */
  readonly maxBodyBytes?: number | undefined
  /** ONNX Runtime threads of the actor. */
  readonly threads?: number | undefined
}

export interface InferenceServer {
  readonly url: string
  readonly port: number
  readonly model: string
  /** What `GET /stats` answers: requests, context tokens, the actor's counters, the tokens its cache saved. */
  stats(): Promise<ServerStats>
}

export interface ServerStats {
  readonly requests: number
  /** Context tokens of every request, and those the actor ran through prefill: the rest came from its cache. */
  readonly context_tokens: number
  readonly prefill_tokens: number
  readonly cached_tokens: number
  readonly policy_version: number
  readonly [counter: string]: number
}

export class InferenceServerError extends Schema.TaggedError<InferenceServerError>()("InferenceServerError", {
  message: Schema.String
}) {}

export const defaults = { host: "127.0.0.1", port: 8000, maxBatchSize: 64, maxBodyBytes: 16 * 1024 * 1024 } as const

/** A request the server refuses: its status, and the field it names (OpenAI's `param`). */
class BadRequest extends Error {
  readonly status: number
  readonly param: string | undefined
  constructor(message: string, param?: string, status = 400) {
    super(message)
    this.status = status
    this.param = param
  }
}

const errorType = (status: number) =>
  status === 401 ? "AuthenticationError" : status === 404 ? "NotFoundError" : status === 413 ? "RequestTooLargeError" : status >= 500 ? "InternalServerError" : "BadRequestError"

const errorResponse = (status: number, message: string, param?: string) =>
  HttpServerResponse.jsonUnsafe(
    { error: { message, type: errorType(status), param: param ?? null, code: status } },
    { status, ...(status === 401 ? { headers: { "www-authenticate": "Bearer" } } : {}) }
  )

// --- reading requests ------------------------------------------------------------------------------------

type Json = Record<string, unknown>

const describe = (value: unknown) => (value === undefined ? "missing" : JSON.stringify(value)?.slice(0, 80) ?? String(value))

const read = {
  number: (body: Json, key: string, name: string, fallback: number, check: (x: number) => boolean, what: string): number => {
    const value = body[key]
    if (value === undefined || value === null) return fallback
    if (typeof value !== "number" || !Number.isFinite(value) || !check(value)) throw new BadRequest(`${name} must be ${what}, got ${describe(value)}`, name)
    return value
  },
  int: (body: Json, key: string, name: string, fallback: number | undefined, check: (x: number) => boolean, what: string): number | undefined => {
    const value = body[key]
    if (value === undefined || value === null) return fallback
    if (typeof value !== "number" || !Number.isInteger(value) || !check(value)) throw new BadRequest(`${name} must be ${what}, got ${describe(value)}`, name)
    return value
  },
  bool: (body: Json, key: string, name: string, fallback: boolean): boolean => {
    const value = body[key]
    if (value === undefined || value === null) return fallback
    if (typeof value !== "boolean") throw new BadRequest(`${name} must be true or false, got ${describe(value)}`, name)
    return value
  },
  strings: (body: Json, key: string, name: string): Array<string> => {
    const value = body[key]
    if (value === undefined || value === null) return []
    if (typeof value === "string") return [value]
    if (!Array.isArray(value) || !value.every((s) => typeof s === "string")) throw new BadRequest(`${name} must be a string or a list of strings, got ${describe(value)}`, name)
    return value
  },
  ids: (value: unknown, name: string, vocabSize: number): Array<number> => {
    if (!Array.isArray(value) || value.length === 0) throw new BadRequest(`${name} must be a non-empty list of token ids, got ${describe(value)}`, name)
    value.forEach((id, i) => {
      if (!Number.isInteger(id) || id < 0 || id >= vocabSize) throw new BadRequest(`${name}[${i}] is ${describe(id)}, not a token id of this model (0 to ${vocabSize - 1})`, name)
    })
    return value as Array<number>
  }
}

interface Sampling {
  readonly maxTokens: number | undefined
  readonly temperature: number
  readonly topP: number
  readonly topK: number
  readonly seed: number
  readonly stop: Array<string>
  readonly stopTokenIds: Array<number>
  readonly ignoreEos: boolean
}

/** vLLM's sampling fields, as OpenAI's and vLLM's defaults have them; `prefix` names nested fields. */
const readSampling = (body: Json, prefix: string, vocabSize: number, maxTokensDefault: number | undefined): Sampling => {
  const n = read.int(body, "n", `${prefix}n`, 1, (x) => x === 1, "1 (one completion per request)")
  void n
  const given = body["stop_token_ids"]
  const stopTokenIds = given === undefined || given === null || (Array.isArray(given) && given.length === 0) ? [] : read.ids(given, `${prefix}stop_token_ids`, vocabSize)
  return {
    maxTokens: read.int(body, body["max_completion_tokens"] !== undefined ? "max_completion_tokens" : "max_tokens", `${prefix}max_tokens`, maxTokensDefault, (x) => x >= 1, "an integer >= 1"),
    temperature: read.number(body, "temperature", `${prefix}temperature`, 1, (x) => x >= 0, "a number >= 0"),
    topP: read.number(body, "top_p", `${prefix}top_p`, 1, (x) => x > 0 && x <= 1, "a number in (0, 1]"),
    topK: Math.max(0, read.int(body, "top_k", `${prefix}top_k`, 0, (x) => x >= -1, "-1, 0 (off) or a positive integer")!),
    seed: read.int(body, "seed", `${prefix}seed`, undefined, (x) => Math.abs(x) < 2 ** 53, "an integer") ?? Math.floor(Math.random() * 2 ** 31),
    stop: read.strings(body, "stop", `${prefix}stop`),
    stopTokenIds,
    ignoreEos: read.bool(body, "ignore_eos", `${prefix}ignore_eos`, false)
  }
}

const readMessages = (value: unknown): Array<MessageInit> => {
  if (!Array.isArray(value) || value.length === 0) throw new BadRequest(`messages must be a non-empty list, got ${describe(value)}`, "messages")
  return value.map((message, i) => {
    const role = (message as Json | null)?.["role"]
    if (role !== "system" && role !== "user" && role !== "assistant" && role !== "tool" && role !== "developer") {
      throw new BadRequest(`messages[${i}].role must be system, user, assistant or tool, got ${describe(role)}`, `messages[${i}].role`)
    }
    const content = (message as Json)["content"]
    const text = typeof content === "string"
      ? content
      : Array.isArray(content) && content.every((part) => (part as Json | null)?.["type"] === "text" && typeof (part as Json)["text"] === "string")
        ? content.map((part) => (part as Json)["text"]).join("")
        : undefined
    if (text === undefined) throw new BadRequest(`messages[${i}].content must be text (a string or a list of text parts), got ${describe(content)}`, `messages[${i}].content`)
    return { role: role === "developer" ? "system" : role, content: text }
  })
}

// --- the server ------------------------------------------------------------------------------------------

const digest = (text: string) => createHash("sha256").update(text).digest()

const finishOf = (reason: GenerationResult["finishReason"]) => (reason === "eos" || reason === "stop" ? "stop" : reason === "length" ? "length" : "abort")

/** Serves `options.model` until the scope closes. */
export const serve = (options: InferenceServerOptions): Effect.Effect<InferenceServer, InferenceServerError, Scope.Scope> =>
  Effect.gen(function*() {
    const directory = path.resolve(options.model)
    const host = options.host ?? defaults.host
    const port = options.port ?? defaults.port
    const maxBodyBytes = options.maxBodyBytes ?? defaults.maxBodyBytes
    if (!hasModel(directory)) {
      return yield* new InferenceServerError({ message: `no model at ${directory} (no onnx/model.onnx or safetensors weights); make one with \`npx episodic model init --out ${options.model}\`` })
    }
    const tokenizer: ChatTokenizer = yield* Effect.tryPromise({
      try: () => loadTokenizer(directory),
      catch: (cause) => new InferenceServerError({ message: `cannot load the tokenizer of ${directory}: ${errorMessage(cause)}` })
    })
    const actor: InferenceActor = yield* Effect.acquireRelease(
      Effect.tryPromise({
        try: () => startActor({ model: directory, maxBatchSize: options.maxBatchSize ?? defaults.maxBatchSize, ...(options.threads === undefined ? {} : { threads: options.threads }) }),
        catch: (cause) => new InferenceServerError({ message: `cannot start the inference actor for ${directory}: ${errorMessage(cause)}` })
      }),
      (actor) => Effect.promise(() => actor.close())
    )
    const vocabSize = actor.info.shape.vocabSize
    const maxModelLen = actor.info.maxPositions
    const created = Math.floor(Date.now() / 1000)
    let version = 0
    let requests = 0
    let contextTokens = 0
    let paused: { readonly done: Promise<void>; readonly resume: () => void } | undefined
    /** Sessions with a request in flight: a second request of the same session gets its own cache entry. */
    const busy = new Set<string>()

    /** One generation on the actor; the signal is the client's connection. */
    const generate = async (contextIds: Array<number>, sampling: Sampling, sessionId: string | undefined, signal: AbortSignal, maxTokensParam: string) => {
      const maxTokens = sampling.maxTokens ?? maxModelLen - contextIds.length
      if (contextIds.length + maxTokens > maxModelLen) {
        throw new BadRequest(
          `this model's context is ${maxModelLen} tokens: the prompt's ${contextIds.length} plus ${maxTokensParam} ${maxTokens} do not fit`,
          sampling.maxTokens === undefined ? "prompt" : maxTokensParam
        )
      }
      while (paused !== undefined) await paused.done
      const shared = sessionId !== undefined && !busy.has(sessionId)
      const episodeId = shared ? sessionId : `request-${randomUUID()}`
      busy.add(episodeId)
      requests++
      contextTokens += contextIds.length
      try {
        return await actor.generate(new GenerationRequest({
          episodeId,
          turn: 0,
          contextIds,
          sampling: new SamplingParams({ temperature: sampling.temperature, topK: sampling.topK, topP: sampling.topP, maxNewTokens: maxTokens, stop: sampling.stop }),
          stopTokenIds: [...new Set([...(sampling.ignoreEos ? [] : tokenizer.stopTokenIds), ...sampling.stopTokenIds])],
          seed: sampling.seed
        }), signal)
      } finally {
        busy.delete(episodeId)
        if (!shared) actor.forget(episodeId)
      }
    }

    /** The text a client sees: special tokens skipped unless asked, a matched stop string cut unless kept. */
    const textOf = (result: GenerationResult, stop: ReadonlyArray<string>, skipSpecial: boolean, keepStop: boolean) => {
      const text = tokenizer.decode(result.tokenIds, { skipSpecialTokens: skipSpecial })
      if (result.finishReason !== "stop" || keepStop) return text
      const at = Math.min(...stop.map((s) => text.indexOf(s)).filter((i) => i >= 0))
      return Number.isFinite(at) ? text.slice(0, at) : text
    }
    const stopReasonOf = (result: GenerationResult, stop: ReadonlyArray<string>) => {
      if (result.finishReason === "eos") return result.tokenIds.at(-1) ?? null
      if (result.finishReason !== "stop") return null
      const text = tokenizer.decode(result.tokenIds, { skipSpecialTokens: false })
      return stop.find((s) => text.includes(s)) ?? null
    }
    const tokenText = (id: number) => tokenizer.decode([id], { skipSpecialTokens: false })
    const usageOf = (prompt: number, completion: number) => ({ prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion })

    const sse = (events: ReadonlyArray<unknown>) =>
      HttpServerResponse.text(events.map((event) => `data: ${JSON.stringify(event)}\n\n`).join("") + "data: [DONE]\n\n", {
        contentType: "text/event-stream",
        headers: { "cache-control": "no-cache" }
      })

    const completions = async (body: Json, sessionId: string | undefined, signal: AbortSignal) => {
      let prompt = body["prompt"]
      if (Array.isArray(prompt) && prompt.length === 1 && (typeof prompt[0] === "string" || Array.isArray(prompt[0]))) prompt = prompt[0]
      const contextIds = typeof prompt === "string"
        ? (prompt === "" ? (() => { throw new BadRequest("prompt must not be empty", "prompt") })() : tokenizer.encode(prompt))
        : read.ids(prompt, "prompt", vocabSize)
      if (read.bool(body, "echo", "echo", false)) throw new BadRequest("echo is not supported by episodic serve", "echo")
      const logprobs = read.int(body, "logprobs", "logprobs", undefined, (x) => x >= 0 && x <= 1, "0 or 1 (the sampled token's logprob; no alternatives)")
      const sampling = readSampling(body, "", vocabSize, 16)
      const stream = read.bool(body, "stream", "stream", false)
      const returnIds = read.bool(body, "return_token_ids", "return_token_ids", false)
      const skip = read.bool(body, "skip_special_tokens", "skip_special_tokens", true)
      const keepStop = read.bool(body, "include_stop_str_in_output", "include_stop_str_in_output", false)
      const result = await generate(contextIds, sampling, sessionId, signal, "max_tokens")
      let offset = 0
      const choice = {
        index: 0,
        text: textOf(result, sampling.stop, skip, keepStop),
        logprobs: logprobs === undefined
          ? null
          : {
            tokens: result.tokenIds.map(tokenText),
            token_logprobs: result.logprobs,
            top_logprobs: logprobs > 0 ? result.tokenIds.map((id, i) => ({ [tokenText(id)]: result.logprobs[i] })) : null,
            text_offset: result.tokenIds.map((id) => {
              const at = offset
              offset += tokenText(id).length
              return at
            })
          },
        finish_reason: finishOf(result.finishReason),
        stop_reason: stopReasonOf(result, sampling.stop),
        ...(returnIds ? { token_ids: result.tokenIds, prompt_token_ids: contextIds } : {})
      }
      const head = { id: `cmpl-${randomUUID()}`, object: "text_completion", created: Math.floor(Date.now() / 1000), model: directory, policy_version: result.policyVersion }
      const usage = usageOf(contextIds.length, result.tokenIds.length)
      if (stream) return sse([{ ...head, choices: [choice] }, ...(body["stream_options"] !== undefined ? [{ ...head, choices: [], usage }] : [])])
      return HttpServerResponse.jsonUnsafe({ ...head, choices: [choice], usage })
    }

    const chat = async (body: Json, sessionId: string | undefined, signal: AbortSignal) => {
      const messages = readMessages(body["messages"])
      const wantsLogprobs = read.bool(body, "logprobs", "logprobs", false)
      read.int(body, "top_logprobs", "top_logprobs", 0, (x) => x >= 0 && x <= 1, "0 or 1 (the sampled token's logprob; no alternatives)")
      const sampling = readSampling(body, "", vocabSize, undefined)
      const stream = read.bool(body, "stream", "stream", false)
      const returnIds = read.bool(body, "return_token_ids", "return_token_ids", false)
      const skip = read.bool(body, "skip_special_tokens", "skip_special_tokens", true)
      const keepStop = read.bool(body, "include_stop_str_in_output", "include_stop_str_in_output", false)
      let contextIds: Array<number>
      try {
        contextIds = tokenizer.renderPrompt(messages)
      } catch (cause) {
        throw new BadRequest(`the chat template cannot render these messages: ${errorMessage(cause)}`, "messages")
      }
      const result = await generate(contextIds, sampling, sessionId, signal, "max_tokens")
      const content = textOf(result, sampling.stop, skip, keepStop)
      const logprobs = wantsLogprobs
        ? { content: result.tokenIds.map((id, i) => ({ token: tokenText(id), logprob: result.logprobs[i], bytes: [...Buffer.from(tokenText(id))], top_logprobs: [] })) }
        : null
      const head = { id: `chatcmpl-${randomUUID()}`, created: Math.floor(Date.now() / 1000), model: directory, policy_version: result.policyVersion }
      const finish = { finish_reason: finishOf(result.finishReason), stop_reason: stopReasonOf(result, sampling.stop) }
      const ids = returnIds ? { token_ids: result.tokenIds } : {}
      if (stream) {
        return sse([
          { ...head, object: "chat.completion.chunk", choices: [{ index: 0, delta: { role: "assistant", content }, logprobs, finish_reason: null, ...ids }] },
          { ...head, object: "chat.completion.chunk", choices: [{ index: 0, delta: {}, logprobs: null, ...finish }] }
        ])
      }
      return HttpServerResponse.jsonUnsafe({
        ...head,
        object: "chat.completion",
        choices: [{ index: 0, message: { role: "assistant", content }, logprobs, ...finish, ...ids }],
        usage: usageOf(contextIds.length, result.tokenIds.length),
        ...(returnIds ? { prompt_token_ids: contextIds } : {})
      })
    }

    const tokenGenerate = async (body: Json, sessionId: string | undefined, signal: AbortSignal) => {
      const contextIds = read.ids(body["token_ids"], "token_ids", vocabSize)
      const params = body["sampling_params"] ?? {}
      if (typeof params !== "object" || params === null || Array.isArray(params)) throw new BadRequest(`sampling_params must be an object, got ${describe(params)}`, "sampling_params")
      if (read.bool(body, "stream", "stream", false)) throw new BadRequest("stream is not supported on /inference/v1/generate by episodic serve", "stream")
      const sampling = readSampling(params as Json, "sampling_params.", vocabSize, 16)
      const logprobs = read.int(params as Json, "logprobs", "sampling_params.logprobs", undefined, (x) => x >= 0 && x <= 1, "0 or 1")
      const requestId = typeof body["request_id"] === "string" ? body["request_id"] : randomUUID()
      const result = await generate(contextIds, sampling, sessionId, signal, "sampling_params.max_tokens")
      return HttpServerResponse.jsonUnsafe({
        request_id: requestId,
        choices: [{
          index: 0,
          token_ids: result.tokenIds,
          logprobs: logprobs === undefined ? null : { content: result.tokenIds.map((id, i) => ({ token: `token_id:${id}`, logprob: result.logprobs[i], bytes: null, top_logprobs: [] })) },
          finish_reason: finishOf(result.finishReason)
        }],
        prompt_logprobs: null,
        kv_transfer_params: null,
        policy_version: result.policyVersion
      })
    }

    const updateWeights = async (body: Json) => {
      const weightDir = body["weight_dir"]
      if (typeof weightDir !== "string" || weightDir === "") throw new BadRequest(`weight_dir must be a directory, got ${describe(weightDir)}`, "weight_dir")
      const next = read.int(body, "version", "version", version + 1, (x) => x >= 0, "an integer >= 0")!
      const file = path.join(path.resolve(weightDir), "model.safetensors")
      if (!existsSync(file)) throw new BadRequest(`weight_dir: there is no model.safetensors in ${path.resolve(weightDir)}`, "weight_dir")
      let weights: Safetensors.Weights
      try {
        weights = Safetensors.read(file)
      } catch (cause) {
        throw new BadRequest(`weight_dir: cannot read ${file}: ${errorMessage(cause)}`, "weight_dir")
      }
      try {
        await actor.updateWeights(weights, next)
      } catch (cause) {
        throw new BadRequest(`weight_dir: the model does not take the weights in ${file}: ${errorMessage(cause)}`, "weight_dir", 422)
      }
      version = next
      return HttpServerResponse.jsonUnsafe({ status: "ok", version })
    }

    const stats = async (): Promise<ServerStats> => {
      const counters = await actor.stats()
      return {
        ...counters,
        requests,
        context_tokens: contextTokens,
        prefill_tokens: counters.prefillTokens,
        cached_tokens: Math.max(0, contextTokens - counters.prefillTokens),
        policy_version: version
      }
    }

    // --- routes ------------------------------------------------------------------------------------------

    const readJson = (request: HttpServerRequest.HttpServerRequest) =>
      Effect.gen(function*() {
        if (Number(request.headers["content-length"] ?? 0) > maxBodyBytes) {
          return yield* Effect.fail(new BadRequest(`the request body is larger than the server's limit of ${maxBodyBytes} bytes`, undefined, 413))
        }
        const text = yield* request.text.pipe(
          Effect.provideService(HttpIncomingMessage.MaxBodySize, ByteSize.bytes(maxBodyBytes)),
          Effect.mapError((error) => new BadRequest(`could not read the request body: ${error.message}`, undefined, error.message.includes("BodyTooLarge") ? 413 : 400))
        )
        let json: unknown
        try {
          json = JSON.parse(text)
        } catch (cause) {
          return yield* Effect.fail(new BadRequest(`the body is not JSON: ${errorMessage(cause)}`))
        }
        if (typeof json !== "object" || json === null || Array.isArray(json)) return yield* Effect.fail(new BadRequest("the body must be a JSON object"))
        return json as Json
      })

    const expected = options.token === undefined ? undefined : digest(`Bearer ${options.token}`)
    const authorized = (request: HttpServerRequest.HttpServerRequest) =>
      expected === undefined || timingSafeEqual(digest(request.headers["authorization"] ?? ""), expected)

    /** A JSON endpoint: its body read and checked, its failures answered as OpenAI answers them. */
    const endpoint = (handler: (body: Json, sessionId: string | undefined, signal: AbortSignal) => Promise<HttpServerResponse.HttpServerResponse>) =>
      (request: HttpServerRequest.HttpServerRequest) =>
        !authorized(request)
          ? Effect.succeed(errorResponse(401, "missing or wrong bearer token (send Authorization: Bearer <token>)"))
          : readJson(request).pipe(
            Effect.flatMap((body) =>
              Effect.tryPromise({
                try: (signal) => handler(body, request.headers["x-session-id"] || undefined, signal),
                catch: (cause) => cause
              })
            ),
            Effect.catch((cause) =>
              Effect.succeed(cause instanceof BadRequest ? errorResponse(cause.status, cause.message, cause.param) : errorResponse(500, errorMessage(cause)))
            )
          )
    const getter = (handler: () => unknown) => (request: HttpServerRequest.HttpServerRequest) =>
      Effect.sync(() => (authorized(request) ? HttpServerResponse.jsonUnsafe(handler()) : errorResponse(401, "missing or wrong bearer token (send Authorization: Bearer <token>)")))

    const app = HttpRouter.addAll([
      HttpRouter.route("GET", "/health", Effect.sync(() => HttpServerResponse.jsonUnsafe({ status: "ok" }))),
      HttpRouter.route("GET", "/v1/models", getter(() => ({
        object: "list",
        data: [{
          id: directory,
          object: "model",
          created,
          owned_by: "episodic",
          root: directory,
          parent: null,
          max_model_len: maxModelLen,
          episodic: { logprobs: "sampled", policy_version: version }
        }]
      }))),
      HttpRouter.route("GET", "/stats", (request) =>
        authorized(request) ? Effect.promise(stats).pipe(Effect.map((body) => HttpServerResponse.jsonUnsafe(body))) : Effect.succeed(errorResponse(401, "missing or wrong bearer token (send Authorization: Bearer <token>)"))
      ),
      HttpRouter.route("POST", "/v1/completions", endpoint(completions)),
      HttpRouter.route("POST", "/v1/chat/completions", endpoint(chat)),
      HttpRouter.route("POST", "/inference/v1/generate", endpoint(tokenGenerate)),
      HttpRouter.route("POST", "/tokenize", endpoint(async (body) => {
        const tokens = body["messages"] !== undefined
          ? tokenizer.renderPrompt(readMessages(body["messages"]))
          : typeof body["prompt"] === "string"
            ? tokenizer.encode(body["prompt"])
            : (() => { throw new BadRequest(`prompt must be a string (or give messages), got ${describe(body["prompt"])}`, "prompt") })()
        return HttpServerResponse.jsonUnsafe({ count: tokens.length, max_model_len: maxModelLen, tokens })
      })),
      HttpRouter.route("POST", "/detokenize", endpoint(async (body) =>
        HttpServerResponse.jsonUnsafe({ prompt: tokenizer.decode(read.ids(body["tokens"], "tokens", vocabSize), { skipSpecialTokens: false }) })
      )),
      HttpRouter.route("POST", "/pause", endpoint(async () => {
        if (paused === undefined) {
          let resume!: () => void
          const done = new Promise<void>((resolve) => (resume = resolve))
          paused = { done, resume }
        }
        return HttpServerResponse.jsonUnsafe({ status: "paused" })
      })),
      HttpRouter.route("POST", "/resume", endpoint(async () => {
        const was = paused
        paused = undefined
        was?.resume()
        return HttpServerResponse.jsonUnsafe({ status: "resumed" })
      })),
      HttpRouter.route("POST", "/update_weights", endpoint(updateWeights))
    ])

    const server = yield* NodeHttpServer.make(() => createServer(), { host, port, gracefulShutdownTimeout: "2 seconds" }).pipe(
      Effect.mapError((error) => new InferenceServerError({ message: `cannot listen on ${host}:${port}: ${errorMessage(error.cause)}` }))
    )
    const handler = yield* HttpRouter.toHttpEffect(app)
    yield* server.serve(handler)
    // Requests held by a pause are let go when the server stops.
    yield* Effect.addFinalizer(() => Effect.sync(() => paused?.resume()))
    const address = server.address
    return {
      url: HttpServer.formatAddress(address),
      port: address._tag === "UnixPathAddress" ? port : address.port,
      model: directory,
      stats
    } satisfies InferenceServer
  })

/** `serve` as a promise, for scripts and tests: the address, and `close` to stop it. */
export const start = async (options: InferenceServerOptions): Promise<InferenceServer & { close(): Promise<void> }> => {
  const scope = Effect.runSync(Scope.make())
  const exit = await Effect.runPromiseExit(serve(options).pipe(Scope.provide(scope)))
  if (Exit.isFailure(exit)) {
    await Effect.runPromise(Scope.close(scope, exit))
    throw Cause.squash(exit.cause)
  }
  return { ...exit.value, close: () => Effect.runPromise(Scope.close(scope, Exit.void)) }
}
