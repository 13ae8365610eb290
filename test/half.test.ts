// bfloat16 and float16 on the CPU. Every sample of every op of the registry (test/ops/) that takes
// the halves is evaluated in each half dtype and compared, outputs and gradients, with float32 on
// the same inputs (the half values, which float32 holds exactly): the difference is the rounding of
// the half computation alone, bounded by the tolerances of test/ops/types.ts (HALF_TOL). Then the
// results of PyTorch 1.13 in bfloat16 and float16 (test/fixtures/half.json, from generate_half.py),
// the LoRA of a half layer with float32 adapters (PEFT's autocast_adapter_dtype), and the refusals.
import * as fs from 'fs';
import * as path from 'path';
import { F, Tensor, tensor } from '../lib';
import { loraLinear, loraMerge } from '../lib/ops/linear';
import { randnArray } from './helpers/gradcheck';
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

const CASES = OPS.flatMap((op) => (op.halves ?? HALVES).flatMap((half) => op.samples
  .filter((s) => !s.needsCuda)
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
