/**
 * The episode supervisor: runs one episode machine under an Effect fiber (the XState <-> Effect bridge).
 *
 * The machine's actor is a scoped resource owned by the fiber. The fiber is the machine's host: it looks at
 * the state, does what it names (reset the environment, generate a turn, step the environment) as an Effect
 * in this same fiber, and sends the result back as the next event. When the machine ends on its own
 * (timeout, INTERRUPT) the call in flight is interrupted, which aborts it through its signal; interrupting
 * the fiber stops the actor. Whatever an environment or the policy does, `run` succeeds with exactly one
 * trajectory; the environment is closed exactly once.
 */
import { Cause, Deferred, Effect } from "effect"
import { createActor, type InspectionEvent, type SnapshotFrom } from "xstate"
import {
  type EpisodeEvent,
  type EpisodeInput,
  episodeMachine,
  generateInput,
  type GenerateInput,
  type GenerateOutput,
  interactInput,
  type InteractInput,
  type InteractOutput,
  type ResetOutput
} from "../machines/episode.ts"
import type { DatasetRow } from "./DatasetRow.ts"
import * as EnvironmentActor from "../actors/environment/index.ts"
import { type Environment, EnvironmentError, type ResetResultSchema, type StepResultSchema } from "./Environment.ts"
import { errorMessage } from "./errorMessage.ts"
import { GenerationRequest, type GenerationResult, InferenceError, SamplingParams } from "./Generation.ts"
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

// Untraced: a span per episode would cost more than the episode's own machinery.
export const run = Effect.fnUntraced(function*(spec: EpisodeSpec) {
  const inference = yield* Inference
  const tokenizer = yield* Tokenizer
  let environment: EnvironmentActor.EnvironmentActor | undefined

  // Registered first so they run last, after the actor has stopped and the call in flight was interrupted.
  yield* Effect.addFinalizer(() => inference.release?.(spec.input.id) ?? Effect.void)
  yield* Effect.addFinalizer(() => environment?.close ?? Effect.void)

  const reset = Effect.gen(function*() {
    environment = yield* EnvironmentActor.make(spec.input.interaction, spec.makeEnvironment, spec.envCallTimeoutMs)
    const result = yield* environment.reset({ seed: spec.input.seed, row: spec.row })
    const messages = yield* firstTurn(spec.row, result)
    const promptIds = yield* Effect.try({
      try: () => tokenizer.renderPrompt(messages),
      catch: (cause) => new EnvironmentError({ message: `could not render the prompt: ${errorMessage(cause)}` })
    })
    return { type: "RESET_DONE", output: { messages, promptIds } satisfies ResetOutput } as const
  })

  // The turn's budget is almost always the same: one SamplingParams per budget, not one per turn.
  let sampling = spec.sampling
  const samplingFor = (maxNewTokens: number) =>
    sampling.maxNewTokens === maxNewTokens ? sampling : (sampling = new SamplingParams({ ...spec.sampling, maxNewTokens }))

  // The two calls of a turn are plain flatMaps, not generators: a generator resumed per call was one of the
  // engine's larger costs per turn (docs/benchmarks.md, "engine: what orchestration costs per turn").
  const generated = (input: GenerateInput, result: GenerationResult): Effect.Effect<EpisodeEvent, InferenceError> => {
    if (result.tokenIds.length !== result.logprobs.length) {
      return Effect.fail(new InferenceError({
        message: `inference returned ${result.tokenIds.length} tokens but ${result.logprobs.length} logprobs`
      }))
    }
    if (result.tokenIds.length > input.maxNewTokens) {
      return Effect.fail(new InferenceError({
        message: `inference returned ${result.tokenIds.length} tokens, more than the ${input.maxNewTokens} asked for`
      }))
    }
    const output: GenerateOutput = {
      tokenIds: result.tokenIds,
      logprobs: result.logprobs,
      text: tokenizer.decode(result.tokenIds),
      policyVersion: result.policyVersion,
      ...(result.policyVersions === undefined ? {} : { policyVersions: result.policyVersions })
    }
    return Effect.succeed({ type: "GENERATE_DONE", output })
  }

  const generate = (input: GenerateInput) =>
    inference.generate(
      new GenerationRequest({
        episodeId: input.episodeId,
        turn: input.turn,
        contextIds: input.contextIds,
        sampling: samplingFor(input.maxNewTokens),
        stopTokenIds: tokenizer.stopTokenIds,
        seed: deriveSeed(spec.input.seed, spec.sample, input.turn)
      })
    ).pipe(Effect.flatMap((result) => generated(input, result)))

  const stepped = (input: InteractInput, result: typeof StepResultSchema.Type): Effect.Effect<EpisodeEvent, EnvironmentError> => {
    const role = result.role ?? "user"
    let observationIds: ReadonlyArray<number> = []
    if (!result.done) {
      try {
        observationIds = tokenizer.appendMessage({ role, content: result.observation }, input.assistantIds)
      } catch (cause) {
        return Effect.fail(new EnvironmentError({ message: `could not render the observation: ${errorMessage(cause)}` }))
      }
    }
    const output: InteractOutput = {
      observation: result.observation,
      role,
      reward: result.reward,
      done: result.done,
      observationIds,
      ...(result.info !== undefined ? { info: result.info } : {})
    }
    return Effect.succeed({ type: "INTERACT_DONE", output })
  }

  const interact = (input: InteractInput) =>
    environment!.step(input.action, {
      tokenIds: input.assistantIds,
      get contextIds() {
        return input.contextIds
      }
    }).pipe(Effect.flatMap((result) => stepped(input, result)))

  /** What the state asks the host to do, as the event that reports it done; undefined once the machine is done. */
  const work = (snapshot: SnapshotFrom<typeof episodeMachine>): Effect.Effect<EpisodeEvent> | undefined => {
    if (snapshot.status !== "active") return undefined
    const state = (snapshot.value as { readonly running: "pending" | "generating" | "interacting" }).running
    const call: Effect.Effect<EpisodeEvent, unknown> = state === "pending"
      ? reset
      : state === "generating"
      ? generate(generateInput(snapshot.context))
      : interact(interactInput(snapshot.context))
    // A failure (or a defect) is the machine's to record; an interruption is the machine ending first.
    return Effect.catchCause(call, (cause) =>
      Cause.hasInterruptsOnly(cause) ? Effect.failCause(cause as Cause.Cause<never>) : Effect.succeed({ type: "FAILED", error: Cause.squash(cause) } as const))
  }

  const actor = yield* Effect.acquireRelease(
    Effect.sync(() => createActor(episodeMachine, { input: spec.input, inspect: spec.inspect }).start()),
    (actor) => Effect.sync(() => actor.stop())
  )

  if (spec.stop !== undefined) {
    yield* Effect.forkScoped(
      Deferred.await(spec.stop).pipe(Effect.andThen(Effect.sync(() => actor.send({ type: "INTERRUPT" }))))
    )
  }

  // The host's loop: each event moves the machine synchronously, so the next snapshot says what comes next.
  const host = Effect.gen(function*() {
    for (let next = work(actor.getSnapshot()); next !== undefined; next = work(actor.getSnapshot())) {
      actor.send(yield* next)
    }
  })
  // The host runs in a fiber of its own so that the machine ending first (timeout, INTERRUPT) can leave it:
  // closing the scope interrupts whatever call it is in.
  // A defect in the host itself (not in a call, which `work` reports) still ends the episode, as a failure.
  yield* Effect.forkScoped(host.pipe(Effect.tapCause((cause) =>
    Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.sync(() => actor.send({ type: "FAILED", error: Cause.squash(cause) }))
  )))
  yield* Effect.callback<void>((resume) => {
    if (actor.getSnapshot().status === "done") return resume(Effect.void)
    const subscription = actor.subscribe({
      complete: () => resume(Effect.void),
      error: (error) => resume(Effect.die(error))
    })
    return Effect.sync(() => subscription.unsubscribe())
  })
  return actor.getSnapshot().output as Trajectory
}, Effect.scoped)
