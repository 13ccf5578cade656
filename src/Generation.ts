/**
 * What crosses the boundary between episodes and the inference actor: a request for one assistant turn
 * (the full context as token ids) and its result (the sampled ids, their logprobs, why it stopped, and the
 * policy version that produced them). The actor knows nothing of text; tokenization lives in Tokenizer.
 */
import { Schema } from "effect"
import { FiniteArray, IntArray } from "./TokenArrays.ts"

export class SamplingParams extends Schema.Class<SamplingParams>("episodic/SamplingParams")({
  /** 0 means greedy (argmax). */
  temperature: Schema.Finite.check(Schema.isGreaterThanOrEqualTo(0)),
  /** 0 disables top-k. */
  topK: Schema.Int.check(Schema.isGreaterThanOrEqualTo(0)),
  /** 1 disables nucleus sampling. */
  topP: Schema.Finite.check(Schema.isGreaterThan(0), Schema.isLessThanOrEqualTo(1)),
  /** Upper bound on tokens generated in one assistant turn. */
  maxNewTokens: Schema.Int.check(Schema.isGreaterThan(0)),
  /** Strings that end the turn when they appear in the decoded output. */
  stop: Schema.Array(Schema.String)
}) {
  static readonly defaults = new SamplingParams({ temperature: 1, topK: 0, topP: 1, maxNewTokens: 64, stop: [] })
  static readonly greedy = new SamplingParams({ temperature: 0, topK: 0, topP: 1, maxNewTokens: 64, stop: [] })
}

export const GenerationFinishReason = Schema.Literals(["eos", "stop", "length", "aborted"])
export type GenerationFinishReason = typeof GenerationFinishReason.Type

export class GenerationRequest extends Schema.Class<GenerationRequest>("episodic/GenerationRequest")({
  /** Stable per episode: the inference actor keeps that episode's KV cache between turns under this key. */
  episodeId: Schema.String,
  /** 0-based assistant turn within the episode. */
  turn: Schema.Int,
  /** The whole context the policy conditions on: prompt ids then every response id so far. */
  contextIds: IntArray,
  sampling: SamplingParams,
  /** Token ids that end the turn (the template's end-of-turn and eos tokens). */
  stopTokenIds: IntArray,
  /** Sampling seed for this (episode, turn), so a run can be reproduced. */
  seed: Schema.Int
}) {}

export class GenerationResult extends Schema.Class<GenerationResult>("episodic/GenerationResult")({
  tokenIds: IntArray,
  /** Log-probability of each sampled token under the distribution it was sampled from. */
  logprobs: FiniteArray,
  finishReason: GenerationFinishReason,
  /** The version of the weights that produced the first token (the oldest: versions only grow within a turn). */
  policyVersion: Schema.Int,
  /** The version whose weights computed each token's logits, when the backend knows (weights can swap mid-turn). */
  policyVersions: Schema.optionalKey(IntArray)
}) {}

export class InferenceError extends Schema.TaggedError<InferenceError>()("InferenceError", {
  message: Schema.String
}) {}
