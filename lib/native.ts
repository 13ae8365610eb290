// Loads the compiled addon and describes its (internal) interface. Users never
// see these functions: every public entry validates its arguments, then calls
// lib/ops, the one layer that calls here.
import * as fs from 'fs';
import * as path from 'path';
import * as v8 from 'v8';
import * as vm from 'vm';
import { glibcNeeded, glibcVersion, olderThan } from './platform';

/** Opaque handle to native tensor storage plus shape. */
export interface NativeTensor {
  readonly __nativeTensor: unique symbol;
}

type N = NativeTensor;
export interface CpuInfo {
  blas: string;
  blasPath: string;
  blasReason?: string;
  blasThreads: number;
  threads: number;
  /** Extensions of this processor that matter here: 'avx2', 'fma', 'avx512f', 'avx512vl', 'avx512bf16'. */
  features: string[];
  /** What this build's own kernels use on it: 'avx512', 'avx2+fma' or 'generic'. */
  kernels: string;
  /** The bfloat16 GEMM: 'avx512bf16' (native kernel) or 'panels' (float32 GEMM on converted panels). */
  bf16Gemm: string;
}
export interface NativeCudaInfo {
  compiled: boolean;
  available: boolean;
  reason: string;
  devices: { name: string; memory: number; capability: string; multiprocessors: number; ordinal: number }[];
  unusableDevices: { name: string; memory: number; capability: string; multiprocessors: number; ordinal: number; reason: string }[];
  cublas: { path: string; version: string } | null;
  runtimeVersion: number;
  driverVersion: number;
  architectures: string;
}
export interface NativeMemoryStats {
  allocated: number;
  reserved: number;
  peak: number;
}

/** The codes of the core's enums by name, as the addon exports them (src/tensor.h, src/backend.h). */
export interface NativeEnums {
  dtype: Record<string, number>;
  deviceType: Record<string, number>;
  binaryOp: Record<string, number>;
  unaryOp: Record<string, number>;
  randomKind: Record<string, number>;
  compareOp: Record<string, number>;
}

// Backwards take their need-flags as one array in the op's input order and return the
// gradients in that order (null where not needed).
export interface Binding {
  enums: NativeEnums;
  full(shape: number[], dtype: number, devType: number, devIndex: number, value: number): N;
  fromArray(data: Float32Array | Float64Array | Int32Array | Uint16Array, shape: number[], dtype: number,
    devType: number, devIndex: number): N;
  toArray(t: N): Float32Array | Float64Array | Int32Array;
  /** The raw bits of a bfloat16 or float16 tensor. */
  toHalfBits(t: N): Uint16Array;
  random(shape: number[], dtype: number, devType: number, devIndex: number, kind: number,
    seed: bigint, offset: bigint, a: number, b: number): N;
  view(t: N, shape: number[]): N;
  dispose(t: N): void;
  isDisposed(t: N): boolean;
  copy_(dst: N, src: N): void;
  to(t: N, devType: number, devIndex: number, dtype: number): N;
  liveBytes(): number;
  setGarbageCollector(collect: () => void): void;
  clipGradNorm_(grads: N[], maxNorm: number, skipNonfinite: boolean): N;
  binary(op: number, a: N, b: N): N;
  affine(x: N, alpha: number, beta: number): N;
  axpy_(y: N, x: N, alpha: number): void;
  unary(op: number, x: N): N;
  unaryBackward(op: number, x: N, dy: N): N;
  sumTo(x: N, shape: number[]): N;
  expand(x: N, shape: number[]): N;
  permute(x: N, perm: number[]): N;
  allFinite(x: N): boolean;
  softmax(x: N): N;
  softmaxBackward(y: N, dy: N): N;
  /** Max (or min) along dim: [values, int32 indices], dim kept as 1. */
  minmax(x: N, dim: number, isMax: boolean): [N, N];
  /** grad and indices [..., k, ...] -> zeros of `shape` with grad added at the indices along dim. */
  indexDimBackward(dy: N, indices: N, dim: number, shape: number[]): N;
  /** The k largest (or smallest) along dim, sorted: [values, int32 indices]. */
  topk(x: N, k: number, dim: number, largest: boolean): [N, N];
  cumsum(x: N, dim: number, reverse: boolean): N;
  /** An int32 mask (1 true, 0 false), broadcasting. */
  compare(op: number, a: N, b: N): N;
  where(cond: N, a: N, b: N): N;
  clamp(x: N, min: number, max: number): N;
  clampBackward(x: N, min: number, max: number, dy: N): N;
  pow(a: N, b: N): N;
  /** needs and grads: [a, b], each summed to its operand's shape. */
  powBackward(a: N, b: N, dy: N, needs: boolean[]): (N | null)[];
  logSoftmax(x: N): N;
  logSoftmaxBackward(y: N, dy: N): N;
  bmm(a: N, b: N, transA: boolean, transB: boolean): N;
  linear(x: N, w: N, b: N | null): N;
  /** needs and grads: [x, w, b]. */
  linearBackward(dy: N, x: N, w: N, b: N | null, needs: boolean[]): (N | null)[];
  loraForward(x: N, w: N, b: N | null, A: N, B: N, scale: number, p: number, seed: bigint,
    offset: bigint): [N, N];
  /** needs and grads: [x, w, A, B, b]. */
  loraBackward(dy: N, x: N, w: N, A: N, B: N, b: N | null, h: N, scale: number, p: number,
    seed: bigint, offset: bigint, needs: boolean[]): (N | null)[];
  loraMerge(w: N, A: N, B: N, scale: number, safe: boolean): boolean;
  dropout(x: N, p: number, seed: bigint, offset: bigint): N;
  adamStep(params: N[], grads: N[], expAvg: N[], expAvgSq: N[], maxExpAvgSq: N[] | null,
    steps: number[], lr: number, beta1: number, beta2: number, eps: number, weightDecay: number,
    decoupled: boolean): void;
  crossEntropyForward(logits: N, targets: N, ignoreIndex: number, labelSmoothing: number): [N, N];
  /** x [N, H], weight [V, H] -> [logits [N, V], lossRows [N], lse [N]]. */
  linearCrossEntropyForward(x: N, weight: N, targets: N, ignoreIndex: number, labelSmoothing: number): [N, N, N];
  linearCrossEntropyBackward(logits: N, lse: N, targets: N, ignoreIndex: number, labelSmoothing: number, grad: N, scale: number,
    weight: N): N;
  crossEntropyBackward(logits: N, lse: N, targets: N, ignoreIndex: number, labelSmoothing: number,
    grad: N, scale: number): N;
  /** ids int32 (any shape), weight [V, D] -> [...ids.shape, D]. */
  embeddingForward(ids: N, weight: N): N;
  /**
   * grad [...ids.shape, D] -> dweight [numEmbeddings, D] (rows scatter-added). order: null, or
   * the positions sorted by (id, position) (required on CUDA).
   */
  embeddingBackward(ids: N, order: N | null, dy: N, numEmbeddings: number): N;
  /** x [..., D], weight [D] or null -> [y [..., D], rstd [rows]]. */
  rmsNormForward(x: N, weight: N | null, eps: number): [N, N];
  /** needs and grads: [x, weight]. */
  rmsNormBackward(dy: N, x: N, weight: N | null, rstd: N, needs: boolean[]): (N | null)[];
  /** x [..., T, Dh], cos/sin [T, Dh] (rotate-half layout). */
  swigluForward(gate: N, up: N): N;
  swigluBackward(gate: N, up: N, dy: N, needs: boolean[]): (N | null)[];
  rotaryForward(x: N, cos: N, sin: N): N;
  rotaryBackward(dy: N, cos: N, sin: N): N;
  /** q [B, Hq, T, Dh], k [B, Hkv, S, Dh], v [B, Hkv, S, Dv] -> [out [B, Hq, T, Dv], lse [B, Hq, T]]. */
  /** starts: null or int32 [B, T], the first key each query row sees (causal only). */
  /** bthd: q/k/v/out are [B, T, H, D] instead. lse is float32 for 16-bit inputs. */
  attentionForward(q: N, k: N, v: N, causal: boolean, scale: number, starts: N | null, bthd: boolean): [N, N];
  /** out: the forward's output; needs and grads: [q, k, v]. */
  attentionBackward(dout: N, q: N, k: N, v: N, out: N, lse: N, causal: boolean, scale: number,
    needs: boolean[], starts: N | null, bthd: boolean): (N | null)[];
  /** A new tensor of `sizes`: element i = x[offset + sum_d i_d strides[d]] (element units). */
  stridedRead(x: N, sizes: number[], strides: number[], offset: number): N;
  /** dst[offset + sum_d i_d strides[d]] = src[i] in place (distinct destination elements). */
  stridedWrite(dst: N, sizes: number[], strides: number[], offset: number, src: N): void;
  /** Along dim: select (index_select, index 1-D) or gather (index of x's rank); index int32. */
  gather(x: N, index: N, dim: number, select: boolean): N;
  /**
   * dy scatter-added back to a tensor of `shape` through the index (deterministic order). order:
   * null, or with select the index positions sorted by (value, position) (used on CUDA).
   */
  gatherBackward(index: N, order: N | null, dim: number, select: boolean, dy: N, shape: number[]): N;
  /** tril (upper false) or triu with diagonal k over the last two dims. */
  triangle(x: N, k: number, upper: boolean): N;
  /** Device index -1: every CUDA device used so far. */
  cudaSynchronize(index: number): void;
  cudaMemoryStats(index: number): NativeMemoryStats;
  cudaResetPeak(index: number): void;
  cudaEmptyCache(index: number): void;
  cudaSetAllowTF32(allow: boolean): void;
  cudaGetAllowTF32(): boolean;
  backendInfo(): { cpu: CpuInfo; cuda: NativeCudaInfo };
}

function packageRoot(): string {
  // lib/ under ts-jest, dist/lib/ when compiled: walk up to our package.json.
  let dir = __dirname;
  for (;;) {
    const pj = path.join(dir, 'package.json');
    if (fs.existsSync(pj)) {
      try {
        if (JSON.parse(fs.readFileSync(pj, 'utf8')).name === 'lora-cuda') return dir;
      } catch {
        /* keep looking */
      }
    }
    const up = path.dirname(dir);
    if (up === dir) return path.resolve(__dirname, '..');
    dir = up;
  }
}

/** The addon file this process loaded, and why that one. */
export interface AddonSource {
  path: string;
  /** 'override': named by LORA_CUDA_ADDON; 'build': a local build under build/; 'prebuilt': a prebuilt binary (prebuilds/). */
  kind: 'override' | 'build' | 'prebuilt';
}
let source: AddonSource | null = null;

/** Where the addon was loaded from. */
export function addonSource(): AddonSource {
  return source as AddonSource;
}

function load(): Binding {
  const root = packageRoot();
  // LORA_CUDA_ADDON: the path of a .node file to load instead (e.g. the sanitizer build of
  // scripts/test-asan.sh). No fallback: a wrong path must not silently load the normal addon.
  const override = process.env.LORA_CUDA_ADDON;
  if (override) {
    const file = path.resolve(override);
    try {
      // eslint-disable-next-line @typescript-eslint/no-require-imports
      const b = require(file) as Binding;
      source = { path: file, kind: 'override' };
      return b;
    } catch (e) {
      const err = new Error(`lora-cuda: the native addon named by LORA_CUDA_ADDON could not be loaded from ${file}: ${(e as Error).message}`);
      (err as NodeJS.ErrnoException).code = 'ERR_LORA_ADDON_NOT_FOUND';
      throw err;
    }
  }
  try {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const gypBuild = require('node-gyp-build') as { resolve(dir: string): string };
    const file = gypBuild.resolve(root);
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const b = require(file) as Binding;
    source = { path: file, kind: path.relative(root, file).split(path.sep)[0] === 'build' ? 'build' : 'prebuilt' };
    return b;
  } catch (e) {
    throw loadError(root, e as Error);
  }
}

/**
 * One error that lists every place a binary was looked for, what happened there, the glibc this
 * system has against the one each binary needs, and the fixes.
 */
export function loadError(root: string, cause: Error): Error {
  const platform = `${process.platform}-${process.arch}`;
  const tried: string[] = [];
  const glibc = glibcVersion();
  let prebuiltNeeds: string | null = null;
  const candidates = [path.join(root, 'build', 'Release'), path.join(root, 'build', 'Debug'), path.join(root, 'prebuilds', platform)];
  for (const dir of candidates) {
    const files = fs.existsSync(dir) ? fs.readdirSync(dir).filter((f) => f.endsWith('.node')) : [];
    if (!files.length) {
      tried.push(`${path.relative(root, dir)}/: no .node file`);
      continue;
    }
    for (const f of files) {
      try {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        require(path.join(dir, f));
        tried.push(`${path.relative(root, path.join(dir, f))}: loads, but was not chosen (${cause.message})`);
      } catch (err) {
        const file = path.join(dir, f);
        const needs = glibcNeeded(file);
        if (dir.endsWith(platform) && needs) prebuiltNeeds = needs;
        const tooOld = glibc && needs && olderThan(glibc, needs) ? ` (it needs glibc ${needs}, this system has ${glibc})` : '';
        tried.push(`${path.relative(root, file)}: ${(err as Error).message.split('\n')[0]}${tooOld}`);
      }
    }
  }
  const build = 'build from source with "npm run build:native" in the package directory (needs cmake >= 3.18, a C++17 compiler, and npm install cmake-js node-addon-api)';
  const system = glibc ? `This system has glibc ${glibc}. ` : '';
  const fixes = platform === 'linux-x64'
    ? `${system}The package ships a prebuilt binary for linux-x64 (glibc ${prebuiltNeeds ?? 'as in the README'} or newer, Node.js 20 or newer); ` +
      `${glibc && prebuiltNeeds && olderThan(glibc, prebuiltNeeds) ? 'on an older system ' : 'reinstall it if prebuilds/ is missing, or '}${build}`
    : `No prebuilt binary exists for ${platform}; ${build}`;
  const err = new Error(`lora-cuda: no native addon could be loaded from ${root}. Tried: ${tried.join('; ')}. ${fixes}.`);
  (err as NodeJS.ErrnoException).code = 'ERR_LORA_ADDON_NOT_FOUND';
  return err;
}

export const native: Binding = load();

// ---- device memory pressure
// A device allocation that fails first runs a full garbage collection (whose finalizers free
// unreferenced tensors' device memory), then retries. gc is global.gc under --expose-gc, else
// taken from a fresh context once the flag is set (only when first needed).
let gcFunction: (() => void) | null | undefined;
function collectGarbage(): void {
  if (gcFunction === undefined) {
    const g = (globalThis as { gc?: unknown }).gc;
    gcFunction = typeof g === 'function' ? (g as () => void) : null;
    if (!gcFunction) {
      try {
        v8.setFlagsFromString('--expose-gc');
        gcFunction = vm.runInNewContext('gc') as () => void;
      } catch {
        gcFunction = null;
      }
    }
  }
  gcFunction?.();
}
native.setGarbageCollector?.(collectGarbage);
