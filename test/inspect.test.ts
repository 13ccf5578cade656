/**
 * `--inspect` as the Stately inspector meets it: real grid-quest episodes through the Engine, their actors'
 * inspection events sent over a real WebSocket on loopback, decoded as @statelyai/inspect writes them (JSON
 * `@xstate.actor` / `@xstate.snapshot` / `@xstate.event` messages). Also through @statelyai/inspect's own
 * relay server to a client standing in for the inspector page, and the clear errors when no server answers.
 */
import * as NodeWS from "@effect/platform-node/NodeWS"
import { createInspectorServer } from "@statelyai/inspect/server"
import { Effect, Layer, Stream } from "effect"
import { type AddressInfo, createServer, type Server, type Socket } from "node:net"
import { afterEach, describe, expect, it } from "vitest"
import type { InspectionEvent } from "xstate"
import { Engine } from "../src/Engine.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { connectInspector } from "../src/inspect.ts"
import type { TextPolicy } from "../src/TextPolicy.ts"
import { limits, policyLayer, sampling } from "./support.ts"

/** A message as @statelyai/inspect sends it (its StatelyInspectionEvent), the fields read here. */
interface Message {
  readonly type: "@xstate.actor" | "@xstate.snapshot" | "@xstate.event"
  readonly sessionId: string
  readonly name?: string
  readonly parentId?: string
  readonly definition?: string
  readonly snapshot?: {
    readonly value?: unknown
    readonly status?: string
    readonly context?: { readonly input: { readonly id: string }; readonly responseIds: unknown }
    readonly output?: { readonly finishReason?: string }
  }
  readonly event?: { readonly type: string }
}

const solver: TextPolicy = ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at")))

/** Grid-quest episodes played by its solver through the Engine, each actor inspected by `inspect`. */
const runEpisodes = (count: number, inspect: (event: InspectionEvent) => void) =>
  Effect.runPromise(
    Effect.gen(function*() {
      const engine = yield* Engine
      return [...yield* Stream.runCollect(engine.run(Stream.fromIterable(gridQuest.rows!({ seed: 0, count, config: {} }))))]
    }).pipe(
      Effect.provide(
        Engine.layer({
          environments: EnvironmentRegistry.builtins(),
          concurrency: count,
          samplesPerRow: 1,
          limits: limits({ maxTurns: 12, maxNewTokens: 16 }),
          sampling,
          envCallTimeoutMs: 10_000,
          seed: 0,
          bufferCapacity: 16,
          inspect
        }).pipe(Layer.provide(policyLayer(solver)))
      )
    )
  )

const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

/** A WebSocket server on loopback that keeps every message it is sent. */
const recordingServer = async () => {
  const server = new NodeWS.WebSocketServer({ host: "127.0.0.1", port: 0 })
  await new Promise((resolve) => server.once("listening", resolve))
  const messages: Array<Message> = []
  server.on("connection", (socket) => socket.on("message", (data) => messages.push(JSON.parse(String(data)))))
  cleanups.push(() => new Promise<void>((resolve) => server.close(() => resolve())))
  return {
    url: `ws://127.0.0.1:${(server.address() as AddressInfo).port}`,
    messages,
    /** Cuts every connection, as a killed server does. */
    drop: () => server.clients.forEach((client) => client.terminate())
  }
}

const listen = async (server: Server): Promise<number> => {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return (server.address() as AddressInfo).port
}

/** A port where nothing listens (it was free a moment ago). */
const freePort = async () => {
  const server = createServer()
  const port = await listen(server)
  await new Promise((resolve) => server.close(resolve))
  return port
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const until = async (condition: () => boolean, what: string) => {
  for (const deadline = Date.now() + 10_000; !condition(); await sleep(20)) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
  }
}

/** A WebSocket to `url`, retried while the server starts (createInspectorServer does not say when it listens). */
const openWhenUp = async (url: string): Promise<NodeWS.WebSocket> => {
  for (let attempt = 0; ; attempt++) {
    const socket = new NodeWS.WebSocket(url)
    const opened = await new Promise<boolean>((resolve) => {
      socket.once("open", () => resolve(true))
      socket.once("error", () => resolve(false))
    })
    if (opened) return socket
    if (attempt === 100) throw new Error(`nothing listens at ${url}`)
    await sleep(20)
  }
}

/** The episode actors' messages, by session: the machine's definition and the state values it went through. */
const episodes = (messages: ReadonlyArray<Message>) =>
  messages
    .filter((m) => m.type === "@xstate.actor" && m.name === "episode" && m.parentId === undefined)
    .map((actor) => {
      const own = messages.filter((m) => m.sessionId === actor.sessionId)
      const snapshots = own.filter((m) => m.type === "@xstate.snapshot").map((m) => m.snapshot!)
      return {
        definition: JSON.parse(actor.definition!) as { readonly id: string; readonly states: object },
        values: [...new Set(snapshots.map((s) => JSON.stringify(s.value)))],
        last: snapshots.at(-1),
        events: own.filter((m) => m.type === "@xstate.event").map((m) => m.event!.type)
      }
    })

describe("connectInspector", () => {
  it("sends every episode actor's states to the inspector server, all of them by the time close() returns", async () => {
    const server = await recordingServer()
    const inspector = await connectInspector(server.url)
    const trajectories = await runEpisodes(3, inspector.inspect)
    await inspector.close()

    expect(trajectories.map((t) => t.finishReason)).toEqual(["done", "done", "done"])
    const seen = episodes(server.messages)
    expect(seen).toHaveLength(3)
    for (const episode of seen) {
      // The definition is what the inspector draws the machine from.
      expect(episode.definition.id).toBe("episode")
      const states = episode.definition.states as { readonly running: { readonly states: object } }
      expect(Object.keys(states).sort()).toEqual(["done", "running"])
      expect(Object.keys(states.running.states).sort()).toEqual(["generating", "interacting", "pending"])
      expect(episode.values).toEqual([`{"running":"pending"}`, `{"running":"generating"}`, `{"running":"interacting"}`, `"done"`])
      expect(episode.last?.status).toBe("done")
      expect(episode.last?.output?.finishReason).toBe("done")
      // The context is there, its token arrays summarized as lengths.
      const trajectory = trajectories.find((t) => t.id === episode.last?.context?.input.id)!
      expect(episode.last?.context?.responseIds).toBe(`${trajectory.responseIds.length} numbers`)
      // The host's results arrive as events, as the inspector's event log shows them.
      for (const event of ["RESET_DONE", "GENERATE_DONE", "INTERACT_DONE"]) expect(episode.events).toContain(event)
    }
  })

  it("reaches the inspector page through @statelyai/inspect's own relay server", async () => {
    const port = await freePort()
    const relay = createInspectorServer({ port, autoOpen: false })
    cleanups.push(() => relay.stop())
    // The page's side of the relay, connected as its bridge script connects.
    const page = await openWhenUp(`ws://localhost:${port}`)
    cleanups.push(() => page.terminate())
    const received: Array<Message> = []
    page.on("message", (data) => received.push(JSON.parse(String(data))))

    const inspector = await connectInspector(`ws://localhost:${port}`)
    await runEpisodes(2, inspector.inspect)
    await inspector.close()

    await until(() => episodes(received).filter((e) => e.last?.status === "done").length === 2, "both episodes done at the page")
    for (const episode of episodes(received)) expect(episode.values).toContain(`{"running":"interacting"}`)
  })

  it("lets the run go on when the inspector server goes away in the middle of it", async () => {
    const server = await recordingServer()
    const inspector = await connectInspector(server.url)
    let dropped = false
    const trajectories = await runEpisodes(2, (event) => {
      if (!dropped && event.type === "@xstate.snapshot") {
        dropped = true
        server.drop()
      }
      inspector.inspect(event)
    })
    await inspector.close()
    expect(dropped).toBe(true)
    expect(trajectories.map((t) => t.finishReason)).toEqual(["done", "done"])
    expect(episodes(server.messages).filter((e) => e.last?.status === "done")).toEqual([])
  })

  it("fails at once, naming the URL, when nothing listens there", async () => {
    const url = `ws://127.0.0.1:${await freePort()}`
    await expect(connectInspector(url)).rejects.toMatchObject({
      _tag: "InspectorError",
      message: expect.stringMatching(new RegExp(`^no Stately inspector server at ${url} \\(.*ECONNREFUSED.*\\); start one with`))
    })
  })

  it("gives up after the timeout when the server never answers the handshake", async () => {
    const sockets: Array<Socket> = []
    const silent = createServer((socket) => sockets.push(socket))
    const port = await listen(silent)
    cleanups.push(() => {
      for (const socket of sockets) socket.destroy()
      return new Promise<void>((resolve) => silent.close(() => resolve()))
    })
    const url = `ws://127.0.0.1:${port}`
    await expect(connectInspector(url, { timeoutMs: 200 })).rejects.toMatchObject({
      message: expect.stringMatching(new RegExp(`^no Stately inspector server at ${url} \\(Opening handshake has timed out\\)`))
    })
  })
})
