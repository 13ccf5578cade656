/**
 * The episode supervisor: runs one episode machine under an Effect fiber (the XState <-> Effect bridge).
 *
 * The machine's actor is a scoped resource owned by the fiber. Its `reset`, `generate` and `interact`
 * actors are provided here as promises that run Effects through a FiberSet runtime, passing XState's abort
 * signal: leaving a state (timeout, INTERRUPT) aborts the call in flight, and interrupting the fiber stops
 * the actor, which aborts whatever it was doing. Whatever an environment or the policy does, `run` succeeds
 * with exactly one trajectory; the environment is closed exactly once.
 */
import { Deferred, Effect, FiberSet, Option, Schema } from "effect"
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
import {
  type Environment,
  EnvironmentError,
  ResetResultSchema,
  StepResultSchema
} from "./Environment.ts"
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

const message = (cause: unknown) => (cause instanceof Error ? cause.message : String(cause))

/** Calls the environment with a time limit and checks what it returns against a schema. */
const callEnvironment = <S extends Schema.Top>(
  what: string,
  timeoutMs: number,
  schema: S,
  call: (signal: AbortSignal) => unknown
): Effect.Effect<S["Type"], EnvironmentError, S["DecodingServices"]> =>
  Effect.tryPromise({
    try: async (signal) => call(signal),
    catch: (cause) => new EnvironmentError({ message: `${what} threw: ${message(cause)}` })
  }).pipe(
    Effect.timeoutOption(timeoutMs),
    Effect.flatMap(Option.match({
      onNone: () => Effect.fail(new EnvironmentError({ message: `${what} did not answer within ${timeoutMs} ms` })),
      onSome: (raw) =>
        Schema.decodeUnknownEffect(schema)(raw).pipe(
          Effect.mapError((issue) => new EnvironmentError({ message: `${what} returned an invalid result: ${issue.message}` }))
        )
    }))
  )

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
  const timeoutMs = spec.envCallTimeoutMs
  let environment: Environment | undefined

  // Registered first so it runs last, after the actor has stopped: close is called exactly once.
  yield* Effect.addFinalizer(() =>
    environment?.close === undefined
      ? Effect.void
      : callEnvironment("close", timeoutMs, Schema.Unknown, () => environment?.close?.()).pipe(
        Effect.catch((error) => Effect.logWarning(`episode ${spec.input.id}: ${error.message}`))
      )
  )

  const reset = (input: EpisodeInput) =>
    Effect.gen(function*() {
      environment = yield* Effect.try({
        try: () => spec.makeEnvironment(),
        catch: (cause) => new EnvironmentError({ message: `could not make environment "${input.interaction}": ${message(cause)}` })
      })
      const env = environment
      const result = yield* callEnvironment(
        "reset",
        timeoutMs,
        ResetResultSchema,
        (signal) => env.reset({ seed: input.seed, row: spec.row, signal })
      )
      const messages = yield* firstTurn(spec.row, result)
      const promptIds = yield* Effect.try({
        try: () => tokenizer.renderPrompt(messages),
        catch: (cause) => new EnvironmentError({ message: `could not render the prompt: ${message(cause)}` })
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
        policyVersion: result.policyVersion
      } satisfies GenerateOutput
    })

  const interact = (input: InteractInput) =>
    Effect.gen(function*() {
      const env = environment!
      const result = yield* callEnvironment(
        "step",
        timeoutMs,
        StepResultSchema,
        (signal) => env.step(input.action, { signal })
      )
      const observationIds = result.done
        ? []
        : yield* Effect.try({
          try: () => tokenizer.appendMessage({ role: "user", content: result.observation }, input.assistantIds),
          catch: (cause) => new EnvironmentError({ message: `could not render the observation: ${message(cause)}` })
        })
      return { observation: result.observation, reward: result.reward, done: result.done, observationIds } satisfies InteractOutput
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
