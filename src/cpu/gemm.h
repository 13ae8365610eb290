// Matrix products for the CPU backend. gemm() routes to a CBLAS found at run
// time (see blas_loader) and falls back to the built-in blocked kernel below.
#pragma once
#include <cstdint>

#include "../half.h"

namespace lc {

// Which copy of the built-in kernels (GEMM, rank-r pass, fused elementwise
// loops) runs: chosen once from CPUID, or forced with LORA_CUDA_CPU_KERNELS=
// avx512|avx2|generic. Throws std::invalid_argument when that variable asks for
// an ISA this processor lacks or is not one of those words.
enum class CpuKernels { Generic, Avx2, Avx512 };
CpuKernels cpu_kernels();
// "avx512", "avx2+fma" or "generic".
const char* cpu_kernels_name(CpuKernels k);

// The float32 multiply-add peak of the chosen kernel copy's vectors on all of the pool's threads
// (fma_peak.cpp): what no product can exceed here. For the benchmarks; runs about `seconds`.
struct FmaPeak {
  double gflops;             // all threads together
  double gflops_per_thread;  // the fastest single thread
  int threads;
  const char* kernels;
};
FmaPeak fma_peak(double seconds);

// Row-major C = alpha * op(A) * op(B) + beta * C, with op(X) = X or X^T.
// op(A) is M x K, op(B) is K x N, C is M x N; lda/ldb/ldc are row strides of
// the stored (untransposed) matrices. beta == 0 means C is written without
// being read (so it may hold garbage, NaN included).
// The built-in kernel: cache-blocked with packed panels, multi-threaded
// through parallel_for; used when no CBLAS library is available.
void builtin_sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                   int64_t ldc);
void builtin_dgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
                   const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                   double* C, int64_t ldc);

// Extra steps appended to a product's K: the tail adds U V (+ 1 bias^T) with U [M, q] (row
// stride ldu, each element times u_scale), V [q, N] read as V[k * v_k + j * v_n] (so a row-major
// V or the transpose of a row-major [N, q] both fit without a copy) and bias [N] or nullptr.
// q = 0 and no bias is no tail.
//
// Or U is the product's own: with P set, U = p_alpha op(A) P (P [K, q] row-major, p_t false, or
// the transpose of a row-major [q, K], p_t true) is computed and written to Uw [M, q] (row stride
// ldu; U itself is not read): LoRA's h = x A^T and dh = s dy B, made from op(A)'s rows while the
// product has them packed, where a product of their own would read all of x or dy again (made
// inside where that pays for the thread count, else first on its own; each element is one sum over
// K in order either way, so U's bits do not depend on which). op(A) must not be transposed.
template <typename T>
struct GemmTail {
  int64_t q = 0;
  const T* U = nullptr;
  int64_t ldu = 0;
  T u_scale = T(1);
  const T* V = nullptr;
  int64_t v_k = 0, v_n = 0;
  const T* bias = nullptr;
  const T* P = nullptr;
  bool p_t = false;
  T p_alpha = T(1);
  T* Uw = nullptr;
  // Set by the kernel: P packed into panels of pp_nr columns, K steps each.
  const T* Pp = nullptr;
  int pp_nr = 0;
};

// C = op(A) op(B) + beta * C + U V (+ 1 bias^T) on the built-in kernel, the tail's multiply-adds
// packed after the last K block's so they share its accumulators and C is written once: LoRA's
// y = x W^T + b + s h B^T and dx = dy W + dh A in one pass over C. K must be positive.
void builtin_sgemm_tail(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* A,
                        int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                        int64_t ldc, const GemmTail<float>& tail);
void builtin_dgemm_tail(bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                        const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                        double* C, int64_t ldc, const GemmTail<double>& tail);

// The cross entropy's gradient as the A operand, made while A is packed: row i of the stored
// logits X becomes mul[i] * exp(X[i, k] - shift[i]) - sub[i], less tsub[i] at column tgt[i],
// and all zeros where mul[i] == 0 (an ignored row). So the head's dx = dlogits W runs without
// dlogits in memory (a [tokens, vocab] pass written and read back).
struct SoftmaxRows {
  const float* shift = nullptr;  // the row's logsumexp
  const float* mul = nullptr;    // the row's gradient scale, 0 for a row that adds nothing
  const float* sub = nullptr;    // subtracted everywhere (label smoothing's share)
  const float* tsub = nullptr;   // subtracted at the target
  const int32_t* tgt = nullptr;  // the target column (outside [0, K) for none)
};
// C (set) = A B^T on the built-in kernel, A [M, K], B [N, K] row-major (the head's logits x W^T),
// and lse[i] = log sum_j exp(C[i, j]) (the cross entropy's logsumexp), folded in as each block of
// C is written instead of a pass reading the logits back. N and K must be positive.
void builtin_sgemm_lse(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const float* B, int64_t ldb, float* C, int64_t ldc, float* lse);
// C (set) = A' B on the built-in kernel, A' [M, K] from X [M, K] (row stride ldx) as above, B
// [K, N] row-major (row stride ldb): the head's dx from its logits and weight.
void builtin_sgemm_softmax_a(int64_t M, int64_t N, int64_t K, const float* X, int64_t ldx,
                             const SoftmaxRows& rows, const float* B, int64_t ldb, float* C,
                             int64_t ldc);

}  // namespace lc

namespace lc {

// bfloat16/float16 A, B and C with float32 accumulation, rounded once into C
// (half_gemm.cpp): the same row-major contract as above, alpha and beta in float.
// Panels of A and B are converted to float a block at a time and multiplied on
// the float32 path; never a float copy of a whole operand.
void gemm_bf16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
               const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta, bf16* C,
               int64_t ldc);
void gemm_f16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
              const f16* A, int64_t lda, const f16* B, int64_t ldb, float beta, f16* C,
              int64_t ldc);

}  // namespace lc

namespace lc {

// Which bfloat16 GEMM runs (bf16_gemm.cpp): the native AVX512_BF16 kernel where the processor has
// it and the AVX-512 copy of the built-in kernels is chosen, else float32 panels (half_gemm.cpp).
// LORA_CUDA_BF16_GEMM=panels|avx512bf16 forces one; throws std::invalid_argument when it asks for
// what cannot run here or is not one of those words.
enum class Bf16Kernel { Panels, Avx512Bf16 };
Bf16Kernel bf16_gemm_kernel();
// "avx512bf16" or "panels".
const char* bf16_gemm_kernel_name(Bf16Kernel k);
// The native kernel itself (M, N, K > 0; only where bf16_gemm_kernel() chose it).
void gemm_bf16_avx512bf16(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                          const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta,
                          bf16* C, int64_t ldc);

}  // namespace lc

namespace lc {

// The adapter's rank-r product, row by row: for each row i of C [M, N]
// (row stride N),
//   C[i, :] = base + alpha * keep(i, :) * (U[i, :] V)
// with U [M, r], V [r, N] row-major, base = C[i, :] when `accumulate`, else
// `row_init` [N] (a bias) or 0, and keep() the dropout mask scaled by
// 1/(1-p) when p > 0 (drawn from (seed, offset) like every other mask).
// A GEMM with K = r is a poor fit for BLAS (it streams C through a kernel
// built for large K); this is one pass over C with each row kept in L1.
void low_rank_rows_f32(float* C, int64_t M, int64_t N, int64_t r, float alpha, const float* U,
                       const float* V, const float* row_init, bool accumulate, double p,
                       uint64_t seed, uint64_t offset);
void low_rank_rows_f64(double* C, int64_t M, int64_t N, int64_t r, double alpha, const double* U,
                       const double* V, const double* row_init, bool accumulate, double p,
                       uint64_t seed, uint64_t offset);

}  // namespace lc
