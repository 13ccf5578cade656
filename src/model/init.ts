/**
 * `episodic model init`: makes a complete Hugging Face model directory from nothing: a tokenizer trained
 * on the built-in environments' text, a seeded random-init Llama-style model in `model.safetensors`, and
 * its ONNX graph in `onnx/model.onnx` written by our exporter. Nothing is downloaded.
 */
import { existsSync, mkdirSync, renameSync, rmSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import { mulberry32 } from "../Seed.ts"
import { configJson, presets, type LlamaConfig, type Preset } from "./config.ts"
import { weightShapes } from "./family.ts"
import { exportOnnx } from "./onnxExport.ts"
import * as Safetensors from "./safetensors.ts"
import { environmentCorpus, toolCallCorpus, trainTokenizer } from "./tokenizer.ts"

export interface InitOptions {
  readonly preset?: Preset
  readonly seed?: number
  /** Tokenizer size: 256 bytes, 3 special tokens, and learned merges up to this many. */
  readonly vocabSize?: number
  /**
   * The tokenizer also learns from agents' tool calls (`toolCallCorpus`: grid-quest through a `move` tool in
   * the Hermes format), so that an agent's calls and the tools in its system message are a few tokens each.
   */
  readonly toolCalls?: boolean
  /** Replace an existing directory (the default); false keeps one that appeared meanwhile. */
  readonly replace?: boolean
}

/** Weights drawn as Hugging Face initialises Llama: normal(0, 0.02) matrices, zero biases, unit RMSNorm scales. */
export const randomWeights = (config: LlamaConfig, seed: number): Map<string, Safetensors.Tensor> => {
  const random = mulberry32(seed)
  // Box-Muller on the seeded uniform generator.
  const normal = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())
  const weights = new Map<string, Safetensors.Tensor>()
  for (const [name, shape] of weightShapes(config)) {
    const data = new Float32Array(shape.reduce((a, b) => a * b, 1))
    if (name.endsWith("norm.weight")) data.fill(1)
    else if (name.endsWith(".bias")) data.fill(0)
    else for (let i = 0; i < data.length; i++) data[i] = 0.02 * normal()
    weights.set(name, { shape, data })
  }
  return weights
}

/** Writes the ONNX graph for `weights` to `<directory>/onnx/model.onnx` (through a rename: never torn). */
export const writeOnnx = (directory: string, config: LlamaConfig, weights: Safetensors.Weights): void => {
  mkdirSync(path.join(directory, "onnx"), { recursive: true })
  const file = path.join(directory, "onnx", "model.onnx")
  writeFileSync(`${file}.tmp-${process.pid}`, exportOnnx(config, weights))
  renameSync(`${file}.tmp-${process.pid}`, file)
}

/** Creates the model directory `out`; an existing directory is replaced whole. */
export const initModel = async (out: string, options: InitOptions = {}): Promise<LlamaConfig> => {
  const preset = presets[options.preset ?? "tiny"]
  if (preset === undefined) throw new Error(`unknown preset "${options.preset}"; presets: ${Object.keys(presets).join(", ")}`)
  const corpus = [...await environmentCorpus(), ...(options.toolCalls === true ? await toolCallCorpus() : [])]
  const tokenizer = trainTokenizer(corpus, options.vocabSize ?? 1024)
  const config: LlamaConfig = {
    ...preset,
    family: "llama",
    vocabSize: tokenizer.vocabSize,
    headDim: preset.hiddenSize / preset.numHeads,
    rmsNormEps: 1e-5,
    ropeTheta: 10_000,
    rope: { type: "default" },
    tieWordEmbeddings: false,
    qkvBias: false,
    outputBias: false,
    qkNorm: false
  }
  const weights = randomWeights(config, options.seed ?? 0)
  // Build next to the target and rename, so an interrupted init leaves no half-made model behind.
  const target = path.resolve(out)
  const staging = `${target}.tmp-${process.pid}`
  rmSync(staging, { recursive: true, force: true })
  mkdirSync(staging, { recursive: true })
  const json = (name: string, value: unknown) => writeFileSync(path.join(staging, name), `${JSON.stringify(value, null, 2)}\n`)
  const { endOfText, imEnd } = tokenizer.ids
  json("config.json", configJson(config, { bosTokenId: endOfText, eosTokenId: imEnd, padTokenId: endOfText }))
  json("generation_config.json", { bos_token_id: endOfText, eos_token_id: [imEnd], pad_token_id: endOfText, do_sample: false })
  json("tokenizer.json", tokenizer.tokenizerJson)
  json("tokenizer_config.json", tokenizer.tokenizerConfig)
  Safetensors.write(path.join(staging, "model.safetensors"), weights)
  writeOnnx(staging, config, weights)
  if (options.replace !== false) rmSync(target, { recursive: true, force: true })
  try {
    renameSync(staging, target)
  } catch (cause) {
    // Another process made the same model first (two runs on first use): keep theirs.
    rmSync(staging, { recursive: true, force: true })
    if (options.replace !== false || !existsSync(path.join(target, "config.json"))) throw cause
  }
  return config
}
