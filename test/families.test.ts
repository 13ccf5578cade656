/**
 * Hugging Face checkpoints of the common families, end to end: small checkpoints synthesized with each
 * family's exact config.json fields, tensor names, dtypes and quirks (test/hf-fixtures.ts) and the real
 * tokenizers, checked against a reference forward written here from transformers' modeling files
 * (modeling_llama.py, modeling_qwen2.py, modeling_qwen3.py, modeling_rope_utils.py), in float64 with plain
 * loops. The exported graph's logits, the inference actor's recorded logprobs and the trainer twin's
 * logprobs all match it; none is checked against another.
 */
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { spawnSync } from "node:child_process"
import { existsSync, mkdtempSync, readdirSync, readFileSync, statSync, utimesSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { InferenceActor } from "../actors/inference/index.ts"
import { OnnxCausalLM } from "../actors/inference/OnnxCausalLM.ts"
import { selectBackend } from "../actors/trainer/backend.ts"
import { PolicyModel } from "../actors/trainer/PolicyModel.ts"
import { defineExperiment } from "../src/Experiment.ts"
import { GenerationRequest, SamplingParams } from "../src/Generation.ts"
import { readConfig } from "../src/model/config.ts"
import { describe as describeConfig } from "../src/model/family.ts"
import { graphFor, importCheckpoint } from "../src/model/huggingFace.ts"
import * as Safetensors from "../src/model/safetensors.ts"
import { runExperiment } from "../src/runExperiment.ts"
import { load as loadTokenizer } from "../src/Tokenizer.ts"
import { solveGridQuest } from "../src/environments/gridQuest.ts"
import { synthesize, type Fixture, type FixtureName, type FixtureOptions } from "./hf-fixtures.ts"

// ---------------------------------------------------------------------------------------------------------
// The reference: transformers' forward for these families, float64, one position at a time.

interface Reference {
  /** The final-norm hidden state at every position of `ids`. */
  hidden(ids: ReadonlyArray<number>): Array<Float64Array>
  /** log softmax of the head's logits for a hidden state. */
  logSoftmax(hidden: Float64Array): Float64Array
  logits(hidden: Float64Array): Float64Array
}

const reference = (fixture: Fixture, overrides: { readonly ignoreRopeScaling?: boolean } = {}): Reference => {
  const c = fixture.config
  const type = c.model_type as string
  const h = c.hidden_size as number
  const heads = c.num_attention_heads as number
  const kvHeads = c.num_key_value_heads as number
  const d = (c.head_dim as number | undefined) ?? h / heads
  const m = c.intermediate_size as number
  const vocab = c.vocab_size as number
  const eps = c.rms_norm_eps as number
  const layers = c.num_hidden_layers as number
  const w = (name: string) => {
    const tensor = fixture.weights.get(name)
    if (tensor === undefined) throw new Error(`reference: no ${name}`)
    return tensor.data
  }
  const has = (name: string) => fixture.weights.has(name)
  // modeling_rope_utils: default inv_freq, then _compute_llama3_parameters when rope_scaling says llama3.
  const inv = Array.from({ length: d / 2 }, (_, i) => 1 / Math.pow(c.rope_theta as number, (2 * i) / d))
  const scaling = c.rope_scaling as Record<string, number> | null
  if (scaling !== null && scaling !== undefined && (scaling.rope_type as unknown) === "llama3" && overrides.ignoreRopeScaling !== true) {
    const old = scaling.original_max_position_embeddings!
    const lowWavelen = old / scaling.low_freq_factor!
    const highWavelen = old / scaling.high_freq_factor!
    for (let i = 0; i < inv.length; i++) {
      const wavelen = (2 * Math.PI) / inv[i]!
      const llama = wavelen > lowWavelen ? inv[i]! / scaling.factor! : inv[i]!
      const smooth = (old / wavelen - scaling.low_freq_factor!) / (scaling.high_freq_factor! - scaling.low_freq_factor!)
      const medium = !(wavelen < highWavelen) && !(wavelen > lowWavelen)
      inv[i] = medium ? (1 - smooth) * llama / scaling.factor! + smooth * llama : llama
    }
  }
  const rmsNorm = (x: ArrayLike<number>, weight: ArrayLike<number>, offset = 0, n = x.length): Float64Array => {
    let sum = 0
    for (let i = 0; i < n; i++) sum += x[offset + i]! ** 2
    const scale = 1 / Math.sqrt(sum / n + eps)
    const out = new Float64Array(n)
    for (let i = 0; i < n; i++) out[i] = weight[i]! * x[offset + i]! * scale
    return out
  }
  const linear = (x: ArrayLike<number>, name: string, out: number, bias?: string): Float64Array => {
    const weight = w(name)
    const n = x.length
    const y = new Float64Array(out)
    for (let o = 0; o < out; o++) {
      let sum = bias !== undefined && has(bias) ? w(bias)[o]! : 0
      for (let i = 0; i < n; i++) sum += weight[o * n + i]! * x[i]!
      y[o] = sum
    }
    return y
  }
  const rotate = (x: Float64Array, offset: number, position: number) => {
    // apply_rotary_pos_emb with rotate_half: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).
    for (let i = 0; i < d / 2; i++) {
      const angle = position * inv[i]!
      const [cos, sin] = [Math.cos(angle), Math.sin(angle)]
      const x1 = x[offset + i]!
      const x2 = x[offset + i + d / 2]!
      x[offset + i] = x1 * cos - x2 * sin
      x[offset + i + d / 2] = x2 * cos + x1 * sin
    }
  }
  // Qwen2 always has q/k/v biases; Llama and Qwen3 when attention_bias (then o_proj too).
  const qkvBias = type === "qwen2" || c.attention_bias === true
  const oBias = type !== "qwen2" && c.attention_bias === true
  const headWeight = c.tie_word_embeddings === true ? w("model.embed_tokens.weight") : w("lm_head.weight")
  // The head is most of the reference's work (vocab x hidden per position): each position's logits once.
  const memo = new WeakMap<Float64Array, Float64Array>()
  const hiddenMemo = new Map<string, Array<Float64Array>>()
  const logits = (hidden: Float64Array) => {
    const known = memo.get(hidden)
    if (known !== undefined) return known
    const out = new Float64Array(vocab)
    memo.set(hidden, out)
    for (let v = 0; v < vocab; v++) {
      let sum = 0
      for (let i = 0; i < h; i++) sum += headWeight[v * h + i]! * hidden[i]!
      out[v] = sum
    }
    return out
  }
  return {
    hidden: (ids) => {
      const key = ids.join()
      const known = hiddenMemo.get(key)
      if (known !== undefined) return known
      const embed = w("model.embed_tokens.weight")
      let states = ids.map((id) => Float64Array.from(embed.subarray(id * h, (id + 1) * h)))
      for (let l = 0; l < layers; l++) {
        const p = `model.layers.${l}`
        const keys: Array<Float64Array> = []
        const values: Array<Float64Array> = []
        const queries: Array<Float64Array> = []
        states.forEach((x, position) => {
          const normed = rmsNorm(x, w(`${p}.input_layernorm.weight`))
          const q = linear(normed, `${p}.self_attn.q_proj.weight`, heads * d, qkvBias ? `${p}.self_attn.q_proj.bias` : undefined)
          const k = linear(normed, `${p}.self_attn.k_proj.weight`, kvHeads * d, qkvBias ? `${p}.self_attn.k_proj.bias` : undefined)
          const v = linear(normed, `${p}.self_attn.v_proj.weight`, kvHeads * d, qkvBias ? `${p}.self_attn.v_proj.bias` : undefined)
          if (type === "qwen3") {
            for (let head = 0; head < heads; head++) q.set(rmsNorm(q, w(`${p}.self_attn.q_norm.weight`), head * d, d), head * d)
            for (let head = 0; head < kvHeads; head++) k.set(rmsNorm(k, w(`${p}.self_attn.k_norm.weight`), head * d, d), head * d)
          }
          for (let head = 0; head < heads; head++) rotate(q, head * d, position)
          for (let head = 0; head < kvHeads; head++) rotate(k, head * d, position)
          queries.push(q)
          keys.push(k)
          values.push(v)
        })
        states = states.map((x, position) => {
          const context = new Float64Array(heads * d)
          for (let head = 0; head < heads; head++) {
            // repeat_kv: query head `head` reads key/value head head // (heads / kvHeads).
            const kv = Math.floor(head / (heads / kvHeads))
            const scores = new Float64Array(position + 1)
            let max = -Infinity
            for (let t = 0; t <= position; t++) {
              let dot = 0
              for (let i = 0; i < d; i++) dot += queries[position]![head * d + i]! * keys[t]![kv * d + i]!
              scores[t] = dot / Math.sqrt(d)
              max = Math.max(max, scores[t]!)
            }
            let total = 0
            for (let t = 0; t <= position; t++) total += scores[t] = Math.exp(scores[t]! - max)
            for (let t = 0; t <= position; t++) {
              for (let i = 0; i < d; i++) context[head * d + i] = context[head * d + i]! + (scores[t]! / total) * values[t]![kv * d + i]!
            }
          }
          const attended = linear(context, `${p}.self_attn.o_proj.weight`, h, oBias ? `${p}.self_attn.o_proj.bias` : undefined)
          const residual = x.map((value, i) => value + attended[i]!)
          const normed = rmsNorm(residual, w(`${p}.post_attention_layernorm.weight`))
          const gate = linear(normed, `${p}.mlp.gate_proj.weight`, m)
          const up = linear(normed, `${p}.mlp.up_proj.weight`, m)
          const activated = gate.map((g, i) => (g / (1 + Math.exp(-g))) * up[i]!)
          const down = linear(activated, `${p}.mlp.down_proj.weight`, h)
          return residual.map((value, i) => value + down[i]!)
        })
      }
      const final = states.map((x) => rmsNorm(x, w("model.norm.weight")))
      hiddenMemo.set(key, final)
      return final
    },
    logits,
    logSoftmax: (hidden) => {
      const out = logits(hidden)
      let max = -Infinity
      for (const value of out) max = Math.max(max, value)
      let total = 0
      for (const value of out) total += Math.exp(value - max)
      const log = Math.log(total) + max
      return out.map((value) => value - log)
    }
  }
}

const argmax = (values: ArrayLike<number>) => {
  let best = 0
  for (let i = 1; i < values.length; i++) if (values[i]! > values[best]!) best = i
  return best
}

const maxDifference = (a: ArrayLike<number>, b: ArrayLike<number>) => {
  let max = 0
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i]! - b[i]!))
  return max
}

// ---------------------------------------------------------------------------------------------------------

const cases: ReadonlyArray<{ readonly title: string; readonly name: FixtureName; readonly options: FixtureOptions; readonly family: Record<string, unknown> }> = [
  {
    title: "Llama 3.2 (llama3 rope scaling, tied embeddings, bf16)",
    name: "llama3",
    options: { dtype: "BF16" },
    family: { family: "llama", tieWordEmbeddings: true, qkvBias: false, qkNorm: false, headDim: 16, rope: { type: "llama3", factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositions: 64 } }
  },
  {
    title: "Qwen2.5 (q/k/v biases, tied embeddings, bf16 in 3 shards)",
    name: "qwen2",
    options: { dtype: "BF16", shards: 3 },
    family: { family: "qwen2", tieWordEmbeddings: true, qkvBias: true, outputBias: false, qkNorm: false, headDim: 16, rope: { type: "default" } }
  },
  {
    title: "Qwen3 (q/k RMSNorm, head_dim 32 with hidden 64 / 4 heads, untied, f16)",
    name: "qwen3",
    options: { dtype: "F16" },
    family: { family: "qwen3", tieWordEmbeddings: false, qkvBias: false, qkNorm: true, headDim: 32, rope: { type: "default" } }
  }
]

beforeAll(async () => {
  await selectBackend("wasm")
})

for (const testCase of cases) {
  describe(testCase.title, () => {
    let fixture: Fixture
    let ref: Reference
    /** A chat prompt rendered by the family's real tokenizer, and its reference greedy continuation. */
    let prompt: Array<number>
    let continuation: Array<number>
    let shortPrompt: Array<number>

    beforeAll(async () => {
      fixture = synthesize(testCase.name, testCase.options)
      ref = reference(fixture)
      const tokenizer = await loadTokenizer(fixture.directory)
      prompt = tokenizer.renderPrompt([{ role: "user", content: "Which way is the treasure?" }])
      shortPrompt = tokenizer.renderPrompt([{ role: "user", content: "Hi" }])
      continuation = []
      for (let step = 0; step < 5; step++) {
        const states = ref.hidden([...prompt, ...continuation])
        continuation.push(argmax(ref.logits(states.at(-1)!)))
      }
    })

    it("reads config.json as the family it is", () => {
      expect(readConfig(fixture.directory)).toMatchObject(testCase.family)
    })

    it("reads its safetensors (dtype, shards) exactly", () => {
      const weights = Safetensors.readModel(fixture.directory)
      expect([...weights.keys()].sort()).toEqual([...fixture.weights.keys()].sort())
      for (const [name, tensor] of fixture.weights) {
        expect(weights.get(name)!.shape).toEqual(tensor.shape)
        expect(maxDifference(weights.get(name)!.data, tensor.data), name).toBe(0)
      }
    })

    it("the exported graph's logits match the reference, in a batch with left padding and explicit positions", async () => {
      const model = await OnnxCausalLM.load(fixture.directory, { threads: 1 })
      try {
        const a = [...prompt, ...continuation]
        const b = shortPrompt
        const s = a.length
        const ids = new BigInt64Array(2 * s)
        const positions = new BigInt64Array(2 * s)
        const mask = new BigInt64Array(2 * s)
        a.forEach((id, i) => ((ids[i] = BigInt(id)), (positions[i] = BigInt(i)), (mask[i] = 1n)))
        const pad = s - b.length
        b.forEach((id, i) => ((ids[s + pad + i] = BigInt(id)), (positions[s + pad + i] = BigInt(i)), (mask[s + pad + i] = 1n)))
        const empty = Array.from({ length: model.shape.numLayers }, () => new Float32Array(0))
        const { logits } = await model.forward({ batch: 2, sequenceLength: s, pastLength: 0, inputIds: ids, positionIds: positions, attentionMask: mask, pastKeys: empty, pastValues: empty })
        const vocab = model.shape.vocabSize
        let worst = 0
        ref.hidden(a).forEach((hidden, i) => (worst = Math.max(worst, maxDifference(logits.subarray(i * vocab, (i + 1) * vocab), ref.logits(hidden)))))
        ref.hidden(b).forEach((hidden, i) => (worst = Math.max(worst, maxDifference(logits.subarray((s + pad + i) * vocab, (s + pad + i + 1) * vocab), ref.logits(hidden)))))
        expect(worst).toBeLessThan(1e-4)
      } finally {
        await model.release()
      }
    })

    it("the inference actor decodes the reference's greedy tokens and records its logprobs, two requests batched", async () => {
      const actor = await InferenceActor.start({ model: fixture.directory, threads: 1 })
      try {
        const sampling = new SamplingParams({ ...SamplingParams.greedy, maxNewTokens: continuation.length })
        const [long, short] = await Promise.all([
          actor.generate(new GenerationRequest({ episodeId: "a", turn: 0, contextIds: prompt, sampling, stopTokenIds: [], seed: 0 })),
          actor.generate(new GenerationRequest({ episodeId: "b", turn: 0, contextIds: shortPrompt, sampling, stopTokenIds: [], seed: 0 }))
        ])
        expect(long.tokenIds).toEqual(continuation)
        const states = ref.hidden([...prompt, ...continuation])
        const expected = continuation.map((token, i) => ref.logSoftmax(states[prompt.length - 1 + i]!)[token]!)
        expect(maxDifference(long.logprobs, expected)).toBeLessThan(1e-4)
        const shortStates = ref.hidden([...shortPrompt, ...short.tokenIds])
        expect(short.tokenIds[0]).toBe(argmax(ref.logits(shortStates[shortPrompt.length - 1]!)))
        const shortExpected = short.tokenIds.map((token, i) => ref.logSoftmax(shortStates[shortPrompt.length - 1 + i]!)[token]!)
        expect(maxDifference(short.logprobs, shortExpected)).toBeLessThan(1e-4)
      } finally {
        await actor.close()
      }
    })

    it("the trainer's twin gives the reference's logprobs", () => {
      const twin = PolicyModel.fromWeights(readConfig(fixture.directory), Safetensors.readModel(fixture.directory))
      try {
        const sequence = [...prompt, ...continuation]
        const scored = Array.from({ length: sequence.length - 1 }, (_, i) => i + 1)
        const { logprobs, entropy } = twin.score({ sequences: [sequence, shortPrompt], scored: [scored, [1, 2]] })
        const got = logprobs.dataSync()
        const states = ref.hidden(sequence)
        const expected = scored.map((position) => ref.logSoftmax(states[position - 1]!)[sequence[position]!]!)
        const shortStates = ref.hidden(shortPrompt)
        expected.push(...[1, 2].map((position) => ref.logSoftmax(shortStates[position - 1]!)[shortPrompt[position]!]!))
        // float32 on the wasm backend, normalising over 128k-152k tokens: a few 1e-4 at most.
        expect(maxDifference(got, expected)).toBeLessThan(3e-4)
        logprobs.dispose()
        entropy.dispose()
      } finally {
        twin.dispose()
      }
    })

    if (testCase.name === "llama3") {
      it("the llama3 rope scaling is what makes the numbers agree (without it the reference disagrees)", async () => {
        const model = await OnnxCausalLM.load(fixture.directory, { threads: 1 })
        try {
          const a = [...prompt, ...continuation]
          const n = a.length
          const empty = Array.from({ length: model.shape.numLayers }, () => new Float32Array(0))
          const { logits } = await model.forward({
            batch: 1, sequenceLength: n, pastLength: 0, inputIds: BigInt64Array.from(a, BigInt),
            positionIds: BigInt64Array.from(a, (_, i) => BigInt(i)), attentionMask: new BigInt64Array(n).fill(1n), pastKeys: empty, pastValues: empty
          })
          const unscaled = reference(fixture, { ignoreRopeScaling: true }).hidden(a).at(-1)!
          const vocab = model.shape.vocabSize
          expect(maxDifference(logits.subarray((n - 1) * vocab), ref.logits(unscaled))).toBeGreaterThan(1e-2)
        } finally {
          await model.release()
        }
      })
    }
  })
}

describe("the actor's graph for a checkpoint", () => {
  it("is exported once into onnx/episodic-<key>.onnx, reused, and rebuilt when the weights change", () => {
    const fixture = synthesize("smollm2", { dtype: "BF16", layers: 1, seed: 3 })
    const first = graphFor(fixture.directory)
    expect(first.source).toBe("exported")
    expect(path.dirname(first.file)).toBe(path.join(fixture.directory, "onnx"))
    expect(path.basename(first.file)).toMatch(/^episodic-[0-9a-f]{16}\.onnx$/)
    const again = graphFor(fixture.directory)
    expect(again).toEqual({ file: first.file, source: "cached" })
    // New weights (a later modification time): a new graph, and the stale one is gone.
    const weights = path.join(fixture.directory, "model.safetensors")
    const later = new Date(statSync(weights).mtimeMs + 5_000)
    utimesSync(weights, later, later)
    const rebuilt = graphFor(fixture.directory)
    expect(rebuilt.source).toBe("exported")
    expect(rebuilt.file).not.toBe(first.file)
    expect(readdirSync(path.join(fixture.directory, "onnx")).filter((f) => f.startsWith("episodic-"))).toEqual([path.basename(rebuilt.file)])
  })

  it("`model import --out` writes a self-contained directory in the checkpoint's dtype that runs as it is", () => {
    const fixture = synthesize("qwen2", { dtype: "BF16", layers: 1, shards: 2, seed: 4 })
    const out = path.join(mkdtempSync(path.join(tmpdir(), "episodic-import-")), "model")
    const report = importCheckpoint(fixture.directory, out)
    expect(report.lines[0]).toContain("qwen2: 1 layers, hidden 64, 4 heads (2 key/value), head_dim 16")
    expect(report.lines[0]).toContain("tied embeddings")
    expect(report.lines[1]).toContain("2 shards")
    expect(report.lines[1]).toContain("BF16")
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors", "onnx/model.onnx"]) {
      expect(existsSync(path.join(out, file)), file).toBe(true)
    }
    expect(Object.values(Safetensors.readHeader(path.join(out, "model.safetensors"))).every((entry) => entry.dtype === "BF16")).toBe(true)
    expect(graphFor(out)).toEqual({ file: path.join(out, "onnx", "model.onnx"), source: "episodic" })
  })
})

describe("npx episodic model import", () => {
  const bin = path.resolve(import.meta.dirname, "..", "bin", "episodic.js")

  it("says what it found and where the graph is; an unsupported checkpoint gets one line naming the field", () => {
    const fixture = synthesize("llama3", { dtype: "BF16", layers: 1, seed: 8 })
    const found = spawnSync(process.execPath, [bin, "model", "import", fixture.directory], { encoding: "utf8" })
    expect(found.status).toBe(0)
    expect(found.stdout).toContain("llama: 1 layers, hidden 64, 4 heads (2 key/value), head_dim 16, MLP 128, vocabulary 128256, tied embeddings, rope theta 500000 llama3 (factor 32, low 1, high 4, original 64)")
    expect(found.stdout).toContain("weights: model.safetensors, BF16")
    expect(found.stdout).toMatch(/graph: .*onnx\/episodic-[0-9a-f]{16}\.onnx/)
    writeFileSync(path.join(fixture.directory, "config.json"), JSON.stringify({ ...fixture.config, rope_scaling: { rope_type: "yarn", factor: 4 } }))
    const refused = spawnSync(process.execPath, [bin, "model", "import", fixture.directory], { encoding: "utf8" })
    expect(refused.status).not.toBe(0)
    expect(refused.stdout + refused.stderr).toContain(`rope_scaling.rope_type "yarn" is not supported`)
  })
})

describe("what episodic refuses, in one line naming the field", () => {
  const base = synthesize("qwen2", { dtype: "BF16", layers: 1, seed: 5 }).config
  const refusal = (changes: Record<string, unknown>) => {
    try {
      describeConfig({ ...base, ...changes }, "config.json")
    } catch (error) {
      return (error as Error).message
    }
    return "accepted"
  }

  it("another model_type, a rope type, quantized weights, sliding windows, another activation", () => {
    expect(refusal({ model_type: "gemma3_text" })).toMatch(/^config\.json: model_type "gemma3_text" is not supported/)
    expect(refusal({ rope_scaling: { rope_type: "yarn", factor: 4 } })).toMatch(/^config\.json: rope_scaling\.rope_type "yarn" is not supported/)
    expect(refusal({ quantization_config: { quant_method: "awq", bits: 4 } })).toMatch(/^config\.json: quantization_config \(quant_method "awq"\)/)
    expect(refusal({ use_sliding_window: true })).toMatch(/^config\.json: use_sliding_window true is not supported/)
    expect(refusal({ model_type: "mistral", sliding_window: 4096 })).toMatch(/^config\.json: sliding_window 4096 is not supported/)
    expect(refusal({ hidden_act: "gelu_pytorch_tanh" })).toMatch(/^config\.json: hidden_act "gelu_pytorch_tanh" is not supported/)
    expect(refusal({ model_type: "mistral", sliding_window: null })).toBe("accepted")
    for (const message of [refusal({ model_type: "gemma3_text" }), refusal({ use_sliding_window: true })]) expect(message).not.toContain("\n")
  })

  it("quantized (integer) tensors in a safetensors file", () => {
    const header = JSON.stringify({ "model.layers.0.mlp.up_proj.qweight": { dtype: "I32", shape: [2], data_offsets: [0, 8] } })
    const bytes = new Uint8Array(8 + header.length + 8)
    new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true)
    bytes.set(new TextEncoder().encode(header), 8)
    expect(() => Safetensors.decode(bytes, "model.safetensors")).toThrow(/^model\.safetensors: model\.layers\.0\.mlp\.up_proj\.qweight is I32: quantized or integer weights are not supported/)
  })

  it("a model the actor cannot run at all says why", async () => {
    const directory = mkdtempSync(path.join(tmpdir(), "episodic-gemma-"))
    writeFileSync(path.join(directory, "config.json"), JSON.stringify({ ...base, model_type: "gemma3_text" }))
    writeFileSync(path.join(directory, "model.safetensors"), readFileSync(path.join(synthesize("qwen2", { layers: 1, seed: 6 }).directory, "model.safetensors")))
    await expect(OnnxCausalLM.load(directory)).rejects.toThrow(/model_type "gemma3_text" is not supported/)
  })
})

describe("bfloat16 and float16 at the byte level", () => {
  it("round to nearest even on write and read back exactly", () => {
    const values = Float32Array.of(1, -2.5, 1 / 3, 65504, 1e-7, 3.14159, -0)
    const weights = new Map([["w", { shape: [values.length], data: values }]])
    const bf16 = Safetensors.decode(Safetensors.encode(weights, "BF16")).get("w")!.data
    expect([...bf16]).toEqual([1, -2.5, 0.333984375, 65536, 1.0011717677116394e-7, 3.140625, -0])
    const f16 = Safetensors.decode(Safetensors.encode(weights, "F16")).get("w")!.data
    expect([...f16]).toEqual([1, -2.5, 0.333251953125, 65504, 1.1920928955078125e-7, 3.140625, -0])
    expect(Safetensors.decode(Safetensors.encode(new Map([["w", { shape: [1], data: Float32Array.of(1e6) }]]), "F16")).get("w")!.data[0]).toBe(Infinity)
  })
})

describe("training a Hugging Face checkpoint through an experiment", () => {
  let directory: string
  afterAll(() => undefined)

  it("trains a bf16 Qwen2 checkpoint for two updates and saves it as a Qwen2 checkpoint in bf16 that loads again", async () => {
    const fixture = synthesize("qwen2", { dtype: "BF16", layers: 1, seed: 7 })
    const out = mkdtempSync(path.join(tmpdir(), "episodic-hf-train-"))
    const { summary } = await runExperiment(defineExperiment({
      name: "hf-train",
      model: fixture.directory,
      environment: { name: "grid-quest", episodes: 4 },
      samplesPerRow: 2,
      concurrency: 8,
      limits: { maxTurns: 1, maxNewTokens: 4 },
      sampling: { temperature: 1 },
      // The warm start's SFT step moves the weights whatever the rewards (a random model scores the same on
      // every grid-quest episode, so its GRPO advantages, and gradients, are 0).
      trainer: {
        promptsPerUpdate: 2,
        checkpointEvery: 2,
        backend: "wasm",
        warmStart: { episodes: 2, steps: 1, policy: ({ context }) => solveGridQuest(context.slice(context.lastIndexOf("You are at"))) }
      },
      inference: { threads: 1 },
      out
    })).result
    expect(summary.training).toMatchObject({ updates: 2, version: 3 })
    expect((summary.training as { logprob_diff_max: number }).logprob_diff_max).toBeLessThan(1e-3)
    directory = path.join(out, "hf-train", "checkpoint")
    const config = JSON.parse(readFileSync(path.join(directory, "config.json"), "utf8"))
    expect(config).toEqual(fixture.config)
    const header = Safetensors.readHeader(path.join(directory, "model.safetensors"))
    expect(Object.keys(header).sort()).toEqual([...fixture.weights.keys()].sort())
    expect(Object.values(header).every((entry) => entry.dtype === "BF16")).toBe(true)
    expect(readConfig(directory)).toMatchObject({ family: "qwen2", qkvBias: true, tieWordEmbeddings: true })
    // The trained weights differ from the source (in bf16 too), and the checkpoint runs as a model directory.
    const trained = Safetensors.readModel(directory)
    const name = "model.layers.0.mlp.down_proj.weight"
    expect(maxDifference(trained.get(name)!.data, fixture.weights.get(name)!.data)).toBeGreaterThan(1e-3)
    const model = await OnnxCausalLM.load(directory, { threads: 1 })
    await model.release()
  })
})
