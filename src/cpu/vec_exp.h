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

// The exponent bits of 2^n for float n (an integer in [-127, 127]): a float scale.
template <int W>
LC_INLINE typename Vec<W>::F pow2(typename Vec<W>::I n) {
  const typename Vec<W>::I e = (n + 127) << 23;
  typename Vec<W>::F s;
  std::memcpy(&s, &e, sizeof(s));
  return s;
}

// e^r for the reduced argument: x = n ln2 + r with |r| <= ln2/2 (n rounded with the 1.5 * 2^23
// trick), a degree-6 polynomial (Cephes' expf). x must be clamped into [-88.38, 88.73].
template <int W>
LC_INLINE typename Vec<W>::F exp_reduced(typename Vec<W>::F x, typename Vec<W>::F& n) {
  using F = typename Vec<W>::F;
  const F magic = splat<W>(12582912.0f);
  n = (x * 1.44269504088896341f + magic) - magic;
  F r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  F p = splat<W>(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  return p * (r * r) + r + 1.0f;
}

constexpr float kExpLo = -88.3762626647949f;  // below it exp is 0 here (-inf included)

// exp(x) for softmax-style arguments, x = v - max <= 0 (valid up to 88.37, where 2^n still fits a
// float's exponent): about 2 ulp, 0 below -88.38, NaN kept. The hot paths: the cross entropy,
// attention, the head's fused products.
template <int W>
LC_INLINE typename Vec<W>::F vexp_shifted(typename Vec<W>::F x) {
  using F = typename Vec<W>::F;
  using I = typename Vec<W>::I;
  const F lo = splat<W>(kExpLo);
  const I under = x < lo;
  x = x < lo ? lo : x;
  F n;
  F y = exp_reduced<W>(x, n) * pow2<W>(__builtin_convertvector(n, I));
  I bits;
  std::memcpy(&bits, &y, sizeof(bits));
  bits &= ~under;
  std::memcpy(&y, &bits, sizeof(y));
  return y;
}

// exp(x) over the whole float range (SiLU's exp(-x)): 2^n as two exact power-of-two factors, as
// n reaches 128 there, so x up to ln(FLT_MAX) gets expf's values and larger x +inf (x is clamped
// there and the product overflows, as expf does), the denormal results of x in [-88.38, -87.34]
// too; 0 below -88.38; NaN kept. Bits equal vexp_shifted's where 2^n is a normal float.
template <int W>
LC_INLINE typename Vec<W>::F vexp(typename Vec<W>::F x) {
  using F = typename Vec<W>::F;
  using I = typename Vec<W>::I;
  const F hi = splat<W>(88.72283935546875f), lo = splat<W>(kExpLo);
  const I under = x < lo;
  x = x > hi ? hi : x;
  x = x < lo ? lo : x;
  F n;
  const F p = exp_reduced<W>(x, n);
  const I ni = __builtin_convertvector(n, I), h = ni >> 1;
  F y = (p * pow2<W>(h)) * pow2<W>(ni - h);
  I bits;
  std::memcpy(&bits, &y, sizeof(bits));
  bits &= ~under;
  std::memcpy(&y, &bits, sizeof(y));
  return y;
}

}  // namespace
}  // namespace lc
