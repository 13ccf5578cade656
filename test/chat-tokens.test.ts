/**
 * OpenEnv's chat_env, token actions over the wire both ways, on loopback:
 * - `serve-env chat --tokenizer` answers what OpenEnv's Python ChatEnv client reads (`_step_payload`,
 *   `_parse_result`, `_parse_state`), with OpenEnv's schema and 422s;
 * - the engine, with the project's tiny model sampling, plays a served chat over WebSocket and HTTP: the
 *   records are exactly the in-process chat's (transforms run on the server as they run in-process), and
 *   the environment's tokens agree with the record;
 * - the engine drives a test double of OpenEnv's own chat_env server: it receives each turn's token ids as
 *   sampled, and its system prompt and transform's reward reach the record;
 * - a server given another tokenizer than the policy's is reported: a warning naming the episode and the
 *   position, token_drift in the turn's info, token_drift_episodes in metrics.jsonl and summary.json.
 */
import * as NodeWS from "@effect/platform-node/NodeWS"
import { Effect, Layer, Stream } from "effect"
import { spawn } from "node:child_process"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { InferenceActor } from "../actors/inference/index.ts"
import * as EnvServer from "../actors/env-server/index.ts"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { Engine } from "../src/Engine.ts"
import { chat, lengthReward } from "../src/environments/chat.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { resolve } from "../src/Experiment.ts"
import { SamplingParams } from "../src/Generation.ts"
import { chatJsonSchemas } from "../src/remote/ChatProtocol.ts"
import { remoteEnvironment } from "../src/remote/RemoteEnvironment.ts"
import * as Run from "../src/Run.ts"
import { load, Tokenizer } from "../src/Tokenizer.ts"
import type { Trajectory } from "../src/Trajectory.ts"
import { startOpenEnvChatServer } from "./openenv-chat-env.ts"
import { limits, tinyModel, tokenizerDirs } from "./support.ts"

const root = path.resolve(import.meta.dirname, "..")
const followUps = ["Tell me more.", "Thanks! One last thing?"]
const signal = new AbortController().signal

let model: string
beforeAll(async () => {
  model = await tinyModel()
}, 120_000)

const servers: Array<{ close(): Promise<void> }> = []
afterAll(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()))
})

const serveChat = async (tokenizer: string, config: Record<string, unknown> = {}) => {
  const server = await EnvServer.start({ definition: chat, config, port: 0, tokenizer })
  servers.push(server)
  return server
}

const http = async (url: string, body?: unknown) => {
  const response = await fetch(url, {
    method: body === undefined ? "GET" : "POST",
    headers: { "content-type": "application/json" },
    ...(body === undefined ? {} : { body: JSON.stringify(body) })
  })
  return { status: response.status, body: (await response.json()) as any }
}

const connect = async (url: string) => {
  const socket = new NodeWS.WebSocket(`${url.replace("http", "ws")}/ws`)
  const inbox: Array<any> = []
  const waiters: Array<(message: any) => void> = []
  socket.on("message", (data) => {
    const message = JSON.parse(String(data))
    const waiter = waiters.shift()
    if (waiter) waiter(message)
    else inbox.push(message)
  })
  await new Promise((resolve, reject) => {
    socket.once("open", resolve)
    socket.once("error", reject)
  })
  return {
    socket,
    ask: (message: unknown) => {
      socket.send(JSON.stringify(message))
      return inbox.length > 0 ? Promise.resolve(inbox.shift()) : new Promise<any>((resolve) => waiters.push(resolve))
    }
  }
}

/** OpenEnv's ChatEnv client `_parse_result`, with pydantic's checks of ChatObservation's fields. */
const parseResult = (payload: any) => {
  const observation = payload.observation ?? {}
  expect(Array.isArray(observation.tokens) && observation.tokens.every(Number.isInteger)).toBe(true)
  expect(observation.messages.every((m: any) => typeof m.role === "string" && typeof m.content === "string")).toBe(true)
  expect(Object.keys(observation).sort()).toEqual(["messages", "tokens"])
  expect(typeof payload.done).toBe("boolean")
  expect(payload.reward === null || typeof payload.reward === "number").toBe(true)
  return { messages: observation.messages, tokens: observation.tokens as Array<number>, reward: payload.reward, done: payload.done }
}

/** `_parse_state`. */
const parseState = (payload: any) => {
  expect(payload.episode_id === null || typeof payload.episode_id === "string").toBe(true)
  expect(Number.isInteger(payload.step_count)).toBe(true)
  expect(payload.history_tokens.every((list: any) => Array.isArray(list) && list.every(Number.isInteger))).toBe(true)
  return payload as { episode_id: string | null; step_count: number; history_messages: Array<any>; history_tokens: Array<Array<number>> }
}

describe("serve-env chat --tokenizer: OpenEnv's chat_env shapes", () => {
  it("publishes chat_env's schemas and answers the ChatEnv client's messages over WebSocket", async () => {
    const server = await serveChat(model, { followUps, systemPrompt: "Be brief." })
    const tokenizer = await load(model)
    expect((await http(`${server.url}/schema`)).body).toEqual(chatJsonSchemas)

    const client = await connect(server.url)
    const reset = parseResult((await client.ask({ type: "reset", data: {} })).data)
    expect(reset.messages).toEqual([{ role: "system", content: "Be brief." }, { role: "user", content: "Hello! How can you help me today?" }])
    expect(reset.tokens).toEqual(tokenizer.renderPrompt(reset.messages))
    expect(reset).toMatchObject({ reward: null, done: false })

    // `_step_payload`: {tokens, metadata}; a tensor's tolist() may nest, and the server flattens it.
    const action = tokenizer.encode("Hi there")
    const flat = [...action, ...tokenizer.stopTokenIds.slice(-1)]
    const step = parseResult((await client.ask({ type: "step", data: { tokens: [flat.slice(0, 2), flat.slice(2)], metadata: {} } })).data)
    expect(step.messages.slice(2)).toEqual([{ role: "assistant", content: "Hi there" }, { role: "user", content: "Tell me more." }])
    const delta = tokenizer.appendMessage({ role: "user", content: "Tell me more." }, flat)
    expect(step.tokens).toEqual([...reset.tokens, ...flat, ...delta])
    expect(step.done).toBe(false)

    const state = parseState((await client.ask({ type: "state" })).data)
    expect(state.step_count).toBe(1)
    expect(state.history_messages).toEqual(step.messages)
    expect(state.history_tokens.flat()).toEqual(step.tokens)

    const invalid = (await client.ask({ type: "step", data: { tokens: [[]] } })).data
    expect(invalid).toMatchObject({ code: "VALIDATION_ERROR" })
    expect(invalid.errors).toEqual([{ loc: ["data", "tokens"], msg: "List should have at least 1 item after validation, not 0", type: "value_error" }])
    client.socket.close()
  })

  it("answers the same shapes over HTTP sessions, and 422s as FastAPI does: text actions, empty and non-integer tokens", async () => {
    const server = await serveChat(model, { followUps })
    const reset = await http(`${server.url}/reset`, {})
    expect(Object.keys(reset.body.observation).sort()).toEqual(["messages", "tokens"])
    const session = reset.body.session_id
    const bad = async (action: unknown) => (await http(`${server.url}/step`, { session_id: session, action }))
    const text = await bad({ message: "hi" })
    expect(text.status).toBe(422)
    expect(text.body.detail.map((problem: any) => problem.loc)).toEqual(expect.arrayContaining([["body", "action", "tokens"], ["body", "action", "message"]]))
    const empty = await bad({ tokens: [] })
    expect(empty.status).toBe(422)
    expect(empty.body.detail).toEqual([{ loc: ["body", "action", "tokens"], msg: "List should have at least 1 item after validation, not 0", type: "value_error" }])
    const fractional = await bad({ tokens: [5, 1.5] })
    expect(fractional.status).toBe(422)
    expect(fractional.body.detail[0].loc).toEqual(["body", "action", "tokens", 1])
    const ok = await bad({ tokens: [5, 6] })
    expect(ok.status).toBe(200)
    expect(parseResult(ok.body).messages.at(-1)).toEqual({ role: "user", content: "Tell me more." })
    expect(parseState((await http(`${server.url}/state?session_id=${session}`)).body).step_count).toBe(1)
  })
})

const sampling = new SamplingParams({ ...SamplingParams.defaults, temperature: 1, topP: 1, topK: 0, maxNewTokens: 12 })

/** The engine with the tiny model sampling at temperature 1 (its seeds are per row and turn, so runs repeat). */
const runEngine = (rows: ReadonlyArray<DatasetRow>, environmentConfig: Record<string, Record<string, unknown>>, registry = EnvironmentRegistry.builtins()) =>
  Effect.runPromise(
    Effect.gen(function*() {
      const engine = yield* Engine
      const trajectories = Array.from(yield* Stream.runCollect(engine.run(Stream.fromIterable(rows))))
      return trajectories.sort((a, b) => Number(a.id.split("-")[0]) - Number(b.id.split("-")[0]))
    }).pipe(
      Effect.provide(
        Engine.layer({
          environments: registry,
          environmentConfig,
          concurrency: 4,
          samplesPerRow: 1,
          limits: limits({ maxTurns: 3, maxNewTokens: 12 }),
          sampling,
          envCallTimeoutMs: 30_000,
          seed: 0,
          bufferCapacity: 16
        }).pipe(Layer.provideMerge(InferenceActor.layer({ model })), Layer.provideMerge(Tokenizer.layer(model)))
      )
    )
  )

/** What must be equal between two runs of the same rows: every token, mask, message and reward. */
const essence = (trajectory: Trajectory) => ({
  messages: trajectory.messages,
  promptIds: trajectory.promptIds,
  responseIds: trajectory.responseIds,
  responseMask: trajectory.responseMask,
  turnRewards: trajectory.turnRewards,
  finishReason: trajectory.finishReason,
  turns: trajectory.turns.map(({ role, text, tokenStart, tokenEnd, reward }) => ({ role, text, tokenStart, tokenEnd, reward }))
})

const assistantSpans = (trajectory: Trajectory) =>
  trajectory.turns.filter((turn) => turn.role === "assistant").map((turn) => trajectory.responseIds.slice(turn.tokenStart, turn.tokenEnd))

const hasDrift = (trajectory: Trajectory) => trajectory.turns.some((turn) => turn.info?.["token_drift"] !== undefined)

describe("the engine against chat_env servers", () => {
  it("plays a served chat with token actions over WebSocket and HTTP: records exact, transforms paid on the server, no drift", async () => {
    const config = { followUps, transforms: [lengthReward(0.01)] }
    const local = chat.rows!({ seed: 5, count: 6, config })
    const expected = await runEngine(local, { chat: config })
    const server = await serveChat(model, config)
    for (const transport of ["websocket", "http"] as const) {
      const rows = local.map((row) => ({ ...row, extra_info: { ...row.extra_info, interaction_kwargs: { name: server.url } } }))
      const remote = await runEngine(rows, { [server.url]: { transport } })
      expect(remote.map(essence)).toEqual(expected.map(essence))
      expect(remote.every((trajectory) => trajectory.finishReason === "done" && trajectory.numTurns === 3)).toBe(true)
      expect(remote.some((trajectory) => trajectory.reward > 0)).toBe(true)
      expect(remote.filter(hasDrift)).toEqual([])
    }
  }, 120_000)

  it("drives OpenEnv's own chat_env: the turn's sampled ids go out as they are, its system prompt and transform reach the record", async () => {
    const double = await startOpenEnvChatServer({
      tokenizer: model,
      systemPrompt: "You are terse.",
      // OpenEnv's LengthRewardTransform.
      transform: (observation) => ({ ...observation, reward: (observation.messages.at(-1)?.content.length ?? 0) * 0.1 })
    })
    servers.push(double)
    const rows: Array<DatasetRow> = ["Name three colours.", "What is 2 + 2?", "Say hello."].map((content, i) => ({
      prompt: [{ role: "user", content }],
      extra_info: { interaction_kwargs: { name: double.url }, seed: 40 + i }
    }))
    const trajectories = await runEngine(rows, {})
    expect(trajectories.map((trajectory) => trajectory.finishReason)).toEqual(["max_turns", "max_turns", "max_turns"])
    const sent = trajectories.flatMap(assistantSpans)
    expect([...double.actions].sort()).toEqual([...sent].sort())
    const tokenizer = await load(model)
    // Some sampled turns are not what encoding their text gives: re-encoded text would not have passed.
    const reencoded = sent.map((span) => tokenizer.encode(tokenizer.decode(span, { skipSpecialTokens: false })))
    expect(sent.some((span, i) => JSON.stringify(span) !== JSON.stringify(reencoded[i]))).toBe(true)
    for (const trajectory of trajectories) {
      expect(trajectory.messages.slice(0, 2)).toEqual([{ role: "system", content: "You are terse." }, trajectory.messages[1]])
      const assistant = trajectory.turns.filter((turn) => turn.role === "assistant")
      expect(trajectory.turnRewards).toEqual(assistant.map((turn) => turn.text.length * 0.1))
      // ChatEnvironment adds nothing after the assistant's message: each observation is empty.
      expect(trajectory.turns.filter((turn) => turn.role === "user").map((turn) => turn.text)).toEqual(["", "", ""])
      // It never hears the row's prompt, so its tokens part from the record where the user turn starts.
      const systemTokens = tokenizer.renderPrompt([{ role: "system", content: "You are terse." }]).length - tokenizer.renderPrompt([]).length
      expect(assistant[0]!.info?.["token_drift"]).toMatchObject({ position: systemTokens })
    }

    // Text actions to it are refused as OpenEnv refuses them, and the episode says why.
    const text = remoteEnvironment(double.url, { actionKey: "message", retries: 0 }).make({})
    await text.reset({ seed: 0, row: rows[0]!, signal })
    await expect(text.step("hello", { signal })).rejects.toThrow(/VALIDATION_ERROR: Invalid message/)
    await text.close?.()
    // Its HTTP endpoints are stateless, as OpenEnv's are: FastAPI's 422 for a bad action, and no sessions.
    const response = await http(`${double.url}/step`, { action: { tokens: [] } })
    expect(response).toEqual({ status: 422, body: { detail: [expect.objectContaining({ type: "too_short", loc: ["tokens"] })] } })
    const overHttp = remoteEnvironment(double.url, { transport: "http", retries: 0 }).make({})
    await expect(overHttp.reset({ seed: 0, row: rows[0]!, signal })).rejects.toThrow(/stateless, use the WebSocket transport/)
  }, 120_000)

  it("says so when the server's tokenizer is not the policy's: a warning, token_drift in the record, and the metric", async () => {
    const child = spawn(process.execPath, [path.join(root, "bin", "episodic.js"), "serve-env", "chat", "--port", "0", "--tokenizer", tokenizerDirs.qwen3], {
      cwd: root,
      stdio: ["ignore", "pipe", "pipe"]
    })
    servers.push({ close: async () => void child.kill("SIGTERM") })
    const url = await new Promise<string>((resolve, reject) => {
      let stdout = ""
      const timer = setTimeout(() => reject(new Error(`serve-env did not start: ${stdout}`)), 60_000)
      child.stdout!.on("data", (chunk) => {
        stdout += chunk
        const found = /listening on (http:\/\/\S+)/.exec(stdout)?.[1]
        if (found !== undefined) {
          clearTimeout(timer)
          resolve(found)
        }
      })
      child.on("exit", (code) => reject(new Error(`serve-env exited with ${code}`)))
    })
    const out = mkdtempSync(path.join(tmpdir(), "episodic-drift-"))
    const config = {
      name: "drift",
      model,
      environment: { name: url, episodes: 4 },
      concurrency: 4,
      limits: { maxTurns: 2, maxNewTokens: 8, maxResponseTokens: 256, timeoutMs: 60_000 },
      out
    }
    const logs: Array<string> = []
    const { directory, summary } = await Effect.runPromise(Run.run(resolve(config), config, { onLog: (line) => logs.push(line) }))
    const records = readFileSync(path.join(directory, "trajectories.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line))
    expect(records).toHaveLength(4)
    const drifts = records.map((record) => record.turns[0].info?.token_drift)
    expect(drifts.every((drift) => drift?.position === 0 && drift.environment_token !== drift.policy_token)).toBe(true)
    expect(logs.filter((line) => line.startsWith("warning:"))).toEqual([expect.stringMatching(/^warning: episode \S+ \(http:\/\/127\.0\.0\.1:\d+\): the environment's tokens differ from the policy's at position 0 /)])
    const metrics = readFileSync(path.join(directory, "metrics.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line))
    expect(metrics.at(-1).token_drift_episodes).toBe(4)
    expect(summary.token_drift_episodes).toBe(4)
  }, 120_000)
})
