/**
 * Agents written with the `openai` client and the `ai` package, played as episodes through the per-episode
 * OpenAI endpoint. The policy is a scripted one (emits tool-call text through the real Qwen3 template and
 * token path), since these tests are of the endpoint and the record; the last test runs the project's tiny
 * model through the inference actor.
 */
import { createOpenAICompatible } from "@ai-sdk/openai-compatible"
import { assert, describe, it } from "@effect/vitest"
import { generateText, jsonSchema, stepCountIs, streamText, tool } from "ai"
import { Effect, Layer, Stream } from "effect"
import { tmpdir } from "node:os"
import * as path from "node:path"
import OpenAI from "openai"
import { InferenceActor, type InferenceActor as InferenceActorHandle } from "../actors/inference/index.ts"
import * as AgentChat from "../src/AgentChat.ts"
import { AgentGateway } from "../src/AgentGateway.ts"
import { Engine } from "../src/Engine.ts"
import { gridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import * as TextPolicy from "../src/TextPolicy.ts"
import { defineExperiment, resolve } from "../src/Experiment.ts"
import * as AgentEpisode from "../src/AgentEpisode.ts"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { GenerationResult, InferenceError } from "../src/Generation.ts"
import { Inference } from "../src/Inference.ts"
import { Tokenizer, type ChatTokenizer } from "../src/Tokenizer.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { limits, sampling, tinyModel, tokenizerDirs } from "./support.ts"

const row: DatasetRow = {
  prompt: [{ role: "user", content: "Reach the goal." }],
  extra_info: { interaction_kwargs: { name: "agent" } }
} as unknown as DatasetRow

/** What the policy saw and said, call by call. */
interface Log {
  readonly contexts: Array<ReadonlyArray<number>>
  readonly texts: Array<string>
}

type Script = (context: string, signal: AbortSignal) => string | Promise<string>

/** A policy that answers from the decoded context, through the real tokenizer, recording every context. */
const scripted = (script: Script, log: Log) =>
  Layer.effect(
    Inference,
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const stopId = tokenizer.stopTokenIds.at(-1)!
      return Inference.of({
        generate: (request) =>
          Effect.tryPromise({
            try: async (signal) => {
              log.contexts.push(request.contextIds)
              const text = await script(tokenizer.decode(request.contextIds, { skipSpecialTokens: false }), signal)
              log.texts.push(text)
              const ids = [...tokenizer.encode(text), stopId].slice(0, request.sampling.maxNewTokens)
              return new GenerationResult({ tokenIds: ids, logprobs: ids.map(() => -0.5), finishReason: "eos", policyVersion: 0 })
            },
            catch: (cause) => new InferenceError({ message: String(cause) })
          })
      })
    })
  )

const layerOf = (script: Script, log: Log, tokenizer: keyof typeof tokenizerDirs = "qwen3") =>
  Layer.mergeAll(scripted(script, log), AgentGateway.layer()).pipe(Layer.provideMerge(Tokenizer.layer(tokenizerDirs[tokenizer])))

const newLog = (): Log => ({ contexts: [], texts: [] })

let episodes = 0
const play = (agent: AgentEpisode.Agent, overrides: Partial<Parameters<typeof limits>[0]> = {}) =>
  AgentEpisode.run({
    input: { id: `agent-${episodes++}`, groupId: "0", interaction: "agent", seed: 1, limits: limits(overrides) },
    row,
    agent,
    sampling,
    sample: 0
  })

const toolCall = (name: string, args: string) => `<tool_call>\n{"name": "${name}", "arguments": ${args}}\n</tool_call>`
const toolResponses = (context: string) => context.split("<tool_response>").length - 1

/** The record's invariants: every mask-1 span decodes to its turn's text, and every context is a prefix of a sequence. */
const check = (t: Trajectory.Trajectory, tokenizer: ChatTokenizer, log: Log) => {
  assert.strictEqual(Trajectory.violation(t), undefined)
  Trajectory.decode(Trajectory.encode(t))
  const sequences = [t, ...(t.sequences ?? [])]
  for (const s of sequences) {
    for (const turn of s.turns) {
      const ids = s.responseIds.slice(turn.tokenStart, turn.tokenEnd)
      const mask = s.responseMask.slice(turn.tokenStart, turn.tokenEnd)
      assert.isTrue(mask.every((m) => m === (turn.role === "assistant" ? 1 : 0)))
      if (turn.role === "assistant") assert.strictEqual(tokenizer.decode(ids), turn.text)
    }
  }
  const texts = sequences.flatMap((s) => s.turns.filter((turn) => turn.role === "assistant").map((turn) => turn.text))
  for (const text of log.texts) assert.include(texts, text)
  for (const context of log.contexts) {
    assert.isTrue(
      sequences.some((s) => {
        const full = [...s.promptIds, ...s.responseIds]
        return context.every((id, i) => full[i] === id)
      }),
      "a context the policy saw is a prefix of a sequence"
    )
  }
}

const moveTool = {
  type: "function" as const,
  function: { name: "move", description: "Move one step.", parameters: { type: "object", properties: { dir: { type: "string" } }, required: ["dir"] } }
}

describe("agents through the per-episode endpoint", () => {
  const log1 = newLog()
  it.effect("an openai-client tool loop: one chain, tool results mask 0, replies mask 1", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const seen: Array<string> = []
      const t = yield* play(async ({ openai, row }) => {
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
        const messages: Array<OpenAI.ChatCompletionMessageParam> = [{ role: "system", content: "You play a grid." }, ...(row.prompt as Array<{ role: "user"; content: string }>)]
        for (let step = 0; step < 5; step++) {
          const reply = await client.chat.completions.create({ model: "policy", messages, tools: [moveTool] })
          const message = reply.choices[0]!.message
          messages.push(message)
          if (message.tool_calls === undefined || message.tool_calls.length === 0) {
            seen.push(message.content ?? "")
            return message.content === "done" ? 1 : 0
          }
          for (const call of message.tool_calls) {
            if (call.type !== "function") continue
            seen.push(call.function.arguments)
            messages.push({ role: "tool", tool_call_id: call.id, content: `moved ${JSON.parse(call.function.arguments).dir}` })
          }
        }
        return 0
      })
      check(t, tokenizer, log1)
      assert.strictEqual(t.finishReason, "done")
      assert.strictEqual(t.reward, 1)
      assert.strictEqual(t.numTurns, 3)
      assert.isUndefined(t.sequences)
      assert.deepStrictEqual(t.turns.map((turn) => turn.role), ["assistant", "tool", "assistant", "tool", "assistant"])
      assert.deepStrictEqual(seen, ['{"dir": "up"}', '{"dir": "left"}', "done"])
      assert.deepStrictEqual(t.turnRewards, [0, 0, 1])
    }).pipe(Effect.provide(layerOf((context) => toolResponses(context) < 2 ? `I move.\n${toolCall("move", toolResponses(context) === 0 ? '{"dir": "up"}' : '{"dir": "left"}')}` : "done", log1))))

  const log2 = newLog()
  it.effect("the AI SDK's generateText: parallel tool calls, a multi-step loop, one chain", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const moves: Array<string> = []
      const t = yield* play(async ({ openai, signal }) => {
        const provider = createOpenAICompatible({ name: "episodic", baseURL: openai.baseURL, apiKey: openai.apiKey })
        const result = await generateText({
          model: provider("policy"),
          system: "You play a grid.",
          prompt: "Reach the goal.",
          tools: {
            move: tool({
              description: "Move one step.",
              inputSchema: jsonSchema<{ dir: string }>({ type: "object", properties: { dir: { type: "string" } }, required: ["dir"] }),
              execute: async ({ dir }) => {
                moves.push(dir)
                return `moved ${dir}`
              }
            })
          },
          stopWhen: stepCountIs(5),
          maxRetries: 0,
          abortSignal: signal
        })
        return { reward: result.text === "arrived" ? 1 : 0, info: { steps: result.steps.length } }
      })
      check(t, tokenizer, log2)
      assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
      assert.deepStrictEqual(moves, ["up", "right", "down"])
      assert.strictEqual(t.reward, 1)
      assert.strictEqual(t.numTurns, 3)
      assert.isUndefined(t.sequences, "the AI SDK's re-sent history extends the record token for token")
    }).pipe(Effect.provide(layerOf((context) => {
      const n = toolResponses(context)
      return n === 0 ? `${toolCall("move", '{"dir": "up"}')}\n${toolCall("move", '{"dir": "right"}')}` : n === 2 ? toolCall("move", '{"dir": "down"}') : "arrived"
    }, log2))))

  const logLlama = newLog()
  it.effect("a template without tools (Llama 3's): tools in the system prompt, Llama's JSON calls round-trip token for token", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const moves: Array<string> = []
      const t = yield* play(async ({ openai }) => {
        const provider = createOpenAICompatible({ name: "episodic", baseURL: openai.baseURL, apiKey: openai.apiKey })
        const result = await generateText({
          model: provider("policy"),
          prompt: "Reach the goal.",
          tools: { move: tool({ description: "Move one step.", inputSchema: jsonSchema<{ dir: string }>({ type: "object", properties: { dir: { type: "string" } } }), execute: async ({ dir }) => (moves.push(dir), `moved ${dir}`) }) },
          stopWhen: stepCountIs(4),
          maxRetries: 0
        })
        return result.text === "arrived" ? 1 : 0
      })
      check(t, tokenizer, logLlama)
      assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
      assert.deepStrictEqual(moves, ["up", "left"])
      assert.isUndefined(t.sequences)
      assert.include(tokenizer.decode(t.promptIds), "<tools>")
    }).pipe(Effect.provide(layerOf((context) => {
      const n = context.split("moved ").length - 1
      return n === 0 ? '{"name": "move", "parameters": {"dir": "up"}}' : n === 1 ? `Next.\n${toolCall("move", '{"dir": "left"}')}` : "arrived"
    }, logLlama, "llama3"))))

  it("tool calls are read in the Hermes and Llama 3 formats; malformed ones stay text", () => {
    const id = (i: number) => `c${i}`
    assert.deepStrictEqual(AgentChat.parseReply('Go.\n<tool_call>\n{"name": "move", "arguments": {"dir": "up"}}\n</tool_call>', id), {
      content: "Go.",
      toolCalls: [{ id: "c0", type: "function", function: { name: "move", arguments: '{"dir": "up"}' } }]
    })
    assert.deepStrictEqual(AgentChat.parseReply('<|python_tag|>{"name": "move", "parameters": {"dir": "up"}}', id).toolCalls[0]?.function, { name: "move", arguments: '{"dir": "up"}' })
    assert.deepStrictEqual(AgentChat.parseReply("<tool_call>\n{not json}\n</tool_call>", id).toolCalls, [])
    assert.deepStrictEqual(AgentChat.parseReply("just text {", id), { content: "just text {", toolCalls: [] })
  })

  const log3 = newLog()
  it.effect("the AI SDK's streamText: a streamed tool call and a streamed answer", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const t = yield* play(async ({ openai }) => {
        const provider = createOpenAICompatible({ name: "episodic", baseURL: openai.baseURL, apiKey: openai.apiKey, includeUsage: true })
        const result = streamText({
          model: provider("policy"),
          prompt: "Reach the goal.",
          tools: { move: tool({ inputSchema: jsonSchema<{ dir: string }>({ type: "object", properties: { dir: { type: "string" } } }), execute: async ({ dir }) => `moved ${dir}` }) },
          stopWhen: stepCountIs(3),
          maxRetries: 0
        })
        let text = ""
        for await (const part of result.textStream) text += part
        return text === "arrived" ? 1 : 0
      })
      check(t, tokenizer, log3)
      assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
      assert.strictEqual(t.reward, 1)
      assert.strictEqual(t.numTurns, 2)
    }).pipe(Effect.provide(layerOf((context) => toolResponses(context) === 0 ? toolCall("move", '{"dir": "up"}') : "arrived", log3))))

  const log3b = newLog()
  let finishedAt: Array<number> = []
  it.effect("streamText gets the content token by token while it is generated; tool-call text is never streamed as content", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const parts: Array<{ readonly text: string; readonly at: number }> = []
      const t = yield* play(async ({ openai }) => {
        const provider = createOpenAICompatible({ name: "episodic", baseURL: openai.baseURL, apiKey: openai.apiKey, includeUsage: true })
        const result = streamText({
          model: provider("policy"),
          prompt: "Reach the goal.",
          tools: { move: tool({ inputSchema: jsonSchema<{ dir: string }>({ type: "object", properties: { dir: { type: "string" } } }), execute: async ({ dir }) => `moved ${dir}` }) },
          stopWhen: stepCountIs(3),
          maxRetries: 0
        })
        for await (const part of result.textStream) parts.push({ text: part, at: performance.now() })
        return 1
      })
      check(t, tokenizer, log3b)
      assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
      assert.strictEqual(t.numTurns, 2)
      const [first, second] = t.turns.filter((turn) => turn.role === "assistant")
      // The first reply's content before its tool call, then the whole second reply, as the policy wrote them.
      assert.strictEqual(parts.map((p) => p.text).join(""), "Let me move." + second!.text)
      assert.strictEqual(first!.text, `Let me move.\n${toolCall("move", '{"dir": "up"}')}`)
      // Several pieces of each reply arrived before its generation ended.
      assert.strictEqual(finishedAt.length, 2)
      const early = (end: number, from: number) => parts.filter((p) => p.at >= from && p.at < end).length
      assert.isAbove(early(finishedAt[0]!, 0), 1)
      assert.isAbove(early(finishedAt[1]!, finishedAt[0]!), 3)
    }).pipe(Effect.provide(Layer.mergeAll(
      Layer.effect(
        Inference,
        Effect.gen(function*() {
          const tokenizer = yield* Tokenizer
          const stopId = tokenizer.stopTokenIds.at(-1)!
          finishedAt = []
          // A policy that produces its reply a token every 20 ms, telling onToken of each.
          return Inference.of({
            generate: (request, options) =>
              Effect.promise(async () => {
                const context = tokenizer.decode(request.contextIds, { skipSpecialTokens: false })
                log3b.contexts.push(request.contextIds)
                const text = toolResponses(context) === 0 ? `Let me move.\n${toolCall("move", '{"dir": "up"}')}` : "Arrived at the goal, three steps north of the start."
                log3b.texts.push(text)
                const ids = [...tokenizer.encode(text), stopId]
                for (const id of ids) {
                  await new Promise((resolve) => setTimeout(resolve, 20))
                  options?.onToken?.(id, -0.5)
                }
                finishedAt.push(performance.now())
                return new GenerationResult({ tokenIds: ids, logprobs: ids.map(() => -0.5), finishReason: "eos", policyVersion: 0 })
              })
          })
        })
      ),
      AgentGateway.layer()
    ).pipe(Layer.provideMerge(Tokenizer.layer(tokenizerDirs.qwen3))))))

  it("settledContent holds back what may still become a tool call", () => {
    assert.strictEqual(AgentChat.settledContent("Hello wor"), "Hello wor")
    assert.strictEqual(AgentChat.settledContent("Hello\n<tool_"), "Hello")
    assert.strictEqual(AgentChat.settledContent("Hello\n<tool_call>\n{"), "Hello")
    assert.strictEqual(AgentChat.settledContent("Hi <b>"), "Hi <b>")
    assert.strictEqual(AgentChat.settledContent(" {\"name\""), "")
    assert.strictEqual(AgentChat.settledContent("<|python"), "")
    assert.strictEqual(AgentChat.settledContent("caf\uFFFD"), "caf")
  })

  const log4 = newLog()
  it.effect("an agent that rewrites its history: each token-consistent chain is kept as its own sequence", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const t = yield* play(async ({ openai }) => {
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
        const first = await client.chat.completions.create({ model: "p", messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "one" }] })
        const second = await client.chat.completions.create({
          model: "p",
          messages: [{ role: "system", content: "Be brief." }, { role: "user", content: "one" }, first.choices[0]!.message as OpenAI.ChatCompletionMessageParam, { role: "user", content: "two" }]
        })
        // Edits the system prompt and drops the old turns: a new chain.
        await client.chat.completions.create({
          model: "p",
          messages: [{ role: "system", content: "Be very brief." }, { role: "user", content: `summary: ${second.choices[0]!.message.content}` }]
        })
        return 0.5
      })
      check(t, tokenizer, log4)
      assert.strictEqual(t.finishReason, "done")
      assert.strictEqual(t.sequences?.length, 1)
      assert.strictEqual(t.sequences![0]!.turns.filter((turn) => turn.role === "assistant").length, 2)
      assert.strictEqual(t.numTurns, 1)
      assert.strictEqual(t.reward, 0.5)
      assert.include(t.messages[0]!.content, "Be very brief.")
    }).pipe(Effect.provide(layerOf((context) => `reply ${context.length}`, log4))))

  const log5 = newLog()
  it.effect("an agent that throws ends env_error with its error; an ended episode's URL is gone; one that never calls the model says so", () =>
    Effect.gen(function*() {
      const thrown = yield* play(async ({ openai }) => {
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
        await client.chat.completions.create({ model: "p", messages: [{ role: "user", content: "hi" }] })
        throw new TypeError("the agent's tool broke")
      })
      assert.strictEqual(thrown.finishReason, "env_error")
      assert.deepStrictEqual(thrown.error, { type: "TypeError", message: "the agent's tool broke" })
      assert.strictEqual(thrown.numTurns, 1)
      let baseURL = ""
      let modelsWhileRunning = 0
      yield* play(async ({ openai }) => {
        baseURL = openai.baseURL
        modelsWhileRunning = (await fetch(`${openai.baseURL}/models`)).status
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
        await client.chat.completions.create({ model: "p", messages: [{ role: "user", content: "hi" }] })
        return 0
      })
      assert.strictEqual(modelsWhileRunning, 200)
      const after = yield* Effect.promise(() => fetch(`${baseURL}/chat/completions`, { method: "POST", body: "{}" }))
      assert.strictEqual(after.status, 404, "an ended episode's URL answers 404")
      const idle = yield* play(() => 1)
      assert.strictEqual(idle.finishReason, "env_error")
      assert.strictEqual(idle.error?.type, "AgentMadeNoCalls")
      assert.deepStrictEqual([idle.promptIds, idle.responseIds, idle.turns], [[], [], []])
    }).pipe(Effect.provide(layerOf(() => "ok", log5))))

  const log6 = newLog()
  it.effect("an agent that hangs past the time limit: the episode ends timeout, its signal fires, a call in flight is aborted", () =>
    Effect.gen(function*() {
      let aborted = false
      const hung = yield* play(async ({ openai, signal }) => {
        signal.addEventListener("abort", () => (aborted = true))
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
        await client.chat.completions.create({ model: "p", messages: [{ role: "user", content: "quick" }] })
        await new Promise<void>((resolve) => signal.addEventListener("abort", () => resolve()))
        return 1
      }, { timeoutMs: 500 })
      assert.strictEqual(hung.finishReason, "timeout")
      assert.strictEqual(hung.numTurns, 1)
      assert.isTrue(aborted)
      let callError = ""
      const inFlight = yield* play(async ({ openai }) => {
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0, timeout: 10_000 })
        try {
          await client.chat.completions.create({ model: "p", messages: [{ role: "user", content: "slow" }] })
        } catch (cause) {
          callError = String(cause)
        }
        return 0
      }, { timeoutMs: 500 })
      assert.strictEqual(inFlight.finishReason, "timeout")
      assert.strictEqual(inFlight.numTurns, 0)
      // The record is written when the episode ends; the agent's call fails soon after.
      yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 200)))
      assert.match(callError, /409|ended|aborted|Error/)
    }).pipe(Effect.provide(layerOf((context, signal) =>
      context.includes("slow")
        ? new Promise<string>((_, reject) => {
          const timer = setTimeout(() => reject(new Error("unreachable")), 5_000)
          signal.addEventListener("abort", () => {
            clearTimeout(timer)
            reject(new Error("aborted"))
          })
        })
        : "fine", log6))))

  const log7 = newLog()
  it.effect("two hundred agents at once", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const records = yield* Effect.forEach(
        Array.from({ length: 200 }, (_, i) => i),
        (i) =>
          play(async ({ openai }) => {
            const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
            const messages: Array<OpenAI.ChatCompletionMessageParam> = [{ role: "user", content: `agent ${i}` }]
            const a = await client.chat.completions.create({ model: "p", messages, tools: [moveTool] })
            messages.push(a.choices[0]!.message, { role: "tool", tool_call_id: a.choices[0]!.message.tool_calls![0]!.id, content: "ok" })
            const b = await client.chat.completions.create({ model: "p", messages, tools: [moveTool] })
            return b.choices[0]!.message.content === "done" ? 1 : 0
          }),
        { concurrency: "unbounded" }
      )
      for (const t of records) {
        assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
        assert.strictEqual(t.reward, 1)
        assert.isUndefined(t.sequences)
      }
      check({ ...records[0]!, sequences: records.slice(1) }, tokenizer, log7)
    }).pipe(Effect.provide(layerOf((context) => toolResponses(context) === 0 ? toolCall("move", '{"dir": "up"}') : "done", log7))), 60_000)
})

describe("an engine whose experiment gives an agent", () => {
  it("an experiment may give an agent beside its rows", () => {
    const experiment = resolve(defineExperiment({ name: "agent", model: "models/x", agent: () => 1, environment: { name: "grid-quest", episodes: 2 } }))
    assert.strictEqual(experiment.environment?.episodes, 2)
  })

  const log = newLog()
  it.effect("runs the agent once per episode, a GRPO group per row", () =>
    Effect.gen(function*() {
      const engine = yield* Engine
      const rows = Array.from({ length: 3 }, (_, i) => ({ ...row, extra_info: { ...row.extra_info, seed: i } }) as DatasetRow)
      const records = yield* engine.run(Stream.fromIterable(rows)).pipe(Stream.runCollect)
      assert.strictEqual(records.length, 6)
      for (const t of records) {
        assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
        assert.strictEqual(t.reward, t.seed)
      }
      assert.strictEqual(new Set(records.map((t) => t.groupId)).size, 3)
    }).pipe(Effect.provide(Engine.layer({
      environments: new EnvironmentRegistry(),
      concurrency: 4,
      samplesPerRow: 2,
      limits: limits(),
      sampling,
      envCallTimeoutMs: 1_000,
      seed: 0,
      bufferCapacity: 8,
      agent: async ({ openai, seed }) => {
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
        await client.chat.completions.create({ model: "p", messages: [{ role: "user", content: `seed ${seed}` }] })
        return seed
      }
    })), Effect.provide(Layer.mergeAll(scripted(() => "ok", log)).pipe(Layer.provideMerge(Tokenizer.layer(tokenizerDirs.qwen3))))))
})

describe("experiments/agent-grid-quest.ts", () => {
  it.effect("the AI-SDK agent, answered by the solver's demonstrations through its endpoint, wins every game in one chain", () =>
    Effect.gen(function*() {
      const engine = yield* Engine
      const rows = gridQuest.rows!({ seed: 7, count: 4, config: {} })
      const records = yield* engine.run(Stream.fromIterable(rows)).pipe(Stream.runCollect)
      assert.strictEqual(records.length, 4)
      for (const t of records) {
        assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
        assert.strictEqual(t.turns.findLast((turn) => turn.role === "assistant")?.info?.["success"], true)
        assert.isUndefined(t.sequences, "each game is one token-consistent chain")
        assert.isBelow(t.promptIds.length + t.responseIds.length, 1024, "it fits the micro model's context")
        // A tool call is one token of that tokenizer (and its end-of-turn token).
        for (const turn of t.turns.filter((turn) => turn.role === "assistant")) assert.strictEqual(turn.tokenEnd - turn.tokenStart, 2)
      }
    }).pipe(Effect.provide(Layer.unwrap(Effect.promise(async () => {
      const { agent, demonstrations, default: experiment } = await import("../experiments/agent-grid-quest.ts")
      // The experiment's own model (its tokenizer knows tool calls), made as `episodic run` makes it.
      const { initModel } = await import("../src/model/init.ts")
      const model = path.join(tmpdir(), `episodic-test-agent-grid-quest-${process.pid}`)
      await initModel(model, experiment.modelInit!)
      return Engine.layer({
        environments: new EnvironmentRegistry(),
        concurrency: 4,
        samplesPerRow: 1,
        limits: limits(experiment.limits),
        sampling,
        envCallTimeoutMs: 1_000,
        seed: 0,
        bufferCapacity: 8,
        agent
      }).pipe(Layer.provideMerge(TextPolicy.layer(demonstrations)), Layer.provideMerge(Tokenizer.layer(model)))
    })))), 120_000)
})

describe("an agent on the tiny model through the inference actor", () => {
  /** The actor itself (its counters tell whether it stopped decoding), as the run's Inference. */
  const withActor = <A, E>(use: (actor: InferenceActorHandle) => Effect.Effect<A, E, Inference | AgentGateway | Tokenizer>) =>
    Effect.gen(function*() {
      const model = yield* Effect.promise(() => tinyModel())
      const actor = yield* Effect.acquireRelease(Effect.promise(() => InferenceActor.start({ model, maxBatchSize: 4 })), (actor) => Effect.promise(() => actor.close()))
      return yield* use(actor).pipe(Effect.provide(
        Layer.mergeAll(Layer.succeed(Inference, InferenceActor.service(actor)), AgentGateway.layer()).pipe(Layer.provideMerge(Tokenizer.layer(model)))
      ))
    }).pipe(Effect.scoped)

  it.effect("a streamed call through the actor arrives token by token, and its text is the record's mask-1 text", () =>
    withActor((actor) =>
      Effect.gen(function*() {
        const tokenizer = yield* Tokenizer
        const chunks: Array<string> = []
        let finish: string | null = null
        const t = yield* play(async ({ openai }) => {
          const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
          const stream = await client.chat.completions.create({ model: "p", messages: [{ role: "user", content: "Reach the goal." }], stream: true })
          for await (const chunk of stream) {
            const choice = chunk.choices[0]
            if (choice?.delta.content) chunks.push(choice.delta.content)
            if (choice?.finish_reason) finish = choice.finish_reason
          }
          return 0
        }, { maxNewTokens: 48 })
        assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
        const generated = t.responseIds.filter((_, i) => t.responseMask[i] === 1)
        assert.strictEqual(chunks.join(""), tokenizer.decode(generated))
        // Token by token: many content chunks, not one at the end.
        assert.isAbove(chunks.length, 5)
        assert.include(["length", "stop"], finish)
        const stats = yield* Effect.promise(() => actor.stats())
        assert.strictEqual(stats.generatedTokens, generated.length)
      })
    ), 120_000)

  it.effect("a client that disconnects mid-call aborts its generation: the actor stops, the turn is recorded aborted", () =>
    withActor((actor) =>
      Effect.gen(function*() {
        const maxNewTokens = 800
        let received = 0
        let error = ""
        const t = yield* play(async ({ openai }) => {
          const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
          const controller = new AbortController()
          try {
            const stream = await client.chat.completions.create(
              { model: "p", messages: [{ role: "user", content: "Reach the goal." }], stream: true },
              { signal: controller.signal }
            )
            for await (const chunk of stream) {
              if (chunk.choices[0]?.delta.content) received += 1
              // The client goes away after a few pieces of the answer.
              if (received === 3) controller.abort()
            }
          } catch (cause) {
            error = String(cause)
          }
          // The next call waits for the aborted one to settle: the record then holds both.
          await client.chat.completions.create({ model: "p", messages: [{ role: "user", content: "again" }], max_tokens: 2 })
          return 0
        }, { maxNewTokens, maxResponseTokens: 2 * maxNewTokens })
        // The openai client ends an aborted stream quietly (or throws an abort error).
        assert.isAtLeast(received, 3)
        assert.isTrue(error === "" || /abort/i.test(error), error)
        assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
        const turns = [t, ...(t.sequences ?? [])].flatMap((s) => s.turns.filter((turn) => turn.role === "assistant"))
        assert.strictEqual(turns.length, 2)
        const aborted = turns.find((turn) => turn.info?.["finishReason"] === "aborted")
        assert.isDefined(aborted)
        const abortedTokens = aborted!.tokenEnd - aborted!.tokenStart
        assert.isAtLeast(abortedTokens, 3)
        assert.isBelow(abortedTokens, maxNewTokens / 4)
        // The actor decoded no more than the record holds: it stopped that row when the client went away.
        const generated = turns.reduce((n, turn) => n + turn.tokenEnd - turn.tokenStart, 0)
        const stats = yield* Effect.promise(() => actor.stats())
        assert.strictEqual(stats.generatedTokens, generated)
      })
    ), 120_000)

  it.effect("the reply the agent receives is the record's mask-1 text", () =>
    Effect.gen(function*() {
      const tokenizer = yield* Tokenizer
      const received: Array<string> = []
      const t = yield* play(async ({ openai }) => {
        const client = new OpenAI({ baseURL: openai.baseURL, apiKey: openai.apiKey, maxRetries: 0 })
        const messages: Array<OpenAI.ChatCompletionMessageParam> = [{ role: "user", content: "Reach the goal." }]
        for (let i = 0; i < 2; i++) {
          const reply = await client.chat.completions.create({ model: "p", messages, max_tokens: 8, logprobs: true })
          received.push(reply.choices[0]!.message.content ?? "")
          messages.push({ role: "assistant", content: reply.choices[0]!.message.content ?? "" }, { role: "user", content: "again" })
        }
        return 0
      }, { maxNewTokens: 8 })
      assert.strictEqual(t.finishReason, "done", JSON.stringify(t.error))
      assert.strictEqual(Trajectory.violation(t), undefined)
      const sequences = [t, ...(t.sequences ?? [])]
      const texts = sequences.flatMap((s) => s.turns.filter((turn) => turn.role === "assistant").map((turn) => tokenizer.decode(s.responseIds.slice(turn.tokenStart, turn.tokenEnd))))
      assert.strictEqual(texts.length, 2)
      for (const text of received) assert.include(texts, text)
      assert.isTrue(sequences.every((s) => s.responseLogprobs.every((lp, i) => s.responseMask[i] === 1 ? lp <= 0 : lp === 0)))
    }).pipe(Effect.provide(Layer.unwrap(Effect.promise(async () => {
      const model = await tinyModel()
      return Layer.mergeAll(InferenceActor.layer({ model, maxBatchSize: 4 }), AgentGateway.layer()).pipe(Layer.provideMerge(Tokenizer.layer(model)))
    })))), 120_000)
})
