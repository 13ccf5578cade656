/**
 * Continuous batching over one model. Between decode steps the scheduler admits waiting requests with one
 * batched prefill, then runs one batched decode step for every running sequence; a sequence that hits its
 * stop token, a stop string or its token limit leaves the batch at once and its request resolves. No
 * request waits for a whole batch to finish.
 *
 * Prefix reuse: when a sequence leaves, its keys and values go to the KvCacheStore under its episode id,
 * so the episode's next turn prefills only the tokens that are new to the model. The decode batch keeps
 * its keys and values as the model returned them and copies only when rows join or leave.
 *
 * Layout: in the decode batch every row is left-padded, its real positions at the end. A prefill batch pads
 * each row's cached part and new part separately, so real positions may have a gap in the middle; the
 * attention mask says which positions are real and position ids are passed explicitly.
 */
import type { ForwardOutputs, OnnxCausalLM } from "./OnnxCausalLM.ts"
import { KvCacheStore, type CachedSequence } from "./KvCacheStore.ts"
import { makeSampler, type Sampler } from "./sampling.ts"

export interface SchedulerRequest {
  readonly episodeId: string
  readonly contextIds: ReadonlyArray<number>
  readonly temperature: number
  readonly topK: number
  readonly topP: number
  readonly maxNewTokens: number
  readonly stop: ReadonlyArray<string>
  readonly stopTokenIds: ReadonlyArray<number>
  readonly seed: number
  /** Emit exactly these tokens instead of sampling (replays measured work; logprobs are still computed). */
  readonly replay?: ReadonlyArray<number>
}

export interface SchedulerResult {
  readonly tokenIds: Array<number>
  readonly logprobs: Array<number>
  readonly finishReason: "eos" | "stop" | "length" | "aborted"
  readonly policyVersion: number
}

export interface SchedulerOptions {
  /** Sequences decoded together at most. */
  readonly maxBatchSize: number
  /** Padded tokens in one prefill batch at most (a single longer request still runs alone). */
  readonly maxPrefillTokens: number
  /** Bytes of episode KV caches kept between turns. */
  readonly cacheBudgetBytes: number
  /** Longest sequence the model takes (its position table). */
  readonly maxPositions: number
  /** Turns token ids into text, for stop strings. */
  readonly decode?: (ids: ReadonlyArray<number>) => string
}

export interface SchedulerStats {
  requests: number
  prefillSteps: number
  decodeSteps: number
  /** Sum over decode steps of the rows decoded: divided by decodeSteps, the mean batch occupancy. */
  decodeRows: number
  /** Context tokens run through prefill. */
  prefillTokens: number
  /** Context tokens the model had never run for their episode: the first prompt, then each observation plus the previous turn's last sampled token. */
  newTokens: number
  generatedTokens: number
  forwardMs: number
  copyMs: number
  evictions: number
}

class SchedulerError extends Error {
  override readonly name = "InferenceError"
}

interface Waiting {
  readonly request: SchedulerRequest
  readonly resolve: (result: SchedulerResult) => void
  readonly reject: (error: Error) => void
}

/** Where a row's keys and values sit: per layer [batch, kvHeads, length, headDim] and the runs of real positions. */
interface Placement {
  readonly keys: ReadonlyArray<Float32Array>
  readonly values: ReadonlyArray<Float32Array>
  readonly length: number
  readonly index: number
  readonly runs: ReadonlyArray<readonly [start: number, count: number]>
}

interface Row {
  readonly waiting: Waiting
  readonly sampler: Sampler
  /** Tokens whose keys and values the batch holds for this row. */
  readonly fed: Array<number>
  /** Sampled, not yet run through the model. */
  next: number
  readonly tokenIds: Array<number>
  readonly logprobs: Array<number>
  readonly policyVersion: number
  placement: Placement
}

const isPrefix = (prefix: ReadonlyArray<number>, of: ReadonlyArray<number>): boolean =>
  prefix.length <= of.length && prefix.every((token, i) => of[i] === token)

export class BatchScheduler {
  readonly #model: OnnxCausalLM
  readonly #options: SchedulerOptions
  readonly #cache: KvCacheStore
  readonly #waiting: Array<Waiting> = []
  #rows: Array<Row> = []
  /** The decode batch: per layer [rows, kvHeads, length, headDim], every row left-padded. */
  #keys: Array<Float32Array> = []
  #values: Array<Float32Array> = []
  #length = 0
  #loop: Promise<void> | undefined
  /** Tokens each episode's earlier turns put into its context (for counting new tokens). */
  readonly #seen = new Map<string, number>()
  readonly #cancelled = new Set<string>()
  #closed = false
  #version = 0
  #staged: { readonly bytes: Uint8Array; readonly version: number; readonly done: () => void; readonly fail: (e: Error) => void } | undefined
  readonly stats: SchedulerStats = {
    requests: 0, prefillSteps: 0, decodeSteps: 0, decodeRows: 0, prefillTokens: 0, newTokens: 0,
    generatedTokens: 0, forwardMs: 0, copyMs: 0, evictions: 0
  }

  constructor(model: OnnxCausalLM, options: SchedulerOptions) {
    this.#model = model
    this.#options = options
    this.#cache = new KvCacheStore(options.cacheBudgetBytes)
  }

  get policyVersion(): number {
    return this.#version
  }

  get running(): number {
    return this.#rows.length
  }

  get queued(): number {
    return this.#waiting.length
  }

  generate(request: SchedulerRequest): Promise<SchedulerResult> {
    if (this.#closed) return Promise.reject(new SchedulerError("the inference actor is closed"))
    const problem = this.#validate(request)
    if (problem !== undefined) return Promise.reject(new SchedulerError(`episode ${request.episodeId}: ${problem}`))
    return new Promise((resolve, reject) => {
      this.#waiting.push({ request, resolve, reject })
      this.#start()
    })
  }

  #start(): void {
    this.#loop ??= this.#run()
      .catch((cause) => {
        // A bug here must fail the requests loudly, never leave them waiting forever.
        const error = new SchedulerError(`inference scheduler failed: ${errorText(cause)}`)
        for (const row of this.#rows) if (row.next >= 0) row.waiting.reject(error)
        for (const waiting of this.#waiting.splice(0)) waiting.reject(error)
        this.#rows = []
        this.#keys = []
        this.#values = []
        this.#length = 0
      })
      .finally(() => {
        this.#loop = undefined
        // Requests that arrived while the loop was winding down.
        if (this.#waiting.length > 0 || this.#staged !== undefined) this.#start()
      })
  }

  /** Swaps in a model built from `onnxBytes` between two steps; in-flight sequences go on with the new weights. */
  updateWeights(onnxBytes: Uint8Array, version: number): Promise<void> {
    return new Promise((done, fail) => {
      this.#staged?.fail(new SchedulerError(`weights version ${this.#staged.version} superseded by version ${version}`))
      this.#staged = { bytes: onnxBytes, version, done, fail }
      this.#start()
    })
  }

  /** Fails every request waiting or running, after the step in progress; resolves once no step runs. */
  async close(): Promise<void> {
    this.#closed = true
    await this.#loop
  }

  /** Ends the episode's request in flight with finish reason "aborted" (its episode was interrupted or timed out). */
  cancel(episodeId: string): void {
    const queued = this.#waiting.findIndex((w) => w.request.episodeId === episodeId)
    if (queued >= 0) {
      const [waiting] = this.#waiting.splice(queued, 1)
      waiting!.resolve({ tokenIds: [], logprobs: [], finishReason: "aborted", policyVersion: this.#version })
      return
    }
    this.#cancelled.add(episodeId)
  }

  /** Drops an episode's cached keys and values (the episode ended). */
  forget(episodeId: string): void {
    this.#cache.delete(episodeId)
    this.#seen.delete(episodeId)
  }

  #validate(request: SchedulerRequest): string | undefined {
    if (request.contextIds.length === 0) return "contextIds is empty"
    if (request.contextIds.length >= this.#options.maxPositions) {
      return `context of ${request.contextIds.length} tokens does not fit the model's ${this.#options.maxPositions} positions`
    }
    const vocab = this.#model.shape.vocabSize
    const bad = request.contextIds.find((id) => !Number.isInteger(id) || id < 0 || id >= vocab)
    if (bad !== undefined) return `token id ${bad} is outside the vocabulary (0..${vocab - 1})`
    if (!Number.isInteger(request.maxNewTokens) || request.maxNewTokens < 1) return `maxNewTokens must be a positive integer, got ${request.maxNewTokens}`
    return undefined
  }

  async #run(): Promise<void> {
    // Rows that left in the last decode step; the next prefill's rebuild drops them too, so one copy serves both.
    let left = false
    while (this.#waiting.length > 0 || this.#rows.length > 0 || this.#staged !== undefined) {
      if (this.#closed) throw new Error("the inference actor closed")
      if (this.#staged !== undefined) await this.#swapWeights()
      if (this.#waiting.length > 0 && this.#live() < this.#options.maxBatchSize) {
        const joined = await this.#prefill()
        if (joined.length > 0 || left) this.#rebuild(joined)
      } else if (left) this.#rebuild([])
      left = this.#rows.length > 0 && (await this.#decode())
    }
  }

  /** Running rows that have not finished (finished ones stay in the batch until the next rebuild). */
  #live(): number {
    return this.#rows.reduce((n, row) => n + (row.next >= 0 ? 1 : 0), 0)
  }

  async #swapWeights(): Promise<void> {
    const staged = this.#staged!
    this.#staged = undefined
    try {
      await this.#model.reload(staged.bytes)
      this.#version = staged.version
      staged.done()
    } catch (cause) {
      staged.fail(new SchedulerError(`weights version ${staged.version} could not be loaded: ${String(cause)}`))
    }
  }

  async #forward(inputs: Parameters<OnnxCausalLM["forward"]>[0]): Promise<ForwardOutputs> {
    const started = performance.now()
    const out = await this.#model.forward(inputs)
    this.stats.forwardMs += performance.now() - started
    return out
  }

  /** Admits waiting requests with one batched prefill; returns the rows that joined (some may already be finished). */
  async #prefill(): Promise<Array<Row>> {
    const { numLayers, kvHeads, headDim, vocabSize } = this.#model.shape
    const room = this.#options.maxBatchSize - this.#live()
    const admitted: Array<{ waiting: Waiting; cached: CachedSequence | undefined; fresh: ReadonlyArray<number> }> = []
    let longestNew = 0
    while (admitted.length < room && this.#waiting.length > 0) {
      const waiting = this.#waiting[0]!
      const context = waiting.request.contextIds
      let cached = this.#cache.take(waiting.request.episodeId)
      // The cache serves only when it is a strict prefix: at least one token must run to give logits.
      if (cached !== undefined && !(cached.tokens.length < context.length && isPrefix(cached.tokens, context))) cached = undefined
      const fresh = context.slice(cached?.tokens.length ?? 0)
      const longest = Math.max(longestNew, fresh.length)
      if (admitted.length > 0 && longest * (admitted.length + 1) > this.#options.maxPrefillTokens) {
        if (cached !== undefined) this.#cache.put(waiting.request.episodeId, cached)
        break
      }
      this.#waiting.shift()
      longestNew = longest
      admitted.push({ waiting, cached, fresh })
    }

    const batch = admitted.length
    const pastLength = Math.max(0, ...admitted.map((a) => a.cached?.tokens.length ?? 0))
    const total = pastLength + longestNew
    const copyStarted = performance.now()
    const pastKeys = Array.from({ length: numLayers }, () => new Float32Array(batch * kvHeads * pastLength * headDim))
    const pastValues = Array.from({ length: numLayers }, () => new Float32Array(batch * kvHeads * pastLength * headDim))
    const inputIds = new BigInt64Array(batch * longestNew)
    const positionIds = new BigInt64Array(batch * longestNew)
    const attentionMask = new BigInt64Array(batch * total)
    admitted.forEach(({ cached, fresh }, b) => {
      const past = cached?.tokens.length ?? 0
      if (cached !== undefined) {
        for (let layer = 0; layer < numLayers; layer++) {
          for (let h = 0; h < kvHeads; h++) {
            const to = ((b * kvHeads + h) * pastLength + pastLength - past) * headDim
            pastKeys[layer]!.set(cached.keys[layer]!.subarray(h * past * headDim, (h + 1) * past * headDim), to)
            pastValues[layer]!.set(cached.values[layer]!.subarray(h * past * headDim, (h + 1) * past * headDim), to)
          }
        }
      }
      attentionMask.fill(1n, b * total + pastLength - past, b * total + pastLength)
      attentionMask.fill(1n, b * total + total - fresh.length, (b + 1) * total)
      fresh.forEach((token, i) => {
        const at = b * longestNew + longestNew - fresh.length + i
        inputIds[at] = BigInt(token)
        positionIds[at] = BigInt(past + i)
      })
    })
    this.stats.copyMs += performance.now() - copyStarted

    let out: ForwardOutputs
    try {
      out = await this.#forward({ batch, sequenceLength: longestNew, pastLength, inputIds, positionIds, attentionMask, pastKeys, pastValues })
    } catch (cause) {
      // A failed forward pass fails the requests in it, never the scheduler.
      for (const { waiting } of admitted) waiting.reject(new SchedulerError(`inference failed: ${errorText(cause)}`))
      return []
    }
    this.stats.prefillSteps += 1
    return admitted.map(({ waiting, cached, fresh }, b) => {
      const request = waiting.request
      const past = cached?.tokens.length ?? 0
      this.stats.requests += 1
      this.stats.prefillTokens += fresh.length
      this.stats.newTokens += request.contextIds.length - (this.#seen.get(request.episodeId) ?? 0)
      const row: Row = {
        waiting,
        sampler: makeSampler(request, request.seed),
        fed: [...request.contextIds],
        next: -1,
        tokenIds: [],
        logprobs: [],
        policyVersion: this.#version,
        placement: {
          keys: out.presentKeys,
          values: out.presentValues,
          length: total,
          index: b,
          runs: [[pastLength - past, past], [total - fresh.length, fresh.length]]
        }
      }
      const last = (b * longestNew + longestNew - 1) * vocabSize
      this.#accept(row, out.logits.subarray(last, last + vocabSize))
      return row
    })
  }

  /** One decode step for every running row; true when some row finished (the batch needs a rebuild). */
  async #decode(): Promise<boolean> {
    const rows = this.#rows
    const batch = rows.length
    const total = this.#length + 1
    const inputIds = BigInt64Array.from(rows, (row) => BigInt(row.next))
    const positionIds = BigInt64Array.from(rows, (row) => BigInt(row.fed.length))
    const attentionMask = new BigInt64Array(batch * total)
    rows.forEach((row, b) => attentionMask.fill(1n, b * total + total - row.fed.length - 1, (b + 1) * total))
    let out: ForwardOutputs
    try {
      out = await this.#forward({
        batch, sequenceLength: 1, pastLength: this.#length, inputIds, positionIds, attentionMask,
        pastKeys: this.#keys, pastValues: this.#values
      })
    } catch (cause) {
      for (const row of rows) row.waiting.reject(new SchedulerError(`inference failed: ${errorText(cause)}`))
      this.#rows = []
      this.#keys = []
      this.#values = []
      this.#length = 0
      return false
    }
    this.stats.decodeSteps += 1
    this.stats.decodeRows += batch
    this.#keys = [...out.presentKeys]
    this.#values = [...out.presentValues]
    this.#length = total
    const vocab = this.#model.shape.vocabSize
    let finished = false
    rows.forEach((row, b) => {
      row.fed.push(row.next)
      row.placement = { keys: this.#keys, values: this.#values, length: total, index: b, runs: [[total - row.fed.length, row.fed.length]] }
      if (this.#accept(row, out.logits.subarray(b * vocab, (b + 1) * vocab))) finished = true
    })
    return finished
  }

  /** Samples the row's next token; if that ends the turn, caches the row, resolves it and returns true. */
  #accept(row: Row, logits: Float32Array): boolean {
    const request = row.waiting.request
    const replayed = request.replay?.[row.tokenIds.length]
    const sample = replayed === undefined ? row.sampler(logits) : { token: replayed, logprob: logProbability(logits, replayed) }
    row.tokenIds.push(sample.token)
    row.logprobs.push(sample.logprob)
    row.next = sample.token
    this.stats.generatedTokens += 1
    const finishReason = this.#finishReason(row, sample.token)
    if (finishReason === undefined) return false
    const copyStarted = performance.now()
    this.#cache.put(request.episodeId, this.#extract(row))
    this.stats.evictions = this.#cache.evictions
    this.stats.copyMs += performance.now() - copyStarted
    // The last sampled token was never run through the model: it is new to the next turn.
    this.#seen.set(request.episodeId, request.contextIds.length + row.tokenIds.length - 1)
    row.waiting.resolve({ tokenIds: row.tokenIds, logprobs: row.logprobs, finishReason, policyVersion: row.policyVersion })
    row.next = -1
    return true
  }

  #finishReason(row: Row, token: number): SchedulerResult["finishReason"] | undefined {
    const request = row.waiting.request
    if (this.#cancelled.delete(request.episodeId)) return "aborted"
    if (request.replay !== undefined) return row.tokenIds.length >= request.replay.length ? "length" : undefined
    if (request.stopTokenIds.includes(token)) return "eos"
    if (request.stop.length > 0 && this.#options.decode !== undefined && hasStop(this.#options.decode(row.tokenIds), request.stop)) return "stop"
    if (row.tokenIds.length >= request.maxNewTokens || row.fed.length + 1 >= this.#options.maxPositions) return "length"
    return undefined
  }

  /** The row's keys and values, compact: per layer [kvHeads, fed, headDim]. */
  #extract(row: Row): CachedSequence {
    const { numLayers, kvHeads, headDim } = this.#model.shape
    const n = row.fed.length
    const copy = (sources: ReadonlyArray<Float32Array>) =>
      Array.from({ length: numLayers }, (_, layer) => {
        const out = new Float32Array(kvHeads * n * headDim)
        copyRuns(sources[layer]!, row.placement, kvHeads, headDim, out, h => h * n * headDim)
        return out
      })
    return { tokens: row.fed, keys: copy(row.placement.keys), values: copy(row.placement.values) }
  }

  /** The decode batch after rows left and joined: every running row, left-padded to the longest. */
  #rebuild(joined: ReadonlyArray<Row>): void {
    const started = performance.now()
    const { numLayers, kvHeads, headDim } = this.#model.shape
    const rows = [...this.#rows, ...joined].filter((row) => row.next >= 0)
    const length = Math.max(0, ...rows.map((row) => row.fed.length))
    const keys = Array.from({ length: numLayers }, () => new Float32Array(rows.length * kvHeads * length * headDim))
    const values = Array.from({ length: numLayers }, () => new Float32Array(rows.length * kvHeads * length * headDim))
    rows.forEach((row, b) => {
      const offset = (h: number) => ((b * kvHeads + h) * length + length - row.fed.length) * headDim
      for (let layer = 0; layer < numLayers; layer++) {
        copyRuns(row.placement.keys[layer]!, row.placement, kvHeads, headDim, keys[layer]!, offset)
        copyRuns(row.placement.values[layer]!, row.placement, kvHeads, headDim, values[layer]!, offset)
      }
      row.placement = { keys, values, length, index: b, runs: [[length - row.fed.length, row.fed.length]] }
    })
    this.#rows = rows
    this.#keys = keys
    this.#values = values
    this.#length = length
    this.stats.copyMs += performance.now() - started
  }
}

/** Copies a row's real positions, head by head, to `out` starting at `offset(head)`. */
const copyRuns = (
  source: Float32Array,
  placement: Placement,
  kvHeads: number,
  headDim: number,
  out: Float32Array,
  offset: (head: number) => number
): void => {
  for (let h = 0; h < kvHeads; h++) {
    let to = offset(h)
    const base = (placement.index * kvHeads + h) * placement.length
    for (const [start, count] of placement.runs) {
      if (count === 0) continue
      out.set(source.subarray((base + start) * headDim, (base + start + count) * headDim), to)
      to += count * headDim
    }
  }
}

const errorText = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

const hasStop = (text: string, stop: ReadonlyArray<string>): boolean => stop.some((s) => s.length > 0 && text.includes(s))

/** log softmax(logits)[token]. */
export const logProbability = (logits: Float32Array, token: number): number => {
  let max = -Infinity
  for (const value of logits) if (value > max) max = value
  let sum = 0
  for (const value of logits) sum += Math.exp(value - max)
  return logits[token]! - max - Math.log(sum)
}
