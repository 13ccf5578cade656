/**
 * The trainer's worker thread: the tfjs twin, its optimizer and the checkpoint writer live here, so an
 * update computes while the run's thread keeps episodes and generation going.
 */
import { parentPort, workerData } from "node:worker_threads"
import type { Weights } from "../../src/model/safetensors.ts"
import { callTrainer, type FromTrainer, type ToTrainer, type TrainerCall, type TrainerReply, type TrainerSettings } from "./protocol.ts"
import { Trainer } from "./Trainer.ts"

const port = parentPort!
const send = (message: FromTrainer, transfer: ReadonlyArray<ArrayBuffer> = []) => port.postMessage(message, [...transfer])

/** Buffers that can move to the other thread: copies, never a backend's own storage (the cpu backend hands that out). */
const movable = (weights: Weights, backend: string): { weights: Weights; transfer: Array<ArrayBuffer> } => {
  const owned = backend === "wasm" ? weights : new Map([...weights].map(([name, t]) => [name, { shape: t.shape, data: t.data.slice() }]))
  return { weights: owned, transfer: [...new Set([...owned.values()].map((t) => t.data.buffer as ArrayBuffer))] }
}

/** One call on the trainer; weights leave as movable copies. */
const handle = (trainer: Trainer, call: TrainerCall): { value: TrainerReply; transfer?: Array<ArrayBuffer> } => {
  if (call.type !== "policyWeights") return { value: callTrainer(trainer, call) }
  const { weights, transfer } = movable(trainer.policyWeights(), trainer.backend)
  return { value: weights, transfer }
}

try {
  const trainer = await Trainer.create(workerData as TrainerSettings)
  // One call at a time, in order: tfjs is synchronous here, so each message runs to completion.
  port.on("message", ({ id, call }: ToTrainer) => {
    try {
      const { value, transfer } = handle(trainer, call)
      send({ id, ok: true, value, version: trainer.version }, transfer)
      if (call.type === "close") port.close()
    } catch (cause) {
      send({ id, ok: false, message: cause instanceof Error ? cause.message : String(cause), version: trainer.version })
    }
  })
  send({ type: "ready", backend: trainer.backend, version: trainer.version })
} catch (cause) {
  send({ type: "failed", message: cause instanceof Error ? cause.message : String(cause) })
}
