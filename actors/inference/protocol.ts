/** Messages between the inference actor's handle (any thread) and its worker thread. */
import type { GraphDtype } from "../../src/model/huggingFace.ts"
import type { Weights } from "../../src/model/safetensors.ts"
import type { SchedulerRequest, SchedulerResult, SchedulerStats } from "./BatchScheduler.ts"
import type { ExecutionProvider, ModelShape } from "./OnnxCausalLM.ts"

export interface ActorSettings {
  readonly model: string
  readonly maxBatchSize: number
  readonly maxPrefillTokens: number
  readonly feedMaxTokens: number
  readonly cacheBudgetBytes: number
  readonly stallTimeoutMs: number
  readonly provider: ExecutionProvider
  readonly threads: number | undefined
  /** A published graph chosen as transformers.js chooses it (src/model/huggingFace.ts `publishedGraph`). */
  readonly dtype?: GraphDtype | undefined
}

export type Call =
  /** `stream`: the worker sends each token as it is sampled (a `token` message), then the result. */
  | { readonly type: "generate"; readonly request: SchedulerRequest; readonly stream?: boolean }
  | { readonly type: "updateWeights"; readonly weights: Weights; readonly version: number }
  | { readonly type: "cancel"; readonly episodeId: string }
  | { readonly type: "forget"; readonly episodeId: string }
  | { readonly type: "stats" }
  | { readonly type: "close" }

/** The scheduler's counters, and its batch at the time of asking. */
export interface ActorStats extends SchedulerStats {
  /** Rows in the decode batch, requests waiting, and the batch's limit. */
  readonly running: number
  readonly queued: number
  readonly maxBatchSize: number
}

export type Reply = SchedulerResult | ActorStats | void

export type ToWorker = { readonly id: number; readonly call: Call }

export type FromWorker =
  | { readonly type: "ready"; readonly info: ActorInfo }
  | { readonly type: "failed"; readonly message: string }
  | { readonly type: "token"; readonly id: number; readonly token: number; readonly logprob: number }
  | { readonly id: number; readonly ok: true; readonly value: Reply }
  | { readonly id: number; readonly ok: false; readonly message: string }

export interface ActorInfo {
  readonly shape: ModelShape
  readonly provider: ExecutionProvider
  /** Why the asked-for provider is not the one running, if it is not. */
  readonly fallback: string | undefined
  readonly maxPositions: number
}
