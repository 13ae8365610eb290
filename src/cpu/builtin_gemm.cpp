// Built-in GEMM, Goto/BLIS style: op(B) is packed into KC x NC panels, op(A)
// into MC x KC panels (transposes are resolved while packing), and a
// register-blocked MR x NR micro-kernel streams over the packed data. The
// kernel uses GCC vector extensions so one source serves float and double and
// any ISA; on x86-64 an AVX2+FMA copy is selected at run time because the
// library is built without -march.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "../parallel.h"
#include "gemm.h"

#if defined(__GNUC__)
#define LC_INLINE inline __attribute__((always_inline))
#else
#define LC_INLINE inline
#endif

namespace lc {
namespace {

// Kernel shapes per element type and vector width W (bytes). W = 32 is the
// AVX2 build: 6 x (2 vectors) gives 12 accumulators + 2 B vectors + 1
// broadcast, filling the 16 ymm registers. W = 16 is the portable build
// (SSE2, NEON): emulating 32-byte vectors there spills badly, so it gets its
// own native-width shape. KC keeps a B micro-panel in L1 and MC x KC of A in L2.
template <typename T, int W>
struct Kern;
template <>
struct Kern<float, 32> {
  typedef float V __attribute__((vector_size(32)));
  static constexpr int MR = 6, NR = 16;
};
template <>
struct Kern<float, 16> {
  typedef float V __attribute__((vector_size(16)));
  static constexpr int MR = 6, NR = 8;
};
template <>
struct Kern<double, 32> {
  typedef double V __attribute__((vector_size(32)));
  static constexpr int MR = 6, NR = 8;
};
template <>
struct Kern<double, 16> {
  typedef double V __attribute__((vector_size(16)));
  static constexpr int MR = 6, NR = 4;
};
template <typename T>
struct Blocks;
template <>
struct Blocks<float> {
  static constexpr int64_t KC = 256, MC = 168, NC = 2048;
};
template <>
struct Blocks<double> {
  static constexpr int64_t KC = 256, MC = 72, NC = 1024;
};

// C[0:mr, 0:nr] = alpha * (a-panel x b-panel) + beta * C; beta == 0 never reads C.
template <typename T, int W>
LC_INLINE void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b, T alpha,
                            T beta, T* __restrict C, int64_t ldc, int mr, int nr) {
  using V = typename Kern<T, W>::V;
  constexpr int MR = Kern<T, W>::MR, NR = Kern<T, W>::NR;
  constexpr int VL = int(sizeof(V) / sizeof(T)), NV = NR / VL;
  V acc[MR][NV] = {};
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + v * VL, sizeof(V));
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T ai = a[i];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
    a += MR;
    b += NR;
  }
  if (mr == MR && nr == NR) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      T* c = C + i * ldc;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        V r = alpha * acc[i][v];
        if (beta != T(0)) {
          V cv;
          std::memcpy(&cv, c + v * VL, sizeof(V));
          r += beta * cv;
        }
        std::memcpy(c + v * VL, &r, sizeof(V));
      }
    }
  } else {
    // Edge tile: the packed panels are zero-padded, so compute the full tile
    // and write back only the valid part.
    alignas(64) T tmp[MR * NR];
    std::memcpy(tmp, acc, sizeof(tmp));
    for (int i = 0; i < mr; ++i) {
      T* c = C + i * ldc;
      for (int j = 0; j < nr; ++j) {
        T r = alpha * tmp[i * NR + j];
        c[j] = beta == T(0) ? r : r + beta * c[j];
      }
    }
  }
}

// Packs op(A)[0:mc, 0:kc] (A already offset to the block) into MR-row panels,
// each laid out k-major: panel[p * MR + i].
template <typename T, int MR>
LC_INLINE void pack_a(bool tA, const T* A, int64_t lda, int64_t mc, int64_t kc, T* __restrict dst) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int mr = int(std::min<int64_t>(MR, mc - ir));
    T* d = dst + ir * kc;
    if (tA) {
      // op(A)(i, k) = A[k * lda + i]: MR contiguous values per k.
      const T* s = A + ir;
      for (int64_t p = 0; p < kc; ++p, s += lda, d += MR) {
        int i = 0;
        for (; i < mr; ++i) d[i] = s[i];
        for (; i < MR; ++i) d[i] = T(0);
      }
    } else if (mr == MR) {
      const T* s = A + ir * lda;
      for (int64_t p = 0; p < kc; ++p, d += MR)
#pragma GCC unroll 8
        for (int i = 0; i < MR; ++i) d[i] = s[i * lda + p];
    } else {
      const T* s = A + ir * lda;
      for (int64_t p = 0; p < kc; ++p, d += MR) {
        int i = 0;
        for (; i < mr; ++i) d[i] = s[i * lda + p];
        for (; i < MR; ++i) d[i] = T(0);
      }
    }
  }
}

// Packs op(B)[0:kc, 0:nc] (B already offset to the block) into NR-column
// panels, each laid out k-major: panel[p * NR + j].
template <typename T, int NR>
LC_INLINE void pack_b(bool tB, const T* B, int64_t ldb, int64_t kc, int64_t nc, T* __restrict dst) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int nr = int(std::min<int64_t>(NR, nc - jr));
    T* d = dst + jr * kc;
    if (tB) {
      // op(B)(k, j) = B[j * ldb + k]: read each stored row contiguously.
      for (int j = 0; j < nr; ++j) {
        const T* s = B + (jr + j) * ldb;
        for (int64_t p = 0; p < kc; ++p) d[p * NR + j] = s[p];
      }
      for (int j = nr; j < NR; ++j)
        for (int64_t p = 0; p < kc; ++p) d[p * NR + j] = T(0);
    } else if (nr == NR) {
      const T* s = B + jr;
      for (int64_t p = 0; p < kc; ++p, s += ldb, d += NR)
#pragma GCC unroll 16
        for (int j = 0; j < NR; ++j) d[j] = s[j];
    } else {
      const T* s = B + jr;
      for (int64_t p = 0; p < kc; ++p, s += ldb, d += NR) {
        int j = 0;
        for (; j < nr; ++j) d[j] = s[j];
        for (; j < NR; ++j) d[j] = T(0);
      }
    }
  }
}

// Splits K into near-equal blocks of at most KC so a K just over KC does not
// leave a tiny, inefficient last block.
template <typename T>
int64_t k_block(int64_t K) {
  const int64_t KC = Blocks<T>::KC;
  const int64_t nb = (K + KC - 1) / KC;
  return (K + nb - 1) / nb;
}

// Single-threaded blocked GEMM of one C block, using caller-provided packing
// buffers (Ap: MC x kcb, Bp: kcb x NC, both rounded up to MR/NR).
template <typename T, int W>
LC_INLINE void gemm_block(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, T* Ap,
                          T* Bp) {
  constexpr int MR = Kern<T, W>::MR, NR = Kern<T, W>::NR;
  constexpr int64_t MC = Blocks<T>::MC, NC = Blocks<T>::NC;
  const int64_t kcb = k_block<T>(K);
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min(kcb, K - pc);
      pack_b<T, NR>(tB, tB ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, kc, nc, Bp);
      // Later K blocks accumulate onto what the first one wrote.
      const T beta_k = pc == 0 ? beta : T(1);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = std::min(MC, M - ic);
        pack_a<T, MR>(tA, tA ? A + pc * lda + ic : A + ic * lda + pc, lda, mc, kc, Ap);
        T* Cb = C + ic * ldc + jc;
        // jr outer so one B micro-panel stays in L1 while A streams from L2.
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = int(std::min<int64_t>(NR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = int(std::min<int64_t>(MR, mc - ir));
            micro_kernel<T, W>(kc, Ap + ir * kc, Bp + jr * kc, alpha, beta_k, Cb + ir * ldc + jr,
                               ldc, mr, nr);
          }
        }
      }
    }
  }
}

template <typename T>
using BlockFn = void (*)(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*,
                         int64_t, T, T*, int64_t, T*, T*);

#define LC_BLOCK_FN(name, T, W, ATTR)                                                          \
  ATTR void name(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,      \
                 int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc, T* Ap,       \
                 T* Bp) {                                                                      \
    gemm_block<T, W>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, Ap, Bp);            \
  }

LC_BLOCK_FN(block_f_base, float, 16, )
LC_BLOCK_FN(block_d_base, double, 16, )

#if defined(__x86_64__) && defined(__GNUC__)
// The same code compiled for AVX2+FMA and picked at run time. Not
// target_clones: an "avx2" clone would not enable FMA, and "arch=" clones
// dispatch on the CPU model rather than its features.
LC_BLOCK_FN(block_f_avx2, float, 32, __attribute__((target("avx2,fma"))))
LC_BLOCK_FN(block_d_avx2, double, 32, __attribute__((target("avx2,fma"))))

bool have_avx2_fma() {
  static const bool v = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return v;
}
#endif

// Packing buffer aligned to a cache line; default-initialised (not zeroed)
// because packing overwrites every element it uses.
template <typename T>
struct AlignedBuf {
  std::unique_ptr<T[]> raw;
  T* p;
  explicit AlignedBuf(size_t n) : raw(new T[n + 64 / sizeof(T)]) {
    auto a = reinterpret_cast<uintptr_t>(raw.get());
    p = reinterpret_cast<T*>((a + 63) & ~uintptr_t(63));
  }
};

// Balanced split of `tiles` tiles of `tile` elements into `parts`; returns
// the element offset where part i starts, clamped to `total`.
int64_t split_at(int64_t i, int64_t parts, int64_t tiles, int64_t tile, int64_t total) {
  const int64_t q = tiles / parts, r = tiles % parts;
  return std::min(total, (i * q + std::min(i, r)) * tile);
}

// Below this many multiply-adds per thread, waking another thread costs more
// than it saves.
constexpr double kMinWorkPerThread = double(1 << 20);

template <typename T, int W>
void gemm_threaded(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                   int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
                   BlockFn<T> block) {
  constexpr int MR = Kern<T, W>::MR, NR = Kern<T, W>::NR;
  constexpr int64_t MC = Blocks<T>::MC, NC = Blocks<T>::NC;
  const int64_t mt = (M + MR - 1) / MR, ntl = (N + NR - 1) / NR;

  // Threads: no more than the work justifies, then a grid of mg x ng C blocks
  // (each thread owns whole blocks, so writes never overlap). The grid
  // minimises the largest padded block plus a charge for its packing traffic.
  const double work = double(M) * double(N) * double(K);
  int64_t nt = std::min<int64_t>(num_threads(), int64_t(std::max(1.0, work / kMinWorkPerThread)));
  nt = std::max<int64_t>(1, std::min(nt, mt * ntl));
  int64_t mg = 1, ng = 1;
  double best = -1;
  for (int64_t m = 1; m <= nt; ++m) {
    const int64_t n = nt / m;
    if (m > mt || n > ntl) continue;
    const double rows = double((mt + m - 1) / m * MR), cols = double((ntl + n - 1) / n * NR);
    const double cost = rows * cols + 8.0 * (rows + cols);
    if (best < 0 || cost < best) best = cost, mg = m, ng = n;
  }
  const int64_t max_rows = std::min(MC, (mt + mg - 1) / mg * MR);
  const int64_t max_cols = std::min(NC, (ntl + ng - 1) / ng * NR);
  const int64_t kcb = k_block<T>(K);

  parallel_for(mg * ng, 1, [&](int64_t b, int64_t e) {
    // Per-chunk buffers keep the kernel reentrant across threads and callers.
    AlignedBuf<T> ap(size_t(max_rows * kcb)), bp(size_t(max_cols * kcb));
    for (int64_t part = b; part < e; ++part) {
      const int64_t pi = part / ng, pj = part % ng;
      const int64_t r0 = split_at(pi, mg, mt, MR, M), r1 = split_at(pi + 1, mg, mt, MR, M);
      const int64_t c0 = split_at(pj, ng, ntl, NR, N), c1 = split_at(pj + 1, ng, ntl, NR, N);
      if (r0 >= r1 || c0 >= c1) continue;
      block(tA, tB, r1 - r0, c1 - c0, K, alpha, tA ? A + r0 : A + r0 * lda, lda,
            tB ? B + c0 * ldb : B + c0, ldb, beta, C + r0 * ldc + c0, ldc, ap.p, bp.p);
    }
  });
}

template <typename T>
void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc, BlockFn<T> base,
          BlockFn<T> avx2) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == T(0)) {
    // BLAS semantics: A and B are not read; beta == 0 does not read C.
    for (int64_t i = 0; i < M; ++i) {
      T* c = C + i * ldc;
      if (beta == T(0))
        std::fill(c, c + N, T(0));
      else if (beta != T(1))
        for (int64_t j = 0; j < N; ++j) c[j] *= beta;
    }
    return;
  }
#if defined(__x86_64__) && defined(__GNUC__)
  if (avx2 && have_avx2_fma()) {
    gemm_threaded<T, 32>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, avx2);
    return;
  }
#else
  (void)avx2;
#endif
  gemm_threaded<T, 16>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, base);
}

#if defined(__x86_64__) && defined(__GNUC__)
constexpr BlockFn<float> kAvx2F = block_f_avx2;
constexpr BlockFn<double> kAvx2D = block_d_avx2;
#else
constexpr BlockFn<float> kAvx2F = nullptr;
constexpr BlockFn<double> kAvx2D = nullptr;
#endif

}  // namespace

void builtin_sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                   int64_t ldc) {
  gemm<float>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, block_f_base, kAvx2F);
}

void builtin_dgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
                   const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                   double* C, int64_t ldc) {
  gemm<double>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, block_d_base, kAvx2D);
}

}  // namespace lc
