/**
 * episodic as a package that other projects install. The project is packed as `npm pack` packs it (its
 * prepack builds dist/), the tarball is installed into an empty project in the temp directory, and that
 * project uses it as a user would, on Node 24 (the project's own) and on Node 22 (from npm):
 * - a plain .mjs file imports episodic and runs an experiment through runExperiment on a model made with
 *   `npx episodic model init`;
 * - the README's example (echo.ts) type-checks against the shipped types with tsc and runs under Node's
 *   type stripping, and as plain JavaScript;
 * - `npx episodic run my-experiment.ts`, the default experiment and `npx episodic serve-env grid-quest` run
 *   from the project's directory, and models and runs are made there, not inside node_modules.
 * The installs read the npm registry (`--prefer-offline`: what `npm ci` left in npm's cache is not fetched again).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { afterAll, beforeAll, describe, expect, it } from "vitest"

const root = path.resolve(import.meta.dirname, "..")
const manifest = JSON.parse(readFileSync(path.join(root, "package.json"), "utf8")) as {
  readonly version: string
  readonly engines: { readonly node: string }
  readonly devDependencies: Readonly<Record<string, string>>
}
/** The newest Node 22 in the registry when this was written; its `node` package ships the binary. */
const NODE_22 = "22.23.3"
const INSTALL_MS = 600_000
const USE_MS = 240_000

interface Finished { readonly code: number | null; readonly stdout: string; readonly stderr: string }

const collect = (child: ChildProcess): Promise<Finished> =>
  new Promise((resolve, reject) => {
    let stdout = ""
    let stderr = ""
    child.stdout?.on("data", (chunk) => (stdout += chunk))
    child.stderr?.on("data", (chunk) => (stderr += chunk))
    child.on("error", reject)
    child.on("close", (code) => resolve({ code, stdout, stderr }))
  })

/**
 * The environment of a command a user types: `node` (and npm, npx, the episodic bin, which run on `node`)
 * is the given Node; nothing of this test's own npm run leaks in but where the npm cache is.
 */
const userEnv = (nodeBin: string): NodeJS.ProcessEnv => {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (!key.toLowerCase().startsWith("npm_") || ["npm_config_cache", "npm_config_registry", "npm_config_userconfig"].includes(key.toLowerCase())) {
      env[key] = value
    }
  }
  return { ...env, PATH: [nodeBin, process.env["PATH"]].join(path.delimiter), NODE_OPTIONS: "", FORCE_COLOR: "0" }
}

const start = (command: string, args: ReadonlyArray<string>, cwd: string, nodeBin: string): ChildProcess =>
  spawn(command, args, { cwd, env: userEnv(nodeBin), stdio: ["ignore", "pipe", "pipe"] })

const sh = (command: string, args: ReadonlyArray<string>, cwd: string, nodeBin: string) => collect(start(command, args, cwd, nodeBin))

const succeeds = (result: Finished, what: string) => expect(result.code, `${what}\n${result.stdout}\n${result.stderr}`).toBe(0)

/** Node 22, installed from npm into `dir` (its `node` package ships the binary): the folder of its `node`. */
const installNode22 = async (dir: string, nodeBin: string): Promise<string> => {
  mkdirSync(dir)
  writeFileSync(path.join(dir, "package.json"), JSON.stringify({ private: true, allowScripts: { node: true } }))
  succeeds(await sh("npm", ["install", "--prefer-offline", "--no-audit", "--no-fund", `node@${NODE_22}`], dir, nodeBin), "npm install node@22")
  return path.join(dir, "node_modules", "node", "bin")
}

/**
 * The package as `npm pack` makes it, packed from a copy of the checkout (its own dist/, so that a test
 * run elsewhere in the checkout cannot rebuild dist/ under it) that shares the checkout's node_modules.
 */
const pack = async (work: string, nodeBin: string): Promise<string> => {
  const copy = path.join(work, "episodic")
  const skip = new Set(["node_modules", "dist", "runs", "models", ".git", ".scratch"])
  cpSync(root, copy, { recursive: true, filter: (source) => !skip.has(path.relative(root, source).split(path.sep)[0]!) })
  symlinkSync(path.join(root, "node_modules"), path.join(copy, "node_modules"), "dir")
  const packed = await sh("npm", ["pack", "--pack-destination", work], copy, nodeBin)
  succeeds(packed, "npm pack")
  const tarball = path.join(work, `episodic-${manifest.version}.tgz`)
  expect(existsSync(tarball)).toBe(true)
  return tarball
}

/** What the README's "Use it as a library" tells a new project to write: its allowScripts, and echo.ts. */
const readme = readFileSync(path.join(root, "README.md"), "utf8")
const readmeAllowScripts = JSON.parse(/npm pkg set 'allowScripts=(\{.*\})' --json/.exec(readme)![1]!) as Record<string, boolean>
const readmeExample = /```ts\n(\/\/ echo\.ts\n[\s\S]*?)```/.exec(readme)![1]!

const experimentFile = `import { defineExperiment } from "episodic"

export default defineExperiment({
  name: "my-experiment",
  model: "models/micro",
  modelInit: { preset: "micro" },
  environment: { name: "grid-quest", episodes: 3 },
  samplesPerRow: 2,
  limits: { maxTurns: 3, maxNewTokens: 8 }
})
`

const mjsConsumer = (name: string) => `import { defineExperiment, runExperiment } from "episodic"

const run = runExperiment(defineExperiment({
  name: ${JSON.stringify(name)},
  model: "models/micro",
  environment: { name: "grid-quest", episodes: 4 },
  samplesPerRow: 2,
  limits: { maxTurns: 3, maxNewTokens: 8 },
  sampling: { temperature: 1 },
  seed: 1
}))
let trajectories = 0
for await (const event of run) if (event.type === "trajectory") trajectories++
const { directory, summary } = await run.result
console.log(JSON.stringify({ trajectories, directory, episodes: summary.episodes }))
`

/** Checked by tsc beside the README's example: the shipped types are real, not missing or `any`. */
const typesCheck = `import type { ExperimentConfig, Trajectory } from "episodic"

// @ts-expect-error: an experiment's name is a string
export const wrong: ExperimentConfig = { name: 1, model: "models/micro" }
export const reward = (trajectory: Trajectory.Trajectory): number => trajectory.reward
`

const tsconfig = {
  compilerOptions: { target: "es2023", module: "nodenext", strict: true, noEmit: true, skipLibCheck: true, types: ["node"] },
  include: ["*.ts"]
}

const records = (file: string) => readFileSync(file, "utf8").trim().split("\n").map((line) => JSON.parse(line) as Record<string, unknown>)

describe("episodic installed from its tarball into a new project", () => {
  const work = mkdtempSync(path.join(tmpdir(), "episodic-package-"))
  const project = path.join(work, "project")
  const node24 = path.dirname(process.execPath)
  const nodes: Array<{ readonly name: string; bin: string }> = [{ name: "24", bin: node24 }, { name: "22", bin: "" }]

  beforeAll(async () => {
    const [tarball, node22] = await Promise.all([pack(work, node24), installNode22(path.join(work, "node22"), node24)])
    nodes[1]!.bin = node22
    mkdirSync(project)
    writeFileSync(path.join(project, "package.json"), JSON.stringify({
      name: "my-project",
      private: true,
      type: "module",
      allowScripts: readmeAllowScripts
    }, null, 2))
    const installed = await sh("npm", [
      "install", "--prefer-offline", "--no-audit", "--no-fund",
      tarball, `typescript@${manifest.devDependencies["typescript"]}`, `@types/node@${manifest.devDependencies["@types/node"]}`
    ], project, node24)
    succeeds(installed, "npm install episodic.tgz")
    // No warnings of our making (npm's notes about install scripts, unknown config, engines).
    expect(installed.stderr).not.toMatch(/npm warn/i)
    writeFileSync(path.join(project, "tsconfig.json"), JSON.stringify(tsconfig, null, 2))
    writeFileSync(path.join(project, "my-experiment.ts"), experimentFile)
    writeFileSync(path.join(project, "echo.ts"), readmeExample)
    writeFileSync(path.join(project, "echo.mjs"), readmeExample)
    writeFileSync(path.join(project, "types-check.ts"), typesCheck)
  }, INSTALL_MS)
  // The project's node_modules is over a gigabyte: removing it takes a while on a busy machine.
  afterAll(() => rmSync(work, { recursive: true, force: true }), INSTALL_MS)

  it("ships the compiled build with types, the bin and engines, and no TypeScript sources", () => {
    const installed = path.join(project, "node_modules", "episodic")
    const shipped = JSON.parse(readFileSync(path.join(installed, "package.json"), "utf8"))
    expect(shipped.exports["."]).toEqual({ types: "./dist/src/index.d.ts", default: "./dist/src/index.js" })
    expect(shipped.engines.node).toBe(manifest.engines.node)
    for (const file of ["dist/src/index.js", "dist/src/index.d.ts", "dist/src/index.js.map", "dist/src/dashboard/page.html", "dist/actors/inference/worker.js", "dist/experiments/grid-quest.js"]) {
      expect(existsSync(path.join(installed, file)), file).toBe(true)
    }
    expect(readdirSync(installed).sort()).toEqual(["README.md", "bin", "dist", "package.json"])
  })

  for (const node of nodes) {
    describe(`on Node ${node.name}`, () => {
      it("runs the CLI's help and makes a model with `npx episodic model init` in the project", async () => {
        const version = await sh("node", ["--version"], project, node.bin)
        expect(version.stdout).toMatch(new RegExp(`^v${node.name}\\.`))
        const help = await sh("npx", ["episodic", "--help"], project, node.bin)
        succeeds(help, "npx episodic --help")
        expect(help.stdout).toMatch(/serve-env/)
        const init = await sh("npx", ["episodic", "model", "init", "--preset", "micro"], project, node.bin)
        succeeds(init, "npx episodic model init")
        expect(existsSync(path.join(project, "models", "micro", "onnx", "model.onnx"))).toBe(true)
      }, USE_MS)

      it("a plain .mjs file imports episodic and runs an experiment through runExperiment", async () => {
        const name = `mjs-node${node.name}`
        writeFileSync(path.join(project, `${name}.mjs`), mjsConsumer(name))
        const result = await sh("node", [`${name}.mjs`], project, node.bin)
        succeeds(result, `node ${name}.mjs`)
        expect(JSON.parse(result.stdout)).toEqual({ trajectories: 8, directory: path.join(project, "runs", name), episodes: 8 })
        expect(records(path.join(project, "runs", name, "trajectories.jsonl"))).toHaveLength(8)
      }, USE_MS)

      it("the README's example type-checks against the shipped types with tsc, and runs as TypeScript and as JavaScript", async () => {
        succeeds(await sh("npx", ["tsc", "-p", "."], project, node.bin), "tsc")
        for (const file of ["echo.ts", "echo.mjs"]) {
          const result = await sh("node", [file], project, node.bin)
          succeeds(result, `node ${file}`)
          const lines = result.stdout.trim().split("\n")
          expect(lines).toHaveLength(9)
          for (const line of lines.slice(0, 8)) expect(line).toMatch(/^[01] done$/)
          expect(lines[8]).toMatch(/^8 episodes, mean reward [\d.]+: /)
          expect(lines[8]!.endsWith(`: ${path.join(project, "runs", "echo")}`)).toBe(true)
        }
      }, USE_MS)

      it("`npx episodic run my-experiment.ts` and the default experiment run from the project's directory", async () => {
        const name = `cli-node${node.name}`
        const ran = await sh("npx", ["episodic", "run", "my-experiment.ts", "--name", name], project, node.bin)
        succeeds(ran, "npx episodic run my-experiment.ts")
        expect(ran.stdout).toMatch(/done: 6 episodes/)
        expect(records(path.join(project, "runs", name, "trajectories.jsonl"))).toHaveLength(6)
        // The same episodes on a worker thread: the package's compiled worker entry, its tokenizer from the project.
        const onWorker = await sh("npx", ["episodic", "run", "my-experiment.ts", "--name", `${name}-workers`, "--workers", "1"], project, node.bin)
        succeeds(onWorker, "npx episodic run my-experiment.ts --workers 1")
        expect(onWorker.stdout).toMatch(/done: 6 episodes/)
        // The default experiment (compiled in the package) trains: shrunk to one update of 2 prompts x 8 samples.
        const trained = await sh("npx", [
          "episodic", "run", "--name", `default-node${node.name}`, "--episodes", "16", "--set", "trainer.promptsPerUpdate=2",
          "--set", "trainer.warmStart.episodes=8", "--set", "trainer.warmStart.steps=2", "--set", "evaluation.episodes=4"
        ], project, node.bin)
        succeeds(trained, "npx episodic run")
        expect(trained.stdout).toMatch(/training: 1 updates to version 2 on wasm/)
        const summary = JSON.parse(readFileSync(path.join(project, "runs", `default-node${node.name}`, "summary.json"), "utf8"))
        expect(summary.episodes).toBe(16)
        const insidePackage = readdirSync(path.join(project, "node_modules", "episodic"))
        expect(insidePackage).not.toContain("runs")
        expect(insidePackage).not.toContain("models")
      }, USE_MS)

      it("`npx episodic serve-env grid-quest` serves from the project's directory until Ctrl-C", async () => {
        // Its own process group, as a terminal's job is: Ctrl-C reaches npx and episodic both.
        const server = spawn("npx", ["episodic", "serve-env", "grid-quest", "--port", "0"], {
          cwd: project,
          env: userEnv(node.bin),
          stdio: ["ignore", "pipe", "pipe"],
          detached: true
        })
        const ctrlC = () => {
          if (server.exitCode === null && server.signalCode === null) process.kill(-server.pid!, "SIGINT")
        }
        const done = collect(server)
        let output = ""
        try {
          const url = await new Promise<string>((resolve, reject) => {
            server.stdout!.on("data", (chunk) => {
              output += chunk
              const match = /listening on (http:\/\/\S+)/.exec(output)
              if (match) resolve(match[1]!)
            })
            server.on("close", () => reject(new Error(`serve-env ended: ${output}`)))
          })
          expect(await (await fetch(`${url}/health`)).json()).toMatchObject({ status: "healthy" })
          const reset = await (await fetch(`${url}/reset`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ seed: 1 })
          })).json() as { observation: { text: string } }
          expect(reset.observation.text).toMatch(/You are at \(\d, \d\)/)
        } finally {
          ctrlC()
        }
        const finished = await done
        expect(finished.stderr).toBe("")
        expect(finished.stdout).toMatch(/episodic serve-env: stopped/)
      }, USE_MS)
    })
  }
})
