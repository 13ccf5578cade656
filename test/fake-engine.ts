/**
 * A faithful test double of a vLLM or SGLang server, for testing episodic's client without a GPU. It runs a
 * toy language model (seeded hash logits over a small vocabulary, changed by every weight version) and
 * reproduces what the real servers do that a client can get wrong:
 *
 * - the shapes: vLLM's `/inference/v1/generate` (optional, as older servers lack it) and `/v1/completions`
 *   with `return_token_ids`; SGLang's `/generate` with `output_ids` and `meta_info.output_token_logprobs`;
 *   `/v1/models`, `/health`, `/get_model_info`;
 * - the default-limit traps: a missing `max_tokens` is 16 (SGLang's `max_new_tokens`: 128), a missing
 *   temperature / top_p comes from the model's "generation config" (0.7 / 0.8), stop tokens are trimmed
 *   from SGLang's `output_ids` without `no_stop_trim`, stop strings from the text without
 *   `include_stop_str_in_output`;
 * - stop tokens (the request's and the model's eos) and stop strings;
 * - logprobs as the engines return them: vLLM's raw (temperature 1) model distribution, SGLang's
 *   temperature-scaled one, whatever the sampling temperature;
 * - weight sync: prime-rl's `/pause`, `/update_weights {weight_dir}`, `/resume`; SGLang's
 *   `/pause_generation`, `/update_weights_from_disk {model_path, weight_version}`, `/continue_generation`;
 * - faults on demand: connection resets, 5xx, hangs, a healthy-looking server that never answers, a failing
 *   `/health`, partial output with finish reason `abort`, and a server that is gone.
 */
import { existsSync } from "node:fs"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import * as path from "node:path"
import { mulberry32 } from "../src/Seed.ts"

export type Fault =
  | "none"
  /** The connection is destroyed before any reply. */
  | "reset"
  /** HTTP 500. */
  | "5xx"
  /** Generation never answers, and neither does /health. */
  | "hang"
  /** /health says 200 but generation never answers (vLLM 7633's dead engine). */
  | "silent"
  /** /health fails with 503; generation still works. */
  | "unhealthy"
  /** Generation stops after 2 tokens with finish reason `abort`, returning what it had. */
  | "abort"

export interface FakeEngineOptions {
  readonly kind: "vllm" | "sglang"
  /** Token ids the toy model emits. */
  readonly vocab: ReadonlyArray<number>
  /** The model's eos (its generation config's): always a stop token. */
  readonly eosTokenId: number
  /** Text of token ids, for stop strings and the reply's text. */
  readonly decode: (ids: ReadonlyArray<number>, skipSpecialTokens: boolean) => string
  /** Whether vLLM's token endpoint exists (vLLM before it has only /v1/completions). */
  readonly tokenEndpoint?: boolean
  readonly modelName?: string
}

export interface LoggedRequest {
  readonly route: string
  readonly sessionId: string | undefined
  readonly requestId: string | undefined
  contextIds: ReadonlyArray<number>
  readonly body: Record<string, any>
  /** What was sent back, when something was. */
  reply?: { readonly tokenIds: ReadonlyArray<number>; readonly logprobs: ReadonlyArray<number>; readonly version: number }
  /** The client closed the connection before the reply. */
  clientClosed: boolean
}

export interface Generated {
  readonly tokenIds: Array<number>
  readonly rawLogprobs: Array<number>
  readonly scaledLogprobs: Array<number>
  readonly finish: "stop" | "length" | "abort"
  /** The stop token id or string that ended it. */
  readonly matched: number | string | undefined
}

const generationConfig = { temperature: 0.7, top_p: 0.8 }

/** The toy model: logits over `vocab` for the next token after `context`, under weights `version`. */
const logitsOf = (vocab: ReadonlyArray<number>, context: ReadonlyArray<number>, version: number): Float64Array => {
  let h = 2166136261 ^ version * 16777619
  for (const id of context.slice(-3)) h = Math.imul(h ^ id, 16777619) >>> 0
  return Float64Array.from(vocab, (id) => {
    const x = Math.imul(h ^ Math.imul(id, 2654435761), 1597334677) >>> 0
    return (x / 2 ** 32) * 6
  })
}

const logSoftmax = (logits: Float64Array, t: number): Float64Array => {
  const scaled = logits.map((x) => x / t)
  const max = Math.max(...scaled)
  const log = Math.log(scaled.reduce((sum, x) => sum + Math.exp(x - max), 0)) + max
  return scaled.map((x) => x - log)
}

export interface SamplingSpec {
  readonly maxTokens: number
  readonly temperature: number
  readonly topP: number
  readonly seed: number | undefined
  readonly stopTokenIds: ReadonlyArray<number>
  readonly stop: ReadonlyArray<string>
}

export const makeFakeEngine = async (options: FakeEngineOptions) => {
  let version = 0
  let fault: Fault = "none"
  /** Generation requests the fault still applies to. */
  let faultsLeft = Infinity
  let failNextUpdate = false
  let paused = false
  const log: Array<LoggedRequest> = []
  const controls: Array<{ readonly route: string; readonly body: Record<string, any> }> = []
  const hung = new Set<ServerResponse>()

  /** What the toy model generates: deterministic given the context, the sampling and the weights. */
  const generate = (context: ReadonlyArray<number>, spec: SamplingSpec, weights = version): Generated => {
    const random = mulberry32(spec.seed ?? Math.floor(Math.random() * 2 ** 31))
    const tokenIds: Array<number> = []
    const rawLogprobs: Array<number> = []
    const scaledLogprobs: Array<number> = []
    const stops = new Set([...spec.stopTokenIds, options.eosTokenId])
    while (tokenIds.length < spec.maxTokens) {
      const logits = logitsOf(options.vocab, [...context, ...tokenIds], weights)
      const raw = logSoftmax(logits, 1)
      let index: number
      let scaled: Float64Array
      if (spec.temperature === 0) {
        index = raw.indexOf(Math.max(...raw))
        scaled = raw
      } else {
        scaled = logSoftmax(logits, spec.temperature)
        // Nucleus over the scaled distribution, sampled by inverse CDF.
        const order = [...scaled.keys()].sort((a, b) => scaled[b]! - scaled[a]! || a - b)
        const kept: Array<number> = []
        let mass = 0
        for (const i of order) {
          kept.push(i)
          mass += Math.exp(scaled[i]!)
          if (mass >= spec.topP) break
        }
        let u = random() * mass
        index = kept.at(-1)!
        for (const i of kept) {
          if (u < Math.exp(scaled[i]!)) {
            index = i
            break
          }
          u -= Math.exp(scaled[i]!)
        }
      }
      const id = options.vocab[index]!
      tokenIds.push(id)
      rawLogprobs.push(raw[index]!)
      scaledLogprobs.push(scaled[index]!)
      if (stops.has(id)) return { tokenIds, rawLogprobs, scaledLogprobs, finish: "stop", matched: id }
      const text = options.decode(tokenIds, false)
      const hit = spec.stop.find((s) => text.includes(s))
      if (hit !== undefined) return { tokenIds, rawLogprobs, scaledLogprobs, finish: "stop", matched: hit }
    }
    return { tokenIds, rawLogprobs, scaledLogprobs, finish: "length", matched: undefined }
  }

  const send = (response: ServerResponse, status: number, body: unknown) => {
    response.writeHead(status, { "content-type": "application/json" })
    response.end(JSON.stringify(body))
  }

  const readBody = (request: IncomingMessage) =>
    new Promise<Record<string, any>>((resolve) => {
      let text = ""
      request.on("data", (chunk) => (text += chunk))
      request.on("end", () => {
        try {
          resolve(text === "" ? {} : JSON.parse(text))
        } catch {
          resolve({})
        }
      })
    })

  /** The text the server would return: special tokens skipped by default, the stop string cut unless kept. */
  const textOf = (generated: Generated, skipSpecial: boolean, keepStop: boolean) => {
    const text = options.decode(generated.tokenIds, skipSpecial)
    if (typeof generated.matched === "string" && !keepStop) return text.slice(0, text.indexOf(generated.matched))
    return text
  }

  const stopList = (value: unknown): Array<string> => (typeof value === "string" ? [value] : Array.isArray(value) ? value : [])

  const handle = async (request: IncomingMessage, response: ServerResponse) => {
    const route = (request.url ?? "/").split("?")[0]!
    const body = request.method === "POST" ? await readBody(request) : {}
    const isGeneration = ["/inference/v1/generate", "/v1/completions", "/generate"].includes(route)
    if (isGeneration && fault !== "none" && fault !== "unhealthy" && faultsLeft-- <= 0) fault = "none"
    if (route === "/health" && (fault === "hang" || fault === "unhealthy")) {
      if (fault === "hang") return void hung.add(response)
      return send(response, 503, { error: "unhealthy" })
    }
    if (isGeneration || route === "/v1/models") {
      if (fault === "reset") return void request.socket.destroy()
      if (fault === "5xx") return send(response, 500, { error: { message: "internal engine error", type: "InternalServerError", code: 500 } })
      if ((fault === "hang" || fault === "silent") && isGeneration) {
        const entry: LoggedRequest = { route, sessionId: undefined, requestId: undefined, contextIds: [], body, clientClosed: false }
        log.push(entry)
        response.on("close", () => (entry.clientClosed = true))
        return void hung.add(response)
      }
    }
    switch (`${request.method} ${route}`) {
      case "GET /health":
        return send(response, 200, {})
      case "GET /v1/models":
        return send(response, 200, {
          object: "list",
          data: [{ id: options.modelName ?? "toy-model", object: "model", created: 0, owned_by: options.kind, root: options.modelName ?? "toy-model", max_model_len: 4096 }]
        })
      case "GET /get_model_info":
        return send(response, 200, { model_path: options.modelName ?? "toy-model", is_generation: true })
      case "POST /pause":
      case "POST /resume":
      case "POST /pause_generation":
      case "POST /continue_generation":
        controls.push({ route, body })
        paused = route === "/pause" || route === "/pause_generation"
        return send(response, 200, { status: "ok" })
      case "POST /update_weights":
      case "POST /update_weights_from_disk": {
        controls.push({ route, body })
        if ((route === "/update_weights") !== (options.kind === "vllm")) return send(response, 404, { detail: "Not Found" })
        if (failNextUpdate) {
          failNextUpdate = false
          return send(response, 500, { error: { message: "out of memory while loading the weights" } })
        }
        const directory = String(route === "/update_weights" ? body["weight_dir"] : body["model_path"])
        if (!existsSync(path.join(directory, "model.safetensors"))) {
          return send(response, route === "/update_weights" ? 400 : 200, route === "/update_weights"
            ? { error: { message: `no model.safetensors in ${directory}` } }
            : { success: false, message: `no model.safetensors in ${directory}` })
        }
        version = route === "/update_weights" ? version + 1 : Number(body["weight_version"] ?? version + 1)
        return send(response, 200, route === "/update_weights" ? { status: "ok" } : { success: true, message: "Succeeded to update model weights." })
      }
    }
    const entry: LoggedRequest = {
      route,
      sessionId: request.headers["x-session-id"] as string | undefined,
      requestId: body["request_id"] ?? body["rid"],
      contextIds: [],
      body,
      clientClosed: false
    }
    response.on("close", () => {
      if (!response.writableFinished) entry.clientClosed = true
    })
    if (paused) return send(response, 503, { error: { message: "paused for a weight update" } })
    if (options.kind === "sglang" && route === "/generate") {
      const sp = body["sampling_params"] ?? {}
      const context = body["input_ids"]
      if (!Array.isArray(context)) return send(response, 400, { error: { message: "input_ids is required" } })
      entry.contextIds = context
      log.push(entry)
      const generated = generate(context, {
        maxTokens: sp["max_new_tokens"] ?? 128,
        temperature: sp["temperature"] ?? generationConfig.temperature,
        topP: sp["top_p"] ?? generationConfig.top_p,
        seed: sp["sampling_seed"],
        stopTokenIds: sp["stop_token_ids"] ?? [],
        stop: stopList(sp["stop"])
      })
      const cut = fault === "abort" ? Math.min(2, generated.tokenIds.length) : generated.tokenIds.length
      // Without no_stop_trim the matched stop token leaves output_ids (and the stop string the text).
      const trim = sp["no_stop_trim"] !== true && typeof generated.matched === "number" ? 1 : 0
      const ids = generated.tokenIds.slice(0, cut - (fault === "abort" ? 0 : trim))
      const logprobs = generated.scaledLogprobs.slice(0, ids.length)
      entry.reply = { tokenIds: ids, logprobs, version }
      return send(response, 200, {
        text: textOf({ ...generated, tokenIds: ids }, sp["skip_special_tokens"] ?? true, sp["no_stop_trim"] === true),
        output_ids: ids,
        meta_info: {
          id: entry.requestId,
          finish_reason: fault === "abort" ? { type: "abort", message: "Abort before prefill" } : generated.finish === "length"
            ? { type: "length", length: ids.length }
            : { type: "stop", matched: generated.matched },
          prompt_tokens: context.length,
          completion_tokens: ids.length,
          cached_tokens: 0,
          output_token_logprobs: body["return_logprob"] === true ? ids.map((id, i) => [logprobs[i], id, null]) : undefined,
          weight_version: String(version)
        }
      })
    }
    if (options.kind === "vllm" && (route === "/v1/completions" || (route === "/inference/v1/generate" && options.tokenEndpoint !== false))) {
      const tokenRoute = route === "/inference/v1/generate"
      const sp = tokenRoute ? body["sampling_params"] ?? {} : body
      const context = tokenRoute ? body["token_ids"] : body["prompt"]
      if (!Array.isArray(context) || !context.every((id) => Number.isInteger(id))) {
        return send(response, 400, { error: { message: `${tokenRoute ? "token_ids" : "prompt"} must be token ids here`, type: "BadRequestError", code: 400 } })
      }
      entry.contextIds = context
      log.push(entry)
      const generated = generate(context, {
        maxTokens: sp["max_tokens"] ?? 16,
        temperature: sp["temperature"] ?? generationConfig.temperature,
        topP: sp["top_p"] ?? generationConfig.top_p,
        seed: sp["seed"],
        stopTokenIds: sp["stop_token_ids"] ?? [],
        stop: stopList(sp["stop"])
      })
      const cut = fault === "abort" ? Math.min(2, generated.tokenIds.length) : generated.tokenIds.length
      const ids = generated.tokenIds.slice(0, cut)
      const logprobs = generated.rawLogprobs.slice(0, cut)
      const wantsLogprobs = tokenRoute ? sp["logprobs"] !== undefined && sp["logprobs"] !== null : typeof body["logprobs"] === "number"
      entry.reply = { tokenIds: ids, logprobs, version }
      const finishReason = fault === "abort" ? "abort" : generated.finish
      const text = textOf({ ...generated, tokenIds: ids }, sp["skip_special_tokens"] ?? true, sp["include_stop_str_in_output"] === true)
      if (tokenRoute) {
        return send(response, 200, {
          request_id: entry.requestId,
          choices: [{
            index: 0,
            token_ids: ids,
            logprobs: wantsLogprobs ? { content: ids.map((id, i) => ({ token: `token_id:${id}`, logprob: logprobs[i], bytes: null, top_logprobs: [] })) } : null,
            finish_reason: finishReason
          }]
        })
      }
      return send(response, 200, {
        id: `cmpl-${entry.requestId}`,
        object: "text_completion",
        created: 0,
        model: options.modelName ?? "toy-model",
        choices: [{
          index: 0,
          text,
          logprobs: wantsLogprobs ? { tokens: ids.map((id) => options.decode([id], false)), token_logprobs: logprobs, top_logprobs: null, text_offset: [] } : null,
          finish_reason: finishReason,
          stop_reason: generated.matched ?? null,
          ...(body["return_token_ids"] === true ? { token_ids: ids, prompt_token_ids: context } : {})
        }],
        usage: { prompt_tokens: context.length, completion_tokens: ids.length, total_tokens: context.length + ids.length }
      })
    }
    return send(response, 404, { detail: "Not Found" })
  }

  const server: Server = createServer((request, response) => {
    handle(request, response).catch((cause) => send(response, 500, { error: { message: String(cause) } }))
  })
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const port = (server.address() as AddressInfo).port
  const url = `http://127.0.0.1:${port}`

  return {
    url,
    /** The URL as an experiment names it: `sglang+http://...` for SGLang. */
    spec: options.kind === "sglang" ? `sglang+${url}` : url,
    log,
    controls,
    generate,
    get version() {
      return version
    },
    /** Starts a fault, for the next `count` generation requests (default: until told otherwise). */
    setFault: (next: Fault, count = Infinity) => {
      fault = next
      faultsLeft = count
      if (next === "none") {
        for (const response of hung) response.destroy()
        hung.clear()
      }
    },
    failNextUpdate: () => {
      failNextUpdate = true
    },
    close: async () => {
      for (const response of hung) response.destroy()
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }
}

export type FakeEngine = Awaited<ReturnType<typeof makeFakeEngine>>
