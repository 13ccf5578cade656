import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import * as JsonlWriter from "../src/JsonlWriter.ts"
import * as Trajectory from "../src/Trajectory.ts"

const record = (id: string, tokens: number): Trajectory.Trajectory => ({
  id,
  groupId: "g",
  interaction: "test",
  messages: [{ role: "user", content: "x".repeat(tokens) }],
  promptIds: [1, 2, 3],
  responseIds: Array.from({ length: tokens }, (_, i) => i),
  responseMask: Array.from({ length: tokens }, (_, i) => (i % 2 === 0 ? 1 : 0)),
  responseLogprobs: Array.from({ length: tokens }, (_, i) => (i % 2 === 0 ? -0.5 : 0)),
  turns: [],
  reward: 1,
  turnRewards: [1],
  numTurns: 1,
  finishReason: "done",
  error: null,
  seed: 0
})

describe("JsonlWriter", () => {
  it.effect("many fibers writing large records at once never interleave a line", () =>
    Effect.gen(function*() {
      const file = path.join(mkdtempSync(path.join(tmpdir(), "episodic-jsonl-")), "nested", "t.jsonl")
      yield* Effect.scoped(Effect.gen(function*() {
        const writer = yield* JsonlWriter.open(file)
        yield* Effect.forEach(
          Array.from({ length: 200 }, (_, i) => record(`r${i}`, 500 + i * 37)),
          (t) => writer.write(t),
          { concurrency: 50 }
        )
      }))
      const lines = readFileSync(file, "utf8").split("\n")
      assert.strictEqual(lines.pop(), "")
      assert.strictEqual(lines.length, 200)
      const ids = lines.map((line) => Trajectory.decode(JSON.parse(line)).id)
      assert.strictEqual(new Set(ids).size, 200)
    }))

  it.effect("a record that breaks the schema is refused and nothing of it is written", () =>
    Effect.gen(function*() {
      const file = path.join(mkdtempSync(path.join(tmpdir(), "episodic-jsonl-")), "t.jsonl")
      const error = yield* Effect.scoped(Effect.gen(function*() {
        const writer = yield* JsonlWriter.open(file)
        yield* writer.write(record("good", 4))
        return yield* writer.write({ ...record("bad", 4), responseMask: [1, 2, 0, 1] as never }).pipe(Effect.flip)
      }))
      assert.strictEqual(error._tag, "SinkError")
      assert.strictEqual(error.message, `cannot write record bad: Expected 0 | 1 at ["responseMask"][1]`)
      assert.strictEqual(readFileSync(file, "utf8"), JSON.stringify(Trajectory.encode(record("good", 4))) + "\n")
    }))

  it.effect("appends to what a file already holds", () =>
    Effect.gen(function*() {
      const file = path.join(mkdtempSync(path.join(tmpdir(), "episodic-jsonl-")), "t.jsonl")
      for (const id of ["first", "second"]) {
        yield* Effect.scoped(JsonlWriter.open(file).pipe(Effect.flatMap((writer) => writer.write(record(id, 2)))))
      }
      const ids = readFileSync(file, "utf8").trim().split("\n").map((line) => JSON.parse(line).id)
      assert.deepStrictEqual(ids, ["first", "second"])
    }))
})
