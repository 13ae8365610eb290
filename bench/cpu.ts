// CPU microbenchmarks: LoRA layers against the frozen linear layer they wrap,
// behind `lora-cuda bench` and `npm run bench` (bench/command.ts).
//
// Rows per shape (M tokens, in, out, r):
//   frozen fwd       y = x W^T + b (one GEMM): the BLAS baseline for LoRA forward
//   frozen fwd+dx    forward plus the input gradient dx = dy W (two GEMMs): the
//                    baseline for LoRA training, whose base weight is frozen
//   lora fwd         y = x W^T + b + s (x A^T) B^T (one native call)
//   lora fwd+bwd     forward plus dx, dA, dB (one native call each way)
//   merge            W += s B A in place (one GEMM over W)
// Each row is the median of timed repetitions after warm-up, a LoRA op's
// repetitions alternating with its baseline's; inputs are fresh
// random tensors (never zeros). Only the public API is used.
import * as fs from 'fs';
import * as os from 'os';
import { F, Linear, LoRALinear, Tensor, backendInfo, manualSeed, noGrad, randn } from '../lib';
import type { BackendInfo } from '../lib';

export interface BenchShape {
  M: number;
  inF: number;
  outF: number;
  r: number;
}

export interface BenchRow {
  shape: BenchShape;
  op: string;
  medianMs: number;
  minMs: number;
  reps: number;
  /** Useful floating-point work per second (GFLOP/s). */
  gflops: number;
  /** To the row's baseline. */
  ratio: number | null;
  /**
   * The median repetition's CPU time (all threads; ms), and its ratio to the baseline's: steadier than
   * wall time when other work shares the machine. Null for merge (timed in halves).
   */
  cpuMs: number | null;
  cpuRatio: number | null;
  baseline: string | null;
}

export interface BenchTarget {
  metric: string;
  limit: number;
  value: number | null;
  met: boolean;
}

export interface BenchResult {
  date: string;
  machine: { cpu: string; cpuId: string | null; cores: number; node: string; platform: string };
  backend: BackendInfo['cpu'];
  device: string;
  reps: number;
  rows: BenchRow[];
  target: BenchTarget | null;
}

/** The full set of shapes; 'quick' runs the first two; 'tiny' is for tests. */
export const BENCH_SHAPES: Record<'full' | 'quick' | 'tiny', BenchShape[]> = {
  full: [
    { M: 2048, inF: 1024, outF: 1024, r: 16 },
    { M: 2048, inF: 1024, outF: 1024, r: 8 },
    { M: 2048, inF: 1024, outF: 1024, r: 64 },
    { M: 512, inF: 1024, outF: 1024, r: 16 },
    { M: 2048, inF: 1024, outF: 4096, r: 16 },
    { M: 1024, inF: 4096, outF: 4096, r: 16 },
  ],
  quick: [
    { M: 2048, inF: 1024, outF: 1024, r: 16 },
    { M: 2048, inF: 1024, outF: 1024, r: 8 },
  ],
  tiny: [
    { M: 64, inF: 32, outF: 32, r: 4 },
  ],
};

export interface RunBenchmarksOptions {
  /** Two shapes, 5 repetitions (default false: every shape, 15 repetitions). */
  quick?: boolean;
  /** Which shapes (default: 'quick' when quick, else 'full'). */
  shapes?: 'full' | 'quick' | 'tiny' | BenchShape[];
  /** Timed repetitions per row (default 5 with quick, else 15). */
  reps?: number;
  /** Recorded in the result ('cpu'; the GPU benchmarks are runCudaBenchmarks in cuda.ts). */
  device?: string;
  /** Receives the header, the table and the target line (default: nothing printed). */
  log?: (line: string) => void;
  /** Called before each shape is measured. */
  onShape?: (shape: BenchShape, index: number, count: number) => void;
}

/**
 * Times a LoRA op and its frozen baseline alternately (a, b, a, b, ...), so a slow spell of a shared
 * machine falls on both rather than on whichever ran during it. Wall-time median and minimum, and
 * the median of the process's CPU time (all threads), per op.
 */
function timePair(a: () => void, b: () => void, reps: number, warmup: number) {
  const ta: number[] = [], tb: number[] = [], ca: number[] = [], cb: number[] = [];
  const once = (fn: () => void, ts: number[], cs: number[]) => {
    const t0 = process.hrtime.bigint();
    const c0 = process.cpuUsage();
    fn();
    const dc = process.cpuUsage(c0);
    ts.push(Number(process.hrtime.bigint() - t0) / 1e6);
    cs.push((dc.user + dc.system) / 1000);
  };
  for (let i = 0; i < warmup; i++) {
    a();
    b();
  }
  for (let i = 0; i < reps; i++) {
    once(a, ta, ca);
    once(b, tb, cb);
  }
  const stat = (ts: number[], cs: number[]) => {
    ts.sort((p, q) => p - q);
    cs.sort((p, q) => p - q);
    return { median: ts[Math.floor(ts.length / 2)], min: ts[0], cpu: cs[Math.floor(cs.length / 2)] };
  };
  return [stat(ta, ca), stat(tb, cb)];
}

function benchShape(s: BenchShape, reps: number): BenchRow[] {
  const { M, inF, outF, r } = s;
  manualSeed(0);
  const lin = new Linear(inF, outF);
  lin.requiresGrad_(false);
  const lora = new LoRALinear(lin, { r, alpha: 2 * r });
  noGrad(() => lora.B!.copy_(randn([outF, r], { std: 0.01 })));
  // Rotate between inputs so repeated runs do not just re-read a warm cache.
  const xs = [0, 1, 2].map(() => randn([M, inF]).requiresGrad_(true));
  const dy = randn([M, outF]);
  let k = 0;
  const nextX = () => xs[k++ % xs.length];
  const clearGrads = () => {
    for (const t of [...xs, lora.A!, lora.B!]) {
      t.grad?.dispose();
      t.grad = null;
    }
  };

  const gemm = 2 * M * inF * outF; // one M x in x out product
  const adapter = 2 * M * r * (inF + outF); // x A^T and h B^T
  const flops = {
    frozenFwd: gemm,
    frozenFwdDx: 2 * gemm,
    loraFwd: gemm + adapter,
    // + dB, dh, dA, and dh A into dx
    loraFwdBwd: 2 * gemm + adapter + 2 * M * r * outF * 2 + 2 * M * r * inF * 2,
    merge: 2 * outF * inF * r,
  };

  const run = (fn: () => Tensor | void) => () => {
    const out = fn();
    if (out instanceof Tensor) out.dispose();
    clearGrads();
  };
  const [frozenFwd, loraFwd] = timePair(
    run(() => noGrad(() => F.linear(nextX(), lin.weight, lin.bias))),
    run(() => noGrad(() => lora.forward(nextX()))), reps, 2);
  const [frozenFwdDx, loraFwdBwd] = timePair(
    run(() => {
      const y = F.linear(nextX(), lin.weight, lin.bias);
      y.backward(dy);
      return y;
    }),
    run(() => {
      const y = lora.forward(nextX());
      y.backward(dy);
      return y;
    }), reps, 2);
  // Merge then unmerge keeps W bounded; time each half from the same loop.
  const mergeTimes: number[] = [];
  for (let i = 0; i < reps + 2; i++) {
    const t0 = process.hrtime.bigint();
    lora.mergeToOrig();
    const t1 = process.hrtime.bigint();
    lora.unmergeFromOrig();
    if (i >= 2) mergeTimes.push(Number(t1 - t0) / 1e6);
  }
  mergeTimes.sort((a, b) => a - b);
  const merge = { median: mergeTimes[Math.floor(mergeTimes.length / 2)], min: mergeTimes[0], cpu: null };

  for (const x of xs) x.dispose();
  dy.dispose();
  const row = (op: string, t: { median: number; min: number; cpu: number | null }, f: number, base: { name: string; ms: number; cpu: number | null } | null): BenchRow => ({
    shape: s,
    op,
    medianMs: t.median,
    minMs: t.min,
    reps,
    gflops: f / (t.median * 1e6),
    ratio: base ? t.median / base.ms : null,
    baseline: base ? base.name : null,
    cpuMs: t.cpu,
    cpuRatio: base && base.cpu && t.cpu !== null ? t.cpu / base.cpu : null,
  });
  return [
    row('frozen fwd', frozenFwd, flops.frozenFwd, null),
    row('frozen fwd+dx', frozenFwdDx, flops.frozenFwdDx, null),
    row('lora fwd', loraFwd, flops.loraFwd, { name: 'frozen fwd', ms: frozenFwd.median, cpu: frozenFwd.cpu }),
    row('lora fwd+bwd', loraFwdBwd, flops.loraFwdBwd, { name: 'frozen fwd+dx', ms: frozenFwdDx.median, cpu: frozenFwdDx.cpu }),
    row('merge', merge, flops.merge, null),
  ];
}

/** The results table as lines of text (header, rule, one line per row). */
function formatBenchTable(rows: BenchRow[]): string[] {
  const header = ['M', 'in', 'out', 'r', 'op', 'median ms', 'min ms', 'GFLOP/s', 'vs baseline'];
  const table = rows.map((r) => [
    String(r.shape.M), String(r.shape.inF), String(r.shape.outF), String(r.shape.r), r.op,
    r.medianMs.toFixed(3), r.minMs.toFixed(3), r.gflops.toFixed(1),
    r.ratio === null ? '' : `${r.ratio.toFixed(3)}x ${r.baseline}`,
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...table.map((t) => t[i].length)));
  const fmt = (cells: string[]) => cells.map((c, i) => (i < 4 || (i >= 5 && i < 8) ? c.padStart(widths[i]) : c.padEnd(widths[i]))).join('  ');
  return [fmt(header), widths.map((w) => '-'.repeat(w)).join('  '), ...table.map(fmt)];
}

/**
 * The processor's vendor, family and model as /proc/cpuinfo gives them (e.g. 'AuthenticAMD family 26
 * model 2', a Zen 5), or null elsewhere: a VM's model name ('AMD EPYC') can hide which
 * generation ran a result, and the generations' vector units differ.
 */
export function cpuId(): string | null {
  let text: string;
  try {
    text = fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return null;
  }
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(text)?.[1].trim();
  const vendor = field('vendor_id'), family = field('cpu family'), model = field('model');
  return vendor && family && model ? `${vendor} family ${family} model ${model}` : null;
}

/** A file-name-friendly CPU name, e.g. 'intel-xeon-platinum-8370c'. */
export function cpuSlug(s: string): string {
  return s.toLowerCase().replace(/\(r\)|\(tm\)|cpu|@.*$/g, '').replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

/**
 * Runs the microbenchmarks and returns the results; the header line, the table
 * and the target line go to options.log. Writing JSON is left to the caller.
 */
export function runBenchmarks(options: RunBenchmarksOptions = {}): BenchResult {
  const quick = options.quick ?? false;
  const log = options.log ?? (() => undefined);
  const shapes = Array.isArray(options.shapes) ? options.shapes : BENCH_SHAPES[options.shapes ?? (quick ? 'quick' : 'full')];
  const reps = options.reps ?? (quick ? 5 : 15);
  const info = backendInfo();
  const cpuModel = os.cpus()[0]?.model ?? 'unknown cpu';
  log(`lora-cuda bench: ${cpuModel}, ${os.cpus().length} cores, BLAS ${info.cpu.blas}` +
    `${info.cpu.blasPath ? ` (${info.cpu.blasPath})` : ''}, ${reps} reps, median`);
  const rows: BenchRow[] = [];
  shapes.forEach((s, i) => {
    options.onShape?.(s, i, shapes.length);
    rows.push(...benchShape(s, reps));
  });
  for (const line of formatBenchTable(rows)) log(line);

  const target = rows.find((r) => r.op === 'lora fwd+bwd' && r.shape.M === 2048 && r.shape.inF === 1024 && r.shape.outF === 1024 && r.shape.r === 16);
  const targetLine: BenchTarget | null = target
    ? { metric: 'lora fwd+bwd / frozen fwd+dx at (2048, 1024, 1024, r=16)', limit: 1.10, value: target.ratio, met: (target.ratio ?? Infinity) <= 1.10 }
    : null;
  if (targetLine) {
    log(`target: ${targetLine.metric} = ${targetLine.value?.toFixed(3)}x (limit ${targetLine.limit}x): ${targetLine.met ? 'met' : 'NOT met'}` +
      `; in CPU time ${target?.cpuRatio?.toFixed(3)}x; load average ${os.loadavg()[0].toFixed(1)} on ${os.cpus().length} cores`);
  }

  return {
    date: new Date().toISOString(),
    machine: { cpu: cpuModel, cpuId: cpuId(), cores: os.cpus().length, node: process.version, platform: `${process.platform}-${process.arch}` },
    backend: info.cpu,
    device: options.device ?? 'cpu',
    reps,
    rows,
    target: targetLine,
  };
}
