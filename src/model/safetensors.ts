/**
 * The safetensors format (https://huggingface.co/docs/safetensors): an 8-byte little-endian header length, a
 * JSON header naming each tensor's dtype, shape and byte range, then the raw little-endian data. Small enough
 * to read and write directly.
 *
 * Weights are float32 in memory (the CPU computes in float32). F32, F16, BF16 and F64 files are read and
 * converted; files are written in F32, F16 or BF16 (rounded to nearest even), so a model trained from a
 * bfloat16 checkpoint is saved as bfloat16 again. Integer tensors (quantized weights) are refused by name.
 * A sharded checkpoint (`model.safetensors.index.json` and its shards) reads as one set of weights.
 */
import { closeSync, existsSync, openSync, readFileSync, readSync, renameSync, writeFileSync } from "node:fs"
import * as path from "node:path"

export interface Tensor {
  readonly shape: ReadonlyArray<number>
  readonly data: Float32Array
}

export type Weights = ReadonlyMap<string, Tensor>

/** The float dtypes episodic writes. */
export type FloatDtype = "F32" | "F16" | "BF16"

const bytesPer: Record<FloatDtype, number> = { F32: 4, F16: 2, BF16: 2 }

const f32 = new Float32Array(1)
const u32 = new Uint32Array(f32.buffer)

/** bfloat16 bits of a float, rounded to nearest even (NaN stays NaN). */
export const toBfloat16 = (value: number): number => {
  f32[0] = value
  const bits = u32[0]!
  if ((bits & 0x7f800000) === 0x7f800000 && (bits & 0x007fffff) !== 0) return (bits >>> 16) | 0x0040
  return ((bits + 0x7fff + ((bits >>> 16) & 1)) >>> 16) & 0xffff
}

export const fromBfloat16 = (bits: number): number => {
  u32[0] = bits << 16
  return f32[0]!
}

/** IEEE half-precision bits of a float, rounded to nearest even, overflowing to infinity. */
export const toFloat16 = (value: number): number => {
  f32[0] = value
  const bits = u32[0]!
  const sign = (bits >>> 16) & 0x8000
  const exponent = (bits >>> 23) & 0xff
  const mantissa = bits & 0x7fffff
  if (exponent === 0xff) return sign | 0x7c00 | (mantissa !== 0 ? 0x200 : 0)
  const e = exponent - 127 + 15
  if (e >= 0x1f) return sign | 0x7c00
  if (e <= 0) {
    // Subnormal half (or zero): shift the mantissa with its implicit bit, rounding to nearest even.
    if (e < -10) return sign
    const m = mantissa | 0x800000
    const shift = 14 - e
    const half = 1 << (shift - 1)
    const rounded = (m + half - 1 + ((m >>> shift) & 1)) >>> shift
    return sign | rounded
  }
  const rounded = (e << 10 | (mantissa >>> 13)) + (((mantissa & 0x1fff) + 0xfff + ((mantissa >>> 13) & 1)) >>> 13)
  return sign | rounded
}

export const fromFloat16 = (bits: number): number => {
  const sign = bits & 0x8000 ? -1 : 1
  const exponent = (bits >>> 10) & 0x1f
  const mantissa = bits & 0x3ff
  if (exponent === 0) return sign * mantissa * 2 ** -24
  if (exponent === 0x1f) return mantissa === 0 ? sign * Infinity : NaN
  return sign * (1 + mantissa / 1024) * 2 ** (exponent - 15)
}

/** Bytes of a safetensors file holding `weights` in name order (as Hugging Face writes them), in `dtype`. */
export const encode = (weights: Weights, dtype: FloatDtype = "F32"): Uint8Array => {
  const names = [...weights.keys()].sort()
  const header: Record<string, unknown> = { __metadata__: { format: "pt" } }
  const width = bytesPer[dtype]
  let offset = 0
  for (const name of names) {
    const tensor = weights.get(name)!
    const size = tensor.shape.reduce((a, b) => a * b, 1)
    if (size !== tensor.data.length) throw new Error(`safetensors: ${name} has shape [${tensor.shape}] but ${tensor.data.length} values`)
    header[name] = { dtype, shape: tensor.shape, data_offsets: [offset, offset + size * width] }
    offset += size * width
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
    if (dtype === "F32") {
      out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), at)
    } else {
      const halves = new Uint16Array(out.buffer, at, data.length)
      const convert = dtype === "BF16" ? toBfloat16 : toFloat16
      for (let i = 0; i < data.length; i++) halves[i] = convert(data[i]!)
    }
    at += data.length * width
  }
  return out
}

interface HeaderEntry {
  readonly dtype: string
  readonly shape: Array<number>
  readonly data_offsets: [number, number]
}

const parseHeader = (bytes: Uint8Array, source: string): { header: Record<string, unknown>; base: number } => {
  if (bytes.length < 8) throw new Error(`${source}: too short to be a safetensors file`)
  const headerLength = Number(new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true))
  if (8 + headerLength > bytes.length) throw new Error(`${source}: header length ${headerLength} runs past the end of the file`)
  return { header: JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + headerLength))) as Record<string, unknown>, base: 8 + headerLength }
}

/** A tensor's bytes as float32, whatever float dtype the file stores. */
const toFloat32 = (raw: Uint8Array, dtype: string, name: string, source: string): Float32Array => {
  switch (dtype) {
    case "F32":
      return new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4)
    case "F64":
      return Float32Array.from(new Float64Array(raw.buffer, raw.byteOffset, raw.byteLength / 8))
    case "BF16": {
      const halves = new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2)
      const out = new Float32Array(halves.length)
      const bits = new Uint32Array(out.buffer)
      for (let i = 0; i < halves.length; i++) bits[i] = halves[i]! << 16
      return out
    }
    case "F16": {
      const halves = new Uint16Array(raw.buffer, raw.byteOffset, raw.byteLength / 2)
      const out = new Float32Array(halves.length)
      for (let i = 0; i < halves.length; i++) out[i] = fromFloat16(halves[i]!)
      return out
    }
    default:
      throw new Error(
        `${source}: ${name} is ${dtype}: quantized or integer weights are not supported (episodic reads F32, F16, BF16 and F64 safetensors)`
      )
  }
}

export const decode = (bytes: Uint8Array, source = "safetensors"): Map<string, Tensor> => {
  const { header, base } = parseHeader(bytes, source)
  const weights = new Map<string, Tensor>()
  for (const [name, entry] of Object.entries(header)) {
    if (name === "__metadata__") continue
    const { dtype, shape, data_offsets } = entry as HeaderEntry
    const [start, end] = data_offsets
    // A copy of its own (a Buffer's slice would be a view of the whole file), aligned as typed arrays need.
    const raw = Uint8Array.prototype.slice.call(bytes, base + start, base + end)
    weights.set(name, { shape, data: toFloat32(raw, dtype, name, source) })
  }
  return weights
}

export const read = (file: string): Map<string, Tensor> => decode(readFileSync(file), file)

/** Only the header of a file: tensor names, dtypes and shapes, without reading the data. */
export const readHeader = (file: string): Record<string, HeaderEntry> => {
  const fd = openSync(file, "r")
  try {
    const length = Buffer.alloc(8)
    readSync(fd, length, 0, 8, 0)
    const headerLength = Number(length.readBigUInt64LE(0))
    const header = Buffer.alloc(headerLength)
    readSync(fd, header, 0, headerLength, 8)
    const parsed = JSON.parse(header.toString("utf8")) as Record<string, HeaderEntry>
    delete parsed.__metadata__
    return parsed
  } finally {
    closeSync(fd)
  }
}

/** Writes through a temporary file and a rename, so a crash never leaves a torn weights file. */
export const write = (file: string, weights: Weights, dtype: FloatDtype = "F32"): void => {
  const temporary = `${file}.tmp-${process.pid}`
  writeFileSync(temporary, encode(weights, dtype))
  renameSync(temporary, file)
}

export const indexFile = "model.safetensors.index.json"

/**
 * The weight files of a Hugging Face model directory: `model.safetensors`, or the shards that
 * `model.safetensors.index.json` lists. Empty when there are none.
 */
export const modelFiles = (directory: string): Array<string> => {
  const index = path.join(directory, indexFile)
  if (existsSync(index)) {
    const { weight_map } = JSON.parse(readFileSync(index, "utf8")) as { weight_map?: Record<string, string> }
    if (weight_map === undefined) throw new Error(`${index} has no weight_map`)
    return [...new Set(Object.values(weight_map))].sort().map((shard) => path.join(directory, shard))
  }
  const single = path.join(directory, "model.safetensors")
  return existsSync(single) ? [single] : []
}

/** Every weight of a model directory, single-file or sharded, as float32. */
export const readModel = (directory: string): Map<string, Tensor> => {
  const files = modelFiles(directory)
  if (files.length === 0) throw new Error(`${directory} has no model.safetensors or ${indexFile}`)
  const weights = new Map<string, Tensor>()
  for (const file of files) {
    if (!existsSync(file)) throw new Error(`${file} is listed in ${indexFile} but does not exist`)
    for (const [name, tensor] of read(file)) weights.set(name, tensor)
  }
  return weights
}

/**
 * The float dtype a model directory stores its weights in (the one most of its values use), so a model
 * trained from it can be saved the same way. F64 and anything unknown count as F32.
 */
export const storedDtype = (directory: string): FloatDtype => {
  const counts = new Map<string, number>()
  for (const file of modelFiles(directory)) {
    for (const entry of Object.values(readHeader(file))) {
      const size = entry.shape.reduce((a, b) => a * b, 1)
      counts.set(entry.dtype, (counts.get(entry.dtype) ?? 0) + size)
    }
  }
  const [dtype] = [...counts.entries()].sort((a, b) => b[1] - a[1])[0] ?? ["F32"]
  return dtype === "BF16" || dtype === "F16" ? dtype : "F32"
}
