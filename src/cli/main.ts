/**
 * The `episodic` command line:
 * - `episodic run [experiment | run directory]` runs an experiment (default: experiments/grid-quest.ts) and
 *   writes runs/<name>/ (config, trajectories, metrics, summary, plots), with a progress line, and on
 *   request a dashboard (--dashboard) and the Stately inspector (--inspect);
 * - `episodic model init` makes a model directory from nothing;
 * - `episodic serve-env <environment>` serves an environment over OpenEnv's protocol until Ctrl-C or SIGTERM.
 *
 * Ctrl-C (or SIGTERM, as a job scheduler sends it) is gentle the first time: no new episodes start, running
 * ones end `interrupted` and are written whole, the summary is written, and the process exits 130. A second
 * signal exits at once.
 */
import { NodeServices } from "@effect/platform-node"
import { Cause, Console, Deferred, Effect, Exit, Option, Runtime } from "effect"
import { Argument, CliError, Command, Flag } from "effect/cli"
import { existsSync, readFileSync, statSync } from "node:fs"
import * as path from "node:path"
import { fileURLToPath, pathToFileURL } from "node:url"
import * as EnvServerOptions from "../../actors/env-server/options.ts"
import { errorMessage } from "../errorMessage.ts"
import { ExperimentError, resolve, type ExperimentConfig } from "../Experiment.ts"
import * as Run from "../Run.ts"
import { localModel } from "../remote-inference/run.ts"
import { model } from "./model.ts"
import { applyOverrides } from "./overrides.ts"
import * as Watchers from "./watchers.ts"

const packageRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..")
// grid-quest.ts in a checkout, the compiled grid-quest.js in an installed package (whose root is dist/).
const defaultExperiment = path.join(packageRoot, "experiments", `grid-quest${path.extname(fileURLToPath(import.meta.url))}`)

const loadExperiment = (file: string) =>
  Effect.tryPromise({
    try: async () => {
      const absolute = path.resolve(file)
      if (!existsSync(absolute)) throw new ExperimentError({ message: `no experiment file at ${absolute}` })
      // A run directory runs again: its experiment file, with the resolved config it recorded.
      if (statSync(absolute).isDirectory()) {
        const recorded = path.join(absolute, "config.json")
        if (!existsSync(recorded)) throw new ExperimentError({ message: `${absolute} is a directory without a config.json: not a run directory` })
        const config = JSON.parse(readFileSync(recorded, "utf8")) as ExperimentConfig
        if (config.source === undefined || !existsSync(config.source)) {
          throw new ExperimentError({ message: `${recorded} names no experiment file that exists (source: ${String(config.source)})` })
        }
        const { default: base } = await import(pathToFileURL(config.source).href) as { readonly default: ExperimentConfig }
        return { ...base, ...config }
      }
      const module = await import(pathToFileURL(absolute).href) as { readonly default?: ExperimentConfig }
      if (typeof module.default !== "object" || module.default === null) {
        throw new ExperimentError({ message: `${file} must default-export defineExperiment({...})` })
      }
      return { ...module.default, source: absolute }
    },
    catch: (cause) => cause instanceof ExperimentError ? cause : new ExperimentError({ message: `cannot load ${file}: ${String(cause)}` })
  })

const optionalInt = (name: string, description: string) =>
  Flag.Int(name).pipe(Flag.withDescription(description), Flag.optional)
const optionalString = (name: string, description: string) =>
  Flag.String(name).pipe(Flag.withDescription(description), Flag.optional)

const run = Command.make(
  "run",
  {
    experiment: Argument.String("experiment").pipe(
      Argument.withDescription(
        "An experiment file that default-exports defineExperiment({...}), or a run directory to run again; default: experiments/grid-quest.ts"
      ),
      Argument.optional
    ),
    episodes: optionalInt(
      "episodes",
      "Episodes to run, a multiple of samplesPerRow: sets the experiment's rows (environment.episodes) to episodes / samplesPerRow"
    ),
    concurrency: optionalInt("concurrency", "Episodes running at once"),
    workers: optionalInt("workers", "Worker threads that play the episodes (0: the run's own thread); see docs/benchmarks.md, More cores"),
    seed: optionalInt("seed", "Run seed: seeds rows, environments and sampling"),
    out: optionalString("out", "Parent directory of the run directory (default: runs)"),
    name: optionalString("name", "Run name: the run directory is <out>/<name>"),
    model: optionalString("model", "The model directory"),
    samplesPerRow: optionalInt("samples-per-row", "Episodes per row (a GRPO group)"),
    maxTurns: optionalInt("max-turns", "Assistant turns per episode at most"),
    maxNewTokens: optionalInt("max-new-tokens", "Tokens per assistant turn at most"),
    temperature: optionalString("temperature", "Sampling temperature; 0 is greedy"),
    set: Flag.KeyValuePair("set").pipe(
      Flag.withDescription("Any field of the experiment, e.g. --set limits.timeoutMs=60000 --set sampling.topP=0.9 (values are JSON or text)"),
      Flag.optional
    ),
    parquet: Flag.Boolean("parquet").pipe(Flag.withDescription("Also write trajectories.parquet (verl's column names)"), Flag.withDefault(false)),
    dashboard: Flag.Boolean("dashboard").pipe(
      Flag.withDescription("Serve a live web page of the run on 127.0.0.1 and print its address"),
      Flag.withDefault(false)
    ),
    dashboardPort: optionalInt("dashboard-port", "Port of the dashboard (default: a free one)"),
    inspect: Flag.String("inspect").pipe(
      Flag.withOptionalValue("ws://localhost:8080"),
      Flag.withDescription(
        "Send every episode's states to a Stately inspector server: --inspect (ws://localhost:8080) or --inspect=ws://host:port; start one with `npm run inspector`"
      ),
      Flag.optional
    )
  },
  Effect.fn(function*(flags) {
    const file = Option.getOrElse(flags.experiment, () => defaultExperiment)
    const loaded = yield* loadExperiment(file)
    const overridden = yield* Effect.try({
      try: () =>
        applyOverrides(loaded, {
          name: Option.getOrUndefined(flags.name),
          model: Option.getOrUndefined(flags.model),
          episodes: Option.getOrUndefined(flags.episodes),
          concurrency: Option.getOrUndefined(flags.concurrency),
          workers: Option.getOrUndefined(flags.workers),
          seed: Option.getOrUndefined(flags.seed),
          out: Option.getOrUndefined(flags.out),
          samplesPerRow: Option.getOrUndefined(flags.samplesPerRow),
          maxTurns: Option.getOrUndefined(flags.maxTurns),
          maxNewTokens: Option.getOrUndefined(flags.maxNewTokens),
          temperature: Option.getOrUndefined(flags.temperature),
          parquet: flags.parquet,
          set: Option.getOrUndefined(flags.set)
        }),
      catch: (cause) => cause instanceof ExperimentError ? cause : new ExperimentError({ message: String(cause) })
    })
    const experiment = yield* Effect.try({
      try: () => resolve(overridden),
      catch: (cause) => cause instanceof ExperimentError ? cause : new ExperimentError({ message: String(cause) })
    })

    const stop = yield* Deferred.make<void>()
    let interrupts = 0
    const onSignal = () => {
      if (++interrupts > 1) process.exit(130)
      process.stderr.write("\nstopping: running episodes end as `interrupted` and are written; Ctrl-C again to quit now\n")
      Deferred.doneUnsafe(stop, Exit.void)
    }
    process.on("SIGINT", onSignal)
    process.on("SIGTERM", onSignal)

    const watchers = yield* Watchers.make({
      dashboard: flags.dashboard,
      dashboardPort: Option.getOrUndefined(flags.dashboardPort),
      inspect: Option.getOrUndefined(flags.inspect),
      model: localModel(experiment),
      // At a terminal the dashboard stays up after the run until Ctrl-C, so the finished run can be looked at.
      lingerDashboard: process.stdout.isTTY === true
    })
    const { directory, summary } = yield* Run.run(experiment, overridden, {
      stop,
      inspect: watchers.inspect,
      onLog: (line) => watchers.log(line),
      onStart: (directory, monitor) => {
        process.stdout.write(`episodic run ${experiment.name}: writing ${directory}\n`)
        watchers.start(monitor)
      }
    }).pipe(Effect.ensuring(Effect.promise(async () => {
      process.off("SIGINT", onSignal)
      process.off("SIGTERM", onSignal)
      await watchers.stop()
    })))
    yield* Console.log(
      `done: ${summary.episodes} episodes in ${summary.wall_seconds.toFixed(1)} s, mean reward ${summary.mean_reward.toFixed(3)}, ` +
        `finish reasons ${JSON.stringify(summary.finish_reasons)}\n` +
        (summary.evaluation === undefined
          ? ""
          : summary.evaluation.splits === undefined
          ? `evaluation: ${summary.evaluation.episodes} held-out episodes${summary.evaluation.greedy ? ", greedy" : ""}: ` +
            `success ${summary.evaluation.success_rate.toFixed(3)}, mean reward ${summary.evaluation.mean_reward.toFixed(3)}, ${summary.evaluation.mean_turns.toFixed(2)} turns\n`
          : `evaluation${summary.evaluation.greedy ? ", greedy" : ""} (eval_success is the first split's):\n` +
            Object.entries(summary.evaluation.splits).map(([split, e]) =>
              `  ${split}: ${e.episodes} held-out episodes, success ${e.success_rate.toFixed(3)}, mean reward ${e.mean_reward.toFixed(3)}, ${e.mean_turns.toFixed(2)} turns\n`
            ).join("")) +
        (summary.training === undefined
          ? ""
          : `training: ${summary.training.updates} updates to version ${summary.training.version} on ${summary.training.backend}, ` +
            `${summary.training.mean_update_seconds.toFixed(2)} s per update, ${(summary.training.mean_sync_seconds * 1000).toFixed(0)} ms per weight sync` +
            (summary.warmstart_success === null || summary.warmstart_success === undefined ? "" : `; warm-start success ${summary.warmstart_success.toFixed(3)}`) +
            `\n  rollout/trainer logprob difference: max ${summary.training.logprob_diff_max.toExponential(1)}, ${summary.training.logprob_diff_over_1e3} tokens over 1e-3` +
            `\n  checkpoint: ${summary.training.checkpoint}\n`) +
        `  ${directory}: trajectories.jsonl, metrics.jsonl, summary.json, config.json`
    )
    if (summary.interrupted && interrupts > 0) process.exitCode = 130
  })
).pipe(
  Command.withDescription("Run an experiment: episodes over its rows, trajectories to runs/<name>/trajectories.jsonl"),
  Command.withExamples([
    { command: "episodic run", description: "Run the default experiment (grid-quest)" },
    { command: "episodic run experiments/grid-quest-solver.ts --episodes 50", description: "Run an experiment file, overriding its episode count" },
    { command: "episodic run --dashboard", description: "Watch the run in a web page" },
    { command: "episodic run runs/grid-quest --name again", description: "Run a run directory's experiment again" }
  ])
)

/** Waits for Ctrl-C or SIGTERM: a server command runs until then, and its scope closes the server. */
const untilStopped = Effect.gen(function*() {
  const stop = yield* Deferred.make<void>()
  const onSignal = () => Deferred.doneUnsafe(stop, Exit.void)
  process.on("SIGINT", onSignal)
  process.on("SIGTERM", onSignal)
  yield* Deferred.await(stop).pipe(Effect.ensuring(Effect.sync(() => {
    process.off("SIGINT", onSignal)
    process.off("SIGTERM", onSignal)
  })))
})

const serveEnv = Command.make(
  "serve-env",
  {
    environment: Argument.String("environment").pipe(
      Argument.withDescription("The environment to serve: grid-quest, guess-number, arithmetic, chat, or one from --environments")
    ),
    port: Flag.Int("port").pipe(Flag.withDescription(`Port to listen on; 0 picks a free one (default ${EnvServerOptions.defaults.port})`), Flag.withDefault(EnvServerOptions.defaults.port)),
    host: Flag.String("host").pipe(
      Flag.withDescription("Address to bind: 127.0.0.1 (the default) is this machine only, 0.0.0.0 every interface"),
      Flag.withDefault(EnvServerOptions.defaults.host)
    ),
    maxSessions: Flag.Int("max-sessions").pipe(
      Flag.withDescription(`Sessions at once; more are refused with CAPACITY_REACHED (default ${EnvServerOptions.defaults.maxSessions})`),
      Flag.withDefault(EnvServerOptions.defaults.maxSessions)
    ),
    idleTimeoutMs: Flag.Int("idle-timeout-ms").pipe(
      Flag.withDescription(`Sessions idle for this long are ended (default ${EnvServerOptions.defaults.idleTimeoutMs})`),
      Flag.withDefault(EnvServerOptions.defaults.idleTimeoutMs)
    ),
    maxBodyBytes: Flag.Int("max-body-bytes").pipe(
      Flag.withDescription(`Largest request body or WebSocket message (default ${EnvServerOptions.defaults.maxBodyBytes})`),
      Flag.withDefault(EnvServerOptions.defaults.maxBodyBytes)
    ),
    token: Flag.String("token").pipe(
      Flag.withDescription("Bearer token every request but /health must carry (default: $EPISODIC_ENV_TOKEN, if set)"),
      Flag.optional
    ),
    environments: Flag.String("environments").pipe(
      Flag.withDescription("A module that default-exports an environment definition (or a list) to serve besides the built-in ones"),
      Flag.optional
    ),
    config: Flag.String("config").pipe(Flag.withDescription("The environment's config, as JSON"), Flag.optional),
    tokenizer: Flag.String("tokenizer").pipe(
      Flag.withDescription("A model directory whose tokenizer and chat template the environment owns: speak OpenEnv's chat_env (token ids in, messages and tokens out)"),
      Flag.optional
    )
  },
  Effect.fn(function*(flags) {
    // Loaded here, so that `episodic run` does not pay for the HTTP stack.
    const EnvServer = yield* Effect.promise(() => import("../../actors/env-server/index.ts"))
    const definition = yield* Effect.tryPromise({
      try: () => EnvServer.findEnvironment(flags.environment, Option.getOrUndefined(flags.environments)),
      catch: (cause) => new EnvServerOptions.EnvServerError({ message: errorMessage(cause) })
    })
    const config = yield* Effect.try({
      try: () => Option.match(flags.config, { onNone: () => ({}), onSome: (text) => JSON.parse(text) as Record<string, unknown> }),
      catch: (cause) => new EnvServerOptions.EnvServerError({ message: `--config is not JSON: ${errorMessage(cause)}` })
    })
    yield* Effect.scoped(Effect.gen(function*() {
      const server = yield* EnvServer.serve({
        definition,
        config,
        host: flags.host,
        port: flags.port,
        maxSessions: flags.maxSessions,
        idleTimeoutMs: flags.idleTimeoutMs,
        maxBodyBytes: flags.maxBodyBytes,
        token: Option.getOrUndefined(flags.token) ?? (process.env["EPISODIC_ENV_TOKEN"] || undefined),
        tokenizer: Option.getOrUndefined(flags.tokenizer)
      })
      yield* Console.log(
        `episodic serve-env ${definition.name}: listening on ${server.url} (WebSocket ${server.url.replace(/^http/, "ws")}/ws); Ctrl-C to stop`
      )
      yield* untilStopped
    }))
    yield* Console.log("episodic serve-env: stopped")
  })
).pipe(
  Command.withDescription("Serve an environment over OpenEnv's protocol: POST /reset, POST /step, GET /state, GET /health, GET /schema, WebSocket /ws"),
  Command.withExamples([
    { command: "episodic serve-env grid-quest --port 8765", description: "Serve grid-quest on 127.0.0.1:8765" },
    { command: "episodic serve-env chat --tokenizer models/tiny", description: "Serve chat as OpenEnv's chat_env: token ids in, messages and tokens out" },
    { command: "episodic serve-env my-env --environments my-env.ts --host 0.0.0.0", description: "Serve your own environment on every interface" }
  ])
)

const serveModel = Command.make(
  "serve",
  {
    model: Argument.String("model-dir").pipe(Argument.withDescription("The model directory to serve (config.json, tokenizer files, onnx/model.onnx)")),
    port: Flag.Int("port").pipe(Flag.withDescription("Port to listen on; 0 picks a free one (default 8000)"), Flag.withDefault(8000)),
    host: Flag.String("host").pipe(
      Flag.withDescription("Address to bind: 127.0.0.1 (the default) is this machine only, 0.0.0.0 every interface"),
      Flag.withDefault("127.0.0.1")
    ),
    maxBatchSize: Flag.Int("max-batch-size").pipe(Flag.withDescription("Sequences the actor decodes together at most (default 64)"), Flag.withDefault(64)),
    token: Flag.String("token").pipe(
      Flag.withDescription("Bearer token every request but /health must carry (default: $EPISODIC_INFERENCE_TOKEN, if set)"),
      Flag.optional
    )
  },
  Effect.fn(function*(flags) {
    // Loaded here, so that `episodic run` does not pay for the HTTP stack.
    const Server = yield* Effect.promise(() => import("../../actors/inference-server/index.ts"))
    yield* Effect.scoped(Effect.gen(function*() {
      const server = yield* Server.serve({
        model: flags.model,
        host: flags.host,
        port: flags.port,
        maxBatchSize: flags.maxBatchSize,
        token: Option.getOrUndefined(flags.token) ?? (process.env["EPISODIC_INFERENCE_TOKEN"] || undefined)
      })
      yield* Console.log(`episodic serve ${server.model}: listening on ${server.url} (OpenAI /v1, vLLM /inference/v1/generate); Ctrl-C to stop`)
      yield* untilStopped
    }))
    yield* Console.log("episodic serve: stopped")
  })
).pipe(
  Command.withDescription("Serve a model with the inference actor over OpenAI's and vLLM's protocols: /v1/completions, /v1/chat/completions, /inference/v1/generate, /tokenize, /update_weights"),
  Command.withExamples([
    { command: "episodic serve models/micro --port 8000", description: "Serve the micro model on 127.0.0.1:8000" },
    { command: "episodic run --model http://127.0.0.1:8000", description: "Generate a run's episodes on it" }
  ])
)

const episodic = Command.make("episodic").pipe(
  Command.withDescription("Multi-turn reinforcement learning for language models: episodes, environments, trajectories"),
  Command.withSubcommands([run, serveEnv, serveModel, model])
)

const program = Command.run(episodic, { version: "0.1.0" }).pipe(Effect.provide(NodeServices.layer))

const exit = await Effect.runPromiseExit(program)
if (Exit.isFailure(exit)) {
  const failure = Option.getOrUndefined(Cause.findErrorOption(exit.cause))
  if (CliError.isCliError(failure)) {
    // effect/cli has already shown the help or the bad flag; `--help` alone is a success.
    process.exitCode = (failure as { readonly [Runtime.errorExitCode]?: number })[Runtime.errorExitCode] ?? 1
  } else if (failure instanceof Error) {
    // Expected failures (bad experiment, bad dataset rows, missing tokenizer) are a line that names the problem.
    console.error(`episodic: ${failure.message}`)
    process.exitCode = 1
  } else if (!Cause.hasInterruptsOnly(exit.cause)) {
    console.error(Cause.pretty(exit.cause))
    process.exitCode = 1
  }
}
