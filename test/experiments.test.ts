/**
 * Experiments from code and from the command line: the example experiments run through the Promise
 * facade (events, metrics.jsonl, Parquet with verl's columns, a gentle abort), flags override any field
 * and bad ones are named, and a run directory runs again.
 */
import { parquetReadObjects } from "hyparquet"
import { describe, expect, it } from "vitest"
import { existsSync, mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import arithmetic from "../experiments/arithmetic.ts"
import chat from "../experiments/chat.ts"
import { applyOverrides, setPath } from "../src/cli/overrides.ts"
import { isUnseenLayout, layoutGridQuest } from "../src/environments/gridQuest.ts"
import { solveGuessNumber } from "../src/environments/guessNumber.ts"
import { type ExperimentConfig, ExperimentError, resolve } from "../src/Experiment.ts"
import type { RunEvent } from "../src/Run.ts"
import { runExperiment } from "../src/runExperiment.ts"
import { tinyModel } from "./support.ts"

const out = () => mkdtempSync(path.join(tmpdir(), "episodic-experiments-"))
const lines = (file: string) => readFileSync(file, "utf8").trim().split("\n").map((line) => JSON.parse(line))

describe("runExperiment (the Promise facade)", () => {
  it("streams every trajectory and the metrics, writes the run directory, and Parquet with verl's columns", async () => {
    const directory = out()
    const run = runExperiment({
      ...arithmetic,
      model: await tinyModel(),
      environment: { ...arithmetic.environment!, episodes: 3 },
      outputs: { parquet: true },
      out: directory
    })
    const events: Array<RunEvent> = []
    for await (const event of run) events.push(event)
    const { summary, directory: runDirectory } = await run.result
    const trajectories = events.flatMap((e) => (e.type === "trajectory" ? [e.trajectory] : []))
    // 3 problems, 4 samples each.
    expect(trajectories).toHaveLength(12)
    expect(summary.episodes).toBe(12)
    expect(events.at(-1)?.type).toBe("metrics")
    const metrics = lines(path.join(runDirectory, "metrics.jsonl"))
    expect(metrics.length).toBeGreaterThanOrEqual(1)
    expect(metrics.at(-1)).toMatchObject({ episodes: 12 })
    const records = lines(path.join(runDirectory, "trajectories.jsonl"))
    const rows = await parquetReadObjects({ file: new Uint8Array(readFileSync(path.join(runDirectory, "trajectories.parquet"))).buffer })
    expect(rows).toHaveLength(12)
    expect(Object.keys(rows[0]!).sort()).toEqual(Object.keys(records[0]).sort())
    for (const [i, row] of rows.entries()) {
      expect(row.id).toBe(records[i].id)
      expect(row.response_ids).toEqual(records[i].response_ids)
      expect(row.response_mask).toEqual(records[i].response_mask)
      expect(JSON.parse(row.messages as string)).toEqual(records[i].messages)
    }
  })

  it("counts a win the environment reports as a success even when its penalties make the reward negative", async () => {
    // Three guesses of 50 (two ruled out by the first reply, 0.5 each), then binary search: every game is won,
    // and every game that needed more than the first guess pays less than zero.
    const run = runExperiment({
      name: "sloppy-wins",
      model: await tinyModel(),
      environment: { name: "guess-number", episodes: 6, config: { ruledOutPenalty: 0.5 } },
      policy: ({ context }) => ((context.match(/Higher|Lower/g) ?? []).length < 3 && !context.includes("Correct") ? "50" : solveGuessNumber(context)),
      limits: { maxTurns: 12, maxNewTokens: 8 },
      out: out()
    })
    const { summary, directory } = await run.result
    const records = lines(path.join(directory, "trajectories.jsonl"))
    const won = (record: { turns: Array<{ role: string; info?: { success?: boolean } }> }) => record.turns.findLast((t) => t.role === "assistant")?.info?.success === true
    expect(records.every(won)).toBe(true)
    expect(records.filter((r: { reward: number }) => r.reward < 0).length).toBeGreaterThan(0)
    expect(summary.mean_reward).toBeLessThan(0.5)
    expect(lines(path.join(directory, "metrics.jsonl")).at(-1).success_rate).toBe(1)
  })

  it("stops gently when aborted: no new episodes start, and every episode that ran is delivered and written", async () => {
    const controller = new AbortController()
    const run = runExperiment(
      { ...chat, model: await tinyModel(), environment: { ...chat.environment!, episodes: 200 }, concurrency: 8, out: out() },
      { abortSignal: controller.signal }
    )
    let delivered = 0
    for await (const event of run) {
      if (event.type !== "trajectory") continue
      delivered++
      if (delivered === 3) controller.abort()
    }
    const { summary, directory } = await run.result
    expect(summary.episodes).toBe(delivered)
    expect(summary.episodes).toBeLessThan(200)
    expect(lines(path.join(directory, "trajectories.jsonl"))).toHaveLength(delivered)
  })

  it("evaluates on held-out seeds after the run, greedy, into eval/ and the summary", async () => {
    const { default: solver } = await import("../experiments/grid-quest-solver.ts")
    const run = runExperiment({
      ...solver,
      model: await tinyModel(),
      environment: { name: "grid-quest", episodes: 4 },
      evaluation: { episodes: 5 },
      out: out()
    })
    for await (const _ of run) void _
    const { summary, directory } = await run.result
    const evaluated = lines(path.join(directory, "eval", "trajectories.jsonl"))
    expect(evaluated).toHaveLength(5)
    expect(evaluated.every((record) => String(record.id).startsWith("eval-"))).toBe(true)
    // Held out: none of the evaluation's games is one of the run's.
    const trained = new Set(lines(path.join(directory, "trajectories.jsonl")).map((record) => record.seed))
    expect(evaluated.some((record) => trained.has(record.seed))).toBe(false)
    // The scripted solver wins every game.
    expect(summary.eval_success).toBe(1)
    expect(summary.evaluation).toMatchObject({ episodes: 5, greedy: true })
  })

  it("evaluates each split of the environment on its own: grid-quest layouts never trained on, and seen ones", async () => {
    const { default: solver } = await import("../experiments/grid-quest-solver.ts")
    const run = runExperiment({
      ...solver,
      model: await tinyModel(),
      environment: { name: "grid-quest", episodes: 6, config: { layouts: "seen" } },
      evaluation: { episodes: 4, splits: { unseen: { layouts: "unseen" }, seen: { layouts: "seen" } } },
      out: out()
    })
    for await (const _ of run) void _
    const { summary, directory } = await run.result
    const layoutOf = (record: Record<string, unknown>) => isUnseenLayout(layoutGridQuest(Number(record.seed)))
    expect(lines(path.join(directory, "trajectories.jsonl")).some(layoutOf)).toBe(false)
    const unseen = lines(path.join(directory, "eval", "unseen", "trajectories.jsonl"))
    const seen = lines(path.join(directory, "eval", "seen", "trajectories.jsonl"))
    expect(unseen).toHaveLength(4)
    expect(unseen.every(layoutOf)).toBe(true)
    expect(seen.some(layoutOf)).toBe(false)
    expect(summary.evaluation?.splits).toEqual({
      unseen: { episodes: 4, mean_reward: expect.any(Number), success_rate: 1, mean_turns: expect.any(Number) },
      seen: { episodes: 4, mean_reward: expect.any(Number), success_rate: 1, mean_turns: expect.any(Number) }
    })
    expect(summary.eval_success).toBe(1)
  })

  it("rejects a bad experiment with the field named", async () => {
    const run = runExperiment({ ...chat, concurrency: -1 })
    await expect(run.result).rejects.toThrow(/concurrency/)
  })
})

describe("overriding an experiment's fields", () => {
  it("sets nested fields with --set, parsing JSON values, and named flags", () => {
    const config = applyOverrides(arithmetic, {
      episodes: 20,
      temperature: "0.5",
      maxTurns: 4,
      set: { "sampling.topP": "0.8", "limits.timeoutMs": "1000", name: "renamed", "environment.config": "{\"maxTurns\": 3}" }
    })
    const resolved = resolve(config)
    expect(resolved.environment).toMatchObject({ name: "arithmetic", episodes: 5 })
    expect(resolved.environmentConfig.arithmetic).toEqual({ maxTurns: 3 })
    expect(resolved.sampling).toMatchObject({ temperature: 0.5, topP: 0.8 })
    expect(resolved.limits).toMatchObject({ maxTurns: 4, timeoutMs: 1000 })
    expect(resolved.name).toBe("renamed")
    // The experiment itself is not changed.
    expect(arithmetic.sampling).toEqual({ temperature: 1, topP: 0.95 })
  })

  it("--episodes is the number of episodes the run plays: rows x samples per row", () => {
    // arithmetic plays 4 samples per row (a GRPO group): 256 episodes are 64 rows.
    const resolved = resolve(applyOverrides(arithmetic, { episodes: 256 }))
    expect(resolved.environment!.episodes * resolved.samplesPerRow).toBe(256)
    expect(resolved.environment!.episodes).toBe(64)
    // With --samples-per-row (or --set samplesPerRow) too, the count is of the new groups.
    const regrouped = resolve(applyOverrides(arithmetic, { episodes: 16, samplesPerRow: 8 }))
    expect(regrouped.environment!.episodes * regrouped.samplesPerRow).toBe(16)
    expect(() => applyOverrides(arithmetic, { episodes: 250 })).toThrow(
      /--episodes 250: this experiment plays 4 episodes per row \(samplesPerRow\), so give a multiple of 4/
    )
  })

  it("refuses a field it does not know, in one line naming it and the fields there are", () => {
    const typo = { ...arithmetic, agnet: "models/tiny" } as ExperimentConfig
    expect(() => resolve(typo)).toThrow(/^experiment "arithmetic": unknown field `agnet`; the fields are name, model, .*limits, sampling, .*trainer, .*policy, environments$/)
    expect(() => resolve({ ...arithmetic, limits: { maxTurnz: 3 } } as ExperimentConfig)).toThrow(
      /unknown field `limits.maxTurnz`; the fields of `limits` are maxTurns, maxResponseTokens, maxNewTokens, timeoutMs$/
    )
    expect(() => resolve({ ...arithmetic, trainer: { optimizer: { schedule: { kind: "cosine", warmup: 10 } } } } as ExperimentConfig)).toThrow(
      /unknown field `trainer.optimizer.schedule.warmup`; the fields of `trainer.optimizer.schedule` are kind, warmupSteps, totalSteps, minRatio$/
    )
    // The fields that carry functions are fields too.
    expect(() => resolve({ ...arithmetic, trainer: { rewardFn: () => 1 } } as ExperimentConfig)).toThrow(/the fields of `trainer` are .*warmStart, reward$/)
    // --set reaches the same check.
    expect(() => resolve(applyOverrides(arithmetic, { set: { "sampling.temprature": "0.5" } }))).toThrow(/unknown field `sampling.temprature`/)
  })

  it("names the bad field", () => {
    expect(() => resolve(applyOverrides(arithmetic, { set: { "limits.maxTurns": "0" } }))).toThrow(/maxTurns/)
    expect(() => applyOverrides(arithmetic, { temperature: "hot" })).toThrow(/--temperature must be a number, got "hot"/)
    expect(() => setPath({ name: "x" }, "name.first", 1)).toThrow(ExperimentError)
    expect(() => applyOverrides({ ...arithmetic, environment: undefined, dataset: "rows.jsonl" }, { episodes: 3 })).toThrow(/--episodes needs/)
  })
})

describe("the example experiments", () => {
  it("all resolve", async () => {
    for (const file of ["grid-quest", "grid-quest-solver", "guess-number", "arithmetic", "chat", "remote-grid-quest"]) {
      const { default: experiment } = await import(`../experiments/${file}.ts`)
      expect(() => resolve(experiment), file).not.toThrow()
      expect(existsSync(path.join("experiments", `${file}.ts`))).toBe(true)
    }
  })
})
