/**
 * Episodes' KV caches kept between turns, so that turn k prefills only its new tokens. Each entry holds the
 * tokens whose keys and values it stores, per layer as [kv_heads, stride, head_dim], and the policy version
 * of the weights that computed them: keys from other weights are worthless to a query, so the scheduler
 * empties the store when weights change. Under a byte budget the least recently used entries go first; an
 * evicted episode is simply prefilled from scratch next time.
 */
export interface CachedSequence {
  /** The tokens whose keys and values are stored, in order. */
  readonly tokens: ReadonlyArray<number>
  /** The policy version whose weights computed these keys and values. */
  readonly version: number
  /**
   * Columns per head in `keys` and `values` (at least tokens.length): room for the episode's next turns to
   * append their positions without copying the context again.
   */
  readonly stride: number
  /** Per layer: keys then values, each [kv_heads, stride, head_dim], the first tokens.length columns of each head real. */
  readonly keys: ReadonlyArray<Float32Array>
  readonly values: ReadonlyArray<Float32Array>
}

/** The memory an entry holds: its buffers' bytes (one buffer may hold all its keys and values, with room to spare). */
const bytesOf = (entry: CachedSequence): number => {
  let sum = 0
  for (const buffer of new Set([...entry.keys, ...entry.values].map((array) => array.buffer))) sum += buffer.byteLength
  return sum
}

export class KvCacheStore {
  // A Map iterates in insertion order: re-inserting on use keeps the least recently used first.
  readonly #entries = new Map<string, CachedSequence>()
  #bytes = 0
  evictions = 0

  readonly budgetBytes: number

  constructor(budgetBytes: number) {
    this.budgetBytes = budgetBytes
  }

  /** Takes the entry out (the episode is running again); `undefined` when never cached or evicted. */
  take(episodeId: string): CachedSequence | undefined {
    const entry = this.#entries.get(episodeId)
    if (entry !== undefined) this.delete(episodeId)
    return entry
  }

  put(episodeId: string, entry: CachedSequence): void {
    this.delete(episodeId)
    this.#entries.set(episodeId, entry)
    this.#bytes += bytesOf(entry)
    for (const [id, oldest] of this.#entries) {
      if (this.#bytes <= this.budgetBytes || id === episodeId) break
      this.#entries.delete(id)
      this.#bytes -= bytesOf(oldest)
      this.evictions += 1
    }
  }

  /** Drops every entry (the weights that computed them are gone). */
  clear(): void {
    this.#entries.clear()
    this.#bytes = 0
  }

  get size(): number {
    return this.#entries.size
  }

  delete(episodeId: string): void {
    const entry = this.#entries.get(episodeId)
    if (entry === undefined) return
    this.#entries.delete(episodeId)
    this.#bytes -= bytesOf(entry)
  }
}
