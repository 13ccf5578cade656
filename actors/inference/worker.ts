/** The inference actor's worker thread: model compute runs here, off the thread that drives episodes. */
import { parentPort, workerData } from "node:worker_threads"
import { startCore } from "./ActorCore.ts"
import type { ActorSettings, FromWorker, ToWorker } from "./protocol.ts"

const port = parentPort!
/**
 * Messages go out in batches: a decode step settles many requests at once, and one postMessage per step
 * costs the actor's thread much less than one per request. The batch leaves in a microtask, so before the
 * next step starts: no reply waits for a forward pass.
 */
let outbox: Array<FromWorker> = []
const flush = () => {
  if (outbox.length === 0) return
  const messages = outbox
  outbox = []
  port.postMessage(messages.length === 1 ? messages[0]! : { type: "batch", messages })
}
const send = (message: FromWorker) => {
  if (outbox.push(message) === 1) queueMicrotask(flush)
}

try {
  const core = await startCore(workerData as ActorSettings)
  port.on("message", ({ id, call }: ToWorker) => {
    const onToken = call.type === "generate" && call.stream === true
      ? (token: number, logprob: number) => send({ type: "token", id, token, logprob })
      : undefined
    core.handle(call, onToken).then(
      (value) => {
        send({ id, ok: true, value })
        // Nothing is left to do: let the thread end on its own (once the reply is out).
        if (call.type === "close") {
          if (outbox.length > 0) flush()
          port.close()
        }
      },
      (cause: unknown) => send({ id, ok: false, message: cause instanceof Error ? cause.message : String(cause) })
    )
  })
  send({ type: "ready", info: core.info })
} catch (cause) {
  send({ type: "failed", message: cause instanceof Error ? cause.message : String(cause) })
}
