/**
 * The remote clients against real servers on loopback: RemoteEnvironment (OpenEnv over WebSocket and over
 * HTTP sessions) against the env server, and GymEnvironment against the mock Gym server, each meeting a
 * slow reply, a broken reply, a 500, a refused connection, a full server and a hang-up. Each failure names
 * the call, the endpoint and the problem; only what is safe to retry is retried; the breaker opens after
 * repeated failures and lets episodes back once the server answers again.
 */
import * as NodeWS from "@effect/platform-node/NodeWS"
import { createServer } from "node:net"
import type { AddressInfo } from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import * as EnvServer from "../actors/env-server/index.ts"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { define, type Environment, type EnvironmentDefinition } from "../src/Environment.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { gymEnvironment } from "../src/remote/GymEnvironment.ts"
import { type Fault, startMockGymServer } from "../src/remote/mockGymServer.ts"
import { remoteEnvironment } from "../src/remote/RemoteEnvironment.ts"

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))
const signal = new AbortController().signal
const row = (name: string, seed = 0): DatasetRow => ({ prompt: [], extra_info: { interaction_kwargs: { name }, seed } })

/** Echoes the action; "throw" throws, "sleep N" answers after N ms. */
const probe = define({
  name: "probe",
  description: "echoes actions",
  make: () => ({
    reset: ({ seed }) => ({ observation: `seed ${seed}` }),
    step: async (action) => {
      if (action === "throw") throw new Error("probe exploded")
      const sleepMs = /^sleep (\d+)$/.exec(action)?.[1]
      if (sleepMs !== undefined) await sleep(Number(sleepMs))
      return { observation: `echo ${action}`, reward: 1, done: false }
    }
  })
})

const cleanups: Array<() => Promise<unknown> | void> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const serve = async (options: Partial<EnvServer.EnvServerOptions> = {}) => {
  const server = await EnvServer.start({ definition: probe, port: 0, ...options })
  cleanups.push(() => server.close())
  return server
}

const gym = async (options: Parameters<typeof startMockGymServer>[0] = {}) => {
  const server = await startMockGymServer(options)
  cleanups.push(() => server.close())
  return server
}

/** A port nothing listens on (it was free a moment ago). */
const freePort = async () => {
  const server = createServer()
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  const { port } = server.address() as AddressInfo
  await new Promise((resolve) => server.close(resolve))
  return port
}

const environment = <C>(definition: EnvironmentDefinition<C>, config: C): Environment => {
  const made = definition.make(config)
  cleanups.push(() => made.close?.())
  return made
}

/** Plays grid-quest with the solver; the rewards and observations of every step. */
const playGridQuest = async (env: Environment, seed: number) => {
  const reset = await env.reset({ seed, row: row("grid-quest", seed), signal })
  const trace: Array<unknown> = [reset.observation, reset.systemPrompt]
  let observation = reset.observation as string
  for (let done = false; !done; ) {
    const step = await env.step(solveGridQuest(observation), { signal })
    trace.push(step)
    observation = step.observation
    done = step.done
  }
  return trace
}

const fast = { timeoutMs: 2_000, retries: 2, backoffMs: 10, maxBackoffMs: 40 }

describe("RemoteEnvironment", () => {
  it.each(["websocket", "http"] as const)("plays a served grid-quest exactly as it plays in-process (%s)", async (transport) => {
    const server = await serve({ definition: gridQuest })
    const remote = remoteEnvironment(server.url, { transport })
    for (const seed of [1, 2, 3]) {
      const local = await playGridQuest(gridQuest.make({}), seed)
      const env = remote.make({})
      expect(await playGridQuest(env, seed)).toEqual(local)
      await env.close?.()
    }
    // Every episode closed its session.
    await sleep(20)
    expect(server.sessions.size()).toBe(0)
  })

  it("never reads a late reply as the answer to the next request", async () => {
    const server = await serve()
    const env = environment(remoteEnvironment(server.url, { ...fast, timeoutMs: 250 }), {})
    await env.reset({ seed: 1, row: row("probe"), signal })
    await expect(env.step("sleep 400", { signal })).rejects.toThrow(/^step http:\/\/127\.0\.0\.1:\d+: no reply within 250 ms$/)
    // The server answers "sleep 400" (at 400 ms) while this request waits; that reply must not be taken for this one's.
    expect((await env.step("after", { signal })).observation).toBe("echo after")
    expect((await env.step("again", { signal })).observation).toBe("echo again")
  })

  it("reports the server's own errors without retrying a step", async () => {
    const server = await serve()
    const env = environment(remoteEnvironment(server.url, fast), {})
    await env.reset({ seed: 1, row: row("probe"), signal })
    await expect(env.step("throw", { signal })).rejects.toThrow(/^step .*: server error EXECUTION_ERROR: step threw: probe exploded$/)
    expect((await env.step("fine", { signal })).observation).toBe("echo fine")
  })

  it("fails on a reply that is not JSON or not the protocol's shape, naming what is wrong", async () => {
    const wss = new NodeWS.WebSocketServer({ port: 0, host: "127.0.0.1" })
    await new Promise((resolve) => wss.once("listening", resolve))
    cleanups.push(() => new Promise((resolve) => wss.close(resolve)))
    wss.on("connection", (socket) =>
      socket.on("message", (data) => {
        const message = JSON.parse(String(data))
        if (message.type === "reset") socket.send(JSON.stringify({ type: "observation", data: { observation: { text: "hi" }, done: false } }))
        else if (message.data?.message === "garbage") socket.send("{not json")
        else if (message.data?.message === "shape") socket.send(JSON.stringify({ type: "observation", data: { observation: "flat", reward: "lots" } }))
      })
    )
    const url = `ws://127.0.0.1:${(wss.address() as AddressInfo).port}`
    const env = environment(remoteEnvironment(url, fast), {})
    expect(await env.reset({ seed: 1, row: row(url), signal })).toEqual({ observation: "hi" })
    await expect(env.step("garbage", { signal })).rejects.toThrow(/step ws:.*: the reply is not JSON: \{not json/)
    await expect(env.step("shape", { signal })).rejects.toThrow(/the reply is not what the protocol says: .*data\.observation: Expected/)
  })

  it("retries a refused connection with backoff, opens the breaker, and closes it once the server answers", async () => {
    const port = await freePort()
    const url = `http://127.0.0.1:${port}`
    const remote = remoteEnvironment(url, { ...fast, failureThreshold: 3, cooldownMs: 300 })
    await expect(environment(remote, {}).reset({ seed: 1, row: row(url), signal })).rejects.toThrow(
      /^reset http:\/\/127\.0\.0\.1:\d+: cannot connect \(ECONNREFUSED\) \(3 attempts\)$/
    )
    const started = Date.now()
    await expect(environment(remote, {}).reset({ seed: 1, row: row(url), signal })).rejects.toThrow(/circuit open after 3 consecutive failures/)
    expect(Date.now() - started).toBeLessThan(50)

    await serve({ port })
    await sleep(300)
    expect(await environment(remote, {}).reset({ seed: 4, row: row(url), signal })).toEqual({ observation: "seed 4" })
    expect(await environment(remote, {}).reset({ seed: 5, row: row(url), signal })).toEqual({ observation: "seed 5" })
  })

  it("waits for a full server with backoff, and says so when it stays full; a full server does not open the breaker", async () => {
    const server = await serve({ maxSessions: 1 })
    const remote = remoteEnvironment(server.url, { ...fast, failureThreshold: 1 })
    const holder = environment(remote, {})
    await holder.reset({ seed: 1, row: row("probe"), signal })
    await expect(environment(remote, {}).reset({ seed: 2, row: row("probe"), signal })).rejects.toThrow(
      /reset .*: server error CAPACITY_REACHED: server at capacity: 1 of 1 sessions in use; retry later \(3 attempts\)/
    )
    const waiting = environment(remoteEnvironment(server.url, { ...fast, retries: 20, backoffMs: 20, maxBackoffMs: 20 }), {}).reset({ seed: 3, row: row("probe"), signal })
    await sleep(100)
    await holder.close?.()
    expect(await waiting).toEqual({ observation: "seed 3" })
    await holder.close?.()
  })

  it("fails at once when the server goes away mid-episode", async () => {
    const server = await serve()
    const env = environment(remoteEnvironment(server.url, fast), {})
    await env.reset({ seed: 1, row: row("probe"), signal })
    await server.close()
    await expect(env.step("anyone there?", { signal })).rejects.toThrow(/^step .*: the connection (is closing: the server ended the session|closed \(code 1001: server stopped\))$/)
  })

  it("sends the bearer token; a wrong one is refused at once, naming the reason", async () => {
    const server = await serve({ token: "s3cret" })
    expect(await environment(remoteEnvironment(server.url, { ...fast, token: "s3cret" }), {}).reset({ seed: 1, row: row("probe"), signal }))
      .toEqual({ observation: "seed 1" })
    expect(await environment(remoteEnvironment(server.url, { ...fast, token: "s3cret", transport: "http" }), {}).reset({ seed: 2, row: row("probe"), signal }))
      .toEqual({ observation: "seed 2" })
    await expect(environment(remoteEnvironment(server.url, { ...fast, token: "wrong" }), {}).reset({ seed: 1, row: row("probe"), signal }))
      .rejects.toThrow(/^reset .*: the server refused the WebSocket with HTTP 401 \(missing or wrong bearer token\)$/)
    await expect(environment(remoteEnvironment(server.url, { ...fast, transport: "http" }), {}).reset({ seed: 1, row: row("probe"), signal }))
      .rejects.toThrow(/^reset .*: HTTP 401: missing or wrong bearer token/)
  })

  it("is what the registry makes of a URL, and its config errors name the field", () => {
    const registry = EnvironmentRegistry.builtins()
    const remote = registry.get("ws://127.0.0.1:9")
    expect(remote.name).toBe("ws://127.0.0.1:9")
    expect(registry.get("ws://127.0.0.1:9")).toBe(remote)
    expect(registry.has("http://example.com:8000")).toBe(true)
    expect(registry.get("gym+http://127.0.0.1:9").description).toMatch(/Gym-style env server at http:\/\/127\.0\.0\.1:9/)
    expect(remote.rows!({ seed: 0, count: 2, config: {} })).toEqual([row("ws://127.0.0.1:9", 0), row("ws://127.0.0.1:9", 1)])
    expect(() => remote.make({ timeoutMs: -5 })).toThrow(/environment "ws:\/\/127\.0\.0\.1:9" config: timeoutMs: Expected a value greater than 0/)
    expect(() => remote.rows!({ seed: 0, count: 1, config: { colour: "red" } })).toThrow(/colour: Expected no excess property/)
    expect(() => registry.get("gym+http://127.0.0.1:9").make({ env_shards: 0 })).toThrow(/env_shards/)
  })
})

describe("GymEnvironment", () => {
  const cave = async (env: Environment, seed = 1) => {
    const reset = await env.reset({ seed, row: row("gym", seed), signal })
    return [reset, await env.step("search", { signal }), await env.step("look around", { signal }), await env.step("grab the treasure", { signal })]
  }

  it("plays the mock Gym server: search pays 0.1, anything else -0.1, the treasure 10 and ends; close finalizes", async () => {
    const server = await gym()
    const env = gymEnvironment(server.url).make({})
    const [reset, search, other, treasure] = await cave(env)
    expect(reset).toEqual({ observation: expect.stringMatching(/dark cave/), systemPrompt: expect.any(String) })
    expect(search).toEqual({ observation: expect.stringMatching(/glimmer/), reward: 0.1, done: false, info: {} })
    expect(other).toMatchObject({ reward: -0.1, done: false })
    expect(treasure).toEqual({ observation: expect.stringMatching(/found the treasure/), reward: 10, done: true, info: { success: true } })
    expect(server.games()).toBe(1)
    await env.close?.()
    expect(server.games()).toBe(0)
  })

  it("ends the episode after max_steps whatever the server says", async () => {
    const server = await gym()
    const env = environment(gymEnvironment(server.url), { max_steps: 2 })
    await env.reset({ seed: 1, row: row("gym"), signal })
    expect((await env.step("wait", { signal })).done).toBe(false)
    expect((await env.step("wait", { signal })).done).toBe(true)
  })

  it("pins each episode to one shard by a hash of its id, and spreads episodes over the shards", async () => {
    const first = await gym()
    // env_shards takes consecutive ports; find a free pair.
    let second: Awaited<ReturnType<typeof gym>> | undefined
    let base = first
    for (let tries = 0; second === undefined && tries < 20; tries++) {
      second = await gym({ port: base.port + 1 }).catch(() => undefined)
      if (second === undefined) base = await gym()
    }
    const definition = gymEnvironment(base.url)
    const envs = Array.from({ length: 16 }, () => environment(definition, { env_shards: 2 }))
    for (const [i, env] of envs.entries()) {
      await env.reset({ seed: i, row: row("gym", i), signal })
      await env.step("search", { signal })
    }
    // Each game's step found its reset's state (a step on the wrong shard would be "Instance not found").
    expect(base.games() + second!.games()).toBe(16)
    expect(base.games()).toBeGreaterThan(0)
    expect(second!.games()).toBeGreaterThan(0)
  })

  it("retries a reset that got a 500, never a step; names malformed replies, slow replies and hang-ups", async () => {
    const calls: Array<string> = []
    const faults = new Map<string, Fault>()
    let resetErrors = 1
    const server = await gym({
      slowMs: 400,
      fault: ({ path, body }) => {
        calls.push(path)
        if (path === "/reset") return resetErrors-- > 0 ? "error" : undefined
        return faults.get(String(body["action"]))
      }
    })
    for (const [action, fault] of [["boom", "error"], ["garble", "malformed"], ["dawdle", "slow"], ["vanish", "hang-up"]] as const) faults.set(action, fault)
    const env = environment(gymEnvironment(server.url), { ...fast, timeoutMs: 200 })
    await env.reset({ seed: 1, row: row("gym"), signal })
    expect(calls).toEqual(["/reset", "/reset"])
    const step = (action: string) => env.step(action, { signal })
    await expect(step("boom")).rejects.toThrow(/^step http:\/\/127\.0\.0\.1:\d+: HTTP 500: \{"error":"mock server error"\}$/)
    await expect(step("garble")).rejects.toThrow(/step .*: the reply is not JSON: \{"observation": "half a rep$/)
    await expect(step("dawdle")).rejects.toThrow(/step .*: no reply within 200 ms$/)
    await expect(step("vanish")).rejects.toThrow(/step .*: connection failed: /)
    expect(calls.filter((path) => path === "/step")).toHaveLength(4)
    expect((await step("search")).reward).toBe(0.1)
  })
})
