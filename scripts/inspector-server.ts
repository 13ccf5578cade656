/**
 * Runs @statelyai/inspect's inspector server until Ctrl-C: `npx node scripts/inspector-server.ts [--port 8080]
 * [--no-open]`. It relays what `episodic run --inspect` sends to the page it serves at http://localhost:PORT,
 * which shows Stately's inspector (https://stately.ai/inspect, so the browser needs the internet) and opens in
 * the default browser unless --no-open. See docs/episode-machine.md.
 */
import { createInspectorServer } from "@statelyai/inspect/server"
import { parseArgs } from "node:util"

const { values } = parseArgs({
  options: { port: { type: "string", default: "8080" }, open: { type: "boolean", default: true } },
  allowNegative: true
})
const port = Number(values.port)
// createInspectorServer keeps its HTTP server to itself, so a taken port reaches us only as an uncaught error.
process.once("uncaughtException", (error: NodeJS.ErrnoException) => {
  console.error(error.code === "EADDRINUSE" ? `port ${port} is taken: is an inspector server running already? (--port picks another)` : error)
  process.exit(1)
})
const server = createInspectorServer({ port, autoOpen: values.open })
console.log(
  `Stately inspector server: ws://localhost:${port} (episodic run --inspect connects here); ` +
    `the inspector page: http://localhost:${port}. Ctrl-C to stop.`
)
const stop = () => {
  server.stop()
  process.exit(0)
}
process.on("SIGINT", stop)
process.on("SIGTERM", stop)
