/**
 * The diagram in docs/episode-machine.md is the one scripts/machine-diagram.ts draws from the machine now: a
 * change to the machine without `npx node scripts/machine-diagram.ts` fails here. And the drawing leaves
 * nothing out: every state, every invoked actor, every transition.
 */
import { spawnSync } from "node:child_process"
import { copyFileSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { describe, expect, it } from "vitest"
import { episodeMachine } from "../machines/episode.ts"
import { descendants, diagramSection, docFile, mermaid, withDiagram } from "../scripts/machine-diagram.ts"

const script = path.resolve(import.meta.dirname, "..", "scripts", "machine-diagram.ts")
const diagram = mermaid(episodeMachine.root)

describe("the machine diagram", () => {
  it("in docs/episode-machine.md is the one the machine draws now", () => {
    expect(readFileSync(docFile, "utf8")).toContain(diagramSection())
  })

  it("names every state, in its composite state, and every invoked actor", () => {
    const states = descendants(episodeMachine.root)
    expect(states.map((state) => state.key)).toEqual(["running", "pending", "generating", "interacting", "done"])
    for (const state of states) {
      const named = state.type === "compound" ? `state ${state.key} {` : new RegExp(`^\\s*(${state.key}|state ".*" as ${state.key})$`, "m")
      expect(diagram).toMatch(named)
      for (const invoke of state.invoke) expect(diagram).toContain(`state "${state.key} (invoke ${String(invoke.src)})" as ${state.key}`)
    }
    expect(diagram).toMatch(/state running \{\n(\s{4}.*\n)+\s{2}\}\n\s{2}done\n/)
    expect(diagram).toContain("  [*] --> running\n")
    expect(diagram).toContain("    [*] --> pending\n")
    expect(diagram).toContain("  done --> [*]")
  })

  it("draws every transition of the machine", () => {
    const transitions = descendants(episodeMachine.root).flatMap((state) => [...state.always ?? [], ...[...state.transitions.values()].flat()])
    const labels = diagram.split("\n").flatMap((line) => {
      const edge = /^\s*(\w+) --> (\w+) : (.*)$/.exec(line)
      return edge === null ? [] : edge[3]!.split("<br/>").map((label) => `${edge[1]} --> ${edge[2]} : ${label}`)
    })
    expect(labels).toHaveLength(transitions.length)
    expect(labels).toEqual(expect.arrayContaining([
      "running --> done : INTERRUPT / interrupted",
      "running --> done : after(episodeTimeout) / timeout",
      "pending --> generating : RESET_DONE",
      "pending --> done : FAILED / env_error",
      "generating --> done : always [turnsExhausted] / max_turns",
      "generating --> done : GENERATE_DONE [inline guard] / max_tokens",
      "generating --> done : FAILED / inference_error",
      "interacting --> done : INTERACT_DONE [inline guard] / done",
      "interacting --> generating : INTERACT_DONE"
    ]))
  })

  it("--check exits 1 on a stale doc and 0 on a current one; without it the script rewrites the doc", () => {
    const stale = path.join(mkdtempSync(path.join(tmpdir(), "episodic-diagram-")), "episode-machine.md")
    copyFileSync(docFile, stale)
    writeFileSync(stale, readFileSync(stale, "utf8").replace("pending --> generating : RESET_DONE", "pending --> generating : RESET"))
    const node = (...args: ReadonlyArray<string>) => spawnSync(process.execPath, [script, ...args], { encoding: "utf8" })

    const checked = node("--check", stale)
    expect(checked.status).toBe(1)
    expect(checked.stderr).toContain("the machine diagram is stale; regenerate it with `npx node scripts/machine-diagram.ts`")

    expect(node(stale).status).toBe(0)
    expect(readFileSync(stale, "utf8")).toBe(withDiagram(readFileSync(docFile, "utf8")))
    expect(node("--check", stale).status).toBe(0)
  })
})
