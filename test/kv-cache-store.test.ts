/**
 * The episode caches' store: entries in blocks, least recently used evicted first under the byte budget, and
 * the blocks of dropped entries reused by later ones (a long run stops taking new memory) but never kept past
 * the budget. What the scheduler reads from the blocks is checked against full forward passes in
 * test/inference-fuzz.test.ts and test/scheduler.test.ts; this is the memory side.
 */
import { describe, expect, it } from "vitest"
import { BLOCK_COLUMNS, blockFloats, type CachedSequence, forEachRun, KvCacheStore } from "../actors/inference/KvCacheStore.ts"

const shape = { numLayers: 2, kvHeads: 2, headDim: 4 }
const blockBytes = blockFloats(shape) * 4

/** An entry of `positions` positions whose blocks come from the store. */
const entry = (store: KvCacheStore, positions: number): CachedSequence => {
  const blocks: Array<Float32Array> = []
  store.grow(blocks, positions)
  return { tokens: Array.from({ length: positions }, (_, i) => i), version: 0, blocks }
}

describe("the KV cache store", () => {
  it("gives an entry the blocks its positions need, and splits a span at block edges", () => {
    const store = new KvCacheStore(100 * blockBytes, shape)
    expect(entry(store, 1).blocks).toHaveLength(1)
    expect(entry(store, BLOCK_COLUMNS).blocks).toHaveLength(1)
    expect(entry(store, BLOCK_COLUMNS + 1).blocks).toHaveLength(2)
    // Positions 62..129 of a 3-block entry: [block, first column, positions before, length] per run.
    const runs: Array<[number, number, number, number]> = []
    const { blocks } = entry(store, 3 * BLOCK_COLUMNS)
    forEachRun(blocks, BLOCK_COLUMNS - 2, BLOCK_COLUMNS + 4, (block, column, done, length) => runs.push([blocks.indexOf(block), column, done, length]))
    expect(runs).toEqual([[0, BLOCK_COLUMNS - 2, 0, 2], [1, 0, 2, BLOCK_COLUMNS], [2, 0, BLOCK_COLUMNS + 2, 2]])
  })

  it("reuses an ended episode's blocks for the next entry instead of taking new memory", () => {
    const store = new KvCacheStore(100 * blockBytes, shape)
    const first = entry(store, 3 * BLOCK_COLUMNS)
    store.put("a", first)
    store.delete("a")
    const second = entry(store, 2 * BLOCK_COLUMNS)
    expect(second.blocks.every((block) => first.blocks.includes(block))).toBe(true)
  })

  it("evicts the least recently used entries past its budget, and keeps no spare blocks past it", () => {
    const store = new KvCacheStore(4 * blockBytes, shape)
    store.put("a", entry(store, 2 * BLOCK_COLUMNS))
    store.put("b", entry(store, 2 * BLOCK_COLUMNS))
    expect(store.take("a")).toBeDefined()
    store.put("a", entry(store, 2 * BLOCK_COLUMNS))
    // a was used last: b goes.
    store.put("c", entry(store, 2 * BLOCK_COLUMNS))
    expect(store.evictions).toBe(1)
    expect(store.take("b")).toBeUndefined()
    // Dropping a and c offers four blocks back while nothing is stored: all four are kept, a fifth is not.
    const a = store.take("a")!
    const c = store.take("c")!
    store.recycle(a)
    store.recycle(c)
    store.recycle(entry(new KvCacheStore(blockBytes, shape), BLOCK_COLUMNS))
    const next = entry(store, 5 * BLOCK_COLUMNS)
    const reused = next.blocks.filter((block) => a.blocks.includes(block) || c.blocks.includes(block))
    expect(reused).toHaveLength(4)
  })
})
