// The data-parallel step's communication: one bucketed allReduce (mean) of a 7B-shaped set of LoRA
// gradients, timed on every rank of a process group (lora-cuda bench --allreduce starts the ranks
// through mpirun on this machine, i.e. over loopback / shared memory).
//
// Llama-2-7B: 32 layers, hidden 4096, q_proj k_proj v_proj o_proj all 4096 x 4096. LoRA r = 16 on
// each: A [16, 4096] and B [4096, 16], 2 * 16 * 4096 = 131 072 values per layer and module, so
// 32 * 4 * 131 072 = 16 777 216 float32 gradients = 64 MiB in 256 tensors.
import * as os from 'os';
import { zeros } from '../lib';
import type { Tensor } from '../lib/tensor';
import { allReduce, barrier, getProcessGroup, initDistributed } from '../lib/distributed';
import { cpuSlug } from './cpu';

export const LLAMA7B_LORA = { layers: 32, hidden: 4096, r: 16, modules: ['q_proj', 'k_proj', 'v_proj', 'o_proj'] };

export interface AllReduceResult {
  what: string;
  machine: { cpu: string; cores: number; node: string; platform: string; load: number[] };
  backend: string;
  worldSize: number;
  tensors: number;
  values: number;
  bytes: number;
  bucketBytes: number;
  repetitions: number;
  rows: { name: string; medianMs: number; minMs: number; maxMs: number; algGBps: number; busGBps: number }[];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

/** Runs on every rank (initDistributed first, if not done); returns rank 0's view of the timings. */
export function runAllReduceBenchmark(o: { quick?: boolean; log?: (s: string) => void } = {}): AllReduceResult {
  const g = getProcessGroup() ?? initDistributed({ backend: 'mpi' });
  const log = g.rank === 0 ? (o.log ?? (() => {})) : () => {};
  const { layers, hidden, r, modules } = LLAMA7B_LORA;
  const grads: Tensor[] = [];
  for (let l = 0; l < layers; l++) {
    for (const _m of modules) {
      grads.push(zeros([r, hidden], { device: g.device }).add(g.rank + 1));
      grads.push(zeros([hidden, r], { device: g.device }).add(g.rank + 1));
    }
  }
  const values = grads.reduce((s, t) => s + t.numel, 0);
  const bytes = values * 4;
  const reps = o.quick ? 5 : 20;
  const warm = o.quick ? 1 : 3;
  log(`allreduce: ${g.worldSize} ranks over ${g.backend} (${g.device}), ${grads.length} LoRA gradient tensors of a 7B model (r ${r} on ${modules.join(', ')} of ${layers} layers, hidden ${hidden}): ${values.toLocaleString('en-US')} float32 = ${(bytes / 2 ** 20).toFixed(0)} MiB`);
  const time = (name: string, step: () => void) => {
    const ms: number[] = [];
    for (let i = 0; i < warm + reps; i++) {
      barrier();
      const t0 = process.hrtime.bigint();
      step();
      const t = Number(process.hrtime.bigint() - t0) / 1e6;
      if (i >= warm) ms.push(t);
    }
    // The slowest rank's time is the step's.
    const all = new Array<number>(g.worldSize * reps).fill(0);
    ms.forEach((v, i) => (all[g.rank * reps + i] = v));
    const t = zeros([all.length], { dtype: 'float64', device: g.device });
    t.copy_(all);
    allReduce([t], 'sum');
    const per = Array.from(t.toArray());
    t.dispose();
    const worst = Array.from({ length: reps }, (_, i) => Math.max(...Array.from({ length: g.worldSize }, (_, k) => per[k * reps + i])));
    const med = median(worst);
    const algGBps = bytes / (med / 1e3) / 1e9;
    // NCCL's convention: the bus bandwidth of a ring all-reduce moves 2 (n - 1) / n of the data per rank.
    const busGBps = algGBps * (2 * (g.worldSize - 1)) / g.worldSize;
    const row = { name, medianMs: med, minMs: Math.min(...worst), maxMs: Math.max(...worst), algGBps, busGBps };
    log(`  ${name.padEnd(44)} median ${med.toFixed(1).padStart(7)} ms  (min ${row.minMs.toFixed(1)}, max ${row.maxMs.toFixed(1)})  alg ${algGBps.toFixed(2)} GB/s  bus ${busGBps.toFixed(2)} GB/s`);
    return row;
  };
  const rows = [
    time(`one call, buckets of ${(g.bucketBytes / 2 ** 20).toFixed(0)} MiB`, () => allReduce(grads, 'mean')),
    time('one call per tensor (256 calls)', () => {
      for (const t of grads) allReduce([t], 'mean');
    }),
  ];
  // Every rank started from rank + 1, and the mean of 1..n is (n + 1) / 2 after each reduction.
  const got = grads[0].toArray()[0];
  if (Math.abs(got - (g.worldSize + 1) / 2) > 1e-4) throw new Error(`allreduce benchmark: wrong result ${got}, expected ${(g.worldSize + 1) / 2}`);
  for (const t of grads) t.dispose();
  const cpu = os.cpus()[0]?.model ?? 'unknown cpu';
  return {
    what: 'allReduce(mean) of the LoRA gradients of one data-parallel step',
    machine: { cpu, cores: os.cpus().length, node: process.version, platform: `${process.platform}-${process.arch}`, load: os.loadavg() },
    backend: g.backend, worldSize: g.worldSize, tensors: grads.length, values, bytes, bucketBytes: g.bucketBytes, repetitions: reps, rows,
  };
}

export function allReduceSlug(r: AllReduceResult): string {
  return `allreduce-${r.backend}-np${r.worldSize}-cpu-${cpuSlug(r.machine.cpu)}`;
}
