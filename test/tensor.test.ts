import { spawnSync } from 'child_process';
import * as path from 'path';
import {
  Linear, Tensor, backendInfo, cuda, full, getRngState, manualSeed, nativeMemoryBytes, noGrad, ones, rand, randn,
  setRngState, tensor, zeros,
} from '../lib';
import { collectGarbage } from './helpers/gc';

describe('creation and data', () => {
  test('nested arrays infer the shape; flat data takes options.shape', () => {
    const a = tensor([[1, 2, 3], [4, 5, 6]]);
    expect(a.shape).toEqual([2, 3]);
    expect(a.dtype).toBe('float32');
    expect(a.device).toBe('cpu');
    expect(a.numel).toBe(6);
    expect(Array.from(a.toArray())).toEqual([1, 2, 3, 4, 5, 6]);
    const b = tensor(new Float64Array([1, 2, 3, 4]), { shape: [2, 1, 2], dtype: 'float64' });
    expect(b.shape).toEqual([2, 1, 2]);
    expect(Object.prototype.toString.call(b.toArray())).toBe('[object Float64Array]');
    expect(b.tolist()).toEqual([[[1, 2]], [[3, 4]]]);
    expect(tensor(3.5).shape).toEqual([]);
    expect(tensor(3.5).item()).toBe(3.5);
    expect(tensor([]).shape).toEqual([0]);
    expect(tensor([7, -2], { dtype: 'int32' }).toArray()).toEqual(new Int32Array([7, -2]));
  });

  test('zeros, ones, full, rand and randn', () => {
    expect(Array.from(zeros([2, 2]).toArray())).toEqual([0, 0, 0, 0]);
    expect(Array.from(ones([3]).toArray())).toEqual([1, 1, 1]);
    expect(Array.from(full([2], 2.5, { dtype: 'float64' }).toArray())).toEqual([2.5, 2.5]);
    const u = Array.from(rand([10000], { low: -2, high: 3 }).toArray());
    expect(Math.min(...u)).toBeGreaterThanOrEqual(-2);
    expect(Math.max(...u)).toBeLessThan(3);
    const n = Array.from(randn([20000], { dtype: 'float64' }).toArray());
    const mean = n.reduce((s, v) => s + v, 0) / n.length;
    const std = Math.sqrt(n.reduce((s, v) => s + (v - mean) ** 2, 0) / n.length);
    expect(Math.abs(mean)).toBeLessThan(0.03);
    expect(Math.abs(std - 1)).toBeLessThan(0.03);
  });

  test('manualSeed makes random tensors reproducible; rng state can be saved and restored', () => {
    manualSeed(123);
    const a = randn([5]).toArray();
    const state = getRngState();
    const b = randn([5]).toArray();
    manualSeed(123);
    expect(randn([5]).toArray()).toEqual(a);
    setRngState(state);
    expect(randn([5]).toArray()).toEqual(b);
    expect(a).not.toEqual(b);
  });

  test('float32 values are rounded to float32; float64 keeps them', () => {
    expect(tensor([0.1]).toArray()[0]).toBe(Math.fround(0.1));
    expect(tensor([0.1], { dtype: 'float64' }).toArray()[0]).toBe(0.1);
  });

  test('copy_ writes in place from tensors (any dtype) or arrays and keeps shape', () => {
    const t = zeros([2, 2]);
    t.copy_([1, 2, 3, 4]);
    expect(Array.from(t.toArray())).toEqual([1, 2, 3, 4]);
    t.copy_(tensor([5, 6, 7, 8], { dtype: 'float64' }));
    expect(Array.from(t.toArray())).toEqual([5, 6, 7, 8]);
    expect(t.shape).toEqual([2, 2]);
    t.fill_(9);
    expect(Array.from(t.toArray())).toEqual([9, 9, 9, 9]);
    t.zero_();
    expect(Array.from(t.toArray())).toEqual([0, 0, 0, 0]);
  });

  test('typed arrays over a SharedArrayBuffer are read like any other: the tensor holds a copy', () => {
    const sab = new SharedArrayBuffer(32);
    const f32 = new Float32Array(sab);
    f32.set([1, 2, 3, 4, 5, 6, 7, 8]);
    const a = tensor(new Float32Array(sab, 8, 3)); // a view at an offset
    expect(Array.from(a.toArray())).toEqual([3, 4, 5]);
    const ids = tensor(new Int32Array(sab, 0, 2), { dtype: 'int32' });
    const f64 = tensor(new Float64Array(sab, 16, 2), { dtype: 'float64' });
    const want64 = Array.from(new Float64Array(sab, 16, 2));
    const into = zeros([4]);
    into.copy_(new Float32Array(sab, 16));
    f32.fill(0); // later writes to the shared memory do not reach the tensors
    expect(Array.from(a.toArray())).toEqual([3, 4, 5]);
    expect(Array.from(ids.toArray())).toEqual(Array.from(new Int32Array(new Float32Array([1, 2]).buffer)));
    expect(Array.from(f64.toArray())).toEqual(want64);
    expect(Array.from(into.toArray())).toEqual([5, 6, 7, 8]);
  });

  test('reshape and detach share storage; clone and transpose copy', () => {
    const t = tensor([1, 2, 3, 4, 5, 6]);
    const r = t.reshape(2, -1);
    expect(r.shape).toEqual([2, 3]);
    const d = t.detach();
    t.copy_([6, 5, 4, 3, 2, 1]);
    expect(Array.from(r.toArray())).toEqual([6, 5, 4, 3, 2, 1]);
    expect(Array.from(d.toArray())).toEqual([6, 5, 4, 3, 2, 1]);
    const c = r.clone();
    const tr = r.t();
    t.zero_();
    expect(Array.from(c.toArray())).toEqual([6, 5, 4, 3, 2, 1]);
    expect(tr.tolist()).toEqual([[6, 3], [5, 2], [4, 1]]);
  });

  test('clone of an int32 tensor is a plain copy: own storage, no graph (as torch.clone of any dtype)', () => {
    const ids = tensor([[3, -1], [7, 2147483647]], { dtype: 'int32' });
    const c = ids.clone();
    expect(c.dtype).toBe('int32');
    expect(c.shape).toEqual([2, 2]);
    expect({ requiresGrad: c.requiresGrad, gradFn: c.gradFn }).toEqual({ requiresGrad: false, gradFn: null });
    ids.fill_(0);
    expect(c.tolist()).toEqual([[3, -1], [7, 2147483647]]);
    // The float path still records a graph.
    const x = tensor([1, 2], { requiresGrad: true });
    expect(x.clone().gradFn).toBe('CloneBackward');
  });

  test('permute and transpose reorder dims like torch', () => {
    const t = tensor(Array.from({ length: 24 }, (_, i) => i), { shape: [2, 3, 4] });
    const p = t.permute(2, 0, 1);
    expect(p.shape).toEqual([4, 2, 3]);
    // p[k, i, j] = t[i, j, k] = i*12 + j*4 + k
    const v = p.toArray();
    for (let k = 0; k < 4; k++) for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) {
      expect(v[k * 6 + i * 3 + j]).toBe(i * 12 + j * 4 + k);
    }
    expect(t.transpose(0, -1).shape).toEqual([4, 3, 2]);
  });

  test('sum and mean over dims with keepdim; softmax rows sum to 1 even for large logits', () => {
    const t = tensor([[1, 2, 3], [4, 5, 6]]);
    expect(t.sum().item()).toBe(21);
    expect(Array.from(t.sum(0).toArray())).toEqual([5, 7, 9]);
    expect(t.sum(1, true).shape).toEqual([2, 1]);
    expect(Array.from(t.mean(-1).toArray())).toEqual([2, 5]);
    const s = tensor([[1000, 1001, 1002], [-5, 0, 5]]).softmax(-1).toArray();
    expect(s.every(Number.isFinite)).toBe(true);
    expect(s[0] + s[1] + s[2]).toBeCloseTo(1, 6);
    expect(s[2]).toBeCloseTo(Math.exp(2) / (1 + Math.exp(1) + Math.exp(2)), 6);
  });

  test('matmul follows torch.matmul shape rules', () => {
    expect(randn([3]).matmul(randn([3])).shape).toEqual([]);
    expect(randn([2, 3]).matmul(randn([3])).shape).toEqual([2]);
    expect(randn([3]).matmul(randn([3, 4])).shape).toEqual([4]);
    expect(randn([5, 2, 3]).matmul(randn([3, 4])).shape).toEqual([5, 2, 4]);
    expect(randn([2, 1, 2, 3]).matmul(randn([4, 3, 5])).shape).toEqual([2, 4, 2, 5]);
    const a = tensor([[1, 2], [3, 4]]);
    const b = tensor([[5, 6], [7, 8]]);
    expect(a.matmul(b).tolist()).toEqual([[19, 22], [43, 50]]);
  });
});

describe('autograd', () => {
  test.each(cuda.isAvailable() ? ['cpu', 'cuda'] as const : ['cpu'] as const)('a sum over a dim of size 1 and a bias gradient of one row give +0 for -0, as torch (%s)', (device) => {
    // torch: tensor([[-0., 1.]]).sum(0) is [0., 1.] with +0, and so is the bias gradient of F.linear for one row.
    const signs = (t: Tensor) => Array.from(t.toArray(), (v) => Object.is(v, -0));
    expect(signs(tensor([[-0, 1]], { device }).sum(0))).toEqual([false, false]);
    const b = zeros([2], { device, requiresGrad: true });
    new Linear(3, 2, { device }).forward(ones([1, 3], { device })).add(b).backward(tensor([[-0, 1]], { device }));
    expect(signs(b.grad!)).toEqual([false, false]);
    const lin = new Linear(3, 2, { device });
    lin.forward(ones([1, 3], { device })).backward(tensor([[-0, 1]], { device }));
    expect(signs(lin.bias!.grad!)).toEqual([false, false]);
  });

  test('gradients accumulate into leaves over several backward calls', () => {
    const w = tensor([1, 2, 3], { requiresGrad: true });
    w.mul(w).sum().backward();
    expect(Array.from(w.grad!.toArray())).toEqual([2, 4, 6]);
    w.mul(3).sum().backward();
    expect(Array.from(w.grad!.toArray())).toEqual([5, 7, 9]);
  });

  test('a leaf used twice in one graph gets the sum of both paths', () => {
    const x = tensor([2], { requiresGrad: true });
    const y = x.mul(x).add(x.mul(3)); // x^2 + 3x, dy/dx = 2x + 3 = 7
    y.sum().backward();
    expect(x.grad!.item()).toBe(7);
  });

  test('backward with an explicit gradient for a non-scalar output; the caller keeps its tensor', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    const g = tensor([10, 100]);
    x.mul(2).backward(g);
    expect(Array.from(x.grad!.toArray())).toEqual([20, 200]);
    expect(g.isDisposed).toBe(false);
    expect(Array.from(g.toArray())).toEqual([10, 100]);
  });

  test('the graph is released after backward: a second backward throws', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    const y = x.mul(2).sum();
    y.backward();
    expect(() => y.backward()).toThrow(/backward through the graph a second time.*retainGraph/);
  });

  test('frozen inputs and noGrad record nothing', () => {
    const a = tensor([1, 2]);
    const b = tensor([3, 4], { requiresGrad: true });
    const c = a.mul(b);
    expect(c.requiresGrad).toBe(true);
    expect(c.isLeaf).toBe(false);
    expect(c.gradFn).toBe('MulBackward');
    c.sum().backward();
    expect(a.grad).toBeNull();
    expect(a.mul(a).requiresGrad).toBe(false);
    expect(noGrad(() => b.mul(b)).requiresGrad).toBe(false);
  });

  test('noGrad refuses asynchronous functions: after an await, ops would record a graph again', async () => {
    const b = tensor([3, 4], { requiresGrad: true });
    let ran = false;
    expect(() => noGrad(async () => {
      ran = true;
      return b.mul(b);
    })).toThrow(/^noGrad: fn is asynchronous \(an async function or one returning a Promise\)/);
    expect(ran).toBe(false); // refused before it runs
    // A plain function returning a Promise: refused when it returns, with grad mode restored.
    let late: Tensor | null = null;
    const pending = Promise.resolve().then(() => { late = b.mul(b); });
    expect(() => noGrad(() => pending)).toThrow(/^noGrad: fn is asynchronous/);
    await pending;
    expect(late!.requiresGrad).toBe(true);
    expect(b.mul(b).requiresGrad).toBe(true);
  });

  test('a frozen Linear weight costs no gradient: only dx is produced', () => {
    const lin = new Linear(4, 3);
    lin.requiresGrad_(false);
    const x = randn([2, 4], { requiresGrad: true });
    lin.forward(x).sum().backward();
    expect(lin.weight.grad).toBeNull();
    expect(x.grad!.shape).toEqual([2, 4]);
  });

  test('modifying a saved tensor in place before backward throws', () => {
    const x = tensor([1, 2], { requiresGrad: true });
    const w = tensor([3, 4]);
    const y = x.mul(w).sum();
    w.copy_([5, 6]);
    expect(() => y.backward()).toThrow(/modified in place/);
  });

  test('requiresGrad can only change on leaves', () => {
    const x = tensor([1], { requiresGrad: true });
    expect(() => { x.mul(2).requiresGrad = false; }).toThrow(/leaf/);
    x.requiresGrad = false;
    expect(x.requiresGrad).toBe(false);
  });

  test('deep graphs do not overflow the stack', () => {
    const x = tensor([1], { requiresGrad: true });
    let y = x;
    for (let i = 0; i < 20000; i++) y = y.add(1);
    y.sum().backward();
    expect(x.grad!.item()).toBe(1);
  });

  test('to() returns this when nothing changes and converts dtype differentiably', () => {
    const x = tensor([1.5, 2.5], { requiresGrad: true });
    expect(x.to('cpu')).toBe(x);
    const d = x.to('float64');
    expect(d.dtype).toBe('float64');
    d.mul(d).sum().backward();
    expect(x.grad!.dtype).toBe('float32');
    expect(Array.from(x.grad!.toArray())).toEqual([3, 5]);
  });
});

describe('memory', () => {
  test('dispose frees native memory at once and makes the tensor unusable', () => {
    collectGarbage(); // else a collection during zeros() may free earlier tests' tensors and hide this one
    const before = nativeMemoryBytes();
    const t = zeros([1024, 1024]);
    expect(nativeMemoryBytes() - before).toBeGreaterThanOrEqual(4 * 1024 * 1024);
    t.dispose();
    t.dispose(); // idempotent
    expect(nativeMemoryBytes() - before).toBeLessThan(1024);
    expect(t.isDisposed).toBe(true);
    try {
      t.add(1);
      throw new Error('expected a throw');
    } catch (e) {
      expect((e as NodeJS.ErrnoException).code).toBe('ERR_TENSOR_DISPOSED');
    }
  });

  test('a training step returns native memory to its baseline once the step ends', () => {
    const lin = new Linear(64, 64);
    const x = randn([32, 64]);
    const step = () => {
      const loss = lin.forward(x).relu().sum();
      loss.backward();
      loss.dispose();
      for (const p of lin.parameters()) {
        p.grad!.dispose();
        p.grad = null;
      }
    };
    step();
    const base = nativeMemoryBytes();
    for (let i = 0; i < 50; i++) step();
    // Only graph intermediates that the garbage collector has not reached yet
    // may remain; the engine frees every gradient it creates itself.
    expect(nativeMemoryBytes() - base).toBeLessThan(50 * 32 * 64 * 4 * 3);
  });

  test('tensors never disposed are reclaimed by the garbage collector (native memory is reported to V8)', () => {
    // A separate process so the test runner's heap does not interfere: 4,000
    // pairs of 4 MiB tensors (32 GiB in all), dropped without dispose(), must
    // not accumulate. The handles come straight from the addon: what keeps
    // this bounded is the external-memory report the addon makes to V8.
    const script = `
      const native = require('node-gyp-build')(${JSON.stringify(path.resolve(__dirname, '..'))});
      let peak = 0;
      for (let i = 0; i < 4000; i++) {
        native.affine(native.full([1024, 1024], 0, 0, 0, 1), 2, 0);
        peak = Math.max(peak, native.liveBytes());
      }
      console.log(JSON.stringify({ peak, rss: process.memoryUsage().rss }));`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', cwd: path.resolve(__dirname, '..') });
    if (r.status !== 0) throw new Error(r.stderr);
    const { peak, rss } = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(peak).toBeLessThan(512 * 1024 ** 2);
    expect(rss).toBeLessThan(1536 * 1024 ** 2);
  });
});

describe('backends', () => {
  test('backendInfo describes the CPU BLAS and says why CUDA is unavailable', () => {
    const info = backendInfo();
    expect(['openblas', 'cblas', 'builtin']).toContain(info.cpu.blas);
    expect(info.cpu.threads).toBeGreaterThanOrEqual(1);
    expect(typeof info.cuda.compiled).toBe('boolean');
    expect(cuda.isAvailable()).toBe(info.cuda.available);
    if (!info.cuda.available) {
      expect(info.cuda.reason.length).toBeGreaterThan(10);
      expect(cuda.deviceCount()).toBe(0);
      expect(() => tensor([1], { device: 'cuda' })).toThrow(/not available/);
    }
  });

  test('tensors are instances of Tensor and describe themselves', () => {
    const t = tensor([[1, 2]]);
    expect(t).toBeInstanceOf(Tensor);
    expect(t.describe()).toBe('Tensor(shape [1, 2], float32, cpu)');
    expect(String(t)).toBe('tensor([[1., 2.]])');
  });
});
