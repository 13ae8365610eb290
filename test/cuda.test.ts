// The CUDA backend. Without a usable GPU only the first block runs (what the
// package reports and refuses without CUDA) with the CPU half of the parity
// cases; the parity suite, which runs every sample of every op of the registry
// (test/ops/) on the CPU and on CUDA from the same inputs and compares outputs
// and gradients, is skipped with a message saying why. After it, what only the
// GPU has: bit-identical random draws and dropout masks, merges, the optimiser,
// memory and errors found by kernels.
import {
  Adam, AdamW, F, LlamaForCausalLM, LoRALinear, Linear, Tensor, backendInfo, clipGradNorm, cuda, injectLora,
  manualSeed, nativeMemoryBytes, noGrad, randn, rand, tensor, tidy, zeros,
} from '../lib';
import { native } from '../lib/native';
import { benchNative } from '../bench/binding';
import { expectThrows } from './helpers/expect-throws';
import { collectGarbage } from './helpers/gc';
import { randnArray } from './helpers/gradcheck';
import { HALF_TOL, HALVES, isDifferentiable, isInt, makeInputs, outputs, paritySamples, sampleSeed, title } from './ops';
import type { OpInfo, OpSample } from './ops';
import type { DeviceSpec } from '../lib';

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
    // The probe sorts every device of the runtime into usable (cuda:N = devices[N]) and unusable, with a reason.
    const ordinals = [...info.devices, ...info.unusableDevices].map((d) => d.ordinal).sort((a, b) => a - b);
    expect(ordinals).toEqual(ordinals.map((_, i) => i));
    for (const d of info.unusableDevices) expect(d.reason).toMatch(new RegExp(`^CUDA device ${d.ordinal} `));
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

/**
 * Outputs and input gradients of a registry sample on `dev`: the inputs are the same values on
 * both devices, and the gradients come from one scalar, sum_k <out_k, g_k> with fixed random g_k,
 * so every output's gradient path is used.
 */
function evaluate(op: OpInfo, s: OpSample, dev: Dev, dtype: DT): { outs: number[][]; grads: (number[] | null)[] } {
  const ctx = { device: dev, dtype };
  const xs = makeInputs(s, ctx, sampleSeed(op, s));
  const outs = outputs(s.call(xs, ctx));
  let loss: Tensor | null = null;
  outs.forEach((o, k) => {
    if (!o.requiresGrad) return;
    // On the output's device: an op may move it (Tensor.cpu).
    const g = tensor(randnArray(o.numel, 1000 + k), { shape: o.shape, dtype: o.dtype as DT, device: o.device as DeviceSpec });
    const term = o.mul(g).sum();
    loss = loss ? loss.add(term) : term;
  });
  if (loss) (loss as Tensor).backward();
  return {
    outs: outs.map((o) => Array.from(o.toArray())),
    grads: xs.map((x) => (x.grad ? Array.from(x.grad.toArray()) : null)),
  };
}

function parity(op: OpInfo, s: OpSample): void {
  for (const dtype of op.dtypes) {
    const ref = evaluate(op, s, 'cpu', dtype);
    const got = evaluate(op, s, 'cuda', dtype);
    const tol = dtype === 'float64' ? 1e-10 : s.tol32 ?? op.tol32 ?? 2e-5;
    ref.outs.forEach((o, k) => {
      const e = normError(o, got.outs[k]);
      if (!(e <= tol)) throw new Error(`${title(op, s)} (${dtype}): output ${k} differs from the CPU by ${e} (tolerance ${tol})`);
    });
    ref.grads.forEach((g, k) => {
      if (g === null) {
        expect(got.grads[k]).toBeNull();
        return;
      }
      const e = normError(g, got.grads[k] as number[]);
      if (!(e <= tol)) throw new Error(`${title(op, s)} (${dtype}): gradient of input ${k} differs from the CPU by ${e} (tolerance ${tol})`);
    });
  }
}

// Every op of the registry (test/ops/), each sample: outputs and gradients on CUDA against the CPU.
const CASES = paritySamples().map(([op, s]) => [title(op, s), op, s] as const);

// The same samples in bfloat16 and float16 (each op's `halves`, default both), CUDA against the CPU
// on the same half inputs. Both backends compute in float and round once on store, but sum in
// different orders (the GEMMs: cuBLAS against the CPU's panels), so a result may round to the
// neighbouring half value: the registry's half tolerance (HALF_TOL, 4 units of roundoff) bounds it.
const HALF_CASES = paritySamples().flatMap(([op, s]) => (op.halves ?? HALVES)
  .map((half) => [`${title(op, s)} (${half})`, op, s, half] as const));

describeCuda('CUDA parity with the CPU backend in bfloat16 and float16', () => {
  test.each(HALF_CASES)('%s', (_name, op, s, half) => {
    const dtype = half as unknown as DT;  // the registry's contexts are typed float32/float64
    const ref = evaluate(op, s, 'cpu', dtype);
    const got = evaluate(op, s, 'cuda', dtype);
    const tol = op.tolHalf?.[half] ?? HALF_TOL[half];
    ref.outs.forEach((o, k) => {
      const e = normError(o, got.outs[k]);
      if (!(e <= tol)) throw new Error(`${title(op, s)} (${half}): output ${k} differs from the CPU by ${e} (tolerance ${tol})`);
    });
    ref.grads.forEach((g, k) => {
      if (g === null) {
        expect(got.grads[k]).toBeNull();
        return;
      }
      const e = normError(g, got.grads[k] as number[]);
      if (!(e <= tol)) throw new Error(`${title(op, s)} (${half}): gradient of input ${k} differs from the CPU by ${e} (tolerance ${tol})`);
    });
  });
});

// The cases themselves are checked on every machine, so the GPU run does not
// find a broken case first: each runs on the CPU, gives finite outputs, and a
// gradient for exactly the inputs that require one.
describe('parity cases (CPU half)', () => {
  const cpuOnly = CASES.filter(([, , s]) => !s.needsCuda);
  const withCuda = CASES.filter(([, , s]) => s.needsCuda);
  const check = (op: OpInfo, s: OpSample) => {
    for (const dtype of op.dtypes) {
      const r = evaluate(op, s, 'cpu', dtype);
      expect(r.outs.length).toBeGreaterThan(0);
      for (const o of r.outs) expect(o.every(Number.isFinite)).toBe(true);
      s.inputs.forEach((spec, i) => {
        if (isInt(spec) || spec.grad === false || !isDifferentiable(op)) expect(r.grads[i]).toBeNull();
        else expect(r.grads[i]?.every(Number.isFinite)).toBe(true);
      });
    }
  };
  test.each(cpuOnly)('%s', (_name, op, s) => check(op, s));
  (available ? test.each : test.skip.each)(withCuda)('%s', (_name, op, s) => check(op, s));
});

describeCuda('CUDA parity with the CPU backend', () => {
  test.each(CASES)('%s', (_name, op, s) => {
    parity(op, s);
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

  test('an adapter merged on the CPU and moved to CUDA unmerges there (its merged copies follow the weight)', () => {
    const lin = new Linear(12, 7);
    const l = new LoRALinear(lin, { r: 3, alpha: 6 });
    noGrad(() => l.B!.copy_(randn([7, 3])));
    const w0 = Array.from(lin.weight.toArray());
    l.mergeToOrig();
    l.to('cuda');
    expect(lin.weight.device).toBe('cuda:0');
    l.unmergeFromOrig();
    expect(lin.weight.device).toBe('cuda:0');
    expect(normError(w0, lin.weight.toArray())).toBeLessThan(1e-6);
  });

  test('rotary tables of a model on CUDA: generation holds no tables per length', () => {
    manualSeed(4);
    const m = new LlamaForCausalLM({
      model_type: 'llama', vocab_size: 32, hidden_size: 128, intermediate_size: 64, num_hidden_layers: 1,
      num_attention_heads: 2, num_key_value_heads: 1, max_position_embeddings: 256,
    }, { device: 'cuda' });
    m.generate([[1, 2]], { maxNewTokens: 2, eosTokenId: null });
    const before = nativeMemoryBytes();
    m.generate([[1, 2]], { maxNewTokens: 40, eosTokenId: null });
    // One pair of tables per length kept would be 2 * 4 * 64 * (3 + ... + 41) bytes, about 0.4 MB.
    expect(nativeMemoryBytes() - before).toBeLessThan(2 * 4 * 64 * 42 * 2);
  });

  test('padded and packed batches through a model on CUDA: the CPU logits, loss and gradients', () => {
    // Left padding and packing reach the attention kernels' per-query first keys, both directions.
    const config = {
      model_type: 'llama', vocab_size: 29, hidden_size: 32, intermediate_size: 40, num_hidden_layers: 2,
      num_attention_heads: 4, num_key_value_heads: 2, max_position_embeddings: 64,
    };
    const ids = [[0, 0, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12]];
    for (const opts of [{ attentionMask: [[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]] }, { cuSeqLens: [[0, 2, 6], [0, 1, 4, 6]] }]) {
      const run = (dev: Dev) => {
        manualSeed(9);
        const m = new LlamaForCausalLM(config, { dtype: 'float64', device: dev });
        const logits = noGrad(() => m.forward(ids, opts)).toArray();
        const loss = m.loss(ids, undefined, opts);
        loss.backward();
        return { logits, loss: loss.item(), grads: [...m.parameters()].map((p) => Array.from(p.grad!.toArray())) };
      };
      const cpu = run('cpu');
      const gpu = run('cuda');
      expect(normError(cpu.logits, gpu.logits)).toBeLessThan(1e-10);
      expect(Math.abs(cpu.loss - gpu.loss)).toBeLessThan(1e-10);
      cpu.grads.forEach((g, i) => expect(normError(g, gpu.grads[i])).toBeLessThan(1e-9));
    }
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
      let cpuError: NodeJS.ErrnoException | null = null;
      try {
        tensor([1, 2, 3], { dtype: 'int32' }).copy_(tensor(bad, { dtype: 'float64' }));
      } catch (e) {
        cpuError = e as NodeJS.ErrnoException;
      }
      expect(cpuError).not.toBeNull();
      const t = tensor([1, 2, 3], { dtype: 'int32', device: 'cuda' });
      t.copy_(tensor(bad, { dtype: 'float64', device: 'cuda' })); // queued: the kernel finds it
      let gpuError: NodeJS.ErrnoException | null = null;
      try {
        cuda.synchronize('cuda');
      } catch (e) {
        gpuError = e as NodeJS.ErrnoException;
      }
      const facts = (e: NodeJS.ErrnoException | null) => e && { name: e.name, code: e.code, message: e.message };
      expect(facts(gpuError)).toEqual(facts(cpuError));
      expect(facts(gpuError)!.code).toBe('ERR_OUT_OF_RANGE');
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

  test('clipGradNorm over more gradients than one launch takes, and long ones, in float32 and float64', () => {
    for (const dtype of ['float32', 'float64'] as const) {
      const run = (dev: 'cpu' | 'cuda') => {
        manualSeed(9);
        // 1100 small gradients (two tables of the multi-tensor kernel) and one of several blocks.
        const shapes = [...Array.from({ length: 1100 }, (_, i) => [1 + (i % 7)]), [20011]];
        const ps = shapes.map((s) => zeros(s, { device: dev, dtype }).requiresGrad_(true));
        ps.forEach((p) => {
          p.grad = randn([...p.shape], { device: dev, dtype });
        });
        const norm = clipGradNorm(ps, 3);
        return { norm: norm.item(), grads: ps.map((p) => Array.from(p.grad!.toArray())).flat() };
      };
      const cpu = run('cpu');
      const gpu = run('cuda');
      expect(cpu.norm).toBeGreaterThan(3);
      expect(Math.abs(gpu.norm - cpu.norm) / cpu.norm).toBeLessThan(dtype === 'float32' ? 1e-6 : 1e-14);
      expect(normError(cpu.grads, gpu.grads)).toBeLessThan(dtype === 'float32' ? 1e-6 : 1e-14);
    }
  });

  test('ops refuse tensors of different devices with a clear message', () => {
    const a = randn([3], { device: 'cuda' });
    const b = randn([3]);
    expectThrows(() => a.add(b), RangeError, /is on cuda:0 but .* is on cpu/);
  });

  test('the benchmarks\' binding (bench/binding.ts): events time the device stream, a plain GEMM into c', () => {
    const a = randn([64, 33], { device: 'cuda' });
    const b = randn([17, 33], { device: 'cuda' });
    const c = zeros([64, 17], { device: 'cuda' });
    const start = benchNative.eventRecord(0);
    benchNative.gemmInto(a._h, b._h, c._h, false, true, 1, 0);
    const end = benchNative.eventRecord(0);
    const ms = benchNative.eventElapsed(start, end);
    benchNative.eventDestroy(start);
    benchNative.eventDestroy(end);
    expect(Number.isFinite(ms) && ms >= 0).toBe(true);
    expect(normError(a.cpu().matmul(b.cpu().t()).toArray(), c.toArray())).toBeLessThan(1e-5);
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
