/**
 * Runs the mock Gym-style env server (src/remote/mockGymServer.ts) until Ctrl-C:
 * `npx node scripts/mock-gym-server.ts [--port 8080] [--host 127.0.0.1]`. An experiment names it as
 * `gym+http://127.0.0.1:8080`.
 */
import { parseArgs } from "node:util"
import { startMockGymServer } from "../src/remote/mockGymServer.ts"

const { values } = parseArgs({ options: { port: { type: "string", default: "8080" }, host: { type: "string", default: "127.0.0.1" } } })
const server = await startMockGymServer({ port: Number(values.port), host: values.host })
console.log(`mock Gym env server listening on ${server.url} (POST /reset, POST /step, POST /finalize, GET /health)`)
const stop = () => void server.close().then(() => process.exit(0))
process.on("SIGINT", stop)
process.on("SIGTERM", stop)
