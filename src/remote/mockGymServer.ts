/**
 * A mock Gym-style env server like the seeds' (opentinker's mock_env_server.py), for examples and tests:
 * a dark cave where an action naming the `treasure` pays 10 and ends the episode, `search` pays 0.1 and
 * gives a hint, and anything else costs 0.1. It speaks the protocol GymEnvironment reads (`POST /reset`,
 * `POST /step`, `POST /finalize`, `GET /health`), keeps one game per (job_id, instance_id), and can be told
 * to misbehave on chosen requests: answer late, answer with broken JSON, answer 500, or hang up.
 *
 * `npx node scripts/mock-gym-server.ts --port 8080` runs it on its own.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"

/** How to misbehave on one request. */
export type Fault = "slow" | "malformed" | "error" | "hang-up"

export interface MockGymServerOptions {
  /** Default 127.0.0.1. */
  readonly host?: string
  /** Default 0: a free port. */
  readonly port?: number
  /** Called for every reset and step; the fault it names is what that request gets. */
  readonly fault?: (request: { readonly path: string; readonly body: Record<string, unknown> }) => Fault | undefined
  /** How late a "slow" reply comes. Default 2000 ms. */
  readonly slowMs?: number
}

export interface MockGymServer {
  readonly url: string
  readonly port: number
  /** Games being played now. */
  readonly games: () => number
  close(): Promise<void>
}

const hints = [
  "You see a faint glimmer to the north.",
  "You hear water dripping nearby. The sound echoes strangely.",
  "There are ancient markings on the wall pointing east.",
  "You notice the ground is softer here, as if recently disturbed."
]

const opening =
  "You are in a dark cave. You must find the treasure. Type 'search' to look around, " +
  "'go north/south/east/west' to move, or describe what you want to do."

const systemPrompt = "You explore a cave. Answer with one short action."

interface Game {
  steps: number
  hintsGiven: number
}

const play = (game: Game, action: string) => {
  game.steps++
  const text = action.toLowerCase().trim()
  if (text.includes("treasure")) {
    return { observation: "Congratulations! You found the treasure! The cave is filled with gold and jewels.", reward: 10, done: true, info: { success: true } }
  }
  if (text.includes("search")) {
    const hint = hints[Math.min(game.hintsGiven++, hints.length - 1)]!
    return { observation: hint, reward: 0.1, done: false, info: {} }
  }
  return { observation: "You try that, but nothing special happens.", reward: -0.1, done: false, info: {} }
}

const readBody = (request: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    let text = ""
    request.setEncoding("utf8")
    request.on("data", (chunk: string) => (text += chunk))
    request.on("end", () => resolve(text))
    request.on("error", reject)
  })

const send = (response: ServerResponse, status: number, body: unknown) => {
  response.writeHead(status, { "content-type": "application/json" })
  response.end(JSON.stringify(body))
}

export const startMockGymServer = async (options: MockGymServerOptions = {}): Promise<MockGymServer> => {
  const games = new Map<string, Game>()
  const slowMs = options.slowMs ?? 2_000
  const timers = new Set<NodeJS.Timeout>()

  const answer = (path: string, body: Record<string, unknown>): [number, unknown] => {
    const key = `${String(body["job_id"] ?? "default")}/${String(body["instance_id"] ?? "default")}`
    if (path === "/reset") {
      games.set(key, { steps: 0, hintsGiven: 0 })
      return [200, { observation: opening, system_prompt: systemPrompt }]
    }
    if (path === "/step") {
      const game = games.get(key)
      if (game === undefined) return [200, { observation: "Error: Instance not found.", reward: 0, done: true, info: {} }]
      return [200, play(game, String(body["action"] ?? ""))]
    }
    games.delete(key)
    return [200, { status: "finalized" }]
  }

  const server = createServer(async (request, response) => {
    const path = request.url ?? "/"
    if (request.method === "GET" && path === "/health") return send(response, 200, { status: "healthy" })
    if (request.method !== "POST" || !["/reset", "/step", "/finalize"].includes(path)) {
      return send(response, 404, { error: `Unknown endpoint: ${request.method} ${path}` })
    }
    let body: Record<string, unknown>
    try {
      const text = await readBody(request)
      body = text === "" ? {} : JSON.parse(text)
    } catch {
      return send(response, 400, { error: "Invalid JSON" })
    }
    const fault = path === "/finalize" ? undefined : options.fault?.({ path, body })
    switch (fault) {
      case "hang-up":
        return request.socket.destroy()
      case "error":
        return send(response, 500, { error: "mock server error" })
      case "malformed":
        response.writeHead(200, { "content-type": "application/json" })
        return response.end('{"observation": "half a rep')
      case "slow": {
        const [status, reply] = answer(path, body)
        const timer = setTimeout(() => {
          timers.delete(timer)
          if (!response.destroyed) send(response, status, reply)
        }, slowMs)
        timers.add(timer)
        return
      }
      case undefined: {
        const [status, reply] = answer(path, body)
        return send(response, status, reply)
      }
    }
  })

  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(options.port ?? 0, options.host ?? "127.0.0.1", () => resolve())
  })
  const { port } = server.address() as AddressInfo
  return {
    url: `http://${options.host ?? "127.0.0.1"}:${port}`,
    port,
    games: () => games.size,
    close: () =>
      new Promise<void>((resolve) => {
        for (const timer of timers) clearTimeout(timer)
        server.closeAllConnections()
        server.close(() => resolve())
      })
  }
}
