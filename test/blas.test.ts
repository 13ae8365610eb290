// Both CPU matrix-product paths: the CBLAS loaded at run time and the built-in
// blocked kernel (forced with LORA_CUDA_BLAS=builtin), checked against a
// float64 reference on odd sizes, transposes and batches; the built-in kernel
// again on each instruction-set path this processor has (LORA_CUDA_CPU_KERNELS).
import { spawnSync } from 'child_process';
import * as path from 'path';
import { backendInfo } from '../lib';

interface Case {
  dtype: 'float32' | 'float64';
  aShape: number[];
  bShape: number[];
  transA: boolean;
  transB: boolean;
  a: number[];
  b: number[];
  /** With these, C = alpha op(A) op(B) + beta C0 into an existing C0 (the addon's gemmInto). */
  alpha?: number;
  beta?: number;
  c0?: number[];
}

let seed = 12345;
function rnd(): number {
  // xorshift: deterministic inputs shared by parent and child
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return ((seed >>> 0) / 4294967296) * 2 - 1;
}

function makeCase(dtype: Case['dtype'], batch: [number, number], m: number, n: number, k: number, transA: boolean, transB: boolean): Case {
  const aShape = [batch[0], transA ? k : m, transA ? m : k];
  const bShape = [batch[1], transB ? n : k, transB ? k : n];
  const fill = (s: number[]) => Array.from({ length: s[0] * s[1] * s[2] }, rnd);
  return { dtype, aShape, bShape, transA, transB, a: fill(aShape), b: fill(bShape) };
}

function reference(c: Case): Float64Array {
  const [ba, ra, ca] = c.aShape;
  const [bb, rb, cb] = c.bShape;
  const m = c.transA ? ca : ra;
  const k = c.transA ? ra : ca;
  const n = c.transB ? rb : cb;
  const batch = Math.max(ba, bb);
  const out = new Float64Array(batch * m * n);
  for (let t = 0; t < batch; t++) {
    const ao = (ba === 1 ? 0 : t) * ra * ca;
    const bo = (bb === 1 ? 0 : t) * rb * cb;
    for (let i = 0; i < m; i++) {
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let p = 0; p < k; p++) {
          const av = c.transA ? c.a[ao + p * ca + i] : c.a[ao + i * ca + p];
          const bv = c.transB ? c.b[bo + j * cb + p] : c.b[bo + p * cb + j];
          s += av * bv;
        }
        const o = (t * m + i) * n + j;
        out[o] = c.c0 ? c.alpha! * s + c.beta! * c.c0[o] : s;
      }
    }
  }
  return out;
}

const cases: Case[] = [];
for (const dtype of ['float32', 'float64'] as const) {
  for (const [m, n, k] of [[1, 1, 1], [3, 17, 5], [17, 3, 1000], [64, 65, 33], [130, 70, 257], [1, 200, 16], [200, 1, 16]]) {
    for (const [tA, tB] of [[false, false], [true, false], [false, true], [true, true]] as const) {
      cases.push(makeCase(dtype, [1, 1], m, n, k, tA, tB));
    }
  }
  // K over every kernel's K block (two blocks of the AVX-512 path), M over its row block, N over
  // the column block: the edges between blocks.
  cases.push(makeCase(dtype, [1, 1], 50, 9, 1500, false, true));
  cases.push(makeCase(dtype, [1, 1], 61, 33, 1100, true, false));
  cases.push(makeCase(dtype, [1, 1], 13, 2100, 3, false, false));
  cases.push(makeCase(dtype, [3, 3], 9, 5, 7, false, false));
  // Deep products, K at least 32 times M and N (the model's head dx): K in two halves summed
  // after, the halves' lengths not a whole number of K blocks; with beta below.
  for (const [tA, tB] of [[false, false], [true, false], [false, true], [true, true]] as const) {
    cases.push(makeCase(dtype, [1, 1], 40, 37, 3000, tA, tB));
  }
  cases.push({ ...makeCase(dtype, [1, 1], 20, 70, 2300, false, false), alpha: 0.5, beta: -2, c0: Array.from({ length: 20 * 70 }, rnd) });
  cases.push(makeCase(dtype, [4, 1], 6, 11, 13, false, true)); // B broadcast over the batch
  cases.push(makeCase(dtype, [1, 2], 5, 4, 3, true, false)); // A broadcast over the batch
  // Thin products (a LoRA adapter's, N or M = r): the tall kernel that reads A in place (N <= 16,
  // A not transposed; partial last row tile, N over one column panel of the float64 tiles, N that
  // fills the AVX-512 copy's half-vector tile (8 floats, 4 doubles) or one past it) and
  // C^T = op(B)^T A^T for a transposed A with N <= 64; with alpha and beta, C read back.
  // And their mirror (M <= 16, B not transposed: dA = dh^T x, dB^T = h^T dy) on the AVX-512 copy's
  // wide kernel: 8 and 16 row panels, K over its chunks, columns past the last whole vector.
  for (const [m, n, k] of [[605, 13, 300], [97, 9, 40], [64, 16, 5], [300, 16, 200], [401, 1, 20],
    [16, 200, 500], [9, 170, 100], [5, 37, 130], [8, 64, 33], [1, 250, 7], [401, 40, 50],
    [205, 8, 70], [77, 5, 33], [120, 4, 64]]) {
    for (const [tA, tB] of [[false, false], [true, false], [false, true], [true, true]] as const) {
      cases.push(makeCase(dtype, [1, 1], m, n, k, tA, tB));
      const c = makeCase(dtype, [1, 1], m, n, k, tA, tB);
      cases.push({ ...c, alpha: -0.75, beta: 1.5, c0: Array.from({ length: m * n }, rnd) });
    }
  }
}

function spawnChild(env: NodeJS.ProcessEnv) {
  const script = path.join(__dirname, 'helpers', 'blas-child.js');
  return spawnSync(process.execPath, [script], { env, input: JSON.stringify(cases), encoding: 'utf8', maxBuffer: 64 << 20 });
}

function runChild(env: NodeJS.ProcessEnv): { info: ReturnType<typeof backendInfo>; results: number[][] } {
  const r = spawnChild(env);
  if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.signal ?? r.error}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

function relError(got: ArrayLike<number>, ref: Float64Array): number {
  let num = 0;
  let den = 0;
  expect(got.length).toBe(ref.length);
  for (let i = 0; i < ref.length; i++) {
    num += (got[i] - ref[i]) ** 2;
    den += ref[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-300));
}

describe.each([
  ['the default (the built-in AVX-512 kernel where it runs, else the CBLAS found at run time, else the built-in kernel)', {}],
  ['the built-in kernel (LORA_CUDA_BLAS=builtin)', { LORA_CUDA_BLAS: 'builtin' }],
  ['OpenBLAS named (LORA_CUDA_BLAS=libopenblas.so.0)', { LORA_CUDA_BLAS: 'libopenblas.so.0' }],
] as [string, Record<string, string>][])('matrix products through %s', (_label, extra) => {
  const env = { ...process.env, ...extra } as NodeJS.ProcessEnv;
  if (!('LORA_CUDA_BLAS' in extra)) delete env.LORA_CUDA_BLAS;
  const child = runChild(env);

  test('reports which path it took', () => {
    const expected = process.env.LORA_CUDA_EXPECT_BLAS;
    if (extra.LORA_CUDA_BLAS === 'builtin') {
      expect(child.info.cpu.blas).toBe('builtin');
      expect(child.info.cpu.blasReason).toMatch(/LORA_CUDA_BLAS=builtin/);
    } else if (extra.LORA_CUDA_BLAS) {
      expect(['openblas', 'builtin']).toContain(child.info.cpu.blas);
      // CI installs OpenBLAS and says so, so a missing library cannot pass silently.
      if (expected === 'openblas') expect(child.info.cpu.blas).toBe('openblas');
    } else if (child.info.cpu.kernels === 'avx512') {
      expect(child.info.cpu.blas).toBe('builtin');
      expect(child.info.cpu.blasReason).toMatch(/built-in AVX-512 kernel is the default/);
    } else {
      expect(['openblas', 'cblas', 'builtin']).toContain(child.info.cpu.blas);
      if (expected) expect(child.info.cpu.blas).toBe(expected);
    }
    expect(child.info.cpu.threads).toBeGreaterThanOrEqual(1);
  });

  test.each(cases.map((c, i) => [i, `${c.dtype} A${JSON.stringify(c.aShape)}${c.transA ? 'ᵀ' : ''} B${JSON.stringify(c.bShape)}${c.transB ? 'ᵀ' : ''}`] as const))(
    'case %i: %s', (i) => {
      const c = cases[i];
      const err = relError(child.results[i], reference(c));
      expect(err).toBeLessThan(c.dtype === 'float64' ? 1e-13 : 2e-6);
    });
});

test('a library named by LORA_CUDA_BLAS that cannot be loaded falls back to the built-in kernel with the reason', () => {
  const env = { ...process.env, LORA_CUDA_BLAS: '/nonexistent/libnothing.so' };
  const child = runChild(env);
  expect(child.info.cpu.blas).toBe('builtin');
  expect(child.info.cpu.blasReason).toMatch(/libnothing\.so/);
});

// The built-in kernel's instruction-set copies, each forced in a child process; those this processor
// lacks are skipped (a forced one it lacks is an error, not a crash).
const features = backendInfo().cpu.features;
const has = (...fs: string[]) => fs.every((f) => features.includes(f));
const paths: [string, string, boolean][] = [
  ['generic', 'generic', true],
  ['avx2', 'avx2+fma', has('avx2', 'fma')],
  ['avx512', 'avx512', has('avx2', 'fma', 'avx512f', 'avx512vl')],
];
describe.each(paths)('the built-in kernel forced to LORA_CUDA_CPU_KERNELS=%s', (forced, name, supported) => {
  const run = supported ? test : test.skip;
  const child = supported ? runChild({ ...process.env, LORA_CUDA_BLAS: 'builtin', LORA_CUDA_CPU_KERNELS: forced }) : null;
  run('reports that path', () => {
    expect(child!.info.cpu.kernels).toBe(name);
    expect(child!.info.cpu.blas).toBe('builtin');
  });
  run('every case matches the float64 reference', () => {
    cases.forEach((c, i) => expect([i, relError(child!.results[i], reference(c)) < (c.dtype === 'float64' ? 1e-13 : 2e-6)]).toEqual([i, true]));
  });
});

// Each element of C is summed in an order fixed by the shape alone (K blocks, the deep products'
// halves), whichever threads computed it: one, two or three threads give the same bits.
test('the built-in kernel gives the same bits on any number of threads', () => {
  const runs = ['1', '2', '3'].map((n) => runChild({ ...process.env, LORA_CUDA_BLAS: 'builtin', LORA_CUDA_NUM_THREADS: n }));
  expect(runs.map((r) => r.info.cpu.threads)).toEqual([1, 2, 3]);
  cases.forEach((_c, i) => {
    expect([i, runs[1].results[i]]).toEqual([i, runs[0].results[i]]);
    expect([i, runs[2].results[i]]).toEqual([i, runs[0].results[i]]);
  });
});

test('an unknown LORA_CUDA_CPU_KERNELS is an error that names the choices', () => {
  const r = spawnChild({ ...process.env, LORA_CUDA_CPU_KERNELS: 'sse9' });
  expect(r.status).not.toBe(0);
  expect(r.stderr).toContain("LORA_CUDA_CPU_KERNELS must be avx512, avx2 or generic, got 'sse9'");
});
