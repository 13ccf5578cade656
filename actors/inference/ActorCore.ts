/**
 * The inference actor's state and behaviour, independent of the thread it lives on: the ONNX model, the
 * batch scheduler, the tokenizer for stop strings, and weight updates turned into a fresh ONNX graph.
 */
import { existsSync, readFileSync } from "node:fs"
import * as path from "node:path"
import { load as loadTokenizer } from "../../src/Tokenizer.ts"
import { readConfig } from "../../src/model/config.ts"
import { exportOnnx } from "../../src/model/onnxExport.ts"
import { BatchScheduler } from "./BatchScheduler.ts"
import { OnnxCausalLM } from "./OnnxCausalLM.ts"
import type { ActorInfo, ActorSettings, Call, Reply } from "./protocol.ts"

export interface ActorCore {
  readonly info: ActorInfo
  readonly scheduler: BatchScheduler
  /** `onToken` sees a streamed `generate` call's tokens as they are sampled. */
  handle(call: Call, onToken?: (token: number, logprob: number) => void): Promise<Reply>
  close(): Promise<void>
}

const maxPositionsOf = (directory: string): number => {
  const raw = JSON.parse(readFileSync(path.join(directory, "config.json"), "utf8")) as Record<string, unknown>
  const value = raw.max_position_embeddings ?? raw.n_positions
  return typeof value === "number" ? value : 2048
}

export const startCore = async (settings: ActorSettings): Promise<ActorCore> => {
  const model = await OnnxCausalLM.load(settings.model, { provider: settings.provider, threads: settings.threads, dtype: settings.dtype })
  const directory = model.directory
  const tokenizer = existsSync(path.join(directory, "tokenizer.json")) ? await loadTokenizer(directory) : undefined
  // A graph with a rotary cos / sin cache (onnxruntime-genai's) runs no longer than the cache has rows.
  const maxPositions = Math.min(maxPositionsOf(directory), model.positionLimit ?? Infinity)
  const scheduler = new BatchScheduler(model, {
    maxBatchSize: settings.maxBatchSize,
    maxPrefillTokens: settings.maxPrefillTokens,
    feedMaxTokens: settings.feedMaxTokens,
    cacheBudgetBytes: settings.cacheBudgetBytes,
    stallTimeoutMs: settings.stallTimeoutMs,
    maxPositions,
    ...(tokenizer === undefined ? {} : { decode: (ids: ReadonlyArray<number>) => tokenizer.decode(ids) })
  })
  // The session is released only once no step runs: releasing it mid-run would crash the process.
  const close = async () => {
    await scheduler.close()
    await model.release()
  }
  const info: ActorInfo = { shape: model.shape, provider: model.provider, fallback: model.fallback, maxPositions }
  return {
    info,
    scheduler,
    handle: async (call, onToken) => {
      switch (call.type) {
        case "generate":
          return scheduler.generate(call.request, onToken)
        case "updateWeights":
          // New weights become a new graph from our exporter, for the family config.json describes (family.ts).
          return scheduler.updateWeights(exportOnnx(readConfig(directory), call.weights), call.version)
        case "cancel":
          return scheduler.cancel(call.episodeId)
        case "forget":
          return scheduler.forget(call.episodeId)
        case "stats":
          return { ...scheduler.statsNow(), running: scheduler.running, queued: scheduler.queued, maxBatchSize: settings.maxBatchSize }
        case "close":
          return close()
      }
    },
    close
  }
}
