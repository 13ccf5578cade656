/**
 * The dashboard end to end: a real run of grid-quest episodes (the Engine, episode machines, the scripted
 * solver through real Qwen3 tokenization, an environment paced so the run lasts a few seconds) feeds a
 * RunMonitor; the dashboard serves it over loopback HTTP; Chromium from npm (@sparticuz/chromium), driven by playwright-core,
 * loads the page and watches it update while the run goes, then opens a trajectory.
 */
import { Effect, Layer, Stream } from "effect"
import sparticuz from "@sparticuz/chromium"
import { type Browser, chromium, type Page } from "playwright-core"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { progressLine } from "../src/cli/progress.ts"
import { startDashboard } from "../src/dashboard/index.ts"
import type { TrajectoryDetail } from "../src/dashboard/TrajectoryView.ts"
import { Engine } from "../src/Engine.ts"
import type { Environment } from "../src/Environment.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { RunMonitor } from "../src/RunMonitor.ts"
import * as TextPolicy from "../src/TextPolicy.ts"
import { type ChatTokenizer, load, Tokenizer } from "../src/Tokenizer.ts"
import type { Trajectory } from "../src/Trajectory.ts"
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { defineExperiment } from "../src/Experiment.ts"
import { runExperiment } from "../src/runExperiment.ts"
import { limits, sampling, tinyModel, tokenizerDirs } from "./support.ts"

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

const CONCURRENCY = 4

/** Grid-quest whose every step takes `delayMs`, as a real environment's would. */
const pacedGridQuest = (delayMs: number) => ({
  ...gridQuest,
  make: (config: Parameters<typeof gridQuest.make>[0]): Environment => {
    const environment = gridQuest.make(config)
    return {
      reset: (options) => environment.reset(options),
      step: async (action, options) => {
        await sleep(delayMs)
        return environment.step(action, options)
      }
    }
  }
})

/**
 * Runs `episodes` grid-quest episodes into `monitor` as a run does: inspection events and finished
 * trajectories, and a metrics point every `pointEvery` episodes. The solver's calls in flight are reported as
 * the inference gauges (a text policy has no batch of its own), so the page's batch figures have data.
 */
const runEpisodes = (options: {
  readonly monitor: RunMonitor
  readonly tokenizer: ChatTokenizer
  readonly episodes: number
  readonly stepDelayMs: number
  readonly pointEvery: number
}) => {
  const { monitor } = options
  let inFlight = 0
  let calls = 0
  let inFlightSum = 0
  const solver: TextPolicy.TextPolicy = async ({ context }) => {
    inFlight++
    calls++
    inFlightSum += inFlight
    monitor.setInference({ running: inFlight, queued: 0, batchOccupancy: inFlightSum / calls, maxBatchSize: CONCURRENCY })
    await sleep(options.stepDelayMs / 2)
    inFlight--
    return solveGridQuest(context.slice(context.lastIndexOf("You are at")))
  }
  const engine = Engine.layer({
    environments: new EnvironmentRegistry().register(pacedGridQuest(options.stepDelayMs)),
    concurrency: CONCURRENCY,
    samplesPerRow: 1,
    limits: limits({ maxTurns: 12, maxNewTokens: 16 }),
    sampling,
    envCallTimeoutMs: 10_000,
    seed: 0,
    bufferCapacity: 16,
    inspect: (event) => monitor.observe(event)
  }).pipe(Layer.provideMerge(TextPolicy.layer(solver)), Layer.provideMerge(Layer.succeed(Tokenizer, options.tokenizer)))
  const rows = gridQuest.rows!({ seed: 7, count: options.episodes, config: {} })
  return Effect.runPromise(
    Effect.gen(function*() {
      const { run } = yield* Engine
      yield* run(Stream.fromIterable(rows)).pipe(
        Stream.runForEach((trajectory) =>
          Effect.sync(() => {
            monitor.record(trajectory)
            if (monitor.snapshot().done % options.pointEvery === 0) monitor.point()
          })
        )
      )
    }).pipe(Effect.provide(engine))
  )
}

const text = async (page: Page, testId: string) => (await page.getByTestId(testId).textContent()) ?? ""
const count = async (page: Page, testId: string) => Number(await text(page, testId))

describe("dashboard", () => {
  let browser: Browser
  let tokenizer: ChatTokenizer

  beforeAll(async () => {
    // Chromium from npm: @sparticuz/chromium unpacks the browser it ships (to the temp directory) on first use.
    // Its serverless --single-process would end the browser with the first test's page.
    const args = sparticuz.args.filter((arg) => arg !== "--single-process")
    browser = await chromium.launch({ executablePath: await sparticuz.executablePath(), args })
    tokenizer = await load(tokenizerDirs.qwen3)
  })
  afterAll(async () => {
    await browser?.close()
  })

  it("shows a run live in the browser: states, progress, curves, and a trajectory's tokens by mask with per-turn rewards", async () => {
    const episodes = 40
    const monitor = new RunMonitor("dashboard-test", episodes)
    const dashboard = await startDashboard({ monitor, tokenizer })
    expect(dashboard.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+\/$/)
    const page = await browser.newPage()
    // Fail in seconds, not playwright's 30 s, when the page does not show what it should.
    page.setDefaultTimeout(10_000)
    const pageErrors: Array<string> = []
    page.on("pageerror", (error) => pageErrors.push(error.message))
    try {
      await page.goto(dashboard.url)
      await expect.poll(() => text(page, "connection")).toBe("live")
      expect(await text(page, "run-name")).toBe("dashboard-test")
      expect(await text(page, "total")).toBe(String(episodes))
      expect(await count(page, "done")).toBe(0)

      const run = runEpisodes({ monitor, tokenizer, episodes, stepDelayMs: 40, pointEvery: 4 })

      // While the run goes: episodes sit in their machine states, and the finished count climbs.
      await page.waitForFunction(() =>
        ["pending", "generating", "interacting"].some((state) =>
          Number(document.querySelector(`[data-testid="state-${state}"]`)?.textContent) > 0
        )
      )
      await page.waitForFunction(() => Number(document.querySelector('[data-testid="done"]')?.textContent) >= 2)
      const before = await count(page, "done")
      expect(before).toBeLessThan(episodes)
      await page.waitForFunction(
        (seen) => Number(document.querySelector('[data-testid="done"]')?.textContent) > seen,
        before
      )
      expect(monitor.snapshot().done).toBeLessThan(episodes)
      expect(Number(await text(page, "batch-occupancy"))).toBeGreaterThan(0)
      expect(await text(page, "queue-depth")).toBe("0")

      await run
      await page.waitForFunction((n) => document.querySelector('[data-testid="done"]')?.textContent === String(n), episodes)
      expect(await text(page, "eta")).toBe("done")
      expect(await count(page, "state-done")).toBe(episodes)
      expect(await count(page, "state-generating")).toBe(0)
      // The solver wins every game.
      expect(await text(page, "success-rate")).toBe("100.0%")
      expect(await text(page, "finish-reasons")).toBe(`done ${episodes}`)
      expect(Number(await text(page, "tokens-per-second-run"))).toBeGreaterThan(0)

      // The curves: one point per metrics window.
      const windows = episodes / 4
      for (const chart of ["reward-chart", "success-chart", "throughput-chart"]) {
        await page.waitForFunction(
          ([id, n]) => document.querySelector(`[data-testid="${id}"] polyline[data-series="window"]`)?.getAttribute("data-points") === String(n),
          [chart, windows] as const
        )
      }

      // The trajectory viewer: the newest first; pick one and see its tokens and turn rewards.
      const items = page.getByTestId("trajectory-item")
      await expect.poll(() => items.count()).toBe(Math.min(episodes, monitor.recentLimit))
      const newest = monitor.recent().at(-1)!
      expect(await items.first().getAttribute("data-id")).toBe(newest.id)
      const chosen: Trajectory = monitor.recent()[3]!
      await page.locator(`[data-testid="trajectory-item"][data-id="${chosen.id}"]`).click()
      await expect.poll(() => text(page, "trajectory-id")).toBe(chosen.id)

      const detail = page.getByTestId("trajectory-detail")
      const policyTokens = detail.locator('[data-testid="token"][data-mask="1"]')
      const environmentTokens = detail.locator('[data-testid="token"][data-mask="0"]')
      const mask = chosen.responseMask
      expect(await policyTokens.count()).toBe(mask.filter((m) => m === 1).length)
      expect(await environmentTokens.count()).toBe(mask.filter((m) => m === 0).length)
      // The two kinds are coloured apart.
      const background = (locator: typeof policyTokens) => locator.first().evaluate((node) => getComputedStyle(node).backgroundColor)
      expect(await background(policyTokens)).not.toBe(await background(environmentTokens))

      // Each assistant turn shows its reward and the text the policy sent, token by token.
      const assistantTurns = chosen.turns.filter((turn) => turn.role === "assistant")
      const rewards = await detail.getByTestId("turn-reward").allTextContents()
      expect(rewards).toEqual(assistantTurns.map((turn) => turn.reward.toFixed(3)))
      const firstTurn = detail.locator('[data-testid="turn"][data-role="assistant"]').first()
      const firstTurnText = (await firstTurn.locator('[data-testid="token"]').allTextContents()).join("")
      expect(firstTurnText).toBe(tokenizer.decode(chosen.responseIds.slice(assistantTurns[0]!.tokenStart, assistantTurns[0]!.tokenEnd), { skipSpecialTokens: false }))
      expect(firstTurnText.startsWith(assistantTurns[0]!.text)).toBe(true)
      expect(await text(page, "trajectory-reward")).toBe(chosen.reward.toFixed(3))

      expect(pageErrors).toEqual([])
    } finally {
      await page.close()
      await dashboard.close()
    }
  })

  it("shows a training run's trainer line and its loss and update/sync-time curves", async () => {
    const model = await tinyModel(0)
    const out = mkdtempSync(path.join(tmpdir(), "episodic-dashboard-train-"))
    let dashboard: Awaited<ReturnType<typeof startDashboard>> | undefined
    let running: RunMonitor | undefined
    const started = new Promise<void>((resolve) => {
      void runExperiment(defineExperiment({
        name: "dashboard-train",
        model,
        environment: { name: "grid-quest", episodes: 4 },
        samplesPerRow: 4,
        concurrency: 16,
        limits: { maxTurns: 4, maxNewTokens: 4 },
        trainer: { promptsPerUpdate: 2, backend: "wasm" },
        out
      }), {
        onStart: (_, monitor) => {
          running = monitor
          void startDashboard({ monitor, tokenizer }).then((d) => {
            dashboard = d
            resolve()
          })
        }
      }).result.then(() => runEnded())
    })
    let runEnded: () => void = () => undefined
    const finished = new Promise<void>((resolve) => (runEnded = resolve))
    await started
    const page = await browser.newPage()
    page.setDefaultTimeout(30_000)
    try {
      await page.goto(dashboard!.url)
      await finished
      await page.waitForFunction(() => document.querySelector('[data-testid="training-text"]')?.textContent?.startsWith("update 2 (policy v2)"))
      for (const [chart, series] of [["loss-chart", "policy loss"], ["trainer-times-chart", "sync"]] as const) {
        await page.waitForFunction(
          ([id, name]) => Number(document.querySelector(`[data-testid="${id}"] [data-series="${name}"]`)?.getAttribute("data-points") ?? 0) >= 1,
          [chart, series] as const
        )
        expect(await page.getByTestId(chart).isVisible()).toBe(true)
      }
      // The run had no held-out evaluation: once it ends, the page and the progress line say it is done, and
      // its clock stops.
      // The ETA says "done" once every episode is played, which can be a snapshot before the run's end: wait
      // for the page to have the ended run's snapshot before reading its clock.
      await page.waitForFunction(() => document.body.dataset.phase === "done")
      const elapsed = await text(page, "elapsed")
      await sleep(2_500)
      expect(await text(page, "elapsed")).toBe(elapsed)
      expect(await text(page, "eta")).toBe("done")
      const line = progressLine(running!.snapshot())
      expect(line).toMatch(/^done · episodes 16\/16 100% · .* · took \d+s$/)
      expect(line).not.toMatch(/evaluating/)
    } finally {
      await page.close()
      await dashboard?.close()
    }
  })

  it("answers bad requests with 4xx and a message and keeps serving; without a tokenizer it sends token ids", async () => {
    const monitor = new RunMonitor("bad-requests", 2)
    await runEpisodes({ monitor, tokenizer, episodes: 2, stepDelayMs: 0, pointEvery: 1 })
    const dashboard = await startDashboard({ monitor })
    try {
      const get = async (path: string, init?: RequestInit) => {
        const response = await fetch(new URL(path, dashboard.url), init)
        return { status: response.status, body: (await response.json()) as { error?: string } }
      }
      const unknown = await get("api/trajectories/no-such-id")
      expect(unknown.status).toBe(404)
      expect(unknown.body.error).toContain(`no recent trajectory "no-such-id"`)
      expect(await get("api/trajectories/%E0%A4%A")).toMatchObject({ status: 400, body: { error: expect.stringContaining("percent-encoding") } })
      expect(await get("api/nothing-here")).toMatchObject({ status: 404, body: { error: "no such page: /api/nothing-here" } })
      expect((await get("api/snapshot", { method: "POST" })).status).toBe(405)

      const snapshot = await get("api/snapshot")
      expect(snapshot).toMatchObject({ status: 200, body: { name: "bad-requests", done: 2 } })
      const history = await get("api/history")
      expect(history.body).toHaveLength(2)

      const [trajectory] = monitor.recent()
      const detail = (await get(`api/trajectories/${encodeURIComponent(trajectory!.id)}`)).body as unknown as TrajectoryDetail
      expect(detail.tokens.map((token) => token.id)).toEqual(trajectory!.responseIds)
      expect(detail.tokens.every((token) => token.text === null)).toBe(true)
      expect(detail.prompt).toBeNull()
    } finally {
      await dashboard.close()
    }
  })
})
