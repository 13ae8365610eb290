// The vectorised float32 paths of the CPU backend (src/cpu/fast_f32.cpp) against the plain float64
// loops of the same ops: rows longer and shorter than a vector, a tail, -inf logits (masked
// classes), NaN, ignored rows, label smoothing, per-row and scalar upstream gradients; and the LoRA
// and linear layers on the GEMM paths made for them (src/cpu/linear.cpp). CI runs
// this file on every instruction-set path (LORA_CUDA_CPU_KERNELS).
import { F, Linear, LoRALinear, Tensor, manualSeed, noGrad, randn, tensor } from '../lib';
import { native } from '../lib/native';
import { spawnSync } from 'child_process';
import * as path from 'path';

function values(t: Tensor): number[] {
  return Array.from(t.toArray());
}

function maxAbsDiff(a: number[], b: number[]): number {
  expect(a.length).toBe(b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    if (Number.isNaN(a[i]) || Number.isNaN(b[i])) {
      if (Number.isNaN(a[i]) !== Number.isNaN(b[i])) return Infinity;
      continue;
    }
    m = Math.max(m, Math.abs(a[i] - b[i]));
  }
  return m;
}

/** Loss and dlogits of F.crossEntropy for logits given as float64 values, in the dtype asked. */
function ce(x: number[], shape: [number, number], targets: number[], dtype: 'float32' | 'float64', opts: { labelSmoothing?: number; reduction?: 'mean' | 'none' }, upstream?: number[]) {
  const logits = tensor(x, { dtype, shape }).requiresGrad_(true);
  const loss = F.crossEntropy(logits, targets, { ignoreIndex: -100, ...opts });
  if (upstream) loss.backward(tensor(upstream, { dtype, shape: [shape[0]] }));
  else loss.backward();
  const out = { loss: values(loss), grad: values(logits.grad!) };
  loss.dispose();
  logits.dispose();
  return out;
}

describe.each([1, 7, 16, 33, 1003])('float32 cross entropy over %i classes matches the float64 loop', (C) => {
  const N = 6;
  manualSeed(C);
  const x = values(noGrad(() => randn([N, C], { dtype: 'float64', std: 4 })));
  const targets = Array.from({ length: N }, (_, i) => (i * 5 + 2) % C);
  targets[2] = -100;
  // Masked classes (-inf), never a target; without label smoothing only (with it the loss is
  // infinite, as in PyTorch).
  const masked = [1 * C + 1, 3 * C + C - 1].filter((k) => C > 2 && k % C !== targets[Math.floor(k / C)]);

  test.each([
    ['mean', 0],
    ['mean', 0.1],
    ['none', 0.2],
  ] as const)('reduction %s, label smoothing %f', (reduction, labelSmoothing) => {
    const up = reduction === 'none' ? Array.from({ length: N }, (_, i) => (i % 3) - 0.5) : undefined;
    const xs = x.slice();
    if (labelSmoothing === 0) for (const k of masked) xs[k] = -Infinity;
    const x32 = Array.from(Float32Array.from(xs)); // both dtypes see the same values
    const a = ce(x32, [N, C], targets, 'float32', { reduction, labelSmoothing }, up);
    const b = ce(x32, [N, C], targets, 'float64', { reduction, labelSmoothing }, up);
    const scale = Math.max(...b.loss.map(Math.abs), 1);
    expect(maxAbsDiff(a.loss, b.loss)).toBeLessThan(1e-5 * scale);
    // float32 rounding of lse (stored in float by both) and of the products: about 1e-6 at most.
    expect(maxAbsDiff(a.grad, b.grad)).toBeLessThan(2e-6);
    // Ignored rows get no gradient; masked classes get none beyond the smoothing term.
    for (let j = 0; j < C; j++) expect(a.grad[2 * C + j]).toBe(0);
    for (const k of labelSmoothing === 0 ? masked : []) {
      expect(a.grad[k]).toBe(0);
      expect(b.grad[k]).toBe(0);
    }
    expect(a.loss.every(Number.isFinite)).toBe(true);
  });
});

test('float32 cross entropy: a NaN logit makes its row NaN, as the float64 loop does', () => {
  const C = 40;
  const x = Array.from({ length: 2 * C }, (_, i) => Math.sin(i));
  x[C + 17] = NaN;
  const a = ce(x, [2, C], [3, 4], 'float32', { reduction: 'none' }, [1, 1]);
  const b = ce(x, [2, C], [3, 4], 'float64', { reduction: 'none' }, [1, 1]);
  expect(Number.isNaN(a.loss[1])).toBe(true);
  expect(Number.isNaN(b.loss[1])).toBe(true);
  expect(Math.abs(a.loss[0] - b.loss[0])).toBeLessThan(1e-5);
});

// The LoRA layer's CPU paths (src/cpu/linear.cpp): on the built-in GEMM the adapter's rank-r term
// and the bias ride on the frozen product's last K block (forward, and dx without dropout), the
// adapter's thin products run the tall kernel (h, dh) or the transposed one (dB). Checked against
// the layer written out in float64 loops, on shapes over the kernels' K and column blocks, odd
// tiles and a rank of 1, with and without a bias.
//
// From 384 rows up (float32 and float64 on the built-in kernel), h = x A^T and dh = s g B are made
// inside the frozen products from the rows they pack (a computed tail): there, x's 1100 columns
// span two K blocks (three for float64) and so do g's 2100, 2100 outputs span two column blocks
// (h made once per row), r = 20 and 40 fill one and two of the tile's column panels, and 400 and
// 389 rows end in a partial row tile.
describe.each([
  [301, 1100, 70, 5, true],
  [64, 40, 2100, 16, false],
  [7, 33, 9, 1, true],
  [130, 64, 48, 16, true],
  [400, 1100, 70, 5, true],
  [389, 40, 2100, 20, false],
  [390, 64, 48, 40, true],
] as const)('a LoRA layer, x [%i, %i], out %i, r %i, bias %s, matches float64 loops', (M, inF, outF, r, bias) => {
  const rnd = (n: number, s: number) => Array.from({ length: n }, (_, i) => s * Math.sin(1.3 * i + 0.7 * n + r));
  const [x, W, b, A, B, g] = [rnd(M * inF, 1), rnd(outF * inF, 0.1), rnd(outF, 0.5), rnd(r * inF, 0.1), rnd(outF * r, 0.2), rnd(M * outF, 1)]
    .map((v) => Array.from(Float32Array.from(v))); // both dtypes see the same values
  const scale = 2.5;
  // Float64 reference: y = x W^T + b + s (x A^T) B^T; dh = s g B; dx = g W + dh A; dA = dh^T x;
  // dB = s g^T h.
  const dot = (P: number[], i: number, Q: number[], j: number, n: number, sp: number, sq: number) => {
    let s = 0;
    for (let k = 0; k < n; k++) s += P[i + k * sp] * Q[j + k * sq];
    return s;
  };
  const h = Array.from({ length: M * r }, (_, t) => dot(x, Math.floor(t / r) * inF, A, (t % r) * inF, inF, 1, 1));
  const dh = Array.from({ length: M * r }, (_, t) => scale * dot(g, Math.floor(t / r) * outF, B, t % r, outF, 1, r));
  const ref = {
    y: Array.from({ length: M * outF }, (_, t) => {
      const i = Math.floor(t / outF), j = t % outF;
      return dot(x, i * inF, W, j * inF, inF, 1, 1) + (bias ? b[j] : 0) + scale * dot(h, i * r, B, j * r, r, 1, 1);
    }),
    dx: Array.from({ length: M * inF }, (_, t) => {
      const i = Math.floor(t / inF), j = t % inF;
      return dot(g, i * outF, W, j, outF, 1, inF) + dot(dh, i * r, A, j, r, 1, inF);
    }),
    dA: Array.from({ length: r * inF }, (_, t) => dot(dh, Math.floor(t / inF), x, t % inF, M, r, inF)),
    dB: Array.from({ length: outF * r }, (_, t) => scale * dot(g, Math.floor(t / r), h, t % r, M, outF, r)),
  };
  // dA and dB sum over the rows products that are sums themselves, and cancel: their rounding is
  // measured against the same sums of magnitudes (|dh|^T |x|, s |g|^T |h|).
  const abs = (v: number[]) => v.map(Math.abs);
  const [ax, ag, aA, aB] = [abs(x), abs(g), abs(A), abs(B)];
  const hAbs = Array.from({ length: M * r }, (_, t) => dot(ax, Math.floor(t / r) * inF, aA, (t % r) * inF, inF, 1, 1));
  const dhAbs = Array.from({ length: M * r }, (_, t) => scale * dot(ag, Math.floor(t / r) * outF, aB, t % r, outF, 1, r));
  const mag = {
    dA: Array.from({ length: r * inF }, (_, t) => dot(dhAbs, Math.floor(t / inF), ax, t % inF, M, r, inF)),
    dB: Array.from({ length: outF * r }, (_, t) => scale * dot(ag, Math.floor(t / r), hAbs, t % r, M, outF, r)),
  };

  test.each(['float32', 'float64'] as const)('%s: y, dx, dA, dB, and the wrapped layer\'s y', (dtype) => {
    const lin = new Linear(inF, outF, { bias, dtype });
    const lora = new LoRALinear(lin, { r, alpha: scale * r });
    noGrad(() => {
      lin.weight.copy_(tensor(W, { dtype, shape: [outF, inF] }));
      if (bias) lin.bias!.copy_(tensor(b, { dtype, shape: [outF] }));
      lora.A!.copy_(tensor(A, { dtype, shape: [r, inF] }));
      lora.B!.copy_(tensor(B, { dtype, shape: [outF, r] }));
    });
    const xt = tensor(x, { dtype, shape: [M, inF] }).requiresGrad_(true);
    const y = lora.forward(xt);
    y.backward(tensor(g, { dtype, shape: [M, outF] }));
    // float32: relative to each output's size (sums of up to ~2000 rounded products).
    const tol = (v: number[]) => (dtype === 'float32' ? 3e-6 : 1e-13) * v.reduce((m, e) => Math.max(m, Math.abs(e)), 1) * Math.sqrt(Math.max(inF, outF, M) / 64 + 1);
    expect(maxAbsDiff(values(y), ref.y)).toBeLessThan(tol(ref.y));
    expect(maxAbsDiff(values(xt.grad!), ref.dx)).toBeLessThan(tol(ref.dx));
    expect(maxAbsDiff(values(lora.A!.grad!), ref.dA)).toBeLessThan(tol(mag.dA));
    expect(maxAbsDiff(values(lora.B!.grad!), ref.dB)).toBeLessThan(tol(mag.dB));
    // The wrapped layer alone: its bias is the product's tail too.
    const yLin = values(noGrad(() => lin.forward(xt)));
    const refLin = Array.from({ length: M * outF }, (_, t) => dot(x, Math.floor(t / outF) * inF, W, (t % outF) * inF, inF, 1, 1) + (bias ? b[t % outF] : 0));
    expect(maxAbsDiff(yLin, refLin)).toBeLessThan(tol(refLin));
  });
});

// The head's dx through its cross entropy in one product (native linearCrossEntropyBackward): on
// float32 with the built-in kernel, the cross entropy's gradient is formed while the product packs
// the logits. Against the float64 loop on the same float32 logits: ignored rows (one of NaN
// logits, which must add nothing), label smoothing, a scalar or per-row upstream gradient,
// targets on the first and last class and on both sides of the K blocks and of the deep
// products' halves (V = 3000 over 30 x 40 goes as halves of 1488 and 1512 columns).
describe.each([[30, 40, 3000], [13, 20, 100], [50, 64, 700]])('the head\'s dx through the cross entropy, %i rows, hidden %i, %i classes', (N, H, V) => {
  manualSeed(N + V);
  const xs = values(noGrad(() => randn([N, H], { dtype: 'float64' })));
  const ws = values(noGrad(() => randn([V, H], { dtype: 'float64', std: 0.5 })));
  const special = [0, V - 1, 743, 744, 1487, 1488, 2999].filter((t) => t < V);
  const targets = Array.from({ length: N }, (_, i) => (i % 7 === 3 ? -100 : i < special.length ? special[i] : (i * 7919) % V));
  const nanRow = 3; // ignored: its logits are made NaN below

  test.each([
    ['float32', 0, false], ['float32', 0.1, false], ['float32', 0.1, true], ['float64', 0.1, true],
  ] as const)('%s, label smoothing %f, per-row gradient %s', (dtype, ls, perRow) => {
    const x = tensor(xs, { dtype, shape: [N, H] });
    const w = tensor(ws, { dtype, shape: [V, H] });
    const logits = noGrad(() => F.linear(x, w));
    const lv = values(logits);
    for (let j = 0; j < V; j++) lv[nanRow * V + j] = NaN;
    const lt = tensor(lv, { dtype, shape: [N, V] });
    const tt = tensor(Int32Array.from(targets), { dtype: 'int32', shape: [N] });
    const [rows, lse] = native.crossEntropyForward(lt._h, tt._h, -100, ls);
    const gv = perRow ? Array.from({ length: N }, (_, i) => 0.5 + (i % 5) / 4) : [1.25];
    const g = tensor(gv, { dtype, shape: perRow ? [N] : [] });
    const scale = perRow ? 1 : 1 / targets.filter((t) => t !== -100).length;
    const dx = values(x._make(native.linearCrossEntropyBackward(lt._h, lse, tt._h, -100, ls, g._h, scale, w._h), [N, H]));
    native.dispose(rows);
    native.dispose(lse);
    // float64 loop: dlogits = gs (softmax - smoothed one-hot), then dx = dlogits W.
    const ref = new Array<number>(N * H).fill(0);
    const wv = values(w);
    for (let i = 0; i < N; i++) {
      if (targets[i] === -100) continue;
      const row = lv.slice(i * V, (i + 1) * V);
      const m = Math.max(...row);
      const l = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
      const gs = scale * gv[perRow ? i : 0];
      for (let k = 0; k < V; k++) {
        const d = gs * (Math.exp(row[k] - l) - ls / V - (k === targets[i] ? 1 - ls : 0));
        for (let j = 0; j < H; j++) ref[i * H + j] += d * wv[k * H + j];
      }
    }
    for (let j = 0; j < H; j++) expect(dx[nanRow * H + j]).toBe(0);
    const big = ref.reduce((a, v) => Math.max(a, Math.abs(v)), 0);
    expect(maxAbsDiff(dx, ref)).toBeLessThan((dtype === 'float32' ? 3e-6 : 1e-13) * big * Math.sqrt(V / 64 + 1));
  });
});

// The head's logits with their logsumexp folded in as the product writes them (native
// linearCrossEntropyForward; float32 on the built-in kernel, one partial per 2048 columns): against
// the float64 loop over the same float32 logits, with more than one chunk per thread, rows past a
// whole row block, an ignored row and a row of NaN (its loss NaN, as the cross entropy gives).
describe.each([[50, 40, 3000], [13, 20, 5000], [7, 9, 100]])('the head\'s logits and logsumexp in one product, %i rows, hidden %i, %i classes', (N, H, V) => {
  test.each(['float32', 'float64'] as const)('%s', (dtype) => {
    manualSeed(N * V);
    const xs = values(noGrad(() => randn([N, H], { dtype: 'float64' })));
    const nanRow = 5;
    for (let j = 0; j < H; j++) xs[nanRow * H + j] = NaN;
    const x = tensor(xs, { dtype, shape: [N, H] });
    const w = noGrad(() => randn([V, H], { dtype, std: 0.7 }));
    const targets = Array.from({ length: N }, (_, i) => (i === 2 ? -100 : (i * 7919) % V));
    const tt = tensor(Int32Array.from(targets), { dtype: 'int32', shape: [N] });
    const [lh, rh, sh] = native.linearCrossEntropyForward(x._h, w._h, tt._h, -100, 0);
    const logits = values(x._make(lh, [N, V]));
    const rows = values(x._make(rh, [N]));
    const lse = values(x._make(sh, [N]));
    const plain = values(noGrad(() => F.linear(x, w)));
    expect(maxAbsDiff(logits, plain)).toBe(0); // the same product
    for (let i = 0; i < N; i++) {
      const row = logits.slice(i * V, (i + 1) * V);
      if (i === nanRow) {
        expect([i, lse[i], rows[i]]).toEqual([i, NaN, NaN]);
        continue;
      }
      const m = Math.max(...row);
      const l = m + Math.log(row.reduce((s, v) => s + Math.exp(v - m), 0));
      const tol = (dtype === 'float32' ? 2e-6 : 1e-13) * Math.max(1, Math.abs(l));
      expect([i, Math.abs(lse[i] - l) < tol]).toEqual([i, true]);
      const loss = targets[i] === -100 ? 0 : l - row[targets[i]];
      expect([i, Math.abs(rows[i] - loss) < tol * 2]).toEqual([i, true]);
    }
  });
});

test('a target outside the classes is the cross entropy\'s error, before any product', () => {
  const x = randn([3, 4]);
  const w = randn([10, 4]);
  const tt = tensor(Int32Array.from([1, 10, 2]), { dtype: 'int32', shape: [3] });
  expect(() => native.linearCrossEntropyForward(x._h, w._h, tt._h, -100, 0)).toThrow('cross entropy: target 10 at row 1 is outside [0, 10)');
});

// A LoRA layer's h and dh on the built-in kernel are made inside the frozen products (a computed
// tail) or by a thin product first, as the thread count makes worth it: here the forward's h is
// made inside on one thread and outside on two (1200 outputs over 400 rows), over two K blocks
// (1100 inputs, float32 on AVX-512). Either way each element is the same sum, so one, two and
// three threads give the same bits.
test('a LoRA layer with computed tails gives the same bits on any number of threads', () => {
  const root = path.resolve(__dirname, '..');
  const script = `
    const native = require('node-gyp-build')(${JSON.stringify(root)});
    const M = 400, I = 1100, O = 1200, r = 8;
    const f = (n, k) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * k) * 2);
    const x = native.fromArray(f(M * I, 0.37), [M, I], 0, 0, 0);
    const w = native.fromArray(f(O * I, 0.011), [O, I], 0, 0, 0);
    const b = native.fromArray(f(O, 0.5), [O], 0, 0, 0);
    const A = native.fromArray(f(r * I, 0.13), [r, I], 0, 0, 0);
    const B = native.fromArray(f(O * r, 0.29), [O, r], 0, 0, 0);
    const g = native.fromArray(f(M * O, 0.07), [M, O], 0, 0, 0);
    const [y, h] = native.loraForward(x, w, b, A, B, 2, 0, 0n, 0n);
    const [dx, , dA, dB] = native.loraBackward(g, x, w, A, B, b, h, 2, 0, 0n, 0n, [true, false, true, true, false]);
    // The bits themselves: each output's float32 bytes, base64.
    process.stdout.write(JSON.stringify([y, h, dx, dA, dB].map((t) => Buffer.from(native.toArray(t).buffer).toString('base64'))));`;
  const runs = ['1', '2', '3'].map((n) => {
    const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, LORA_CUDA_NUM_THREADS: n, LORA_CUDA_BLAS: 'builtin' }, encoding: 'utf8', maxBuffer: 1 << 26 });
    if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal}): ${r.stderr}`);
    return JSON.parse(r.stdout) as string[];
  });
  const sizes = [400 * 1200, 400 * 8, 400 * 1100, 8 * 1100, 1200 * 8];
  runs[0].forEach((b64, i) => {
    const v = new Float32Array(Uint8Array.from(Buffer.from(b64, 'base64')).buffer);
    expect(v.length).toBe(sizes[i]);
    expect(v.every(Number.isFinite)).toBe(true);
  });
  expect(runs[1]).toEqual(runs[0]);
  expect(runs[2]).toEqual(runs[0]);
});

// The fused head's forward and backward sum in orders fixed by the shape (whole 2048-column chunks
// for the logsumexp, the deep product's halves for dx): the same bits on one, two and three threads.
test('the fused head gives the same bits on any number of threads', () => {
  const root = path.resolve(__dirname, '..');
  const script = `
    const native = require('node-gyp-build')(${JSON.stringify(root)});
    const N = 37, H = 24, V = 9000;
    const f = (n, k) => Float32Array.from({ length: n }, (_, i) => Math.sin(i * k) * 2);
    const x = native.fromArray(f(N * H, 0.37), [N, H], 0, 0, 0);
    const w = native.fromArray(f(V * H, 0.011), [V, H], 0, 0, 0);
    const t = native.fromArray(Int32Array.from({ length: N }, (_, i) => (i * 7919) % V), [N], 2, 0, 0);
    const g = native.fromArray(Float32Array.from([1]), [], 0, 0, 0);
    const [l, r, s] = native.linearCrossEntropyForward(x, w, t, -100, 0);
    const dx = native.linearCrossEntropyBackward(l, s, t, -100, 0, g, 1 / N, w);
    process.stdout.write(JSON.stringify([r, s, dx].map((h) => Array.from(native.toArray(h)))));`;
  const runs = ['1', '2', '3'].map((n) => {
    const r = spawnSync(process.execPath, ['-e', script], { env: { ...process.env, LORA_CUDA_NUM_THREADS: n, LORA_CUDA_BLAS: 'builtin' }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal}): ${r.stderr}`);
    return JSON.parse(r.stdout) as number[][];
  });
  expect(runs[0][1].every(Number.isFinite)).toBe(true);
  expect(runs[1]).toEqual(runs[0]);
  expect(runs[2]).toEqual(runs[0]);
});
