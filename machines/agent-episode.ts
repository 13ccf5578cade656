/**
 * One episode played by an agent the user wrote (the AI SDK, the `openai` client, any OpenAI-API loop):
 *
 *   running( interacting <-> generating ) -> done
 *
 * The agent's own code runs for the whole of `running` (the invoked `agent` actor); the machine is
 * `interacting` while that code runs between model calls and `generating` while one of its chat completions
 * is in flight. Every call arrives as a CALL event carrying the prompt the chat template rendered. The
 * record keeps token-consistent chains: a call whose prompt extends a chain's context token for token
 * appends to that chain (the new messages' tokens with mask 0, then the generated tokens with mask 1); a call
 * that rewrote its history starts a new chain. `done` is final and its output is the trajectory record: the
 * chain of the last call is the record's main sequence, the others are kept whole in `sequences`.
 *
 * Pure: `agent` and `generate` are placeholders a host provides with `.provide({ actors })`; leaving
 * `running` (timeout, token budget, INTERRUPT) stops the agent actor, which aborts its signal.
 */
import { assign, fromPromise, setup } from "xstate"
import type { EpisodeInput } from "./episode.ts"
import type { FinishReason, Sequence, Trajectory, TrajectoryError, Turn } from "../src/Trajectory.ts"

type ChatMessage = { readonly role: "system" | "user" | "assistant" | "tool"; readonly content: string }

/** One chat completion the agent asked for, as rendered by the chat template. */
export interface AgentCall {
  readonly id: string
  /** The request's messages, simplified to role and text. */
  readonly messages: ReadonlyArray<ChatMessage>
  /** The rendered prompt, generation prompt included. */
  readonly promptIds: ReadonlyArray<number>
  /** The request's own max_tokens, when it gave one. */
  readonly maxTokens: number | undefined
}

export interface AgentGenerateInput {
  readonly episodeId: string
  readonly callId: string
  readonly turn: number
  readonly contextIds: ReadonlyArray<number>
  readonly maxNewTokens: number
}

export interface AgentGenerateOutput {
  readonly tokenIds: ReadonlyArray<number>
  readonly logprobs: ReadonlyArray<number>
  readonly text: string
  readonly policyVersion: number
  readonly policyVersions?: ReadonlyArray<number>
  /** Why the generation ended; "aborted" when the agent's client went away mid-call. */
  readonly finishReason?: string
}

export interface AgentOutcome {
  readonly reward: number
  readonly info?: Readonly<Record<string, unknown>> | undefined
}

export interface AgentEpisodeContext {
  readonly input: EpisodeInput
  readonly startedAt: number
  readonly segmentStartedAt: number
  readonly chains: ReadonlyArray<Sequence>
  /** The chain the last call extended or started. */
  readonly active: number
  readonly pending: AgentCall | null
  readonly calls: number
  readonly outcome: AgentOutcome | null
  readonly finishReason: FinishReason
  readonly error: TrajectoryError | null
}

export type AgentEpisodeEvent = { readonly type: "INTERRUPT" } | { readonly type: "CALL"; readonly call: AgentCall }

const notProvided = (name: string) =>
  fromPromise<never, unknown>(() => Promise.reject(new Error(`the agent episode machine's "${name}" actor was not provided`)))

const describeError = (error: unknown): TrajectoryError => {
  if (typeof error === "object" && error !== null && "message" in error) {
    const { _tag, name, message } = error as { readonly _tag?: unknown; readonly name?: unknown; readonly message: unknown }
    return { type: typeof _tag === "string" ? _tag : typeof name === "string" ? name : "Error", message: String(message) }
  }
  return { type: "Error", message: String(error) }
}

const contextOf = (chain: Sequence) => [...chain.promptIds, ...chain.responseIds]

const startsWith = (ids: ReadonlyArray<number>, prefix: ReadonlyArray<number>) =>
  prefix.length <= ids.length && prefix.every((id, i) => ids[i] === id)

/** The chain a call extends (the most recent first), or -1 when its prompt extends none. */
export const extendedChain = (chains: ReadonlyArray<Sequence>, promptIds: ReadonlyArray<number>): number => {
  for (let i = chains.length - 1; i >= 0; i--) if (startsWith(promptIds, contextOf(chains[i]!))) return i
  return -1
}

/** Response tokens across every chain: the token budget counts them all. */
const responseTokens = (context: AgentEpisodeContext) => context.chains.reduce((n, chain) => n + chain.responseIds.length, 0)
const budgetLeft = (context: AgentEpisodeContext) => context.input.limits.maxResponseTokens - responseTokens(context)

/** Tokens this call would add as observation (mask 0) before generating. */
const appendedTokens = (context: AgentEpisodeContext, call: AgentCall) => {
  const at = extendedChain(context.chains, call.promptIds)
  return at < 0 ? 0 : call.promptIds.length - contextOf(context.chains[at]!).length
}

const timings = (context: AgentEpisodeContext) => {
  const now = Date.now()
  return { startMs: context.segmentStartedAt - context.startedAt, durationMs: now - context.segmentStartedAt }
}

const assistantTurns = (chain: Sequence | undefined) => chain?.turns.filter((turn) => turn.role === "assistant") ?? []

export const agentEpisodeMachine = setup({
  types: {
    context: {} as AgentEpisodeContext,
    input: {} as EpisodeInput,
    events: {} as AgentEpisodeEvent,
    output: {} as Trajectory
  },
  actors: {
    agent: notProvided("agent") as unknown as ReturnType<typeof fromPromise<AgentOutcome, EpisodeInput>>,
    generate: notProvided("generate") as unknown as ReturnType<typeof fromPromise<AgentGenerateOutput, AgentGenerateInput>>
  },
  delays: {
    episodeTimeout: ({ context }) => context.input.limits.timeoutMs
  },
  guards: {
    turnsExhausted: ({ context }) => context.calls >= context.input.limits.maxTurns,
    tokensExhausted: ({ context, event }) =>
      event.type === "CALL" && budgetLeft(context) - appendedTokens(context, event.call) <= 0,
    noCalls: ({ context }) => context.calls === 0
  },
  actions: {
    finish: assign((_, params: { readonly reason: FinishReason }) => ({ finishReason: params.reason })),
    recordError: assign((_, params: { readonly error: unknown }) => ({ error: describeError(params.error) })),
    recordOutcome: assign((_, outcome: AgentOutcome) => ({ outcome })),
    // The call joins the chain it extends (its new tokens with mask 0), or starts a chain of its own.
    recordCall: assign(({ context, event }) => {
      if (event.type !== "CALL") return {}
      const call = event.call
      const at = extendedChain(context.chains, call.promptIds)
      const now = Date.now()
      if (at < 0) {
        const chain: Sequence = { messages: call.messages, promptIds: call.promptIds, responseIds: [], responseMask: [], responseLogprobs: [], turns: [] }
        return { chains: [...context.chains, chain], active: context.chains.length, pending: call, segmentStartedAt: now }
      }
      const chain = context.chains[at]!
      const ids = call.promptIds.slice(contextOf(chain).length)
      const known = chain.messages.length
      const added = call.messages.slice(known)
      const last = added.at(-1)
      const turn: Turn = {
        role: last?.role === "tool" ? "tool" : "user",
        text: added.map((m) => m.content).join("\n"),
        tokenStart: chain.responseIds.length,
        tokenEnd: chain.responseIds.length + ids.length,
        reward: 0,
        policyVersion: null,
        timings: timings(context)
      }
      const extended: Sequence = {
        messages: call.messages,
        promptIds: chain.promptIds,
        responseIds: [...chain.responseIds, ...ids],
        responseMask: [...chain.responseMask, ...ids.map(() => 0 as const)],
        responseLogprobs: [...chain.responseLogprobs, ...ids.map(() => 0)],
        turns: ids.length > 0 ? [...chain.turns, turn] : chain.turns
      }
      return { chains: context.chains.map((c, i) => (i === at ? extended : c)), active: at, pending: call, segmentStartedAt: now }
    }),
    recordReply: assign(({ context }, output: AgentGenerateOutput) => {
      const chain = context.chains[context.active]!
      const extended: Sequence = {
        messages: [...chain.messages, { role: "assistant", content: output.text }],
        promptIds: chain.promptIds,
        responseIds: [...chain.responseIds, ...output.tokenIds],
        responseMask: [...chain.responseMask, ...output.tokenIds.map(() => 1 as const)],
        responseLogprobs: [...chain.responseLogprobs, ...output.logprobs],
        turns: [...chain.turns, {
          role: "assistant",
          text: output.text,
          tokenStart: chain.responseIds.length,
          tokenEnd: chain.responseIds.length + output.tokenIds.length,
          reward: 0,
          policyVersion: output.policyVersion,
          ...(output.policyVersions?.some((v) => v !== output.policyVersion) ? { policyVersions: output.policyVersions } : {}),
          timings: timings(context),
          // The agent's client went away mid-call: the turn holds what was generated until then.
          ...(output.finishReason === "aborted" ? { info: { finishReason: "aborted" } } : {})
        }]
      }
      return {
        chains: context.chains.map((c, i) => (i === context.active ? extended : c)),
        pending: null,
        calls: context.calls + 1,
        segmentStartedAt: Date.now()
      }
    })
  }
}).createMachine({
  id: "agentEpisode",
  context: ({ input }) => ({
    input,
    startedAt: Date.now(),
    segmentStartedAt: Date.now(),
    chains: [],
    active: -1,
    pending: null,
    calls: 0,
    outcome: null,
    finishReason: "interrupted",
    error: null
  }),
  initial: "running",
  states: {
    running: {
      initial: "interacting",
      invoke: {
        src: "agent",
        input: ({ context }) => context.input,
        onDone: [
          {
            guard: "noCalls",
            target: "done",
            actions: [
              { type: "recordOutcome", params: ({ event }) => event.output },
              { type: "finish", params: { reason: "env_error" } },
              { type: "recordError", params: { error: { _tag: "AgentMadeNoCalls", message: "the agent returned without calling the model" } } }
            ]
          },
          {
            target: "done",
            actions: [{ type: "recordOutcome", params: ({ event }) => event.output }, { type: "finish", params: { reason: "done" } }]
          }
        ],
        onError: {
          target: "done",
          actions: [
            { type: "finish", params: { reason: "env_error" } },
            { type: "recordError", params: ({ event }) => ({ error: event.error }) }
          ]
        }
      },
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
        interacting: {
          on: {
            CALL: [
              { guard: "turnsExhausted", target: "#agentEpisode.done", actions: { type: "finish", params: { reason: "max_turns" } } },
              { guard: "tokensExhausted", target: "#agentEpisode.done", actions: { type: "finish", params: { reason: "max_tokens" } } },
              { target: "generating", actions: "recordCall" }
            ]
          }
        },
        generating: {
          invoke: {
            src: "generate",
            input: ({ context }) => {
              const chain = context.chains[context.active]!
              const call = context.pending!
              const limit = Math.min(context.input.limits.maxNewTokens, budgetLeft(context), call.maxTokens ?? Infinity)
              return {
                episodeId: context.input.id,
                callId: call.id,
                turn: context.calls,
                contextIds: contextOf(chain),
                maxNewTokens: Math.max(1, limit)
              }
            },
            onDone: [
              {
                guard: ({ context, event }) => budgetLeft(context) - event.output.tokenIds.length <= 0,
                target: "#agentEpisode.done",
                actions: [
                  { type: "recordReply", params: ({ event }) => event.output },
                  { type: "finish", params: { reason: "max_tokens" } }
                ]
              },
              { target: "interacting", actions: { type: "recordReply", params: ({ event }) => event.output } }
            ],
            onError: {
              target: "#agentEpisode.done",
              actions: [
                { type: "finish", params: { reason: "inference_error" } },
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
    const main = context.chains[context.active]
    const reward = context.outcome?.reward ?? 0
    // The agent's reward is credited to the last assistant turn of the main sequence.
    const lastAssistant = main?.turns.findLastIndex((turn) => turn.role === "assistant") ?? -1
    const turns = main?.turns.map((turn, i) =>
      i === lastAssistant ? { ...turn, reward, ...(context.outcome?.info !== undefined ? { info: { ...turn.info, ...context.outcome.info } } : {}) } : turn
    ) ?? []
    const others = context.chains.filter((_, i) => i !== context.active)
    return {
      id: context.input.id,
      groupId: context.input.groupId,
      interaction: context.input.interaction,
      messages: main?.messages ?? [],
      promptIds: main?.promptIds ?? [],
      responseIds: main?.responseIds ?? [],
      responseMask: main?.responseMask ?? [],
      responseLogprobs: main?.responseLogprobs ?? [],
      turns,
      reward,
      turnRewards: assistantTurns({ ...main!, turns }).map((turn) => turn.reward),
      numTurns: assistantTurns(main).length,
      finishReason: context.finishReason,
      error: context.error,
      seed: context.input.seed,
      ...(others.length > 0 ? { sequences: others } : {})
    }
  }
})

export type AgentEpisodeMachine = typeof agentEpisodeMachine
