/**
 * The trainer on its own worker thread: the same update as on the calling thread (a different code path,
 * compared number for number), the run's thread stays free while an update computes, a user's reward
 * function still scores the batch, and every call settles, also after close.
 */
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { TrainerThread, type TrainerHandle } from "../actors/trainer/thread.ts"
import { defineExperiment } from "../src/Experiment.ts"
import { runExperiment } from "../src/runExperiment.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { tinyModel } from "./support.ts"

const recorded = (t: Trajectory.Trajectory) => t.responseLogprobs.filter((_, i) => t.responseMask[i] === 1)
// A score that differs between samples, so the update has a gradient.
const rewards = (t: Trajectory.Trajectory) => recorded(t).reduce((a, b) => a + b, 0)

describe("the trainer's worker thread", () => {
  let model: string
  let batch: Array<Trajectory.Trajectory>
  const handles: Array<TrainerHandle> = []
  const start = async (thread: "worker" | "main") => {
    const handle = await TrainerThread.start({ model, backend: "wasm", thread, optimizer: { learningRate: 1e-2 }, algorithm: { rewards }, seed: 3 })
    handles.push(handle)
    return handle
  }

  beforeAll(async () => {
    model = await tinyModel(0)
    const out = mkdtempSync(path.join(tmpdir(), "episodic-trainer-thread-"))
    const { directory } = await runExperiment(defineExperiment({
      name: "batch",
      model,
      environment: { name: "grid-quest", episodes: 4 },
      samplesPerRow: 4,
      limits: { maxTurns: 3, maxNewTokens: 6 },
      sampling: { temperature: 1 },
      concurrency: 16,
      out
    })).result
    batch = readFileSync(path.join(directory, "trajectories.jsonl"), "utf8").trim().split("\n").map((line) => Trajectory.decode(JSON.parse(line)))
  })
  afterAll(async () => {
    for (const handle of handles) await handle.close()
  })

  it("makes the same update as the trainer on the calling thread, and hands over the same weights", async () => {
    const [worker, main] = [await start("worker"), await start("main")]
    const [a, b] = [await worker.update(batch), await main.update(batch)]
    expect(a.trajectories).toBe(batch.length)
    expect(a.score_mean).toBeCloseTo(b.score_mean, 12)
    expect(Math.abs(a.policy_loss - b.policy_loss)).toBeLessThan(1e-6)
    expect(a.grad_norm).toBeGreaterThan(0)
    expect(Math.abs(a.grad_norm - b.grad_norm)).toBeLessThan(1e-5)
    expect([worker.version, main.version]).toEqual([1, 1])
    const [wa, wb] = [await worker.policyWeights(), await main.policyWeights()]
    expect([...wa.keys()].sort()).toEqual([...wb.keys()].sort())
    let largest = 0
    for (const [name, tensor] of wa) tensor.data.forEach((value, i) => (largest = Math.max(largest, Math.abs(value - wb.get(name)!.data[i]!))))
    expect(largest).toBeLessThan(1e-6)
  })

  it("leaves the run's thread free while an update computes (on the calling thread it is blocked)", async () => {
    const ticksDuring = async (handle: TrainerHandle) => {
      let ticks = 0
      let running = true
      const spin = () => {
        ticks++
        if (running) setImmediate(spin)
      }
      setImmediate(spin)
      await handle.update(batch)
      running = false
      return ticks
    }
    expect(await ticksDuring(await start("worker"))).toBeGreaterThan(20)
    expect(await ticksDuring(await start("main"))).toBeLessThanOrEqual(2)
  })

  it("settles every call: a call after close is refused with a reason, and a bad batch fails naming the cause", async () => {
    const handle = await start("worker")
    await expect(handle.sft([], { steps: 1 })).rejects.toThrow(/no demonstration/)
    // The worker is still there after a failed call.
    expect((await handle.update(batch)).trajectories).toBe(batch.length)
    await handle.close()
    await expect(handle.update(batch)).rejects.toThrow(/closed/)
  })
})
