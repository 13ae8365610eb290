// clipGradNorm and the learning-rate schedules: parity with torch.nn.utils.clip_grad_norm_ and with
// Hugging Face's warm-up schedules run through torch's LambdaLR and AdamW
// (test/fixtures/training-utils.json, from test/fixtures/generate_training.py), then bad input.
import * as fs from 'fs';
import * as path from 'path';
import {
  AdamW, Adam, LambdaLR, Tensor, clipGradNorm, getConstantScheduleWithWarmup, getCosineScheduleWithWarmup,
  getLinearScheduleWithWarmup, tensor, zeros,
} from '../lib';
import { expectThrows } from './helpers/expect-throws';

interface FixTensor {
  shape: number[];
  data: number[];
}
interface ClipCase {
  name: string;
  maxNorm: number;
  grads: FixTensor[];
  norm: number;
  clipped: FixTensor[];
}
interface ScheduleCase {
  name: string;
  kind: 'linear' | 'cosine' | 'constant';
  options: { numWarmupSteps: number; numTrainingSteps?: number; numCycles?: number };
  lr: number;
  init: FixTensor[];
  grads: FixTensor[][];
  lrs: number[];
  params: FixTensor[];
}
const fixture = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'training-utils.json'), 'utf8')) as {
  clip: ClipCase[];
  schedules: ScheduleCase[];
};

const t = (f: FixTensor) => tensor(f.data, { shape: f.shape });
function maxRelDiff(got: ArrayLike<number>, want: number[]): number {
  let m = 0;
  for (let i = 0; i < want.length; i++) m = Math.max(m, Math.abs(got[i] - want[i]) / Math.max(Math.abs(want[i]), 1e-30));
  return m;
}

describe('clipGradNorm matches torch.nn.utils.clip_grad_norm_', () => {
  test.each(fixture.clip.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const params = c.grads.map((g) => zeros(g.shape).requiresGrad_(true));
    params.forEach((p, i) => {
      p.grad = t(c.grads[i]);
    });
    const norm = clipGradNorm(params, c.maxNorm);
    expect(norm.shape).toEqual([]);
    expect(Math.abs(norm.item() - c.norm) / c.norm).toBeLessThan(1e-6);
    params.forEach((p, i) => expect(maxRelDiff(p.grad!.toArray(), c.clipped[i].data)).toBeLessThan(1e-6));
    // Under the limit the gradients are untouched, bit for bit (the factor is exactly 1).
    if (c.norm + 1e-6 <= c.maxNorm) params.forEach((p, i) => expect(Array.from(p.grad!.toArray())).toEqual(Array.from(t(c.grads[i]).toArray())));
  });

  test('parameters without a gradient are skipped; none at all gives 0', () => {
    const a = zeros([2]).requiresGrad_(true);
    const b = zeros([2]).requiresGrad_(true);
    b.grad = tensor([3, 4]);
    expect(clipGradNorm([a, b], 1).item()).toBeCloseTo(5, 5);
    expect(Array.from(b.grad!.toArray()).map((v) => Math.round(v * 1e5) / 1e5)).toEqual([0.6, 0.8]);
    expect(a.grad).toBeNull();
    expect(clipGradNorm([a], 1).item()).toBe(0);
  });

  test('a non-finite norm: returned as it is, or refused with errorIfNonfinite before any change', () => {
    const a = zeros([2]).requiresGrad_(true);
    a.grad = tensor([NaN, 1]);
    expect(clipGradNorm([a], 1).item()).toBeNaN();
    const b = zeros([2]).requiresGrad_(true);
    b.grad = tensor([Infinity, 1]);
    expectThrows(() => clipGradNorm([b], 1, { errorIfNonfinite: true }), RangeError,
      /^clipGradNorm: the total norm of the gradients is Infinity, so they cannot be clipped; the gradients are unchanged$/);
    expect(Array.from(b.grad!.toArray())).toEqual([Infinity, 1]);
  });

  test('bad input names the argument', () => {
    const p = zeros([2]).requiresGrad_(true);
    p.grad = tensor([1, 1]);
    expectThrows(() => clipGradNorm(p as unknown as Tensor[], 1), TypeError, /^clipGradNorm: parameters must be an iterable of tensors/);
    expectThrows(() => clipGradNorm([p], 0), RangeError, /^clipGradNorm: maxNorm must be a number > 0, got 0$/);
    expectThrows(() => clipGradNorm([p], NaN), RangeError, /^clipGradNorm: maxNorm must be a finite number, got NaN$/);
    expectThrows(() => clipGradNorm([p, 3 as unknown as Tensor], 1), TypeError, /^clipGradNorm: parameters\[1\] must be a Tensor/);
    expectThrows(() => clipGradNorm([p], 1, { errorIfNonFinite: true } as never), TypeError, /unknown option "errorIfNonFinite"/);
    const q = zeros([2], { dtype: 'float64' }).requiresGrad_(true);
    q.grad = tensor([1, 1], { dtype: 'float64' });
    // Gradients of two dtypes are clipped together, as torch does: the norm in the promoted dtype.
    const n = clipGradNorm([p, q], 1);
    expect(n.dtype).toBe('float64');
    expect(n.item()).toBe(2);
    expect(p.grad!.dtype).toBe('float32');
    expect(Array.from(p.grad!.toArray())).toEqual(Array.from(new Float32Array([0.5 / (1 + 5e-7), 0.5 / (1 + 5e-7)])));
    const d = zeros([2]).requiresGrad_(true);
    d.dispose();
    expectThrows(() => clipGradNorm([d], 1), Error, /disposed/);
  });
});

describe('schedules match transformers\' formulas through torch\'s LambdaLR and AdamW', () => {
  test.each(fixture.schedules.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const params = c.init.map((f) => t(f).requiresGrad_(true));
    const opt = new AdamW(params, { lr: c.lr });
    const sched = c.kind === 'linear' ? getLinearScheduleWithWarmup(opt, c.options as { numWarmupSteps: number; numTrainingSteps: number })
      : c.kind === 'cosine' ? getCosineScheduleWithWarmup(opt, c.options as { numWarmupSteps: number; numTrainingSteps: number })
        : getConstantScheduleWithWarmup(opt, c.options);
    const lrs = [opt.paramGroups[0].lr];
    for (const gs of c.grads) {
      params.forEach((p, i) => {
        p.grad = t(gs[i]);
      });
      opt.step();
      sched.step();
      lrs.push(sched.getLastLr()[0]);
    }
    lrs.forEach((lr, i) => expect(Math.abs(lr - c.lrs[i])).toBeLessThanOrEqual(1e-15 * c.lr));
    expect(sched.lastStep).toBe(c.grads.length);
    params.forEach((p, i) => expect(maxRelDiff(p.toArray(), c.params[i].data)).toBeLessThan(2e-5));
  });
});

describe('LambdaLR', () => {
  const opt2 = () => new Adam([{ params: [zeros([1]).requiresGrad_(true)], lr: 0.1 }, { params: [zeros([1]).requiresGrad_(true)], lr: 0.2 }]);

  test('one function per group, stateDict round trip, resumed schedule continues', () => {
    const opt = opt2();
    const s = new LambdaLR(opt, [(k) => 1 / (k + 1), (k) => k]);
    expect(s.getLastLr()).toEqual([0.1, 0]);
    s.step();
    s.step();
    expect(s.getLastLr()).toEqual([0.1 / 3, 0.4]);
    const sd = s.stateDict();
    const other = opt2();
    const r = new LambdaLR(other, [(k) => 1 / (k + 1), (k) => k]);
    r.loadStateDict(sd);
    expect(r.lastStep).toBe(2);
    expect(r.getLastLr()).toEqual([0.1 / 3, 0.4]);
    r.step();
    s.step();
    expect(r.getLastLr()).toEqual(s.getLastLr());
  });

  test('bad input names the argument and changes nothing', () => {
    const opt = opt2();
    expectThrows(() => new LambdaLR({} as Adam, () => 1), TypeError, /^LambdaLR: optimizer must be an Adam or AdamW optimiser/);
    expectThrows(() => new LambdaLR(opt, [() => 1]), RangeError, /^LambdaLR: lrLambda must be one function per parameter group \(2\), got "1 functions"$/);
    expectThrows(() => new LambdaLR(opt, 3 as never), TypeError, /^LambdaLR: lrLambda must be a function \(step\) => factor, got 3$/);
    // The constructor sets step 0: a bad factor there is the constructor's error.
    expectThrows(() => new LambdaLR(opt, () => -1), RangeError, /^LambdaLR: the factor for group 0 at step 0 must be a finite number >= 0, got -1$/);
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([0.1, 0.2]);
    let bad = false;
    const s = new LambdaLR(opt, (k) => (bad ? NaN : k + 1));
    bad = true;
    expectThrows(() => s.step(), RangeError, /^LambdaLR\.step: the factor for group 0 at step 1 must be a finite number >= 0, got NaN$/);
    expect(s.lastStep).toBe(0);
    expect(s.getLastLr()).toEqual([0.1, 0.2]);
    expectThrows(() => s.loadStateDict({ lastStep: -1, baseLrs: [0.1, 0.2] }), RangeError, /stateDict\.lastStep must be a non-negative integer/);
    expectThrows(() => s.loadStateDict({ lastStep: 1, baseLrs: [0.1] }), RangeError, /stateDict\.baseLrs must be 2 learning rates/);
    expectThrows(() => s.loadStateDict({ lastStep: 1, baseLrs: [0.1, 0] }), RangeError, /stateDict\.baseLrs\[1\] must be a number > 0/);
    expectThrows(() => s.loadStateDict({ lastStep: 1, baseLrs: [0.5, 0.5] }), RangeError, /^LambdaLR\.loadStateDict: the factor for group 0 at step 1 must be a finite number >= 0, got NaN$/);
    expect(s.stateDict()).toEqual({ lastStep: 0, baseLrs: [0.1, 0.2] });
  });

  test('the warm-up schedules check their options', () => {
    const opt = opt2();
    expectThrows(() => getLinearScheduleWithWarmup(opt, { numWarmupSteps: 2 } as never), TypeError, /^getLinearScheduleWithWarmup: options\.numTrainingSteps must be an integer/);
    expectThrows(() => getLinearScheduleWithWarmup(opt, { numWarmupSteps: 11, numTrainingSteps: 10 }), RangeError, /numWarmupSteps must be at most numTrainingSteps \(10\), got 11/);
    expectThrows(() => getCosineScheduleWithWarmup(opt, { numTrainingSteps: 10, numCycles: 0 }), RangeError, /numCycles must be a number > 0, got 0/);
    expectThrows(() => getConstantScheduleWithWarmup(opt, { numWarmupSteps: -1 }), RangeError, /numWarmupSteps must be a non-negative integer/);
    expectThrows(() => getConstantScheduleWithWarmup(opt, { warmup: 1 } as never), TypeError, /unknown option "warmup"/);
    expectThrows(() => getCosineScheduleWithWarmup({} as Adam, { numTrainingSteps: 10 }), TypeError, /^getCosineScheduleWithWarmup: optimizer must be an Adam or AdamW optimiser/);
    expectThrows(() => getConstantScheduleWithWarmup(null as unknown as Adam), TypeError, /^getConstantScheduleWithWarmup: optimizer must be an Adam or AdamW optimiser/);
    expect(opt.paramGroups.map((g) => g.lr)).toEqual([0.1, 0.2]);
  });

  test('a schedule at lr 0 steps Adam (moments move, parameters do not)', () => {
    const p = tensor([1, 2]).requiresGrad_(true);
    const opt = new AdamW([p], { lr: 0.1 });
    getLinearScheduleWithWarmup(opt, { numWarmupSteps: 2, numTrainingSteps: 4 });
    expect(opt.paramGroups[0].lr).toBe(0);
    p.grad = tensor([1, 1]);
    opt.step();
    expect(Array.from(p.toArray())).toEqual([1, 2]);
    expect(opt.state.get(p)!.step).toBe(1);
    opt.paramGroups[0].lr = -1;
    expectThrows(() => opt.step(), RangeError, /^AdamW\.step: paramGroups\[0\]\.lr must be a number >= 0, got -1$/);
  });
});
