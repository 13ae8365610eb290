import { Adam, AdamW, Tensor, randn, tensor } from '../lib';

function setGrad(p: Tensor, g: Tensor): void {
  p.mul(g).sum().backward();
}

test('parameter groups: each group uses its own options, like separate optimisers', () => {
  const a1 = randn([3, 4]).requiresGrad_(true);
  const b1 = randn([5]).requiresGrad_(true);
  const a2 = a1.detach().clone().requiresGrad_(true);
  const b2 = b1.detach().clone().requiresGrad_(true);
  const grouped = new AdamW([{ params: [a1], lr: 0.1 }, { params: [b1], weightDecay: 0.5 }], { lr: 0.01 });
  const sepA = new AdamW([a2], { lr: 0.1 });
  const sepB = new AdamW([b2], { lr: 0.01, weightDecay: 0.5 });
  expect(grouped.paramGroups.map((g) => [g.lr, g.weightDecay])).toEqual([[0.1, 0.01], [0.01, 0.5]]);
  for (let s = 0; s < 3; s++) {
    const ga = randn([3, 4]);
    const gb = randn([5]);
    setGrad(a1, ga);
    setGrad(b1, gb);
    setGrad(a2, ga);
    setGrad(b2, gb);
    grouped.step();
    sepA.step();
    sepB.step();
    grouped.zeroGrad();
    sepA.zeroGrad();
    sepB.zeroGrad();
  }
  expect(Array.from(a1.toArray())).toEqual(Array.from(a2.toArray()));
  expect(Array.from(b1.toArray())).toEqual(Array.from(b2.toArray()));
});

test('changing paramGroups[i].lr between steps takes effect (a schedule)', () => {
  const p = tensor([1, 1]).requiresGrad_(true);
  const opt = new Adam([p], { lr: 0.1 });
  setGrad(p, tensor([1, -1]));
  opt.step();
  // Adam's first step moves each coordinate by lr (|m̂ / sqrt(v̂)| = 1).
  expect(Array.from(p.toArray()).map((v) => +v.toFixed(5))).toEqual([0.9, 1.1]);
  opt.zeroGrad();
  // lr 0 (where warm-up starts and decay ends) is a step that moves nothing; a negative lr is refused.
  opt.paramGroups[0].lr = -0.1;
  setGrad(p, tensor([1, -1]));
  expect(() => opt.step()).toThrow(RangeError);
  opt.paramGroups[0].lr = 0;
  opt.step();
  expect(Array.from(p.toArray()).map((v) => +v.toFixed(5))).toEqual([0.9, 1.1]);
  expect(opt.state.get(p)!.step).toBe(2);
  opt.paramGroups[0].lr = 0.1;
  opt.step();
  expect(Array.from(p.toArray()).map((v) => +v.toFixed(5))).toEqual([0.8, 1.2]);
});

test('parameters without a gradient are skipped and keep their step count', () => {
  const p = randn([2]).requiresGrad_(true);
  const q = randn([2]).requiresGrad_(true);
  const q0 = Array.from(q.toArray());
  const opt = new Adam([p, q]);
  setGrad(p, tensor([1, 2]));
  opt.step();
  expect(opt.state.get(p)!.step).toBe(1);
  expect(opt.state.has(q)).toBe(false);
  expect(Array.from(q.toArray())).toEqual(q0);
});

test('zeroGrad(false) keeps gradient tensors and zeroes them', () => {
  const p = randn([3]).requiresGrad_(true);
  const opt = new Adam([p]);
  setGrad(p, tensor([1, 2, 3]));
  const g = p.grad!;
  opt.zeroGrad(false);
  expect(p.grad).toBe(g);
  expect(Array.from(g.toArray())).toEqual([0, 0, 0]);
  opt.zeroGrad();
  expect(p.grad).toBeNull();
  expect(g.isDisposed).toBe(true);
});

test('a parameter that is not a leaf is rejected', () => {
  const p = randn([2]).requiresGrad_(true);
  expect(() => new Adam([p.mul(2)])).toThrow(/not a leaf/);
});

test('stateDict/loadStateDict: resuming from a saved state continues exactly like an uninterrupted run', () => {
  const grads = Array.from({ length: 6 }, () => [randn([3, 2]), randn([4])]);
  const init = [randn([3, 2]), randn([4])];
  const run = (resumeAt: number | null) => {
    let ps = init.map((t) => t.clone().requiresGrad_(true));
    let opt = new AdamW(ps, { lr: 0.05, amsgrad: true });
    for (let s = 0; s < grads.length; s++) {
      if (s === resumeAt) {
        // A fresh optimiser over fresh parameters, restored from the saved state.
        const sd = opt.stateDict();
        const values = ps.map((p) => p.detach().clone());
        ps = values.map((v) => v.requiresGrad_(true));
        opt = new AdamW(ps, { lr: 0.05, amsgrad: true });
        opt.loadStateDict(sd);
      }
      ps.forEach((p, i) => setGrad(p, grads[s][i]));
      opt.step();
      opt.zeroGrad();
    }
    return ps.map((p) => Array.from(p.toArray()));
  };
  expect(run(3)).toEqual(run(null));
});

test('loadStateDict rejects a state for other parameters', () => {
  const a = new Adam([randn([2]).requiresGrad_(true)]);
  const p = randn([3]).requiresGrad_(true);
  const b = new Adam([p]);
  setGrad(p, randn([3]));
  b.step();
  expect(() => a.loadStateDict(b.stateDict())).toThrow(/shape/);
  expect(() => a.loadStateDict({} as never)).toThrow(TypeError);
});
