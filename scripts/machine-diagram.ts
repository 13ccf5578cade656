/**
 * Draws the episode machine (machines/episode.ts) as a Mermaid state diagram in docs/episode-machine.md,
 * between the `machine-diagram` markers, from the machine definition itself, so the doc cannot drift from
 * the machine: `npx node scripts/machine-diagram.ts` rewrites the diagram; `--check` only compares and exits 1
 * when the doc is stale (test/machine-diagram.test.ts checks the same). A doc path may follow, for tests.
 *
 * Compound states are Mermaid composite states; an atomic state shows the actor it invokes. One arrow joins
 * two states, with a line per transition, `event [guard] / reason`: the event as the machine config names it (`INTERRUPT`, `after(episodeTimeout)`,
 * `onDone(generate)`, `onError(reset)`, `always`), the guard, and the finish reason the transition records.
 */
import { readFileSync, writeFileSync } from "node:fs"
import * as path from "node:path"
import { parseArgs } from "node:util"
import type { AnyStateNode, AnyTransitionDefinition, UnknownAction } from "xstate"
import { episodeMachine } from "../machines/episode.ts"

export const docFile = path.resolve(import.meta.dirname, "..", "docs", "episode-machine.md")
const startMarker = "<!-- machine-diagram:start -->"
const endMarker = "<!-- machine-diagram:end -->"

const children = (node: AnyStateNode): ReadonlyArray<AnyStateNode> => Object.values(node.states)

/** Every state node under `node`, depth first, in the order the config writes them. */
export const descendants = (node: AnyStateNode): ReadonlyArray<AnyStateNode> =>
  children(node).flatMap((child) => [child, ...descendants(child)])

const eventLabel = (source: AnyStateNode, transition: AnyTransitionDefinition): string => {
  const type = transition.eventType
  const invoked = source.invoke.find((invoke) => type.endsWith(`.actor.${invoke.id}`))
  if (invoked !== undefined && type.startsWith("xstate.done.actor.")) return `onDone(${String(invoked.src)})`
  if (invoked !== undefined && type.startsWith("xstate.error.actor.")) return `onError(${String(invoked.src)})`
  const delayed = source.after.find((after) => after.eventType === type)
  if (delayed !== undefined) return `after(${String(delayed.delay)})`
  return type
}

const guardLabel = (transition: AnyTransitionDefinition): string => {
  const guard = transition.guard
  if (guard === undefined) return ""
  if (typeof guard === "string") return ` [${guard}]`
  // An inline guard has no name to show; the finish reason after it says what it decides.
  if (typeof guard === "function") return " [inline guard]"
  return ` [${guard.type}]`
}

// The episode machine's `finish` action records why the episode ended: the one action worth a label.
const reasonLabel = (actions: ReadonlyArray<UnknownAction>): string => {
  for (const action of actions) {
    const params = typeof action === "object" && action.type === "finish" ? action.params : undefined
    if (typeof params === "object" && params !== null && "reason" in params) return ` / ${String(params.reason)}`
  }
  return ""
}

/** Whether `node` is a strict descendant of `ancestor`. */
const within = (node: AnyStateNode, ancestor: AnyStateNode) =>
  node.path.length > ancestor.path.length && ancestor.path.every((key, index) => node.path[index] === key)

interface Edge { readonly from: string; readonly to: string; readonly labels: Array<string> }

/**
 * The machine's transitions as edges, one per pair of states, with a line for each transition in the
 * machine's order (for one event, the order XState tries them). Each edge is filed under the state whose
 * composite block must hold it, the deepest one containing both ends: Mermaid puts a state in the block
 * where it is first named, so an edge written in a block would pull a state from outside into it.
 */
const edgesByBlock = (root: AnyStateNode): Map<AnyStateNode, Array<Edge>> => {
  const blocks = new Map<AnyStateNode, Array<Edge>>()
  const add = (source: AnyStateNode, target: AnyStateNode, label: string) => {
    // Depth first lists ancestors before their descendants: the last state containing both is the deepest.
    const block = descendants(root).filter((node) => within(source, node) && within(target, node)).at(-1) ?? root
    const edges = blocks.get(block) ?? []
    blocks.set(block, edges)
    const edge = edges.find((e) => e.from === source.key && e.to === target.key)
    if (edge === undefined) edges.push({ from: source.key, to: target.key, labels: [label] })
    else edge.labels.push(label)
  }
  for (const source of descendants(root)) {
    const transitions = [...(source.always ?? []), ...[...source.transitions.values()].flat()]
    for (const transition of transitions) {
      const label = `${transition.eventType === "" ? "always" : eventLabel(source, transition)}${guardLabel(transition)}${reasonLabel(transition.actions)}`
      // A targetless transition only runs actions; it is drawn as a loop so that it is not lost.
      for (const target of transition.target ?? [source]) add(source, target, label)
    }
  }
  return blocks
}

/** The Mermaid `stateDiagram-v2` source of a machine's root state node. */
export const mermaid = (root: AnyStateNode): string => {
  const keys = descendants(root).map((node) => node.key)
  const repeated = keys.find((key, index) => keys.indexOf(key) !== index)
  if (repeated !== undefined) throw new Error(`two states are named "${repeated}": Mermaid names states by key, so keys must be unique`)
  const edges = edgesByBlock(root)
  const lines: Array<string> = ["stateDiagram-v2"]
  const block = (node: AnyStateNode, indent: string) => {
    for (const child of children(node)) {
      if (child.type === "compound" || child.type === "parallel") {
        lines.push(`${indent}state ${child.key} {`)
        block(child, `${indent}  `)
        lines.push(`${indent}}`)
      } else {
        // Mermaid shows a `key : description` state as the description alone; a quoted name keeps the key.
        const invoked = child.invoke.map((invoke) => `invoke ${String(invoke.src)}`).join(", ")
        lines.push(invoked === "" ? `${indent}${child.key}` : `${indent}state "${child.key} (${invoked})" as ${child.key}`)
      }
    }
    for (const initial of node.initial?.target ?? []) lines.push(`${indent}[*] --> ${initial.key}`)
    for (const edge of edges.get(node) ?? []) lines.push(`${indent}${edge.from} --> ${edge.to} : ${edge.labels.join("<br/>")}`)
    for (const child of children(node)) if (child.type === "final") lines.push(`${indent}${child.key} --> [*]`)
  }
  block(root, "  ")
  return lines.join("\n")
}

/** What goes between the markers. */
export const diagramSection = (): string =>
  [
    startMarker,
    "<!-- Generated from machines/episode.ts by `npx node scripts/machine-diagram.ts`; edit the machine, not this. -->",
    "```mermaid",
    mermaid(episodeMachine.root),
    "```",
    endMarker
  ].join("\n")

/** The doc with its diagram section as the machine draws it now. */
export const withDiagram = (doc: string): string => {
  const start = doc.indexOf(startMarker)
  const end = doc.indexOf(endMarker)
  if (start === -1 || end < start) throw new Error(`the doc has no ${startMarker} ... ${endMarker} section`)
  return doc.slice(0, start) + diagramSection() + doc.slice(end + endMarker.length)
}

if (import.meta.main) {
  const { values, positionals } = parseArgs({ options: { check: { type: "boolean", default: false } }, allowPositionals: true })
  const file = path.resolve(positionals[0] ?? docFile)
  const doc = readFileSync(file, "utf8")
  const updated = withDiagram(doc)
  if (values.check) {
    if (updated !== doc) {
      console.error(`${file}: the machine diagram is stale; regenerate it with \`npx node scripts/machine-diagram.ts\``)
      process.exit(1)
    }
    console.log(`${file}: the machine diagram is up to date`)
  } else {
    writeFileSync(file, updated)
    console.log(updated === doc ? `${file}: the machine diagram was already up to date` : `${file}: wrote the machine diagram`)
  }
}
