// The addon's `bench` object (binding/bench.cpp): what only the benchmarks
// use, kept out of the library's own binding interface (lib/native.ts).
import { native } from '../lib/native';
import type { NativeTensor } from '../lib/native';

export interface BenchBinding {
  /** Records an event on device `index`'s stream; returns its id. */
  eventRecord(index: number): number;
  /** Milliseconds between two recorded events (waits for the second). */
  eventElapsed(start: number, end: number): number;
  eventDestroy(event: number): void;
  /** c = alpha op(a) op(b) + beta c in place (2-D): the plain GEMM the layers are compared with. */
  gemmInto(a: NativeTensor, b: NativeTensor, c: NativeTensor, transA: boolean, transB: boolean,
    alpha: number, beta: number): void;
  /**
   * The bfloat16 GEMM itself on CPU bfloat16 tensors read as flat storage with row strides lda/ldb/ldc:
   * C = alpha op(A) op(B) + beta C, op(A) [M, K], op(B) [K, N] (for the kernel's tests and per-shape timings).
   */
  gemmBf16(a: NativeTensor, b: NativeTensor, c: NativeTensor, transA: boolean, transB: boolean, M: number, N: number,
    K: number, alpha: number, beta: number, lda: number, ldb: number, ldc: number): void;
  /** The float32 multiply-add peak of the built-in kernels' vectors on the pool's threads (about `seconds` long). */
  fmaPeak(seconds: number): { gflops: number; gflopsPerThread: number; threads: number; kernels: string };
  /** Peak bytes of tensors live on this thread since the last livePeak(true) (which restarts it from now). */
  livePeak(reset: boolean): number;
}

export const benchNative: BenchBinding = (native as unknown as { bench: BenchBinding }).bench;
