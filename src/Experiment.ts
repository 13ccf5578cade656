/**
 * A scripted experiment: one typed object that says what to run (model, environments or dataset, budgets,
 * sampling, seeds, outputs). Experiment files default-export `defineExperiment({...})`; `episodic run FILE`
 * runs them, and `resolve` checks every field with one clear message naming a bad one.
 */
import { Result, Schema } from "effect"
import type { EpisodeLimits } from "../machines/episode.ts"
import type { EnvironmentDefinition } from "./Environment.ts"
import { decodeOrProblem, EpisodeLimits as EpisodeLimitsSchema, Milliseconds, NonNegativeInt, PositiveInt } from "./EngineSchema.ts"
import { SamplingParams } from "./Generation.ts"
import type { Preset } from "./model/config.ts"
import type { Agent } from "./AgentEpisode.ts"
import type { TextPolicy } from "./TextPolicy.ts"
import type { RewardFunction } from "../actors/trainer/rewards.ts"
import { isServerSpec } from "./remote-inference/protocol.ts"
import { remoteDefaults, RemoteInferenceSettings } from "./remote-inference/settings.ts"

export interface ExperimentConfig {
  /** Names the run directory: `<out>/<name>/`. */
  readonly name: string
  /**
   * A Hugging Face model directory: tokenizer files, and onnx/model.onnx for the inference actor. Or
   * inference servers to generate on, by URL (one, a list, or a comma-separated string): `http://host:port`
   * for vLLM or `episodic serve`, `sglang+http://host:port` for SGLang (docs/remote-inference.md).
   */
  readonly model: string | ReadonlyArray<string>
  /**
   * With servers as `model`: the local model directory whose tokenizer builds the records (and whose weights
   * a training run starts from). Default: the directory the servers name, when it exists here.
   */
  readonly tokenizer?: string
  /**
   * A hand-written policy to run instead of the model (a scripted solver for demonstrations, a baseline).
   * Leave it out to generate with the model.
   */
  readonly policy?: TextPolicy
  /**
   * Your own agent plays each episode instead of the environment (docs/agents.md): it is called with the row
   * and an OpenAI base URL of its own, backed by the run's policy, and returns the reward. The rows still come
   * from `environment` (its seeds) or `dataset`.
   */
  readonly agent?: Agent
  /** Seeded rows from a registered environment ... */
  readonly environment?: {
    readonly name: string
    /** Rows: the run plays `episodes x samplesPerRow` episodes (`--episodes` counts those). */
    readonly episodes: number
    readonly config?: Record<string, unknown>
  }
  /** ... or rows from a verl-format dataset file (.jsonl or .parquet). */
  readonly dataset?: string
  /** Per-environment config for dataset rows, by environment name. */
  readonly environmentConfig?: Readonly<Record<string, Record<string, unknown>>>
  /** Environments to register beside the built-in ones. */
  readonly environments?: ReadonlyArray<EnvironmentDefinition<any>>
  /** Episodes per row (GRPO's group size). */
  readonly samplesPerRow?: number
  readonly concurrency?: number
  /**
   * Worker threads that play the episodes, when one event loop is not enough for the engine's own work
   * (docs/benchmarks.md, "More cores"); 0 (the default) plays them on the run's thread. Each worker loads the
   * tokenizer and this experiment file's `environments` itself; generation and training stay on the run's
   * thread, so records and learning are the same. Not with `agent`, nor with `--inspect`.
   */
  readonly workers?: number
  readonly limits?: Partial<EpisodeLimits>
  /** Tokens per turn are `limits.maxNewTokens`. */
  readonly sampling?: Partial<Omit<SamplingParams, "maxNewTokens">>
  /** Time limit of one environment call. */
  readonly envCallTimeoutMs?: number
  readonly seed?: number
  /** Parent of the run directory. */
  readonly out?: string
  /** The shared inference actor's settings (see actors/inference); `remote` for inference servers. */
  readonly inference?: Partial<Omit<InferenceSettings, "remote">> & { readonly remote?: Partial<RemoteInferenceSettings> }
  /** Make the model with `episodic model init` when its directory has none yet (the default experiment does). */
  readonly modelInit?: { readonly preset?: Preset; readonly seed?: number; readonly toolCalls?: boolean }
  /**
   * After the run, play held-out seeds of the environment with greedy decoding (or the run's sampling):
   * eval/trajectories.jsonl, and eval_success / eval_mean_reward in summary.json. `splits` plays `episodes` of
   * each named split instead, its config laid over the environment's (e.g. grid-quest's `layouts: "unseen"`):
   * eval/<split>/trajectories.jsonl, each split's figures in `evaluation.splits`, and eval_success the first's.
   */
  readonly evaluation?: {
    readonly episodes: number
    readonly seed?: number
    readonly greedy?: boolean
    readonly splits?: Readonly<Record<string, Record<string, unknown>>>
  }
  /** Extra outputs in the run directory. */
  readonly outputs?: {
    /** trajectories.parquet besides trajectories.jsonl, with the same (verl's) column names. */
    readonly parquet?: boolean
  }
  /**
   * Train the model on the run's episodes (see docs/training.md). Without it a run only generates. The rows
   * are consumed `promptsPerUpdate` at a time, each giving `samplesPerRow` episodes (a GRPO group).
   */
  readonly trainer?: TrainerSettingsInput & {
    /** Your own reward of a trajectory, instead of the reward manager's. */
    readonly reward?: RewardFunction
    /** The scripted policy that plays the warm start's demonstrations. */
    readonly warmStart?: { readonly policy?: TextPolicy }
  }
  /** The experiment file the run came from (the CLI sets it), so the run directory can run it again. */
  readonly source?: string
}

type DeepPartial<T> = { readonly [K in keyof T]?: NonNullable<T[K]> extends object ? DeepPartial<NonNullable<T[K]>> : T[K] }
export type TrainerSettingsInput = DeepPartial<TrainerSettings>

export const defineExperiment = (config: ExperimentConfig): ExperimentConfig => config


/** What a run needs, every default filled in. Functions (policy, environments) are carried beside it. */
export const ResolvedExperiment = Schema.Struct({
  name: Schema.String.check(Schema.isPattern(/^[\w.-]+$/, { message: "letters, digits, '.', '_' or '-' only" })),
  model: Schema.Union([Schema.String, Schema.Array(Schema.String)]),
  tokenizer: Schema.optional(Schema.String),
  environment: Schema.optional(Schema.Struct({
    name: Schema.String,
    episodes: PositiveInt,
    config: Schema.optional(Schema.Record(Schema.String, Schema.Unknown))
  })),
  dataset: Schema.optional(Schema.String),
  environmentConfig: Schema.Record(Schema.String, Schema.Record(Schema.String, Schema.Unknown)),
  samplesPerRow: PositiveInt,
  concurrency: PositiveInt,
  workers: NonNegativeInt,
  limits: EpisodeLimitsSchema,
  sampling: SamplingParams,
  envCallTimeoutMs: Milliseconds,
  seed: Schema.Int,
  out: Schema.String,
  inference: Schema.Struct({
    maxBatchSize: PositiveInt,
    maxPrefillTokens: PositiveInt,
    /** Turns that continue a cache with at most this many new tokens run them in decode steps, no prefill (docs/inference.md); 0, the default, turns it off. */
    feedMaxTokens: Schema.optional(NonNegativeInt),
    cacheBudgetMiB: PositiveInt,
    provider: Schema.Literals(["cpu", "cuda"]),
    threads: Schema.optional(PositiveInt),
    /** Which published graph to run, as transformers.js names them (`onnx/model_q4.onnx` for "q4"); see docs/models.md. */
    dtype: Schema.optional(Schema.Literals(["fp32", "fp16", "int8", "uint8", "q8", "q4", "q4f16", "q2", "q2f16", "bnb4"])),
    remote: Schema.optional(RemoteInferenceSettings)
  }),
  modelInit: Schema.optional(Schema.Struct({
    preset: Schema.Literals(["micro", "tiny", "small"]),
    seed: Schema.Int,
    /** The tokenizer also learns agents' tool calls (`initModel`'s `toolCalls`, docs/agents.md). */
    toolCalls: Schema.optional(Schema.Boolean)
  })),
  evaluation: Schema.optional(Schema.Struct({
    episodes: PositiveInt,
    seed: Schema.Int,
    greedy: Schema.Boolean,
    splits: Schema.optional(Schema.Record(Schema.String, Schema.Record(Schema.String, Schema.Unknown)))
  })),
  outputs: Schema.Struct({ parquet: Schema.Boolean }),
  trainer: Schema.optional(Schema.Struct({
    promptsPerUpdate: PositiveInt,
    /** How many policy versions generation may run ahead of the trainer (0: strictly on-policy). */
    maxPolicyLag: NonNegativeInt,
    /** What to do with trajectories older than that: leave them out, or train on them with the clipped ratio. */
    staleTrajectories: Schema.Literals(["drop", "correct"]),
    /** Stop updating after this long (the evaluation still runs). */
    maxMinutes: Schema.Finite.check(Schema.isGreaterThan(0)),
    checkpointEvery: NonNegativeInt,
    resume: Schema.Boolean,
    backend: Schema.Literals(["auto", "tensorflow-gpu", "tensorflow", "wasm", "cpu"]),
    /** "worker": the trainer computes on its own thread, beside generation. "main": on the run's thread. */
    thread: Schema.Literals(["worker", "main"]),
    microBatchTokens: PositiveInt,
    algorithm: Schema.Struct({
      estimator: Schema.Literals(["grpo", "ppo"]),
      clipLow: Schema.Finite,
      clipHigh: Schema.Finite,
      aggregation: Schema.Literals(["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"]),
      normalizeStd: Schema.Boolean,
      klCoef: Schema.Finite,
      klEstimator: Schema.Literals(["k1", "k3"]),
      entropyCoef: Schema.Finite,
      epochs: PositiveInt,
      minibatches: PositiveInt,
      gamma: Schema.Finite,
      lambda: Schema.Finite,
      valueCoef: Schema.Finite,
      valueClip: Schema.Finite,
      rewardPlacement: Schema.Literals(["last-token", "per-turn"]),
      rewards: Schema.Struct({
        successBonus: Schema.Finite,
        invalidPenalty: Schema.Finite,
        efficiencyBonus: Schema.Finite,
        maxTurns: Schema.optional(PositiveInt)
      })
    }),
    optimizer: Schema.Struct({
      learningRate: Schema.Finite.check(Schema.isGreaterThan(0)),
      beta1: Schema.Finite,
      beta2: Schema.Finite,
      weightDecay: Schema.Finite,
      maxGradNorm: Schema.Finite,
      schedule: Schema.Struct({
        kind: Schema.Literals(["constant", "linear", "cosine"]),
        warmupSteps: NonNegativeInt,
        totalSteps: Schema.optional(PositiveInt),
        minRatio: Schema.Finite
      })
    }),
    /** SFT on demonstrations before RL: `episodes` played by the warm-start policy, `steps` optimizer steps. */
    warmStart: Schema.optional(Schema.Struct({
      episodes: PositiveInt,
      steps: PositiveInt,
      batchSize: PositiveInt,
      learningRate: Schema.Finite.check(Schema.isGreaterThan(0))
    }))
  })),
  source: Schema.optional(Schema.String)
})
export type TrainerSettings = NonNullable<ResolvedExperiment["trainer"]>
export type InferenceSettings = ResolvedExperiment["inference"]
export type ResolvedExperiment = typeof ResolvedExperiment.Type

export class ExperimentError extends Schema.TaggedError<ExperimentError>()("ExperimentError", {
  message: Schema.String
}) {}

const defaults = {
  samplesPerRow: 1,
  concurrency: 32,
  workers: 0,
  limits: { maxTurns: 12, maxResponseTokens: 1024, maxNewTokens: 32, timeoutMs: 300_000 },
  envCallTimeoutMs: 30_000,
  seed: 0,
  out: "runs",
  inference: { maxBatchSize: 64, maxPrefillTokens: 4096, cacheBudgetMiB: 1024, provider: "cpu" },
  trainer: {
    promptsPerUpdate: 8,
    maxPolicyLag: 0,
    staleTrajectories: "drop",
    maxMinutes: 60,
    checkpointEvery: 10,
    resume: false,
    backend: "auto",
    thread: "worker",
    microBatchTokens: 4096,
    algorithm: {
      estimator: "grpo",
      clipLow: 0.2,
      clipHigh: 0.28,
      aggregation: "token-mean",
      normalizeStd: true,
      klCoef: 0,
      klEstimator: "k3",
      entropyCoef: 0,
      epochs: 1,
      minibatches: 1,
      gamma: 0.99,
      lambda: 0.95,
      valueCoef: 0.5,
      valueClip: 0.2,
      rewardPlacement: "per-turn",
      rewards: { successBonus: 0, invalidPenalty: 0, efficiencyBonus: 0 }
    },
    optimizer: { learningRate: 1e-3, beta1: 0.9, beta2: 0.999, weightDecay: 0, maxGradNorm: 1, schedule: { kind: "constant", warmupSteps: 0, minRatio: 0 } },
    warmStart: { episodes: 128, steps: 40, batchSize: 32, learningRate: 3e-3 }
  }
} as const

/** The warm start's settings with defaults; its policy (a function) is carried beside the resolved experiment. */
const warmStartNumbers = ({ policy: _policy, ...numbers }: NonNullable<NonNullable<ExperimentConfig["trainer"]>["warmStart"]>) => ({
  ...defaults.trainer.warmStart,
  ...numbers
})

/** The trainer's settings, every default filled in; the warm start only when the experiment asks for one. */
const resolveTrainer = (input: ExperimentConfig["trainer"]) => {
  if (input === undefined) return undefined
  const d = defaults.trainer
  const { reward: _reward, warmStart, algorithm, optimizer, ...rest } = input
  return {
    ...d,
    ...rest,
    algorithm: { ...d.algorithm, ...algorithm, rewards: { ...d.algorithm.rewards, ...algorithm?.rewards } },
    optimizer: { ...d.optimizer, ...optimizer, schedule: { ...d.optimizer.schedule, ...optimizer?.schedule } },
    warmStart: warmStart === undefined ? undefined : warmStartNumbers(warmStart)
  }
}

/** The fields that carry functions beside the resolved experiment, by the path of their object. */
const carried = { "": ["agent", "policy", "environments"], trainer: ["reward"], "trainer.warmStart": ["policy"] }
const fields: ReadonlyArray<string> = [...Object.keys(ResolvedExperiment.fields), ...carried[""]]

/**
 * Fills in defaults and checks every field; the error names the first bad one. A field episodic does not
 * know (a typo, a field of a newer version) is refused rather than ignored.
 */
export const resolve = (config: ExperimentConfig): ResolvedExperiment => {
  const unknown = Object.keys(config).find((key) => !fields.includes(key))
  if (unknown !== undefined) {
    throw new ExperimentError({ message: `experiment "${String(config.name)}": unknown field \`${unknown}\`; the fields are ${fields.join(", ")}` })
  }
  if ((config.environment === undefined) === (config.dataset === undefined)) {
    throw new ExperimentError({ message: "experiment: give exactly one of `environment` (seeded rows) or `dataset` (a file)" })
  }
  const limits = { ...defaults.limits, ...config.limits }
  const candidate = {
    name: config.name,
    model: config.model,
    tokenizer: config.tokenizer,
    environment: config.environment,
    dataset: config.dataset,
    environmentConfig: {
      ...config.environmentConfig,
      ...(config.environment?.config ? { [config.environment.name]: config.environment.config } : {})
    },
    samplesPerRow: config.samplesPerRow ?? defaults.samplesPerRow,
    concurrency: config.concurrency ?? defaults.concurrency,
    workers: config.workers ?? defaults.workers,
    limits,
    sampling: { ...SamplingParams.defaults, ...config.sampling, maxNewTokens: limits.maxNewTokens },
    envCallTimeoutMs: config.envCallTimeoutMs ?? defaults.envCallTimeoutMs,
    seed: config.seed ?? defaults.seed,
    out: config.out ?? defaults.out,
    inference: {
      ...defaults.inference,
      ...config.inference,
      remote: isServerSpec(config.model) ? { ...remoteDefaults, ...config.inference?.remote } : undefined
    },
    modelInit: config.modelInit === undefined ? undefined : { preset: "tiny", seed: 0, ...config.modelInit },
    // Held-out by default: the seed the training rows cannot have (theirs is `seed`).
    evaluation: config.evaluation === undefined
      ? undefined
      : { seed: (config.seed ?? defaults.seed) + 1_000_003, greedy: true, ...config.evaluation },
    outputs: { parquet: false, ...config.outputs },
    trainer: resolveTrainer(config.trainer),
    source: config.source
  }
  if (config.evaluation !== undefined && config.environment === undefined) {
    throw new ExperimentError({ message: "experiment: `evaluation` plays held-out seeds of `environment`; this experiment reads a dataset" })
  }
  if (config.trainer?.warmStart !== undefined && config.trainer.warmStart.policy === undefined) {
    throw new ExperimentError({ message: "experiment: trainer.warmStart needs a `policy` that plays the demonstrations" })
  }
  if ((config.workers ?? 0) > 0 && config.agent !== undefined) {
    throw new ExperimentError({ message: "experiment: `workers` cannot play episodes with an `agent` (a function on the run's thread); leave one out" })
  }
  if (config.trainer !== undefined && config.policy !== undefined) {
    throw new ExperimentError({ message: "experiment: `trainer` trains the model, so the experiment cannot also set a hand-written `policy`" })
  }
  const resolved = decodeOrProblem(ResolvedExperiment, candidate, { closed: true, carried })
  if (Result.isFailure(resolved)) {
    throw new ExperimentError({ message: `experiment "${String(config.name)}": ${resolved.failure}` })
  }
  return resolved.success
}
