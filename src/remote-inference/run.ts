/**
 * What a run does when its `model` names inference servers: connect to them before anything starts, find
 * the tokenizer the records are built with (the experiment's `tokenizer`, else the directory the servers
 * name), check it against the server's own `/tokenize` where there is one, and record in the resolved
 * experiment what the servers return (`inference.remote.logprobs`) and where synced weights go.
 */
import { Effect, Layer } from "effect"
import { existsSync } from "node:fs"
import * as path from "node:path"
import { errorMessage } from "../errorMessage.ts"
import { ExperimentError, type ResolvedExperiment } from "../Experiment.ts"
import { Inference } from "../Inference.ts"
import { load as loadTokenizer } from "../Tokenizer.ts"
import { splitServers } from "./protocol.ts"
import { connect, service, type LogprobKind, type RemotePool } from "./RemoteInference.ts"

/** The local model directory of a run: its `tokenizer` when set, else its model directory. */
export const localModel = (experiment: Pick<ResolvedExperiment, "model" | "tokenizer">): string =>
  experiment.tokenizer ?? (typeof experiment.model === "string" ? experiment.model : experiment.model[0] ?? "")

/** Which distribution the run's recorded logprobs are of (the in-process actor records the sampled one). */
export const logprobKindOf = (experiment: ResolvedExperiment): LogprobKind => {
  const kind = experiment.inference.remote?.logprobs
  return kind === undefined || kind === "auto" ? "sampled" : kind
}

/**
 * How the trainer scores tokens so that its logprobs and the recorded ones are of the same distribution:
 * the rollouts' temperature, top-k and top-p when the logprobs are of the sampled distribution; the
 * temperature alone over the whole vocabulary for SGLang's; temperature 1 for raw ones (vLLM's default),
 * in which case the trainer's policy is the temperature-1 one (docs/remote-inference.md).
 */
export const trainerScoring = (experiment: ResolvedExperiment): { readonly temperature: number; readonly topK: number; readonly topP: number } => {
  const { temperature, topK, topP } = experiment.sampling
  switch (logprobKindOf(experiment)) {
    case "sampled":
      return { temperature, topK, topP }
    case "temperature":
      return { temperature, topK: 0, topP: 1 }
    case "raw":
      return { temperature: 1, topK: 0, topP: 1 }
  }
}

const probeText = "You are at (2, 3). The key is north; the door, east! 42 + 7 = 49."

/** Compares the local tokenizer with the server's `/tokenize`, when the server has one. */
const checkTokenizer = async (pool: RemotePool, directory: string) => {
  const tokenizer = await loadTokenizer(directory)
  const local = tokenizer.encode(probeText)
  const remote = await pool.tokenize(probeText)
  if (remote !== undefined && remote.ids.join() !== local.join()) {
    throw new Error(
      `the tokenizer at ${directory} is not ${remote.server}'s: "${probeText}" is [${local.join(", ")}] here and [${remote.ids.join(", ")}] there; ` +
        "set the experiment's `tokenizer` to the served model's directory"
    )
  }
}

export interface PreparedRemote {
  /** The experiment with its tokenizer, logprob kind and weights directory filled in, as config.json records it. */
  readonly experiment: ResolvedExperiment
  readonly layer: Layer.Layer<Inference>
}

/** Undefined for a model directory; for servers, the connected pool as a layer (closed with it). */
export const prepare = (experiment: ResolvedExperiment, runDirectory: string): Effect.Effect<PreparedRemote | undefined, ExperimentError> =>
  Effect.gen(function*() {
    const settings = experiment.inference.remote
    if (settings === undefined) return undefined
    const servers = splitServers(experiment.model)
    const weightsDirectory = path.resolve(settings.weightsDirectory ?? path.join(runDirectory, "weights"))
    const pool = yield* Effect.tryPromise({
      try: () => connect({ ...settings, servers, weightsDirectory }),
      catch: (cause) => new ExperimentError({ message: `experiment "${experiment.name}": cannot use the inference servers ${servers.join(", ")}: ${errorMessage(cause)}` })
    })
    const tokenizer = experiment.tokenizer ?? pool.tokenizerHint
    if (tokenizer === undefined || !existsSync(path.join(tokenizer, "tokenizer.json"))) {
      pool.close()
      return yield* new ExperimentError({
        message: `experiment "${experiment.name}": generating on ${servers.join(", ")} needs the model's tokenizer here: set \`tokenizer\` to a local model directory` +
          (tokenizer === undefined ? "" : ` (${path.resolve(tokenizer)} has no tokenizer.json)`)
      })
    }
    yield* Effect.tryPromise({
      try: () => checkTokenizer(pool, tokenizer),
      catch: (cause) => new ExperimentError({ message: `experiment "${experiment.name}": ${errorMessage(cause)}` })
    }).pipe(Effect.onError(() => Effect.sync(() => pool.close())))
    pool.modelDirectory = path.resolve(tokenizer)
    return {
      experiment: {
        ...experiment,
        tokenizer,
        inference: { ...experiment.inference, remote: { ...settings, logprobs: pool.logprobKind, weightsDirectory } }
      },
      layer: Layer.effect(Inference, Effect.acquireRelease(Effect.succeed(pool), (pool) => Effect.sync(() => pool.close())).pipe(Effect.map(service)))
    }
  })
