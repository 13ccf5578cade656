/**
 * Environments by name: what a row's `interaction_kwargs.name` or an experiment's `environment.name` looks up. The builtins
 * come ready; users register their own alongside them.
 */
import type { EnvironmentDefinition } from "../Environment.ts"
import { arithmetic } from "./arithmetic.ts"
import { chat } from "./chat.ts"
import { gridQuest } from "./gridQuest.ts"

export class EnvironmentRegistry {
  readonly #definitions = new Map<string, EnvironmentDefinition>()

  /** A new registry holding grid-quest, arithmetic and chat. */
  static builtins(): EnvironmentRegistry {
    return new EnvironmentRegistry().register(gridQuest).register(arithmetic).register(chat)
  }

  register<Config extends Record<string, unknown>>(definition: EnvironmentDefinition<Config>): this {
    if (this.#definitions.has(definition.name)) {
      throw new Error(`environment "${definition.name}" is already registered`)
    }
    this.#definitions.set(definition.name, definition)
    return this
  }

  get(name: string): EnvironmentDefinition {
    const definition = this.#definitions.get(name)
    if (definition === undefined) {
      const known = this.names()
      throw new Error(`unknown environment "${name}"; known environments: ${known.length > 0 ? known.join(", ") : "none"}`)
    }
    return definition
  }

  has(name: string): boolean {
    return this.#definitions.has(name)
  }

  /** Registered names, sorted. */
  names(): ReadonlyArray<string> {
    return [...this.#definitions.keys()].sort()
  }
}
