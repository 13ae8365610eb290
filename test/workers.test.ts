// worker_threads: the addon is context-aware, so every worker loads its own instance; tensors live in
// the thread that made them. Several workers training at the same time (each with its own tensors,
// sharing the native thread pool and the BLAS library) get exactly what the same runs give one
// after another on the main thread. A tensor posted to another thread arrives as a plain object that
// every entry point refuses: tensors cannot be shared across threads. A worker stopped while it calls
// into the library (worker.terminate(), or its resourceLimits) ends alone: the process lives on.
import { spawnSync } from 'child_process';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { nativeMemoryBytes, tensor } from '../lib';
import { TrainResult, train } from './helpers/worker-train';

const register = path.join(__dirname, 'helpers', 'ts-register.js');
const body = path.join(__dirname, 'helpers', 'worker-train.ts');

/** Starts a worker that runs `call` (an expression over the module `m` and `workerData`) and posts the result. */
function worker(call: string, workerData: unknown): { done: Promise<unknown>; w: Worker } {
  const w = new Worker(`
    const { parentPort, workerData } = require('worker_threads');
    require(${JSON.stringify(register)});
    const m = require(${JSON.stringify(body)});
    const run = async () => ${call};
    run().then((r) => parentPort.postMessage({ ok: r }), (e) => parentPort.postMessage({ error: String(e && e.stack || e) }));
  `, { eval: true, workerData });
  const done = new Promise((resolve, reject) => {
    w.once('message', (msg: { ok?: unknown; error?: string }) => (msg.error ? reject(new Error(msg.error)) : resolve(msg.ok)));
    w.once('error', reject);
    w.once('exit', (code) => code !== 0 && reject(new Error(`worker exited with code ${code}`)));
  });
  return { done, w };
}

const SEEDS = [1, 2, 3, 4];
const STEPS = 30;

test('four workers training at once get bit for bit what the same runs give on the main thread', async () => {
  const held = tensor(new Float32Array(1000)); // so that this thread holds native memory meanwhile
  expect(nativeMemoryBytes()).toBeGreaterThanOrEqual(4000);
  const runs = SEEDS.map((seed) => worker('m.train(workerData.seed, workerData.steps)', { seed, steps: STEPS }));
  const got = (await Promise.all(runs.map((r) => r.done))) as TrainResult[];
  await Promise.all(runs.map((r) => r.w.terminate()));
  const want = SEEDS.map((seed) => train(seed, STEPS));
  for (let i = 0; i < SEEDS.length; i++) {
    // Each thread counts only its own tensors: a worker starts at 0 while this thread holds some.
    expect(got[i].nativeAtStart).toBe(0);
    expect({ seed: got[i].seed, A: got[i].A, B: got[i].B, loss: got[i].loss }).toEqual({ seed: want[i].seed, A: want[i].A, B: want[i].B, loss: want[i].loss });
  }
  // Different seeds, different runs: the comparison above is not between equal constants.
  expect(new Set(got.map((r) => r.A)).size).toBe(SEEDS.length);
  held.dispose();
});

test('the main thread keeps working while workers run', async () => {
  const runs = [7, 8].map((seed) => worker('m.train(workerData.seed, workerData.steps)', { seed, steps: STEPS }));
  const mine = tensor([1, 2, 3]);
  let sum = 0;
  for (let i = 0; i < 200; i++) sum += mine.mul(2).sum().item();
  await Promise.all(runs.map((r) => r.done));
  await Promise.all(runs.map((r) => r.w.terminate()));
  expect(sum).toBe(200 * 12);
  expect(Array.from(mine.toArray())).toEqual([1, 2, 3]);
  mine.dispose();
});

test('a tensor posted to a worker arrives as a plain object that every entry point refuses', async () => {
  const t = tensor([1, 2, 3]);
  const { w, done } = worker(`new Promise((resolve) => parentPort.once('message', (x) => resolve(m.useReceived(x))))`, null);
  w.postMessage(t);
  const outcomes = (await done) as string[];
  await w.terminate();
  expect(outcomes).toEqual([
    'instanceof: TypeError: not a Tensor',
    'F.relu: TypeError: F.relu: x must be a Tensor, got an instance of Object',
    'tensor().add: TypeError: Tensor.add: other must be a Tensor, got an instance of Object',
    'as a Tensor: TypeError: toArray: expected a native tensor handle',
  ]);
  // The sender's tensor is untouched.
  expect(Array.from(t.toArray())).toEqual([1, 2, 3]);
});

/** Runs test/helpers/terminate-child.ts in a child process, which an abort would end with a signal. */
function stopWorkers(runs: number, kinds: string[]): string[] {
  const r = spawnSync(process.execPath, ['-r', './test/helpers/ts-register.js', 'test/helpers/terminate-child.ts', String(runs), '1', kinds.join(',')], {
    cwd: path.resolve(__dirname, '..'), encoding: 'utf8', timeout: 240_000,
  });
  expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
  const lines = r.stdout.trim().split('\n');
  expect(lines.at(-1)).toBe('main thread: 12'); // the main thread still computes
  return lines.slice(0, -1);
}

test('workers terminated while they call into the library end alone: the process lives on', () => {
  // 8 workers of each kind, each terminated at a random moment in its loop.
  const kinds = ['idle', 'allocating', 'training', 'saving', 'reading'];
  const runs = stopWorkers(8, kinds);
  for (const kind of kinds) {
    const mine = runs.filter((l) => l.startsWith(`${kind} after`));
    expect(mine).toHaveLength(8);
    for (const l of mine) expect(l).toMatch(/: exit 1$/); // the exit code of a terminated worker
  }
}, 300_000);

test('workers that reach their resourceLimits end alone: the process lives on', () => {
  // Each fills its heap up to maxOldGenerationSizeMb, mostly inside native calls.
  const runs = stopWorkers(8, ['filling-heap']);
  expect(runs).toHaveLength(8);
  for (const l of runs) expect(l).toMatch(/: exit 1 \(ERR_WORKER_OUT_OF_MEMORY\)$/);
}, 300_000);
