#include <algorithm>
#include <cstring>
#include <vector>

#include "../parallel.h"
#include "../philox.h"
#include "blas.h"
#include "gemm.h"

namespace lc {
namespace {

template <typename T>
inline __attribute__((always_inline)) void rows_impl(T* C, int64_t i0, int64_t i1, int64_t N,
                                                     int64_t r, T alpha, const T* U, const T* V,
                                                     const T* row_init, bool accumulate, double p,
                                                     uint64_t seed, uint64_t offset) {
  std::vector<T> acc(static_cast<size_t>(N));
  const uint32_t thr = p > 0 ? dropout_threshold(p) : 0;
  const T keep_scale = p > 0 ? static_cast<T>(1.0 / (1.0 - p)) : T(1);
  for (int64_t i = i0; i < i1; ++i) {
    T* c = C + i * N;
    T* a = acc.data();
    std::fill(a, a + N, T(0));
    const T* u = U + i * r;
    for (int64_t k = 0; k < r; ++k) {
      const T uk = alpha * u[k];
      const T* v = V + k * N;
      for (int64_t j = 0; j < N; ++j) a[j] += uk * v[j];
    }
    if (p > 0) {
      for (int64_t j = 0; j < N; ++j)
        a[j] = dropout_keep(seed, offset, static_cast<uint64_t>(i * N + j), thr) ? a[j] * keep_scale
                                                                                 : T(0);
    }
    if (accumulate) {
      for (int64_t j = 0; j < N; ++j) c[j] += a[j];
    } else if (row_init) {
      for (int64_t j = 0; j < N; ++j) c[j] = row_init[j] + a[j];
    } else {
      std::memcpy(c, a, sizeof(T) * N);
    }
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
template <typename T>
__attribute__((target("avx2,fma"))) void rows_avx2(T* C, int64_t i0, int64_t i1, int64_t N,
                                                   int64_t r, T alpha, const T* U, const T* V,
                                                   const T* row_init, bool accumulate, double p,
                                                   uint64_t seed, uint64_t offset) {
  rows_impl(C, i0, i1, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
}
template <typename T>
__attribute__((target("avx512f,avx512vl,avx2,fma,prefer-vector-width=512"))) void rows_avx512(
    T* C, int64_t i0, int64_t i1, int64_t N, int64_t r, T alpha, const T* U, const T* V,
    const T* row_init, bool accumulate, double p, uint64_t seed, uint64_t offset) {
  rows_impl(C, i0, i1, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
}
#endif

template <typename T>
void rows_default(T* C, int64_t i0, int64_t i1, int64_t N, int64_t r, T alpha, const T* U,
                  const T* V, const T* row_init, bool accumulate, double p, uint64_t seed,
                  uint64_t offset) {
  rows_impl(C, i0, i1, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
}

template <typename T>
void low_rank_rows(T* C, int64_t M, int64_t N, int64_t r, T alpha, const T* U, const T* V,
                   const T* row_init, bool accumulate, double p, uint64_t seed, uint64_t offset) {
  if (M <= 0 || N <= 0) return;
  const CpuKernels isa = cpu_kernels();
  auto body = [&](int64_t i0, int64_t i1) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == CpuKernels::Avx512) {
      rows_avx512(C, i0, i1, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
      return;
    }
    if (isa == CpuKernels::Avx2) {
      rows_avx2(C, i0, i1, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
      return;
    }
#endif
    rows_default(C, i0, i1, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
  };
  // Enough rows per chunk to amortise a thread hand-off (~64K multiply-adds).
  int64_t grain = std::max<int64_t>(1, (1 << 16) / std::max<int64_t>(1, N * std::max<int64_t>(r, 1)));
  // With an external BLAS, stay on the calling thread: its worker threads
  // spin for a while after each call and would fight our pool for the cores.
  if (M * N * std::max<int64_t>(r, 1) < (1 << 17) || blas_info().name != "builtin") body(0, M);
  else parallel_for(M, grain, body);
}

}  // namespace

void low_rank_rows_f32(float* C, int64_t M, int64_t N, int64_t r, float alpha, const float* U,
                       const float* V, const float* row_init, bool accumulate, double p,
                       uint64_t seed, uint64_t offset) {
  low_rank_rows(C, M, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
}
void low_rank_rows_f64(double* C, int64_t M, int64_t N, int64_t r, double alpha, const double* U,
                       const double* V, const double* row_init, bool accumulate, double p,
                       uint64_t seed, uint64_t offset) {
  low_rank_rows(C, M, N, r, alpha, U, V, row_init, accumulate, p, seed, offset);
}

}  // namespace lc
