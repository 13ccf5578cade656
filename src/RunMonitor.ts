/**
 * What a run looks like while it goes: episodes by machine state, throughput, reward and success, the
 * inference actor's batch, and the recent trajectories. The terminal progress line, metrics.jsonl and the
 * dashboard all read this one object; the run feeds it the episode actors' inspection events and each
 * finished trajectory.
 *
 * Success is an episode whose total reward is above zero: grid-quest pays its success bonus only on a win
 * (its losses are negative), arithmetic pays 1 for a right answer and 0 otherwise.
 */
import type { InspectionEvent } from "xstate"
import type { FinishReason, Trajectory } from "./Trajectory.ts"

/** The inference actor's batch, when the run generates with a model. */
export interface InferenceGauges {
  /** Sequences in the decode batch now. */
  readonly running: number
  /** Requests waiting to be admitted now. */
  readonly queued: number
  /** Mean rows per decode step so far. */
  readonly batchOccupancy: number
  readonly maxBatchSize: number
}

export interface RunSnapshot {
  readonly name: string
  /** "run" while the run's episodes play, "evaluation" while held-out seeds do. */
  readonly phase: "run" | "evaluation" | "warm start"
  readonly elapsedSeconds: number
  /** Finished episodes, and how many the run will have (undefined when not known up front). */
  readonly done: number
  readonly total: number | undefined
  /** Running episodes by the state their machine is in: pending, generating, interacting. */
  readonly states: Readonly<Record<string, number>>
  readonly finishReasons: Partial<Record<FinishReason, number>>
  readonly meanReward: number
  readonly meanTurns: number
  readonly successRate: number
  /** Every response token, the environment's included. */
  readonly responseTokens: number
  /** Tokens the policy generated (mask 1), and per second of the run. */
  readonly generatedTokens: number
  readonly tokensPerSecond: number
  readonly etaSeconds: number | undefined
  readonly inference: InferenceGauges | undefined
  /** The trainer's latest update, when the run trains. */
  readonly training: TrainingPoint | undefined
}

/** One line of metrics.jsonl: the run so far, and the window of episodes since the previous point. */
export interface MetricsPoint {
  readonly episodes: number
  readonly elapsed_seconds: number
  readonly mean_reward: number
  readonly success_rate: number
  readonly window_mean_reward: number
  readonly window_success_rate: number
  readonly tokens_per_second: number
  readonly window_tokens_per_second: number
  readonly running: Readonly<Record<string, number>>
  readonly batch_occupancy: number | null
  readonly queued: number | null
  /** The trainer's latest update, when the run trains (loss, KL, update and sync times, ...). */
  readonly train?: TrainingPoint
}

/** The trainer's numbers at a metrics point: its latest update's, with the sync that followed it. */
export interface TrainingPoint {
  readonly version: number
  readonly updates: number
  readonly policy_loss: number
  readonly value_loss?: number
  readonly entropy: number
  readonly kl?: number
  readonly approx_kl: number
  readonly clip_fraction: number
  readonly grad_norm: number
  readonly learning_rate: number
  readonly score_mean: number
  readonly logprob_diff_max: number
  readonly logprob_diff_mean: number
  readonly logprob_diff_at?: string
  readonly update_seconds: number
  readonly sync_seconds: number
  readonly trainer_tokens_per_second: number
  /** Trajectories left out for being more than maxPolicyLag versions old, so far. */
  readonly stale_dropped: number
}

/** The leaf state of an episode machine's snapshot value, e.g. { running: "generating" } -> "generating". */
const leafState = (value: unknown): string => {
  let current = value
  while (typeof current === "object" && current !== null) {
    const [first] = Object.values(current)
    current = first
  }
  return String(current)
}

const isSuccess = (trajectory: Trajectory): boolean => trajectory.reward > 0

export class RunMonitor {
  readonly name: string
  readonly total: number | undefined
  /** Finished trajectories kept for viewers, newest last. */
  readonly recentLimit: number
  #started = Date.now()
  readonly #states = new Map<string, string>()
  readonly #finishReasons: Partial<Record<FinishReason, number>> = {}
  readonly #recent: Array<Trajectory> = []
  readonly #history: Array<MetricsPoint> = []
  readonly #listeners = new Set<(trajectory: Trajectory) => void>()
  #done = 0
  #rewardSum = 0
  #successes = 0
  #generated = 0
  #turns = 0
  #responseTokens = 0
  #window = { episodes: 0, reward: 0, successes: 0, generated: 0, startedSeconds: 0 }
  #inference: InferenceGauges | undefined
  #phase: "run" | "evaluation" | "warm start" = "run"
  #training: TrainingPoint | undefined

  constructor(name: string, total: number | undefined, recentLimit = 50) {
    this.name = name
    this.total = total
    this.recentLimit = recentLimit
  }

  /** The run's clock starts now (after the model has loaded). */
  begin(): void {
    this.#started = Date.now()
  }

  /** An episode actor's inspection event: tracks which state each running episode is in. */
  observe(event: InspectionEvent): void {
    // Only the episode machines themselves, not the promise actors they invoke.
    if (event.type !== "@xstate.snapshot" || event.actorRef.sessionId !== event.rootId) return
    const snapshot = event.snapshot as { status?: string; value?: unknown }
    if (snapshot.status !== "active") this.#states.delete(event.rootId)
    else this.#states.set(event.rootId, leafState(snapshot.value))
  }

  /** A finished episode. */
  record(trajectory: Trajectory): void {
    const generated = trajectory.responseMask.reduce<number>((sum, mask) => sum + mask, 0)
    const success = isSuccess(trajectory) ? 1 : 0
    this.#done++
    this.#rewardSum += trajectory.reward
    this.#successes += success
    this.#generated += generated
    this.#turns += trajectory.numTurns
    this.#responseTokens += trajectory.responseIds.length
    this.#finishReasons[trajectory.finishReason] = (this.#finishReasons[trajectory.finishReason] ?? 0) + 1
    this.#window.episodes++
    this.#window.reward += trajectory.reward
    this.#window.successes += success
    this.#window.generated += generated
    this.#recent.push(trajectory)
    if (this.#recent.length > this.recentLimit) this.#recent.shift()
    for (const listener of this.#listeners) listener(trajectory)
  }

  setPhase(phase: "run" | "evaluation" | "warm start"): void {
    this.#phase = phase
  }

  /** The trainer's latest update; the next metrics points carry it. */
  setTraining(point: TrainingPoint): void {
    this.#training = point
  }

  get training(): TrainingPoint | undefined {
    return this.#training
  }

  setInference(gauges: InferenceGauges): void {
    this.#inference = gauges
  }

  /** Called with every finished trajectory; returns the unsubscribe. */
  subscribe(listener: (trajectory: Trajectory) => void): () => void {
    this.#listeners.add(listener)
    return () => this.#listeners.delete(listener)
  }

  snapshot(): RunSnapshot {
    const elapsed = (Date.now() - this.#started) / 1000
    const states: Record<string, number> = { pending: 0, generating: 0, interacting: 0 }
    for (const state of this.#states.values()) states[state] = (states[state] ?? 0) + 1
    const rate = elapsed > 0 ? this.#done / elapsed : 0
    return {
      name: this.name,
      phase: this.#phase,
      elapsedSeconds: elapsed,
      done: this.#done,
      total: this.total,
      states,
      finishReasons: { ...this.#finishReasons },
      meanReward: this.#done > 0 ? this.#rewardSum / this.#done : 0,
      meanTurns: this.#done > 0 ? this.#turns / this.#done : 0,
      responseTokens: this.#responseTokens,
      successRate: this.#done > 0 ? this.#successes / this.#done : 0,
      generatedTokens: this.#generated,
      tokensPerSecond: elapsed > 0 ? this.#generated / elapsed : 0,
      etaSeconds: this.total !== undefined && rate > 0 ? Math.max(0, (this.total - this.#done) / rate) : undefined,
      inference: this.#inference,
      training: this.#training
    }
  }

  /** Closes the current window into a metrics point (the run's metrics.jsonl gets one line per call). */
  point(): MetricsPoint {
    const now = this.snapshot()
    const window = this.#window
    const windowSeconds = now.elapsedSeconds - window.startedSeconds
    const point: MetricsPoint = {
      episodes: now.done,
      elapsed_seconds: round(now.elapsedSeconds),
      mean_reward: round(now.meanReward),
      success_rate: round(now.successRate),
      window_mean_reward: round(window.episodes > 0 ? window.reward / window.episodes : 0),
      window_success_rate: round(window.episodes > 0 ? window.successes / window.episodes : 0),
      tokens_per_second: round(now.tokensPerSecond),
      window_tokens_per_second: round(windowSeconds > 0 ? window.generated / windowSeconds : 0),
      running: now.states,
      batch_occupancy: now.inference === undefined ? null : round(now.inference.batchOccupancy),
      queued: now.inference?.queued ?? null,
      ...(this.#training === undefined ? {} : { train: this.#training })
    }
    this.#window = { episodes: 0, reward: 0, successes: 0, generated: 0, startedSeconds: now.elapsedSeconds }
    this.#history.push(point)
    return point
  }

  history(): ReadonlyArray<MetricsPoint> {
    return this.#history
  }

  recent(): ReadonlyArray<Trajectory> {
    return this.#recent
  }
}

const round = (x: number) => Math.round(x * 1000) / 1000
