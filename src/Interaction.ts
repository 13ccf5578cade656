/**
 * verl's interactions (BaseInteraction: start_interaction, generate_response, calculate_score,
 * finalize_interaction) and the adapter that runs one as an environment. An interaction answers the whole
 * conversation so far rather than the latest action, and keys its state by an instance id, so one
 * interaction object may serve many episodes at once, as it does in verl.
 */
import { randomUUID } from "node:crypto"
import type { Environment, EnvironmentDefinition } from "./Environment.ts"
import type { MessageInit } from "./Message.ts"

/** A row's `extra_info.interaction_kwargs`, `name` included, as verl passes them. */
export type InteractionKwargs = Readonly<Record<string, unknown>>

/** verl's `(should_terminate_sequence, response_content, current_turn_score, additional_data)`. */
export interface InteractionResponse {
  readonly terminate: boolean
  /** The next user turn. */
  readonly text: string
  readonly score: number
  readonly metadata?: Record<string, unknown>
}

export interface Interaction {
  start(instanceId: string, kwargs: InteractionKwargs): Promise<void> | void
  /** `messages` is the conversation so far: the row's prompt, then each assistant turn and each response. */
  generateResponse(
    instanceId: string,
    messages: ReadonlyArray<MessageInit>,
    kwargs: InteractionKwargs
  ): Promise<InteractionResponse> | InteractionResponse
  calculateScore?(instanceId: string, kwargs: InteractionKwargs): Promise<number> | number
  finalize(instanceId: string, kwargs: InteractionKwargs): Promise<void> | void
}

/**
 * Runs an interaction as one episode's environment. The row's prompt is the first turn, so reset returns no
 * observation; each step appends the action to the history, asks the interaction to respond, and appends the
 * response. close() finalizes the instance exactly once if reset began it, whatever failed in between.
 */
export const fromInteraction = (interaction: Interaction): Environment => {
  const instanceId = randomUUID()
  // Set when reset starts the instance: from then on close() owes the interaction a finalize.
  let kwargs: InteractionKwargs | undefined
  let history: Array<MessageInit> = []
  let finalized = false

  return {
    async reset({ row }) {
      kwargs = row.extra_info.interaction_kwargs
      history = row.prompt.map(({ role, content }) => ({ role, content }))
      await interaction.start(instanceId, kwargs)
      return {}
    },
    async step(action) {
      if (kwargs === undefined) throw new Error("interaction environment: step() called before reset()")
      history.push({ role: "assistant", content: action })
      const response = await interaction.generateResponse(instanceId, [...history], kwargs)
      history.push({ role: "user", content: response.text })
      return {
        observation: response.text,
        reward: response.score,
        done: response.terminate,
        ...(response.metadata === undefined ? {} : { info: response.metadata })
      }
    },
    async close() {
      if (finalized || kwargs === undefined) return
      finalized = true
      await interaction.finalize(instanceId, kwargs)
    }
  }
}

/** An environment definition whose episodes each run a fresh interaction made from the config. */
export const defineInteraction = <Config = Record<string, unknown>>(
  definition: Omit<EnvironmentDefinition<Config>, "make"> & { interaction(config: Config): Interaction }
): EnvironmentDefinition<Config> => {
  const { interaction, ...rest } = definition
  return { ...rest, make: (config) => fromInteraction(interaction(config)) }
}
