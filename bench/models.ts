/**
 * A Hugging Face checkpoint beside the project's own model of similar size: a synthesized Qwen2-family
 * checkpoint (8 layers, hidden 256, 4 heads of 64 over 2 key/value heads, MLP 1376, tied embeddings, q/k/v
 * biases, bf16, Qwen's real 151,936-token vocabulary: Qwen2.5-0.5B's shape ratios) against the `small`
 * preset (8 layers, hidden 256, 8 heads of 32 over 4, MLP 704, untied, 1,024 tokens).
 *
 * - actor tokens/s: 16 greedy requests of 48 new tokens each (different 32-token prompts) through the
 *   inference actor at once, generated tokens over wall time, after a warm-up request.
 * - trainer tokens/s: the tfjs twin's forward and backward on 4 sequences of 128 tokens whose last 16 are
 *   scored (a rollout's response tokens, the rest prompt and observations), on the wasm backend: sequence
 *   tokens over the time of one pass, median of 3. (Scoring every position of 8 x 128 tokens over a
 *   151,936-token vocabulary needs more than the wasm backend's memory: logits are [scored, vocab].)
 *
 *   npm run bench -- models
 */
import * as tf from "@tensorflow/tfjs"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import { selectBackend } from "../actors/trainer/backend.ts"
import { PolicyModel } from "../actors/trainer/PolicyModel.ts"
import { GenerationRequest, SamplingParams } from "../src/Generation.ts"
import { readConfig } from "../src/model/config.ts"
import { parameterCount } from "../src/model/family.ts"
import { initModel } from "../src/model/init.ts"
import * as Safetensors from "../src/model/safetensors.ts"
import { mulberry32 } from "../src/Seed.ts"
import { synthesize } from "../test/hf-fixtures.ts"

const median = (values: ReadonlyArray<number>) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!

const actorTokensPerSecond = async (directory: string, vocab: number): Promise<number> => {
  const actor = await InferenceActor.start({ model: directory })
  try {
    const random = mulberry32(1)
    const prompt = () => Array.from({ length: 32 }, () => Math.floor(random() * Math.min(vocab, 30_000)))
    const sampling = new SamplingParams({ ...SamplingParams.greedy, maxNewTokens: 48 })
    const request = (i: number) => new GenerationRequest({ episodeId: `e${i}`, turn: 0, contextIds: prompt(), sampling, stopTokenIds: [], seed: i })
    await actor.generate(request(-1))
    const started = performance.now()
    const results = await Promise.all(Array.from({ length: 16 }, (_, i) => actor.generate(request(i))))
    const tokens = results.reduce((n, r) => n + r.tokenIds.length, 0)
    return tokens / ((performance.now() - started) / 1000)
  } finally {
    await actor.close()
  }
}

const trainerTokensPerSecond = (directory: string): number => {
  const config = readConfig(directory)
  const twin = PolicyModel.fromWeights(config, Safetensors.readModel(directory))
  try {
    const random = mulberry32(2)
    const sequences = Array.from({ length: 4 }, () => Array.from({ length: 128 }, () => Math.floor(random() * Math.min(config.vocabSize, 30_000))))
    const scored = sequences.map((s) => Array.from({ length: 16 }, (_, i) => s.length - 16 + i))
    const times: Array<number> = []
    for (let run = 0; run < 4; run++) {
      const started = performance.now()
      const { value, grads } = tf.variableGrads(() => tf.neg(tf.mean(twin.score({ sequences, scored }).logprobs)) as tf.Scalar)
      value.dataSync()
      for (const grad of Object.values(grads)) grad.dispose()
      value.dispose()
      if (run > 0) times.push((performance.now() - started) / 1000)
    }
    return (4 * 128) / median(times)
  } finally {
    twin.dispose()
  }
}

export default async () => {
  await selectBackend("wasm")
  const qwen = synthesize("qwen2", {
    dtype: "BF16", layers: 8, hidden: 256, heads: 4, kvHeads: 2, intermediate: 1376, seed: 1,
    directory: path.join(mkdtempSync(path.join(tmpdir(), "episodic-bench-models-")), "qwen2")
  })
  const small = path.join(mkdtempSync(path.join(tmpdir(), "episodic-bench-models-")), "small")
  await initModel(small, { preset: "small" })
  const rows = []
  for (const [name, directory] of [["qwen2 (synthesized, 8 x 256, vocab 151,936)", qwen.directory], ["small preset (8 x 256, vocab 1,024)", small]] as const) {
    const config = readConfig(directory)
    const actor = await actorTokensPerSecond(directory, config.vocabSize)
    const trainer = trainerTokensPerSecond(directory)
    rows.push({ model: name, parameters_millions: +(parameterCount(config) / 1e6).toFixed(2), actor_tokens_per_second: Math.round(actor), trainer_tokens_per_second: Math.round(trainer) })
  }
  console.log("| model | parameters | actor tokens/s | trainer tokens/s |\n| --- | ---: | ---: | ---: |")
  for (const row of rows) console.log(`| ${row.model} | ${row.parameters_millions} M | ${row.actor_tokens_per_second} | ${row.trainer_tokens_per_second} |`)
  console.log(JSON.stringify({ bench: "models", rows }))
}
