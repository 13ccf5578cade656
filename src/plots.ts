/**
 * A run's curves as image files in its directory: reward.svg, success.svg and tokens-per-second.svg, one
 * point per metrics window against the episodes finished, readable without the dashboard (an image viewer,
 * a browser, a notebook). `writePngs` adds PNG copies rendered by sharp (libvips, bundled, offline).
 */
import { renameSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import sharp from "sharp"
import type { MetricsPoint, TrainingPoint } from "./RunMonitor.ts"

export interface Series {
  readonly label: string
  readonly color: string
  /** [x, y] pairs, x ascending. */
  readonly points: ReadonlyArray<readonly [number, number]>
}

export interface ChartOptions {
  readonly title: string
  readonly xLabel: string
  readonly yLabel: string
  readonly series: ReadonlyArray<Series>
  /** Fixed y range (success rates are 0..1); otherwise the data's range, with 0 in it. */
  readonly yDomain?: readonly [number, number]
  readonly width?: number
  readonly height?: number
}

interface Plot {
  readonly file: string
  readonly title: string
  readonly yLabel: string
  readonly yDomain?: readonly [number, number]
  readonly window: (point: MetricsPoint) => number
  readonly cumulative: (point: MetricsPoint) => number
}

/** The plots a run writes: each shows the window's value and the run's running value. */
const plots: ReadonlyArray<Plot> = [
  { file: "reward", title: "Reward", yLabel: "mean reward", window: (p) => p.window_mean_reward, cumulative: (p) => p.mean_reward },
  {
    file: "success",
    title: "Success rate",
    yLabel: "episodes won",
    yDomain: [0, 1],
    window: (p) => p.window_success_rate,
    cumulative: (p) => p.success_rate
  },
  {
    file: "tokens-per-second",
    title: "Generated tokens per second",
    yLabel: "tokens/s",
    window: (p) => p.window_tokens_per_second,
    cumulative: (p) => p.tokens_per_second
  }
]

/** A training run's curves, one point per update, against the updates done. */
const trainingPlots: ReadonlyArray<{
  readonly file: string
  readonly title: string
  readonly yLabel: string
  readonly series: ReadonlyArray<{ readonly label: string; readonly color: string; readonly value: (t: TrainingPoint) => number | undefined }>
}> = [
  {
    file: "loss",
    title: "Trainer: loss and KL",
    yLabel: "per token",
    series: [
      { label: "policy loss", color: "#2f6fdf", value: (t) => t.policy_loss },
      { label: "approx KL to rollout", color: "#e0762b", value: (t) => t.approx_kl },
      { label: "KL to reference", color: "#3a9d5d", value: (t) => t.kl },
      { label: "value loss", color: "#8e44ad", value: (t) => t.value_loss }
    ]
  },
  {
    file: "trainer-times",
    title: "Trainer: update and weight-sync time",
    yLabel: "seconds",
    series: [
      { label: "update", color: "#2f6fdf", value: (t) => t.update_seconds },
      { label: "weight sync", color: "#e0762b", value: (t) => t.sync_seconds }
    ]
  }
]

/**
 * Writes reward.svg, success.svg and tokens-per-second.svg into `directory` (and loss.svg and
 * trainer-times.svg when the run trained); returns their paths.
 */
export const writePlots = (directory: string, history: ReadonlyArray<MetricsPoint>): Array<string> => [
  ...writeRunPlots(directory, history),
  ...writeTrainingPlots(directory, history)
]

const writeTrainingPlots = (directory: string, history: ReadonlyArray<MetricsPoint>): Array<string> => {
  // One point per update, even when several metrics points carry the same one.
  const updates = new Map<number, TrainingPoint>()
  for (const point of history) if (point.train !== undefined) updates.set(point.train.updates, point.train)
  if (updates.size === 0) return []
  const points = [...updates.values()]
  return trainingPlots.map((plot) => {
    const file = path.join(directory, `${plot.file}.svg`)
    const series = plot.series
      .map((s) => ({ label: s.label, color: s.color, points: points.flatMap((t) => { const y = s.value(t); return y === undefined ? [] : [[t.updates, y] as const] }) }))
      .filter((s) => s.points.length > 0)
    writeAtomically(file, lineChart({ title: plot.title, xLabel: "updates", yLabel: plot.yLabel, series }))
    return file
  })
}

const writeRunPlots = (directory: string, history: ReadonlyArray<MetricsPoint>): Array<string> =>
  plots.map((plot) => {
    const file = path.join(directory, `${plot.file}.svg`)
    const svg = lineChart({
      title: plot.title,
      xLabel: "episodes",
      yLabel: plot.yLabel,
      ...(plot.yDomain === undefined ? {} : { yDomain: plot.yDomain }),
      series: [
        { label: "window", color: "#2f6fdf", points: history.map((p) => [p.episodes, plot.window(p)]) },
        { label: "run so far", color: "#e0762b", points: history.map((p) => [p.episodes, plot.cumulative(p)]) }
      ]
    })
    writeAtomically(file, svg)
    return file
  })

/** Renders each SVG file to a PNG beside it (`reward.svg` -> `reward.png`); returns the PNG paths. */
export const writePngs = async (svgFiles: ReadonlyArray<string>): Promise<Array<string>> => {
  const written: Array<string> = []
  for (const svgFile of svgFiles) {
    const file = svgFile.replace(/\.svg$/, ".png")
    const partial = `${file}.partial`
    // Twice the SVG's size: crisp on high-density screens.
    await sharp(svgFile, { density: 144 }).png().toFile(partial)
    renameSync(partial, file)
    written.push(file)
  }
  return written
}

/** Readers (a browser refreshing the file) never see half an image. */
const writeAtomically = (file: string, text: string) => {
  const partial = `${file}.partial`
  writeFileSync(partial, text)
  renameSync(partial, file)
}

/** A standalone SVG line chart with a title, labelled axes, tick labels and a legend. */
export const lineChart = (options: ChartOptions): string => {
  const width = options.width ?? 640
  const height = options.height ?? 360
  const margin = { top: 48, right: 20, bottom: 50, left: 70 }
  const plotWidth = width - margin.left - margin.right
  const plotHeight = height - margin.top - margin.bottom
  const xs = options.series.flatMap((s) => s.points.map(([x]) => x))
  const ys = options.series.flatMap((s) => s.points.map(([, y]) => y))
  const xTicks = ticks(0, Math.max(1, ...xs))
  const yTicks = options.yDomain !== undefined
    ? ticks(options.yDomain[0], options.yDomain[1])
    : ticks(Math.min(0, ...ys), Math.max(0, ...ys))
  const [x0, x1] = [xTicks[0]!, xTicks.at(-1)!]
  const [y0, y1] = [yTicks[0]!, yTicks.at(-1)!]
  const sx = (x: number) => margin.left + ((x - x0) / (x1 - x0)) * plotWidth
  const sy = (y: number) => margin.top + plotHeight - ((y - y0) / (y1 - y0)) * plotHeight
  const bottom = margin.top + plotHeight

  const parts: Array<string> = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">`,
    `<title>${escapeXml(options.title)}</title>`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${width / 2}" y="24" text-anchor="middle" font-size="16" font-weight="bold">${escapeXml(options.title)}</text>`
  ]
  for (const tick of xTicks) {
    parts.push(
      `<line x1="${fixed(sx(tick))}" y1="${bottom}" x2="${fixed(sx(tick))}" y2="${bottom + 5}" stroke="#333"/>`,
      `<text x="${fixed(sx(tick))}" y="${bottom + 18}" text-anchor="middle">${formatTick(tick)}</text>`
    )
  }
  for (const tick of yTicks) {
    parts.push(
      `<line x1="${margin.left}" y1="${fixed(sy(tick))}" x2="${margin.left + plotWidth}" y2="${fixed(sy(tick))}" stroke="#e4e4e4"/>`,
      `<text x="${margin.left - 8}" y="${fixed(sy(tick) + 4)}" text-anchor="end">${formatTick(tick)}</text>`
    )
  }
  parts.push(
    `<line x1="${margin.left}" y1="${bottom}" x2="${margin.left + plotWidth}" y2="${bottom}" stroke="#333"/>`,
    `<line x1="${margin.left}" y1="${margin.top}" x2="${margin.left}" y2="${bottom}" stroke="#333"/>`,
    `<text x="${margin.left + plotWidth / 2}" y="${height - 12}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`,
    `<text transform="translate(16 ${margin.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escapeXml(options.yLabel)}</text>`
  )
  if (xs.length === 0) {
    parts.push(`<text x="${margin.left + plotWidth / 2}" y="${margin.top + plotHeight / 2}" text-anchor="middle" fill="#888">no episodes yet</text>`)
  }
  options.series.forEach((series, i) => {
    const points = series.points.map(([x, y]) => `${fixed(sx(x))},${fixed(sy(y))}`)
    if (points.length > 0) {
      parts.push(`<polyline data-series="${escapeXml(series.label)}" fill="none" stroke="${series.color}" stroke-width="2" points="${points.join(" ")}"/>`)
    }
    // A lone point draws no line: mark it.
    if (points.length === 1) {
      const [x, y] = series.points[0]!
      parts.push(`<circle cx="${fixed(sx(x))}" cy="${fixed(sy(y))}" r="3" fill="${series.color}"/>`)
    }
    // The legend sits top right, under the title.
    const legendX = width - margin.right - (options.series.length - i) * 110
    parts.push(
      `<line x1="${legendX}" y1="${margin.top - 10}" x2="${legendX + 18}" y2="${margin.top - 10}" stroke="${series.color}" stroke-width="2"/>`,
      `<text x="${legendX + 24}" y="${margin.top - 6}">${escapeXml(series.label)}</text>`
    )
  })
  parts.push("</svg>")
  return parts.join("\n") + "\n"
}

/** About five round-numbered ticks covering [low, high]: the first is <= low, the last >= high. */
export const ticks = (low: number, high: number): Array<number> => {
  if (high <= low) high = low + 1
  const rough = (high - low) / 5
  const magnitude = 10 ** Math.floor(Math.log10(rough))
  const step = ([1, 2, 5, 10].find((m) => m * magnitude >= rough) ?? 10) * magnitude
  const start = Math.floor(low / step) * step
  const result: Array<number> = []
  for (let i = 0; result.length === 0 || result.at(-1)! < high; i++) result.push(round(start + i * step, step))
  return result
}

/** Drops float noise (0.1 * 3 = 0.30000000000000004). */
const round = (x: number, step: number) => {
  const digits = Math.max(0, -Math.floor(Math.log10(step)) + 1)
  return Number(x.toFixed(digits))
}

const formatTick = (x: number) => (Math.abs(x) >= 10_000 ? `${x / 1000}k` : String(x))
const fixed = (x: number) => x.toFixed(1)
const escapeXml = (text: string) =>
  text.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;")
