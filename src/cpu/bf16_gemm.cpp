// bfloat16 GEMM on AVX512_BF16: C (bf16) = alpha * op(A) op(B) + beta * C with
// `vdpbf16ps`, which multiplies pairs of bfloat16 and adds both products into a
// float32 lane: 32 multiply-adds per instruction where the float32 kernel does
// 16, and the packed operands are half the bytes.
//
// Layout (Goto/BLIS like the float32 kernel, builtin_gemm.cpp): op(B) is packed
// into NR-column panels of K pairs, [K/2][NR][2] (a zmm holds the (k, k+1) pair
// of 16 columns), op(A) into MR-row panels [K/2][MR][2] (one 32-bit broadcast
// gives the (A[m, k], A[m, k+1]) pair to every lane). An odd K is padded with a
// zero k in both, so the pad adds 0 * 0. The micro-kernel keeps an MR x NR tile
// of float32 accumulators in registers (12 x 32 = 24 zmm).
//
// Numerics: C is accumulated in float32 over the whole K and rounded once to
// bfloat16 (to nearest even, NaN kept quiet, as float_to_bf16_bits) when
// stored; a K over one block keeps its partial sums in a float32 buffer between
// blocks, never in bfloat16. The pairs' products are exact in float32 (8-bit
// significands); vdpbf16ps, as documented, rounds each addition to nearest even
// whatever MXCSR says, treats bfloat16 subnormal inputs as zero and flushes
// subnormal float32 results to zero (DAZ/FTZ): an input below 2^-126 in
// magnitude adds nothing here where the panel path (and float64) would add its
// tiny product. test/bf16-gemm.test.ts checks the products against float64
// with one bf16 rounding plus a K-proportional float32 term, bit-exact rounding
// where the float32 sums are exact, and that a subnormal input is flushed on
// this path and kept on the panel path (the result flush is not tested).
//
// Compiled for avx512f/bw/vl/bf16 by function attribute only (the library is
// built without -march) and run only where the processor has them and the
// AVX-512 copy of the built-in kernels is chosen (bf16_gemm_kernel()).
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>

#include "../parallel.h"
#include "gemm.h"
#include "gemm_grid.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define LC_BF16_NATIVE 1
// GCC 12's AVX-512 shift, convert and unpack intrinsics pass _mm512_undefined_*() (a
// self-initialised variable) as their unused merge source, which -W(maybe-)uninitialized report
// once inlined.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"
#endif

namespace lc {
namespace {

struct Bf16Choice {
  Bf16Kernel kernel = Bf16Kernel::Panels;
  std::string error;
};

const Bf16Choice& bf16_choice() {
  static const Bf16Choice c = [] {
    Bf16Choice k;
    bool native = false;
#if defined(LC_BF16_NATIVE)
    __builtin_cpu_init();
    native = __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512bw");
#endif
    // The bfloat16 kernel belongs to the AVX-512 copy: LORA_CUDA_CPU_KERNELS=avx2/generic keep
    // the panel path (cpu_kernels() throws itself on a bad value).
    bool avx512 = false;
    try {
      avx512 = cpu_kernels() == CpuKernels::Avx512;
    } catch (const std::exception&) {
    }
    if (native && avx512) k.kernel = Bf16Kernel::Avx512Bf16;
    const char* env = std::getenv("LORA_CUDA_BF16_GEMM");
    if (!env || !*env) return k;
    const std::string v(env);
    if (v == "panels") {
      k.kernel = Bf16Kernel::Panels;
    } else if (v == "avx512bf16") {
      if (!native) k.error = "LORA_CUDA_BF16_GEMM=avx512bf16: this processor lacks AVX512_BF16";
      else if (!avx512) k.error = "LORA_CUDA_BF16_GEMM=avx512bf16 needs the AVX-512 kernels, not LORA_CUDA_CPU_KERNELS=" + std::string(cpu_kernels_name(cpu_kernels()));
      else k.kernel = Bf16Kernel::Avx512Bf16;
    } else {
      k.error = "LORA_CUDA_BF16_GEMM must be avx512bf16 or panels, got '" + v + "'";
    }
    return k;
  }();
  return c;
}

#if defined(LC_BF16_NATIVE)

#define LC_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))

// About 2x the float32 AVX-512 kernel's GFLOP/s on the model's shapes on a Zen 4 core
// (bench/NOTES.md); a K block of 512 was 20-40% slower than 1024, 2048 and a longer A block
// (8 x MR) no better.
constexpr int MR = 12;           // rows of the register tile
constexpr int NV = 2;            // zmm per row: NR = 32 columns (pack_b's interleave assumes 32)
constexpr int NR = 16 * NV;
constexpr int64_t KC = 1024;     // depth of one packed block (bf16 elements, even)
constexpr int64_t MC = 4 * MR;   // rows of A per packed block
constexpr int64_t NC = 2048;     // columns of B per packed block
constexpr int64_t MO = 512;      // rows per pass when K spans several blocks (float32 buffer)

inline uint32_t pair(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }
inline uint32_t load32(const uint16_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

// float32 -> bfloat16 bits, 16 lanes: round to nearest even, NaN quiet (float_to_bf16_bits).
LC_BF16_TARGET inline __m256i round_bf16(__m512 r) {
  const __m512i u = _mm512_castps_si512(r);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i v = _mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff)));
  const __mmask16 nan = _mm512_cmp_ps_mask(r, r, _CMP_UNORD_Q);
  v = _mm512_mask_mov_epi32(v, nan, _mm512_or_si512(u, _mm512_set1_epi32(0x00400000)));
  return _mm512_cvtepi32_epi16(_mm512_srli_epi32(v, 16));
}

LC_BF16_TARGET inline __m512 widen_bf16(__m256i h) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// One MR x NR tile over kp pairs. first: the tile's first K block (else add the float32 partial
// sums in acc); last: round alpha * sum + beta * C into C (else store the sums into acc). Only
// rows < mr and columns < nr of C are read or written; acc is a full padded tile.
LC_BF16_TARGET __attribute__((noinline)) void micro(int64_t kp, const uint32_t* __restrict a,
                                                   const uint32_t* __restrict b, bool first,
                                                   bool last, float* __restrict acc,
                                                   int64_t ldacc, float alpha, float beta,
                                                   uint16_t* __restrict C, int64_t ldc, int mr,
                                                   int nr) {
  __m512 s[MR][NV];
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) s[i][v] = _mm512_setzero_ps();
  const int* ai = reinterpret_cast<const int*>(a);
  for (int64_t p = 0; p < kp; ++p) {
    __m512bh bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = (__m512bh)_mm512_loadu_si512(b + v * 16);
#pragma GCC unroll 16
    for (int i = 0; i < MR; ++i) {
      const __m512bh av = (__m512bh)_mm512_set1_epi32(ai[i]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) s[i][v] = _mm512_dpbf16_ps(s[i][v], av, bv[v]);
    }
    ai += MR;
    b += NR;
  }
  __mmask16 cols[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const int n = std::min(16, std::max(0, nr - 16 * v));
    cols[v] = __mmask16((1u << n) - 1u);
  }
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
#pragma GCC unroll 16
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      __m512 r = s[i][v];
      float* ap = acc + i * ldacc + v * 16;
      if (!first) r = _mm512_add_ps(r, _mm512_loadu_ps(ap));
      if (!last) {
        _mm512_storeu_ps(ap, r);
        continue;
      }
      if (i >= mr) continue;
      uint16_t* c = C + i * ldc + v * 16;
      r = _mm512_mul_ps(r, va);
      if (beta != 0.0f)
        r = _mm512_fmadd_ps(widen_bf16(_mm256_maskz_loadu_epi16(cols[v], c)), vb, r);
      _mm256_mask_storeu_epi16(c, cols[v], round_bf16(r));
    }
  }
}

// op(A)[0:mc, 0:kc] -> MR-row panels of pairs, panel[p * MR + i] (rows past mc and the odd
// k's partner are zero).
LC_BF16_TARGET void pack_a(bool tA, const uint16_t* A, int64_t lda, int64_t mc, int64_t kc,
                           uint32_t* __restrict dst) {
  const int64_t kp = (kc + 1) / 2, ke = kc / 2;
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int mr = int(std::min<int64_t>(MR, mc - ir));
    uint32_t* d = dst + ir * kp;
    if (!tA) {
      // A row i holds the pairs contiguously.
      for (int i = 0; i < mr; ++i) {
        const uint16_t* s = A + (ir + i) * lda;
        for (int64_t p = 0; p < ke; ++p) d[p * MR + i] = load32(s + 2 * p);
        if (kc & 1) d[ke * MR + i] = s[kc - 1];
      }
    } else {
      // op(A)(i, k) = A[k * lda + i]: the pair comes from two stored rows.
      for (int64_t p = 0; p < ke; ++p) {
        const uint16_t* s0 = A + 2 * p * lda + ir;
        const uint16_t* s1 = s0 + lda;
        for (int i = 0; i < mr; ++i) d[p * MR + i] = pair(s0[i], s1[i]);
      }
      if (kc & 1) {
        const uint16_t* s0 = A + (kc - 1) * lda + ir;
        for (int i = 0; i < mr; ++i) d[ke * MR + i] = s0[i];
      }
    }
    for (int i = mr; i < MR; ++i)
      for (int64_t p = 0; p < kp; ++p) d[p * MR + i] = 0;
  }
}

// dst[q * ldd + j] = dword q of row j (rows at src + j * ld, 16 dwords each), j, q < 16: a 16 x 16
// transpose of 32-bit pairs in four shuffle stages.
LC_BF16_TARGET inline void transpose16(const uint16_t* src, int64_t ld, uint32_t* dst, int64_t ldd) {
  __m512i u[16], v[16];
  for (int g = 0; g < 4; ++g) {
    const uint16_t* s = src + 4 * g * ld;
    const __m512i r0 = _mm512_loadu_si512(s), r1 = _mm512_loadu_si512(s + ld),
                  r2 = _mm512_loadu_si512(s + 2 * ld), r3 = _mm512_loadu_si512(s + 3 * ld);
    const __m512i lo01 = _mm512_unpacklo_epi32(r0, r1), hi01 = _mm512_unpackhi_epi32(r0, r1);
    const __m512i lo23 = _mm512_unpacklo_epi32(r2, r3), hi23 = _mm512_unpackhi_epi32(r2, r3);
    // u[4g + c], 128-bit lane l: rows 4g..4g+3 of dword 4l + c.
    u[4 * g + 0] = _mm512_unpacklo_epi64(lo01, lo23);
    u[4 * g + 1] = _mm512_unpackhi_epi64(lo01, lo23);
    u[4 * g + 2] = _mm512_unpacklo_epi64(hi01, hi23);
    u[4 * g + 3] = _mm512_unpackhi_epi64(hi01, hi23);
  }
  for (int c = 0; c < 4; ++c) {
    v[c] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);       // dwords c, 8+c of rows 0-7
    v[4 + c] = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);   // dwords 4+c, 12+c of rows 0-7
    v[8 + c] = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    v[12 + c] = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
  }
  for (int c = 0; c < 4; ++c) {
    _mm512_storeu_si512(dst + c * ldd, _mm512_shuffle_i32x4(v[c], v[8 + c], 0x88));
    _mm512_storeu_si512(dst + (8 + c) * ldd, _mm512_shuffle_i32x4(v[c], v[8 + c], 0xdd));
    _mm512_storeu_si512(dst + (4 + c) * ldd, _mm512_shuffle_i32x4(v[4 + c], v[12 + c], 0x88));
    _mm512_storeu_si512(dst + (12 + c) * ldd, _mm512_shuffle_i32x4(v[4 + c], v[12 + c], 0xdd));
  }
}

// op(B)[0:kc, 0:nc] -> NR-column panels of pairs, panel[p * NR + j].
LC_BF16_TARGET void pack_b(bool tB, const uint16_t* B, int64_t ldb, int64_t kc, int64_t nc,
                           uint32_t* __restrict dst) {
  const int64_t kp = (kc + 1) / 2, ke = kc / 2;
  // Interleaves stored rows k and k+1 (32 columns each): lanes 2j, 2j+1 <- r0[j], r1[j].
  alignas(64) static const uint16_t lo_idx[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                                  8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t hi_idx[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                  24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i ilo = _mm512_load_si512(lo_idx), ihi = _mm512_load_si512(hi_idx);
  for (int64_t jr = 0; jr < nc; jr += NR) {
    const int nr = int(std::min<int64_t>(NR, nc - jr));
    uint32_t* d = dst + jr * kp;
    if (tB) {
      // op(B)(k, j) = B[j * ldb + k]: stored row j holds the pairs contiguously. A full panel
      // goes 16 columns x 16 pairs at a time through a dword transpose; the rest pair by pair.
      const int64_t pv = nr == NR ? ke / 16 * 16 : 0;
      for (int h = 0; h < NR / 16 && pv; ++h)
        for (int64_t p0 = 0; p0 < pv; p0 += 16)
          transpose16(B + (jr + 16 * h) * ldb + 2 * p0, ldb, d + p0 * NR + 16 * h, NR);
      for (int j = 0; j < nr; ++j) {
        const uint16_t* s = B + (jr + j) * ldb;
        for (int64_t p = pv; p < ke; ++p) d[p * NR + j] = load32(s + 2 * p);
        if (kc & 1) d[ke * NR + j] = s[kc - 1];
      }
      for (int j = nr; j < NR; ++j)
        for (int64_t p = 0; p < kp; ++p) d[p * NR + j] = 0;
    } else {
      const __mmask32 m = nr == NR ? ~__mmask32(0) : __mmask32((1u << nr) - 1u);
      for (int64_t p = 0; p < ke; ++p) {
        const uint16_t* s0 = B + 2 * p * ldb + jr;
        const __m512i r0 = _mm512_maskz_loadu_epi16(m, s0), r1 = _mm512_maskz_loadu_epi16(m, s0 + ldb);
        _mm512_storeu_si512(d + p * NR, _mm512_permutex2var_epi16(r0, ilo, r1));
        _mm512_storeu_si512(d + p * NR + 16, _mm512_permutex2var_epi16(r0, ihi, r1));
      }
      if (kc & 1) {
        const __m512i r0 = _mm512_maskz_loadu_epi16(m, B + (kc - 1) * ldb + jr), z = _mm512_setzero_si512();
        _mm512_storeu_si512(d + ke * NR, _mm512_permutex2var_epi16(r0, ilo, z));
        _mm512_storeu_si512(d + ke * NR + 16, _mm512_permutex2var_epi16(r0, ihi, z));
      }
    }
  }
}

// K in near-equal even blocks of at most KC (pairs never straddle two blocks).
int64_t k_block(int64_t K) {
  const int64_t nb = (K + KC - 1) / KC;
  const int64_t kb = (K + nb - 1) / nb;
  return (kb + 1) & ~int64_t(1);
}

// One thread's C block, single-threaded.
LC_BF16_TARGET void gemm_block(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha,
                               const uint16_t* A, int64_t lda, const uint16_t* B, int64_t ldb,
                               float beta, uint16_t* C, int64_t ldc) {
  const int64_t kcb = k_block(K), kpb = kcb / 2;
  const bool multi = kcb < K;
  const int64_t mo_rows = multi ? MO : M;
  const int64_t ncmax = std::min(NC, (N + NR - 1) / NR * NR);
  uint32_t* Ap = gemm_grid::pack_buffer<uint32_t>(0, size_t(MC * kpb));
  uint32_t* Bp = gemm_grid::pack_buffer<uint32_t>(1, size_t(ncmax * kpb));
  float* acc = multi ? gemm_grid::pack_buffer<float>(2, size_t((std::min(MO, M) + MR) * ncmax)) : nullptr;
  for (int64_t mo = 0; mo < M; mo += mo_rows) {
    const int64_t mrows = std::min(mo_rows, M - mo);
    for (int64_t jc = 0; jc < N; jc += NC) {
      const int64_t nc = std::min(NC, N - jc);
      for (int64_t pc = 0; pc < K; pc += kcb) {
        const int64_t kc = std::min(kcb, K - pc), kp = (kc + 1) / 2;
        const bool first = pc == 0, last = pc + kc >= K;
        pack_b(tB, tB ? B + jc * ldb + pc : B + pc * ldb + jc, ldb, kc, nc, Bp);
        for (int64_t ic = mo; ic < mo + mrows; ic += MC) {
          const int64_t mc = std::min(MC, mo + mrows - ic);
          pack_a(tA, tA ? A + pc * lda + ic : A + ic * lda + pc, lda, mc, kc, Ap);
          for (int64_t jr = 0; jr < nc; jr += NR) {
            const int nr = int(std::min<int64_t>(NR, nc - jr));
            for (int64_t ir = 0; ir < mc; ir += MR) {
              const int mr = int(std::min<int64_t>(MR, mc - ir));
              micro(kp, Ap + ir * kp, Bp + jr * kp, first, last,
                    multi ? acc + (ic - mo + ir) * ncmax + jr : nullptr, ncmax, alpha, beta,
                    C + (ic + ir) * ldc + jc + jr, ldc, mr, nr);
            }
          }
        }
      }
    }
  }
}


#endif  // LC_BF16_NATIVE

}  // namespace

Bf16Kernel bf16_gemm_kernel() {
  const Bf16Choice& c = bf16_choice();
  if (!c.error.empty()) throw std::invalid_argument(c.error);
  return c.kernel;
}

const char* bf16_gemm_kernel_name(Bf16Kernel k) {
  return k == Bf16Kernel::Avx512Bf16 ? "avx512bf16" : "panels";
}

void gemm_bf16_avx512bf16(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha,
                          const bf16* A, int64_t lda, const bf16* B, int64_t ldb, float beta,
                          bf16* C, int64_t ldc) {
#if defined(LC_BF16_NATIVE)
  if (M <= 0 || N <= 0 || K <= 0) throw std::invalid_argument("gemm_bf16_avx512bf16: empty product");
  const auto* a = reinterpret_cast<const uint16_t*>(A);
  const auto* b = reinterpret_cast<const uint16_t*>(B);
  auto* c = reinterpret_cast<uint16_t*>(C);
  // Threads and their grid of C blocks as the float32 kernel chooses them.
  const gemm_grid::Grid g = gemm_grid::plan(M, N, K, MR, NR);
  gemm_grid::for_each_block(g, MR, NR, M, N, [&](int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
    gemm_block(tA, tB, r1 - r0, c1 - c0, K, alpha, tA ? a + r0 : a + r0 * lda, lda,
               tB ? b + c0 * ldb : b + c0, ldb, beta, c + r0 * ldc + c0, ldc);
  });
#else
  (void)tA, (void)tB, (void)M, (void)N, (void)K, (void)alpha, (void)A, (void)lda, (void)B,
      (void)ldb, (void)beta, (void)C, (void)ldc;
  throw std::invalid_argument("gemm_bf16_avx512bf16: not built for this architecture");
#endif
}

}  // namespace lc
