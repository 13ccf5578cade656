/**
 * One episode of multi-turn interaction as a statechart:
 *
 *   running( pending -> generating -> interacting -> generating -> ... ) -> done
 *
 * `pending` resets the environment and renders the prompt; `generating` asks the policy for one assistant
 * turn; `interacting` hands the assistant's text to the environment. `done` is final and its output is the
 * trajectory record. The host does what each state names and reports back with an event: RESET_DONE,
 * GENERATE_DONE or INTERACT_DONE with the result, or FAILED with the error (whose failure it is, the state
 * says). `generateInput` and `interactInput` give the host what the policy and the environment get.
 *
 * Every way an episode can end lands in `done` with a finish reason: the environment is done, max turns,
 * the token budget, the wall-clock timeout, an environment error, an inference error, or an INTERRUPT event.
 *
 * Events rather than invoked actors: an invoked promise actor costs a child actor, an AbortController and a
 * promise per call, about three times what the transition itself costs, on a path taken twice per turn. The
 * host runs the call in its own fiber instead, and when the machine ends first (timeout, INTERRUPT) the host
 * sees it done and abandons the call.
 *
 * Pure on purpose: this file imports only xstate and opens as it stands in the Stately visualizer. Timings
 * use Date.now() in actions; nothing else here touches the outside world.
 */
import { assign, setup } from "xstate"
import type { FinishReason, Trajectory, TrajectoryError, Turn } from "../src/Trajectory.ts"

export interface EpisodeLimits {
  /** Assistant turns at most. */
  readonly maxTurns: number
  /** Response tokens at most (assistant and environment tokens together, as verl's response_length). */
  readonly maxResponseTokens: number
  /** Tokens one assistant turn may generate at most. */
  readonly maxNewTokens: number
  /** Wall-clock limit for the whole episode. */
  readonly timeoutMs: number
}

export interface EpisodeInput {
  readonly id: string
  readonly groupId: string
  readonly interaction: string
  readonly seed: number
  readonly limits: EpisodeLimits
}

type ChatMessage = { readonly role: "system" | "user" | "assistant" | "tool"; readonly content: string }

export interface ResetOutput {
  /** The rendered first turn: system prompt, dataset prompt, first observation. */
  readonly messages: ReadonlyArray<ChatMessage>
  readonly promptIds: ReadonlyArray<number>
}

export interface GenerateInput {
  readonly episodeId: string
  readonly turn: number
  /** Prompt ids then response ids: exactly what the policy conditions on. */
  readonly contextIds: ReadonlyArray<number>
  readonly maxNewTokens: number
}

export interface GenerateOutput {
  readonly tokenIds: ReadonlyArray<number>
  readonly logprobs: ReadonlyArray<number>
  /** The assistant's text as the environment will receive it. */
  readonly text: string
  readonly policyVersion: number
  /** Each token's version, when the backend reports them. */
  readonly policyVersions?: ReadonlyArray<number>
}

export interface InteractInput {
  readonly turn: number
  readonly action: string
  /** The assistant turn's ids, so the host can tell whether the policy already closed the turn. */
  readonly assistantIds: ReadonlyArray<number>
  /** Prompt ids then response ids, this turn included: the conversation as the policy saw it. */
  readonly contextIds: ReadonlyArray<number>
}

export interface InteractOutput {
  readonly observation: string
  readonly role: "user" | "tool"
  readonly reward: number
  readonly done: boolean
  /** The environment's step info, kept on the assistant turn (the reward manager reads success and invalid). */
  readonly info?: Readonly<Record<string, unknown>>
  /** The template's tokens for the observation as the next user turn, generation prompt included. */
  readonly observationIds: ReadonlyArray<number>
}

export interface EpisodeContext {
  readonly input: EpisodeInput
  readonly startedAt: number
  readonly segmentStartedAt: number
  readonly messages: ReadonlyArray<ChatMessage>
  readonly promptIds: ReadonlyArray<number>
  readonly responseIds: ReadonlyArray<number>
  readonly responseMask: ReadonlyArray<0 | 1>
  readonly responseLogprobs: ReadonlyArray<number>
  readonly turns: ReadonlyArray<Turn>
  readonly finishReason: FinishReason
  readonly error: TrajectoryError | null
}

export type EpisodeEvent =
  | { readonly type: "INTERRUPT" }
  | { readonly type: "RESET_DONE"; readonly output: ResetOutput }
  | { readonly type: "GENERATE_DONE"; readonly output: GenerateOutput }
  | { readonly type: "INTERACT_DONE"; readonly output: InteractOutput }
  /** The call the current state asked for failed: in `pending` or `interacting` the environment's, in `generating` the policy's. */
  | { readonly type: "FAILED"; readonly error: unknown }

// Tagged errors (Effect's, or `{ _tag, message }`) keep their tag as the type; other errors their name.
const describeError = (error: unknown): TrajectoryError => {
  if (typeof error === "object" && error !== null && "message" in error) {
    const { _tag, name, message } = error as { readonly _tag?: unknown; readonly name?: unknown; readonly message: unknown }
    return {
      type: typeof _tag === "string" ? _tag : typeof name === "string" ? name : "Error",
      message: String(message)
    }
  }
  return { type: "Error", message: String(error) }
}

const timings = (context: EpisodeContext) => {
  const now = Date.now()
  return { startMs: context.segmentStartedAt - context.startedAt, durationMs: now - context.segmentStartedAt }
}

const responseBudgetLeft = (context: EpisodeContext) => context.input.limits.maxResponseTokens - context.responseIds.length

const assistantTurns = (context: EpisodeContext) => context.turns.filter((turn) => turn.role === "assistant")

const assistantTurnCount = (context: EpisodeContext) => {
  let count = 0
  for (const turn of context.turns) if (turn.role === "assistant") count++
  return count
}

/** What the policy gets in `generating`: the context so far and what the limits leave for this turn. */
export const generateInput = (context: EpisodeContext): GenerateInput => ({
  episodeId: context.input.id,
  turn: assistantTurnCount(context),
  contextIds: context.promptIds.concat(context.responseIds),
  maxNewTokens: Math.min(context.input.limits.maxNewTokens, responseBudgetLeft(context))
})

/** What the environment gets in `interacting`, entered right after an assistant turn: it is the last turn. */
export const interactInput = (context: EpisodeContext): InteractInput => {
  const turn = context.turns.at(-1)!
  return {
    turn: assistantTurnCount(context) - 1,
    action: turn.text,
    assistantIds: context.responseIds.slice(turn.tokenStart, turn.tokenEnd),
    // Copied only when read: most environments take the text and never look at the context's ids.
    get contextIds() {
      return context.promptIds.concat(context.responseIds)
    }
  }
}

/**
 * The response's token arrays grow in place, the one exception to a context copied on every change: copied,
 * each event left three arrays of the whole response behind, and with many episodes interleaved those
 * outlived the young generation, so the garbage collector paid for them (about 60 µs per turn at
 * concurrency 64). Nothing is ever removed or changed, so a snapshot's `turns` still say which tokens it
 * had; every array handed out (`generateInput`, `interactInput`) is a copy.
 */
const append = <A>(target: ReadonlyArray<A>, items: ReadonlyArray<A>): ReadonlyArray<A> => {
  for (const item of items) (target as Array<A>).push(item)
  return target
}
const appendFilled = <A>(target: ReadonlyArray<A>, length: number, value: A): ReadonlyArray<A> => {
  for (let i = 0; i < length; i++) (target as Array<A>).push(value)
  return target
}

export const episodeMachine = setup({
  types: {
    context: {} as EpisodeContext,
    input: {} as EpisodeInput,
    events: {} as EpisodeEvent,
    output: {} as Trajectory
  },
  delays: {
    episodeTimeout: ({ context }) => context.input.limits.timeoutMs
  },
  guards: {
    turnsExhausted: ({ context }) => assistantTurnCount(context) >= context.input.limits.maxTurns,
    tokensExhausted: ({ context }) => responseBudgetLeft(context) <= 0
  },
  actions: {
    finish: assign((_, params: { readonly reason: FinishReason }) => ({ finishReason: params.reason })),
    recordError: assign((_, params: { readonly error: unknown }) => ({ error: describeError(params.error) })),
    recordPrompt: assign((_, output: ResetOutput) => ({
      messages: output.messages,
      promptIds: output.promptIds,
      segmentStartedAt: Date.now()
    })),
    recordAssistantTurn: assign(({ context }, output: GenerateOutput) => {
      const tokenStart = context.responseIds.length
      return {
        messages: [...context.messages, { role: "assistant" as const, content: output.text }],
        turns: [...context.turns, {
          role: "assistant" as const,
          text: output.text,
          tokenStart,
          tokenEnd: tokenStart + output.tokenIds.length,
          reward: 0,
          policyVersion: output.policyVersion,
          // Weights swapped mid-turn: the record says which version produced each token.
          ...(output.policyVersions?.some((v) => v !== output.policyVersion) ? { policyVersions: output.policyVersions } : undefined),
          timings: timings(context)
        }],
        responseIds: append(context.responseIds, output.tokenIds),
        responseMask: appendFilled(context.responseMask, output.tokenIds.length, 1 as const),
        responseLogprobs: append(context.responseLogprobs, output.logprobs),
        segmentStartedAt: Date.now()
      }
    }),
    // One action, so one copy of the context per step. The reward is credited to the assistant turn whose
    // action earned it; the observation joins the context (mask 0, logprob 0) only when the policy will read it.
    recordStep: assign(({ context }, params: { readonly output: InteractOutput; readonly appendTokens: boolean }) => {
      const { output } = params
      const ids = params.appendTokens ? output.observationIds : []
      const assistant = context.turns.at(-1)!
      const tokenStart = context.responseIds.length
      return {
        messages: [...context.messages, { role: output.role, content: output.observation }],
        turns: [
          ...context.turns.slice(0, -1),
          { ...assistant, reward: output.reward, ...(output.info !== undefined ? { info: output.info } : {}) },
          {
            role: output.role,
            text: output.observation,
            tokenStart,
            tokenEnd: tokenStart + ids.length,
            reward: 0,
            policyVersion: null,
            timings: timings(context)
          }
        ],
        responseIds: append(context.responseIds, ids),
        responseMask: appendFilled(context.responseMask, ids.length, 0 as const),
        responseLogprobs: appendFilled(context.responseLogprobs, ids.length, 0),
        segmentStartedAt: Date.now()
      }
    })
  }
}).createMachine({
  id: "episode",
  context: ({ input }) => ({
    input,
    startedAt: Date.now(),
    segmentStartedAt: Date.now(),
    messages: [],
    promptIds: [],
    responseIds: [],
    responseMask: [],
    responseLogprobs: [],
    turns: [],
    finishReason: "interrupted",
    error: null
  }),
  initial: "running",
  states: {
    running: {
      initial: "pending",
      after: {
        episodeTimeout: {
          target: "done",
          actions: [
            { type: "finish", params: { reason: "timeout" } },
            {
              type: "recordError",
              params: ({ context }) => ({
                error: { _tag: "EpisodeTimeout", message: `the episode ran longer than its ${context.input.limits.timeoutMs} ms limit` }
              })
            }
          ]
        }
      },
      on: {
        INTERRUPT: { target: "done", actions: { type: "finish", params: { reason: "interrupted" } } }
      },
      states: {
        pending: {
          on: {
            RESET_DONE: { target: "generating", actions: { type: "recordPrompt", params: ({ event }) => event.output } },
            FAILED: {
              target: "#episode.done",
              actions: [
                { type: "finish", params: { reason: "env_error" } },
                { type: "recordError", params: ({ event }) => ({ error: event.error }) }
              ]
            }
          }
        },
        generating: {
          always: [
            { guard: "turnsExhausted", target: "#episode.done", actions: { type: "finish", params: { reason: "max_turns" } } },
            { guard: "tokensExhausted", target: "#episode.done", actions: { type: "finish", params: { reason: "max_tokens" } } }
          ],
          on: {
            GENERATE_DONE: [
              {
                // verl's rule: a turn that used up the response budget ends the episode before the environment sees it.
                guard: ({ context, event }) => responseBudgetLeft(context) - event.output.tokenIds.length <= 0,
                target: "#episode.done",
                actions: [
                  { type: "recordAssistantTurn", params: ({ event }) => event.output },
                  { type: "finish", params: { reason: "max_tokens" } }
                ]
              },
              { target: "interacting", actions: { type: "recordAssistantTurn", params: ({ event }) => event.output } }
            ],
            FAILED: {
              target: "#episode.done",
              actions: [
                { type: "finish", params: { reason: "inference_error" } },
                { type: "recordError", params: ({ event }) => ({ error: event.error }) }
              ]
            }
          }
        },
        interacting: {
          on: {
            INTERACT_DONE: [
              {
                guard: ({ event }) => event.output.done,
                target: "#episode.done",
                actions: [
                  { type: "recordStep", params: ({ event }) => ({ output: event.output, appendTokens: false }) },
                  { type: "finish", params: { reason: "done" } }
                ]
              },
              {
                guard: "turnsExhausted",
                target: "#episode.done",
                actions: [
                  { type: "recordStep", params: ({ event }) => ({ output: event.output, appendTokens: false }) },
                  { type: "finish", params: { reason: "max_turns" } }
                ]
              },
              {
                // No room left to generate after the observation: end rather than truncate the context.
                guard: ({ context, event }) => responseBudgetLeft(context) - event.output.observationIds.length <= 0,
                target: "#episode.done",
                actions: [
                  { type: "recordStep", params: ({ event }) => ({ output: event.output, appendTokens: false }) },
                  { type: "finish", params: { reason: "max_tokens" } }
                ]
              },
              {
                target: "generating",
                actions: [
                  { type: "recordStep", params: ({ event }) => ({ output: event.output, appendTokens: true }) }
                ]
              }
            ],
            FAILED: {
              target: "#episode.done",
              actions: [
                { type: "finish", params: { reason: "env_error" } },
                { type: "recordError", params: ({ event }) => ({ error: event.error }) }
              ]
            }
          }
        }
      }
    },
    done: { type: "final" }
  },
  output: ({ context }) => {
    const turnRewards = assistantTurns(context).map((turn) => turn.reward)
    return {
      id: context.input.id,
      groupId: context.input.groupId,
      interaction: context.input.interaction,
      messages: context.messages,
      promptIds: context.promptIds,
      responseIds: context.responseIds,
      responseMask: context.responseMask,
      responseLogprobs: context.responseLogprobs,
      turns: context.turns,
      reward: turnRewards.reduce((sum, r) => sum + r, 0),
      turnRewards,
      numTurns: turnRewards.length,
      finishReason: context.finishReason,
      error: context.error,
      seed: context.input.seed
    }
  }
})

export type EpisodeMachine = typeof episodeMachine
