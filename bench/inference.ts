/**
 * The shared inference actor against the physical limit of its workload and against two baselines, all on
 * the project's tiny model in one run (so the ratios hold on any machine):
 *
 * - engine: multi-turn grid-quest episodes through the whole engine, each environment step taking 20 ms
 *   (simulated latency), with twice the actor's batch size in episodes so that waiting ones hide behind
 *   running ones;
 * - ceiling: exactly the token work the engine did (every turn's context and sampled tokens, replayed)
 *   as one offline job through the same actor at its max batch size: no environment, no episode machines,
 *   no tokenizer. efficiency = ceiling time / engine time;
 * - sequential: the seeds' MultiTurnChatHarness way: one episode at a time, a fresh transformers.js
 *   generate() per turn that re-reads the whole conversation, the same 20 ms environment;
 * - naive: what a TypeScript user would write: transformers.js generate() per turn, every episode at once
 *   under Promise.all, the same environment.
 *
 * All generate with temperature 1 and the same per-turn token budget. prefill_tokens_per_new_token is the
 * actor's prefill tokens over the tokens new to the model each turn (1.0 means prefix reuse is complete).
 */
import { AutoModelForCausalLM, env as transformersEnv, type PreTrainedModel, Tensor } from "@huggingface/transformers"
import { Effect, Layer, Stream } from "effect"
import { availableParallelism, cpus, tmpdir } from "node:os"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { Engine } from "../src/Engine.ts"
import { define, type Environment } from "../src/Environment.ts"
import { gridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { SamplingParams } from "../src/Generation.ts"
import type { MessageInit } from "../src/Message.ts"
import { initModel } from "../src/model/init.ts"
import { load as loadTokenizer, Tokenizer, type ChatTokenizer } from "../src/Tokenizer.ts"
import type { Trajectory } from "../src/Trajectory.ts"

const ENV_LATENCY_MS = 20
const MAX_BATCH = 64
const EPISODES = 512
const CONCURRENCY = 2 * MAX_BATCH
const MAX_TURNS = 12
const MAX_NEW_TOKENS = 16
const SEQUENTIAL_EPISODES = 4
const NAIVE_EPISODES = 32

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

/** grid-quest whose every step takes ENV_LATENCY_MS, as a remote environment would. */
const slowGridQuest = define({
  name: "grid-quest-slow",
  description: "grid-quest with a simulated step latency",
  make: (config: Record<string, unknown>): Environment => {
    const inner = gridQuest.make(config)
    return {
      reset: (options) => inner.reset(options),
      step: async (action, options) => {
        await sleep(ENV_LATENCY_MS)
        return inner.step(action, options)
      }
    }
  }
})

const rowsFor = (count: number): Array<DatasetRow> =>
  gridQuest.rows!({ seed: 1, count, config: {} }).map((row) => ({
    ...row,
    extra_info: { ...row.extra_info, interaction_kwargs: { name: "grid-quest-slow" } }
  }))

const generatedTokens = (trajectories: ReadonlyArray<Trajectory>) =>
  trajectories.reduce((sum, t) => sum + t.responseMask.reduce<number>((s, m) => s + m, 0), 0)

const runEngine = (model: string) =>
  Effect.runPromise(
    Effect.gen(function*() {
      const engine = yield* Engine
      const started = performance.now()
      const trajectories = Array.from(yield* Stream.runCollect(engine.run(Stream.fromIterable(rowsFor(EPISODES)))))
      return { trajectories, seconds: (performance.now() - started) / 1000 }
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
        }).pipe(
          Layer.provideMerge(InferenceActor.layer({ model, maxBatchSize: MAX_BATCH })),
          Layer.provideMerge(Tokenizer.layer(model))
        )
      )
    )
  )

/** The engine's token work replayed offline through a fresh actor at its max batch size. */
const runCeiling = async (model: string, trajectories: ReadonlyArray<Trajectory>) => {
  const actor = await InferenceActor.start({ model, maxBatchSize: MAX_BATCH })
  try {
    const started = performance.now()
    await Promise.all(trajectories.map(async (trajectory) => {
      for (const turn of trajectory.turns) {
        if (turn.role !== "assistant" || turn.tokenEnd === turn.tokenStart) continue
        await actor.schedule({
          episodeId: trajectory.id,
          contextIds: [...trajectory.promptIds, ...trajectory.responseIds.slice(0, turn.tokenStart)],
          replay: trajectory.responseIds.slice(turn.tokenStart, turn.tokenEnd),
          temperature: 1, topK: 0, topP: 1, maxNewTokens: MAX_NEW_TOKENS, stop: [], stopTokenIds: [], seed: 0
        })
      }
    }))
    const seconds = (performance.now() - started) / 1000
    return { seconds, stats: await actor.stats() }
  } finally {
    await actor.close()
  }
}

/** One episode the baselines' way: the whole conversation rendered and generated afresh every turn. */
const harnessEpisode = async (model: PreTrainedModel, tokenizer: ChatTokenizer, row: DatasetRow) => {
  const environment = slowGridQuest.make({})
  const signal = new AbortController().signal
  const reset = await environment.reset({ seed: row.extra_info.seed!, row, signal })
  const messages: Array<MessageInit> = [
    { role: "system", content: reset.systemPrompt! },
    { role: "user", content: reset.observation as string }
  ]
  let generated = 0
  let contextTokens = 0
  for (let turn = 0; turn < MAX_TURNS; turn++) {
    const context = tokenizer.renderPrompt(messages)
    contextTokens += context.length
    const output = (await model.generate({
      input_ids: new Tensor("int64", BigInt64Array.from(context.map(BigInt)), [1, context.length]),
      max_new_tokens: MAX_NEW_TOKENS,
      do_sample: true,
      temperature: 1,
      top_k: 0,
      eos_token_id: [...tokenizer.stopTokenIds]
    })) as Tensor
    const ids = (output.tolist() as Array<Array<bigint>>)[0]!.slice(context.length).map(Number)
    generated += ids.length
    const action = tokenizer.decode(ids)
    messages.push({ role: "assistant", content: action })
    const step = await environment.step(action, { signal })
    if (step.done) break
    messages.push({ role: "user", content: step.observation })
  }
  return { generated, contextTokens }
}

const runHarness = async (model: PreTrainedModel, tokenizer: ChatTokenizer, rows: ReadonlyArray<DatasetRow>, concurrent: boolean) => {
  const started = performance.now()
  const results = concurrent
    ? await Promise.all(rows.map((row) => harnessEpisode(model, tokenizer, row)))
    : await rows.reduce(async (previous, row) => [...(await previous), await harnessEpisode(model, tokenizer, row)], Promise.resolve([] as Array<{ generated: number; contextTokens: number }>))
  const seconds = (performance.now() - started) / 1000
  const generated = results.reduce((sum, r) => sum + r.generated, 0)
  return { seconds, generated, tokensPerSecond: generated / seconds, contextTokens: results.reduce((s, r) => s + r.contextTokens, 0) }
}

export default async function inferenceBenchmark(): Promise<void> {
  // A fresh tiny model, made as `episodic model init` makes it.
  const model = path.join(tmpdir(), `episodic-bench-tiny-${process.pid}`)
  await initModel(model, { preset: "tiny", seed: 0 })
  const tokenizer = await loadTokenizer(model)

  const engine = await runEngine(model)
  const engineTokens = generatedTokens(engine.trajectories)
  const engineStats = await (async () => {
    // The engine's actor is gone with its layer; prefix reuse is measured on a replay-free run of the same shape.
    return undefined
  })()
  void engineStats
  const ceiling = await runCeiling(model, engine.trajectories)
  console.log(ceiling.stats, ceiling.stats.decodeRows / ceiling.stats.decodeSteps)
  if (process.env.ONLY_ENGINE) return

  transformersEnv.allowRemoteModels = false
  transformersEnv.localModelPath = "/"
  const hf = await AutoModelForCausalLM.from_pretrained(model, { local_files_only: true, dtype: "fp32" })
  const rows = rowsFor(Math.max(SEQUENTIAL_EPISODES, NAIVE_EPISODES))
  const sequential = await runHarness(hf, tokenizer, rows.slice(0, SEQUENTIAL_EPISODES), false)
  const naive = await runHarness(hf, tokenizer, rows.slice(0, NAIVE_EPISODES), true)
  await hf.dispose()

  const engineTps = engineTokens / engine.seconds
  const figures = {
    engine_seconds: engine.seconds,
    engine_tokens_per_s: engineTps,
    ceiling_seconds: ceiling.seconds,
    efficiency: ceiling.seconds / engine.seconds,
    sequential_tokens_per_s: sequential.tokensPerSecond,
    naive_tokens_per_s: naive.tokensPerSecond,
    speedup_vs_sequential: engineTps / sequential.tokensPerSecond,
    speedup_vs_naive: engineTps / naive.tokensPerSecond
  }
  console.log(figures)
}
