/**
 * `episodic model init`: makes a model directory from nothing (tokenizer, config, seeded weights, ONNX
 * graph), as the default experiment does on first use.
 */
import { Console, Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import * as path from "node:path"
import { errorMessage } from "../errorMessage.ts"
import { presets, ModelConfigError, type Preset } from "../model/config.ts"
import { initModel } from "../model/init.ts"

const init = Command.make(
  "init",
  {
    preset: Flag.Literals("preset", Object.keys(presets) as Array<Preset>).pipe(
      Flag.withDescription("micro: 2 layers of 96 (the default experiment trains it on a CPU in minutes); tiny: 4 layers of 128; small: 8 layers of 256"),
      Flag.withDefault("tiny" as Preset)
    ),
    seed: Flag.Int("seed").pipe(Flag.withDescription("Seeds the random weights"), Flag.withDefault(0)),
    out: Flag.String("out").pipe(Flag.withDescription("The model directory to write (replaced if it exists)"), Flag.optional)
  },
  Effect.fn(function*(flags) {
    const out = Option.getOrElse(flags.out, () => path.join("models", flags.preset))
    const started = performance.now()
    const config = yield* Effect.tryPromise({
      try: () => initModel(out, { preset: flags.preset, seed: flags.seed }),
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

export const model = Command.make("model").pipe(
  Command.withDescription("Make and inspect model directories"),
  Command.withSubcommands([init])
)
