/**
 * The seeds' Gym-style env server protocol (verl's GymEnvironmentInteraction) as an environment:
 * `POST /reset {instance_id, job_id, ...}` -> `{observation, system_prompt?}`, `POST /step {instance_id,
 * job_id, action}` -> `{observation, reward, done, info}`, `POST /finalize {instance_id, job_id}` when the
 * episode ends (best effort: the seed's mock server has none), `GET /health`.
 *
 * Config keeps verl's names: `env_endpoint` (the URL the definition is named by), `env_endpoints` or
 * `env_shards` (consecutive ports from env_endpoint's), `max_steps` (the episode is done after that many
 * steps, whatever the server says), `job_id`. An episode is pinned to one shard by crc32 of its instance
 * id, as verl pins it, so all its calls reach the process that holds its state. Each shard is an endpoint
 * with its own time limits, retries and breaker (src/remote/Endpoint.ts).
 */
import { randomUUID } from "node:crypto"
import { crc32 } from "node:zlib"
import { Schema } from "effect"
import { define, type Environment, type EnvironmentDefinition } from "../Environment.ts"
import { PositiveInt } from "../EngineSchema.ts"
import { decodeReply, Endpoint, EndpointConfig, endpointOptions, tokenOf } from "./Endpoint.ts"
import { fetchJson } from "./fetchJson.ts"
import { checkConfig, seededRows } from "./RemoteEnvironment.ts"

export const GymConfig = Schema.Struct({
  ...EndpointConfig,
  /** Every shard's URL; overrides env_shards. */
  env_endpoints: Schema.optionalKey(Schema.Array(Schema.String.check(Schema.isPattern(/^https?:\/\/[^/]/)))),
  /** Shards on consecutive ports, the first at the endpoint's port. */
  env_shards: Schema.optionalKey(PositiveInt),
  /** Steps after which the episode is done. Default 100, as in verl. */
  max_steps: Schema.optionalKey(PositiveInt),
  /** Sent with every call, so a shared server can keep jobs apart. Default "default". */
  job_id: Schema.optionalKey(Schema.String)
})
export type GymConfig = typeof GymConfig.Type

const ResetReply = Schema.Struct({
  observation: Schema.String,
  system_prompt: Schema.optionalKey(Schema.NullOr(Schema.String))
})

const StepReply = Schema.Struct({
  observation: Schema.String,
  reward: Schema.Finite,
  done: Schema.Boolean,
  info: Schema.optionalKey(Schema.NullOr(Schema.Record(Schema.String, Schema.Unknown)))
})

/** env_endpoint's URL with each shard's port. */
const shardUrls = (endpoint: string, shards: number): ReadonlyArray<string> => {
  if (shards === 1) return [endpoint]
  const url = new URL(endpoint)
  if (url.port === "") throw new Error(`gym environment "${endpoint}": env_shards needs a port in env_endpoint`)
  return Array.from({ length: shards }, (_, i) => {
    const shard = new URL(endpoint)
    shard.port = String(Number(url.port) + i)
    return shard.href.replace(/\/+$/, "")
  })
}

/**
 * The Gym-style server at `endpoint` (`http://host:port`) as an environment definition named `name`
 * (the registry names it `gym+http://host:port`).
 */
export const gymEnvironment = (endpoint: string, options: GymConfig = {}, name = `gym+${endpoint}`): EnvironmentDefinition<GymConfig> => {
  if (!/^https?:\/\/[^/]/.test(endpoint)) {
    throw new Error(`gym environment "${name}": env_endpoint must start with http:// or https://`)
  }
  const base = endpoint.replace(/\/+$/, "")
  let shards: ReadonlyArray<Endpoint> | undefined

  const make = (config: GymConfig): Environment => {
    const checked: GymConfig = checkConfig(GymConfig, { ...options, ...config }, name)
    shards ??= (checked.env_endpoints ?? shardUrls(base, checked.env_shards ?? 1)).map(
      (url) => new Endpoint(url.replace(/\/+$/, ""), endpointOptions(checked))
    )
    const token = tokenOf(checked)
    const maxSteps = checked.max_steps ?? 100
    const job_id = checked.job_id ?? "default"
    const instance_id = randomUUID()
    const shard = shards[crc32(instance_id) % shards.length]!
    let steps = 0
    let started = false

    return {
      async reset({ seed, row, signal }) {
        const { name: _name, ...kwargs } = row.extra_info.interaction_kwargs
        const reply = await shard.call("reset", async (attemptSignal) =>
          decodeReply(ResetReply, await fetchJson(`${shard.url}/reset`, {
            method: "POST",
            body: { ...kwargs, instance_id, job_id, seed },
            token,
            signal: attemptSignal
          }), "the reset reply"), { signal, idempotent: true, admit: true })
        started = true
        steps = 0
        return {
          observation: reply.observation,
          ...(typeof reply.system_prompt === "string" ? { systemPrompt: reply.system_prompt } : {})
        }
      },
      async step(action, { signal }) {
        const reply = await shard.call("step", async (attemptSignal) =>
          decodeReply(StepReply, await fetchJson(`${shard.url}/step`, {
            method: "POST",
            body: { instance_id, job_id, action },
            token,
            signal: attemptSignal
          }), "the step reply"), { signal, idempotent: false, admit: false })
        steps++
        return {
          observation: reply.observation,
          reward: reply.reward,
          done: reply.done || steps >= maxSteps,
          ...(reply.info ? { info: reply.info } : {})
        }
      },
      async close() {
        if (!started) return
        started = false
        // Returns the instance to the server's pool, if it keeps one; a server without /finalize is fine.
        await fetchJson(`${shard.url}/finalize`, {
          method: "POST",
          body: { instance_id, job_id },
          token,
          signal: AbortSignal.timeout(2_000)
        }).catch(() => undefined)
      }
    }
  }

  return define<GymConfig>({
    name,
    description: `the Gym-style env server at ${endpoint}`,
    make,
    rows: ({ seed, count, config }) => {
      checkConfig(GymConfig, { ...options, ...config }, name)
      return seededRows(name, seed, count)
    }
  })
}
