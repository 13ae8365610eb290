// `lora-cuda bench` and `npm run bench`: the microbenchmarks of cpu.ts (frozen
// layer against LoRA forward, backward and merge) and cuda.ts (the same on the
// GPU against plain cuBLAS GEMMs), printed as a table and written as JSON.
// Loaded by the command line (lib/cli/index.ts) only when this command runs.
import * as fs from 'fs';
import * as path from 'path';
import { CliError, CliIO, UsageError } from '../lib/cli/io';
import { helpText, parseArgs, Specs } from '../lib/cli/args';
import { resolveDevice } from '../lib/cli/device';
import { COMMAND_TEXT } from '../lib/cli/commands';
import { BENCH_SHAPES, cpuSlug, runBenchmarks } from './cpu';
import { gpuSlug, runCudaBenchmarks } from './cuda';
import { allReduceSlug, runAllReduceBenchmark } from './allreduce';
import { runGenerateBench } from './generate';
import { runModelBench } from './model';
import { runMemoryBench } from './memory';
import { launchEnv } from '../lib/distributed';

const SPECS = {
  quick: { type: 'boolean', help: 'two shapes and fewer repetitions (5 instead of 15 on the CPU, 10 instead of 50 on CUDA)' },
  device: { type: 'string', metavar: 'cpu|cuda', help: 'where to run (default: cuda when available, else cpu)' },
  json: { type: 'string', metavar: 'FILE', help: 'also write the results as JSON to FILE' },
  results: { type: 'string', metavar: 'DIR', help: 'also write the results as JSON into DIR, in a file named after the machine (cpu-<cpu>-<blas>.json, cuda-<gpu>.json; -quick with --quick)' },
  allreduce: { type: 'boolean', help: 'instead: time the allReduce of a 7B model\'s LoRA gradients (r 16 on q, k, v, o of 32 layers) between --nproc MPI ranks on this machine (mpirun)' },
  nproc: { type: 'number', integer: true, min: 2, metavar: 'N', help: 'with --allreduce: ranks (default 2)' },
  memory: { type: 'boolean', help: 'instead: the peak device memory of one LoRA training step of a small Llama for T = 256 to 2048 tokens, with and without --gradient-checkpointing (CUDA or its emulator; memory-<gpu>.json)' },
  generate: { type: 'boolean', help: 'instead: LlamaForCausalLM.generate tokens/s with and without the key/value cache on the CPU, 256 new tokens per row (16 with --quick) (generate-cpu-<cpu>.json)' },
  model: { type: 'boolean', help: 'instead: one LoRA training step (forward, backward, AdamW; LoRA r 8 on q_proj, v_proj) of a 4-layer SmolLM-135M-shaped Llama, 4 x 128 tokens, on the CPU, beside the same step in PyTorch (bench/torch_model_step.py, when python3 has torch) (model-cpu-<cpu>-<blas>.json)' },
  'no-torch': { type: 'boolean', help: 'with --model: skip the PyTorch step' },
  dtype: { type: 'string', metavar: 'float32|bfloat16', help: 'with --model: the model\'s dtype (default float32; bfloat16 keeps the adapters in float32; results file -bfloat16.json)' },
} satisfies Specs;

// Not in --help: a single tiny shape, so tests can run the command in a moment.
const HIDDEN = {
  shapes: { type: 'string', metavar: 'full|quick|tiny', help: 'which shapes' },
  lengths: { type: 'string', metavar: 'T,T,...', help: 'with --memory: these sequence lengths instead' },
} satisfies Specs;

/** The file name --results gives a result: the machine, and -quick (or -tiny) when not every shape ran fully. */
function resultFileName(machine: string, o: { quick?: boolean; shapes?: string }): string {
  const suffix = o.shapes === 'tiny' ? '-tiny' : o.quick || o.shapes === 'quick' ? '-quick' : '';
  return `${machine}${suffix}.json`;
}

/** Fails before minutes of measuring, not after: dir must be (or become) a writable directory. */
function checkWritableDir(dir: string, target: string, option: string): void {
  try {
    fs.mkdirSync(dir, { recursive: true });
    fs.accessSync(dir, fs.constants.W_OK);
  } catch (e) {
    throw new CliError(`cannot write ${target} (${dirErrorCode(dir, e as NodeJS.ErrnoException)}); choose another ${option}`);
  }
}

/**
 * The code that says what is wrong with dir. mkdirSync({ recursive }) reports
 * EEXIST when dir itself is a regular file; what Node says for any other use
 * of such a path (a file in it, as --json FILE names), and the truth, is ENOTDIR.
 */
function dirErrorCode(dir: string, e: NodeJS.ErrnoException): string {
  if (e.code !== 'EEXIST') return e.code ?? e.message;
  try {
    return fs.statSync(dir).isDirectory() ? 'EEXIST' : 'ENOTDIR';
  } catch (err) {
    return (err as NodeJS.ErrnoException).code ?? 'EEXIST';
  }
}

export async function benchCommand(argv: string[], io: CliIO): Promise<number> {
  const a = parseArgs('bench', { ...SPECS, ...HIDDEN }, argv);
  if (a.help) {
    io.stdout(helpText('bench', `${COMMAND_TEXT.bench.summary}\n\n` +
      'For each shape (M tokens, in, out, r) it times the frozen layer\'s forward and forward plus input\n' +
      'gradient (the baselines), LoRA forward, LoRA forward plus backward, and merge; each row is the\n' +
      'median of timed repetitions after warm-up. On CUDA the baselines are plain cuBLAS GEMMs, the runs are\n' +
      'timed with CUDA events, fp32 and TF32, and the floors (matrix rate, copy bandwidth) are measured first.', SPECS, COMMAND_TEXT.bench.usage));
    return 0;
  }
  if (a._.length) throw new UsageError(`unexpected argument '${a._[0]}'`);
  if (a.shapes !== undefined && !(a.shapes in BENCH_SHAPES)) throw new UsageError(`--shapes must be full, quick or tiny, got ${JSON.stringify(a.shapes)}`);
  const device = resolveDevice(a.device);
  const json = a.json === undefined ? undefined : path.resolve(a.json);
  if (json !== undefined) checkWritableDir(path.dirname(json), json, '--json FILE');
  const results = a.results === undefined ? undefined : path.resolve(a.results);
  if (results !== undefined) checkWritableDir(results, results, '--results DIR');
  if (a.allreduce) return allReduceBench(a, io, json, results);
  if (a.memory) {
    if (a.device === 'cpu') throw new UsageError('--memory measures device memory: leave out --device or give --device cuda');
    if (device !== 'cuda') throw new CliError('--memory measures device memory and needs CUDA (the emulator of scripts/test-cuda-emu.sh will do); CUDA is not available here');
    const given = a.lengths === undefined ? null : String(a.lengths).split(',').map(Number);
    if (given && !given.every((t) => Number.isInteger(t) && t >= 2)) throw new UsageError(`--lengths must be integers >= 2 separated by commas, got ${JSON.stringify(a.lengths)}`);
    const r = runMemoryBench(given ?? (a.quick || a.shapes === 'tiny' ? [256, 512] : [256, 512, 1024, 2048]), (l) => io.stdout(l + '\n'));
    const slug = `memory-${gpuSlug(r.machine.gpu)}${a.quick || a.shapes === 'tiny' ? '-quick' : ''}.json`;
    writeResults(io, r, [json, results === undefined ? undefined : path.join(results, slug)]);
    return 0;
  }
  if (a.generate) {
    if (a.device !== undefined && a.device !== 'cpu') throw new UsageError('--generate runs on the CPU: leave out --device or give --device cpu');
    const r = runGenerateBench(a.quick ? 16 : 256, a.quick ? 1 : 3, (l) => io.stdout(l + '\n'));
    writeResults(io, r, [json, results === undefined ? undefined : path.join(results, `generate-cpu-${cpuSlug(r.machine.cpu)}${a.quick ? '-quick' : ''}.json`)]);
    return 0;
  }
  if (a.model) {
    if (a.device !== undefined && a.device !== 'cpu') throw new UsageError('--model runs on the CPU: leave out --device or give --device cpu');
    if (a.dtype !== undefined && a.dtype !== 'float32' && a.dtype !== 'bfloat16') throw new UsageError(`--dtype must be float32 or bfloat16, got ${JSON.stringify(a.dtype)}`);
    const kind = a.shapes === 'tiny' ? 'tiny' : a.quick ? 'quick' : 'full';
    const dtype = (a.dtype ?? 'float32') as 'float32' | 'bfloat16';
    const r = runModelBench(kind, { torch: !a.noTorch, log: (l) => io.stdout(l + '\n'), dtype });
    const suffix = (dtype === 'float32' ? '' : `-${dtype}`) + (kind === 'full' ? '' : `-${kind}`);
    writeResults(io, r, [json, results === undefined ? undefined : path.join(results, `model-cpu-${cpuSlug(r.machine.cpu)}-${r.backend.blas}${suffix}.json`)]);
    return 0;
  }
  const shapes = a.shapes as 'full' | 'quick' | 'tiny' | undefined;
  const log = (line: string) => io.stdout(line + '\n');
  let result: object;
  let machine: string;
  if (device === 'cuda') {
    const r = runCudaBenchmarks({ quick: a.quick, shapes, log });
    result = r;
    machine = `cuda-${gpuSlug(r.machine.gpu)}`;
  } else {
    const r = runBenchmarks({
      quick: a.quick,
      shapes,
      device,
      log,
      onShape: (s, i, n) => {
        if (io.isTTY) io.stderr(`\rmeasuring shape ${i + 1}/${n}: M ${s.M}, in ${s.inF}, out ${s.outF}, r ${s.r}\x1b[K`);
      },
    });
    result = r;
    machine = `cpu-${cpuSlug(r.machine.cpu)}-${r.backend.blas}`;
  }
  if (io.isTTY) io.stderr('\r\x1b[K');
  writeResults(io, result, [json, results === undefined ? undefined : path.join(results, resultFileName(machine, { quick: a.quick, shapes }))]);
  return 0;
}

/** Writes a result as JSON to each file given. A plain write: a benchmark result is cheap to measure again if it is cut short. */
function writeResults(io: CliIO, result: object, files: (string | undefined)[]): void {
  for (const file of files) {
    if (file === undefined) continue;
    try {
      fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
    } catch (e) {
      throw new CliError(`cannot write ${file}: ${(e as Error).message}`);
    }
    io.stdout(`wrote ${path.relative(process.cwd(), file) || file}\n`);
  }
}

/**
 * --allreduce: outside a launcher, starts itself under `lora-cuda launch --nproc N` (mpirun); each
 * rank then times the collective and rank 0 prints and writes the results.
 */
async function allReduceBench(a: { quick: boolean; nproc?: number; device?: string }, io: CliIO, json?: string, results?: string): Promise<number> {
  if (a.device !== undefined && a.device !== 'cpu') throw new UsageError('--allreduce runs over MPI on the CPU: leave out --device or give --device cpu');
  const env = launchEnv();
  if (env.worldSize === null) {
    const { launchCommand } = await import('../lib/cli/launch');
    const args = ['bench', '--allreduce', ...(a.quick ? ['--quick'] : []), ...(json ? ['--json', json] : []), ...(results ? ['--results', results] : [])];
    return launchCommand(['--nproc', String(a.nproc ?? 2), '--', ...args], io);
  }
  const r = runAllReduceBenchmark({ quick: a.quick, log: (l) => io.stdout(l + '\n') });
  if (env.rank !== 0) return 0;
  writeResults(io, r, [json, results === undefined ? undefined : path.join(results, `${allReduceSlug(r)}${a.quick ? '-quick' : ''}.json`)]);
  return 0;
}
