/**
 * Generation on inference servers: vLLM, SGLang or `episodic serve` replicas, driven token-in/token-out over
 * HTTP, as the engine's `Inference` service.
 *
 *   const pool = await RemoteInference.connect({ servers: ["http://10.0.0.1:8000", "sglang+http://10.0.0.2:30000"] })
 *   const result = await pool.generate(request)             // a GenerationRequest -> GenerationResult
 *   await pool.updateWeights(weights, 3)                    // model directory on disk, then every server loads it
 *
 * Routing: an episode's first turn goes to the least-loaded server that is up, its later turns to the same
 * one, so the server's prefix cache holds its context. A server takes `maxInFlight` requests at once; more
 * wait for a slot. A server that fails (refused or dropped connections, 5xx, no reply in time, a failing
 * `/health`) is taken out for `cooldownMs` after `failureThreshold` failures (at once for `/health`); its
 * episodes go on elsewhere and lose only their cache. Every request carries `X-Session-ID: <episode>` so a
 * router in front (vllm-router, sglang-router with consistent hashing) keeps the same affinity, and each
 * attempt has a new request id. An aborted episode aborts its HTTP request.
 *
 * Weight sync never goes through a router: the weights are written as a model directory (safetensors),
 * then each server is drained of this client's requests, paused, told to load the directory, and resumed
 * in a `finally`; its version is then the trainer's. A server that was out during a sync is synced before
 * it takes requests again.
 */
import { Effect, Layer } from "effect"
import { copyFileSync, existsSync, mkdirSync, readdirSync, rmSync } from "node:fs"
import * as path from "node:path"
import { errorMessage } from "../errorMessage.ts"
import { GenerationResult, InferenceError, type GenerationRequest } from "../Generation.ts"
import { Inference } from "../Inference.ts"
import * as Safetensors from "../model/safetensors.ts"
import {
  defaultLogprobKind,
  type LogprobKind,
  parseServer,
  readSglangGenerate,
  readVllmCompletions,
  readVllmGenerate,
  ReplyError,
  type ServerKind,
  type ServerReply,
  sglangGenerateBody,
  vllmCompletionsBody,
  vllmGenerateBody
} from "./protocol.ts"
import { remoteDefaults, type RemoteInferenceSettings } from "./settings.ts"

export type { LogprobKind, ServerKind } from "./protocol.ts"

export interface RemoteInferenceOptions extends Partial<RemoteInferenceSettings> {
  /** Server URLs: `http://host:port` (vLLM-compatible, episodic serve), `sglang+http://host:port`. */
  readonly servers: ReadonlyArray<string>
  /** A local model directory whose config files go beside synced weights (the tokenizer's directory). */
  readonly modelDirectory?: string | undefined
}

/** What a server is and has done, for summaries and tests. */
export interface ServerStats {
  readonly url: string
  readonly kind: ServerKind | "episodic"
  readonly up: boolean
  /** Why it is out, when it is. */
  readonly reason: string | undefined
  readonly version: number
  readonly inFlight: number
  readonly waiting: number
  readonly requests: number
  readonly failures: number
  /** Episodes it took over from a server that was out. */
  readonly movedIn: number
  /** Episodes now kept on it. */
  readonly sessions: number
  readonly endpoint: string
}

export interface RemotePool {
  readonly logprobKind: LogprobKind
  /** Requests in flight on one server at most. */
  readonly maxInFlight: number
  /** A local model directory the servers name (vLLM's model path, episodic serve's directory), if one exists here. */
  readonly tokenizerHint: string | undefined
  /** The local model directory whose config files go beside synced weights. */
  modelDirectory: string | undefined
  /** The first server's own tokenization of `text` (vLLM's `/tokenize`), when it has one. */
  tokenize(text: string): Promise<{ readonly server: string; readonly ids: ReadonlyArray<number> } | undefined>
  generate(request: GenerationRequest, signal?: AbortSignal): Promise<GenerationResult>
  /** The episode has ended: it is no longer kept on its server. */
  release(episodeId: string): void
  /** Writes the weights as a model directory and has every server load them as `version`. */
  updateWeights(weights: Safetensors.Weights, version: number): Promise<void>
  stats(): ReadonlyArray<ServerStats>
  close(): void
}

/** A failure of one attempt on one server: whether the server is to blame decides the breaker. */
class AttemptError extends Error {
  readonly serverFault: boolean
  readonly retry: boolean
  constructor(message: string, options: { readonly serverFault: boolean; readonly retry: boolean }) {
    super(message)
    this.serverFault = options.serverFault
    this.retry = options.retry
  }
}

const settingsOf = (options: RemoteInferenceOptions): RemoteInferenceSettings => ({
  ...remoteDefaults,
  ...Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined)),
  token: options.token ?? (process.env["EPISODIC_INFERENCE_TOKEN"] || undefined)
}) as RemoteInferenceSettings

class Replica {
  readonly url: string
  kind: ServerKind | "episodic"
  model: string | undefined
  endpoint: "generate" | "completions" | "native"
  logprobKind: LogprobKind | undefined
  version = 0
  inFlight = 0
  readonly waiters: Array<() => void> = []
  drained: Array<() => void> = []
  /** While set, a weight sync holds the server: new requests wait for it. */
  gate: Promise<void> | undefined
  down = false
  reason: string | undefined
  downUntil = 0
  consecutiveFailures = 0
  requests = 0
  failures = 0
  movedIn = 0
  sessions = 0
  checking = false

  constructor(spec: string, endpoint: RemoteInferenceSettings["endpoint"]) {
    const { url, kind } = parseServer(spec)
    this.url = url
    this.kind = kind
    this.endpoint = kind === "sglang" ? "native" : endpoint === "completions" ? "completions" : "generate"
  }

  get load() {
    return this.inFlight + this.waiters.length
  }
}

const sleep = (ms: number, signal?: AbortSignal) =>
  new Promise<void>((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason)
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort)
      resolve()
    }, ms)
    const onAbort = () => {
      clearTimeout(timer)
      reject(signal!.reason)
    }
    signal?.addEventListener("abort", onAbort, { once: true })
  })

const snippet = (text: string) => (text.length > 300 ? `${text.slice(0, 300)}...` : text)

/** The server's own words for an error reply: OpenAI's `error.message`, FastAPI's `detail`, SGLang's `message`. */
const detailOf = (text: string): string => {
  try {
    const body = JSON.parse(text) as Record<string, any>
    const detail = body?.["error"]?.["message"] ?? body?.["message"] ?? body?.["detail"]
    if (typeof detail === "string") return detail
    if (detail !== undefined) return JSON.stringify(detail)
  } catch {
    // not JSON: the text itself
  }
  return snippet(text)
}

/** Connects to the servers: asks each what it is (`/v1/models`), and starts their health checks. */
export const connect = async (options: RemoteInferenceOptions): Promise<RemotePool> => {
  const settings = settingsOf(options)
  if (options.servers.length === 0) throw new Error("no inference servers given")
  const replicas = options.servers.map((spec) => new Replica(spec, settings.endpoint))
  const unique = new Set(replicas.map((r) => r.url))
  if (unique.size !== replicas.length) throw new Error(`the same server is listed twice: ${options.servers.join(", ")}`)
  const sessions = new Map<string, Replica>()
  let targetVersion = 0
  let latestWeights: string | undefined
  let closed = false

  const headers = (sessionId: string | undefined): Record<string, string> => ({
    "content-type": "application/json",
    ...(settings.token === undefined ? {} : { authorization: `Bearer ${settings.token}` }),
    ...(sessionId === undefined ? {} : { "x-session-id": sessionId })
  })

  /** One HTTP call; its failure says whether the server is to blame and whether another attempt may help. */
  const request = async (replica: Replica, method: "GET" | "POST", route: string, body: unknown, signal: AbortSignal, timeoutMs: number, sessionId?: string) => {
    const timeout = AbortSignal.timeout(timeoutMs)
    const where = `${method} ${replica.url}${route}`
    let response: Response
    let text: string
    try {
      response = await fetch(`${replica.url}${route}`, {
        method,
        headers: headers(sessionId),
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.any([signal, timeout])
      })
      text = await response.text()
    } catch (cause) {
      if (signal.aborted) throw cause
      if (timeout.aborted) throw new AttemptError(`${where}: no reply within ${timeoutMs} ms`, { serverFault: true, retry: true })
      const code = (cause as { cause?: { code?: string } })?.cause?.code
      throw new AttemptError(`${where}: ${code ?? errorMessage(cause)}`, { serverFault: true, retry: true })
    }
    if (!response.ok) {
      const message = `${where}: HTTP ${response.status}: ${detailOf(text)}`
      if (response.status >= 500) throw new AttemptError(message, { serverFault: true, retry: true })
      throw Object.assign(new AttemptError(message, { serverFault: false, retry: false }), { status: response.status })
    }
    try {
      return text === "" ? {} : JSON.parse(text) as unknown
    } catch {
      throw new AttemptError(`${where}: the reply is not JSON: ${snippet(text)}`, { serverFault: true, retry: false })
    }
  }

  const takeOut = (replica: Replica, reason: string) => {
    if (!replica.down) replica.reason = reason
    replica.down = true
    replica.downUntil = Date.now() + settings.cooldownMs
  }

  const failed = (replica: Replica, reason: string) => {
    replica.failures++
    if (++replica.consecutiveFailures >= settings.failureThreshold) takeOut(replica, reason)
  }

  /** What the server is: its model name, and whether it is episodic serve (which says its logprob kind). */
  const probe = async (replica: Replica) => {
    if (replica.kind === "sglang") {
      const info = await request(replica, "GET", "/get_model_info", undefined, AbortSignal.timeout(30_000), 30_000).catch(() => undefined)
      const modelPath = (info as { model_path?: unknown } | undefined)?.model_path
      replica.model = typeof modelPath === "string" ? modelPath : undefined
      return
    }
    const models = await request(replica, "GET", "/v1/models", undefined, AbortSignal.timeout(30_000), 30_000) as {
      data?: Array<{ id?: unknown; root?: unknown; owned_by?: unknown; episodic?: { logprobs?: unknown; policy_version?: unknown } }>
    }
    const first = models.data?.[0]
    if (first === undefined || typeof first.id !== "string") throw new Error(`GET ${replica.url}/v1/models: no model in \`data\``)
    replica.model = first.id
    if (first.owned_by === "episodic") {
      replica.kind = "episodic"
      if (first.episodic?.logprobs === "sampled") replica.logprobKind = "sampled"
      if (typeof first.episodic?.policy_version === "number") replica.version = first.episodic.policy_version
    }
    if (typeof first.root === "string" && first.root !== first.id) modelPaths.push(first.root)
    modelPaths.push(first.id)
  }
  const modelPaths: Array<string> = []

  const probed = await Promise.allSettled(replicas.map((replica) => probe(replica)))
  probed.forEach((outcome, i) => {
    if (outcome.status === "rejected") takeOut(replicas[i]!, `not reachable at start: ${errorMessage(outcome.reason)}`)
  })
  if (replicas.every((r) => r.down)) {
    throw new Error(`no inference server answers: ${replicas.map((r) => `${r.url} (${r.reason})`).join("; ")}`)
  }
  const kinds = new Set(replicas.map((r) => settings.logprobs !== "auto" ? settings.logprobs : r.logprobKind ?? defaultLogprobKind(r.kind === "episodic" ? "vllm" : r.kind)))
  if (kinds.size > 1) {
    throw new Error(
      `the servers return different kinds of logprobs (${replicas.map((r) => `${r.url}: ${r.logprobKind ?? defaultLogprobKind(r.kind === "episodic" ? "vllm" : r.kind)}`).join(", ")}); ` +
        "a run's logprobs must be of one kind: use servers of one kind, or set inference.remote.logprobs"
    )
  }
  const logprobKind = [...kinds][0]!
  const tokenizerHint = modelPaths.find((candidate) => existsSync(path.join(candidate, "tokenizer.json")))

  // --- slots and the sync gate -----------------------------------------------------------------------------

  const acquire = async (replica: Replica, signal: AbortSignal) => {
    while (replica.gate !== undefined) await Promise.race([replica.gate, sleep(settings.syncTimeoutMs, signal)])
    if (replica.inFlight < settings.maxInFlight) {
      replica.inFlight++
      return
    }
    await new Promise<void>((resolve, reject) => {
      const grant = () => {
        signal.removeEventListener("abort", onAbort)
        resolve()
      }
      const onAbort = () => {
        const at = replica.waiters.indexOf(grant)
        if (at >= 0) replica.waiters.splice(at, 1)
        reject(signal.reason)
      }
      replica.waiters.push(grant)
      signal.addEventListener("abort", onAbort, { once: true })
    })
  }

  const releaseSlot = (replica: Replica) => {
    const next = replica.waiters.shift()
    if (next !== undefined) return next()
    replica.inFlight--
    if (replica.inFlight === 0) for (const done of replica.drained.splice(0)) done()
  }

  // --- routing -----------------------------------------------------------------------------------------------

  /** The episode's server: the one it has been on while that one is up (and not `avoid`), else the least loaded. */
  const pick = (episodeId: string, avoid?: Replica): Replica | undefined => {
    const sticky = sessions.get(episodeId)
    if (sticky !== undefined && !sticky.down && sticky !== avoid) return sticky
    const up = replicas.filter((r) => !r.down)
    const candidates = up.some((r) => r !== avoid) ? up.filter((r) => r !== avoid) : up
    if (candidates.length === 0) return undefined
    const chosen = candidates.reduce((best, r) => (r.load < best.load || (r.load === best.load && r.sessions < best.sessions) ? r : best))
    if (sticky !== undefined) {
      sticky.sessions--
      if (chosen !== sticky) chosen.movedIn++
    }
    chosen.sessions++
    sessions.set(episodeId, chosen)
    return chosen
  }

  const attempt = async (replica: Replica, request_: GenerationRequest, requestId: string, signal: AbortSignal): Promise<ServerReply> => {
    const where = `${replica.url} (${replica.kind})`
    const timeoutMs = settings.timeoutMs
    if (replica.endpoint === "native") {
      const body = await request(replica, "POST", "/generate", sglangGenerateBody(request_, requestId), signal, timeoutMs, request_.episodeId)
      return readSglangGenerate(`${where} /generate`, body, request_)
    }
    if (replica.endpoint === "generate") {
      try {
        const body = await request(replica, "POST", "/inference/v1/generate", vllmGenerateBody(request_, requestId, replica.model), signal, timeoutMs, request_.episodeId)
        return readVllmGenerate(`${where} /inference/v1/generate`, body, request_)
      } catch (cause) {
        // An older vLLM has no token endpoint: its completions endpoint takes token ids too.
        const status = (cause as { status?: number }).status
        if (settings.endpoint !== "auto" || (status !== 404 && status !== 405)) throw cause
        replica.endpoint = "completions"
      }
    }
    const body = await request(replica, "POST", "/v1/completions", vllmCompletionsBody(request_, requestId, replica.model), signal, timeoutMs, request_.episodeId)
    return readVllmCompletions(`${where} /v1/completions`, body, request_)
  }

  const generate = async (request_: GenerationRequest, signal: AbortSignal = new AbortController().signal): Promise<GenerationResult> => {
    const problems: Array<string> = []
    let avoid: Replica | undefined
    for (let attemptIndex = 0; attemptIndex <= settings.retries; attemptIndex++) {
      if (closed) throw new Error("the inference servers' client is closed")
      const replica = pick(request_.episodeId, avoid)
      if (replica === undefined) {
        const reasons = replicas.map((r) => `${r.url}: ${r.reason ?? "out"}`).join("; ")
        throw new Error(`no inference server is up (${reasons})${problems.length > 0 ? `; this turn: ${problems.join("; ")}` : ""}`)
      }
      await acquire(replica, signal)
      const version = replica.version
      replica.requests++
      const requestId = `${request_.episodeId}-t${request_.turn}-a${attemptIndex}-${Math.random().toString(36).slice(2, 10)}`
      try {
        const reply = await attempt(replica, request_, requestId, signal)
        replica.consecutiveFailures = 0
        if (reply.finishReason === "aborted") {
          // The server dropped the request (an abort on its side): the turn is done again from its start.
          problems.push(`${replica.url}: the server aborted the request after ${reply.tokenIds.length} tokens`)
          continue
        }
        return new GenerationResult({ tokenIds: reply.tokenIds, logprobs: reply.logprobs, finishReason: reply.finishReason, policyVersion: reply.version ?? version })
      } catch (cause) {
        if (signal.aborted) throw cause
        if (cause instanceof ReplyError) throw cause
        if (!(cause instanceof AttemptError)) throw cause
        problems.push(cause.message)
        if (!cause.retry) throw new Error(problems.join("; "))
        if (cause.serverFault) {
          failed(replica, cause.message)
          // The next attempt goes elsewhere when there is somewhere else to go.
          avoid = replica
        }
      } finally {
        releaseSlot(replica)
      }
    }
    throw new Error(`generation failed after ${settings.retries + 1} attempts: ${problems.join("; ")}`)
  }

  // --- weight sync -------------------------------------------------------------------------------------------

  const control = (replica: Replica, route: string, body: unknown, optional: boolean) =>
    request(replica, "POST", route, body, AbortSignal.timeout(settings.syncTimeoutMs), settings.syncTimeoutMs).catch((cause) => {
      const status = (cause as { status?: number }).status
      if (optional && (status === 404 || status === 405)) return undefined
      throw cause
    })

  const syncOne = async (replica: Replica, directory: string, version: number) => {
    let open!: () => void
    replica.gate = new Promise<void>((resolve) => (open = resolve))
    try {
      // This client's requests on the server finish first, so each of them has exactly one version.
      if (replica.inFlight > 0) await new Promise<void>((resolve) => replica.drained.push(resolve))
      if (replica.kind === "sglang") {
        await control(replica, "/pause_generation", {}, true)
        try {
          const reply = await control(replica, "/update_weights_from_disk", { model_path: directory, weight_version: String(version), flush_cache: true }, false) as
            | { success?: unknown; message?: unknown }
            | undefined
          if (reply?.success === false) throw new Error(`POST ${replica.url}/update_weights_from_disk: ${String(reply.message)}`)
        } finally {
          await control(replica, "/continue_generation", {}, true)
        }
      } else {
        await control(replica, "/pause", {}, true)
        try {
          await control(replica, "/update_weights", { weight_dir: directory, version }, false)
        } finally {
          await control(replica, "/resume", {}, true)
        }
      }
      replica.version = version
    } finally {
      replica.gate = undefined
      open()
    }
  }

  const weightsRoot = () => {
    if (settings.weightsDirectory === undefined) throw new Error("weight sync to inference servers needs inference.remote.weightsDirectory")
    return path.resolve(settings.weightsDirectory)
  }

  const updateWeights = async (weights: Safetensors.Weights, version: number) => {
    const directory = path.join(weightsRoot(), `v${version}`)
    mkdirSync(directory, { recursive: true })
    Safetensors.write(path.join(directory, "model.safetensors"), weights)
    // The servers load a model directory: the config files come from the local model's.
    if (pool.modelDirectory !== undefined) {
      for (const file of ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"]) {
        const source = path.join(pool.modelDirectory, file)
        if (existsSync(source)) copyFileSync(source, path.join(directory, file))
      }
    }
    targetVersion = version
    latestWeights = directory
    const outcomes = await Promise.allSettled(replicas.filter((r) => !r.down).map(async (replica) => {
      try {
        await syncOne(replica, directory, version)
      } catch (cause) {
        takeOut(replica, `weight sync to version ${version} failed: ${errorMessage(cause)}`)
        throw cause
      }
    }))
    // Older weight directories go once every server has moved past them.
    for (const entry of readdirSync(weightsRoot())) {
      const old = /^v(\d+)$/.exec(entry)
      if (old !== null && Number(old[1]) < version && replicas.every((r) => r.version > Number(old[1]) || r.down)) {
        rmSync(path.join(weightsRoot(), entry), { recursive: true, force: true })
      }
    }
    if (!replicas.some((r) => !r.down && r.version === version)) {
      const reasons = outcomes.flatMap((outcome) => (outcome.status === "rejected" ? [errorMessage(outcome.reason)] : []))
      throw new Error(`no inference server took version ${version}: ${reasons.join("; ") || "every server is out"}`)
    }
  }

  // --- health ------------------------------------------------------------------------------------------------

  const check = async (replica: Replica) => {
    if (replica.checking || closed) return
    replica.checking = true
    try {
      const timeoutMs = Math.max(1_000, Math.min(settings.healthIntervalMs, 10_000))
      await request(replica, "GET", "/health", undefined, AbortSignal.timeout(timeoutMs + 1_000), timeoutMs)
      if (replica.down && Date.now() >= replica.downUntil) {
        if (replica.model === undefined && replica.kind !== "sglang") await probe(replica)
        // Weights it missed while out come before any request.
        if (latestWeights !== undefined && replica.version !== targetVersion) await syncOne(replica, latestWeights, targetVersion)
        replica.down = false
        replica.reason = undefined
        // Back on trial: one more failure takes it out again.
        replica.consecutiveFailures = settings.failureThreshold - 1
      }
    } catch (cause) {
      replica.failures++
      takeOut(replica, `health check failed: ${errorMessage(cause)}`)
    } finally {
      replica.checking = false
    }
  }
  const healthTimer = setInterval(() => {
    for (const replica of replicas) void check(replica)
  }, settings.healthIntervalMs)
  healthTimer.unref()

  const tokenize = async (text: string) => {
    const replica = replicas.find((r) => !r.down && r.kind !== "sglang")
    if (replica === undefined) return undefined
    try {
      const reply = await request(replica, "POST", "/tokenize", { prompt: text, add_special_tokens: false }, AbortSignal.timeout(30_000), 30_000) as { tokens?: unknown }
      return Array.isArray(reply.tokens) ? { server: replica.url, ids: reply.tokens as Array<number> } : undefined
    } catch (cause) {
      const status = (cause as { status?: number }).status
      if (status === 404 || status === 405) return undefined
      throw cause
    }
  }

  const pool: RemotePool = {
    logprobKind,
    maxInFlight: settings.maxInFlight,
    tokenizerHint,
    modelDirectory: options.modelDirectory,
    tokenize,
    generate,
    release: (episodeId) => {
      const replica = sessions.get(episodeId)
      if (replica === undefined) return
      replica.sessions--
      sessions.delete(episodeId)
    },
    updateWeights,
    stats: () =>
      replicas.map((r) => ({
        url: r.url,
        kind: r.kind,
        up: !r.down,
        reason: r.reason,
        version: r.version,
        inFlight: r.inFlight,
        waiting: r.waiters.length,
        requests: r.requests,
        failures: r.failures,
        movedIn: r.movedIn,
        sessions: r.sessions,
        endpoint: r.endpoint === "native" ? "/generate" : r.endpoint === "generate" ? "/inference/v1/generate" : "/v1/completions"
      })),
    close: () => {
      closed = true
      clearInterval(healthTimer)
    }
  }
  return pool
}

/** The engine's `Inference` service over a connected pool. */
export const service = (pool: RemotePool): Inference["Service"] =>
  Inference.of({
    generate: (request) =>
      Effect.tryPromise({
        try: (signal) => pool.generate(request, signal),
        catch: (cause) => new InferenceError({ message: errorMessage(cause) })
      }),
    release: (episodeId) => Effect.sync(() => pool.release(episodeId)),
    updateWeights: (weights, version) =>
      Effect.tryPromise({
        try: () => pool.updateWeights(weights, version),
        catch: (cause) => new InferenceError({ message: `weight sync to version ${version} failed: ${errorMessage(cause)}` })
      }),
    gauges: () =>
      Effect.sync(() => {
        // The servers' batches are theirs: what shows here is this client's requests on them.
        const stats = pool.stats()
        const running = stats.reduce((sum, s) => sum + s.inFlight, 0)
        return {
          running,
          queued: stats.reduce((sum, s) => sum + s.waiting, 0),
          batchOccupancy: running,
          maxBatchSize: stats.filter((s) => s.up).length * pool.maxInFlight
        }
      })
  })

/** Connects (failing with an InferenceError naming every server), closed with the scope. */
export const acquire = (options: RemoteInferenceOptions) =>
  Effect.acquireRelease(
    Effect.tryPromise({
      try: () => connect(options),
      catch: (cause) => new InferenceError({ message: `cannot use the inference servers ${options.servers.join(", ")}: ${errorMessage(cause)}` })
    }),
    (pool) => Effect.sync(() => pool.close())
  )

/** The engine's `Inference` service on inference servers, for as long as the layer lives. */
export const layer = (options: RemoteInferenceOptions): Layer.Layer<Inference, InferenceError> =>
  Layer.effect(Inference, Effect.map(acquire(options), service))

/** The layer over a pool already connected (the run asks it for its logprob kind first). */
export const layerOf = (pool: RemotePool): Layer.Layer<Inference> => Layer.succeed(Inference, service(pool))

export const RemoteInference = { connect, service, acquire, layer, layerOf } as const
