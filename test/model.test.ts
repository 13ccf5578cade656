/**
 * `episodic model init`: a complete Hugging Face model directory made from nothing, that transformers.js
 * loads and generates with, whose tokenizer round-trips any text and keeps the built-in environments short.
 */
import { AutoModelForCausalLM, env, Tensor } from "@huggingface/transformers"
import { describe, expect, it } from "vitest"
import { existsSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import * as path from "node:path"
import { initModel } from "../src/model/init.ts"
import * as Safetensors from "../src/model/safetensors.ts"
import { load as loadTokenizer } from "../src/Tokenizer.ts"
import { tinyModel } from "./support.ts"

describe("episodic model init", () => {
  it("writes config, tokenizer, generation config, safetensors weights and the ONNX graph", async () => {
    const directory = await tinyModel()
    for (const file of ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json", "model.safetensors", "onnx/model.onnx"]) {
      expect(existsSync(path.join(directory, file)), file).toBe(true)
    }
    const config = JSON.parse(readFileSync(path.join(directory, "config.json"), "utf8"))
    expect(config).toMatchObject({ model_type: "llama", hidden_size: 128, num_hidden_layers: 4, num_attention_heads: 8, num_key_value_heads: 2, head_dim: 16 })
    const weights = Safetensors.read(path.join(directory, "model.safetensors"))
    expect(weights.get("model.embed_tokens.weight")?.shape).toEqual([config.vocab_size, 128])
    expect(weights.get("model.layers.3.self_attn.k_proj.weight")?.shape).toEqual([32, 128])
  })

  it("is reproducible from its seed and differs across seeds", async () => {
    const a = path.join(tmpdir(), `episodic-init-a-${process.pid}`)
    const b = path.join(tmpdir(), `episodic-init-b-${process.pid}`)
    await initModel(a, { seed: 5 })
    await initModel(b, { seed: 5 })
    const weightsA = readFileSync(path.join(a, "model.safetensors"))
    expect(weightsA.equals(readFileSync(path.join(b, "model.safetensors")))).toBe(true)
    expect(readFileSync(path.join(a, "tokenizer.json"), "utf8")).toBe(readFileSync(path.join(b, "tokenizer.json"), "utf8"))
    await initModel(b, { seed: 6 })
    expect(weightsA.equals(readFileSync(path.join(b, "model.safetensors")))).toBe(false)
  })

  it("round-trips safetensors", () => {
    const weights = new Map([["w", { shape: [2, 3], data: Float32Array.of(1, -2, 3.5, 0, 1e-8, -7) }]])
    const back = Safetensors.decode(Safetensors.encode(weights))
    expect(back.get("w")?.shape).toEqual([2, 3])
    expect([...back.get("w")!.data]).toEqual([...weights.get("w")!.data])
  })
})

describe("the tiny model's tokenizer", () => {
  it("round-trips any text exactly, and keeps a grid-quest observation short", async () => {
    const tokenizer = await loadTokenizer(await tinyModel())
    for (const text of ["move north", "You are at (3, 4). The treasure is at (0, 1). 11 steps left.", "ünïcödé 🙂\n\t  spaces", "#### 1234"]) {
      expect(tokenizer.decode(tokenizer.encode(text))).toBe(text)
    }
    // Merges span the environments' stock phrases: an observation is a handful of tokens, a command one.
    expect(tokenizer.encode("You are at (3, 4). The treasure is at (0, 1). 11 steps left.").length).toBeLessThanOrEqual(8)
    expect(tokenizer.encode("move north")).toHaveLength(1)
  })

  it("renders ChatML and stops on <|im_end|>", async () => {
    const tokenizer = await loadTokenizer(await tinyModel())
    const ids = tokenizer.renderPrompt([{ role: "system", content: "Be brief." }, { role: "user", content: "Hi" }])
    expect(tokenizer.decode(ids, { skipSpecialTokens: false })).toBe(
      "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    expect(tokenizer.stopTokenIds.map((id) => tokenizer.decode([id], { skipSpecialTokens: false }))).toEqual(["<|im_end|>"])
  })
})

describe("transformers.js on the tiny model", () => {
  it("loads it with AutoModelForCausalLM and generates with its KV cache", async () => {
    const directory = await tinyModel()
    env.allowRemoteModels = false
    env.localModelPath = "/"
    const model = await AutoModelForCausalLM.from_pretrained(directory, { local_files_only: true, dtype: "fp32" })
    const tokenizer = await loadTokenizer(directory)
    const prompt = tokenizer.renderPrompt([{ role: "user", content: "You are at (1, 1). The treasure is at (2, 3)." }])
    const output = (await model.generate({
      input_ids: new Tensor("int64", BigInt64Array.from(prompt.map(BigInt)), [1, prompt.length]),
      max_new_tokens: 12,
      do_sample: false
    })) as Tensor
    const ids = (output.tolist() as Array<Array<bigint>>)[0]!.map(Number)
    expect(ids.slice(0, prompt.length)).toEqual(prompt)
    expect(ids.length).toBeGreaterThan(prompt.length)
    expect(ids.length).toBeLessThanOrEqual(prompt.length + 12)
    await model.dispose()
  })
})
