/**
 * The episode supervisor: runs one episode machine under an Effect fiber (the XState <-> Effect bridge).
 *
 * The machine's actor is a scoped resource owned by the fiber. Its `reset`, `generate` and `interact`
 * actors are provided here as promises that run Effects through a FiberSet runtime, passing XState's abort
 * signal: leaving a state (timeout, INTERRUPT) aborts the call in flight, and interrupting the fiber stops
 * the actor, which aborts whatever it was doing. Whatever an environment or the policy does, `run` succeeds
 * with exactly one trajectory; the environment is closed exactly once.
 */
import { Deferred, Effect, FiberSet } from "effect"
import { createActor, fromPromise, type InspectionEvent } from "xstate"
import {
  episodeMachine,
  type EpisodeInput,
  type GenerateInput,
  type GenerateOutput,
  type InteractInput,
  type InteractOutput,
  type ResetOutput
} from "../machines/episode.ts"
import type { DatasetRow } from "./DatasetRow.ts"
import * as EnvironmentActor from "../actors/environment/index.ts"
import { type Environment, EnvironmentError, type ResetResultSchema } from "./Environment.ts"
import { errorMessage } from "./errorMessage.ts"
import { GenerationRequest, InferenceError, SamplingParams } from "./Generation.ts"
import { Inference } from "./Inference.ts"
import type { Message } from "./Message.ts"
import { deriveSeed } from "./Seed.ts"
import { Tokenizer } from "./Tokenizer.ts"
import type { Trajectory } from "./Trajectory.ts"

export interface EpisodeSpec {
  readonly input: EpisodeInput
  readonly row: DatasetRow
  /** Makes this episode's environment instance; a throw ends the episode with env_error. */
  readonly makeEnvironment: () => Environment
  readonly sampling: SamplingParams
  /** Which of the row's samples this is (GRPO groups): it varies the sampling seed, not the environment's. */
  readonly sample: number
  /** Time limit of one environment call (reset, step, close). */
  readonly envCallTimeoutMs: number
  /** Receives the actor's inspection events (the Stately inspector). */
  readonly inspect?: ((event: InspectionEvent) => void) | undefined
  /** Completing it sends INTERRUPT: the episode ends at once with finish_reason `interrupted`. */
  readonly stop?: Deferred.Deferred<void> | undefined
}

/** The first turn: system prompt, the row's prompt, the first observation. */
const firstTurn = (
  row: DatasetRow,
  reset: typeof ResetResultSchema.Type
): Effect.Effect<ReadonlyArray<Message>, EnvironmentError> => {
  const observation = reset.observation
  let messages: ReadonlyArray<Message> = typeof observation === "object"
    ? observation
    : [...row.prompt, ...(observation !== undefined ? [{ role: "user" as const, content: observation }] : [])]
  // A system message already in the row wins over the environment's: the dataset author chose it.
  if (reset.systemPrompt !== undefined && messages[0]?.role !== "system") {
    messages = [{ role: "system", content: reset.systemPrompt }, ...messages]
  }
  return messages.some((m) => m.role === "user")
    ? Effect.succeed(messages)
    : Effect.fail(new EnvironmentError({ message: "no user turn to start from: the row's prompt is empty and reset gave no observation" }))
}

export const run = Effect.fn("Episode.run")(function*(spec: EpisodeSpec) {
  const inference = yield* Inference
  const tokenizer = yield* Tokenizer
  const runPromise = yield* FiberSet.makeRuntimePromise()
  let environment: EnvironmentActor.EnvironmentActor | undefined

  // Registered first so they run last, after the actor has stopped and aborted whatever was in flight.
  yield* Effect.addFinalizer(() => inference.release?.(spec.input.id) ?? Effect.void)
  yield* Effect.addFinalizer(() => environment?.close ?? Effect.void)

  const reset = (input: EpisodeInput) =>
    Effect.gen(function*() {
      environment = yield* EnvironmentActor.make(input.interaction, spec.makeEnvironment, spec.envCallTimeoutMs)
      const result = yield* environment.reset({ seed: input.seed, row: spec.row })
      const messages = yield* firstTurn(spec.row, result)
      const promptIds = yield* Effect.try({
        try: () => tokenizer.renderPrompt(messages),
        catch: (cause) => new EnvironmentError({ message: `could not render the prompt: ${errorMessage(cause)}` })
      })
      return { messages, promptIds } satisfies ResetOutput
    })

  const generate = (input: GenerateInput) =>
    Effect.gen(function*() {
      const request = new GenerationRequest({
        episodeId: input.episodeId,
        turn: input.turn,
        contextIds: input.contextIds,
        sampling: new SamplingParams({ ...spec.sampling, maxNewTokens: input.maxNewTokens }),
        stopTokenIds: tokenizer.stopTokenIds,
        seed: deriveSeed(spec.input.seed, spec.sample, input.turn)
      })
      const result = yield* inference.generate(request)
      if (result.tokenIds.length !== result.logprobs.length) {
        return yield* new InferenceError({
          message: `inference returned ${result.tokenIds.length} tokens but ${result.logprobs.length} logprobs`
        })
      }
      if (result.tokenIds.length > input.maxNewTokens) {
        return yield* new InferenceError({
          message: `inference returned ${result.tokenIds.length} tokens, more than the ${input.maxNewTokens} asked for`
        })
      }
      return {
        tokenIds: result.tokenIds,
        logprobs: result.logprobs,
        text: tokenizer.decode(result.tokenIds),
        policyVersion: result.policyVersion,
        ...(result.policyVersions === undefined ? {} : { policyVersions: result.policyVersions })
      } satisfies GenerateOutput
    })

  const interact = (input: InteractInput) =>
    Effect.gen(function*() {
      const result = yield* environment!.step(input.action, { tokenIds: input.assistantIds, contextIds: input.contextIds })
      const role = result.role ?? "user"
      const observationIds = result.done
        ? []
        : yield* Effect.try({
          try: () => tokenizer.appendMessage({ role, content: result.observation }, input.assistantIds),
          catch: (cause) => new EnvironmentError({ message: `could not render the observation: ${errorMessage(cause)}` })
        })
      return {
        observation: result.observation,
        role,
        reward: result.reward,
        done: result.done,
        observationIds,
        ...(result.info !== undefined ? { info: result.info } : {})
      } satisfies InteractOutput
    })

  const machine = episodeMachine.provide({
    actors: {
      reset: fromPromise<ResetOutput, EpisodeInput>(({ input, signal }) => runPromise(reset(input), { signal })),
      generate: fromPromise<GenerateOutput, GenerateInput>(({ input, signal }) => runPromise(generate(input), { signal })),
      interact: fromPromise<InteractOutput, InteractInput>(({ input, signal }) => runPromise(interact(input), { signal }))
    }
  })

  const actor = yield* Effect.acquireRelease(
    Effect.sync(() => createActor(machine, { input: spec.input, inspect: spec.inspect }).start()),
    (actor) => Effect.sync(() => actor.stop())
  )

  if (spec.stop !== undefined) {
    yield* Effect.forkScoped(
      Deferred.await(spec.stop).pipe(Effect.andThen(Effect.sync(() => actor.send({ type: "INTERRUPT" }))))
    )
  }

  return yield* Effect.callback<Trajectory>((resume) => {
    const finish = () => resume(Effect.succeed(actor.getSnapshot().output!))
    if (actor.getSnapshot().status === "done") return finish()
    const subscription = actor.subscribe({
      complete: finish,
      error: (error) => resume(Effect.die(error))
    })
    return Effect.sync(() => subscription.unsubscribe())
  })
}, Effect.scoped)
