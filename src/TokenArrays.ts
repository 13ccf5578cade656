/**
 * Schemas for the token-level arrays that requests and records carry (token ids, masks, logprobs): one plain
 * loop accepts a sound array; only one that fails goes through the element schema, for its usual message
 * (`Expected 0 | 1 at ["responseMask"][1]`). The generic array parser costs about 0.2 µs an element: with
 * a context of hundreds of tokens sent every turn, and every record encoded once, that was more than the
 * rest of the engine's own work per turn.
 */
import { Effect, Schema, SchemaParser } from "effect"

const checkedArray = <S extends Schema.Top & { readonly DecodingServices: never }>(item: S, is: (u: unknown) => boolean, title: string) => {
  const slow = SchemaParser.decodeUnknownEffect(Schema.Array(item))
  return Schema.declareConstructor<ReadonlyArray<S["Type"]>>()(
    [],
    () => (u, _ast, options) => Array.isArray(u) && u.every(is) ? Effect.succeed(u) : slow(u, options),
    { title }
  )
}

const isLiteral01 = (u: unknown) => u === 0 || u === 1

export const IntArray = checkedArray(Schema.Int, Number.isSafeInteger, "integers")
export const MaskArray = checkedArray(Schema.Literals([0, 1]), isLiteral01, "0 or 1")
export const FiniteArray = checkedArray(Schema.Finite, Number.isFinite, "finite numbers")
