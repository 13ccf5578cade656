import { describe, expect, it } from "vitest"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { defineInteraction, fromInteraction, type Interaction, type InteractionKwargs } from "../src/Interaction.ts"
import type { MessageInit } from "../src/Message.ts"

const signal = new AbortController().signal

const row: DatasetRow = {
  prompt: [
    { role: "system", content: "Answer briefly." },
    { role: "user", content: "Name a colour." }
  ],
  extra_info: { interaction_kwargs: { name: "echo", target: "blue" } }
}

/** Records every call; answers "again" until the action equals kwargs.target. */
const recordingInteraction = (options: { failOn?: "start" | "generateResponse" } = {}) => {
  const calls = {
    start: [] as Array<{ instanceId: string; kwargs: InteractionKwargs }>,
    generateResponse: [] as Array<ReadonlyArray<MessageInit>>,
    finalize: [] as Array<string>
  }
  const interaction: Interaction = {
    start(instanceId, kwargs) {
      calls.start.push({ instanceId, kwargs })
      if (options.failOn === "start") throw new Error("start failed")
    },
    async generateResponse(_instanceId, messages, kwargs) {
      calls.generateResponse.push(messages)
      if (options.failOn === "generateResponse") throw new Error("generateResponse failed")
      const hit = messages.at(-1)?.content === kwargs["target"]
      return { terminate: hit, text: hit ? "yes" : "again", score: hit ? 1 : 0, metadata: { hit } }
    },
    finalize(instanceId) {
      calls.finalize.push(instanceId)
    }
  }
  return { interaction, calls }
}

describe("fromInteraction", () => {
  it("starts the interaction with the row's interaction_kwargs and returns no observation", async () => {
    const { interaction, calls } = recordingInteraction()
    const reset = await fromInteraction(interaction).reset({ seed: 1, row, signal })
    expect(reset.observation).toBeUndefined()
    expect(calls.start).toHaveLength(1)
    expect(calls.start[0]?.kwargs).toEqual({ name: "echo", target: "blue" })
  })

  it("gives each environment a fresh instance id", async () => {
    const { interaction, calls } = recordingInteraction()
    await fromInteraction(interaction).reset({ seed: 1, row, signal })
    await fromInteraction(interaction).reset({ seed: 1, row, signal })
    const [first, second] = calls.start.map((call) => call.instanceId)
    expect(first).toBeTruthy()
    expect(first).not.toBe(second)
  })

  it("passes the whole history to generateResponse and maps its answer to a step", async () => {
    const { interaction, calls } = recordingInteraction()
    const environment = fromInteraction(interaction)
    await environment.reset({ seed: 1, row, signal })
    const miss = await environment.step("red", { signal })
    expect(miss).toEqual({ observation: "again", reward: 0, done: false, info: { hit: false } })
    const hit = await environment.step("blue", { signal })
    expect(hit).toEqual({ observation: "yes", reward: 1, done: true, info: { hit: true } })
    expect(calls.generateResponse[1]).toEqual([
      { role: "system", content: "Answer briefly." },
      { role: "user", content: "Name a colour." },
      { role: "assistant", content: "red" },
      { role: "user", content: "again" },
      { role: "assistant", content: "blue" }
    ])
    // Each call got its own snapshot of the history, not a list that kept growing.
    expect(calls.generateResponse[0]).toHaveLength(3)
  })

  it("finalizes the started instance exactly once on close", async () => {
    const { interaction, calls } = recordingInteraction()
    const environment = fromInteraction(interaction)
    await environment.reset({ seed: 1, row, signal })
    await environment.step("blue", { signal })
    await environment.close?.()
    await environment.close?.()
    expect(calls.finalize).toEqual([calls.start[0]?.instanceId])
  })

  it("finalizes even when start or generateResponse threw", async () => {
    for (const failOn of ["start", "generateResponse"] as const) {
      const { interaction, calls } = recordingInteraction({ failOn })
      const environment = fromInteraction(interaction)
      const episode = async () => {
        await environment.reset({ seed: 1, row, signal })
        await environment.step("red", { signal })
      }
      await expect(episode()).rejects.toThrow(`${failOn} failed`)
      await environment.close?.()
      expect(calls.finalize).toHaveLength(1)
    }
  })

  it("has nothing to finalize when reset never ran", async () => {
    const { interaction, calls } = recordingInteraction()
    await fromInteraction(interaction).close?.()
    expect(calls.finalize).toHaveLength(0)
  })
})

describe("defineInteraction", () => {
  it("makes a definition whose environments each run a fresh interaction made from the config", async () => {
    const made: Array<{ target: string }> = []
    const definition = defineInteraction<{ target: string }>({
      name: "echo",
      description: "Say the target.",
      interaction: (config) => {
        made.push(config)
        return recordingInteraction().interaction
      }
    })
    expect(definition.name).toBe("echo")
    const environment = definition.make({ target: "blue" })
    definition.make({ target: "green" })
    expect(made).toEqual([{ target: "blue" }, { target: "green" }])
    await environment.reset({ seed: 1, row, signal })
    expect((await environment.step("blue", { signal })).done).toBe(true)
  })
})
