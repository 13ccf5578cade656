/**
 * Generation on inference servers, against a faithful vLLM / SGLang double (test/fake-engine.ts): records
 * are exactly the servers' tokens and logprobs, every sampling field is sent, replies that break the
 * protocol are refused, episodes stay on one replica and move off a dead one, and weight syncs bump the
 * version the turns record.
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import { existsSync, mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { Engine } from "../src/Engine.ts"
import { define } from "../src/Environment.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { GenerationRequest, SamplingParams } from "../src/Generation.ts"
import { readSglangGenerate, readVllmCompletions, readVllmGenerate } from "../src/remote-inference/protocol.ts"
import { RemoteInference, type RemotePool } from "../src/remote-inference/RemoteInference.ts"
import { load as loadTokenizer, Tokenizer, type ChatTokenizer } from "../src/Tokenizer.ts"
import type { Trajectory } from "../src/Trajectory.ts"
import { makeFakeEngine, type FakeEngine } from "./fake-engine.ts"
import { limits, tokenizerDirs } from "./support.ts"

const tokenizerDir = tokenizerDirs.qwen3
let tokenizer: ChatTokenizer | undefined
const tokenizerOnce = async () => (tokenizer ??= await loadTokenizer(tokenizerDir))

const cleanups: Array<() => Promise<void> | void> = []
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup()
})

const fake = async (kind: "vllm" | "sglang", extra: { tokenEndpoint?: boolean } = {}) => {
  const t = await tokenizerOnce()
  const engine = await makeFakeEngine({
    kind,
    vocab: [...t.encode(" north south east west go look take the key door room. done!"), 151645],
    eosTokenId: 151645,
    decode: (ids, skip) => t.decode(ids, { skipSpecialTokens: skip }),
    ...extra
  })
  cleanups.push(() => engine.close())
  return engine
}

const connect = async (servers: ReadonlyArray<string>, options: Partial<Parameters<typeof RemoteInference.connect>[0]> = {}) => {
  const pool = await RemoteInference.connect({ servers, healthIntervalMs: 100, cooldownMs: 60_000, timeoutMs: 2_000, ...options })
  cleanups.push(() => pool.close())
  return pool
}

/** Three turns, then done; each step takes `stepMs`. */
const threeTurns = (stepMs = 0) =>
  define({
    name: "three-turns",
    description: "answers three times",
    make: () => {
      let steps = 0
      return {
        reset: () => ({ observation: "Start." }),
        step: async () => {
          await new Promise((resolve) => setTimeout(resolve, stepMs))
          steps++
          return { observation: `Turn ${steps} done.`, reward: 1, done: steps === 3 }
        }
      }
    }
  })

const rows = (count: number): Array<DatasetRow> =>
  Array.from({ length: count }, (_, i) => ({
    prompt: [{ role: "user", content: `Go, episode ${i}.` }],
    extra_info: { interaction_kwargs: { name: "three-turns" }, seed: i }
  }))

const runEpisodes = (pool: RemotePool, count: number, options: { temperature?: number; maxNewTokens?: number; stop?: Array<string>; stepMs?: number; concurrency?: number } = {}) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    return Array.from(yield* Stream.runCollect(engine.run(Stream.fromIterable(rows(count)))))
  }).pipe(
    Effect.provide(
      Engine.layer({
        environments: new EnvironmentRegistry().register(threeTurns(options.stepMs)),
        concurrency: options.concurrency ?? 16,
        samplesPerRow: 1,
        limits: limits({ maxTurns: 3, maxNewTokens: options.maxNewTokens ?? 12 }),
        sampling: new SamplingParams({ ...SamplingParams.defaults, temperature: options.temperature ?? 0.7, stop: options.stop ?? [] }),
        envCallTimeoutMs: 10_000,
        seed: 0,
        bufferCapacity: 16
      }).pipe(Layer.provideMerge(RemoteInference.layerOf(pool)), Layer.provideMerge(Tokenizer.layer(tokenizerDir)))
    ),
    Effect.runPromise
  )

/** Each assistant span of the record, with the context the policy saw before it. */
const assistantTurns = (trajectory: Trajectory) =>
  trajectory.turns.filter((turn) => turn.role === "assistant").map((turn) => ({
    context: [...trajectory.promptIds, ...trajectory.responseIds.slice(0, turn.tokenStart)],
    tokenIds: trajectory.responseIds.slice(turn.tokenStart, turn.tokenEnd),
    logprobs: trajectory.responseLogprobs.slice(turn.tokenStart, turn.tokenEnd),
    version: turn.policyVersion
  }))

/** Every assistant turn of every record is exactly a reply the server sent for exactly that context. */
const assertExact = (records: ReadonlyArray<Trajectory>, engines: ReadonlyArray<FakeEngine>) => {
  const replies = engines.flatMap((engine) => engine.log.filter((entry) => entry.reply !== undefined))
  for (const trajectory of records) {
    for (const turn of assistantTurns(trajectory)) {
      const match = replies.find((entry) =>
        entry.sessionId === trajectory.id && entry.contextIds.join() === turn.context.join() && entry.reply!.tokenIds.join() === turn.tokenIds.join()
      )
      assert.isDefined(match, `${trajectory.id}: a turn no server sent for that context`)
      assert.deepStrictEqual(turn.logprobs, [...match!.reply!.logprobs])
    }
  }
}

const request = (overrides: Partial<ConstructorParameters<typeof GenerationRequest>[0]> = {}) =>
  new GenerationRequest({
    episodeId: "e1",
    turn: 0,
    contextIds: [1, 2, 3],
    sampling: new SamplingParams({ ...SamplingParams.defaults, temperature: 0.7, maxNewTokens: 8 }),
    stopTokenIds: [151645],
    seed: 7,
    ...overrides
  })

describe("remote inference: vLLM", () => {
  it("records exactly the server's tokens and raw logprobs, sending every sampling field and the session", async () => {
    const server = await fake("vllm")
    const pool = await connect([server.spec])
    assert.strictEqual(pool.logprobKind, "raw")
    const records = await runEpisodes(pool, 12, { temperature: 0.7, maxNewTokens: 40, stop: [" done"] })
    assert.strictEqual(records.length, 12)
    for (const record of records) assert.strictEqual(record.finishReason, "done", JSON.stringify(record.error))
    assertExact(records, [server])
    const generations = server.log.filter((entry) => entry.route === "/inference/v1/generate")
    assert.strictEqual(generations.length, 36)
    for (const entry of generations) {
      const sp = entry.body["sampling_params"]
      assert.strictEqual(sp.temperature, 0.7)
      assert.strictEqual(sp.top_p, 1)
      assert.strictEqual(sp.top_k, -1)
      assert.strictEqual(sp.skip_special_tokens, false)
      assert.strictEqual(sp.include_stop_str_in_output, true)
      assert.strictEqual(sp.logprobs, 0)
      assert.deepStrictEqual(sp.stop, [" done"])
      assert.include(sp.stop_token_ids, 151645)
      assert.isAtMost(sp.max_tokens, 40)
      assert.isNumber(sp.seed)
      assert.isString(entry.requestId)
    }
    // The limit that was asked for, not vLLM's default of 16.
    assert.isAbove(Math.max(...generations.map((entry) => entry.reply!.tokenIds.length)), 16)
    // vLLM's logprobs are the model's raw distribution although the temperature is 0.7: recorded as such.
    const first = generations[0]!
    const expected = server.generate(first.contextIds, {
      maxTokens: first.body["sampling_params"].max_tokens,
      temperature: 0.7,
      topP: 1,
      seed: first.body["sampling_params"].seed,
      stopTokenIds: [151645],
      stop: [" done"]
    })
    assert.deepStrictEqual(first.reply!.logprobs, expected.rawLogprobs)
    assert.notDeepEqual(expected.rawLogprobs, expected.scaledLogprobs)
    // Stop tokens and stop strings end turns as they do in-process: the stop is kept in the record.
    const ends = records.flatMap((record) => assistantTurns(record).map((turn) => turn.tokenIds.at(-1)))
    assert.include(ends, 151645)
  })

  it("falls back to /v1/completions with token ids when the server has no token endpoint", async () => {
    const server = await fake("vllm", { tokenEndpoint: false })
    const pool = await connect([server.spec])
    const records = await runEpisodes(pool, 4)
    assertExact(records, [server])
    const completions = server.log.filter((entry) => entry.route === "/v1/completions")
    assert.strictEqual(completions.length, 12)
    for (const entry of completions) {
      assert.isArray(entry.body["prompt"])
      assert.strictEqual(entry.body["return_token_ids"], true)
      assert.strictEqual(entry.body["logprobs"], 0)
      assert.strictEqual(entry.body["skip_special_tokens"], false)
      assert.strictEqual(entry.body["include_stop_str_in_output"], true)
      assert.strictEqual(entry.body["model"], "toy-model")
    }
    assert.strictEqual(pool.stats()[0]!.endpoint, "/v1/completions")
  })

  it("refuses replies whose token ids and logprobs differ in length or whose finish reason is unknown, naming the field", () => {
    const where = "http://127.0.0.1:1 (vllm)"
    assert.throws(
      () => readVllmGenerate(where, { choices: [{ token_ids: [1, 2], logprobs: { content: [{ logprob: -1 }] }, finish_reason: "stop" }] }, request()),
      /127\.0\.0\.1:1.*choices\[0\]\.token_ids.*2 token ids.*1 logprobs/
    )
    assert.throws(
      () => readVllmCompletions(where, { choices: [{ token_ids: [1], logprobs: { token_logprobs: [-1] }, finish_reason: "eos_maybe" }] }, request()),
      /choices\[0\]\.finish_reason.*eos_maybe/
    )
    assert.throws(() => readVllmCompletions(where, { choices: [{ text: "hi", finish_reason: "stop" }] }, request()), /choices\.0\.token_ids/)
    assert.throws(
      () => readSglangGenerate(where, { output_ids: [5], meta_info: { finish_reason: { type: "length" }, output_token_logprobs: [[-0.5, 6, null]] } }, request()),
      /output_token_logprobs\[0\].*token 6.*output_ids\[0\]/
    )
    assert.throws(
      () => readVllmGenerate(where, { choices: [{ token_ids: [1], logprobs: { content: [{ logprob: null }] }, finish_reason: "length" }] }, request()),
      /logprob/
    )
  })
})

describe("remote inference: SGLang", () => {
  it("keeps stop tokens (no_stop_trim), records temperature-scaled logprobs and the server's weight version", async () => {
    const server = await fake("sglang")
    const pool = await connect([server.spec])
    assert.strictEqual(pool.logprobKind, "temperature")
    const records = await runEpisodes(pool, 8, { temperature: 0.7, maxNewTokens: 40 })
    assertExact(records, [server])
    for (const entry of server.log) {
      const sp = entry.body["sampling_params"]
      assert.strictEqual(sp.no_stop_trim, true)
      assert.strictEqual(sp.skip_special_tokens, false)
      assert.strictEqual(entry.body["return_logprob"], true)
      assert.isAtMost(sp.max_new_tokens, 40)
      assert.isNumber(sp.sampling_seed)
    }
    const ends = records.flatMap((record) => assistantTurns(record).map((turn) => turn.tokenIds.at(-1)))
    assert.include(ends, 151645)
    const entry = server.log[0]!
    const expected = server.generate(entry.contextIds, {
      maxTokens: entry.body["sampling_params"].max_new_tokens,
      temperature: 0.7,
      topP: 1,
      seed: entry.body["sampling_params"].sampling_seed,
      stopTokenIds: [151645],
      stop: []
    })
    assert.deepStrictEqual(entry.reply!.logprobs, expected.scaledLogprobs)
  })
})

describe("remote inference: replicas", () => {
  it("keeps each episode on one replica, spreads first turns by load, and moves a dead replica's episodes", async () => {
    const a = await fake("vllm")
    const b = await fake("vllm")
    const pool = await connect([a.spec, b.spec], { failureThreshold: 1 })
    const healthy = await runEpisodes(pool, 16, { stepMs: 5 })
    assert.strictEqual(healthy.length, 16)
    const serversOf = (id: string) => new Set([a, b].filter((engine) => engine.log.some((entry) => entry.sessionId === id)).map((engine) => engine.url))
    for (const record of healthy) assert.strictEqual(serversOf(record.id).size, 1, `${record.id} used both replicas`)
    const onA = healthy.filter((record) => serversOf(record.id).has(a.url)).length
    assert.isAtLeast(onA, 4)
    assert.isAtMost(onA, 12)

    // B starts resetting connections mid-run: its episodes finish on A, and every row has its record.
    a.log.length = 0
    b.log.length = 0
    const timer = setInterval(() => {
      if (b.log.filter((entry) => entry.reply !== undefined).length >= 8) b.setFault("reset")
    }, 2)
    const records = await runEpisodes(pool, 24, { stepMs: 10 })
    clearInterval(timer)
    assert.strictEqual(records.length, 24)
    for (const record of records) assert.strictEqual(record.finishReason, "done", JSON.stringify(record.error))
    assertExact(records, [a, b])
    const stats = pool.stats()
    assert.isFalse(stats[1]!.up)
    assert.match(stats[1]!.reason ?? "", /127\.0\.0\.1/)
    assert.isAbove(stats[0]!.movedIn, 0)
    // A moved episode's later turns went to A, after its earlier ones on B.
    const moved = records.filter((record) => serversOf(record.id).size === 2)
    assert.isAbove(moved.length, 0)
    for (const record of moved) {
      const lastOnB = Math.max(...b.log.filter((entry) => entry.sessionId === record.id && entry.reply !== undefined).map((entry) => entry.contextIds.length))
      const firstOnA = Math.min(...a.log.filter((entry) => entry.sessionId === record.id).map((entry) => entry.contextIds.length))
      assert.isAbove(firstOnA, lastOnB)
    }
  })

  it("takes out a healthy-looking server that never answers, and one whose /health fails", async () => {
    const a = await fake("vllm")
    const b = await fake("vllm")
    b.setFault("silent")
    const pool = await connect([a.spec, b.spec], { timeoutMs: 300, failureThreshold: 1 })
    const records = await runEpisodes(pool, 8)
    assert.strictEqual(records.length, 8)
    for (const record of records) assert.strictEqual(record.finishReason, "done", JSON.stringify(record.error))
    assert.isFalse(pool.stats()[1]!.up)
    assert.match(pool.stats()[1]!.reason!, /no reply within 300 ms/)

    const c = await fake("vllm")
    const d = await fake("vllm")
    const pool2 = await connect([c.spec, d.spec], { healthIntervalMs: 50 })
    d.setFault("unhealthy")
    await new Promise((resolve) => setTimeout(resolve, 300))
    assert.isFalse(pool2.stats()[1]!.up)
    assert.match(pool2.stats()[1]!.reason!, /health check failed.*503/)
    await runEpisodes(pool2, 4)
    assert.strictEqual(d.log.length, 0)
  })

  it("retries a turn the server aborted with a new request id, and aborts the HTTP request of an aborted episode", async () => {
    const server = await fake("vllm")
    const pool = await connect([server.spec])
    server.setFault("abort", 1)
    const result = await pool.generate(request())
    assert.strictEqual(server.log.length, 2)
    assert.strictEqual(server.log[0]!.reply!.tokenIds.length, 2)
    assert.notStrictEqual(server.log[0]!.requestId, server.log[1]!.requestId)
    assert.deepStrictEqual(result.tokenIds, [...server.log[1]!.reply!.tokenIds])

    server.setFault("hang")
    const controller = new AbortController()
    const pending = pool.generate(request({ episodeId: "e2" }), controller.signal)
    await new Promise((resolve) => setTimeout(resolve, 100))
    controller.abort(new Error("episode interrupted"))
    await pending.then(() => assert.fail("an aborted request succeeded"), () => undefined)
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.isTrue(server.log.at(-1)!.clientClosed)
  })

  it("caps the requests in flight on each server", async () => {
    const server = await fake("vllm")
    const pool = await connect([server.spec], { maxInFlight: 2 })
    server.setFault("hang")
    const controller = new AbortController()
    const pending = Array.from({ length: 5 }, (_, i) => pool.generate(request({ episodeId: `e${i}` }), controller.signal).catch(() => undefined))
    await new Promise((resolve) => setTimeout(resolve, 150))
    assert.strictEqual(server.log.length, 2)
    assert.strictEqual(pool.stats()[0]!.waiting, 3)
    controller.abort()
    await Promise.all(pending)
    assert.strictEqual(pool.stats()[0]!.inFlight, 0)
  })
})

describe("remote inference: weight sync", () => {
  const weights = () => new Map([["w", { dtype: "F32" as const, shape: [2], data: new Float32Array([1, 2]) }]])

  it("pauses, loads the model directory and resumes each server directly; turns record the new version", async () => {
    const directory = mkdtempSync(path.join(tmpdir(), "episodic-weights-"))
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }))
    const v = await fake("vllm")
    const s = await fake("sglang")
    const vPool = await connect([v.spec], { weightsDirectory: directory })
    const sPool = await connect([s.spec], { weightsDirectory: path.join(directory, "sglang") })
    const before = await vPool.generate(request())
    assert.strictEqual(before.policyVersion, 0)

    await vPool.updateWeights(weights(), 1)
    assert.deepStrictEqual(v.controls.map((c) => c.route), ["/pause", "/update_weights", "/resume"])
    assert.strictEqual(v.controls[1]!.body["weight_dir"], path.join(directory, "v1"))
    assert.isTrue(existsSync(path.join(directory, "v1", "model.safetensors")))
    const after = await vPool.generate(request())
    assert.strictEqual(after.policyVersion, 1)
    assert.notDeepEqual(after.tokenIds, before.tokenIds)

    await sPool.updateWeights(weights(), 1)
    await sPool.updateWeights(weights(), 2)
    assert.deepStrictEqual(s.controls.slice(0, 3).map((c) => c.route), ["/pause_generation", "/update_weights_from_disk", "/continue_generation"])
    assert.strictEqual(s.controls[4]!.body["weight_version"], "2")
    assert.strictEqual((await sPool.generate(request())).policyVersion, 2)
    // Older weight directories go once every server has moved on.
    assert.isFalse(existsSync(path.join(directory, "sglang", "v1")))

    // A failed load still resumes the server, and the sync fails naming it.
    v.failNextUpdate()
    await vPool.updateWeights(weights(), 2).then(() => assert.fail("a failed sync succeeded"), (error: Error) => {
      assert.match(error.message, /version 2/)
      assert.match(error.message, /out of memory/)
    })
    assert.strictEqual(v.controls.at(-1)!.route, "/resume")
  })
})
