/**
 * End to end against `episodic serve` in another process: an experiment whose `model` is the server's URL
 * records what the in-process actor records for the same seeds (greedy tokens identical, logprobs equal),
 * and a training run syncs its weights to the server, which then plays better.
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { defineExperiment, type ExperimentConfig, resolve } from "../src/Experiment.ts"
import { initModel } from "../src/model/init.ts"
import * as Run from "../src/Run.ts"

const out = mkdtempSync(path.join(tmpdir(), "episodic-serve-run-"))
const children: Array<ChildProcess> = []

/** `episodic serve <model> --port 0` as its own process; resolves with its URL once it listens. */
const serveProcess = (model: string) =>
  new Promise<string>((resolveUrl, reject) => {
    const child = spawn(process.execPath, ["src/cli/main.ts", "serve", model, "--port", "0", "--max-batch-size", "64"], { stdio: ["ignore", "pipe", "pipe"] })
    children.push(child)
    let output = ""
    const timer = setTimeout(() => reject(new Error(`episodic serve did not start: ${output}`)), 30_000)
    const onData = (chunk: Buffer) => {
      output += chunk
      const match = /listening on (http:\/\/[\d.:]+)/.exec(output)
      if (match !== null) {
        clearTimeout(timer)
        resolveUrl(match[1]!)
      }
    }
    child.stdout!.on("data", onData)
    child.stderr!.on("data", onData)
    child.on("exit", (code) => reject(new Error(`episodic serve exited with ${code}: ${output}`)))
  })

const runOf = async (config: ExperimentConfig) => {
  const { directory, summary } = await Effect.runPromise(Run.run(resolve(config), config))
  const records = readFileSync(path.join(directory, "trajectories.jsonl"), "utf8").trim().split("\n").map((line) => JSON.parse(line))
  const recorded = JSON.parse(readFileSync(path.join(directory, "config.json"), "utf8"))
  return { directory, summary, records: new Map(records.map((record) => [record.id, record])), recorded }
}

let model: string
let url: string

beforeAll(async () => {
  model = path.join(out, "micro")
  await initModel(model, { preset: "micro", seed: 0 })
  url = await serveProcess(model)
})
afterAll(() => {
  for (const child of children) child.kill("SIGTERM")
  rmSync(out, { recursive: true, force: true })
})

const playing = (name: string, modelOrUrl: string, temperature: number): ExperimentConfig =>
  defineExperiment({
    name,
    model: modelOrUrl,
    environment: { name: "grid-quest", episodes: 24 },
    concurrency: 24,
    limits: { maxTurns: 5, maxNewTokens: 8, maxResponseTokens: 512, timeoutMs: 60_000 },
    sampling: { temperature },
    seed: 4,
    out
  })

describe("an experiment on episodic serve", () => {
  it("records what the in-process actor records for the same seeds", async () => {
    for (const temperature of [0, 1]) {
      const local = await runOf(playing(`local-${temperature}`, model, temperature))
      const remote = await runOf(playing(`remote-${temperature}`, url, temperature))
      assert.strictEqual(remote.recorded.tokenizer, model)
      assert.strictEqual(remote.recorded.inference.remote.logprobs, "sampled")
      assert.strictEqual(remote.summary.logprob_kind, "sampled")
      assert.strictEqual(remote.records.size, 24)
      let tokens = 0
      for (const [id, mine] of local.records) {
        const theirs = remote.records.get(id)
        assert.isDefined(theirs, id)
        assert.deepStrictEqual(theirs.prompt_ids, mine.prompt_ids)
        assert.deepStrictEqual(theirs.response_ids, mine.response_ids, `${id} at temperature ${temperature}`)
        mine.response_logprobs.forEach((logprob: number, i: number) => assert.closeTo(theirs.response_logprobs[i], logprob, 1e-4))
        tokens += mine.response_ids.length
      }
      assert.isAbove(tokens, 100)
    }
  })

  it("trains through it: weights sync to the server, turns record its versions, and held-out success rises", async () => {
    const base = {
      ...playing("before", url, 1),
      environment: { name: "grid-quest", episodes: 16 },
      samplesPerRow: 8,
      concurrency: 64,
      limits: { maxTurns: 12, maxNewTokens: 8, maxResponseTokens: 1024, timeoutMs: 120_000 },
      evaluation: { episodes: 60 }
    } satisfies ExperimentConfig
    const before = await runOf({ ...base, environment: { name: "grid-quest", episodes: 1 }, samplesPerRow: 1 })
    const trained = await runOf({
      ...base,
      name: "trained",
      trainer: {
        promptsPerUpdate: 8,
        checkpointEvery: 0,
        warmStart: { episodes: 128, steps: 40, policy: ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at"))) }
      }
    })
    const training = trained.summary.training!
    assert.strictEqual(training.updates, 2)
    // Version 1 is the warm start; each update adds one, and every one reached the server.
    assert.strictEqual(training.version, 3)
    const models = await (await fetch(`${url}/v1/models`)).json() as { data: Array<{ episodic: { policy_version: number } }> }
    assert.strictEqual(models.data[0]!.episodic.policy_version, 3)
    const versions = new Set([...trained.records.values()].flatMap((record) => record.turns.map((turn: { policy_version: number | null }) => turn.policy_version)))
    assert.isTrue(versions.has(1) && versions.has(2), `turn versions ${[...versions].join(", ")}`)
    console.log(`through episodic serve: held-out greedy success ${before.summary.eval_success} before, ${trained.summary.warmstart_success} after the warm start, ${trained.summary.eval_success} after ${training.updates} updates`)
    // The warm start's weights, synced to the server, play better there; GRPO's two updates keep most of it.
    assert.isAbove(trained.summary.warmstart_success!, before.summary.eval_success! + 0.2)
    assert.isAbove(trained.summary.eval_success!, before.summary.eval_success! + 0.1)
  }, 300_000)
})
