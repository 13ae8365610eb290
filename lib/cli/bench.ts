// `lora-cuda bench`: the microbenchmarks of `npm run bench` (frozen layer
// against LoRA forward, backward and merge), printed as the same table.
import * as fs from 'fs';
import * as path from 'path';
import { BENCH_SHAPES, runBenchmarks } from '../bench';
import { runCudaBenchmarks } from '../bench-cuda';
import { CliError, CliIO, UsageError } from './io';
import { helpText, parseArgs, Specs } from './args';
import { resolveDevice } from './device';

export const BENCH_SUMMARY = 'Time LoRA layers against the frozen linear layer they wrap (the table of npm run bench).';

const SPECS = {
  quick: { type: 'boolean', help: 'two shapes and 5 repetitions instead of six shapes and 15' },
  device: { type: 'string', metavar: 'cpu|cuda', help: 'where to run (default: cuda when available, else cpu)' },
  json: { type: 'string', metavar: 'FILE', help: 'also write the results as JSON to FILE' },
} satisfies Specs;

// Not in --help: a single tiny shape, so tests can run the command in a moment.
const HIDDEN = { shapes: { type: 'string', metavar: 'full|quick|tiny', help: 'which shapes' } } satisfies Specs;

export async function benchCommand(argv: string[], io: CliIO): Promise<number> {
  const a = parseArgs('bench', { ...SPECS, ...HIDDEN }, argv);
  if (a.help) {
    io.stdout(helpText('bench', `${BENCH_SUMMARY}\n\n` +
      'For each shape (M tokens, in, out, r) it times the frozen layer\'s forward and forward plus input\n' +
      'gradient (the baselines), LoRA forward, LoRA forward plus backward, and merge; each row is the\n' +
      'median of timed repetitions after warm-up. On CUDA the baselines are plain cuBLAS GEMMs, the runs are\n' +
      'timed with CUDA events, fp32 and TF32, and the floors (matrix rate, copy bandwidth) are measured first.', SPECS, 'lora-cuda bench [--quick] [--device cpu|cuda] [--json FILE]'));
    return 0;
  }
  if (a._.length) throw new UsageError(`unexpected argument '${a._[0]}'`);
  if (a.shapes !== undefined && !(a.shapes in BENCH_SHAPES)) throw new UsageError(`--shapes must be full, quick or tiny, got ${JSON.stringify(a.shapes)}`);
  const device = resolveDevice(a.device);
  const json = a.json === undefined ? undefined : path.resolve(a.json);
  if (json !== undefined) {
    // Fail before minutes of measuring, not after.
    try {
      fs.mkdirSync(path.dirname(json), { recursive: true });
      fs.accessSync(path.dirname(json), fs.constants.W_OK);
    } catch (e) {
      throw new CliError(`cannot write ${json} (${(e as NodeJS.ErrnoException).code ?? (e as Error).message}); choose another --json FILE`);
    }
  }
  const result = device === 'cuda'
    ? runCudaBenchmarks({ quick: a.quick, shapes: a.shapes as 'full' | 'quick' | 'tiny' | undefined, log: (line) => io.stdout(line + '\n') })
    : runBenchmarks({
      quick: a.quick,
      shapes: a.shapes as 'full' | 'quick' | 'tiny' | undefined,
      device,
      log: (line) => io.stdout(line + '\n'),
      onShape: (s, i, n) => {
        if (io.isTTY) io.stderr(`\rmeasuring shape ${i + 1}/${n}: M ${s.M}, in ${s.inF}, out ${s.outF}, r ${s.r}\x1b[K`);
      },
    });
  if (io.isTTY) io.stderr('\r\x1b[K');
  if (json !== undefined) {
    try {
      fs.writeFileSync(json, JSON.stringify(result, null, 2) + '\n');
    } catch (e) {
      throw new CliError(`cannot write ${json}: ${(e as Error).message}`);
    }
    io.stdout(`wrote ${path.relative(process.cwd(), json) || json}\n`);
  }
  return 0;
}
