/**
 * The boundary episodes talk to for generation: submit a GenerationRequest, get a GenerationResult.
 * The shared ONNX inference actor (actors/inference) is the production implementation; `TextPolicy`
 * runs a hand-written policy (a scripted solver, a baseline) through the same boundary.
 */
import type { Weights } from "./model/safetensors.ts"
import { Context, type Effect } from "effect"
import type { GenerationRequest, GenerationResult, InferenceError } from "./Generation.ts"
import type { InferenceGauges } from "./RunMonitor.ts"

export class Inference extends Context.Service<Inference, {
  generate(request: GenerationRequest): Effect.Effect<GenerationResult, InferenceError>
  /** The episode has ended: whatever the backend keeps for it (its KV cache) can go. */
  release?(episodeId: string): Effect.Effect<void>
  /** The backend's batch now, for progress displays (the inference actor has one; a text policy does not). */
  gauges?(): Effect.Effect<InferenceGauges>
  /** New policy weights from the trainer, in memory, with their version (the inference actor has this). */
  updateWeights?(weights: Weights, version: number): Effect.Effect<void, InferenceError>
}>()("episodic/Inference") {}
