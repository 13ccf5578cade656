/**
 * Appends trajectory records to a JSONL file, one complete line per record. Each line goes to the file in
 * a single synchronous write of the whole line, so no signal handler, Ctrl-C or fiber interruption can run
 * between two halves of a record: a reader never sees a torn line. The file is opened in append mode
 * only; a run never rewrites what an earlier record put there.
 */
import { Effect, Schema } from "effect"
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

/** Opens `file` for appending (creating its directory); closed when the scope closes. */
export const open = (file: string): Effect.Effect<JsonlWriter, SinkError, import("effect").Scope.Scope> =>
  Effect.acquireRelease(
    Effect.try({
      try: () => {
        mkdirSync(path.dirname(file), { recursive: true })
        return openSync(file, "a")
      },
      catch: (cause) => new SinkError({ file, message: `cannot open for writing: ${String(cause)}` })
    }),
    (fd) => Effect.sync(() => closeSync(fd))
  ).pipe(
    Effect.map((fd) => ({
      file,
      write: (trajectory) =>
        Effect.try({
          try: () => {
            const line = Buffer.from(JSON.stringify(Trajectory.encode(trajectory)) + "\n")
            let written = 0
            while (written < line.length) written += writeSync(fd, line, written)
          },
          catch: (cause) =>
            new SinkError({
              file,
              message: `cannot write record ${trajectory.id}: ${errorMessage(cause).replace(/\s+/g, " ")}`
            })
        })
    }))
  )
