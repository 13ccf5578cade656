/**
 * The numbers an engine runs by, checked in one place for the CLI (experiments) and for library users
 * (Engine.layer): a bad one is an error naming its field, never a hang or an overflowing timer.
 */
import { Result, Schema, SchemaAST, type SchemaIssue } from "effect"

export const PositiveInt = Schema.Int.check(Schema.isGreaterThan(0))
export const NonNegativeInt = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))

/** Node's timers overflow past 2^31 - 1 ms (and then fire at once). */
export const Milliseconds = PositiveInt.check(Schema.isLessThanOrEqualTo(2_147_483_647))

/** The schema of machines/episode.ts's EpisodeLimits. */
export const EpisodeLimits = Schema.Struct({
  maxTurns: PositiveInt,
  maxResponseTokens: PositiveInt,
  maxNewTokens: PositiveInt,
  timeoutMs: Milliseconds
})

export const EngineNumbers = Schema.Struct({
  concurrency: PositiveInt,
  samplesPerRow: PositiveInt,
  bufferCapacity: PositiveInt,
  envCallTimeoutMs: Milliseconds,
  seed: Schema.Int,
  limits: EpisodeLimits
})

/** A field the schema does not have: where it is, and the fields that object does have. */
const unknownField = (issue: SchemaIssue.Issue, path: ReadonlyArray<PropertyKey> = []): { path: ReadonlyArray<PropertyKey>; fields: ReadonlyArray<string> } | undefined => {
  switch (issue._tag) {
    case "Pointer":
      return unknownField(issue.issue, [...path, ...issue.path])
    case "Composite":
      return unknownField(issue.issues[0], path)
    case "Encoding":
      return unknownField(issue.issue, path)
    case "AnyOf":
      // An optional object is a union with undefined: the object's own problem is among the members'.
      for (const member of issue.issues) {
        const found = unknownField(member, path)
        if (found !== undefined) return found
      }
      return undefined
    case "UnexpectedKey":
      return { path, fields: SchemaAST.isObjects(issue.ast) ? issue.ast.propertySignatures.map((field) => String(field.name)) : [] }
    default:
      return undefined
  }
}

/**
 * Decodes `value`; on failure, the first problem as one line naming the field. With `closed`, a field the
 * schema does not have (a typo, a field of another version) is a problem too, named with the fields there
 * are: the schema's, and those the caller carries beside it (`carried`, by the path of their object).
 */
export const decodeOrProblem = <A>(
  schema: Schema.Codec<A, unknown>,
  value: unknown,
  options: { readonly closed?: boolean; readonly carried?: Readonly<Record<string, ReadonlyArray<string>>> } = {}
): Result.Result<A, string> => {
  const exit = Schema.decodeUnknownExit(schema)(value, { errors: "first", onExcessProperty: options.closed === true ? "error" : "ignore" })
  if (exit._tag === "Success") return Result.succeed(exit.value)
  const error = (exit.cause as { readonly reasons?: ReadonlyArray<{ readonly error?: { readonly message?: string; readonly issue?: SchemaIssue.Issue } }> })
    .reasons?.[0]?.error
  const unknown = error?.issue === undefined ? undefined : unknownField(error.issue)
  if (unknown !== undefined) {
    const name = unknown.path.map(String).join(".")
    const parent = unknown.path.slice(0, -1).map(String).join(".")
    const fields = [...unknown.fields, ...(options.carried?.[parent] ?? [])]
    return Result.fail(`unknown field \`${name}\`; the fields${parent === "" ? "" : ` of \`${parent}\``} are ${fields.join(", ")}`)
  }
  return Result.fail(String(error?.message ?? exit.cause).replace(/\s+/g, " ").trim())
}
