/**
 * Learning, measured over seeds rather than one lucky run: each learning experiment runs once per seed, each
 * in its own process as a user runs it (`episodic run <file> --set seed=N`), one after another so no run
 * shares the machine with another. It prints every run's held-out figures and wall time, then the mean and
 * spread per experiment, writes each experiment's curves (training success against wall time, one line per
 * seed) as SVG, and ends with one JSON line.
 *
 *   npm run bench -- learning                                         # both experiments, seeds 0 1 2
 *   LEARNING_SEEDS=0 LEARNING_EXPERIMENTS=guess-number npm run bench -- learning
 *   LEARNING_OUT=docs/learning npm run bench -- learning              # where the runs and curves go (default runs/learning)
 *   LEARNING_SET="trainer.maxMinutes=1 evaluation.episodes=20" ...    # --set flags for every run (a quick check)
 *
 * Long: each run takes up to 10 minutes on two CPU cores, so the default is about an hour.
 */
import { execFileSync } from "node:child_process"
import { closeSync, mkdirSync, openSync, readFileSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import { lineChart } from "../src/plots.ts"

const root = path.resolve(import.meta.dirname, "..")

/** About an hour: `npm run bench` alone skips it; `npm run bench -- learning` runs it. */
export const long = true

interface Learner {
  readonly name: string
  readonly file: string
  /** The split eval_success is of, for the table's heading. */
  readonly heldOut: string
}

const learners: ReadonlyArray<Learner> = [
  { name: "grid-quest", file: "experiments/grid-quest.ts", heldOut: "unseen layouts" },
  { name: "guess-number", file: "experiments/guess-number.ts", heldOut: "held-out secrets" }
]

interface Outcome {
  readonly experiment: string
  readonly seed: number
  readonly warmstart_success: number | null
  readonly eval_success: number
  /** Other evaluation splits (grid-quest's seen layouts), by name. */
  readonly splits: Record<string, number>
  readonly eval_mean_turns: number
  readonly updates: number
  readonly wall_seconds: number
  readonly finish_reasons: Record<string, number>
  /** Training episodes' success rate per metrics window, against seconds since the run started. */
  readonly curve: ReadonlyArray<readonly [number, number]>
}

const mean = (xs: ReadonlyArray<number>) => xs.reduce((a, b) => a + b, 0) / xs.length
const spread = (xs: ReadonlyArray<number>) => Math.sqrt(mean(xs.map((x) => (x - mean(xs)) ** 2)))
const colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]

const runOnce = (learner: Learner, seed: number, out: string): Outcome => {
  const name = `${learner.name}-seed${seed}`
  const started = performance.now()
  // The run's own progress lines go to a log beside its directory.
  const log = openSync(path.join(out, `${name}.log`), "w")
  try {
    const sets = (process.env.LEARNING_SET ?? "").split(/\s+/).filter(Boolean).flatMap((assignment) => ["--set", assignment])
    execFileSync(process.execPath, [path.join(root, "bin/episodic.js"), "run", learner.file, "--seed", String(seed), "--name", name, "--out", out, ...sets], {
      cwd: root,
      stdio: ["ignore", log, "inherit"]
    })
  } finally {
    closeSync(log)
  }
  const wall = (performance.now() - started) / 1000
  const directory = path.join(out, name)
  const summary = JSON.parse(readFileSync(path.join(directory, "summary.json"), "utf8"))
  const points = readFileSync(path.join(directory, "metrics.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line))
  const splits = Object.fromEntries(Object.entries(summary.evaluation?.splits ?? {}).map(([split, figures]) => [split, (figures as { success_rate: number }).success_rate]))
  return {
    experiment: learner.name,
    seed,
    warmstart_success: summary.warmstart_success ?? null,
    eval_success: summary.eval_success,
    splits,
    eval_mean_turns: summary.evaluation?.mean_turns ?? 0,
    updates: summary.training?.updates ?? 0,
    wall_seconds: wall,
    finish_reasons: summary.finish_reasons,
    curve: points.filter((p) => p.episodes > 0).map((p) => [p.elapsed_seconds, p.window_success_rate] as const)
  }
}

export default async () => {
  const seeds = (process.env.LEARNING_SEEDS ?? "0,1,2").split(/[ ,]+/).filter(Boolean).map(Number)
  const wanted = (process.env.LEARNING_EXPERIMENTS ?? learners.map((l) => l.name).join(",")).split(/[ ,]+/).filter(Boolean)
  const out = path.resolve(root, process.env.LEARNING_OUT ?? "runs/learning")
  for (const name of wanted) if (!learners.some((l) => l.name === name)) throw new Error(`LEARNING_EXPERIMENTS: unknown experiment "${name}"; known: ${learners.map((l) => l.name).join(", ")}`)
  if (seeds.length === 0 || seeds.some((s) => !Number.isInteger(s))) throw new Error(`LEARNING_SEEDS must be integers, got "${process.env.LEARNING_SEEDS}"`)
  mkdirSync(out, { recursive: true })

  const outcomes: Array<Outcome> = []
  console.log("| experiment | seed | warm start | held-out success | other splits | mean turns | updates | wall s | finish reasons |")
  console.log("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: | --- |")
  for (const learner of learners.filter((l) => wanted.includes(l.name))) {
    for (const seed of seeds) {
      const o = runOnce(learner, seed, out)
      outcomes.push(o)
      const splits = Object.entries(o.splits).map(([k, v]) => `${k} ${v.toFixed(3)}`).join(", ")
      console.log(`| ${o.experiment} | ${seed} | ${o.warmstart_success?.toFixed(3) ?? "-"} | ${o.eval_success.toFixed(3)} | ${splits} | ${o.eval_mean_turns.toFixed(2)} | ${o.updates} | ${o.wall_seconds.toFixed(0)} | ${JSON.stringify(o.finish_reasons)} |`)
    }
  }

  const summary: Record<string, unknown> = {}
  console.log("\n| experiment | held out | runs | success mean | success spread (std) | min | max | wall s mean | wall s max |")
  console.log("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
  for (const learner of learners.filter((l) => wanted.includes(l.name))) {
    const mine = outcomes.filter((o) => o.experiment === learner.name)
    const success = mine.map((o) => o.eval_success)
    const wall = mine.map((o) => o.wall_seconds)
    console.log(`| ${learner.name} | ${learner.heldOut} | ${mine.length} | ${mean(success).toFixed(3)} | ${spread(success).toFixed(3)} | ${Math.min(...success).toFixed(3)} | ${Math.max(...success).toFixed(3)} | ${mean(wall).toFixed(0)} | ${Math.max(...wall).toFixed(0)} |`)
    const svg = lineChart({
      title: `${learner.name}: training success, ${mine.length} seeds`,
      xLabel: "seconds since the run started",
      yLabel: "success rate of the window's episodes",
      yDomain: [0, 1],
      series: mine.map((o, i) => ({ label: `seed ${o.seed} (held-out ${o.eval_success.toFixed(2)})`, color: colors[i % colors.length]!, points: o.curve }))
    })
    writeFileSync(path.join(out, `${learner.name}-curves.svg`), svg)
    summary[learner.name] = {
      seeds: mine.map((o) => o.seed),
      eval_success: success,
      eval_success_mean: mean(success),
      eval_success_std: spread(success),
      warmstart_success: mine.map((o) => o.warmstart_success),
      splits: mine.map((o) => o.splits),
      eval_mean_turns: mine.map((o) => o.eval_mean_turns),
      wall_seconds: wall.map((w) => Math.round(w)),
      all_done: mine.every((o) => Object.keys(o.finish_reasons).every((reason) => reason === "done"))
    }
  }
  console.log(`curves: ${learners.filter((l) => wanted.includes(l.name)).map((l) => path.relative(root, path.join(out, `${l.name}-curves.svg`))).join(", ")}`)
  console.log(JSON.stringify({ bench: "learning", ...summary }))
}
