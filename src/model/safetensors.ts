/**
 * The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a
 * JSON header naming each tensor's dtype, shape and byte range, then the raw little-endian data. Small enough
 * to read and write directly; only float32 is used for our models' weights.
 */
import { readFileSync, renameSync, writeFileSync } from "node:fs"

export interface Tensor {
  readonly shape: ReadonlyArray<number>
  readonly data: Float32Array
}

export type Weights = ReadonlyMap<string, Tensor>

/** Bytes of a safetensors file holding `weights` in name order (as Hugging Face writes them). */
export const encode = (weights: Weights): Uint8Array => {
  const names = [...weights.keys()].sort()
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } }
  let offset = 0
  for (const name of names) {
    const tensor = weights.get(name)!
    const size = tensor.shape.reduce((a, b) => a * b, 1)
    if (size !== tensor.data.length) throw new Error(`safetensors: ${name} has shape [${tensor.shape}] but ${tensor.data.length} values`)
    header[name] = { dtype: "F32", shape: tensor.shape, data_offsets: [offset, offset + size * 4] }
    offset += size * 4
  }
  let json = JSON.stringify(header)
  // The data must start 8-byte aligned.
  json += " ".repeat((8 - ((8 + json.length) % 8)) % 8)
  const headerBytes = new TextEncoder().encode(json)
  const out = new Uint8Array(8 + headerBytes.length + offset)
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.length), true)
  out.set(headerBytes, 8)
  let at = 8 + headerBytes.length
  for (const name of names) {
    const data = weights.get(name)!.data
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at)
    at += data.byteLength
  }
  return out
}

export const decode = (bytes: Uint8Array, source = "safetensors"): Map<string, Tensor> => {
  if (bytes.length < 8) throw new Error(`${source}: too short to be a safetensors file`)
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true))
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))) as Record<string, unknown>
  const base = 8 + headerLength
  const weights = new Map<string, Tensor>()
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue
    const { dtype, shape, data_offsets } = entry as { dtype: string; shape: Array<number>; data_offsets: [number, number] }
    if (dtype !== "F32") throw new Error(`${source}: ${name} is ${dtype}; only F32 weights are supported`)
    const [start, end] = data_offsets
    // A copy of its own (a Buffer's slice would be a view of the whole file), 4-byte aligned as floats need.
    const data = new Float32Array(Uint8Array.prototype.slice.call(bytes, base + start, base + end).buffer)
    weights.set(name, { shape, data })
  }
  return weights
}

export const read = (file: string): Map<string, Tensor> => decode(readFileSync(file), file)

/** Writes through a temporary file and a rename, so a crash never leaves a torn weights file. */
export const write = (file: string, weights: Weights): void => {
  const temporary = `${file}.tmp-${process.pid}`
  writeFileSync(temporary, encode(weights))
  renameSync(temporary, file)
}
