/**
 * Streams every episode actor's inspection events to a Stately inspector: `@statelyai/inspect`'s WebSocket
 * relay server (`createInspectorServer`, started by scripts/inspector-server.ts), which hands them to the
 * Stately inspector page in a browser.
 *
 * The events are converted by @statelyai/inspect's own `createInspector`, so they go out exactly as its
 * `createWebSocketInspector` sends them; only the connection is ours. Theirs never says that nothing listens:
 * it retries every 5 s, silently and forever, even after `stop()` (so the process never exits), and resends
 * its whole backlog on every reconnect. Ours connects first and fails with the URL if it cannot, drops
 * events once the server has gone (the run matters more than the view), and flushes on `close`. Contexts
 * go out with their number arrays (token ids, masks, logprobs) summarized as lengths.
 */
import * as NodeWS from "@effect/platform-node/NodeWS"
import { createInspector } from "@statelyai/inspect"
import { Schema } from "effect"
import type { InspectionEvent, MachineContext } from "xstate"
import { errorMessage } from "./errorMessage.ts"

/** Where `createInspectorServer()` listens by default. */
export const defaultInspectorUrl = "ws://localhost:8080"

export interface Inspector {
  readonly url: string
  /** Pass it as `inspect` to `createActor`, the Engine's options or the run's options. */
  readonly inspect: (event: InspectionEvent) => void
  /** Sends the events still on their way, then closes the connection. Never fails. */
  close(): Promise<void>
}

export class InspectorError extends Schema.TaggedError<InspectorError>()("InspectorError", {
  message: Schema.String
}) {}

const howToStart = "start one with `npx node scripts/inspector-server.ts` (see docs/episode-machine.md)"

/** Connects to the inspector server at `url`; fails with InspectorError, naming the URL, if none answers within `timeoutMs`. */
export const connectInspector = (url: string = defaultInspectorUrl, options: { readonly timeoutMs?: number } = {}): Promise<Inspector> =>
  new Promise((resolve, reject) => {
    let socket: NodeWS.WebSocket
    try {
      socket = new NodeWS.WebSocket(url, { handshakeTimeout: options.timeoutMs ?? 5_000 })
    } catch (cause) {
      return reject(new InspectorError({ message: `${url} is not a WebSocket URL: ${errorMessage(cause)}` }))
    }
    // Without an error listener a socket throws its errors at the process; a lost inspector must not end a run.
    socket.on("error", () => {})
    socket.once("error", (cause) => reject(new InspectorError({ message: `no Stately inspector server at ${url} (${cause.message}); ${howToStart}` })))
    socket.once("open", () => resolve(connected(url, socket)))
  })

/**
 * Token ids, masks and logprobs are most of an episode's context: thousands of numbers in every snapshot,
 * unreadable in the inspector and heavy on the wire. The inspector shows their lengths instead.
 */
const summarizeNumberArrays = (context: MachineContext): MachineContext =>
  typeof context !== "object" || context === null
    ? context
    : Object.fromEntries(Object.entries(context).map(([key, value]) => [
      key,
      Array.isArray(value) && value.length > 0 && value.every((item) => typeof item === "number") ? `${value.length} numbers` : value
    ]))

const connected = (url: string, socket: NodeWS.WebSocket): Inspector => {
  const inspector = createInspector({
    send: (event) => {
      if (socket.readyState !== NodeWS.WebSocket.OPEN) return
      let message: string
      try {
        message = JSON.stringify(event)
      } catch {
        return // a value JSON cannot write (a cycle, a bigint) costs the view one event, not the run
      }
      socket.send(message)
    }
  }, { sanitizeContext: summarizeNumberArrays })
  return {
    url,
    inspect: (event) => inspector.inspect.next?.(event),
    close: async () => {
      // createInspector converts and sends each event on a later timer tick; this one runs after all of them.
      await new Promise((resolve) => setTimeout(resolve, 0))
      if (socket.readyState === NodeWS.WebSocket.CLOSED) return
      await new Promise<void>((resolve) => {
        // A server that never answers the closing handshake does not hold the process.
        const timer = setTimeout(() => socket.terminate(), 2_000)
        socket.once("close", () => {
          clearTimeout(timer)
          resolve()
        })
        // Sent after every message before it.
        socket.close(1000)
      })
    }
  }
}
