// The selection, scan, mask and pointwise ops against PyTorch: values, indices and gradients
// (test/fixtures/ops.json, from test/fixtures/generate_ops.py), in float64 and float32, on the CPU
// and, where there is one, on a CUDA device.
import * as fs from 'fs';
import * as path from 'path';
import { Tensor, tensor, cuda, where } from '../lib';

interface FixTensor {
  shape: number[];
  data: (number | string)[];
  dtype: 'float64' | 'int32';
}
interface Case {
  name: string;
  inputs: FixTensor[];
  outputs: FixTensor[];
  weights: (FixTensor | null)[];
  grads: (FixTensor | null)[];
}

const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'ops.json'), 'utf8')) as { cases: Case[] };

const num = (v: number | string): number => (typeof v === 'number' ? v : Number(v)); // "NaN", "-Infinity"

const vi = (r: { values: Tensor; indices: Tensor }): Tensor[] => [r.values, r.indices];
const CMP = ['eq', 'ne', 'lt', 'le', 'gt', 'ge'] as const;

/** How each case calls the library (the same call as the generator's torch code). */
const CALLS: Record<string, (xs: Tensor[]) => Tensor | Tensor[]> = {
  'max all': ([a]) => a.max(),
  'max all with ties': ([a]) => a.max(),
  'min all with ties': ([a]) => a.min(),
  ...Object.fromEntries([0, 1, -1].flatMap((d) => [
    [`max dim ${d}`, ([a]: Tensor[]) => vi(a.max(d))],
    [`min dim ${d} keepdim`, ([a]: Tensor[]) => vi(a.min(d, true))],
  ])),
  'max dim 1 with ties': ([a]) => vi(a.max(1)),
  'min dim 0 with ties': ([a]) => vi(a.min(0)),
  'argmax all': ([a]) => a.argmax(),
  'argmin all keepdim': ([a]) => a.argmin(null, true),
  'argmax dim 1 with ties': ([a]) => a.argmax(1),
  'argmin dim 0 keepdim with ties': ([a]) => a.argmin(0, true),
  'max dim 1 with NaN': ([a]) => vi(a.max(1)),
  'argmin dim 1 with NaN': ([a]) => a.argmin(1),
  'max all with NaN': ([a]) => a.max(),
  'topk 3 dim -1': ([a]) => vi(a.topk(3)),
  'topk 2 dim 0 smallest': ([a]) => vi(a.topk(2, 0, false)),
  'topk all of a dim 1 of [2,4,3]': ([a]) => vi(a.topk(4, 1)),
  'cumsum dim 0': ([a]) => a.cumsum(0),
  'cumsum dim -1': ([a]) => a.cumsum(-1),
  'cumsum dim 1': ([a]) => a.cumsum(1),
  ...Object.fromEntries(CMP.flatMap((op) => [
    [`${op} tensor`, ([a, b]: Tensor[]) => a[op](b)],
    [`${op} scalar`, ([a]: Tensor[]) => a[op](1)],
  ])),
  'where [3,1] [3,4] [4]': ([m, a, b]) => where(m, a, b),
  'where with a scalar other': ([m, a]) => a.where(m, 0.5),
  'maskedFill [2,3] with [3]': ([m, a]) => a.maskedFill(m, -1.5),
  'maskedFill -inf then logSoftmax': ([m, a]) => a.maskedFill(m, -Infinity).logSoftmax(-1),
  'clamp [-1, 1] at and around the bounds': ([a]) => a.clamp(-1, 1),
  'clamp min only': ([a]) => a.clamp(0),
  'clamp max only': ([a]) => a.clamp(null, 0.5),
  'clamp min > max': ([a]) => a.clamp(1, -1),
  'pow 2': ([a]) => a.pow(2),
  'pow 0.5 (positive)': ([a]) => a.pow(0.5),
  'pow -1.5 (positive)': ([a]) => a.pow(-1.5),
  'pow 0': ([a]) => a.pow(0),
  'pow tensor [3,4] ^ [4]': ([a, b]) => a.pow(b),
  'pow at a zero base': ([a, b]) => a.pow(b),
  sigmoid: ([a]) => a.sigmoid(),
  tanh: ([a]) => a.tanh(),
  exp: ([a]) => a.exp(),
  log: ([a]) => a.log(),
  'logSoftmax dim -1': ([a]) => a.logSoftmax(-1),
  'logSoftmax dim 0': ([a]) => a.logSoftmax(0),
  'logSoftmax large values': ([a]) => a.logSoftmax(),
};

function expectMatch(got: Tensor, want: FixTensor, dtype: 'float32' | 'float64', label: string): void {
  expect({ label, shape: got.shape }).toEqual({ label, shape: want.shape });
  const g = Array.from(got.toArray());
  const w = want.data.map(num);
  if (want.dtype === 'int32') {
    expect({ label, dtype: got.dtype, data: g }).toEqual({ label, dtype: 'int32', data: w });
    return;
  }
  const [rtol, atol] = dtype === 'float64' ? [1e-10, 1e-11] : [2e-5, 2e-6];
  g.forEach((v, i) => {
    const e = w[i];
    if (Number.isNaN(e) || !Number.isFinite(e)) {
      expect({ label, i, v }).toEqual({ label, i, v: e });
    } else if (!(Math.abs(v - e) <= atol + rtol * Math.abs(e))) {
      throw new Error(`${label}[${i}]: got ${v}, torch gives ${e}`);
    }
  });
}

const devices = cuda.isAvailable() ? ['cpu', 'cuda'] as const : ['cpu'] as const;

describe.each(devices.flatMap((device) => (['float64', 'float32'] as const).map((dtype) => [device, dtype] as const)))('on %s in %s', (device, dtype) => {
  test('every case of the fixture has a call', () => {
    expect(fixture.cases.map((c) => c.name).filter((n) => !CALLS[n])).toEqual([]);
  });
  test.each(fixture.cases.map((c) => [c.name, c] as const))('%s', (_n, c) => {
    const xs = c.inputs.map((s) => tensor(s.data.map(num), {
      shape: s.shape, dtype: s.dtype === 'int32' ? 'int32' : dtype, device, requiresGrad: s.dtype !== 'int32',
    }));
    const r = CALLS[c.name](xs);
    const outs = Array.isArray(r) ? r : [r];
    expect(outs.length).toBe(c.outputs.length);
    outs.forEach((o, k) => expectMatch(o, c.outputs[k], dtype, `${c.name}: output ${k}`));
    let loss: Tensor | null = null;
    c.weights.forEach((w, k) => {
      if (!w) return;
      const term = outs[k].mul(tensor(w.data.map(num), { shape: w.shape, dtype, device })).sum();
      loss = loss ? loss.add(term) : term;
    });
    if (!loss) {
      expect(c.grads.every((g) => g === null)).toBe(true);
      return;
    }
    (loss as Tensor).backward();
    c.grads.forEach((g, i) => {
      if (g) expectMatch(xs[i].grad as Tensor, g, dtype, `${c.name}: grad of input ${i}`);
    });
  });
});
