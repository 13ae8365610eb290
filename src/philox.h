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

// Double arithmetic rounded once per operation on every device: nvcc would
// otherwise fuse a * b + c into an FMA and the CPU result would differ in the
// last bit. (The host side is compiled with -ffp-contract=off for the same
// reason.) With these, and IEEE division and square root on both sides, the
// normal and uniform draws below are bit-identical on the CPU and on CUDA.
#if defined(__CUDA_ARCH__)
#define LC_DMUL(a, b) __dmul_rn((a), (b))
#define LC_DADD(a, b) __dadd_rn((a), (b))
#define LC_DSUB(a, b) __dsub_rn((a), (b))
#define LC_DDIV(a, b) __ddiv_rn((a), (b))
#define LC_DSQRT(a) __dsqrt_rn(a)
LC_HD uint64_t lc_double_bits(double x) { return static_cast<uint64_t>(__double_as_longlong(x)); }
LC_HD double lc_bits_double(uint64_t b) { return __longlong_as_double(static_cast<long long>(b)); }
#else
#define LC_DMUL(a, b) ((a) * (b))
#define LC_DADD(a, b) ((a) + (b))
#define LC_DSUB(a, b) ((a) - (b))
#define LC_DDIV(a, b) ((a) / (b))
#define LC_DSQRT(a) std::sqrt(a)
inline uint64_t lc_double_bits(double x) {
  uint64_t b;
  __builtin_memcpy(&b, &x, sizeof b);
  return b;
}
inline double lc_bits_double(uint64_t b) {
  double x;
  __builtin_memcpy(&x, &b, sizeof x);
  return x;
}
#endif

// log(x) for x in [2^-32, 1]: x = m 2^e with m in (sqrt(1/2), sqrt(2)],
// log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its series to s^23
// (truncation below 1e-19). Accurate to about 1 ulp; the point is that it is
// the same sequence of correctly rounded operations on every device.
LC_HD double philox_log(double x) {
  uint64_t bits = lc_double_bits(x);
  int e = static_cast<int>((bits >> 52) & 0x7ff) - 1023;
  double m = lc_bits_double((bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL);  // [1, 2)
  if (m > 1.4142135623730951) {
    m = LC_DMUL(m, 0.5);
    e += 1;
  }
  double s = LC_DDIV(LC_DSUB(m, 1.0), LC_DADD(m, 1.0));
  double z = LC_DMUL(s, s);
  const double c[11] = {0.043478260869565216, 0.047619047619047616, 0.05263157894736842,
                        0.058823529411764705, 0.06666666666666667,  0.07692307692307693,
                        0.09090909090909091,  0.1111111111111111,   0.14285714285714285,
                        0.2,                  0.3333333333333333};  // 1/23, 1/21, ..., 1/3
  double p = c[0];
  for (int i = 1; i < 11; ++i) p = LC_DADD(LC_DMUL(p, z), c[i]);
  p = LC_DADD(LC_DMUL(p, z), 1.0);
  double ed = static_cast<double>(e);
  const double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  // e * ln2_hi is exact (ln2_hi has trailing zero bits and |e| <= 32).
  return LC_DADD(LC_DMUL(ed, ln2_hi), LC_DADD(LC_DMUL(LC_DMUL(2.0, s), p), LC_DMUL(ed, ln2_lo)));
}

// cos(2 pi u) for u = k / 2^32: 4u = q + r exactly with q an integer and
// |r| <= 1/2, so the angle reduces to theta = r pi / 2 in [-pi/4, pi/4] in one
// rounding; cos and sin of theta by Taylor series (truncation below 1e-19).
LC_HD double philox_cos_2pi(double u) {
  double t = LC_DMUL(u, 4.0);
  double q = static_cast<double>(static_cast<int64_t>(LC_DADD(t, 0.5)));  // t >= 0: floor
  double r = LC_DSUB(t, q);
  double th = LC_DMUL(r, 1.5707963267948966);
  double t2 = LC_DMUL(th, th);
  // 1/n! for even n (cos) and odd n (sin), highest first.
  const double ce[9] = {1.5619206968586225e-16, -4.779477332387385e-14, 1.1470745597729725e-11,
                        -2.08767569878681e-09,  2.755731922398589e-07,  -2.48015873015873e-05,
                        0.001388888888888889,   -0.041666666666666664,  0.5};
  const double so[9] = {2.8114572543455206e-15, -7.647163731819816e-13, 1.6059043836821613e-10,
                        -2.505210838544172e-08, 2.7557319223985893e-06, -0.0001984126984126984,
                        0.008333333333333333,   -0.16666666666666666,   1.0};
  double pc = ce[0];
  for (int i = 1; i < 9; ++i) pc = LC_DADD(LC_DMUL(pc, t2), ce[i]);
  double c = LC_DSUB(1.0, LC_DMUL(pc, t2));  // 1 - t2/2 + t2^2/24 - ...
  double ps = so[0];
  for (int i = 1; i < 9; ++i) ps = LC_DADD(LC_DMUL(ps, t2), so[i]);
  double sn = LC_DMUL(th, ps);
  switch (static_cast<int>(q) & 3) {
    case 0: return c;
    case 1: return -sn;
    case 2: return -c;
    default: return sn;
  }
}

// Standard normal by Box-Muller on two 32-bit words (u1 in (0, 1], so log is finite).
LC_HD double philox_normal(uint64_t seed, uint64_t offset, uint64_t index) {
  PhiloxOut o = philox4x32_10(seed, offset, index);
  double u1 = (static_cast<double>(o.v[0]) + 1.0) * (1.0 / 4294967296.0);  // exact
  double u2 = static_cast<double>(o.v[1]) * (1.0 / 4294967296.0);           // exact
  return LC_DMUL(LC_DSQRT(LC_DMUL(-2.0, philox_log(u1))), philox_cos_2pi(u2));
}

// Element `index` of random(kind): normal with mean a and std b, or uniform in [a, b).
LC_HD double philox_sample(bool normal, uint64_t seed, uint64_t offset, uint64_t index, double a,
                           double b) {
  return normal ? LC_DADD(a, LC_DMUL(b, philox_normal(seed, offset, index)))
                : LC_DADD(a, LC_DMUL(LC_DSUB(b, a), philox_uniform(seed, offset, index)));
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
