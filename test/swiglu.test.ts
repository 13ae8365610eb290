// F.swiglu, the Llama MLP's gate silu(gate) * up as one op: the same bits as F.silu followed by a
// multiply, forward and backward, in every float dtype, on the CPU (fused for float32) and on CUDA
// where available (fused kernels; in CI under the emulator, scripts/test-cuda-emu.sh). Gradients
// against finite differences, parity between devices and argument errors come from the op
// registry (test/ops/functional.ts); values against PyTorch's from test/fixtures/swiglu.json.
import * as fs from 'fs';
import * as path from 'path';
import { F, Tensor, backendInfo, cuda, randn, tensor } from '../lib';
import type { DType, DeviceSpec } from '../lib';

// PyTorch's silu(gate) * up in float32 and bfloat16 with gradients (test/fixtures/generate_swiglu.py).
type Num = number | 'NaN' | 'Infinity' | '-Infinity' | '-0';
interface TorchCase { dtype: 'float32' | 'bfloat16'; gate: Num[]; up: Num[]; w: Num[]; silu: Num[]; y: Num[]; dgate: Num[]; dup: Num[] }
const torchFixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'swiglu.json'), 'utf8')) as { cases: TorchCase[] };
const dec = (v: Num): number => (v === 'NaN' ? NaN : v === 'Infinity' ? Infinity : v === '-Infinity' ? -Infinity : v === '-0' ? -0 : v);

const FLOAT_DTYPES: DType[] = ['float32', 'float64', 'bfloat16', 'float16'];

function bitsEqual(a: Tensor, b: Tensor): boolean {
  const x = Array.from(a.toArray()), y = Array.from(b.toArray());
  return x.length === y.length && x.every((v, i) => Object.is(v, y[i]) || (Number.isNaN(v) && Number.isNaN(y[i])));
}

/** gate (wide values, so exp saturates both ways), up, and an upstream gradient, on `device`. */
function inputs(n: number, dtype: DType, device: DeviceSpec): [Tensor, Tensor, Tensor] {
  const g = randn([n], { std: 6, dtype, device }), u = randn([n], { dtype, device }), w = randn([n], { dtype, device });
  g.requiresGrad = true;
  u.requiresGrad = true;
  return [g, u, w];
}

/** Output and gradients of f(gate, up) weighted by w. */
function run(f: (g: Tensor, u: Tensor) => Tensor, g: Tensor, u: Tensor, w: Tensor): Tensor[] {
  g.grad = null;
  u.grad = null;
  const y = f(g, u);
  y.mul(w).sum().backward();
  return [y.detach(), g.grad!, u.grad!];
}

const fused = (g: Tensor, u: Tensor) => F.swiglu(g, u);
const separate = (g: Tensor, u: Tensor) => F.silu(g).mul(u);

function expectSameAsSeparate(n: number, dtype: DType, device: DeviceSpec): void {
  const [g, u, w] = inputs(n, dtype, device);
  const a = run(fused, g, u, w), b = run(separate, g, u, w);
  expect(a.map((t, i) => ({ n, dtype, device, output: ['y', 'dgate', 'dup'][i], same: bitsEqual(t, b[i]) }))).toEqual(
    a.map((_, i) => ({ n, dtype, device, output: ['y', 'dgate', 'dup'][i], same: true })));
}

describe('F.swiglu on the CPU', () => {
  // 1 and 15: only the padded tail; 16, 17, 33: vectors and a tail; 200003: chunks on the thread pool.
  test.each(FLOAT_DTYPES)('%s: the bits of F.silu(gate).mul(up), output and both gradients', (dtype) => {
    for (const n of [1, 15, 16, 17, 33, 1000, 200003]) expectSameAsSeparate(n, dtype, 'cpu');
  });

  test('float32 values against float64, where exp(-gate) overflows too, as PyTorch computes them', () => {
    // x / (1 + exp(-x)) with exp in float: -inf gives NaN (-inf / inf) and gates below -88.72 give
    // -0, as in torch; gates in (-88.72, -88.38) need exp up to 3.4e38, just under the float limit.
    const gv = [-Infinity, -1000, -89, -88.7, -88.5, -88.3, -20, -1, -0, 0, 0.5, 3, 20, 88.5, 89, 1000, Infinity, NaN, 1, 2, -3];
    const uv = gv.map((_, i) => (i % 3) - 1.25);
    const f = Math.fround;
    const silu = (x: number) => f(f(x) / (1 + f(Math.exp(-f(x))))); // exp rounded to float: inf past 88.72
    const got = [Array.from(F.swiglu(tensor(gv), tensor(uv)).toArray()), Array.from(F.silu(tensor(gv)).toArray())];
    const want = [gv.map((g, i) => f(silu(g) * uv[i])), gv.map(silu)];
    got.forEach((ys, k) => ys.forEach((v, i) => {
      const w = want[k][i];
      const ok = Number.isNaN(w) ? Number.isNaN(v) : !Number.isFinite(w) || w === 0 ? Object.is(v, w) : Math.abs(v - w) <= 1e-6 * Math.abs(w);
      expect({ op: k ? 'silu' : 'swiglu', gate: gv[i], value: v, ok }).toEqual({ op: k ? 'silu' : 'swiglu', gate: gv[i], value: v, ok: true });
    }));
  });

  test.each(torchFixture.cases.map((c) => [c.dtype, c] as const))('%s: PyTorch\'s values and gradients, over exp\'s whole range', (dtype, c) => {
    const [gv, uv, wv] = [c.gate, c.up, c.w].map((a) => a.map(dec));
    const g = tensor(gv, { dtype }), u = tensor(uv, { dtype });
    g.requiresGrad = true;
    u.requiresGrad = true;
    const y = F.swiglu(g, u);
    y.mul(tensor(wv, { dtype })).sum().backward();
    const got = { silu: F.silu(g.detach()), y, dgate: g.grad!, dup: u.grad! };
    // float32: our exp is a polynomial (about 2 ulp), torch's another, so a few ulp apart. bfloat16:
    // silu(gate) is rounded to 8 bits before the product on both sides, and a float difference that
    // small can flip that rounding near a tie (2 ulp in y); torch 1.13 also rounds silu_backward's
    // intermediate steps to bfloat16 (at gate 3: -1.3984 where the float formula rounds to -1.4141),
    // where every half op here computes in float and rounds once.
    const rel = dtype === 'float32' ? 4e-6 : 2 ** -6, gradRel = dtype === 'float32' ? 4e-6 : 2 ** -5;
    const abs = dtype === 'float32' ? 1e-40 : 1e-38; // subnormal results keep few bits
    const bad: string[] = [];
    for (const k of ['silu', 'y', 'dgate', 'dup'] as const) {
      const a = Array.from(got[k].detach().toArray()), b = c[k].map(dec);
      a.forEach((v, i) => {
        const w = b[i];
        // NaN and the infinities exactly; zeros with their sign in the forward values (-0 where
        // exp(-gate) overflows), as numbers in the gradients (their sign follows the formula's order).
        const ok = Number.isNaN(w) ? Number.isNaN(v) : !Number.isFinite(w) ? v === w
          : w === 0 ? (k === 'silu' || k === 'y' ? Object.is(v, w) : v === 0)
          : Math.abs(v - w) <= (k === 'silu' || k === 'y' ? rel : gradRel) * Math.abs(w) + abs;
        if (!ok) bad.push(`${k}[${i}] gate ${gv[i]}: ${v} vs torch ${w}`);
      });
    }
    expect(bad).toEqual([]);
  });

  test('an element gets the same bits wherever it sits (vector, padded tail, another thread chunk)', () => {
    const n = 200003; // past two thread chunks, with a tail
    const [g, u, w] = inputs(n, 'float32', 'cpu');
    const [y, dg, du] = run(fused, g, u, w).map((t) => Array.from(t.toArray()));
    const [gv, uv, wv] = [g, u, w].map((t) => Array.from(t.toArray()));
    for (const i of [0, 1, 15, 16, 65535, 65536, 100001, 100002, n - 2, n - 1]) {
      const one = (a: number[]) => tensor([a[i]]);
      const g1 = one(gv), u1 = one(uv);
      g1.requiresGrad = true;
      u1.requiresGrad = true;
      const [y1, dg1, du1] = run(fused, g1, u1, one(wv)).map((t) => t.toArray()[0]);
      expect({ i, y: y1, dg: dg1, du: du1 }).toEqual({ i, y: y[i], dg: dg[i], du: du[i] });
    }
  });

  test('gradients only for the inputs that need them', () => {
    const g = randn([4, 5]), u = randn([4, 5]);
    u.requiresGrad = true;
    F.swiglu(g, u).sum().backward();
    expect(g.grad).toBeNull();
    expect(bitsEqual(u.grad!, F.silu(g))).toBe(true);
  });
});

const available = cuda.isAvailable();
if (!available) console.warn(`F.swiglu CUDA tests skipped: ${backendInfo().cuda.reason}`);
(available ? describe : describe.skip)('F.swiglu on CUDA', () => {
  test.each(FLOAT_DTYPES)('%s: the bits of F.silu(gate).mul(up) on the device, output and both gradients', (dtype) => {
    for (const n of [1, 17, 4099]) expectSameAsSeparate(n, dtype, 'cuda');
  });
});
