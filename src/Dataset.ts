/**
 * Datasets of verl rows (see DatasetRow.ts), read from JSON Lines (`.jsonl`, or `.json` as Hugging Face's
 * `to_json` writes it: one object per line) or from Parquet (`.parquet`, as verl's preprocessing scripts write it).
 *
 * Rows are numbered from 1. In JSON Lines a row's number is its line number (blank lines are skipped but
 * counted), so an editor jumps straight to it; in Parquet it is the row's position in the file.
 *
 * `readRows` streams the rows and fails at the first bad one: a run refuses bad data up front rather than
 * training on part of it. `validateRows` reads the whole file and collects every problem, for a CLI to print.
 */
import { Effect, Result, Schema, SchemaIssue, Stream } from "effect"
import { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } from "hyparquet"
import { createReadStream } from "node:fs"
import { extname } from "node:path"
import { DatasetRow } from "./DatasetRow.ts"
import { errorMessage } from "./errorMessage.ts"

export class DatasetError extends Schema.TaggedError<DatasetError>()("DatasetError", {
  file: Schema.String,
  /** The 1-based row: its line number in JSON Lines, its position in Parquet; null when the whole file is at fault. */
  row: Schema.NullOr(Schema.Int),
  /** The path of the bad field, like `extra_info.interaction_kwargs.name` or `prompt[0].role`. */
  field: Schema.NullOr(Schema.String),
  /** All of the above in one line: `data/train.jsonl line 7: field "prompt[0].role": expected ..., got "robot"`. */
  message: Schema.String
}) {}

/** Streams the file's rows, checked against `DatasetRow`; fails with the first problem. */
export const readRows = (file: string): Stream.Stream<DatasetRow, DatasetError> =>
  checkedRows(file).pipe(Stream.mapEffect(Effect.fromResult))

/** Reads the whole file and returns every problem in it, in file order; empty when the file is good. */
export const validateRows = (file: string): Effect.Effect<ReadonlyArray<DatasetError>> =>
  checkedRows(file).pipe(
    // A flipped Result keeps the row errors and skips the good rows.
    Stream.filterMap(Result.flip),
    // A file-level error (unreadable, not Parquet) ends the file, so it is the last problem.
    Stream.catch((error) => Stream.succeed(error)),
    Stream.runCollect
  )

/** Where a row sits in its file, in the file format's own terms. */
interface Position {
  readonly unit: "line" | "row"
  readonly row: number
}

/** Each row as the row or its problem; the stream itself fails only when the file can't be read. */
const checkedRows = (file: string): Stream.Stream<Result.Result<DatasetRow, DatasetError>, DatasetError> => {
  switch (extname(file).toLowerCase()) {
    case ".jsonl":
    case ".json":
      return jsonLinesRows(file)
    case ".parquet":
      return parquetRows(file)
    default:
      return Stream.fail(fileError(file, `unknown extension "${extname(file)}" (expected .jsonl, .json or .parquet)`))
  }
}

const jsonLinesRows = (file: string): Stream.Stream<Result.Result<DatasetRow, DatasetError>, DatasetError> =>
  Stream.suspend(() =>
    Stream.fromAsyncIterable<Uint8Array, DatasetError>(createReadStream(file), (cause) => fileError(file, describe(cause)))
  ).pipe(
    Stream.decodeText,
    Stream.splitLines,
    Stream.map((line, index) => ({ line, at: { unit: "line", row: index + 1 } as const })),
    Stream.filter(({ line }) => line.trim() !== ""),
    Stream.map(({ line, at }) =>
      parseJson(line).pipe(
        Result.mapError((problem) => rowError(file, at, null, problem)),
        Result.flatMap((value) => checkRow(file, at, value))
      )
    )
  )

const parquetRows = (file: string): Stream.Stream<Result.Result<DatasetRow, DatasetError>, DatasetError> =>
  Stream.suspend(() => Stream.fromAsyncIterable(parquetRowGroups(file), (cause) => fileError(file, describe(cause)))).pipe(
    Stream.flattenIterable,
    Stream.map((value, index) => {
      const at: Position = { unit: "row", row: index + 1 }
      return parseInteractionKwargs(file, at, fromParquet(value)).pipe(Result.flatMap((row) => checkRow(file, at, row)))
    })
  )

/** Reads one row group at a time, so a big file is never in memory whole. */
async function* parquetRowGroups(file: string): AsyncGenerator<ReadonlyArray<Record<string, unknown>>> {
  const buffer = await asyncBufferFromFile(file)
  const metadata = await parquetMetadataAsync(buffer)
  let rowStart = 0
  for (const group of metadata.row_groups) {
    const rowEnd = rowStart + Number(group.num_rows)
    yield await parquetReadObjects({ file: buffer, metadata, rowStart, rowEnd })
    rowStart = rowEnd
  }
}

/**
 * A Parquet value as JSON would have given it. INT64 columns arrive as bigints: safe ones become numbers
 * (larger ones stay bigints, which the schema rejects where it wants an integer). A struct field that a row
 * lacks arrives as null, because pyarrow gives every row the union of all rows' fields: null fields are dropped.
 */
const fromParquet = (value: unknown): unknown => {
  if (typeof value === "bigint") {
    return value >= BigInt(Number.MIN_SAFE_INTEGER) && value <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(value) : value
  }
  if (Array.isArray(value)) return value.map(fromParquet)
  if (isPlainObject(value)) {
    return Object.fromEntries(
      Object.entries(value).filter(([, field]) => field !== null).map(([key, field]) => [key, fromParquet(field)])
    )
  }
  return value
}

/** Parquet needs one schema for every row, so writers whose rows differ in kwargs store them as a JSON string. */
const parseInteractionKwargs = (file: string, at: Position, row: unknown): Result.Result<unknown, DatasetError> => {
  if (!isPlainObject(row) || !isPlainObject(row.extra_info)) return Result.succeed(row)
  const extraInfo = row.extra_info
  if (typeof extraInfo.interaction_kwargs !== "string") return Result.succeed(row)
  return parseJson(extraInfo.interaction_kwargs).pipe(
    Result.map((interaction_kwargs) => ({ ...row, extra_info: { ...extraInfo, interaction_kwargs } })),
    Result.mapError((problem) => rowError(file, at, "extra_info.interaction_kwargs", problem))
  )
}

const decodeDatasetRow = Schema.decodeUnknownResult(DatasetRow)
const standardIssues = SchemaIssue.makeFormatterStandardSchemaV1()

/** Checks a row against the schema, naming the first bad field and the value found there. */
const checkRow = (file: string, at: Position, value: unknown): Result.Result<DatasetRow, DatasetError> =>
  Result.mapError(decodeDatasetRow(value, { reportInput: true }), (error) => {
    const issue = standardIssues(error.issue).issues[0]
    const path = (issue?.path ?? []).map((segment) => typeof segment === "object" ? segment.key : segment)
    const problem = issue?.message ?? error.message
    return rowError(file, at, path.length === 0 ? null : fieldPath(path), problem.charAt(0).toLowerCase() + problem.slice(1))
  })

/** `["prompt", 0, "role"]` reads as `prompt[0].role`. */
const fieldPath = (path: ReadonlyArray<PropertyKey>): string =>
  path.map((key, i) => typeof key === "number" ? `[${key}]` : i === 0 ? String(key) : `.${String(key)}`).join("")

const parseJson = (text: string): Result.Result<unknown, string> =>
  Result.try({ try: (): unknown => JSON.parse(text), catch: (cause) => `invalid JSON: ${describe(cause)}` })

const fileError = (file: string, problem: string): DatasetError =>
  new DatasetError({ file, row: null, field: null, message: `${file}: ${problem}` })

const rowError = (file: string, at: Position, field: string | null, problem: string): DatasetError =>
  new DatasetError({
    file,
    row: at.row,
    field,
    message: `${file} ${at.unit} ${at.row}: ${field === null ? "" : `field "${field}": `}${problem}`
  })

const describe = (cause: unknown): string => {
  if (cause instanceof Error && "code" in cause && cause.code === "ENOENT") return "file not found"
  return errorMessage(cause)
}

const isPlainObject = (value: unknown): value is Record<string, unknown> => {
  if (typeof value !== "object" || value === null) return false
  const prototype = Object.getPrototypeOf(value)
  return prototype === Object.prototype || prototype === null
}
