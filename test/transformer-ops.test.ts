// Transformer ops (lib/nn/transformer.ts): embedding, rmsNorm, applyRotary,
// rotaryTables, scaledDotProductAttention and the Embedding / RMSNorm modules.
// Forward (and autograd) checks against reference compositions of existing
// tensor ops, hand-computed rotary tables, a composed block's gradients, and the
// argument errors of the modules and options. Each op's own gradient checks,
// CPU/CUDA parity and argument errors are in the op registry (test/ops/).
import { Tensor, tensor, zeros, randn, manualSeed, noGrad, backendInfo } from '../lib';
import { native } from '../lib/native';
import {
  embedding, rmsNorm, applyRotary, rotaryTables, scaledDotProductAttention, Embedding, RMSNorm,
} from '../lib/nn/transformer';
import { sortedPositions } from '../lib/ops/transformer';
import { gradcheck, t64 } from './helpers/gradcheck';
import { expectThrows } from './helpers/expect-throws';


function expectClose(got: ArrayLike<number>, want: ArrayLike<number>, atol: number, rtol = 0): void {
  expect(got.length).toBe(want.length);
  let worst = 0;
  let at = -1;
  for (let i = 0; i < want.length; i++) {
    const err = Math.abs(got[i] - want[i]) - rtol * Math.abs(want[i]);
    if (!(err <= worst)) {
      worst = Number.isNaN(err) ? Infinity : err;
      at = i;
    }
  }
  if (worst > atol) throw new Error(`element ${at}: got ${got[at]}, want ${want[at]} (excess error ${worst} > ${atol})`);
}

const f64 = (shape: readonly number[], seed: number) => t64(shape, seed, { requiresGrad: false });
const ids32 = (data: number[], shape: number[]) => tensor(data, { dtype: 'int32', shape });

// ====================================================== reference compositions

/** One-hot [N, V] (float64) of flat ids. */
function oneHot(ids: number[], V: number): Tensor {
  const d = new Float64Array(ids.length * V);
  ids.forEach((id, n) => (d[n * V + id] = 1));
  return tensor(d, { dtype: 'float64', shape: [ids.length, V] });
}

/** x / sqrt(mean(x², -1) + eps) * weight, from elementwise ops (sqrt as exp(-0.5 log)). */
function refRmsNorm(x: Tensor, w: Tensor | null, eps: number): Tensor {
  const rstd = x.mul(x).mean(-1, true).add(eps).log().mul(-0.5).exp();
  const y = x.mul(rstd);
  return w ? y.mul(w) : y;
}

/** The [Dh, Dh] matrix R with x @ R = rotate_half(x) = concat(-x[h:], x[:h]). */
function rotateHalfMatrix(Dh: number, dtype: 'float32' | 'float64'): Tensor {
  const h = Dh / 2;
  const d = new Float64Array(Dh * Dh);
  for (let j = 0; j < h; j++) d[(j + h) * Dh + j] = -1; // out[j] = -x[j + h]
  for (let j = h; j < Dh; j++) d[(j - h) * Dh + j] = 1; // out[j] = x[j - h]
  return tensor(d, { dtype, shape: [Dh, Dh] });
}

function refRotary(x: Tensor, cos: Tensor, sin: Tensor): Tensor {
  const Dh = x.shape[3];
  return x.mul(cos).add(x.matmul(rotateHalfMatrix(Dh, x.dtype as 'float64')).mul(sin));
}

/** repeat_kv: [B, Hkv, S, D] -> [B, Hq, S, D] through a 0/1 selection matmul. */
function repeatKv(k: Tensor, Hq: number): Tensor {
  const [B, Hkv, S, D] = k.shape;
  const group = Hq / Hkv;
  const e = new Float64Array(Hq * Hkv);
  for (let h = 0; h < Hq; h++) e[h * Hkv + Math.floor(h / group)] = 1;
  const E = tensor(e, { dtype: k.dtype, shape: [Hq, Hkv] });
  return E.matmul(k.reshape(B, Hkv, S * D)).reshape(B, Hq, S, D);
}

/** softmax(scale q k^T + mask) v with explicit repeated kv heads and an additive -1e30 mask. */
function refAttention(q: Tensor, k: Tensor, v: Tensor, causal: boolean, scale?: number): Tensor {
  const [, Hq, T, Dh] = q.shape;
  const S = k.shape[2];
  const sc = scale ?? 1 / Math.sqrt(Dh);
  let scores = q.matmul(repeatKv(k, Hq).transpose(-2, -1)).mul(sc);
  if (causal) {
    const m = new Float64Array(T * S);
    for (let i = 0; i < T; i++) for (let j = i + 1; j < S; j++) m[i * S + j] = -1e30;
    scores = scores.add(tensor(m, { dtype: q.dtype, shape: [T, S] }));
  }
  return scores.softmax(-1).matmul(repeatKv(v, Hq));
}

// =================================================================== embedding

describe('embedding', () => {
  test('forward gathers rows for ids of any shape (matches one-hot @ weight)', () => {
    const w = f64([5, 3], 1);
    const idList = [1, 3, 1, 0, 4, 3];
    const out = embedding(ids32(idList, [2, 3]), w);
    expect(out.shape).toEqual([2, 3, 3]);
    expect(out.dtype).toBe('float64');
    expect(Array.from(out.toArray())).toEqual(Array.from(oneHot(idList, 5).matmul(w).toArray()));
    // 0-d ids -> [D]; float32 weights
    const w32 = randn([4, 2]);
    const one = embedding(tensor(2, { dtype: 'int32' }), w32);
    expect(one.shape).toEqual([2]);
    expect(Array.from(one.toArray())).toEqual(Array.from(w32.toArray()).slice(4, 6));
    // no ids
    expect(embedding(ids32([], [0, 3]), w).shape).toEqual([0, 3, 3]);
  });

  test('the weight gradient with repeated ids is onehot^T g (unused rows get zeros)', () => {
    const ids = ids32([1, 3, 1, 0, 1, 3], [2, 3]);
    const w = t64([5, 3], 2);
    // dweight = onehot^T g: rows 2 and 4 are never used.
    const g = t64([2, 3, 3], 3, { requiresGrad: false });
    embedding(ids, w).backward(g);
    const want = oneHot([1, 3, 1, 0, 1, 3], 5).transpose(0, 1).matmul(g.reshape(6, 3));
    expectClose(w.grad!.toArray(), want.toArray(), 1e-15);
    expect(Array.from(w.grad!.toArray()).slice(6, 9)).toEqual([0, 0, 0]);
    expect(embedding(ids, w).gradFn).toBe('EmbeddingBackward');
  });

  test('sortedPositions: positions sorted by (id, position), by counting and by comparison alike', () => {
    expect(Array.from(sortedPositions([3, 1, 3, 0, 1, 3], 5))).toEqual([3, 1, 4, 0, 2, 5]);
    expect(Array.from(sortedPositions([], 5))).toEqual([]);
    // V far above the number of ids takes the comparison sort; both must agree with a plain sort.
    for (const V of [7, 100000]) {
      const ids = Array.from({ length: 500 }, (_, i) => (i * 7919 + (i >> 3)) % 7 * Math.floor(V / 7));
      const want = ids.map((id, n) => [id, n]).sort((a, b) => a[0] - b[0] || a[1] - b[1]).map((p) => p[1]);
      expect(Array.from(sortedPositions(ids, V))).toEqual(want);
    }
  });

  test('larger problem (threaded paths) matches one-hot products', () => {
    manualSeed(5);
    const V = 300;
    const D = 256;
    const idList = Array.from({ length: 600 }, (_, i) => (i * 7919) % 37); // heavy repeats
    const w = randn([V, D], { dtype: 'float64' }).requiresGrad_(true);
    const out = embedding(ids32(idList, [600]), w);
    const oh = oneHot(idList, V);
    expectClose(out.toArray(), oh.matmul(w.detach()).toArray(), 0);
    const g = randn([600, D], { dtype: 'float64' });
    out.backward(g);
    expectClose(w.grad!.toArray(), oh.transpose(0, 1).matmul(g).toArray(), 1e-12);
  });
});

// ===================================================================== rmsNorm

describe('rmsNorm', () => {
  test('forward matches the elementwise reference (weight and null, float64 and float32)', () => {
    const x = f64([2, 3, 8], 10);
    const w = f64([8], 11);
    expectClose(rmsNorm(x, w, 1e-6).toArray(), refRmsNorm(x, w, 1e-6).toArray(), 1e-14);
    expectClose(rmsNorm(x, null, 1e-5).toArray(), refRmsNorm(x, null, 1e-5).toArray(), 1e-14);
    expect(rmsNorm(x, w).shape).toEqual([2, 3, 8]);
    const y32 = rmsNorm(x.to('float32'), w.to('float32'), 1e-6);
    expect(y32.dtype).toBe('float32');
    expectClose(y32.toArray(), refRmsNorm(x, w, 1e-6).toArray(), 2e-6, 1e-6);
    // eps matters for tiny rows: a zero row stays zero, a constant row c gives c / sqrt(c² + eps)
    const z = rmsNorm(tensor([[0, 0], [1e-3, 1e-3]], { dtype: 'float64' }), null, 1e-6).toArray();
    expect(Array.from(z).slice(0, 2)).toEqual([0, 0]);
    expect(z[2]).toBeCloseTo(1e-3 / Math.sqrt(1e-6 + 1e-6), 12);
  });

  test('autograd agrees with the reference graph on a threaded-size problem', () => {
    manualSeed(6);
    const x1 = randn([64, 512], { dtype: 'float64', requiresGrad: true });
    const w1 = randn([512], { dtype: 'float64', requiresGrad: true });
    const x2 = x1.detach().requiresGrad_(true);
    const w2 = w1.detach().requiresGrad_(true);
    const g = randn([64, 512], { dtype: 'float64' });
    rmsNorm(x1, w1, 1e-6).backward(g);
    refRmsNorm(x2, w2, 1e-6).backward(g);
    expectClose(x1.grad!.toArray(), x2.grad!.toArray(), 1e-12);
    expectClose(w1.grad!.toArray(), w2.grad!.toArray(), 1e-10);
    // float32
    const x3 = x1.detach().to('float32').requiresGrad_(true);
    const w3 = w1.detach().to('float32').requiresGrad_(true);
    rmsNorm(x3, w3, 1e-6).backward(g.to('float32'));
    expectClose(x3.grad!.toArray(), x2.grad!.toArray(), 1e-4, 1e-4);
    expectClose(w3.grad!.toArray(), w2.grad!.toArray(), 1e-4, 1e-5);
  });
});

// ====================================================================== rotary

describe('applyRotary', () => {
  test('forward matches x * cos + rotate_half(x) * sin (and a JS loop)', () => {
    const x = f64([2, 3, 4, 6], 30);
    const { cos, sin } = rotaryTables(4, 6, { theta: 10000, dtype: 'float64' });
    const out = applyRotary(x, cos, sin);
    expectClose(out.toArray(), refRotary(x, cos, sin).toArray(), 1e-15);
    // the rotate-half layout by hand for one row
    const xa = x.toArray();
    const ca = cos.toArray();
    const sa = sin.toArray();
    const oa = out.toArray();
    const row = (1 * 3 + 2) * 4 + 3; // b=1, h=2, t=3
    for (let j = 0; j < 6; j++) {
      const rh = j < 3 ? -xa[row * 6 + j + 3] : xa[row * 6 + j - 3];
      expect(oa[row * 6 + j]).toBeCloseTo(xa[row * 6 + j] * ca[3 * 6 + j] + rh * sa[3 * 6 + j], 14);
    }
    // float32
    const o32 = applyRotary(x.to('float32'), cos.to('float32'), sin.to('float32'));
    expectClose(o32.toArray(), out.toArray(), 1e-5);
  });

  test('gradient agrees with the reference graph on a threaded-size problem', () => {
    manualSeed(7);
    const x1 = randn([2, 8, 64, 64], { dtype: 'float64', requiresGrad: true });
    const x2 = x1.detach().requiresGrad_(true);
    const c = randn([64, 64], { dtype: 'float64' });
    const s = randn([64, 64], { dtype: 'float64' });
    const g = randn([2, 8, 64, 64], { dtype: 'float64' });
    const o1 = applyRotary(x1, c, s);
    const o2 = refRotary(x2, c, s);
    expectClose(o1.toArray(), o2.toArray(), 1e-13);
    o1.backward(g);
    o2.backward(g);
    expectClose(x1.grad!.toArray(), x2.grad!.toArray(), 1e-13);
    expect(o1.gradFn).toBe('ApplyRotaryBackward');
    const x3 = x1.detach().to('float32').requiresGrad_(true);
    applyRotary(x3, c.to('float32'), s.to('float32')).backward(g.to('float32'));
    expectClose(x3.grad!.toArray(), x2.grad!.toArray(), 1e-5, 1e-5);
  });
});

// ================================================================ rotaryTables

/** transformers' _compute_llama3_parameters, transcribed line by line (float64). */
function llama3InvFreqReference(dim: number, base: number, factor: number, lowFreqFactor: number,
  highFreqFactor: number, oldContextLen: number): number[] {
  const invFreq: number[] = [];
  for (let i = 0; i < dim; i += 2) invFreq.push(1.0 / base ** (i / dim));
  const lowFreqWavelen = oldContextLen / lowFreqFactor;
  const highFreqWavelen = oldContextLen / highFreqFactor;
  return invFreq.map((f) => {
    const wavelen = (2 * Math.PI) / f;
    // wavelen < high_freq_wavelen: do nothing; wavelen > low_freq_wavelen: divide by factor
    const invFreqLlama = wavelen > lowFreqWavelen ? f / factor : f;
    const smoothFactor = (oldContextLen / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
    const smoothedInvFreq = ((1 - smoothFactor) * invFreqLlama) / factor + smoothFactor * invFreqLlama;
    const isMediumFreq = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
    return isMediumFreq ? smoothedInvFreq : invFreqLlama;
  });
}

describe('rotaryTables', () => {
  test('hand-computed values: inv_freq = 1 / theta^(2i / Dh), emb = concat(freqs, freqs)', () => {
    // Dh = 4, theta = 10000: inv_freq = [1, 1/100].
    const { cos, sin } = rotaryTables(3, 4, { theta: 10000, dtype: 'float64' });
    expect(cos.shape).toEqual([3, 4]);
    expect(cos.requiresGrad).toBe(false);
    const want = (f: (a: number) => number) =>
      [0, 1, 2].flatMap((t) => [f(t), f(t / 100), f(t), f(t / 100)]);
    expectClose(cos.toArray(), want(Math.cos), 1e-16);
    expectClose(sin.toArray(), want(Math.sin), 1e-16);
    expect(Array.from(cos.toArray()).slice(0, 4)).toEqual([1, 1, 1, 1]);
    expect(Array.from(sin.toArray()).slice(0, 4)).toEqual([0, 0, 0, 0]);
    // default dtype float32: the float64 values rounded
    const t32 = rotaryTables(3, 4, { theta: 10000 });
    expect(t32.cos.dtype).toBe('float32');
    expect(Array.from(t32.cos.toArray())).toEqual(Array.from(Float32Array.from(want(Math.cos))));
    // Dh = 6, theta = 64: inv_freq = [1, 1/4, 1/16]
    const six = rotaryTables(2, 6, { theta: 64, dtype: 'float64' });
    expectClose(six.sin.toArray(), [0, 0, 0, 0, 0, 0, ...[1, 0.25, 0.0625, 1, 0.25, 0.0625].map(Math.sin)], 1e-16);
  });

  test('positionOffset shifts the rows; linear scaling divides the frequencies', () => {
    const all = rotaryTables(10, 8, { theta: 500, dtype: 'float64' });
    const tail = rotaryTables(4, 8, { theta: 500, dtype: 'float64', positionOffset: 6 });
    expect(Array.from(tail.cos.toArray())).toEqual(Array.from(all.cos.toArray()).slice(6 * 8));
    expect(Array.from(tail.sin.toArray())).toEqual(Array.from(all.sin.toArray()).slice(6 * 8));
    const lin = rotaryTables(3, 4, { theta: 10000, dtype: 'float64', scaling: { type: 'linear', factor: 4 } });
    const want = [0, 1, 2].flatMap((t) => [t / 4, t / 400, t / 4, t / 400]).map(Math.cos);
    expectClose(lin.cos.toArray(), want, 1e-16);
  });

  test("llama3 scaling matches a transcription of transformers' _compute_llama3_parameters", () => {
    // Llama 3.1 8B: head_dim 128, rope_theta 500000, factor 8, low 1, high 4, original 8192.
    const cfg = { factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
    const inv = llama3InvFreqReference(128, 500000, 8, 1, 4, 8192);
    const base = inv.map((_, i) => 1 / 500000 ** ((2 * i) / 128));
    // all three regimes occur: kept, divided by 8, smoothly interpolated
    const ratios = inv.map((f, i) => base[i] / f);
    expect(ratios.some((r) => r === 1)).toBe(true);
    expect(ratios.some((r) => Math.abs(r - 8) < 1e-12)).toBe(true);
    expect(ratios.some((r) => r > 1.01 && r < 7.99)).toBe(true);

    const positions = [0, 1, 2, 7, 4095, 4096, 131071];
    for (const p of positions) {
      const { cos, sin } = rotaryTables(1, 128, { theta: 500000, dtype: 'float64', positionOffset: p, scaling: { type: 'llama3', ...cfg } });
      const wantCos = [...inv, ...inv].map((f) => Math.cos(p * f));
      const wantSin = [...inv, ...inv].map((f) => Math.sin(p * f));
      expectClose(cos.toArray(), wantCos, 1e-15);
      expectClose(sin.toArray(), wantSin, 1e-15);
    }
  });
});

// =================================================================== attention

describe('scaledDotProductAttention', () => {
  const cases: [string, number, number, number, number, number, boolean][] = [];
  for (const causal of [true, false]) {
    for (const [Hq, Hkv] of [[4, 2], [2, 2], [3, 1]]) {
      for (const T of [1, 5]) cases.push([`Hq=${Hq} Hkv=${Hkv} T=${T} ${causal ? 'causal' : 'full'}`, 2, Hq, Hkv, T, 3, causal]);
    }
  }

  test.each(cases)('forward against the reference: %s (Dh 3)', (_n, B, Hq, Hkv, T, Dh, causal) => {
    const q = t64([B, Hq, T, Dh], 40);
    const k = t64([B, Hkv, T, Dh], 41);
    const v = t64([B, Hkv, T, Dh], 42);
    const noGradInputs = [q, k, v].map((t) => t.detach());
    const out = scaledDotProductAttention(q, k, v, { causal });
    expect(out.shape).toEqual([B, Hq, T, Dh]);
    expectClose(out.toArray(), noGrad(() => refAttention(noGradInputs[0], noGradInputs[1], noGradInputs[2], causal)).toArray(), 1e-14);
  });

  test('causal is the default; scale option; T = 1 causal output is v', () => {
    const q = f64([1, 2, 4, 2], 43);
    const k = f64([1, 2, 4, 2], 44);
    const v = f64([1, 2, 4, 2], 45);
    expect(Array.from(scaledDotProductAttention(q, k, v).toArray())).toEqual(
      Array.from(scaledDotProductAttention(q, k, v, { causal: true }).toArray()));
    expectClose(scaledDotProductAttention(q, k, v, { causal: false, scale: 0.7 }).toArray(),
      refAttention(q, k, v, false, 0.7).toArray(), 1e-14);
    // the first query row only sees key 0: its output is v's row 0 (per head)
    const out = scaledDotProductAttention(q, k, v).toArray();
    const va = v.toArray();
    for (const h of [0, 1]) expectClose(out.slice(h * 8, h * 8 + 2), va.slice(h * 8, h * 8 + 2), 1e-15);
  });

  test('non-causal with S != T and Dv != Dh', () => {
    const q = t64([2, 4, 3, 4], 46);
    const k = t64([2, 2, 5, 4], 47);
    const v = t64([2, 2, 5, 2], 48);
    const out = scaledDotProductAttention(q, k, v, { causal: false });
    expect(out.shape).toEqual([2, 4, 3, 2]);
    expectClose(out.toArray(), noGrad(() => refAttention(q, k, v, false)).toArray(), 1e-14);
  });

  test('no keys (S = 0) gives zeros', () => {
    const empty = scaledDotProductAttention(f64([1, 2, 3, 4], 55), zeros([1, 1, 0, 4], { dtype: 'float64' }),
      zeros([1, 1, 0, 4], { dtype: 'float64' }), { causal: false });
    expect(Array.from(empty.toArray())).toEqual(new Array(24).fill(0));
  });

  test('float32 forward and gradients match the float64 reference on a threaded-size problem', () => {
    manualSeed(8);
    const [B, Hq, Hkv, T, Dh] = [2, 4, 2, 48, 16];
    for (const causal of [true, false]) {
      const q = randn([B, Hq, T, Dh], { dtype: 'float64' });
      const k = randn([B, Hkv, T, Dh], { dtype: 'float64' });
      const v = randn([B, Hkv, T, Dh], { dtype: 'float64' });
      const g = randn([B, Hq, T, Dh], { dtype: 'float64' });
      const ins = [q, k, v].map((t) => t.detach().requiresGrad_(true));
      const ref = refAttention(ins[0], ins[1], ins[2], causal);
      ref.backward(g);
      // float64: exact up to rounding
      const m64 = [q, k, v].map((t) => t.detach().requiresGrad_(true));
      const o64 = scaledDotProductAttention(m64[0], m64[1], m64[2], { causal });
      expectClose(o64.toArray(), ref.toArray(), 1e-13);
      o64.backward(g);
      m64.forEach((t, i) => expectClose(t.grad!.toArray(), ins[i].grad!.toArray(), 1e-12));
      // float32
      const m32 = [q, k, v].map((t) => t.to('float32').requiresGrad_(true));
      const o32 = scaledDotProductAttention(m32[0], m32[1], m32[2], { causal });
      expect(o32.dtype).toBe('float32');
      expectClose(o32.toArray(), ref.toArray(), 1e-5, 1e-5);
      o32.backward(g.to('float32'));
      m32.forEach((t, i) => expectClose(t.grad!.toArray(), ins[i].grad!.toArray(), 1e-4, 1e-4));
      expect(o32.gradFn).toBe('ScaledDotProductAttentionBackward');
    }
  });

  test('a small Llama-style block end to end: gradcheck through all four ops', () => {
    const [V, D, H, Hkv, T] = [7, 8, 2, 1, 4];
    const Dh = D / H;
    const ids = ids32([3, 1, 3, 6, 0, 1, 2, 3], [2, T]);
    const { cos, sin } = rotaryTables(T, Dh, { theta: 10000, dtype: 'float64' });
    const emb = t64([V, D], 60);
    const normW = t64([D], 61, { map: (x) => 1 + 0.1 * x });
    const wq = t64([D, H * Dh], 62);
    const wk = t64([D, Hkv * Dh], 63, { requiresGrad: false });
    const wv = t64([D, Hkv * Dh], 64);
    const block = (e: Tensor, nw: Tensor, q_: Tensor, v_: Tensor) => {
      const hdn = rmsNorm(embedding(ids, e), nw, 1e-6); // [2, T, D]
      const heads = (w: Tensor, n: number) => hdn.matmul(w).reshape(2, T, n, Dh).transpose(1, 2);
      const q = applyRotary(heads(q_, H), cos, sin);
      const k = applyRotary(heads(wk, Hkv), cos, sin);
      return scaledDotProductAttention(q, k, heads(v_, Hkv));
    };
    gradcheck(block, [emb, normW, wq, wv]);
    expect(wk.grad).toBeNull();
  });
});

// ===================================================================== modules

describe('Embedding and RMSNorm modules', () => {
  test('Embedding: N(0, 1) weight, parameters, forward', () => {
    manualSeed(9);
    const e = new Embedding(200, 64);
    expect(e.weight.shape).toEqual([200, 64]);
    expect(e.weight.requiresGrad).toBe(true);
    expect([...e.namedParameters()].map(([n]) => n)).toEqual(['weight']);
    const w = Array.from(e.weight.toArray());
    const mean = w.reduce((a, b) => a + b, 0) / w.length;
    const std = Math.sqrt(w.reduce((a, b) => a + (b - mean) ** 2, 0) / w.length);
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(std - 1)).toBeLessThan(0.03);
    const out = e.forward(ids32([5, 199], [2]));
    expect(out.shape).toEqual([2, 64]);
    expect(Array.from(out.toArray()).slice(64)).toEqual(Array.from(w).slice(199 * 64));
    expect(String(e)).toContain('Embedding(200, 64)');
    expect(new Embedding(3, 2, { dtype: 'float64' }).weight.dtype).toBe('float64');
  });

  test('RMSNorm: ones weight, eps, forward = rmsNorm, gradients reach the weight', () => {
    const n = new RMSNorm(6, { eps: 1e-5, dtype: 'float64' });
    expect(Array.from(n.weight.toArray())).toEqual([1, 1, 1, 1, 1, 1]);
    expect(n.eps).toBe(1e-5);
    expect(new RMSNorm(4).eps).toBe(1e-6);
    expect(new RMSNorm(4).weight.dtype).toBe('float32');
    const x = t64([3, 6], 70);
    expect(Array.from(n.forward(x).toArray())).toEqual(Array.from(rmsNorm(x, n.weight, 1e-5).toArray()));
    gradcheck((a, w) => {
      void w;
      return n.forward(a);
    }, [x, n.weight]);
    expect(String(n)).toBe('RMSNorm((6,), eps=1e-05)'); // as transformers prints LlamaRMSNorm
  });
});

// ====================================================================== errors

describe('argument errors (the ops\' own are in the op registry, test/ops/)', () => {
  const w = f64([5, 3], 80);

  test('Embedding', () => {
    expectThrows(() => new Embedding(-1, 2), RangeError, /Embedding: numEmbeddings must be a non-negative integer, got -1/);
    expectThrows(() => new Embedding(3, 2, { dtype: 'int32' as 'float32' }), RangeError, /options.dtype must be one of/);
    // the native layer checks ids too
    expect(() => native.embeddingForward(ids32([7], [1])._h, w._h)).toThrow(/id 7 at index 0 is outside \[0, 5\)/);
    expect(() => native.embeddingBackward(ids32([-2], [1])._h, null, f64([1, 3], 1)._h, 5)).toThrow(/outside \[0, 5\)/);
  });

  test('RMSNorm', () => {
    expectThrows(() => new RMSNorm(4, { eps: -1 }), RangeError, /RMSNorm: options.eps must be a number >= 0/);
    expectThrows(() => new RMSNorm(4, { epsilon: 1 } as unknown as { eps: number }), TypeError, /unknown option "epsilon"/);
  });

  test('applyRotary: tables that require grad are fine without a graph', () => {
    const { cos, sin } = rotaryTables(3, 4, { theta: 10000, dtype: 'float64' });
    const x = f64([1, 2, 3, 4], 82);
    const cg = cos.detach().requiresGrad_(true);
    expectThrows(() => applyRotary(x, cg, sin), RangeError, /applyRotary: cos.requiresGrad must be false .*got true/);
    expect(() => noGrad(() => applyRotary(x, cg, sin))).not.toThrow();
  });

  test('scaledDotProductAttention: S != T is fine without causal masking', () => {
    const q = f64([1, 4, 3, 2], 83);
    expect(() => scaledDotProductAttention(q, f64([1, 2, 5, 2], 1), f64([1, 2, 5, 2], 1), { causal: false })).not.toThrow();
  });

  test('scaledDotProductAttention: causal with S > T is the last T query rows of the S x S causal attention', () => {
    // A decode step: the T new queries see every earlier key and the new ones causally.
    const [B, Hq, Hkv, S, T, D] = [2, 4, 2, 7, 3, 4];
    const qFull = f64([B, Hq, S, D], 90);
    const k = f64([B, Hkv, S, D], 91);
    const v = f64([B, Hkv, S, D], 92);
    const q = qFull.narrow(2, S - T, T);
    const want = scaledDotProductAttention(qFull, k, v).narrow(2, S - T, T).toArray();
    const got = scaledDotProductAttention(q, k, v).toArray();
    got.forEach((x, i) => expect(x).toBeCloseTo(want[i], 12));
    // With keyStarts: row 1's first two keys are padding, in both.
    const startsFull = tensor([...new Array(S).fill(0), 0, 1, 2, 2, 2, 2, 2], { dtype: 'int32', shape: [B, S] });
    const starts = tensor([0, 0, 0, 2, 2, 2], { dtype: 'int32', shape: [B, T] });
    const wantSt = scaledDotProductAttention(qFull, k, v, { keyStarts: startsFull }).narrow(2, S - T, T).toArray();
    const gotSt = scaledDotProductAttention(q, k, v, { keyStarts: starts }).toArray();
    gotSt.forEach((x, i) => expect(x).toBeCloseTo(wantSt[i], 12));
    expect(gotSt).not.toEqual(got);
    // A start past the query's own position (S - T + i) is refused.
    expectThrows(() => scaledDotProductAttention(q, k, v, { keyStarts: tensor([0, 0, 0, 0, 0, 7], { dtype: 'int32', shape: [B, T] }) }), RangeError,
      /options.keyStarts\[1, 2\] must be a key index in \[0, 6\]/);
  });

  test('devices', () => {
    if (backendInfo().cuda.available) return;
    expectThrows(() => new Embedding(3, 2, { device: 'cuda' }), RangeError, /^Embedding: options.device "cuda" is not available/);
    expectThrows(() => new RMSNorm(3, { device: 'cuda:0' }), RangeError, /^RMSNorm: options.device "cuda:0" is not available/);
  });

  test('disposed inputs and saved tensors', () => {
    const x = t64([2, 4], 86);
    const d = f64([2, 4], 87);
    d.dispose();
    expect(() => rmsNorm(d, null)).toThrow(/tensor has been disposed/);
    // embedding keeps its own copy of the ids: they may change or be freed before backward
    const ids = ids32([0, 2, 0], [3]);
    const wt = t64([3, 2], 88);
    const out = embedding(ids, wt);
    ids.copy_([1, 1, 1]);
    ids.dispose();
    out.sum().backward();
    expect(Array.from(wt.grad!.toArray())).toEqual([2, 2, 0, 0, 1, 1]);
    // a saved input changed in place is caught
    const q = t64([1, 1, 2, 2], 89);
    const o = scaledDotProductAttention(q, f64([1, 1, 2, 2], 90), f64([1, 1, 2, 2], 91));
    noGrad(() => q.copy_([1, 2, 3, 4]));
    expect(() => o.sum().backward()).toThrow(/modified in place/);
    expect(rmsNorm(x, null).requiresGrad).toBe(true);
  });
});
