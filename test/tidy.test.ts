// tidy(fn) and keep(t): what a scope frees and what it must not.
import { Adam, F, Linear, LoRALinear, Module, Tensor, keep, manualSeed, nativeMemoryBytes, randn, tensor, tidy, zeros } from '../lib';
import { expectThrows } from './helpers/expect-throws';

const live = () => nativeMemoryBytes();

describe('tidy', () => {
  test('frees every tensor made inside except the returned one', () => {
    const x = randn([64, 64]);
    const before = live();
    let inner: Tensor[] = [];
    const y = tidy(() => {
      const a = x.mul(2);
      const b = a.add(1).relu();
      inner = [a, b];
      return b.sum();
    });
    expect(inner.every((t) => t.isDisposed)).toBe(true);
    expect(y.isDisposed).toBe(false);
    expect(x.isDisposed).toBe(false);
    // Only the float32 returned is left (the garbage collector may free older tensors meanwhile).
    expect(live() - before).toBeLessThanOrEqual(4);
    expect(y.item()).toBeCloseTo(Array.from(x.toArray()).reduce((s, v) => s + Math.max(0, 2 * v + 1), 0), 1);
  });

  test('returned arrays, objects, Maps, Sets and views keep what they hold', () => {
    const made: Tensor[] = [];
    const out = tidy(() => {
      const t = (n: number) => {
        const z = zeros([n]).add(n);
        made.push(z);
        return z;
      };
      const dropped = t(1);
      return { list: [t(2), { deep: t(3) }], map: new Map([['k', t(4)]]), set: new Set([t(5)]), view: t(6).reshape(2, 3), dropped: dropped.sum() };
    });
    expect(made[0].isDisposed).toBe(true); // only its sum was returned
    expect(out.dropped.item()).toBe(1);
    expect(out.list[0] as Tensor).not.toHaveProperty('isDisposed', true);
    expect(((out.list[1] as { deep: Tensor }).deep).toArray()).toEqual(new Float32Array([3, 3, 3]));
    expect(out.map.get('k')!.toArray()).toEqual(new Float32Array([4, 4, 4, 4]));
    expect([...out.set][0].numel).toBe(5);
    expect(out.view.shape).toEqual([2, 3]);
    expect(made[5].isDisposed).toBe(false); // shares the returned view's storage
  });

  test('a returned Module keeps its parameters and buffers', () => {
    class Net extends Module {
      lin = new Linear(4, 3);
      forward(x: Tensor) {
        return this.lin.forward(x);
      }
    }
    const net = tidy(() => {
      const n = new Net();
      n.lin.requiresGrad_(false); // frozen: not kept as a parameter, only as the module's
      randn([100]); // garbage
      return n;
    });
    expect(net.lin.weight.isDisposed).toBe(false);
    expect(net.forward(randn([2, 4])).shape).toEqual([2, 3]);
  });

  test('parameters, gradients and optimiser state survive a training step inside tidy', () => {
    manualSeed(0);
    const l = new LoRALinear(new Linear(8, 8), { r: 2, alpha: 4 });
    const opt = new Adam([l.A!, l.B!], { lr: 1e-2 });
    const x = randn([16, 8]);
    const y = randn([16, 8]);
    const losses: number[] = [];
    const step = () => tidy(() => {
      opt.zeroGrad();
      const loss = F.mseLoss(l.forward(x), y);
      loss.backward();
      opt.step();
      return loss.item();
    });
    losses.push(step());
    expect(l.A!.grad).not.toBeNull();
    opt.zeroGrad();
    // After the first step the optimiser holds its moments; later steps may add nothing. (The
    // garbage collector can only lower the count, by finalizing earlier tests' tensors.)
    const afterFirst = live();
    for (let i = 1; i < 30; i++) losses.push(step());
    expect(losses[29]).toBeLessThan(losses[0]);
    expect(l.A!.isDisposed || l.B!.isDisposed).toBe(false);
    const st = opt.state.get(l.B!)!;
    expect(st.expAvg.isDisposed || st.expAvgSq.isDisposed).toBe(false);
    expect(st.step).toBe(30);
    opt.zeroGrad();
    expect(live()).toBeLessThanOrEqual(afterFirst);
  });

  test('keep() exempts a tensor; nested scopes hand what they return to the outer one', () => {
    let kept: Tensor | null = null;
    let innerResult: Tensor | null = null;
    const outer = tidy(() => {
      kept = keep(randn([3]));
      innerResult = tidy(() => randn([3]).mul(2));
      expect(innerResult.isDisposed).toBe(false);
      return 1;
    });
    expect(outer).toBe(1);
    expect(kept!.isDisposed).toBe(false);
    expect(innerResult!.isDisposed).toBe(true); // the outer scope did not return it
  });

  test('a throw inside frees what was made and passes the error on', () => {
    let made: Tensor | null = null;
    const before = live();
    expect(() => tidy(() => {
      made = randn([10]);
      throw new Error('boom');
    })).toThrow('boom');
    expect(made!.isDisposed).toBe(true);
    expect(live()).toBeLessThanOrEqual(before);
  });

  test('refuses an async function and a non-function', async () => {
    let made: Tensor | null = null;
    expectThrows(() => tidy((async () => {
      made = tensor([1]);
    }) as () => unknown), TypeError, /tidy: fn returned a Promise/);
    expect(made!.isDisposed).toBe(true);
    expectThrows(() => tidy(42 as unknown as () => void), TypeError, /tidy: fn must be a function, got 42/);
    expectThrows(() => keep([] as unknown as Tensor), TypeError, /keep: t must be a Tensor/);
  });
});
