import { describe, expect, it } from "vitest"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { chat, defaultFirstMessage, lengthReward, type ChatConfig, type ChatObservation } from "../src/environments/chat.ts"
import type { MessageInit } from "../src/Message.ts"

const signal = new AbortController().signal

const row = (prompt: ReadonlyArray<MessageInit>): DatasetRow => ({ prompt, extra_info: { interaction_kwargs: { name: "chat" } } })

const start = async (config: ChatConfig, prompt: ReadonlyArray<MessageInit> = [{ role: "user", content: "Hi" }]) => {
  const environment = chat.make(config)
  const reset = await environment.reset({ seed: 0, row: row(prompt), signal })
  return { environment, opening: reset.observation }
}

describe("chat", () => {
  it("opens with the system prompt first, then the row's prompt", async () => {
    const { opening } = await start({ systemPrompt: "Be kind." })
    expect(opening).toEqual([
      { role: "system", content: "Be kind." },
      { role: "user", content: "Hi" }
    ])
  })

  it("replaces the row's own system message with the configured one", async () => {
    const { opening } = await start({ systemPrompt: "Be kind." }, [
      { role: "system", content: "Be terse." },
      { role: "user", content: "Hi" }
    ])
    expect(opening).toEqual([
      { role: "system", content: "Be kind." },
      { role: "user", content: "Hi" }
    ])
  })

  it("opens with the configured first message, or a default, when the row has no prompt", async () => {
    expect((await start({ firstMessage: "Tell me a joke." }, [])).opening).toEqual([{ role: "user", content: "Tell me a joke." }])
    expect((await start({}, [])).opening).toEqual([{ role: "user", content: defaultFirstMessage }])
  })

  it("is done after the first assistant turn when there are no follow-ups", async () => {
    const { environment } = await start({})
    expect(await environment.step("Hello!", { signal })).toMatchObject({ reward: 0, done: true })
  })

  it("sends the follow-ups in order, keeps the history, and is done once the last is answered", async () => {
    const seen: Array<ReadonlyArray<MessageInit>> = []
    const record = (observation: ChatObservation) => {
      seen.push(observation.messages)
      return observation
    }
    const { environment } = await start({ systemPrompt: "Be kind.", followUps: ["Why?", "Thanks."], transforms: [record] })
    expect(await environment.step("Hello!", { signal })).toMatchObject({ observation: "Why?", done: false })
    expect(await environment.step("Because.", { signal })).toMatchObject({ observation: "Thanks.", done: false })
    expect(await environment.step("Welcome.", { signal })).toMatchObject({ done: true })
    expect(seen.at(-1)).toEqual([
      { role: "system", content: "Be kind." },
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello!" },
      { role: "user", content: "Why?" },
      { role: "assistant", content: "Because." },
      { role: "user", content: "Thanks." },
      { role: "assistant", content: "Welcome." }
    ])
  })

  it("lets transforms, run in order, set the reward and rewrite the observation", async () => {
    const shout = (observation: ChatObservation): ChatObservation => ({
      ...observation,
      observation: observation.observation.toUpperCase(),
      reward: observation.reward + 1
    })
    const seen: Array<ReadonlyArray<MessageInit>> = []
    const record = async (observation: ChatObservation) => {
      seen.push(observation.messages)
      return observation
    }
    const { environment } = await start({ followUps: ["go on", "more"], transforms: [lengthReward(0.1), shout, record] })
    const first = await environment.step("abcd", { signal })
    expect(first.observation).toBe("GO ON")
    expect(first.reward).toBeCloseTo(0.4 + 1)
    await environment.step("ab", { signal })
    // The rewritten observation is what the conversation kept.
    expect(seen.at(-1)?.[2]).toEqual({ role: "user", content: "GO ON" })
  })

  it("makes the same rows for the same seed, each naming the chat environment", () => {
    const rows = chat.rows!({ seed: 4, count: 6, config: {} })
    expect(chat.rows!({ seed: 4, count: 6, config: {} })).toEqual(rows)
    for (const each of rows) {
      expect(each.prompt).toHaveLength(1)
      expect(each.prompt[0]?.role).toBe("user")
      expect(each.extra_info.interaction_kwargs).toEqual({ name: "chat" })
    }
    expect(new Set(rows.map((each) => each.prompt[0]?.content)).size).toBeGreaterThan(1)
  })
})
