// Scaled dot-product attention against a naive reference: softmax(scale * q k^T + mask) v and its
// gradients written out in float64 from the explicit probability matrix, in both layouts
// ([B, H, T, D] and the projections' [B, T, H, D]), causal (bottom-right aligned for S > T) or
// not, grouped KV heads, per-query key starts, lengths that are not a multiple of any tile, head
// dims 64, 128 and others, in float32, bfloat16 and float16, on the CPU and (where available: in
// CI the emulator) on CUDA, where the 16-bit types run the tensor-core kernels.
//
// The reference reads the inputs as rounded to the dtype under test, so what is measured is the
// op's own arithmetic. Errors are normalised by the largest reference magnitude of each output.
// Tolerances: float32 1e-5; float16 2e-3 (outputs) / 3e-3 (gradients); bfloat16 1.2e-2 / 2e-2
// (the largest errors measured are about a third of these; float32 with TF32 allowed on CUDA
// below):
// the 16-bit types round the output once on store and, on CUDA, P and dS to the 16-bit type
// before their products (FlashAttention-2's numerics), bf16 with 8 bits of mantissa. Float64
// gradient checks of both layouts are in the op registry (test/ops/functional.ts).
import { F, Tensor, cuda, tensor } from '../lib';
import type { DeviceSpec } from '../lib';
import { randnArray } from './helpers/gradcheck';

type DT = 'float32' | 'bfloat16' | 'float16';
const TOL: Record<DT, { out: number; grad: number }> = {
  float32: { out: 1e-5, grad: 1e-5 },
  float16: { out: 2e-3, grad: 3e-3 },
  bfloat16: { out: 1.2e-2, grad: 2e-2 },
};

interface Case {
  B: number; Hq: number; Hkv: number; T: number; S: number; D: number;
  causal: boolean;
  /** Per-query first keys [B * T] (causal only). */
  starts?: number[];
}

// keys [B, T]: every query sees from the start of its document (packed rows), and the first
// `pad` queries of row 1 see themselves only (left padding).
function startsFor(B: number, T: number, S: number): number[] {
  const off = S - T;
  const out: number[] = [];
  for (let b = 0; b < B; b++) {
    for (let i = 0; i < T; i++) {
      if (b === 1 && i < 3) out.push(i + off);
      else out.push(i + off >= 37 ? 37 : i + off >= 11 ? 11 : 0);
    }
  }
  return out;
}

const CASES: Case[] = [
  { B: 1, Hq: 2, Hkv: 2, T: 5, S: 5, D: 16, causal: true },
  { B: 2, Hq: 4, Hkv: 2, T: 70, S: 70, D: 64, causal: true },
  { B: 1, Hq: 3, Hkv: 1, T: 65, S: 65, D: 64, causal: false },
  { B: 1, Hq: 2, Hkv: 1, T: 67, S: 67, D: 128, causal: true },
  { B: 2, Hq: 2, Hkv: 2, T: 33, S: 90, D: 128, causal: false },
  { B: 1, Hq: 4, Hkv: 2, T: 19, S: 83, D: 64, causal: true },   // S > T: the last T of S positions
  { B: 2, Hq: 2, Hkv: 1, T: 77, S: 77, D: 48, causal: true, starts: startsFor(2, 77, 77) },
  { B: 2, Hq: 2, Hkv: 2, T: 9, S: 45, D: 64, causal: true, starts: startsFor(2, 9, 45) },
  // Two blocks of query rows over a longer key range (S > T), GQA and per-row first keys.
  { B: 1, Hq: 4, Hkv: 2, T: 70, S: 100, D: 32, causal: true, starts: startsFor(1, 70, 100) },
  { B: 1, Hq: 2, Hkv: 1, T: 21, S: 21, D: 36, causal: false },  // a head dim the tiles pad, rows not 16-byte aligned
  { B: 1, Hq: 2, Hkv: 2, T: 13, S: 13, D: 160, causal: true },  // wider than the tensor-core kernels
];

const name = (c: Case) => `B${c.B} Hq${c.Hq} Hkv${c.Hkv} T${c.T} S${c.S} D${c.D} ${c.causal ? 'causal' : 'full'}${c.starts ? ' with keyStarts' : ''}`;

/** Values rounded to dtype (through a tensor of it), as float64. */
function rounded(v: Float64Array, dtype: DT): Float64Array {
  if (dtype === 'float32') return Float64Array.from(Float32Array.from(v));
  const t = tensor(v, { dtype, shape: [v.length] });
  const r = Float64Array.from(t.toArray());
  t.dispose();
  return r;
}

/**
 * The naive reference in [B, H, T, D] layout: P = softmax(scale q k^T + mask), out = P v, and for
 * a gradient g of out: dv = P^T g, dP = g v^T, dS = P (dP - rowsum(P dP)), dq = scale dS k,
 * dk = scale dS^T q (summed over the query heads of a kv head).
 */
function reference(c: Case, q: Float64Array, k: Float64Array, v: Float64Array, g: Float64Array) {
  const { B, Hq, Hkv, T, S, D } = c;
  const scale = 1 / Math.sqrt(D);
  const group = Hq / Hkv;
  const out = new Float64Array(B * Hq * T * D);
  const dq = new Float64Array(q.length), dk = new Float64Array(k.length), dv = new Float64Array(v.length);
  const p = new Float64Array(S), dp = new Float64Array(S);
  for (let b = 0; b < B; b++) {
    for (let h = 0; h < Hq; h++) {
      const kv = b * Hkv + Math.floor(h / group);
      for (let i = 0; i < T; i++) {
        const r = (b * Hq + h) * T + i;
        const lo = c.starts ? c.starts[b * T + i] : 0;
        const hi = c.causal ? Math.min(i + S - T + 1, S) : S;
        let m = -Infinity;
        for (let j = lo; j < hi; j++) {
          let s = 0;
          for (let d = 0; d < D; d++) s += q[r * D + d] * k[(kv * S + j) * D + d];
          p[j] = s * scale;
          m = Math.max(m, p[j]);
        }
        let l = 0;
        for (let j = lo; j < hi; j++) l += (p[j] = Math.exp(p[j] - m));
        let dot = 0;
        for (let j = lo; j < hi; j++) {
          p[j] /= l;
          let s = 0;
          for (let d = 0; d < D; d++) {
            out[r * D + d] += p[j] * v[(kv * S + j) * D + d];
            dv[(kv * S + j) * D + d] += p[j] * g[r * D + d];
            s += g[r * D + d] * v[(kv * S + j) * D + d];
          }
          dp[j] = s;
          dot += p[j] * s;
        }
        for (let j = lo; j < hi; j++) {
          const ds = p[j] * (dp[j] - dot) * scale;
          for (let d = 0; d < D; d++) {
            dq[r * D + d] += ds * k[(kv * S + j) * D + d];
            dk[(kv * S + j) * D + d] += ds * q[r * D + d];
          }
        }
      }
    }
  }
  return { out, dq, dk, dv };
}

/** [B, H, L, D] <-> [B, L, H, D] (the same function both ways with H and L swapped). */
function swapHL(x: Float64Array, B: number, H: number, L: number, D: number): Float64Array {
  const y = new Float64Array(x.length);
  for (let b = 0; b < B; b++) for (let h = 0; h < H; h++) for (let l = 0; l < L; l++) {
    for (let d = 0; d < D; d++) y[((b * L + l) * H + h) * D + d] = x[((b * H + h) * L + l) * D + d];
  }
  return y;
}

/** max |got - want| / max(max |want|, 1e-3). */
function relErr(got: ArrayLike<number>, want: Float64Array): number {
  let err = 0, mag = 1e-3;
  for (let n = 0; n < want.length; n++) {
    err = Math.max(err, Math.abs(got[n] - want[n]));
    mag = Math.max(mag, Math.abs(want[n]));
  }
  return err / mag;
}

function inputs(c: Case, dtype: DT) {
  const seed = c.B * 1000003 + c.Hq * 10007 + c.T * 101 + c.S * 7 + c.D;
  const q = rounded(randnArray(c.B * c.Hq * c.T * c.D, seed), dtype);
  const k = rounded(randnArray(c.B * c.Hkv * c.S * c.D, seed + 1), dtype);
  const v = rounded(randnArray(c.B * c.Hkv * c.S * c.D, seed + 2), dtype);
  const g = rounded(randnArray(c.B * c.Hq * c.T * c.D, seed + 3), dtype);
  return { q, k, v, g };
}

/** The op on a device, in a dtype and a layout; out and grads back in [B, H, T, D] order. */
function run(c: Case, dtype: DT, device: DeviceSpec, bthd: boolean, x: ReturnType<typeof inputs>) {
  const { B, Hq, Hkv, T, S, D } = c;
  const lay = (a: Float64Array, H: number, L: number) => (bthd ? swapHL(a, B, H, L, D) : a);
  const shape = (H: number, L: number) => (bthd ? [B, L, H, D] : [B, H, L, D]);
  const mk = (a: Float64Array, H: number, L: number, grad: boolean) =>
    tensor(lay(a, H, L), { dtype, shape: shape(H, L), device, requiresGrad: grad });
  const q = mk(x.q, Hq, T, true), k = mk(x.k, Hkv, S, true), v = mk(x.v, Hkv, S, true);
  const g = mk(x.g, Hq, T, false);
  const st = c.starts ? tensor(c.starts, { dtype: 'int32', shape: [B, T], device }) : undefined;
  const out = F.scaledDotProductAttention(q, k, v, {
    causal: c.causal, layout: bthd ? 'BTHD' : 'BHTD', ...(st ? { keyStarts: st } : {}),
  });
  out.backward(g);
  const back = (t: Tensor | null, H: number, L: number) => {
    const a = Float64Array.from((t as Tensor).toArray());
    return bthd ? swapHL(a, B, L, H, D) : a;
  };
  const r = {
    out: back(out, Hq, T), dq: back(q.grad, Hq, T), dk: back(k.grad, Hkv, S), dv: back(v.grad, Hkv, S),
  };
  for (const t of [q, k, v, g, out, st]) t?.dispose();
  return r;
}

const DEVICES: DeviceSpec[] = cuda.isAvailable() ? ['cpu', 'cuda'] : ['cpu'];

describe.each(DEVICES)('attention on %s against the naive float64 reference', (device) => {
  for (const dtype of ['float32', 'bfloat16', 'float16'] as DT[]) {
    for (const c of CASES) {
      test(`${dtype} ${name(c)}`, () => {
        const x = inputs(c, dtype);
        const want = reference(c, x.q, x.k, x.v, x.g);
        for (const bthd of [false, true]) {
          const got = run(c, dtype, device, bthd, x);
          const tol = TOL[dtype];
          const errs = { out: relErr(got.out, want.out), dq: relErr(got.dq, want.dq), dk: relErr(got.dk, want.dk), dv: relErr(got.dv, want.dv) };
          const layout = bthd ? 'BTHD' : 'BHTD';
          expect({ layout, out: errs.out <= tol.out }).toEqual({ layout, out: true });
          expect({ layout, dq: errs.dq <= tol.grad, dk: errs.dk <= tol.grad, dv: errs.dv <= tol.grad })
            .toEqual({ layout, dq: true, dk: true, dv: true });
          // Not a vacuous pass: the 16-bit results differ from float32's (rounded on store).
          if (dtype !== 'float32' && c.D >= 16) expect(errs.out).toBeGreaterThan(0);
        }
      });
    }
  }
});

// float32 on CUDA with cuda.setAllowTF32(true): q, k, v, dout and the P / dS tiles enter the
// tensor cores rounded to TF32 (10 mantissa bits: a relative rounding of at most 2^-11 per
// input, four times finer than bfloat16's 2^-9, like float16's), products accumulated in fp32.
// Scores and outputs then carry errors of a few 2^-11 relative to their magnitude (about 1e-3):
// the bounds are float16's, 2e-3 / 3e-3, about three times the largest errors measured (6e-4 /
// 1e-3). TF32 is off by default and restored after each test. That the TF32 kernels ran shows
// in the errors: above float32's 1e-5 (which the same inputs meet, around 1e-6, with TF32 off)
// for the head dims the tensor-core kernels take, bit for bit the exact path's for the wider
// one (it falls back).
const TF32 = { out: 2e-3, grad: 3e-3 };
(cuda.isAvailable() ? describe : describe.skip)('float32 attention on CUDA with TF32 allowed', () => {
  afterEach(() => cuda.setAllowTF32(false));
  CASES.forEach((c, n) => {
    const bthd = n % 2 === 1;
    test(`${name(c)} ${bthd ? 'BTHD' : 'BHTD'}`, () => {
      expect(cuda.getAllowTF32()).toBe(false);  // the default
      const x = inputs(c, 'float32');
      const want = reference(c, x.q, x.k, x.v, x.g);
      const exact = run(c, 'float32', 'cuda', bthd, x);
      cuda.setAllowTF32(true);
      const tf32 = run(c, 'float32', 'cuda', bthd, x);
      cuda.setAllowTF32(false);
      const again = run(c, 'float32', 'cuda', bthd, x);
      const keys = ['out', 'dq', 'dk', 'dv'] as const;
      for (const key of keys) {
        const tol = key === 'out' ? TF32.out : TF32.grad;
        const e = relErr(tf32[key], want[key]);
        expect({ key, ok: e <= tol }).toEqual({ key, ok: true });
        // TF32 off: the exact float path, the same bits before and after TF32 was on.
        expect({ key, ok: relErr(exact[key], want[key]) <= TOL.float32.out }).toEqual({ key, ok: true });
        expect(Array.from(again[key])).toEqual(Array.from(exact[key]));
        if (c.D <= 128) expect({ key, tf32: e > TOL.float32.out }).toEqual({ key, tf32: true });
        else expect(Array.from(tf32[key])).toEqual(Array.from(exact[key]));
      }
    });
  });
});

describe('attention layouts', () => {
  // The same rows computed the same way: the layouts agree to the last bit in float64 on the CPU.
  test.each(CASES.filter((c) => c.T <= 70))('float64 BTHD equals BHTD transposed, bit for bit: %#', (...args) => {
    const c = args[0] as Case;
    const x = inputs(c, 'float32');
    const a = run(c, 'float64' as DT, 'cpu', false, x);
    const b = run(c, 'float64' as DT, 'cpu', true, x);
    expect(Array.from(b.out)).toEqual(Array.from(a.out));
    expect(Array.from(b.dq)).toEqual(Array.from(a.dq));
    expect(Array.from(b.dk)).toEqual(Array.from(a.dk));
    expect(Array.from(b.dv)).toEqual(Array.from(a.dv));
  });

  test('the float64 CPU op matches the naive reference to 1e-12', () => {
    for (const c of CASES.slice(0, 8)) {
      const x = inputs(c, 'float32');
      const want = reference(c, x.q, x.k, x.v, x.g);
      const got = run(c, 'float64' as DT, 'cpu', true, x);
      for (const key of ['out', 'dq', 'dk', 'dv'] as const) expect(relErr(got[key], want[key])).toBeLessThan(1e-12);
    }
  });

  test('options.layout is checked', () => {
    const q = tensor(new Float64Array(2 * 3 * 4 * 2), { dtype: 'float64', shape: [2, 3, 4, 2] });
    expect(() => F.scaledDotProductAttention(q, q, q, { layout: 'BSHD' as 'BTHD' }))
      .toThrow(/^scaledDotProductAttention: options.layout must be 'BHTD' or 'BTHD', got "?BSHD"?$/);
    // [B, T, H, D] = [2, 3, 4, 2]: 4 query heads over 3 positions; k with 3 heads is refused.
    const k = tensor(new Float64Array(2 * 3 * 3 * 2), { dtype: 'float64', shape: [2, 3, 3, 2] });
    expect(() => F.scaledDotProductAttention(q, k, k, { layout: 'BTHD' }))
      .toThrow(/q.shape\[2\] \(query heads\) must be a multiple of k.shape\[2\] \(3 kv heads\), got 4/);
    const o = F.scaledDotProductAttention(q, q, q, { layout: 'BTHD' });
    expect(o.shape).toEqual([2, 3, 4, 2]);
    for (const t of [q, k, o]) t.dispose();
  });
});
