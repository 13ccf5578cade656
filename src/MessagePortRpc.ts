/**
 * Effect RPC over a `MessagePort`: a client protocol for one end of a `MessageChannel` and a server protocol for
 * the other. Effect ships worker protocols only for the parent calling its worker (`RpcClient.layerProtocolWorker`
 * over `RpcServer.layerProtocolWorkerRunner`); an engine worker also calls the main thread (generation), so it
 * gets a channel of its own, and these two protocols put Effect RPC on it. Messages are structured-cloned, as
 * Effect's worker protocols send them: schemas encode to JSON-shaped values, nothing else is serialized.
 */
import { Effect, Queue, Schema, type Scope } from "effect"
import { RpcClient, type RpcMessage, type RpcSerialization, RpcServer } from "effect/rpc"
import type { MessagePort, Transferable } from "node:worker_threads"

const codecFor = Schema.toCodecJson as RpcSerialization.CodecFor

/**
 * Hands each message to `write` in arrival order, from one fiber: a fiber per message would cost more than
 * the message. The port stops listening (and closes) with the scope, so it no longer holds its thread open.
 */
const listen = <A>(port: MessagePort, write: (message: A) => Effect.Effect<void>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.gen(function*() {
    const queue = yield* Queue.unbounded<A>()
    const onMessage = (message: A) => void Queue.offerUnsafe(queue, message)
    port.on("message", onMessage)
    yield* Effect.addFinalizer(() => Effect.sync(() => port.close()))
    yield* Queue.takeAll(queue).pipe(
      Effect.flatMap((messages) => Effect.forEach(messages, write, { discard: true })),
      Effect.forever,
      Effect.forkScoped
    )
  })

/** The calling end: one RPC client per port. */
export const clientProtocol = (port: MessagePort): Effect.Effect<RpcClient.Protocol["Service"], never, Scope.Scope> =>
  RpcClient.Protocol.make(Effect.fnUntraced(function*(write, clientIds) {
    yield* listen(port, (message: RpcMessage.FromServerEncoded) =>
      Effect.forEach(clientIds, (clientId) => write(clientId, message), { discard: true }))
    return {
      send: (_clientId, request, transferables) => Effect.sync(() => port.postMessage(request, transferables as ReadonlyArray<Transferable> | undefined)),
      // Acks pace streamed replies; these RPCs reply once.
      supportsAck: false,
      supportsTransferables: true,
      codecFor
    }
  }))

/** The answering end: serves the one client at the other end of the port. */
export const serverProtocol = (port: MessagePort): Effect.Effect<RpcServer.Protocol["Service"], never, Scope.Scope> =>
  RpcServer.Protocol.make(Effect.fnUntraced(function*(writeRequest) {
    yield* listen(port, (message: RpcMessage.FromClientEncoded) => writeRequest(0, message))
    return {
      disconnects: yield* Queue.unbounded<number>(),
      send: (_clientId, response, transferables) => Effect.sync(() => port.postMessage(response, transferables as ReadonlyArray<Transferable> | undefined)),
      end: () => Effect.void,
      clientIds: Effect.succeed(new Set([0])),
      initialMessage: Effect.succeedNone,
      supportsAck: false,
      supportsTransferables: true,
      supportsSpanPropagation: false,
      supportsNotifications: false,
      codecFor
    }
  }))
