/**
 * A dataset row in verl's format: the prompt as chat messages, and `extra_info.interaction_kwargs.name`
 * naming the environment that runs the episode (the other interaction_kwargs go to that environment).
 * An environment that writes its own first observation (a game's reset) takes an empty prompt.
 */
import { Schema } from "effect"
import { Message } from "./Message.ts"

export const InteractionKwargs = Schema.StructWithRest(Schema.Struct({ name: Schema.String }), [
  Schema.Record(Schema.String, Schema.Unknown)
])

export const DatasetRow = Schema.StructWithRest(
  Schema.Struct({
    prompt: Schema.Array(Message),
    extra_info: Schema.StructWithRest(
      Schema.Struct({
        interaction_kwargs: InteractionKwargs,
        /** Seeds the environment's reset and the episode's sampling; derived from the run seed if absent. */
        seed: Schema.optionalKey(Schema.Int),
        /** Samples of one prompt share a group; the row index if absent. */
        group_id: Schema.optionalKey(Schema.String)
      }),
      [Schema.Record(Schema.String, Schema.Unknown)]
    )
  }),
  [Schema.Record(Schema.String, Schema.Unknown)]
)
export type DatasetRow = typeof DatasetRow.Type
