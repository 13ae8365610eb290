// Printing (tensors and module trees), the containers, Dropout, LayerNorm and Embedding's
// options against PyTorch 1.13 (test/fixtures/api-modules.json, from generate_api.py).
// The ops' gradient checks, CPU/CUDA parity and bad inputs are in the op registry (test/ops/).
import * as fs from 'fs';
import * as path from 'path';
import { inspect } from 'util';
import {
  LoRAEmbedding,
  Dropout, Embedding, F, GELU, Identity, LayerNorm, Linear, LoRALinear, Module, ModuleDict, ModuleList, ReLU, Sequential, SiLU,
  Tensor, cuda, manualSeed, noGrad, ones, randn, tensor, zeros,
} from '../lib';
import type { DType } from '../lib';

interface TJ {
  shape: number[];
  data: (number | string)[];
}
const fixtures = JSON.parse(fs.readFileSync(path.join(__dirname, 'fixtures', 'api-modules.json'), 'utf8'));

const num = (v: number | string): number => (typeof v === 'number' ? v : v === 'nan' ? NaN : v === 'inf' ? Infinity : -Infinity);
const fromJ = (j: TJ, dtype: DType = 'float64', requiresGrad = false): Tensor =>
  tensor(j.data.map(num), { shape: j.shape, dtype, requiresGrad });
const values = (t: Tensor): number[] => Array.from(t.toArray());

function expectClose(got: Tensor, want: TJ, tol: number): void {
  expect(got.shape).toEqual(want.shape);
  const g = values(got);
  want.data.map(num).forEach((w, i) => {
    if (Math.abs(g[i] - w) > tol * (1 + Math.abs(w))) throw new Error(`element ${i}: got ${g[i]}, want ${w} (tol ${tol})`);
  });
}

// ================================================================ printing

describe('printing tensors as torch does', () => {
  const cases = fixtures.tensorReprs as { name: string; dtype: DType; tensor: TJ; requiresGrad: boolean; repr: string }[];

  test.each(cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    const t = fromJ(c.tensor, c.dtype, c.requiresGrad);
    const s = String(t);
    const summarised = t.numel > 1000;
    // Past 1000 elements the shape is added (torch shows none): the rest is torch's repr.
    if (summarised) expect(s).toMatch(new RegExp(`shape=\\[${t.shape.join(', ')}\\]\\)$`));
    expect(summarised ? s.replace(/,\s+shape=\[[\d, ]*\]\)$/, ')') : s).toBe(c.repr);
    expect(inspect(t)).toBe(s);
    expect(t.toString()).toBe(s);
  });

  test('console.log shows the values, never the handles; a graph shows its grad_fn', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    const y = x.mul(2);
    const shown = inspect({ y });
    expect(shown).toBe('{ y: tensor([2., 4.], grad_fn=<MulBackward>) }');
    expect(shown).not.toMatch(/_h|_store|Native/);
    expect(inspect([tensor([1], { dtype: 'int32' })])).toBe('[ tensor([1], dtype=int32) ]');
  });

  test('a disposed tensor prints its description', () => {
    const t = zeros([2, 3]);
    t.dispose();
    expect(String(t)).toBe('Tensor(shape [2, 3], float32, cpu, disposed)');
  });

  (cuda.isAvailable() ? test : test.skip)("a CUDA tensor shows device='cuda:0' as torch", () => {
    expect(String(tensor([1, 2], { device: 'cuda' }))).toBe("tensor([1., 2.], device='cuda:0')");
    expect(String(tensor([0.5], { device: 'cuda', dtype: 'float64', requiresGrad: true })))
      .toBe("tensor([0.5000], device='cuda:0', dtype=float64, requires_grad=True)");
  });
});

describe('printing module trees as torch does', () => {
  const m = fixtures.moduleReprs as Record<string, string>;

  test('a Sequential of the standard layers', () => {
    const seq = new Sequential(new Linear(4, 8), new ReLU(), new Dropout(0.1), new LayerNorm(8), new GELU({ approximate: 'tanh' }),
      new Linear(8, 2, { bias: false }));
    expect(String(seq)).toBe(m.sequential);
    expect(inspect(seq)).toBe(m.sequential);
  });

  test('a model with ModuleList, ModuleDict, LayerNorm, Embedding options and Dropout', () => {
    class Net extends Module {
      emb = new Embedding(10, 4, { paddingIdx: 0, maxNorm: 1 });
      layers = new ModuleList<Module>([new Linear(4, 4), new SiLU()]);
      heads = new ModuleDict<Module>({ a: new Linear(4, 2), b: new Identity() });
      norm = new LayerNorm([2, 4], { eps: 1e-6, elementwiseAffine: false });
      emb2 = new Embedding(5, 3, { maxNorm: 2.5, normType: 1, scaleGradByFreq: true });
      drop = new Dropout(0.25);
      forward(x: Tensor): Tensor {
        return x;
      }
    }
    expect(String(new Net())).toBe(m.net);
    expect(String(new ModuleList())).toBe(m.emptyList);
    expect(String(new LayerNorm([3, 4], { eps: 1e-3 }))).toBe(m.layerNorm);
    expect(String(new Embedding(6, 2, { paddingIdx: -1 }))).toBe(m.embeddingNegPad);
  });

  test('LoRALinear shows r, alpha, scaling, dropout and the wrapped layer as base_layer (as PEFT)', () => {
    const l = new LoRALinear(new Linear(16, 8), { r: 4, alpha: 8, dropout: 0.05 });
    expect(String(l)).toBe([
      'LoRALinear(',
      '  r=4, alpha=8, scaling=2.0, dropout=0.05',
      '  (base_layer): Linear(in_features=16, out_features=8, bias=True)',
      ')',
    ].join('\n'));
    const rs = new LoRALinear(new Linear(4, 4, { bias: false }), { r: 4, alpha: 4, useRslora: true });
    expect(String(new Sequential(rs))).toBe([
      'Sequential(',
      '  (0): LoRALinear(',
      '    r=4, alpha=4, scaling=2.0, dropout=0.0, use_rslora=True',
      '    (base_layer): Linear(in_features=4, out_features=4, bias=False)',
      '  )',
      ')',
    ].join('\n'));
    // The state dict keeps its own names: printing renames nothing.
    expect(Object.keys(l.stateDict())).toContain('origLinear.weight');
  });

  test('LoRAEmbedding, DoRA and lora_bias print their settings too', () => {
    expect(String(new LoRAEmbedding(new Embedding(10, 4), { r: 2, alpha: 4 }))).toBe([
      'LoRAEmbedding(',
      '  r=2, alpha=4, scaling=2.0',
      '  (base_layer): Embedding(10, 4)',
      ')',
    ].join('\n'));
    expect(String(new LoRALinear(new Linear(4, 3), { r: 2, alpha: 2, useDora: true })).split('\n')[1]).toBe('  r=2, alpha=2, scaling=1.0, dropout=0.0, use_dora=True');
    expect(String(new LoRALinear(new Linear(4, 3), { r: 2, alpha: 2, loraBias: true })).split('\n')[1]).toBe('  r=2, alpha=2, scaling=1.0, dropout=0.0, lora_bias=True');
  });

  test('a ModuleList folds runs of entries that print the same, as torch 2 does', () => {
    const list = new ModuleList<Module>([new Linear(2, 2), new Linear(2, 2), new Linear(2, 2), new ReLU(), new Linear(2, 2),
      new Sequential(new ReLU()), new Sequential(new ReLU())]);
    expect(String(list)).toBe([
      'ModuleList(',
      '  (0-2): 3 x Linear(in_features=2, out_features=2, bias=True)',
      '  (3): ReLU()',
      '  (4): Linear(in_features=2, out_features=2, bias=True)',
      '  (5-6): 2 x Sequential(',
      '    (0): ReLU()',
      '  )',
      ')',
    ].join('\n'));
  });

  test('extraRepr may span lines, and is printed before the children', () => {
    class Custom extends Module {
      inner = new ReLU();
      forward(x: Tensor): Tensor {
        return x;
      }
      extraRepr(): string {
        return 'a=1\nb=2';
      }
    }
    expect(String(new Custom())).toBe('Custom(\n  a=1\n  b=2\n  (inner): ReLU()\n)');
  });
});

// ================================================================ containers

describe('containers', () => {
  test('Sequential: typed forward, call, negative at, iteration', () => {
    const l1 = new Linear(3, 4, { dtype: 'float64' });
    const seq = new Sequential(l1, new ReLU(), new Linear(4, 2, { dtype: 'float64' }));
    const x = randn([5, 3], { dtype: 'float64' });
    const y: Tensor = seq.call(x);
    expect(values(y)).toEqual(values(seq.forward(x)));
    expect(seq.at(-3)).toBe(l1);
    expect(seq.at(-1)).toBe(seq.at(2));
    expect([...seq]).toEqual([...seq.children()]);
    expect(() => seq.at(3)).toThrow(/^Sequential\.at: index must be in \[-3, 3\), got 3$/);
    expect(() => seq.at(-4)).toThrow(RangeError);
    expect(() => seq.at(0.5)).toThrow(/^Sequential\.at: index must be an integer, got 0\.5$/);
    expect(() => new Sequential(new ReLU(), 3 as unknown as ReLU)).toThrow(/^Sequential: modules\[1\] must be a Module, got 3$/);
  });

  test('ModuleList: insert, set, pop, extend, negative indices, as a Python list', () => {
    const [a, b, c, d] = [new ReLU(), new SiLU(), new GELU(), new Identity()];
    const list = new ModuleList<Module>([a, b]);
    list.insert(0, c); // [c, a, b]
    list.insert(-1, d); // [c, a, d, b]  (list.insert(-1, x) goes before the last)
    expect([...list]).toEqual([c, a, d, b]);
    list.insert(99 - 95, a); // index 4 == length: appends
    expect(list.length).toBe(5);
    expect(list.pop()).toBe(a);
    expect(list.pop(1)).toBe(a);
    expect([...list]).toEqual([c, d, b]);
    expect([...list.namedChildren()].map(([n]) => n)).toEqual(['0', '1', '2']);
    expect(list.set(-1, a).at(2)).toBe(a);
    list.extend([b, c]);
    expect(list.length).toBe(5);
    expect(() => list.extend([b, 1 as unknown as Module])).toThrow(/^ModuleList\.extend: modules\[1\] must be a Module, got 1$/);
    expect(list.length).toBe(5); // nothing added
    expect(() => list.insert(7, a)).toThrow(/^ModuleList\.insert: index must be in \[-5, 6\), got 7$/);
    expect(() => new ModuleList().pop()).toThrow(/^ModuleList\.pop: index must be an index of an entry \(the container is empty\), got -1$/);
  });

  test('ModuleDict: get, set, has, delete, pop, keys in insertion order, update, iteration over keys', () => {
    const q = new Linear(2, 2);
    const k = new Linear(2, 2);
    const dict = new ModuleDict({ q, k });
    expect(dict.get('q')).toBe(q);
    expect(dict.keys()).toEqual(['q', 'k']);
    expect([...dict]).toEqual(['q', 'k']);
    expect(dict.length).toBe(2);
    dict.set('v', new Linear(2, 2)).update([['o', new Linear(2, 2)]]);
    expect(dict.keys()).toEqual(['q', 'k', 'v', 'o']);
    expect([...dict.namedParameters()].map(([n]) => n)).toEqual(['q.weight', 'q.bias', 'k.weight', 'k.bias', 'v.weight', 'v.bias', 'o.weight', 'o.bias']);
    expect(dict.has('k')).toBe(true);
    expect(dict.pop('k')).toBe(k);
    expect(dict.has('k')).toBe(false);
    expect(dict.delete('k')).toBe(false);
    expect(dict.values()).toHaveLength(3);
    expect(() => dict.get('x')).toThrow(/^ModuleDict\.get: key must be one of the keys \('q', 'v', 'o'\), got "x"$/);
    expect(() => dict.set('get', q)).toThrow(/^ModuleDict\.set: key must be a name that is not a property or method of ModuleDict, got "get"$/);
    expect(() => dict.set('training', q)).toThrow(RangeError);
    expect(() => dict.set('a.b', q)).toThrow(/^ModuleDict\.set: key must be a non-empty name without '\.'/);
    expect(() => dict.update({ x: q, y: 2 as unknown as Linear })).toThrow(/^ModuleDict\.update: modules\['y'\] must be a Module, got 2$/);
    expect(dict.has('x')).toBe(false); // nothing added
    dict.clear();
    expect(dict.length).toBe(0);
    expect(() => dict.forward()).toThrow(/no forward/);
  });

  test('parameters() and buffers() are arrays; namedParameters() a generator', () => {
    const seq = new Sequential(new Linear(2, 3), new LayerNorm(3));
    const ps = seq.parameters();
    expect(Array.isArray(ps)).toBe(true);
    expect(ps).toHaveLength(4);
    expect(Array.isArray(seq.buffers())).toBe(true);
    const gen = seq.namedParameters();
    expect(typeof gen.next).toBe('function');
    expect([...gen].map(([n]) => n)).toEqual(['0.weight', '0.bias', '1.weight', '1.bias']);
  });
});

// ================================================================ Dropout

describe('Dropout', () => {
  test('training: zeroes about p of the elements and scales the rest by 1 / (1 - p); eval: the input itself', () => {
    const d = new Dropout(0.3);
    const x = ones([100, 100], { dtype: 'float64', requiresGrad: true });
    manualSeed(5);
    const y = d.call(x);
    const v = values(y);
    const kept = v.filter((e) => e !== 0);
    expect(kept.every((e) => Math.abs(e - 1 / 0.7) < 1e-12)).toBe(true);
    expect(Math.abs(1 - kept.length / v.length - 0.3)).toBeLessThan(0.02);
    // The gradient uses the same mask.
    y.sum().backward();
    expect(values(x.grad!)).toEqual(v);
    // The same seed gives the same mask; F.dropout is the same op.
    manualSeed(5);
    expect(values(F.dropout(x, 0.3))).toEqual(v);
    d.eval();
    expect(d.call(x)).toBe(x);
    expect(F.dropout(x, 0.3, false)).toBe(x);
    expect(new Dropout(0).train().call(x)).toBe(x);
  });

  test('p = 1 zeroes everything with a zero gradient, as torch', () => {
    const x = randn([4], { requiresGrad: true });
    const y = new Dropout(1).forward(x);
    expect(values(y)).toEqual([0, 0, 0, 0]);
    y.sum().backward();
    expect(values(x.grad!)).toEqual([0, 0, 0, 0]);
  });

  test('bad arguments', () => {
    expect(() => new Dropout(1.5)).toThrow(/^Dropout: p must be in \[0, 1\], got 1\.5$/);
    expect(() => new Dropout(0.5, { inplace: true as unknown as false })).toThrow(/^Dropout: options\.inplace must be false/);
    expect(() => F.dropout(zeros([2]), -0.1)).toThrow(/^F\.dropout: p must be in \[0, 1\], got -0\.1$/);
    expect(() => F.dropout(zeros([2]), 0.5, 'yes' as unknown as boolean)).toThrow(/^F\.dropout: training must be a boolean, got "yes"$/);
  });
});

// ================================================================ LayerNorm

describe('LayerNorm against torch', () => {
  const cases = fixtures.layerNorm as { name: string; normalizedShape: number[]; x: TJ; g: TJ; y: TJ; dx: TJ; weight?: TJ; bias?: TJ;
    dweight?: TJ; dbias?: TJ }[];
  for (const dtype of ['float64', 'float32'] as const) {
    test.each(cases.map((c) => [c.name, c] as const))(`${dtype}: %s`, (_name, c) => {
      const tol = dtype === 'float64' ? 1e-12 : 2e-5;
      const ln = new LayerNorm(c.normalizedShape, { dtype, elementwiseAffine: !!c.weight });
      if (c.weight) {
        ln.weight = fromJ(c.weight, dtype, true);
        ln.bias = fromJ(c.bias!, dtype, true);
      }
      const x = fromJ(c.x, dtype, true);
      const y = ln.call(x);
      expectClose(y, c.y, tol);
      y.mul(fromJ(c.g, dtype)).sum().backward();
      expectClose(x.grad!, c.dx, tol * 10);
      if (c.weight) {
        expectClose(ln.weight!.grad!, c.dweight!, tol * 10);
        expectClose(ln.bias!.grad!, c.dbias!, tol * 10);
      }
      // F.layerNorm is the same computation.
      expectClose(F.layerNorm(x, c.normalizedShape, ln.weight, ln.bias), c.y, tol);
    });
  }

  test('defaults and options as torch', () => {
    const ln = new LayerNorm(4);
    expect(ln.normalizedShape).toEqual([4]);
    expect(ln.eps).toBe(1e-5);
    expect(values(ln.weight!)).toEqual([1, 1, 1, 1]);
    expect(values(ln.bias!)).toEqual([0, 0, 0, 0]);
    const noBias = new LayerNorm([2, 3], { bias: false });
    expect(noBias.bias).toBeNull();
    expect(noBias.weight!.shape).toEqual([2, 3]);
    expect(noBias.parameters()).toHaveLength(1);
    expect(new LayerNorm(3, { elementwiseAffine: false }).parameters()).toHaveLength(0);
  });
});

// ================================================================ Embedding

describe('Embedding options against torch', () => {
  const cases = fixtures.embedding as { name: string; ids: TJ; weight: TJ; g: TJ; y: TJ; dweight: TJ; weightAfter: TJ;
    options: { paddingIdx: number | null; maxNorm: number | null; normType: number | 'inf'; scaleGradByFreq: boolean } }[];
  for (const dtype of ['float64', 'float32'] as const) {
    test.each(cases.map((c) => [c.name, c] as const))(`${dtype}: %s`, (_name, c) => {
      const tol = dtype === 'float64' ? 1e-12 : 1e-6;
      const o = { ...c.options, normType: c.options.normType === 'inf' ? Infinity : c.options.normType };
      const ids = tensor(c.ids.data as number[], { shape: c.ids.shape, dtype: 'int32' });
      const e = new Embedding(6, 3, { ...o, dtype });
      e.weight = fromJ(c.weight, dtype, true);
      const y = e.call(ids);
      expectClose(y, c.y, tol);
      expectClose(e.weight, c.weightAfter, tol); // maxNorm renormalises in place
      y.mul(fromJ(c.g, dtype)).sum().backward();
      expectClose(e.weight.grad!, c.dweight, tol);
      // F.embedding with the same options, on the renormalised weight: the same rows.
      expectClose(noGrad(() => F.embedding(ids, e.weight, o)), c.y, tol);
    });
  }

  test('paddingIdx: the row starts at zeros; maxNorm bumps the version only when a row changes', () => {
    const e = new Embedding(5, 3, { paddingIdx: -2 });
    expect(e.paddingIdx).toBe(3);
    expect(values(e.weight).slice(9, 12)).toEqual([0, 0, 0]);
    expect(values(e.weight).slice(0, 9).some((v) => v !== 0)).toBe(true);
    const m = new Embedding(4, 2, { maxNorm: 100 });
    const before = values(m.weight);
    m.forward(tensor([0, 1], { dtype: 'int32' }));
    expect(values(m.weight)).toEqual(before);
  });

  test('maxNorm modifies the weight in place: a graph that saved it fails in backward, as torch', () => {
    const e = new Embedding(4, 2, { maxNorm: 0.1 });
    const w = e.weight;
    const y = w.mul(w).sum();
    e.forward(tensor([1], { dtype: 'int32' }));
    expect(() => y.backward()).toThrow(/modified in place/);
  });

  test('bad options', () => {
    expect(() => new Embedding(4, 2, { sparse: true })).toThrow(/^Embedding: options\.sparse must be false \(sparse gradients are not supported/);
    expect(() => new Embedding(4, 2, { paddingIdx: 4 })).toThrow(/^Embedding: options\.paddingIdx must be in \[-4, 4\) \(within numEmbeddings\), got 4$/);
    expect(() => new Embedding(4, 2, { maxNorm: -1 })).toThrow(/^Embedding: options\.maxNorm must be a number >= 0, got -1$/);
    expect(() => new Embedding(4, 2, { normType: 'l2' as unknown as number })).toThrow(/^Embedding: options\.normType must be a number/);
    expect(() => F.embedding(tensor([0], { dtype: 'int32' }), randn([4, 2]), { paddingIdx: 1.5 })).toThrow(/^embedding: options\.paddingIdx must be an integer/);
    expect(() => F.embedding(tensor([0], { dtype: 'int32' }), randn([4, 2]), { scaleGradByFreq: 1 as unknown as boolean }))
      .toThrow(/^embedding: options\.scaleGradByFreq must be a boolean, got 1$/);
  });
});
