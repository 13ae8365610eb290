// The bfloat16 GEMM (gemm_bf16: the native AVX512_BF16 kernel where it runs, else float32 panels),
// called with its whole contract (transposes, row strides, alpha, beta) through the addon's
// bench.gemmBf16 hook in child processes, one per kernel choice, and checked against float64
// products of the same bfloat16 inputs: accumulation in float32 over the whole K, one rounding
// to bfloat16 (to nearest even) on store.
import { spawnSync } from 'child_process';
import * as path from 'path';
import { backendInfo } from '../lib';

interface Case {
  transA: boolean; transB: boolean;
  M: number; N: number; K: number;
  alpha: number; beta: number;
  lda: number; ldb: number; ldc: number;
  a: number[]; b: number[]; c: number[];
}

let seed = 2024;
function rnd(): number {
  seed ^= seed << 13;
  seed ^= seed >>> 17;
  seed ^= seed << 5;
  return ((seed >>> 0) / 4294967296) * 2 - 1;
}
const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);
/** float -> bfloat16 bits, round to nearest even (finite inputs). */
function bf16Bits(x: number): number {
  f32[0] = x;
  const u = u32[0];
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}
function bf16Value(bits: number): number {
  u32[0] = bits << 16;
  return f32[0];
}
const NAN_BITS = 0x7fc0;

function makeCase(M: number, N: number, K: number, transA: boolean, transB: boolean, alpha: number, beta: number, pad = 0): Case {
  // Stored A is [K, M] when transposed, else [M, K]; each row padded by `pad` unused elements.
  const [ra, ca] = transA ? [K, M] : [M, K];
  const [rb, cb] = transB ? [N, K] : [K, N];
  const lda = ca + pad, ldb = cb + pad, ldc = N + pad;
  const fill = (rows: number, ld: number) => Array.from({ length: rows * ld }, () => bf16Bits(rnd()));
  // beta == 0 must not read C: fill it with NaN then.
  const c = beta === 0 ? Array.from({ length: M * ldc }, () => NAN_BITS) : fill(M, ldc);
  return { transA, transB, M, N, K, alpha, beta, lda, ldb, ldc, a: fill(ra, lda), b: fill(rb, ldb), c };
}

const cases: Case[] = [];
const TRANSPOSES = [[false, false], [true, false], [false, true], [true, true]] as const;
// The native tile is 12 x 32 and its K block 1024 (pairs: an odd K is padded); C rows go in passes
// of 512 when K spans blocks; columns in blocks of 2048. Shapes on and off every one of these.
const SHAPES: [number, number, number][] = [
  [1, 1, 1], [12, 32, 2], [13, 33, 7], [25, 65, 1], [11, 31, 64], [37, 95, 1025], [50, 40, 2049],
  [3, 2100, 9], [1100, 8, 1030], [70, 129, 300],
];
for (const [M, N, K] of SHAPES) {
  TRANSPOSES.forEach(([tA, tB], i) => {
    const alpha = i % 2 === 0 ? 1 : -0.75;
    const beta = i < 2 ? 0 : 0.5;
    cases.push(makeCase(M, N, K, tA, tB, alpha, beta, i === 3 ? 5 : 0));
  });
}
// Strided rows with beta != 0 and alpha != 1 on a multi-block K; an empty K (C = beta C).
cases.push(makeCase(29, 45, 1301, false, true, 1.5, -2, 3));
cases.push(makeCase(7, 9, 0, false, false, 1, 0.5, 2));

/** float64 of the same bfloat16 inputs: alpha * op(A) op(B) + beta * C, and sum |terms| for the bound. */
const refs = new Map<Case, { ref: Float64Array; mag: Float64Array }>();
function reference(c: Case): { ref: Float64Array; mag: Float64Array } {
  const known = refs.get(c);
  if (known) return known;
  const { M, N, K, lda, ldb, ldc } = c;
  const ref = new Float64Array(M * N), mag = new Float64Array(M * N);
  const A = Float64Array.from(c.a, bf16Value), B = Float64Array.from(c.b, bf16Value), C = Float64Array.from(c.c, bf16Value);
  // Element (i, p) of op(A) at A[i * ai + p * ap], (p, j) of op(B) at B[p * bp + j * bj].
  const [ai, ap] = c.transA ? [1, lda] : [lda, 1];
  const [bp, bj] = c.transB ? [1, ldb] : [ldb, 1];
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      let s = 0, m = 0;
      for (let p = 0; p < K; p++) {
        const t = A[i * ai + p * ap] * B[p * bp + j * bj];
        s += t;
        m += Math.abs(t);
      }
      const cv = c.beta === 0 ? 0 : c.beta * C[i * ldc + j];
      ref[i * N + j] = c.alpha * s + cv;
      mag[i * N + j] = Math.abs(c.alpha) * m + Math.abs(cv);
    }
  }
  refs.set(c, { ref, mag });
  return { ref, mag };
}

/** One bfloat16 ulp of x (8 significant bits). */
const ulp = (x: number) => (x === 0 ? 0 : 2 ** (Math.floor(Math.log2(Math.abs(x))) - 7));

/**
 * Elements of C beyond the stated tolerance, and elements of the stride padding that changed.
 * Tolerance: one bfloat16 ulp of the exact result (the single rounding on store, with room for the
 * float32 error to cross a rounding boundary) plus (K + 2) 2^-24 sum|terms| (float32 accumulation
 * over K, the alpha and beta products).
 */
function failures(c: Case, got: number[]): string[] {
  const { ref, mag } = reference(c);
  const bad: string[] = [];
  for (let i = 0; i < c.M; i++) {
    for (let j = 0; j < c.ldc; j++) {
      const g = got[i * c.ldc + j];
      if (j >= c.N) {
        if (g !== c.c[i * c.ldc + j]) bad.push(`padding (${i}, ${j}) written`);
        continue;
      }
      const r = ref[i * c.N + j];
      const tol = ulp(r) + (c.K + 2) * 2 ** -24 * mag[i * c.N + j];
      const v = bf16Value(g);
      if (!(Math.abs(v - r) <= tol)) bad.push(`(${i}, ${j}): ${v} vs ${r} (tolerance ${tol})`);
    }
  }
  return bad.slice(0, 5);
}

function runChild(env: Record<string, string>, input: Case[]) {
  const full = { ...process.env, ...env } as NodeJS.ProcessEnv;
  for (const k of ['LORA_CUDA_BF16_GEMM', 'LORA_CUDA_CPU_KERNELS']) if (!(k in env)) delete full[k];
  const script = path.join(__dirname, 'helpers', 'bf16-gemm-child.js');
  return spawnSync(process.execPath, [script], { env: full, input: JSON.stringify(input), encoding: 'utf8', maxBuffer: 256 << 20 });
}
function run(env: Record<string, string>, input: Case[]): { info: ReturnType<typeof backendInfo>; results: number[][] } {
  const r = runChild(env, input);
  if (r.status !== 0) throw new Error(`child failed (${r.status ?? r.error}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

const cpu = backendInfo().cpu;
const native = cpu.features.includes('avx512bf16') && cpu.kernels === 'avx512';
const label = (c: Case) => `${c.M}x${c.N}x${c.K} ${c.transA ? 'T' : 'N'}${c.transB ? 'T' : 'N'} alpha ${c.alpha} beta ${c.beta} ld ${c.lda}/${c.ldb}/${c.ldc}`;

// K = 2049 in three blocks (684, 684, 681 deep): 1 + 2^-9 from the first block, 2^-9 + 2^-10 from
// the last. Exact sum 1 + 2^-8 + 2^-10 rounds up to 1 + 2^-7; rounding the first block's partial sum
// to bfloat16 (1) would lose 2^-9 and give 1 + 2^-9 + 2^-10, which rounds to 1.
function wholeKCase(): Case {
  const K = 2049;
  const a = Array.from({ length: K }, () => bf16Bits(1));
  const b = new Array<number>(K).fill(0);
  b[0] = bf16Bits(1);
  b[1] = bf16Bits(2 ** -9);
  b[K - 2] = bf16Bits(2 ** -9);
  b[K - 1] = bf16Bits(2 ** -10);
  return { transA: false, transB: false, M: 1, N: 1, K, alpha: 1, beta: 0, lda: K, ldb: 1, ldc: 1, a, b, c: [NAN_BITS] };
}
// A bfloat16 subnormal input (2^-130) times 2^100: vdpbf16ps reads the subnormal as zero.
function subnormalCase(): Case {
  return { transA: false, transB: false, M: 1, N: 1, K: 2, alpha: 1, beta: 0, lda: 2, ldb: 1, ldc: 1,
    a: [bf16Bits(2 ** -130), bf16Bits(1)], b: [bf16Bits(2 ** 100), 0], c: [NAN_BITS] };
}

// Inputs of a few bits (multiples of 1/8 up to 1): every product and partial sum is exact in float32,
// so the one rounding decides the result: it must be the exact value rounded to nearest even.
function exactCase(M: number, N: number, K: number, transA: boolean, transB: boolean, beta: number): Case {
  const c = makeCase(M, N, K, transA, transB, 1, beta, 1);
  const small = () => bf16Bits(Math.round(rnd() * 8) / 8);
  c.a = c.a.map(small);
  c.b = c.b.map(small);
  if (beta !== 0) c.c = c.c.map(() => bf16Bits(Math.round(rnd() * 64)));
  return c;
}
const exactCases = [exactCase(37, 95, 2049, false, false, 0), exactCase(13, 33, 7, true, true, 0.5), exactCase(40, 70, 300, true, false, 0.5)];

const CHOICES: [string, Record<string, string>, string][] = [
  ['the default choice', {}, native ? 'avx512bf16' : 'panels'],
  ['float32 panels forced (LORA_CUDA_BF16_GEMM=panels)', { LORA_CUDA_BF16_GEMM: 'panels' }, 'panels'],
  ['the AVX2 kernels (LORA_CUDA_CPU_KERNELS=avx2)', { LORA_CUDA_CPU_KERNELS: 'avx2' }, 'panels'],
];
describe.each(CHOICES)('gemm_bf16 through %s', (_name, env, expected) => {
  const supported = !env.LORA_CUDA_CPU_KERNELS || (cpu.features.includes('avx2') && cpu.features.includes('fma'));
  const t = supported ? test : test.skip;
  const child = supported ? run(env, [...cases, wholeKCase(), subnormalCase(), ...exactCases]) : null;

  t(`reports ${expected}`, () => {
    expect(child!.info.cpu.bf16Gemm).toBe(expected);
  });
  t.each(cases.map((c, i) => [i, label(c)] as const))('case %i: %s within one bfloat16 ulp plus float32 accumulation', (i) => {
    expect(failures(cases[i], child!.results[i])).toEqual([]);
  });
  t('accumulates over the whole K in float32 and rounds once', () => {
    expect(bf16Value(child!.results[cases.length][0])).toBe(1 + 2 ** -7);
  });
  t.each(exactCases.map((c, i) => [i, label(c)] as const))('exact sums %i: %s rounded to nearest even, bit for bit', (i) => {
    const c = exactCases[i];
    const got = child!.results[cases.length + 2 + i];
    const { ref } = reference(c);
    const wrong: string[] = [];
    for (let r = 0; r < c.M; r++) {
      for (let j = 0; j < c.N; j++) {
        if (got[r * c.ldc + j] !== bf16Bits(ref[r * c.N + j])) wrong.push(`(${r}, ${j}): ${bf16Value(got[r * c.ldc + j])} for ${ref[r * c.N + j]}`);
      }
    }
    expect(wrong.slice(0, 5)).toEqual([]);
  });
  t('a subnormal bfloat16 input: read as zero by the native kernel, kept by the float32 panels', () => {
    expect(bf16Value(child!.results[cases.length + 1][0])).toBe(expected === 'avx512bf16' ? 0 : 2 ** -30);
  });
});

test('LORA_CUDA_BF16_GEMM: an unknown value is an error naming the choices; avx512bf16 where it cannot run is one too', () => {
  const bad = runChild({ LORA_CUDA_BF16_GEMM: 'amx' }, []);
  expect(bad.status).not.toBe(0);
  expect(bad.stderr).toContain("LORA_CUDA_BF16_GEMM must be avx512bf16 or panels, got 'amx'");
  const generic = runChild({ LORA_CUDA_BF16_GEMM: 'avx512bf16', LORA_CUDA_CPU_KERNELS: 'generic' }, []);
  expect(generic.status).not.toBe(0);
  expect(generic.stderr).toMatch(/LORA_CUDA_BF16_GEMM=avx512bf16 (needs the AVX-512 kernels|: this processor lacks AVX512_BF16)/);
  const forced = runChild({ LORA_CUDA_BF16_GEMM: 'avx512bf16' }, []);
  if (native) expect(JSON.parse(forced.stdout).info.cpu.bf16Gemm).toBe('avx512bf16');
  else expect(forced.stderr).toContain('LORA_CUDA_BF16_GEMM=avx512bf16');
});
