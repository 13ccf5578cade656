/**
 * Command-line overrides of an experiment's fields: named flags for the common ones, and `--set path=value`
 * for any field (`--set limits.maxTurns=8 --set sampling.topP=0.9`). Values are JSON when they parse as
 * JSON (numbers, booleans, objects), text otherwise. The result is checked by `resolve`, whose error names
 * the field.
 */
import { ExperimentError, type ExperimentConfig } from "../Experiment.ts"

const parseValue = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return text
  }
}

/** `config` with `path` (dot-separated) set to `value`; objects on the way are copied, not mutated. */
export const setPath = (config: Record<string, unknown>, path: string, value: unknown): Record<string, unknown> => {
  const [head, ...rest] = path.split(".")
  if (head === undefined || head === "") throw new ExperimentError({ message: `--set: empty field name in "${path}"` })
  if (rest.length === 0) return { ...config, [head]: value }
  const inner = config[head]
  if (inner !== undefined && (typeof inner !== "object" || inner === null || Array.isArray(inner))) {
    throw new ExperimentError({ message: `--set ${path}: "${head}" is not an object in this experiment` })
  }
  return { ...config, [head]: setPath((inner ?? {}) as Record<string, unknown>, rest.join("."), value) }
}

export interface OverrideFlags {
  readonly name?: string | undefined
  readonly model?: string | undefined
  readonly episodes?: number | undefined
  readonly concurrency?: number | undefined
  readonly workers?: number | undefined
  readonly seed?: number | undefined
  readonly out?: string | undefined
  readonly samplesPerRow?: number | undefined
  readonly maxTurns?: number | undefined
  readonly maxNewTokens?: number | undefined
  readonly temperature?: string | undefined
  readonly parquet?: boolean | undefined
  readonly set?: Readonly<Record<string, string>> | undefined
}

export const applyOverrides = (loaded: ExperimentConfig, flags: OverrideFlags): ExperimentConfig => {
  let config = { ...loaded } as Record<string, unknown>
  const set = (path: string, value: unknown) => {
    if (value !== undefined) config = setPath(config, path, value)
  }
  set("name", flags.name)
  set("model", flags.model)
  set("concurrency", flags.concurrency)
  set("workers", flags.workers)
  set("seed", flags.seed)
  set("out", flags.out)
  set("samplesPerRow", flags.samplesPerRow)
  set("limits.maxTurns", flags.maxTurns)
  set("limits.maxNewTokens", flags.maxNewTokens)
  if (flags.temperature !== undefined) {
    const temperature = Number(flags.temperature)
    if (!Number.isFinite(temperature)) throw new ExperimentError({ message: `--temperature must be a number, got "${flags.temperature}"` })
    set("sampling.temperature", temperature)
  }
  if (flags.parquet === true) set("outputs.parquet", true)
  for (const [path, text] of Object.entries(flags.set ?? {})) set(path, parseValue(text))
  if (flags.episodes !== undefined) {
    if (loaded.environment === undefined) {
      throw new ExperimentError({ message: "--episodes needs an experiment with `environment`; this one reads a dataset" })
    }
    // `environment.episodes` counts rows, and each row plays samplesPerRow episodes (a GRPO group).
    const samplesPerRow = typeof config["samplesPerRow"] === "number" ? config["samplesPerRow"] : 1
    if (flags.episodes % samplesPerRow !== 0) {
      throw new ExperimentError({
        message: `--episodes ${flags.episodes}: this experiment plays ${samplesPerRow} episodes per row (samplesPerRow), so give a multiple of ${samplesPerRow}`
      })
    }
    set("environment.episodes", flags.episodes / samplesPerRow)
  }
  return config as unknown as ExperimentConfig
}
