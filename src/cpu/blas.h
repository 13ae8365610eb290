// CBLAS loaded at run time, so the addon needs no BLAS at build or load time.
// Search order: $LORA_CUDA_BLAS (a library path, or "builtin" to force the
// built-in kernel); unset, the built-in kernel where it runs its AVX-512 copy
// (as fast here, bench/NOTES.md), else libopenblas.so.0, then libblas.so.3.
#pragma once
#include <cstdint>
#include <string>

namespace lc {

struct BlasInfo {
  std::string name;    // "openblas", "cblas" or "builtin"
  std::string path;    // library that was loaded ("" for builtin)
  std::string reason;  // why the built-in kernel is used, when it is
  int threads;         // threads the library reports (builtin: our pool size)
};

const BlasInfo& blas_info();

// Row-major gemm through the loaded CBLAS, or the built-in kernel.
void gemm_f32(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
              int64_t ldc);
void gemm_f64(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
              const double* A, int64_t lda, const double* B, int64_t ldb, double beta, double* C,
              int64_t ldc);

}  // namespace lc
