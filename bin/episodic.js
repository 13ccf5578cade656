#!/usr/bin/env node
// A checkout runs the CLI from its TypeScript sources; an installed package has only its compiled build
// (npm pack ships dist/, not src/), since Node does not strip types under node_modules.
import { existsSync } from "node:fs"

const source = new URL("../src/cli/main.ts", import.meta.url)
await import(existsSync(source) ? source.href : new URL("../dist/src/cli/main.js", import.meta.url).href)
