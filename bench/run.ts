/**
 * `npm run bench` runs every benchmark; `npm run bench -- NAME` runs one. Each benchmark module in this
 * folder default-exports an async function that prints a table and, last, one JSON line of its figures; one
 * that exports `long = true` (hours of training runs) runs only when named.
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
  const module = await import(path.join(here, `${name}.ts`))
  // A module that says it takes long (an hour of training runs) runs only when named.
  if (wanted.length === 0 && module.long === true) {
    console.log(`\n## bench: ${name} (long: run it by name, \`npm run bench -- ${name}\`)`)
    continue
  }
  console.log(`\n## bench: ${name}`)
  await module.default()
}
