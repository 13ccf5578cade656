/**
 * Environments by name: what a row's `interaction_kwargs.name` or an experiment's `environment.name` looks up. The builtins
 * come ready; users register their own alongside them. A URL names a remote environment: `ws://`, `wss://`,
 * `http://` or `https://` an OpenEnv-compatible server (RemoteEnvironment), `gym+http://` or `gym+https://` a
 * Gym-style env server (GymEnvironment).
 */
import type { EnvironmentDefinition } from "../Environment.ts"
import { gymEnvironment } from "../remote/GymEnvironment.ts"
import { remoteEnvironment } from "../remote/RemoteEnvironment.ts"
import { arithmetic } from "./arithmetic.ts"
import { chat } from "./chat.ts"
import { gridQuest } from "./gridQuest.ts"
import { guessNumber } from "./guessNumber.ts"

const remoteUrl = /^(?:wss?|https?|gym\+https?):\/\//

export class EnvironmentRegistry {
  readonly #definitions = new Map<string, EnvironmentDefinition>()
  // One definition per URL, made on first use: its endpoints (and their circuit breakers) are shared by
  // every episode of the run.
  readonly #remote = new Map<string, EnvironmentDefinition>()

  /** A new registry holding grid-quest, guess-number, arithmetic and chat. */
  static builtins(): EnvironmentRegistry {
    return new EnvironmentRegistry().register(gridQuest).register(guessNumber).register(arithmetic).register(chat)
  }

  register<Config extends Record<string, unknown>>(definition: EnvironmentDefinition<Config>): this {
    if (this.#definitions.has(definition.name)) {
      throw new Error(`environment "${definition.name}" is already registered`)
    }
    this.#definitions.set(definition.name, definition)
    return this
  }

  get(name: string): EnvironmentDefinition {
    const definition = this.#definitions.get(name) ?? this.#remoteDefinition(name)
    if (definition === undefined) {
      const known = this.names()
      throw new Error(
        `unknown environment "${name}"; known environments: ${known.length > 0 ? known.join(", ") : "none"}, ` +
          "or the URL of an env server (ws://, http://, gym+http://)"
      )
    }
    return definition
  }

  has(name: string): boolean {
    return this.#definitions.has(name) || remoteUrl.test(name)
  }

  #remoteDefinition(name: string): EnvironmentDefinition | undefined {
    if (!remoteUrl.test(name)) return undefined
    let definition = this.#remote.get(name)
    if (definition === undefined) {
      definition = (name.startsWith("gym+") ? gymEnvironment(name.slice("gym+".length), {}, name) : remoteEnvironment(name)) as EnvironmentDefinition
      this.#remote.set(name, definition)
    }
    return definition
  }

  /** Registered names, sorted. */
  names(): ReadonlyArray<string> {
    return [...this.#definitions.keys()].sort()
  }
}
