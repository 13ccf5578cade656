/**
 * Grid Quest: the seeds' CustomGameEnvironment made into a task that can be won and lost. A seeded 5x5 grid
 * hides a treasure; the agent is told where it stands and where the treasure lies, walks there, picks the
 * treasure up and completes the quest within a step limit. The observations are short enough for a tiny
 * model, and a scripted solver always wins while a uniformly random policy almost never does.
 */
import type { DatasetRow } from "../DatasetRow.ts"
import { define, type Environment } from "../Environment.ts"
import { mulberry32 } from "../Seed.ts"

export type GridQuestConfig = {
  /** Steps before the episode ends in failure. */
  readonly maxSteps?: number
  /** Paid when the quest is completed. */
  readonly successBonus?: number
  /** Charged on every step, so shorter wins pay more. */
  readonly stepPenalty?: number
  /** Charged for an unparseable command, a move off the grid, or a pick up or completion that cannot work. */
  readonly invalidPenalty?: number
  /** Paid per step of progress (one cell closer, or the pick up); moving away costs the same, so loops earn nothing. */
  readonly progressReward?: number
  /**
   * Which layouts `rows` draws: "all" (the default), "seen" (never a held-out one) or "unseen" (only held-out
   * ones); see isUnseenLayout. Train on "seen" and evaluate on "unseen" to measure layouts never trained on.
   */
  readonly layouts?: "all" | "seen" | "unseen"
}

/** 12 steps leave room for the longest path on the grid (8 moves), the pick up, the completion and two slips. */
export const gridQuestDefaults = {
  maxSteps: 12,
  successBonus: 1,
  stepPenalty: 0.01,
  invalidPenalty: 0.1,
  progressReward: 0.05
} as const

export const GRID_SIZE = 5

export const validActions = [
  "move north",
  "move south",
  "move east",
  "move west",
  "pick up treasure",
  "complete quest"
] as const

const rules =
  "Find the treasure on a 5x5 grid, pick it up, then complete the quest. " +
  "x grows east, y grows north. Commands: move north|south|east|west, pick up treasure, complete quest."

const systemPrompt =
  "You play Grid Quest. Reply with exactly one command: move north, move south, move east, move west, " +
  "pick up treasure, or complete quest."

interface Point {
  readonly x: number
  readonly y: number
}

type Direction = "north" | "south" | "east" | "west"

const offsets: Record<Direction, Point> = {
  north: { x: 0, y: 1 },
  south: { x: 0, y: -1 },
  east: { x: 1, y: 0 },
  west: { x: -1, y: 0 }
}

type Command =
  | { readonly kind: "move"; readonly direction: Direction }
  | { readonly kind: "pick up"; readonly item: string }
  | { readonly kind: "complete quest" }

/** Trimmed, case-insensitive, a trailing period tolerated; anything else is not a command. */
const parseCommand = (action: string): Command | undefined => {
  const text = action.trim().toLowerCase().replace(/\.+$/, "").trim().replace(/\s+/g, " ")
  const move = /^move (north|south|east|west)$/.exec(text)
  if (move !== null) return { kind: "move", direction: move[1] as Direction }
  const pickUp = /^pick up (?:the )?(.+)$/.exec(text)
  if (pickUp !== null) return { kind: "pick up", item: pickUp[1] ?? "" }
  if (text === "complete quest") return { kind: "complete quest" }
  return undefined
}

/** Where the agent starts and where the treasure lies: uniform over the grid, never on the same cell. */
export const layoutGridQuest = (seed: number): { readonly start: Point; readonly treasure: Point } => {
  const random = mulberry32(seed)
  const cells = GRID_SIZE * GRID_SIZE
  const start = Math.floor(random() * cells)
  const other = Math.floor(random() * (cells - 1))
  const treasure = other >= start ? other + 1 : other
  const toPoint = (cell: number): Point => ({ x: cell % GRID_SIZE, y: Math.floor(cell / GRID_SIZE) })
  return { start: toPoint(start), treasure: toPoint(treasure) }
}

/**
 * The held-out layouts: those whose offset from start to treasure (dx, dy) has dx + 2 * dy a multiple of 5.
 * That is 100 of the 600 layouts, offsets such as (1, 2), (2, -1), (3, 1) or (-2, 4), 3 to 7 moves long and
 * never a straight line; every start cell and every treasure cell still appears among the other 500.
 */
export const isUnseenLayout = ({ start, treasure }: { readonly start: Point; readonly treasure: Point }): boolean =>
  (((treasure.x - start.x + 2 * (treasure.y - start.y)) % 5) + 5) % 5 === 0

const distance = (a: Point, b: Point): number => Math.abs(a.x - b.x) + Math.abs(a.y - b.y)

const onGrid = ({ x, y }: Point): boolean => x >= 0 && x < GRID_SIZE && y >= 0 && y < GRID_SIZE

interface Game {
  position: Point
  readonly treasure: Point
  carrying: boolean
  steps: number
  done: boolean
}

/** Steps of progress still needed before the quest can be completed; shaping pays for each one removed. */
const remainingProgress = (game: Game): number => (game.carrying ? 0 : distance(game.position, game.treasure) + 1)

const describe = (game: Game, maxSteps: number): string => {
  const left = maxSteps - game.steps
  const stepsLeft = `${left} ${left === 1 ? "step" : "steps"} left.`
  const here = `You are at (${game.position.x}, ${game.position.y})`
  if (game.carrying) return `${here} with the treasure. ${stepsLeft}`
  if (distance(game.position, game.treasure) === 0) return `${here}. The treasure is here. ${stepsLeft}`
  return `${here}. The treasure is at (${game.treasure.x}, ${game.treasure.y}). ${stepsLeft}`
}

const checkPositiveInteger = (name: string, value: number): number => {
  if (!Number.isInteger(value) || value < 1) throw new RangeError(`grid-quest: ${name} must be a positive integer, got ${value}`)
  return value
}

const makeGridQuest = (config: GridQuestConfig): Environment => {
  const maxSteps = checkPositiveInteger("maxSteps", config.maxSteps ?? gridQuestDefaults.maxSteps)
  const successBonus = config.successBonus ?? gridQuestDefaults.successBonus
  const stepPenalty = config.stepPenalty ?? gridQuestDefaults.stepPenalty
  const invalidPenalty = config.invalidPenalty ?? gridQuestDefaults.invalidPenalty
  const progressReward = config.progressReward ?? gridQuestDefaults.progressReward
  let game: Game | undefined

  return {
    reset({ seed }) {
      const { start, treasure } = layoutGridQuest(seed)
      game = { position: start, treasure, carrying: false, steps: 0, done: false }
      return { systemPrompt, observation: `${rules}\n${describe(game, maxSteps)}` }
    },
    step(action) {
      if (game === undefined) throw new Error("grid-quest: step() called before reset()")
      if (game.done) throw new Error("grid-quest: step() called after the episode ended")
      game.steps += 1
      const progressBefore = remainingProgress(game)
      const command = parseCommand(action)
      let feedback: string
      // `invalid` (reported in info) is a command the game cannot read or a move off the grid; `wasted` is a
      // readable command that cannot work yet. Both pay the invalid penalty.
      let invalid = false
      let wasted = false
      let success = false

      if (command === undefined) {
        feedback = "Unknown command."
        invalid = true
      } else if (command.kind === "move") {
        const offset = offsets[command.direction]
        const next = { x: game.position.x + offset.x, y: game.position.y + offset.y }
        if (onGrid(next)) {
          game.position = next
          feedback = `You moved ${command.direction}.`
        } else {
          feedback = `You can't move ${command.direction}: that is the edge of the grid.`
          invalid = true
        }
      } else if (command.kind === "pick up") {
        if (command.item === "treasure" && !game.carrying && distance(game.position, game.treasure) === 0) {
          game.carrying = true
          feedback = "You picked up the treasure."
        } else {
          feedback =
            command.item !== "treasure"
              ? "Only the treasure can be picked up."
              : game.carrying
                ? "You already have the treasure."
                : "The treasure is not here."
          wasted = true
        }
      } else if (game.carrying) {
        feedback = `Quest complete in ${game.steps} steps!`
        success = true
      } else {
        feedback = "You need the treasure first."
        wasted = true
      }

      const reward =
        -stepPenalty +
        progressReward * (progressBefore - remainingProgress(game)) -
        (invalid || wasted ? invalidPenalty : 0) +
        (success ? successBonus : 0)
      game.done = success || game.steps >= maxSteps
      const observation = success
        ? feedback
        : game.done
          ? `${feedback} Out of steps: quest failed.`
          : `${feedback} ${describe(game, maxSteps)}`
      return { observation, reward, done: game.done, info: { success, invalid } }
    }
  }
}

/**
 * The scripted policy: reads the latest observation, as the model would, and walks straight to the
 * treasure (east-west first), picks it up and completes the quest. Needs at most 8 + 2 steps.
 */
export const solveGridQuest = (observation: string): string => {
  if (observation.includes("with the treasure")) return "complete quest"
  if (observation.includes("The treasure is here")) return "pick up treasure"
  const position = /You are at \((\d+), (\d+)\)/.exec(observation)
  const treasure = /The treasure is at \((\d+), (\d+)\)/.exec(observation)
  if (position === null || treasure === null) throw new Error(`solveGridQuest: no positions in "${observation}"`)
  const [x, y, tx, ty] = [position[1], position[2], treasure[1], treasure[2]].map(Number) as [number, number, number, number]
  if (tx > x) return "move east"
  if (tx < x) return "move west"
  return ty > y ? "move north" : "move south"
}

/** The uniformly random baseline over the valid commands; `random` returns numbers in [0, 1). */
export const randomValidAction = (random: () => number): string =>
  validActions[Math.floor(random() * validActions.length)]!

export const gridQuest = define<GridQuestConfig>({
  name: "grid-quest",
  description: "Walk a seeded 5x5 grid to the treasure, pick it up and complete the quest within a step limit.",
  make: makeGridQuest,
  // Seeds seed * 100_003 + i in order, skipping those whose layout the `layouts` setting leaves out.
  rows: ({ seed, count, config }): ReadonlyArray<DatasetRow> => {
    const layouts = config.layouts ?? "all"
    if (!["all", "seen", "unseen"].includes(layouts)) throw new RangeError(`grid-quest: layouts must be "all", "seen" or "unseen", got ${String(layouts)}`)
    const rows: Array<DatasetRow> = []
    for (let i = 0; rows.length < count; i++) {
      const rowSeed = seed * 100_003 + i
      if (layouts !== "all" && isUnseenLayout(layoutGridQuest(rowSeed)) !== (layouts === "unseen")) continue
      rows.push({ prompt: [], extra_info: { interaction_kwargs: { name: "grid-quest" }, seed: rowSeed } })
    }
    return rows
  }
})
