// bfloat16 and float16 on the CPU. Every sample of every op of the registry (test/ops/) that takes
// the halves is evaluated in each half dtype and compared, outputs and gradients, with float32 on
// the same inputs (the half values, which float32 holds exactly): the difference is the rounding of
// the half computation alone, bounded by the tolerances of test/ops/types.ts (HALF_TOL). Then the
// results of PyTorch 1.13 in bfloat16 and float16 (test/fixtures/half.json, from generate_half.py),
// the LoRA of a half layer with float32 adapters (PEFT's autocast_adapter_dtype), and the refusals.
import * as fs from 'fs';
import * as path from 'path';
import { Adam, AdamW, F, Tensor, manualSeed, randn, tensor } from '../lib';
import { requireAdapterDtype } from '../lib/checks';
import { native } from '../lib/native';
import { loraLinear, loraMerge } from '../lib/ops/linear';
import { expectThrows } from './helpers/expect-throws';
import { gradcheck, randnArray } from './helpers/gradcheck';
import { HALF_TOL, HALVES, OPS, isInt, makeInputs, outputs, sampleSeed, title } from './ops';
import type { CallContext, HalfDType, OpInfo, OpSample } from './ops';

/** max |a - b| / max(max |b|, 1e-30); NaN and Inf must sit at the same places. */
export function normError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(a.length).toBe(b.length);
  let scale = 1e-30;
  let err = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i]) || !Number.isFinite(b[i])) {
      if (!Object.is(a[i], b[i]) && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return Infinity;
      continue;
    }
    scale = Math.max(scale, Math.abs(b[i]));
    err = Math.max(err, Math.abs(a[i] - b[i]));
  }
  return err / scale;
}

interface Result {
  outs: { dtype: string; values: number[] }[];
  grads: (number[] | null)[];
}

/**
 * A sample's outputs and input gradients (from sum_k <out_k, g_k> with fixed random g_k, rounded to
 * the half dtype so both evaluations use the same weights) with inputs `xs`.
 */
function run(s: OpSample, xs: Tensor[], ctx: CallContext, half: HalfDType): Result {
  const outs = outputs(s.call(xs, ctx));
  let loss: Tensor | null = null;
  outs.forEach((o, k) => {
    if (!o.requiresGrad) return;
    const gv = tensor(randnArray(o.numel, 1000 + k), { dtype: half }).toArray();
    const term = o.mul(tensor(gv, { shape: o.shape, dtype: o.dtype })).sum();
    loss = loss ? loss.add(term) : term;
  });
  if (loss) (loss as Tensor).backward();
  return {
    outs: outs.map((o) => ({ dtype: o.dtype, values: Array.from(o.toArray()) })),
    grads: xs.map((x) => (x.grad ? Array.from(x.grad.toArray()) : null)),
  };
}

function halfAgainstFloat32(op: OpInfo, s: OpSample, half: HalfDType): void {
  // The registry types its contexts as float32/float64; the halves go through the same calls.
  const ctx = { device: 'cpu', dtype: half } as unknown as CallContext;
  const xs = makeInputs(s, ctx, sampleSeed(op, s));
  const ref32 = xs.map((x, i) => (isInt(s.inputs[i])
    ? x
    : tensor(x.toArray(), { shape: x.shape, dtype: 'float32', requiresGrad: x.requiresGrad })));
  const got = run(s, xs, ctx, half);
  const ref = run(s, ref32, { device: 'cpu', dtype: 'float32' }, half);
  const tol = op.tolHalf?.[half] ?? HALF_TOL[half];
  got.outs.forEach((o, k) => {
    const r = ref.outs[k];
    // A half op gives a half output; statistics kept in float32 (a loss) stay float32; int32 stays.
    if (r.dtype === 'float32') expect([half, 'float32']).toContain(o.dtype);
    else expect(o.dtype).toBe(r.dtype);
    const e = normError(o.values, r.values);
    if (!(e <= tol)) throw new Error(`${title(op, s)} (${half}): output ${k} differs from float32 by ${e} (tolerance ${tol})`);
  });
  got.grads.forEach((g, k) => {
    const r = ref.grads[k];
    if (r === null || g === null) {
      expect(g === null).toBe(r === null);
      return;
    }
    const e = normError(g, r);
    if (!(e <= tol)) throw new Error(`${title(op, s)} (${half}): gradient of input ${k} differs from float32 by ${e} (tolerance ${tol})`);
  });
}

// Samples of more than 2^18 input elements are left to the float suites: their inputs take seconds
// to draw here, and the half path of those ops is the one the smaller samples run.
const small = (s: OpSample): boolean => s.inputs.reduce((n, i) => n + i.shape.reduce((a, b) => a * b, 1), 0) <= 1 << 18;
const CASES = OPS.flatMap((op) => (op.halves ?? HALVES).flatMap((half) => op.samples
  .filter((s) => !s.needsCuda && small(s))
  .map((s) => [`${title(op, s)} (${half})`, op, s, half] as const)));

describe('the registry in bfloat16 and float16 against float32 (CPU)', () => {
  test.each(CASES)('%s', (_name, op, s, half) => halfAgainstFloat32(op, s, half));
});

// ------------------------------------------------------------------ PyTorch 1.13 in bfloat16 / float16

interface Enc { shape: number[]; dtype: string; data: (number | string)[] }
interface FixtureCase {
  name: string;
  dtype: HalfDType;
  inputs: Enc[];
  outputs: Enc[];
  weights: (Enc | null)[];
  grads: (Enc | null)[];
  scale?: number;
}
const FIXTURE = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'half.json'), 'utf8')) as { cases: FixtureCase[] };
const numbers = (e: Enc): number[] => e.data.map(Number);
/** A fixture tensor: its values are exactly those of its dtype, so nothing rounds here. */
const fromEnc = (e: Enc, requiresGrad = false): Tensor => tensor(numbers(e), { shape: e.shape, dtype: e.dtype as 'float32', requiresGrad: requiresGrad && e.dtype !== 'int32' });
const NO_KEY = { seed: 0n, offset: 0n };

/** Each fixture case through the public API (the LoRA op through its native entry point). */
const RUN: [RegExp, (xs: Tensor[], c: FixtureCase) => Tensor | Tensor[]][] = [
  [/^matmul/, ([a, b]) => a.matmul(b)],
  [/^linear/, ([x, w, b]) => F.linear(x, w, b)],
  [/^softmax/, ([x]) => x.softmax(-1)],
  [/^log_softmax/, ([x]) => F.logSoftmax(x, -1)],
  [/^rms_norm/, ([x, w]) => F.rmsNorm(x, w, 1e-6)],
  [/^rotary/, ([x]) => {
    const { cos, sin } = F.rotaryTables(x.shape[2], x.shape[3], { theta: 10000, dtype: 'float32' });
    return F.applyRotary(x, cos, sin);
  }],
  [/^cross_entropy/, ([x, t]) => F.crossEntropy(x, t)],
  [/^add/, ([a, b]) => a.add(b)],
  [/^mul/, ([a, b]) => a.mul(b)],
  [/^div/, ([a, b]) => a.div(b)],
  [/^(exp|log|sqrt|tanh|sigmoid|relu|neg|abs) /, ([x], c) => (x as unknown as Record<string, () => Tensor>)[c.name.split(' ')[0]]()],
  [/^silu/, ([x]) => F.silu(x)],
  [/^gelu tanh/, ([x]) => F.gelu(x, 'tanh')],
  [/^gelu \[/, ([x]) => F.gelu(x)],
  [/^sum dim 1/, ([x]) => x.sum(1)],
  [/^mean/, ([x]) => x.mean()],
  [/^cumsum/, ([x]) => x.cumsum(1)],
  [/^max dim 1/, ([x]) => { const r = x.max(1); return [r.values, r.indices]; }],
  [/^clamp/, ([x]) => x.clamp(-0.5, 0.7)],
  [/^embedding/, ([i, w]) => F.embedding(i, w)],
  [/^lora bf16 base/, ([x, W, b, A, B], c) => loraLinear(x, W, A, B, b, c.scale as number, 0, NO_KEY)],
];

/**
 * Tolerances against torch (normalised as above). Both sides round each result once to the half
 * type, from internal values that differ by float32 rounding (other summation orders, float vs
 * double sums) or, where torch chains ops (RMSNorm's two roundings, rotary's three, the
 * cross-entropy's upcast), by the intermediate roundings: a result may land one half-ulp (u,
 * 2^-8 for bfloat16, 2^-11 for float16) to either side, and a gradient through a few roundings
 * more. 4u (bfloat16 1.6e-2, float16 2e-3) as for the registry.
 */
const TORCH_TOL = HALF_TOL;

describe('PyTorch 1.13 results in bfloat16 and float16 (test/fixtures/half.json)', () => {
  const cases = FIXTURE.cases.filter((c) => !c.name.startsWith('lora merge'));
  test('the fixture holds the bfloat16 ops and the float16 ones torch runs on the CPU', () => {
    expect(cases.filter((c) => c.dtype === 'bfloat16').length).toBeGreaterThanOrEqual(30);
    expect(cases.filter((c) => c.dtype === 'float16').length).toBeGreaterThanOrEqual(10);
    for (const c of cases) expect(RUN.some(([re]) => re.test(c.name))).toBe(true);
  });

  test.each(cases.map((c) => [`${c.name} (${c.dtype})`, c] as const))('%s', (_name, c) => {
    const run = RUN.find(([re]) => re.test(c.name))![1];
    const xs = c.inputs.map((e) => fromEnc(e, true));
    const outs = outputs(run(xs, c));
    expect(outs.length).toBe(c.outputs.length);
    let loss: Tensor | null = null;
    outs.forEach((o, k) => {
      const want = c.outputs[k];
      // The dtypes torch gives: the half type, float32 for the upcast loss, int32 indices.
      expect(o.dtype).toBe(want.dtype);
      const e = normError(Array.from(o.toArray()), numbers(want));
      if (!(e <= TORCH_TOL[c.dtype])) throw new Error(`output ${k} differs from torch by ${e}`);
      const w = c.weights[k];
      if (w) {
        const term = o.mul(fromEnc(w)).sum();
        loss = loss ? loss.add(term) : term;
      }
    });
    if (loss) (loss as Tensor).backward();
    c.grads.forEach((g, k) => {
      if (!g) return;
      expect(xs[k].grad?.dtype).toBe(g.dtype);
      const e = normError(Array.from(xs[k].grad!.toArray()), numbers(g));
      if (!(e <= TORCH_TOL[c.dtype])) throw new Error(`the gradient of input ${k} differs from torch by ${e}`);
    });
  });

  test('lora on a bfloat16 layer rounds once, as PEFT: (base + lora) in float32, then to bfloat16', () => {
    // Bit for bit but for float32 summation order (which can move a value across a rounding
    // boundary): rounding the adapter's output to bfloat16 before the add (two roundings) would
    // miss on about a quarter of these elements.
    const c = FIXTURE.cases.find((k) => k.name.startsWith('lora bf16 base'))!;
    const [x, W, b, A, B] = c.inputs.map((e) => fromEnc(e));
    const got = Array.from(loraLinear(x, W, A, B, b, c.scale as number, 0, NO_KEY).toArray());
    const want = numbers(c.outputs[0]);
    expect(got.filter((v, i) => v !== want[i]).length).toBeLessThanOrEqual(2);
  });

  test('lora merge into a bfloat16 weight: W + scale B A in float32, rounded once (to nearest even)', () => {
    const c = FIXTURE.cases.find((k) => k.name.startsWith('lora merge'))!;
    const [W, A, B] = c.inputs.map((e) => fromEnc(e));
    expect(loraMerge(W, A, B, c.scale as number, true)).toBe(true);
    expect(W.dtype).toBe('bfloat16');
    // One rounding of the float32 sum: equal to torch's bit for bit but for float32 summation order
    // inside B A (r = 4 terms), which can move a value across a rounding boundary.
    const got = Array.from(W.toArray());
    const want = numbers(c.outputs[0]);
    const differing = got.filter((v, i) => v !== want[i]).length;
    expect(differing).toBeLessThanOrEqual(Math.ceil(got.length / 50));
    expect(normError(got, want)).toBeLessThanOrEqual(2 ** -8);
  });
});

// ------------------------------------------------------------------ the half GEMM

describe('matrix products in the halves (float32 accumulation, one rounding)', () => {
  // Sizes across the GEMM's blocks (512 rows, 1024 columns, 512 deep), the last ones partial:
  // [1030, 530] @ [530, 12] splits rows and depth, [12, 530] @ [530, 1100] columns and depth, and
  // backward's transposed products (g B^T, A^T g) split the depth along 12, 1030 or 1100. Against
  // float32 on the same half values, every element within one rounding: |got - ref| <= u |ref|
  // plus float32's summation-order difference (tiny next to u).
  const shapes: [number, number, number][] = [[1030, 530, 12], [12, 530, 1100]];
  test.each(HALVES.flatMap((h) => shapes.map((s) => [h, ...s] as const)))('%s: [%i, %i] @ [K, %i] and its gradients, each element rounded once', (half, M, K, N) => {
    const u = half === 'bfloat16' ? 2 ** -8 : 2 ** -11;
    manualSeed(16);
    // Native draws (rounded to the half type), and the same values in float32 (exact).
    const make = (shape: number[]) => {
      const h = randn(shape, { dtype: half }).requiresGrad_(true);
      return [h, h.detach().to('float32').requiresGrad_(true)];
    };
    const [ah, af] = make([M, K]);
    const [bh, bf] = make([K, N]);
    const g = randn([M, N], { dtype: half });
    const yh = ah.matmul(bh);
    const yf = af.matmul(bf);
    expect(yh.dtype).toBe(half);
    yh.backward(g);
    yf.backward(g.to('float32'));
    const within = (got: Tensor, ref: Tensor, what: string) => {
      // max(|got - ref| - u |ref|) <= 1e-5 max |ref|, computed in float64.
      const g = got.to('float64');
      const r = ref.to('float64');
      const excess = g.sub(r).abs().sub(r.abs().mul(u)).max().item();
      const scale = r.abs().max().item();
      if (!(excess <= 1e-5 * scale)) throw new Error(`${what}: an element is off by ${excess} beyond one rounding (scale ${scale})`);
    };
    within(yh, yf, 'y');
    within(ah.grad!, af.grad!, 'dA');
    within(bh.grad!, bf.grad!, 'dB');
  });

  test('a float16 product beyond 65504 is an infinity (as torch rounds it), not a wrapped value', () => {
    const a = tensor([300, 300], { shape: [1, 2], dtype: 'float16' });
    const b = tensor([200, 200], { shape: [2, 1], dtype: 'float16' });
    expect(Array.from(a.matmul(b).toArray())).toEqual([Infinity]);
  });
});

// ------------------------------------------------------------------ LoRA on a half layer

describe('LoRA of a bfloat16 layer with float32 adapters', () => {
  const M = 7;
  const K = 12;
  const N = 9;
  const r = 3;
  const scale = 1.5;
  /** x, W, b in bfloat16 and A, B in float32; and the same values in float64. */
  const make = (seed: number, requiresGrad: boolean) => {
    const bf = (shape: number[], s: number, k = 1) => tensor(Array.from(randnArray(shape[0] * (shape[1] ?? 1), s), (v) => k * v),
      { shape, dtype: 'bfloat16', requiresGrad });
    const f32 = (shape: number[], s: number) => tensor(Array.from(randnArray(shape[0] * shape[1], s), (v) => 0.3 * v), { shape, dtype: 'float32', requiresGrad });
    const half = [bf([M, K], seed), bf([N, K], seed + 1, 0.3), bf([N], seed + 2, 0.1), f32([r, K], seed + 3), f32([N, r], seed + 4)];
    const f64 = half.map((t) => tensor(t.toArray(), { shape: t.shape, dtype: 'float64', requiresGrad }));
    return { half, f64 };
  };
  const call = ([x, W, b, A, B]: Tensor[], p: number) => loraLinear(x, W, A, B, b, scale, p, { seed: 99n, offset: 7n });

  test.each([0, 0.3])('dropout %p: y, dx in bfloat16, dA and dB in float32 at float32 accuracy against float64', (p) => {
    const { half, f64 } = make(10, true);
    const yh = call(half, p);
    const y64 = call(f64, p);
    expect(yh.dtype).toBe('bfloat16');
    const gv = tensor(randnArray(M * N, 5), { shape: [M, N], dtype: 'bfloat16' }).toArray();
    yh.backward(tensor(gv, { shape: [M, N], dtype: 'bfloat16' }));
    y64.backward(tensor(gv, { shape: [M, N], dtype: 'float64' }));
    const [x, W, b, A, B] = half;
    expect([x.grad!.dtype, W.grad!.dtype, b.grad!.dtype, A.grad!.dtype, B.grad!.dtype]).toEqual(['bfloat16', 'bfloat16', 'bfloat16', 'float32', 'float32']);
    // y: the base output rounded, then base + adapter rounded (PEFT's two roundings): 2u.
    expect(normError(yh.toArray(), y64.toArray())).toBeLessThanOrEqual(2 * 2 ** -8);
    // The adapters' gradients never pass through bfloat16 (dy is exact in float32): float32 accuracy.
    // A rounding to bfloat16 anywhere on their path would show as an error near 2^-8.
    expect(normError(A.grad!.toArray(), f64[3].grad!.toArray())).toBeLessThanOrEqual(1e-5);
    expect(normError(B.grad!.toArray(), f64[4].grad!.toArray())).toBeLessThanOrEqual(1e-5);
    // dx = round(round(dy W) + round(adapter dx)) and dW, db rounded once: a few u.
    expect(normError(x.grad!.toArray(), f64[0].grad!.toArray())).toBeLessThanOrEqual(3 * 2 ** -8);
    expect(normError(W.grad!.toArray(), f64[1].grad!.toArray())).toBeLessThanOrEqual(2 ** -8);
    expect(normError(b.grad!.toArray(), f64[2].grad!.toArray())).toBeLessThanOrEqual(2 ** -8);
  });

  test('the adapter path passes a float64 gradient check with x and W at their bfloat16 values', () => {
    const { f64 } = make(20, false);
    const [x, W, b] = f64;
    const A = tensor(randnArray(r * K, 31), { shape: [r, K], dtype: 'float64', requiresGrad: true });
    const B = tensor(randnArray(N * r, 32), { shape: [N, r], dtype: 'float64', requiresGrad: true });
    const res = gradcheck((a, bb) => loraLinear(x, W, a, bb, b, scale, 0.3, { seed: 5n, offset: 0n }), [A, B]);
    // gradcheck throws on a mismatch; every element of A and B was compared.
    expect(res.checked).toBe(r * K + N * r);
  });

  test('adapters in the layer\'s own half type: every tensor bfloat16, against float32', () => {
    const { half } = make(30, true);
    const allHalf = half.map((t) => tensor(t.toArray(), { shape: t.shape, dtype: 'bfloat16', requiresGrad: true }));
    const ref = allHalf.map((t) => tensor(t.toArray(), { shape: t.shape, dtype: 'float32', requiresGrad: true }));
    const yh = call(allHalf, 0);
    const yf = call(ref, 0);
    expect(normError(yh.toArray(), yf.toArray())).toBeLessThanOrEqual(HALF_TOL.bfloat16);
    const gv = tensor(randnArray(M * N, 6), { shape: [M, N], dtype: 'bfloat16' }).toArray();
    yh.backward(tensor(gv, { shape: [M, N], dtype: 'bfloat16' }));
    yf.backward(tensor(gv, { shape: [M, N], dtype: 'float32' }));
    allHalf.forEach((t, i) => {
      expect(t.grad!.dtype).toBe('bfloat16');
      expect(normError(t.grad!.toArray(), ref[i].grad!.toArray())).toBeLessThanOrEqual(HALF_TOL.bfloat16);
    });
  });

  test('merge and unmerge into a float16 weight; a merge that overflows float16 is refused with W unchanged', () => {
    const W = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3], dtype: 'float16' });
    const A = tensor([0.5, 0.25, 1], { shape: [1, 3], dtype: 'float32' });
    const B = tensor([2, -4], { shape: [2, 1], dtype: 'float32' });
    expect(loraMerge(W, A, B, 1, true)).toBe(true);
    expect(Array.from(W.toArray())).toEqual([2, 2.5, 5, 2, 4, 2]);
    expect(loraMerge(W, A, B, -1, true)).toBe(true);
    expect(Array.from(W.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
    const big = tensor([1e5, 0], { shape: [2, 1], dtype: 'float32' });
    expect(loraMerge(W, A, big, 1, true)).toBe(false);
    expect(Array.from(W.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

// ------------------------------------------------------------------ Adam on half parameters

test.each(HALVES)('Adam and AdamW step a %s parameter in float (state in its dtype), as float32 does', (half) => {
  for (const Opt of [Adam, AdamW]) {
    const v = randnArray(40, 8);
    const ph = tensor(v, { shape: [40], dtype: half, requiresGrad: true });
    const pf = tensor(ph.toArray(), { shape: [40], dtype: 'float32', requiresGrad: true });
    const oh = new Opt([ph], { lr: 0.01, weightDecay: 0.1 });
    const of = new Opt([pf], { lr: 0.01, weightDecay: 0.1 });
    for (let step = 0; step < 3; step++) {
      const g = tensor(randnArray(40, 100 + step), { shape: [40], dtype: half }).toArray();
      ph.grad = tensor(g, { shape: [40], dtype: half });
      pf.grad = tensor(g, { shape: [40], dtype: 'float32' });
      oh.step();
      of.step();
    }
    expect(ph.dtype).toBe(half);
    // Each step rounds p (and m, v) once: three steps, a few u of p's size.
    const u = half === 'bfloat16' ? 2 ** -8 : 2 ** -11;
    expect(normError(ph.toArray(), pf.toArray())).toBeLessThanOrEqual(4 * u);
    // The parameter moved: lr 0.01 over three steps is far above the rounding.
    expect(normError(ph.toArray(), tensor(v, { dtype: half }).toArray())).toBeGreaterThan(4 * u);
  }
});

// ------------------------------------------------------------------ refusals

describe('dtypes an op does not take, and mixes of half and float32', () => {
  const bf = (shape: number[]) => tensor(randnArray(shape.reduce((a, b) => a * b, 1), 1), { shape, dtype: 'bfloat16' });
  const f32 = (shape: number[]) => tensor(randnArray(shape.reduce((a, b) => a * b, 1), 2), { shape, dtype: 'float32' });

  test('elementwise and products: bfloat16 with float32 is refused naming both tensors', () => {
    expectThrows(() => bf([2, 3]).add(f32([2, 3])), TypeError, /^Tensor\.add: .* is bfloat16 but .* is float32/);
    expectThrows(() => bf([2, 3]).matmul(f32([3, 2])), TypeError, /bfloat16 but .* is float32/);
    expectThrows(() => F.linear(bf([2, 3]), f32([4, 3])), TypeError, /^F\.linear: x is bfloat16 but weight is float32/);
    expectThrows(() => F.rmsNorm(bf([2, 4]), f32([4])), TypeError, /bfloat16 but weight is float32/);
  });

  test('rotary: float32 tables serve a half x, other mixes are refused', () => {
    const { cos, sin } = F.rotaryTables(3, 4, { theta: 100, dtype: 'float32' });
    expect(F.applyRotary(bf([1, 1, 3, 4]), cos, sin).dtype).toBe('bfloat16');
    const t64 = F.rotaryTables(3, 4, { theta: 100, dtype: 'float64' });
    expectThrows(() => F.applyRotary(bf([1, 1, 3, 4]), t64.cos, t64.sin), TypeError, /^applyRotary: x is bfloat16 but cos is float64/);
    expectThrows(() => F.applyRotary(f32([1, 1, 3, 4]), bf([3, 4]), bf([3, 4])), TypeError, /^applyRotary: x is float32 but cos is bfloat16/);
    expectThrows(() => F.applyRotary(bf([1, 1, 3, 4]), cos, bf([3, 4])), TypeError, /^applyRotary: cos is float32 but sin is bfloat16/);
  });

  test('LoRA: a half layer takes adapters in its dtype or float32 only, A and B alike', () => {
    const x = bf([2, 3]);
    const W = bf([4, 3]);
    const key = { seed: 0n, offset: 0n };
    const f64 = (shape: number[]) => tensor(randnArray(shape[0] * shape[1], 3), { shape, dtype: 'float64' });
    expect(() => loraLinear(x, W, f64([2, 3]), f64([4, 2]), null, 1, 0, key)).toThrow(
      /lora forward: A is float64 but weight is bfloat16 \(the adapters of a bfloat16 layer are bfloat16 or float32\)/);
    expect(() => loraLinear(x, W, f32([2, 3]), bf([4, 2]), null, 1, 0, key)).toThrow(/lora forward: A is float32 but B is bfloat16/);
    expect(() => loraLinear(f32([2, 3]), f32([4, 3]), bf([2, 3]), bf([4, 2]), null, 1, 0, key)).toThrow(/lora forward: weight is float32 but A is bfloat16/);
    const Wf16 = tensor([1, 2, 3, 4, 5, 6], { shape: [2, 3], dtype: 'float16' });
    expect(() => loraMerge(Wf16, bf([1, 3]), bf([2, 1]), 1, true)).toThrow(/merge: A is bfloat16 but weight is float16/);
    expect(Array.from(Wf16.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test('the float32 statistics of a half op must be float32; Adam takes no mixed state', () => {
    const logits = bf([2, 5]);
    const [, lse] = native.crossEntropyForward(logits._h, tensor([1, 3], { dtype: 'int32' })._h, -100, 0);
    const lseBf = bf([2]);
    expect(() => native.crossEntropyBackward(logits._h, lseBf._h, tensor([1, 3], { dtype: 'int32' })._h, -100, 0, f32([1])._h, 1))
      .toThrow(/cross entropy backward: lse must be float32 for a bfloat16 input, got bfloat16/);
    native.dispose(lse);
    const p = bf([3]).requiresGrad_(true);
    expect(() => { p.grad = f32([3]); }).toThrow(/^Tensor\.grad: value must be a bfloat16 tensor of shape \[3\]/);
  });

  test('requireAdapterDtype (for layers checking their adapters): the layer\'s dtype, or float32 on a half layer', () => {
    const W = bf([4, 3]);
    expect(() => requireAdapterDtype('L.forward', W, 'weight', f32([2, 3]), 'A')).not.toThrow();
    expect(() => requireAdapterDtype('L.forward', W, 'weight', bf([2, 3]), 'A')).not.toThrow();
    expectThrows(() => requireAdapterDtype('L.forward', W, 'weight', tensor([1], { dtype: 'float16' }), 'A'), TypeError,
      /^L\.forward: A is float16 but weight is bfloat16; the adapters of a bfloat16 layer must be bfloat16 or float32$/);
    expectThrows(() => requireAdapterDtype('L.forward', f32([4, 3]), 'weight', bf([2, 3]), 'B'), TypeError,
      /^L\.forward: B is bfloat16 but weight is float32; the adapters of a float32 layer must be float32$/);
  });

  test('int32 is refused where a float dtype is taken, naming the four float dtypes', () => {
    expectThrows(() => randn([2], { dtype: 'int32' }), RangeError, /^randn: options\.dtype must be float32, float64, bfloat16 or float16, got "int32"$/);
    expectThrows(() => F.silu(tensor([1], { dtype: 'int32' })), RangeError, /^F\.silu: x's dtype must be float32, float64, bfloat16 or float16, got "int32"$/);
  });
});

describe('cross entropy of half logits', () => {
  // The CPU runs half logits through the float32 rows a block of rows at a time (at most 2^21
  // floats): the loss and the logits' gradient must be those of upcasting the logits first, bit for
  // bit, over several blocks (C = 50 000 gives 41 rows a block), with ignored rows, label smoothing
  // and per-row gradients (reduction 'none').
  for (const dtype of HALVES) {
    test(`${dtype}: the same bits as upcasting to float32 first, over several row blocks`, () => {
      manualSeed(12);
      const N = 90, C = 50000;
      const half = randn([N, C], { std: 3 }).to(dtype).requiresGrad_(true);
      const wide = half.detach().to('float32').requiresGrad_(true);
      const targets = Array.from({ length: N }, (_, i) => (i % 7 === 3 ? -100 : (i * 7919) % C));
      for (const opts of [{}, { labelSmoothing: 0.1 }, { reduction: 'none' as const }]) {
        half.grad = null;
        wide.grad = null;
        const lh = F.crossEntropy(half, targets, opts);
        const lw = F.crossEntropy(wide, targets, opts);
        expect(lh.dtype).toBe('float32');
        expect(Array.from(lh.toArray())).toEqual(Array.from(lw.toArray()));
        const g = opts.reduction === 'none' ? randn([N]) : tensor(1.5);
        lh.backward(g);
        lw.backward(g);
        expect(half.grad!.dtype).toBe(dtype);
        const rounded = wide.grad!.to(dtype);
        expect(Array.from(native.toHalfBits(half.grad!._h))).toEqual(Array.from(native.toHalfBits(rounded._h)));
      }
    });
  }
});
