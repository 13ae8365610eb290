// Matrix products for the CPU backend. gemm() routes to a CBLAS found at run
// time (see blas_loader) and falls back to the built-in blocked kernel below.
#pragma once
#include <cstdint>

namespace lc {

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

}  // namespace lc
