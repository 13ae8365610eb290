// `lora-cuda doctor`: what this installation can do and, for each part that is missing, what to do.
// Node and Node-API, glibc, the addon loaded and from where, the CPU's features and the kernels used,
// the BLAS, and CUDA (compiled, available or why not, driver and runtime, cuBLAS, each device).
// Exit code 0 when the CPU path works (the addon loads and a LoRA forward and backward runs).
import * as os from 'os';
import { CliIO, UsageError } from './io';
import { helpText, parseArgs, Specs } from './args';
import { COMMAND_TEXT } from './commands';
import type { BackendInfo } from '../backend';
import { glibcNeeded, glibcVersion } from '../platform';

const SPECS = {
  json: { type: 'boolean', help: 'print the report as JSON instead of lines' },
} satisfies Specs;

/** One finding: a name, what was found, and what to do about it (when something is missing). */
interface Line {
  name: string;
  value: string;
  fix?: string;
}

export interface DoctorReport {
  ok: boolean;
  node: { version: string; napi: string | null; platform: string };
  glibc: { runtime: string | null; addonNeeds: string | null };
  addon: { path: string; kind: string } | { error: string };
  info: BackendInfo | null;
  cpuCheck: string;
  /** MPI and NCCL for data-parallel training: loaded here, or why not (null when the addon does not load). */
  distributed: { mpi: { loaded: boolean; path: string; version: string; error: string }; nccl: { compiled: boolean; loaded: boolean; path: string; version: string; error: string } } | null;
}

/** The NVIDIA driver a CUDA runtime version needs (CUDA's minor version compatibility floor). */
function driverFor(runtimeVersion: number): string {
  const major = Math.floor(runtimeVersion / 1000);
  return major >= 13 ? '580' : major === 12 ? '525' : major === 11 ? '450' : 'a matching';
}

function cudaVersion(v: number): string {
  return `${Math.floor(v / 1000)}.${Math.floor((v % 1000) / 10)}`;
}

function gib(bytes: number): string {
  return `${(bytes / 2 ** 30).toFixed(1)} GiB`;
}

/** What the CUDA part of backendInfo says, as lines with fixes. */
function cudaLines(c: BackendInfo['cuda']): Line[] {
  if (!c.compiled) {
    return [{ name: 'cuda', value: 'not compiled into this build', fix: 'the prebuilt binary has CUDA; a source build needs nvcc (CUDA 12 or 13) on PATH when it is built' }];
  }
  const lines: Line[] = [{ name: 'cuda', value: `compiled (runtime ${cudaVersion(c.runtimeVersion)}, architectures ${c.architectures})` }];
  const need = driverFor(c.runtimeVersion);
  if (c.driverVersion === 0) {
    lines.push({ name: 'driver', value: 'none found', fix: `for a GPU, install the NVIDIA driver, ${need} or newer for CUDA ${cudaVersion(c.runtimeVersion)}` });
  } else {
    const old = c.driverVersion < c.runtimeVersion - (c.runtimeVersion % 1000);
    lines.push({ name: 'driver', value: `supports CUDA ${cudaVersion(c.driverVersion)}`, ...(old ? { fix: `update the NVIDIA driver to ${need} or newer (this build needs CUDA ${cudaVersion(c.runtimeVersion)})` } : {}) });
  }
  if (c.cublas) {
    lines.push({ name: 'cublas', value: `${c.cublas.version} (${c.cublas.path})` });
  } else if (c.driverVersion > 0) {
    lines.push({
      name: 'cublas', value: 'not found',
      fix: 'install cuBLAS 12 or 13: the CUDA toolkit\'s libcublas.so.13 on the loader\'s path, or pip install nvidia-cublas-cu12 and add its nvidia/cublas/lib to LD_LIBRARY_PATH, or set LORA_CUDA_CUBLAS=/path/to/libcublas.so.13',
    });
  }
  c.devices.forEach((d, i) => {
    lines.push({ name: `cuda:${i}`, value: `${d.name} (device ${d.ordinal}), ${gib(d.memory)}, compute capability ${d.capability}, ${d.multiprocessors} multiprocessors` });
  });
  // GPUs the probe's test kernel did not run on: not used, with why and what to do.
  for (const d of c.unusableDevices) {
    lines.push({ name: `device ${d.ordinal}`, value: `${d.name}, compute capability ${d.capability}: not used`, fix: d.reason });
  }
  lines.push(c.available
    ? { name: 'gpu', value: `available (${c.devices.length} device${c.devices.length === 1 ? '' : 's'})` }
    : { name: 'gpu', value: `not available: ${c.reason}`, ...(c.driverVersion > 0 && c.cublas && !c.devices.length ? { fix: 'no usable GPU was found; the CPU path works without one' } : {}) });
  return lines;
}

/** MPI and NCCL, both optional: for training on several processes, machines or GPUs. */
function distributedLines(d: DoctorReport['distributed']): Line[] {
  if (!d) return [];
  const lines: Line[] = [d.mpi.loaded
    ? { name: 'mpi', value: `${d.mpi.version || 'MPI'} (${d.mpi.path})` }
    : { name: 'mpi', value: 'not found', fix: 'optional, for data-parallel training on several processes or machines (mpirun, lora-cuda launch): Debian/Ubuntu: apt-get install openmpi-bin libopenmpi3' }];
  if (d.nccl.compiled) {
    lines.push(d.nccl.loaded
      ? { name: 'nccl', value: `${d.nccl.version} (${d.nccl.path})` }
      : { name: 'nccl', value: 'not found', fix: 'optional, for data-parallel training on several GPUs: NCCL 2.10 or later (libnccl2 of NVIDIA\'s CUDA repository, or pip install nvidia-nccl-cu12 and add its nvidia/nccl/lib to LD_LIBRARY_PATH), or set LORA_CUDA_NCCL' });
  }
  return lines;
}

/** Runs the CPU path once: a LoRA layer's forward and backward on a small batch. */
async function cpuCheck(): Promise<string> {
  const { LoRALinear, Linear, randn, manualSeed } = await import('../index');
  manualSeed(0);
  const layer = new LoRALinear(new Linear(16, 8), { r: 4, alpha: 8 });
  const x = randn([3, 16]);
  const y = layer.forward(x);
  y.sum().backward();
  const ok = y.shape.join() === '3,8' && layer.A!.grad !== null && Number.isFinite(layer.A!.grad!.abs().sum().item());
  if (!ok) throw new Error('a LoRA forward and backward gave no finite gradient');
  return 'a LoRA forward and backward ran on the CPU';
}

export async function doctorReport(): Promise<DoctorReport> {
  const report: DoctorReport = {
    ok: false,
    node: { version: process.version, napi: process.versions.napi ?? null, platform: `${process.platform}-${process.arch}` },
    glibc: { runtime: glibcVersion(), addonNeeds: null },
    addon: { error: '' },
    info: null,
    cpuCheck: '',
    distributed: null,
  };
  try {
    const { backendInfo } = await import('../backend');
    report.info = backendInfo();
    report.addon = { path: report.info.addon.path, kind: report.info.addon.kind };
    report.glibc.addonNeeds = glibcNeeded(report.info.addon.path);
    report.cpuCheck = await cpuCheck();
    report.ok = true;
    // Optional parts: loading the libraries starts nothing.
    report.distributed = (await import('../distributed')).distributedInfo();
  } catch (e) {
    if (!report.info) report.addon = { error: (e as Error).message };
    else report.cpuCheck = `failed: ${(e as Error).message}`;
  }
  return report;
}

export function formatReport(r: DoctorReport): string {
  const lines: Line[] = [
    { name: 'node', value: `${r.node.version} (Node-API ${r.node.napi ?? 'unknown'}), ${r.node.platform}`, ...(Number(r.node.version.slice(1).split('.')[0]) < 20 ? { fix: 'use Node.js 20 or newer' } : {}) },
    { name: 'glibc', value: r.glibc.runtime ?? 'not glibc (or not reported)' },
  ];
  if ('error' in r.addon) {
    lines.push({ name: 'addon', value: `does not load: ${r.addon.error}`, fix: 'see the message above; the README\'s Install section lists the supported systems and how to build from source' });
  } else {
    lines.push({ name: 'addon', value: `${r.addon.path} (${r.addon.kind === 'prebuilt' ? 'prebuilt binary' : r.addon.kind === 'build' ? 'local build' : 'named by LORA_CUDA_ADDON'}${r.glibc.addonNeeds ? `, needs glibc ${r.glibc.addonNeeds}` : ''})` });
  }
  const info = r.info;
  if (info) {
    const cpu = info.cpu;
    lines.push({ name: 'cpu', value: `${os.cpus()[0]?.model?.trim() ?? 'unknown'}; ${cpu.threads} threads; features: ${cpu.features.join(', ') || 'none of avx2, fma, avx512f, avx512vl, avx512bf16'}; kernels: ${cpu.kernels}` });
    lines.push(cpu.blas === 'builtin'
      ? { name: 'blas', value: `built-in kernel${cpu.blasReason ? ` (${cpu.blasReason})` : ''}`, fix: 'optional: a CBLAS such as OpenBLAS is faster for large products (Debian/Ubuntu: apt-get install libopenblas0)' }
      : { name: 'blas', value: `${cpu.blas} (${cpu.blasPath}, ${cpu.blasThreads} threads)` });
    lines.push(...cudaLines(info.cuda));
  }
  lines.push(...distributedLines(r.distributed));
  lines.push({ name: 'check', value: r.ok ? r.cpuCheck : (r.cpuCheck || 'the CPU path cannot run') });
  const w = Math.max(...lines.map((l) => l.name.length));
  const out = lines.flatMap((l) => [`${l.name.padEnd(w)}  ${l.value}`, ...(l.fix ? [`${' '.repeat(w)}  -> ${l.fix}`] : [])]);
  out.push('', r.ok
    ? `ready: the CPU path works${info?.cuda.available ? ', and CUDA' : ''}`
    : 'not ready: the CPU path does not work here (see above)');
  return out.join('\n') + '\n';
}

export async function doctorCommand(argv: string[], io: CliIO): Promise<number> {
  const a = parseArgs('doctor', SPECS, argv);
  if (a.help) {
    io.stdout(helpText('doctor', `${COMMAND_TEXT.doctor.summary}\n\n` +
      'Reports Node.js and Node-API, glibc, the native addon loaded and from where (and the glibc it needs),\n' +
      'the processor\'s features and the kernels used, the BLAS, and CUDA: compiled, available or why not,\n' +
      'driver and runtime versions, cuBLAS, each device; with what to do for each missing part. Exits 0 when\n' +
      'the CPU path works (a LoRA forward and backward runs), 1 otherwise.', SPECS, COMMAND_TEXT.doctor.usage));
    return 0;
  }
  if (a._.length) throw new UsageError(`unexpected argument '${a._[0]}'`);
  const report = await doctorReport();
  io.stdout(a.json ? JSON.stringify(report, null, 2) + '\n' : formatReport(report));
  return report.ok ? 0 : 1;
}
