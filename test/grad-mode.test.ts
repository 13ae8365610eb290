// Grad mode (noGrad, enableGrad, setGradEnabled) and backward's retainGraph, as torch's
// no_grad / enable_grad / set_grad_enabled and backward(retain_graph=True).
import {
  Embedding, F, Linear, RMSNorm, enableGrad, isGradEnabled, noGrad, randn, setGradEnabled, tensor,
} from '../lib';

const values = (t: { toArray(): ArrayLike<number> }) => Array.from(t.toArray());

describe('grad mode', () => {
  afterEach(() => setGradEnabled(true));

  test('enableGrad records a graph inside noGrad, and noGrad is restored after', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    noGrad(() => {
      expect(isGradEnabled()).toBe(false);
      const y = enableGrad(() => {
        expect(isGradEnabled()).toBe(true);
        return x.mul(x).sum();
      });
      expect(isGradEnabled()).toBe(false);
      expect(y.requiresGrad).toBe(true);
      expect(y.gradFn).toBe('SumBackward');
      expect(x.mul(x).requiresGrad).toBe(false);
      y.backward();
    });
    expect(values(x.grad!)).toEqual([2, 4]);
  });

  test('setGradEnabled(false) turns recording off until turned on again', () => {
    const x = tensor([3], { requiresGrad: true });
    setGradEnabled(false);
    expect(isGradEnabled()).toBe(false);
    expect(x.mul(2).requiresGrad).toBe(false);
    setGradEnabled(true);
    expect(x.mul(2).requiresGrad).toBe(true);
  });

  test('setGradEnabled(mode, fn) holds only while fn runs, also when fn throws', () => {
    const x = tensor([3], { requiresGrad: true });
    expect(setGradEnabled(false, () => x.mul(2)).requiresGrad).toBe(false);
    expect(isGradEnabled()).toBe(true);
    expect(() => setGradEnabled(false, () => { throw new Error('inside'); })).toThrow('inside');
    expect(isGradEnabled()).toBe(true);
    expect(noGrad(() => setGradEnabled(true, () => x.mul(2))).requiresGrad).toBe(true);
  });

  test('bad arguments are refused with the standard message', () => {
    expect(() => setGradEnabled(1 as unknown as boolean)).toThrow(/^setGradEnabled: mode must be a boolean, got 1$/);
    expect(() => enableGrad(null as unknown as () => void)).toThrow(/^enableGrad: fn must be a function, got null$/);
    expect(() => setGradEnabled(true, 'x' as unknown as () => void)).toThrow(/^setGradEnabled: fn must be a function, got "x"$/);
    expect(() => enableGrad(async () => 1)).toThrow(/^enableGrad: fn is asynchronous/);
    expect(isGradEnabled()).toBe(true);
  });
});

describe('backward({ retainGraph })', () => {
  test('a second backward through a released graph fails as in torch', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    const y = x.mul(x).sum();
    y.backward();
    expect(() => y.backward()).toThrow(/^Tensor\.backward: trying to backward through the graph a second time .*\{ retainGraph: true \}/);
  });

  test('with retainGraph the graph is walked again and gradients add up', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    const y = x.mul(x).sum();
    y.backward({ retainGraph: true });
    expect(values(x.grad!)).toEqual([2, 4]);
    y.backward({ retainGraph: true });
    expect(values(x.grad!)).toEqual([4, 8]);
    y.backward(); // releases it
    expect(values(x.grad!)).toEqual([6, 12]);
    expect(() => y.backward()).toThrow(/second time/);
  });

  test('backward(grad, { retainGraph }) on a non-scalar, the caller keeps its gradient', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    const y = x.mul(3);
    const g = tensor([1, 10]);
    y.backward(g, { retainGraph: true });
    y.backward(g);
    expect(values(x.grad!)).toEqual([6, 60]);
    expect(values(g)).toEqual([1, 10]);
  });

  test('ops that keep buffers for backward (linear, embedding, RMSNorm, cross-entropy) backpropagate twice', () => {
    const emb = new Embedding(7, 4, { dtype: 'float64' });
    const norm = new RMSNorm(4, { dtype: 'float64' });
    const lin = new Linear(4, 7, { dtype: 'float64' });
    const ids = tensor([[1, 3, 3], [0, 6, 2]], { dtype: 'int32' });
    const run = () => F.crossEntropy(lin.forward(norm.forward(emb.forward(ids))).softmax(-1).add(0.1).log().reshape(6, 7), [1, 2, 3, 4, 5, 6]);
    const loss = run();
    loss.backward({ retainGraph: true });
    const once = [emb.weight, norm.weight, lin.weight, lin.bias!].map((p) => values(p.grad!));
    loss.backward({ retainGraph: true });
    [emb.weight, norm.weight, lin.weight, lin.bias!].forEach((p, i) => {
      const twice = values(p.grad!);
      twice.forEach((v, j) => expect(v).toBeCloseTo(2 * once[i][j], 12));
    });
  });

  test('bad options are refused', () => {
    const x = randn([2], { requiresGrad: true });
    const y = x.sum();
    expect(() => y.backward({ retainGraph: 1 as unknown as boolean })).toThrow(/^Tensor\.backward: options\.retainGraph must be a boolean, got 1$/);
    expect(() => y.backward({ retain_graph: true } as unknown as { retainGraph: boolean })).toThrow(/^Tensor\.backward: unknown option "retain_graph"/);
    expect(() => y.backward(undefined, 'yes' as unknown as { retainGraph: boolean })).toThrow(/^Tensor\.backward: options must be an object, got "yes"$/);
    y.backward(); // nothing was consumed by the refused calls
    expect(x.grad).not.toBeNull();
  });
});
