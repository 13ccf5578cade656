/**
 * The wire shapes of the inference servers episodic drives token-in/token-out, and the checks on their
 * replies. Nothing here is re-tokenized: a request carries the turn's whole context as token ids and the
 * reply's token ids go into the record as they are.
 *
 * - vLLM's token endpoint `POST /inference/v1/generate {request_id, token_ids, sampling_params}` (newest),
 *   else `POST /v1/completions` with the prompt as token ids and `return_token_ids` (vLLM >= 0.10.2);
 * - SGLang's native `POST /generate {rid, input_ids, sampling_params, return_logprob}`;
 * - `episodic serve` speaks vLLM's shapes, and adds the policy version that served each reply.
 *
 * Every sampling field is sent explicitly: both engines fill gaps from the model's generation config, and
 * vLLM's `max_tokens` defaults to 16, SGLang's `max_new_tokens` to 128.
 */
import type { GenerationFinishReason, GenerationRequest } from "../Generation.ts"

/** Which API a server speaks: vLLM's (and episodic serve's), or SGLang's native one. */
export type ServerKind = "vllm" | "sglang"

/**
 * Which distribution a server's logprobs are of:
 * - `sampled`: the one the token was drawn from (softmax(logits / T), truncated to top-k / top-p and
 *   renormalised), as the in-process actor and `episodic serve` record, and vLLM with
 *   `--logprobs-mode processed_logprobs`;
 * - `temperature`: softmax(logits / T) over the whole vocabulary (SGLang's default);
 * - `raw`: the model's own softmax(logits), whatever the temperature (vLLM's default).
 */
export type LogprobKind = "sampled" | "temperature" | "raw"

/** The logprob kind a server of this kind returns unless it is told otherwise. */
export const defaultLogprobKind = (kind: ServerKind): LogprobKind => (kind === "sglang" ? "temperature" : "raw")

/** Parses `http://host:port` (vLLM-compatible), `vllm+http://...` and `sglang+http://...`. */
export const parseServer = (spec: string): { readonly url: string; readonly kind: ServerKind } => {
  const match = /^(?:(vllm|sglang)\+)?(https?:\/\/.+)$/.exec(spec.trim())
  if (match === null) throw new Error(`"${spec}" is not a server URL (http://host:port, vllm+http://host:port or sglang+http://host:port)`)
  const url = new URL(match[2]!)
  return { url: url.href.replace(/\/+$/, ""), kind: (match[1] as ServerKind | undefined) ?? "vllm" }
}

/** Whether an experiment's `model` names servers rather than a model directory. */
export const isServerSpec = (model: string | ReadonlyArray<string>): boolean =>
  (typeof model === "string" ? splitServers(model) : model).some((spec) => /^(?:(?:vllm|sglang)\+)?https?:\/\//.test(spec.trim()))

/** `model` as a list of server specs: a list, or one string of them separated by commas or spaces. */
export const splitServers = (model: string | ReadonlyArray<string>): Array<string> =>
  (typeof model === "string" ? model.split(/[,\s]+/) : [...model]).map((spec) => spec.trim()).filter((spec) => spec !== "")

/** What every reply becomes once checked. */
export interface ServerReply {
  readonly tokenIds: Array<number>
  readonly logprobs: Array<number>
  readonly finishReason: GenerationFinishReason
  /** The policy version the server says served the reply (SGLang's weight_version, episodic serve's policy_version). */
  readonly version: number | undefined
}

/** A reply that breaks the protocol: its message names the server and the field. */
export class ReplyError extends Error {
  override readonly name = "ReplyError"
}

// --- requests --------------------------------------------------------------------------------------------

/** vLLM's sampling fields, every one of them set (vLLM: top_k -1 turns top-k off). */
const vllmSampling = (request: GenerationRequest) => ({
  max_tokens: request.sampling.maxNewTokens,
  temperature: request.sampling.temperature,
  top_p: request.sampling.topP,
  top_k: request.sampling.topK > 0 ? request.sampling.topK : -1,
  min_p: 0,
  seed: request.seed,
  n: 1,
  stop: [...request.sampling.stop],
  stop_token_ids: [...request.stopTokenIds],
  ignore_eos: false,
  presence_penalty: 0,
  frequency_penalty: 0,
  repetition_penalty: 1,
  logprobs: 0,
  skip_special_tokens: false,
  include_stop_str_in_output: true
})

export const vllmGenerateBody = (request: GenerationRequest, requestId: string, model: string | undefined) => ({
  request_id: requestId,
  token_ids: [...request.contextIds],
  sampling_params: vllmSampling(request),
  ...(model === undefined ? {} : { model }),
  stream: false
})

export const vllmCompletionsBody = (request: GenerationRequest, requestId: string, model: string | undefined) => {
  const { logprobs: _logprobs, ...sampling } = vllmSampling(request)
  return {
    ...(model === undefined ? {} : { model }),
    prompt: [...request.contextIds],
    ...sampling,
    logprobs: 0,
    echo: false,
    stream: false,
    return_token_ids: true,
    request_id: requestId
  }
}

export const sglangGenerateBody = (request: GenerationRequest, requestId: string) => ({
  rid: requestId,
  input_ids: [...request.contextIds],
  sampling_params: {
    max_new_tokens: request.sampling.maxNewTokens,
    temperature: request.sampling.temperature,
    top_p: request.sampling.topP,
    top_k: request.sampling.topK > 0 ? request.sampling.topK : -1,
    min_p: 0,
    n: 1,
    stop: [...request.sampling.stop],
    stop_token_ids: [...request.stopTokenIds],
    ignore_eos: false,
    skip_special_tokens: false,
    no_stop_trim: true,
    presence_penalty: 0,
    frequency_penalty: 0,
    repetition_penalty: 1,
    sampling_seed: request.seed
  },
  return_logprob: true,
  logprob_start_len: -1,
  top_logprobs_num: 0,
  stream: false
})

// --- replies ---------------------------------------------------------------------------------------------

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === "object" && value !== null && !Array.isArray(value)

const field = (where: string, value: unknown, path: string): unknown => {
  let at: unknown = value
  for (const key of path.split(".")) {
    if (!isRecord(at) && !Array.isArray(at)) throw new ReplyError(`${where}: the reply has no \`${path}\``)
    at = (at as Record<string, unknown>)[/^\d+$/.test(key) && Array.isArray(at) ? Number(key) as never : key]
  }
  if (at === undefined) throw new ReplyError(`${where}: the reply has no \`${path}\``)
  return at
}

const intList = (where: string, value: unknown, path: string): Array<number> => {
  const list = field(where, value, path)
  if (!Array.isArray(list) || !list.every((id) => Number.isInteger(id) && id >= 0)) {
    throw new ReplyError(`${where}: \`${path}\` is not a list of token ids`)
  }
  return list as Array<number>
}

const logprobList = (where: string, list: ReadonlyArray<unknown>, path: string): Array<number> =>
  list.map((value, i) => {
    if (typeof value !== "number" || !Number.isFinite(value) || value > 1e-6) {
      throw new ReplyError(`${where}: \`${path}[${i}]\` is ${JSON.stringify(value)}, not a finite log-probability`)
    }
    return Math.min(0, value)
  })

const checkLengths = (where: string, tokenIds: ReadonlyArray<number>, logprobs: ReadonlyArray<number>, idsPath: string, logprobsPath: string) => {
  if (tokenIds.length !== logprobs.length) {
    throw new ReplyError(`${where}: \`${idsPath}\` has ${tokenIds.length} token ids but \`${logprobsPath}\` has ${logprobs.length} logprobs`)
  }
}

/**
 * An engine's finish reason in the record's terms. `stop` is `eos` when the last token is one of the turn's
 * stop tokens, and a stop string otherwise; an unknown reason is refused.
 */
const finishReasonOf = (where: string, reason: unknown, path: string, tokenIds: ReadonlyArray<number>, request: GenerationRequest): GenerationFinishReason => {
  switch (reason) {
    case "stop":
      return tokenIds.length > 0 && request.stopTokenIds.includes(tokenIds.at(-1)!) ? "eos" : "stop"
    case "length":
      return "length"
    case "abort":
      return "aborted"
    default:
      throw new ReplyError(`${where}: \`${path}\` is ${JSON.stringify(reason)}, not one of stop, length, abort`)
  }
}

const versionOf = (value: unknown): number | undefined => {
  const number = typeof value === "string" && value.trim() !== "" ? Number(value) : value
  return typeof number === "number" && Number.isInteger(number) ? number : undefined
}

/**
 * A vLLM reply's first choice: `token_ids`, the list at `logprobsPath` (each entry's logprob read by
 * `logprobOf`, named `entryName` in errors), `finish_reason`.
 */
const readVllmChoice = (
  where: string,
  body: unknown,
  request: GenerationRequest,
  logprobsPath: string,
  entryName: string,
  logprobOf: (entry: unknown) => unknown
): ServerReply => {
  const tokenIds = intList(where, body, "choices.0.token_ids")
  const named = `choices[0].${logprobsPath}`
  const list = field(where, body, `choices.0.${logprobsPath}`)
  if (!Array.isArray(list)) throw new ReplyError(`${where}: \`${named}\` is not a list`)
  const logprobs = logprobList(where, list.map(logprobOf), entryName)
  checkLengths(where, tokenIds, logprobs, "choices[0].token_ids", named)
  return {
    tokenIds,
    logprobs,
    finishReason: finishReasonOf(where, field(where, body, "choices.0.finish_reason"), "choices[0].finish_reason", tokenIds, request),
    version: versionOf((body as Record<string, unknown>)["policy_version"])
  }
}

/** `POST /inference/v1/generate`: `choices[0].token_ids`, `choices[0].logprobs.content[].logprob`. */
export const readVllmGenerate = (where: string, body: unknown, request: GenerationRequest): ServerReply =>
  readVllmChoice(where, body, request, "logprobs.content", "choices[0].logprobs.content[].logprob", (entry) => (isRecord(entry) ? entry["logprob"] : undefined))

/** `POST /v1/completions` with `return_token_ids`: `choices[0].token_ids`, `choices[0].logprobs.token_logprobs`. */
export const readVllmCompletions = (where: string, body: unknown, request: GenerationRequest): ServerReply =>
  readVllmChoice(where, body, request, "logprobs.token_logprobs", "choices[0].logprobs.token_logprobs", (entry) => entry)

/** SGLang's `POST /generate`: `output_ids`, `meta_info.output_token_logprobs[i] = [logprob, id, text]`. */
export const readSglangGenerate = (where: string, body: unknown, request: GenerationRequest): ServerReply => {
  const tokenIds = intList(where, body, "output_ids")
  const entries = field(where, body, "meta_info.output_token_logprobs")
  if (!Array.isArray(entries)) throw new ReplyError(`${where}: \`meta_info.output_token_logprobs\` is not a list`)
  entries.forEach((entry, i) => {
    if (Array.isArray(entry) && i < tokenIds.length && entry[1] !== tokenIds[i]) {
      throw new ReplyError(`${where}: \`meta_info.output_token_logprobs[${i}]\` is for token ${String(entry[1])}, but \`output_ids[${i}]\` is ${tokenIds[i]}`)
    }
  })
  const logprobs = logprobList(where, entries.map((entry) => (Array.isArray(entry) ? entry[0] : undefined)), "meta_info.output_token_logprobs[][0]")
  checkLengths(where, tokenIds, logprobs, "output_ids", "meta_info.output_token_logprobs")
  const reason = field(where, body, "meta_info.finish_reason")
  return {
    tokenIds,
    logprobs,
    finishReason: finishReasonOf(where, isRecord(reason) ? reason["type"] : reason, "meta_info.finish_reason.type", tokenIds, request),
    version: versionOf((field(where, body, "meta_info") as Record<string, unknown>)["weight_version"])
  }
}
