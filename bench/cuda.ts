// GPU microbenchmarks: LoRA layers against the plain cuBLAS GEMMs of the
// frozen layer they wrap, timed with CUDA events; behind
// `lora-cuda bench --device cuda` (bench/command.ts).
//
// Method: first the two floors of this GPU, measured in the same process
// (the matrix rate of a large square GEMM, fp32, TF32 and bf16, and the copy
// bandwidth of a large device-to-device copy); then, per shape (M tokens,
// d = in = out, r) and math mode (fp32; TF32; bf16: the frozen layer, its
// input and output in bfloat16, its products on tensor cores through
// cublasGemmEx, the adapter in float32 as PEFT keeps it):
//   baseline fwd       y = x W^T                one cuBLAS GEMM
//   baseline fwd+bwd   y = x W^T, dx = dy W     two cuBLAS GEMMs (the weight is frozen: no dW)
//   lora fwd           LoRALinear.forward (bias, adapter accumulated into y)
//   lora fwd+bwd       forward and backward (dx, dA, dB)
//   merge              W += s B A in place
// Then attention (causal, bf16, head dim 128, grouped heads 32/8 as Llama-3-8B, the
// projections' [B, T, H, D] layout) at T = 2048 and 4096, forward and forward+backward, against
// cuBLAS bf16 GEMMs of the same FLOPs (4096 x 4096 outputs, K chosen to match), each as a
// fraction of the bf16 tensor-core peak measured in the same run (a large square bf16 GEMM,
// fp32 accumulation). FLOPs as FlashAttention counts them: forward 4 B H T^2 D / 2 (causal),
// backward 2.5 times that. The bf16 rows need the build's GEMM to take bf16; without it they
// report the attention times alone. At T = 2048 also float32 attention with TF32 allowed
// ('(f32, tf32)' rows, as a fraction of the same bf16 peak).
// Each row is the median of many runs after warm-up, each run timed between
// two events on the device's stream. Inputs rotate over enough buffers to
// exceed the L2 cache, so no run reads the previous run's data from cache.
// The events and the plain GEMM come from the addon's `bench` object
// (bench/binding.ts); everything else is the public API.
import * as os from 'os';
import { F, Linear, LoRALinear, Tensor, backendInfo, cuda, manualSeed, noGrad, randn, tensor, tidy, zeros } from '../lib';
import { benchNative } from './binding';

export interface CudaBenchShape {
  M: number;
  d: number;
  r: number;
}

export interface CudaBenchRow {
  shape: CudaBenchShape;
  math: CudaBenchMath;
  op: string;
  medianMs: number;
  minMs: number;
  reps: number;
  /** Useful floating-point work per second. */
  tflops: number;
  /** Minimum bytes the op must move, per second. */
  gbps: number;
  /** Lower bound from the floors: max(flops / matrix rate, bytes / copy bandwidth). */
  floorMs: number;
  ratio: number | null;
  baseline: string | null;
}

/** fp32 and TF32: a float32 layer without and with TF32 tensor cores; bf16: a bfloat16 layer with float32 adapters. */
export type CudaBenchMath = 'fp32' | 'tf32' | 'bf16';

export interface CudaFloors {
  /** TFLOP/s of a large square GEMM: SGEMM in fp32 and TF32, cublasGemmEx in bf16 (fp32 accumulation). */
  matrixTflops: { fp32: number; tf32: number; bf16: number };
  /** GB/s of a large device-to-device copy (bytes read + written). */
  copyGBps: number;
}

export interface CudaAttentionRow {
  B: number;
  T: number;
  Hq: number;
  Hkv: number;
  D: number;
  /** 'attention fwd', 'attention fwd+bwd' (with ' (f32, tf32)': float32 with TF32 allowed), or the cuBLAS GEMM of the same FLOPs ('gemm fwd', 'gemm fwd+bwd'). */
  op: string;
  medianMs: number;
  minMs: number;
  reps: number;
  flops: number;
  tflops: number;
  /** tflops / the bf16 GEMM peak of this run (null without a bf16 GEMM). */
  peakFraction: number | null;
  /** medianMs / the same-FLOPs GEMM's (attention rows; null without a bf16 GEMM). */
  ratio: number | null;
}

export interface CudaBenchTarget {
  metric: string;
  limit: number;
  value: number | null;
  met: boolean;
}

export interface CudaBenchResult {
  date: string;
  machine: { gpu: string; capability: string; memory: number; cpu: string; node: string };
  cuda: { runtimeVersion: number; driverVersion: number; cublas: { path: string; version: string } | null };
  reps: number;
  floors: CudaFloors;
  rows: CudaBenchRow[];
  /** TFLOP/s of a large square bf16 GEMM (fp32 accumulation); null when the build's GEMM refuses bf16. */
  bf16PeakTflops: number | null;
  attention: CudaAttentionRow[];
  targets: CudaBenchTarget[];
}

const CUDA_BENCH_SHAPES: Record<'full' | 'quick' | 'tiny', CudaBenchShape[]> = {
  full: [2048, 8192].flatMap((M) => [1024, 4096].flatMap((d) => [8, 16, 64].map((r) => ({ M, d, r })))),
  quick: [{ M: 2048, d: 4096, r: 16 }, { M: 8192, d: 4096, r: 16 }],
  tiny: [{ M: 64, d: 64, r: 4 }],
};

export interface RunCudaBenchmarksOptions {
  shapes?: 'full' | 'quick' | 'tiny' | CudaBenchShape[];
  /** Timed runs per row (default 50; 10 with quick). */
  reps?: number;
  quick?: boolean;
  /** Math modes (default all three). */
  math?: CudaBenchMath[];
  /** The attention rows (default true). */
  attention?: boolean;
  log?: (line: string) => void;
}

/** Median and minimum of `reps` event-timed runs of fn after `warmup` untimed ones. */
function timeCuda(fn: () => void, reps: number, warmup: number): { median: number; min: number } {
  for (let i = 0; i < warmup; i++) fn();
  const ts: number[] = [];
  for (let i = 0; i < reps; i++) {
    const a = benchNative.eventRecord(0);
    fn();
    const b = benchNative.eventRecord(0);
    ts.push(benchNative.eventElapsed(a, b));
    benchNative.eventDestroy(a);
    benchNative.eventDestroy(b);
  }
  ts.sort((x, y) => x - y);
  return { median: ts[Math.floor(ts.length / 2)], min: ts[0] };
}

/** Enough distinct buffers of `bytes` each to exceed `l2` bytes twice over (2 to 16). */
function rotation(bytes: number, l2: number): number {
  return Math.max(2, Math.min(16, Math.ceil((2 * l2) / bytes)));
}

function measureFloors(reps: number): CudaFloors {
  const n = 8192;
  const a = randn([n, n], { device: 'cuda' });
  const b = randn([n, n], { device: 'cuda' });
  const c = zeros([n, n], { device: 'cuda' });
  const rate = (tf32: boolean) => {
    cuda.setAllowTF32(tf32);
    try {
      const t = timeCuda(() => benchNative.gemmInto(a._h, b._h, c._h, false, false, 1, 0), Math.max(5, Math.floor(reps / 5)), 3);
      return (2 * n * n * n) / (t.median * 1e-3) / 1e12;
    } finally {
      cuda.setAllowTF32(false);
    }
  };
  const fp32 = rate(false);
  const tf32 = rate(true);
  const [ah, bh, ch] = [a, b, c].map((t) => t.to('bfloat16'));
  const th = timeCuda(() => benchNative.gemmInto(ah._h, bh._h, ch._h, false, false, 1, 0), Math.max(5, Math.floor(reps / 5)), 3);
  const bf16 = (2 * n * n * n) / (th.median * 1e-3) / 1e12;
  for (const x of [ah, bh, ch]) x.dispose();
  // 1 GiB copied: 2 GiB moved (read + write).
  const src = zeros([2 ** 28], { device: 'cuda' });
  const dst = zeros([2 ** 28], { device: 'cuda' });
  const t = timeCuda(() => dst.copy_(src), Math.max(5, Math.floor(reps / 5)), 3);
  const copyGBps = (2 * 4 * 2 ** 28) / (t.median * 1e-3) / 1e9;
  for (const x of [a, b, c, src, dst]) x.dispose();
  return { matrixTflops: { fp32, tf32, bf16 }, copyGBps };
}

function benchShape(s: CudaBenchShape, math: CudaBenchMath, reps: number, floors: CudaFloors, l2: number): CudaBenchRow[] {
  const { M, d, r } = s;
  manualSeed(0);
  // bf16: the frozen layer's weight, bias, input, output and gradients in bfloat16 (as a bf16
  // checkpoint loads); the adapter's A and B stay float32.
  const dtype = math === 'bf16' ? 'bfloat16' : 'float32';
  const lin = new Linear(d, d, { device: 'cuda' });
  // A float32 tensor in the layer's dtype (the float32 one disposed).
  const inDtype = (t: Tensor): Tensor => {
    if (dtype === 'float32') return t;
    const h = t.detach().to(dtype);
    t.dispose();
    return h;
  };
  lin.weight = inDtype(lin.weight);
  lin.bias = inDtype(lin.bias!);
  lin.requiresGrad_(false);
  const lora = new LoRALinear(lin, { r, alpha: 2 * r });
  noGrad(() => lora.B!.copy_(randn([d, r], { std: 0.01, device: 'cuda', dtype: lora.B!.dtype })));
  const E = math === 'bf16' ? 2 : 4;  // bytes per element of the layer's tensors
  const k = rotation(E * M * d, l2);
  const xs = Array.from({ length: k }, () => inDtype(randn([M, d], { device: 'cuda' })).requiresGrad_(true));
  const dys = Array.from({ length: k }, () => inDtype(randn([M, d], { device: 'cuda' })));
  const y = inDtype(zeros([M, d], { device: 'cuda' }));
  const dx = inDtype(zeros([M, d], { device: 'cuda' }));
  let i = 0;
  const next = () => i++ % k;

  const gemm = 2 * M * d * d;
  const adapterFwd = 2 * M * r * (2 * d);
  const adapterBwd = 2 * (2 * M * r * d) + 2 * (2 * M * r * d); // dB, dh; dA, dh A
  const rowFlops = {
    'baseline fwd': gemm,
    'baseline fwd+bwd': 2 * gemm,
    'lora fwd': gemm + adapterFwd,
    'lora fwd+bwd': 2 * gemm + adapterFwd + adapterBwd,
    merge: 2 * d * d * r,
  };
  // Bytes each op must move at least: inputs read once, outputs written once (the adapter's
  // rank-r matrices are too small to count).
  const rowBytes = {
    'baseline fwd': E * (M * d + d * d + M * d),
    'baseline fwd+bwd': E * (2 * (M * d + d * d + M * d)),
    'lora fwd': E * (M * d + d * d + M * d),
    'lora fwd+bwd': E * (2 * (M * d + d * d + M * d)),
    merge: E * 2 * d * d,
  };

  cuda.setAllowTF32(math === 'tf32');
  const reset = () => {
    for (const t of [...xs, lora.A!, lora.B!]) {
      t.grad?.dispose();
      t.grad = null;
    }
  };
  let times: Record<string, { median: number; min: number }>;
  try {
    times = {
      'baseline fwd': timeCuda(() => {
        benchNative.gemmInto(xs[next()]._h, lin.weight._h, y._h, false, true, 1, 0);
      }, reps, 5),
      'baseline fwd+bwd': timeCuda(() => {
        const j = next();
        benchNative.gemmInto(xs[j]._h, lin.weight._h, y._h, false, true, 1, 0);
        benchNative.gemmInto(dys[j]._h, lin.weight._h, dx._h, false, false, 1, 0);
      }, reps, 5),
      'lora fwd': timeCuda(() => tidy(() => {
        noGrad(() => lora.forward(xs[next()]));
      }), reps, 5),
      'lora fwd+bwd': timeCuda(() => tidy(() => {
        const j = next();
        lora.forward(xs[j]).backward(dys[j]);
        reset();
      }), reps, 5),
    };
    // Merge then unmerge keeps W bounded; only the merge is timed.
    const merges: number[] = [];
    for (let n = 0; n < reps + 3; n++) {
      const a = benchNative.eventRecord(0);
      lora.mergeToOrig();
      const b = benchNative.eventRecord(0);
      lora.unmergeFromOrig();
      if (n >= 3) merges.push(benchNative.eventElapsed(a, b));
      benchNative.eventDestroy(a);
      benchNative.eventDestroy(b);
    }
    merges.sort((p, q) => p - q);
    times.merge = { median: merges[Math.floor(merges.length / 2)], min: merges[0] };
  } finally {
    cuda.setAllowTF32(false);
  }
  for (const t of [...xs, ...dys, y, dx]) t.dispose();
  lora.A!.dispose();
  lora.B!.dispose();
  lin.weight.dispose();
  lin.bias?.dispose();

  const rate = floors.matrixTflops[math] * 1e12;
  const bw = floors.copyGBps * 1e9;
  const base: Record<string, string | null> = {
    'baseline fwd': null, 'baseline fwd+bwd': null, 'lora fwd': 'baseline fwd', 'lora fwd+bwd': 'baseline fwd+bwd', merge: null,
  };
  return (Object.keys(times) as (keyof typeof rowFlops)[]).map((op) => {
    const t = times[op];
    const b = base[op];
    return {
      shape: s,
      math,
      op,
      medianMs: t.median,
      minMs: t.min,
      reps,
      tflops: rowFlops[op] / (t.median * 1e-3) / 1e12,
      gbps: rowBytes[op] / (t.median * 1e-3) / 1e9,
      floorMs: Math.max(rowFlops[op] / rate, rowBytes[op] / bw) * 1e3,
      ratio: b ? t.median / times[b].median : null,
      baseline: b,
    };
  });
}

/** A bf16 (or float32) tensor on cuda:0 of N(0, std^2) values, made on the host (Box-Muller over a seeded LCG). */
function bf16Randn(shape: number[], seed: number, std = 1, dtype: 'bfloat16' | 'float32' = 'bfloat16'): Tensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const f = new Float32Array(n);
  let x = (seed * 2654435761) >>> 0 || 1;
  const u = () => ((x = (Math.imul(x, 1664525) + 1013904223) >>> 0) + 1) / 4294967297;
  for (let i = 0; i < n; i += 2) {
    const r = std * Math.sqrt(-2 * Math.log(u()));
    const a = 2 * Math.PI * u();
    f[i] = r * Math.cos(a);
    if (i + 1 < n) f[i + 1] = r * Math.sin(a);
  }
  return tensor(f, { dtype, shape, device: 'cuda' });
}

/** Median time of C = A B in bf16, A [M, K], B [K, N]; null when the GEMM refuses bf16. */
function timeBf16Gemm(M: number, N: number, K: number, reps: number, log: (l: string) => void): { median: number; min: number } | null {
  const a = bf16Randn([M, K], 1, 0.1);
  const b = bf16Randn([K, N], 2, 0.1);
  const c = bf16Randn([M, N], 3, 0);
  try {
    return timeCuda(() => benchNative.gemmInto(a._h, b._h, c._h, false, false, 1, 0), reps, 3);
  } catch (e) {
    log(`bf16 GEMM not available in this build (${(e as Error).message.split('\n')[0]}): attention rows without a baseline`);
    return null;
  } finally {
    for (const x of [a, b, c]) x.dispose();
  }
}

/** Attention forward and forward+backward (bf16, causal, 'BTHD'), with same-FLOPs GEMM baselines; float32 with TF32 at the first shape. */
export function benchAttention(shapes: { B: number; T: number; Hq: number; Hkv: number; D: number }[], reps: number,
  log: (l: string) => void): { peak: number | null; rows: CudaAttentionRow[] } {
  const peakN = 8192;
  const pt = timeBf16Gemm(peakN, peakN, peakN, Math.max(5, Math.floor(reps / 5)), log);
  const peak = pt ? (2 * peakN ** 3) / (pt.median * 1e-3) / 1e12 : null;
  const rows: CudaAttentionRow[] = [];
  for (const { B, T, Hq, Hkv, D } of shapes) {
    const q = bf16Randn([B, T, Hq, D], 11).requiresGrad_(true);
    const k = bf16Randn([B, T, Hkv, D], 12).requiresGrad_(true);
    const v = bf16Randn([B, T, Hkv, D], 13).requiresGrad_(true);
    const g = bf16Randn([B, T, Hq, D], 14);
    const opts = { causal: true, layout: 'BTHD' as const };
    const fwdFlops = (4 * B * Hq * T * T * D) / 2;
    const flops = { 'attention fwd': fwdFlops, 'attention fwd+bwd': 3.5 * fwdFlops };
    const times = {
      'attention fwd': timeCuda(() => tidy(() => {
        noGrad(() => F.scaledDotProductAttention(q, k, v, opts));
      }), reps, 3),
      'attention fwd+bwd': timeCuda(() => tidy(() => {
        F.scaledDotProductAttention(q, k, v, opts).backward(g);
        for (const t of [q, k, v]) {
          t.grad?.dispose();
          t.grad = null;
        }
      }), reps, 3),
    };
    for (const t of [q, k, v, g]) t.dispose();
    // float32 with TF32 allowed (the first shape only): the TF32 tensor-core kernels where their
    // float tiles fit the device's shared memory (the backward at head dim 128 needs 190 KB: H100 /
    // H200 and newer; elsewhere it is the exact float path).
    if (T === shapes[0].T) {
      const was = cuda.getAllowTF32();
      cuda.setAllowTF32(true);
      try {
        const [fq, fk, fv] = [[Hq, 21], [Hkv, 22], [Hkv, 23]].map(([h, seed]) =>
          bf16Randn([B, T, h, D], seed, 1, 'float32').requiresGrad_(true));
        const fg = bf16Randn([B, T, Hq, D], 24, 1, 'float32');
        const tf = {
          'attention fwd': timeCuda(() => tidy(() => {
            noGrad(() => F.scaledDotProductAttention(fq, fk, fv, opts));
          }), reps, 3),
          'attention fwd+bwd': timeCuda(() => tidy(() => {
            F.scaledDotProductAttention(fq, fk, fv, opts).backward(fg);
            for (const t of [fq, fk, fv]) {
              t.grad?.dispose();
              t.grad = null;
            }
          }), reps, 3),
        };
        for (const t of [fq, fk, fv, fg]) t.dispose();
        for (const op of ['attention fwd', 'attention fwd+bwd'] as const) {
          const tflops = flops[op] / (tf[op].median * 1e-3) / 1e12;
          rows.push({ B, T, Hq, Hkv, D, op: `${op} (f32, tf32)`, medianMs: tf[op].median, minMs: tf[op].min, reps,
            flops: flops[op], tflops, peakFraction: peak === null ? null : tflops / peak, ratio: null });
        }
      } finally {
        cuda.setAllowTF32(was);
      }
    }
    for (const op of ['attention fwd', 'attention fwd+bwd'] as const) {
      // The GEMM of the same FLOPs: C [4096, 4096] = A [4096, K] B [K, 4096] (K a multiple of 64).
      const n = Math.min(4096, 64 * Math.max(1, Math.round(Math.sqrt(flops[op] / 2) / 64)));
      const K = Math.max(64, 64 * Math.round(flops[op] / (2 * n * n) / 64));
      const gt = peak === null ? null : timeBf16Gemm(n, n, K, reps, log);
      const t = times[op];
      const tflops = flops[op] / (t.median * 1e-3) / 1e12;
      rows.push({ B, T, Hq, Hkv, D, op, medianMs: t.median, minMs: t.min, reps, flops: flops[op], tflops,
        peakFraction: peak === null ? null : tflops / peak, ratio: gt ? t.median / gt.median : null });
      if (gt) {
        const gf = 2 * n * n * K;
        const gtf = gf / (gt.median * 1e-3) / 1e12;
        rows.push({ B, T, Hq, Hkv, D, op: op.replace('attention', 'gemm'), medianMs: gt.median, minMs: gt.min, reps, flops: gf,
          tflops: gtf, peakFraction: peak === null ? null : gtf / peak, ratio: null });
      }
    }
  }
  return { peak, rows };
}

function formatAttentionTable(rows: CudaAttentionRow[]): string[] {
  const header = ['B', 'T', 'Hq/Hkv', 'D', 'op', 'median ms', 'TFLOP/s', 'of bf16 peak', 'vs same-FLOPs GEMM'];
  const table = rows.map((r) => [
    String(r.B), String(r.T), `${r.Hq}/${r.Hkv}`, String(r.D), r.op, r.medianMs.toFixed(4), r.tflops.toFixed(1),
    r.peakFraction === null ? 'n/a' : `${(100 * r.peakFraction).toFixed(1)}%`, r.ratio === null ? '' : `${r.ratio.toFixed(2)}x`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === 4 || i === 8 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [fmt(header), widths.map((w) => '-'.repeat(w)).join('  '), ...table.map(fmt)];
}

function formatCudaBenchTable(rows: CudaBenchRow[]): string[] {
  const header = ['M', 'd', 'r', 'math', 'op', 'median ms', 'floor ms', 'TFLOP/s', 'GB/s', 'vs baseline'];
  const table = rows.map((r) => [
    String(r.shape.M), String(r.shape.d), String(r.shape.r), r.math, r.op, r.medianMs.toFixed(4), r.floorMs.toFixed(4),
    r.tflops.toFixed(2), r.gbps.toFixed(0), r.ratio === null ? '' : `${r.ratio.toFixed(3)}x`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i === 3 || i === 4 || i === 9 ? c.padEnd(widths[i]) : c.padStart(widths[i]))).join('  ');
  return [fmt(header), widths.map((w) => '-'.repeat(w)).join('  '), ...table.map(fmt)];
}

/** A file-name-friendly GPU name, e.g. 'nvidia-h200'. */
export function gpuSlug(name: string): string {
  return name.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

/** Runs the GPU benchmarks on cuda:0 and returns the results (the table goes to options.log). */
export function runCudaBenchmarks(options: RunCudaBenchmarksOptions = {}): CudaBenchResult {
  const info = backendInfo();
  if (!info.cuda.available) throw new RangeError(`bench: CUDA is not available (${info.cuda.reason})`);
  const quick = options.quick ?? false;
  const log = options.log ?? (() => undefined);
  const shapes = Array.isArray(options.shapes) ? options.shapes : CUDA_BENCH_SHAPES[options.shapes ?? (quick ? 'quick' : 'full')];
  const reps = options.reps ?? (quick ? 10 : 50);
  const maths = options.math ?? ['fp32', 'tf32', 'bf16'];
  const dev = info.cuda.devices[0];
  // L2 sizes are not reported by the runtime API here; 64 MiB covers every GPU this build targets.
  const l2 = 64 * 2 ** 20;
  log(`lora-cuda bench (CUDA): ${dev.name} (sm ${dev.capability}, ${(dev.memory / 2 ** 30).toFixed(0)} GiB), ` +
    `cuBLAS ${info.cuda.cublas?.version ?? '?'}, ${reps} runs per row, median, CUDA events`);
  const floors = measureFloors(reps);
  log(`floors: matrix ${floors.matrixTflops.fp32.toFixed(1)} TFLOP/s fp32, ${floors.matrixTflops.tf32.toFixed(1)} TFLOP/s tf32, ` +
    `${floors.matrixTflops.bf16.toFixed(1)} TFLOP/s bf16; ` +
    `copy ${floors.copyGBps.toFixed(0)} GB/s`);
  const rows: CudaBenchRow[] = [];
  for (const math of maths) for (const s of shapes) rows.push(...benchShape(s, math, reps, floors, l2));
  for (const line of formatCudaBenchTable(rows)) log(line);
  // Llama-3-8B's attention (32 query heads over 8 kv heads, head dim 128); tiny: a small one.
  const attnShapes = options.shapes === 'tiny'
    ? [{ B: 1, T: 128, Hq: 4, Hkv: 2, D: 128 }]
    : [2048, 4096].map((T) => ({ B: 1, T, Hq: 32, Hkv: 8, D: 128 }));
  const attn = options.attention === false ? { peak: null, rows: [] } : benchAttention(attnShapes, reps, log);
  if (attn.peak !== null) log(`bf16 GEMM peak (${8192}^3): ${attn.peak.toFixed(1)} TFLOP/s`);
  if (attn.rows.length) for (const line of formatAttentionTable(attn.rows)) log(line);

  const targets: CudaBenchTarget[] = [];
  // The fp32 / TF32 layers have a target; the bf16 rows (against cublasGemmEx) are reported as measured.
  for (const math of maths.filter((m) => m !== 'bf16')) {
    const fb = rows.filter((r) => r.math === math && r.op === 'lora fwd+bwd' && r.shape.d === 4096 && r.shape.r === 16);
    const worst = fb.length ? Math.max(...fb.map((r) => r.ratio ?? Infinity)) : null;
    targets.push({ metric: `lora fwd+bwd / baseline fwd+bwd at d = 4096, r = 16 (${math}, worst M)`, limit: 1.15, value: worst, met: worst !== null && worst <= 1.15 });
  }
  const merges = rows.filter((r) => r.op === 'merge' && r.shape.d === 4096 && r.math !== 'bf16');
  const mergeFrac = merges.length ? Math.min(...merges.map((r) => r.gbps)) / floors.copyGBps : null;
  targets.push({ metric: 'merge bandwidth / copy bandwidth at d = 4096 (worst)', limit: 0.7, value: mergeFrac, met: mergeFrac !== null && mergeFrac >= 0.7 });
  for (const t of targets) {
    const cmp = t.metric.startsWith('merge') ? '>=' : '<=';
    log(`target: ${t.metric} = ${t.value === null ? 'n/a' : t.value.toFixed(3)} (want ${cmp} ${t.limit}): ${t.met ? 'met' : 'NOT met'}`);
  }
  return {
    date: new Date().toISOString(),
    machine: { gpu: dev.name, capability: dev.capability, memory: dev.memory, cpu: os.cpus()[0]?.model ?? 'unknown cpu', node: process.version },
    cuda: { runtimeVersion: info.cuda.runtimeVersion, driverVersion: info.cuda.driverVersion, cublas: info.cuda.cublas },
    reps,
    floors,
    rows,
    bf16PeakTflops: attn.peak,
    attention: attn.rows,
    targets,
  };
}

