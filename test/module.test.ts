// The module tree (after torch.nn.Module): discovery of children, parameters and
// buffers; traversal names and order; state dicts; modes; gradients; and the
// standard layers (Linear, Sequential, ModuleList, ReLU, GELU).
import {
  Module, Linear, Sequential, ModuleList, ReLU, GELU, Tensor, tensor, zeros, ones, randn, manualSeed,
} from '../lib';

// ----------------------------------------------------------------- helpers

const arr = (t: Tensor): number[] => Array.from(t.toArray());

function expectClose(actual: ArrayLike<number>, expected: ArrayLike<number>, tol: number): void {
  expect(actual.length).toBe(expected.length);
  for (let i = 0; i < expected.length; i++) {
    const diff = Math.abs(actual[i] - expected[i]);
    if (!(diff <= tol * (1 + Math.abs(expected[i])))) {
      throw new Error(`element ${i}: got ${actual[i]}, expected ${expected[i]} (|diff| ${diff} > tol ${tol})`);
    }
  }
}

/**
 * erf(x) = 2/sqrt(pi) * exp(-x^2) * sum_{n>=0} 2^n x^(2n+1) / (1*3*...*(2n+1)).
 * All terms have the sign of x, so there is no cancellation: accurate to ~1e-15
 * for the |x| <= 6 used here.
 */
function erf(x: number): number {
  let term = x;
  let sum = x;
  for (let n = 1; n < 400; n++) {
    term *= (2 * x * x) / (2 * n + 1);
    sum += term;
    if (Math.abs(term) < 1e-18 * Math.abs(sum)) break;
  }
  return (2 / Math.sqrt(Math.PI)) * Math.exp(-x * x) * sum;
}
const geluRef = (x: number): number => 0.5 * x * (1 + erf(x / Math.SQRT2));
const geluTanhRef = (x: number): number =>
  0.5 * x * (1 + Math.tanh(Math.sqrt(2 / Math.PI) * (x + 0.044715 * x * x * x)));

/** y[m, o] = sum_i x[m, i] W[o, i] + b[o], in float64 JS arithmetic. */
function linearRef(x: ArrayLike<number>, M: number, W: ArrayLike<number>, b: ArrayLike<number> | null, outF: number, inF: number): number[] {
  const y: number[] = [];
  for (let m = 0; m < M; m++) {
    for (let o = 0; o < outF; o++) {
      let s = b ? b[o] : 0;
      for (let i = 0; i < inF; i++) s += x[m * inF + i] * W[o * inF + i];
      y.push(s);
    }
  }
  return y;
}

// ------------------------------------------------------------------ models

class Attn extends Module {
  q_proj = new Linear(8, 8);
  k_proj = new Linear(8, 8);
  v_proj = new Linear(8, 8, { bias: false });
  forward(x: Tensor): Tensor {
    return this.q_proj.forward(x).add(this.k_proj.forward(x)).add(this.v_proj.forward(x));
  }
}

class Block extends Module {
  // Fields declared with `declare` emit nothing, so the constructor's
  // assignment order is the definition order (deliberately not alphabetical).
  declare mlp: Linear;
  declare attn: Attn;
  declare act: ReLU;
  _cache: Linear = new Linear(2, 2); // private: never discovered
  _scratch: Tensor = zeros([3]);     // private tensor: not a parameter
  note = 'not a module';             // plain values are ignored
  constructor() {
    super();
    this.mlp = new Linear(8, 4);
    this.attn = new Attn();
    this.act = new ReLU();
  }
  forward(x: Tensor): Tensor {
    return this.act.forward(this.mlp.forward(this.attn.forward(x)));
  }
}

class WithBuffer extends Module {
  fc = new Linear(4, 4);
  declare runningMean: Tensor;
  constructor() {
    super();
    this.registerBuffer('runningMean', ones([4]));
  }
  forward(x: Tensor): Tensor {
    return this.fc.forward(x);
  }
}

class Wrapper extends Module {
  declare block: WithBuffer;
  constructor() {
    super();
    this.block = new WithBuffer();
  }
  forward(x: Tensor): Tensor {
    return this.block.forward(x);
  }
}

const names = <T>(it: Iterable<[string, T]>): string[] => [...it].map(([n]) => n);

beforeEach(() => manualSeed(1234));

// ================================================================ discovery

describe('discovery of children and parameters', () => {
  test('class-field children are found in definition order', () => {
    const a = new Attn();
    expect(names(a.namedChildren())).toEqual(['q_proj', 'k_proj', 'v_proj']);
    const kids = [...a.children()];
    expect(kids).toEqual([a.q_proj, a.k_proj, a.v_proj]);
    for (const k of kids) expect(k).toBeInstanceOf(Linear);
  });

  test('constructor-assigned children are found in assignment order', () => {
    const b = new Block();
    expect(names(b.namedChildren())).toEqual(['mlp', 'attn', 'act']);
  });

  test("'_'-prefixed properties and non-module values are ignored", () => {
    const b = new Block();
    const allNames = [
      ...names(b.namedModules()),
      ...names(b.namedParameters()),
      ...names(b.namedBuffers()),
      ...Object.keys(b.stateDict()),
    ];
    for (const n of allNames) {
      expect(n).not.toMatch(/(^|\.)_/);
      expect(n).not.toMatch(/note/);
    }
    const params = new Set(b.parameters());
    expect(params.has(b._cache.weight)).toBe(false);
    expect(params.has(b._scratch)).toBe(false);
    expect([...b.modules()]).not.toContain(b._cache);
  });

  test('namedModules: root first as "", then dotted names depth first', () => {
    const b = new Block();
    expect(names(b.namedModules())).toEqual([
      '', 'mlp', 'attn', 'attn.q_proj', 'attn.k_proj', 'attn.v_proj', 'act',
    ]);
    const mods = [...b.namedModules()];
    expect(mods[0][1]).toBe(b);
    expect(mods[3][1]).toBe(b.attn.q_proj);
    expect([...b.modules()]).toEqual(mods.map(([, m]) => m));
  });

  test('namedModules(prefix) prefixes every name, the root gets the prefix itself', () => {
    const a = new Attn();
    expect(names(a.namedModules('model.layers.0'))).toEqual([
      'model.layers.0', 'model.layers.0.q_proj', 'model.layers.0.k_proj', 'model.layers.0.v_proj',
    ]);
  });

  test('namedParameters: dotted names in order; parameters() agrees', () => {
    const b = new Block();
    expect(names(b.namedParameters())).toEqual([
      'mlp.weight', 'mlp.bias',
      'attn.q_proj.weight', 'attn.q_proj.bias',
      'attn.k_proj.weight', 'attn.k_proj.bias',
      'attn.v_proj.weight',
    ]);
    const np = [...b.namedParameters()];
    expect(np[2][1]).toBe(b.attn.q_proj.weight);
    expect([...b.parameters()]).toEqual(np.map(([, p]) => p));
    // Non-recursive: only own parameters (a Block has none of its own).
    expect([...b.parameters(false)]).toEqual([]);
    const lin = new Linear(3, 2);
    expect(names(lin.namedParameters())).toEqual(['weight', 'bias']);
    expect(names(lin.namedParameters('fc'))).toEqual(['fc.weight', 'fc.bias']);
  });

  test('a module shared under two names is listed once, at its first name', () => {
    class Shared extends Module {
      declare first: Linear;
      declare second: Linear;
      constructor() {
        super();
        const lin = new Linear(4, 4);
        this.first = lin;
        this.second = lin;
      }
      forward(x: Tensor): Tensor {
        return this.second.forward(this.first.forward(x));
      }
    }
    const s = new Shared();
    expect(names(s.namedChildren())).toEqual(['first']);
    expect(names(s.namedModules())).toEqual(['', 'first']);
    expect([...s.modules()]).toHaveLength(2);
    expect(names(s.namedParameters())).toEqual(['first.weight', 'first.bias']);
    expect(s.numParameters()).toBe(20);
  });

  test('a parameter shared by two modules (tied weights) is listed once', () => {
    class Tied extends Module {
      enc = new Linear(6, 6);
      dec = new Linear(6, 6);
      constructor() {
        super();
        this.dec.weight = this.enc.weight;
      }
      forward(x: Tensor): Tensor {
        return this.dec.forward(this.enc.forward(x));
      }
    }
    const t = new Tied();
    expect(names(t.namedParameters())).toEqual(['enc.weight', 'enc.bias', 'dec.bias']);
    expect([...t.parameters()].filter((p) => p === t.enc.weight)).toHaveLength(1);
    expect(t.numParameters()).toBe(36 + 6 + 6);
  });

  test('registerBuffer: buffers are in namedBuffers and stateDict, not in parameters', () => {
    const w = new Wrapper();
    expect(names(w.namedBuffers())).toEqual(['block.runningMean']);
    expect([...w.buffers()]).toEqual([w.block.runningMean]);
    expect(names(w.namedParameters())).toEqual(['block.fc.weight', 'block.fc.bias']);
    expect([...w.parameters()]).not.toContain(w.block.runningMean);
    expect(Object.keys(w.stateDict())).toEqual(['block.fc.weight', 'block.fc.bias', 'block.runningMean']);
    // Reassigning the property keeps it a buffer.
    w.block.runningMean = zeros([4]);
    expect(names(w.namedBuffers())).toEqual(['block.runningMean']);
    expect(names(w.namedParameters())).not.toContain('block.runningMean');
  });
});

// ============================================================ get/setSubmodule

describe('getSubmodule / setSubmodule', () => {
  test('getSubmodule returns the module at a dotted path ("" is the root)', () => {
    const b = new Block();
    expect(b.getSubmodule('')).toBe(b);
    expect(b.getSubmodule('attn')).toBe(b.attn);
    expect(b.getSubmodule('attn.k_proj')).toBe(b.attn.k_proj);
  });

  test('getSubmodule names the missing part', () => {
    const b = new Block();
    expect(() => b.getSubmodule('attn.o_proj')).toThrow(RangeError);
    expect(() => b.getSubmodule('attn.o_proj')).toThrow(/'attn' has no submodule 'o_proj'/);
    expect(() => b.getSubmodule('decoder.q_proj')).toThrow(/root module has no submodule 'decoder'/);
    // A tensor is not a submodule; nor is a private property.
    expect(() => b.getSubmodule('attn.q_proj.weight')).toThrow(/'attn.q_proj' has no submodule 'weight'/);
    expect(() => b.getSubmodule('_cache')).toThrow(/no submodule '_cache'/);
  });

  test('setSubmodule replaces a nested module; traversals see the new one', () => {
    const b = new Block();
    const old = b.attn.k_proj;
    const repl = new Linear(8, 8, { bias: false });
    b.setSubmodule('attn.k_proj', repl);
    expect(b.attn.k_proj).toBe(repl);
    expect(b.getSubmodule('attn.k_proj')).toBe(repl);
    expect([...b.modules()]).not.toContain(old);
    // Position in definition order is kept.
    expect(names(b.attn.namedChildren())).toEqual(['q_proj', 'k_proj', 'v_proj']);
    expect(names(b.namedParameters())).toContain('attn.k_proj.weight');
    expect(names(b.namedParameters())).not.toContain('attn.k_proj.bias');
  });

  test('setSubmodule throws when the parent is missing', () => {
    const b = new Block();
    expect(() => b.setSubmodule('decoder.q_proj', new ReLU())).toThrow(RangeError);
    expect(() => b.setSubmodule('decoder.q_proj', new ReLU())).toThrow(/no submodule 'decoder'/);
  });

  test('setSubmodule error for a missing parent names setSubmodule and the full path', () => {
    // The message currently comes from getSubmodule with the parent path only:
    // "Module.getSubmodule: the root module has no submodule 'decoder' (path 'decoder')".
    const b = new Block();
    expect(() => b.setSubmodule('decoder.q_proj', new ReLU())).toThrow(/^Module\.setSubmodule: .*'decoder\.q_proj'/);
  });

  test('setSubmodule refuses to replace a tensor with a module', () => {
    const b = new Block();
    const w = b.attn.q_proj.weight;
    expect(() => b.setSubmodule('attn.q_proj.weight', new ReLU())).toThrow(TypeError);
    expect(() => b.setSubmodule('attn.q_proj.weight', new ReLU())).toThrow(/'attn.q_proj.weight' holds a tensor, not a module/);
    expect(b.attn.q_proj.weight).toBe(w);
  });

  test('setSubmodule validates its arguments', () => {
    const b = new Block();
    expect(() => b.setSubmodule('', new ReLU())).toThrow(TypeError);
    expect(() => b.setSubmodule('attn.q_proj', {} as unknown as Module)).toThrow(/module must be a Module/);
  });
});

// =============================================================== state dicts

describe('stateDict / loadStateDict', () => {
  test('stateDict keys, order and shapes', () => {
    const b = new Block();
    const sd = b.stateDict();
    expect(Object.keys(sd)).toEqual(names(b.namedParameters()));
    expect(sd['mlp.weight'].shape).toEqual([4, 8]);
    expect(sd['mlp.bias'].shape).toEqual([4]);
    expect(sd['attn.q_proj.weight'].shape).toEqual([8, 8]);
    expect(sd['attn.v_proj.weight'].shape).toEqual([8, 8]);
    expect(sd['attn.v_proj.bias']).toBeUndefined();
  });

  test('stateDict tensors share data with the module (and are detached)', () => {
    const lin = new Linear(3, 2);
    const sd = lin.stateDict();
    expect(sd.weight).not.toBe(lin.weight);
    expect(sd.weight.requiresGrad).toBe(false);
    expect(arr(sd.weight)).toEqual(arr(lin.weight));
    sd.weight.fill_(7);
    expect(arr(lin.weight)).toEqual([7, 7, 7, 7, 7, 7]);
    lin.bias!.fill_(-2);
    expect(arr(sd.bias)).toEqual([-2, -2]);
  });

  test('round trip between two models copies the values (not the tensors)', () => {
    const a = new Block();
    const b = new Block();
    const before = [...b.parameters()];
    expect(arr(b.mlp.weight)).not.toEqual(arr(a.mlp.weight));
    const res = b.loadStateDict(a.stateDict());
    expect(res).toEqual({ missingKeys: [], unexpectedKeys: [] });
    const sa = a.stateDict();
    const sb = b.stateDict();
    expect(Object.keys(sb)).toEqual(Object.keys(sa));
    for (const k of Object.keys(sa)) expect(arr(sb[k])).toEqual(arr(sa[k]));
    // Same tensor objects as before the load, and no aliasing with the source.
    expect([...b.parameters()]).toEqual(before);
    a.mlp.weight.fill_(0);
    expect(arr(b.mlp.weight).every((v) => v === 0)).toBe(false);
  });

  test('buffers load too', () => {
    const a = new Wrapper();
    const b = new Wrapper();
    a.block.runningMean.fill_(3);
    b.loadStateDict(a.stateDict());
    expect(arr(b.block.runningMean)).toEqual([3, 3, 3, 3]);
  });

  test('strict (default) throws naming missing and unexpected keys', () => {
    const b = new Block();
    const sd = b.stateDict();
    delete sd['attn.k_proj.bias'];
    sd['attn.o_proj.weight'] = zeros([8, 8]);
    expect(() => b.loadStateDict(sd)).toThrow(RangeError);
    expect(() => b.loadStateDict(sd)).toThrow(/missing keys: 'attn\.k_proj\.bias'/);
    expect(() => b.loadStateDict(sd)).toThrow(/unexpected keys: 'attn\.o_proj\.weight'/);
    expect(() => b.loadStateDict(sd, { strict: true })).toThrow(/missing keys.*unexpected keys/);
  });

  test('strict=false loads what matches and returns { missingKeys, unexpectedKeys }', () => {
    const b = new Block();
    const res = b.loadStateDict({ 'mlp.bias': full4(5), extra: zeros([1]) }, { strict: false });
    expect(res.unexpectedKeys).toEqual(['extra']);
    expect(res.missingKeys).toEqual(names(b.namedParameters()).filter((n) => n !== 'mlp.bias'));
    expect(arr(b.mlp.bias as Tensor)).toEqual([5, 5, 5, 5]);
  });

  test('a shape mismatch throws naming the key and both shapes', () => {
    const b = new Block();
    const sd = b.stateDict();
    sd['mlp.weight'] = zeros([8, 4]);
    expect(() => b.loadStateDict(sd)).toThrow(RangeError);
    expect(() => b.loadStateDict(sd)).toThrow(/'mlp\.weight'.*\[8, 4\].*\[4, 8\]/);
    expect(() => b.loadStateDict(sd, { strict: false })).toThrow(/'mlp\.weight'.*\[8, 4\].*\[4, 8\]/);
  });

  test('a failed load leaves every parameter unchanged (atomic)', () => {
    const a = new Block();
    const b = new Block();
    const snapshot = () => [...b.parameters()].map(arr);
    const before = snapshot();

    // Good values for every key but one with a wrong shape (the last one).
    const sd = a.stateDict();
    sd['attn.v_proj.weight'] = zeros([8, 7]);
    expect(() => b.loadStateDict(sd)).toThrow(RangeError);
    expect(snapshot()).toEqual(before);
    expect(() => b.loadStateDict(sd, { strict: false })).toThrow(RangeError);
    expect(snapshot()).toEqual(before);

    // All good values plus an unexpected key: strict refuses and writes nothing.
    const sd2 = a.stateDict();
    sd2.bogus = zeros([1]);
    expect(() => b.loadStateDict(sd2)).toThrow(/unexpected keys: 'bogus'/);
    expect(snapshot()).toEqual(before);

    // A non-tensor value or a disposed tensor is caught before any write.
    const sd3: Record<string, Tensor> = { ...a.stateDict(), 'mlp.bias': [1, 2, 3, 4] as unknown as Tensor };
    expect(() => b.loadStateDict(sd3)).toThrow(/'mlp\.bias' is not a Tensor/);
    expect(snapshot()).toEqual(before);
    const dead = zeros([4, 8]);
    dead.dispose();
    const sd4 = { ...a.stateDict(), 'mlp.weight': dead };
    expect(() => b.loadStateDict(sd4)).toThrow(/'mlp\.weight' has been disposed/);
    expect(snapshot()).toEqual(before);
  });
});

function full4(v: number): Tensor {
  return tensor([v, v, v, v]);
}

// ===================================================== modes, grads, devices

describe('train/eval, zeroGrad, requiresGrad_, to, numParameters', () => {
  test('train()/eval() set training recursively and return this', () => {
    const b = new Block();
    expect([...b.modules()].every((m) => m.training)).toBe(true);
    expect(b.eval()).toBe(b);
    expect([...b.modules()].every((m) => m.training === false)).toBe(true);
    expect(b.train()).toBe(b);
    expect([...b.modules()].every((m) => m.training)).toBe(true);
    b.attn.eval();
    expect(b.training).toBe(true);
    expect(b.attn.q_proj.training).toBe(false);
    b.train(false);
    expect(b.mlp.training).toBe(false);
  });

  test('zeroGrad: grads to null; setToNone=false zeros them in place', () => {
    const b = new Block();
    const x = randn([2, 8]);
    b.forward(x).sum().backward();
    const params = [...b.parameters()];
    expect(params.every((p) => p.grad !== null)).toBe(true);
    expect(params.some((p) => arr(p.grad as Tensor).some((v) => v !== 0))).toBe(true);

    const grads = params.map((p) => p.grad);
    b.zeroGrad(false);
    params.forEach((p, i) => {
      expect(p.grad).toBe(grads[i]);
      expect(arr(p.grad as Tensor).every((v) => v === 0)).toBe(true);
    });

    b.zeroGrad();
    expect(params.every((p) => p.grad === null)).toBe(true);
  });

  test('requiresGrad_(false) freezes every parameter; (true) unfreezes', () => {
    const b = new Block();
    expect(b.requiresGrad_(false)).toBe(b);
    expect([...b.parameters()].every((p) => !p.requiresGrad)).toBe(true);
    expect(b.numParameters(true)).toBe(0);
    b.attn.q_proj.requiresGrad_(true);
    expect(b.numParameters(true)).toBe(72);
    b.requiresGrad_();
    expect([...b.parameters()].every((p) => p.requiresGrad)).toBe(true);
  });

  test("to('cpu') keeps parameter identity and values", () => {
    const b = new Block();
    const before = [...b.parameters()];
    const values = before.map(arr);
    expect(b.to('cpu')).toBe(b);
    expect([...b.parameters()]).toEqual(before);
    before.forEach((p, i) => {
      expect(p.device).toBe('cpu');
      expect(arr(p)).toEqual(values[i]);
    });
  });

  test('numParameters counts elements (optionally only trainable)', () => {
    const b = new Block();
    // mlp 8*4+4, q 64+8, k 64+8, v 64
    expect(b.numParameters()).toBe(36 + 72 + 72 + 64);
    b.attn.requiresGrad_(false);
    expect(b.numParameters(true)).toBe(36);
    expect(new ReLU().numParameters()).toBe(0);
  });
});

// ==================================================================== Linear

describe('Linear', () => {
  test('weight [out, in], bias [out], requiresGrad, float32 by default', () => {
    const lin = new Linear(5, 3);
    expect(lin.weight.shape).toEqual([3, 5]);
    expect(lin.bias!.shape).toEqual([3]);
    expect(lin.inFeatures).toBe(5);
    expect(lin.outFeatures).toBe(3);
    expect(lin.weight.dtype).toBe('float32');
    expect(lin.weight.requiresGrad).toBe(true);
    expect(lin.bias!.requiresGrad).toBe(true);
    expect(lin.weight.isLeaf).toBe(true);
  });

  test('bias: false gives null and no bias parameter', () => {
    const lin = new Linear(5, 3, { bias: false });
    expect(lin.bias).toBeNull();
    expect(names(lin.namedParameters())).toEqual(['weight']);
  });

  test('init is uniform within ±1/sqrt(in) and not degenerate', () => {
    const inF = 64;
    const lin = new Linear(inF, 32);
    const bound = 1 / Math.sqrt(inF);
    const w = arr(lin.weight);
    const b = arr(lin.bias!);
    for (const v of [...w, ...b]) expect(Math.abs(v)).toBeLessThanOrEqual(bound + 1e-7);
    expect(new Set(w).size).toBeGreaterThan(w.length / 2);
    expect(new Set(b).size).toBeGreaterThan(1);
    // U(-a, a) has mean 0 and variance a^2 / 3 (2048 samples: loose checks).
    const mean = w.reduce((s, v) => s + v, 0) / w.length;
    const variance = w.reduce((s, v) => s + (v - mean) ** 2, 0) / w.length;
    expect(Math.abs(mean)).toBeLessThan(0.1 * bound);
    expect(variance).toBeGreaterThan(0.8 * (bound * bound) / 3);
    expect(variance).toBeLessThan(1.2 * (bound * bound) / 3);
    // Both signs and most of the range are used.
    expect(Math.min(...w)).toBeLessThan(-0.9 * bound);
    expect(Math.max(...w)).toBeGreaterThan(0.9 * bound);
  });

  test('two layers get different weights; manualSeed makes init reproducible', () => {
    manualSeed(7);
    const a = new Linear(4, 4);
    const b = new Linear(4, 4);
    expect(arr(a.weight)).not.toEqual(arr(b.weight));
    manualSeed(7);
    const c = new Linear(4, 4);
    expect(arr(c.weight)).toEqual(arr(a.weight));
  });

  test('float64 dtype option', () => {
    const lin = new Linear(4, 2, { dtype: 'float64' });
    expect(lin.weight.dtype).toBe('float64');
    expect(lin.bias!.dtype).toBe('float64');
    // (constructor name, not instanceof: jest's sandbox has its own Float64Array global)
    expect(lin.weight.toArray().constructor.name).toBe('Float64Array');
    const y = lin.forward(randn([3, 4], { dtype: 'float64' }));
    expect(y.dtype).toBe('float64');
  });

  test.each([
    ['[in]', [6]],
    ['[N, in]', [4, 6]],
    ['[B, T, in]', [2, 3, 6]],
  ])('forward on %s', (_label, shape) => {
    const inF = 6;
    const outF = 5;
    for (const dtype of ['float32', 'float64'] as const) {
      for (const bias of [true, false]) {
        const lin = new Linear(inF, outF, { dtype, bias });
        const x = randn(shape as number[], { dtype });
        const y = lin.forward(x);
        expect(y.shape).toEqual([...(shape as number[]).slice(0, -1), outF]);
        expect(y.dtype).toBe(dtype);
        const M = x.numel / inF;
        const ref = linearRef(x.toArray(), M, lin.weight.toArray(), lin.bias ? lin.bias.toArray() : null, outF, inF);
        expectClose(y.toArray(), ref, dtype === 'float64' ? 1e-12 : 1e-5);
      }
    }
  });

  test('extraRepr describes the layer', () => {
    expect(new Linear(3, 2, { bias: false }).toString()).toBe('Linear(in_features=3, out_features=2, bias=False)'); // torch's repr
  });
});

// ================================================================ containers

describe('Sequential', () => {
  test("children are named '0', '1', … in order; at() and length", () => {
    const l1 = new Linear(4, 8);
    const act = new ReLU();
    const l2 = new Linear(8, 2);
    const seq = new Sequential(l1, act, l2);
    expect(names(seq.namedChildren())).toEqual(['0', '1', '2']);
    expect([...seq.children()]).toEqual([l1, act, l2]);
    expect(seq.length).toBe(3);
    expect(seq.at(0)).toBe(l1);
    expect(seq.at(2)).toBe(l2);
    expect(() => seq.at(3)).toThrow(RangeError);
    expect(names(seq.namedParameters())).toEqual(['0.weight', '0.bias', '2.weight', '2.bias']);
    expect(seq.getSubmodule('2')).toBe(l2);
  });

  test('more than ten children keep numeric order', () => {
    const mods = Array.from({ length: 12 }, () => new ReLU());
    const seq = new Sequential(...mods);
    expect(names(seq.namedChildren())).toEqual(Array.from({ length: 12 }, (_, i) => String(i)));
    expect([...seq.children()]).toEqual(mods);
  });

  test('forward chains the children', () => {
    const l1 = new Linear(4, 8, { dtype: 'float64' });
    const l2 = new Linear(8, 3, { dtype: 'float64' });
    const seq = new Sequential(l1, new ReLU(), l2);
    const x = randn([5, 4], { dtype: 'float64' });
    const y = seq.forward(x) as Tensor;
    const h = linearRef(x.toArray(), 5, l1.weight.toArray(), l1.bias!.toArray(), 8, 4).map((v) => Math.max(v, 0));
    const ref = linearRef(h, 5, l2.weight.toArray(), l2.bias!.toArray(), 3, 8);
    expect(y.shape).toEqual([5, 3]);
    expectClose(y.toArray(), ref, 1e-12);
    // Gradients flow through the chain.
    y.sum().backward();
    expect(l1.weight.grad).not.toBeNull();
    expect(l2.bias!.grad).not.toBeNull();
  });

  test('an empty Sequential is the identity', () => {
    const x = tensor([1, 2]);
    expect(new Sequential().forward(x)).toBe(x);
  });

  test('the same module passed twice is applied twice (as torch.nn.Sequential does)', () => {
    // torch: len(nn.Sequential(l, l)) == 2 and forward applies l twice.
    const lin = new Linear(2, 2, { bias: false, dtype: 'float64' });
    lin.weight.copy_([2, 0, 0, 2]); // doubles its input
    const seq = new Sequential(lin, lin);
    expect(seq.length).toBe(2);
    expect(seq.at(1)).toBe(lin);
    const y = seq.forward(tensor([1, 3], { dtype: 'float64' })) as Tensor;
    expect(arr(y)).toEqual([4, 12]);
  });
});

describe('ModuleList', () => {
  test('append / at / length / iteration / naming', () => {
    const list = new ModuleList<Module>([new Linear(2, 2)]);
    expect(list.length).toBe(1);
    const l2 = new Linear(2, 3);
    expect(list.append(l2)).toBe(list);
    list.append(new ReLU());
    expect(list.length).toBe(3);
    expect(list.at(1)).toBe(l2);
    expect(() => list.at(3)).toThrow(RangeError);
    expect(() => list.at(3)).toThrow(/ModuleList\.at: index must be in \[-3, 3\), got 3/);
    const iterated = [...list];
    expect(iterated).toHaveLength(3);
    expect(iterated[1]).toBe(l2);
    expect(names(list.namedChildren())).toEqual(['0', '1', '2']);

    class Model extends Module {
      layers = new ModuleList([new Linear(4, 4), new Linear(4, 4)]);
      head = new Linear(4, 1);
      forward(x: Tensor): Tensor {
        let h = x;
        for (const l of this.layers) h = (l as Linear).forward(h);
        return this.head.forward(h);
      }
    }
    const m = new Model();
    expect(names(m.namedModules())).toEqual(['', 'layers', 'layers.0', 'layers.1', 'head']);
    expect(names(m.namedParameters())).toEqual([
      'layers.0.weight', 'layers.0.bias', 'layers.1.weight', 'layers.1.bias', 'head.weight', 'head.bias',
    ]);
    expect(m.forward(randn([3, 4])).shape).toEqual([3, 1]);
    m.layers.append(new Linear(4, 4));
    expect(names(m.namedModules())).toContain('layers.2');
  });

  test('ModuleList has no forward of its own', () => {
    expect(() => new ModuleList().forward()).toThrow(/no forward/);
  });

  test('iteration visits every entry, including a module appended twice (as torch does)', () => {
    // torch: list(nn.ModuleList([r, r])) has 2 entries, len() is 2.
    const r = new ReLU();
    const list = new ModuleList([r, r]);
    expect(list.length).toBe(2);
    expect([...list]).toEqual([r, r]);
  });
});

// =============================================================== activations

describe('activations', () => {
  const xs = [-6, -3, -2, -1.5, -1, -0.5, -1e-3, 0, 1e-3, 0.25, 0.5, 1, 1.5, 2, 3, 6];

  test('the test erf matches known values', () => {
    expect(erf(0)).toBe(0);
    expect(erf(0.5)).toBeCloseTo(0.5204998778130465, 15);
    expect(erf(1)).toBeCloseTo(0.8427007929497149, 15);
    expect(erf(2)).toBeCloseTo(0.9953222650189527, 15);
    expect(erf(-1)).toBeCloseTo(-0.8427007929497149, 15);
  });

  test('ReLU', () => {
    const y = new ReLU().forward(tensor(xs, { dtype: 'float64' }));
    expect(arr(y)).toEqual(xs.map((v) => Math.max(v, 0)));
    expect(new ReLU().numParameters()).toBe(0);
  });

  test('GELU (exact, erf) against the formula', () => {
    const g = new GELU();
    expect(g.approximate).toBe('none');
    expectClose(g.forward(tensor(xs, { dtype: 'float64' })).toArray(), xs.map(geluRef), 1e-12);
    expectClose(g.forward(tensor(xs)).toArray(), xs.map(geluRef), 2e-6);
    // Known values: gelu(1) = 0.8413447460685429, gelu(-1) = -0.15865525393145707.
    const y = arr(g.forward(tensor([1, -1], { dtype: 'float64' })));
    expect(y[0]).toBeCloseTo(0.8413447460685429, 12);
    expect(y[1]).toBeCloseTo(-0.15865525393145707, 12);
  });

  test("GELU({ approximate: 'tanh' }) against the tanh formula", () => {
    const g = new GELU({ approximate: 'tanh' });
    expectClose(g.forward(tensor(xs, { dtype: 'float64' })).toArray(), xs.map(geluTanhRef), 1e-12);
    expect(g.toString()).toBe("GELU(approximate='tanh')");
  });

  test('GELU keeps shape on [B, T, C]', () => {
    const x = randn([2, 3, 4], { dtype: 'float64' });
    const y = new GELU().forward(x);
    expect(y.shape).toEqual([2, 3, 4]);
    expectClose(y.toArray(), Array.from(x.toArray()).map(geluRef), 1e-12);
  });
});

// ================================================================== toString

describe('toString', () => {
  test('shows the tree with names, nesting and layer details', () => {
    const b = new Block();
    const s = b.toString();
    expect(s).toBe([
      'Block(',
      '  (mlp): Linear(in_features=8, out_features=4, bias=True)',
      '  (attn): Attn(',
      '    (q_proj): Linear(in_features=8, out_features=8, bias=True)',
      '    (k_proj): Linear(in_features=8, out_features=8, bias=True)',
      '    (v_proj): Linear(in_features=8, out_features=8, bias=False)',
      '  )',
      '  (act): ReLU()',
      ')',
    ].join('\n'));
    expect(String(new Sequential(new Linear(2, 2), new GELU()))).toContain("(1): GELU(approximate='none')");
  });
});
