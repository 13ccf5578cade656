/**
 * The shared inference actor: one per model, shared by every episode of a run. It owns the ONNX Runtime
 * session on its own worker thread, so the model computes while the main thread runs environments,
 * tokenization and episode machines. Requests are continuously batched (BatchScheduler) and each episode's
 * KV cache stays with the actor between turns (KvCacheStore).
 *
 *   const actor = await InferenceActor.start({ model: "models/tiny" })
 *   const result = await actor.generate(request)        // a GenerationRequest -> GenerationResult
 *   await actor.updateWeights(weights, 1)              // between two decode steps; nothing in flight is dropped
 *
 * `InferenceActor.layer(options)` provides the engine's `Inference` service from it.
 */
import { Effect, Layer } from "effect"
import { availableParallelism } from "node:os"
import { Worker } from "node:worker_threads"
import { errorMessage } from "../../src/errorMessage.ts"
import { GenerationResult, InferenceError, type GenerationRequest } from "../../src/Generation.ts"
import { Inference } from "../../src/Inference.ts"
import type { GraphDtype } from "../../src/model/huggingFace.ts"
import type { Weights } from "../../src/model/safetensors.ts"
import { startCore } from "./ActorCore.ts"
import type { SchedulerRequest, SchedulerResult } from "./BatchScheduler.ts"
import type { ExecutionProvider } from "./OnnxCausalLM.ts"
import type { ActorInfo, ActorSettings, ActorStats, Call, FromWorker, Reply } from "./protocol.ts"

export type { SchedulerStats } from "./BatchScheduler.ts"
export type { ActorInfo, ActorStats } from "./protocol.ts"

export interface InferenceActorOptions {
  /** A model directory: config.json, tokenizer files and onnx/model.onnx. */
  readonly model: string
  /** Sequences decoded together at most (default 64). */
  readonly maxBatchSize?: number
  /** Padded tokens in one prefill batch at most (default 4096). */
  readonly maxPrefillTokens?: number
  /** Turns continuing a cache with at most this many new tokens run them in decode steps, no prefill (default 0: off). */
  readonly feedMaxTokens?: number
  /** Bytes of KV caches kept between turns; least recently used go first (default 1 GiB). */
  readonly cacheBudgetBytes?: number
  /**
   * A request that gets no token for this long (its step never comes back, or it was lost) fails with an
   * error saying so, instead of waiting for the episode's own time limit (default 60 s).
   */
  readonly stallTimeoutMs?: number
  /** "cuda" uses ONNX Runtime's CUDA provider when it is installed and falls back to the CPU otherwise. */
  readonly provider?: ExecutionProvider
  /**
   * ONNX Runtime intra-op threads. Default: every core but one, which stays with the main thread's own work
   * (environments, tokenization, episode machines); on two cores a second model thread costs the engine
   * more than it gains the model.
   */
  readonly threads?: number
  /**
   * Run a published graph of the directory instead of episodic's: `onnx/model{_fp16,_int8,_uint8,_quantized,_q4,_q4f16,_bnb4}.onnx`
   * as transformers.js's `dtype` option names them (generation only: weight updates use episodic's exporter).
   */
  readonly dtype?: GraphDtype
  /** "worker" (default) runs the model on its own thread; "main" on the calling thread, for debugging. */
  readonly thread?: "worker" | "main"
}

export interface InferenceActor {
  readonly info: ActorInfo
  /**
   * `signal` ends the request at its next token, finish reason "aborted", with the tokens so far;
   * `onToken` sees each token as it is sampled (a streamed chat completion).
   */
  generate(request: GenerationRequest, signal?: AbortSignal, onToken?: OnToken): Promise<GenerationResult>
  /** Runs a request in the scheduler's own terms (e.g. a replay of recorded tokens). */
  schedule(request: SchedulerRequest): Promise<SchedulerResult>
  /** New weights (Hugging Face names, as in model.safetensors) become policy `version` between two steps. */
  updateWeights(weights: Weights, version: number): Promise<void>
  /** Drops the episode's cached keys and values. */
  forget(episodeId: string): void
  stats(): Promise<ActorStats>
  close(): Promise<void>
}

const settingsOf = (options: InferenceActorOptions): ActorSettings => ({
  model: options.model,
  maxBatchSize: options.maxBatchSize ?? 64,
  maxPrefillTokens: options.maxPrefillTokens ?? 4096,
  feedMaxTokens: options.feedMaxTokens ?? 0,
  cacheBudgetBytes: options.cacheBudgetBytes ?? 1024 ** 3,
  stallTimeoutMs: options.stallTimeoutMs ?? 60_000,
  provider: options.provider ?? "cpu",
  threads: options.threads ?? Math.max(1, availableParallelism() - 1),
  dtype: options.dtype
})

const toSchedulerRequest = (request: GenerationRequest): SchedulerRequest => ({
  episodeId: request.episodeId,
  contextIds: request.contextIds,
  temperature: request.sampling.temperature,
  topK: request.sampling.topK,
  topP: request.sampling.topP,
  maxNewTokens: request.sampling.maxNewTokens,
  stop: request.sampling.stop,
  stopTokenIds: request.stopTokenIds,
  seed: request.seed
})

type OnToken = (token: number, logprob: number) => void

type Transport = { readonly info: ActorInfo; call(call: Call, onToken?: OnToken): Promise<Reply>; close(): Promise<void> }

const inThread = async (settings: ActorSettings): Promise<Transport> => {
  const core = await startCore(settings)
  return { info: core.info, call: (call, onToken) => core.handle(call, onToken), close: () => core.close() }
}

const inWorker = (settings: ActorSettings): Promise<Transport> =>
  new Promise((resolve, reject) => {
    // A checkout runs worker.ts; the installed package its compiled worker.js (scripts/build.ts).
    const worker = new Worker(new URL(import.meta.url.endsWith(".ts") ? "./worker.ts" : "./worker.js", import.meta.url), { workerData: settings })
    const pending = new Map<number, { resolve: (value: Reply) => void; reject: (error: Error) => void; onToken?: OnToken | undefined }>()
    let next = 0
    let closed = false
    const failAll = (message: string) => {
      for (const { reject } of pending.values()) reject(new Error(message))
      pending.clear()
    }
    worker.on("message", (message: FromWorker) => {
      if ("type" in message && message.type === "token") {
        pending.get(message.id)?.onToken?.(message.token, message.logprob)
        return
      }
      if ("type" in message) {
        if (message.type === "ready") {
          resolve({
            info: message.info,
            call: (call, onToken) =>
              closed
                ? Promise.reject(new Error("the inference actor is closed"))
                : new Promise((resolveCall, rejectCall) => {
                    const id = next++
                    pending.set(id, { resolve: resolveCall, reject: rejectCall, onToken })
                    // Weights move to the worker rather than being copied.
                    const transfer = call.type === "updateWeights" ? [...new Set([...call.weights.values()].map((t) => t.data.buffer as ArrayBuffer))] : []
                    worker.postMessage({ id, call }, transfer)
                  }),
            close: async () => {
              if (closed) return
              const exited = new Promise<void>((done) => worker.once("exit", () => done()))
              // Ask the worker to finish its step and release the session; terminating it mid-run would crash.
              const id = next++
              const acknowledged = new Promise<void>((done) => pending.set(id, { resolve: () => done(), reject: () => done() }))
              worker.postMessage({ id, call: { type: "close" } })
              closed = true
              await acknowledged
              failAll("the inference actor closed")
              await Promise.race([exited, new Promise((done) => setTimeout(done, 5_000).unref())])
            }
          })
        } else reject(new Error(message.message))
        return
      }
      const entry = pending.get(message.id)
      if (entry === undefined) return
      pending.delete(message.id)
      if (message.ok) entry.resolve(message.value)
      else entry.reject(new Error(message.message))
    })
    worker.on("error", (error) => {
      failAll(`the inference worker crashed: ${error.message}`)
      reject(error)
    })
    worker.on("exit", (code) => {
      if (!closed) failAll(`the inference worker exited with code ${code}`)
    })
  })

/** Starts the actor: loads the model (on a worker thread unless `thread: "main"`). */
export const start = async (options: InferenceActorOptions): Promise<InferenceActor> => {
  const settings = settingsOf(options)
  const transport = await (options.thread === "main" ? inThread(settings) : inWorker(settings))
  const schedule = (request: SchedulerRequest, onToken?: OnToken) =>
    transport.call(onToken === undefined ? { type: "generate", request } : { type: "generate", request, stream: true }, onToken) as Promise<SchedulerResult>
  return {
    info: transport.info,
    schedule: (request) => schedule(request),
    generate: async (request, signal, onToken) => {
      const onAbort = () => void transport.call({ type: "cancel", episodeId: request.episodeId })
      signal?.addEventListener("abort", onAbort, { once: true })
      try {
        const result = await schedule(toSchedulerRequest(request), onToken)
        return new GenerationResult(result)
      } finally {
        signal?.removeEventListener("abort", onAbort)
      }
    },
    updateWeights: async (weights, version) => void (await transport.call({ type: "updateWeights", weights, version })),
    forget: (episodeId) => void transport.call({ type: "forget", episodeId }).catch(() => undefined),
    stats: () => transport.call({ type: "stats" }) as Promise<ActorStats>,
    close: () => transport.close()
  }
}

/** The engine's `Inference` service over a running actor (which the caller closes). */
export const service = (actor: InferenceActor): Inference["Service"] =>
  Inference.of({
    generate: (request, options) =>
      Effect.tryPromise({
        try: (signal) => actor.generate(request, options?.cancel === undefined ? signal : AbortSignal.any([signal, options.cancel]), options?.onToken),
        catch: (cause) => new InferenceError({ message: errorMessage(cause) })
      }),
    release: (episodeId) => Effect.sync(() => actor.forget(episodeId)),
    updateWeights: (weights, version) =>
      Effect.tryPromise({
        try: () => actor.updateWeights(weights, version),
        catch: (cause) => new InferenceError({ message: `weight sync to version ${version} failed: ${errorMessage(cause)}` })
      }),
    gauges: () =>
      Effect.promise(() => actor.stats()).pipe(
        Effect.map((stats) => ({
          running: stats.running,
          queued: stats.queued,
          batchOccupancy: stats.decodeSteps > 0 ? stats.decodeRows / stats.decodeSteps : 0,
          maxBatchSize: stats.maxBatchSize
        }))
      )
  })

/** The engine's `Inference` service, backed by an actor that lives as long as the layer. */
export const layer = (options: InferenceActorOptions): Layer.Layer<Inference, InferenceError> =>
  Layer.effect(
    Inference,
    Effect.gen(function*() {
      const actor = yield* Effect.acquireRelease(
        Effect.tryPromise({
          try: () => start(options),
          catch: (cause) => new InferenceError({ message: `cannot start the inference actor for ${options.model}: ${errorMessage(cause)}` })
        }),
        (actor) => Effect.promise(() => actor.close())
      )
      if (actor.info.fallback !== undefined) yield* Effect.logWarning(actor.info.fallback)
      return service(actor)
    })
  )

export const InferenceActor = { start, layer, service } as const
