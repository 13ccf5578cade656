/**
 * The run's plot files: standalone SVG with titles, axes and one point per metrics window, written
 * atomically, and PNG copies that sharp renders offline.
 */
import { mkdtempSync, readdirSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import sharp from "sharp"
import { describe, expect, it } from "vitest"
import { ticks, writePlots, writePngs } from "../src/plots.ts"
import type { MetricsPoint } from "../src/RunMonitor.ts"

const point = (episodes: number, reward: number, success: number, tokensPerSecond: number): MetricsPoint => ({
  episodes,
  elapsed_seconds: episodes / 10,
  mean_reward: reward,
  success_rate: success,
  window_mean_reward: reward,
  window_success_rate: success,
  tokens_per_second: tokensPerSecond,
  window_tokens_per_second: tokensPerSecond,
  running: { pending: 0, generating: 1, interacting: 2 },
  batch_occupancy: null,
  queued: null
})

const history = [point(10, -0.4, 0, 1200), point(20, 0.3, 0.5, 2500), point(30, 1.1, 1, 1800)]

/** The [x, y] pairs of the chart's polyline for one series. */
const seriesPoints = (svg: string, series: string): Array<[number, number]> => {
  const match = new RegExp(`<polyline data-series="${series}"[^>]* points="([^"]*)"`).exec(svg)
  expect(match, `a polyline for "${series}"`).not.toBeNull()
  return match![1]!.split(" ").map((pair) => pair.split(",").map(Number) as [number, number])
}

const workdir = () => mkdtempSync(path.join(tmpdir(), "episodic-plots-"))

describe("writePlots", () => {
  it("writes reward, success and tokens/s as SVG with titles, axes and a point per metrics window", async () => {
    const directory = workdir()
    const files = writePlots(directory, history)
    expect(files.map((file) => path.basename(file))).toEqual(["reward.svg", "success.svg", "tokens-per-second.svg"])
    // Written whole: no temporary file is left behind.
    expect(readdirSync(directory).sort()).toEqual(["reward.svg", "success.svg", "tokens-per-second.svg"])

    const titles = ["Reward", "Success rate", "Generated tokens per second"]
    for (const [i, file] of files.entries()) {
      const svg = readFileSync(file, "utf8")
      expect(svg).toMatch(/^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"/)
      expect(svg).toContain(`<title>${titles[i]}</title>`)
      expect(svg).toContain(">episodes</text>")
      // x ticks cover the episodes.
      expect(svg).toContain(">30</text>")
      const window = seriesPoints(svg, "window")
      expect(window).toHaveLength(3)
      expect(window.map(([x]) => x)).toEqual([...window.map(([x]) => x)].sort((a, b) => a - b))
      // A real SVG parser (libvips' librsvg) reads it.
      const metadata = await sharp(file).metadata()
      expect(metadata.format).toBe("svg")
      expect(metadata.width).toBe(640)
    }

    // Success is drawn on 0..1: 0 on the x axis, 1 at the top of the plot area; higher rewards higher up.
    const success = seriesPoints(readFileSync(files[1]!, "utf8"), "window")
    expect(success[0]![1]).toBe(310)
    expect(success[2]![1]).toBe(48)
    const reward = seriesPoints(readFileSync(files[0]!, "utf8"), "window").map(([, y]) => y)
    expect(reward[0]!).toBeGreaterThan(reward[1]!)
    expect(reward[1]!).toBeGreaterThan(reward[2]!)
    expect(readFileSync(files[2]!, "utf8")).toContain(">2000</text>")
  })

  it("draws empty charts before the first metrics point, and replaces the files as the run goes", () => {
    const directory = workdir()
    const [reward] = writePlots(directory, [])
    expect(readFileSync(reward!, "utf8")).toContain("no episodes yet")
    expect(readFileSync(reward!, "utf8")).not.toContain("<polyline")
    writePlots(directory, history.slice(0, 1))
    // A lone point is marked, since it draws no line.
    expect(readFileSync(reward!, "utf8")).toContain("<circle")
    expect(readdirSync(directory)).toHaveLength(3)
  })

  it("renders PNG copies offline", async () => {
    const directory = workdir()
    const pngs = await writePngs(writePlots(directory, history))
    expect(pngs.map((file) => path.basename(file))).toEqual(["reward.png", "success.png", "tokens-per-second.png"])
    for (const file of pngs) {
      const metadata = await sharp(file).metadata()
      expect(metadata.format).toBe("png")
      expect([metadata.width, metadata.height]).toEqual([1280, 720])
      // Not a blank image: the curves and text are drawn.
      const stats = await sharp(file).stats()
      expect(stats.channels[0]!.min).toBeLessThan(100)
    }
    expect(readdirSync(directory).filter((name) => name.endsWith(".partial"))).toEqual([])
  })
})

describe("ticks", () => {
  it("gives round numbers that cover the range", () => {
    expect(ticks(0, 1)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1])
    expect(ticks(-0.3, 1.2)).toEqual([-0.5, 0, 0.5, 1, 1.5])
    expect(ticks(0, 6123)).toEqual([0, 2000, 4000, 6000, 8000])
    expect(ticks(0, 0)).toEqual([0, 0.2, 0.4, 0.6, 0.8, 1])
  })
})
