/**
 * The trainer actor's speed on the default experiment's model (micro) and on tiny: tokens per second through
 * an update (forward, backward, AdamW), seconds per update, and the weight sync to the inference actor.
 *
 * The batch is what the default experiment trains on: 8 grid-quest prompts x 8 samples at temperature 1,
 * played by a model warm-started on the solver's demonstrations. The baseline, measured in the same run, is
 * TensorFlow.js's plain JavaScript `cpu` backend on the same batch; the trainer runs on `wasm` here
 * (tfjs-node cannot be installed on these machines).
 *
 *   npm run bench -- trainer
 */
import * as tf from "@tensorflow/tfjs"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import * as Checkpoint from "../actors/trainer/checkpoint.ts"
import { Trainer } from "../actors/trainer/Trainer.ts"
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment, type ExperimentConfig } from "../src/Experiment.ts"
import { initModel } from "../src/model/init.ts"
import { runExperiment } from "../src/runExperiment.ts"
import * as Trajectory from "../src/Trajectory.ts"

const median = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

const play = async (config: Partial<ExperimentConfig> & { model: string }) => {
  const { directory } = await runExperiment(defineExperiment({
    name: "bench-trainer",
    environment: { name: "grid-quest", episodes: 8 },
    limits: { maxTurns: 12, maxNewTokens: 8 },
    concurrency: 64,
    out: mkdtempSync(path.join(tmpdir(), "episodic-bench-trainer-")),
    ...config
  })).result
  return readFileSync(path.join(directory, "trajectories.jsonl"), "utf8").trim().split("\n").map((line) => Trajectory.decode(JSON.parse(line)))
}

const solver = ({ context }: { context: string }) => solveGridQuest(context.slice(context.lastIndexOf("You are at")))

const measure = async (preset: "micro" | "tiny") => {
  const model = path.join(mkdtempSync(path.join(tmpdir(), `episodic-bench-${preset}-`)), "model")
  await initModel(model, { preset, seed: 0 })
  const demos = await play({ model, policy: solver, environment: { name: "grid-quest", episodes: 128 } })
  const trainer = await Trainer.create({ model, backend: "wasm" })
  trainer.sft(demos, { steps: 40 })
  // The warm-started model's weights, as the default experiment's first batch sees them.
  const warm = path.join(path.dirname(model), "warm")
  Checkpoint.save(warm, trainer, model, { version: 1, updates: 0, rowsConsumed: 0, warmstartSuccess: null, staleDropped: 0, elapsedSeconds: 0 })
  const batch = await play({ model: warm, samplesPerRow: 8, sampling: { temperature: 1 } })
  const tokens = batch.reduce((n, t) => n + t.promptIds.length + t.responseIds.length, 0)
  const generated = batch.reduce((n, t) => n + t.responseMask.filter((m) => m === 1).length, 0)

  trainer.update(batch) // warm-up: kernels and XNNPACK operators
  const updates: Array<number> = []
  for (let i = 0; i < 5; i++) updates.push(trainer.update(batch).update_seconds)

  const actor = await InferenceActor.start({ model: warm })
  const syncs: Array<number> = []
  try {
    for (let i = 0; i < 5; i++) {
      const started = performance.now()
      await actor.updateWeights(trainer.policyWeights(), trainer.version + i)
      syncs.push((performance.now() - started) / 1000)
    }
  } finally {
    await actor.close()
  }

  // The baseline: the same update on tfjs's plain JavaScript backend.
  await tf.setBackend("cpu")
  const cpuTrainer = await Trainer.create({ model: warm, backend: "cpu" })
  const cpuUpdate = cpuTrainer.update(batch).update_seconds
  cpuTrainer.dispose()
  await tf.setBackend("wasm")
  trainer.dispose()

  const update = median(updates)
  return {
    preset,
    episodes: batch.length,
    tokens,
    generated,
    update_seconds: update,
    tokens_per_second: tokens / update,
    sync_ms: 1000 * median(syncs),
    cpu_update_seconds: cpuUpdate,
    wasm_vs_cpu_speedup: cpuUpdate / update
  }
}

export default async () => {
  const results = [await measure("micro"), await measure("tiny")]
  console.log("| model | episodes | tokens | generated | s per update (wasm) | tokens/s | weight sync ms | s per update (cpu) | wasm / cpu |")
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for (const r of results) {
    console.log(
      `| ${r.preset} | ${r.episodes} | ${r.tokens} | ${r.generated} | ${r.update_seconds.toFixed(2)} | ${Math.round(r.tokens_per_second)} | ` +
        `${r.sync_ms.toFixed(0)} | ${r.cpu_update_seconds.toFixed(2)} | ${r.wasm_vs_cpu_speedup.toFixed(1)}x |`
    )
  }
  const round = (x: number, digits = 3) => Number(x.toFixed(digits))
  console.log(JSON.stringify({
    bench: "trainer",
    backend: "wasm",
    ...Object.fromEntries(results.flatMap((r) => [
      [`${r.preset}_tokens_per_second`, Math.round(r.tokens_per_second)],
      [`${r.preset}_update_seconds`, round(r.update_seconds)],
      [`${r.preset}_sync_ms`, round(r.sync_ms, 1)],
      [`${r.preset}_wasm_vs_cpu_speedup`, round(r.wasm_vs_cpu_speedup, 2)]
    ]))
  }))
}
