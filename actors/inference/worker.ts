/** The inference actor's worker thread: model compute runs here, off the thread that drives episodes. */
import { parentPort, workerData } from "node:worker_threads"
import { startCore } from "./ActorCore.ts"
import type { ActorSettings, FromWorker, ToWorker } from "./protocol.ts"

const port = parentPort!
const send = (message: FromWorker) => port.postMessage(message)

try {
  const core = await startCore(workerData as ActorSettings)
  port.on("message", ({ id, call }: ToWorker) => {
    const onToken = call.type === "generate" && call.stream === true
      ? (token: number, logprob: number) => send({ type: "token", id, token, logprob })
      : undefined
    core.handle(call, onToken).then(
      (value) => {
        send({ id, ok: true, value })
        // Nothing is left to do: let the thread end on its own.
        if (call.type === "close") port.close()
      },
      (cause: unknown) => send({ id, ok: false, message: cause instanceof Error ? cause.message : String(cause) })
    )
  })
  send({ type: "ready", info: core.info })
} catch (cause) {
  send({ type: "failed", message: cause instanceof Error ? cause.message : String(cause) })
}
