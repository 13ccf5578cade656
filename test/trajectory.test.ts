/**
 * Trajectory.encode's fast path (a hand-written check and rename) gives exactly what the schema's encoder
 * gives, key order included, and leaves anything unsound to the schema, for its error.
 */
import { Schema } from "effect"
import { describe, expect, it } from "vitest"
import * as Trajectory from "../src/Trajectory.ts"

const bySchema = Schema.encodeSync(Trajectory.TrajectoryRecord)

const record = (extra: Partial<Trajectory.Trajectory> = {}): Trajectory.Trajectory => ({
  id: "3-1",
  groupId: "3",
  interaction: "grid-quest",
  messages: [{ role: "system", content: "rules" }, { role: "user", content: "start" }, { role: "assistant", content: "go" }, { role: "tool", content: "ok" }],
  promptIds: [1, 2, 3],
  responseIds: [4, 5, 6, 7],
  responseMask: [1, 1, 0, 0],
  responseLogprobs: [-0.5, -1.25, 0, 0],
  turns: [
    { role: "assistant", text: "go", tokenStart: 0, tokenEnd: 2, reward: 0.5, policyVersion: 3, policyVersions: [2, 3], timings: { startMs: 1, durationMs: 2.5 }, info: { success: false, nested: { a: [1] } } },
    { role: "tool", text: "ok", tokenStart: 2, tokenEnd: 4, reward: 0, policyVersion: null, timings: { startMs: 3, durationMs: 0 } }
  ],
  reward: 0.5,
  turnRewards: [0.5],
  numTurns: 1,
  finishReason: "max_turns",
  error: null,
  seed: 42,
  ...extra
})

describe("Trajectory.encode", () => {
  it("gives what the schema gives, byte for byte, with and without the optional fields", () => {
    const sequence = { messages: record().messages, promptIds: [9], responseIds: [8], responseMask: [1] as const, responseLogprobs: [-2], turns: record().turns }
    for (const t of [
      record(),
      record({ error: { type: "EnvironmentError", message: "step threw" }, finishReason: "env_error" }),
      record({ sequences: [sequence] }),
      record({ turns: [], messages: [], responseIds: [], responseMask: [], responseLogprobs: [], turnRewards: [], numTurns: 0 })
    ]) {
      expect(JSON.stringify(Trajectory.encode(t))).toBe(JSON.stringify(bySchema(t)))
      expect(Trajectory.decode(JSON.parse(JSON.stringify(Trajectory.encode(t))))).toEqual(t)
    }
  })

  it("refuses an unsound record with the schema's error", () => {
    const bad = [
      record({ responseMask: [1, 2, 0, 0] as never }),
      record({ seed: 1.5 }),
      record({ reward: Number.NaN }),
      record({ finishReason: "bored" as never }),
      record({ turns: [{ ...record().turns[1]!, policyVersion: undefined as never }] }),
      record({ messages: [{ role: "narrator" as never, content: "x" }] })
    ]
    for (const t of bad) {
      expect(() => bySchema(t)).toThrow()
      expect(() => Trajectory.encode(t)).toThrow(String((() => { try { bySchema(t) } catch (e) { return (e as Error).message } })()))
    }
  })
})
