// Starts workers that call into the library (test/helpers/worker-busy.ts) and stops them while they
// do: worker.terminate() after a random delay once the worker is in its loop, or the worker's own
// resourceLimits. Run by test/workers.test.ts:
//
//   node -r ./test/helpers/ts-register.js test/helpers/terminate-child.ts RUNS SEED KIND,KIND,...
//
// RUNS workers of each kind (worker-busy.ts), two at a time; every run prints one line. The process
// exits 0 after the last run; a worker that takes the whole process down (an abort) ends it with a
// signal instead.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { tensor } from '../../lib';
import type { Busy } from './worker-busy';

const register = path.join(__dirname, 'ts-register.js');
const body = path.join(__dirname, 'worker-busy.ts');
const runs = Number(process.argv[2]);
const seed = Number(process.argv[3]);
const kinds = process.argv[4].split(',') as Busy[];
// The workers' files (a terminated worker cannot clean up after itself).
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'lora-cuda-workers-'));

// A small seeded generator (mulberry32), so that a failing sequence of delays can be replayed.
let state = seed >>> 0;
function random(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}

async function run(kind: Busy, delayMs: number): Promise<string> {
  const limits = kind === 'filling-heap' ? { maxOldGenerationSizeMb: 24, maxYoungGenerationSizeMb: 4 } : undefined;
  const w = new Worker(`
    require(${JSON.stringify(register)});
    const { workerData } = require('worker_threads');
    require(${JSON.stringify(body)}).busy(workerData.kind, workerData.dir);
  `, { eval: true, workerData: { kind, dir }, resourceLimits: limits, stdout: true, stderr: true });
  let error = '';
  w.on('error', (e) => (error = (e as NodeJS.ErrnoException).code ?? String(e)));
  const exited = new Promise<number>((resolve) => w.once('exit', resolve));
  await new Promise<void>((resolve, reject) => {
    w.once('message', () => resolve());
    void exited.then((code) => reject(new Error(`${kind}: the worker exited (${code}, ${error}) before it was ready`)));
  });
  if (kind !== 'filling-heap') {
    await new Promise((r) => setTimeout(r, delayMs));
    await w.terminate();
  }
  const code = await exited;
  const when = kind === 'filling-heap' ? '' : ` after ${delayMs.toFixed(1)} ms`;
  return `${kind}${when}: exit ${code}${error ? ` (${error})` : ''}`;
}

async function main(): Promise<void> {
  const queue: [Busy, number][] = [];
  for (let i = 0; i < runs; i++) for (const k of kinds) queue.push([k, random() * 40]);
  const next = async (): Promise<void> => {
    for (let item = queue.shift(); item; item = queue.shift()) process.stdout.write(`${await run(...item)}\n`);
  };
  await Promise.all([next(), next()]);
  // This thread still works.
  process.stdout.write(`main thread: ${tensor([1, 2, 3]).mul(2).sum().item()}\n`);
}

main().then(() => {
  fs.rmSync(dir, { recursive: true, force: true });
  process.exit(0);
}, (e) => {
  fs.rmSync(dir, { recursive: true, force: true });
  process.stderr.write(`${(e as Error).stack}\n`);
  process.exit(1);
});
