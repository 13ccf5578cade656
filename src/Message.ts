/**
 * A chat message in the Hugging Face chat format, as chat templates consume it. A plain struct, so the
 * literals users write (`{ role: "user", content: "hi" }`) are Messages as they stand.
 */
import { Schema } from "effect"

export const Role = Schema.Literals(["system", "user", "assistant", "tool"])
export type Role = typeof Role.Type

export const Message = Schema.Struct({
  role: Role,
  content: Schema.String
})
export type Message = typeof Message.Type

/** Kept as an alias: the shape users write is the Message itself. */
export type MessageInit = Message
