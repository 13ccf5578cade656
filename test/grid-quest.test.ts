import { describe, expect, it } from "vitest"
import type { Environment } from "../src/Environment.ts"
import {
  gridQuest,
  gridQuestDefaults,
  isUnseenLayout,
  layoutGridQuest,
  randomValidAction,
  solveGridQuest,
  type GridQuestConfig
} from "../src/environments/gridQuest.ts"
import { mulberry32 } from "../src/Seed.ts"

const signal = new AbortController().signal

const start = async (seed: number, config: GridQuestConfig = {}) => {
  const environment = gridQuest.make(config)
  const [row] = gridQuest.rows!({ seed: 0, count: 1, config })
  const reset = await environment.reset({ seed, row: row!, signal })
  return { environment, observation: reset.observation as string, systemPrompt: reset.systemPrompt }
}

const play = async (seed: number, policy: (observation: string) => string) => {
  const { environment, observation: first } = await start(seed)
  let observation = first
  for (let steps = 1; ; steps++) {
    const result = await environment.step(policy(observation), { signal })
    observation = result.observation
    if (result.done) return { ...result, steps }
  }
}

const step = (environment: Environment, action: string) => environment.step(action, { signal })

// A seed whose start is on the western edge, so "move west" walks off the grid.
const westEdgeSeed = Array.from({ length: 200 }, (_, seed) => seed).find((seed) => layoutGridQuest(seed).start.x === 0)!

describe("grid-quest", () => {
  it("lays out the same game for the same seed, and different games across seeds", async () => {
    const a = await start(42)
    const b = await start(42)
    expect(a.observation).toBe(b.observation)
    const actions = ["move north", "move east", "pick up treasure", "move west"]
    for (const action of actions) {
      expect(await step(a.environment, action)).toEqual(await step(b.environment, action))
    }
    const openings = new Set(await Promise.all(Array.from({ length: 20 }, async (_, seed) => (await start(seed)).observation)))
    expect(openings.size).toBeGreaterThan(10)
  })

  it("names both positions in the observation and gives the rules and a system prompt", async () => {
    const { start: agent, treasure } = layoutGridQuest(7)
    const { observation, systemPrompt } = await start(7)
    expect(observation).toContain(`You are at (${agent.x}, ${agent.y})`)
    expect(observation).toContain(`The treasure is at (${treasure.x}, ${treasure.y})`)
    expect(observation).toContain("complete quest")
    expect(systemPrompt).toContain("pick up treasure")
  })

  it("keeps step observations short", async () => {
    const { environment, observation } = await start(3)
    const result = await step(environment, solveGridQuest(observation))
    expect(result.observation.length).toBeLessThanOrEqual(120)
  })

  it("never starts on the treasure, and often starts several moves away", () => {
    const distances = Array.from({ length: 1000 }, (_, seed) => {
      const { start: agent, treasure } = layoutGridQuest(seed)
      return Math.abs(agent.x - treasure.x) + Math.abs(agent.y - treasure.y)
    })
    expect(Math.min(...distances)).toBeGreaterThan(0)
    expect(distances.filter((distance) => distance >= 4).length / distances.length).toBeGreaterThan(0.25)
  })

  it("is always won by the scripted solver, with the success bonus", async () => {
    for (let seed = 0; seed < 500; seed++) {
      const result = await play(seed, solveGridQuest)
      expect(result.done).toBe(true)
      expect(result.info).toMatchObject({ success: true })
      expect(result.reward).toBeGreaterThan(gridQuestDefaults.successBonus - 0.1)
      expect(result.steps).toBeLessThanOrEqual(gridQuestDefaults.maxSteps)
    }
  })

  it("is rarely won by a uniformly random valid-action policy", async () => {
    let wins = 0
    for (let seed = 0; seed < 2000; seed++) {
      const random = mulberry32(seed + 1_000_000)
      const result = await play(seed, () => randomValidAction(random))
      if (result.info?.["success"] === true) wins += 1
    }
    expect(wins / 2000).toBeLessThanOrEqual(0.1)
  })

  it("penalises unparseable commands and moves off the grid without ending the episode", async () => {
    const { environment } = await start(westEdgeSeed)
    const nonsense = await step(environment, "dance wildly")
    expect(nonsense).toMatchObject({ done: false, info: { success: false, invalid: true } })
    expect(nonsense.reward).toBeCloseTo(-gridQuestDefaults.stepPenalty - gridQuestDefaults.invalidPenalty)
    const offGrid = await step(environment, "move west")
    expect(offGrid).toMatchObject({ done: false, info: { success: false, invalid: true } })
    expect(offGrid.reward).toBeCloseTo(-gridQuestDefaults.stepPenalty - gridQuestDefaults.invalidPenalty)
    expect(offGrid.observation).toContain("edge")
  })

  it("reads commands case-insensitively with surrounding space and a trailing period", async () => {
    const { start: agent } = layoutGridQuest(westEdgeSeed)
    const { environment } = await start(westEdgeSeed)
    const moved = await step(environment, "  Move East.  ")
    expect(moved.info).toMatchObject({ invalid: false })
    expect(moved.observation).toContain(`You are at (${agent.x + 1}, ${agent.y})`)
  })

  it("does not let the quest be completed without the treasure", async () => {
    const { environment } = await start(5)
    const early = await step(environment, "complete quest")
    expect(early).toMatchObject({ done: false, info: { success: false } })
    expect(early.reward).toBeLessThan(0)
    const nothingHere = await step(environment, "pick up treasure")
    expect(nothingHere).toMatchObject({ done: false, info: { success: false } })
    expect(nothingHere.reward).toBeLessThan(0)
  })

  it("ends the episode in failure at the step limit", async () => {
    const { environment } = await start(9, { maxSteps: 4 })
    for (let i = 1; i < 4; i++) expect((await step(environment, "complete quest")).done).toBe(false)
    const last = await step(environment, "complete quest")
    expect(last).toMatchObject({ done: true, info: { success: false } })
    expect(last.observation).toContain("Out of steps")
  })

  it("holds out a sixth of the layouts, never adjacent, with every start and treasure cell still among the rest", () => {
    const cell = (x: number, y: number) => ({ x, y })
    const layouts = Array.from({ length: 25 }, (_, s) => Array.from({ length: 25 }, (_, t) => ({ start: cell(s % 5, Math.floor(s / 5)), treasure: cell(t % 5, Math.floor(t / 5)) })))
      .flat()
      .filter(({ start, treasure }) => start.x !== treasure.x || start.y !== treasure.y)
    const unseen = layouts.filter(isUnseenLayout)
    expect(unseen).toHaveLength(100)
    expect(unseen.every(({ start, treasure }) => start.x !== treasure.x && start.y !== treasure.y)).toBe(true)
    const seen = layouts.filter((layout) => !isUnseenLayout(layout))
    expect(new Set(seen.map(({ start }) => `${start.x},${start.y}`)).size).toBe(25)
    expect(new Set(seen.map(({ treasure }) => `${treasure.x},${treasure.y}`)).size).toBe(25)
  })

  it("draws rows from the seen layouts only, or the unseen ones only, as `layouts` says", () => {
    const unseenOf = (layouts: "seen" | "unseen") =>
      gridQuest.rows!({ seed: 3, count: 300, config: { layouts } }).map((row) => isUnseenLayout(layoutGridQuest(row.extra_info.seed!)))
    expect(unseenOf("seen").some(Boolean)).toBe(false)
    expect(unseenOf("unseen").every(Boolean)).toBe(true)
    expect(unseenOf("unseen")).toHaveLength(300)
    // "all" (the default) keeps the seeds as they were.
    expect(gridQuest.rows!({ seed: 0, count: 3, config: { layouts: "all" } }).map((row) => row.extra_info.seed)).toEqual([0, 1, 2])
    expect(() => gridQuest.rows!({ seed: 0, count: 1, config: { layouts: "some" as "all" } })).toThrow(/layouts must be/)
  })

  it("makes rows with an empty prompt and distinct seeds", () => {
    const rows = gridQuest.rows!({ seed: 0, count: 3, config: {} })
    expect(rows.map((row) => row.extra_info.seed)).toEqual([0, 1, 2])
    expect(rows.every((row) => row.prompt.length === 0 && row.extra_info.interaction_kwargs.name === "grid-quest")).toBe(true)
    expect(gridQuest.rows!({ seed: 1, count: 1, config: {} })[0]?.extra_info.seed).not.toBe(0)
  })
})
