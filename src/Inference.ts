/**
 * The boundary episodes talk to for generation: submit a GenerationRequest, get a GenerationResult.
 * The shared ONNX inference actor (actors/inference) is the production implementation; `TextPolicy`
 * runs a hand-written policy (a scripted solver, a baseline) through the same boundary.
 */
import type { Weights } from "./model/safetensors.ts"
import { Context, type Effect } from "effect"
import type { GenerationRequest, GenerationResult, InferenceError } from "./Generation.ts"
import type { InferenceGauges } from "./RunMonitor.ts"

/** What a caller may add to a request: neither changes the tokens it gets. */
export interface GenerateOptions {
  /**
   * Sees each token as it is sampled, before the result holds them all (a streamed chat completion). A backend
   * that cannot stream (a text policy, a remote server) does not call it: the result is all there is.
   */
  readonly onToken?: ((token: number, logprob: number) => void) | undefined
  /**
   * Ends the generation early, as a client that went away asks: the result comes with the tokens so far and
   * finish reason "aborted" (interrupting the effect instead fails it). A backend that cannot stop early runs on.
   */
  readonly cancel?: AbortSignal | undefined
}

export class Inference extends Context.Service<Inference, {
  generate(request: GenerationRequest, options?: GenerateOptions): Effect.Effect<GenerationResult, InferenceError>
  /** The episode has ended: whatever the backend keeps for it (its KV cache) can go. */
  release?(episodeId: string): Effect.Effect<void>
  /** The backend's batch now, for progress displays (the inference actor has one; a text policy does not). */
  gauges?(): Effect.Effect<InferenceGauges>
  /** New policy weights from the trainer, in memory, with their version (the inference actor has this). */
  updateWeights?(weights: Weights, version: number): Effect.Effect<void, InferenceError>
}>()("episodic/Inference") {}
