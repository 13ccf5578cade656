/**
 * AdamW over named tfjs variables, written in tfjs ops (tfjs ships Adam, not AdamW), with global-norm
 * gradient clipping and a warmup-then-decay learning-rate schedule.
 *
 * One step, for each parameter w with gradient g (after clipping), at step t counted from 1:
 *   m ← β1·m + (1 − β1)·g,   v ← β2·v + (1 − β2)·g²,   m̂ = m / (1 − β1^t),   v̂ = v / (1 − β2^t)
 *   w ← w − lr_t·(m̂ / (√v̂ + ε) + wd·w)          (wd only for parameters of rank ≥ 2)
 */
import * as tf from "@tensorflow/tfjs"

export interface AdamWConfig {
  readonly learningRate: number
  /** Default 0.9. */
  readonly beta1?: number
  /** Default 0.999. */
  readonly beta2?: number
  /** Default 1e-8. */
  readonly epsilon?: number
  /** Decoupled weight decay. Default 0.01 (PyTorch's AdamW default). */
  readonly weightDecay?: number
  /** Global gradient-norm limit. Default 1.0 (verl's grad_clip); 0 or Infinity turns clipping off. */
  readonly maxGradNorm?: number
}

/**
 * Warmup is linear from 0 to the base rate over `warmupSteps`; after it, "linear" and "cosine" decay to
 * base·minRatio at `totalSteps` and stay there. "constant" may have a warmup too (verl's default schedule).
 */
export type LearningRateSchedule =
  | { readonly kind: "constant"; readonly warmupSteps?: number }
  | { readonly kind: "linear" | "cosine"; readonly warmupSteps?: number; readonly totalSteps: number; readonly minRatio?: number }

const nonNegativeInteger = (value: number | undefined, field: string): number => {
  const n = value ?? 0
  if (!(Number.isInteger(n) && n >= 0)) throw new Error(`${field} must be an integer ≥ 0, got ${String(value)}`)
  return n
}

const checkSchedule = (schedule: LearningRateSchedule): void => {
  const warmup = nonNegativeInteger(schedule.warmupSteps, "optimizer.schedule.warmupSteps")
  if (schedule.kind === "constant") return
  if (schedule.kind !== "linear" && schedule.kind !== "cosine") {
    throw new Error(`optimizer.schedule.kind must be "constant", "linear" or "cosine", got ${String((schedule as { kind: unknown }).kind)}`)
  }
  const total = schedule.totalSteps
  if (!(Number.isInteger(total) && total > 0)) {
    throw new Error(`optimizer.schedule.totalSteps must be a positive integer, got ${String(total)}`)
  }
  if (warmup > total) {
    throw new Error(`optimizer.schedule.warmupSteps (${warmup}) exceeds optimizer.schedule.totalSteps (${total})`)
  }
  const minRatio = schedule.minRatio ?? 0
  if (!(minRatio >= 0 && minRatio <= 1)) {
    throw new Error(`optimizer.schedule.minRatio must be in [0, 1], got ${String(schedule.minRatio)}`)
  }
}

/** The learning rate of optimizer step `step` (counted from 1: the first update uses step 1). */
export const learningRateAt = (base: number, schedule: LearningRateSchedule, step: number): number => {
  checkSchedule(schedule)
  const warmup = schedule.warmupSteps ?? 0
  // Warmup starts at base/warmup, not 0: step 1 is a real update, and a zero-rate step would only feed the moments.
  if (step <= warmup) return (base * Math.max(0, step)) / warmup
  if (schedule.kind === "constant") return base
  const minRatio = schedule.minRatio ?? 0
  const span = schedule.totalSteps - warmup
  const progress = span <= 0 ? 1 : Math.min(1, (step - warmup) / span)
  const decay = schedule.kind === "linear" ? 1 - progress : 0.5 * (1 + Math.cos(Math.PI * progress))
  return base * (minRatio + (1 - minRatio) * decay)
}

export interface StepResult {
  /** The global gradient norm before clipping. */
  readonly gradNorm: number
  /** The rate this step used. */
  readonly learningRate: number
  /** Whether the gradients were scaled down to maxGradNorm. */
  readonly clipped: boolean
}

export interface Moments {
  readonly m: Float32Array
  readonly v: Float32Array
}

export interface AdamWState {
  readonly step: number
  readonly moments: ReadonlyMap<string, Moments>
}

type Gradients = Readonly<Record<string, tf.Tensor>> | ReadonlyMap<string, tf.Tensor>

const inRange = (value: number, low: number, high: number) => value >= low && value < high

export class AdamW {
  readonly #variables: ReadonlyMap<string, tf.Variable>
  readonly #moments = new Map<string, { m: tf.Variable; v: tf.Variable }>()
  readonly #schedule: LearningRateSchedule
  readonly #learningRate: number
  readonly #beta1: number
  readonly #beta2: number
  readonly #epsilon: number
  readonly #weightDecay: number
  readonly #maxGradNorm: number
  #step = 0

  constructor(variables: ReadonlyMap<string, tf.Variable>, config: AdamWConfig, schedule: LearningRateSchedule = { kind: "constant" }) {
    const check = (value: number, ok: boolean, field: string, what: string): number => {
      if (!ok) throw new Error(`optimizer.${field} must be ${what}, got ${String(value)}`)
      return value
    }
    const lr = config.learningRate
    this.#learningRate = check(lr, Number.isFinite(lr) && lr > 0, "learningRate", "a finite number > 0")
    const beta1 = config.beta1 ?? 0.9
    this.#beta1 = check(beta1, inRange(beta1, 0, 1), "beta1", "in [0, 1)")
    const beta2 = config.beta2 ?? 0.999
    this.#beta2 = check(beta2, inRange(beta2, 0, 1), "beta2", "in [0, 1)")
    const epsilon = config.epsilon ?? 1e-8
    this.#epsilon = check(epsilon, Number.isFinite(epsilon) && epsilon > 0, "epsilon", "a finite number > 0")
    const wd = config.weightDecay ?? 0.01
    this.#weightDecay = check(wd, Number.isFinite(wd) && wd >= 0, "weightDecay", "a finite number ≥ 0")
    const maxNorm = config.maxGradNorm ?? 1.0
    this.#maxGradNorm = check(maxNorm, maxNorm >= 0, "maxGradNorm", "a number ≥ 0 (0 or Infinity: no clipping)")
    checkSchedule(schedule)
    this.#schedule = schedule
    this.#variables = variables
    for (const [name, variable] of variables) {
      // Unnamed: tfjs variable names are global, and two optimizers may hold the same parameter names.
      // Inside tidy so the zeros the variables copy are freed (tidy never disposes variables).
      this.#moments.set(
        name,
        tf.tidy(() => ({ m: tf.variable(tf.zerosLike(variable), false), v: tf.variable(tf.zerosLike(variable), false) }))
      )
    }
  }

  /** Updates taken so far. */
  get stepCount(): number {
    return this.#step
  }

  /**
   * One update from gradients keyed by variable name. A variable with no gradient is left as it is, decay
   * included (as PyTorch skips parameters whose grad is None). Throws, changing nothing, on an unknown name,
   * a shape mismatch or a non-finite gradient norm (applying a NaN would destroy the weights).
   */
  step(grads: Gradients): StepResult {
    const entries: Array<[string, tf.Tensor]> = grads instanceof Map ? [...grads] : Object.entries(grads)
    for (const [name, grad] of entries) {
      const variable = this.#variables.get(name)
      if (variable === undefined) throw new Error(`AdamW.step: gradient for unknown variable "${name}"`)
      if (grad.shape.length !== variable.shape.length || grad.shape.some((d, i) => d !== variable.shape[i])) {
        throw new Error(`AdamW.step: gradient "${name}" has shape [${grad.shape.join(", ")}], the variable [${variable.shape.join(", ")}]`)
      }
    }
    if (entries.length === 0) throw new Error("AdamW.step: no gradients given")

    // Global norm over every gradient together, read once: it is a metric, and it decides the clip.
    const normTensor = tf.tidy(() => tf.sqrt(tf.addN(entries.map(([, g]) => tf.sum(tf.square(tf.cast(g, "float32")))))))
    const gradNorm = normTensor.dataSync()[0]!
    normTensor.dispose()
    if (!Number.isFinite(gradNorm)) throw new Error(`AdamW.step: gradient norm is ${gradNorm}; step not taken`)

    // Clip before the moments, so one outlier batch cannot inflate m and v for many steps.
    // Coefficient max / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
    const clipping = this.#maxGradNorm > 0 && Number.isFinite(this.#maxGradNorm)
    const clipped = clipping && gradNorm > this.#maxGradNorm
    const scale = clipped ? this.#maxGradNorm / (gradNorm + 1e-6) : 1

    const t = this.#step + 1
    const learningRate = learningRateAt(this.#learningRate, this.#schedule, t)
    const beta1 = this.#beta1
    const beta2 = this.#beta2
    const correction1 = 1 - beta1 ** t
    const correction2 = 1 - beta2 ** t
    for (const [name, rawGrad] of entries) {
      const variable = this.#variables.get(name)!
      const moments = this.#moments.get(name)!
      // Decoupled weight decay (Loshchilov & Hutter): decay acts on w directly, not through the gradient, so
      // Adam's per-coordinate scaling does not shrink it where gradients are large. Rank ≤ 1 parameters
      // (norm gains, biases) are not decayed, the usual practice: pulling RMSNorm gains toward 0 shrinks
      // activations rather than regularising anything.
      const decay = variable.rank >= 2 ? this.#weightDecay : 0
      tf.tidy(() => {
        const grad = scale === 1 ? tf.cast(rawGrad, "float32") : tf.mul(tf.cast(rawGrad, "float32"), scale)
        const m = tf.add(tf.mul(moments.m, beta1), tf.mul(grad, 1 - beta1))
        const v = tf.add(tf.mul(moments.v, beta2), tf.mul(tf.square(grad), 1 - beta2))
        moments.m.assign(m)
        moments.v.assign(v)
        const mHat = tf.div(m, correction1)
        const vHat = tf.div(v, correction2)
        let update: tf.Tensor = tf.div(mHat, tf.add(tf.sqrt(vHat), this.#epsilon))
        if (decay > 0) update = tf.add(update, tf.mul(variable, decay))
        variable.assign(tf.sub(variable, tf.mul(update, learningRate)))
      })
    }
    this.#step = t
    return { gradNorm, learningRate, clipped }
  }

  /** A copy of the step count and moments, for checkpoints. */
  state(): AdamWState {
    const moments = new Map<string, Moments>()
    for (const [name, { m, v }] of this.#moments) {
      moments.set(name, { m: Float32Array.from(m.dataSync() as Float32Array), v: Float32Array.from(v.dataSync() as Float32Array) })
    }
    return { step: this.#step, moments }
  }

  /** Restores a checkpoint's state; every variable must be present with matching sizes. */
  loadState(state: AdamWState): void {
    if (!(Number.isInteger(state.step) && state.step >= 0)) throw new Error(`AdamW.loadState: step must be an integer ≥ 0, got ${state.step}`)
    for (const [name, variable] of this.#variables) {
      const saved = state.moments.get(name)
      if (saved === undefined) throw new Error(`AdamW.loadState: no moments for variable "${name}"`)
      if (saved.m.length !== variable.size || saved.v.length !== variable.size) {
        throw new Error(`AdamW.loadState: moments for "${name}" have ${saved.m.length}/${saved.v.length} entries, the variable ${variable.size}`)
      }
    }
    for (const name of state.moments.keys()) {
      if (!this.#variables.has(name)) throw new Error(`AdamW.loadState: moments for unknown variable "${name}"`)
    }
    for (const [name, variable] of this.#variables) {
      const saved = state.moments.get(name)!
      const moments = this.#moments.get(name)!
      tf.tidy(() => {
        moments.m.assign(tf.tensor(saved.m, variable.shape, "float32"))
        moments.v.assign(tf.tensor(saved.v, variable.shape, "float32"))
      })
    }
    this.#step = state.step
  }

  /** Frees the moment tensors (not the variables being optimised, which belong to the model). */
  dispose(): void {
    for (const { m, v } of this.#moments.values()) {
      m.dispose()
      v.dispose()
    }
    this.#moments.clear()
  }
}
