/**
 * The env server under load: `episodic serve-env grid-quest` in a child process, 1,000 concurrent sessions
 * played by the scripted solver through RemoteEnvironment (the client the engine uses), first over
 * WebSocket, then over HTTP session ids, each for a fixed time. Every session plays episode after episode
 * (reset, steps until done, reset again) on its own connection. It reports env calls per second, the step
 * latency the client sees (p50, p99), errors (calls that failed after the client's retries), and the
 * server's peak memory. The client and the server share the machine, so the figures are for both together.
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import * as path from "node:path"
import { fileURLToPath } from "node:url"
import type { Environment } from "../src/Environment.ts"
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { remoteEnvironment } from "../src/remote/RemoteEnvironment.ts"

const sessions = 1_000
const phases = [
  { transport: "websocket", seconds: 15 },
  { transport: "http", seconds: 10 }
] as const

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..")

const startServer = () =>
  new Promise<{ readonly child: ChildProcess; readonly url: string }>((resolve, reject) => {
    const child = spawn(process.execPath, [path.join(root, "bin", "episodic.js"), "serve-env", "grid-quest", "--port", "0", "--max-sessions", "1024"], {
      cwd: root,
      stdio: ["ignore", "pipe", "inherit"]
    })
    let stdout = ""
    child.stdout!.on("data", (chunk) => {
      stdout += chunk
      const url = /listening on (http:\/\/\S+)/.exec(stdout)?.[1]
      if (url !== undefined) resolve({ child, url })
    })
    child.on("exit", (code) => reject(new Error(`serve-env exited with ${code}`)))
  })

/** CPU seconds the server has used so far, from /proc (Linux). */
const cpuSeconds = (pid: number | undefined): number | undefined => {
  try {
    const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return (Number(fields[11]) + Number(fields[12])) / 100
  } catch {
    return undefined
  }
}

/** The server's peak resident memory, from /proc (Linux). */
const peakRssMb = (pid: number | undefined): number | undefined => {
  try {
    const kb = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1]
    return kb === undefined ? undefined : Math.round(Number(kb) / 1024)
  } catch {
    return undefined
  }
}

const percentile = (sorted: Float64Array, p: number) => sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))] ?? 0

const load = async (url: string, pid: number | undefined, transport: "websocket" | "http", seconds: number) => {
  const definition = remoteEnvironment(url, { transport, timeoutMs: 30_000 })
  const signal = new AbortController().signal
  const latencies: Array<number> = []
  let resets = 0
  let errors = 0
  let episodes = 0
  const firstError: Array<string> = []

  // Sessions open in waves, so the server's accept queue is not flooded all at once.
  const environments: Array<Environment> = []
  const opened: Array<string> = []
  for (let wave = 0; wave < sessions; wave += 100) {
    await Promise.all(Array.from({ length: Math.min(100, sessions - wave) }, async (_, i) => {
      const environment = definition.make({})
      const seed = wave + i
      try {
        const reset = await environment.reset({ seed, row: { prompt: [], extra_info: { interaction_kwargs: { name: url }, seed } }, signal })
        opened[seed] = reset.observation as string
        environments[seed] = environment
      } catch (error) {
        errors++
        firstError.push(String(error))
      }
    }))
  }

  const started = performance.now()
  const cpuBefore = cpuSeconds(pid)
  const deadline = started + seconds * 1000
  await Promise.all(environments.map(async (environment, index) => {
    let observation = opened[index]!
    let seed = index
    while (performance.now() < deadline) {
      try {
        const before = performance.now()
        const result = await environment.step(solveGridQuest(observation), { signal })
        latencies.push(performance.now() - before)
        observation = result.observation
        if (result.done) {
          episodes++
          seed += sessions
          const reset = await environment.reset({ seed, row: { prompt: [], extra_info: { interaction_kwargs: { name: url }, seed } }, signal })
          resets++
          observation = reset.observation as string
        }
      } catch (error) {
        errors++
        if (firstError.length < 3) firstError.push(String(error))
        return
      }
    }
  }))
  const elapsed = (performance.now() - started) / 1000
  const cpuAfter = cpuSeconds(pid)
  const serverCpu = cpuBefore === undefined || cpuAfter === undefined ? undefined : cpuAfter - cpuBefore
  await Promise.all(environments.map((environment) => environment.close?.()))

  const sorted = Float64Array.from(latencies).sort()
  return {
    transport,
    sessions: environments.filter((environment) => environment !== undefined).length,
    seconds: elapsed,
    steps: latencies.length,
    episodes,
    stepsPerSecond: latencies.length / elapsed,
    requestsPerSecond: (latencies.length + resets) / elapsed,
    p50: percentile(sorted, 0.5),
    p99: percentile(sorted, 0.99),
    errors,
    firstError,
    /** Server CPU time per request, in µs. */
    serverCpuUs: serverCpu === undefined ? undefined : (serverCpu * 1e6) / (latencies.length + resets),
    serverCores: serverCpu === undefined ? undefined : serverCpu / elapsed
  }
}

export default async function envServerBench(): Promise<void> {
  const { child, url } = await startServer()
  try {
    const results = []
    for (const { transport, seconds } of phases) results.push(await load(url, child.pid, transport, seconds))
    const rss = peakRssMb(child.pid)
    console.log(`serve-env grid-quest, one process; ${sessions} concurrent sessions per phase; client in this process`)
    console.log("| transport | sessions | seconds | episodes | steps/s | requests/s | step p50 ms | step p99 ms | errors | server cores | server µs/request |")
    console.log("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (const r of results) {
      console.log(
        `| ${r.transport} | ${r.sessions} | ${r.seconds.toFixed(1)} | ${r.episodes} | ${r.stepsPerSecond.toFixed(0)} | ` +
          `${r.requestsPerSecond.toFixed(0)} | ${r.p50.toFixed(1)} | ${r.p99.toFixed(1)} | ${r.errors} | ` +
          `${r.serverCores?.toFixed(2) ?? "?"} | ${r.serverCpuUs?.toFixed(0) ?? "?"} |`
      )
      for (const error of r.firstError) console.log(`  ${r.transport} error: ${error}`)
    }
    if (rss !== undefined) console.log(`server peak RSS: ${rss} MB`)
    const [ws, http] = results
    console.log(JSON.stringify({
      bench: "env-server",
      sessions: ws!.sessions,
      steps_per_s: Math.round(ws!.stepsPerSecond),
      requests_per_s: Math.round(ws!.requestsPerSecond),
      p50_ms: Number(ws!.p50.toFixed(2)),
      p99_ms: Number(ws!.p99.toFixed(2)),
      errors: ws!.errors,
      http_sessions: http!.sessions,
      http_steps_per_s: Math.round(http!.stepsPerSecond),
      http_p50_ms: Number(http!.p50.toFixed(2)),
      http_p99_ms: Number(http!.p99.toFixed(2)),
      http_errors: http!.errors,
      server_us_per_request: ws!.serverCpuUs === undefined ? null : Math.round(ws!.serverCpuUs),
      server_peak_rss_mb: rss ?? null
    }))
  } finally {
    child.kill("SIGTERM")
    await new Promise((resolve) => child.once("exit", resolve))
  }
}
