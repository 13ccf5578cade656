/**
 * Episodes' KV caches kept between turns, so that turn k prefills only its new tokens. Each entry holds the
 * tokens whose keys and values it stores, in blocks of BLOCK_COLUMNS positions, and the policy version of the
 * weights that computed them: keys from other weights are worthless to a query, so the scheduler empties the
 * store when weights change. Under a byte budget the least recently used entries go first; an evicted episode
 * is simply prefilled from scratch next time.
 *
 * Why blocks: an episode's context grows every turn, and an entry of one piece would have to be copied whole
 * into a larger one whenever the turn outgrew it. A block entry only gains blocks, and every block is the same
 * size, so the memory of dropped entries serves the next ones: new memory costs its page faults when first
 * written, about 30 times what copying into memory already touched costs (`npm run bench -- inference`:
 * most of the actor's copy time was that, before entries were made of blocks).
 */
export interface CachedSequence {
  /** The tokens whose keys and values are stored, in order. */
  readonly tokens: ReadonlyArray<number>
  /** The policy version whose weights computed these keys and values. */
  readonly version: number
  /**
   * Position p lives in block p / BLOCK_COLUMNS, column p % BLOCK_COLUMNS. A block holds, per layer, keys then
   * values, each [kv_heads, BLOCK_COLUMNS, head_dim] (see `blockIndex`).
   */
  readonly blocks: ReadonlyArray<Float32Array>
}

/** Positions per block: enough that a copy moves a few KB at a time, few enough that little goes unused. */
export const BLOCK_COLUMNS = 64

/** The shape of the keys and values a block holds. */
export interface KvShape {
  readonly numLayers: number
  readonly kvHeads: number
  readonly headDim: number
}

/** Float32s in one block. */
export const blockFloats = ({ numLayers, kvHeads, headDim }: KvShape): number => 2 * numLayers * kvHeads * BLOCK_COLUMNS * headDim

/** Where column `column` (< BLOCK_COLUMNS) of head `h` of layer `layer`'s keys (values: `kind` 1) starts in a block. */
export const blockIndex = (shape: KvShape, layer: number, kind: 0 | 1, h: number, column: number): number =>
  (((2 * layer + kind) * shape.kvHeads + h) * BLOCK_COLUMNS + column) * shape.headDim

/**
 * Calls `f` for each run of `count` positions from position `from` that lies in one block: the block, the
 * run's first column in it, how far into the run it is, and its length.
 */
export const forEachRun = (
  blocks: ReadonlyArray<Float32Array>,
  from: number,
  count: number,
  f: (block: Float32Array, column: number, done: number, length: number) => void
): void => {
  let done = 0
  while (done < count) {
    const position = from + done
    const column = position % BLOCK_COLUMNS
    const length = Math.min(count - done, BLOCK_COLUMNS - column)
    f(blocks[Math.floor(position / BLOCK_COLUMNS)]!, column, done, length)
    done += length
  }
}

export class KvCacheStore {
  // A Map iterates in insertion order: re-inserting on use keeps the least recently used first.
  readonly #entries = new Map<string, CachedSequence>()
  /** Blocks held by the stored entries. */
  #blocks = 0
  /** Blocks of dropped entries, for the next ones; they count against the budget with the entries'. */
  readonly #free: Array<Float32Array> = []
  evictions = 0

  readonly budgetBytes: number
  readonly #blockFloats: number

  constructor(budgetBytes: number, shape: KvShape) {
    this.budgetBytes = budgetBytes
    this.#blockFloats = blockFloats(shape)
  }

  get #budgetBlocks(): number {
    return Math.floor(this.budgetBytes / (this.#blockFloats * 4))
  }

  /** Takes the entry out (the episode is running again); `undefined` when never cached or evicted. */
  take(episodeId: string): CachedSequence | undefined {
    return this.#remove(episodeId)
  }

  /** The entry, left in place (its place in the eviction order unchanged). */
  peek(episodeId: string): CachedSequence | undefined {
    return this.#entries.get(episodeId)
  }

  put(episodeId: string, entry: CachedSequence): void {
    const replaced = this.#remove(episodeId)
    if (replaced !== undefined && replaced.blocks !== entry.blocks) this.recycle(replaced)
    this.#entries.set(episodeId, entry)
    this.#blocks += entry.blocks.length
    // Spare blocks go before any entry does.
    const over = this.#blocks + this.#free.length - this.#budgetBlocks
    if (over > 0) this.#free.length = Math.max(0, this.#free.length - over)
    for (const [id, oldest] of this.#entries) {
      if (this.#blocks <= this.#budgetBlocks || id === episodeId) break
      this.#entries.delete(id)
      this.#blocks -= oldest.blocks.length
      this.evictions += 1
    }
  }

  /** Adds blocks to `blocks` until they hold `positions` positions: dropped entries' blocks first, else new ones. */
  grow(blocks: Array<Float32Array>, positions: number): void {
    while (blocks.length * BLOCK_COLUMNS < positions) blocks.push(this.#free.pop() ?? new Float32Array(this.#blockFloats))
  }

  /**
   * Keeps the blocks of an entry nothing reads any more (outgrown, from old weights, or its episode ended)
   * for the next entries, while the budget has room. The caller must hold no other view of it: the next
   * entry overwrites it.
   */
  recycle(entry: CachedSequence): void {
    for (const block of entry.blocks) {
      if (this.#blocks + this.#free.length >= this.#budgetBlocks) return
      this.#free.push(block)
    }
  }

  /** Drops every entry (the weights that computed them are gone), keeping their blocks for the next ones. */
  clear(): void {
    const entries = [...this.#entries.values()]
    this.#entries.clear()
    this.#blocks = 0
    for (const entry of entries) this.recycle(entry)
  }

  get size(): number {
    return this.#entries.size
  }

  /** Drops an episode's entry (it ended), keeping its blocks for the next ones. */
  delete(episodeId: string): void {
    const entry = this.#remove(episodeId)
    if (entry !== undefined) this.recycle(entry)
  }

  #remove(episodeId: string): CachedSequence | undefined {
    const entry = this.#entries.get(episodeId)
    if (entry === undefined) return undefined
    this.#entries.delete(episodeId)
    this.#blocks -= entry.blocks.length
    return entry
  }
}
