// Seeded mutation fuzzing of the readers of untrusted files: the safetensors reader
// (SafetensorsFile, loadSafetensors), the PEFT adapter loader (loadAdapter:
// adapter_config.json + adapter_model.safetensors) and the Llama config parser
// (parseLlamaConfig, LlamaForCausalLM.fromPretrained).
//
// Every case starts from a valid input and applies a few mutations: truncation, flipped and
// overwritten bytes, a wrong or huge header length, overlapping, reversed or out-of-file
// data_offsets, wrong dtypes, overflowing shapes, deep JSON, odd keys and values. Each case must end
// either in success, checked against an independent decoding of the same bytes, or in an Error with a
// message that names the entry point (or the file), leaving no file descriptor open and, for
// loadAdapter, the model unchanged. A case's input depends only on (seed, target, index), so any
// finding can be replayed alone; the input files of each case are written under the case directory
// before it runs, so a crash of the process leaves the crashing input on disk.
//
// test/fuzz.test.ts runs a fixed budget of cases; scripts/fuzz.js runs as many as asked for.
import * as fs from 'fs';
import * as path from 'path';
import { SafetensorsError, SafetensorsFile, loadSafetensors, loadSafetensorsSync } from '../../lib/safetensors';
import { LlamaConfig, LlamaForCausalLM, parseLlamaConfig } from '../../lib/models/llama';
import { loadAdapter, saveAdapter } from '../../lib/peft';
import { LoRALinear, injectLora } from '../../lib/lora';
import { Module } from '../../lib/nn/module';
import { manualSeed } from '../../lib/random';
import { noGrad } from '../../lib/autograd';
import { Tensor } from '../../lib/tensor';
import { randn } from '../../lib/creation';
import { ToyTransformer } from './toy';
import { loadCases, writeCheckpoint } from './llama-weights';
import { openFilesOf } from './fds';

// =========================================================================== random numbers

/** mulberry32: small, fast, and the same sequence on every platform. */
export class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0;
  }
  u32(): number {
    let t = (this.s = (this.s + 0x6d2b79f5) >>> 0);
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }
  float(): number {
    return this.u32() / 4294967296;
  }
  /** An integer in [0, n). */
  int(n: number): number {
    return n <= 1 ? 0 : Math.floor(this.float() * n);
  }
  /** An integer in [lo, hi]. */
  range(lo: number, hi: number): number {
    return lo + this.int(hi - lo + 1);
  }
  chance(p: number): boolean {
    return this.float() < p;
  }
  pick<T>(a: readonly T[]): T {
    return a[this.int(a.length)];
  }
}

/** The seed of one case: FNV-1a over (seed, target, index). */
export function caseSeed(seed: number, target: string, index: number): number {
  let h = 0x811c9dc5;
  for (const c of `${seed}:${target}:${index}`) h = Math.imul(h ^ c.charCodeAt(0), 0x01000193) >>> 0;
  return h;
}

// =========================================================================== safetensors bytes

type Json = null | boolean | number | string | Json[] | { [k: string]: Json };

const DTYPE_SIZE: Record<string, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1 };
const FLOAT = new Set(['F64', 'F32', 'F16', 'BF16']);

interface StDoc {
  header: Record<string, Json>;
  data: Buffer;
}

/** A file from entries laid out one after another (the reader does not require any order). */
function stDoc(entries: { name: string; dtype: string; shape: number[]; bytes: Uint8Array }[], metadata?: Record<string, string>): StDoc {
  const header: Record<string, Json> = {};
  if (metadata) header.__metadata__ = metadata;
  let off = 0;
  for (const e of entries) {
    header[e.name] = { dtype: e.dtype, shape: e.shape, data_offsets: [off, off + e.bytes.length] };
    off += e.bytes.length;
  }
  return { header, data: Buffer.concat(entries.map((e) => Buffer.from(e.bytes))) };
}

function lengthPrefix(length: bigint): Buffer {
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(length);
  return prefix;
}

function stBytes(headerText: string, data: Buffer, pad = true): Buffer {
  let json = Buffer.from(headerText, 'utf8');
  if (pad && json.length % 8) json = Buffer.concat([json, Buffer.alloc(8 - (json.length % 8), 0x20)]);
  return Buffer.concat([lengthPrefix(BigInt(json.length)), json, data]);
}

function bytesOf(a: ArrayBufferView): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function seedDocs(): StDoc[] {
  const f32 = (...v: number[]) => bytesOf(new Float32Array(v));
  return [
    stDoc([
      { name: 'model.layers.0.self_attn.q_proj.weight', dtype: 'F32', shape: [2, 3], bytes: f32(1, -2, 3.5, 0, -0, 1e-40) },
      { name: 'model.norm.weight', dtype: 'F32', shape: [3], bytes: f32(1, 1, 1) },
    ], { format: 'pt' }),
    stDoc([
      { name: 'f64', dtype: 'F64', shape: [2], bytes: bytesOf(new Float64Array([Math.PI, -1e300])) },
      { name: 'f32', dtype: 'F32', shape: [1, 2], bytes: f32(0.5, Infinity) },
      { name: 'bf16', dtype: 'BF16', shape: [4], bytes: bytesOf(new Uint16Array([0x3f80, 0x4049, 0x7fc0, 0x8000])) },
      { name: 'f16', dtype: 'F16', shape: [3], bytes: bytesOf(new Uint16Array([0x3c00, 0x0001, 0xfc00])) },
      { name: 'i64', dtype: 'I64', shape: [2], bytes: bytesOf(new BigInt64Array([-5n, 2n ** 31n - 1n])) },
      { name: 'i32', dtype: 'I32', shape: [1], bytes: bytesOf(new Int32Array([-7])) },
      { name: 'i16', dtype: 'I16', shape: [2], bytes: bytesOf(new Int16Array([-32768, 32767])) },
      { name: 'i8', dtype: 'I8', shape: [3], bytes: bytesOf(new Int8Array([-1, 0, 127])) },
      { name: 'u8', dtype: 'U8', shape: [2], bytes: new Uint8Array([0, 255]) },
      { name: 'bool', dtype: 'BOOL', shape: [2], bytes: new Uint8Array([0, 3]) },
      { name: 'empty', dtype: 'F32', shape: [0, 4], bytes: new Uint8Array(0) },
      { name: 'scalar', dtype: 'F32', shape: [], bytes: f32(42) },
    ]),
    stDoc([]),
    stDoc([{ name: 'w', dtype: 'F32', shape: [4, 4], bytes: f32(...Array.from({ length: 16 }, (_, i) => i / 7)) }], { a: 'b', c: '' }),
  ];
}

function clone<T>(v: T): T {
  return v === undefined ? v : JSON.parse(JSON.stringify(v));
}

const ODD_NUMBERS: readonly number[] = [-1, 0, 1, 2, 1.5, -0.5, 7, 2 ** 31, 2 ** 32, 2 ** 40, 2 ** 53 - 1, 2 ** 53, 2 ** 63, 1e300, -1e300, 4294967297];

function oddValue(rng: Rng): Json {
  switch (rng.int(8)) {
    case 0: return null;
    case 1: return rng.chance(0.5);
    case 2: return rng.pick(['', 'x', '8', 'F32', '__proto__', '\u0000', 'é'.repeat(rng.range(1, 300))]);
    case 3: return rng.pick<Json>([[], {}, [1], { a: 1 }, [[1, 2], [3]], [null]]);
    case 4: return deepValue(rng, rng.pick([3, 62, 63, 64, 65, 300]));
    default: return rng.pick(ODD_NUMBERS);
  }
}

function deepValue(rng: Rng, depth: number): Json {
  let v: Json = rng.chance(0.5) ? [] : {};
  for (let i = 0; i < depth; i++) v = rng.chance(0.5) ? [v] : { k: v };
  return v;
}

/** Mutations of the parsed header (in place). */
const HEADER_MUTATIONS: ((rng: Rng, doc: StDoc) => void)[] = [
  // data_offsets: shifted, reversed, huge, negative, fractional, overlapping, past the end, malformed
  (rng, doc) => {
    const e = pickEntry(rng, doc);
    if (!e) return;
    const [b, end] = Array.isArray(e.data_offsets) ? (e.data_offsets as number[]) : [0, 0];
    const size = doc.data.length;
    const k = rng.range(1, 16);
    e.data_offsets = rng.pick<Json>([
      [b, end + k], [b + k, end + k], [Math.max(0, b - k), end], [end, b], [b, size + k], [size, size + 4],
      [0, 2 ** 53], [2 ** 53, 2 ** 53 + 4], [2 ** 63, 2 ** 63], [1e300, 1e300], [-1, end], [b, end + 0.5],
      [b, end, 3], [b], [], 'x', null, [String(b), String(end)], [0, size], [0, 0],
    ]);
  },
  // offsets of two tensors swapped, or made to overlap
  (rng, doc) => {
    const a = pickEntry(rng, doc);
    const b = pickEntry(rng, doc);
    if (!a || !b) return;
    if (rng.chance(0.5)) [a.data_offsets, b.data_offsets] = [b.data_offsets, a.data_offsets];
    else a.data_offsets = clone(b.data_offsets);
  },
  // a wrong dtype
  (rng, doc) => {
    const e = pickEntry(rng, doc);
    if (e) e.dtype = rng.pick<Json>(['F32', 'F64', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U8', 'BOOL', 'U16', 'U32', 'U64', 'F8_E4M3', 'C64', 'f32', '', null, 4, ['F32'], {}]);
  },
  // an overflowing, negative, fractional or malformed shape; or one dim scaled
  (rng, doc) => {
    const e = pickEntry(rng, doc);
    if (!e) return;
    const shape = Array.isArray(e.shape) ? (e.shape as number[]).slice() : [];
    e.shape = rng.pick<Json>([
      [2 ** 40, 2 ** 40], [2 ** 53], [2 ** 31, 2 ** 31, 16], [2 ** 32, 2 ** 32], [2 ** 62, 2 ** 2, 0], [0, 2 ** 53],
      [-1], [1.5], [1e300], ['2'], [], [0], null, '3', [null], shape.map((d) => d * 2), shape.concat([1]), shape.slice(1),
      shape.map((d) => d + 1), [(shape[0] ?? 1) * 2 ** 32],
    ]);
  },
  // a field removed, or an odd extra one
  (rng, doc) => {
    const e = pickEntry(rng, doc);
    if (!e) return;
    if (rng.chance(0.5)) delete e[rng.pick(['dtype', 'shape', 'data_offsets'])];
    else e[rng.pick(['extra', 'dtype2', '__proto__', 'constructor'])] = oddValue(rng);
  },
  // an entry replaced by an odd value
  (rng, doc) => {
    const names = entryNames(doc);
    if (names.length) doc.header[rng.pick(names)] = oddValue(rng);
  },
  // metadata that is not a map of strings, or a huge one
  (rng, doc) => {
    doc.header.__metadata__ = rng.pick<() => Json>([
      () => oddValue(rng),
      () => ({ format: oddValue(rng) }),
      () => ({ big: 'x'.repeat(rng.range(1000, 200_000)) }),
      () => Object.fromEntries(Array.from({ length: rng.range(1, 2000) }, (_, i) => [`k${i}`, String(i)])),
    ])();
  },
  // a key renamed to something odd
  (rng, doc) => {
    const names = entryNames(doc);
    if (!names.length) return;
    const old = rng.pick(names);
    const name = rng.pick(['__proto__', 'constructor', 'toString', '', '__metadata__', 'a'.repeat(rng.range(100, 5000)), '\ud800', 'x\u0000y']);
    const v = doc.header[old];
    delete doc.header[old];
    Object.defineProperty(doc.header, name, { value: v, enumerable: true, writable: true, configurable: true });
  },
  // the top level replaced
  (rng, doc) => {
    if (rng.chance(0.1)) doc.header = rng.pick<Json>([[], 5, null, 'x', true]) as unknown as Record<string, Json>;
  },
];

function entryNames(doc: StDoc): string[] {
  return doc.header && typeof doc.header === 'object' ? Object.keys(doc.header).filter((k) => k !== '__metadata__') : [];
}

function pickEntry(rng: Rng, doc: StDoc): Record<string, Json> | null {
  const names = entryNames(doc).filter((k) => doc.header[k] && typeof doc.header[k] === 'object' && !Array.isArray(doc.header[k]));
  return names.length ? (doc.header[rng.pick(names)] as Record<string, Json>) : null;
}

/** Mutations of the header's JSON text. */
const TEXT_MUTATIONS: ((rng: Rng, text: string) => string)[] = [
  // deep nesting, up to far beyond any limit
  (rng, text) => {
    const d = rng.pick([63, 64, 65, 1000, 20_000, 100_000]);
    const open = rng.chance(0.5) ? '['.repeat(d) : '{"a":'.repeat(d);
    const close = open[0] === '[' ? ']'.repeat(d) : '}'.repeat(d);
    const where = text.lastIndexOf('}');
    if (where < 1) return open + close;
    return `${text.slice(0, where)}${text.length > 2 ? ',' : ''}"deep":${open}${close}}`;
  },
  // a duplicated key
  (rng, text) => {
    const m = /"([^"\\]+)":\{[^{}]*\}/.exec(text.slice(1));
    if (!m) return text;
    return `{${m[0]},${text.slice(1)}`;
  },
  // characters inserted, deleted or replaced
  (rng, text) => {
    const chars = ['"', '{', '}', '[', ']', ',', ':', '\\', ' ', '0', '-', 'e', '\u00ff', '\ud83d'];
    const s = text.split('');
    for (let n = rng.range(1, 4); n > 0; n--) {
      const i = rng.int(s.length + 1);
      const op = rng.int(3);
      if (op === 0) s.splice(i, 0, rng.pick(chars));
      else if (op === 1) s.splice(i, 1);
      else s[i] = rng.pick(chars);
    }
    return s.join('');
  },
  // numbers written in forms JSON allows
  (rng, text) => text.replace(/\d+/, rng.pick(['1e999', '-0', '0.0', '1E2', '00', '9007199254740993', '1e-999'])),
  // trailing bytes after the JSON
  (rng, text) => text + rng.pick(['\u0000', ' x', '}', '   ', '\n']),
];

/** The value of one of `fields` replaced, in the text, by arrays nested far deeper than any limit. */
function deepField(rng: Rng, text: string, fields: readonly string[]): string {
  const d = rng.pick([1000, 20_000, 100_000]);
  const deep = rng.chance(0.5) ? '['.repeat(d) + ']'.repeat(d) : `${'{"a":'.repeat(d)}1${'}'.repeat(d)}`;
  const key = JSON.stringify(rng.pick(fields));
  const at = text.indexOf(`${key}:`);
  if (at < 0) return text.replace(/\}\s*$/, `,${key}:${deep}}`);
  const start = at + key.length + 1;
  // The old value ends at the next comma or brace at its nesting level (good enough for these configs).
  let depth = 0;
  let end = start;
  for (; end < text.length; end++) {
    const c = text[end];
    if (c === '[' || c === '{') depth++;
    else if (c === ']' || c === '}') {
      if (depth === 0) break;
      depth--;
    } else if (c === ',' && depth === 0) break;
  }
  return `${text.slice(0, start)}${deep}${text.slice(end)}`;
}

/** Mutations of the bytes of a file. */
function mutateBytes(rng: Rng, bytes: Buffer, headerEnd: number): Buffer {
  const b = Buffer.from(bytes);
  const pos = () => (rng.chance(0.6) && headerEnd > 0 ? rng.int(Math.min(headerEnd, b.length)) : rng.int(b.length));
  switch (rng.int(7)) {
    case 0: // truncation
      return b.subarray(0, rng.int(b.length));
    case 1: { // flipped bits
      if (!b.length) return b;
      for (let n = rng.range(1, 8); n > 0; n--) b[pos()] ^= 1 << rng.int(8);
      return b;
    }
    case 2: { // overwritten bytes
      if (!b.length) return b;
      for (let n = rng.range(1, 4); n > 0; n--) b[pos()] = rng.pick([0x00, 0xff, 0x7f, 0x80, 0x22, 0x7b, 0x5b, 0x30, 0x2d]);
      return b;
    }
    case 3: { // a wrong, huge or off-by-a-few header length
      if (b.length < 8) return b;
      const n = headerEnd - 8;
      const len = rng.pick([0n, 1n, 7n, 8n, BigInt(n - 1), BigInt(n + 1), BigInt(n + 8), BigInt(b.length), BigInt(b.length - 8), BigInt(b.length - 7),
        2n ** 32n, 2n ** 53n, 2n ** 63n, 2n ** 64n - 1n, 100_000_000n, 100_000_001n].map((v) => (v < 0n ? 0n : v)));
      b.writeBigUInt64LE(len, 0);
      return b;
    }
    case 4: // appended bytes
      return Buffer.concat([b, Buffer.from(Array.from({ length: rng.range(1, 64) }, () => rng.int(256)))]);
    case 5: { // a chunk copied from elsewhere in the file
      if (b.length < 2) return b;
      const from = rng.int(b.length);
      const to = pos();
      const len = rng.range(1, Math.min(32, b.length - Math.max(from, to)));
      b.copy(b, to, from, from + len);
      return b;
    }
    default: { // NaN / Inf / huge patterns in the data area
      if (b.length - headerEnd < 4) return b;
      const at = headerEnd + rng.int(b.length - headerEnd - 3);
      b.writeUInt32LE(rng.pick([0x7fc00000, 0x7f800000, 0xff800000, 0x7f7fffff, 0x7fc00001]), at);
      return b;
    }
  }
}

/** A mutated safetensors file built from `doc` (a valid one when no mutation applies). */
function mutateSafetensors(rng: Rng, base: StDoc, intensity = 1): Buffer {
  const doc: StDoc = { header: clone(base.header), data: Buffer.from(base.data) };
  let mutations = 0;
  for (let n = rng.chance(0.6) ? rng.range(1, 2) : 0; n > 0; n--, mutations++) {
    const isObject = doc.header !== null && typeof doc.header === 'object' && !Array.isArray(doc.header);
    if (isObject) rng.pick(HEADER_MUTATIONS)(rng, doc);
  }
  let text = JSON.stringify(doc.header) ?? 'null';
  if (rng.chance(0.25)) {
    text = rng.pick(TEXT_MUTATIONS)(rng, text);
    mutations++;
  }
  let bytes = stBytes(text, doc.data, rng.chance(0.8));
  const headerEnd = 8 + Number(bytes.readBigUInt64LE(0));
  const byteRounds = mutations === 0 && rng.chance(0.95 * intensity) ? rng.range(1, 3) : rng.chance(0.3 * intensity) ? 1 : 0;
  for (let n = byteRounds; n > 0; n--) bytes = mutateBytes(rng, bytes, headerEnd);
  return bytes;
}

// =========================================================================== checks

/** A fuzz case that did not end as required (the harness's own error type). */
export class FuzzViolation extends Error {}

function violation(msg: string): never {
  throw new FuzzViolation(msg);
}


function checkError(e: unknown, prefix: RegExp, what: string): string {
  if (!(e instanceof Error)) {
    // Errors made by the native addon come from the main realm; accept them by their brand.
    if (Object.prototype.toString.call(e) !== '[object Error]') violation(`${what}: threw a non-Error: ${String(e)}`);
  }
  const err = e as Error;
  if (typeof err.message !== 'string' || err.message.trim() === '') violation(`${what}: threw ${err.constructor?.name} with an empty message`);
  if (!prefix.test(err.message)) {
    violation(`${what}: the message does not name the entry point or the file: ${err.constructor?.name}: ${err.message.slice(0, 300)}`);
  }
  return err.message;
}

function halfToFloat(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

/** Independent decoding of a tensor's stored bytes: what read() must return. */
function referenceValues(dtype: string, raw: Buffer, target: 'float32' | 'float64' | 'int32'): number[] | 'int32-overflow' {
  const size = DTYPE_SIZE[dtype];
  const n = raw.length / size;
  const out: number[] = [];
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  for (let i = 0; i < n; i++) {
    const o = i * size;
    let v: number;
    switch (dtype) {
      case 'F64': v = dv.getFloat64(o, true); break;
      case 'F32': v = dv.getFloat32(o, true); break;
      case 'F16': v = halfToFloat(dv.getUint16(o, true)); break;
      case 'BF16': v = new Float32Array(new Uint32Array([dv.getUint16(o, true) << 16]).buffer)[0]; break;
      case 'I64': {
        const big = dv.getBigInt64(o, true);
        if (target === 'int32' && (big < -(2n ** 31n) || big >= 2n ** 31n)) return 'int32-overflow';
        v = Number(big);
        break;
      }
      case 'I32': v = dv.getInt32(o, true); break;
      case 'I16': v = dv.getInt16(o, true); break;
      case 'I8': v = dv.getInt8(o); break;
      case 'U8': v = dv.getUint8(o); break;
      default: v = dv.getUint8(o) === 0 ? 0 : 1; break; // BOOL
    }
    out.push(target === 'float32' ? Math.fround(v) : v);
  }
  return out;
}

function sameValues(got: ArrayLike<number>, want: number[]): boolean {
  if (got.length !== want.length) return false;
  for (let i = 0; i < want.length; i++) {
    if (Number.isNaN(want[i]) ? !Number.isNaN(got[i]) : !Object.is(got[i], want[i])) return false;
  }
  return true;
}

// =========================================================================== targets

export type Target = 'safetensors' | 'adapter' | 'config' | 'pretrained';
export const TARGETS: readonly Target[] = ['safetensors', 'adapter', 'config', 'pretrained'];

export interface Outcome {
  /** 'ok': the input was accepted (and checked); 'rejected': an acceptable Error. */
  kind: 'ok' | 'rejected';
  message?: string;
}

const ST_ERROR = /^SafetensorsFile\.(open|openSync): .* is not a valid safetensors file: \S/s;
const ST_READ_ERROR = /^SafetensorsFile\.(read|readSync): \S/;
const LOAD_ERROR = /^(loadSafetensors|loadSafetensorsSync): \S/;

/** Opens, lists and reads a safetensors file; checks every accepted tensor against the bytes. */
export async function runSafetensors(file: string, rng: Rng): Promise<Outcome> {
  const bytes = fs.readFileSync(file);
  const openFds = () => openFilesOf(file);
  const fds = openFds();
  const sync = rng.chance(0.5);
  let f: SafetensorsFile;
  try {
    f = sync ? SafetensorsFile.openSync(file) : await SafetensorsFile.open(file);
  } catch (e) {
    const message = checkError(e, ST_ERROR, 'SafetensorsFile.open');
    if (!(e instanceof SafetensorsError) || e.code !== 'ERR_SAFETENSORS_INVALID') violation(`SafetensorsFile.open threw ${(e as Error).constructor.name}, not a SafetensorsError: ${message}`);
    if (openFds() !== fds) violation('SafetensorsFile.open: a rejected file left its descriptor open');
    return { kind: 'rejected', message };
  }
  try {
    let total = 0;
    for (const name of f.keys()) {
      const e = f.entry(name);
      const size = DTYPE_SIZE[e.dtype];
      if (!size) violation(`accepted tensor ${JSON.stringify(name)} with dtype ${e.dtype}`);
      const numel = e.shape.reduce((a, d) => a * d, 1);
      if (!e.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) violation(`accepted shape [${e.shape}]`);
      if (e.byteLength !== numel * size) violation(`tensor ${JSON.stringify(name)}: ${e.byteLength} bytes for shape [${e.shape}] of ${e.dtype}`);
      if (e.byteOffset < 8 || e.byteOffset + e.byteLength > bytes.length) violation(`tensor ${JSON.stringify(name)} lies outside the file`);
      total += e.byteLength;
      const raw = sync ? f.readRawSync(name) : await f.readRaw(name);
      if (!raw.equals(bytes.subarray(e.byteOffset, e.byteOffset + e.byteLength))) violation(`readRaw(${JSON.stringify(name)}) is not the file's bytes`);
      const target = FLOAT.has(e.dtype) ? rng.pick(['float32', 'float64', undefined, 'int32'] as const) : rng.pick(['int32', 'float32', 'float64', undefined] as const);
      // By default BF16 and F16 keep their dtype (their values read back as float32 numbers, exactly).
      const dtype = target ?? (e.dtype === 'BF16' ? 'bfloat16' : e.dtype === 'F16' ? 'float16' : FLOAT.has(e.dtype) ? 'float32' : 'int32');
      const want = FLOAT.has(e.dtype) && dtype === 'int32' ? 'refused' : referenceValues(e.dtype, raw, dtype === 'bfloat16' || dtype === 'float16' ? 'float32' : dtype);
      let t: Tensor;
      try {
        t = sync ? f.readSync(name, target && { dtype: target }) : await f.read(name, target && { dtype: target });
      } catch (err) {
        const message = checkError(err, ST_READ_ERROR, 'SafetensorsFile.read');
        if (want === 'refused' || want === 'int32-overflow') continue;
        violation(`read(${JSON.stringify(name)}, ${dtype}) failed on a valid tensor: ${message}`);
      }
      if (want === 'refused' || want === 'int32-overflow') violation(`read(${JSON.stringify(name)}) as ${dtype} should have been refused`);
      if (t.dtype !== dtype || t.shape.join() !== e.shape.join()) violation(`read(${JSON.stringify(name)}) gave ${t.describe()}`);
      if (!sameValues(t.toArray(), want)) violation(`read(${JSON.stringify(name)}) as ${dtype} differs from the stored values`);
      t.dispose();
    }
    if (8 + Number(bytes.readBigUInt64LE(0)) + total !== bytes.length) violation('accepted a file whose tensors do not cover the data area');
  } finally {
    f.close();
  }
  if (rng.chance(0.3)) {
    // Reads everything with the default dtypes: an I64 value beyond int32 is refused, as read() refuses it.
    try {
      const all = rng.chance(0.5) ? loadSafetensorsSync(file) : await loadSafetensors(file);
      for (const t of Object.values(all)) t.dispose();
    } catch (e) {
      const message = checkError(e, LOAD_ERROR, 'loadSafetensors');
      if (!/\(I64\) holds -?\d+ at index \d+, which does not fit in int32/.test(message)) violation(`loadSafetensors failed on an accepted file: ${message}`);
    }
  }
  if (openFds() !== fds) violation('a descriptor was left open');
  return { kind: 'ok' };
}

// ---------------------------------------------------------------------------------- adapters

/** The model adapters are loaded into: two blocks of q/k/v/o and an MLP, and a head. */
export function adapterModel(): Module {
  manualSeed(11);
  return new ToyTransformer(8, 2, 5);
}

/** Module tree (names and classes), and every parameter's bits and requiresGrad. */
export function snapshot(model: Module): string {
  const tree = [...model.namedModules()].map(([n, m]) => `${n}:${m.constructor.name}`).join(',');
  const params = [...model.namedParameters()].map(([n, p]) => {
    const a = p.toArray();
    return `${n}:${p.requiresGrad}:${p.shape.join('x')}:${Buffer.from(a.buffer, a.byteOffset, a.byteLength).toString('base64')}`;
  });
  return `${tree}\n${params.join('\n')}`;
}

interface AdapterSeed {
  config: Record<string, Json>;
  weights: StDoc;
}

async function adapterSeeds(tmp: string): Promise<AdapterSeed[]> {
  const out: AdapterSeed[] = [];
  const variants: { inject: Parameters<typeof injectLora>[1]; config?: (c: Record<string, Json>) => void }[] = [
    { inject: { r: 2, alpha: 4, targetModules: ['q_proj', 'v_proj'] } },
    { inject: { r: 1, alpha: 2, useRslora: true, init: 'kaiming', targetModules: ['up_proj'] } },
    { inject: { r: 3, alpha: 3, filter: (n) => /self_attn\.[qk]_proj$/.test(n) }, config: (c) => { c.target_modules = 'layers\\.\\d+\\.self_attn\\.[qk]_proj'; } },
  ];
  for (const [i, v] of variants.entries()) {
    const model = adapterModel();
    injectLora(model, v.inject);
    noGrad(() => {
      for (const [, m] of model.namedModules()) {
        if (m instanceof LoRALinear && m.B) m.B.copy_(randn([...m.B.shape]));
      }
    });
    const dir = path.join(tmp, `seed-adapter-${i}`);
    await saveAdapter(model, dir);
    const config = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    v.config?.(config);
    const bytes = fs.readFileSync(path.join(dir, 'adapter_model.safetensors'));
    const n = Number(bytes.readBigUInt64LE(0));
    const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8'));
    // An edited config no longer matches the one the weights record: drop the record, as in adapters
    // saved by Python's PEFT.
    if (v.config) delete header.__metadata__['lora_cuda.adapter_config'];
    out.push({ config, weights: { header, data: bytes.subarray(8 + n) } });
    fs.rmSync(dir, { recursive: true, force: true });
  }
  return out;
}

const CONFIG_FIELDS = ['peft_type', 'r', 'lora_alpha', 'lora_dropout', 'target_modules', 'bias', 'use_rslora', 'use_dora',
  'fan_in_fan_out', 'init_lora_weights', 'rank_pattern', 'alpha_pattern', 'base_model_name_or_path', 'modules_to_save'];

function mutateAdapterConfig(rng: Rng, base: Record<string, Json>): string {
  const c = clone(base);
  for (let n = rng.range(1, 2); n > 0; n--) {
    const k = rng.pick(CONFIG_FIELDS);
    switch (rng.int(4)) {
      case 0:
        delete c[k];
        break;
      case 1:
        c[k] = oddValue(rng);
        break;
      case 2: // plausible but wrong
        c[k] = rng.pick<Json>(({
          peft_type: ['LORA', 'lora', 'PROMPT_TUNING', 'IA3'],
          r: [0, -2, 1.5, 4, 8, 1e999 as number, '2'],
          lora_alpha: [0, -1, 1e308, '16'],
          lora_dropout: [-0.1, 0.5, 1, 0.999],
          target_modules: ['q_proj', '(', '.*', 'q_proj|v_proj', '[', 'layers\\.0\\.self_attn\\.q_proj', [], ['q_proj', 3], [''], ['lm_head'], ['mlp'], ['act'], ['layers.0.self_attn.q_proj', 'v_proj']],
          bias: ['none', 'all', 'lora_only'],
          use_rslora: [true, 'true', 1],
          use_dora: [true, false],
          fan_in_fan_out: [true, false],
          rank_pattern: [{ q_proj: 4 }, [], {}],
        } as Record<string, Json[]>)[k] ?? [null]);
        break;
      default:
        c[rng.pick(['__proto__', 'constructor', 'unknown_field'])] = oddValue(rng);
    }
  }
  if (rng.chance(0.05)) return JSON.stringify(rng.pick<Json>([[], null, 5, 'LORA', [c]]));
  let text = JSON.stringify(c, null, 2);
  if (rng.chance(0.15)) text = rng.pick(TEXT_MUTATIONS)(rng, text);
  if (rng.chance(0.05)) text = deepField(rng, text, CONFIG_FIELDS);
  if (rng.chance(0.1)) text = text.slice(0, rng.int(text.length));
  return text;
}

/** Adapter-specific mutations of the weights file's header. */
const ADAPTER_WEIGHT_MUTATIONS: ((rng: Rng, doc: StDoc) => void)[] = [
  // a key renamed: A for B, a missing ".weight", another prefix, a module that does not exist or is no Linear
  (rng, doc) => {
    const names = entryNames(doc);
    if (!names.length) return;
    const old = rng.pick(names);
    const name = rng.pick([
      old.replace('lora_A', 'lora_B'), old.replace('lora_B', 'lora_A'), old.replace('.weight', ''), old.replace('base_model.model.', ''),
      old.replace('layers.0', 'layers.7'), old.replace(/\.[a-z_]+_proj\./, '.act.'), old.replace(/layers\.\d+\.[a-z_]+\.[a-z_]+_proj/, 'lm_head'),
      old.replace(/(q|k|v|o|up|down)_proj/, 'mlp'), old.replace('lora_A', 'lora_A.default'), `${old}.extra`,
    ]);
    const v = doc.header[old];
    delete doc.header[old];
    doc.header[name] = v;
  },
  // a key dropped (its bytes become a hole)
  (rng, doc) => {
    const names = entryNames(doc);
    if (names.length) delete doc.header[rng.pick(names)];
  },
  // a shape that no longer fits the layer (with data of the matching size)
  (rng, doc) => {
    const names = entryNames(doc);
    if (!names.length) return;
    const name = rng.pick(names);
    const e = doc.header[name] as { dtype: string; shape: number[]; data_offsets: number[] };
    const shape = rng.pick([[e.shape[0] + 1, e.shape[1]], [e.shape[1], e.shape[0]], [e.shape[0], e.shape[1] * 2], [e.shape[0] * e.shape[1]], [e.shape[0], e.shape[1], 1], [0, e.shape[1]]]);
    replaceTensor(doc, name, e.dtype, shape, Buffer.alloc(shape.reduce((a, d) => a * d, 1) * DTYPE_SIZE[e.dtype], 0x3c));
  },
  // another dtype, with the values converted (F16, BF16, F64) or as integers
  (rng, doc) => {
    const names = entryNames(doc);
    if (!names.length) return;
    const name = rng.pick(names);
    const e = doc.header[name] as { dtype: string; shape: number[]; data_offsets: number[] };
    const [b, end] = e.data_offsets;
    const f32 = new Float32Array(doc.data.buffer.slice(doc.data.byteOffset + b, doc.data.byteOffset + end));
    const dtype = rng.pick(['F64', 'F16', 'BF16', 'I32', 'I64', 'BOOL', 'U8']);
    let data: Uint8Array;
    switch (dtype) {
      case 'F64': data = bytesOf(Float64Array.from(f32)); break;
      case 'F16': data = bytesOf(Uint16Array.from(f32, () => rng.pick([0x3c00, 0x7c00, 0x7e00, 0x0001]))); break;
      case 'BF16': data = bytesOf(Uint16Array.from(new Uint32Array(f32.buffer), (x) => x >>> 16)); break;
      case 'I32': data = bytesOf(Int32Array.from(f32, (x) => Math.round(x * 100))); break;
      case 'I64': data = bytesOf(BigInt64Array.from(f32, (x) => BigInt(Math.round(x * 100)))); break;
      default: data = Uint8Array.from(f32, (x) => (x > 0 ? 1 : 0));
    }
    replaceTensor(doc, name, dtype, e.shape, Buffer.from(data));
  },
  // NaN or Inf in the values
  (rng, doc) => {
    const names = entryNames(doc);
    if (!names.length || doc.data.length < 4) return;
    const e = doc.header[rng.pick(names)] as { data_offsets: number[] };
    const [b, end] = e.data_offsets;
    if (end - b >= 4) doc.data.writeUInt32LE(rng.pick([0x7fc00000, 0x7f800000, 0xff800000]), b + 4 * rng.int((end - b) / 4));
  },
];

/** Replaces a tensor's entry and bytes, re-laying out the data area. */
function replaceTensor(doc: StDoc, name: string, dtype: string, shape: number[], bytes: Buffer): void {
  const parts: { name: string; dtype: Json; shape: Json; bytes: Buffer }[] = [];
  for (const k of entryNames(doc)) {
    const e = doc.header[k] as { dtype: Json; shape: Json; data_offsets: number[] };
    if (k === name) parts.push({ name: k, dtype, shape, bytes });
    else parts.push({ name: k, dtype: e.dtype, shape: e.shape, bytes: doc.data.subarray(e.data_offsets[0], e.data_offsets[1]) });
  }
  const meta = doc.header.__metadata__;
  const next = stDoc(parts as never, meta as Record<string, string>);
  doc.header = next.header;
  doc.data = next.data;
}

function mutateAdapterWeights(rng: Rng, base: StDoc): Buffer {
  const doc: StDoc = { header: clone(base.header), data: Buffer.from(base.data) };
  if (rng.chance(0.5)) {
    rng.pick(ADAPTER_WEIGHT_MUTATIONS)(rng, doc);
    return stBytes(JSON.stringify(doc.header), doc.data);
  }
  return mutateSafetensors(rng, doc, 0.5);
}

const ADAPTER_ERROR = /^loadAdapter: \S/;

/** Loads the adapter in `dir` into a fresh model; a refusal must leave the model exactly as it was. */
export async function runAdapter(dir: string): Promise<Outcome> {
  const model = adapterModel();
  const before = snapshot(model);
  const openFds = () => openFilesOf(dir);
  const fds = openFds();
  let names: string[];
  try {
    names = await loadAdapter(model, dir);
  } catch (e) {
    const message = checkError(e, ADAPTER_ERROR, 'loadAdapter');
    if (snapshot(model) !== before) violation(`loadAdapter failed (${message.slice(0, 200)}) but changed the model`);
    if (openFds() !== fds) violation('loadAdapter: a descriptor was left open');
    return { kind: 'rejected', message };
  }
  if (openFds() !== fds) violation('loadAdapter: a descriptor was left open');
  if (!names.length) violation('loadAdapter loaded no layer and did not say so');
  const st = SafetensorsFile.openSync(path.join(dir, 'adapter_model.safetensors'));
  try {
    const keys = st.keys();
    for (const name of names) {
      const m = model.getSubmodule(name);
      if (!(m instanceof LoRALinear) || !m.A || !m.B) violation(`loadAdapter returned '${name}', which is not a LoRALinear with r > 0`);
      for (const [which, t] of [['A', m.A], ['B', m.B]] as const) {
        const key = keys.find((k) => k.startsWith(`base_model.model.${name}.lora_${which}`) && k.endsWith('.weight'));
        if (!key) violation(`no ${which} key for '${name}'`);
        const want = st.readSync(key, { dtype: 'float64' }).toArray();
        const got = t.toArray();
        if (!sameValues(got, Array.from(want, (v) => Math.fround(v)))) violation(`'${name}'.${which} differs from ${key}`);
        if (!Array.from(got).every(Number.isFinite)) violation(`'${name}'.${which} was loaded with NaN or Inf`);
      }
    }
  } finally {
    st.close();
  }
  return { kind: 'ok' };
}

// ------------------------------------------------------------------------------------ config

const LLAMA_FIELDS = ['architectures', 'model_type', 'vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers',
  'num_attention_heads', 'num_key_value_heads', 'head_dim', 'rms_norm_eps', 'rope_theta', 'rope_scaling', 'max_position_embeddings',
  'sliding_window', 'use_sliding_window', 'tie_word_embeddings', 'hidden_act', 'attention_bias', 'mlp_bias', 'initializer_range'];

function mutateLlamaConfig(rng: Rng, base: Record<string, Json>): string {
  const c = clone(base);
  for (let n = rng.range(1, 3); n > 0; n--) {
    const k = rng.pick(LLAMA_FIELDS);
    switch (rng.int(4)) {
      case 0:
        delete c[k];
        break;
      case 1:
        c[k] = oddValue(rng);
        break;
      case 2: { // plausible but wrong
        const v = c[k];
        c[k] = rng.pick<Json>(({
          architectures: [['constructor'], ['__proto__'], ['toString'], ['hasOwnProperty'], [], [1], ['GPT2LMHeadModel'], ['LlamaForCausalLM', 'MistralForCausalLM'], 'LlamaForCausalLM'],
          model_type: ['llama', 'mistral', 'qwen2', 'gpt2', 'constructor', 'toString', ''],
          hidden_act: ['gelu', 'silu', 'SiLU'],
          rope_scaling: [{ rope_type: 'llama3', factor: 8 }, { type: 'linear', factor: 2 }, { rope_type: 'linear', factor: '2' }, { rope_type: 'linear', factor: [3] },
            { rope_type: 'linear', factor: true }, { rope_type: 'dynamic', factor: 2 }, { rope_type: 'default' }, { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: '16' }, 5, 'linear', []],
        } as Record<string, Json[]>)[k] ?? (typeof v === 'number' ? [v * 2, v + 1, v - 1, v * 1000, v * 2 ** 20, -v, v / 3, 0] : [null]));
        break;
      }
      default:
        c[rng.pick(['__proto__', 'constructor', 'raw', 'modelType'])] = oddValue(rng);
    }
  }
  if (rng.chance(0.03)) return JSON.stringify(rng.pick<Json>([[], null, 5, 'llama', [c]]));
  let text = JSON.stringify(c, null, 2);
  if (rng.chance(0.15)) text = rng.pick(TEXT_MUTATIONS)(rng, text);
  if (rng.chance(0.05)) text = deepField(rng, text, LLAMA_FIELDS);
  if (rng.chance(0.05)) text = text.slice(0, rng.int(text.length));
  return text;
}

const POSITIVE_INTS: (keyof LlamaConfig)[] = ['vocabSize', 'hiddenSize', 'intermediateSize', 'numHiddenLayers', 'numAttentionHeads', 'numKeyValueHeads', 'headDim', 'maxPositionEmbeddings'];

/** What every accepted config must satisfy. */
export function checkParsedConfig(c: LlamaConfig, what: string): void {
  if (!['llama', 'mistral', 'qwen2'].includes(c.modelType as string)) violation(`${what}: accepted modelType ${String(c.modelType)}`);
  for (const k of POSITIVE_INTS) {
    const v = c[k];
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) violation(`${what}: accepted ${k} = ${String(v)}`);
  }
  if (c.headDim % 2 !== 0) violation(`${what}: accepted an odd head dim ${c.headDim}`);
  if (c.numAttentionHeads % c.numKeyValueHeads !== 0) violation(`${what}: ${c.numAttentionHeads} heads for ${c.numKeyValueHeads} kv heads`);
  for (const k of ['rmsNormEps', 'ropeTheta', 'initializerRange'] as const) {
    if (typeof c[k] !== 'number' || !Number.isFinite(c[k]) || c[k] <= 0) violation(`${what}: accepted ${k} = ${String(c[k])}`);
  }
  if (c.ropeScaling !== null) {
    const { type, ...nums } = c.ropeScaling as unknown as Record<string, unknown>;
    if (type !== 'llama3' && type !== 'linear') violation(`${what}: accepted rope scaling ${String(type)}`);
    for (const [k, v] of Object.entries(nums)) {
      if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) violation(`${what}: accepted ropeScaling.${k} = ${String(v)}`);
    }
  }
  if (c.slidingWindow !== null && !(Number.isSafeInteger(c.slidingWindow) && c.slidingWindow > 0)) violation(`${what}: accepted slidingWindow ${c.slidingWindow}`);
  for (const k of ['tieWordEmbeddings', 'qkvBias', 'oBias', 'mlpBias'] as const) {
    if (typeof c[k] !== 'boolean') violation(`${what}: ${k} is not a boolean`);
  }
}

const CONFIG_ERROR = /^parseLlamaConfig: \S/;

export function runConfig(text: string): Outcome {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch {
    raw = text; // what a caller passing the unparsed file would give
  }
  let cfg: LlamaConfig;
  try {
    cfg = parseLlamaConfig(raw);
  } catch (e) {
    const message = checkError(e, CONFIG_ERROR, 'parseLlamaConfig');
    if (!(e instanceof TypeError) && !(e instanceof RangeError)) violation(`parseLlamaConfig threw ${(e as Error).constructor.name}, not a TypeError or RangeError: ${message}`);
    return { kind: 'rejected', message };
  }
  checkParsedConfig(cfg, 'parseLlamaConfig');
  return { kind: 'ok' };
}

const PRETRAINED_ERROR = /^LlamaForCausalLM\.fromPretrained: \S/;

/** fromPretrained on a checkpoint directory (config.json, model.safetensors or shards). */
export async function runPretrained(dir: string): Promise<Outcome> {
  const openFds = () => openFilesOf(dir);
  const fds = openFds();
  let model: LlamaForCausalLM;
  try {
    model = await LlamaForCausalLM.fromPretrained(dir);
  } catch (e) {
    const message = checkError(e, PRETRAINED_ERROR, 'LlamaForCausalLM.fromPretrained');
    if (openFds() !== fds) violation('fromPretrained: a descriptor was left open');
    return { kind: 'rejected', message };
  }
  if (openFds() !== fds) violation('fromPretrained: a descriptor was left open');
  checkParsedConfig(model.config, 'fromPretrained');
  const logits = noGrad(() => model.forward([[0, 1, 2]]));
  if (logits.shape.join() !== `1,3,${model.config.vocabSize}`) violation(`fromPretrained: forward gave ${logits.describe()}`);
  logits.dispose();
  return { kind: 'ok' };
}

// =========================================================================== the loop

export interface Seeds {
  st: StDoc[];
  adapters: AdapterSeed[];
  configs: Record<string, Json>[];
  /** The weights of the llama_gqa test checkpoint, and its config. */
  checkpoint: { config: Record<string, Json>; weights: Buffer };
}

/** Builds the valid inputs every case starts from (in `tmp`, which the caller owns). */
export async function makeSeeds(tmp: string): Promise<Seeds> {
  const cases = loadCases().cases;
  const ckDir = path.join(tmp, 'seed-checkpoint');
  await writeCheckpoint(ckDir, cases.llama_gqa);
  const checkpoint = { config: cases.llama_gqa.config as Record<string, Json>, weights: fs.readFileSync(path.join(ckDir, 'model.safetensors')) };
  fs.rmSync(ckDir, { recursive: true, force: true });
  return {
    st: seedDocs(),
    adapters: await adapterSeeds(tmp),
    configs: Object.values(cases).map((c) => c.config as Record<string, Json>),
    checkpoint,
  };
}

export interface Finding {
  target: Target;
  seed: number;
  index: number;
  /** The case's input files (kept for findings). */
  dir: string;
  message: string;
}

export interface Stats {
  cases: number;
  ok: number;
  rejected: number;
  findings: Finding[];
}

function writeFiles(dir: string, files: Record<string, Buffer | string | null>): void {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const [name, content] of Object.entries(files)) if (content !== null) fs.writeFileSync(path.join(dir, name), content);
}

/** Writes case `index` of `target` into `dir` (deterministic in seed, target and index). */
export function writeCase(seeds: Seeds, target: Target, seed: number, index: number, dir: string): void {
  const rng = new Rng(caseSeed(seed, target, index));
  switch (target) {
    case 'safetensors':
      writeFiles(dir, { 'case.safetensors': mutateSafetensors(rng, rng.pick(seeds.st)) });
      return;
    case 'adapter': {
      const base = rng.pick(seeds.adapters);
      // Half the cases without the config record of saveAdapter (as Python's PEFT saves them), so
      // that a mutated config meets the checks after the record's.
      let w = base.weights;
      if (rng.chance(0.5)) {
        const header = clone(w.header) as Record<string, Record<string, Json>>;
        if (header.__metadata__) delete header.__metadata__['lora_cuda.adapter_config'];
        w = { header, data: w.data };
      }
      const which = rng.int(10);
      const config = which < 4 || which === 8 ? mutateAdapterConfig(rng, base.config) : JSON.stringify(base.config, null, 2);
      const weights = which >= 4 ? mutateAdapterWeights(rng, w) : stBytes(JSON.stringify(w.header), w.data);
      writeFiles(dir, which === 9 && rng.chance(0.5)
        ? { 'adapter_config.json': rng.chance(0.5) ? config : null, 'adapter_model.safetensors': rng.chance(0.5) ? null : weights }
        : { 'adapter_config.json': config, 'adapter_model.safetensors': weights });
      return;
    }
    case 'config':
      writeFiles(dir, { 'config.json': mutateLlamaConfig(rng, rng.pick(seeds.configs)) });
      return;
    case 'pretrained': {
      const { config, weights } = seeds.checkpoint;
      const n = Number(weights.readBigUInt64LE(0));
      const doc: StDoc = { header: JSON.parse(weights.subarray(8, 8 + n).toString('utf8')), data: weights.subarray(8 + n) };
      const which = rng.int(10);
      const files: Record<string, Buffer | string | null> = {
        'config.json': which < 6 ? mutateLlamaConfig(rng, config) : JSON.stringify(config),
        'model.safetensors': which >= 6 ? mutateSafetensors(rng, doc, 0.5) : weights,
      };
      if (which === 9) {
        // A sharded checkpoint whose index is damaged.
        files['model-00001-of-00001.safetensors'] = files['model.safetensors'];
        files['model.safetensors'] = null;
        const index = { metadata: {}, weight_map: Object.fromEntries(Object.keys(doc.header).filter((k) => k !== '__metadata__').map((k) => [k, 'model-00001-of-00001.safetensors'])) };
        files['model.safetensors.index.json'] = rng.pick([
          () => JSON.stringify(index),
          () => JSON.stringify({ ...index, weight_map: rng.pick<Json>([null, 5, [], { a: '../model.safetensors' }, { a: '/etc/passwd' }, { a: 'missing.safetensors' }, { a: '.hidden' }, { a: 5 }]) }),
          () => JSON.stringify(index).slice(0, rng.int(40)),
          () => JSON.stringify(oddValue(rng)),
        ])();
      }
      writeFiles(dir, files);
      return;
    }
  }
}

/** Runs the case written in `dir`. */
export async function runCase(target: Target, dir: string, rng: Rng): Promise<Outcome> {
  switch (target) {
    case 'safetensors': return runSafetensors(path.join(dir, 'case.safetensors'), rng);
    case 'adapter': return runAdapter(dir);
    case 'config': return runConfig(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    case 'pretrained': return runPretrained(dir);
  }
}

/**
 * Runs cases [first, first + count) of `target`. Each case's input is written to `work` before it
 * runs; a case that breaks a rule is a finding (its input is copied to `findingsDir` when given).
 * Anything else than a FuzzViolation thrown by a case is a finding too.
 */
export async function fuzz(opts: {
  seeds: Seeds; target: Target; seed: number; first?: number; count: number; work: string; findingsDir?: string;
  onCase?: (index: number) => void;
}): Promise<Stats> {
  const stats: Stats = { cases: 0, ok: 0, rejected: 0, findings: [] };
  const first = opts.first ?? 0;
  for (let index = first; index < first + opts.count; index++) {
    opts.onCase?.(index);
    const dir = path.join(opts.work, opts.target);
    writeCase(opts.seeds, opts.target, opts.seed, index, dir);
    try {
      const out = await runCase(opts.target, dir, new Rng(caseSeed(opts.seed, `${opts.target}/run`, index)));
      stats[out.kind]++;
    } catch (e) {
      const message = e instanceof FuzzViolation ? e.message : `unexpected ${(e as Error)?.constructor?.name}: ${(e as Error)?.stack ?? String(e)}`;
      let kept = dir;
      if (opts.findingsDir) {
        kept = path.join(opts.findingsDir, `${opts.target}-seed${opts.seed}-case${index}`);
        fs.rmSync(kept, { recursive: true, force: true });
        fs.cpSync(dir, kept, { recursive: true });
        fs.writeFileSync(path.join(kept, 'finding.txt'), `${message}\n`);
      }
      stats.findings.push({ target: opts.target, seed: opts.seed, index, dir: kept, message });
    }
    stats.cases++;
  }
  return stats;
}
