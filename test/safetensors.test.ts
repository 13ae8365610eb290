import * as os from 'os';
import * as path from 'path';
import fs = require('fs'); // the module object itself, so jest.spyOn reaches the code under test
import {
  SafetensorsError, SafetensorsFile, loadSafetensors, loadSafetensorsSync, saveSafetensors, saveSafetensorsSync,
} from '../lib/safetensors';
import { Tensor } from '../lib/tensor';
import { tensor } from '../lib/creation';
import { toHalfBits } from '../lib/ops/memory';
import { openFilesOf } from './helpers/fds';

let dir: string;
beforeAll(() => {
  dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-safetensors-'));
});
afterAll(() => {
  fs.rmSync(dir, { recursive: true, force: true });
});
afterEach(() => {
  jest.restoreAllMocks();
});

let counter = 0;
function tmpFile(name = 'f'): string {
  return path.join(dir, `${name}-${counter++}.safetensors`);
}

/** A file from raw parts: the 8-byte length (default: the header's byte length), the header, the data. */
function buildFile(header: string | object | Buffer, data: ArrayLike<number> | Uint8Array = [], lengthField?: bigint): Buffer {
  const json = Buffer.isBuffer(header) ? header : Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(lengthField ?? BigInt(json.length));
  return Buffer.concat([prefix, json, Buffer.from(data as Uint8Array)]);
}

function writeBytes(bytes: Buffer | Uint8Array, name?: string): string {
  const p = tmpFile(name);
  fs.writeFileSync(p, bytes);
  return p;
}

function bytesOf(a: ArrayBufferView): number[] {
  return Array.from(new Uint8Array(a.buffer, a.byteOffset, a.byteLength));
}

function u16(...v: number[]): number[] {
  return bytesOf(new Uint16Array(v));
}

function f32Bits(t: Tensor): number[] {
  const a = t.toArray() as Float32Array;
  return Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
}

function headerOf(file: string): { n: number; text: string; json: Record<string, unknown> } {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const text = buf.subarray(8, 8 + n).toString('utf8');
  return { n, text, json: JSON.parse(text) };
}


// ====================================================================== reference files

describe('compatibility with the reference implementation', () => {
  // Byte-exact outputs of the reference writer (huggingface/safetensors, safetensors/src/tensor.rs tests).
  const attn0 = [
    64, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 46, 48, 34, 58, 123, 34, 100,
    116, 121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34,
    58, 91, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102, 115,
    101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 0, 0, 0, 0, 0, 0, 128, 63,
    0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64,
  ];
  const attn0Padded = [
    72, 0, 0, 0, 0, 0, 0, 0, 123, 34, 97, 116, 116, 110, 48, 34, 58, 123, 34, 100, 116,
    121, 112, 101, 34, 58, 34, 70, 51, 50, 34, 44, 34, 115, 104, 97, 112, 101, 34, 58,
    91, 49, 44, 49, 44, 50, 44, 51, 93, 44, 34, 100, 97, 116, 97, 95, 111, 102, 102,
    115, 101, 116, 115, 34, 58, 91, 48, 44, 50, 52, 93, 125, 125, 32, 32, 32, 32, 32,
    32, 32, 0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0,
    160, 64,
  ];
  const empty = [8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32];
  const emptyWithMeta = [
    40, 0, 0, 0, 0, 0, 0, 0, 123, 34, 95, 95, 109, 101, 116, 97, 100, 97, 116, 97, 95,
    95, 34, 58, 123, 34, 102, 114, 97, 109, 101, 119, 111, 114, 107, 34, 58, 34, 112,
    116, 34, 125, 125, 32, 32, 32, 32, 32,
  ];

  test('reads files written by the reference writer', async () => {
    const f = await SafetensorsFile.open(writeBytes(Buffer.from(attn0)));
    expect(f.keys()).toEqual(['attn.0']);
    expect(f.entry('attn.0')).toEqual({ name: 'attn.0', dtype: 'F32', shape: [1, 2, 3], byteOffset: 72, byteLength: 24 });
    const t = await f.read('attn.0');
    expect(t.shape).toEqual([1, 2, 3]);
    expect(t.dtype).toBe('float32');
    expect(Array.from(t.toArray())).toEqual([0, 1, 2, 3, 4, 5]);
    f.close();

    const g = SafetensorsFile.openSync(writeBytes(Buffer.from(attn0Padded)));
    expect(Array.from(g.readSync('attn0').toArray())).toEqual([0, 1, 2, 3, 4, 5]);
    g.close();

    const e = SafetensorsFile.openSync(writeBytes(Buffer.from(emptyWithMeta)));
    expect(e.keys()).toEqual([]);
    expect(e.metadata).toEqual({ framework: 'pt' });
    e.close();
  });

  test('writes byte for byte what the reference writer writes', async () => {
    const data = new Float32Array([0, 1, 2, 3, 4, 5]);
    const p1 = tmpFile();
    await saveSafetensors(p1, { 'attn.0': tensor(data, { shape: [1, 2, 3] }) });
    expect(Array.from(fs.readFileSync(p1))).toEqual(attn0);
    const p2 = tmpFile();
    saveSafetensorsSync(p2, { attn0: tensor(data, { shape: [1, 1, 2, 3] }) });
    expect(Array.from(fs.readFileSync(p2))).toEqual(attn0Padded);
    const p3 = tmpFile();
    await saveSafetensors(p3, {});
    expect(Array.from(fs.readFileSync(p3))).toEqual(empty);
    const p4 = tmpFile();
    saveSafetensorsSync(p4, {}, { metadata: { framework: 'pt' } });
    expect(Array.from(fs.readFileSync(p4))).toEqual(emptyWithMeta);
  });
});

// ====================================================================== round trips

describe('round trips', () => {
  test('F32 is bit-exact, including -0, subnormals, Inf and NaN payloads', async () => {
    const bits = new Uint32Array([
      0x00000000, 0x80000000, 0x3f800000, 0xbf800000, 0x00000001, 0x807fffff, 0x7f7fffff, 0xff7fffff,
      0x7f800000, 0xff800000, 0x7fc00000, 0x7fc00001, 0xffa00005, 0x3eaaaaab, 0x4049_0fdb, 0x12345678,
    ]);
    const t = tensor(new Float32Array(bits.buffer), { shape: [4, 4] });
    const p = tmpFile();
    await saveSafetensors(p, { w: t });
    const f = await SafetensorsFile.open(p);
    expect(f.entry('w').dtype).toBe('F32');
    const back = await f.read('w');
    expect(back.shape).toEqual([4, 4]);
    expect(f32Bits(back)).toEqual(Array.from(bits));
    expect(bytesOf(await f.readRaw('w'))).toEqual(bytesOf(bits));
    expect(f32Bits(f.readSync('w'))).toEqual(Array.from(bits));
    f.close();
    expect(f32Bits(loadSafetensorsSync(p).w)).toEqual(Array.from(bits));
  });

  test('float64 tensors are stored as F64 and read back exactly with { dtype: "float64" }', async () => {
    const v = new Float64Array([Math.PI, -1e-300, 1e300, 2 ** 53 + 2, -0]);
    const p = tmpFile();
    await saveSafetensors(p, { d: tensor(v, { dtype: 'float64' }) });
    const f = await SafetensorsFile.open(p);
    expect(f.entry('d').dtype).toBe('F64');
    const exact = await f.read('d', { dtype: 'float64' });
    expect(exact.dtype).toBe('float64');
    expect(Array.from(exact.toArray())).toEqual(Array.from(v));
    const single = await f.read('d'); // default: float32
    expect(single.dtype).toBe('float32');
    expect(Array.from(single.toArray())).toEqual(Array.from(Float32Array.from(v)));
    f.close();
  });

  test('int32 tensors as I32; scalars and empty tensors', async () => {
    const p = tmpFile();
    saveSafetensorsSync(p, {
      i: tensor(new Int32Array([0, -1, 2147483647, -2147483648]), { shape: [2, 2], dtype: 'int32' }),
      s: tensor(2.5),
      z: tensor(new Float32Array(0), { shape: [0, 3] }),
    });
    const all = await loadSafetensors(p);
    expect(Object.keys(all).sort()).toEqual(['i', 's', 'z']);
    expect(all.i.dtype).toBe('int32');
    expect(all.i.shape).toEqual([2, 2]);
    expect(Array.from(all.i.toArray())).toEqual([0, -1, 2147483647, -2147483648]);
    expect(all.s.shape).toEqual([]);
    expect(all.s.item()).toBe(2.5);
    expect(all.z.shape).toEqual([0, 3]);
    expect(all.z.numel).toBe(0);
    const f = SafetensorsFile.openSync(p);
    expect(f.entry('i').dtype).toBe('I32');
    expect(f.entry('z').byteLength).toBe(0);
    expect(Array.from(f.readSync('i', { dtype: 'float64' }).toArray())).toEqual([0, -1, 2147483647, -2147483648]);
    f.close();
  });

  test('metadata round trip (sorted in the header, any strings)', async () => {
    const metadata = { format: 'pt', 'zeta key': 'ünïcödé ✓ 🚀', alpha: '{"json": [1, 2]}', empty: '', __proto__x: 'p' };
    const p = tmpFile();
    await saveSafetensors(p, { w: tensor([1, 2]) }, { metadata });
    const f = await SafetensorsFile.open(p);
    expect(f.metadata).toEqual(metadata);
    f.close();
    const { text } = headerOf(p);
    expect(text.indexOf('"__metadata__"')).toBe(1); // first, as the reference writes it
    const metaKeys = Object.keys(headerOf(p).json.__metadata__ as object);
    expect(metaKeys).toEqual(['__proto__x', 'alpha', 'empty', 'format', 'zeta key']);
    // A file without __metadata__ has empty metadata.
    const q = tmpFile();
    saveSafetensorsSync(q, { w: tensor([1]) });
    expect(headerOf(q).text).not.toContain('__metadata__');
    expect(SafetensorsFile.openSync(q).metadata).toEqual({});
  });

  test('unusual tensor names, including "__proto__" and integer-like names', async () => {
    const tensors: Record<string, Tensor> = {};
    for (const [i, name] of ['__proto__', '10', '2', 'a.b.c', 'ü', 'with "quotes" \\ and\nnewline', ''].entries()) {
      Object.defineProperty(tensors, name, { value: tensor([i]), enumerable: true });
    }
    const p = tmpFile();
    await saveSafetensors(p, tensors);
    const all = await loadSafetensors(p);
    expect(Object.getPrototypeOf(all)).toBe(Object.prototype);
    expect(Object.keys(all).sort()).toEqual(Object.keys(tensors).sort());
    for (const name of Object.keys(tensors)) expect(all[name].item()).toBe(tensors[name].item());
  });
});

// ====================================================================== F16 / BF16

describe('F16 and BF16', () => {
  // float32 input -> expected F16 bits (round to nearest, ties to even).
  const f16Cases: [number, number][] = [
    [1, 0x3c00],
    [-2, 0xc000],
    [0.5, 0x3800],
    [0, 0x0000],
    [-0, 0x8000],
    [65504, 0x7bff], // largest finite
    [65519, 0x7bff], // below the midpoint to 65536: rounds down
    [65520, 0x7c00], // the midpoint: ties to even, which is Inf
    [1e6, 0x7c00],
    [-1e6, 0xfc00],
    [Infinity, 0x7c00],
    [-Infinity, 0xfc00],
    [2 ** -14, 0x0400], // smallest normal
    [2 ** -14 - 2 ** -24, 0x03ff], // largest subnormal
    [2 ** -24, 0x0001], // smallest subnormal
    [2 ** -25, 0x0000], // half of it: tie, to even (0)
    [1.5 * 2 ** -25, 0x0001], // above the tie
    [3 * 2 ** -25, 0x0002], // tie between 1 and 2 units: to even (2)
    [5 * 2 ** -25, 0x0002], // tie between 2 and 3 units: to even (2)
    [2 ** -30, 0x0000],
    [1 + 2 ** -11, 0x3c00], // tie between 0x3c00 and 0x3c01: to even
    [1 + 3 * 2 ** -11, 0x3c02], // tie between 0x3c01 and 0x3c02: to even
    [1 + 2 ** -11 + 2 ** -20, 0x3c01], // just above a tie
    [2047 / 1024 + 2 ** -11, 0x4000], // rounding carries into the exponent
    [0.1, 0x2e66],
    [1 / 3, 0x3555],
  ];
  // float32 input bits -> expected BF16 bits.
  const bf16Cases: [number, number][] = [
    [0x3f800000, 0x3f80], // 1
    [0xc0000000, 0xc000], // -2
    [0x40490fdb, 0x4049], // pi
    [0x3f808000, 0x3f80], // 1 + 2^-8: tie, to even
    [0x3f818000, 0x3f82], // 1 + 3 * 2^-8: tie, to even
    [0x3f808001, 0x3f81], // just above a tie
    [0x3f807fff, 0x3f80], // just below a tie
    [0x7f7fffff, 0x7f80], // float32 max rounds to Inf
    [0x7f800000, 0x7f80], // Inf
    [0xff800000, 0xff80], // -Inf
    [0x80000000, 0x8000], // -0
    [0x00000001, 0x0000], // smallest float32 subnormal
    [0x00018000, 0x0002], // subnormal tie, to even
    [0x3dcccccd, 0x3dcd], // 0.1
  ];

  test('float32 -> F16 rounds to nearest even (known bit patterns)', async () => {
    const input = new Float32Array(f16Cases.map(([v]) => v));
    // Inputs are float32 values; 0.1 and 1/3 are rounded to float32 first (0x3dcccccd, 0x3eaaaaab).
    const p = tmpFile();
    await saveSafetensors(p, { h: tensor(input) }, { dtype: 'F16' });
    const f = await SafetensorsFile.open(p);
    expect(f.entry('h')).toMatchObject({ dtype: 'F16', shape: [f16Cases.length], byteLength: 2 * f16Cases.length });
    const raw = await f.readRaw('h');
    const bits = Array.from(new Uint16Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength)));
    expect(bits.map((b) => b.toString(16))).toEqual(f16Cases.map(([, b]) => b.toString(16)));
    f.close();
  });

  test('NaN stays NaN in F16 and BF16', async () => {
    const p = tmpFile();
    const nans = new Float32Array(new Uint32Array([0x7fc00000, 0xffc00000, 0x7f800001]).buffer);
    saveSafetensorsSync(p, { a: tensor(nans) }, { dtype: 'F16' });
    const f = SafetensorsFile.openSync(p);
    const raw = f.readRawSync('a');
    for (let i = 0; i < 3; i++) {
      const b = raw.readUInt16LE(2 * i);
      expect(b & 0x7c00).toBe(0x7c00);
      expect(b & 0x03ff).not.toBe(0);
    }
    expect(Array.from(f.readSync('a').toArray()).every(Number.isNaN)).toBe(true);
    f.close();
    const q = tmpFile();
    saveSafetensorsSync(q, { a: tensor(nans) }, { dtype: 'BF16' });
    const g = SafetensorsFile.openSync(q);
    const rq = g.readRawSync('a');
    expect([0, 1, 2].map((i) => rq.readUInt16LE(2 * i) & 0x7f80)).toEqual([0x7f80, 0x7f80, 0x7f80]);
    expect([0, 1, 2].map((i) => rq.readUInt16LE(2 * i) & 0x7f)).not.toContain(0);
    expect(Array.from(g.readSync('a').toArray()).every(Number.isNaN)).toBe(true);
    g.close();
  });

  test('float32 -> BF16 rounds to nearest even (known bit patterns)', () => {
    const input = new Float32Array(new Uint32Array(bf16Cases.map(([b]) => b)).buffer);
    const p = tmpFile();
    saveSafetensorsSync(p, { b: tensor(input) }, { dtype: 'BF16' });
    const f = SafetensorsFile.openSync(p);
    expect(f.entry('b').dtype).toBe('BF16');
    const raw = f.readRawSync('b');
    const bits = bf16Cases.map((_, i) => raw.readUInt16LE(2 * i));
    expect(bits.map((b) => b.toString(16))).toEqual(bf16Cases.map(([, b]) => b.toString(16)));
    f.close();
  });

  test('float64 -> F16 / BF16 rounds once (no double rounding through float32)', async () => {
    // 1 + 2^-11 + 2^-40 is just above an F16 tie; through float32 it would become the tie and round down.
    const p = tmpFile();
    await saveSafetensors(p, {
      h: tensor(new Float64Array([1 + 2 ** -11 + 2 ** -40, 1 + 2 ** -11 - 2 ** -40, 1e300, -1e-300]), { dtype: 'float64' }),
    }, { dtype: 'F16' });
    const raw = await (await SafetensorsFile.open(p)).readRaw('h');
    expect([0, 1, 2, 3].map((i) => raw.readUInt16LE(2 * i))).toEqual([0x3c01, 0x3c00, 0x7c00, 0x8000]);
    const q = tmpFile();
    await saveSafetensors(q, {
      b: tensor(new Float64Array([1 + 2 ** -8 + 2 ** -40, 1 + 2 ** -8]), { dtype: 'float64' }),
    }, { dtype: 'BF16' });
    const rawb = await (await SafetensorsFile.open(q)).readRaw('b');
    expect([0, 1].map((i) => rawb.readUInt16LE(2 * i))).toEqual([0x3f81, 0x3f80]);
  });

  test('F16 and BF16 files (built by hand) are decoded exactly', async () => {
    const halves = [0x3c00, 0x0001, 0x03ff, 0x0400, 0x7bff, 0x7c00, 0xfc00, 0x7e00, 0x8000, 0x3555, 0xc001];
    const expected = [1, 2 ** -24, 1023 * 2 ** -24, 2 ** -14, 65504, Infinity, -Infinity, NaN, -0, 0.25 * (1 + 0x155 / 1024), -(2 + 2 ** -9)];
    const bf = [0x3f80, 0x4049, 0x0001, 0x7f7f, 0xff80, 0x7fc0, 0x8000, 0x3f81];
    const bfExpected = [1, 3.140625, 2 ** -133, 0x7f7f0000, -Infinity, NaN, -0, 1.0078125];
    bfExpected[3] = new Float32Array(new Uint32Array([0x7f7f0000]).buffer)[0];
    const data = [...u16(...halves), ...u16(...bf)];
    const p = writeBytes(buildFile({
      h: { dtype: 'F16', shape: [halves.length], data_offsets: [0, 2 * halves.length] },
      b: { dtype: 'BF16', shape: [bf.length], data_offsets: [2 * halves.length, 2 * (halves.length + bf.length)] },
    }, data));
    const f = await SafetensorsFile.open(p);
    const h = Array.from((await f.read('h')).toArray());
    expect(h).toHaveLength(expected.length);
    h.forEach((v, i) => expect(Object.is(v, expected[i])).toBe(true));
    const h64 = Array.from((await f.read('h', { dtype: 'float64' })).toArray());
    h64.forEach((v, i) => expect(Object.is(v, expected[i])).toBe(true));
    const b = Array.from(f.readSync('b').toArray());
    b.forEach((v, i) => expect(Object.is(v, bfExpected[i])).toBe(true));
    f.close();
  });

  test('every F16 value survives F16 -> float32 -> F16', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const p = writeBytes(buildFile({ h: { dtype: 'F16', shape: [65536], data_offsets: [0, 131072] } }, new Uint8Array(all.buffer)));
    const t = loadSafetensorsSync(p, { dtype: 'float32' }).h;
    expect(t.dtype).toBe('float32');
    const q = tmpFile();
    saveSafetensorsSync(q, { h: t }, { dtype: 'F16' });
    const back = new Uint16Array(fs.readFileSync(q).buffer.slice(-131072));
    let mismatches = 0;
    for (let i = 0; i < 65536; i++) {
      const isNaN16 = (i & 0x7c00) === 0x7c00 && (i & 0x3ff) !== 0;
      if (isNaN16 ? !((back[i] & 0x7c00) === 0x7c00 && (back[i] & 0x3ff) !== 0) : back[i] !== i) mismatches++;
    }
    expect(mismatches).toBe(0);
  });
});

// ====================================================================== bfloat16 / float16 tensors

describe('bfloat16 and float16 tensors', () => {
  const all = new Uint16Array(65536).map((_, i) => i);
  const allBytes = new Uint8Array(all.buffer);

  test.each([['BF16', 'bfloat16'], ['F16', 'float16']] as const)('%s reads as %s and writes back bit for bit (all 65536 patterns)', async (st, dtype) => {
    const p = writeBytes(buildFile({ h: { dtype: st, shape: [256, 256], data_offsets: [0, 131072] } }, allBytes));
    const t = (await loadSafetensors(p)).h;
    expect(t.dtype).toBe(dtype);
    expect(t.shape).toEqual([256, 256]);
    // Every stored pattern, NaN payloads and signed zeros included, is the tensor's own bits.
    expect(Buffer.compare(Buffer.from(toHalfBits(t).buffer), Buffer.from(all.buffer))).toBe(0);
    const q = tmpFile();
    saveSafetensorsSync(q, { h: t });
    expect((headerOf(q).json.h as { dtype: string }).dtype).toBe(st);
    expect(Buffer.compare(fs.readFileSync(q).subarray(-131072), Buffer.from(allBytes))).toBe(0);
    const again = SafetensorsFile.openSync(q);
    expect(Buffer.compare(again.readRawSync('h'), Buffer.from(allBytes))).toBe(0);
    again.close();
  });

  test('a half tensor made from numbers is written in its dtype, and read back to the same bits', async () => {
    const values = [1, -2.5, 3.140625, 1e-3, 65504, -0, 1 / 3];
    for (const [dtype, st] of [['bfloat16', 'BF16'], ['float16', 'F16']] as const) {
      const t = tensor(values, { dtype });
      const q = tmpFile();
      await saveSafetensors(q, { w: t });
      const f = await SafetensorsFile.open(q);
      expect(f.entry('w')).toMatchObject({ dtype: st, shape: [values.length], byteLength: 2 * values.length });
      const raw = await f.readRaw('w');
      expect(Array.from(new Uint16Array(raw.buffer, raw.byteOffset, values.length))).toEqual(Array.from(toHalfBits(t)));
      const back = await f.read('w');
      expect(back.dtype).toBe(dtype);
      expect(Array.from(toHalfBits(back))).toEqual(Array.from(toHalfBits(t)));
      // The stored values, as float32 numbers (each rounded from `values` once).
      expect(Array.from((await f.read('w', { dtype: 'float32' })).toArray())).toEqual(Array.from(t.toArray()));
      f.close();
    }
  });

  test('a bf16 file still reads as float32 or float64 when asked (exact)', () => {
    const bits = [0x3f80, 0x4049, 0xc2f7, 0x0001];
    const p = writeBytes(buildFile({ b: { dtype: 'BF16', shape: [4], data_offsets: [0, 8] } }, u16(...bits)));
    const expected = bits.map((b) => new Float32Array(new Uint32Array([b << 16]).buffer)[0]);
    const f32 = loadSafetensorsSync(p, { dtype: 'float32' }).b;
    expect(f32.dtype).toBe('float32');
    expect(Array.from(f32.toArray())).toEqual(expected);
    const f64 = loadSafetensorsSync(p, { dtype: 'float64' }).b;
    expect(Array.from(f64.toArray())).toEqual(expected);
  });

  test('F32, F64 and the other half convert to a half dtype rounding once, to nearest even', async () => {
    // float32 1 + 2^-8 + 2^-9 lies above the bf16 tie 1 + 2^-8 (rounds up to 0x3f81); 1 + 2^-8 is a tie (even: 0x3f80).
    const p = writeBytes(buildFile({
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      d: { dtype: 'F64', shape: [2], data_offsets: [8, 24] },
      h: { dtype: 'F16', shape: [1], data_offsets: [24, 26] },
    }, [...bytesOf(new Float32Array([1 + 2 ** -8 + 2 ** -9, 1 + 2 ** -8])), ...bytesOf(new Float64Array([1 + 2 ** -11 + 2 ** -40, 1 + 2 ** -11])), ...u16(0x3c01)]));
    const f = await SafetensorsFile.open(p);
    expect(Array.from(toHalfBits(await f.read('a', { dtype: 'bfloat16' })))).toEqual([0x3f81, 0x3f80]);
    // Just above a float16 tie in float64: through a plain float32 it would become the tie and round to even (0x3c00).
    expect(Array.from(toHalfBits(await f.read('d', { dtype: 'float16' })))).toEqual([0x3c01, 0x3c00]);
    // F16 1 + 2^-10 read as bfloat16: 1 + 2^-10 is below bf16's half ulp (2^-8), so 1.0.
    expect(Array.from(toHalfBits(f.readSync('h', { dtype: 'bfloat16' })))).toEqual([0x3f80]);
    f.close();
  });

  test('a value beyond float16 range read as float16 is an error naming the tensor', async () => {
    const p = writeBytes(buildFile({
      'layers.0.weight': { dtype: 'F32', shape: [4], data_offsets: [0, 16] },
      ok: { dtype: 'F32', shape: [4], data_offsets: [16, 32] },
      wide: { dtype: 'BF16', shape: [1], data_offsets: [32, 34] },
    }, [...bytesOf(new Float32Array([1, -2, 70000, 3])), ...bytesOf(new Float32Array([65519, -65519, Infinity, NaN])), ...u16(0x4780)]));
    const f = await SafetensorsFile.open(p);
    await expect(f.read('layers.0.weight', { dtype: 'float16' })).rejects.toThrow(
      'SafetensorsFile.read: tensor "layers.0.weight" (F32) holds 70000 at index 2, beyond float16\'s range (largest finite value 65504); read it as \'float32\' or \'bfloat16\'');
    // 65519 rounds to 65504 (below the overflow tie at 65520); an infinity stays one.
    const ok = f.readSync('ok', { dtype: 'float16' });
    expect(Array.from(toHalfBits(ok))).toEqual([0x7bff, 0xfbff, 0x7c00, 0x7e00]);
    // bfloat16 65536 does not fit float16 either.
    expect(() => f.readSync('wide', { dtype: 'float16' })).toThrow(/tensor "wide" \(BF16\) holds 65536 at index 0, beyond float16's range/);
    f.close();
    await expect(loadSafetensors(p, { dtype: 'float16' })).rejects.toThrow(/loadSafetensors: tensor "layers.0.weight" \(F32\) holds 70000/);
  });

  test('half tensors can still be written as another float dtype', () => {
    const t = tensor([1.5, -3, 1 + 2 ** -7], { dtype: 'bfloat16' });
    const q = tmpFile();
    saveSafetensorsSync(q, { t }, { dtype: 'F32' });
    const f = SafetensorsFile.openSync(q);
    expect(f.entry('t').dtype).toBe('F32');
    const back = f.readSync('t');
    expect(back.dtype).toBe('float32');
    expect(Array.from(back.toArray())).toEqual([1.5, -3, 1 + 2 ** -7]);
    f.close();
  });

  test('an unknown dtype is refused, naming the choices', () => {
    const p = writeBytes(buildFile({ a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] } }, bytesOf(new Float32Array([1]))));
    expect(() => loadSafetensorsSync(p, { dtype: 'bfloat' as 'bfloat16' })).toThrow(
      'loadSafetensorsSync: options.dtype must be one of "float32", "float64", "int32", "bfloat16", "float16", got "bfloat"');
  });
});

// ====================================================================== integer files

describe('integer dtypes (files built by hand)', () => {
  function i64Bytes(values: bigint[]): number[] {
    return bytesOf(new BigInt64Array(values));
  }

  test('I64, I32, I16, I8, U8 and BOOL read as int32', async () => {
    const i64 = i64Bytes([0n, -1n, 2147483647n, -2147483648n]);
    const i32 = bytesOf(new Int32Array([7, -7]));
    const i16 = bytesOf(new Int16Array([-32768, 32767]));
    const i8 = bytesOf(new Int8Array([-128, 127]));
    const header = {
      __metadata__: { k: 'v' },
      a64: { dtype: 'I64', shape: [2, 2], data_offsets: [0, 32] },
      b32: { dtype: 'I32', shape: [2], data_offsets: [32, 40] },
      c16: { dtype: 'I16', shape: [2], data_offsets: [40, 44] },
      d8: { dtype: 'I8', shape: [2], data_offsets: [44, 46] },
      e8: { dtype: 'U8', shape: [1, 2], data_offsets: [46, 48] },
      f: { dtype: 'BOOL', shape: [3], data_offsets: [48, 51] },
    };
    const p = writeBytes(buildFile(header, [...i64, ...i32, ...i16, ...i8, 0, 255, 0, 1, 2]));
    const all = await loadSafetensors(p);
    expect(Object.values(all).every((t) => t.dtype === 'int32')).toBe(true);
    expect(all.a64.shape).toEqual([2, 2]);
    expect(Array.from(all.a64.toArray())).toEqual([0, -1, 2147483647, -2147483648]);
    expect(Array.from(all.b32.toArray())).toEqual([7, -7]);
    expect(Array.from(all.c16.toArray())).toEqual([-32768, 32767]);
    expect(Array.from(all.d8.toArray())).toEqual([-128, 127]);
    expect(Array.from(all.e8.toArray())).toEqual([0, 255]);
    expect(Array.from(all.f.toArray())).toEqual([0, 1, 1]);
    const f = SafetensorsFile.openSync(p);
    expect(f.metadata).toEqual({ k: 'v' });
    expect(Array.from(f.readSync('c16', { dtype: 'float32' }).toArray())).toEqual([-32768, 32767]);
    f.close();
  });

  test('I64 values outside int32 throw a RangeError, and read exactly as float64', async () => {
    const values = [1n, 2n ** 40n, -(2n ** 31n) - 1n, 2n ** 53n, -(2n ** 52n) - 3n];
    const p = writeBytes(buildFile({ big: { dtype: 'I64', shape: [5], data_offsets: [0, 40] } }, i64Bytes(values)));
    const f = await SafetensorsFile.open(p);
    await expect(f.read('big')).rejects.toThrow(/tensor "big" \(I64\) holds 1099511627776 at index 1, which does not fit in int32/);
    await expect(f.read('big')).rejects.toBeInstanceOf(RangeError);
    expect(() => f.readSync('big', { dtype: 'int32' })).toThrow(RangeError);
    const d = await f.read('big', { dtype: 'float64' });
    expect(Array.from(d.toArray())).toEqual(values.map(Number));
    f.close();
  });

  test('float data cannot be read as int32', () => {
    const p = tmpFile();
    saveSafetensorsSync(p, { w: tensor([1.5]) });
    const f = SafetensorsFile.openSync(p);
    expect(() => f.readSync('w', { dtype: 'int32' })).toThrow(
      `SafetensorsFile.readSync: options.dtype must be a float dtype ('float32', 'float64', 'bfloat16' or 'float16') for tensor "w", stored as F32, got "int32"`);
    f.close();
  });
});

// ====================================================================== layout and order

describe('layout and key order', () => {
  test('header keys and data in sorted order, header padded with spaces to a multiple of 8', async () => {
    const p = tmpFile();
    await saveSafetensors(p, { 'layer.b': tensor([2, 2]), 'layer.a': tensor([1]), c: tensor([3, 3, 3]), B: tensor([0]) },
      { metadata: { m: 'x' } });
    const { n, text, json } = headerOf(p);
    expect(n % 8).toBe(0);
    expect(text).toMatch(/^\{.*\} *$/);
    expect(text.trimEnd().length).toBeGreaterThan(n - 8);
    expect(Object.keys(json)).toEqual(['__metadata__', 'B', 'c', 'layer.a', 'layer.b']);
    // Key order in the text itself (Object.keys of a parse would reorder integer-like keys).
    expect(['"B"', '"c"', '"layer.a"', '"layer.b"'].map((k) => text.indexOf(k))).toEqual(
      ['"B"', '"c"', '"layer.a"', '"layer.b"'].map((k) => text.indexOf(k)).slice().sort((a, b) => a - b));
    expect((json.B as { data_offsets: number[] }).data_offsets).toEqual([0, 4]);
    expect((json.c as { data_offsets: number[] }).data_offsets).toEqual([4, 16]);
    expect((json['layer.a'] as { data_offsets: number[] }).data_offsets).toEqual([16, 20]);
    expect((json['layer.b'] as { data_offsets: number[] }).data_offsets).toEqual([20, 28]);
    expect(fs.statSync(p).size).toBe(8 + n + 28);
    const f = await SafetensorsFile.open(p);
    expect(f.keys()).toEqual(['B', 'c', 'layer.a', 'layer.b']);
    expect(f.entry('c').byteOffset).toBe(8 + n + 4);
    f.close();
  });

  test('mixed dtypes are grouped by alignment like the reference writer, so every tensor is aligned', () => {
    const p = tmpFile();
    saveSafetensorsSync(p, {
      a: tensor([1, 2, 3]), // F32
      b: tensor([1], { dtype: 'float64' }), // F64
      c: tensor([1, 2, 3], { dtype: 'int32' }), // I32
      d: tensor([1, 2, 3]),
    });
    const f = SafetensorsFile.openSync(p);
    expect(f.keys()).toEqual(['b', 'a', 'd', 'c']);
    for (const k of f.keys()) {
      const e = f.entry(k);
      expect(e.byteOffset % ({ F64: 8, F32: 4, I32: 4 } as Record<string, number>)[e.dtype]).toBe(0);
    }
    f.close();
    const q = tmpFile();
    saveSafetensorsSync(q, { x: tensor([1, 2, 3]), w: tensor([1], { dtype: 'float64' }), v: tensor([1, 2, 3], { dtype: 'int32' }) }, { dtype: 'F16' });
    const g = SafetensorsFile.openSync(q);
    expect(g.keys()).toEqual(['v', 'w', 'x']); // I32 before the F16 ones
    expect(g.keys().map((k) => g.entry(k).dtype)).toEqual(['I32', 'F16', 'F16']);
    g.close();
  });

  test('keys() follows the data offsets, not the order of the JSON', () => {
    const p = writeBytes(buildFile(
      '{"z":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"10":{"dtype":"F32","shape":[1],"data_offsets":[8,12]},'
      + '"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]},"e":{"dtype":"F32","shape":[0],"data_offsets":[12,12]}}   ',
      bytesOf(new Float32Array([1, 2, 3]))));
    const f = SafetensorsFile.openSync(p);
    expect(f.keys()).toEqual(['z', 'a', '10', 'e']);
    expect(f.has('a')).toBe(true);
    expect(f.has('b')).toBe(false);
    expect(f.readSync('10').item()).toBe(3);
    f.close();
  });
});

// ====================================================================== atomic writes

describe('atomic writes', () => {
  function setup(): { p: string; old: Buffer; tensors: Record<string, Tensor> } {
    const sub = fs.mkdtempSync(path.join(dir, 'atomic-'));
    const p = path.join(sub, 'model.safetensors');
    saveSafetensorsSync(p, { old: tensor([42]) });
    const old = fs.readFileSync(p);
    const tensors = { a: tensor(new Float32Array(1000).fill(1)), b: tensor(new Float32Array(1000).fill(2)), c: tensor([3]) };
    return { p, old, tensors };
  }
  function expectUntouched(p: string, old: Buffer): void {
    expect(fs.readFileSync(p).equals(old)).toBe(true);
    expect(fs.readdirSync(path.dirname(p))).toEqual(['model.safetensors']); // no temporary file left
    expect(loadSafetensorsSync(p).old.item()).toBe(42);
  }

  test('a tensor disposed half-way: the old file is intact and the temporary file is gone (async and sync)', async () => {
    for (const sync of [false, true]) {
      const { p, old, tensors } = setup();
      const b = tensors.b;
      const orig = b.toArray.bind(b);
      jest.spyOn(b, 'toArray').mockImplementation(() => {
        b.dispose();
        return orig();
      });
      expect(openFilesOf(path.dirname(p))).toBe(0);
      const run = () => (sync ? saveSafetensorsSync(p, tensors) : saveSafetensors(p, tensors));
      let err: unknown;
      try {
        await run();
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(Error);
      expect((err as Error).message).toMatch(/tensor "b" could not be read: Tensor.toArray: tensor has been disposed/);
      expect((err as NodeJS.ErrnoException).code).toBe('ERR_TENSOR_DISPOSED');
      expectUntouched(p, old);
      expect(openFilesOf(path.dirname(p))).toBe(0); // neither the target nor the temporary file
    }
  });

  test('a write error half-way (mocked ENOSPC): the old file is intact and the temporary file is gone', async () => {
    const enospc = () => Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    {
      const { p, old, tensors } = setup();
      const real = fs.writeSync;
      let calls = 0;
      jest.spyOn(fs, 'writeSync').mockImplementation(((...args: Parameters<typeof fs.writeSync>) => {
        if (++calls === 2) throw enospc();
        return (real as (...a: unknown[]) => number)(...args);
      }) as typeof fs.writeSync);
      expect(() => saveSafetensorsSync(p, tensors)).toThrow(/ENOSPC/);
      expect(calls).toBe(2);
      jest.restoreAllMocks();
      expectUntouched(p, old);
    }
    {
      const { p, old, tensors } = setup();
      const real = fs.write;
      let calls = 0;
      jest.spyOn(fs, 'write').mockImplementation(((...args: unknown[]) => {
        if (++calls === 3) {
          const cb = args[args.length - 1] as (e: Error) => void;
          process.nextTick(() => cb(enospc()));
          return;
        }
        return (real as (...a: unknown[]) => void)(...args);
      }) as typeof fs.write);
      await expect(saveSafetensors(p, tensors)).rejects.toThrow(/ENOSPC/);
      expect(calls).toBe(3);
      jest.restoreAllMocks();
      expectUntouched(p, old);
    }
    {
      // A failing fsync, then a failing rename.
      for (const fn of ['fsyncSync', 'renameSync'] as const) {
        const { p, old, tensors } = setup();
        jest.spyOn(fs, fn).mockImplementation(() => {
          throw Object.assign(new Error(`EIO: ${fn}`), { code: 'EIO' });
        });
        expect(() => saveSafetensorsSync(p, tensors)).toThrow(/EIO/);
        jest.restoreAllMocks();
        expectUntouched(p, old);
      }
    }
  });

  test('a successful write replaces the old file; the new file is complete', async () => {
    const { p, tensors } = setup();
    await saveSafetensors(p, tensors);
    expect(fs.readdirSync(path.dirname(p))).toEqual(['model.safetensors']);
    const all = loadSafetensorsSync(p);
    expect(Object.keys(all).sort()).toEqual(['a', 'b', 'c']);
    expect(Array.from(all.b.toArray()).every((v) => v === 2)).toBe(true);
  });

  test('argument errors are thrown before anything is written', async () => {
    const { p, old } = setup();
    const dead = tensor([1]);
    dead.dispose();
    await expect(saveSafetensors(p, { a: 1 as unknown as Tensor })).rejects.toThrow('saveSafetensors: tensors["a"] must be a Tensor, got 1');
    await expect(saveSafetensors(p, { a: dead })).rejects.toThrow('saveSafetensors: tensors["a"] has been disposed');
    expect(() => saveSafetensorsSync(p, { __metadata__: tensor([1]) })).toThrow(RangeError);
    expect(() => saveSafetensorsSync(p, [] as unknown as Record<string, Tensor>)).toThrow(
      'saveSafetensorsSync: tensors must be an object mapping names to tensors, got []');
    expect(() => saveSafetensorsSync(p, {}, { dtype: 'F8' as 'F16' })).toThrow(
      'saveSafetensorsSync: options.dtype must be one of "F32", "F16", "BF16", got "F8"');
    expect(() => saveSafetensorsSync(p, {}, { metadata: { a: 1 as unknown as string } })).toThrow(
      'saveSafetensorsSync: options.metadata["a"] must be a string, got 1');
    expect(() => saveSafetensorsSync(p, {}, { metdata: {} } as never)).toThrow(/unknown option "metdata"/);
    expect(() => saveSafetensorsSync(p, { ['\ud800']: tensor([1]) })).toThrow(/well-formed Unicode/);
    expect(() => saveSafetensorsSync('', {})).toThrow(RangeError);
    expect(() => saveSafetensorsSync(5 as unknown as string, {})).toThrow(TypeError);
    expectUntouched(p, old);
  });
});

// ====================================================================== reader API

describe('SafetensorsFile', () => {
  let p: string;
  beforeAll(() => {
    p = tmpFile();
    saveSafetensorsSync(p, {
      'model.layers.0.self_attn.q_proj.weight': tensor([1]),
      'model.layers.0.self_attn.k_proj.weight': tensor([2]),
      'model.layers.0.mlp.up_proj.weight': tensor([3]),
    });
  });

  test('a missing key: RangeError naming it and listing similar or available names', async () => {
    const f = await SafetensorsFile.open(p);
    expect(() => f.entry('q_proj.weight')).toThrow(RangeError);
    expect(() => f.entry('q_proj.weight')).toThrow(
      `SafetensorsFile.entry: name must be a tensor in ${p} (similar: "model.layers.0.self_attn.q_proj.weight", `
      + '"model.layers.0.mlp.up_proj.weight", "model.layers.0.self_attn.k_proj.weight"), got "q_proj.weight"');
    await expect(f.read('nope')).rejects.toThrow(/SafetensorsFile.read: name must be a tensor in .* \(available: .*\), got "nope"/);
    expect(() => f.readSync(3 as unknown as string)).toThrow(TypeError);
    await expect(f.readRaw('nope')).rejects.toThrow(RangeError);
    await expect(f.read('model.layers.0.mlp.up_proj.weight', { dtype: 'float8' as 'float32' })).rejects.toThrow(
      'SafetensorsFile.read: options.dtype must be one of "float32", "float64", "int32", "bfloat16", "float16", got "float8"');
    await expect(f.read('model.layers.0.mlp.up_proj.weight', { type: 'x' } as never)).rejects.toThrow(/unknown option "type"/);
    f.close();
  });

  test('close is idempotent, later reads throw, reads in flight finish', async () => {
    const q = tmpFile(); // a file no other test has open
    fs.copyFileSync(p, q);
    const f = await SafetensorsFile.open(q);
    expect(openFilesOf(q)).toBe(1);
    const inFlight = f.keys().map((k) => f.read(k));
    f.close();
    f.close();
    expect(f.isClosed).toBe(true);
    const values = (await Promise.all(inFlight)).map((t) => t.item());
    expect(values.sort()).toEqual([1, 2, 3]);
    expect(openFilesOf(q)).toBe(0);
    await expect(f.read(f.keys()[0])).rejects.toThrow(`SafetensorsFile.read: ${q} has been closed`);
    expect(() => f.readSync(f.keys()[0])).toThrow(expect.objectContaining({ code: 'ERR_SAFETENSORS_CLOSED' }));
    expect(f.keys()).toHaveLength(3); // the header stays readable
  });

  test('a file that shrinks after open gives a clear error, not a short tensor', () => {
    const q = tmpFile();
    saveSafetensorsSync(q, { a: tensor(new Float32Array(64)) });
    const f = SafetensorsFile.openSync(q);
    fs.truncateSync(q, fs.statSync(q).size - 10);
    expect(() => f.readSync('a')).toThrow(/became shorter/);
    f.close();
  });

  test('I/O errors are passed through', async () => {
    await expect(SafetensorsFile.open(path.join(dir, 'missing.safetensors'))).rejects.toThrow(/ENOENT/);
    expect(() => SafetensorsFile.openSync(dir)).toThrow(/is not a valid safetensors file: it is not a regular file/);
    await expect(loadSafetensors(path.join(dir, 'missing.safetensors'))).rejects.toMatchObject({ code: 'ENOENT' });
    expect(() => SafetensorsFile.openSync('')).toThrow(RangeError);
  });
});

// ====================================================================== malformed files

describe('malformed files are rejected with a clear message', () => {
  const f32 = (n: number) => new Array(4 * n).fill(0);
  const entry = (dtype: unknown, shape: unknown, offsets: unknown) => ({ dtype, shape, data_offsets: offsets });
  const deep = '['.repeat(100) + ']'.repeat(100);
  const cases: [string, Buffer, RegExp][] = [
    ['empty file', Buffer.alloc(0), /the file has 0 bytes, fewer than the 8-byte header length/],
    ['7 bytes', Buffer.alloc(7), /the file has 7 bytes/],
    ['header length 0', buildFile('', [], 0n), /header length is 0/],
    ['truncated header', buildFile('{"a":{"dtype":"F32"', [], 100n), /header length 100 is larger than the rest of the file \(19 bytes/],
    ['header length 2^63', buildFile('{}', [], 2n ** 63n), /header length 9223372036854775808 is larger than the limit of 100000000 bytes and than the file/],
    ['header length 2^64-1', buildFile('{}', [], 2n ** 64n - 1n), /larger than the limit/],
    ['header length just over 100 MB', buildFile('{}', [], 100_000_001n), /header length 100000001 is larger than the limit/],
    ['bad JSON', buildFile('{"a": }'), /the header is not valid JSON/],
    ['trailing garbage', buildFile('{} x'), /not valid JSON/],
    ['NUL padding', buildFile('{}\0\0\0\0\0\0'), /not valid JSON/],
    ['invalid UTF-8', buildFile(Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d])), /not valid UTF-8/],
    ['byte order mark', buildFile('\ufeff{}'), /not valid JSON/],
    ['header is an array', buildFile('[]'), /the header must be a JSON object, got an array/],
    ['header is a number', buildFile('5'), /must be a JSON object, got 5/],
    ['header is null', buildFile('null'), /must be a JSON object, got null/],
    ['entry is not an object', buildFile({ a: 5 }), /tensor "a": entry must be an object with dtype, shape and data_offsets, got 5/],
    ['entry is an array', buildFile({ a: [1] }), /tensor "a": entry must be an object .* got an array/],
    ['unknown dtype', buildFile({ a: entry('F17', [1], [0, 4]) }, f32(1)), /tensor "a": unknown dtype "F17" \(supported: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL\)/],
    ['unsupported dtype', buildFile({ a: entry('U16', [2], [0, 4]) }, f32(1)), /tensor "a": dtype "U16" is not supported/],
    ['missing dtype', buildFile({ a: { shape: [1], data_offsets: [0, 4] } }, f32(1)), /tensor "a": unknown dtype undefined/],
    ['dtype not a string', buildFile({ a: entry(4, [1], [0, 4]) }, f32(1)), /unknown dtype 4/],
    ['shape not an array', buildFile({ a: entry('F32', 4, [0, 16]) }, f32(4)), /tensor "a": shape must be an array of non-negative integers, got 4/],
    ['non-integer shape', buildFile({ a: entry('F32', [2.5, 2], [0, 20]) }, f32(5)), /shape must be an array of non-negative integers, got \[2.5, 2\] \(shape\[0\] is 2.5\)/],
    ['negative shape', buildFile({ a: entry('F32', [-1], [0, 4]) }, f32(1)), /shape\[0\] is -1/],
    ['string in shape', buildFile({ a: entry('F32', ['1'], [0, 4]) }, f32(1)), /shape\[0\] is "1"/],
    ['unsafe integer in shape', buildFile('{"a":{"dtype":"F32","shape":[1e300],"data_offsets":[0,4]}}', f32(1)), /shape\[0\] is 1e\+300/],
    ['shape/byte mismatch', buildFile({ a: entry('F32', [2, 2], [0, 12]) }, f32(3)), /tensor "a": shape \[2, 2\] of F32 needs 16 bytes, but data_offsets \[0, 12\] span 12/],
    ['shape overflow [2^40, 2^40]', buildFile({ a: entry('F32', [2 ** 40, 2 ** 40], [0, 16]) }, f32(4)), /shape \[1099511627776, 1099511627776\] of F32 needs 4835703278458516698824704 bytes, but data_offsets \[0, 16\] span 16/],
    ['negative offsets', buildFile({ a: entry('F32', [1], [-4, 0]) }, f32(1)), /tensor "a": data_offsets must be two non-negative integers \[begin, end\], got \[-4, 0\]/],
    ['one offset', buildFile({ a: entry('F32', [1], [4]) }, f32(1)), /data_offsets must be two non-negative integers/],
    ['fractional offset', buildFile({ a: entry('F32', [1], [0, 4.5]) }, f32(1)), /data_offsets must be two non-negative integers/],
    ['missing offsets', buildFile({ a: { dtype: 'F32', shape: [1] } }, f32(1)), /data_offsets must be two non-negative integers \[begin, end\], got undefined/],
    ['begin after end', buildFile({ a: entry('F32', [0], [8, 4]) }, f32(2)), /data_offsets \[8, 4\] end before they begin/],
    ['span past end of file', buildFile({ a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [8, 16]) }, f32(3)), /tensor "b": data_offsets \[8, 16\] reach past the end of the data area \(12 bytes/],
    ['overlap', buildFile({ a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [4, 12]) }, f32(3)), /tensors "a" and "b" overlap/],
    ['same span twice', buildFile({ a: entry('F32', [2], [0, 8]), b: entry('F32', [2], [0, 8]) }, f32(2)), /tensors "a" and "b" overlap/],
    ['hole', buildFile({ a: entry('F32', [1], [0, 4]), b: entry('F32', [1], [8, 12]) }, f32(3)), /bytes \[4, 8\) of the data area belong to no tensor \(a hole before "b"\)/],
    ['hole at the start', buildFile({ a: entry('F32', [1], [4, 8]) }, f32(2)), /bytes \[0, 4\) of the data area belong to no tensor/],
    ['trailing bytes', buildFile({ a: entry('F32', [1], [0, 4]) }, f32(2)), /the tensors end at byte 4 of the data area, but it has 8 bytes \(4 bytes belong to no tensor\)/],
    ['data but no tensors', buildFile({}, [1, 2, 3]), /the tensors end at byte 0 of the data area, but it has 3 bytes/],
    ['metadata value not a string', buildFile({ __metadata__: { a: 1 } }), /"__metadata__" values must be strings, got 1 for key "a"/],
    ['metadata not an object', buildFile({ __metadata__: ['x'] }), /"__metadata__" must be an object of strings, got an array/],
    ['duplicate tensor', buildFile('{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}', f32(2)), /duplicate key "a" in the header/],
    ['duplicate field', buildFile('{"a":{"dtype":"F32","shape":[1],"dtype":"F64","data_offsets":[0,4]}}', f32(1)), /duplicate key "dtype" in the header \(inside "a"\)/],
    ['duplicate escaped key', buildFile('{"__metadata__":{"k":"1","\\u006b":"2"}}'), /duplicate key "k" in the header \(inside "__metadata__"\)/],
    ['deep nesting', buildFile(`{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":${deep}}}`, f32(1)), /nests deeper than 64 levels/],
  ];

  test.each(cases)('%s', async (_name, bytes, message) => {
    const p = writeBytes(bytes, 'bad');
    let err: unknown;
    try {
      SafetensorsFile.openSync(p);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SafetensorsError);
    expect((err as SafetensorsError).code).toBe('ERR_SAFETENSORS_INVALID');
    expect((err as SafetensorsError).path).toBe(p);
    expect((err as Error).message).toContain(`SafetensorsFile.openSync: ${p} is not a valid safetensors file: `);
    expect((err as Error).message).toMatch(message);
    await expect(SafetensorsFile.open(p)).rejects.toThrow(message);
    await expect(loadSafetensors(p)).rejects.toBeInstanceOf(SafetensorsError);
    // The functions that open the file for their caller name themselves.
    await expect(loadSafetensors(p)).rejects.toThrow(`loadSafetensors: ${p} is not a valid safetensors file: `);
    expect(() => loadSafetensorsSync(p)).toThrow(`loadSafetensorsSync: ${p} is not a valid safetensors file: `);
    expect(openFilesOf(p)).toBe(0); // the descriptor was closed
  });

  test('still valid: padding with spaces, null metadata, unknown extra fields, zero-size tensors', () => {
    const p = writeBytes(buildFile(
      `{"__metadata__":null,"e":{"dtype":"F32","shape":[0,5],"data_offsets":[0,0]},"a":{"dtype":"F32","shape":[],"data_offsets":[0,4],"extra":{"x":[1]}}}${' '.repeat(13)}`,
      bytesOf(new Float32Array([7]))));
    const f = SafetensorsFile.openSync(p);
    expect(f.metadata).toEqual({});
    expect(f.keys()).toEqual(['e', 'a']);
    expect(f.readSync('a').item()).toBe(7);
    expect(f.readSync('e').shape).toEqual([0, 5]);
    f.close();
  });
});
