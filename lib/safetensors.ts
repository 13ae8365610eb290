// Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
//
//   8 bytes   N, a little-endian u64: the header's length in bytes
//   N bytes   UTF-8 JSON: {"__metadata__"?: {str: str}, "<name>": {"dtype", "shape", "data_offsets": [begin, end]}}
//             (may be padded with trailing spaces)
//   the rest  the data area: every tensor's bytes, row-major and little-endian, at data_offsets
//             (relative to the data area's start); the tensors cover it exactly, with no gaps or overlaps
//
// The reader keeps a file descriptor open and reads one tensor at a time, so only the header and the
// tensor being read are ever in memory. Every malformed file is rejected at open with a SafetensorsError
// (code 'ERR_SAFETENSORS_INVALID') naming the file and the problem; no allocation is sized by the file
// before it has been checked against the file's real size.
//
// The writer streams tensor by tensor into a temporary file in the target's directory, fsyncs it and
// renames it over the target (atomic.ts), so the target is either the old file or the complete new one.
//
// Sync and async variants share one implementation: each operation is a generator that yields file-system
// requests, driven either by the *Sync fs calls or by the callback fs calls (fsio.ts).
import * as fs from 'fs';
import * as os from 'os';
import { TextDecoder } from 'util';
import { constants as bufferConstants } from 'buffer';
import { DType, Tensor } from './tensor';
import { DTYPES, isHalf } from './dtype';
import { tensor } from './creation';
import { fromArray as rawFromArray } from './ops/creation';
import { toHalfBits } from './ops/memory';
import { checkKnownKeys, checkOneOf, checkOptions, rangeError, typeError } from './errors';
import { Io, MAX_JSON_CONTAINERS, openForReading, quietly, readFully, runAsync, runSync, scanJsonShape, writeFully } from './fsio';
import { atomicWriteOps } from './atomic';

// ================================================================== types

export type SafetensorsDtype = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32' | 'I16' | 'I8' | 'U8' | 'BOOL';

/** Where one tensor lies in a safetensors file. */
export interface SafetensorsEntry {
  name: string;
  dtype: SafetensorsDtype;
  shape: number[];
  /** Absolute offset of the tensor's first byte in the file. */
  byteOffset: number;
  byteLength: number;
}

/** Options of SafetensorsFile.read / readSync and loadSafetensors. */
export interface SafetensorsReadOptions {
  /**
   * dtype of the returned tensor. Default: 'bfloat16' for BF16 and 'float16' for F16 (the stored bits,
   * unconverted, as safetensors' own loaders give them), 'float32' for F64/F32, 'int32' for the
   * integer dtypes and BOOL. Any float dtype can be asked for (conversions round once, to nearest
   * even); a value beyond float16's range (largest finite 65504) read as 'float16' is an error naming
   * the tensor, not an infinity. Float data cannot be read as 'int32'; I64 values must fit in int32
   * when read as 'int32'.
   */
  dtype?: DType;
}

export interface WriteOptions {
  /** Free-form string-to-string map, stored under "__metadata__". */
  metadata?: Record<string, string>;
  /**
   * On-disk dtype of every float tensor. Without it, each float tensor keeps its dtype: float32 as
   * F32, float64 as F64, bfloat16 as BF16 and float16 as F16 (the bits as they are). int32 tensors
   * are always written as I32.
   */
  dtype?: 'F32' | 'F16' | 'BF16';
}

/** A file that is not valid safetensors. `path` is the file; the message says what is wrong. */
export class SafetensorsError extends Error {
  readonly code = 'ERR_SAFETENSORS_INVALID';
  readonly path: string;
  constructor(where: string, path: string, problem: string) {
    super(`${where}: ${path} is not a valid safetensors file: ${problem}`);
    this.name = 'SafetensorsError';
    this.path = path;
  }
}

// ================================================================ dtypes

const DTYPE_SIZE: Readonly<Record<SafetensorsDtype, number>> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U8: 1, BOOL: 1,
};
const SUPPORTED = Object.keys(DTYPE_SIZE) as SafetensorsDtype[];
const FLOAT_DTYPES: ReadonlySet<string> = new Set(['F64', 'F32', 'F16', 'BF16']);
/** Dtypes of the format that this reader does not convert (rejected with a specific message). */
const UNSUPPORTED = new Set(['U16', 'U32', 'U64', 'F8_E4M3', 'F8_E5M2', 'F8_E8M0', 'F6_E2M3', 'F6_E3M2', 'F4', 'C64']);
/**
 * The reference implementation's dtype order (increasing alignment). Its writer lays tensors out by
 * descending rank, then by name, so every tensor stays aligned without padding; ours does the same.
 */
const DTYPE_RANK: Readonly<Record<SafetensorsDtype, number>> = {
  BOOL: 0, U8: 1, I8: 2, I16: 5, F16: 7, BF16: 8, I32: 9, F32: 11, F64: 12, I64: 13,
};

/** The reference implementation's limit on the header's size. */
const MAX_HEADER_BYTES = 100_000_000;
/** JSON nesting deeper than this is rejected (a valid header nests 3 levels). */
const MAX_JSON_DEPTH = 64;
const LITTLE_ENDIAN = os.endianness() === 'LE';

// ============================================================== helpers

/** Short, bounded description of an untrusted JSON value for messages. */
function brief(v: unknown): string {
  if (typeof v === 'string') {
    const s = JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}…` : v);
    return s;
  }
  if (Array.isArray(v)) {
    const items = v.slice(0, 8).map((x) => (Array.isArray(x) ? '[…]' : x !== null && typeof x === 'object' ? '{…}' : brief(x)));
    return `[${items.join(', ')}${v.length > 8 ? ', …' : ''}]`;
  }
  if (v !== null && typeof v === 'object') return 'an object';
  return String(v);
}

function quote(name: string): string {
  return brief(name);
}

/** Byte-wise comparison of the UTF-8 encodings (Rust's String order, used by the reference writer). */
function compareUtf8(a: string, b: string): number {
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

const LONE_SURROGATE = /[\uD800-\uDFFF]/u;

function setOwn<T>(obj: Record<string, T>, key: string, value: T): void {
  // defineProperty, so that a key such as "__proto__" becomes an ordinary own property.
  Object.defineProperty(obj, key, { value, enumerable: true, writable: true, configurable: true });
}

/** Swaps each element's bytes in place (used only on big-endian hosts). */
function swapBytes(bytes: Uint8Array, size: number): void {
  if (size === 1) return;
  for (let i = 0; i + size <= bytes.length; i += size) {
    for (let a = i, b = i + size - 1; a < b; a++, b--) {
      const t = bytes[a];
      bytes[a] = bytes[b];
      bytes[b] = t;
    }
  }
}

// ======================================================== F16 and BF16

let f16Table: Uint32Array | null = null;

/** float32 bit patterns of all 65536 half-precision values (exact; NaN payloads kept). */
function halfToFloatTable(): Uint32Array {
  if (f16Table) return f16Table;
  const t = new Uint32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const sign = (h & 0x8000) << 16;
    const exp = (h >> 10) & 0x1f;
    let mant = h & 0x3ff;
    if (exp === 0) {
      if (mant === 0) {
        t[h] = sign;
      } else {
        // Subnormal: normalise the mantissa.
        let e = 113; // 127 - 15 + 1
        while ((mant & 0x400) === 0) {
          mant <<= 1;
          e--;
        }
        t[h] = sign | (e << 23) | ((mant & 0x3ff) << 13);
      }
    } else if (exp === 31) {
      t[h] = sign | 0x7f800000 | (mant << 13);
    } else {
      t[h] = sign | ((exp + 112) << 23) | (mant << 13);
    }
  }
  f16Table = t;
  return t;
}

/** float32 bit pattern -> half bit pattern, rounding to nearest even (overflow gives ±Inf). */
function float32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return mant === 0 ? sign | 0x7c00 : sign | 0x7e00 | (mant >>> 13); // Inf, quiet NaN
  const e = exp - 127;
  if (e >= 16) return sign | 0x7c00;
  if (e >= -14) {
    // Normal half; a carry out of the mantissa moves into the exponent (up to Inf), as it should.
    let h = ((e + 15) << 10) | (mant >>> 13);
    const rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem === 0x1000 && (h & 1) === 1)) h++;
    return sign | h;
  }
  if (e < -25) return sign; // below half of the smallest subnormal (2^-25): rounds to zero
  // Subnormal half: units of 2^-24. The value is m * 2^(e - 23) with the implicit bit.
  const m = mant | 0x800000;
  const shift = -e - 1; // 14 .. 24
  let q = m >>> shift;
  const rem = m & ((1 << shift) - 1);
  const half = 1 << (shift - 1);
  if (rem > half || (rem === half && (q & 1) === 1)) q++;
  return sign | q;
}

/** float32 bit pattern -> bfloat16 bit pattern, rounding to nearest even. */
function float32BitsToBF16(x: number): number {
  x >>>= 0;
  if ((x & 0x7f800000) === 0x7f800000 && (x & 0x7fffff) !== 0) return (x >>> 16) | 0x40; // quiet NaN
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

/**
 * float64 -> float32 rounded to odd: the float32 nearest below in magnitude, with its last bit set when
 * inexact. Rounding that to F16/BF16 gives the correctly rounded result (no double-rounding error).
 */
function toFloat32RoundToOdd(src: Float64Array): Float32Array {
  const out = new Float32Array(src.length);
  const bits = new Uint32Array(out.buffer);
  for (let i = 0; i < src.length; i++) {
    const v = src[i];
    out[i] = v;
    const f = out[i];
    if (f !== v && v === v) {
      let b = bits[i];
      if (Math.abs(f) > Math.abs(v)) b -= 1; // rounded away from zero: step back towards it
      bits[i] = b | 1;
    }
  }
  return out;
}

// ================================================================ header

interface ParsedHeader {
  metadata: Record<string, string>;
  entries: Map<string, SafetensorsEntry>;
  order: string[];
}

/**
 * One pass over (already valid) JSON text: rejects duplicate keys in the top-level object and in the
 * objects directly inside it (JSON.parse would keep the last silently). The nesting was bounded
 * before the parse (scanJsonShape); the check here stays for callers that skip that.
 */
function scanJson(text: string, fail: (problem: string) => never): void {
  interface Frame { obj: boolean; expectKey: boolean; keys: Set<string> | null; lastKey: string }
  const stack: Frame[] = [];
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x22 /* " */) {
      let j = i + 1;
      let escaped = false;
      for (;;) {
        const d = text.charCodeAt(j);
        if (d === 0x5c /* \ */) {
          escaped = true;
          j += 2;
        } else if (d === 0x22) {
          break;
        } else {
          j++;
        }
      }
      const top = stack[stack.length - 1];
      if (top && top.obj && top.expectKey) {
        top.expectKey = false;
        if (top.keys) {
          const key = escaped ? (JSON.parse(text.slice(i, j + 1)) as string) : text.slice(i + 1, j);
          if (top.keys.has(key)) {
            fail(`duplicate key ${quote(key)} in the header${stack.length === 1 ? '' : ` (inside ${quote(stack[0].lastKey)})`}`);
          }
          top.keys.add(key);
          top.lastKey = key;
        }
      }
      i = j;
    } else if (c === 0x7b /* { */ || c === 0x5b /* [ */) {
      if (stack.length >= MAX_JSON_DEPTH) fail(`the header's JSON nests deeper than ${MAX_JSON_DEPTH} levels`);
      const obj = c === 0x7b;
      stack.push({ obj, expectKey: obj, keys: obj && stack.length < 2 ? new Set() : null, lastKey: '' });
    } else if (c === 0x7d /* } */ || c === 0x5d /* ] */) {
      stack.pop();
    } else if (c === 0x2c /* , */) {
      const top = stack[stack.length - 1];
      if (top && top.obj) top.expectKey = true;
    }
  }
}

function isSafeNonNegInt(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

function parseHeader(where: string, path: string, bytes: Uint8Array, fileSize: number): ParsedHeader {
  const fail = (problem: string): never => {
    throw new SafetensorsError(where, path, problem);
  };
  const headerLen = bytes.length;
  const dataStart = 8 + headerLen;
  const dataSize = fileSize - dataStart;

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(bytes);
  } catch {
    return fail('the header is not valid UTF-8');
  }
  // Before JSON.parse, which would spend the heap on deep nesting.
  const shape = scanJsonShape(bytes, MAX_JSON_DEPTH);
  if (shape.depth > MAX_JSON_DEPTH) fail(`the header's JSON nests deeper than ${MAX_JSON_DEPTH} levels`);
  if (shape.containers > MAX_JSON_CONTAINERS) fail(`the header's JSON has more than ${MAX_JSON_CONTAINERS} objects and arrays`);
  let root: unknown;
  try {
    root = JSON.parse(text);
  } catch (e) {
    return fail(`the header is not valid JSON (${(e as Error).message})`);
  }
  if (root === null || typeof root !== 'object' || Array.isArray(root)) {
    return fail(`the header must be a JSON object, got ${Array.isArray(root) ? 'an array' : brief(root)}`);
  }
  scanJson(text, fail);

  const metadata: Record<string, string> = {};
  const entries = new Map<string, SafetensorsEntry>();
  const spans: { name: string; begin: number; end: number }[] = [];
  for (const name of Object.keys(root)) {
    const value = (root as Record<string, unknown>)[name];
    if (name === '__metadata__') {
      if (value === null) continue; // the reference implementation reads null as "no metadata"
      if (typeof value !== 'object' || Array.isArray(value)) {
        fail(`"__metadata__" must be an object of strings, got ${Array.isArray(value) ? 'an array' : brief(value)}`);
      }
      for (const k of Object.keys(value as object)) {
        const v = (value as Record<string, unknown>)[k];
        if (typeof v !== 'string') fail(`"__metadata__" values must be strings, got ${brief(v)} for key ${quote(k)}`);
        setOwn(metadata, k, v as string);
      }
      continue;
    }
    const what = `tensor ${quote(name)}`;
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      fail(`${what}: entry must be an object with dtype, shape and data_offsets, got ${Array.isArray(value) ? 'an array' : brief(value)}`);
    }
    const info = value as Record<string, unknown>;
    const dtype = info.dtype;
    if (typeof dtype !== 'string' || !(SUPPORTED as string[]).includes(dtype)) {
      const supported = `supported: ${SUPPORTED.join(', ')}`;
      if (typeof dtype === 'string' && UNSUPPORTED.has(dtype)) fail(`${what}: dtype ${quote(dtype)} is not supported (${supported})`);
      fail(`${what}: unknown dtype ${brief(dtype)} (${supported})`);
    }
    const shape = info.shape;
    if (!Array.isArray(shape)) fail(`${what}: shape must be an array of non-negative integers, got ${brief(shape)}`);
    (shape as unknown[]).forEach((d, i) => {
      if (!isSafeNonNegInt(d)) {
        fail(`${what}: shape must be an array of non-negative integers, got ${brief(shape)} (shape[${i}] is ${brief(d)})`);
      }
    });
    const offsets = info.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !isSafeNonNegInt(offsets[0]) || !isSafeNonNegInt(offsets[1])) {
      fail(`${what}: data_offsets must be two non-negative integers [begin, end], got ${brief(offsets)}`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) fail(`${what}: data_offsets [${begin}, ${end}] end before they begin`);
    const size = DTYPE_SIZE[dtype as SafetensorsDtype];
    let needed = BigInt(size);
    for (const d of shape as number[]) needed *= BigInt(d);
    if (needed !== BigInt(end - begin)) {
      fail(`${what}: shape [${(shape as number[]).join(', ')}] of ${dtype} needs ${needed} bytes, but data_offsets [${begin}, ${end}] span ${end - begin}`);
    }
    if (end > dataSize) {
      fail(`${what}: data_offsets [${begin}, ${end}] reach past the end of the data area (${dataSize} bytes: the file has ${fileSize} bytes, the data starts at byte ${dataStart})`);
    }
    entries.set(name, Object.freeze({
      name,
      dtype: dtype as SafetensorsDtype,
      shape: Object.freeze((shape as number[]).slice()) as number[],
      byteOffset: dataStart + begin,
      byteLength: end - begin,
    }));
    spans.push({ name, begin, end });
  }

  // The spans must tile the data area: sorted by offset, each starts where the previous ended.
  spans.sort((a, b) => a.begin - b.begin || a.end - b.end || compareUtf8(a.name, b.name));
  let pos = 0;
  let prev: string | null = null;
  for (const s of spans) {
    if (s.begin < pos) {
      fail(`tensors ${quote(prev as string)} and ${quote(s.name)} overlap (${quote(s.name)} begins at ${s.begin}, before ${pos})`);
    }
    if (s.begin > pos) {
      fail(`bytes [${pos}, ${s.begin}) of the data area belong to no tensor (a hole before ${quote(s.name)})`);
    }
    pos = s.end;
    prev = s.name;
  }
  if (pos !== dataSize) {
    fail(`the tensors end at byte ${pos} of the data area, but it has ${dataSize} bytes (${dataSize - pos} bytes belong to no tensor)`);
  }
  return { metadata: Object.freeze(metadata), entries, order: spans.map((s) => s.name) };
}

// ============================================================ reading

const fdRegistry = new FinalizationRegistry<number>((fd) => {
  fs.close(fd, () => undefined);
});

function checkPath(where: string, path: unknown): string {
  if (typeof path !== 'string') throw typeError(where, 'path', 'a string', path);
  if (path.length === 0) throw rangeError(where, 'path', 'a non-empty string', path);
  return path;
}

function* openOps(where: string, path: string): Io<{ fd: number; header: ParsedHeader }> {
  const fail = (problem: string) => new SafetensorsError(where, path, problem);
  const { fd, size } = yield* openForReading(where, path, fail);
  try {
    if (size < 8) throw fail(`the file has ${size} bytes, fewer than the 8-byte header length`);
    const truncated = () => fail('the file became shorter while it was being read');
    const prefix = new Uint8Array(8);
    yield* readFully(fd, prefix, 0, 8, 0, truncated);
    const n = Buffer.from(prefix.buffer).readBigUInt64LE(0);
    if (n === 0n) throw fail('the header length is 0 (the header must hold at least "{}")');
    if (n > BigInt(MAX_HEADER_BYTES)) {
      throw fail(`the header length ${n} is larger than the limit of ${MAX_HEADER_BYTES} bytes${n > BigInt(size - 8) ? ` and than the file (${size} bytes)` : ''}`);
    }
    if (n > BigInt(size - 8)) throw fail(`the header length ${n} is larger than the rest of the file (${size - 8} bytes after the 8-byte length)`);
    const bytes = new Uint8Array(Number(n));
    yield* readFully(fd, bytes, 0, bytes.length, 8, truncated);
    return { fd, header: parseHeader(where, path, bytes, size) };
  } catch (e) {
    yield* quietly({ kind: 'close', fd });
    throw e;
  }
}

function checkReadOptions(where: string, opts: unknown): DType | undefined {
  const o = checkOptions(where, opts);
  checkKnownKeys(where, o, ['dtype']);
  return o.dtype === undefined ? undefined : checkOneOf(where, 'options.dtype', o.dtype, DTYPES);
}

/**
 * A safetensors file opened for reading. The header is parsed and validated at open; tensors are read
 * one at a time, on demand, from an open file descriptor. Call close() when done (the descriptor is
 * also closed if the object is garbage-collected).
 */
export class SafetensorsFile {
  readonly path: string;
  /** The "__metadata__" map (empty when the file has none). */
  readonly metadata: Record<string, string>;
  private _fd: number;
  private _closed = false;
  private _pending = 0;
  private readonly _entries: Map<string, SafetensorsEntry>;
  private readonly _order: string[];

  private constructor(path: string, fd: number, header: ParsedHeader) {
    this.path = path;
    this._fd = fd;
    this.metadata = header.metadata;
    this._entries = header.entries;
    this._order = header.order;
    fdRegistry.register(this, fd, this);
  }

  /** Opens and validates a file; rejects with a SafetensorsError when it is malformed. */
  static async open(path: string): Promise<SafetensorsFile> {
    return SafetensorsFile._open('SafetensorsFile.open', path);
  }

  /** Synchronous open(). */
  static openSync(path: string): SafetensorsFile {
    return SafetensorsFile._openSync('SafetensorsFile.openSync', path);
  }

  /** @internal open() for a function that reads the file for its caller (loadAdapter, …): errors name `where`. */
  static async _open(where: string, path: string): Promise<SafetensorsFile> {
    const p = checkPath(where, path);
    const { fd, header } = await runAsync(openOps(where, p));
    return new SafetensorsFile(p, fd, header);
  }

  /** @internal openSync() with errors naming `where`. */
  static _openSync(where: string, path: string): SafetensorsFile {
    const p = checkPath(where, path);
    const { fd, header } = runSync(openOps(where, p));
    return new SafetensorsFile(p, fd, header);
  }

  /** Tensor names in file order (by offset). */
  keys(): string[] {
    return this._order.slice();
  }

  has(name: string): boolean {
    return typeof name === 'string' && this._entries.has(name);
  }

  /** Where the tensor lies (throws a RangeError naming the file and some available names when absent). */
  entry(name: string): SafetensorsEntry {
    return this._entry('SafetensorsFile.entry', name);
  }

  get isClosed(): boolean {
    return this._closed;
  }

  /**
   * Reads one tensor; BF16 and F16 stay bfloat16 and float16 (bits unchanged), F64/F32 become float32
   * and the integer dtypes int32, unless options.dtype says otherwise.
   */
  async read(name: string, opts?: SafetensorsReadOptions): Promise<Tensor> {
    return this._readTensor('SafetensorsFile.read', name, opts);
  }

  readSync(name: string, opts?: SafetensorsReadOptions): Tensor {
    return this._readTensorSync('SafetensorsFile.readSync', name, opts);
  }

  /** @internal read() with errors naming `where`. */
  async _readTensor(where: string, name: string, opts?: SafetensorsReadOptions): Promise<Tensor> {
    const target = checkReadOptions(where, opts);
    const e = this._entry(where, name);
    const dtype = targetDtype(where, e, target);
    const bytes = await this._readAsync(where, e);
    return toTensor(where, e, bytes, dtype);
  }

  /** @internal readSync() with errors naming `where`. */
  _readTensorSync(where: string, name: string, opts?: SafetensorsReadOptions): Tensor {
    const target = checkReadOptions(where, opts);
    const e = this._entry(where, name);
    const dtype = targetDtype(where, e, target);
    return toTensor(where, e, this._readSync(where, e), dtype);
  }

  /** The tensor's bytes exactly as stored (little-endian, row-major). */
  async readRaw(name: string): Promise<Buffer> {
    const where = 'SafetensorsFile.readRaw';
    const bytes = await this._readAsync(where, this._entry(where, name));
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  readRawSync(name: string): Buffer {
    const where = 'SafetensorsFile.readRawSync';
    const bytes = this._readSync(where, this._entry(where, name));
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }

  /** Closes the file descriptor (after any read in progress finishes). Idempotent; later reads throw. */
  close(): void {
    if (this._closed) return;
    this._closed = true;
    if (this._pending === 0) this._closeFd();
  }

  private _closeFd(): void {
    fdRegistry.unregister(this);
    const fd = this._fd;
    this._fd = -1;
    try {
      fs.closeSync(fd);
    } catch {
      // nothing useful to do: the descriptor is gone either way
    }
  }

  private _entry(where: string, name: unknown): SafetensorsEntry {
    if (typeof name !== 'string') throw typeError(where, 'name', 'a string', name);
    const e = this._entries.get(name);
    if (e) return e;
    const n = this._order.length;
    if (n === 0) throw rangeError(where, 'name', `a tensor in ${this.path}, which holds no tensors`, name);
    // Suggest names that end with the requested one, contain it, or share its last part; else the first few.
    const last = name.slice(name.lastIndexOf('.') + 1);
    const rank = (k: string) => (name && k.endsWith(name) ? 0 : name && k.includes(name) ? 1 : last && k.includes(last) ? 2 : 3);
    const similar = this._order.map((k) => ({ k, r: rank(k) })).filter((x) => x.r < 3)
      .sort((a, b) => a.r - b.r).map((x) => x.k);
    const shown = [...new Set([...similar, ...this._order])].slice(0, 5);
    const list = `${shown.map(quote).join(', ')}${n > shown.length ? `, … (${n} in all)` : ''}`;
    throw rangeError(where, 'name', `a tensor in ${this.path} (${similar.length ? 'similar' : 'available'}: ${list})`, name);
  }

  private _checkOpen(where: string): void {
    if (this._closed) {
      const err = new Error(`${where}: ${this.path} has been closed`);
      (err as NodeJS.ErrnoException).code = 'ERR_SAFETENSORS_CLOSED';
      throw err;
    }
  }

  private *_readOps(where: string, e: SafetensorsEntry): Io<Uint8Array> {
    if (e.byteLength > bufferConstants.MAX_LENGTH) {
      throw new RangeError(`${where}: tensor ${quote(e.name)} has ${e.byteLength} bytes, more than one buffer can hold (${bufferConstants.MAX_LENGTH})`);
    }
    const bytes = new Uint8Array(e.byteLength); // fresh ArrayBuffer: offset 0, aligned for every typed array
    yield* readFully(this._fd, bytes, 0, bytes.length, e.byteOffset,
      () => new SafetensorsError(where, this.path, `the file became shorter than its header says while tensor ${quote(e.name)} was read`));
    return bytes;
  }

  private _readSync(where: string, e: SafetensorsEntry): Uint8Array {
    this._checkOpen(where);
    return runSync(this._readOps(where, e));
  }

  private async _readAsync(where: string, e: SafetensorsEntry): Promise<Uint8Array> {
    this._checkOpen(where);
    this._pending++;
    try {
      return await runAsync(this._readOps(where, e));
    } finally {
      this._pending--;
      if (this._closed && this._pending === 0 && this._fd >= 0) this._closeFd();
    }
  }
}

function targetDtype(where: string, e: SafetensorsEntry, target: DType | undefined): DType {
  const isFloat = FLOAT_DTYPES.has(e.dtype);
  if (target === undefined) return e.dtype === 'BF16' ? 'bfloat16' : e.dtype === 'F16' ? 'float16' : isFloat ? 'float32' : 'int32';
  if (isFloat && target === 'int32') {
    throw rangeError(where, 'options.dtype', `a float dtype ('float32', 'float64', 'bfloat16' or 'float16') for tensor ${quote(e.name)}, stored as ${e.dtype}`, target);
  }
  return target;
}

/** Converts a tensor's stored bytes (a fresh, aligned buffer, which may be reused) to a tensor. */
function toTensor(where: string, e: SafetensorsEntry, bytes: Uint8Array, dtype: DType): Tensor {
  if (!LITTLE_ENDIAN) swapBytes(bytes, DTYPE_SIZE[e.dtype]);
  if (isHalf(dtype)) return toHalfTensor(where, e, bytes, dtype);
  return tensor(toTensorData(where, e, bytes, dtype), { shape: e.shape, dtype });
}

/** Stored values (little-endian bytes, already in host order) as a float32, float64 or int32 array. */
function toTensorData(where: string, e: SafetensorsEntry, bytes: Uint8Array, dtype: DType): Float32Array | Float64Array | Int32Array {
  const size = DTYPE_SIZE[e.dtype];
  const n = bytes.byteLength / size;
  const buf = bytes.buffer;
  const off = bytes.byteOffset;
  // The arrays below are all made here (this realm), so instanceof is reliable.
  const asFloat = (f: Float32Array | Float64Array): Float32Array | Float64Array => {
    if (dtype === 'float32') return f instanceof Float32Array ? f : Float32Array.from(f);
    return f instanceof Float64Array ? f : Float64Array.from(f);
  };
  const fromInts = (v: ArrayLike<number>): Float32Array | Float64Array | Int32Array => {
    if (dtype === 'int32') return v instanceof Int32Array ? v : Int32Array.from(v);
    return dtype === 'float32' ? Float32Array.from(v) : Float64Array.from(v);
  };
  let data: Float32Array | Float64Array | Int32Array;
  switch (e.dtype) {
    case 'F32':
      data = asFloat(new Float32Array(buf, off, n));
      break;
    case 'F64':
      data = asFloat(new Float64Array(buf, off, n));
      break;
    case 'F16': {
      const src = new Uint16Array(buf, off, n);
      const table = halfToFloatTable();
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i++) bits[i] = table[src[i]];
      data = asFloat(new Float32Array(bits.buffer));
      break;
    }
    case 'BF16': {
      const src = new Uint16Array(buf, off, n);
      const bits = new Uint32Array(n);
      for (let i = 0; i < n; i++) bits[i] = src[i] << 16;
      data = asFloat(new Float32Array(bits.buffer));
      break;
    }
    case 'I32':
      data = fromInts(new Int32Array(buf, off, n));
      break;
    case 'I16':
      data = fromInts(new Int16Array(buf, off, n));
      break;
    case 'I8':
      data = fromInts(new Int8Array(buf, off, n));
      break;
    case 'U8':
      data = fromInts(new Uint8Array(buf, off, n));
      break;
    case 'BOOL': {
      const src = new Uint8Array(buf, off, n);
      const out = new Int32Array(n);
      for (let i = 0; i < n; i++) out[i] = src[i] === 0 ? 0 : 1;
      data = fromInts(out);
      break;
    }
    case 'I64': {
      const words = new Int32Array(buf, off, 2 * n);
      if (dtype === 'int32') {
        const out = new Int32Array(n);
        for (let i = 0; i < n; i++) {
          const lo = words[2 * i];
          const hi = words[2 * i + 1];
          if (hi !== lo >> 31) {
            const value = (BigInt(hi) << 32n) | BigInt(lo >>> 0);
            throw new RangeError(`${where}: tensor ${quote(e.name)} (I64) holds ${value} at index ${i}, which does not fit in int32; read it with { dtype: 'float64' }`);
          }
          out[i] = lo;
        }
        data = out;
      } else {
        const out = new Float64Array(n);
        for (let i = 0; i < n; i++) out[i] = words[2 * i + 1] * 4294967296 + (words[2 * i] >>> 0);
        data = dtype === 'float32' ? Float32Array.from(out) : out;
      }
      break;
    }
  }
  return data;
}

const CPU = { type: 'cpu' as const, index: 0, name: 'cpu' };
/** float16's overflow threshold: from 65520 up (65504 + half an ulp, a tie going to even) a value rounds to Inf. */
const F16_OVERFLOW = 65520;

/**
 * A tensor's stored values as a half tensor: the bits themselves when the stored dtype is the one
 * asked for, else through float32 (F64 rounded to odd first, so the result is rounded once). A finite
 * value too large for float16 is refused with the tensor's name: PyTorch's cast would give Inf.
 */
function toHalfTensor(where: string, e: SafetensorsEntry, bytes: Uint8Array, dtype: 'bfloat16' | 'float16'): Tensor {
  const n = bytes.byteLength / DTYPE_SIZE[e.dtype];
  if ((e.dtype === 'BF16' && dtype === 'bfloat16') || (e.dtype === 'F16' && dtype === 'float16')) {
    return rawFromArray(new Uint16Array(bytes.buffer, bytes.byteOffset, n), e.shape, dtype, CPU);
  }
  let f32: Float32Array;
  if (e.dtype === 'F64') f32 = toFloat32RoundToOdd(new Float64Array(bytes.buffer, bytes.byteOffset, n));
  else f32 = toTensorData(where, e, bytes, 'float32') as Float32Array;
  if (dtype === 'float16') {
    for (let i = 0; i < f32.length; i++) {
      const v = f32[i];
      if (Math.abs(v) >= F16_OVERFLOW && Number.isFinite(v)) {
        const shown = e.dtype === 'F64' ? new Float64Array(bytes.buffer, bytes.byteOffset, n)[i] : v;
        throw new RangeError(`${where}: tensor ${quote(e.name)} (${e.dtype}) holds ${shown} at index ${i}, beyond float16's range ` +
          `(largest finite value 65504); read it as 'float32' or 'bfloat16'`);
      }
    }
  }
  return rawFromArray(f32, e.shape, dtype, CPU);
}

/** Reads every tensor of a file, in file order (see SafetensorsFile.read for the dtypes). */
export async function loadSafetensors(path: string, opts?: SafetensorsReadOptions): Promise<Record<string, Tensor>> {
  const where = 'loadSafetensors';
  checkReadOptions(where, opts);
  const f = await SafetensorsFile._open(where, path);
  const out: Record<string, Tensor> = {};
  try {
    for (const k of f.keys()) setOwn(out, k, await f._readTensor(where, k, opts));
  } catch (e) {
    for (const t of Object.values(out)) t.dispose();
    throw e;
  } finally {
    f.close();
  }
  return out;
}

/** Synchronous loadSafetensors(). */
export function loadSafetensorsSync(path: string, opts?: SafetensorsReadOptions): Record<string, Tensor> {
  const where = 'loadSafetensorsSync';
  checkReadOptions(where, opts);
  const f = SafetensorsFile._openSync(where, path);
  const out: Record<string, Tensor> = {};
  try {
    for (const k of f.keys()) setOwn(out, k, f._readTensorSync(where, k, opts));
  } catch (e) {
    for (const t of Object.values(out)) t.dispose();
    throw e;
  } finally {
    f.close();
  }
  return out;
}

// ============================================================ writing

interface WritePlan {
  header: Buffer; // length prefix + padded JSON
  items: { name: string; t: Tensor; dtype: SafetensorsDtype; byteLength: number; pos: number }[];
}

function disposedError(where: string, what: string): Error {
  const e = new Error(`${where}: ${what} has been disposed`);
  (e as NodeJS.ErrnoException).code = 'ERR_TENSOR_DISPOSED';
  return e;
}

/** The on-disk dtype a float tensor keeps when no options.dtype is given. */
const STORED_AS: Readonly<Record<Exclude<DType, 'int32'>, SafetensorsDtype>> = {
  float32: 'F32', float64: 'F64', bfloat16: 'BF16', float16: 'F16',
};

function planWrite(where: string, tensors: unknown, opts: unknown): WritePlan {
  if (tensors === null || typeof tensors !== 'object' || Array.isArray(tensors) || tensors instanceof Tensor || tensors instanceof Map) {
    throw typeError(where, 'tensors', 'an object mapping names to tensors', tensors);
  }
  const o = checkOptions(where, opts);
  checkKnownKeys(where, o, ['metadata', 'dtype']);
  const floatDtype = o.dtype === undefined ? undefined : checkOneOf(where, 'options.dtype', o.dtype, ['F32', 'F16', 'BF16'] as const);
  let metaJson: string | null = null;
  if (o.metadata !== undefined) {
    const m = o.metadata;
    if (m === null || typeof m !== 'object' || Array.isArray(m)) throw typeError(where, 'options.metadata', 'an object of strings', m);
    const keys = Object.keys(m).sort(compareUtf8);
    const parts: string[] = [];
    for (const k of keys) {
      const v = (m as Record<string, unknown>)[k];
      if (typeof v !== 'string') throw typeError(where, `options.metadata[${JSON.stringify(k)}]`, 'a string', v);
      if (LONE_SURROGATE.test(k)) throw rangeError(where, 'options.metadata key', 'well-formed Unicode (no lone surrogates)', k);
      if (LONE_SURROGATE.test(v)) throw rangeError(where, `options.metadata[${JSON.stringify(k)}]`, 'well-formed Unicode (no lone surrogates)', v);
      parts.push(`${JSON.stringify(k)}:${JSON.stringify(v)}`);
    }
    metaJson = `{${parts.join(',')}}`;
  }

  const items: WritePlan['items'] = [];
  for (const name of Object.keys(tensors)) {
    const t = (tensors as Record<string, unknown>)[name];
    const what = `tensors[${JSON.stringify(name)}]`;
    if (name === '__metadata__') throw rangeError(where, 'tensor name', 'anything but "__metadata__" (reserved for metadata)', name);
    if (LONE_SURROGATE.test(name)) throw rangeError(where, 'tensor name', 'well-formed Unicode (no lone surrogates)', name);
    if (!(t instanceof Tensor)) throw typeError(where, what, 'a Tensor', t);
    if (t.isDisposed) throw disposedError(where, what);
    const dtype: SafetensorsDtype = t.dtype === 'int32' ? 'I32' : floatDtype ?? STORED_AS[t.dtype];
    items.push({ name, t, dtype, byteLength: t.numel * DTYPE_SIZE[dtype], pos: 0 });
  }
  // The reference writer's layout: by descending alignment, then by name; so no padding is needed.
  items.sort((a, b) => DTYPE_RANK[b.dtype] - DTYPE_RANK[a.dtype] || compareUtf8(a.name, b.name));

  const parts: string[] = [];
  if (metaJson !== null) parts.push(`"__metadata__":${metaJson}`);
  let offset = 0;
  for (const it of items) {
    parts.push(`${JSON.stringify(it.name)}:{"dtype":"${it.dtype}","shape":[${it.t.shape.join(',')}],"data_offsets":[${offset},${offset + it.byteLength}]}`);
    it.pos = offset;
    offset += it.byteLength;
  }
  const json = Buffer.from(`{${parts.join(',')}}`, 'utf8');
  const padded = Math.ceil(json.length / 8) * 8;
  if (padded > MAX_HEADER_BYTES) {
    throw new RangeError(`${where}: the header would have ${padded} bytes, more than readers accept (${MAX_HEADER_BYTES})`);
  }
  const header = Buffer.alloc(8 + padded, 0x20); // padded with spaces
  header.writeBigUInt64LE(BigInt(padded), 0);
  json.copy(header, 8);
  for (const it of items) it.pos += header.length;
  return { header, items };
}

/** One tensor's bytes in its on-disk dtype, little-endian. */
function encode(where: string, name: string, t: Tensor, dtype: SafetensorsDtype, byteLength: number): Uint8Array {
  let data: Float32Array | Float64Array | Int32Array | Uint16Array;
  // A half tensor written in its own dtype: its bits as they are, no conversion.
  const sameHalf = (t.dtype === 'bfloat16' && dtype === 'BF16') || (t.dtype === 'float16' && dtype === 'F16');
  try {
    data = sameHalf ? toHalfBits(t) : t.toArray();
  } catch (e) {
    const err = new Error(`${where}: tensor ${quote(name)} could not be read: ${(e as Error).message}`, { cause: e });
    if ((e as NodeJS.ErrnoException).code) (err as NodeJS.ErrnoException).code = (e as NodeJS.ErrnoException).code;
    throw err;
  }
  // Go by the tensor's dtype, not instanceof: arrays made by the native addon may come from another realm.
  const isF64 = t.dtype === 'float64';
  let out: Uint8Array;
  if (sameHalf) {
    out = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  } else if (dtype === 'F16' || dtype === 'BF16') {
    const f32 = isF64 ? toFloat32RoundToOdd(data as Float64Array) : (data as Float32Array);
    const bits = new Uint32Array(f32.buffer, f32.byteOffset, f32.length);
    const half = new Uint16Array(f32.length);
    const conv = dtype === 'F16' ? float32BitsToF16 : float32BitsToBF16;
    for (let i = 0; i < half.length; i++) half[i] = conv(bits[i]);
    out = new Uint8Array(half.buffer);
  } else if (dtype === 'F32' && isF64) {
    out = new Uint8Array(Float32Array.from(data).buffer);
  } else {
    out = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (out.byteLength !== byteLength) {
    throw new Error(`${where}: tensor ${quote(name)} gave ${out.byteLength} bytes, expected ${byteLength}`);
  }
  if (!LITTLE_ENDIAN) {
    if (out.buffer === data.buffer) out = out.slice(); // toArray() is a copy, but stay safe
    swapBytes(out, DTYPE_SIZE[dtype]);
  }
  return out;
}

function* saveOps(where: string, target: string, plan: WritePlan): Io<void> {
  yield* atomicWriteOps(target, function* (fd) {
    yield* writeFully(fd, plan.header, 0);
    for (const it of plan.items) {
      if (it.byteLength === 0) continue;
      yield* writeFully(fd, encode(where, it.name, it.t, it.dtype, it.byteLength), it.pos);
    }
  });
}

/**
 * Writes tensors to a safetensors file, atomically: the data goes to a temporary file in the same
 * directory, which is fsynced and renamed over `path`. On any error the temporary file is removed and
 * an existing file at `path` is left as it was. Tensors are laid out like the reference writer does (by
 * descending alignment, then by name, which is plain name order when all share a dtype), one at a time.
 */
export async function saveSafetensors(path: string, tensors: Record<string, Tensor>, opts?: WriteOptions): Promise<void> {
  const where = 'saveSafetensors';
  const p = checkPath(where, path);
  const plan = planWrite(where, tensors, opts);
  await runAsync(saveOps(where, p, plan));
}

/** Synchronous saveSafetensors(). */
export function saveSafetensorsSync(path: string, tensors: Record<string, Tensor>, opts?: WriteOptions): void {
  const where = 'saveSafetensorsSync';
  const p = checkPath(where, path);
  const plan = planWrite(where, tensors, opts);
  runSync(saveOps(where, p, plan));
}
