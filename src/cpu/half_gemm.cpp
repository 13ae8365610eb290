// Matrix products with bfloat16/float16 inputs and output and float32
// accumulation, as PyTorch's CPU and cuBLAS compute them: C is accumulated in
// float over the whole K and rounded once (to nearest even) when stored.
//
// No float32 copy of a whole operand is made: the product walks C in blocks
// of at most kMB x kNB, and for each K-block of at most kKB converts the two
// panels it needs (op(A)[rows, kblock] and op(B)[kblock, cols]: at most 4 MB
// and 2 MB of float) and hands them to the float32 path (gemm_f32: the CBLAS
// found at run time or the built-in kernel), which accumulates into a float
// C block of at most 8 MB (beta = 1 after the first K-block). The conversion
// costs O(1/kNB + 1/kMB) of the multiply-adds. (An OpenBLAS built with
// sbgemm could take bfloat16 directly; the one this was measured with has
// none, so there is no such path yet.)
//
// gemm_bf16/gemm_f16 (gemm.h) are the entry points: gemm_bf16 hands its products to the
// native AVX512_BF16 kernel (bf16_gemm.cpp) where that runs; float16 always takes the panels.
#include <algorithm>
#include <cstring>
#include <vector>

#include "../half.h"
#include "blas.h"
#include "gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace lc {
namespace {

constexpr int64_t kMB = 2048;  // rows of C per block
constexpr int64_t kNB = 1024;  // columns of C per block
constexpr int64_t kKB = 512;   // depth of one panel pair

// n halves (row) -> floats: exact (every half is a float).
void widen(const bf16* s, float* d, int64_t n) {
  // bfloat16 is the top half of a float32: a shift, which the compiler vectorises.
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = static_cast<uint32_t>(s[i].bits) << 16;
    std::memcpy(d + i, &u, 4);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx,f16c"))) void widen_f16c(const f16* s, float* d, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(d + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + i))));
  for (; i < n; ++i) d[i] = f16_bits_to_float(s[i].bits);
}
// F16C from CPUID itself: older compilers (g++ 10, the release build's) do not know
// __builtin_cpu_supports("f16c"); "avx" there also checks that the OS saves the ymm state.
bool has_f16c() {
  static const bool yes = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __builtin_cpu_supports("avx") && __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C) != 0;
  }();
  return yes;
}
#endif

void widen(const f16* s, float* d, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (has_f16c()) {
    widen_f16c(s, d, n);
    return;
  }
#endif
  for (int64_t i = 0; i < n; ++i) d[i] = f16_bits_to_float(s[i].bits);
}

// dst [rows, cols] (row-major, dense) = src[0:rows, 0:cols] of a matrix with row stride ld.
template <typename H>
void panel(const H* src, int64_t ld, int64_t rows, int64_t cols, float* dst) {
  for (int64_t r = 0; r < rows; ++r) widen(src + r * ld, dst + r * cols, cols);
}

// The size of ceil(n / limit) equal blocks covering n.
int64_t even_block(int64_t n, int64_t limit) {
  const int64_t blocks = (n + limit - 1) / limit;
  return (n + blocks - 1) / blocks;
}

template <typename H>
void half_gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const H* A,
               int64_t lda, const H* B, int64_t ldb, float beta, H* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == 0.0f) {
    // C = beta C, and beta == 0 never reads C (as gemm_f32).
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j)
        C[i * ldc + j] = beta == 0.0f ? H(0.0f) : H(beta * static_cast<float>(C[i * ldc + j]));
    return;
  }
  // Blocks of equal size (at most the limits): no thin remainder panel (K = 576 runs as two
  // products 288 deep, not 512 and 64).
  const int64_t mbm = even_block(M, kMB), nbm = even_block(N, kNB), kbm = even_block(K, kKB);
  std::vector<float> a(static_cast<size_t>(mbm * kbm)), b(static_cast<size_t>(kbm * nbm)),
      c(static_cast<size_t>(mbm * nbm));
  for (int64_t i0 = 0; i0 < M; i0 += mbm) {
    const int64_t mb = std::min(mbm, M - i0);
    for (int64_t j0 = 0; j0 < N; j0 += nbm) {
      const int64_t nb = std::min(nbm, N - j0);
      for (int64_t k0 = 0; k0 < K; k0 += kbm) {
        const int64_t kb = std::min(kbm, K - k0);
        // The panels keep their stored orientation (rows read contiguously); the float GEMM
        // applies the transposes.
        if (!tA) panel(A + i0 * lda + k0, lda, mb, kb, a.data());
        else panel(A + k0 * lda + i0, lda, kb, mb, a.data());
        if (!tB) panel(B + k0 * ldb + j0, ldb, kb, nb, b.data());
        else panel(B + j0 * ldb + k0, ldb, nb, kb, b.data());
        gemm_f32(tA, tB, mb, nb, kb, alpha, a.data(), tA ? mb : kb, b.data(), tB ? kb : nb,
                 k0 == 0 ? 0.0f : 1.0f, c.data(), nb);
      }
      // One rounding per element of C.
      for (int64_t i = 0; i < mb; ++i) {
        H* cr = C + (i0 + i) * ldc + j0;
        const float* acc = c.data() + i * nb;
        if (beta == 0.0f)
          for (int64_t j = 0; j < nb; ++j) cr[j] = H(acc[j]);
        else
          for (int64_t j = 0; j < nb; ++j) cr[j] = H(acc[j] + beta * static_cast<float>(cr[j]));
      }
    }
  }
}

}  // namespace

void gemm_bf16(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
               int64_t lda, const bf16* B, int64_t ldb, float beta, bf16* C, int64_t ldc) {
  // The native kernel (bf16_gemm.cpp) where it runs; an empty product or alpha == 0 stays here.
  if (M > 0 && N > 0 && K > 0 && alpha != 0.0f && bf16_gemm_kernel() == Bf16Kernel::Avx512Bf16) {
    gemm_bf16_avx512bf16(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  half_gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_f16(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const f16* A,
              int64_t lda, const f16* B, int64_t ldb, float beta, f16* C, int64_t ldc) {
  half_gemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace lc
