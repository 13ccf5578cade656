import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema, Stream } from "effect"
import { parquetWriteFile } from "hyparquet-writer"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll } from "vitest"
import * as Dataset from "../src/Dataset.ts"
import { DatasetRow } from "../src/DatasetRow.ts"

const dir = mkdtempSync(join(tmpdir(), "episodic-dataset-"))
afterAll(() => rmSync(dir, { recursive: true, force: true }))

const writeJsonl = (name: string, lines: ReadonlyArray<unknown>): string => {
  const file = join(dir, name)
  writeFileSync(file, lines.map((line) => typeof line === "string" ? line : JSON.stringify(line)).join("\n") + "\n")
  return file
}

const readAll = (file: string) => Stream.runCollect(Dataset.readRows(file))

/** What a row should read back as: the input, checked by the row schema (messages become Message instances). */
const expected = (rows: ReadonlyArray<unknown>) => rows.map((row) => Schema.decodeUnknownSync(DatasetRow)(row))

const goodRows = [
  {
    data_source: "openai/gsm8k",
    prompt: [{ role: "system", content: "Think step by step." }, { role: "user", content: "What is 2 + 2?" }],
    ability: "math",
    reward_model: { style: "rule", ground_truth: "4" },
    extra_info: { index: 0, interaction_kwargs: { name: "gsm8k", query: "What is 2 + 2?", ground_truth: "4" }, seed: 11 }
  },
  {
    prompt: [],
    extra_info: { interaction_kwargs: { name: "wordle", word_length: 5 }, group_id: "g-1" }
  }
]

describe("Dataset JSON Lines", () => {
  it.effect("reads rows back as written, skipping blank lines", () =>
    Effect.gen(function*() {
      const file = writeJsonl("good.jsonl", [goodRows[0], "", goodRows[1]])
      const rows = yield* readAll(file)
      assert.deepStrictEqual(rows, expected(goodRows))
      assert.strictEqual(rows[0]?.extra_info.interaction_kwargs.ground_truth, "4")
      assert.strictEqual(rows[0]?.extra_info.seed, 11)
    }))

  it.effect("reads .json files as JSON lines", () =>
    Effect.gen(function*() {
      const rows = yield* readAll(writeJsonl("good.json", goodRows))
      assert.deepStrictEqual(rows, expected(goodRows))
    }))

  it.effect("fails at the first bad row, naming file, line and field", () =>
    Effect.gen(function*() {
      const robot = { prompt: [{ role: "robot", content: "beep" }], extra_info: { interaction_kwargs: { name: "gsm8k" } } }
      const file = writeJsonl("bad-role.jsonl", [goodRows[0], goodRows[1], robot, { prompt: [] }])
      const error = yield* Effect.flip(readAll(file))
      assert.strictEqual(error._tag, "DatasetError")
      assert.strictEqual(error.file, file)
      assert.strictEqual(error.row, 3)
      assert.strictEqual(error.field, "prompt[0].role")
      assert.strictEqual(error.message, `${file} line 3: field "prompt[0].role": expected "system" | "user" | "assistant" | "tool", got "robot"`)
    }))

  it.effect("names a missing or mistyped interaction name", () =>
    Effect.gen(function*() {
      const file = writeJsonl("bad-name.jsonl", [
        goodRows[0],
        goodRows[1],
        { prompt: [], extra_info: { interaction_kwargs: { ground_truth: "4" } } },
        { prompt: [], extra_info: { interaction_kwargs: { name: 3 } } }
      ])
      const errors = yield* Dataset.validateRows(file)
      assert.deepStrictEqual(errors.map((error) => error.message), [
        `${file} line 3: field "extra_info.interaction_kwargs.name": missing key`,
        `${file} line 4: field "extra_info.interaction_kwargs.name": expected string, got 3`
      ])
    }))

  it.effect("names a line that is not JSON", () =>
    Effect.gen(function*() {
      const file = writeJsonl("bad-json.jsonl", [goodRows[0], "{\"prompt\": [", goodRows[1]])
      const error = yield* Effect.flip(readAll(file))
      assert.strictEqual(error.row, 2)
      assert.strictEqual(error.field, null)
      assert.include(error.message, `${file} line 2: invalid JSON:`)
    }))

  it.effect("validateRows collects every bad row and nothing for a good file", () =>
    Effect.gen(function*() {
      const file = writeJsonl("many-bad.jsonl", [
        "not json",
        goodRows[0],
        { prompt: "hi", extra_info: { interaction_kwargs: { name: "gsm8k" } } },
        { prompt: [], extra_info: { interaction_kwargs: { name: "gsm8k" }, seed: 1.5 } },
        7
      ])
      const errors = yield* Dataset.validateRows(file)
      assert.deepStrictEqual(errors.map((error) => [error.row, error.field]), [
        [1, null],
        [3, "prompt"],
        [4, "extra_info.seed"],
        [5, null]
      ])
      assert.deepStrictEqual(yield* Dataset.validateRows(writeJsonl("all-good.jsonl", goodRows)), [])
    }))
})

describe("Dataset files", () => {
  it.effect("names a missing file", () =>
    Effect.gen(function*() {
      const file = join(dir, "absent.jsonl")
      const error = yield* Effect.flip(readAll(file))
      assert.strictEqual(error.row, null)
      assert.strictEqual(error.message, `${file}: file not found`)
      assert.deepStrictEqual((yield* Dataset.validateRows(file)).map((error) => error.message), [error.message])
    }))

  it.effect("names an unknown extension", () =>
    Effect.gen(function*() {
      const file = join(dir, "rows.csv")
      writeFileSync(file, "prompt\n")
      const error = yield* Effect.flip(readAll(file))
      assert.strictEqual(error.message, `${file}: unknown extension ".csv" (expected .jsonl, .json or .parquet)`)
    }))

  it.effect("names a file that is not Parquet", () =>
    Effect.gen(function*() {
      const file = join(dir, "fake.parquet")
      writeFileSync(file, "not parquet at all")
      const error = yield* Effect.flip(readAll(file))
      assert.strictEqual(error.row, null)
      assert.include(error.message, `${file}: `)
    }))
})

const text = (name: string) =>
  ({ name, type: "BYTE_ARRAY", converted_type: "UTF8", repetition_type: "OPTIONAL" }) as const

/** verl's layout as pyarrow writes it: prompt a list of {role, content} structs, extra_info a struct. */
const writeVerlParquet = (name: string, rows: ReadonlyArray<{
  readonly prompt: ReadonlyArray<{ readonly role: string; readonly content: string }>
  readonly interactionKwargs: { readonly name: unknown; readonly ground_truth: string | null }
  readonly seed: bigint | null
}>): string => {
  const filename = join(dir, name)
  parquetWriteFile({
    filename,
    rowGroupSize: 2,
    columnData: [
      { name: "data_source", data: rows.map(() => "openai/gsm8k") },
      { name: "prompt", data: rows.map((row) => row.prompt) },
      { name: "extra_info", data: rows.map((row) => ({ interaction_kwargs: row.interactionKwargs, seed: row.seed })) }
    ],
    schema: [
      { name: "root", num_children: 3 },
      text("data_source"),
      { name: "prompt", repetition_type: "OPTIONAL", converted_type: "LIST", num_children: 1 },
      { name: "list", repetition_type: "REPEATED", num_children: 1 },
      { name: "element", repetition_type: "OPTIONAL", num_children: 2 },
      text("role"),
      text("content"),
      { name: "extra_info", repetition_type: "OPTIONAL", num_children: 2 },
      { name: "interaction_kwargs", repetition_type: "OPTIONAL", num_children: 2 },
      text("name"),
      text("ground_truth"),
      { name: "seed", type: "INT64", repetition_type: "OPTIONAL" }
    ]
  })
  return filename
}

const question = (n: number) => [{ role: "user", content: `What is ${n} + ${n}?` }]

describe("Dataset Parquet", () => {
  it.effect("reads verl's nested layout, INT64 seeds as numbers, across row groups", () =>
    Effect.gen(function*() {
      const file = writeVerlParquet("verl.parquet", [
        { prompt: question(1), interactionKwargs: { name: "gsm8k", ground_truth: "2" }, seed: 7n },
        { prompt: question(2), interactionKwargs: { name: "gsm8k", ground_truth: "4" }, seed: 8n },
        { prompt: [], interactionKwargs: { name: "wordle", ground_truth: null }, seed: null }
      ])
      const rows = yield* readAll(file)
      assert.deepStrictEqual(rows, expected([
        {
          data_source: "openai/gsm8k",
          prompt: question(1),
          extra_info: { interaction_kwargs: { name: "gsm8k", ground_truth: "2" }, seed: 7 }
        },
        {
          data_source: "openai/gsm8k",
          prompt: question(2),
          extra_info: { interaction_kwargs: { name: "gsm8k", ground_truth: "4" }, seed: 8 }
        },
        // pyarrow's nulls for fields a row lacks read back as absent fields.
        { data_source: "openai/gsm8k", prompt: [], extra_info: { interaction_kwargs: { name: "wordle" } } }
      ]))
      assert.strictEqual(typeof rows[0]?.extra_info.seed, "number")
    }))

  it.effect("names a bad row by its position in the file", () =>
    Effect.gen(function*() {
      const file = writeVerlParquet("bad.parquet", [
        { prompt: question(1), interactionKwargs: { name: "gsm8k", ground_truth: "2" }, seed: 1n },
        { prompt: question(2), interactionKwargs: { name: "gsm8k", ground_truth: "4" }, seed: 2n },
        { prompt: [{ role: "robot", content: "beep" }], interactionKwargs: { name: "gsm8k", ground_truth: "6" }, seed: 3n }
      ])
      const error = yield* Effect.flip(readAll(file))
      assert.strictEqual(error.row, 3)
      assert.strictEqual(
        error.message,
        `${file} row 3: field "prompt[0].role": expected "system" | "user" | "assistant" | "tool", got "robot"`
      )
    }))

  it.effect("decodes interaction_kwargs stored as a JSON string", () =>
    Effect.gen(function*() {
      const filename = join(dir, "kwargs-json.parquet")
      const kwargs = [{ name: "gsm8k", ground_truth: "2", tolerance: null }, { name: "wordle", word_length: 5 }]
      parquetWriteFile({
        filename,
        columnData: [
          { name: "prompt", data: [question(1), []] },
          { name: "extra_info", data: kwargs.map((kw, i) => ({ interaction_kwargs: JSON.stringify(kw), index: BigInt(i) })) }
        ],
        schema: [
          { name: "root", num_children: 2 },
          { name: "prompt", repetition_type: "OPTIONAL", converted_type: "LIST", num_children: 1 },
          { name: "list", repetition_type: "REPEATED", num_children: 1 },
          { name: "element", repetition_type: "OPTIONAL", num_children: 2 },
          text("role"),
          text("content"),
          { name: "extra_info", repetition_type: "OPTIONAL", num_children: 2 },
          text("interaction_kwargs"),
          { name: "index", type: "INT64", repetition_type: "OPTIONAL" }
        ]
      })
      const rows = yield* readAll(filename)
      assert.deepStrictEqual(rows, expected([
        { prompt: question(1), extra_info: { interaction_kwargs: kwargs[0], index: 0 } },
        { prompt: [], extra_info: { interaction_kwargs: kwargs[1], index: 1 } }
      ]))
    }))
})
