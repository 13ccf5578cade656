/**
 * Progress on the terminal: one line redrawn four times a second when stdout is a terminal, and a plain
 * line every few seconds otherwise (CI logs, pipes), so logs stay readable.
 */
import type { RunMonitor, RunSnapshot } from "../RunMonitor.ts"

const duration = (seconds: number): string =>
  seconds < 60 ? `${Math.round(seconds)}s` : seconds < 3600 ? `${Math.floor(seconds / 60)}m${String(Math.round(seconds % 60)).padStart(2, "0")}s` : `${(seconds / 3600).toFixed(1)}h`

export const progressLine = (s: RunSnapshot): string => {
  const parts = [
    s.total === undefined ? `episodes ${s.done}` : `episodes ${s.done}/${s.total} ${Math.floor((100 * s.done) / Math.max(1, s.total))}%`,
    `running ${Object.entries(s.states).map(([state, count]) => `${state} ${count}`).join(" ")}`,
    `${Math.round(s.tokensPerSecond).toLocaleString("en-US")} tok/s`,
    `reward ${s.meanReward.toFixed(3)}`,
    `success ${s.successRate.toFixed(2)}`
  ]
  if (s.inference !== undefined) {
    parts.push(`batch ${s.inference.running}/${s.inference.maxBatchSize} (mean ${s.inference.batchOccupancy.toFixed(1)}) queued ${s.inference.queued}`)
  }
  if (s.training !== undefined) {
    const t = s.training
    parts.push(`update ${t.updates} (v${t.version}) loss ${t.policy_loss.toFixed(3)} ${t.update_seconds.toFixed(1)}s sync ${Math.round(t.sync_seconds * 1000)}ms`)
  }
  parts.push(
    s.phase === "done"
      ? `took ${duration(s.elapsedSeconds)}`
      : s.etaSeconds === undefined || s.phase === "evaluation" ? `${duration(s.elapsedSeconds)} elapsed` : `ETA ${duration(s.etaSeconds)}`
  )
  const phase = {
    "warm start": "warm start (demonstrations, SFT) · ",
    run: "",
    evaluation: "evaluating on held-out seeds · ",
    done: "done · "
  }[s.phase]
  return phase + parts.join(" · ")
}

export const startProgress = (monitor: RunMonitor, out: NodeJS.WriteStream = process.stdout): { stop(): void; log(line: string): void } => {
  const live = out.isTTY === true
  let last = ""
  const tick = () => {
    const line = progressLine(monitor.snapshot())
    if (live) out.write(`\r\x1b[2K${line.slice(0, Math.max(20, (out.columns ?? 200) - 1))}`)
    else if (line !== last) out.write(`${line}\n`)
    last = line
  }
  const timer = setInterval(tick, live ? 250 : 2000)
  timer.unref()
  return {
    // A line of its own above the live one.
    log: (line) => out.write(live ? `\r\x1b[2K${line}\n` : `${line}\n`),
    stop: () => {
      clearInterval(timer)
      if (live) out.write("\r\x1b[2K")
    }
  }
}
