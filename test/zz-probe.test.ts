import { assert, layer } from "@effect/vitest"
import { Effect, Stream } from "effect"
import { Engine } from "../src/Engine.ts"
import { define, type Environment } from "../src/Environment.ts"
import { EnvironmentRegistry } from "../src/environments/registry.ts"
import { limits, policyLayer, sampling } from "./support.ts"

layer(policyLayer(() => "ok"), { excludeTestServices: true })("probe", (it) => {
  it.effect("bp", () => Effect.gen(function*() {
    for (const [concurrency, bufferCapacity] of [[4, 4], [4, 1], [1, 1], [4, 16], [16, 4], [1, 16]] as const) {
      let started = 0, consumed = 0, most = 0
      const registry = new EnvironmentRegistry().register(define({ name: "c", description: "", make: (): Environment => ({
        reset: () => { started++; most = Math.max(most, started - consumed); return {} },
        step: () => ({ observation: "bye", reward: 1, done: true })
      }) }))
      const n = yield* Effect.gen(function*() {
        const engine = yield* Engine
        return yield* engine.run(Stream.fromIterable(Array.from({ length: 60 }, () => ({ prompt: [{ role: "user" as const, content: "x" }], extra_info: { interaction_kwargs: { name: "c" } } })))).pipe(
          Stream.mapEffect(() => Effect.sleep(10).pipe(Effect.andThen(Effect.sync(() => ++consumed))), { concurrency: 1 }),
          Stream.runCount)
      }).pipe(Effect.provide(Engine.layer({ environments: registry, concurrency, samplesPerRow: 1, limits: limits(), sampling, envCallTimeoutMs: 1000, seed: 1, bufferCapacity })))
      console.log({ concurrency, bufferCapacity, most, n })
    }
  }))
})
