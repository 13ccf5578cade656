/**
 * Hugging Face checkpoints as they are published (`config.json`, `model.safetensors` or shards with
 * `model.safetensors.index.json`, often bfloat16, tokenizer files) run and train as they are: the
 * inference actor's ONNX graph is written by episodic's exporter from the checkpoint's own weights, once,
 * and kept beside them as `onnx/episodic-<key>.onnx` (or under the cache directory when the checkpoint's
 * directory cannot be written). The key covers config.json, the weight files' names, sizes and times and
 * the exporter's version, so changed weights get a new graph and the old one is removed.
 *
 * Which graph a directory runs:
 * - a checkpoint of a family episodic exports (family.ts): episodic's own graph of its weights, even when
 *   the directory also carries a published `onnx/model.onnx` (the trainer's twin computes that same graph's
 *   function, and weight updates are exported the same way); `onnx/model.onnx` itself when episodic wrote
 *   it (`model init`, training checkpoints, `model import --out`), since it was written with the weights;
 * - otherwise the directory's published `onnx/model.onnx` (generation only).
 */
import { createHash } from "node:crypto"
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync, closeSync, openSync, readSync } from "node:fs"
import { homedir } from "node:os"
import * as path from "node:path"
import { readConfig } from "./config.ts"
import { parameterCount, summary, type ModelConfig } from "./family.ts"
import { exportOnnx } from "./onnxExport.ts"
import * as Safetensors from "./safetensors.ts"

/** Bumped whenever the exporter's graph for the same weights changes, so cached graphs are rebuilt. */
export const exporterVersion = 2

/** The files besides the weights that make a model directory: configs, tokenizer, chat template. */
export const companionFiles = [
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "added_tokens.json",
  "vocab.json",
  "merges.txt",
  "tokenizer.model",
  "chat_template.jinja",
  "chat_template.json"
]

/** Whether `directory` holds safetensors weights (single or sharded) and a config.json. */
export const isCheckpoint = (directory: string): boolean =>
  existsSync(path.join(directory, "config.json")) && Safetensors.modelFiles(directory).length > 0

/** Whether `file` is a graph episodic's exporter wrote (its ModelProto names "episodic" as producer). */
export const writtenByEpisodic = (file: string): boolean => {
  const fd = openSync(file, "r")
  try {
    const head = Buffer.alloc(64)
    const read = readSync(fd, head, 0, 64, 0)
    // Field 2 (producer_name), length 8, "episodic": protobuf writes it right after ir_version.
    return head.subarray(0, read).includes(Buffer.from("\x12\x08episodic", "latin1"))
  } finally {
    closeSync(fd)
  }
}

/** Whether `directory` holds something the inference actor can run: a graph, or a checkpoint to export one from. */
export const hasModel = (directory: string): boolean =>
  existsSync(path.join(directory, "onnx", "model.onnx")) || isCheckpoint(directory)

/** The key of a checkpoint's graph: config.json, the weight files' names, sizes and modification times, the exporter. */
export const graphKey = (directory: string): string => {
  const hash = createHash("sha256")
  hash.update(`episodic-exporter-${exporterVersion}\n`)
  hash.update(readFileSync(path.join(directory, "config.json")))
  for (const file of Safetensors.modelFiles(directory)) {
    const stat = statSync(file)
    hash.update(`\n${path.basename(file)} ${stat.size} ${stat.mtimeMs}`)
  }
  return hash.digest("hex").slice(0, 16)
}

/** Where exported graphs go when a checkpoint's own directory is read-only. */
export const cacheDirectory = (): string =>
  process.env.EPISODIC_CACHE_DIR ?? path.join(process.env.XDG_CACHE_HOME ?? path.join(homedir(), ".cache"), "episodic")

const writeAtomically = (file: string, bytes: Uint8Array) => {
  const temporary = `${file}.tmp-${process.pid}`
  writeFileSync(temporary, bytes)
  renameSync(temporary, file)
}

/** Writes `bytes` as `onnx/episodic-<key>.onnx` in the checkpoint, or in the cache directory; removes stale ones beside it. */
const storeGraph = (directory: string, key: string, bytes: Uint8Array): string => {
  const beside = path.join(directory, "onnx")
  try {
    mkdirSync(beside, { recursive: true })
    const file = path.join(beside, `episodic-${key}.onnx`)
    writeAtomically(file, bytes)
    for (const name of readdirSync(beside)) {
      if (/^episodic-[0-9a-f]{16}\.onnx$/.test(name) && name !== path.basename(file)) rmSync(path.join(beside, name), { force: true })
    }
    return file
  } catch {
    const cached = path.join(cacheDirectory(), "onnx", `${key}.onnx`)
    mkdirSync(path.dirname(cached), { recursive: true })
    writeAtomically(cached, bytes)
    return cached
  }
}

const cachedGraph = (directory: string, key: string): string | undefined =>
  [path.join(directory, "onnx", `episodic-${key}.onnx`), path.join(cacheDirectory(), "onnx", `${key}.onnx`)].find((file) => existsSync(file))

export interface ResolvedGraph {
  readonly file: string
  /** How it was found: episodic's graph written with the weights, exported now, a cached export, or a published file. */
  readonly source: "episodic" | "exported" | "cached" | "published"
}

/**
 * The ONNX file the inference actor runs for `directory` (see the module's comment), exporting and caching
 * a checkpoint's graph when there is none yet. Unsupported checkpoints with a published graph run that
 * graph; without one, the family's refusal is thrown.
 */
export const graphFor = (directory: string): ResolvedGraph => {
  const published = path.join(directory, "onnx", "model.onnx")
  if (existsSync(published) && writtenByEpisodic(published)) return { file: published, source: "episodic" }
  if (isCheckpoint(directory)) {
    let config: ModelConfig
    try {
      config = readConfig(directory)
    } catch (cause) {
      if (existsSync(published)) return { file: published, source: "published" }
      throw cause
    }
    const key = graphKey(directory)
    const cached = cachedGraph(directory, key)
    if (cached !== undefined) return { file: cached, source: "cached" }
    return { file: storeGraph(directory, key, exportOnnx(config, Safetensors.readModel(directory))), source: "exported" }
  }
  if (existsSync(published)) return { file: published, source: "published" }
  throw new Error(`${directory} has no onnx/model.onnx and no safetensors weights: is it a model directory?`)
}

/**
 * transformers.js's `dtype` option and the file suffix it loads (`onnx/model{suffix}.onnx`). Its q1 / q1f16
 * are left out: onnxruntime-node 1.30's CPU MatMulNBits takes 2, 4 or 8 bits, not 1.
 */
export const graphSuffixes = {
  fp32: "",
  fp16: "_fp16",
  int8: "_int8",
  uint8: "_uint8",
  q8: "_quantized",
  q4: "_q4",
  q4f16: "_q4f16",
  q2: "_q2",
  q2f16: "_q2f16",
  bnb4: "_bnb4"
} as const

export type GraphDtype = keyof typeof graphSuffixes

/**
 * The published graph transformers.js loads for `dtype`: `onnx/model{suffix}.onnx`, or an older repository's
 * `onnx/decoder_model_merged{suffix}.onnx`. Its external data (`{file}_data`, `_data_1`, ...) loads from beside it.
 */
export const publishedGraph = (directory: string, dtype: GraphDtype): string => {
  const suffix = graphSuffixes[dtype]
  const candidates = [`model${suffix}.onnx`, `decoder_model_merged${suffix}.onnx`].map((name) => path.join(directory, "onnx", name))
  const found = candidates.find((file) => existsSync(file))
  if (found !== undefined) return found
  const onnxDirectory = path.join(directory, "onnx")
  const available = existsSync(onnxDirectory) ? readdirSync(onnxDirectory).filter((name) => name.endsWith(".onnx") && !name.startsWith("episodic-")) : []
  throw new Error(
    `dtype "${dtype}": ${path.join("onnx", `model${suffix}.onnx`)} is not in ${directory} (its graphs: ${available.length > 0 ? available.join(", ") : "none"})`
  )
}

export interface CheckpointReport {
  readonly directory: string
  readonly config: ModelConfig
  readonly dtype: Safetensors.FloatDtype
  readonly files: ReadonlyArray<string>
  readonly parameters: number
  /** What it found, in a few lines. */
  readonly lines: ReadonlyArray<string>
}

/** What a checkpoint is, read from its config and safetensors headers (the data is not read). */
export const inspect = (directory: string): CheckpointReport => {
  const config = readConfig(directory)
  const files = Safetensors.modelFiles(directory)
  if (files.length === 0) throw new Error(`${directory} has no model.safetensors or ${Safetensors.indexFile}`)
  const dtype = Safetensors.storedDtype(directory)
  const parameters = parameterCount(config)
  const lines = [
    summary(config),
    `weights: ${files.length === 1 ? path.basename(files[0]!) : `${files.length} shards (${Safetensors.indexFile})`}, ${dtype}, ` +
      `${(parameters / 1e6).toFixed(2)}M parameters`
  ]
  return { directory, config, dtype, files, parameters, lines }
}

/**
 * `episodic model import`: checks the checkpoint, reads every weight, and writes the actor's graph, either
 * into the checkpoint's cache (no `out`) or as a complete model directory at `out`: the companion files,
 * `model.safetensors` in the checkpoint's dtype (one file) and `onnx/model.onnx`.
 */
export const importCheckpoint = (directory: string, out?: string): CheckpointReport & { readonly graph: string } => {
  const report = inspect(directory)
  if (out === undefined) {
    const key = graphKey(directory)
    const existing = cachedGraph(directory, key)
    const graph = existing ?? storeGraph(directory, key, exportOnnx(report.config, Safetensors.readModel(directory)))
    return { ...report, graph }
  }
  const target = path.resolve(out)
  const staging = `${target}.tmp-${process.pid}`
  rmSync(staging, { recursive: true, force: true })
  mkdirSync(path.join(staging, "onnx"), { recursive: true })
  for (const name of companionFiles) {
    if (existsSync(path.join(directory, name))) copyFileSync(path.join(directory, name), path.join(staging, name))
  }
  const weights = Safetensors.readModel(directory)
  writeFileSync(path.join(staging, "onnx", "model.onnx"), exportOnnx(report.config, weights))
  Safetensors.write(path.join(staging, "model.safetensors"), weights, report.dtype)
  rmSync(target, { recursive: true, force: true })
  renameSync(staging, target)
  return { ...report, graph: path.join(target, "onnx", "model.onnx") }
}
