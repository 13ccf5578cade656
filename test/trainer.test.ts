/**
 * The trainer actor end to end on the real model: the tfjs twin reproduces the logprobs the inference actor
 * recorded, an update's weights reach the actor with their version, checkpoints round-trip and load as a
 * model directory, the lag bound holds, and a run resumes from its checkpoint.
 */
import * as tf from "@tensorflow/tfjs"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { InferenceActor } from "../actors/inference/index.ts"
import * as Checkpoint from "../actors/trainer/checkpoint.ts"
import { Trainer } from "../actors/trainer/Trainer.ts"
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment, type ExperimentConfig } from "../src/Experiment.ts"
import { runExperiment } from "../src/runExperiment.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { splitByLag } from "../src/Training.ts"
import { tinyModel } from "./support.ts"

const scratch = () => mkdtempSync(path.join(tmpdir(), "episodic-trainer-"))

const readTrajectories = (file: string): Array<Trajectory.Trajectory> =>
  readFileSync(file, "utf8").trim().split("\n").map((line) => Trajectory.decode(JSON.parse(line)))

/** Plays `episodes` grid-quest episodes with the model through the whole engine; returns the records. */
const play = async (model: string, options: Partial<ExperimentConfig> = {}) => {
  const out = scratch()
  const run = runExperiment(defineExperiment({
    name: "play",
    model,
    environment: { name: "grid-quest", episodes: 6 },
    limits: { maxTurns: 4, maxNewTokens: 6 },
    sampling: { temperature: 1 },
    concurrency: 6,
    out,
    ...options
  }))
  const { directory } = await run.result
  return readTrajectories(path.join(directory, "trajectories.jsonl"))
}

/** The twin's logprob of every generated token, trajectory by trajectory. */
const twinLogprobs = (trainer: Trainer, trajectories: ReadonlyArray<Trajectory.Trajectory>, temperature: number, truncation?: { topK: number; topP: number }) =>
  trajectories.map((t) => {
    const scored = t.responseMask.flatMap((m, i) => (m === 1 ? [t.promptIds.length + i] : []))
    return tf.tidy(() => Array.from(trainer.model.score({ sequences: [[...t.promptIds, ...t.responseIds]], scored: [scored] }, temperature, truncation).logprobs.dataSync()))
  })

const recorded = (t: Trajectory.Trajectory) => t.responseLogprobs.filter((_, i) => t.responseMask[i] === 1)

const maxDifference = (a: ReadonlyArray<ReadonlyArray<number>>, b: ReadonlyArray<ReadonlyArray<number>>) =>
  Math.max(...a.flatMap((row, i) => row.map((value, j) => Math.abs(value - b[i]![j]!))))

describe("the trainer's tfjs twin", () => {
  let model: string
  let trainer: Trainer
  beforeAll(async () => {
    model = await tinyModel(0)
    // A score that differs between any two samples (their sampled tokens' logprob), so the update has a gradient.
    trainer = await Trainer.create({
      model,
      backend: "wasm",
      optimizer: { learningRate: 1e-2 },
      algorithm: { rewards: (t) => recorded(t).reduce((a, b) => a + b, 0) }
    })
  })
  afterAll(() => trainer.dispose())

  it("runs on the wasm backend when the native ones are not installed", () => {
    expect(trainer.backend).toBe("wasm")
  })

  it("gives the logprobs the inference actor recorded, within 1e-3, at temperature 1 and 0.7", async () => {
    for (const temperature of [1, 0.7]) {
      const trajectories = await play(model, { sampling: { temperature } })
      const generated = trajectories.reduce((n, t) => n + recorded(t).length, 0)
      expect(generated).toBeGreaterThan(20)
      expect(maxDifference(twinLogprobs(trainer, trajectories, temperature), trajectories.map(recorded))).toBeLessThan(1e-3)
    }
  })

  it("scores top-k / top-p rollouts under the distribution they were drawn from, not the full softmax", async () => {
    for (const sampling of [{ temperature: 1, topK: 5, topP: 1 }, { temperature: 0.8, topK: 0, topP: 0.6 }]) {
      const trajectories = await play(model, { sampling })
      const truncated = twinLogprobs(trainer, trajectories, sampling.temperature, sampling)
      expect(maxDifference(truncated, trajectories.map(recorded))).toBeLessThan(1e-3)
      // The full softmax at the temperature is a different distribution: it would misread every token.
      expect(maxDifference(twinLogprobs(trainer, trajectories, sampling.temperature), trajectories.map(recorded))).toBeGreaterThan(1e-2)
    }
  })

  it("after an update, the actor serves the new weights under the new version, and its logprobs are the twin's", async () => {
    const trajectories = await play(model, { samplesPerRow: 4, environment: { name: "grid-quest", episodes: 2 } })
    const metrics = trainer.update(trajectories)
    expect(metrics.version).toBe(1)
    // Before the step the weights were the rollout's: the mismatch metric is tiny, on every generated token.
    expect(metrics.logprob_diff_max).toBeLessThan(1e-3)
    expect(metrics.logprob_diff_over_1e3).toBe(0)
    expect(metrics.logprob_diff_tokens).toBe(trajectories.reduce((n, t) => n + recorded(t).length, 0))
    expect(metrics.other_version_tokens).toBe(0)
    expect(metrics.grad_norm).toBeGreaterThan(0)
    const actor = await InferenceActor.start({ model, threads: 1 })
    try {
      await actor.updateWeights(trainer.policyWeights(), trainer.version)
      const { GenerationRequest, SamplingParams } = await import("../src/Generation.ts")
      const t = trajectories[0]!
      const context = [...t.promptIds]
      const result = await actor.generate(new GenerationRequest({
        episodeId: "after-update",
        turn: 0,
        contextIds: context,
        sampling: new SamplingParams({ ...SamplingParams.defaults, temperature: 1, maxNewTokens: 4 }),
        stopTokenIds: [2],
        seed: 7
      }))
      expect(result.policyVersion).toBe(1)
      const twin = tf.tidy(() =>
        Array.from(trainer.model.score({
          sequences: [[...context, ...result.tokenIds]],
          scored: [result.tokenIds.map((_, i) => context.length + i)]
        }).logprobs.dataSync())
      )
      twin.forEach((value, i) => expect(Math.abs(value - result.logprobs[i]!)).toBeLessThan(1e-3))
    } finally {
      await actor.close()
    }
  })

  it("a checkpoint round-trips weights, optimizer state and version, and loads as a model directory", async () => {
    const directory = path.join(scratch(), "checkpoint")
    const state = { version: trainer.version, updates: 1, rowsConsumed: 2, optimizerStep: 0, warmstartSuccess: null, staleDropped: 0, elapsedSeconds: 1 }
    Checkpoint.save(directory, trainer, model, state)
    const loaded = Checkpoint.load(directory)!
    expect(loaded.state).toMatchObject({ version: trainer.version, updates: 1, rowsConsumed: 2, optimizerStep: trainer.optimizer.stepCount })
    const restored = await Trainer.create({ model, backend: "wasm" })
    try {
      restored.restore(loaded.weights, loaded.optimizer, loaded.state.version)
      expect(restored.version).toBe(trainer.version)
      const [a, b] = [trainer.policyWeights(), restored.policyWeights()]
      for (const [name, tensor] of a) expect(Array.from(b.get(name)!.data)).toEqual(Array.from(tensor.data))
      const [sa, sb] = [trainer.optimizerState(), restored.optimizerState()]
      expect(sb.step).toBe(sa.step)
      for (const [name, moments] of sa.moments) expect(Array.from(sb.moments.get(name)!.v)).toEqual(Array.from(moments.v))
    } finally {
      restored.dispose()
    }
    // A model directory like any other: the inference actor serves it.
    const records = await play(directory, { environment: { name: "grid-quest", episodes: 2 } })
    expect(records.every((t) => t.finishReason !== "inference_error")).toBe(true)
  })
})

describe("the lag bound", () => {
  const withVersions = (...versions: Array<number>) =>
    ({ turns: versions.map((policyVersion) => ({ role: "assistant", policyVersion })) }) as unknown as Trajectory.Trajectory

  it("keeps trajectories at most maxPolicyLag versions old, judged by their oldest turn", () => {
    const batch = [withVersions(5, 5), withVersions(4, 5), withVersions(3, 4), withVersions(2)]
    expect(splitByLag(batch, 5, 0).fresh).toEqual([batch[0]])
    expect(splitByLag(batch, 5, 1).fresh).toEqual([batch[0], batch[1]])
    expect(splitByLag(batch, 5, 2).stale).toEqual([batch[3]])
  })
})

describe("a training run", () => {
  const experiment = (model: string, out: string, overrides: Partial<ExperimentConfig> = {}) =>
    defineExperiment({
      name: "train",
      model,
      environment: { name: "grid-quest", episodes: 4 },
      samplesPerRow: 4,
      concurrency: 16,
      limits: { maxTurns: 4, maxNewTokens: 4 },
      sampling: { temperature: 1 },
      trainer: {
        promptsPerUpdate: 2,
        checkpointEvery: 1,
        backend: "wasm",
        warmStart: { episodes: 8, steps: 2, policy: ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at"))) }
      },
      evaluation: { episodes: 4 },
      out,
      ...overrides
    })

  it("warm-starts, updates, syncs, records training metrics and a checkpoint, and resumes from it", async () => {
    const model = await tinyModel(0)
    const out = scratch()
    const first = await runExperiment(experiment(model, out)).result
    const summary = first.summary
    expect(summary.training).toMatchObject({ updates: 2, version: 3, backend: "wasm" })
    expect(typeof summary.warmstart_success).toBe("number")
    expect(typeof summary.eval_success).toBe("number")
    expect(summary.wall_seconds).toBeGreaterThan(0)
    expect(existsSync(path.join(first.directory, "warmstart", "demonstrations.jsonl"))).toBe(true)
    const metrics = readFileSync(path.join(first.directory, "metrics.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line))
    const trained = metrics.filter((point) => point.train !== undefined)
    expect(trained.length).toBeGreaterThan(0)
    expect(trained.at(-1).train).toMatchObject({ version: 3, updates: 2 })
    expect(trained.at(-1).train.sync_seconds).toBeGreaterThan(0)
    expect(trained.at(-1).train.logprob_diff_max).toBeLessThan(1e-3)
    // Every turn of the second batch was generated after the first update reached the actor.
    const records = readTrajectories(path.join(first.directory, "trajectories.jsonl"))
    expect(records).toHaveLength(16)
    const secondBatch = records.filter((t) => t.id.startsWith("u1-"))
    expect(secondBatch).toHaveLength(8)
    for (const t of secondBatch) for (const turn of t.turns) if (turn.role === "assistant") expect(turn.policyVersion).toBe(2)
    expect(JSON.parse(readFileSync(path.join(first.directory, "checkpoint", "trainer_state.json"), "utf8"))).toMatchObject({ version: 3, rowsConsumed: 4 })

    // Two more rows, resumed: the checkpoint's rows are skipped and the version goes on from 3.
    const resumed = await runExperiment(experiment(model, out, {
      environment: { name: "grid-quest", episodes: 6 },
      trainer: { promptsPerUpdate: 2, checkpointEvery: 1, backend: "wasm", resume: true }
    })).result
    expect(resumed.summary.training).toMatchObject({ updates: 3, version: 4 })
    const all = readTrajectories(path.join(resumed.directory, "trajectories.jsonl"))
    expect(all).toHaveLength(24)
  })

  it("with maxPolicyLag 1, generation runs ahead and no trajectory older than the bound is trained on", async () => {
    const model = await tinyModel(0)
    const out = scratch()
    const { summary, directory } = await runExperiment(experiment(model, out, {
      environment: { name: "grid-quest", episodes: 8 },
      trainer: { promptsPerUpdate: 2, maxPolicyLag: 1, backend: "wasm" }
    })).result
    expect(summary.training!.updates).toBe(4)
    // Batch k is trained when the trainer is at version k (no warm start here): what the bound drops is
    // exactly the batch's trajectories whose oldest turn is more than one version behind that.
    const records = readTrajectories(path.join(directory, "trajectories.jsonl"))
    let expected = 0
    for (let k = 0; k < 4; k++) {
      expected += splitByLag(records.filter((t) => t.id.startsWith(`u${k}-`)), k, 1).stale.length
    }
    expect(summary.training!.stale_dropped).toBe(expected)
    // Generation starts a batch only when the bound will let it be trained: nothing is generated to be dropped.
    expect(summary.training!.stale_dropped).toBe(0)
    // Weights swapped while batches were generated: the mismatch is measured only on the tokens the
    // trainer's own weights produced, and none of those differs.
    const trained = readFileSync(path.join(directory, "metrics.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line)).filter((p) => p.train !== undefined)
    for (const point of trained) {
      expect(point.train.logprob_diff_over_1e3).toBe(0)
      expect(point.train.logprob_diff_max).toBeLessThan(1e-3)
    }
    const lastPoint = trained.at(-1).train
    expect(lastPoint.logprob_diff_tokens + lastPoint.other_version_tokens).toBeGreaterThan(0)
  })
})
