// Microbenchmarks: LoRA layers against the frozen linear layer they wrap.
//
//   npm run bench [-- --quick] [-- --json FILE] [-- --device cpu|cuda]
//
// The measurements live in lib/bench.ts (CPU) and lib/bench-cuda.ts (GPU:
// CUDA events, against plain cuBLAS GEMMs), both also behind `lora-cuda
// bench`; this script parses its flags, prints the table and writes JSON to
// bench/results/cpu-<cpu>-<blas>.json or cuda-<gpu>.json (or --json FILE).
import * as fs from 'fs';
import * as path from 'path';
import { backendInfo } from '../lib';
import { cpuSlug, runBenchmarks } from '../lib/bench';
import { gpuSlug, runCudaBenchmarks } from '../lib/bench-cuda';

function parseArgs(argv: string[]) {
  const args = { quick: false, json: '', device: 'cpu' };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') args.quick = true;
    else if (a === '--json') args.json = argv[++i] ?? '';
    else if (a === '--device') args.device = argv[++i] ?? '';
    else if (a === '--help' || a === '-h') {
      console.log('usage: npm run bench [-- --quick] [-- --json FILE] [-- --device cpu|cuda]');
      process.exit(0);
    } else {
      console.error(`bench: unknown argument ${a} (try --help)`);
      process.exit(2);
    }
  }
  if (args.device !== 'cpu') {
    const info = backendInfo().cuda;
    if (!info.available) {
      console.error(`bench: device ${args.device} is not available: ${info.reason}`);
      process.exit(2);
    }
  }
  return args;
}

function write(file: string, result: unknown): void {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  fs.writeFileSync(file, JSON.stringify(result, null, 2) + '\n');
  console.log(`wrote ${path.relative(process.cwd(), file)}`);
}

function main(): void {
  const args = parseArgs(process.argv.slice(2));
  const results = path.join(__dirname, '..', '..', 'bench', 'results');
  if (args.device !== 'cpu') {
    const result = runCudaBenchmarks({ quick: args.quick, log: (line) => console.log(line) });
    write(args.json || path.join(results, `cuda-${gpuSlug(result.machine.gpu)}${args.quick ? '-quick' : ''}.json`), result);
    return;
  }
  const result = runBenchmarks({ quick: args.quick, device: args.device, log: (line) => console.log(line) });
  write(args.json || path.join(results, `cpu-${cpuSlug(result.machine.cpu)}-${result.backend.blas}${args.quick ? '-quick' : ''}.json`), result);
}

main();
