/**
 * `episodic serve`: the official `openai` npm client against it, unchanged (completions with token ids and
 * logprobs, chat with the model's template, streaming, errors, auth), a client that disconnects cancels its
 * generation, bad input never takes it down, and two replicas behind episodic's client keep each episode's
 * cache (prefix-cache hits).
 */
import { afterAll, assert, beforeAll, describe, it } from "@effect/vitest"
import { Effect, Layer, Stream } from "effect"
import OpenAI from "openai"
import { start, type InferenceServer } from "../actors/inference-server/index.ts"
import { Engine } from "../src/Engine.ts"
import { gridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { SamplingParams } from "../src/Generation.ts"
import { RemoteInference } from "../src/remote-inference/RemoteInference.ts"
import { load as loadTokenizer, Tokenizer, type ChatTokenizer } from "../src/Tokenizer.ts"
import { limits, tinyModel } from "./support.ts"

let model: string
let tokenizer: ChatTokenizer
let server: InferenceServer & { close(): Promise<void> }
let client: OpenAI
const TOKEN = "serve-test-token"

beforeAll(async () => {
  model = await tinyModel(0)
  tokenizer = await loadTokenizer(model)
  server = await start({ model, port: 0, token: TOKEN, threads: 1 })
  client = new OpenAI({ baseURL: `${server.url}/v1`, apiKey: TOKEN, maxRetries: 0 })
})
afterAll(async () => {
  await server?.close()
})

describe("episodic serve with the openai client", () => {
  it("lists the model, completes token-id prompts with token ids and logprobs, and streams the same text", async () => {
    const models = await client.models.list()
    assert.strictEqual(models.data[0]!.id, model)
    const prompt = tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1)." }])
    const body = { model, prompt, max_tokens: 12, temperature: 1, seed: 5, logprobs: 0, return_token_ids: true } as unknown as OpenAI.CompletionCreateParamsNonStreaming
    const completion = await client.completions.create(body)
    const choice = completion.choices[0] as OpenAI.CompletionChoice & { token_ids: Array<number>; prompt_token_ids: Array<number> }
    assert.deepStrictEqual(choice.prompt_token_ids, prompt)
    assert.isAbove(choice.token_ids.length, 0)
    assert.isAtMost(choice.token_ids.length, 12)
    assert.strictEqual(choice.logprobs!.token_logprobs!.length, choice.token_ids.length)
    for (const logprob of choice.logprobs!.token_logprobs!) assert.isAtMost(logprob, 0)
    assert.strictEqual(choice.text, tokenizer.decode(choice.token_ids))
    assert.include(["stop", "length"], choice.finish_reason)
    assert.strictEqual(completion.usage!.prompt_tokens, prompt.length)

    // The same seed gives the same tokens, streamed.
    const again = await client.completions.create(body)
    assert.deepStrictEqual((again.choices[0] as typeof choice).token_ids, choice.token_ids)
    const stream = await client.completions.create({ ...body, stream: true } as unknown as OpenAI.CompletionCreateParamsStreaming)
    let streamed = ""
    for await (const chunk of stream) streamed += chunk.choices[0]?.text ?? ""
    assert.strictEqual(streamed, choice.text)

    const text = await client.completions.create({ model, prompt: "You are at", max_tokens: 4, temperature: 0 })
    assert.isString(text.choices[0]!.text)
  })

  it("chats through the model's chat template, with logprobs, token ids and streaming", async () => {
    const messages = [{ role: "user" as const, content: "Where is the key?" }]
    const chat = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0.8, seed: 11, logprobs: true, return_token_ids: true } as OpenAI.ChatCompletionCreateParamsNonStreaming)
    const choice = chat.choices[0] as OpenAI.ChatCompletion.Choice & { token_ids: Array<number> }
    assert.deepStrictEqual((chat as unknown as { prompt_token_ids: Array<number> }).prompt_token_ids, tokenizer.renderPrompt(messages))
    assert.strictEqual(choice.logprobs!.content!.length, choice.token_ids.length)
    assert.strictEqual(choice.message.content, tokenizer.decode(choice.token_ids))
    const stream = await client.chat.completions.create({ model, messages, max_tokens: 10, temperature: 0.8, seed: 11, stream: true })
    let streamed = ""
    for await (const chunk of stream) streamed += chunk.choices[0]?.delta?.content ?? ""
    assert.strictEqual(streamed, choice.message.content)
  })

  it("answers bad requests with a 4xx naming the field, refuses a missing token, and keeps serving", async () => {
    const bad = async (body: Record<string, unknown>, param: RegExp) => {
      const error = await client.completions.create({ model, prompt: "hi", ...body } as never).then(() => undefined, (e: unknown) => e)
      assert.instanceOf(error, OpenAI.BadRequestError)
      assert.match((error as InstanceType<typeof OpenAI.BadRequestError>).message, param)
    }
    await bad({ temperature: -1 }, /temperature/)
    await bad({ max_tokens: 0 }, /max_tokens/)
    await bad({ prompt: [1, 2, 10 ** 9] }, /prompt\[2\]/)
    await bad({ max_tokens: 100_000 }, /context is \d+ tokens/)
    await bad({ n: 3 }, /\bn must be 1/)
    await bad({ stop: [1] }, /stop/)
    const chatError = await client.chat.completions.create({ model, messages: [{ role: "wizard", content: "x" }] } as never).then(() => undefined, (e: unknown) => e)
    assert.match(String((chatError as Error).message), /messages\[0\]\.role/)
    const raw = await fetch(`${server.url}/inference/v1/generate`, { method: "POST", headers: { authorization: `Bearer ${TOKEN}` }, body: "{not json" })
    assert.strictEqual(raw.status, 400)
    const unauthorized = await new OpenAI({ baseURL: `${server.url}/v1`, apiKey: "wrong", maxRetries: 0 }).models.list().then(() => undefined, (e: unknown) => e)
    assert.instanceOf(unauthorized, OpenAI.AuthenticationError)
    assert.strictEqual((await fetch(`${server.url}/health`)).status, 200)
    // vLLM's endpoints outside /v1 are reached with client.post.
    const root = new OpenAI({ baseURL: server.url, apiKey: TOKEN, maxRetries: 0 })
    const tokens = await root.post("/tokenize", { body: { prompt: "You are at (2, 3)." } }) as { tokens: Array<number> }
    assert.deepStrictEqual(tokens.tokens, tokenizer.encode("You are at (2, 3)."))
    const fine = await client.completions.create({ model, prompt: "You are at", max_tokens: 3 })
    assert.isString(fine.choices[0]!.text)
  })

  it("cancels the generation of a client that disconnects", async () => {
    const before = await server.stats()
    const controller = new AbortController()
    const pending = client.completions.create(
      { model, prompt: "You are at", max_tokens: 900, temperature: 1, ignore_eos: true } as never,
      { signal: controller.signal }
    ).then(() => "finished", () => "aborted")
    setTimeout(() => controller.abort(), 150)
    assert.strictEqual(await pending, "aborted")
    await new Promise((resolve) => setTimeout(resolve, 300))
    const after = await server.stats()
    assert.strictEqual(after["running"], 0)
    assert.isBelow(after["generatedTokens"]! - before["generatedTokens"]!, 900)
  })
})

describe("two episodic serve replicas", () => {
  it("keep each episode on one replica, so later turns come from the prefix cache", async () => {
    const second = await start({ model, port: 0, token: TOKEN, threads: 1 })
    try {
      const pool = await RemoteInference.connect({ servers: [server.url, second.url], token: TOKEN })
      assert.strictEqual(pool.logprobKind, "sampled")
      const before = await Promise.all([server.stats(), second.stats()])
      const records = await Effect.gen(function*() {
        const engine = yield* Engine
        const rows = gridQuest.rows!({ seed: 3, count: 16, config: {} })
        return Array.from(yield* Stream.runCollect(engine.run(Stream.fromIterable(rows))))
      }).pipe(
        Effect.provide(
          Engine.layer({
            environments: EnvironmentRegistry.builtins(),
            concurrency: 16,
            samplesPerRow: 1,
            limits: limits({ maxTurns: 4, maxNewTokens: 8 }),
            sampling: new SamplingParams({ ...SamplingParams.defaults, maxNewTokens: 8 }),
            envCallTimeoutMs: 10_000,
            seed: 0,
            bufferCapacity: 16
          }).pipe(Layer.provideMerge(RemoteInference.layerOf(pool)), Layer.provideMerge(Tokenizer.layer(model)))
        ),
        Effect.runPromise
      )
      pool.close()
      assert.strictEqual(records.length, 16)
      const stats = pool.stats()
      assert.isAbove(stats[0]!.requests, 0)
      assert.isAbove(stats[1]!.requests, 0)
      assert.strictEqual(stats[0]!.movedIn + stats[1]!.movedIn, 0)
      const after = await Promise.all([server.stats(), second.stats()])
      const context = after.reduce((sum, s, i) => sum + s.context_tokens - before[i]!.context_tokens, 0)
      const cached = after.reduce((sum, s, i) => sum + s.cached_tokens - before[i]!.cached_tokens, 0)
      const turns = records.reduce((sum, r) => sum + r.numTurns, 0)
      // Every turn after an episode's first is served mostly from its replica's cache.
      console.log(`two replicas: ${turns} turns, ${context} context tokens, ${cached} from the prefix cache (${(100 * cached / context).toFixed(1)}%)`)
      if (turns > records.length) assert.isAbove(cached / context, 0.3)
    } finally {
      await second.close()
    }
  })
})
