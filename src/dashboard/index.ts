/**
 * The run's dashboard: a small HTTP server on loopback that serves one self-contained page (page.html: no
 * CDN, the page works offline) and the RunMonitor's data as JSON, with the live snapshot pushed as
 * Server-Sent Events. It only reads the monitor, so a dashboard can never slow or break the run: a bad
 * request gets a 4xx with a message, a failing handler a 500, and the server goes on.
 *
 *   GET /                          the page
 *   GET /api/snapshot              RunSnapshot
 *   GET /api/history               MetricsPoint[] (one per metrics window)
 *   GET /api/trajectories          the recent trajectories, newest first (TrajectorySummary[])
 *   GET /api/trajectories/:id      one of them, token by token (TrajectoryDetail)
 *   GET /api/events                SSE: `{ snapshot, points }` every `intervalMs` (points: history length)
 */
import { readFileSync } from "node:fs"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { errorMessage } from "../errorMessage.ts"
import type { RunMonitor } from "../RunMonitor.ts"
import type { ChatTokenizer } from "../Tokenizer.ts"
import * as TrajectoryView from "./TrajectoryView.ts"

export interface DashboardOptions {
  readonly monitor: RunMonitor
  /** Decodes the viewer's tokens; without it the viewer shows token ids. */
  readonly tokenizer?: ChatTokenizer | undefined
  /** 0 (the default) picks a free port. */
  readonly port?: number | undefined
  /** 127.0.0.1 by default: the page shows prompts and responses, so it is not served to the network unless asked. */
  readonly host?: string | undefined
  /** How often the live snapshot is pushed. */
  readonly intervalMs?: number | undefined
}

export interface Dashboard {
  readonly url: string
  close(): Promise<void>
}

const page = readFileSync(new URL("./page.html", import.meta.url))

class HttpError extends Error {
  readonly status: number
  constructor(status: number, message: string) {
    super(message)
    this.status = status
  }
}

export const startDashboard = async (options: DashboardOptions): Promise<Dashboard> => {
  const { monitor } = options
  const intervalMs = options.intervalMs ?? 500
  const detail = TrajectoryView.detailer(options.tokenizer)
  const streams = new Set<NodeJS.Timeout>()

  const live = () => JSON.stringify({ snapshot: monitor.snapshot(), points: monitor.history().length })

  const events = (response: ServerResponse) => {
    response.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-store", connection: "keep-alive" })
    const send = () => response.write(`data: ${live()}\n\n`)
    send()
    const timer = setInterval(send, intervalMs)
    streams.add(timer)
    response.on("close", () => {
      clearInterval(timer)
      streams.delete(timer)
    })
  }

  const route = (request: IncomingMessage, response: ServerResponse) => {
    if (request.method !== "GET") throw new HttpError(405, `${request.method} is not allowed: the dashboard is read-only`)
    const pathname = pathOf(request.url ?? "/")
    if (pathname === "/" || pathname === "/index.html") return send(response, 200, "text/html; charset=utf-8", page)
    if (pathname === "/api/snapshot") return json(response, monitor.snapshot())
    if (pathname === "/api/history") return json(response, monitor.history())
    if (pathname === "/api/trajectories") return json(response, monitor.recent().map(TrajectoryView.summary).reverse())
    if (pathname === "/api/events") return events(response)
    const match = /^\/api\/trajectories\/([^/]+)$/.exec(pathname)
    if (match !== null) {
      const id = decodePathSegment(match[1]!)
      const trajectory = monitor.recent().find((t) => t.id === id)
      if (trajectory === undefined) {
        throw new HttpError(404, `no recent trajectory "${id}": the dashboard keeps the last ${monitor.recentLimit}`)
      }
      return json(response, detail(trajectory))
    }
    throw new HttpError(404, `no such page: ${pathname}`)
  }

  const server = createServer((request, response) => {
    try {
      route(request, response)
    } catch (error) {
      const status = error instanceof HttpError ? error.status : 500
      if (!response.headersSent) json(response, { error: errorMessage(error) }, status)
      else response.destroy()
    }
  })
  // A client that goes away mid-response must not take the run with it.
  server.on("clientError", (_, socket) => socket.destroy())

  const host = options.host ?? "127.0.0.1"
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject)
    server.listen(options.port ?? 0, host, () => {
      server.off("error", reject)
      resolve()
    })
  })
  const { port } = server.address() as AddressInfo
  const urlHost = host.includes(":") ? `[${host}]` : host

  return {
    url: `http://${urlHost}:${port}/`,
    close: () =>
      new Promise<void>((resolve, reject) => {
        for (const timer of streams) clearInterval(timer)
        streams.clear()
        server.close((error) => (error === undefined ? resolve() : reject(error)))
        // Event streams never end by themselves.
        server.closeAllConnections()
      })
  }
}

const pathOf = (url: string) => {
  try {
    return new URL(url, "http://dashboard").pathname
  } catch {
    throw new HttpError(400, `bad request path: ${url}`)
  }
}

const decodePathSegment = (segment: string) => {
  try {
    return decodeURIComponent(segment)
  } catch {
    throw new HttpError(400, `bad percent-encoding in "${segment}"`)
  }
}

const send = (response: ServerResponse, status: number, contentType: string, body: string | Buffer) => {
  response.writeHead(status, { "content-type": contentType, "cache-control": "no-store" })
  response.end(body)
}

const json = (response: ServerResponse, value: unknown, status = 200) =>
  send(response, status, "application/json; charset=utf-8", JSON.stringify(value))
