/**
 * OpenEnv's wire protocol (meta-pytorch/OpenEnv, `core/env_server`) as `episodic serve-env` speaks it and
 * RemoteEnvironment reads it. Both sides decode with these schemas, so a field the server reads is a field
 * the client writes.
 *
 * HTTP: `POST /reset`, `POST /step`, `GET /state`, `GET /health`, `GET /schema`, `GET /metadata`. OpenEnv's
 * own HTTP endpoints are stateless (a fresh environment per request, so only one-step episodes work over
 * them); episodic's add a `session_id`, which `POST /reset` returns and `POST /step`, `GET /state` and
 * `POST /close` take, so a multi-turn episode can run over plain HTTP too.
 * WebSocket `/ws`: one session per connection; `{type: "reset" | "step" | "state" | "close", data}` in,
 * `{type: "observation" | "state" | "error", data}` out, exactly one reply per message (none for close), in
 * order.
 *
 * A step or reset answers as OpenEnv's `serialize_observation` does: `{observation: {...}, reward, done,
 * metadata?}`. The observation of a served episodic environment is `{text, messages?, system_prompt?, role?}`;
 * its action is `{message}`, as OpenEnv's echo and TextArena environments have it.
 */
import { Schema, SchemaIssue } from "effect"
import { DatasetRow } from "../DatasetRow.ts"
import { Message } from "../Message.ts"

const JsonObject = Schema.Record(Schema.String, Schema.Unknown)

/** Extra keys are refused (OpenEnv's actions are `extra="forbid"`); schemas with a rest signature allow them. */
export const parseOptions = { errors: "all", onExcessProperty: "error" } as const

/** The action of a served episodic environment: the assistant's text. */
export const Action = Schema.Struct({
  message: Schema.String,
  metadata: Schema.optionalKey(JsonObject)
})
export type Action = typeof Action.Type

/**
 * Reset parameters: OpenEnv's `seed` and `episode_id`, the dataset row that started the episode (episodic's
 * client sends it), and any other keyword argument, which becomes the row's interaction_kwargs when no row
 * is sent.
 */
export const ResetParameters = Schema.StructWithRest(
  Schema.Struct({
    seed: Schema.optionalKey(Schema.Int),
    episode_id: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(255))),
    row: Schema.optionalKey(DatasetRow)
  }),
  [JsonObject]
)
export type ResetParameters = typeof ResetParameters.Type

/** What a served episodic environment observes. */
export const Observation = Schema.Struct({
  /** The observation text; null when a reset leaves the row's prompt as the whole first turn. */
  text: Schema.NullOr(Schema.String),
  /** Messages that replace the row's prompt (reset only). */
  messages: Schema.optionalKey(Schema.Array(Message)),
  /** A system prompt to put first in the conversation (reset only). */
  system_prompt: Schema.optionalKey(Schema.String),
  /** The observation's role in the chat template (step only). */
  role: Schema.optionalKey(Schema.Literals(["user", "tool"]))
})
export type Observation = typeof Observation.Type

/** A reset's or a step's answer, from episodic's server. */
export const ObservationReply = Schema.Struct({
  observation: Observation,
  reward: Schema.NullOr(Schema.Finite),
  done: Schema.Boolean,
  metadata: Schema.optionalKey(JsonObject)
})
export type ObservationReply = typeof ObservationReply.Type

/**
 * A reset's or a step's answer from any OpenEnv server: its observation fields are its own. `reward` and
 * `done` default as OpenEnv's Observation has them (None, False).
 */
export const AnyObservationReply = Schema.StructWithRest(
  Schema.Struct({
    observation: JsonObject,
    reward: Schema.optionalKey(Schema.NullOr(Schema.Finite)),
    done: Schema.optionalKey(Schema.Boolean),
    metadata: Schema.optionalKey(Schema.NullOr(JsonObject))
  }),
  [JsonObject]
)
export type AnyObservationReply = typeof AnyObservationReply.Type

/** A session's state: OpenEnv's State (`episode_id`, `step_count`) and what the server knows besides. */
export const State = Schema.Struct({
  episode_id: Schema.NullOr(Schema.String),
  step_count: Schema.Int,
  session_id: Schema.NullOr(Schema.String),
  done: Schema.Boolean,
  total_reward: Schema.Finite
})
export type State = typeof State.Type

// --- HTTP bodies -----------------------------------------------------------------------------------------

/** `POST /reset`: the reset parameters, and the session to reset (a new session when absent). */
export const ResetRequest = Schema.StructWithRest(
  Schema.Struct({
    seed: Schema.optionalKey(Schema.Int),
    episode_id: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(255))),
    row: Schema.optionalKey(DatasetRow),
    session_id: Schema.optionalKey(Schema.String)
  }),
  [JsonObject]
)

/** `POST /step`: OpenEnv's StepRequest, with the session it steps and the server's action schema. */
export const stepRequest = <A extends Schema.Top>(action: A) =>
  Schema.StructWithRest(
    Schema.Struct({
      action,
      session_id: Schema.String,
      timeout_s: Schema.optionalKey(Schema.Finite.check(Schema.isGreaterThan(0))),
      request_id: Schema.optionalKey(Schema.String.check(Schema.isMaxLength(255)))
    }),
    [JsonObject]
  )

export const StepRequest = stepRequest(Action)

/** `POST /close`. */
export const CloseRequest = Schema.Struct({ session_id: Schema.String })

// --- WebSocket messages ----------------------------------------------------------------------------------

/** What a client may send over the WebSocket, with the server's action schema. */
export const clientMessage = <A extends Schema.Top>(action: A) =>
  Schema.Union([
    Schema.Struct({ type: Schema.Literal("reset"), data: Schema.optionalKey(ResetParameters) }),
    Schema.Struct({ type: Schema.Literal("step"), data: action }),
    Schema.Struct({ type: Schema.Literal("state") }),
    Schema.Struct({ type: Schema.Literal("close") })
  ])

export const ClientMessage = clientMessage(Action)
export type ClientMessage = typeof ClientMessage.Type

/** OpenEnv's WSErrorCode values, and UNAUTHORIZED for a missing or wrong bearer token (episodic's). */
export const ErrorCode = Schema.Literals([
  "INVALID_JSON",
  "UNKNOWN_TYPE",
  "VALIDATION_ERROR",
  "EXECUTION_ERROR",
  "CAPACITY_REACHED",
  "FACTORY_ERROR",
  "SESSION_ERROR",
  "UNAUTHORIZED"
])
export type ErrorCode = typeof ErrorCode.Type

/** One problem with a request, as FastAPI reports validation errors: where (`loc`) and what (`msg`). */
export interface FieldProblem {
  readonly loc: ReadonlyArray<string | number>
  readonly msg: string
  readonly type: "value_error"
}

export const ServerMessage = Schema.Union([
  Schema.Struct({ type: Schema.Literal("observation"), data: AnyObservationReply }),
  Schema.Struct({ type: Schema.Literal("state"), data: JsonObject }),
  Schema.Struct({
    type: Schema.Literal("error"),
    data: Schema.StructWithRest(Schema.Struct({ message: Schema.String, code: Schema.optionalKey(Schema.String) }), [JsonObject])
  })
])
export type ServerMessage = typeof ServerMessage.Type

const pathKey = (segment: PropertyKey | { readonly key: PropertyKey }): string | number => {
  const key = typeof segment === "object" ? segment.key : segment
  return typeof key === "number" ? key : String(key)
}

/** Every problem in a failed decode, each with its path under `prefix`. */
export const fieldProblems = (issue: SchemaIssue.Issue, prefix: ReadonlyArray<string | number> = []): ReadonlyArray<FieldProblem> =>
  SchemaIssue.makeFormatterStandardSchemaV1()(issue).issues.map((problem) => ({
    loc: [...prefix, ...(problem.path ?? []).map(pathKey)],
    msg: problem.message,
    type: "value_error"
  }))

/** `loc: msg; loc: msg` in one line, for error messages. */
export const describeProblems = (problems: ReadonlyArray<FieldProblem>): string =>
  problems.map((problem) => `${problem.loc.length > 0 ? problem.loc.join(".") : "(root)"}: ${problem.msg}`).join("; ")

/** The JSON Schemas `GET /schema` publishes, generated from the schemas the server validates with. */
export const jsonSchemas = () => {
  const options = { onExcessProperty: parseOptions.onExcessProperty }
  return {
    action: Schema.toJsonSchemaDocument(Action, options).schema,
    observation: Schema.toJsonSchemaDocument(ObservationReply, options).schema,
    state: Schema.toJsonSchemaDocument(State, options).schema
  }
}
