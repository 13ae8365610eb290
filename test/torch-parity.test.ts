// Numerical parity against PyTorch reference values.
// Fixtures: test/fixtures/torch-parity.json, produced by test/fixtures/generate.py.
import * as fs from 'fs';
import * as path from 'path';
import { tensor, Linear, LoRALinear, Adam, AdamW, F } from '../lib';

type Tensor = ReturnType<typeof tensor>;
type DType = 'float32' | 'float64';

interface FixTensor {
  shape: number[];
  data: number[];
}

interface LoraCase {
  name: string;
  dtype: DType;
  in_features: number;
  out_features: number;
  r: number;
  alpha: number;
  bias: boolean;
  use_rslora: boolean;
  scale: number;
  inputs: { weight: FixTensor; bias: FixTensor | null; A: FixTensor; B: FixTensor; x: FixTensor; g: FixTensor };
  outputs: {
    y: FixTensor;
    dx: FixTensor;
    dA: FixTensor;
    dB: FixTensor;
    weight_merged: FixTensor;
    y_merged: FixTensor;
    weight_unmerged: FixTensor;
  };
}

interface AdamCase {
  name: string;
  optimizer: 'Adam' | 'AdamW';
  dtype: DType;
  options: { lr?: number; betas?: number[]; eps?: number; weight_decay?: number; amsgrad?: boolean };
  init: FixTensor[];
  steps: { grads: FixTensor[]; params: FixTensor[] }[];
}

interface TrainCase {
  name: string;
  dtype: DType;
  r: number;
  alpha: number;
  lr: number;
  steps: number;
  inputs: { weight: FixTensor; bias: FixTensor; A: FixTensor; B: FixTensor; x: FixTensor; target: FixTensor };
  outputs: { losses: number[]; A: FixTensor; B: FixTensor };
}

interface Fixture {
  lora: LoraCase[];
  adam: AdamCase[];
  train: TrainCase[];
}

const fixture: Fixture = JSON.parse(
  fs.readFileSync(path.join(__dirname, 'fixtures', 'torch-parity.json'), 'utf8'),
);

// Tolerances: float64 math should agree to rounding; float32 to a few ulps.
const F64 = { rtol: 1e-12, atol: 1e-11 };
const F32 = { rtol: 1e-5, atol: 1e-6 };

/** Elementwise |actual - expected| <= atol + rtol * |expected|; reports the worst index. */
function expectClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  rtol: number,
  atol: number,
  label: string,
): void {
  if (actual.length !== expected.length) {
    throw new Error(`${label}: length ${actual.length} != expected ${expected.length}`);
  }
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < expected.length; i++) {
    const diff = Math.abs(actual[i] - expected[i]);
    const excess = diff - (atol + rtol * Math.abs(expected[i]));
    if (Number.isNaN(diff) || excess > worstExcess) {
      worst = i;
      worstExcess = Number.isNaN(diff) ? Infinity : excess;
    }
  }
  if (worst >= 0) {
    const a = actual[worst];
    const e = expected[worst];
    throw new Error(
      `${label}: mismatch at flat index ${worst} of ${expected.length} (worst): ` +
        `actual ${a}, expected ${e}, |diff| ${Math.abs(a - e)} > atol ${atol} + rtol ${rtol} * |expected|`,
    );
  }
}

function make(t: FixTensor, dtype: DType, requiresGrad = false): Tensor {
  return tensor(t.data, { shape: t.shape, dtype, requiresGrad });
}

function expectTensor(actual: Tensor, expected: FixTensor, tol: { rtol: number; atol: number }, label: string): void {
  expect(actual.shape).toEqual(expected.shape);
  expectClose(actual.toArray(), expected.data, tol.rtol, tol.atol, label);
}

function gradOf(t: Tensor, label: string): Tensor {
  const g = t.grad;
  if (g === null) throw new Error(`${label}: grad is null`);
  return g;
}

/** Linear + LoRALinear with the fixture's weights copied in. */
function buildLora(
  inputs: { weight: FixTensor; bias: FixTensor | null; A: FixTensor; B: FixTensor },
  cfg: { in: number; out: number; r: number; alpha: number; useRslora: boolean; dtype: DType },
): LoRALinear {
  const linear = new Linear(cfg.in, cfg.out, { bias: inputs.bias !== null, dtype: cfg.dtype });
  linear.weight.copy_(inputs.weight.data);
  if (inputs.bias !== null) {
    if (linear.bias === null) throw new Error('Linear created without bias');
    linear.bias.copy_(inputs.bias.data);
  }
  const lora = new LoRALinear(linear, { r: cfg.r, alpha: cfg.alpha, dropout: 0, useRslora: cfg.useRslora });
  lora.A!.copy_(inputs.A.data);
  lora.B!.copy_(inputs.B.data);
  return lora;
}

describe('torch parity: LoRALinear forward/backward/merge (float64)', () => {
  for (const c of fixture.lora) {
    test(`lora ${c.name}`, () => {
      const { inputs: inp, outputs: out } = c;
      const lora = buildLora(inp, {
        in: c.in_features,
        out: c.out_features,
        r: c.r,
        alpha: c.alpha,
        useRslora: c.use_rslora,
        dtype: c.dtype,
      });
      const orig = lora.origLinear;

      expect(lora.scale).toBeCloseTo(c.scale, 12);
      expect(lora.merged).toBe(false);
      expect(lora.A!.shape).toEqual(inp.A.shape);
      expect(lora.B!.shape).toEqual(inp.B.shape);
      expect(lora.A!.dtype).toBe(c.dtype);
      expect(lora.B!.dtype).toBe(c.dtype);
      expect(lora.A!.requiresGrad).toBe(true);
      expect(lora.B!.requiresGrad).toBe(true);
      expect(orig.weight.requiresGrad).toBe(false);

      // forward + backward
      const x = make(inp.x, c.dtype, true);
      const y = lora.forward(x);
      expectTensor(y, out.y, F64, 'y');
      y.backward(make(inp.g, c.dtype));
      expectTensor(gradOf(x, 'x'), out.dx, F64, 'dx');
      expectTensor(gradOf(lora.A!, 'A'), out.dA, F64, 'dA');
      expectTensor(gradOf(lora.B!, 'B'), out.dB, F64, 'dB');

      // base layer is frozen
      expect(orig.weight.grad).toBeNull();
      if (orig.bias !== null) expect(orig.bias.grad).toBeNull();

      // merge (idempotent)
      lora.mergeToOrig();
      expect(lora.merged).toBe(true);
      expectTensor(orig.weight, out.weight_merged, F64, 'weight_merged');
      lora.mergeToOrig();
      expectTensor(orig.weight, out.weight_merged, F64, 'weight_merged (second merge is a no-op)');

      const yMerged = lora.forward(make(inp.x, c.dtype));
      expectTensor(yMerged, out.y_merged, F64, 'y_merged');
      expectClose(yMerged.toArray(), y.toArray(), 1e-10, 1e-10, 'y_merged vs y');

      // unmerge restores the original weight
      lora.unmergeFromOrig();
      expect(lora.merged).toBe(false);
      expectTensor(orig.weight, out.weight_unmerged, F64, 'weight_unmerged');
      expectClose(orig.weight.toArray(), inp.weight.data, 1e-12, 1e-12, 'weight_unmerged vs original');
      expect(orig.weight.grad).toBeNull();
    });
  }
});

describe('torch parity: Adam / AdamW (float32)', () => {
  for (const c of fixture.adam) {
    test(`${c.optimizer} ${c.name}: ${c.steps.length} steps`, () => {
      const params = c.init.map((p) => make(p, c.dtype, true));
      // pass only the options the torch case set, so library defaults are tested too
      const opts: { lr?: number; betas?: [number, number]; eps?: number; weightDecay?: number; amsgrad?: boolean } = {};
      if (c.options.lr !== undefined) opts.lr = c.options.lr;
      if (c.options.betas !== undefined) opts.betas = [c.options.betas[0], c.options.betas[1]];
      if (c.options.eps !== undefined) opts.eps = c.options.eps;
      if (c.options.weight_decay !== undefined) opts.weightDecay = c.options.weight_decay;
      if (c.options.amsgrad !== undefined) opts.amsgrad = c.options.amsgrad;
      const opt = c.optimizer === 'Adam' ? new Adam(params, opts) : new AdamW(params, opts);

      c.steps.forEach((step, s) => {
        // loss = sum_i (p_i * g_i).sum()  =>  p_i.grad == g_i
        const loss = params
          .map((p, i) => p.mul(make(step.grads[i], c.dtype)).sum())
          .reduce((acc, term) => acc.add(term));
        loss.backward();
        params.forEach((p, i) => {
          const g = gradOf(p, `step ${s + 1} param ${i}`);
          expectTensor(g, step.grads[i], { rtol: 1e-6, atol: 0 }, `step ${s + 1} grad ${i}`);
        });
        opt.step();
        opt.zeroGrad();
        params.forEach((p, i) => {
          expectTensor(p, step.params[i], F32, `step ${s + 1} param ${i}`);
        });
      });
    });
  }
});

describe('torch parity: end-to-end LoRA training (float32)', () => {
  for (const c of fixture.train) {
    test(`train ${c.name}`, () => {
      const { inputs: inp, outputs: out } = c;
      const [outF, inF] = inp.weight.shape;
      const lora = buildLora(inp, { in: inF, out: outF, r: c.r, alpha: c.alpha, useRslora: false, dtype: c.dtype });
      const x = make(inp.x, c.dtype);
      const target = make(inp.target, c.dtype);
      const opt = new Adam([lora.A!, lora.B!], { lr: c.lr });

      for (let s = 0; s < c.steps; s++) {
        const loss = F.mseLoss(lora.forward(x), target);
        expectClose([loss.item()], [out.losses[s]], F32.rtol, F32.atol, `loss at step ${s}`);
        loss.backward();
        opt.step();
        opt.zeroGrad();
      }
      expectTensor(lora.A!, out.A, F32, 'A after training');
      expectTensor(lora.B!, out.B, F32, 'B after training');

      // frozen base layer untouched
      const orig = lora.origLinear;
      expect(orig.weight.grad).toBeNull();
      expectClose(orig.weight.toArray(), inp.weight.data, 0, 0, 'frozen weight');
      if (orig.bias === null) throw new Error('bias missing');
      expect(orig.bias.grad).toBeNull();
      expectClose(orig.bias.toArray(), inp.bias.data, 0, 0, 'frozen bias');
    });
  }
});
