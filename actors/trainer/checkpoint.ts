/**
 * Checkpoints: a complete model directory (config, tokenizer, `model.safetensors`, `onnx/model.onnx`), so
 * `episodic run --model <checkpoint>` or transformers.js load it as they load any model, plus what resuming
 * needs: `value_head.safetensors` (PPO's critic), `optimizer.safetensors` (AdamW's moments) and
 * `trainer_state.json` (versions, updates, rows consumed).
 *
 * A model trained from a Hugging Face checkpoint is saved in that checkpoint's layout: its config.json (every
 * family field kept), its tokenizer files, the weights under the family's names (a tied model has no
 * lm_head) in the dtype the source stored (bfloat16 stays bfloat16), so transformers and vLLM load it as
 * they loaded the source. The float32 weights the trainer holds are kept beside them in
 * `trainer_weights.safetensors` when the source dtype is narrower, so resuming loses nothing to rounding.
 *
 * A checkpoint is written beside its final place and renamed over it, so a crash leaves the previous one
 * whole, never a torn one.
 */
import { copyFileSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import { companionFiles } from "../../src/model/huggingFace.ts"
import { writeOnnx } from "../../src/model/init.ts"
import * as Safetensors from "../../src/model/safetensors.ts"
import type { AdamWState } from "./optimizer.ts"
import type { Trainer } from "./Trainer.ts"

/** Where the run stands: enough to go on from here. */
export interface TrainerState {
  readonly version: number
  readonly updates: number
  /** Rows of the run's dataset or environment already trained on. */
  readonly rowsConsumed: number
  readonly optimizerStep: number
  readonly warmstartSuccess: number | null
  readonly staleDropped: number
  readonly elapsedSeconds: number
}

/** The trainer's own float32 weights, when model.safetensors holds them narrower. */
const trainerWeightsFile = "trainer_weights.safetensors"

/** Where a run keeps its checkpoint. */
export const directoryOf = (runDirectory: string): string => path.join(runDirectory, "checkpoint")

/** Whether `directory` holds a checkpoint written by `save`. */
export const exists = (directory: string): boolean => existsSync(path.join(directory, "trainer_state.json"))

/** Writes the checkpoint; the optimizer's step count is taken from the trainer. */
export const save = (directory: string, trainer: Trainer, sourceModel: string, state: Omit<TrainerState, "optimizerStep">): void => {
  const partial = `${directory}.partial`
  rmSync(partial, { recursive: true, force: true })
  mkdirSync(partial, { recursive: true })
  for (const file of companionFiles) {
    if (existsSync(path.join(sourceModel, file))) copyFileSync(path.join(sourceModel, file), path.join(partial, file))
  }
  const weights = trainer.model.weights()
  const valueHead = weights.get("value_head.weight")
  weights.delete("value_head.weight")
  const dtype = Safetensors.modelFiles(sourceModel).length > 0 ? Safetensors.storedDtype(sourceModel) : "F32"
  Safetensors.write(path.join(partial, "model.safetensors"), weights, dtype)
  if (dtype !== "F32") Safetensors.write(path.join(partial, trainerWeightsFile), weights)
  // The graph computes what model.safetensors holds (rounded to its dtype): a run from this directory starts
  // its actor and its trainer on the same weights.
  writeOnnx(partial, trainer.config, dtype === "F32" ? weights : Safetensors.read(path.join(partial, "model.safetensors")))
  if (valueHead !== undefined) Safetensors.write(path.join(partial, "value_head.safetensors"), new Map([["value_head.weight", valueHead]]))
  const optimizer = trainer.optimizerState()
  const moments = new Map<string, Safetensors.Tensor>()
  for (const [name, { m, v }] of optimizer.moments) {
    const shape = trainer.model.variables.get(name)!.shape
    moments.set(`m.${name}`, { shape, data: m })
    moments.set(`v.${name}`, { shape, data: v })
  }
  Safetensors.write(path.join(partial, "optimizer.safetensors"), moments)
  writeFileSync(path.join(partial, "trainer_state.json"), JSON.stringify({ ...state, optimizerStep: optimizer.step }, null, 2) + "\n")
  const old = `${directory}.old`
  rmSync(old, { recursive: true, force: true })
  if (existsSync(directory)) renameSync(directory, old)
  renameSync(partial, directory)
  rmSync(old, { recursive: true, force: true })
}

export interface Checkpoint {
  readonly weights: Map<string, Safetensors.Tensor>
  readonly optimizer: AdamWState
  readonly state: TrainerState
}

/** Reads a checkpoint written by `save`; undefined when there is none. */
export const load = (directory: string): Checkpoint | undefined => {
  if (!exists(directory)) return undefined
  const stateFile = path.join(directory, "trainer_state.json")
  const state = JSON.parse(readFileSync(stateFile, "utf8")) as TrainerState
  const exact = path.join(directory, trainerWeightsFile)
  const weights = Safetensors.read(existsSync(exact) ? exact : path.join(directory, "model.safetensors"))
  const valueHeadFile = path.join(directory, "value_head.safetensors")
  if (existsSync(valueHeadFile)) for (const [name, tensor] of Safetensors.read(valueHeadFile)) weights.set(name, tensor)
  const moments = new Map<string, { m: Float32Array; v: Float32Array }>()
  for (const [name, tensor] of Safetensors.read(path.join(directory, "optimizer.safetensors"))) {
    const [kind, ...rest] = name.split(".")
    const key = rest.join(".")
    const entry = moments.get(key) ?? { m: new Float32Array(0), v: new Float32Array(0) }
    if (kind === "m") entry.m = tensor.data
    else entry.v = tensor.data
    moments.set(key, entry)
  }
  return { weights, optimizer: { step: state.optimizerStep, moments }, state }
}
