// Finite-difference gradient checks (float64) for every differentiable op of
// the public API: elementwise ops with broadcasting, activations, matmul,
// reductions, shape ops, F.linear, the losses, LoRALinear (incl. dropout) and a
// composed graph. See test/helpers/gradcheck.ts for the method.
import { Tensor, tensor, manualSeed, noGrad, Linear, LoRALinear, F } from '../lib';
import { gradcheck, t64, randnArray } from './helpers/gradcheck';

type Shape = readonly number[];

/** Values kept at least `margin` away from 0 (for relu kinks and divisors). */
const awayFromZero = (margin: number) => (v: number) => (v >= 0 ? 1 : -1) * (margin + Math.abs(v));
const positive = (v: number) => 0.2 + Math.abs(v);

const fmt = (s: Shape) => `[${s.join(',')}]`;

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

// ------------------------------------------------------------ elementwise

type BinOp = 'add' | 'sub' | 'mul' | 'div';
const BIN_OPS: BinOp[] = ['add', 'sub', 'mul', 'div'];
const apply = (op: BinOp, a: Tensor, b: Tensor | number): Tensor => a[op](b);

const BIN_SHAPES: [string, Shape, Shape][] = [
  ['equal shapes', [2, 3], [2, 3]],
  ['[3,1] x [1,4]', [3, 1], [1, 4]],
  ['[2,3,4] x [4]', [2, 3, 4], [4]],
  ['[4] x [2,3,4]', [4], [2, 3, 4]],
  ['[2,1,4] x [3,1]', [2, 1, 4], [3, 1]],
  ['0-d x [2,3]', [], [2, 3]],
  ['[2,3] x 0-d', [2, 3], []],
];

describe('binary ops', () => {
  const cases = BIN_OPS.flatMap((op) => BIN_SHAPES.map(([name, sa, sb]) => [op, name, sa, sb] as const));
  test.each(cases)('%s: %s', (op, _name, sa, sb) => {
    const a = t64(sa, 10);
    const b = t64(sb, 11, { map: op === 'div' ? awayFromZero(0.5) : undefined });
    gradcheck((x, y) => apply(op, x, y), [a, b]);
  });

  test.each(BIN_OPS)('%s: only the left operand requires grad (right grad stays null)', (op) => {
    const a = t64([3, 4], 12);
    const b = t64([4], 13, { requiresGrad: false, map: awayFromZero(0.5) });
    gradcheck((x, y) => apply(op, x, y), [a, b]);
    expect(b.grad).toBeNull();
  });

  test.each(BIN_OPS)('%s: only the right operand requires grad (left grad stays null)', (op) => {
    const a = t64([3, 1], 14, { requiresGrad: false });
    const b = t64([3, 4], 15, { map: awayFromZero(0.5) });
    gradcheck((x, y) => apply(op, x, y), [a, b]);
    expect(a.grad).toBeNull();
  });

  test.each([
    ['add', 2.5],
    ['sub', 1.5],
    ['mul', -1.7],
    ['div', 3.2],
    ['mul', 1],
    ['div', -0.4],
  ] as [BinOp, number][])('%s with a scalar number operand %p', (op, s) => {
    gradcheck((x) => apply(op, x, s), [t64([2, 3], 16)]);
  });

  test('same tensor on both sides (x * x, x / x, x - x + x)', () => {
    const x = t64([5], 17, { map: awayFromZero(0.5) });
    gradcheck((a) => a.mul(a), [x]);
    gradcheck((a) => a.div(a).add(a.mul(a)), [x]);
    gradcheck((a) => a.sub(a).add(a), [x]);
  });
});

describe('unary ops', () => {
  const cases: [string, (x: Tensor) => Tensor, ((v: number) => number) | undefined][] = [
    ['neg', (x) => x.neg(), undefined],
    ['relu (away from 0)', (x) => x.relu(), awayFromZero(0.05)],
    ['F.relu (away from 0)', (x) => F.relu(x), awayFromZero(0.05)],
    ["gelu approximate 'none'", (x) => x.gelu('none'), undefined],
    ["gelu approximate 'tanh'", (x) => x.gelu('tanh'), undefined],
    ['gelu default', (x) => x.gelu(), undefined],
    ["F.gelu 'tanh'", (x) => F.gelu(x, 'tanh'), undefined],
    ['silu', (x) => x.silu(), undefined],
    ['F.silu', (x) => F.silu(x), undefined],
    ['exp', (x) => x.exp(), undefined],
    ['log (positive inputs)', (x) => x.log(), positive],
    ['sqrt (positive inputs)', (x) => x.sqrt(), positive],
    ['abs (away from 0)', (x) => x.abs(), awayFromZero(0.05)],
  ];
  test.each(cases)('%s', (_name, fn, map) => {
    gradcheck(fn, [t64([3, 4], 20, { map })]);
  });

  test('gelu/silu at large |x| (saturated tails)', () => {
    const x = t64([6], 21, { map: (v) => v * 4 });
    gradcheck((a) => a.gelu('none'), [x]);
    gradcheck((a) => a.gelu('tanh'), [x]);
    gradcheck((a) => a.silu(), [x]);
  });
});

// ------------------------------------------------------------------ matmul

describe('matmul', () => {
  const cases: [string, Shape, Shape][] = [
    ['1-D . 1-D', [4], [4]],
    ['2-D . 1-D', [3, 4], [4]],
    ['1-D . 2-D', [4], [4, 5]],
    ['2-D . 2-D', [3, 4], [4, 5]],
    ['[2,3,4] . [4,5]', [2, 3, 4], [4, 5]],
    ['[2,3,4] . [2,4,5]', [2, 3, 4], [2, 4, 5]],
    ['[2,1,3,4] . [5,4,2] (batch broadcast)', [2, 1, 3, 4], [5, 4, 2]],
    ['[3,4] . [2,4,5] (2-D broadcast over batch)', [3, 4], [2, 4, 5]],
    ['[2,3,4] . [4] (batched . 1-D)', [2, 3, 4], [4]],
    ['[4] . [2,4,5] (1-D . batched)', [4], [2, 4, 5]],
    ['[1,3,4] . [2,4,5] (size-1 batch)', [1, 3, 4], [2, 4, 5]],
  ];
  test.each(cases)('%s', (_name, sa, sb) => {
    gradcheck((a, b) => a.matmul(b), [t64(sa, 30), t64(sb, 31)]);
  });

  test('only one side requires grad', () => {
    const a = t64([2, 3, 4], 32);
    const b = t64([4, 5], 33, { requiresGrad: false });
    gradcheck((x, y) => x.matmul(y), [a, b]);
    expect(b.grad).toBeNull();
    const c = t64([3, 4], 34, { requiresGrad: false });
    const d = t64([2, 4, 5], 35);
    gradcheck((x, y) => x.matmul(y), [c, d]);
    expect(c.grad).toBeNull();
  });
});

// -------------------------------------------------------------- reductions

describe('reductions', () => {
  const cases: [string, number | number[] | undefined, boolean][] = [
    ['all', undefined, false],
    ['dim 1', 1, false],
    ['dim -1', -1, false],
    ['dim -3', -3, false],
    ['dims [0, 2]', [0, 2], false],
    ['dims [-1, 0]', [-1, 0], false],
    ['dim 1 keepdim', 1, true],
    ['dims [0, 2] keepdim', [0, 2], true],
    ['all keepdim', undefined, true],
  ];
  test.each(cases)('sum %s', (_name, dim, keepdim) => {
    gradcheck((x) => x.sum(dim, keepdim), [t64([2, 3, 4], 40)]);
  });
  test.each(cases)('mean %s', (_name, dim, keepdim) => {
    gradcheck((x) => x.mean(dim, keepdim), [t64([2, 3, 4], 41)]);
  });
  test('sum of a 1-D tensor over dim 0 and mean of a 0-d tensor', () => {
    gradcheck((x) => x.sum(0), [t64([5], 42)]);
    gradcheck((x) => x.mean(), [t64([], 43)]);
  });
});

// -------------------------------------------------------------- shape ops

describe('shape ops', () => {
  test.each([
    ['[4, -1]', [4, -1]],
    ['[-1]', [-1]],
    ['[2, -1, 2]', [2, -1, 2]],
    ['[24]', [24]],
    ['[1, 2, 12]', [1, 2, 12]],
  ] as [string, number[]][])('reshape to %s', (_name, shape) => {
    gradcheck((x) => x.reshape(shape), [t64([2, 3, 4], 50)]);
  });

  test('reshape with varargs and view', () => {
    gradcheck((x) => x.reshape(3, -1), [t64([2, 3, 4], 51)]);
    gradcheck((x) => x.view(-1, 6), [t64([2, 3, 4], 52)]);
  });

  test.each([
    [0, 2],
    [1, 2],
    [-1, -2],
    [0, 0],
  ])('transpose(%p, %p)', (d0, d1) => {
    gradcheck((x) => x.transpose(d0, d1), [t64([2, 3, 4], 53)]);
  });

  test.each([
    [[2, 0, 1]],
    [[1, 2, 0]],
    [[0, 1, 2]],
    [[-1, 0, 1]],
  ])('permute(%p)', (perm) => {
    gradcheck((x) => x.permute(perm), [t64([2, 3, 4], 54)]);
  });

  test('permute with 4 dims (varargs)', () => {
    gradcheck((x) => x.permute(3, 1, 0, 2), [t64([2, 3, 2, 4], 55)]);
  });

  test('t()', () => {
    gradcheck((x) => x.t(), [t64([3, 5], 56)]);
  });

  test('clone', () => {
    gradcheck((x) => x.clone(), [t64([2, 3], 57)]);
    gradcheck((x) => x.clone().mul(x), [t64([2, 3], 58)]);
  });

  test('reshape then op on the same storage (x.reshape(...) * x.reshape(...).t())', () => {
    gradcheck((x) => x.reshape(3, 3).mul(x.reshape(3, 3).t()), [t64([9], 59)]);
  });
});

// --------------------------------------------------------------- F.linear

describe('F.linear', () => {
  const cases: [string, Shape, boolean][] = [];
  for (const xs of [[4], [3, 4], [2, 3, 4]] as Shape[]) {
    for (const bias of [true, false]) cases.push([`x ${fmt(xs)} ${bias ? 'with' : 'without'} bias`, xs, bias]);
  }
  test.each(cases)('%s', (_name, xs, bias) => {
    const x = t64(xs, 60);
    const W = t64([5, 4], 61);
    if (bias) {
      gradcheck((a, w, b) => F.linear(a, w, b), [x, W, t64([5], 62)]);
    } else {
      gradcheck((a, w) => F.linear(a, w), [x, W]);
    }
  });

  test('x without grad: x.grad stays null; W and b checked', () => {
    const x = t64([3, 4], 63, { requiresGrad: false });
    gradcheck((a, w, b) => F.linear(a, w, b), [x, t64([5, 4], 64), t64([5], 65)]);
    expect(x.grad).toBeNull();
  });

  test('frozen weight and bias: only x gets a grad', () => {
    const W = t64([5, 4], 66, { requiresGrad: false });
    const b = t64([5], 67, { requiresGrad: false });
    gradcheck((a, w, bb) => F.linear(a, w, bb), [t64([2, 3, 4], 68), W, b]);
    expect(W.grad).toBeNull();
    expect(b.grad).toBeNull();
  });

  test('Linear module forward (float64)', () => {
    manualSeed(69);
    const lin = new Linear(4, 3, { dtype: 'float64' });
    gradcheck((x, w, b) => {
      if (w !== lin.weight || b !== lin.bias) throw new Error('not the module tensors');
      return lin.forward(x);
    }, [t64([2, 4], 70), lin.weight, lin.bias as Tensor]);
  });
});

// ----------------------------------------------------------------- losses

describe('F.mseLoss', () => {
  test.each(['mean', 'sum', 'none'] as const)('reduction %s (grads w.r.t. input and target)', (reduction) => {
    gradcheck((a, t) => F.mseLoss(a, t, { reduction }), [t64([3, 4], 80), t64([3, 4], 81)]);
  });
  test('default reduction, target without grad', () => {
    const target = t64([2, 3, 2], 82, { requiresGrad: false });
    gradcheck((a, t) => F.mseLoss(a, t), [t64([2, 3, 2], 83), target]);
    expect(target.grad).toBeNull();
  });
});

describe('F.crossEntropy', () => {
  const targets2d = [1, 4, 0, 2];
  const withIgnored = [1, -100, 3, 0];
  const cases: [string, Shape, number[] | number, { reduction?: 'mean' | 'sum' | 'none'; labelSmoothing?: number; ignoreIndex?: number }][] = [];
  for (const reduction of ['mean', 'sum', 'none'] as const) {
    cases.push([`[N,C] ${reduction}`, [4, 5], targets2d, { reduction }]);
    cases.push([`[N,C] ${reduction} with an ignored target (-100)`, [4, 5], withIgnored, { reduction }]);
    cases.push([`[N,C] ${reduction} labelSmoothing 0.1`, [4, 5], targets2d, { reduction, labelSmoothing: 0.1 }]);
    cases.push([`[N,C] ${reduction} labelSmoothing 0.1 + ignored`, [4, 5], withIgnored, { reduction, labelSmoothing: 0.1 }]);
    cases.push([`[C] ${reduction} (number target)`, [5], 3, { reduction }]);
    cases.push([`[C] ${reduction} labelSmoothing 0.1 (array target)`, [5], [2], { reduction, labelSmoothing: 0.1 }]);
  }
  cases.push(['[N,C] default options', [3, 6], [5, 0, 2], {}]);
  cases.push(['[N,C] custom ignoreIndex 2', [4, 5], [2, 1, 2, 4], { ignoreIndex: 2 }]);
  cases.push(['[N,C] labelSmoothing 1.0', [3, 4], [0, 3, 1], { labelSmoothing: 1 }]);

  test.each(cases)('%s', (_name, shape, target, options) => {
    gradcheck((logits) => F.crossEntropy(logits, target, options), [t64(shape, 90, { map: (v) => 2 * v })]);
  });

  test('int32 tensor targets', () => {
    const target = tensor([3, 0, -100], { dtype: 'int32' });
    gradcheck((logits) => F.crossEntropy(logits, target, { labelSmoothing: 0.1 }), [t64([3, 4], 91)]);
  });
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

/** fn for gradcheck over [x, W, b?, A, B]: asserts the inputs are the module's own tensors. */
function loraFn(s: LoraSetup, bias: boolean, seedBeforeForward?: number) {
  return (...ins: Tensor[]): Tensor => {
    const [x, W] = ins;
    const [b, A, B] = bias ? ins.slice(2) : [null, ...ins.slice(2)];
    if (W !== s.lin.weight || A !== s.lora.A || B !== s.lora.B || (bias && b !== s.lin.bias)) {
      throw new Error('loraFn: inputs are not the module tensors');
    }
    if (seedBeforeForward !== undefined) manualSeed(seedBeforeForward);
    return s.lora.forward(x);
  };
}

function loraInputs(s: LoraSetup, x: Tensor, bias: boolean): Tensor[] {
  const ins = [x, s.lin.weight];
  if (bias) ins.push(s.lin.bias as Tensor);
  ins.push(s.lora.A as Tensor, s.lora.B as Tensor);
  return ins;
}

describe('LoRALinear', () => {
  const IN = 5;
  const OUT = 4;
  const cases: [string, number, boolean, Shape][] = [];
  for (const r of [1, 2, 3, 8]) {
    for (const bias of [true, false]) {
      for (const lead of [[5], [2, 3], [2, 2, 3]] as Shape[]) {
        cases.push([`r=${r} ${bias ? 'bias' : 'no bias'} x ${fmt([...lead, IN])}`, r, bias, lead]);
      }
    }
  }

  test.each(cases)('frozen base: dx, dA, dB for %s (W, b grads stay null)', (_name, r, bias, lead) => {
    const s = makeLora(IN, OUT, { r, bias, seed: 100 + r });
    const x = t64([...lead, IN], 200 + r);
    const res = gradcheck(loraFn(s, bias), loraInputs(s, x, bias));
    expect(res.checked).toBe(x.numel + r * IN + OUT * r);
    expect(s.lin.weight.grad).toBeNull();
    if (s.lin.bias) expect(s.lin.bias.grad).toBeNull();
  });

  test('1-D x [in]', () => {
    const s = makeLora(IN, OUT, { r: 2, bias: true, seed: 110 });
    gradcheck(loraFn(s, true), loraInputs(s, t64([IN], 210), true));
  });

  test('x without grad: only dA, dB', () => {
    const s = makeLora(IN, OUT, { r: 4, bias: true, seed: 111 });
    const x = t64([3, IN], 211, { requiresGrad: false });
    gradcheck(loraFn(s, true), loraInputs(s, x, true));
    expect(x.grad).toBeNull();
  });

  test.each([
    ['r=1 bias', 1, true],
    ['r=4 bias', 4, true],
    ['r=3 no bias', 3, false],
    ['r=8 bias', 8, true],
  ] as [string, number, boolean][])('unfrozen base weight: dx, dW, db, dA, dB (%s)', (_name, r, bias) => {
    const s = makeLora(IN, OUT, { r, bias, seed: 120 + r });
    s.lin.weight.requiresGrad_(true);
    if (s.lin.bias) s.lin.bias.requiresGrad_(true);
    const x = t64([2, 3, IN], 220 + r);
    const res = gradcheck(loraFn(s, bias), loraInputs(s, x, bias));
    expect(res.checked).toBe(x.numel + OUT * IN + (bias ? OUT : 0) + r * IN + OUT * r);
  });

  test('unfrozen weight only (bias frozen): db stays null', () => {
    const s = makeLora(IN, OUT, { r: 2, bias: true, seed: 130 });
    s.lin.weight.requiresGrad_(true);
    gradcheck(loraFn(s, true), loraInputs(s, t64([4, IN], 230), true));
    expect(s.lin.bias!.grad).toBeNull();
  });

  test('frozen adapter, only x requires grad', () => {
    const s = makeLora(IN, OUT, { r: 2, bias: true, seed: 131 });
    s.lora.A!.requiresGrad_(false);
    s.lora.B!.requiresGrad_(false);
    gradcheck(loraFn(s, true), loraInputs(s, t64([4, IN], 231), true));
    expect(s.lora.A!.grad).toBeNull();
    expect(s.lora.B!.grad).toBeNull();
  });

  test('useRslora scaling', () => {
    const s = makeLora(IN, OUT, { r: 4, alpha: 3, bias: true, useRslora: true, seed: 132 });
    expect(s.lora.scale).toBeCloseTo(3 / 2, 12);
    gradcheck(loraFn(s, true), loraInputs(s, t64([2, 3, IN], 232), true));
  });

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

    test.each([
      ['r=1 bias x [5,in]', 1, true, [5]],
      ['r=4 bias x [2,3,in]', 4, true, [2, 3]],
      ['r=2 no bias x [2,2,3,in]', 2, false, [2, 2, 3]],
      ['r=8 bias x [4,in]', 8, true, [4]],
    ] as [string, number, boolean, number[]][])('dx, dA, dB (%s)', (_name, r, bias, lead) => {
      const s = makeLora(IN, OUT, { r, bias, dropout: 0.3, seed: 150 + r });
      gradcheck(loraFn(s, bias, SEED), loraInputs(s, t64([...lead, IN], 250 + r), bias));
    });

    test('unfrozen base: dx, dW, db, dA, dB', () => {
      const s = makeLora(IN, OUT, { r: 3, bias: true, dropout: 0.3, seed: 160 });
      s.lin.weight.requiresGrad_(true);
      s.lin.bias!.requiresGrad_(true);
      gradcheck(loraFn(s, true, SEED), loraInputs(s, t64([2, 3, IN], 260), true));
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
