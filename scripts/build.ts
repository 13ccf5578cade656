/**
 * The compiled package that `npm pack` ships (its prepack runs this): ES modules, their `.d.ts` types and
 * source maps (the TypeScript inlined) in dist/, laid out as the sources are, with the files the code
 * loads by path at run time. Node does not strip types under node_modules, so an installed episodic runs
 * this; a checkout runs its TypeScript directly and never needs it.
 */
import { execFileSync } from "node:child_process"
import { copyFileSync, readFileSync, rmSync } from "node:fs"
import { createRequire } from "node:module"
import * as path from "node:path"

const root = path.resolve(import.meta.dirname, "..")
const dist = path.join(root, "dist")
/** Read at run time beside the module that reads them. */
const assets = ["src/dashboard/page.html"]

rmSync(dist, { recursive: true, force: true })
const typescript = createRequire(import.meta.url).resolve("typescript/package.json")
const tsc = path.join(path.dirname(typescript), (JSON.parse(readFileSync(typescript, "utf8")) as { bin: { tsc: string } }).bin.tsc)
execFileSync(process.execPath, [tsc, "-p", path.join(root, "tsconfig.build.json")], { cwd: root, stdio: "inherit" })
for (const asset of assets) copyFileSync(path.join(root, asset), path.join(dist, asset))
console.log(`episodic build: ${path.relative(root, dist)}/ written`)
