import { describe, expect, it } from "vitest"
import { define } from "../src/Environment.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"

const coin = define<{ bias?: number }>({
  name: "coin",
  description: "Guess the coin.",
  make: () => ({
    reset: () => ({ observation: "heads or tails?" }),
    step: (action) => ({ observation: "", reward: action === "heads" ? 1 : 0, done: true })
  })
})

describe("EnvironmentRegistry", () => {
  it("comes with the built-in environments", () => {
    const registry = EnvironmentRegistry.builtins()
    expect(registry.names()).toEqual(["arithmetic", "chat", "grid-quest", "guess-number"])
    expect(registry.get("grid-quest").name).toBe("grid-quest")
    expect(registry.has("arithmetic")).toBe(true)
  })

  it("names the unknown environment and the known ones", () => {
    expect(() => EnvironmentRegistry.builtins().get("chess")).toThrow(
      'unknown environment "chess"; known environments: arithmetic, chat, grid-quest, guess-number'
    )
  })

  it("runs environments users register next to the builtins", async () => {
    const registry = EnvironmentRegistry.builtins().register(coin)
    expect(registry.has("coin")).toBe(true)
    const environment = registry.get("coin").make({})
    const result = await environment.step("heads", { signal: new AbortController().signal })
    expect(result.reward).toBe(1)
    expect(EnvironmentRegistry.builtins().has("coin")).toBe(false)
  })

  it("refuses a second environment with the same name", () => {
    expect(() => EnvironmentRegistry.builtins().register({ ...coin, name: "chat" })).toThrow(
      'environment "chat" is already registered'
    )
  })
})
