/**
 * The agents' gateway: one loopback HTTP server per run, with an OpenAI-compatible base URL per episode,
 * `http://127.0.0.1:PORT/episodes/<id>/v1`. `POST .../chat/completions` goes to that episode's handler
 * (AgentEpisode), `GET .../models` names the model. An episode's URL answers 404 once the episode is over.
 *
 * Plain node:http rather than Effect's router: the handlers are promises owned by episode fibers, and a
 * client that disconnects must abort its request at once.
 */
import { Context, Effect, Layer } from "effect"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { ChatRequestError } from "./AgentChat.ts"
import { errorMessage } from "./errorMessage.ts"

export type Json = Record<string, unknown>

/**
 * What an episode answers: a JSON body, server-sent events already framed, or server-sent events as they
 * come (each string one framed event; the response ends with the iterable).
 */
export type Reply =
  | { readonly status?: number; readonly json: unknown }
  | { readonly sse: string }
  | { readonly events: AsyncIterable<string> }

export type Handler = (body: Json, signal: AbortSignal) => Promise<Reply>

/** An error the agent should see with its status (409 for a call after its episode ended). */
export class GatewayError extends ChatRequestError {
  readonly status: number
  constructor(message: string, status: number, param?: string) {
    super(message, param)
    this.status = status
  }
}

export interface AgentGatewayShape {
  readonly url: string
  /** Serves `handler` at the episode's base URL until the returned close is called. */
  open(episodeId: string, handler: Handler): { readonly baseURL: string; close(): void }
}

const maxBodyBytes = 16 * 1024 * 1024

const send = (res: ServerResponse, status: number, body: unknown) => {
  if (res.headersSent || res.destroyed) return
  res.writeHead(status, { "content-type": "application/json" })
  res.end(JSON.stringify(body))
}

const sendError = (res: ServerResponse, status: number, message: string, param?: string) =>
  send(res, status, { error: { message, type: status === 404 ? "NotFoundError" : status >= 500 ? "InternalServerError" : "BadRequestError", param: param ?? null, code: status } })

const readBody = (req: IncomingMessage): Promise<string> =>
  new Promise((resolve, reject) => {
    const parts: Array<Buffer> = []
    let size = 0
    req.on("data", (part: Buffer) => {
      size += part.length
      if (size > maxBodyBytes) {
        reject(new GatewayError(`the request body is larger than ${maxBodyBytes} bytes`, 413))
        req.destroy()
      } else parts.push(part)
    })
    req.on("end", () => resolve(Buffer.concat(parts).toString("utf8")))
    req.on("error", reject)
  })

/** Starts the server on 127.0.0.1 (a free port unless given); closes it when the scope closes. */
export const make = (options: { readonly model: string; readonly port?: number } = { model: "episodic" }) =>
  Effect.gen(function*() {
    const handlers = new Map<string, Handler>()
    const sockets = new Set<import("node:net").Socket>()
    const server = createServer((req, res) => {
      const match = /^\/episodes\/([^/]+)\/v1\/(chat\/completions|models)\/?$/.exec(new URL(req.url ?? "/", "http://x").pathname)
      const handler = match === null ? undefined : handlers.get(decodeURIComponent(match[1]!))
      if (match === null || handler === undefined) {
        req.resume()
        return sendError(res, 404, match === null ? `no such endpoint: ${req.method} ${req.url}` : `no running episode ${decodeURIComponent(match[1]!)}`)
      }
      if (match[2] === "models") {
        req.resume()
        return send(res, 200, { object: "list", data: [{ id: options.model, object: "model", created: 0, owned_by: "episodic" }] })
      }
      if (req.method !== "POST") {
        req.resume()
        return sendError(res, 405, "chat/completions takes POST")
      }
      const controller = new AbortController()
      // The client went away before its answer: abort what it asked for.
      res.on("close", () => {
        if (!res.writableFinished) controller.abort()
      })
      readBody(req)
        .then((text) => {
          let body: unknown
          try {
            body = JSON.parse(text)
          } catch (cause) {
            throw new GatewayError(`the body is not JSON: ${errorMessage(cause)}`, 400)
          }
          if (typeof body !== "object" || body === null || Array.isArray(body)) throw new GatewayError("the body must be a JSON object", 400)
          return handler(body as Json, controller.signal)
        })
        .then(async (reply) => {
          if ("json" in reply) return send(res, reply.status ?? 200, reply.json)
          if (res.destroyed) return
          res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" })
          if ("sse" in reply) return void res.end(reply.sse)
          // Each event as it comes; a client that went away stops the writing (and aborted the call).
          res.flushHeaders()
          for await (const event of reply.events) {
            if (res.destroyed) break
            res.write(event)
          }
          res.end()
        })
        .catch((cause) => {
          // Mid-stream there is no status to send: the client sees the stream cut.
          if (res.headersSent) return void res.destroy()
          if (cause instanceof GatewayError) sendError(res, cause.status, cause.message, cause.param)
          else if (cause instanceof ChatRequestError) sendError(res, 400, cause.message, cause.param)
          else sendError(res, 500, errorMessage(cause))
        })
    })
    server.on("connection", (socket) => {
      sockets.add(socket)
      socket.on("close", () => sockets.delete(socket))
    })
    const port = yield* Effect.acquireRelease(
      Effect.callback<number, Error>((resume) => {
        server.once("error", (error) => resume(Effect.fail(error)))
        server.listen(options.port ?? 0, "127.0.0.1", () => resume(Effect.succeed((server.address() as AddressInfo).port)))
      }),
      () =>
        Effect.callback<void>((resume) => {
          for (const socket of sockets) socket.destroy()
          server.close(() => resume(Effect.void))
        })
    ).pipe(Effect.orDie)
    const url = `http://127.0.0.1:${port}`
    return AgentGateway.of({
      url,
      open: (episodeId, handler) => {
        handlers.set(episodeId, handler)
        return {
          baseURL: `${url}/episodes/${encodeURIComponent(episodeId)}/v1`,
          close: () => {
            if (handlers.get(episodeId) === handler) handlers.delete(episodeId)
          }
        }
      }
    })
  })

export class AgentGateway extends Context.Service<AgentGateway, AgentGatewayShape>()("episodic/AgentGateway") {
  static readonly layer = (options?: { readonly model: string; readonly port?: number }): Layer.Layer<AgentGateway> =>
    Layer.effect(AgentGateway, make(options))
}
