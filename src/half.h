// The two 16-bit float storage types, bfloat16 and float16 (IEEE binary16), as
// plain 16-bit values that convert to and from float. Arithmetic on them is
// float arithmetic: an op reads the halves as float, computes in float (or in
// opmath_t<T>, float for both, for accumulators) and rounds once when it
// stores, to nearest even, as PyTorch computes bf16/fp16 ops on the CPU and
// CUDA. Header-only and host/device so every backend rounds the same way.
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define LC_HALF_HD __host__ __device__ __forceinline__
#else
#define LC_HALF_HD inline
#endif

#if defined(__CUDA_ARCH__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace lc {

LC_HALF_HD uint32_t half_f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
#endif
}
LC_HALF_HD float half_bits_f32(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, 4);
  return f;
#endif
}

// float -> bfloat16 bits, round to nearest even; NaN stays a (quiet) NaN.
LC_HALF_HD uint16_t float_to_bf16_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
#else
  uint32_t u = half_f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
#endif
}
LC_HALF_HD float bf16_bits_to_float(uint16_t b) { return half_bits_f32(static_cast<uint32_t>(b) << 16); }

// float -> float16 bits, round to nearest even, with subnormals; beyond 65504 (from 65520 up)
// an infinity, as a cast in torch gives (loading refuses such values before casting).
LC_HALF_HD uint16_t float_to_f16_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  uint32_t x = half_f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  uint32_t o;
  if (x >= (127u + 16u) << 23) {  // 65536 and up, infinities, NaN
    o = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (x < (113u << 23)) {  // below 2^-14: a subnormal half (or zero); the float add rounds
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    o = half_f32_bits(half_bits_f32(x) + half_bits_f32(magic)) - magic;
  } else {
    const uint32_t odd = (x >> 13) & 1u;
    x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;  // rebias, round half to even
    o = x >> 13;  // 65520 and up carry into the infinity
  }
  return static_cast<uint16_t>(o | sign);
#endif
}
LC_HALF_HD float f16_bits_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;  // infinity, NaN
  } else if (exp == 0) {      // zero, subnormal: renormalise through a float subtraction
    o += 1u << 23;
    o = half_f32_bits(half_bits_f32(o) - half_bits_f32(113u << 23));
  }
  return half_bits_f32(o | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
#endif
}

// The storage types. Default construction leaves the bits unset (arrays of them stay trivial);
// conversions from float round to nearest even; every operator works through float.
struct bf16 {
  uint16_t bits;
  bf16() = default;
  LC_HALF_HD bf16(float f) : bits(float_to_bf16_bits(f)) {}
  LC_HALF_HD bf16(double d) : bits(float_to_bf16_bits(static_cast<float>(d))) {}
  LC_HALF_HD bf16(int i) : bits(float_to_bf16_bits(static_cast<float>(i))) {}
  LC_HALF_HD operator float() const { return bf16_bits_to_float(bits); }
  static LC_HALF_HD bf16 from_bits(uint16_t b) {
    bf16 v;
    v.bits = b;
    return v;
  }
};
struct f16 {
  uint16_t bits;
  f16() = default;
  LC_HALF_HD f16(float f) : bits(float_to_f16_bits(f)) {}
  LC_HALF_HD f16(double d) : bits(float_to_f16_bits(static_cast<float>(d))) {}
  LC_HALF_HD f16(int i) : bits(float_to_f16_bits(static_cast<float>(i))) {}
  LC_HALF_HD operator float() const { return f16_bits_to_float(bits); }
  static LC_HALF_HD f16 from_bits(uint16_t b) {
    f16 v;
    v.bits = b;
    return v;
  }
};
static_assert(sizeof(bf16) == 2 && sizeof(f16) == 2, "half types are 16 bits");

// The type an op computes in for storage type T (PyTorch's opmath_type): float for the halves.
template <typename T>
struct opmath {
  using type = T;
};
template <>
struct opmath<bf16> {
  using type = float;
};
template <>
struct opmath<f16> {
  using type = float;
};
template <typename T>
using opmath_t = typename opmath<T>::type;

template <typename T>
inline constexpr bool is_half_v = false;
template <>
inline constexpr bool is_half_v<bf16> = true;
template <>
inline constexpr bool is_half_v<f16> = true;

// The largest finite float16 (loading refuses what would overflow to infinity).
inline constexpr float kF16Max = 65504.0f;

}  // namespace lc
