/**
 * The trainer's worker thread: the tfjs twin, its optimizer and the checkpoint writer live here, so an
 * update computes while the run's thread keeps episodes and generation going.
 */
import { parentPort, workerData } from "node:worker_threads"
import type { Weights } from "../../src/model/safetensors.ts"
import * as Checkpoint from "./checkpoint.ts"
import type { FromTrainer, ToTrainer, TrainerCall, TrainerReply, TrainerSettings } from "./protocol.ts"
import { Trainer } from "./Trainer.ts"

const port = parentPort!
const send = (message: FromTrainer, transfer: ReadonlyArray<ArrayBuffer> = []) => port.postMessage(message, [...transfer])

/** Buffers that can move to the other thread: copies, never a backend's own storage (the cpu backend hands that out). */
const movable = (weights: Weights, backend: string): { weights: Weights; transfer: Array<ArrayBuffer> } => {
  const owned = backend === "wasm" ? weights : new Map([...weights].map(([name, t]) => [name, { shape: t.shape, data: t.data.slice() }]))
  return { weights: owned, transfer: [...new Set([...owned.values()].map((t) => t.data.buffer as ArrayBuffer))] }
}

const handle = (trainer: Trainer, call: TrainerCall): { value: TrainerReply; transfer?: Array<ArrayBuffer> } => {
  switch (call.type) {
    case "update":
      return { value: trainer.update(call.trajectories, call.scores) }
    case "sft":
      return { value: trainer.sft(call.trajectories, call.options) }
    case "policyWeights": {
      const { weights, transfer } = movable(trainer.policyWeights(), trainer.backend)
      return { value: weights, transfer }
    }
    case "restore":
      trainer.restore(call.weights, call.optimizer, call.version)
      return { value: undefined }
    case "checkpoint":
      Checkpoint.save(call.directory, trainer, call.sourceModel, call.state)
      return { value: undefined }
    case "close":
      trainer.dispose()
      return { value: undefined }
  }
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
