/**
 * The engine against remote environments: episodes named by URL run through the whole engine (episode
 * machines, real tokenization, the environment actor) against env servers on loopback, one of them a
 * `serve-env` child process killed mid-episode and started again. Every row yields exactly one record;
 * the episodes a fault touches end `env_error` with a message naming it, the others finish; once the
 * server is back and its breaker has cooled down, new episodes use it again. Last, `episodic run` with an
 * experiment naming a `serve-env` process by URL.
 */
import { assert, layer } from "@effect/vitest"
import { Effect, Fiber, Stream } from "effect"
import { type ChildProcess, spawn } from "node:child_process"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { createServer } from "node:net"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import * as path from "node:path"
import * as EnvServer from "../actors/env-server/index.ts"
import type { DatasetRow } from "../src/DatasetRow.ts"
import { Engine, type EngineOptions } from "../src/Engine.ts"
import { define } from "../src/Environment.ts"
import { gridQuest, solveGridQuest } from "../src/environments/gridQuest.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { type Fault, startMockGymServer } from "../src/remote/mockGymServer.ts"
import type { TextPolicy } from "../src/TextPolicy.ts"
import * as Trajectory from "../src/Trajectory.ts"
import { limits, policyLayer, sampling } from "./support.ts"

const root = path.resolve(import.meta.dirname, "..")
const bin = path.join(root, "bin", "episodic.js")
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

const rowFor = (name: string, seed: number): DatasetRow => ({ prompt: [], extra_info: { interaction_kwargs: { name }, seed } })

/** Grid-quest's solver; the cave's treasure hunt; "sleep 1000" for the probe's seed 99. */
const solver: TextPolicy = ({ context, turn }) => {
  if (context.includes("dark cave")) return turn === 0 ? "search" : "take the treasure"
  if (context.includes("seed 99")) return "sleep 1000"
  return solveGridQuest(context.slice(context.lastIndexOf("You are at")))
}

/** The policy in force; a test may wrap the solver (to hold episodes at a point). */
let policy: TextPolicy = solver

/** Grid-quest played in-process by the solver: the reward of each seed. */
const localReward = async (seed: number) => {
  const signal = new AbortController().signal
  const env = gridQuest.make({})
  let observation = (await env.reset({ seed, row: rowFor("grid-quest", seed), signal })).observation as string
  let reward = 0
  for (let done = false; !done; ) {
    const step = await env.step(solveGridQuest(observation), { signal })
    reward += step.reward
    observation = step.observation
    done = step.done
  }
  return reward
}

const engineOptions = (environmentConfig: EngineOptions["environmentConfig"], concurrency = 8): EngineOptions => ({
  environments: EnvironmentRegistry.builtins(),
  environmentConfig,
  concurrency,
  samplesPerRow: 1,
  limits: limits({ maxTurns: 12, maxNewTokens: 16 }),
  sampling,
  envCallTimeoutMs: 10_000,
  seed: 0,
  bufferCapacity: 16
})

const runRows = (rows: ReadonlyArray<DatasetRow>) =>
  Effect.gen(function*() {
    const engine = yield* Engine
    return [...yield* Stream.runCollect(engine.run(Stream.fromIterable(rows)))].sort((a, b) => Number(a.id.split("-")[0]) - Number(b.id.split("-")[0]))
  })

const serve = (options: Partial<EnvServer.EnvServerOptions>) =>
  Effect.acquireRelease(
    Effect.promise(() => EnvServer.start({ definition: gridQuest, port: 0, ...options })),
    (server) => Effect.promise(() => server.close())
  )

/** `episodic serve-env ...` in a child process, once it says where it listens. */
const serveEnvProcess = (args: ReadonlyArray<string>) =>
  new Promise<{ readonly child: ChildProcess; readonly url: string }>((resolve, reject) => {
    const child = spawn(process.execPath, [bin, "serve-env", ...args], { cwd: root, stdio: ["ignore", "pipe", "pipe"] })
    let stdout = ""
    let stderr = ""
    child.stdout!.on("data", (chunk) => {
      stdout += chunk
      const url = /listening on (http:\/\/\S+)/.exec(stdout)?.[1]
      if (url !== undefined) resolve({ child, url })
    })
    child.stderr!.on("data", (chunk) => (stderr += chunk))
    child.on("exit", (code) => reject(new Error(`serve-env exited with ${code}: ${stderr}`)))
  })

const killed = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGKILL")
  })

const freePort = () =>
  new Promise<number>((resolve) => {
    const server = createServer().listen(0, "127.0.0.1", () => {
      const { port } = server.address() as AddressInfo
      server.close(() => resolve(port))
    })
  })

layer(policyLayer((input) => policy(input)), { excludeTestServices: true })("engine with remote environments", (it) => {
  it.effect("plays a served grid-quest over WebSocket and over HTTP: one record per row, the rewards of the in-process game", () =>
    Effect.gen(function*() {
      const server = yield* serve({})
      const seeds = Array.from({ length: 12 }, (_, i) => i * 7 + 1)
      const expected = yield* Effect.promise(() => Promise.all(seeds.map(localReward)))
      for (const transport of ["websocket", "http"] as const) {
        const rows = seeds.map((seed) => rowFor(server.url, seed))
        const records = yield* runRows(rows).pipe(Effect.provide(Engine.layer(engineOptions({ [server.url]: { transport } }))))
        assert.strictEqual(records.length, rows.length)
        for (const [i, record] of records.entries()) {
          assert.strictEqual(record.finishReason, "done", `${transport} row ${i}: ${record.error?.message}`)
          assert.strictEqual(record.interaction, server.url)
          assert.closeTo(record.reward, expected[i]!, 1e-9)
          assert.strictEqual(Trajectory.violation(record), undefined)
        }
      }
      assert.strictEqual(server.sessions.size(), 0, "every episode closed its session")
    }).pipe(Effect.scoped))

  it.effect("faults end only the episodes they touch, each naming its fault: refused, full, slow, 500, malformed, hang-up", () =>
    Effect.gen(function*() {
      const healthy = yield* serve({})
      const full = yield* serve({ maxSessions: 1 })
      // The full server's only session is taken.
      yield* Effect.promise(() => fetch(`${full.url}/reset`, { method: "POST", body: "{}" }))
      const probe = yield* serve({
        definition: define({
          name: "probe",
          description: "sleeps when told to",
          make: () => ({
            reset: ({ seed }) => ({ observation: `seed ${seed}` }),
            step: async (action) => {
              await sleep(Number(/sleep (\d+)/.exec(action)?.[1] ?? 0))
              return { observation: "ok", reward: 0, done: true }
            }
          })
        })
      })
      const refused = `http://127.0.0.1:${yield* Effect.promise(freePort)}`
      // The mock Gym server misbehaves on the steps of chosen seeds.
      const faults: Record<number, Fault> = { 1: "error", 2: "malformed", 3: "slow", 4: "hang-up" }
      const seedOf = new Map<string, number>()
      const cave = yield* Effect.acquireRelease(
        Effect.promise(() => startMockGymServer({
          slowMs: 1_000,
          fault: ({ path, body }) => {
            if (path === "/reset") seedOf.set(String(body["instance_id"]), Number(body["seed"]))
            return path === "/step" ? faults[seedOf.get(String(body["instance_id"]))!] : undefined
          }
        })),
        (server) => Effect.promise(() => server.close())
      )
      const gym = `gym+${cave.url}`
      const quick = { timeoutMs: 300, retries: 1, backoffMs: 10, maxBackoffMs: 20 }
      const plan: ReadonlyArray<[string, number, RegExp | undefined]> = [
        [healthy.url, 11, undefined],
        [healthy.url, 12, undefined],
        [refused, 1, /^reset http:\/\/127\.0\.0\.1:\d+: cannot connect \(ECONNREFUSED\) \(2 attempts\)$/],
        [refused, 2, /^reset http:\/\/127\.0\.0\.1:\d+: cannot connect \(ECONNREFUSED\) \(2 attempts\)$/],
        [full.url, 1, /^reset .*: server error CAPACITY_REACHED: server at capacity: 1 of 1 sessions in use; retry later \(2 attempts\)$/],
        [probe.url, 99, /^step .*: no reply within 300 ms$/],
        [gym, 1, /^step http:.*: HTTP 500: \{"error":"mock server error"\}$/],
        [gym, 2, /^step http:.*: the reply is not JSON: /],
        [gym, 3, /^step http:.*: no reply within 300 ms$/],
        [gym, 4, /^step http:.*: connection failed: /],
        [gym, 5, undefined],
        [healthy.url, 13, undefined],
        [gym, 6, undefined]
      ]
      const config = Object.fromEntries([healthy.url, refused, full.url, probe.url, gym].map((name) => [name, { ...quick, failureThreshold: 100 }]))
      const records = yield* runRows(plan.map(([name, seed]) => rowFor(name, seed))).pipe(Effect.provide(Engine.layer(engineOptions(config, 13))))

      assert.strictEqual(records.length, plan.length, "one record per row")
      for (const [i, [name, seed, error]] of plan.entries()) {
        const record = records[i]!
        assert.strictEqual(record.interaction, name)
        assert.strictEqual(record.seed, seed)
        if (error === undefined) {
          assert.strictEqual(record.finishReason, "done", `row ${i}: ${record.error?.message}`)
          assert.isAbove(record.reward, name === gym ? 10 : 1, `row ${i}`)
        } else {
          assert.strictEqual(record.finishReason, "env_error", `row ${i}`)
          assert.match(record.error!.message, /^(reset|step) threw: /, `row ${i}`)
          assert.match(record.error!.message.replace(/^(reset|step) threw: /, ""), error, `row ${i}`)
        }
        assert.strictEqual(Trajectory.violation(record), undefined)
      }
      assert.strictEqual(cave.games(), 0, "every Gym episode was finalized")
    }).pipe(Effect.scoped))

  it.effect("a serve-env process killed mid-episode ends its episodes env_error; the others finish; once it is back and the breaker has cooled, new episodes use it", () =>
    Effect.gen(function*() {
      const first = yield* Effect.acquireRelease(Effect.promise(() => serveEnvProcess(["grid-quest", "--port", "0"])), ({ child }) => Effect.promise(() => killed(child)))
      const doomed = first.url
      const port = new URL(doomed).port
      const other = yield* serve({})
      const config = { [doomed]: { timeoutMs: 2_000, retries: 1, backoffMs: 10, failureThreshold: 2, cooldownMs: 500 } }
      const engine = Engine.layer(engineOptions(config))

      // The doomed server's episodes wait after their first step until it has been killed.
      let arrived = 0
      let release!: () => void
      const released = new Promise<void>((resolve) => (release = resolve))
      policy = async (input) => {
        if (input.turn === 1 && Number(input.episodeId.split("-")[0]) < 4) {
          arrived++
          await released
        }
        return solver(input)
      }
      const rows = [0, 1, 2, 3].map((seed) => rowFor(doomed, seed)).concat([4, 5, 6, 7].map((seed) => rowFor(other.url, seed)))
      const records = yield* Effect.gen(function*() {
        const running = yield* Effect.forkChild(runRows(rows))
        while (arrived < 4) yield* Effect.sleep(10)
        yield* Effect.promise(() => killed(first.child))
        release()
        return yield* Fiber.join(running)
      }).pipe(Effect.provide(engine), Effect.ensuring(Effect.sync(() => (policy = solver))))

      assert.strictEqual(records.length, 8, "rows in == records out")
      for (const record of records.slice(0, 4)) {
        assert.strictEqual(record.finishReason, "env_error")
        assert.match(record.error!.message, /^step threw: step http:\/\/127\.0\.0\.1:\d+: the connection (closed \(code 1006\)|is closing)/)
        // The first action was answered before the kill; the second found the server gone.
        assert.strictEqual(record.numTurns, 2)
      }
      for (const record of records.slice(4)) assert.strictEqual(record.finishReason, "done", record.error?.message)

      // Four failures opened the breaker: new episodes fail fast without touching the endpoint.
      const refused = yield* runRows([rowFor(doomed, 8)]).pipe(Effect.provide(engine))
      assert.match(refused[0]!.error!.message, /circuit open after \d+ consecutive failures/)

      // Back on the same port; after the cooldown, one trial episode goes through and closes the breaker,
      // and the episodes after it use the server again.
      yield* Effect.acquireRelease(Effect.promise(() => serveEnvProcess(["grid-quest", "--port", port])), ({ child }) => Effect.promise(() => killed(child)))
      yield* Effect.sleep(500)
      const trial = yield* runRows([rowFor(doomed, 9)]).pipe(Effect.provide(engine))
      assert.strictEqual(trial[0]!.finishReason, "done", trial[0]!.error?.message)
      const again = yield* runRows([10, 11, 12, 13].map((seed) => rowFor(doomed, seed))).pipe(Effect.provide(engine))
      assert.deepStrictEqual(again.map((record) => record.finishReason), ["done", "done", "done", "done"])
    }).pipe(Effect.scoped))

  it.effect("episodic run: an experiment names a serve-env process by URL", () =>
    Effect.gen(function*() {
      const { child: server, url } = yield* Effect.acquireRelease(
        Effect.promise(() => serveEnvProcess(["grid-quest", "--port", "0", "--token", "t0ken"])),
        ({ child }) => Effect.promise(() => killed(child))
      )
      const dir = mkdtempSync(path.join(tmpdir(), "episodic-remote-"))
      const experiment = path.join(dir, "remote.ts")
      // The example experiment, pointed at this server's port.
      writeFileSync(experiment, `import example from ${JSON.stringify(path.join(root, "experiments", "remote-grid-quest.ts"))}
export default { ...example, name: "remote", out: ${JSON.stringify(dir)}, environment: { ...example.environment, name: ${JSON.stringify(url)}, episodes: 12 } }
`)
      const result = yield* Effect.promise(() =>
        new Promise<{ code: number | null; stdout: string; stderr: string }>((resolve) => {
          const child = spawn(process.execPath, [bin, "run", experiment], {
            cwd: root,
            env: { ...process.env, EPISODIC_ENV_TOKEN: "t0ken" },
            stdio: ["ignore", "pipe", "pipe"]
          })
          let stdout = ""
          let stderr = ""
          child.stdout.on("data", (chunk) => (stdout += chunk))
          child.stderr.on("data", (chunk) => (stderr += chunk))
          child.on("close", (code) => resolve({ code, stdout, stderr }))
        })
      )
      assert.strictEqual(result.stderr, "")
      assert.strictEqual(result.code, 0)
      const records = readFileSync(path.join(dir, "remote", "trajectories.jsonl"), "utf8").trim().split("\n").map((line) => Trajectory.decode(JSON.parse(line)))
      assert.strictEqual(records.length, 12)
      assert.isTrue(records.every((record) => record.finishReason === "done" && record.reward > 1 && record.interaction === url))
      const summary = JSON.parse(readFileSync(path.join(dir, "remote", "summary.json"), "utf8"))
      assert.deepStrictEqual(summary.finish_reasons, { done: 12 })
      const local = yield* Effect.promise(() => Promise.all(records.map((record) => localReward(record.seed))))
      assert.closeTo(summary.mean_reward, local.reduce((a, b) => a + b, 0) / 12, 1e-9)

      // SIGTERM stops the server cleanly.
      const exited = new Promise<number | null>((resolve) => server.once("exit", (code) => resolve(code)))
      server.kill("SIGTERM")
      assert.strictEqual(yield* Effect.promise(() => exited), 0)
    }).pipe(Effect.scoped))
})
