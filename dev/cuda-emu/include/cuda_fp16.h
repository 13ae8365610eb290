// The emulator's __half: IEEE binary16 storage with the conversions device code
// uses (round to nearest even, subnormals, overflow to infinity), enough for
// kernels that keep halves in memory and compute in float (mma.h's fragments).
#pragma once
#include <cstdint>
#include <cstring>

namespace emu {
inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_f32(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint16_t f32_to_f16(float f) {
  uint32_t x = f32_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  uint32_t o;
  if (x >= (127u + 16u) << 23) {
    o = x > 0x7f800000u ? 0x7e00u : 0x7c00u;
  } else if (x < (113u << 23)) {  // a subnormal half: the float add rounds
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    o = f32_bits(bits_f32(x) + bits_f32(magic)) - magic;
  } else {
    const uint32_t odd = (x >> 13) & 1u;
    x += (static_cast<uint32_t>(15 - 127) << 23) + 0xfffu + odd;
    o = x >> 13;
  }
  return static_cast<uint16_t>(o | sign);
}
inline float f16_to_f32(uint16_t h) {
  const uint32_t shifted_exp = 0x7c00u << 13;
  uint32_t o = (static_cast<uint32_t>(h) & 0x7fffu) << 13;
  const uint32_t exp = shifted_exp & o;
  o += (127u - 15u) << 23;
  if (exp == shifted_exp) {
    o += (128u - 16u) << 23;
  } else if (exp == 0) {
    o += 1u << 23;
    o = f32_bits(bits_f32(o) - bits_f32(113u << 23));
  }
  return bits_f32(o | ((static_cast<uint32_t>(h) & 0x8000u) << 16));
}
}  // namespace emu

struct __half {
  unsigned short __x;
  __half() = default;
  __half(float f) : __x(::emu::f32_to_f16(f)) {}
  operator float() const { return ::emu::f16_to_f32(__x); }
};
inline __half __float2half(float f) { return __half(f); }
inline __half __float2half_rn(float f) { return __half(f); }
inline float __half2float(__half h) { return static_cast<float>(h); }
inline unsigned short __half_as_ushort(__half h) { return h.__x; }
inline __half __ushort_as_half(unsigned short b) {
  __half h;
  h.__x = b;
  return h;
}
