/**
 * Continuous batching over one model. Between decode steps the scheduler admits waiting requests with one
 * batched prefill, then runs one batched decode step for every running sequence; a sequence that hits its
 * stop token, a stop string or its token limit leaves the batch at once and its request resolves. No
 * request waits for a whole batch to finish.
 *
 * Prefix reuse: when a sequence leaves, its keys and values go to the KvCacheStore under its episode id,
 * so the episode's next turn prefills only the tokens that are new to the model.
 *
 * Layout: the decode batch keeps every row's keys and values in actor-owned buffers, ending at a common
 * column; each step writes one new column, the one after it. That column goes round the buffer as a ring: a
 * row's columns may wrap from the buffer's end to its start, and the batch is laid out again only when a row
 * would fill the whole ring. Attention does not depend on the order of the key columns beyond rounding
 * (each key carries its position, and the decode step's query comes after every column), so only the mask
 * follows the wrap. (Not for graphs whose rows run one forward pass each: see `#ring`.)
 * A prefill batch pads each row's cached part and new part separately, so real positions may have a gap in
 * the middle; the attention mask says which positions are real and position ids are passed explicitly.
 *
 * Right layout (the model's `layout`, for GroupQueryAttention graphs): every row's keys and values start at
 * column 0 instead, so each row's cache is a left-aligned prefix, and each decode step writes a row's new
 * key at its own length. A prefill puts each row's new tokens first in the new part (right padding); one
 * that continues a cache runs alone, since GroupQueryAttention takes several rows only when none has a past.
 *
 * Every request settles. Each accepted request is a ticket in one set until it resolves or fails; when
 * anything in the loop throws (a forward pass, a copy, a bug), every ticket fails with that error, the batch
 * and caches are dropped, and the next requests are served from a clean state. A watchdog fails a ticket
 * that has made no progress for `stallTimeoutMs` instead of letting it wait for a far-away timeout.
 *
 * Policy versions: weights swap only between two steps. Each sampled token records the version whose
 * weights computed its logits, and every key and value a query reads comes from those same weights: a swap
 * recomputes the running rows' keys and values and empties the episode caches. So each recorded logprob is
 * what a cache-free forward pass of the sequence under that token's version gives.
 */
import type { ForwardInputs, ForwardOutputs, OnnxCausalLM } from "./OnnxCausalLM.ts"
import { blockIndex, forEachRun, KvCacheStore, type CachedSequence } from "./KvCacheStore.ts"
import { headTemperature, makeSampler, makeUniforms, plainTemperature, type Sample, type Sampler, tokenLogprob } from "./sampling.ts"

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
  /** The version of the turn's first token (the oldest: versions only grow within a turn). */
  readonly policyVersion: number
  /** The version whose weights computed each token's logits. */
  readonly policyVersions: Array<number>
}

export interface SchedulerOptions {
  /** Sequences decoded together at most. */
  readonly maxBatchSize: number
  /** Padded tokens in one prefill batch at most (a single longer request still runs alone). */
  readonly maxPrefillTokens: number
  /**
   * A turn that continues its episode's cache with at most this many new tokens skips the prefill: it joins
   * the decode batch at once and its new tokens run one per decode step (default 0: always prefill). On the
   * CPU the decode steps cost those tokens more than a prefill does (`npm run bench -- inference`: 8% fewer
   * tokens/s at 16). It may pay where a decode step is bound by memory rather than arithmetic (a GPU; not measured).
   */
  readonly feedMaxTokens?: number
  /** Bytes of episode KV caches kept between turns. */
  readonly cacheBudgetBytes: number
  /** Longest sequence the model takes (its position table). */
  readonly maxPositions: number
  /** A request that makes no progress for this long fails (default 60 s). */
  readonly stallTimeoutMs?: number
  /** Turns token ids into text, for stop strings. */
  readonly decode?: (ids: ReadonlyArray<number>) => string
  /** Sees every row of logits a request's token is chosen from (tests and debugging). */
  readonly onLogits?: (episodeId: string, logits: Float32Array) => void
}

export interface SchedulerStats {
  requests: number
  prefillSteps: number
  decodeSteps: number
  /** Sum over decode steps of the rows decoded: divided by decodeSteps, the mean batch occupancy. */
  decodeRows: number
  /** Requests admitted with no prefill, their new tokens fed through decode steps (see feedMaxTokens). */
  fedRequests: number
  /** Context tokens run through the model before sampling (prefilled or fed). */
  prefillTokens: number
  /** Context tokens the model had never run for their episode: the first prompt, then each observation plus the previous turn's last sampled token. */
  newTokens: number
  generatedTokens: number
  /** Time in the model's forward passes: prefill, then decode. */
  prefillMs: number
  decodeMs: number
  /** Time copying keys and values between episode caches and the batch. */
  copyMs: number
  /** Time choosing tokens from logits (sampling, or a replayed token's logprob). */
  sampleMs: number
  /**
   * Time with nothing to do: no request held and no step running (the engine had sent nothing). Counted up
   * to the moment of asking (see `statsNow`).
   */
  idleMs: number
  evictions: number
  /** Running rows' tokens run again because new weights arrived mid-turn. */
  recomputedTokens: number
  /** Requests failed by the watchdog, and loop failures (each fails every request held at the time). */
  stalled: number
  failures: number
}

class SchedulerError extends Error {
  override readonly name = "InferenceError"
}

/** One accepted request, from `generate` until it settles. */
interface Ticket {
  readonly request: SchedulerRequest
  readonly resolve: (result: SchedulerResult) => void
  readonly reject: (error: Error) => void
  /** Sees each token as it is sampled (a streamed chat completion), before the request resolves with them all. */
  readonly onToken: ((token: number, logprob: number) => void) | undefined
  settled: boolean
  /** The episode asked to stop: the row ends "aborted" at its next token. */
  cancelled: boolean
  /** The episode ended while this request ran: its keys and values must not be cached. */
  forgotten: boolean
  /** When the request last got a token (or, while queued, when the scheduler last completed a step). */
  progressAt: number
  state: "queued" | "admitted" | "running"
}

/**
 * How a request's tokens are chosen: drawn by the graph's sampling head with `uniform`'s numbers (plain
 * temperature sampling, see plainTemperature), or by `sampler` in JavaScript from the fetched logits and
 * probabilities. Exactly one of the two is defined.
 */
interface RowSampling {
  readonly uniform: (() => number) | undefined
  readonly sampler: Sampler | undefined
  /** The temperature the graph's sampling head divides this row's logits by (1 for a replay). */
  readonly temperature: number
  /** The JavaScript sampler reads the logits, not only the head's probabilities (all but plain temperature sampling). */
  readonly readsLogits: boolean
}

interface Row extends RowSampling {
  readonly ticket: Ticket
  /** Tokens whose keys and values the actor holds for this row. */
  readonly fed: Array<number>
  /** To run through the model at the next step: sampled, or the next of the context's tokens being fed (-1 once the turn is over). */
  next: number
  /** Context tokens still to feed after `next`, one per decode step, before the row samples (see feedMaxTokens). */
  readonly feed: ReadonlyArray<number>
  /** How many of `feed` have gone into `next`. */
  fedFrom: number
  readonly tokenIds: Array<number>
  readonly logprobs: Array<number>
  readonly versions: Array<number>
  /** Where `fed`'s keys and values are while the row waits for a slot; undefined once it sits in the batch. */
  pending: Prefilled | undefined
  /** The cache entry the turn was admitted with: the turn's end appends to it (see #extract). */
  readonly entry: CachedSequence | undefined
}

/** A prefilled row's keys and values: its cached part, then its new positions in the prefill's outputs. */
interface Prefilled {
  readonly cached: CachedSequence | undefined
  readonly newKeys: ReadonlyArray<Float32Array>
  readonly newValues: ReadonlyArray<Float32Array>
  /** The row's index in the prefill batch, that batch's new length, and this row's new tokens. */
  readonly index: number
  readonly newLength: number
  readonly fresh: number
  /** Where the row's new positions start in the batch's new part: newLength - fresh (left layout) or 0 (right). */
  readonly offset: number
}

/** One row of a prefill batch: keys and values it already has, and the tokens to run. */
interface PrefillItem {
  readonly cached: CachedSequence | undefined
  readonly fresh: ReadonlyArray<number>
  /** How the row's first token is chosen; undefined when the prefill only recomputes keys and values. */
  readonly sampling: RowSampling | undefined
}

/** A decode step's inputs and outputs, reused from step to step while the batch keeps its shape. */
interface DecodeBuffers {
  readonly batch: number
  readonly capacity: number
  readonly inputIds: BigInt64Array
  readonly positionIds: BigInt64Array
  /** inputIds and positionIds as 32-bit words, low word first (see int64Words). */
  readonly inputWords: Int32Array
  readonly positionWords: Int32Array
  readonly attentionMask: BigInt64Array
  /** The sampling head's temperature per slot. */
  readonly temperatures: Float32Array
  /** The uniform number per slot the head draws with (see RowSampling). */
  readonly uniforms: Float32Array
  /** The sampling head's column per slot: 0, the step's only one. */
  readonly sampleColumns: Int32Array
}

/**
 * An int64 array's 32-bit words: writing a small non-negative number n as its low word (index 2i + LOW) and
 * 0 as its high word (2i + HIGH) sets element i to n without making a BigInt.
 */
const int64Words = (array: BigInt64Array): Int32Array => new Int32Array(array.buffer, array.byteOffset, array.length * 2)
const LOW = new Uint8Array(Uint16Array.of(1).buffer)[0] === 1 ? 0 : 1
const HIGH = 1 - LOW

/**
 * Address space a growing buffer reserves: it then grows in place, and only the pages it gains are new. A
 * fresh buffer for each size would fault in every page again, which costs far more than the copies into it.
 */
const RESERVED_BYTES = 2 ** 36

/** `buffer`, grown in place when needed to hold at least `floats` float32s; a new one when it cannot grow that far. */
const grown = (buffer: ArrayBuffer | undefined, floats: number): ArrayBuffer => {
  const bytes = floats * 4
  if (buffer !== undefined && buffer.byteLength >= bytes) return buffer
  if (buffer !== undefined && buffer.resizable && buffer.maxByteLength >= bytes) {
    buffer.resize(bytes)
    return buffer
  }
  try {
    return new ArrayBuffer(bytes, { maxByteLength: Math.max(bytes, RESERVED_BYTES) })
  } catch {
    // Address space is limited here (ulimit -v): a plain buffer with room to grow, as before.
    return new ArrayBuffer(Math.ceil(floats * 1.25) * 4)
  }
}

const isPrefix = (prefix: ReadonlyArray<number>, of: ReadonlyArray<number>): boolean =>
  prefix.length <= of.length && prefix.every((token, i) => of[i] === token)

/** A logical column's place in a ring of `capacity` columns. */
const ringColumn = (column: number, capacity: number): number => ((column % capacity) + capacity) % capacity

/**
 * Copies `count` columns of head_dim numbers from `source` (from index `from`) into the ring of `capacity`
 * columns that starts at column `base` of `ring`, from logical column `start` on: in two pieces when they wrap.
 */
const toRing = (ring: Float32Array, base: number, capacity: number, start: number, count: number, source: Float32Array, from: number, headDim: number): void => {
  const first = ringColumn(start, capacity)
  const head = Math.min(count, capacity - first)
  ring.set(source.subarray(from, from + head * headDim), (base + first) * headDim)
  if (head < count) ring.set(source.subarray(from + head * headDim, from + count * headDim), base * headDim)
}

/** Copies `count` columns out of a ring (see toRing), in logical order, into `target` from index `to`. */
const fromRing = (ring: Float32Array, base: number, capacity: number, start: number, count: number, target: Float32Array, to: number, headDim: number): void => {
  const first = ringColumn(start, capacity)
  const head = Math.min(count, capacity - first)
  target.set(ring.subarray((base + first) * headDim, (base + first + head) * headDim), to)
  if (head < count) target.set(ring.subarray(base * headDim, (base + count - head) * headDim), to + head * headDim)
}

/** Columns of free room the batch gets beyond its longest row when laid out: rows grow by one column per decode step. */
const HEADROOM = 32

export class BatchScheduler {
  readonly #model: OnnxCausalLM
  readonly #options: SchedulerOptions
  readonly #stallTimeoutMs: number
  readonly #feedMaxTokens: number
  /** Turns may join with their new tokens fed through decode steps (feedMaxTokens > 0, ring layout only). */
  readonly #feeding: boolean
  readonly #cache: KvCacheStore
  /** Every request accepted and not yet settled, wherever it is. */
  readonly #tickets = new Set<Ticket>()
  readonly #waiting: Array<Ticket> = []
  /**
   * The decode batch's slots. A running row keeps its slot until its turn ends; a free slot (undefined)
   * waits for the next joiner. Keys and values live in actor-owned buffers of per layer
   * [slots, kvHeads, capacity, headDim]: every row ends at the logical column `#length` (a row of n takes
   * columns #length - n .. #length - 1, each modulo the capacity), and each decode step writes the new
   * position's key and value at column `#length % #capacity`, so every row is shorter than `#capacity`
   * before every step. A step copies one column, and rows joining or leaving copy only themselves.
   */
  #slots: Array<Row | undefined> = []
  /** Rows start at column 0 and end at their own length (right layout) rather than ending at `#length` (left). */
  readonly #right: boolean
  /**
   * The left layout's columns go round as a ring. Not in the right layout, whose rows must start at column 0,
   * nor where rows run one forward pass each: those pass a row's columns in buffer order, and a graph that
   * quantizes its activations, or counts positions by column, would see a wrapped row differently. Without
   * the ring `#length < #capacity` holds before every step, and the batch is laid out again when it fills.
   */
  readonly #ring: boolean
  #keys: Array<Float32Array> = []
  #values: Array<Float32Array> = []
  #length = 0
  #capacity = 0
  /** The memory of `#keys` and `#values` (per layer keys then values), and the one the next layout goes into. */
  #layoutBuffer: ArrayBuffer | undefined
  #spare: ArrayBuffer | undefined
  /** The memory of a prefill's past, kept between prefills. */
  #pastScratch: ArrayBuffer | undefined
  /** The decode step's buffers for the current layout's shape. */
  #decodeIo: DecodeBuffers | undefined
  /** Decode steps since requests were last admitted. */
  #stepsSinceAdmission = 0
  #loop: Promise<void> | undefined
  #watchdog: ReturnType<typeof setInterval> | undefined
  /** Tokens each episode's earlier turns put into its context (for counting new tokens). */
  readonly #seen = new Map<string, number>()
  #closed = false
  /** When the loop last stopped (or the scheduler was made): the start of the idle stretch, if no loop runs. */
  #idleSince = performance.now()
  #version = 0
  #staged: { readonly bytes: Uint8Array; readonly version: number; readonly done: () => void; readonly fail: (e: Error) => void } | undefined
  readonly stats: SchedulerStats = {
    requests: 0, fedRequests: 0, prefillSteps: 0, decodeSteps: 0, decodeRows: 0, prefillTokens: 0, newTokens: 0,
    generatedTokens: 0, prefillMs: 0, decodeMs: 0, copyMs: 0, sampleMs: 0, idleMs: 0, evictions: 0, recomputedTokens: 0, stalled: 0, failures: 0
  }

  constructor(model: OnnxCausalLM, options: SchedulerOptions) {
    this.#model = model
    this.#right = model.layout === "right"
    this.#ring = !this.#right && model.rowsAlone === undefined
    this.#options = options
    this.#stallTimeoutMs = options.stallTimeoutMs ?? 60_000
    this.#feedMaxTokens = options.feedMaxTokens ?? 0
    this.#feeding = this.#ring && this.#feedMaxTokens > 0
    this.#cache = new KvCacheStore(options.cacheBudgetBytes, model.shape)
  }

  get running(): number {
    return this.#live().length
  }

  get queued(): number {
    return this.#waiting.length
  }

  /** Requests accepted and not yet settled. */
  get inFlight(): number {
    return this.#tickets.size
  }

  get version(): number {
    return this.#version
  }

  /** `onToken` sees each of the request's tokens as it is sampled; the result still holds them all. */
  generate(request: SchedulerRequest, onToken?: (token: number, logprob: number) => void): Promise<SchedulerResult> {
    if (this.#closed) return Promise.reject(new SchedulerError("the inference actor is closed"))
    const problem = this.#validate(request)
    if (problem !== undefined) return Promise.reject(new SchedulerError(`episode ${request.episodeId}: ${problem}`))
    return new Promise((resolve, reject) => {
      const ticket: Ticket = { request, resolve, reject, onToken, settled: false, cancelled: false, forgotten: false, progressAt: performance.now(), state: "queued" }
      this.#tickets.add(ticket)
      this.#waiting.push(ticket)
      this.#watch()
      this.#start()
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
    this.#failAll(new SchedulerError("the inference actor closed"))
    this.#staged?.fail(new SchedulerError("the inference actor closed"))
    this.#staged = undefined
  }

  /** Ends the episode's request in flight with finish reason "aborted" (its episode was interrupted or timed out). */
  cancel(episodeId: string): void {
    for (const ticket of this.#tickets) {
      if (ticket.request.episodeId !== episodeId) continue
      const queued = this.#waiting.indexOf(ticket)
      if (queued >= 0) {
        this.#waiting.splice(queued, 1)
        this.#settle(ticket, this.#abortedEmpty())
      } else {
        // Admitted or running: the row ends at its next token, wherever it is then.
        ticket.cancelled = true
      }
    }
  }

  /** The result of a request that ends before it has a token. */
  #abortedEmpty(): SchedulerResult {
    return { tokenIds: [], logprobs: [], finishReason: "aborted", policyVersion: this.#version, policyVersions: [] }
  }

  /** Drops an episode's cached keys and values (the episode ended), and any its running request would leave. */
  forget(episodeId: string): void {
    this.#cache.delete(episodeId)
    this.#seen.delete(episodeId)
    for (const ticket of this.#tickets) if (ticket.request.episodeId === episodeId) ticket.forgotten = true
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

  #settle(ticket: Ticket, outcome: SchedulerResult | Error): void {
    if (ticket.settled) return
    ticket.settled = true
    this.#tickets.delete(ticket)
    if (outcome instanceof Error) ticket.reject(outcome)
    else ticket.resolve(outcome)
    if (this.#tickets.size === 0) this.#unwatch()
  }

  /** Fails every request held (queued, admitted or running) and drops all state built from the model. */
  #failAll(error: Error): void {
    this.#waiting.splice(0)
    for (const ticket of [...this.#tickets]) this.#settle(ticket, error)
    this.#clearBatch()
    this.#cache.clear()
  }

  /** The counters, with the idle stretch in progress counted. */
  statsNow(): SchedulerStats {
    return { ...this.stats, idleMs: this.stats.idleMs + (this.#loop === undefined ? performance.now() - this.#idleSince : 0) }
  }

  #start(): void {
    if (this.#loop === undefined) this.stats.idleMs += performance.now() - this.#idleSince
    this.#loop ??= this.#run()
      .catch((cause) => {
        // Whatever failed, no request it held may be left waiting: fail them all and start clean.
        if (!this.#closed) this.stats.failures += 1
        this.#failAll(new SchedulerError(this.#closed ? "the inference actor closed" : `inference failed: ${errorText(cause)}`))
      })
      .finally(() => {
        this.#loop = undefined
        this.#idleSince = performance.now()
        // Requests that arrived while the loop was winding down.
        if (!this.#closed && (this.#waiting.length > 0 || this.#staged !== undefined)) this.#start()
      })
  }

  #watch(): void {
    if (this.#watchdog !== undefined) return
    this.#watchdog = setInterval(() => this.#checkStalls(), Math.max(10, Math.min(1_000, this.#stallTimeoutMs / 4)))
    this.#watchdog.unref?.()
  }

  #unwatch(): void {
    if (this.#watchdog !== undefined) clearInterval(this.#watchdog)
    this.#watchdog = undefined
  }

  #checkStalls(): void {
    const now = performance.now()
    for (const ticket of [...this.#tickets]) {
      const idle = now - ticket.progressAt
      if (idle <= this.#stallTimeoutMs) continue
      this.stats.stalled += 1
      const queued = this.#waiting.indexOf(ticket)
      if (queued >= 0) this.#waiting.splice(queued, 1)
      // A row in the batch leaves at its next token without caching anything.
      ticket.cancelled = true
      this.#settle(ticket, new SchedulerError(
        `episode ${ticket.request.episodeId}: no progress for ${Math.round(idle)} ms while ${ticket.state} ` +
          `(${this.#live().length} running, ${this.#waiting.length} queued${this.#loop === undefined ? ", no step running" : ""})`
      ))
    }
  }

  async #run(): Promise<void> {
    while (this.#waiting.length > 0 || this.#live().length > 0 || this.#staged !== undefined) {
      if (this.#closed) throw new Error("the inference actor closed")
      if (this.#staged !== undefined) await this.#swapWeights()
      if (this.#shouldAdmit()) this.#place(await this.#admit())
      this.#compact()
      if (this.#live().length > 0) await this.#decode()
    }
    this.#clearBatch()
  }

  /**
   * A prefill pass costs a call into the model, so requests that need one are admitted in groups: when
   * maxBatchSize/8 of them wait (or all the room there is), when nothing runs, or after 4 decode steps at most.
   */
  #prefillDue(room: number): boolean {
    const group = Math.min(room, Math.max(1, Math.floor(this.#options.maxBatchSize / 8)))
    return this.#live().length === 0 || this.#waiting.length >= group || this.#stepsSinceAdmission >= 4
  }

  /**
   * Whether to go through the queue before this step: there is room, and a prefill is due or turns may join
   * without one. With feeding off, a step with no prefill due leaves the queue alone.
   */
  #shouldAdmit(): boolean {
    const room = this.#options.maxBatchSize - this.#live().length
    return this.#waiting.length > 0 && room > 0 && (this.#feeding || this.#prefillDue(room))
  }

  /**
   * Whether a cache entry can serve a context: it was computed by the weights now loaded and is a strict
   * prefix of the context (at least one token must run to give logits).
   */
  #usable(cached: CachedSequence | undefined, context: ReadonlyArray<number>): boolean {
    return cached !== undefined && cached.version === this.#version && cached.tokens.length < context.length && isPrefix(cached.tokens, context)
  }

  /**
   * Whether a waiting request can join the decode batch with no prefill: its episode's cache serves it and
   * leaves at most feedMaxTokens new tokens, which then run one per decode step, as a prefill would run them
   * but with no pass of its own and no copy of the cache into a prefill's past. Ring layout only.
   */
  #feedable(ticket: Ticket): boolean {
    const context = ticket.request.contextIds
    const cached = this.#cache.peek(ticket.request.episodeId)
    return this.#feeding && cached !== undefined && context.length - cached.tokens.length <= this.#feedMaxTokens && this.#usable(cached, context)
  }

  #live(): Array<Row> {
    return this.#slots.filter((row): row is Row => row !== undefined)
  }

  #clearBatch(): void {
    // Nothing runs: the layout's and the prefills' memory goes back (a batch of other sizes may come next).
    this.#layoutBuffer = undefined
    this.#spare = undefined
    this.#pastScratch = undefined
    this.#slots = []
    this.#keys = []
    this.#values = []
    this.#length = 0
    this.#capacity = 0
  }

  /**
   * The decode step's input buffers for a batch of `batch` slots and `capacity` columns, kept
   * while the layout keeps its shape (a decode step then allocates nothing the size of the batch).
   */
  #decodeBuffers(batch: number, capacity: number): DecodeBuffers {
    const kept = this.#decodeIo
    if (kept !== undefined && kept.batch === batch && kept.capacity === capacity) return kept
    const inputIds = new BigInt64Array(batch)
    const positionIds = new BigInt64Array(batch)
    const io: DecodeBuffers = {
      batch, capacity, inputIds, positionIds,
      inputWords: int64Words(inputIds),
      positionWords: int64Words(positionIds),
      attentionMask: new BigInt64Array(batch * (capacity + 1)),
      temperatures: new Float32Array(batch),
      uniforms: new Float32Array(batch),
      sampleColumns: new Int32Array(batch)
    }
    this.#decodeIo = io
    return io
  }

  /** The scheduler is alive: requests still queued count that as progress. */
  #stepDone(): void {
    const now = performance.now()
    for (const ticket of this.#waiting) ticket.progressAt = now
  }

  /**
   * New weights between two steps. Keys and values computed by the old weights are useless to the new
   * ones: running rows run their tokens again under the new weights (their next token, already sampled
   * under the old ones, keeps its version), and the episode caches are emptied.
   */
  async #swapWeights(): Promise<void> {
    const staged = this.#staged!
    this.#staged = undefined
    try {
      await this.#model.reload(staged.bytes)
    } catch (cause) {
      staged.fail(new SchedulerError(`weights version ${staged.version} could not be loaded: ${errorText(cause)}`))
      return
    }
    this.#version = staged.version
    this.#cache.clear()
    staged.done()
    const rows = this.#live()
    if (rows.length === 0) return this.#clearBatch()
    for (const group of this.#prefillGroups(rows.map((row) => row.fed.length))) {
      const members = group.map((i) => rows[i]!)
      const { out, newLength } = await this.#prefillForward(members.map((row) => ({ cached: undefined, fresh: row.fed, sampling: undefined })))
      members.forEach((row, b) => {
        row.pending = { cached: undefined, newKeys: out.newKeys, newValues: out.newValues, index: b, newLength, fresh: row.fed.length, offset: this.#offset(newLength, row.fed.length) }
        this.stats.recomputedTokens += row.fed.length
      })
    }
    this.#slots = []
    this.#rebuild(rows)
    this.#stepDone()
  }

  /** Splits rows (by their token counts) into prefill batches of at most maxPrefillTokens padded tokens. */
  #prefillGroups(lengths: ReadonlyArray<number>): Array<Array<number>> {
    const groups: Array<Array<number>> = []
    let current: Array<number> = []
    let longest = 0
    lengths.forEach((length, i) => {
      const wider = Math.max(longest, length)
      if (current.length > 0 && wider * (current.length + 1) > this.#options.maxPrefillTokens) {
        groups.push(current)
        current = []
        longest = 0
      }
      current.push(i)
      longest = Math.max(longest, length)
    })
    if (current.length > 0) groups.push(current)
    return groups
  }

  async #forward(kind: "prefill" | "decode", inputs: ForwardInputs): Promise<ForwardOutputs> {
    const started = performance.now()
    const out = await this.#model.forward(inputs)
    this.stats[kind === "prefill" ? "prefillMs" : "decodeMs"] += performance.now() - started
    // Outputs of the wrong size would be copied into the wrong places (or silently clipped): refuse them.
    const { numLayers, kvHeads, headDim, vocabSize } = this.#model.shape
    const { batch, sequenceLength } = inputs
    const expect = (what: string, actual: number | undefined, expected: number) => {
      if (actual !== expected) throw new SchedulerError(`the model's ${kind} returned ${actual ?? "no"} numbers of ${what}, expected ${expected}`)
    }
    expect("logits", out.logits.length, inputs.fetch?.logits === false ? 0 : batch * sequenceLength * vocabSize)
    expect("probabilities", out.probs.length, inputs.fetch?.probs === false ? 0 : batch * vocabSize)
    for (let layer = 0; layer < numLayers; layer++) {
      expect(`layer ${layer}'s new keys`, out.newKeys[layer]?.length, batch * kvHeads * sequenceLength * headDim)
      expect(`layer ${layer}'s new values`, out.newValues[layer]?.length, batch * kvHeads * sequenceLength * headDim)
    }
    return out
  }

  /** Where a row of `fresh` new tokens starts in a prefill's new part of `newLength` columns. */
  #offset(newLength: number, fresh: number): number {
    return this.#right ? 0 : newLength - fresh
  }

  /**
   * One batched prefill. Each row: its cached part left-padded to the longest cache, then its new part
   * left-padded to the longest new part. Real positions may have a gap between the two; the mask and
   * position ids say which. In the right layout both parts are right-padded instead (each starts at its
   * part's first column).
   */
  async #prefillForward(items: ReadonlyArray<PrefillItem>): Promise<{ out: ForwardOutputs; newLength: number }> {
    const { numLayers, kvHeads, headDim } = this.#model.shape
    const batch = items.length
    const newLength = Math.max(...items.map((item) => item.fresh.length))
    const pastLength = Math.max(0, ...items.map((item) => item.cached?.tokens.length ?? 0))
    const total = pastLength + newLength
    const copyStarted = performance.now()
    // The past is read only during the forward pass: it lives in scratch buffers kept between prefills.
    // What a previous prefill left where no row's cache lands stays: those columns are masked, and every
    // number there is a finite key or value (attention weighs a masked key by exactly 0).
    const pastSize = batch * kvHeads * pastLength * headDim
    this.#pastScratch = grown(this.#pastScratch, 2 * numLayers * pastSize)
    const scratch = this.#pastScratch
    const pastKeys = Array.from({ length: numLayers }, (_, layer) => new Float32Array(scratch, 2 * layer * pastSize * 4, pastSize))
    const pastValues = Array.from({ length: numLayers }, (_, layer) => new Float32Array(scratch, (2 * layer + 1) * pastSize * 4, pastSize))
    const inputIds = new BigInt64Array(batch * newLength)
    const positionIds = new BigInt64Array(batch * newLength)
    const attentionMask = new BigInt64Array(batch * total)
    const sampleColumns = new Int32Array(batch)
    const temperatures = Float32Array.from(items, (item) => item.sampling?.temperature ?? 1)
    const uniforms = Float32Array.from(items, (item) => item.sampling?.uniform?.() ?? 0)
    items.forEach(({ cached, fresh }, b) => {
      const past = cached?.tokens.length ?? 0
      if (cached !== undefined) {
        for (let layer = 0; layer < numLayers; layer++) {
          for (let h = 0; h < kvHeads; h++) {
            const to = ((b * kvHeads + h) * pastLength + (this.#right ? 0 : pastLength - past)) * headDim
            forEachRun(cached.blocks, 0, past, (block, column, done, length) => {
              const keys = blockIndex(this.#model.shape, layer, 0, h, column)
              const values = blockIndex(this.#model.shape, layer, 1, h, column)
              pastKeys[layer]!.set(block.subarray(keys, keys + length * headDim), to + done * headDim)
              pastValues[layer]!.set(block.subarray(values, values + length * headDim), to + done * headDim)
            })
          }
        }
      }
      const pastStart = this.#right ? 0 : pastLength - past
      const freshStart = this.#offset(newLength, fresh.length)
      sampleColumns[b] = freshStart + fresh.length - 1
      attentionMask.fill(1n, b * total + pastStart, b * total + pastStart + past)
      attentionMask.fill(1n, b * total + pastLength + freshStart, b * total + pastLength + freshStart + fresh.length)
      fresh.forEach((token, i) => {
        const at = b * newLength + freshStart + i
        inputIds[at] = BigInt(token)
        positionIds[at] = BigInt(past + i)
      })
    })
    this.stats.copyMs += performance.now() - copyStarted
    const fetch = this.#fetchFor(items.flatMap((item) => (item.sampling === undefined ? [] : [item.sampling])))
    const out = await this.#forward("prefill", { batch, sequenceLength: newLength, pastLength, inputIds, positionIds, attentionMask, pastKeys, pastValues, sampleColumns, temperatures, uniforms, fetch })
    this.stats.prefillSteps += 1
    return { out, newLength }
  }

  /**
   * Admits waiting requests while there is room: feedable ones (see #feedable) at once, with no prefill; the
   * others with one batched prefill when one is due. Returns the rows that joined (some may already be finished).
   */
  async #admit(): Promise<Array<Row>> {
    const { vocabSize } = this.#model.shape
    const room = this.#options.maxBatchSize - this.#live().length
    let prefilling = this.#prefillDue(room)
    const fed: Array<Row> = []
    const admitted: Array<{ ticket: Ticket } & PrefillItem> = []
    const staying: Array<Ticket> = []
    let longestNew = 0
    for (const ticket of this.#waiting) {
      if (fed.length + admitted.length >= room) {
        staying.push(ticket)
        continue
      }
      const context = ticket.request.contextIds
      if (this.#feedable(ticket)) {
        fed.push(this.#feedRow(ticket, this.#cache.take(ticket.request.episodeId)!))
        continue
      }
      if (!prefilling) {
        staying.push(ticket)
        continue
      }
      let cached = this.#cache.take(ticket.request.episodeId)
      if (cached !== undefined && !this.#usable(cached, context)) {
        this.#cache.recycle(cached)
        cached = undefined
      }
      const fresh = context.slice(cached?.tokens.length ?? 0)
      const longest = Math.max(longestNew, fresh.length)
      if (admitted.length > 0 && longest * (admitted.length + 1) > this.#options.maxPrefillTokens) {
        // The prefill is full: the rest wait for the next one (feedable ones may still join).
        if (cached !== undefined) this.#cache.put(ticket.request.episodeId, cached)
        prefilling = false
        staying.push(ticket)
        continue
      }
      ticket.state = "admitted"
      longestNew = longest
      admitted.push({ ticket, cached, fresh, sampling: this.#samplingOf(ticket.request) })
    }
    this.#waiting.splice(0, this.#waiting.length, ...staying)
    if (admitted.length === 0) return fed
    this.#stepsSinceAdmission = 0
    const prefilled = await this.#prefillAll(admitted)
    this.#stepDone()
    return fed.concat(admitted.map(({ ticket, cached, fresh, sampling }, i) => {
      const { out, newLength, index: b } = prefilled[i]!
      const request = ticket.request
      this.#count(request, fresh.length)
      const row: Row = {
        ticket,
        ...sampling!,
        fed: [...request.contextIds],
        next: -1,
        feed: [],
        fedFrom: 0,
        tokenIds: [],
        logprobs: [],
        versions: [],
        entry: cached,
        pending: { cached, newKeys: out.newKeys, newValues: out.newValues, index: b, newLength, fresh: fresh.length, offset: this.#offset(newLength, fresh.length) }
      }
      ticket.state = "running"
      const last = (b * newLength + this.#offset(newLength, fresh.length) + fresh.length - 1) * vocabSize
      this.#accept(row, out.logits.subarray(last, last + vocabSize), out.probs.subarray(b * vocabSize, (b + 1) * vocabSize), drawAt(out, b))
      return row
    }))
  }

  /** How a request's tokens are chosen (see RowSampling). */
  #samplingOf(request: SchedulerRequest): RowSampling {
    const plain = plainTemperature(request)
    const inGraph = plain && this.#model.drawsInGraph
    return {
      uniform: inGraph ? makeUniforms(request.seed) : undefined,
      sampler: inGraph ? undefined : makeSampler(request, request.seed),
      temperature: rowTemperature(request),
      readsLogits: !plain
    }
  }

  /** The vocabulary-wide outputs a forward pass fetches for the rows that sample after it: only what their samplers read. */
  #fetchFor(sampling: ReadonlyArray<RowSampling>): { readonly logits: boolean; readonly probs: boolean } {
    let logits = this.#options.onLogits !== undefined
    let probs = false
    for (const row of sampling) {
      if (row.sampler === undefined) continue
      probs = true
      if (row.readsLogits) logits = true
    }
    return { logits, probs }
  }

  /** Counts an admitted request: `fresh` of its context's tokens will run through the model. */
  #count(request: SchedulerRequest, fresh: number): void {
    this.stats.requests += 1
    this.stats.prefillTokens += fresh
    this.stats.newTokens += request.contextIds.length - (this.#seen.get(request.episodeId) ?? 0)
  }

  /**
   * A feedable request as a row that holds only its cached part: its first new token runs at the next
   * decode step, the others at the steps after, and it samples once the last has run.
   */
  #feedRow(ticket: Ticket, cached: CachedSequence): Row {
    const request = ticket.request
    const fresh = request.contextIds.slice(cached.tokens.length)
    this.#count(request, fresh.length)
    this.stats.fedRequests += 1
    ticket.state = "running"
    return {
      ticket,
      ...this.#samplingOf(request),
      fed: [...cached.tokens],
      next: fresh[0]!,
      feed: fresh,
      fedFrom: 1,
      tokenIds: [],
      logprobs: [],
      versions: [],
      entry: cached,
      pending: { cached, newKeys: [], newValues: [], index: 0, newLength: 0, fresh: 0, offset: 0 }
    }
  }

  /**
   * The prefill of admitted rows: one batch, or where a batched prefill cannot continue a cache (the right
   * layout), the rows without a cache in one batch and each row with one alone. Per row: its outputs and
   * its index in them.
   */
  async #prefillAll(items: ReadonlyArray<PrefillItem>): Promise<Array<{ out: ForwardOutputs; newLength: number; index: number }>> {
    const groups = this.#model.batchedContinuation
      ? [items.map((_, i) => i)]
      : [items.flatMap((item, i) => (item.cached === undefined ? [i] : [])), ...items.flatMap((item, i) => (item.cached === undefined ? [] : [[i]]))].filter((g) => g.length > 0)
    const result: Array<{ out: ForwardOutputs; newLength: number; index: number }> = []
    for (const group of groups) {
      const { out, newLength } = await this.#prefillForward(group.map((i) => items[i]!))
      group.forEach((i, index) => (result[i] = { out, newLength, index }))
    }
    return result
  }

  /** One decode step for every slot; free slots run a padding token that nothing reads. */
  async #decode(): Promise<void> {
    const { numLayers, kvHeads, headDim, vocabSize } = this.#model.shape
    const slots = this.#slots
    const batch = slots.length
    const capacity = this.#capacity
    const end = this.#length
    const column = end % capacity
    // The layout keeps a free column for this step; writing past it would corrupt the next head's keys (right
    // layout) or the row's own oldest column (left).
    if (!this.#ring && end >= capacity) throw new SchedulerError(`the decode batch is full (column ${end} of ${capacity}): a layout bug`)
    // The step's inputs live in buffers kept from step to step (the same shapes until the batch is
    // laid out again): a step allocates nothing the size of the batch.
    const io = this.#decodeBuffers(batch, capacity)
    const { inputIds, positionIds, attentionMask, temperatures, uniforms, sampleColumns } = io
    // Small non-negative int64s written as their low and high 32-bit words: no BigInt per row.
    const ids = io.inputWords
    const positions = io.positionWords
    const width = capacity + 1
    // The new token comes after all `capacity` columns; each row sees its own columns and the new token.
    attentionMask.fill(0n)
    // What the rows that sample after this step need (rows still feeding sample nothing).
    const sampling: Array<RowSampling> = []
    for (let b = 0; b < batch; b++) {
      const row = slots[b]
      ids[2 * b + HIGH] = 0
      positions[2 * b + HIGH] = 0
      if (row === undefined) {
        ids[2 * b + LOW] = 0
        positions[2 * b + LOW] = 0
        temperatures[b] = 1
        // GroupQueryAttention reads a row's length as its mask's sum minus one: a free slot must count one.
        if (this.#right) attentionMask[b * width + capacity] = 1n
        continue
      }
      const n = row.fed.length
      if (n >= capacity) throw new SchedulerError(`a row of ${n} in a decode batch of ${capacity} columns: a layout bug`)
      uniforms[b] = 0
      if (row.fedFrom >= row.feed.length) {
        sampling.push(row)
        if (row.uniform !== undefined) uniforms[b] = row.uniform()
      }
      ids[2 * b + LOW] = row.next
      positions[2 * b + LOW] = n
      temperatures[b] = row.temperature
      const start = ringColumn(this.#rowStart(n), capacity)
      const head = Math.min(n, capacity - start)
      attentionMask.fill(1n, b * width + start, b * width + start + head)
      if (head < n) attentionMask.fill(1n, b * width, b * width + n - head)
      attentionMask[b * width + capacity] = 1n
    }
    const out = await this.#forward("decode", {
      batch, sequenceLength: 1, pastLength: capacity, inputIds, positionIds, attentionMask,
      pastKeys: this.#keys, pastValues: this.#values, sampleColumns, temperatures, uniforms, fetch: this.#fetchFor(sampling)
    })
    this.stats.decodeSteps += 1
    this.#stepsSinceAdmission += 1
    // Every running row's new key and value go into the batch at column `column` (right layout: at the row's length).
    const started = performance.now()
    for (let layer = 0; layer < numLayers; layer++) {
      const keys = this.#keys[layer]!
      const values = this.#values[layer]!
      const newKeys = out.newKeys[layer]!
      const newValues = out.newValues[layer]!
      for (let b = 0; b < batch; b++) {
        const row = slots[b]
        if (row === undefined) continue
        const at = this.#right ? row.fed.length : column
        for (let h = 0; h < kvHeads; h++) {
          const to = ((b * kvHeads + h) * capacity + at) * headDim
          const from = (b * kvHeads + h) * headDim
          // A plain loop: head_dim numbers are too few to be worth a subarray and a set.
          for (let d = 0; d < headDim; d++) {
            keys[to + d] = newKeys[from + d]!
            values[to + d] = newValues[from + d]!
          }
        }
      }
    }
    this.#length = end + 1
    this.stats.copyMs += performance.now() - started
    slots.forEach((row, b) => {
      if (row === undefined) return
      this.stats.decodeRows += 1
      row.fed.push(row.next)
      if (row.fedFrom < row.feed.length) {
        // Still feeding the context: nothing to sample yet, unless the request was cancelled meanwhile.
        if (this.#feedNext(row)) slots[b] = undefined
      } else if (this.#accept(row, out.logits.subarray(b * vocabSize, (b + 1) * vocabSize), out.probs.subarray(b * vocabSize, (b + 1) * vocabSize), drawAt(out, b), b)) {
        slots[b] = undefined
      }
    })
    this.#stepDone()
    // Nothing left to decode: the buffer is stale, and the next joiners get a fresh one. Out of room: lay
    // the batch out again with fresh headroom.
    if (this.#live().length === 0) this.#clearBatch()
    else if (this.#full()) this.#rebuild([])
  }

  /**
   * Moves a fed row on to its next context token. A request cancelled (or failed by the watchdog) while its
   * context is fed leaves with no tokens: returns true.
   */
  #feedNext(row: Row): boolean {
    const ticket = row.ticket
    if (ticket.cancelled || ticket.settled) {
      this.#settle(ticket, this.#abortedEmpty())
      row.next = -1
      return true
    }
    row.next = row.feed[row.fedFrom++]!
    ticket.progressAt = performance.now()
    return false
  }

  /**
   * Samples the row's next token from its logits and the sampling head's probabilities (`slot`: where the
   * row sits in the batch, if it does). If that ends the turn, caches the row's keys and values under its
   * episode, resolves the request and returns true.
   */
  #accept(row: Row, logits: Float32Array, probs: Float32Array, drawn: Sample | undefined, slot?: number): boolean {
    const ticket = row.ticket
    const request = ticket.request
    this.#options.onLogits?.(request.episodeId, logits)
    const replayed = request.replay?.[row.tokenIds.length]
    const sampleStarted = performance.now()
    const sample = replayed !== undefined
      ? { token: replayed, logprob: tokenLogprob(logits, probs, replayed) }
      : row.uniform !== undefined
      ? drawn!
      : row.sampler!(logits, probs)
    this.stats.sampleMs += performance.now() - sampleStarted
    row.tokenIds.push(sample.token)
    row.logprobs.push(sample.logprob)
    row.versions.push(this.#version)
    row.next = sample.token
    ticket.progressAt = performance.now()
    if (!ticket.settled) ticket.onToken?.(sample.token, sample.logprob)
    this.stats.generatedTokens += 1
    const finishReason = this.#finishReason(row, sample.token)
    if (finishReason === undefined) return false
    // An aborted or forgotten episode has no next turn: caching its keys would only leak them.
    if (finishReason !== "aborted" && !ticket.forgotten) {
      const copyStarted = performance.now()
      this.#cache.put(request.episodeId, slot === undefined ? this.#compactPending(row) : this.#extract(row, slot))
      this.stats.evictions = this.#cache.evictions
      this.stats.copyMs += performance.now() - copyStarted
      // The last sampled token was never run through the model: it is new to the next turn.
      this.#seen.set(request.episodeId, request.contextIds.length + row.tokenIds.length - 1)
    }
    this.#settle(ticket, { tokenIds: row.tokenIds, logprobs: row.logprobs, finishReason, policyVersion: row.versions[0]!, policyVersions: row.versions })
    row.next = -1
    row.pending = undefined
    return true
  }

  #finishReason(row: Row, token: number): SchedulerResult["finishReason"] | undefined {
    const request = row.ticket.request
    // Settled already: the watchdog failed it; the row just leaves.
    if (row.ticket.cancelled || row.ticket.settled) return "aborted"
    if (request.replay !== undefined) return row.tokenIds.length >= request.replay.length ? "length" : undefined
    if (request.stopTokenIds.includes(token)) return "eos"
    if (request.stop.length > 0 && this.#options.decode !== undefined && hasStop(this.#options.decode(row.tokenIds), request.stop)) return "stop"
    if (row.tokenIds.length >= request.maxNewTokens || row.fed.length + 1 >= this.#options.maxPositions) return "length"
    return undefined
  }

  /**
   * The keys and values of the row in `slot` as a cache entry. The entry the turn was admitted with already
   * holds the row's first positions, computed by the same weights: only the turn's new positions are copied,
   * into its last block and new ones (about a tenth of the context per turn here). Without such an entry the
   * whole row is copied into a new one.
   */
  #extract(row: Row, slot: number): CachedSequence {
    const shape = this.#model.shape
    const { numLayers, kvHeads, headDim } = shape
    const n = row.fed.length
    const { blocks, from } = this.#entryFor(row)
    const capacity = this.#capacity
    const start = this.#rowStart(n)
    for (let layer = 0; layer < numLayers; layer++) {
      for (let h = 0; h < kvHeads; h++) {
        const base = (slot * kvHeads + h) * capacity
        forEachRun(blocks, from, n - from, (block, column, done, length) => {
          fromRing(this.#keys[layer]!, base, capacity, start + from + done, length, block, blockIndex(shape, layer, 0, h, column), headDim)
          fromRing(this.#values[layer]!, base, capacity, start + from + done, length, block, blockIndex(shape, layer, 1, h, column), headDim)
        })
      }
    }
    return { tokens: row.fed, version: this.#version, blocks }
  }

  /**
   * The blocks a finished row's keys and values go into, grown to hold the row, and the first position not
   * already there: the entry the turn was admitted with when its weights are still loaded, else new blocks.
   */
  #entryFor(row: Row): { readonly blocks: Array<Float32Array>; readonly from: number } {
    const kept = row.entry
    if (kept !== undefined && kept.version === this.#version) {
      const blocks = kept.blocks as Array<Float32Array>
      this.#cache.grow(blocks, row.fed.length)
      return { blocks, from: kept.tokens.length }
    }
    // From weights no longer loaded: nothing reads it any more.
    if (kept !== undefined) this.#cache.recycle(kept)
    const blocks: Array<Float32Array> = []
    this.#cache.grow(blocks, row.fed.length)
    return { blocks, from: 0 }
  }

  /** The logical column where a row of `n` positions starts in the decode batch (left layout: modulo the capacity). */
  #rowStart(n: number, end = this.#length): number {
    return this.#right ? 0 : end - n
  }

  /** No free column for the next decode step: a row fills the whole ring, or (no ring) the end has reached the buffer's. */
  #full(): boolean {
    return this.#ring ? this.#slots.some((row) => row !== undefined && row.fed.length >= this.#capacity) : this.#length >= this.#capacity
  }

  /** Puts rows that joined (and have not already finished) into free slots, copying only their keys and values. */
  #place(joined: ReadonlyArray<Row>): void {
    const rows = joined.filter((row) => row.next >= 0)
    if (rows.length === 0) return
    const free = this.#slots.flatMap((row, b) => (row === undefined ? [b] : []))
    const longest = Math.max(...rows.map((row) => row.fed.length))
    // A fresh layout when no row runs (the buffer is stale), when there is no free slot, when a joiner does
    // not fit (it would fill the ring; with no ring, it is longer than the batch), or when the batch has no
    // free column left for the next step.
    const fits = this.#ring ? longest < this.#capacity : longest <= this.#length
    if (this.#live().length === 0 || free.length < rows.length || !fits || this.#full()) {
      this.#rebuild(rows)
      return
    }
    const started = performance.now()
    rows.forEach((row, i) => this.#write(row, free[i]!, this.#keys, this.#values, this.#capacity, this.#length))
    this.stats.copyMs += performance.now() - started
  }

  /** Copies a waiting row's keys and values into `slot` of the given buffers, ending at logical column `end`. */
  #write(row: Row, slot: number, keys: Array<Float32Array>, values: Array<Float32Array>, capacity: number, end: number): void {
    const { numLayers, kvHeads } = this.#model.shape
    for (let layer = 0; layer < numLayers; layer++) {
      for (let h = 0; h < kvHeads; h++) {
        this.#copyPending(row.pending!, layer, h, keys[layer]!, values[layer]!, (slot * kvHeads + h) * capacity, capacity, this.#rowStart(row.fed.length, end))
      }
    }
    row.pending = undefined
    this.#slots[slot] = row
  }

  /** A row that finished without joining the batch: its keys and values (cached part, then new part) as a cache entry. */
  #compactPending(row: Row): CachedSequence {
    const shape = this.#model.shape
    const { numLayers, kvHeads, headDim } = shape
    const source = row.pending!
    const { blocks, from } = this.#entryFor(row)
    const past = source.cached?.tokens.length ?? 0
    // The cached part is in place whenever the entry is the one admitted (it always is: rows that waited
    // through a weight swap were prefilled again, without a cache).
    if (from !== past) throw new SchedulerError(`a finished row's cache holds ${from} positions, its prefill continued ${past}: a layout bug`)
    for (let layer = 0; layer < numLayers; layer++) {
      for (let h = 0; h < kvHeads; h++) {
        const first = ((source.index * kvHeads + h) * source.newLength + source.offset) * headDim
        forEachRun(blocks, past, source.fresh, (block, column, done, length) => {
          const at = first + done * headDim
          block.set(source.newKeys[layer]!.subarray(at, at + length * headDim), blockIndex(shape, layer, 0, h, column))
          block.set(source.newValues[layer]!.subarray(at, at + length * headDim), blockIndex(shape, layer, 1, h, column))
        })
      }
    }
    return { tokens: row.fed, version: this.#version, blocks }
  }

  /**
   * Copies one head of one layer of a prefilled row (cached part, then new part) into the ring of `capacity`
   * columns that starts at column `base` (in head_dim units), from logical column `start` on.
   */
  #copyPending(source: Prefilled, layer: number, h: number, keys: Float32Array, values: Float32Array, base: number, capacity: number, start: number): void {
    const { kvHeads, headDim } = this.#model.shape
    const past = source.cached?.tokens.length ?? 0
    if (source.cached !== undefined) {
      forEachRun(source.cached.blocks, 0, past, (block, column, done, length) => {
        toRing(keys, base, capacity, start + done, length, block, blockIndex(this.#model.shape, layer, 0, h, column), headDim)
        toRing(values, base, capacity, start + done, length, block, blockIndex(this.#model.shape, layer, 1, h, column), headDim)
      })
    }
    // A fed row (see #feedRow) has only its cached part.
    if (source.fresh === 0) return
    const from = ((source.index * kvHeads + h) * source.newLength + source.offset) * headDim
    toRing(keys, base, capacity, start + past, source.fresh, source.newKeys[layer]!, from, headDim)
    toRing(values, base, capacity, start + past, source.fresh, source.newValues[layer]!, from, headDim)
  }

  /**
   * Shrinks the batch when it carries much more padding than rows: long rows may have left, and free
   * slots still cost compute when nothing waits to fill them.
   */
  #compact(): void {
    const live = this.#live()
    if (live.length === 0) return this.#clearBatch()
    const longest = Math.max(...live.map((row) => row.fed.length))
    const tooLong = (this.#ring ? this.#capacity : this.#length) > longest + 2 * HEADROOM
    const tooWide = this.#waiting.length === 0 && live.length <= this.#slots.length / 2
    if (tooLong || tooWide) this.#rebuild([])
  }

  /** Lays out the decode batch afresh: the running rows, then `joining`, left-padded to the longest, with headroom. */
  #rebuild(joining: ReadonlyArray<Row>): void {
    const started = performance.now()
    const { numLayers, kvHeads, headDim } = this.#model.shape
    const staying = this.#live()
    const count = staying.length + joining.length
    // Room for those still waiting, so that they can join without another rebuild.
    const width = Math.max(count, Math.min(this.#options.maxBatchSize, count + this.#waiting.length))
    const length = Math.max(...staying.map((row) => row.fed.length), ...joining.map((row) => row.fed.length))
    // A row ends before its context reaches maxPositions, so there is always a column for the next step. In
    // the right layout a decode step's mask is capacity + 1 wide and GroupQueryAttention takes that width as
    // the total length, which its rotary cache must cover: one column less.
    const capacity = Math.min(length + HEADROOM, this.#options.maxPositions - (this.#right ? 1 : 0))
    if (capacity <= length) throw new SchedulerError(`no room to decode: rows of ${length} tokens in a model of ${this.#options.maxPositions} positions`)
    // The new layout goes into the spare buffer (the one the layout before last used); the current one
    // becomes the spare. Laying out again allocates nothing once the buffers have grown. What the spare held
    // is left where no row lands: those columns are masked, as a free slot's and a replaced row's already are
    // (attention weighs a masked key by exactly 0, and every number there is a finite key or value).
    const size = width * kvHeads * capacity * headDim
    const spare = grown(this.#spare, 2 * numLayers * size)
    const keys = Array.from({ length: numLayers }, (_, layer) => new Float32Array(spare, 2 * layer * size * 4, size))
    const values = Array.from({ length: numLayers }, (_, layer) => new Float32Array(spare, (2 * layer + 1) * size * 4, size))
    const oldSlots = this.#slots
    staying.forEach((row, b) => {
      const slot = oldSlots.indexOf(row)
      const n = row.fed.length
      for (let layer = 0; layer < numLayers; layer++) {
        for (let h = 0; h < kvHeads; h++) {
          const from = (slot * kvHeads + h) * this.#capacity
          const to = ((b * kvHeads + h) * capacity + this.#rowStart(n, length)) * headDim
          fromRing(this.#keys[layer]!, from, this.#capacity, this.#rowStart(n), n, keys[layer]!, to, headDim)
          fromRing(this.#values[layer]!, from, this.#capacity, this.#rowStart(n), n, values[layer]!, to, headDim)
        }
      }
    })
    this.#slots = [...staying, ...new Array<undefined>(width - staying.length)]
    joining.forEach((row, i) => this.#write(row, staying.length + i, keys, values, capacity, length))
    this.#spare = this.#layoutBuffer
    this.#layoutBuffer = spare
    this.#keys = keys
    this.#values = values
    this.#length = length
    this.#capacity = capacity
    this.stats.copyMs += performance.now() - started
  }
}

/** Row `b`'s draw by the graph's sampling head, when the graph draws. */
const drawAt = (out: ForwardOutputs, b: number): Sample | undefined =>
  out.draws === undefined ? undefined : { token: Number(out.draws.tokens[b]!), logprob: out.draws.logprobs[b]! }

const errorText = (cause: unknown): string => (cause instanceof Error ? cause.message : String(cause))

const hasStop = (text: string, stop: ReadonlyArray<string>): boolean => stop.some((s) => s.length > 0 && text.includes(s))

/** The sampling head's temperature for a request: a replay records the model's own log softmax(logits). */
const rowTemperature = (request: SchedulerRequest): number => (request.replay === undefined ? headTemperature(request) : 1)
