// The CUDA backend. Without a usable GPU only the first block runs (what the
// package reports and refuses without CUDA); the parity suite, which runs every
// op on the CPU and on CUDA from the same inputs and compares outputs and
// gradients, is skipped with a message saying why.
import {
  Adam, AdamW, F, LlamaForCausalLM, LoRALinear, Linear, Tensor, backendInfo, clipGradNorm, cuda, injectLora,
  manualSeed, noGrad, randn, rand, tensor, tidy, zeros,
} from '../lib';
import { native } from '../lib/native';
import { expectThrows } from './helpers/expect-throws';
import { collectGarbage } from './helpers/gc';

const info = backendInfo().cuda;
const available = cuda.isAvailable();
if (!available) {
  // Visible in the jest output: the suite below did not run, and why.
  console.warn(`CUDA parity and memory tests skipped: ${info.reason}`);
}
const describeCuda = available ? describe : describe.skip;
// The CPU emulator of the CUDA backend (dev/cuda-emu, scripts/test-cuda-emu.sh) compiles no GPU code.
const emulated = info.devices[0]?.name === 'lora-cuda CUDA emulator';

// ------------------------------------------------------------------ always

describe('CUDA status (any machine)', () => {
  test('backendInfo().cuda describes the build and the reason CUDA cannot be used', () => {
    expect(typeof info.compiled).toBe('boolean');
    expect(info.available).toBe(available);
    expect(Array.isArray(info.devices)).toBe(true);
    if (!info.compiled) {
      expect(info.reason).toMatch(/compiled without the CUDA backend/);
      expect(info.runtimeVersion).toBe(0);
    } else {
      expect(info.runtimeVersion).toBeGreaterThanOrEqual(12000);
      expect(info.architectures).toMatch(emulated ? /^emulated$/ : /90/); // H100/H200 machine code is always built
    }
    if (available) {
      expect(info.reason).toBe('');
      expect(info.devices.length).toBeGreaterThan(0);
      expect(info.cublas?.path).toMatch(/libcublas/);
      expect(info.driverVersion).toBeGreaterThanOrEqual(info.runtimeVersion - (info.runtimeVersion % 1000));
    } else {
      expect(info.reason.length).toBeGreaterThan(10);
      expect(cuda.deviceCount()).toBe(0);
    }
  });

  (available ? test.skip : test)('a CUDA device argument is refused with the reason', () => {
    expectThrows(() => zeros([2], { device: 'cuda' }), RangeError, /device "cuda" is not available \(.+\)/);
    expectThrows(() => tensor([1, 2]).to('cuda:1'), RangeError, /not available/);
    expectThrows(() => new Linear(2, 2).to('cuda'), RangeError, /not available/);
    expectThrows(() => cuda.memoryStats(), RangeError, /not available/);
    // Waiting for every device used so far is a no-op without CUDA.
    expect(() => cuda.synchronize()).not.toThrow();
  });

  test('setAllowTF32 checks its argument and round-trips', () => {
    expectThrows(() => cuda.setAllowTF32(1 as unknown as boolean), TypeError, /cuda\.setAllowTF32: allow must be a boolean, got 1/);
    const before = cuda.getAllowTF32();
    expect(before).toBe(false); // off by default
    if (info.compiled) {
      cuda.setAllowTF32(true);
      expect(cuda.getAllowTF32()).toBe(true);
      cuda.setAllowTF32(false);
    }
    expect(cuda.getAllowTF32()).toBe(false);
  });

  test('device arguments of the cuda helpers are validated', () => {
    expectThrows(() => cuda.memoryStats('cpu' as unknown as 'cuda'), RangeError, /must be a CUDA device|not available/);
    expectThrows(() => cuda.synchronize('gpu'), RangeError, /'cpu', 'cuda' or 'cuda:N'/);
  });
});

// ------------------------------------------------------------------ parity

type Dev = 'cpu' | 'cuda';
type DT = 'float32' | 'float64';
interface InputSpec {
  shape: number[];
  /** Values: normal (default), positive (for log / div), or uniform in [lo, hi). */
  kind?: 'normal' | 'positive';
  grad?: boolean;
}
interface Case {
  name: string;
  inputs: InputSpec[];
  /** Builds outputs from inputs on `dev` (extra constant tensors are made there from fixed data). */
  run: (xs: Tensor[], dev: Dev, dtype: DT) => Tensor | Tensor[];
  /** Normalised tolerance for float32 (float64 uses 1e-10). */
  tol32?: number;
  dtypes?: DT[];
}

const consts = new Map<string, number[]>();
/** Fixed pseudo-random data, the same for both devices (made once per key on the CPU). */
function fixed(key: string, n: number, make: (i: number) => number): number[] {
  if (!consts.has(key)) consts.set(key, Array.from({ length: n }, (_, i) => make(i)));
  return consts.get(key) as number[];
}
function ints(key: string, n: number, hi: number): number[] {
  return fixed(key, n, (i) => (i * 7919 + 13) % hi);
}

function hostData(spec: InputSpec, seed: number): Float64Array {
  manualSeed(seed);
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const t = randn([n], { dtype: 'float64' });
  const d = t.toArray() as Float64Array;
  t.dispose();
  if (spec.kind === 'positive') for (let i = 0; i < n; i++) d[i] = 0.5 + Math.abs(d[i]);
  return d;
}

/** max |a - b| / max(max |a|, 1e-30); NaN and Inf must sit at the same places. */
function normError(a: ArrayLike<number>, b: ArrayLike<number>): number {
  expect(b.length).toBe(a.length);
  let scale = 1e-30;
  let err = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i]) || !Number.isFinite(b[i])) {
      if (!Object.is(a[i], b[i]) && !(Number.isNaN(a[i]) && Number.isNaN(b[i]))) return Infinity;
      continue;
    }
    scale = Math.max(scale, Math.abs(a[i]));
    err = Math.max(err, Math.abs(a[i] - b[i]));
  }
  return err / scale;
}

function evaluate(c: Case, dev: Dev, dtype: DT, seed: number): { outs: number[][]; grads: (number[] | null)[] } {
  const xs = c.inputs.map((spec, i) =>
    tensor(hostData(spec, seed + i), { shape: spec.shape, dtype, device: dev, requiresGrad: spec.grad !== false }));
  let outs = c.run(xs, dev, dtype);
  if (!Array.isArray(outs)) outs = [outs];
  const needGrad = outs.some((o) => o.requiresGrad);
  if (needGrad) {
    // One scalar: sum_k <out_k, g_k> with fixed random g_k, so every output's gradient path is used.
    let loss: Tensor | null = null;
    outs.forEach((o, k) => {
      if (!o.requiresGrad) return;
      const g = tensor(hostData({ shape: [...o.shape] }, 1000 + k), { shape: o.shape, dtype: o.dtype, device: dev });
      const term = o.mul(g).sum();
      loss = loss ? loss.add(term) : term;
    });
    (loss as unknown as Tensor).backward();
  }
  return {
    outs: outs.map((o) => Array.from(o.toArray())),
    grads: xs.map((x) => (x.grad ? Array.from(x.grad.toArray()) : null)),
  };
}

function parity(c: Case): void {
  for (const dtype of c.dtypes ?? (['float64', 'float32'] as DT[])) {
    const seed = 17;
    const ref = evaluate(c, 'cpu', dtype, seed);
    const got = evaluate(c, 'cuda', dtype, seed);
    const tol = dtype === 'float64' ? 1e-10 : c.tol32 ?? 2e-5;
    ref.outs.forEach((o, k) => {
      const e = normError(o, got.outs[k]);
      if (!(e <= tol)) throw new Error(`${c.name} (${dtype}): output ${k} differs from the CPU by ${e} (tolerance ${tol})`);
    });
    ref.grads.forEach((g, k) => {
      if (g === null) {
        expect(got.grads[k]).toBeNull();
        return;
      }
      const e = normError(g, got.grads[k] as number[]);
      if (!(e <= tol)) throw new Error(`${c.name} (${dtype}): gradient of input ${k} differs from the CPU by ${e} (tolerance ${tol})`);
    });
  }
}

const I = (shape: number[], extra: Partial<InputSpec> = {}): InputSpec => ({ shape, ...extra });

const CASES: Case[] = [
  // elementwise, with broadcasting and odd sizes
  ...(['add', 'sub', 'mul', 'div'] as const).flatMap((op): Case[] => [
    { name: `${op} [17] . [17]`, inputs: [I([17]), I([17], { kind: 'positive' })], run: ([a, b]) => a[op](b) },
    { name: `${op} [3,1000] . [1000]`, inputs: [I([3, 1000]), I([1000], { kind: 'positive' })], run: ([a, b]) => a[op](b) },
    { name: `${op} [2,1,5] . [3,1]`, inputs: [I([2, 1, 5]), I([3, 1], { kind: 'positive' })], run: ([a, b]) => a[op](b) },
    { name: `${op} [1] . scalar`, inputs: [I([1])], run: ([a]) => a[op](1.5) },
  ]),
  { name: 'neg, exp, log', inputs: [I([1000], { kind: 'positive' })], run: ([a]) => [a.neg(), a.exp(), a.log()] },
  { name: 'relu, silu', inputs: [I([3, 17])], run: ([a]) => [a.relu(), a.silu()] },
  { name: 'sqrt, abs', inputs: [I([1000], { kind: 'positive' }), I([3, 17])], run: ([p, a]) => [p.sqrt(), a.abs()] },
  { name: 'gelu exact and tanh', inputs: [I([1000])], run: ([a]) => [a.gelu(), a.gelu('tanh')] },
  { name: 'softmax rows of 1, 17, 1000, 5000', inputs: [I([3, 1]), I([2, 17]), I([3, 1000]), I([2, 5000])],
    run: (xs) => xs.map((x) => x.softmax(-1)) },
  { name: 'sum and mean over all, dims, keepdim', inputs: [I([3, 17, 5])],
    run: ([a]) => [a.sum(), a.mean(), a.sum(0), a.sum([0, 2]), a.mean(-1, true), a.sum(1)] },
  { name: 'sum of a large tensor (split reduction)', inputs: [I([1000, 1000])], run: ([a]) => [a.sum(), a.sum(0), a.sum(1)] },
  { name: 'reshape, transpose, permute', inputs: [I([2, 3, 17])],
    run: ([a]) => [a.reshape(6, 17).transpose(0, 1).mul(2), a.permute(2, 0, 1).add(1)] },
  { name: 'matmul 2-D, 1-D and broadcast batches', inputs: [I([17, 33]), I([33, 3]), I([33]), I([4, 3, 17]), I([17, 5])],
    run: ([a, b, v, c, d]) => [a.matmul(b), a.matmul(v), v.matmul(b), c.matmul(d)], tol32: 5e-5 },
  { name: 'F.linear with bias, M = 1, 3, 1000', inputs: [I([1, 17]), I([3, 17]), I([1000, 17]), I([64, 17]), I([64])],
    run: ([x1, x3, xk, w, b]) => [F.linear(x1, w, b), F.linear(x3, w, b), F.linear(xk, w, b)], tol32: 5e-5 },
  { name: 'F.linear without bias, frozen weight', inputs: [I([2, 3, 33]), I([17, 33], { grad: false })],
    run: ([x, w]) => F.linear(x, w), tol32: 5e-5 },
  { name: 'mseLoss', inputs: [I([3, 17]), I([3, 17])], run: ([a, b]) => F.mseLoss(a, b) },
  { name: 'crossEntropy with ignore index and label smoothing', inputs: [I([17, 1000])],
    run: ([x]) => {
      const t = ints('ce', 17, 1000).map((v, i) => (i % 5 === 3 ? -100 : v));
      return [F.crossEntropy(x, t), F.crossEntropy(x, t, { labelSmoothing: 0.1, reduction: 'sum' })];
    }, tol32: 5e-5 },
  { name: 'embedding (repeated ids)', inputs: [I([50, 17])],
    run: ([w], dev) => F.embedding(tensor(ints('emb', 40, 50), { dtype: 'int32', shape: [4, 10], device: dev }), w) },
  { name: 'rmsNorm with and without weight', inputs: [I([3, 5, 17]), I([17])],
    run: ([x, w]) => [F.rmsNorm(x, w, 1e-6), F.rmsNorm(x, null, 1e-5)] },
  { name: 'rotary', inputs: [I([2, 3, 7, 16])],
    run: ([x], dev, dtype) => {
      const { cos, sin } = F.rotaryTables(7, 16, { theta: 10000, dtype, device: dev } as never);
      return F.applyRotary(x, cos, sin);
    } },
  ...[
    { B: 1, Hq: 1, Hkv: 1, T: 1, D: 8 },
    { B: 2, Hq: 4, Hkv: 2, T: 17, D: 16 },
    { B: 1, Hq: 6, Hkv: 2, T: 40, D: 64 },
    { B: 1, Hq: 2, Hkv: 1, T: 70, D: 128 },
  ].flatMap(({ B, Hq, Hkv, T, D }): Case[] => [
    { name: `attention causal B${B} Hq${Hq} Hkv${Hkv} T${T} D${D}`,
      inputs: [I([B, Hq, T, D]), I([B, Hkv, T, D]), I([B, Hkv, T, D])],
      run: ([q, k, v]) => F.scaledDotProductAttention(q, k, v, { causal: true }), tol32: 5e-5 },
    { name: `attention full B${B} Hq${Hq} Hkv${Hkv} T${T} S${T + 3} D${D}`,
      inputs: [I([B, Hq, T, D]), I([B, Hkv, T + 3, D]), I([B, Hkv, T + 3, D])],
      run: ([q, k, v]) => F.scaledDotProductAttention(q, k, v, { causal: false }), tol32: 5e-5 },
  ]),
  { name: 'to() and back, copy_ across devices', inputs: [I([3, 17])],
    run: ([a], dev) => [
      a.to('cpu').mul(3).to(dev),
      zeros([3, 17], { dtype: a.dtype, device: dev }).copy_(a.detach().to('cpu')),
    ] },
];

// LoRA layers at the sizes the issue names: r = 1 and 64, M = 1, 3, 17, 1000, with dropout.
for (const { M, K, N, r, p } of [
  { M: 1, K: 17, N: 3, r: 1, p: 0 },
  { M: 3, K: 64, N: 17, r: 8, p: 0 },
  { M: 17, K: 33, N: 65, r: 64, p: 0 },
  { M: 1000, K: 64, N: 48, r: 16, p: 0 },
  { M: 1000, K: 64, N: 48, r: 16, p: 0.25 },
]) {
  CASES.push({
    name: `LoRALinear forward/backward M${M} in${K} out${N} r${r} dropout ${p}`,
    inputs: [I([M, K]), I([N, K], { grad: false }), I([N], { grad: false }), I([r, K]), I([N, r])],
    run: ([x, w, b, A, B], dev, dtype) => {
      const lin = new Linear(K, N, { dtype, device: dev } as never);
      noGrad(() => {
        lin.weight.copy_(w);
        lin.bias!.copy_(b);
      });
      const l = new LoRALinear(lin, { r, alpha: 2 * r, dropout: p });
      // The adapter weights as graph inputs, so their gradients are compared.
      l.A = A;
      l.B = B;
      l.train(true);
      manualSeed(5); // the same dropout key on both devices
      return l.forward(x);
    },
    tol32: 1e-4,
  });
}

// The cases themselves are checked on every machine, so the GPU run does not
// find a broken case first: each runs on the CPU, gives finite outputs, and a
// gradient for exactly the inputs that require one.
describe('parity cases (CPU half)', () => {
  test.each(CASES.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    for (const dtype of c.dtypes ?? (['float64', 'float32'] as DT[])) {
      const r = evaluate(c, 'cpu', dtype, 17);
      expect(r.outs.length).toBeGreaterThan(0);
      for (const o of r.outs) expect(o.every(Number.isFinite)).toBe(true);
      c.inputs.forEach((spec, i) => {
        if (spec.grad === false) expect(r.grads[i]).toBeNull();
        else expect(r.grads[i]?.every(Number.isFinite)).toBe(true);
      });
    }
  });
});

describeCuda('CUDA parity with the CPU backend', () => {
  test.each(CASES.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    parity(c);
  });

  test('randn and rand draw the same numbers on both devices, bit for bit', () => {
    for (const dtype of ['float32', 'float64'] as DT[]) {
      manualSeed(123);
      const a = randn([1000, 17], { dtype });
      const u = rand([4097], { dtype, low: -2, high: 3 });
      manualSeed(123);
      const b = randn([1000, 17], { dtype, device: 'cuda' });
      const v = rand([4097], { dtype, low: -2, high: 3, device: 'cuda' });
      expect(Array.from(b.toArray())).toEqual(Array.from(a.toArray()));
      expect(Array.from(v.toArray())).toEqual(Array.from(u.toArray()));
    }
  });

  test('dropout masks are equal across devices', () => {
    // With B = 1 everywhere and W = 0, y = b + scale * (drop(x) A^T) 1: zero rows of
    // drop(x) show where the mask differs; comparing dA (= dh^T drop(x)) checks every element.
    const run = (dev: Dev) => {
      const lin = new Linear(64, 8, { dtype: 'float64', device: dev } as never);
      const l = new LoRALinear(lin, { r: 4, alpha: 4, dropout: 0.5 });
      noGrad(() => {
        l.B!.fill_(1);
        l.A!.fill_(1);
      });
      const x = tensor(Array.from({ length: 32 * 64 }, () => 1), { shape: [32, 64], dtype: 'float64', device: dev });
      l.train(true);
      manualSeed(99);
      l.forward(x).sum().backward();
      return Array.from(l.A!.grad!.toArray());
    };
    expect(run('cuda')).toEqual(run('cpu'));
  });

  test('merge and unmerge round trip; safe merge refuses non-finite results and leaves W bit-identical', () => {
    const lin = new Linear(33, 17, { device: 'cuda' } as never);
    const l = new LoRALinear(lin, { r: 8, alpha: 16 });
    noGrad(() => l.B!.copy_(randn([17, 8], { device: 'cuda' })));
    const x = randn([5, 33], { device: 'cuda' });
    const before = noGrad(() => l.forward(x)).toArray();
    const w0 = Array.from(lin.weight.toArray());
    l.mergeToOrig();
    const merged = noGrad(() => l.forward(x)).toArray();
    expect(normError(before, merged)).toBeLessThan(1e-5);
    l.unmergeFromOrig();
    expect(normError(w0, lin.weight.toArray())).toBeLessThan(1e-6);
    // scale * B A = 2 * 8 * 3e38 per element: Inf in float32, though every input is finite.
    noGrad(() => {
      l.A!.fill_(1);
      l.B!.fill_(3e38);
    });
    const exact = Array.from(lin.weight.toArray());
    expect(() => l.mergeToOrig({ safe: true })).toThrow(/non-finite|NaN|Inf/);
    expect(Array.from(lin.weight.toArray())).toEqual(exact);
    expect(l.merged).toBe(false);
  });

  test('Adam and AdamW (amsgrad) steps match the CPU over all parameters in one call', () => {
    for (const [Opt, opts] of [[Adam, { lr: 1e-2, weightDecay: 0.1 }], [AdamW, { lr: 1e-2, amsgrad: true }]] as const) {
      const run = (dev: Dev) => {
        manualSeed(3);
        const ps = [[17], [3, 1000], [1], [64, 64]].map((s) => randn(s, { dtype: 'float64' }).to(dev).detach().requiresGrad_(true));
        const opt = new Opt(ps, opts as never);
        for (let step = 0; step < 4; step++) {
          opt.zeroGrad();
          let loss = ps[0].mul(ps[0]).sum();
          for (const p of ps.slice(1)) loss = loss.add(p.mul(p).mul(p).sum());
          loss.backward();
          opt.step();
        }
        return ps.map((p) => Array.from(p.toArray()));
      };
      const cpu = run('cpu');
      const gpu = run('cuda');
      cpu.forEach((p, i) => expect(normError(p, gpu[i])).toBeLessThan(1e-12));
    }
  });

  test('embedding backward adds repeated ids in position order: the CPU gradient, bit for bit', () => {
    // Many repeats of few ids in float32, where the order of the additions shows in the bits.
    for (const [V, N, D] of [[5, 3000, 33], [50000, 700, 8], [3, 1, 1]]) {
      manualSeed(11);
      const ids = Array.from({ length: N }, (_, i) => ((i * 7919) % 5) * Math.floor(V / 5) % V);
      const g = randn([N, D]);
      const grads = (['cpu', 'cuda'] as const).map((dev) => {
        const w = randn([V, D], { device: dev }).requiresGrad_(true);
        F.embedding(tensor(ids, { dtype: 'int32', device: dev }), w).backward(g.to(dev));
        return w.grad!.toArray();
      });
      expect(Buffer.from(grads[1].buffer).equals(Buffer.from(grads[0].buffer))).toBe(true);
    }
    // The native op refuses to run on CUDA without the order it sums by.
    const ids = tensor([1], { dtype: 'int32', device: 'cuda' });
    expect(() => native.embeddingBackward(ids._h, null, randn([1, 2], { device: 'cuda' })._h, 4))
      .toThrow(/embedding backward on CUDA: the ids' sort order is required/);
  });

  test('int32 tensors move to the GPU and back unchanged', () => {
    const ids = tensor([0, -5, 2 ** 31 - 1, 7], { dtype: 'int32' });
    expect(Array.from(ids.to('cuda').to('cpu').toArray())).toEqual([0, -5, 2 ** 31 - 1, 7]);
  });

  test('TF32 is off by default and, when on, stays close to float32', () => {
    const a = randn([256, 512], { device: 'cuda' });
    const b = randn([512, 128], { device: 'cuda' });
    const exact = a.matmul(b).toArray();
    cuda.setAllowTF32(true);
    try {
      const fast = a.matmul(b).toArray();
      expect(normError(exact, fast)).toBeLessThan(5e-3);
    } finally {
      cuda.setAllowTF32(false);
    }
    expect(normError(exact, a.matmul(b).toArray())).toBe(0);
  });
});

// ------------------------------------------------------------------ memory and errors

describeCuda('CUDA memory and errors', () => {
  test('a LoRA training loop returns device memory to its baseline', () => {
    manualSeed(0);
    const base = new Linear(256, 256).to('cuda') as Linear;
    base.requiresGrad_(false);
    const l = new LoRALinear(base, { r: 16, alpha: 32, dropout: 0.1 });
    const opt = new AdamW([l.A!, l.B!], { lr: 1e-3 });
    const x = randn([512, 256], { device: 'cuda' });
    const y = randn([512, 256], { device: 'cuda' });
    const step = () => tidy(() => {
      opt.zeroGrad();
      const loss = F.mseLoss(l.forward(x), y);
      loss.backward();
      opt.step();
      return loss.item();
    });
    step(); // optimiser state is created on the first step
    opt.zeroGrad();
    collectGarbage(); // tensors earlier tests dropped must not be freed during the loop
    cuda.synchronize();
    const before = cuda.memoryStats().allocated;
    cuda.resetPeakMemoryStats();
    let last = Infinity;
    for (let i = 0; i < 50; i++) last = step();
    opt.zeroGrad();
    cuda.synchronize();
    const after = cuda.memoryStats();
    expect(Number.isFinite(last)).toBe(true);
    expect(after.allocated).toBe(before);
    // One step's temporaries on top of the model: well under 64 MiB here.
    expect(after.peak - before).toBeLessThan(64 * 2 ** 20);
    expect(after.reserved).toBeGreaterThanOrEqual(after.allocated);
  });

  test('out of memory is a catchable Error (ERR_CUDA_OOM) and the device stays usable', () => {
    const total = info.devices[0].memory;
    const n = Math.ceil((total * 2) / 4); // twice the GPU's memory in float32
    let err: (Error & { code?: string }) | null = null;
    try {
      zeros([n], { device: 'cuda' });
    } catch (e) {
      err = e as Error & { code?: string };
    }
    expect(err).not.toBeNull();
    expect(err!.code).toBe('ERR_CUDA_OOM');
    expect(err!.message).toMatch(/out of memory/);
    expect(tensor([1, 2, 3], { device: 'cuda' }).mul(2).toArray()).toEqual(new Float32Array([2, 4, 6]));
  });

  test('a bad input found by a kernel surfaces at the next synchronisation, naming the op', () => {
    // The public F.embedding checks ids on the host; the native op is called
    // directly to reach the kernel's own check.
    const w = randn([10, 4], { device: 'cuda' });
    const ids = tensor([1, 99, 2], { dtype: 'int32', device: 'cuda' });
    const h = native.embeddingForward(ids._h, w._h);
    expect(() => cuda.synchronize('cuda')).toThrow(/embedding: id 99 at index 1 is outside \[0, 10\)/);
    native.dispose(h);
    // The report was cleared: the device works on.
    expect(w.sum().item()).toBeCloseTo(Array.from(w.toArray()).reduce((a, b) => a + b, 0), 4);
  });

  test('float to int32 refuses what the CPU refuses, in its words, and writes nothing', () => {
    for (const bad of [[0, 1e10, 2], [0, 1, NaN], [-Infinity, 0, NaN], [2 ** 31, 0, 0]]) {
      let cpuError: Error | null = null;
      try {
        tensor([1, 2, 3], { dtype: 'int32' }).copy_(tensor(bad, { dtype: 'float64' }));
      } catch (e) {
        cpuError = e as Error;
      }
      expect(cpuError).not.toBeNull();
      const t = tensor([1, 2, 3], { dtype: 'int32', device: 'cuda' });
      t.copy_(tensor(bad, { dtype: 'float64', device: 'cuda' })); // queued: the kernel finds it
      expect(() => cuda.synchronize('cuda')).toThrow(cpuError!.message);
      expect(Array.from(t.toArray())).toEqual([1, 2, 3]);
    }
    // In range, truncation toward zero on both devices.
    const ok = [1.9, -1.9, 2147483647.5, -2147483648.5];
    expect(Array.from(tensor(ok, { dtype: 'float64', device: 'cuda' }).to('int32').toArray()))
      .toEqual(Array.from(tensor(ok, { dtype: 'float64' }).to('int32').toArray()));
    expect(Array.from(tensor([3.7, -0.5], { device: 'cuda' }).to('int32').toArray())).toEqual([3, 0]);
  });

  test('ids and targets uploaded from the host are checked on the host without waiting for the GPU', () => {
    // A report queued by a kernel surfaces only at a synchronisation: a step that waited for the
    // device would throw it early.
    const queueReport = () => {
      const w = randn([10, 4], { device: 'cuda' });
      native.dispose(native.embeddingForward(tensor([99], { dtype: 'int32', device: 'cuda' })._h, w._h));
    };
    const config = { model_type: 'llama', hidden_size: 8, num_attention_heads: 2, vocab_size: 11, intermediate_size: 4, num_hidden_layers: 1 };
    manualSeed(3);
    const model = new LlamaForCausalLM(config, { device: 'cuda' });
    injectLora(model, { r: 2, alpha: 4, targetModules: ['q_proj', 'v_proj'] });
    const w = randn([11, 4], { device: 'cuda', requiresGrad: true });
    queueReport();
    const loss = model.loss([[1, 2, 3, 4], [5, 6, 7, 8]]); // ids and labels from number[][]
    loss.backward();
    const ids = tensor([[1, 2], [3, 10]], { dtype: 'int32' }).cuda(); // moved from the CPU
    const e = F.embedding(ids, w);
    const ce = F.crossEntropy(randn([2, 11], { device: 'cuda' }), tensor([4, 0], { dtype: 'int32', device: 'cuda' }));
    ids.copy_([0, 0, 1, 1]); // rewritten from the host
    F.embedding(ids, w);
    expect(() => cuda.synchronize('cuda')).toThrow(/embedding: id 99 at index 0 is outside \[0, 10\)/);
    expect(Number.isFinite(loss.item() + ce.item())).toBe(true);
    expect(e.shape).toEqual([2, 2, 4]);

    // A write on the device drops the host copy: the ids are read back and still checked.
    ids.copy_(tensor([0, 1, 2, 99], { dtype: 'int32', device: 'cuda' }));
    expectThrows(() => F.embedding(ids, w), RangeError, /^embedding: ids\[1, 1\] must be in \[0, 11\) \(weight.shape\[0\]\), got 99$/);
    ids.copy_(tensor([[5, 6], [7, 8]], { dtype: 'float64', device: 'cuda' }));
    const cpuIds = tensor([[5, 6], [7, 8]], { dtype: 'int32' });
    expect(Array.from(F.embedding(ids, w).toArray())).toEqual(Array.from(F.embedding(cpuIds, w.cpu()).toArray()));
    // A caller's Int32Array changed after the upload does not change what is checked.
    const raw = new Int32Array([1, 2]);
    const t = tensor(raw, { dtype: 'int32', device: 'cuda' });
    raw[0] = 99;
    expect(Array.from(F.embedding(t, w).toArray())).toEqual(Array.from(w.toArray().slice(4, 12)));
  });

  test('clipGradNorm clips on the GPU as on the CPU, without waiting for it', () => {
    for (const scale of [1, 1e-4]) {
      const run = (dev: 'cpu' | 'cuda') => {
        manualSeed(8);
        const ps = [[17, 3], [1000], [1]].map((s) => zeros(s, { device: dev }).requiresGrad_(true));
        ps.forEach((p) => {
          p.grad = randn([...p.shape], { device: dev }).mul(scale);
        });
        if (dev === 'cuda') {
          // A queued report surfaces only at a synchronisation: clipping must not be one.
          const w = randn([10, 4], { device: 'cuda' });
          native.dispose(native.embeddingForward(tensor([99], { dtype: 'int32', device: 'cuda' })._h, w._h));
        }
        const norm = clipGradNorm(ps, 2);
        if (dev === 'cuda') expect(() => cuda.synchronize('cuda')).toThrow(/embedding: id 99/);
        return { norm: norm.item(), grads: ps.map((p) => Array.from(p.grad!.toArray())) };
      };
      const cpu = run('cpu');
      const gpu = run('cuda');
      expect(Math.abs(gpu.norm - cpu.norm) / cpu.norm).toBeLessThan(1e-5);
      cpu.grads.forEach((g, i) => expect(normError(g, gpu.grads[i])).toBeLessThan(1e-5));
    }
  });

  test('ops refuse tensors of different devices with a clear message', () => {
    const a = randn([3], { device: 'cuda' });
    const b = randn([3]);
    expectThrows(() => a.add(b), RangeError, /is on cuda:0 but .* is on cpu/);
  });

  test('memoryStats counts a tensor while it lives', () => {
    // Allocating can start a garbage collection, whose finalizers free tensors earlier tests left
    // behind and lower the count by theirs: a round in which that happened is measured again.
    let deltas: number[] = [];
    for (let round = 0; round < 3; round++) {
      cuda.synchronize();
      const before = cuda.memoryStats().allocated;
      const t = zeros([1024, 1024], { device: 'cuda' });
      const during = cuda.memoryStats().allocated;
      t.dispose();
      deltas = [during - before, cuda.memoryStats().allocated - before];
      if (deltas[0] === 4 * 2 ** 20 && deltas[1] === 0) break;
    }
    expect(deltas).toEqual([4 * 2 ** 20, 0]);
  });
});
