// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3").
// Counter-based: the value for element i of one random call depends only on
// (seed, offset, i), so the CPU and CUDA backends draw identical numbers and a
// dropout mask can be regenerated in backward instead of stored.
// Header-only and host/device so the CUDA kernels share this exact code.
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define LC_HD __host__ __device__ __forceinline__
#else
#define LC_HD inline
#endif

namespace lc {

struct PhiloxOut {
  uint32_t v[4];
};

LC_HD PhiloxOut philox4x32_10(uint64_t seed, uint64_t offset, uint64_t index) {
  uint32_t c0 = static_cast<uint32_t>(index), c1 = static_cast<uint32_t>(index >> 32);
  uint32_t c2 = static_cast<uint32_t>(offset), c3 = static_cast<uint32_t>(offset >> 32);
  uint32_t k0 = static_cast<uint32_t>(seed), k1 = static_cast<uint32_t>(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
    uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
    uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  PhiloxOut o;
  o.v[0] = c0;
  o.v[1] = c1;
  o.v[2] = c2;
  o.v[3] = c3;
  return o;
}

// Uniform in [0, 1) with 53 random bits.
LC_HD double philox_uniform(uint64_t seed, uint64_t offset, uint64_t index) {
  PhiloxOut o = philox4x32_10(seed, offset, index);
  uint64_t bits = (static_cast<uint64_t>(o.v[0]) << 21) | (o.v[1] >> 11);
  return static_cast<double>(bits) * (1.0 / 9007199254740992.0);
}

// Standard normal by Box-Muller on two 32-bit words (u1 in (0, 1], so log is finite).
LC_HD double philox_normal(uint64_t seed, uint64_t offset, uint64_t index) {
  PhiloxOut o = philox4x32_10(seed, offset, index);
  double u1 = (static_cast<double>(o.v[0]) + 1.0) * (1.0 / 4294967296.0);
  double u2 = static_cast<double>(o.v[1]) * (1.0 / 4294967296.0);
  return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

// Dropout keeps element i when its 24-bit uniform draw is >= p. Comparing
// integers keeps the mask bit-identical across devices.
LC_HD uint32_t dropout_threshold(double p) {
  return static_cast<uint32_t>(ceil(p * 16777216.0));
}
LC_HD bool dropout_keep(uint64_t seed, uint64_t offset, uint64_t index, uint32_t threshold) {
  return (philox4x32_10(seed, offset, index).v[2] >> 8) >= threshold;
}

}  // namespace lc
