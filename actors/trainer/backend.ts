/**
 * Which TensorFlow.js backend the trainer computes on, best available first:
 *   tfjs-node-gpu (CUDA) -> tfjs-node (libtensorflow on the CPU) -> wasm (XNNPACK) -> cpu (plain JavaScript).
 * The two native ones are optionalDependencies: their install downloads libtensorflow, which fails where
 * only the npm registry can be reached, and npm then goes on without them. wasm is about 6x faster than cpu.
 */
import * as tf from "@tensorflow/tfjs"
import "@tensorflow/tfjs-backend-wasm"

export type TrainerBackend = "auto" | "tensorflow-gpu" | "tensorflow" | "wasm" | "cpu"

const nativePackages = { "tensorflow-gpu": "@tensorflow/tfjs-node-gpu", tensorflow: "@tensorflow/tfjs-node" } as const

/** Tries to load a native package; it registers the "tensorflow" backend on import. */
const loadNative = async (name: keyof typeof nativePackages): Promise<boolean> => {
  try {
    await import(nativePackages[name])
    return tf.findBackend("tensorflow") !== null
  } catch {
    return false
  }
}

let chosen: string | undefined

/** Sets the backend (once per process) and says which it is. */
export const selectBackend = async (preferred: TrainerBackend = "auto"): Promise<string> => {
  if (chosen !== undefined) return chosen
  const order: ReadonlyArray<Exclude<TrainerBackend, "auto">> = preferred === "auto" ? ["tensorflow-gpu", "tensorflow", "wasm", "cpu"] : [preferred]
  for (const candidate of order) {
    if (candidate === "tensorflow-gpu" || candidate === "tensorflow") {
      if ((await loadNative(candidate)) && (await tf.setBackend("tensorflow"))) return (chosen = candidate === "tensorflow-gpu" ? "tensorflow (tfjs-node-gpu)" : "tensorflow (tfjs-node)")
      continue
    }
    if (await tf.setBackend(candidate)) {
      await tf.ready()
      return (chosen = candidate)
    }
  }
  throw new Error(`trainer backend "${preferred}" is not available${preferred === "auto" ? "" : ` (install ${preferred in nativePackages ? nativePackages[preferred as keyof typeof nativePackages] : "@tensorflow/tfjs-backend-wasm"})`}`)
}
