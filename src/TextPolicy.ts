/**
 * A policy written as a function from the conversation so far to the next assistant text: a scripted
 * solver that produces demonstrations, a random baseline, or a deterministic policy for unit tests. It is
 * served through the Inference boundary with real tokenization: its text is encoded with the model's
 * tokenizer, the template's end-of-turn token is appended, and each token gets logprob 0 (a deterministic
 * policy puts all its mass on its choice). It is never the default of any command: a run uses it only
 * when an experiment names a policy function.
 */
import { Effect, Layer } from "effect"
import { errorMessage } from "./errorMessage.ts"
import { GenerationResult, InferenceError, type GenerationRequest } from "./Generation.ts"
import { Inference } from "./Inference.ts"
import { Tokenizer } from "./Tokenizer.ts"

export interface TextPolicyInput {
  readonly episodeId: string
  /** 0-based assistant turn. */
  readonly turn: number
  readonly seed: number
  /** The whole context decoded with special tokens, as the model would read it. */
  readonly context: string
  readonly signal: AbortSignal
}

export type TextPolicy = (input: TextPolicyInput) => string | Promise<string>

export const layer = (policy: TextPolicy): Layer.Layer<Inference, never, Tokenizer> =>
  Layer.effect(
    Inference,
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const stopId = tokenizer.stopTokenIds.at(-1)
      // Called once per turn, so no span (about 10 µs each) and no AbortController unless the policy reads
      // its signal: scripted policies never do, and these were a third of the engine's budget per turn.
      const generate = (request: GenerationRequest) =>
        Effect.callback<string, InferenceError>((resume) => {
          let controller: AbortController | undefined
          const failed = (cause: unknown) =>
            resume(Effect.fail(new InferenceError({ message: `text policy failed: ${errorMessage(cause)}` })))
          try {
            Promise.resolve(policy({
              episodeId: request.episodeId,
              turn: request.turn,
              seed: request.seed,
              context: tokenizer.decode(request.contextIds, { skipSpecialTokens: false }),
              get signal() {
                return (controller ??= new AbortController()).signal
              }
            })).then((text) => resume(Effect.succeed(text)), failed)
          } catch (cause) {
            failed(cause)
          }
          return Effect.sync(() => controller?.abort())
        }).pipe(Effect.map((text) => {
          const ids = tokenizer.encode(text)
          const budget = request.sampling.maxNewTokens
          const finished = stopId !== undefined && ids.length < budget
          const tokenIds = finished ? [...ids, stopId] : ids.slice(0, budget)
          return new GenerationResult({
            tokenIds,
            logprobs: new Array<number>(tokenIds.length).fill(0),
            finishReason: finished ? "eos" : "length",
            policyVersion: 0
          })
        }))
      return Inference.of({ generate })
    })
  )
