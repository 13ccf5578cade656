/**
 * `npm run bench` runs every benchmark; `npm run bench -- NAME` runs one. Each benchmark module in this
 * folder default-exports an async function that prints a table and, last, one JSON line of its figures.
 */
import { readdirSync } from "node:fs"
import { fileURLToPath } from "node:url"
import * as path from "node:path"

const here = path.dirname(fileURLToPath(import.meta.url))
const available = readdirSync(here)
  .filter((file) => file.endsWith(".ts") && file !== "run.ts")
  .map((file) => file.slice(0, -3))
  .sort()

const wanted = process.argv.slice(2)
for (const name of wanted) {
  if (!available.includes(name)) {
    console.error(`unknown benchmark "${name}"; available: ${available.join(", ")}`)
    process.exit(2)
  }
}
for (const name of wanted.length > 0 ? wanted : available) {
  console.log(`\n## bench: ${name}`)
  const module = await import(path.join(here, `${name}.ts`))
  await module.default()
}
