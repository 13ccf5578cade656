/**
 * The inference bench's workload (multi-turn grid-quest, a 20 ms environment step, three times the batch
 * size in episodes) generated two ways in one run, on the project's tiny model:
 *
 * - in-process: the shared inference actor on a worker thread of this process;
 * - remote: one `episodic serve` in its own process, over HTTP on 127.0.0.1, through episodic's remote
 *   client (vLLM's token endpoint, sticky sessions, so later turns hit the server's prefix cache).
 *
 * It reports generated tokens/s of each and their ratio, and the HTTP overhead per turn: the median time of
 * one lone turn (a grid-quest prompt, 8 tokens, nothing else running) remotely minus in-process. Under load
 * a turn's time is mostly waiting for its batch, so the loaded runs' mean turn times are shown but do not
 * measure the overhead.
 */
import { Effect, Layer, Stream } from "effect"
import { spawn } from "node:child_process"
import { rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import { Engine } from "../src/Engine.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { SamplingParams } from "../src/Generation.ts"
import { Inference } from "../src/Inference.ts"
import { initModel } from "../src/model/init.ts"
import { RemoteInference } from "../src/remote-inference/RemoteInference.ts"
import { Tokenizer } from "../src/Tokenizer.ts"
import { slowGridQuest, slowGridQuestRows } from "./workload/slowGridQuest.ts"

const MAX_BATCH = 128
const EPISODES = 768
const CONCURRENCY = 3 * MAX_BATCH
const MAX_TURNS = 12
const MAX_NEW_TOKENS = 16

const rows = slowGridQuestRows(EPISODES)

/** The engine's episodes through `inference`, timing every turn's request. */
const play = (inference: Inference["Service"], model: string) => {
  let turns = 0
  let turnMs = 0
  const timed = Inference.of({
    ...inference,
    generate: (request) =>
      Effect.suspend(() => {
        const started = performance.now()
        return inference.generate(request).pipe(Effect.tap(() => Effect.sync(() => {
          turns++
          turnMs += performance.now() - started
        })))
      })
  })
  return Effect.runPromise(
    Effect.gen(function*() {
      const engine = yield* Engine
      const started = performance.now()
      const trajectories = Array.from(yield* Stream.runCollect(engine.run(Stream.fromIterable(rows))))
      const seconds = (performance.now() - started) / 1000
      const generated = trajectories.reduce((sum, t) => sum + t.responseMask.reduce<number>((s, m) => s + m, 0), 0)
      const failed = trajectories.filter((t) => t.finishReason === "inference_error").length
      return { seconds, generated, tokensPerSecond: generated / seconds, turns, meanTurnMs: turnMs / turns, failed }
    }).pipe(
      Effect.provide(
        Engine.layer({
          environments: EnvironmentRegistry.builtins().register(slowGridQuest),
          concurrency: CONCURRENCY,
          samplesPerRow: 1,
          limits: { maxTurns: MAX_TURNS, maxNewTokens: MAX_NEW_TOKENS, maxResponseTokens: 4096, timeoutMs: 600_000 },
          sampling: new SamplingParams({ ...SamplingParams.defaults, temperature: 1 }),
          envCallTimeoutMs: 30_000,
          seed: 0,
          bufferCapacity: CONCURRENCY
        }).pipe(Layer.provideMerge(Layer.succeed(Inference, timed)), Layer.provideMerge(Tokenizer.layer(model)))
      )
    )
  )
}

/** The median time of one turn alone, over 40 turns one after another. */
const loneTurnMs = async (inference: Inference["Service"], model: string) => {
  const { load } = await import("../src/Tokenizer.ts")
  const { GenerationRequest } = await import("../src/Generation.ts")
  const tokenizer = await load(model)
  const contextIds = tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 2). The key is at (3, 3). One command." }])
  const times: Array<number> = []
  for (let i = 0; i < 40; i++) {
    const request = new GenerationRequest({
      episodeId: `lone-${i}`, turn: 0, contextIds,
      sampling: new SamplingParams({ ...SamplingParams.defaults, maxNewTokens: 8 }), stopTokenIds: [], seed: i
    })
    const started = performance.now()
    await Effect.runPromise(inference.generate(request))
    times.push(performance.now() - started)
  }
  return times.sort((a, b) => a - b)[20]!
}

const serveProcess = (model: string) =>
  new Promise<{ url: string; stop: () => void }>((resolve, reject) => {
    const here = path.dirname(new URL(import.meta.url).pathname)
    const child = spawn(process.execPath, [path.join(here, "..", "src", "cli", "main.ts"), "serve", model, "--port", "0", "--max-batch-size", String(MAX_BATCH)], {
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    const onData = (chunk: Buffer) => {
      output += chunk
      const match = /listening on (http:\/\/[\d.:]+)/.exec(output)
      if (match !== null) resolve({ url: match[1]!, stop: () => child.kill("SIGTERM") })
    }
    child.stdout.on("data", onData)
    child.stderr.on("data", onData)
    child.on("exit", (code) => reject(new Error(`episodic serve exited with ${code}: ${output}`)))
  })

export default async function remoteBenchmark(): Promise<void> {
  const model = path.join(tmpdir(), `episodic-bench-remote-tiny-${process.pid}`)
  await initModel(model, { preset: "tiny", seed: 0 })
  try {
    const actor = await InferenceActor.start({ model, maxBatchSize: MAX_BATCH })
    const localService = InferenceActor.service(actor)
    const local = await play(localService, model)
    const localLoneMs = await loneTurnMs(localService, model).finally(() => actor.close())

    const server = await serveProcess(model)
    let remote: Awaited<ReturnType<typeof play>>
    let remoteLoneMs: number
    let cached = 0
    let context = 0
    try {
      const pool = await RemoteInference.connect({ servers: [server.url], maxInFlight: CONCURRENCY })
      remote = await play(RemoteInference.service(pool), model)
      remoteLoneMs = await loneTurnMs(RemoteInference.service(pool), model).finally(() => pool.close())
      const stats = await (await fetch(`${server.url}/stats`)).json() as { cached_tokens: number; context_tokens: number }
      cached = stats.cached_tokens
      context = stats.context_tokens
    } finally {
      server.stop()
    }

    const ratio = remote.tokensPerSecond / local.tokensPerSecond
    const overheadMs = remoteLoneMs - localLoneMs
    console.log(`| generation | episodes | turns | generated tokens | seconds | tokens/s | mean turn (ms) |`)
    console.log(`| --- | --- | --- | --- | --- | --- | --- |`)
    for (const [name, r] of [["in-process actor", local], ["episodic serve over HTTP", remote]] as const) {
      console.log(`| ${name} | ${EPISODES} | ${r.turns} | ${r.generated} | ${r.seconds.toFixed(1)} | ${r.tokensPerSecond.toFixed(0)} | ${r.meanTurnMs.toFixed(1)} |`)
    }
    console.log(`\nremote / in-process tokens/s: ${ratio.toFixed(2)}; HTTP overhead per turn: ${overheadMs.toFixed(2)} ms ` +
      `(a lone 8-token turn: ${remoteLoneMs.toFixed(2)} ms over HTTP, ${localLoneMs.toFixed(2)} ms in-process); ` +
      `server prefix cache: ${cached} of ${context} context tokens (${(100 * cached / Math.max(1, context)).toFixed(1)}%)`)
    console.log(JSON.stringify({
      bench: "remote",
      episodes: EPISODES,
      local_tokens_per_second: local.tokensPerSecond,
      remote_tokens_per_second: remote.tokensPerSecond,
      ratio,
      local_mean_turn_ms: local.meanTurnMs,
      remote_mean_turn_ms: remote.meanTurnMs,
      local_lone_turn_ms: localLoneMs,
      remote_lone_turn_ms: remoteLoneMs,
      http_overhead_ms_per_turn: overheadMs,
      remote_inference_errors: remote.failed,
      prefix_cache_fraction: cached / Math.max(1, context)
    }))
  } finally {
    rmSync(model, { recursive: true, force: true })
  }
}
