/**
 * A chat message in the Hugging Face chat format, as chat templates consume it.
 */
import { Schema } from "effect"

export const Role = Schema.Literals(["system", "user", "assistant", "tool"])
export type Role = typeof Role.Type

export class Message extends Schema.Class<Message>("episodic/Message")({
  role: Role,
  content: Schema.String
}) {}

/** A plain message literal, the shape users write: `{ role: "user", content: "hi" }`. */
export type MessageInit = { readonly role: Role; readonly content: string }

export const make = (role: Role, content: string): Message => new Message({ role, content })
