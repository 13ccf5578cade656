/**
 * The trainer's core: the tfjs twin of the policy, its optimizer and one algorithm. It takes finished
 * trajectories and returns what one update did; the weights it produces go back to the inference actor.
 *
 *   const trainer = await Trainer.create({ model: "models/tiny", algorithm: { estimator: "grpo" } })
 *   const metrics = trainer.update(trajectories)        // advantages, loss over mask-1 tokens, AdamW step
 *   await actor.updateWeights(trainer.policyWeights(), trainer.version)
 *
 * Choices made here, and why:
 * - pi_old is the rollout's own recorded logprob (verl's "use rollout logprobs"): the twin reproduces it to
 *   within 1e-3 when the weights are the same (the `logprob_diff` metrics check it at every update), and for
 *   trajectories generated a few versions back the clipped ratio is exactly the off-policy correction.
 * - A trajectory that ended in an error (environment, inference, interrupted) is not trained on: its reward
 *   says nothing about the policy. It is counted.
 * - Micro-batches (sorted by length, at most `microBatchTokens` padded tokens) bound memory; their gradients
 *   add up to the minibatch's exactly (see `aggregationWeights`).
 */
import * as tf from "@tensorflow/tfjs"
import { readConfig, type LlamaConfig } from "../../src/model/config.ts"
import * as Safetensors from "../../src/model/safetensors.ts"
import { mulberry32 } from "../../src/Seed.ts"
import type { Trajectory } from "../../src/Trajectory.ts"
import { gae, groupAdvantages, tokenRewards, whiten, type RewardPlacement } from "./advantages.ts"
import { selectBackend, type TrainerBackend } from "./backend.ts"
import { aggregationWeights, clippedSurrogate, clippedTokens, clippedValueError, k2, klPenalty, type KlEstimator, type LossAggregation } from "./losses.ts"
import { AdamW, type AdamWConfig, type AdamWState, type LearningRateSchedule } from "./optimizer.ts"
import { PolicyModel, type ScoreBatch, type Truncation } from "./PolicyModel.ts"
import { rewardManager, type RewardConfig, type RewardFunction } from "./rewards.ts"

export interface AlgorithmConfig {
  /** "grpo": group-normalised outcome advantages, no critic. "ppo": a value head and GAE. */
  readonly estimator?: "grpo" | "ppo"
  /** The ratio's clip range: [1 - clipLow, 1 + clipHigh]. Defaults 0.2 and 0.28 (DAPO's clip-higher). */
  readonly clipLow?: number
  readonly clipHigh?: number
  readonly aggregation?: LossAggregation
  /** GRPO divides by the group's std (true) or only centres (Dr. GRPO, false). */
  readonly normalizeStd?: boolean
  /** Weight of the KL to the starting policy (0: no reference model is kept). */
  readonly klCoef?: number
  readonly klEstimator?: KlEstimator
  /** Weight of the entropy bonus. */
  readonly entropyCoef?: number
  /** Passes over each batch, and optimizer steps per pass. */
  readonly epochs?: number
  readonly minibatches?: number
  /** PPO: discount and GAE lambda (the seed's 0.99 and 0.95), value-loss weight and clip. */
  readonly gamma?: number
  readonly lambda?: number
  readonly valueCoef?: number
  readonly valueClip?: number
  /** PPO: where a trajectory's rewards land among its tokens. */
  readonly rewardPlacement?: RewardPlacement
  /** The reward manager's bonuses, or your own function of the trajectory. */
  readonly rewards?: RewardConfig | RewardFunction
}

export interface TrainerOptions {
  /** The model directory the inference actor serves (model.safetensors and config.json). */
  readonly model: string
  readonly algorithm?: AlgorithmConfig
  readonly optimizer?: Partial<AdamWConfig> & { readonly schedule?: LearningRateSchedule }
  /** The sampling temperature of the rollouts: logprobs are of softmax(logits / T), as the sampler's were. */
  readonly temperature?: number
  /** The rollouts' top-k and top-p (0 and 1: off): tokens are scored over the set the sampler kept, renormalised. */
  readonly topK?: number
  readonly topP?: number
  /** Padded tokens per forward/backward pass at most. */
  readonly microBatchTokens?: number
  readonly backend?: TrainerBackend
  /** Seeds the minibatch shuffle. */
  readonly seed?: number
}

/** What one update did: the numbers verl reports, under its names where it has one. */
export interface UpdateMetrics {
  readonly version: number
  readonly trajectories: number
  /** Trajectories left out: ended in an error, or had no generated token. */
  readonly skipped: number
  readonly tokens: number
  readonly score_mean: number
  readonly policy_loss: number
  readonly value_loss?: number
  readonly entropy: number
  readonly kl?: number
  readonly clip_fraction: number
  readonly approx_kl: number
  readonly grad_norm: number
  readonly learning_rate: number
  /**
   * |trainer logprob - rollout logprob| before the step (verl's rollout_probs_diff), over the generated
   * tokens whose recorded version is the trainer's own: their weights are the trainer's, so any difference
   * is a bug, not policy lag. `logprob_diff_over_1e3` counts those above 1e-3 of `logprob_diff_tokens`;
   * `other_version_tokens` were generated by other weights and are not compared.
   */
  readonly logprob_diff_max: number
  readonly logprob_diff_mean: number
  readonly logprob_diff_tokens: number
  readonly logprob_diff_over_1e3: number
  readonly other_version_tokens: number
  /** Where the largest difference was: the trajectory's id and the token's position in prompt + response. */
  readonly logprob_diff_at?: string
  readonly update_seconds: number
  readonly tokens_per_second: number
}

export interface SftMetrics {
  readonly steps: number
  readonly loss: number
  readonly tokens: number
  readonly seconds: number
}

/** One chain of a trajectory laid out for the twin: the full sequence and where its generated tokens sit. */
interface Sample {
  /** The trajectory's index in the batch: every chain of one trajectory shares it, and its score. */
  readonly index: number
  /** The chain: the trajectory itself, or one of its `sequences` with the trajectory's other fields. */
  readonly chain: Trajectory
  readonly sequence: ReadonlyArray<number>
  readonly scored: ReadonlyArray<number>
  readonly oldLogprobs: ReadonlyArray<number>
  /** The policy version that generated each scored token. */
  readonly versions: ReadonlyArray<number>
  advantages: Float64Array
  returns?: Float64Array
  oldValues?: Float64Array
  refLogprobs?: Float64Array
}

/** Whether a trajectory is trained on: it ended without an error and the policy generated in it. */
export const usable = (t: Trajectory) =>
  t.error === null && t.finishReason !== "interrupted" && t.responseMask.some((m) => m === 1)

/** The version of each response token (-1 where no assistant turn covers it). */
const tokenVersions = (t: Trajectory): Int32Array => {
  const versions = new Int32Array(t.responseIds.length).fill(-1)
  for (const turn of t.turns) {
    if (turn.role !== "assistant" || turn.policyVersion === null) continue
    for (let i = turn.tokenStart; i < turn.tokenEnd; i++) versions[i] = turn.policyVersions?.[i - turn.tokenStart] ?? turn.policyVersion
  }
  return versions
}

/**
 * A trajectory's chains as trajectories of their own: the main sequence, then each of `sequences` (an agent
 * that rewrote its history, docs/agents.md). Every chain's generated tokens are trained on, with the
 * episode's score and advantage.
 */
const chainsOf = (t: Trajectory): Array<Trajectory> => [t, ...(t.sequences ?? []).map((sequence) => ({ ...t, ...sequence }))]

/** A batch's samples: one per chain with a generated token, of every usable trajectory. */
const samplesOf = (trajectories: ReadonlyArray<Trajectory>): Array<Sample> =>
  trajectories.flatMap((t, i) => (usable(t) ? chainsOf(t).filter((c) => c.responseMask.some((m) => m === 1)).map((c) => sampleOf(c, i)) : []))

/** Ids in numeric order where they hold numbers ("demo-10-0" after "demo-9-0"), so the order reads naturally. */
const compareIds = (a: string, b: string): number => a.localeCompare(b, "en", { numeric: true })

/** A Fisher-Yates shuffle of a copy. */
const shuffled = <A>(items: ReadonlyArray<A>, random: () => number): Array<A> => {
  const out = [...items]
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[out[i], out[j]] = [out[j]!, out[i]!]
  }
  return out
}

/** The sampled trajectories' indices, each once. */
const trajectoryIndices = (samples: ReadonlyArray<Sample>): Array<number> => [...new Set(samples.map((s) => s.index))]

/** The mean score over the sampled trajectories, each once however many chains it has. */
const meanScore = (samples: ReadonlyArray<Sample>, scores: ReadonlyArray<number>): number => {
  const scoreOf = new Map(samples.map((s, i) => [s.index, scores[i]!]))
  return scoreOf.size > 0 ? [...scoreOf.values()].reduce((x, y) => x + y, 0) / scoreOf.size : 0
}

const sampleOf = (t: Trajectory, index: number): Sample => {
  const scored: Array<number> = []
  const oldLogprobs: Array<number> = []
  const versions: Array<number> = []
  const versionOf = tokenVersions(t)
  t.responseMask.forEach((m, i) => {
    if (m === 1) {
      scored.push(t.promptIds.length + i)
      oldLogprobs.push(t.responseLogprobs[i]!)
      versions.push(versionOf[i]!)
    }
  })
  return { index, chain: t, sequence: [...t.promptIds, ...t.responseIds], scored, oldLogprobs, versions, advantages: new Float64Array(scored.length) }
}

/** Adds a micro-batch's gradients to the sum so far (freeing both addends). */
const accumulate = (sum: Map<string, tf.Tensor> | undefined, grads: Map<string, tf.Tensor>): Map<string, tf.Tensor> => {
  if (sum === undefined) return grads
  for (const [name, grad] of grads) {
    const previous = sum.get(name)!
    sum.set(name, tf.add(previous, grad))
    previous.dispose()
    grad.dispose()
  }
  return sum
}

export class Trainer {
  readonly model: PolicyModel
  readonly config: LlamaConfig
  readonly optimizer: AdamW
  readonly backend: string
  readonly #algorithm: Required<Omit<AlgorithmConfig, "rewards">>
  readonly #reward: RewardFunction
  readonly #temperature: number
  readonly #truncation: Truncation
  readonly #microBatchTokens: number
  readonly #reference: PolicyModel | undefined
  readonly #random: () => number
  /** The policy version: 0 for the weights it started from, +1 per update or SFT call. */
  version = 0

  private constructor(options: TrainerOptions, backend: string, config: LlamaConfig, model: PolicyModel, reference: PolicyModel | undefined) {
    const a = options.algorithm ?? {}
    this.#algorithm = {
      estimator: a.estimator ?? "grpo",
      clipLow: a.clipLow ?? 0.2,
      clipHigh: a.clipHigh ?? 0.28,
      aggregation: a.aggregation ?? "token-mean",
      normalizeStd: a.normalizeStd ?? true,
      klCoef: a.klCoef ?? 0,
      klEstimator: a.klEstimator ?? "k3",
      entropyCoef: a.entropyCoef ?? 0,
      epochs: a.epochs ?? 1,
      minibatches: a.minibatches ?? 1,
      gamma: a.gamma ?? 0.99,
      lambda: a.lambda ?? 0.95,
      valueCoef: a.valueCoef ?? 0.5,
      valueClip: a.valueClip ?? 0.2,
      rewardPlacement: a.rewardPlacement ?? "per-turn"
    }
    for (const key of ["epochs", "minibatches"] as const) {
      const n = this.#algorithm[key]
      if (!Number.isInteger(n) || n < 1) throw new Error(`trainer.algorithm.${key} must be a positive integer, got ${n}`)
    }
    if (!["grpo", "ppo"].includes(this.#algorithm.estimator)) {
      throw new Error(`trainer.algorithm.estimator must be "grpo" or "ppo", got ${JSON.stringify(this.#algorithm.estimator)}`)
    }
    this.#reward = typeof a.rewards === "function" ? a.rewards : rewardManager(a.rewards)
    this.#temperature = options.temperature ?? 1
    if (!(this.#temperature > 0)) throw new Error(`trainer.temperature must be > 0 (greedy rollouts have no distribution to train on), got ${this.#temperature}`)
    this.#truncation = { topK: options.topK ?? 0, topP: options.topP ?? 1 }
    this.#microBatchTokens = options.microBatchTokens ?? 4096
    this.backend = backend
    this.config = config
    this.model = model
    this.#reference = reference
    this.#random = mulberry32(options.seed ?? 0)
    const { schedule, ...optimizer } = options.optimizer ?? {}
    this.optimizer = new AdamW(model.variables, { learningRate: 1e-3, weightDecay: 0, ...optimizer }, schedule)
  }

  /** Loads the model's weights into the twin, on the best backend there is. */
  static async create(options: TrainerOptions): Promise<Trainer> {
    const backend = await selectBackend(options.backend)
    const config = readConfig(options.model)
    const weights = Safetensors.readModel(options.model)
    const ppo = options.algorithm?.estimator === "ppo"
    const model = PolicyModel.fromWeights(config, weights, { valueHead: ppo })
    const reference = (options.algorithm?.klCoef ?? 0) > 0 ? PolicyModel.fromWeights(config, weights) : undefined
    return new Trainer(options, backend, config, model, reference)
  }

  get algorithm(): Readonly<Required<Omit<AlgorithmConfig, "rewards">>> {
    return this.#algorithm
  }

  /** The score the reward manager gives a trajectory. */
  score(trajectory: Trajectory): number {
    return this.#reward(trajectory)
  }

  /** The policy's weights in Hugging Face's layout, without the critic: what the inference actor loads. */
  policyWeights(): Map<string, Safetensors.Tensor> {
    const weights = this.model.weights()
    weights.delete("value_head.weight")
    return weights
  }

  /** Micro-batches of samples, similar lengths together so little is padding. */
  #microBatches(samples: ReadonlyArray<Sample>): Array<Array<Sample>> {
    const sorted = [...samples].sort((a, b) => a.sequence.length - b.sequence.length)
    const batches: Array<Array<Sample>> = []
    let current: Array<Sample> = []
    for (const sample of sorted) {
      const longest = Math.max(sample.sequence.length, ...current.map((s) => s.sequence.length))
      if (current.length > 0 && longest * (current.length + 1) > this.#microBatchTokens) {
        batches.push(current)
        current = []
      }
      current.push(sample)
    }
    if (current.length > 0) batches.push(current)
    return batches
  }

  #batch(samples: ReadonlyArray<Sample>): ScoreBatch {
    return { sequences: samples.map((s) => s.sequence), scored: samples.map((s) => s.scored) }
  }

  /** Logprobs (and values) of the samples' generated tokens, without gradients. */
  #evaluate(model: PolicyModel, samples: ReadonlyArray<Sample>): Array<{ logprobs: Float32Array; values: Float32Array | undefined }> {
    const out = new Array<{ logprobs: Float32Array; values: Float32Array | undefined }>(samples.length)
    const position = new Map(samples.map((sample, i) => [sample, i]))
    for (const micro of this.#microBatches(samples)) {
      const { logprobs, values } = tf.tidy(() => {
        const scored = model.score(this.#batch(micro), this.#temperature, this.#truncation)
        return { logprobs: scored.logprobs.dataSync() as Float32Array, values: scored.values?.dataSync() as Float32Array | undefined }
      })
      let at = 0
      for (const sample of micro) {
        const n = sample.scored.length
        out[position.get(sample)!] = { logprobs: logprobs.subarray(at, at + n), values: values?.subarray(at, at + n) }
        at += n
      }
    }
    return out
  }

  /** Advantages (and PPO's returns and old values, and the reference logprobs) for every sample. */
  #prepare(trajectories: ReadonlyArray<Trajectory>, samples: Array<Sample>, scores: ReadonlyArray<number>): void {
    const a = this.#algorithm
    if (a.estimator === "grpo") {
      // One advantage per trajectory, against its group's trajectories (not their chains); each chain takes it.
      const indices = trajectoryIndices(samples)
      const scoreOf = new Map(samples.map((s, i) => [s.index, scores[i]!]))
      const advantages = groupAdvantages(indices.map((i) => scoreOf.get(i)!), indices.map((i) => trajectories[i]!.groupId), { normalizeStd: a.normalizeStd })
      const advantageOf = new Map(indices.map((index, i) => [index, advantages[i]!]))
      samples.forEach((s) => s.advantages.fill(advantageOf.get(s.index)!))
    } else {
      // PPO: the critic's values at the generated tokens, GAE over them as the steps, then whitening.
      const evaluated = this.#evaluate(this.model, samples)
      const flat: Array<number> = []
      samples.forEach((s, i) => {
        const trajectory = s.chain
        const rewardsAtTokens = tokenRewards(trajectory, scores[i]!, a.rewardPlacement)
        const stepRewards = s.scored.map((position) => rewardsAtTokens[position - trajectory.promptIds.length]!)
        const values = evaluated[i]!.values!
        const { advantages, returns } = gae(stepRewards, values, a.gamma, a.lambda)
        s.advantages = advantages
        s.returns = returns
        s.oldValues = Float64Array.from(values)
        flat.push(...advantages)
      })
      const whitened = whiten(flat, flat.map(() => 1))
      let at = 0
      for (const s of samples) {
        s.advantages = whitened.slice(at, at + s.scored.length)
        at += s.scored.length
      }
    }
    if (this.#reference !== undefined) {
      const reference = this.#evaluate(this.#reference, samples)
      samples.forEach((s, i) => (s.refLogprobs = Float64Array.from(reference[i]!.logprobs)))
    }
  }

  /**
   * One RL update on a batch of trajectories (a whole number of GRPO groups, ideally). `given` scores, one
   * per trajectory, replace the reward manager's (a trainer on its own thread gets them from the run's).
   */
  update(trajectories: ReadonlyArray<Trajectory>, given?: ReadonlyArray<number>): UpdateMetrics {
    const started = performance.now()
    const a = this.#algorithm
    const samples = samplesOf(trajectories)
    const scores = samples.map((s) => given?.[s.index] ?? this.#reward(trajectories[s.index]!))
    const tokens = samples.reduce((n, s) => n + s.scored.length, 0)
    const totals = { policy: 0, value: 0, entropy: 0, kl: 0, clip: 0, approxKl: 0, gradNorm: 0, lr: 0, steps: 0, diffMax: 0, diffSum: 0, diffCount: 0,
      diffOver: 0, otherVersion: 0, diffAt: undefined as { index: number; position: number } | undefined }
    if (samples.length > 0) {
      this.#prepare(trajectories, samples, scores)
      for (let epoch = 0; epoch < a.epochs; epoch++) {
        const indices = samples.map((_, i) => i)
        const order = epoch > 0 || a.minibatches > 1 ? shuffled(indices, this.#random) : indices
        const size = Math.ceil(order.length / a.minibatches)
        for (let m = 0; m < a.minibatches; m++) {
          const minibatch = order.slice(m * size, (m + 1) * size).map((i) => samples[i]!)
          if (minibatch.length === 0) continue
          const step = this.#step(minibatch, epoch === 0 && m === 0 ? totals : undefined)
          totals.policy += step.policy
          totals.value += step.value
          totals.entropy += step.entropy
          totals.kl += step.kl
          totals.clip += step.clip
          totals.approxKl += step.approxKl
          totals.gradNorm += step.gradNorm
          totals.lr = step.lr
          totals.steps += 1
        }
      }
      this.version += 1
    }
    const seconds = (performance.now() - started) / 1000
    const per = Math.max(1, totals.steps)
    return {
      version: this.version,
      trajectories: trajectoryIndices(samples).length,
      skipped: trajectories.length - trajectoryIndices(samples).length,
      tokens,
      score_mean: meanScore(samples, scores),
      policy_loss: totals.policy / per,
      ...(a.estimator === "ppo" ? { value_loss: totals.value / per } : {}),
      entropy: totals.entropy / per,
      ...(this.#reference !== undefined ? { kl: totals.kl / per } : {}),
      clip_fraction: totals.clip / per,
      approx_kl: totals.approxKl / per,
      grad_norm: totals.gradNorm / per,
      learning_rate: totals.lr,
      logprob_diff_max: totals.diffMax,
      ...(totals.diffAt === undefined ? {} : {
        logprob_diff_at: `${trajectories[totals.diffAt.index]!.id} position ${totals.diffAt.position}`
      }),
      logprob_diff_mean: totals.diffCount > 0 ? totals.diffSum / totals.diffCount : 0,
      logprob_diff_tokens: totals.diffCount,
      logprob_diff_over_1e3: totals.diffOver,
      other_version_tokens: totals.otherVersion,
      update_seconds: seconds,
      tokens_per_second: seconds > 0 ? (tokens * a.epochs) / seconds : 0
    }
  }

  /**
   * One optimizer step over a minibatch, its gradient summed over micro-batches. `diff` (first step of an
   * update only, when the weights are still the rollout's) collects the trainer/rollout logprob mismatch.
   */
  #step(
    minibatch: ReadonlyArray<Sample>,
    diff: {
      diffMax: number; diffSum: number; diffCount: number; diffOver: number; otherVersion: number
      diffAt: { index: number; position: number } | undefined
    } | undefined
  ) {
    const a = this.#algorithm
    const weights = aggregationWeights(minibatch.map((s) => s.scored.length), a.aggregation)
    const weightOf = new Map(minibatch.map((s, i) => [s, weights[i]!]))
    const sums = { policy: 0, value: 0, entropy: 0, kl: 0, clip: 0, approxKl: 0 }
    let grads: Map<string, tf.Tensor> | undefined
    const tokenCount = minibatch.reduce((n, s) => n + s.scored.length, 0)
    for (const micro of this.#microBatches(minibatch)) {
      const flat = (pick: (s: Sample) => ArrayLike<number>) => tf.tensor1d(micro.flatMap((s) => Array.from(pick(s))), "float32")
      const result = tf.tidy(() => {
        const oldLogprobs = flat((s) => s.oldLogprobs)
        const advantages = flat((s) => s.advantages)
        const tokenWeights = flat((s) => s.scored.map(() => weightOf.get(s)!))
        const mean = (x: tf.Tensor) => tf.div(tf.sum(x), tokenCount)
        let logprobs: tf.Tensor | undefined
        let metrics: Record<string, tf.Tensor> = {}
        const { value, grads: g } = tf.variableGrads(() => {
          const out = this.model.score(this.#batch(micro), this.#temperature, this.#truncation)
          logprobs = tf.keep(out.logprobs)
          const surrogate = clippedSurrogate(out.logprobs, oldLogprobs, advantages, a.clipLow, a.clipHigh)
          let perToken = tf.sub(surrogate, tf.mul(a.entropyCoef, out.entropy))
          metrics = {
            policy: tf.keep(tf.sum(tf.mul(surrogate, tokenWeights))),
            entropy: tf.keep(mean(out.entropy)),
            clip: tf.keep(mean(clippedTokens(out.logprobs, oldLogprobs, advantages, a.clipLow, a.clipHigh))),
            approxKl: tf.keep(mean(k2(out.logprobs, oldLogprobs)))
          }
          if (this.#reference !== undefined) {
            const kl = klPenalty(out.logprobs, flat((s) => s.refLogprobs!), a.klEstimator)
            perToken = tf.add(perToken, tf.mul(a.klCoef, kl))
            metrics.kl = tf.keep(mean(kl))
          }
          if (out.values !== undefined) {
            const valueError = clippedValueError(out.values, flat((s) => s.oldValues!), flat((s) => s.returns!), a.valueClip)
            perToken = tf.add(perToken, tf.mul(a.valueCoef, valueError))
            metrics.value = tf.keep(tf.sum(tf.mul(valueError, tokenWeights)))
          }
          return tf.sum(tf.mul(perToken, tokenWeights)) as tf.Scalar
        })
        value.dispose()
        return { grads: g, logprobs: logprobs!, metrics }
      })
      if (diff !== undefined) {
        const now = result.logprobs.dataSync()
        let at = 0
        for (const s of micro) {
          for (const [k, old] of s.oldLogprobs.entries()) {
            const trainerLogprob = now[at++]!
            if (s.versions[k] !== this.version) {
              diff.otherVersion += 1
              continue
            }
            const d = Math.abs(trainerLogprob - old)
            if (d > 1e-3) diff.diffOver += 1
            if (d > diff.diffMax) {
              diff.diffMax = d
              diff.diffAt = { index: s.index, position: s.scored[k]! }
            }
            diff.diffSum += d
            diff.diffCount += 1
          }
        }
      }
      result.logprobs.dispose()
      for (const [key, tensor] of Object.entries(result.metrics)) {
        sums[key as keyof typeof sums] += tensor.dataSync()[0]!
        tensor.dispose()
      }
      grads = accumulate(grads, this.model.gradientsByName(result.grads))
    }
    const stepped = this.optimizer.step(grads!)
    for (const g of grads!.values()) g.dispose()
    return { ...sums, gradNorm: stepped.gradNorm, lr: stepped.learningRate }
  }

  /**
   * Supervised fine-tuning on demonstrations: `steps` optimizer steps of the mask-weighted negative
   * log-likelihood over the generated tokens, in minibatches drawn epoch by epoch from a shuffle.
   *
   * The demonstrations are put in the order of their ids first and shuffled with `seed`: an engine hands
   * records over in the order they finished, which varies with the machine's timing, and minibatches
   * taken in that order made the same warm start's held-out success swing between 0.2 and 0.5.
   */
  sft(
    trajectories: ReadonlyArray<Trajectory>,
    options: { readonly steps: number; readonly batchSize?: number; readonly learningRate?: number; readonly seed?: number }
  ): SftMetrics {
    const started = performance.now()
    const byId = trajectories.map((t, i) => ({ t, i })).sort((a, b) => compareIds(a.t.id, b.t.id) || a.i - b.i).map(({ t }) => t)
    const samples = samplesOf(byId)
    if (samples.length === 0) throw new Error("sft: no demonstration has a generated token")
    const batchSize = options.batchSize ?? 32
    // Its own AdamW (a short warmup, then constant): the RL updates after it start with fresh moments, as
    // a new stage with another objective should.
    const optimizer = new AdamW(this.model.variables, { learningRate: options.learningRate ?? 3e-3, weightDecay: 0 }, {
      kind: "constant",
      warmupSteps: Math.min(5, options.steps)
    })
    let loss = 0
    let tokens = 0
    const random = mulberry32(options.seed ?? 0)
    let order: Array<Sample> = []
    for (let step = 0; step < options.steps; step++) {
      const minibatch: Array<Sample> = []
      for (let i = 0; i < Math.min(batchSize, samples.length); i++) {
        if (order.length === 0) order = shuffled(samples, random)
        minibatch.push(order.pop()!)
      }
      const count = minibatch.reduce((n, s) => n + s.scored.length, 0)
      tokens += count
      let grads: Map<string, tf.Tensor> | undefined
      let stepLoss = 0
      for (const micro of this.#microBatches(minibatch)) {
        const { value, grads: g } = tf.variableGrads(() =>
          tf.div(tf.neg(tf.sum(this.model.score(this.#batch(micro), 1).logprobs)), count) as tf.Scalar
        )
        stepLoss += value.dataSync()[0]!
        value.dispose()
        grads = accumulate(grads, this.model.gradientsByName(g))
      }
      optimizer.step(grads!)
      for (const g of grads!.values()) g.dispose()
      loss = stepLoss
    }
    optimizer.dispose()
    this.version += 1
    return { steps: options.steps, loss, tokens, seconds: (performance.now() - started) / 1000 }
  }

  /** Puts the trainer back where a checkpoint left it: weights, optimizer moments, version. */
  restore(weights: Safetensors.Weights, optimizer: AdamWState, version: number): void {
    this.model.assign(weights)
    this.optimizer.loadState(optimizer)
    this.version = version
  }

  optimizerState(): AdamWState {
    return this.optimizer.state()
  }

  dispose(): void {
    this.optimizer.dispose()
    this.model.dispose()
    this.#reference?.dispose()
  }
}
