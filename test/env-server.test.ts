/**
 * The env server as clients meet it, on loopback: OpenEnv's HTTP endpoints and WebSocket messages, schema
 * checks answered with 422 naming each bad field, the capacity limit, idle reaping, the bearer token, the
 * body limit, and bad requests that leave the server and every other session as they were.
 */
import * as NodeWS from "@effect/platform-node/NodeWS"
import { mkdtempSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterEach, describe, expect, it } from "vitest"
import * as EnvServer from "../actors/env-server/index.ts"
import { define } from "../src/Environment.ts"
import { gridQuest } from "../src/environments/gridQuest.ts"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Echoes the action; "throw" throws, "sleep N" answers after N ms, "finish" ends the episode. */
const probe = define({
  name: "probe",
  description: "echoes actions, and misbehaves on request",
  make: () => ({
    reset: ({ seed, row }) => ({ observation: `seed ${seed} kwargs ${JSON.stringify(row.extra_info.interaction_kwargs)}` }),
    step: async (action) => {
      if (action === "throw") throw new Error("probe exploded")
      const sleepMs = /^sleep (\d+)$/.exec(action)?.[1]
      if (sleepMs !== undefined) await sleep(Number(sleepMs))
      return { observation: `echo ${action}`, reward: 1, done: action === "finish", info: { length: action.length } }
    }
  })
})

const servers: Array<{ close(): Promise<void> }> = []
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()))
})

const serve = async (options: Partial<EnvServer.EnvServerOptions> = {}) => {
  const server = await EnvServer.start({ definition: probe, port: 0, ...options })
  servers.push(server)
  return server
}

const http = async (url: string, path: string, body?: unknown, headers: Record<string, string> = {}) => {
  const response = await fetch(`${url}${path}`, {
    method: body === undefined ? "GET" : "POST",
    headers: { "content-type": "application/json", ...headers },
    ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) })
  })
  return { status: response.status, body: await response.json() as any }
}

/** A WebSocket client that queues what the server says. */
const connect = async (url: string, headers: Record<string, string> = {}) => {
  const socket = new NodeWS.WebSocket(`${url.replace("http", "ws")}/ws`, { headers })
  const inbox: Array<any> = []
  const waiters: Array<(message: any) => void> = []
  socket.on("message", (data) => {
    const message = JSON.parse(String(data))
    const waiter = waiters.shift()
    if (waiter) waiter(message)
    else inbox.push(message)
  })
  const closed = new Promise<{ code: number; reason: string }>((resolve) =>
    socket.on("close", (code, reason) => resolve({ code, reason: reason.toString() }))
  )
  await new Promise((resolve, reject) => {
    socket.once("open", resolve)
    socket.once("error", reject)
  })
  const next = () => (inbox.length > 0 ? Promise.resolve(inbox.shift()) : new Promise<any>((resolve) => waiters.push(resolve)))
  return {
    socket,
    closed,
    next,
    ask: (message: unknown) => {
      socket.send(typeof message === "string" ? message : JSON.stringify(message))
      return next()
    }
  }
}

describe("env server over HTTP", () => {
  it("serves health, metadata and the JSON Schemas of action, observation and state", async () => {
    const server = await serve()
    expect((await http(server.url, "/health")).body).toEqual({ status: "healthy", active_sessions: 0, max_sessions: 1024 })
    expect((await http(server.url, "/metadata")).body).toEqual({ name: "probe", description: probe.description })
    const { body: schemas } = await http(server.url, "/schema")
    expect(schemas.action).toMatchObject({ type: "object", required: ["message"], additionalProperties: false })
    expect(schemas.observation.required).toEqual(["observation", "reward", "done"])
    expect(Object.keys(schemas.state.properties)).toEqual(["episode_id", "step_count", "session_id", "done", "total_reward"])
  })

  it("runs an episode with a session id: the same game as the environment in-process", async () => {
    const server = await serve({ definition: gridQuest })
    const local = gridQuest.make({})
    const signal = new AbortController().signal
    const [row] = gridQuest.rows!({ seed: 0, count: 1, config: {} })
    const localReset = await local.reset({ seed: 7, row: row!, signal })

    const reset = await http(server.url, "/reset", { seed: 7, episode_id: "e-7" })
    expect(reset.status).toBe(200)
    expect(reset.body).toMatchObject({ observation: { text: localReset.observation, system_prompt: localReset.systemPrompt }, reward: null, done: false })
    const sessionId = reset.body.session_id
    expect(sessionId).toMatch(/^[0-9a-f-]{36}$/)

    for (const action of ["move north", "move east", "dance"]) {
      const step = await http(server.url, "/step", { session_id: sessionId, action: { message: action } })
      const expected = await local.step(action, { signal })
      expect(step.body).toEqual({
        observation: { text: expected.observation, role: "user" },
        reward: expected.reward,
        done: expected.done,
        metadata: expected.info
      })
    }
    const state = await http(server.url, `/state?session_id=${sessionId}`)
    expect(state.body).toMatchObject({ episode_id: "e-7", step_count: 3, session_id: sessionId, done: false })
    expect((await http(server.url, "/close", { session_id: sessionId })).body).toEqual({ closed: true, session_id: sessionId })
    expect((await http(server.url, "/step", { session_id: sessionId, action: { message: "move north" } })).status).toBe(404)
    expect((await http(server.url, "/health")).body.active_sessions).toBe(0)
  })

  it("answers requests that break the schema with 422 naming every bad field", async () => {
    const server = await serve()
    const { body: { session_id } } = await http(server.url, "/reset", {})
    const cases: Array<[unknown, ReadonlyArray<ReadonlyArray<string>>]> = [
      [{ session_id, action: { message: 42 } }, [["body", "action", "message"]]],
      [{ session_id, action: { message: "hi", colour: "red" } }, [["body", "action", "colour"]]],
      [{ action: { message: "hi" } }, [["body", "session_id"]]],
      [{ session_id }, [["body", "action"]]],
      [{ session_id, action: { message: "hi" }, timeout_s: -1 }, [["body", "timeout_s"]]]
    ]
    for (const [body, locs] of cases) {
      const response = await http(server.url, "/step", body)
      expect(response.status, JSON.stringify(body)).toBe(422)
      expect(response.body.code).toBe("VALIDATION_ERROR")
      expect(response.body.detail.map((problem: { loc: unknown }) => problem.loc)).toEqual(locs)
    }
    const notJson = await http(server.url, "/step", "{not json")
    expect(notJson.status).toBe(422)
    expect(notJson.body.detail[0].msg).toMatch(/invalid JSON/)
    const badSeed = await http(server.url, "/reset", { seed: 1.5 })
    expect(badSeed.status).toBe(422)
    expect(badSeed.body.detail).toEqual([{ loc: ["body", "seed"], msg: expect.stringMatching(/integer/), type: "value_error" }])
  })

  it("refuses a body over the limit with 413, and a step before reset or after done with a clear error", async () => {
    const server = await serve({ maxBodyBytes: 1_000 })
    const big = await http(server.url, "/reset", { filler: "x".repeat(2_000) })
    expect(big.status).toBe(413)
    expect(big.body.detail).toMatch(/larger than the server's limit of 1000 bytes/)
    const { body: { session_id } } = await http(server.url, "/reset", {})
    expect((await http(server.url, "/step", { session_id, action: { message: "finish" } })).body.done).toBe(true)
    const after = await http(server.url, "/step", { session_id, action: { message: "again" } })
    expect(after).toEqual({ status: 500, body: { detail: expect.stringMatching(/the episode is done/), code: "EXECUTION_ERROR" } })
  })

  it("refuses a second request on a busy session with 409 instead of interleaving them", async () => {
    const server = await serve()
    const { body: { session_id } } = await http(server.url, "/reset", {})
    const slow = http(server.url, "/step", { session_id, action: { message: "sleep 300" } })
    await sleep(50)
    const second = await http(server.url, "/step", { session_id, action: { message: "hi" } })
    expect(second.status).toBe(409)
    expect(second.body.detail).toMatch(/busy/)
    expect((await slow).body.observation.text).toBe("echo sleep 300")
  })
})

describe("env server over WebSocket", () => {
  it("runs an episode, and answers bad messages with OpenEnv's error codes without ending the session", async () => {
    const server = await serve()
    const client = await connect(server.url)
    const reset = await client.ask({ type: "reset", data: { seed: 3, level: "easy" } })
    expect(reset).toEqual({
      type: "observation",
      data: { observation: { text: 'seed 3 kwargs {"level":"easy","name":"probe"}' }, reward: null, done: false }
    })
    expect(await client.ask("{oops")).toMatchObject({ type: "error", data: { code: "INVALID_JSON" } })
    expect(await client.ask({ type: "dance" })).toMatchObject({ type: "error", data: { code: "UNKNOWN_TYPE" } })
    const invalid = await client.ask({ type: "step", data: { msg: "hi" } })
    expect(invalid).toMatchObject({ type: "error", data: { code: "VALIDATION_ERROR" } })
    expect(invalid.data.errors.map((problem: { loc: unknown }) => problem.loc)).toEqual([["data", "msg"], ["data", "message"]])
    const thrown = await client.ask({ type: "step", data: { message: "throw" } })
    expect(thrown).toMatchObject({ type: "error", data: { code: "EXECUTION_ERROR", message: expect.stringMatching(/probe exploded/) } })

    const step = await client.ask({ type: "step", data: { message: "hello" } })
    expect(step).toEqual({
      type: "observation",
      data: { observation: { text: "echo hello", role: "user" }, reward: 1, done: false, metadata: { length: 5 } }
    })
    const state = await client.ask({ type: "state" })
    expect(state).toMatchObject({ type: "state", data: { step_count: 1, done: false, total_reward: 1 } })
    expect((await http(server.url, "/health")).body.active_sessions).toBe(1)
    client.socket.send(JSON.stringify({ type: "close" }))
    expect((await client.closed).code).toBe(1000)
    await sleep(20)
    expect((await http(server.url, "/health")).body.active_sessions).toBe(0)
  })

  it("answers pipelined messages one by one, in order", async () => {
    const server = await serve()
    const client = await connect(server.url)
    client.socket.send(JSON.stringify({ type: "reset" }))
    for (const action of ["sleep 40", "a", "sleep 10", "b"]) client.socket.send(JSON.stringify({ type: "step", data: { message: action } }))
    await client.next()
    const texts = []
    for (let i = 0; i < 4; i++) texts.push((await client.next()).data.observation.text)
    expect(texts).toEqual(["echo sleep 40", "echo a", "echo sleep 10", "echo b"])
  })

  it("refuses sessions past capacity with CAPACITY_REACHED, and takes new ones once there is room", async () => {
    const server = await serve({ maxSessions: 2 })
    const first = await connect(server.url)
    const { body: { session_id } } = await http(server.url, "/reset", {})
    const refused = await connect(server.url)
    expect(await refused.next()).toEqual({
      type: "error",
      data: { message: expect.stringMatching(/2 of 2 sessions/), code: "CAPACITY_REACHED", active_sessions: 2, max_sessions: 2 }
    })
    await refused.closed
    const overHttp = await http(server.url, "/reset", {})
    expect(overHttp.status).toBe(503)
    expect(overHttp.body).toMatchObject({ code: "CAPACITY_REACHED", active_sessions: 2, max_sessions: 2 })

    await http(server.url, "/close", { session_id })
    const admitted = await connect(server.url)
    expect(await admitted.ask({ type: "reset" })).toMatchObject({ type: "observation" })
    expect(await first.ask({ type: "reset" })).toMatchObject({ type: "observation" })
  })

  it("reaps idle sessions, closing their connections and forgetting their ids", async () => {
    const server = await serve({ idleTimeoutMs: 150 })
    const client = await connect(server.url)
    await client.ask({ type: "reset" })
    const { body: { session_id } } = await http(server.url, "/reset", {})
    const busy = await connect(server.url)
    await busy.ask({ type: "reset" })
    // One session keeps talking, so only the quiet ones are reaped.
    for (let i = 0; i < 8; i++) {
      await busy.ask({ type: "step", data: { message: "still here" } })
      await sleep(50)
    }
    expect(await client.closed).toEqual({ code: 1001, reason: "idle for more than 150 ms" })
    const gone = await http(server.url, "/step", { session_id, action: { message: "hi" } })
    expect(gone.status).toBe(404)
    expect(gone.body.detail).toMatch(/reaped after being idle/)
    expect(await busy.ask({ type: "state" })).toMatchObject({ type: "state", data: { step_count: 8 } })
    expect((await http(server.url, "/health")).body.active_sessions).toBe(1)
  })

  it("asks for the bearer token on every endpoint but /health, the WebSocket included", async () => {
    const server = await serve({ token: "s3cret" })
    expect((await http(server.url, "/health")).status).toBe(200)
    expect((await http(server.url, "/reset", {})).status).toBe(401)
    expect((await http(server.url, "/reset", {}, { authorization: "Bearer wrong" })).status).toBe(401)
    expect((await http(server.url, "/schema")).status).toBe(401)
    await expect(connect(server.url)).rejects.toThrow(/401/)
    await expect(connect(server.url, { authorization: "Bearer nope" })).rejects.toThrow(/401/)
    const ok = await http(server.url, "/reset", {}, { authorization: "Bearer s3cret" })
    expect(ok.status).toBe(200)
    const client = await connect(server.url, { authorization: "Bearer s3cret" })
    expect(await client.ask({ type: "reset" })).toMatchObject({ type: "observation" })
  })

  it("ends only the connection that sends a message over the size limit; other sessions go on", async () => {
    const server = await serve({ maxBodyBytes: 1_000 })
    const bystander = await connect(server.url)
    await bystander.ask({ type: "reset" })
    await bystander.ask({ type: "step", data: { message: "one" } })
    const offender = await connect(server.url)
    await offender.ask({ type: "reset" })
    offender.socket.send(JSON.stringify({ type: "step", data: { message: "x".repeat(5_000) } }))
    expect((await offender.closed).code).toBe(1009)
    // Garbage over HTTP too, in the middle of the bystander's episode.
    await http(server.url, "/step", "\u0000\u0001garbage")
    await http(server.url, "/reset", { seed: "nine" })
    expect(await bystander.ask({ type: "step", data: { message: "two" } })).toMatchObject({ data: { observation: { text: "echo two" } } })
    expect(await bystander.ask({ type: "state" })).toMatchObject({ data: { step_count: 2, total_reward: 2 } })
    expect((await http(server.url, "/health")).body).toMatchObject({ status: "healthy", active_sessions: 1 })
  })
})

describe("env server options", () => {
  it("serves the built-in environments by name, and users' own from a module", async () => {
    expect((await EnvServer.findEnvironment("grid-quest")).name).toBe("grid-quest")
    await expect(EnvServer.findEnvironment("chess")).rejects.toThrow(/unknown environment "chess"/)
    const dir = mkdtempSync(path.join(tmpdir(), "episodic-env-server-"))
    const module = path.join(dir, "coin.ts")
    writeFileSync(module, `export default [{ name: "coin", description: "heads wins", make: () => ({
  reset: () => ({ observation: "heads or tails?" }),
  step: (action) => ({ observation: "", reward: action === "heads" ? 1 : 0, done: true })
}) }]
`)
    const coin = await EnvServer.findEnvironment("coin", module)
    const server = await serve({ definition: coin })
    const { body: { session_id, observation } } = await http(server.url, "/reset", {})
    expect(observation.text).toBe("heads or tails?")
    expect((await http(server.url, "/step", { session_id, action: { message: "heads" } })).body).toMatchObject({ reward: 1, done: true })
    writeFileSync(path.join(dir, "bad.ts"), "export default 42\n")
    await expect(EnvServer.findEnvironment("coin", path.join(dir, "bad.ts"))).rejects.toThrow(/must default-export an environment definition/)
  })

  it("binds to 127.0.0.1 by default and names a bad option", async () => {
    const server = await serve()
    expect(server.host).toBe("127.0.0.1")
    expect(server.url).toBe(`http://127.0.0.1:${server.port}`)
    await expect(EnvServer.start({ definition: probe, port: 0, maxSessions: 0 })).rejects.toThrow(/maxSessions/)
    await expect(EnvServer.start({ definition: probe, port: server.port })).rejects.toThrow(/cannot listen on 127.0.0.1:\d+/)
  })
})
