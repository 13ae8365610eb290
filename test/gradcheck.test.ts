// Finite-difference gradient checks (float64). Every differentiable op of the
// public API is checked through the op registry (test/ops/): each sample of
// each entry, every output that records a graph, every input element that
// requires grad. Below it, what does not fit one op: the helper itself, the
// dropout mask LoRALinear's gradient depends on, and composed graphs. See
// test/helpers/gradcheck.ts for the method.
import { Tensor, cuda, manualSeed, noGrad, Linear, LoRALinear, F } from '../lib';
import { gradcheck, t64, randnArray } from './helpers/gradcheck';
import { gradcheckSamples, isInt, makeInputs, outputs, sampleSeed, title } from './ops';
import type { OpInfo, OpSample } from './ops';

/** Values kept at least `margin` away from 0 (for relu kinks and divisors). */
const awayFromZero = (margin: number) => (v: number) => (v >= 0 ? 1 : -1) * (margin + Math.abs(v));

// ------------------------------------------------------------ helper sanity

describe('gradcheck helper', () => {
  test('detects a wrong gradient', () => {
    // A graph whose backward is right but whose forward we change between the
    // analytic and numeric passes: the numeric derivative becomes 2x the analytic one.
    let factor = 1;
    const x = t64([3], 1);
    const fn = (a: Tensor) => {
      const out = a.mul(factor);
      factor = 2; // every evaluation after the first (the numeric ones) doubles
      return out;
    };
    expect(() => gradcheck(fn, [x])).toThrow(/gradcheck failed.*\n.*input 0 \[3\] element 0: analytic/);
  });

  test('checks every element and restores the inputs', () => {
    const a = t64([2, 3], 2);
    const b = t64([2, 3], 3);
    const before = Array.from(a.toArray());
    const res = gradcheck((p, q) => p.mul(q), [a, b]);
    expect(res.checked).toBe(12);
    expect(Array.from(a.toArray())).toEqual(before);
    expect(a.grad).toBeNull();
  });
});

// ------------------------------------------------------------ the registry

/** Checks every output of the sample that records a graph against central differences. */
function checkGradients(op: OpInfo, s: OpSample): void {
  const ctx = { device: 'cpu', dtype: 'float64' } as const;
  const xs = makeInputs(s, ctx, sampleSeed(op, s));
  // Float inputs go through gradcheck (which perturbs them); int32 inputs stay as they are.
  const at = s.inputs.flatMap((spec, i) => (isInt(spec) ? [] : [i]));
  const floats = at.map((i) => xs[i]);
  const all = (fl: Tensor[]): Tensor[] => {
    const ins = xs.slice();
    at.forEach((i, k) => (ins[i] = fl[k]));
    return ins;
  };
  const graphOutputs = outputs(s.call(xs, ctx)).flatMap((o, k) => (o.requiresGrad ? [k] : []));
  expect(graphOutputs.length).toBeGreaterThan(0);
  const elements = floats.filter((x) => x.requiresGrad).reduce((n, x) => n + x.numel, 0);
  const opts = typeof s.gradcheck === 'object' ? s.gradcheck : {};
  for (const k of graphOutputs) {
    const res = gradcheck((...fl) => outputs(s.call(all(fl), ctx))[k], floats, opts);
    expect(res.checked).toBe(elements);
  }
}

describe('every differentiable op (the registry)', () => {
  const samples = gradcheckSamples();
  const onCpu = samples.filter(([, s]) => !s.needsCuda);
  const onCuda = samples.filter(([, s]) => s.needsCuda);
  test.each(onCpu.map(([op, s]) => [title(op, s), op, s] as const))('%s', (_t, op, s) => checkGradients(op, s));
  (cuda.isAvailable() ? test.each : test.skip.each)(onCuda.map(([op, s]) => [title(op, s), op, s] as const))(
    '%s (through a CUDA device)', (_t, op, s) => checkGradients(op, s));
});

// -------------------------------------------------------------- LoRALinear

interface LoraSetup {
  lin: Linear;
  lora: LoRALinear;
}

/** A float64 LoRALinear with random (nonzero) A and B. */
function makeLora(inF: number, outF: number, o: { r: number; alpha?: number; bias?: boolean; dropout?: number; useRslora?: boolean; seed?: number }): LoraSetup {
  const seed = o.seed ?? 100;
  manualSeed(seed);
  const lin = new Linear(inF, outF, { bias: o.bias ?? true, dtype: 'float64' });
  const lora = new LoRALinear(lin, { r: o.r, alpha: o.alpha ?? 2 * o.r, dropout: o.dropout ?? 0, useRslora: o.useRslora ?? false });
  noGrad(() => {
    lora.A!.copy_(randnArray(o.r * inF, seed + 1).map((v) => 0.5 * v));
    lora.B!.copy_(randnArray(outF * o.r, seed + 2).map((v) => 0.5 * v));
  });
  return { lin, lora };
}

describe('LoRALinear', () => {
  const IN = 5;
  const OUT = 4;

  describe('dropout 0.3 in training mode (mask fixed by manualSeed before each forward)', () => {
    const SEED = 4242;

    test('the mask is active and reproducible', () => {
      const s = makeLora(IN, OUT, { r: 4, bias: true, dropout: 0.3, seed: 140 });
      expect(s.lora.training).toBe(true);
      const x = t64([6, IN], 240, { requiresGrad: false });
      const y1 = noGrad(() => (manualSeed(SEED), s.lora.forward(x))).toArray();
      const y2 = noGrad(() => (manualSeed(SEED), s.lora.forward(x))).toArray();
      expect(Array.from(y1)).toEqual(Array.from(y2));
      s.lora.eval();
      const y0 = noGrad(() => s.lora.forward(x)).toArray();
      s.lora.train();
      // Dropout changes the output (with 30 elements of x, some are dropped).
      expect(Array.from(y1)).not.toEqual(Array.from(y0));
    });
  });
});

// ---------------------------------------------------------- composed graphs

describe('composed graphs', () => {
  test('relu(linear(x)) -> LoRALinear -> mseLoss', () => {
    const s = makeLora(6, 3, { r: 2, bias: true, seed: 300 });
    s.lin.weight.requiresGrad_(true);
    const x = t64([4, 5], 301);
    const W1 = t64([6, 5], 302);
    const b1 = t64([6], 303, { map: (v) => v + 0.3 });
    const target = t64([4, 3], 304);
    gradcheck(
      (xx, w1, bb1, A, B, W, tgt) => {
        if (A !== s.lora.A || B !== s.lora.B || W !== s.lin.weight) throw new Error('not the module tensors');
        const h = F.relu(F.linear(xx, w1, bb1));
        return F.mseLoss(s.lora.forward(h), tgt);
      },
      [x, W1, b1, s.lora.A!, s.lora.B!, s.lin.weight, target],
    );
  });

  test('LoRA with dropout -> gelu -> crossEntropy with smoothing', () => {
    const s = makeLora(5, 4, { r: 3, bias: true, dropout: 0.3, seed: 310 });
    gradcheck(
      (xx, A, B) => {
        if (A !== s.lora.A || B !== s.lora.B) throw new Error('not the module tensors');
        manualSeed(77);
        const logits = s.lora.forward(xx).gelu('tanh');
        return F.crossEntropy(logits, [3, -100, 0, 1, 2], { labelSmoothing: 0.1 });
      },
      [t64([5, 5], 311), s.lora.A!, s.lora.B!],
    );
  });

  test('attention-like block: softmax via exp/sum/div, batched matmul, transpose, mean', () => {
    const q = t64([2, 3, 4], 320);
    const k = t64([2, 3, 4], 321);
    const v = t64([2, 3, 4], 322);
    gradcheck(
      (Q, K, V) => {
        const scores = Q.matmul(K.transpose(-1, -2)).mul(0.5);
        const e = scores.exp();
        const p = e.div(e.sum(-1, true));
        return p.matmul(V).silu().mean([0, 1]);
      },
      [q, k, v],
    );
  });

  test('diamond graph with reuse: x feeds several branches', () => {
    const x = t64([3, 4], 330, { map: awayFromZero(0.1) });
    const w = t64([4, 2], 331);
    gradcheck(
      (X, Wt) => {
        const a = X.matmul(Wt);
        const b = X.relu().sum(1, true);
        const c = X.mul(X).mean(-1, true).add(1).log();
        return a.mul(b).sub(c).div(X.exp().sum().add(1)).neg();
      },
      [x, w],
    );
  });
});
