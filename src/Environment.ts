/**
 * The environment protocol: what every environment, local or remote, offers an episode. It covers the seeds:
 * a Gym-style env server (reset -> observation and system prompt; step -> observation, reward, done, info),
 * OpenEnv's ChatEnvironment, and verl's interactions (through `fromInteraction` in Interaction.ts).
 *
 * Environments are plain objects with async methods so that anyone can write one without learning Effect.
 * The engine gives every call an AbortSignal (the episode was interrupted or timed out) and a time limit,
 * and validates what comes back: an environment that throws, hangs or returns garbage ends its episode
 * with finish_reason `env_error`, never the run.
 */
import { Schema } from "effect"
import type { DatasetRow } from "./DatasetRow.ts"
import { Message, type MessageInit } from "./Message.ts"

export interface ResetOptions {
  /** Seeds whatever the environment randomises (a grid, a word problem). */
  readonly seed: number
  /** The dataset row that started the episode; its interaction_kwargs carry the environment's per-row arguments. */
  readonly row: DatasetRow
  readonly signal: AbortSignal
}

export interface StepOptions {
  readonly signal: AbortSignal
  /**
   * The assistant turn's token ids exactly as the policy sampled them (the engine always gives them). An
   * environment that takes tokens rather than text (OpenEnv's chat_env) sends these, never re-encoded text.
   */
  readonly tokenIds?: ReadonlyArray<number>
  /** The conversation's token ids as the policy saw it, this turn included: prompt_ids, then response_ids. */
  readonly contextIds?: ReadonlyArray<number>
}

export interface ResetResult {
  /**
   * The first observation. A string becomes a user message after the row's prompt; messages replace the
   * row's prompt. Leave it out when the row's prompt is the whole first turn (verl interactions).
   */
  readonly observation?: string | ReadonlyArray<MessageInit>
  /** A system prompt put first in the conversation (the Gym env servers' `system_prompt`). */
  readonly systemPrompt?: string
  readonly info?: Record<string, unknown>
}

export interface StepResult {
  /** What the environment says back; becomes the next turn unless the episode is done. */
  readonly observation: string
  /** The observation's role in the chat template: "user" (the default), or "tool" for a tool's response. */
  readonly role?: "user" | "tool"
  readonly reward: number
  readonly done: boolean
  readonly info?: Record<string, unknown>
}

export interface Environment {
  reset(options: ResetOptions): Promise<ResetResult> | ResetResult
  /** `action` is the assistant's text for this turn, decoded from the tokens the policy sampled. */
  step(action: string, options: StepOptions): Promise<StepResult> | StepResult
  /** Always called once the episode ends, however it ends. */
  close?(): Promise<void> | void
}

/** A named way to make environments: one instance per episode. */
export interface EnvironmentDefinition<Config = Record<string, unknown>> {
  readonly name: string
  readonly description: string
  make(config: Config): Environment
  /**
   * Seeded rows for runs that name the environment instead of a dataset. Row i of a run with seed s is
   * `rows({ seed: s, count })[i]`; each row carries its own `extra_info.seed`.
   */
  rows?(options: { readonly seed: number; readonly count: number; readonly config: Config }): ReadonlyArray<DatasetRow>
}

/** Builds an environment definition with its config type inferred. */
export const define = <Config = Record<string, unknown>>(
  definition: EnvironmentDefinition<Config>
): EnvironmentDefinition<Config> => definition

// What comes back from an environment is checked before the episode uses it.
export const ResetResultSchema = Schema.Struct({
  observation: Schema.optional(Schema.Union([Schema.String, Schema.Array(Message)])),
  systemPrompt: Schema.optional(Schema.String),
  info: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
})

export const StepResultSchema = Schema.Struct({
  observation: Schema.String,
  role: Schema.optional(Schema.Literals(["user", "tool"])),
  reward: Schema.Finite,
  done: Schema.Boolean,
  info: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
})

export class EnvironmentError extends Schema.TaggedError<EnvironmentError>()("EnvironmentError", {
  message: Schema.String
}) {}
