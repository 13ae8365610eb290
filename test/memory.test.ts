// Training memory: what the graph keeps (a node holds only what its backward reads, and a
// model's intermediates go as soon as nothing needs them), activation checkpointing
// (bit-identical gradients with the same dropout masks), and on CUDA (the emulator in CI)
// the peak device memory of a training step.
import { spawnSync } from 'child_process';
import * as path from 'path';
import {
  F, LlamaForCausalLM, Tensor, Trainer, backendInfo, cuda, getRngState, injectLora, manualSeed, tensor, zeros,
} from '../lib';
import { releaseIntermediate } from '../lib/autograd';
import { collectGarbage } from './helpers/gc';

const cudaAvailable = backendInfo().cuda.available;

function tinyConfig(layers: number, hidden = 32, heads = 4, kvHeads = 2) {
  return {
    architectures: ['LlamaForCausalLM'], model_type: 'llama', vocab_size: 64, hidden_size: hidden,
    intermediate_size: 2 * hidden, num_hidden_layers: layers, num_attention_heads: heads,
    num_key_value_heads: kvHeads, max_position_embeddings: 4096, rms_norm_eps: 1e-6, rope_theta: 10000,
  };
}

function ids(B: number, T: number, seed: number): number[][] {
  let s = seed;
  return Array.from({ length: B }, () => Array.from({ length: T }, () => {
    s = (s * 1103515245 + 12345) % 2147483648;
    return s % 64;
  }));
}

type Grads = Map<string, Float32Array | Float64Array | Int32Array>;

/** One loss and backward; the gradients of every parameter that requires grad, by name. */
function step(model: LlamaForCausalLM, batch: number[][], options?: { attentionMask: number[][] }): { loss: number; grads: Grads } {
  model.zeroGrad(true);
  const loss = options ? model.loss(batch, undefined, options) : model.loss(batch);
  const v = loss.item();
  loss.backward();
  loss.dispose();
  const grads: Grads = new Map();
  for (const [name, p] of model.namedParameters()) if (p.requiresGrad && p.grad) grads.set(name, p.grad.toArray());
  return { loss: v, grads };
}

function expectSameBits(a: Grads, b: Grads): void {
  expect([...b.keys()]).toEqual([...a.keys()]);
  for (const [name, g] of a) {
    const h = b.get(name)!;
    expect(h.length).toBe(g.length);
    let diff = 0;
    for (let i = 0; i < g.length; i++) if (!Object.is(g[i], h[i])) diff++;
    if (diff) throw new Error(`${name}: ${diff} of ${g.length} gradient elements differ`);
  }
}

describe('releaseIntermediate', () => {
  test('frees an unsaved intermediate at once and keeps its place in the graph', () => {
    const w = tensor([1, 2, 3], { requiresGrad: true });
    const a = w.mul(2); // MulBackward keeps w (a leaf), not a
    const b = a.add(1); // AddBackward keeps nothing
    releaseIntermediate(a);
    expect(a.isDisposed).toBe(true);
    const loss = b.mul(b).sum(); // b is saved by MulBackward
    releaseIntermediate(b);
    expect(b.isDisposed).toBe(false); // still needed by backward
    loss.backward();
    expect(b.isDisposed).toBe(true); // freed with the node that kept it
    expect(Array.from(w.grad!.toArray())).toEqual([12, 20, 28]); // d/dw (2w + 1)^2 = 4 (2w + 1)
  });

  test('never frees a parameter or a tensor kept from the graph', () => {
    const w = tensor([1, 2], { requiresGrad: true });
    releaseIntermediate(w);
    expect(w.isDisposed).toBe(false);
  });

  test('a frozen linear layer does not keep its input; dx and db as with a trainable one', () => {
    for (const device of cudaAvailable ? ['cpu', 'cuda'] as const : ['cpu'] as const) {
      const grads = (freeze: boolean) => {
        manualSeed(4);
        const w = tensor(Array.from({ length: 12 }, (_, i) => Math.sin(i)), { shape: [3, 4], device });
        const b = tensor([0.5, -1, 2], { device, requiresGrad: true });
        w.requiresGrad = !freeze;
        const leaf = tensor(Array.from({ length: 20 }, (_, i) => Math.cos(i)), { shape: [5, 4], device, requiresGrad: true });
        const x = leaf.mul(2);
        const y = F.linear(x, w, b);
        releaseIntermediate(x);
        expect(x.isDisposed).toBe(freeze); // kept for dW only
        y.mul(y).sum().backward();
        return [leaf.grad!.toArray(), b.grad!.toArray()];
      };
      const frozen = grads(true);
      const trained = grads(false);
      frozen.forEach((g, i) => Array.from(g).forEach((v, j) => expect(v).toBeCloseTo(trained[i][j], 5)));
    }
  });

  test('a node does not keep the input it does not read alive', () => {
    // PermuteBackward reads nothing: the input, once freed, is gone before backward runs.
    const w = tensor([[1, 2], [3, 4]], { requiresGrad: true });
    const a = w.mul(3);
    const t = a.transpose(0, 1);
    releaseIntermediate(a);
    expect(a.isDisposed).toBe(true);
    t.sum().backward();
    expect(Array.from(w.grad!.toArray())).toEqual([3, 3, 3, 3]);
  });
});

describe('gradient checkpointing', () => {
  const run = (device: 'cpu' | 'cuda', dtype: 'float32' | 'float64', lora: boolean, masked: boolean) => {
    manualSeed(7);
    const model = new LlamaForCausalLM(tinyConfig(3), { dtype, device });
    if (lora) injectLora(model, { targetModules: ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'], r: 4, alpha: 8, dropout: 0.25 });
    // LoRA B starts at zero; move it so that every gradient is non-trivial.
    for (const [name, p] of model.namedParameters()) {
      if (name.endsWith('.B')) p.copy_(Array.from({ length: p.numel }, (_, i) => Math.sin(i + name.length) * 0.1));
    }
    model.train();
    const batch = ids(2, 9, 3);
    const options = masked ? { attentionMask: [[0, 0, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 1, 1]] } : undefined;
    manualSeed(11);
    const plain = step(model, batch, options);
    const rngPlain = getRngState();
    expect(model.isGradientCheckpointing).toBe(false);
    model.gradientCheckpointingEnable();
    expect(model.isGradientCheckpointing).toBe(true);
    manualSeed(11);
    const ckpt = step(model, batch, options);
    // The generator ends where it ended without checkpointing: the replay does not advance it.
    expect(getRngState()).toEqual(rngPlain);
    expect(ckpt.loss).toBe(plain.loss);
    expect(plain.grads.size).toBeGreaterThan(0);
    expectSameBits(plain.grads, ckpt.grads);
    if (lora) {
      // Dropout is really drawn: another seed gives another loss.
      manualSeed(12);
      expect(step(model, batch, options).loss).not.toBe(plain.loss);
    }
    model.gradientCheckpointingDisable();
    expect(model.isGradientCheckpointing).toBe(false);
    // Gradient accumulation over two backward passes adds up the same way.
    manualSeed(11);
    model.zeroGrad(true);
    for (let k = 0; k < 2; k++) model.loss(batch).backward();
    const acc1 = [...model.parameters()].filter((p) => p.grad).map((p) => p.grad!.toArray());
    model.gradientCheckpointingEnable();
    manualSeed(11);
    model.zeroGrad(true);
    for (let k = 0; k < 2; k++) model.loss(batch).backward();
    const acc2 = [...model.parameters()].filter((p) => p.grad).map((p) => p.grad!.toArray());
    expect(acc2.length).toBe(acc1.length);
    acc1.forEach((g, i) => expect(Buffer.from(acc2[i].buffer).equals(Buffer.from(g.buffer))).toBe(true));
  };

  test('LoRA with dropout: the same gradients bit for bit (CPU, float32)', () => run('cpu', 'float32', true, false));
  test('LoRA with dropout and a padded batch (key starts): the same gradients bit for bit (CPU, float64)', () => run('cpu', 'float64', true, true));
  test('every parameter trained (the layers\' inputs need gradients): the same gradients bit for bit', () => run('cpu', 'float32', false, false));
  (cudaAvailable ? test : test.skip)('LoRA with dropout: the same gradients bit for bit (CUDA)', () => run('cuda', 'float32', true, true));

  test('only while training with a graph: eval and noGrad forward as before', () => {
    manualSeed(3);
    const model = new LlamaForCausalLM(tinyConfig(2));
    injectLora(model, { targetModules: ['q_proj', 'v_proj'], r: 2, alpha: 4 });
    model.gradientCheckpointingEnable();
    model.eval();
    const a = model.forward(ids(1, 5, 1));
    expect(a.gradFn).not.toBe('CheckpointBackward');
    model.train();
    const loss = model.loss(ids(1, 5, 1));
    loss.backward();
    expect([...model.parameters()].some((p) => p.grad !== null)).toBe(true);
  });

  test('Trainer option gradientCheckpointing: turns it on when training starts; needs a model that has it', async () => {
    manualSeed(3);
    const model = new LlamaForCausalLM(tinyConfig(1));
    injectLora(model, { targetModules: ['q_proj'], r: 2, alpha: 4 });
    const trainer = new Trainer({ model, train: [{ ids: ids(1, 5, 4) }], gradientCheckpointing: true });
    expect(model.isGradientCheckpointing).toBe(false);
    await trainer.train();
    expect(model.isGradientCheckpointing).toBe(true);
    const w = tensor([1], { requiresGrad: true });
    expect(() => new Trainer({ loss: () => w.sum(), params: [w], train: [{ ids: [[1]] }], gradientCheckpointing: true }))
      .toThrow(/^Trainer: options\.model must be a model with gradientCheckpointingEnable\(\)/);
    expect(() => new Trainer({ model, train: [{ ids: [[1]] }], gradientCheckpointing: 'yes' as unknown as boolean }))
      .toThrow(/^Trainer: options\.gradientCheckpointing must be a boolean/);
  });

  test('a checkpointed layer whose input was modified in place since forward fails clearly', () => {
    manualSeed(3);
    const model = new LlamaForCausalLM(tinyConfig(1));
    injectLora(model, { targetModules: ['q_proj'], r: 2, alpha: 4 });
    model.gradientCheckpointingEnable();
    model.train();
    // The rotary tables are kept for the recompute; changing them in place is caught.
    const loss = model.loss(ids(1, 4, 2));
    const rope = (model.model as unknown as { _rope: { cos: Tensor } })._rope;
    rope.cos.copy_(rope.cos.toArray());
    expect(() => loss.backward()).toThrow(/modified in place/);
  });
});

// Peak device memory of one training step (forward, backward) of a small LoRA Llama.
function peakOfStep(T: number, layers: number, ckpt: boolean): { peak: number; afterForward: number; base: number } {
  manualSeed(5);
  const model = new LlamaForCausalLM(tinyConfig(layers, 64, 4, 2), { device: 'cuda' });
  injectLora(model, { targetModules: ['q_proj', 'v_proj'], r: 4, alpha: 8, dropout: 0.1 });
  if (ckpt) model.gradientCheckpointingEnable();
  model.train();
  const batch = ids(1, T, 9);
  // One step first, so that gradients (kept between steps) and the rotary tables exist.
  model.loss(batch).backward();
  cuda.synchronize();
  // Tensors dropped earlier (by this file's other tests or by other suites in this worker) are freed
  // now rather than by a collection in the middle of the measured step, which would lower its peak
  // below the base taken here.
  collectGarbage();
  const base = cuda.memoryStats().allocated;
  cuda.resetPeakMemoryStats();
  const loss = model.loss(batch);
  const afterForward = cuda.memoryStats().allocated;
  loss.backward();
  loss.dispose();
  cuda.synchronize();
  const peak = cuda.memoryStats().peak - base;
  for (const p of model.parameters()) p.dispose();
  return { peak, afterForward: afterForward - base, base };
}

(cudaAvailable ? describe : describe.skip)('peak device memory of a training step (CUDA)', () => {
  test('grows linearly in T, and checkpointing drops all but one layer\'s activations', () => {
    const L = 3;
    const p = [64, 128, 256].map((T) => peakOfStep(T, L, false));
    // Linear: doubling T at most doubles the peak (a T^2 term would more than double it).
    expect(p[1].peak).toBeLessThanOrEqual(2 * p[0].peak * 1.05);
    expect(p[2].peak).toBeLessThanOrEqual(2 * p[1].peak * 1.05);
    expect(p[2].peak).toBeGreaterThan(1.5 * p[1].peak); // it does grow with T
    // What one layer keeps for backward: the graph of L layers against that of one.
    const one = peakOfStep(256, 1, false);
    const perLayer = (p[2].afterForward - one.afterForward) / (L - 1);
    const x = 256 * 64 * 4; // a layer's input [1, T, hidden] in float32, which checkpointing keeps
    const c = peakOfStep(256, L, true);
    expect(perLayer).toBeGreaterThan(4 * x);
    // Checkpointed, the step keeps every layer's input and rebuilds one layer's activations at a
    // time: the peak drops by the other L - 1 layers' activations less the L inputs kept (a 1%
    // allowance for small per-layer buffers).
    expect(p[2].peak - c.peak).toBeGreaterThanOrEqual((L - 1) * perLayer - L * x - 0.01 * perLayer);
  });
});

(cudaAvailable ? describe : describe.skip)('device memory pressure (CUDA)', () => {
  test('an allocation that fails collects unreferenced tensors, releases the cache and retries', () => {
    const total = backendInfo().cuda.devices[0].memory;
    const block = Math.floor(total / 16); // a quarter of the device, in float32 elements
    const before = cuda.memoryStats().allocated;
    // Three quarters of the device held by tensors nothing refers to, never disposed: device memory
    // is not reported to V8, so only the collection run by the failing allocation frees them.
    for (let i = 0; i < 3; i++) zeros([block], { device: 'cuda' });
    expect(cuda.memoryStats().allocated - before).toBeGreaterThanOrEqual(3 * block * 4);
    const big = zeros([2 * block], { device: 'cuda' }); // half the device: fits once they are gone
    expect(big.numel).toBe(2 * block);
    expect(cuda.memoryStats().allocated - before).toBeLessThan(3 * block * 4);
    big.dispose();
    // More than the device has still fails, after the collection, as ERR_CUDA_OOM.
    let err: NodeJS.ErrnoException | null = null;
    try {
      zeros([5 * block], { device: 'cuda' });
    } catch (e) {
      err = e as NodeJS.ErrnoException;
    }
    expect(err?.code).toBe('ERR_CUDA_OOM');
  });

  const emulated = backendInfo().cuda.devices[0]?.name === 'lora-cuda CUDA emulator';
  (emulated ? test : test.skip)('without stream-ordered pools: freed blocks are reused, emptyCache and OOM give them back', () => {
    // A child process, since the device reports no pools only from its start (LORA_CUDA_EMU_NO_POOLS).
    const script = `
      const { cuda, zeros } = require('./lib');
      const MiB = 2 ** 20;
      const s = () => cuda.memoryStats();
      const a = zeros([MiB], { device: 'cuda' });
      const r0 = s().reserved;
      a.dispose();
      const kept = s();
      const b = zeros([MiB], { device: 'cuda' });
      const reused = s().reserved === r0;
      b.dispose();
      cuda.emptyCache();
      const emptied = s();
      // Garbage in the cache and in unreferenced tensors, then an allocation only both together allow.
      const total = require('./lib').backendInfo().cuda.devices[0].memory;
      const q = Math.floor(total / 16);
      zeros([q], { device: 'cuda' }).dispose();
      for (let i = 0; i < 2; i++) zeros([q], { device: 'cuda' });
      const big = zeros([3 * q], { device: 'cuda' });
      console.log(JSON.stringify({ kept, reused, emptied, big: big.numel === 3 * q }));
    `;
    const r = spawnSync(process.execPath, ['-r', './test/helpers/ts-register.js', '-e', script], {
      cwd: path.join(__dirname, '..'), env: { ...process.env, LORA_CUDA_EMU_NO_POOLS: '1' }, encoding: 'utf8',
    });
    expect(r.stderr).toBe('');
    const out = JSON.parse(r.stdout.trim().split('\n').pop()!);
    expect(out.kept.allocated).toBe(0);
    expect(out.kept.reserved).toBeGreaterThanOrEqual(4 * 2 ** 20); // the freed block stays cached
    expect(out.reused).toBe(true);
    expect(out.emptied.reserved).toBe(0);
    expect(out.big).toBe(true);
  });
});
