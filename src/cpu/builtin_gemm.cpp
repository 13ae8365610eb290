// Built-in GEMM, Goto/BLIS style: op(B) is packed into KC x NC panels, op(A)
// into MC x KC panels (transposes are resolved while packing), and a
// register-blocked MR x NR micro-kernel streams over the packed data. The
// kernel uses GCC vector extensions so one source serves float and double and
// any ISA; on x86-64 AVX-512 and AVX2+FMA copies are selected at run time from
// CPUID (cpu_kernels()) because the library is built without -march.
#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../parallel.h"
#include "gemm.h"
#include "gemm_grid.h"

#if defined(__GNUC__)
#define LC_INLINE inline __attribute__((always_inline))
#else
#define LC_INLINE inline
#endif

#include "vec_exp.h"

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
// W = 64 is the AVX-512 build: 32 zmm registers take 12 x (2 vectors) = 24
// accumulators, 2 B vectors and the broadcasts; a row of C is 32 floats (two
// cache lines), so the kernel loads half as many B bytes per multiply-add as
// the AVX2 one and issues half the instructions.
template <>
struct Kern<float, 64> {
  typedef float V __attribute__((vector_size(64)));
  static constexpr int MR = 12, NR = 32;
};
template <>
struct Kern<double, 64> {
  typedef double V __attribute__((vector_size(64)));
  static constexpr int MR = 12, NR = 16;
};
// KC x NR of B is one micro-panel, MC x KC of A one packed block. The AVX2 and
// portable shapes keep the micro-panel in L1 and A in L2 (MC is a multiple of
// their MR). The AVX-512 shape was tuned by measurement on a Zen 4 core
// (bench/NOTES.md): the whole K up to 1024 in one block (C is read and written
// once per 1024 multiply-adds instead of per 256) with a short A block beat
// the L1-sized blocks by 10-25% on the model's shapes; its MC is 4 x MR.
template <typename T, int W>
struct Blocks;
template <int W>
struct Blocks<float, W> {
  static constexpr int64_t KC = W == 64 ? 1024 : 256, MC = W == 64 ? 48 : 168, NC = 2048;
};
template <int W>
struct Blocks<double, W> {
  static constexpr int64_t KC = W == 64 ? 512 : 256, MC = W == 64 ? 48 : 72, NC = 1024;
};

// C[0:mr, 0:nr] = alpha * (a-panel x b-panel) + beta * C; beta == 0 never reads C.
// Panels are packed (a[p * MR + i], b[p * NR + j]) unless SA: then a is MR stored
// rows of A read in place (a[i * sa + p]), for thin products whose large operand
// is used once and so is not worth packing (thin_gemm below).
// MR x NR is the tile (the ISA's Kern shape unless a thin product asks for another).
// With `carry` the sums start from C's values instead of zero (beta is then 0): a sum over K
// continued in a later block exactly as if it had run in one.
template <typename T, int W, bool SA = false, int MR = Kern<T, W>::MR, int NR = Kern<T, W>::NR>
LC_INLINE void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b, T alpha,
                            T beta, T* __restrict C, int64_t ldc, int mr, int nr,
                            int64_t sa = 0, bool carry = false) {
  using V = typename Kern<T, W>::V;
  constexpr int VL = int(sizeof(V) / sizeof(T)), NV = NR / VL;
  V acc[MR][NV] = {};
  if (carry) {
    alignas(64) T tmp[MR * NR] = {};
    for (int i = 0; i < mr; ++i)
      for (int j = 0; j < nr; ++j) tmp[i * NR + j] = C[i * ldc + j];
    std::memcpy(acc, tmp, sizeof(tmp));
  }
  for (int64_t p = 0; p < kc; ++p) {
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + v * VL, sizeof(V));
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const T ai = SA ? a[i * sa] : a[i];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
    a += SA ? 1 : MR;
    b += NR;
  }
  if (mr == MR && nr == NR) {
#pragma GCC unroll 16
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

// Transposes VL x VL elements held as VL row vectors (r[i][c] becomes r[c][i]): stage D swaps the
// off-diagonal D x D blocks of every 2D x 2D block, log2(VL) stages of two-vector shuffles (64 for
// 16 floats, where one element at a time costs a load and a store each).
template <int D, int VL, typename V, int... I>
LC_INLINE void swap_blocks(V& a, V& b, std::integer_sequence<int, I...>) {
  // __builtin_shuffle (GCC 4.7 on; __builtin_shufflevector needs GCC 12) with constant masks of
  // integers as wide as the elements: index VL + j picks b[j].
  typedef std::conditional_t<sizeof(a[0]) == 8, int64_t, int32_t> E;
  typedef E M __attribute__((vector_size(sizeof(V))));
  const M lo_idx = {E((I & D) ? I - D + VL : I)...}, hi_idx = {E((I & D) ? I + VL : I + D)...};
  const V lo = __builtin_shuffle(a, b, lo_idx), hi = __builtin_shuffle(a, b, hi_idx);
  a = lo;
  b = hi;
}
template <int D, int VL, typename V>
LC_INLINE void transpose(V* r) {
  if constexpr (D < VL) {
#pragma GCC unroll 16
    for (int i = 0; i < VL; ++i)
      if (!(i & D)) swap_blocks<D, VL>(r[i], r[i + D], std::make_integer_sequence<int, VL>{});
    transpose<2 * D, VL>(r);
  }
}

// SoftmaxRows (gemm.h) seen from one packed block: its first row is row row0 of the product, its
// first column column k0 of the logits (where the targets are counted from).
struct RowXform {
  const SoftmaxRows* r;
  int64_t row0, k0;
};

// The softmax gradient of `rows` stored rows held as vectors (row i is the product's row
// x.row0 + G + i): mul * exp(v - shift) - sub, zeros for a row whose mul is 0 (NaN logits there
// must not leak into the product).
template <int W, int VL, typename V>
LC_INLINE void softmax_rows(V* r, int rows, const RowXform& x, int G) {
  for (int i = 0; i < rows; ++i) {
    const int64_t R = x.row0 + G + i;
    const float m = x.r->mul[R];
    if (m == 0.f) {
      r[i] = V{};
      continue;
    }
    r[i] = m * vexp_shifted<W>(r[i] - x.r->shift[R]) - x.r->sub[R];
  }
}
LC_INLINE float softmax_one(float v, const RowXform& x, int64_t R) {
  const float m = x.r->mul[R];
  return m == 0.f ? 0.f : m * std::exp(v - x.r->shift[R]) - x.r->sub[R];
}

// dst[p * ldd + G + i] = src[(G + i) * lds + p] for G + i < n (rows past n read as zero), i < the
// group's VL rows (fewer for the last group of WIDTH) and p < kc: VL stored rows become VL
// k-major steps through transpose() on the W-byte vector, the last kc % VL steps one value at a
// time; then the next group. WIDTH and G are constants so each store has a fixed size.
template <typename T, int W, int WIDTH, int G = 0>
LC_INLINE void pack_transposed(const T* src, int64_t lds, int n, int64_t kc, T* __restrict dst,
                               int64_t ldd, const RowXform* xf = nullptr) {
  using V = typename Kern<T, W>::V;
  constexpr int VL = int(sizeof(V) / sizeof(T)), KEEP = WIDTH - G < VL ? WIDTH - G : VL;
  const int rows = std::max(0, std::min(VL, n - G));
  int64_t p = 0;
  for (; p + VL <= kc; p += VL) {
    V r[VL];
#pragma GCC unroll 16
    for (int i = 0; i < VL; ++i) {
      if (i < rows) std::memcpy(&r[i], src + (G + i) * lds + p, sizeof(V));
      else r[i] = V{};
    }
    if constexpr (std::is_same_v<T, float>)
      if (xf) softmax_rows<W, VL>(r, rows, *xf, G);
    transpose<1, VL>(r);
#pragma GCC unroll 16
    for (int i = 0; i < VL; ++i) std::memcpy(dst + (p + i) * ldd + G, &r[i], KEEP * sizeof(T));
  }
  for (; p < kc; ++p)
    for (int i = 0; i < KEEP; ++i) {
      T v = i < rows ? src[(G + i) * lds + p] : T(0);
      if constexpr (std::is_same_v<T, float>)
        if (xf && i < rows) v = softmax_one(v, *xf, xf->row0 + G + i);
      dst[p * ldd + G + i] = v;
    }
  if constexpr (G + VL < WIDTH)
    pack_transposed<T, W, WIDTH, G + VL>(src, lds, n, kc, dst, ldd, xf);
}

// Packs op(A)[0:mc, 0:kc] (A already offset to the block) into MR-row panels,
// each laid out k-major: panel[p * MR + i], panels `ps` >= kc steps apart (the
// steps past kc are the tail's, packed by pack_a_tail).
template <typename T, int MR, int W>
LC_INLINE void pack_a(bool tA, const T* A, int64_t lda, int64_t mc, int64_t kc, int64_t ps,
                      T* __restrict dst, const RowXform* xf = nullptr) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int mr = int(std::min<int64_t>(MR, mc - ir));
    T* d = dst + ir * ps;
    if (tA) {
      // op(A)(i, k) = A[k * lda + i]: MR contiguous values per k.
      const T* s = A + ir;
      if (mr == MR) {
        // A fixed-size copy, expanded inline (a run-time count made it a memcpy call per step).
        for (int64_t p = 0; p < kc; ++p, s += lda, d += MR) std::memcpy(d, s, MR * sizeof(T));
        continue;
      }
      for (int64_t p = 0; p < kc; ++p, s += lda, d += MR) {
        int i = 0;
        for (; i < mr; ++i) d[i] = s[i];
        for (; i < MR; ++i) d[i] = T(0);
      }
    } else {
      // op(A)(i, k) = A[i * lda + k]: MR stored rows, transposed into the panel.
      if (!xf) {
        pack_transposed<T, W, MR>(A + ir * lda, lda, mr, kc, d, MR);
        continue;
      }
      const RowXform x{xf->r, xf->row0 + ir, xf->k0};
      pack_transposed<T, W, MR>(A + ir * lda, lda, mr, kc, d, MR, &x);
      // Each row's target, when it falls in these kc columns, takes its one-hot share.
      for (int i = 0; i < mr; ++i) {
        const int64_t R = x.row0 + i, t = int64_t(x.r->tgt[R]) - x.k0;
        if (x.r->mul[R] != 0.f && t >= 0 && t < kc) d[t * MR + i] -= x.r->tsub[R];
      }
    }
  }
}

// The tail's steps kc .. kc + qe of each R-wide panel (of A's rows or B's columns), n of them
// valid: elem(x, p) for x < n, zero padding. A's are u_scale * U's rows then ones, B's V's rows
// then the bias, so the ones meet the bias.
template <typename T, int R, typename Elem>
LC_INLINE void pack_tail(int64_t n, int64_t qe, int64_t kc, int64_t ps, T* __restrict dst,
                         Elem elem) {
  for (int64_t xr = 0; xr < n; xr += R) {
    const int nx = int(std::min<int64_t>(R, n - xr));
    T* d = dst + xr * ps + kc * R;
    for (int64_t p = 0; p < qe; ++p, d += R) {
      int x = 0;
      for (; x < nx; ++x) d[x] = elem(xr + x, p);
      for (; x < R; ++x) d[x] = T(0);
    }
  }
}
template <typename T, int MR>
LC_INLINE void pack_a_tail(const GemmTail<T>& t, int64_t row0, int64_t mc, int64_t kc, int64_t ps,
                           T* __restrict dst) {
  pack_tail<T, MR>(mc, t.q + (t.bias ? 1 : 0), kc, ps, dst, [&](int64_t i, int64_t p) {
    return p < t.q ? t.u_scale * t.U[(row0 + i) * t.ldu + p] : T(1);
  });
}
template <typename T, int NR>
LC_INLINE void pack_b_tail(const GemmTail<T>& t, int64_t col0, int64_t nc, int64_t kc, int64_t ps,
                           T* __restrict dst) {
  pack_tail<T, NR>(nc, t.q + (t.bias ? 1 : 0), kc, ps, dst, [&](int64_t j, int64_t p) {
    return p < t.q ? t.V[p * t.v_k + (col0 + j) * t.v_n] : t.bias[col0 + j];
  });
}

// Packs op(B)[0:kc, 0:nc] (B already offset to the block) into NR-column
// panels, each laid out k-major: panel[p * NR + j], panels `ps` >= kc steps apart.
template <typename T, int NR, int W>
LC_INLINE void pack_b(bool tB, const T* B, int64_t ldb, int64_t kc, int64_t nc, int64_t ps,
                      T* __restrict dst) {
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int nr = int(std::min<int64_t>(NR, nc - jr));
    T* d = dst + jr * ps;
    if (tB) {
      // op(B)(k, j) = B[j * ldb + k]: NR stored rows, transposed into the panel.
      pack_transposed<T, W, NR>(B + jr * ldb, ldb, nr, kc, d, NR);
    } else if (nr == NR) {
      // A fixed-size copy, expanded inline (a copy loop became a memmove call per step).
      const T* s = B + jr;
      for (int64_t p = 0; p < kc; ++p, s += ldb, d += NR) std::memcpy(d, s, NR * sizeof(T));
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
template <typename T, int W>
int64_t k_block(int64_t K) {
  const int64_t KC = Blocks<T, W>::KC;
  const int64_t nb = (K + KC - 1) / KC;
  return (K + nb - 1) / nb;
}

// Logsumexp partials of C's rows, one per NC columns (a chunk, counted from column 0 of the
// product; the grid splits columns on chunk boundaries then): m[q * ld + i] the largest value of
// row i in chunk q, s[q * ld + i] the sum of exp(c - m) there. m and s point at the C block's first
// row and chunk. Fixed chunks, merged in order, so the sums do not depend on the thread count.
struct LsePart {
  float* m;
  double* s;
  int64_t ld;
};

// Sets the partials of columns [0, cols) of rows [0, rows) of C, while those rows were just
// written and are still in cache: the cross entropy's pass over the logits without reading them
// back from memory. Lanes sum at most 64 terms in float before the row's double, as the cross
// entropy's own pass does.
template <int W>
LC_INLINE void block_lse(const float* C, int64_t ldc, int64_t rows, int64_t cols, float* M,
                         double* S) {
  using F = typename Vec<W>::F;
  constexpr int L = Vec<W>::L;
  for (int64_t i = 0; i < rows; ++i) {
    const float* c = C + i * ldc;
    float mb = -std::numeric_limits<float>::infinity();
    int64_t j = 0;
    if (cols >= L) {
      F m = load<W>(c);
      for (j = L; j + L <= cols; j += L) {
        const F v = load<W>(c + j);
        m = v > m ? v : m;
      }
      for (int l = 0; l < L; ++l) mb = std::max(mb, m[l]);
    }
    for (int64_t k = j; k < cols; ++k) mb = std::max(mb, c[k]);
    const F vm = splat<W>(mb);
    double sb = 0;
    j = 0;
    while (j + L <= cols) {
      F acc = splat<W>(0.f);
      const int64_t end = std::min(cols - L + 1, j + 64 * L);
      for (; j < end; j += L) acc += vexp_shifted<W>(load<W>(c + j) - vm);
      for (int l = 0; l < L; ++l) sb += acc[l];
    }
    for (; j < cols; ++j) sb += std::exp(static_cast<double>(c[j]) - mb);
    M[i] = mb;
    S[i] = sb;
  }
}

// Rows [row0, row0 + mc) of a computed tail's U (GemmTail::P), K steps [pc, pc + kc) of them,
// from op(A)'s packed panels (ps steps apart), on an MR-row tile one vector wide where q fits in
// one (r = 16: the ISA's 12 x 32 tile would be half padding), else the ISA's own. Between K blocks
// U holds the raw sums, carried into the next block, and the last one scales them by p_alpha: each
// element is the one sum over K in order that the thin kernel makes (thin_tall_gemm), so U has
// the same bits made here or there.
template <typename T, int W>
LC_INLINE void block_u(const GemmTail<T>& t, int64_t row0, int64_t mc, int64_t pc, int64_t kc,
                       int64_t K, int64_t ps, const T* Ap) {
  constexpr int MR = Kern<T, W>::MR, NR = Kern<T, W>::NR, VL = int(W / sizeof(T));
  T* u = t.Uw + row0 * t.ldu;
  const bool carry = pc > 0;
  const T alpha = pc + kc >= K ? t.p_alpha : T(1);
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int mr = int(std::min<int64_t>(MR, mc - ir));
    for (int64_t jr = 0; jr < t.q; jr += t.pp_nr) {
      const int nr = int(std::min<int64_t>(t.pp_nr, t.q - jr));
      const T* pp = t.Pp + jr * K + pc * t.pp_nr;
      if (t.pp_nr == VL)
        micro_kernel<T, W, false, MR, VL>(kc, Ap + ir * ps, pp, alpha, T(0),
                                          u + ir * t.ldu + jr, t.ldu, mr, nr, 0, carry);
      else
        micro_kernel<T, W, false, MR, NR>(kc, Ap + ir * ps, pp, alpha, T(0),
                                          u + ir * t.ldu + jr, t.ldu, mr, nr, 0, carry);
    }
  }
}

// Single-threaded blocked GEMM of one C block, using caller-provided packing
// buffers (Ap: MC x (kcb + tail), Bp: (kcb + tail) x NC, both rounded up to
// MR/NR). A tail (already offset to the block; q = 0 for none) rides on the
// last K block: its steps are packed after that block's, so the micro-kernel
// adds U V (+ the bias) in the same accumulators and C is written once.
template <typename T, int W>
LC_INLINE void gemm_block(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                          int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
                          const GemmTail<T>& tail, T* Ap, T* Bp, const RowXform* xf,
                          const LsePart* lp) {
  constexpr int MR = Kern<T, W>::MR, NR = Kern<T, W>::NR;
  constexpr int64_t MC = Blocks<T, W>::MC, NC = Blocks<T, W>::NC;
  const int64_t kcb = k_block<T, W>(K);
  const int64_t qe = tail.q + (tail.bias ? 1 : 0);
  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    for (int64_t pc = 0; pc < K; pc += kcb) {
      const int64_t kc = std::min(kcb, K - pc);
      const bool last = pc + kc >= K;
      const int64_t ps = last ? kc + qe : kc;  // steps per packed panel
      pack_b<T, NR, W>(tB, tB ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, kc, nc, ps, Bp);
      if (last && qe) pack_b_tail<T, NR>(tail, jc, nc, kc, ps, Bp);
      // Later K blocks accumulate onto what the first one wrote.
      const T beta_k = pc == 0 ? beta : T(1);
      for (int64_t ic = 0; ic < M; ic += MC) {
        const int64_t mc = std::min(MC, M - ic);
        const RowXform x = xf ? RowXform{xf->r, xf->row0 + ic, xf->k0 + pc} : RowXform{};
        pack_a<T, MR, W>(tA, tA ? A + pc * lda + ic : A + ic * lda + pc, lda, mc, kc, ps, Ap,
                         xf ? &x : nullptr);
        // The tail's U from these rows, once (the block has all of C's columns), K block by K
        // block, complete when the last one packs it.
        if (tail.Pp && jc == 0) block_u<T, W>(tail, ic, mc, pc, kc, K, ps, Ap);
        if (last && qe) pack_a_tail<T, MR>(tail, ic, mc, kc, ps, Ap);
        T* Cb = C + ic * ldc + jc;
        // jr outer so one B micro-panel stays in L1 while A streams from L2.
        for (int64_t jr = 0; jr < nc; jr += NR) {
          const int nr = int(std::min<int64_t>(NR, nc - jr));
          for (int64_t ir = 0; ir < mc; ir += MR) {
            const int mr = int(std::min<int64_t>(MR, mc - ir));
            micro_kernel<T, W>(ps, Ap + ir * ps, Bp + jr * ps, alpha, beta_k, Cb + ir * ldc + jr,
                               ldc, mr, nr);
          }
        }
        if constexpr (std::is_same_v<T, float>)
          if (lp && last)
            block_lse<W>(Cb, ldc, mc, nc, lp->m + jc / NC * lp->ld + ic,
                         lp->s + jc / NC * lp->ld + ic);
      }
    }
  }
}

template <typename T>
using BlockFn = void (*)(bool, bool, int64_t, int64_t, int64_t, T, const T*, int64_t, const T*,
                         int64_t, T, T*, int64_t, const GemmTail<T>&, T*, T*, const RowXform*,
                         const LsePart*);

#define LC_BLOCK_FN(name, T, W, ATTR)                                                          \
  ATTR void name(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,      \
                 int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,              \
                 const GemmTail<T>& tail, T* Ap, T* Bp, const RowXform* xf,                    \
                 const LsePart* lp) {                                                          \
    gemm_block<T, W>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, tail, Ap, Bp, xf,   \
                     lp);                                                                      \
  }

LC_BLOCK_FN(block_f_base, float, 16, )
LC_BLOCK_FN(block_d_base, double, 16, )

#if defined(__x86_64__) && defined(__GNUC__)
// The same code compiled for AVX2+FMA and for AVX-512, picked at run time. Not
// target_clones: an "avx2" clone would not enable FMA, and "arch=" clones
// dispatch on the CPU model rather than its features.
LC_BLOCK_FN(block_f_avx2, float, 32, __attribute__((target("avx2,fma"))))
LC_BLOCK_FN(block_d_avx2, double, 32, __attribute__((target("avx2,fma"))))
LC_BLOCK_FN(block_f_avx512, float, 64, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
LC_BLOCK_FN(block_d_avx512, double, 64, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
#endif

// Tall thin products, N <= 16 with A not transposed: a LoRA adapter's h = x A^T and dh = dy B
// (N = r). The general kernel packs the large A only to use each element once; here op(B) is
// packed once per call over the whole K and A streams through the micro-kernel from its stored
// rows (MR row streams, which the prefetchers follow). Row tiles [t0, t1) of MR rows; a last
// partial tile is packed (its stored rows end before the tile's). The mirror case (M <= 16, B
// read in place) was slower than packing: each step of a column panel is a new 4 KiB page.
//
// The tile (MR x NR): the AVX2 and portable copies' own. The AVX-512 copy's 12 x 32 would be
// mostly padding at N <= 16; it takes 12 rows by one vector (a 64-byte one, or a 32-byte one when N
// fits in it: r = 8): twelve accumulators, one B vector per twelve multiply-adds, as many rows per B
// load as the AVX2 tile with half its instructions. On Zen 5 (512-bit FMA units) h = x A^T at
// M 2048, K 1024, r 16 went from 0.40 to 0.27 ms.
template <typename T, int W, int MR, int NR>
LC_INLINE void thin_tall(int64_t t0, int64_t t1, int64_t M, int64_t N, int64_t K, T alpha,
                         const T* A, int64_t lda, const T* Bp, T beta, T* C, int64_t ldc) {
  for (int64_t t = t0; t < t1; ++t) {
    const int64_t i = t * MR;
    const int mr = int(std::min<int64_t>(MR, M - i));
    std::unique_ptr<T[]> ap;
    if (mr < MR) {
      ap.reset(new T[size_t(MR * K)]);
      pack_a<T, MR, W>(false, A + i * lda, lda, mr, K, K, ap.get());
    }
    for (int64_t j = 0; j < N; j += NR) {
      const int nr = int(std::min<int64_t>(NR, N - j));
      if (ap)
        micro_kernel<T, W, false, MR, NR>(K, ap.get(), Bp + j * K, alpha, beta, C + i * ldc + j,
                                          ldc, mr, nr);
      else
        micro_kernel<T, W, true, MR, NR>(K, A + i * lda, Bp + j * K, alpha, beta,
                                         C + i * ldc + j, ldc, mr, nr, lda);
    }
  }
}

template <typename T>
using ThinTallFn = void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, T, const T*, int64_t,
                            const T*, T, T*, int64_t);

#define LC_THIN_FN(name, T, W, MR, NR, ATTR)                                                  \
  ATTR void name(int64_t t0, int64_t t1, int64_t M, int64_t N, int64_t K, T alpha, const T* A, \
                 int64_t lda, const T* Bp, T beta, T* C, int64_t ldc) {                        \
    thin_tall<T, W, MR, NR>(t0, t1, M, N, K, alpha, A, lda, Bp, beta, C, ldc);                 \
  }

LC_THIN_FN(tall_f_base, float, 16, 6, 8, )
LC_THIN_FN(tall_d_base, double, 16, 6, 4, )
#if defined(__x86_64__) && defined(__GNUC__)
LC_THIN_FN(tall_f_avx2, float, 32, 6, 16, __attribute__((target("avx2,fma"))))
LC_THIN_FN(tall_d_avx2, double, 32, 6, 8, __attribute__((target("avx2,fma"))))
LC_THIN_FN(tall_f_avx512, float, 64, 12, 16, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
LC_THIN_FN(tall_d_avx512, double, 64, 12, 8, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
LC_THIN_FN(tall8_f_avx512, float, 32, 12, 8, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
LC_THIN_FN(tall4_d_avx512, double, 32, 12, 4, __attribute__((target("avx512f,avx512vl,avx2,fma"))))
#endif

// Wide thin products, M <= 16 with B not transposed, on the AVX-512 copy: a LoRA adapter's
// dA = dh^T x and dB^T = h^T dy (M = r, K = tokens). The general path packs B for a few
// multiply-adds per element (three 6-row tiles for 16 rows); here all MW rows of op(A) are one
// packed panel (Ap[p * MW + i], zero past M) and each vector of B's stored rows is loaded once
// for MW multiply-adds into MW accumulators. K goes in chunks of 32 rows: at the model's widths
// each row of B is its own 4 KiB page, and one strip's pass over 32 of them stays within the
// first-level TLB (72 entries on Zen 4); chunks of 64 or 256 rows ran 2-3x slower, 16 a little
// (bench/NOTES.md). Columns [j0, j1) of C, `acc` MW x (j1 - j0) scratch for the sums between
// chunks.
template <typename T, int W, int MW>
LC_INLINE void thin_wide(int64_t j0, int64_t j1, int64_t M, int64_t K, T alpha, const T* Ap,
                         const T* B, int64_t ldb, T beta, T* C, int64_t ldc, T* acc) {
  using V = typename Kern<T, W>::V;
  constexpr int VL = int(sizeof(V) / sizeof(T));
  constexpr int64_t KW = 32;
  constexpr int PF = 2;
  const int64_t n = j1 - j0;
  for (int64_t pc = 0; pc < K; pc += KW) {
    const int64_t kc = std::min(KW, K - pc);
    int64_t j = 0;
    for (; j + VL <= n; j += VL) {
      V a[MW];
#pragma GCC unroll 16
      for (int i = 0; i < MW; ++i) {
        if (pc == 0) a[i] = V{} ;
        else std::memcpy(&a[i], acc + i * n + j, sizeof(V));
      }
      const T* b = B + pc * ldb + j0 + j;
      const T* ap = Ap + pc * MW;
      for (int64_t p = 0; p < kc; ++p, b += ldb, ap += MW) {
        V bv;
        std::memcpy(&bv, b, sizeof(V));
        __builtin_prefetch(b + PF * VL);
#pragma GCC unroll 16
        for (int i = 0; i < MW; ++i) a[i] += ap[i] * bv;
      }
#pragma GCC unroll 16
      for (int i = 0; i < MW; ++i) std::memcpy(acc + i * n + j, &a[i], sizeof(V));
    }
    for (; j < n; ++j)  // the columns past the last whole vector
      for (int64_t i = 0; i < M; ++i) {
        T sum = pc == 0 ? T(0) : acc[i * n + j];
        for (int64_t p = 0; p < kc; ++p) sum += Ap[(pc + p) * MW + i] * B[(pc + p) * ldb + j0 + j];
        acc[i * n + j] = sum;
      }
  }
  for (int64_t i = 0; i < M; ++i) {
    T* c = C + i * ldc + j0;
    for (int64_t jj = 0; jj < n; ++jj)
      c[jj] = beta == T(0) ? alpha * acc[i * n + jj] : alpha * acc[i * n + jj] + beta * c[jj];
  }
}

template <typename T>
using ThinWideFn = void (*)(int64_t, int64_t, int64_t, int64_t, T, const T*, const T*, int64_t, T,
                            T*, int64_t, T*);

#if defined(__x86_64__) && defined(__GNUC__)
#define LC_WIDE_FN(name, T, MW)                                                                \
  __attribute__((target("avx512f,avx512vl,avx2,fma"))) void name(                              \
      int64_t j0, int64_t j1, int64_t M, int64_t K, T alpha, const T* Ap, const T* B,          \
      int64_t ldb, T beta, T* C, int64_t ldc, T* acc) {                                        \
    thin_wide<T, 64, MW>(j0, j1, M, K, alpha, Ap, B, ldb, beta, C, ldc, acc);                  \
  }
LC_WIDE_FN(wide8_f_avx512, float, 8)
LC_WIDE_FN(wide16_f_avx512, float, 16)
LC_WIDE_FN(wide8_d_avx512, double, 8)
LC_WIDE_FN(wide16_d_avx512, double, 16)
#endif

// Runs a wide thin product: packs op(A) (once, on the calling thread) and splits C's columns
// over the threads, whole vectors each, about 2^20 multiply-adds or more each.
template <typename T, int MW>
void thin_wide_gemm(bool tA, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                    const T* B, int64_t ldb, T beta, T* C, int64_t ldc, ThinWideFn<T> fn) {
  constexpr int64_t VL = 64 / sizeof(T);
  std::unique_ptr<T[]> ap(new T[size_t(MW * K)]);
  pack_a<T, MW, 16>(tA, A, lda, M, K, K, ap.get());
  const int64_t strips = (N + VL - 1) / VL;
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / (MW * VL * K));
  parallel_for(strips, grain, [&](int64_t s0, int64_t s1) {
    const int64_t j0 = s0 * VL, j1 = std::min(N, s1 * VL);
    std::unique_ptr<T[]> acc(new T[size_t(MW * (j1 - j0))]);
    fn(j0, j1, M, K, alpha, ap.get(), B, ldb, beta, C, ldc, acc.get());
  });
}

// Runs a tall thin product on an MR x NR tile: packs op(B) (once, on the calling thread) and
// splits A's row tiles over the threads, about 2^20 multiply-adds or more each.
template <typename T, int MR, int NR>
void thin_gemm(bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
               const T* B, int64_t ldb, T beta, T* C, int64_t ldc, ThinTallFn<T> fn) {
  const int64_t npad = (N + NR - 1) / NR * NR, tiles = (M + MR - 1) / MR;
  std::unique_ptr<T[]> bp(new T[size_t(npad * K)]);
  pack_b<T, NR, 16>(tB, B, ldb, K, N, K, bp.get());
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 20) / (MR * npad * K));
  parallel_for(tiles, grain, [&](int64_t t0, int64_t t1) {
    fn(t0, t1, M, N, K, alpha, A, lda, bp.get(), beta, C, ldc);
  });
}

// A deep product, K at least kDeep times M and N (the model's head: dx = dlogits W, 508 x 576
// over K = 49,152), goes as two halves of K, each over its own C grid, the second half's product
// then added onto the first's. Split over C instead, every thread packs all of the operand the
// blocks share (there, all 100 MB of dlogits, transposed, once per thread). The split is fixed by
// the shape, never by the thread count, so a result does not depend on how many threads ran it.
constexpr int64_t kDeep = 32;

template <typename T, int W>
void gemm_threaded(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
                   int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
                   const GemmTail<T>& tail, BlockFn<T> block, const SoftmaxRows* sm = nullptr,
                   float* lse = nullptr) {
  constexpr int MR = Kern<T, W>::MR, NR = Kern<T, W>::NR;
  constexpr int64_t MC = Blocks<T, W>::MC, NC = Blocks<T, W>::NC;
  const bool plain = tail.q == 0 && !tail.bias;
  const int64_t kparts = plain && !lse && K >= kDeep * std::max(M, N) ? 2 : 1;
  // A computed tail: P packed once for every block; each block takes whole rows of C (the rows'
  // U is made by the block that packs them).
  GemmTail<T> ct = tail;
  std::unique_ptr<T[]> pp;
  if (tail.P) {
    constexpr int VL = int(W / sizeof(T));
    ct.pp_nr = tail.q <= VL ? VL : NR;
    const int64_t qpad = (tail.q + ct.pp_nr - 1) / ct.pp_nr * ct.pp_nr;
    pp.reset(new T[size_t(qpad * K)]);
    if (ct.pp_nr == VL)
      pack_b<T, VL, 16>(tail.p_t, tail.P, tail.p_t ? K : tail.q, K, tail.q, K, pp.get());
    else
      pack_b<T, NR, 16>(tail.p_t, tail.P, tail.p_t ? K : tail.q, K, tail.q, K, pp.get());
    ct.Pp = pp.get();
  }
  // The first half's length, a whole number of 16-element steps (the packs' vector width).
  const int64_t k0 = kparts == 2 ? K / 32 * 16 : K;
  const int64_t threads = std::max<int64_t>(1, num_threads() / kparts);
  // With lse, C's columns are split on whole chunks of NC (LsePart); with a computed tail, not at
  // all.
  const int64_t col_tile = lse ? NC : tail.P ? (N + NR - 1) / NR * NR : NR;
  const gemm_grid::Grid g = gemm_grid::plan(M, N, k0, MR, col_tile, threads);
  const int64_t max_rows = std::min(MC, (g.mt + g.mg - 1) / g.mg * MR);
  const int64_t max_cols = std::min(NC, (g.ntl + g.ng - 1) / g.ng * col_tile);
  const int64_t kb = kparts == 2 ? std::max(k_block<T, W>(k0), k_block<T, W>(K - k0))
                                  : k_block<T, W>(K);
  const int64_t steps = kb + tail.q + (tail.bias ? 1 : 0);
  std::unique_ptr<T[]> second(kparts == 2 ? new T[size_t(M * N)] : nullptr);
  const int64_t chunks = (N + NC - 1) / NC;
  std::vector<float> part_m(lse ? size_t(chunks * M) : 0);
  std::vector<double> part_s(part_m.size());
  gemm_grid::for_each_block(
      g, MR, col_tile, M, N, kparts, [&](int64_t kp, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
        T* ap = gemm_grid::pack_buffer<T>(0, size_t(max_rows * steps));
        T* bp = gemm_grid::pack_buffer<T>(1, size_t(max_cols * steps));
        GemmTail<T> t = ct;
        if (t.q) t.U += r0 * t.ldu, t.V += c0 * t.v_n;
        if (t.Uw) t.Uw += r0 * t.ldu;
        if (t.bias) t.bias += c0;
        if (kparts == 1) {
          const RowXform x{sm, r0, 0};
          const int64_t q0 = c0 / NC;  // c0 is on a chunk boundary with lse
          const LsePart lp{part_m.data() + q0 * M + r0, part_s.data() + q0 * M + r0, M};
          block(tA, tB, r1 - r0, c1 - c0, K, alpha, tA ? A + r0 : A + r0 * lda, lda,
                tB ? B + c0 * ldb : B + c0, ldb, beta, C + r0 * ldc + c0, ldc, t, ap, bp,
                sm ? &x : nullptr, lse ? &lp : nullptr);
          return;
        }
        // Half kp: steps [p0, p0 + kn) of K; the first onto C (with beta), the second set into
        // `second` (row stride N).
        const int64_t p0 = kp == 0 ? 0 : k0, kn = kp == 0 ? k0 : K - k0;
        const T* a = tA ? A + p0 * lda + r0 : A + r0 * lda + p0;
        const T* b = tB ? B + c0 * ldb + p0 : B + p0 * ldb + c0;
        const RowXform x{sm, r0, p0};
        if (kp == 0)
          block(tA, tB, r1 - r0, c1 - c0, kn, alpha, a, lda, b, ldb, beta, C + r0 * ldc + c0, ldc,
                t, ap, bp, sm ? &x : nullptr, nullptr);
        else
          block(tA, tB, r1 - r0, c1 - c0, kn, alpha, a, lda, b, ldb, T(0),
                second.get() + r0 * N + c0, N, t, ap, bp, sm ? &x : nullptr, nullptr);
      });
  // lse[i] = the log of the row's sum of exp, from its chunks' partials in column order.
  if (lse)
    for (int64_t i = 0; i < M; ++i) {
      float m = part_m[size_t(i)];
      for (int64_t q = 1; q < chunks; ++q) m = std::max(m, part_m[size_t(q * M + i)]);
      double s = 0;
      for (int64_t q = 0; q < chunks; ++q)
        s += part_s[size_t(q * M + i)] * std::exp(static_cast<double>(part_m[size_t(q * M + i)]) - m);
      lse[i] = static_cast<float>(static_cast<double>(m) + std::log(s));
    }
  if (kparts == 2)
    parallel_for(M, std::max<int64_t>(1, (int64_t(1) << 16) / N), [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* c = C + i * ldc;
        const T* s = second.get() + i * N;
        for (int64_t j = 0; j < N; ++j) c[j] += s[j];
      }
    });
}

template <typename T>
struct BlockFns {
  BlockFn<T> base, avx2, avx512;
  ThinTallFn<T> thin_base, thin_avx2, thin_avx512, thin_half_avx512;
  ThinWideFn<T> wide8_avx512, wide16_avx512;
};

// A tall thin product, A not transposed, on the ISA's tall kernel: each element one sum over K
// in order (N <= 16 when chosen by gemm(); any N when a computed tail's U needs those bits).
template <typename T>
void thin_tall_gemm(bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
                    const T* B, int64_t ldb, T beta, T* C, int64_t ldc, const BlockFns<T>& fns) {
  constexpr int VL = int(64 / sizeof(T));  // one 64-byte vector's elements
  const CpuKernels isa = cpu_kernels();
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa == CpuKernels::Avx512 && fns.thin_avx512) {
    if (N <= VL / 2)
      thin_gemm<T, 12, VL / 2>(tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc,
                               fns.thin_half_avx512);
    else
      thin_gemm<T, 12, VL>(tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, fns.thin_avx512);
    return;
  }
  if (isa != CpuKernels::Generic && fns.thin_avx2) {
    thin_gemm<T, 6, VL>(tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, fns.thin_avx2);
    return;
  }
#endif
  thin_gemm<T, 6, VL / 2>(tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, fns.thin_base);
}

template <typename T>
void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A, int64_t lda,
          const T* B, int64_t ldb, T beta, T* C, int64_t ldc, const GemmTail<T>& tail,
          const BlockFns<T>& fns) {
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
  if (tA && N <= 64 && M > 4 * N && tail.q == 0 && !tail.bias) {
    // A thin product over a transposed A (a LoRA adapter's dB = dy^T h, N = r): packing op(A)
    // reads a few floats from each of K rows. C^T = op(B)^T A^T reads A row by row as the B
    // operand instead (the wide kernel up to 16 rows, packed panels beyond): 3.2 -> 1.0 ms at
    // r 16 and 3.0-3.4 -> 2.8 ms at r 64 for M = 1024, K = 2048 (bench/NOTES.md); then C = C^T^T.
    std::vector<T> ct(static_cast<size_t>(N * M));
    gemm<T>(!tB, false, N, M, K, alpha, B, ldb, A, lda, T(0), ct.data(), M, tail, fns);
    for (int64_t i = 0; i < M; ++i) {
      T* c = C + i * ldc;
      for (int64_t j = 0; j < N; ++j)
        c[j] = beta == T(0) ? ct[size_t(j * M + i)] : ct[size_t(j * M + i)] + beta * c[j];
    }
    return;
  }
  const bool plain = tail.q == 0 && !tail.bias;
  const CpuKernels isa = cpu_kernels();
  if (plain && !tA && N <= 16 && M >= 4 * N) {
    thin_tall_gemm<T>(tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, fns);
    return;
  }
#if defined(__x86_64__) && defined(__GNUC__)
  if (plain && !tB && M <= 16 && N >= 4 * M && isa == CpuKernels::Avx512 && fns.wide16_avx512) {
    if (M <= 8)
      thin_wide_gemm<T, 8>(tA, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, fns.wide8_avx512);
    else
      thin_wide_gemm<T, 16>(tA, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, fns.wide16_avx512);
    return;
  }
#endif
  switch (isa) {
    case CpuKernels::Avx512:
      // A product with 16 rows or columns or fewer (the adapter's, with K or N = r) half-fills
      // the 12 x 32 tile and packs its large operand for a few multiply-adds per element; the
      // AVX2 copy's 6 x 16 tile ran those twice as fast on a Zen 4 core (bench/NOTES.md).
      if (fns.avx512 && std::min(M, N) > 16) {
        gemm_threaded<T, 64>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, tail,
                             fns.avx512);
        return;
      }
      [[fallthrough]];
    case CpuKernels::Avx2:
      if (fns.avx2) {
        gemm_threaded<T, 32>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, tail, fns.avx2);
        return;
      }
      break;
    case CpuKernels::Generic:
      break;
  }
  gemm_threaded<T, 16>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, tail, fns.base);
}

// Whether a computed tail's U is made inside the product (M x N, the ISA's MR-row tiles). Its
// blocks then take whole rows of C, so each thread packs all of op(B), where the grid the product
// would choose packs 1/ng of it; that saves a read of op(A) (U's own product), M/mg rows of it
// per thread: worth it while N (1 - 1/ng) <= M / mg, and while whole rows still give every
// thread of that grid a block. (2048, 1024, 1024) on two threads: 512 <= 2048, inside;
// (1024, 4096, 4096): 2048 > 1024, outside (inside, the LoRA layer ran 2-3% slower there).
inline bool tail_inside(int64_t M, int64_t N, int64_t K, int64_t MR, int64_t NR) {
  const gemm_grid::Grid g = gemm_grid::plan(M, N, K, MR, NR);
  const gemm_grid::Grid rows = gemm_grid::plan(M, N, K, MR, (N + NR - 1) / NR * NR);
  return rows.mg >= g.mg * g.ng && double(N) * double(g.ng - 1) / double(g.ng) <= double(M) / double(g.mg);
}

// A product with a tail (builtin_sgemm_tail). A computed tail's U is read from where it is
// written, made inside the product where tail_inside() says so, else by the tall thin kernel
// first: the same bits either way (block_u), so the choice may follow the thread count.
template <typename T>
void gemm_tail(bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
               int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc,
               const GemmTail<T>& tail, const BlockFns<T>& fns) {
  GemmTail<T> t = tail;
  if (t.P) {
    if (tA) throw std::invalid_argument("gemm tail: a computed U needs op(A) = A");
    t.U = t.Uw;
    // The tile the product will run on (gemm() below).
    const CpuKernels isa = cpu_kernels();
    const bool wide = isa == CpuKernels::Avx512 && fns.avx512 && std::min(M, N) > 16;
    const bool avx2 = !wide && isa != CpuKernels::Generic && fns.avx2;
    const int64_t MR = wide ? Kern<T, 64>::MR : avx2 ? Kern<T, 32>::MR : Kern<T, 16>::MR;
    const int64_t NR = wide ? Kern<T, 64>::NR : avx2 ? Kern<T, 32>::NR : Kern<T, 16>::NR;
    if (!tail_inside(M, N, K, MR, NR)) {
      thin_tall_gemm<T>(t.p_t, M, t.q, K, t.p_alpha, A, lda, t.P, t.p_t ? K : t.q, T(0), t.Uw,
                        t.ldu, fns);
      t.P = nullptr;
    }
  }
  gemm<T>(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, t, fns);
}

#if defined(__x86_64__) && defined(__GNUC__)
const BlockFns<float> kFloatFns{block_f_base,  block_f_avx2,   block_f_avx512,
                                tall_f_base,   tall_f_avx2,    tall_f_avx512,
                                tall8_f_avx512, wide8_f_avx512, wide16_f_avx512};
const BlockFns<double> kDoubleFns{block_d_base,  block_d_avx2,   block_d_avx512,
                                  tall_d_base,   tall_d_avx2,    tall_d_avx512,
                                  tall4_d_avx512, wide8_d_avx512, wide16_d_avx512};
#else
const BlockFns<float> kFloatFns{block_f_base, nullptr, nullptr, tall_f_base, nullptr, nullptr,
                                nullptr, nullptr, nullptr};
const BlockFns<double> kDoubleFns{block_d_base, nullptr, nullptr, tall_d_base, nullptr, nullptr,
                                  nullptr, nullptr, nullptr};
#endif

struct KernelChoice {
  CpuKernels kernels = CpuKernels::Generic;
  std::string error;  // LORA_CUDA_CPU_KERNELS asked for what cannot run here
};

const KernelChoice& kernel_choice() {
  static const KernelChoice c = [] {
    KernelChoice k;
    bool avx2 = false, avx512 = false;
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    // avx512vl: the AVX-512 copies may use 256-bit forms of its instructions.
    avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl");
#endif
    k.kernels = avx512 ? CpuKernels::Avx512 : avx2 ? CpuKernels::Avx2 : CpuKernels::Generic;
    const char* env = std::getenv("LORA_CUDA_CPU_KERNELS");
    if (!env || !*env) return k;
    const std::string v(env);
    if (v == "generic") {
      k.kernels = CpuKernels::Generic;
    } else if (v == "avx2" || v == "avx2+fma") {
      if (avx2) k.kernels = CpuKernels::Avx2;
      else k.error = "LORA_CUDA_CPU_KERNELS=" + v + ": this processor lacks AVX2 or FMA";
    } else if (v == "avx512") {
      if (avx512) k.kernels = CpuKernels::Avx512;
      else k.error = "LORA_CUDA_CPU_KERNELS=" + v + ": this processor lacks AVX-512 (avx512f, avx512vl)";
    } else {
      k.error = "LORA_CUDA_CPU_KERNELS must be avx512, avx2 or generic, got '" + v + "'";
    }
    return k;
  }();
  return c;
}

}  // namespace

CpuKernels cpu_kernels() {
  const KernelChoice& k = kernel_choice();
  if (!k.error.empty()) throw std::invalid_argument(k.error);
  return k.kernels;
}

const char* cpu_kernels_name(CpuKernels k) {
  switch (k) {
    case CpuKernels::Avx512: return "avx512";
    case CpuKernels::Avx2: return "avx2+fma";
    case CpuKernels::Generic: break;
  }
  return "generic";
}

void builtin_sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                   const float* A, int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                   int64_t ldc) {
  gemm<float>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, GemmTail<float>{},
              kFloatFns);
}

void builtin_dgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
                   const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                   double* C, int64_t ldc) {
  gemm<double>(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, GemmTail<double>{},
               kDoubleFns);
}

void builtin_sgemm_tail(bool transA, bool transB, int64_t M, int64_t N, int64_t K, const float* A,
                        int64_t lda, const float* B, int64_t ldb, float beta, float* C,
                        int64_t ldc, const GemmTail<float>& tail) {
  if (K <= 0) throw std::invalid_argument("builtin_sgemm_tail: K must be positive");
  gemm_tail<float>(transA, transB, M, N, K, 1.0f, A, lda, B, ldb, beta, C, ldc, tail, kFloatFns);
}

void builtin_dgemm_tail(bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                        const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                        double* C, int64_t ldc, const GemmTail<double>& tail) {
  if (K <= 0) throw std::invalid_argument("builtin_dgemm_tail: K must be positive");
  gemm_tail<double>(transA, transB, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc, tail,
                    kDoubleFns);
}

void builtin_sgemm_lse(int64_t M, int64_t N, int64_t K, const float* A, int64_t lda,
                       const float* B, int64_t ldb, float* C, int64_t ldc, float* lse) {
  if (M <= 0) return;
  if (N <= 0 || K <= 0) throw std::invalid_argument("builtin_sgemm_lse: N and K must be positive");
  const GemmTail<float> none{};
  switch (cpu_kernels()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case CpuKernels::Avx512:
      return gemm_threaded<float, 64>(false, true, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc,
                                      none, block_f_avx512, nullptr, lse);
    case CpuKernels::Avx2:
      return gemm_threaded<float, 32>(false, true, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc,
                                      none, block_f_avx2, nullptr, lse);
#endif
    default:
      return gemm_threaded<float, 16>(false, true, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc,
                                      none, block_f_base, nullptr, lse);
  }
}

void builtin_sgemm_softmax_a(int64_t M, int64_t N, int64_t K, const float* X, int64_t ldx,
                             const SoftmaxRows& rows, const float* B, int64_t ldb, float* C,
                             int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i) std::fill(C + i * ldc, C + i * ldc + N, 0.f);
    return;
  }
  // Always the general blocked kernel (the thin ones read A in place, unpacked); the ISA's copy.
  const GemmTail<float> none{};
  switch (cpu_kernels()) {
#if defined(__x86_64__) && defined(__GNUC__)
    case CpuKernels::Avx512:
      return gemm_threaded<float, 64>(false, false, M, N, K, 1.f, X, ldx, B, ldb, 0.f, C, ldc,
                                      none, block_f_avx512, &rows);
    case CpuKernels::Avx2:
      return gemm_threaded<float, 32>(false, false, M, N, K, 1.f, X, ldx, B, ldb, 0.f, C, ldc,
                                      none, block_f_avx2, &rows);
#endif
    default:
      return gemm_threaded<float, 16>(false, false, M, N, K, 1.f, X, ldx, B, ldb, 0.f, C, ldc,
                                      none, block_f_base, &rows);
  }
}

}  // namespace lc
