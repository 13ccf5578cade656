/**
 * Appends trajectory records to a JSONL file, one complete line per record. Each line goes to the file in
 * a single synchronous write of the whole line, so no signal handler, Ctrl-C or fiber interruption can run
 * between two halves of a record: a reader never sees a torn line. The file is opened in append mode
 * only; a run never rewrites what an earlier record put there.
 */
import { Effect, Schema, type Scope } from "effect"
import { closeSync, mkdirSync, openSync, writeSync } from "node:fs"
import * as path from "node:path"
import { errorMessage } from "./errorMessage.ts"
import * as Trajectory from "./Trajectory.ts"

export class SinkError extends Schema.TaggedError<SinkError>()("SinkError", {
  file: Schema.String,
  message: Schema.String
}) {}

export interface JsonlWriter {
  readonly file: string
  write(trajectory: Trajectory.Trajectory): Effect.Effect<void, SinkError>
}

/** Plain JSON lines (metrics), written the same way: one whole line per write. */
export interface JsonLinesWriter {
  readonly file: string
  write(value: unknown): Effect.Effect<void, SinkError>
}

const openFile = (file: string) =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        mkdirSync(path.dirname(file), { recursive: true })
        return openSync(file, "a")
      },
      catch: (cause) => new SinkError({ file, message: `cannot open for writing: ${String(cause)}` })
    }),
    (fd) => Effect.sync(() => closeSync(fd))
  )

const writeLine = (fd: number, text: string) => {
  const line = Buffer.from(text + "\n")
  let written = 0
  while (written < line.length) written += writeSync(fd, line, written)
}

/** Opens `file` for appending JSON values, one per line. */
export const openLines = (file: string): Effect.Effect<JsonLinesWriter, SinkError, Scope.Scope> =>
  openFile(file).pipe(
    Effect.map((fd) => ({
      file,
      write: (value) =>
        Effect.try({
          try: () => writeLine(fd, JSON.stringify(value)),
          catch: (cause) => new SinkError({ file, message: errorMessage(cause).replace(/\s+/g, " ") })
        })
    }))
  )

/** Opens `file` for appending trajectory records (creating its directory); closed when the scope closes. */
export const open = (file: string): Effect.Effect<JsonlWriter, SinkError, Scope.Scope> =>
  openLines(file).pipe(
    Effect.map((lines) => ({
      file,
      write: (trajectory) =>
        Effect.try({
          try: () => Trajectory.encode(trajectory),
          catch: (cause) => new SinkError({ file, message: errorMessage(cause).replace(/\s+/g, " ") })
        }).pipe(
          Effect.flatMap(lines.write),
          Effect.mapError((error) => new SinkError({ file, message: `cannot write record ${trajectory.id}: ${error.message}` }))
        )
    }))
  )
