/**
 * An engine worker thread (EngineWorkers): plays the episodes the main thread sends it, each with Episode.run as
 * the calling thread would, with its own environments (the built-in ones and the settings' module's) and its own
 * tokenizer loaded from the main thread's directory; generation goes back to the main thread's Inference.
 */
import { NodeWorkerRunner } from "@effect/platform-node"
import { Cause, Deferred, Effect, Layer } from "effect"
import { RpcClient, RpcServer, RpcWorker } from "effect/rpc"
import * as path from "node:path"
import { pathToFileURL } from "node:url"
import { MessagePort } from "node:worker_threads"
import { EngineWorkerError, EpisodeRpcs, InferenceRpcs, untraced, WorkerSettings } from "./EngineWorkers.ts"
import type { EnvironmentDefinition } from "./Environment.ts"
import { EnvironmentRegistry } from "./environments/registry.ts"
import * as Episode from "./Episode.ts"
import { errorMessage } from "./errorMessage.ts"
import { InferenceError } from "./Generation.ts"
import { Inference } from "./Inference.ts"
import { clientProtocol } from "./MessagePortRpc.ts"
import { load, Tokenizer } from "./Tokenizer.ts"

/** The built-in environments and the module's (an experiment file's default export has `environments`). */
const registryOf = (module: string | undefined) =>
  Effect.tryPromise({
    try: async () => {
      const registry = EnvironmentRegistry.builtins()
      if (module === undefined) return registry
      const url = module.startsWith("file:") ? module : pathToFileURL(path.resolve(module)).href
      const exported = (await import(url) as { readonly default?: { readonly environments?: ReadonlyArray<EnvironmentDefinition<any>> } }).default
      for (const definition of exported?.environments ?? []) registry.register(definition)
      return registry
    },
    catch: (cause) => new EngineWorkerError({ message: `cannot load the environments of ${module}: ${errorMessage(cause)}` })
  })

const Handlers = EpisodeRpcs.toLayer(Effect.gen(function*() {
  const settings = yield* RpcWorker.initialMessage(WorkerSettings).pipe(Effect.orDie)
  const registry = yield* registryOf(settings.module)
  const tokenizer = yield* Effect.tryPromise({
    try: () => load(settings.tokenizer),
    catch: (cause) => new EngineWorkerError({ message: `cannot load the tokenizer at ${settings.tokenizer}: ${errorMessage(cause)}` })
  })
  if (!(settings.inference instanceof MessagePort)) return yield* Effect.die(new Error("the initial message has no port to the main thread"))
  const main = yield* RpcClient.make(InferenceRpcs, untraced).pipe(Effect.provideServiceEffect(RpcClient.Protocol, clientProtocol(settings.inference)))
  const inference = Inference.of({
    generate: (request) =>
      main.Generate(request).pipe(Effect.catchTag("RpcClientError", (error) => Effect.fail(new InferenceError({ message: `the main thread's inference: ${error.message}` })))),
    ...(settings.release ? { release: (episodeId: string) => main.Release({ episodeId }).pipe(Effect.ignore) } : {})
  })

  // One stop per run, heard from the main thread by the first of the run's episodes here.
  const scope = yield* Effect.scope
  const stops = new Map<number, Deferred.Deferred<void>>()
  const stopOf = (run: number) =>
    Effect.suspend(() => {
      const known = stops.get(run)
      if (known !== undefined) return Effect.succeed(known)
      const stop = Deferred.makeUnsafe<void>()
      stops.set(run, stop)
      return main.AwaitStop({ run }).pipe(
        Effect.flatMap((stopped) => (stopped ? Deferred.succeed(stop, undefined) : Effect.void)),
        Effect.ensuring(Effect.sync(() => stops.delete(run))),
        Effect.ignore,
        Effect.forkIn(scope),
        Effect.as(stop)
      )
    })

  return EpisodeRpcs.of({
    Episode: ({ input, row, sampling, sample, run }) =>
      Effect.gen(function*() {
        const stop = run === undefined ? undefined : yield* stopOf(run)
        return yield* Episode.run({
          input,
          row,
          makeEnvironment: () => registry.get(input.interaction).make(settings.environmentConfig[input.interaction] ?? {}),
          sampling,
          sample,
          envCallTimeoutMs: settings.envCallTimeoutMs,
          stop
        })
      }).pipe(Effect.provideService(Inference, inference), Effect.provideService(Tokenizer, tokenizer))
  })
}))

const Worker = RpcServer.layer(EpisodeRpcs, untraced).pipe(
  Layer.provide(Handlers),
  Layer.provide(RpcServer.layerProtocolWorkerRunner),
  Layer.provide(NodeWorkerRunner.layer)
)

// A worker that cannot start throws, so that the main thread's `error` event hears why (a plain Error: its
// message is what survives the trip). Being closed by the main thread interrupts it: that is no failure.
const exit = await Effect.runPromiseExit(Layer.launch(Worker))
if (exit._tag === "Failure" && !Cause.hasInterruptsOnly(exit.cause)) {
  const cause = Cause.squash(exit.cause)
  throw new Error(typeof cause === "object" && cause !== null && "message" in cause ? String(cause.message) : String(cause))
}
