/**
 * trajectories.parquet: the run's records as one Parquet table with the JSONL record's (verl's) column
 * names. Token ids, mask, logprobs and per-turn rewards are Parquet lists, so pandas, datasets and verl read
 * them as arrays; messages, turns and error, being nested records, are JSON strings.
 */
import { parquetWriteBuffer } from "hyparquet-writer"
import { readFileSync, renameSync, writeFileSync } from "node:fs"

type Column = { readonly name: string; readonly data: Array<unknown> }

const list = (name: string, type: "INT32" | "DOUBLE") => [
  { name, repetition_type: "OPTIONAL", converted_type: "LIST", num_children: 1 },
  { name: "list", repetition_type: "REPEATED", num_children: 1 },
  { name: "element", type, repetition_type: "OPTIONAL" }
]
const text = (name: string, json = false) => ({ name, type: "BYTE_ARRAY", converted_type: json ? "JSON" : "UTF8", repetition_type: "OPTIONAL" })

const schema = [
  { name: "root", num_children: 15 },
  text("id"),
  text("group_id"),
  text("interaction"),
  text("messages", true),
  ...list("prompt_ids", "INT32"),
  ...list("response_ids", "INT32"),
  ...list("response_mask", "INT32"),
  ...list("response_logprobs", "DOUBLE"),
  text("turns", true),
  { name: "reward", type: "DOUBLE", repetition_type: "OPTIONAL" },
  ...list("turn_rewards", "DOUBLE"),
  { name: "num_turns", type: "INT32", repetition_type: "OPTIONAL" },
  text("finish_reason"),
  text("error", true),
  { name: "seed", type: "INT64", repetition_type: "OPTIONAL" }
]

/** Converts the run's trajectories.jsonl to `parquetFile` (written whole through a rename); returns the row count. */
export const writeTrajectoriesParquet = (jsonlFile: string, parquetFile: string): number => {
  const records = readFileSync(jsonlFile, "utf8")
    .split("\n")
    .filter((line) => line.length > 0)
    .map((line) => JSON.parse(line) as Record<string, unknown>)
  const column = (name: string, map: (value: unknown) => unknown = (value) => value): Column => ({
    name,
    data: records.map((record) => map(record[name]))
  })
  const json = (value: unknown) => (value === null || value === undefined ? null : JSON.stringify(value))
  const columnData = [
    column("id"),
    column("group_id"),
    column("interaction"),
    column("messages", json),
    column("prompt_ids"),
    column("response_ids"),
    column("response_mask"),
    column("response_logprobs"),
    column("turns", json),
    column("reward"),
    column("turn_rewards"),
    column("num_turns"),
    column("finish_reason"),
    column("error", json),
    column("seed", (value) => BigInt(value as number))
  ]
  const bytes = parquetWriteBuffer({ schema, columnData } as unknown as Parameters<typeof parquetWriteBuffer>[0])
  const partial = `${parquetFile}.partial`
  writeFileSync(partial, new Uint8Array(bytes))
  renameSync(partial, parquetFile)
  return records.length
}
