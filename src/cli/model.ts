/**
 * `episodic model init`: makes a model directory from nothing (tokenizer, config, seeded weights, ONNX
 * graph), as the default experiment does on first use. `episodic model import`: checks a Hugging Face
 * checkpoint, says what it found, and writes the inference actor's graph from its weights.
 */
import { Console, Effect, Option } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import * as path from "node:path"
import { errorMessage } from "../errorMessage.ts"
import { presets, ModelConfigError, type Preset } from "../model/config.ts"
import { importCheckpoint } from "../model/huggingFace.ts"
import { initModel } from "../model/init.ts"

const init = Command.make(
  "init",
  {
    preset: Flag.Literals("preset", Object.keys(presets) as Array<Preset>).pipe(
      Flag.withDescription("micro: 2 layers of 96 (the default experiment trains it on a CPU in minutes); tiny: 4 layers of 128; small: 8 layers of 256"),
      Flag.withDefault("tiny" as Preset)
    ),
    seed: Flag.Int("seed").pipe(Flag.withDescription("Seeds the random weights"), Flag.withDefault(0)),
    toolCalls: Flag.Boolean("tool-calls").pipe(
      Flag.withDescription("The tokenizer also learns agents' tool calls (grid-quest's move tool in the Hermes format, docs/agents.md)"),
      Flag.withDefault(false)
    ),
    out: Flag.String("out").pipe(Flag.withDescription("The model directory to write (replaced if it exists)"), Flag.optional)
  },
  Effect.fn(function*(flags) {
    const out = Option.getOrElse(flags.out, () => path.join("models", flags.preset))
    const started = performance.now()
    const config = yield* Effect.tryPromise({
      try: () => initModel(out, { preset: flags.preset, seed: flags.seed, toolCalls: flags.toolCalls }),
      catch: (cause) => new ModelConfigError({ message: `cannot make the model at ${path.resolve(out)}: ${errorMessage(cause)}` })
    })
    const parameters = config.vocabSize * config.hiddenSize * 2 + config.numLayers * (
      config.hiddenSize * config.headDim * (2 * config.numHeads + 2 * config.numKeyValueHeads) +
      3 * config.hiddenSize * config.intermediateSize + 2 * config.hiddenSize
    ) + config.hiddenSize
    yield* Console.log(
      `episodic model init: ${flags.preset} model (${(parameters / 1e6).toFixed(2)}M parameters, vocabulary ${config.vocabSize}, seed ${flags.seed}) ` +
        `written to ${path.resolve(out)} in ${((performance.now() - started) / 1000).toFixed(1)} s`
    )
  })
).pipe(
  Command.withDescription("Make a seeded random-init Llama-style model: tokenizer, config.json, model.safetensors, onnx/model.onnx"),
  Command.withExamples([
    { command: "episodic model init", description: "The tiny model in models/tiny" },
    { command: "episodic model init --preset small --seed 1 --out models/small", description: "A larger one" }
  ])
)

const importCommand = Command.make(
  "import",
  {
    directory: Argument.String("hf-dir").pipe(Argument.withDescription("A Hugging Face checkpoint: config.json, model.safetensors (or shards with model.safetensors.index.json), tokenizer files")),
    out: Flag.String("out").pipe(
      Flag.withDescription("Write a complete model directory here (tokenizer and config files, model.safetensors, onnx/model.onnx) instead of caching the graph beside the checkpoint"),
      Flag.optional
    )
  },
  Effect.fn(function*({ directory, out }) {
    const started = performance.now()
    const report = yield* Effect.try({
      try: () => importCheckpoint(path.resolve(directory), Option.getOrUndefined(out)),
      catch: (cause) => new ModelConfigError({ message: `cannot import ${path.resolve(directory)}: ${errorMessage(cause)}` })
    })
    for (const line of report.lines) yield* Console.log(line)
    yield* Console.log(`graph: ${report.graph} (${((performance.now() - started) / 1000).toFixed(1)} s); \`--model ${Option.getOrElse(out, () => directory)}\` runs and trains it`)
  })
).pipe(
  Command.withDescription("Check a Hugging Face checkpoint (Llama, Mistral, Qwen2, Qwen3), say what it is, and write its ONNX graph for the inference actor"),
  Command.withExamples([
    { command: "episodic model import ~/models/Qwen2.5-0.5B-Instruct", description: "Export the graph into the checkpoint's onnx/ (a run does this itself on first use)" },
    { command: "episodic model import ~/models/SmolLM2-135M-Instruct --out models/smollm2", description: "A self-contained copy" }
  ])
)

export const model = Command.make("model").pipe(
  Command.withDescription("Make, import and inspect model directories"),
  Command.withSubcommands([init, importCommand])
)
