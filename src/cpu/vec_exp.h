// float vectors of W bytes (GCC vector extensions) and the vectorised exp shared by the row-wise
// float32 paths (fast_f32.cpp) and the built-in GEMM's fused cross-entropy pack (builtin_gemm.cpp).
// Always inlined into their target-attributed callers, which pick the width.
#pragma once
#include <cstdint>
#include <cstring>

// These take and return vectors but are always inlined into their target-attributed callers, so
// no call crosses the ABI GCC warns about.
#pragma GCC diagnostic ignored "-Wpsabi"

#if defined(__GNUC__)
#ifndef LC_INLINE
#define LC_INLINE inline __attribute__((always_inline))
#endif
#else
#ifndef LC_INLINE
#define LC_INLINE inline
#endif
#endif

namespace lc {
namespace {

template <int W>
struct Vec {
  typedef float F __attribute__((vector_size(W)));
  typedef int32_t I __attribute__((vector_size(W)));
  static constexpr int L = W / 4;
};

template <int W>
LC_INLINE typename Vec<W>::F load(const float* p) {
  typename Vec<W>::F v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
template <int W>
LC_INLINE void store(float* p, typename Vec<W>::F v) {
  std::memcpy(p, &v, sizeof(v));
}
template <int W>
LC_INLINE typename Vec<W>::F splat(float x) {
  typename Vec<W>::F v;
  for (int i = 0; i < Vec<W>::L; ++i) v[i] = x;
  return v;
}

// exp(x): x = n ln2 + r with |r| <= ln2/2 (n rounded with the 1.5 * 2^23 trick), a degree-6
// polynomial for e^r (Cephes' expf), then 2^n applied as two exact power-of-two factors (n up to
// 128 would not fit one float's exponent): +inf above ln(FLT_MAX), as expf; 0 below -88.38.
template <int W>
LC_INLINE typename Vec<W>::F vexp(typename Vec<W>::F x) {
  using F = typename Vec<W>::F;
  using I = typename Vec<W>::I;
  const F hi = splat<W>(88.72283935546875f), lo = splat<W>(-88.3762626647949f);
  const I over = x > hi;   // exp overflows float there; +inf included (NaN compares false)
  const I under = x < lo;  // exp is 0 (to float) there; -inf included
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  const F magic = splat<W>(12582912.0f);
  F n = (x * 1.44269504088896341f + magic) - magic;
  F r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  F p = splat<W>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * (r * r) + r + 1.0f;
  const I ni = __builtin_convertvector(n, I), h = ni >> 1;
  const I e1 = (h + 127) << 23, e2 = (ni - h + 127) << 23;
  F s1, s2;
  std::memcpy(&s1, &e1, sizeof(s1));
  std::memcpy(&s2, &e2, sizeof(s2));
  F y = (p * s1) * s2;
  I bits;
  std::memcpy(&bits, &y, sizeof(bits));
  bits &= ~under;
  bits = (bits & ~over) | (over & 0x7f800000);
  std::memcpy(&y, &bits, sizeof(y));
  return y;
}

}  // namespace
}  // namespace lc
