// The vectorised float32 paths of the CPU backend (src/cpu/fast_f32.cpp) against the plain float64
// loops of the same ops: rows longer and shorter than a vector, a tail, -inf logits (masked
// classes), NaN, ignored rows, label smoothing, per-row and scalar upstream gradients. CI runs
// this file on every instruction-set path (LORA_CUDA_CPU_KERNELS).
import { F, Tensor, manualSeed, noGrad, randn, tensor } from '../lib';

function values(t: Tensor): number[] {
  return Array.from(t.toArray());
}

function maxAbsDiff(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) || Number.isNaN(b[i])) {
      if (Number.isNaN(a[i]) !== Number.isNaN(b[i])) return Infinity;
      continue;
    }
    m = Math.max(m, Math.abs(a[i] - b[i]));
  }
  return m;
}

/** Loss and dlogits of F.crossEntropy for logits given as float64 values, in the dtype asked. */
function ce(x: number[], shape: [number, number], targets: number[], dtype: 'float32' | 'float64', opts: { labelSmoothing?: number; reduction?: 'mean' | 'none' }, upstream?: number[]) {
  const logits = tensor(x, { dtype, shape }).requiresGrad_(true);
  const loss = F.crossEntropy(logits, targets, { ignoreIndex: -100, ...opts });
  if (upstream) loss.backward(tensor(upstream, { dtype, shape: [shape[0]] }));
  else loss.backward();
  const out = { loss: values(loss), grad: values(logits.grad!) };
  loss.dispose();
  logits.dispose();
  return out;
}

describe.each([1, 7, 16, 33, 1003])('float32 cross entropy over %i classes matches the float64 loop', (C) => {
  const N = 6;
  manualSeed(C);
  const x = values(noGrad(() => randn([N, C], { dtype: 'float64', std: 4 })));
  const targets = Array.from({ length: N }, (_, i) => (i * 5 + 2) % C);
  targets[2] = -100;
  // Masked classes (-inf), never a target; without label smoothing only (with it the loss is
  // infinite, as in PyTorch).
  const masked = [1 * C + 1, 3 * C + C - 1].filter((k) => C > 2 && k % C !== targets[Math.floor(k / C)]);

  test.each([
    ['mean', 0],
    ['mean', 0.1],
    ['none', 0.2],
  ] as const)('reduction %s, label smoothing %f', (reduction, labelSmoothing) => {
    const up = reduction === 'none' ? Array.from({ length: N }, (_, i) => (i % 3) - 0.5) : undefined;
    const xs = x.slice();
    if (labelSmoothing === 0) for (const k of masked) xs[k] = -Infinity;
    const x32 = Array.from(Float32Array.from(xs)); // both dtypes see the same values
    const a = ce(x32, [N, C], targets, 'float32', { reduction, labelSmoothing }, up);
    const b = ce(x32, [N, C], targets, 'float64', { reduction, labelSmoothing }, up);
    const scale = Math.max(...b.loss.map(Math.abs), 1);
    expect(maxAbsDiff(a.loss, b.loss)).toBeLessThan(1e-5 * scale);
    // float32 rounding of lse (stored in float by both) and of the products: about 1e-6 at most.
    expect(maxAbsDiff(a.grad, b.grad)).toBeLessThan(2e-6);
    // Ignored rows get no gradient; masked classes get none beyond the smoothing term.
    for (let j = 0; j < C; j++) expect(a.grad[2 * C + j]).toBe(0);
    for (const k of labelSmoothing === 0 ? masked : []) {
      expect(a.grad[k]).toBe(0);
      expect(b.grad[k]).toBe(0);
    }
    expect(a.loss.every(Number.isFinite)).toBe(true);
  });
});

test('float32 cross entropy: a NaN logit makes its row NaN, as the float64 loop does', () => {
  const C = 40;
  const x = Array.from({ length: 2 * C }, (_, i) => Math.sin(i));
  x[C + 17] = NaN;
  const a = ce(x, [2, C], [3, 4], 'float32', { reduction: 'none' }, [1, 1]);
  const b = ce(x, [2, C], [3, 4], 'float64', { reduction: 'none' }, [1, 1]);
  expect(Number.isNaN(a.loss[1])).toBe(true);
  expect(Number.isNaN(b.loss[1])).toBe(true);
  expect(Math.abs(a.loss[0] - b.loss[0])).toBeLessThan(1e-5);
});
