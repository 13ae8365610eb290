// Soak: long loops whose memory must stay flat once warmed up. 5,000 LoRA training steps, 5,000
// rounds of tensors created and freed (dispose(), shared views, the garbage collector's finalizers),
// and 1,000 injectLora / mergeLora / unmergeLora / dispose cycles.
//
// The loops run in a child process started with --expose-gc (test/helpers/soak-child.ts), which
// samples memory right after two full collections. Without forcing the collector, heapUsed and RSS
// at any moment are mostly a matter of when the collector last ran (tens of MiB of garbage are
// normal), and a bound loose enough for that would hide any leak; after a full collection the
// numbers are the live set, so the bounds below can be tight enough to catch a leak of a few hundred
// bytes per iteration (one tensor or one closure per step) while leaving room for V8's own growth.
import { spawnSync } from 'child_process';
import * as path from 'path';
import { backendInfo, cuda } from '../lib';

const root = path.resolve(__dirname, '..');
const KiB = 1024;
const MiB = 1024 * 1024;

/**
 * After the sample that ends warm-up (the first fifth of the loop), neither the end nor any later
 * sample may exceed it by more than this. native: the bytes held by tensors (nativeMemoryBytes(),
 * device memory included); a leaked 4-byte loss tensor per training step would add 16 KB. device:
 * cuda.memoryStats().allocated (0 on the CPU). rss: the whole process, which still settles for a
 * while after the others (code compiled late, allocator arenas: up to 7 MiB measured in the
 * inject/merge cycles, flat after that); 16 MiB is 3 KiB per training step.
 */
const BOUND = { native: 8 * KiB, device: 8 * KiB, heapUsed: 2 * MiB, rss: 16 * MiB };

// AddressSanitizer (scripts/test-asan.sh) keeps freed memory in quarantine, so RSS grows by design.
const underAsan = /libasan/.test(process.env.LD_PRELOAD ?? '');

interface Sample {
  iteration: number;
  heapUsed: number;
  rss: number;
  native: number;
  device: number;
}
interface Result {
  iterations: number;
  samples: Sample[];
  [k: string]: unknown;
}

function soak(scenario: string, device = 'cpu'): Result {
  const r = spawnSync(process.execPath, ['--expose-gc', '-r', './test/helpers/ts-register.js', 'test/helpers/soak-child.ts', scenario, device], {
    cwd: root, encoding: 'utf8', timeout: 300_000,
  });
  expect({ status: r.status, signal: r.signal, stderr: r.stderr }).toEqual({ status: 0, signal: null, stderr: '' });
  return JSON.parse(r.stdout.trim().split('\n').pop() as string);
}

/** Growth from the warm-up sample to the end, and the largest excess of any later sample. */
function growth(r: Result, key: keyof typeof BOUND): { end: number; max: number } {
  const warm = r.samples.findIndex((s) => s.iteration >= r.iterations / 5);
  const base = r.samples[warm][key];
  const later = r.samples.slice(warm + 1).map((s) => s[key] - base);
  return { end: later[later.length - 1], max: Math.max(...later) };
}

function expectFlat(r: Result): void {
  expect(r.samples.at(-1)!.iteration).toBe(r.iterations);
  const broken: string[] = [];
  for (const key of Object.keys(BOUND) as (keyof typeof BOUND)[]) {
    if (key === 'rss' && underAsan) continue;
    const g = growth(r, key);
    if (g.end > BOUND[key] || g.max > BOUND[key]) {
      broken.push(`${key} grew by up to ${g.max} bytes after warm-up (${g.end} at the end), more than ${BOUND[key]}`);
    }
  }
  expect(broken).toEqual([]);
}

describe('memory stays flat after warm-up', () => {
  test('5,000 training steps on the CPU (LoRA forward, MSE loss, backward, Adam)', () => {
    const r = soak('train');
    expect(r.iterations).toBe(5000);
    expect(r.lastLoss as number).toBeLessThan(0.2 * (r.firstLoss as number)); // it trained
    expectFlat(r);
  });

  test('5,000 rounds of tensors made and freed by dispose(), through shared views and by the collector', () => {
    const r = soak('tensors');
    expect(r.iterations).toBe(5000);
    expectFlat(r);
    // Between rounds, after a collection, nothing but the last round's tensors is held.
    expect(Math.max(...r.samples.map((s) => s.native))).toBeLessThan(4 * KiB);
  });

  test('1,000 injectLora / mergeLora / unmergeLora / dispose cycles', () => {
    const r = soak('lora-cycles');
    expect(r.iterations).toBe(1000);
    expect(r.maxDrift as number).toBeLessThan(1e-5); // each unmerge restored the weight
    expectFlat(r);
    // Every cycle disposes its model: nothing is left at all.
    expect(r.samples.map((s) => s.native)).toEqual(r.samples.map(() => 0));
  });

  if (cuda.isAvailable()) {
    test('5,000 training steps on CUDA (device memory sampled by cuda.memoryStats)', () => {
      const r = soak('train', 'cuda');
      expect(r.lastLoss as number).toBeLessThan(0.2 * (r.firstLoss as number));
      expectFlat(r);
    });
  } else {
    test.skip(`5,000 training steps on CUDA: skipped, CUDA is not available (${backendInfo().cuda.reason})`, () => undefined);
  }
});
