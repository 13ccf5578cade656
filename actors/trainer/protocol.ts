/** Messages between the trainer's handle (the run's thread) and the trainer's worker thread. */
import type { Weights } from "../../src/model/safetensors.ts"
import type { Trajectory } from "../../src/Trajectory.ts"
import * as Checkpoint from "./checkpoint.ts"
import type { AdamWState } from "./optimizer.ts"
import type { SftMetrics, Trainer, TrainerOptions, UpdateMetrics } from "./Trainer.ts"

/** The trainer's options as they cross to the worker: a reward function stays on the run's thread. */
export type TrainerSettings = Omit<TrainerOptions, "algorithm"> & {
  readonly algorithm?: Omit<NonNullable<TrainerOptions["algorithm"]>, "rewards">
}

export type TrainerCall =
  /** `scores`: one per trajectory, computed on the run's thread by the reward manager. */
  | { readonly type: "update"; readonly trajectories: ReadonlyArray<Trajectory>; readonly scores: ReadonlyArray<number> }
  | { readonly type: "sft"; readonly trajectories: ReadonlyArray<Trajectory>; readonly options: SftOptions }
  | { readonly type: "policyWeights" }
  | { readonly type: "restore"; readonly weights: Weights; readonly optimizer: AdamWState; readonly version: number }
  | { readonly type: "checkpoint"; readonly directory: string; readonly sourceModel: string; readonly state: CheckpointState }
  | { readonly type: "close" }

export interface SftOptions {
  readonly steps: number
  readonly batchSize?: number | undefined
  readonly learningRate?: number | undefined
  /** Seeds the shuffle of the demonstrations (the experiment's seed). */
  readonly seed?: number | undefined
}

export type CheckpointState = Omit<Checkpoint.TrainerState, "optimizerStep">

export type TrainerReply = UpdateMetrics | SftMetrics | Weights | void

export type ToTrainer = { readonly id: number; readonly call: TrainerCall }

export type FromTrainer =
  | { readonly type: "ready"; readonly backend: string; readonly version: number }
  | { readonly type: "failed"; readonly message: string }
  /** `version`: the trainer's version after the call. */
  | { readonly id: number; readonly ok: true; readonly value: TrainerReply; readonly version: number }
  | { readonly id: number; readonly ok: false; readonly message: string; readonly version: number }

/** Runs one call on a trainer in this thread: the worker and the calling-thread transport both answer with it. */
export const callTrainer = (trainer: Trainer, call: TrainerCall): TrainerReply => {
  switch (call.type) {
    case "update":
      return trainer.update(call.trajectories, call.scores)
    case "sft":
      return trainer.sft(call.trajectories, call.options)
    case "policyWeights":
      return trainer.policyWeights()
    case "restore":
      return trainer.restore(call.weights, call.optimizer, call.version)
    case "checkpoint":
      return Checkpoint.save(call.directory, trainer, call.sourceModel, call.state)
    case "close":
      return trainer.dispose()
  }
}
