/**
 * The trainer actor's handle: the `Trainer` on its own worker thread (the default), so that while an update
 * computes, the run's thread keeps episodes going and the inference actor keeps generating; or on the calling
 * thread (`thread: "main"`), for debugging. Both answer the same asynchronous calls.
 *
 * Rewards are scored on the run's thread (a reward function cannot cross threads) and sent with the batch.
 * Every call settles: a worker that crashes or exits fails the calls it held, naming why.
 */
import { Worker } from "node:worker_threads"
import type { Weights } from "../../src/model/safetensors.ts"
import type { Trajectory } from "../../src/Trajectory.ts"
import type { AdamWState } from "./optimizer.ts"
import { callTrainer, type CheckpointState, type FromTrainer, type SftOptions, type TrainerCall, type TrainerReply, type TrainerSettings } from "./protocol.ts"
import { rewardManager, type RewardFunction } from "./rewards.ts"
import { Trainer, usable, type SftMetrics, type TrainerOptions, type UpdateMetrics } from "./Trainer.ts"

export interface TrainerHandle {
  /** The TensorFlow.js backend the trainer computes on. */
  readonly backend: string
  /** The policy version after the last call that finished. */
  readonly version: number
  update(trajectories: ReadonlyArray<Trajectory>): Promise<UpdateMetrics>
  sft(trajectories: ReadonlyArray<Trajectory>, options: SftOptions): Promise<SftMetrics>
  /** The policy's weights in Hugging Face's layout: the caller owns them (they can move to the inference actor). */
  policyWeights(): Promise<Weights>
  restore(weights: Weights, optimizer: AdamWState, version: number): Promise<void>
  /** Writes the checkpoint (checkpoint.ts) from the trainer's own weights and optimizer. */
  checkpoint(directory: string, sourceModel: string, state: CheckpointState): Promise<void>
  close(): Promise<void>
}

export interface TrainerThreadOptions extends TrainerOptions {
  /** "worker" (default): the trainer computes on its own thread. "main": on the calling thread. */
  readonly thread?: "worker" | "main"
}

interface Transport {
  readonly backend: string
  readonly version: () => number
  readonly call: (call: TrainerCall, transfer?: ReadonlyArray<ArrayBuffer>) => Promise<TrainerReply>
  readonly close: () => Promise<void>
}

const inThread = async (options: TrainerOptions): Promise<Transport> => {
  const trainer = await Trainer.create(options)
  let closed = false
  return {
    backend: trainer.backend,
    version: () => trainer.version,
    call: async (call) => {
      if (closed) throw new Error("the trainer is closed")
      // Closing is close()'s work, which disposes once.
      return call.type === "close" ? undefined : callTrainer(trainer, call)
    },
    close: async () => {
      if (closed) return
      closed = true
      trainer.dispose()
    }
  }
}

const inWorker = (settings: TrainerSettings): Promise<Transport> =>
  new Promise((resolve, reject) => {
    // A checkout runs worker.ts; the installed package its compiled worker.js (scripts/build.ts).
    const worker = new Worker(new URL(import.meta.url.endsWith(".ts") ? "./worker.ts" : "./worker.js", import.meta.url), { workerData: settings })
    const pending = new Map<number, { resolve: (value: TrainerReply) => void; reject: (error: Error) => void }>()
    let next = 0
    let version = 0
    let closed = false
    let failure: string | undefined
    const failAll = (message: string) => {
      failure ??= message
      for (const { reject } of pending.values()) reject(new Error(message))
      pending.clear()
    }
    const send = (call: TrainerCall, transfer: ReadonlyArray<ArrayBuffer> = []) =>
      new Promise<TrainerReply>((resolveCall, rejectCall) => {
        if (failure !== undefined) return rejectCall(new Error(failure))
        const id = next++
        pending.set(id, { resolve: resolveCall, reject: rejectCall })
        worker.postMessage({ id, call }, [...transfer])
      })
    worker.on("message", (message: FromTrainer) => {
      if ("type" in message) {
        if (message.type === "failed") return reject(new Error(message.message))
        version = message.version
        return resolve({
          backend: message.backend,
          version: () => version,
          call: (call, transfer) => (closed ? Promise.reject(new Error("the trainer is closed")) : send(call, transfer)),
          close: async () => {
            if (closed) return
            closed = true
            const exited = new Promise<void>((done) => worker.once("exit", () => done()))
            // Let the running call finish and free its tensors; terminating mid-step would crash the thread.
            await send({ type: "close" }).catch(() => undefined)
            failAll("the trainer closed")
            await Promise.race([exited, new Promise((done) => setTimeout(done, 5_000).unref())])
            await worker.terminate()
          }
        })
      }
      version = message.version
      const entry = pending.get(message.id)
      if (entry === undefined) return
      pending.delete(message.id)
      if (message.ok) entry.resolve(message.value)
      else entry.reject(new Error(message.message))
    })
    worker.on("error", (error) => {
      failAll(`the trainer's worker crashed: ${error.message}`)
      reject(error)
    })
    worker.on("exit", (code) => {
      if (!closed) failAll(`the trainer's worker exited with code ${code}`)
    })
  })

/** Starts the trainer: loads the model's weights into the twin (on a worker thread unless `thread: "main"`). */
export const start = async (options: TrainerThreadOptions): Promise<TrainerHandle> => {
  const { thread = "worker", ...trainerOptions } = options
  const { rewards, ...algorithm } = trainerOptions.algorithm ?? {}
  const reward: RewardFunction = typeof rewards === "function" ? rewards : rewardManager(rewards)
  const transport = thread === "main" ? await inThread(trainerOptions) : await inWorker({ ...trainerOptions, algorithm })
  const buffers = (weights: Weights) => [...new Set([...weights.values()].map((t) => t.data.buffer as ArrayBuffer))]
  return {
    backend: transport.backend,
    get version() {
      return transport.version()
    },
    update: async (trajectories) => {
      const scores = trajectories.map((t) => (usable(t) ? reward(t) : 0))
      return (await transport.call({ type: "update", trajectories, scores })) as UpdateMetrics
    },
    sft: async (trajectories, sftOptions) => (await transport.call({ type: "sft", trajectories, options: sftOptions })) as SftMetrics,
    policyWeights: async () => (await transport.call({ type: "policyWeights" })) as Weights,
    // The checkpoint's weights move to the trainer rather than being copied.
    restore: async (weights, optimizer, version) => void (await transport.call({ type: "restore", weights, optimizer, version }, thread === "main" ? [] : buffers(weights))),
    checkpoint: async (directory, sourceModel, state) => void (await transport.call({ type: "checkpoint", directory, sourceModel, state })),
    close: () => transport.close()
  }
}

export const TrainerThread = { start } as const
