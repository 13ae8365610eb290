// See fast_f32.h. GCC vector extensions, one template per vector width W
// (bytes), instantiated under target attributes as builtin_gemm.cpp does.
#include "fast_f32.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "../parallel.h"
#include "gemm.h"
#include "vec_exp.h"

// The helpers below take and return vectors but are always inlined into their
// target-attributed callers, so no call crosses the ABI GCC warns about.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace lc {
namespace {

template <int W>
LC_INLINE double hsum(typename Vec<W>::F v) {
  double s = 0;
  for (int i = 0; i < Vec<W>::L; ++i) s += v[i];
  return s;
}

// Max and sum of exp(x - mx) over one row; the sum is kept in float per lane over
// blocks of 64 vectors and added into double, so no lane sums many terms in float.
template <int W>
LC_INLINE void row_lse(const float* row, int64_t C, bool want_sum_x, double& mx_out, double& s_out,
                       double& sum_x_out) {
  using F = typename Vec<W>::F;
  constexpr int L = Vec<W>::L;
  const float ninf = -std::numeric_limits<float>::infinity();
  F m = splat<W>(ninf);
  int64_t j = 0;
  for (; j + L <= C; j += L) {
    F v = load<W>(row + j);
    m = v > m ? v : m;
  }
  float mx = ninf;
  for (int i = 0; i < L; ++i) mx = std::max(mx, m[i]);
  bool nan = false;
  for (int64_t k = j; k < C; ++k) {
    mx = std::max(mx, row[k]);
    nan |= std::isnan(row[k]);
  }
  double s = 0, sx = 0;
  const F vm = splat<W>(mx);
  j = 0;
  while (j + L <= C) {
    F acc = splat<W>(0.f), accx = splat<W>(0.f);
    const int64_t end = std::min(C - L + 1, j + 64 * L);
    for (; j < end; j += L) {
      F v = load<W>(row + j);
      acc += vexp_shifted<W>(v - vm);
      if (want_sum_x) accx += v;
    }
    s += hsum<W>(acc);
    if (want_sum_x) sx += hsum<W>(accx);
  }
  for (; j < C; ++j) {
    s += std::exp(static_cast<double>(row[j]) - mx);
    sx += row[j];
  }
  // A NaN anywhere makes the row's loss NaN, as the plain loop's sum does.
  if (nan || std::isnan(s)) s = std::numeric_limits<double>::quiet_NaN();
  mx_out = mx;
  s_out = s;
  sum_x_out = sx;
}

template <int W>
LC_INLINE void forward_rows(const float* x, const int32_t* t, int64_t i0, int64_t i1, int64_t C,
                  int64_t ignore_index, double ls, float* lr, float* pl) {
  for (int64_t i = i0; i < i1; ++i) {
    const float* row = x + i * C;
    const int64_t ti = t[i];
    double mx, s, sum_x;
    row_lse<W>(row, C, ls > 0, mx, s, sum_x);
    const double l = mx + std::log(s);
    pl[i] = static_cast<float>(l);
    if (ti == ignore_index) {
      lr[i] = 0.f;
      continue;
    }
    const double nll = l - row[ti];
    const double smooth = ls > 0 ? l - sum_x / static_cast<double>(C) : 0.0;
    lr[i] = static_cast<float>(ls > 0 ? (1.0 - ls) * nll + ls * smooth : nll);
  }
}

template <int W>
LC_INLINE void backward_rows(const float* x, const float* pl, const int32_t* t, int64_t i0, int64_t i1,
                   int64_t C, int64_t ignore_index, double ls, const float* g, bool per_row,
                   double scale, float* d) {
  using F = typename Vec<W>::F;
  constexpr int L = Vec<W>::L;
  const double off = ls / static_cast<double>(C);
  for (int64_t i = i0; i < i1; ++i) {
    float* drow = d + i * C;
    if (t[i] == ignore_index) {
      std::fill_n(drow, C, 0.f);
      continue;
    }
    const double gs = scale * static_cast<double>(g[per_row ? i : 0]);
    const float* row = x + i * C;
    const F vl = splat<W>(pl[i]), vg = splat<W>(static_cast<float>(gs)),
            voff = splat<W>(static_cast<float>(gs * off));
    int64_t j = 0;
    for (; j + L <= C; j += L) store<W>(drow + j, vg * vexp_shifted<W>(load<W>(row + j) - vl) - voff);
    for (; j < C; ++j)
      drow[j] = static_cast<float>(gs * (std::exp(static_cast<double>(row[j]) - pl[i]) - off));
    const int64_t ti = t[i];
    if (ti < 0 || ti >= C) continue;  // checked by the forward; never written out of the row
    drow[ti] = static_cast<float>(gs * (std::exp(static_cast<double>(row[ti]) - pl[i]) - off - (1.0 - ls)));
  }
}

template <int W>
LC_INLINE double exp_shift_row(float* x, int64_t n, float m) {
  using F = typename Vec<W>::F;
  constexpr int L = Vec<W>::L;
  const F vm = splat<W>(m);
  F acc = splat<W>(0.f);
  double s = 0;
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    const F e = vexp_shifted<W>(load<W>(x + j) - vm);
    store<W>(x + j, e);
    acc += e;
    if ((j / L) % 64 == 63) {  // as row_lse: no lane sums more than 64 terms in float
      s += hsum<W>(acc);
      acc = splat<W>(0.f);
    }
  }
  s += hsum<W>(acc);
  for (; j < n; ++j) s += (x[j] = static_cast<float>(std::exp(static_cast<double>(x[j]) - m)));
  return s;
}

// Attention's softmax row in place (see softmax_row_f32). The max as the scalar loop takes it: a
// NaN first element gives NaN, later NaNs are passed over (x > NaN and NaN > m are both false).
template <int W>
LC_INLINE float softmax_row(float* x, int64_t n) {
  using F = typename Vec<W>::F;
  constexpr int L = Vec<W>::L;
  F vm = splat<W>(x[0]);
  int64_t j = 0;
  for (; j + L <= n; j += L) {
    const F v = load<W>(x + j);
    vm = v > vm ? v : vm;
  }
  float m = x[0];
  for (int l = 0; l < L; ++l) m = vm[l] > m ? vm[l] : m;
  for (; j < n; ++j) m = x[j] > m ? x[j] : m;
  const double sum = exp_shift_row<W>(x, n, m);
  const float inv = static_cast<float>(1.0 / sum);
  const F vi = splat<W>(inv);
  for (j = 0; j + L <= n; j += L) store<W>(x + j, load<W>(x + j) * vi);
  for (; j < n; ++j) x[j] *= inv;
  return static_cast<float>(static_cast<double>(m) + std::log(sum));
}

// Runs body(in, out, i) for each vector of [0, n), then once more on the last n % L elements
// copied into zero-padded arrays, so every element goes through the same vector formula wherever a
// caller's chunks begin and end (results never depend on the thread count). `in` and `out` list
// the arrays body reads and writes at offset i; for the tail they are the padded copies, at 0.
template <int W, int NI, int NO, typename Body>
LC_INLINE void each_vector(int64_t n, const float* const (&in)[NI], float* const (&out)[NO],
                           Body body) {
  constexpr int L = Vec<W>::L;
  int64_t i = 0;
  for (; i + L <= n; i += L) body(in, out, i);
  const int64_t r = n - i;
  if (r == 0) return;
  alignas(64) float ti[NI][L] = {}, to[NO][L] = {};
  const float* pi[NI];
  float* po[NO];
  for (int k = 0; k < NI; ++k) {
    std::memcpy(ti[k], in[k] + i, size_t(r) * sizeof(float));
    pi[k] = ti[k];
  }
  for (int k = 0; k < NO; ++k) po[k] = to[k];
  body(pi, po, 0);
  for (int k = 0; k < NO; ++k) std::memcpy(out[k] + i, to[k], size_t(r) * sizeof(float));
}

// SiLU and its derivative factor on one vector: silu = v / (1 + e^-v), and
// dsilu = s (1 + v (1 - s)) with s = 1 / (1 + e^-v). The fused SwiGLU below uses the same two
// expressions, so it gives the bits of SiLU followed by a product.
template <int W>
LC_INLINE typename Vec<W>::F silu_v(typename Vec<W>::F v) {
  return v / (splat<W>(1.f) + vexp<W>(-v));
}
template <int W>
LC_INLINE typename Vec<W>::F dsilu_v(typename Vec<W>::F v) {
  const auto one = splat<W>(1.f);
  const auto s = one / (one + vexp<W>(-v));
  return s * (one + v * (one - s));
}

template <int W>
LC_INLINE void silu_rows(const float* x, float* y, int64_t n) {
  each_vector<W, 1, 1>(n, {x}, {y}, [](const float* const* a, float* const* o, int64_t i) {
    store<W>(o[0] + i, silu_v<W>(load<W>(a[0] + i)));
  });
}

template <int W>
LC_INLINE void silu_backward_rows(const float* x, const float* dy, float* dx, int64_t n) {
  each_vector<W, 2, 1>(n, {x, dy}, {dx}, [](const float* const* a, float* const* o, int64_t i) {
    store<W>(o[0] + i, load<W>(a[1] + i) * dsilu_v<W>(load<W>(a[0] + i)));
  });
}

// y = silu(g) u; backward: du = dy silu(g), dg = (dy u) dsilu(g), each product rounded to float
// as the separate SiLU and multiply round it.
template <int W>
LC_INLINE void swiglu_rows(const float* g, const float* u, float* y, int64_t n) {
  each_vector<W, 2, 1>(n, {g, u}, {y}, [](const float* const* a, float* const* o, int64_t i) {
    const auto s = silu_v<W>(load<W>(a[0] + i));
    store<W>(o[0] + i, s * load<W>(a[1] + i));
  });
}

template <int W>
LC_INLINE void swiglu_backward_rows(const float* g, const float* u, const float* dy, float* dg,
                                    float* du, int64_t n) {
  each_vector<W, 3, 2>(n, {g, u, dy}, {dg, du},
                       [](const float* const* a, float* const* o, int64_t i) {
                         const auto v = load<W>(a[0] + i), d = load<W>(a[2] + i);
                         store<W>(o[1] + i, d * silu_v<W>(v));
                         const auto dyu = d * load<W>(a[1] + i);
                         store<W>(o[0] + i, dyu * dsilu_v<W>(v));
                       });
}

#if defined(__x86_64__) && defined(__GNUC__)
#define LC_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define LC_AVX2 __attribute__((target("avx2,fma")))
LC_AVX512 void fwd_avx512(const float* x, const int32_t* t, int64_t i0, int64_t i1, int64_t C,
                          int64_t ii, double ls, float* lr, float* pl) {
  forward_rows<64>(x, t, i0, i1, C, ii, ls, lr, pl);
}
LC_AVX2 void fwd_avx2(const float* x, const int32_t* t, int64_t i0, int64_t i1, int64_t C,
                      int64_t ii, double ls, float* lr, float* pl) {
  forward_rows<32>(x, t, i0, i1, C, ii, ls, lr, pl);
}
LC_AVX512 void bwd_avx512(const float* x, const float* pl, const int32_t* t, int64_t i0,
                          int64_t i1, int64_t C, int64_t ii, double ls, const float* g,
                          bool per_row, double scale, float* d) {
  backward_rows<64>(x, pl, t, i0, i1, C, ii, ls, g, per_row, scale, d);
}
LC_AVX2 void bwd_avx2(const float* x, const float* pl, const int32_t* t, int64_t i0, int64_t i1,
                      int64_t C, int64_t ii, double ls, const float* g, bool per_row,
                      double scale, float* d) {
  backward_rows<32>(x, pl, t, i0, i1, C, ii, ls, g, per_row, scale, d);
}
LC_AVX512 void silu_avx512(const float* x, float* y, int64_t n) { silu_rows<64>(x, y, n); }
LC_AVX2 void silu_avx2(const float* x, float* y, int64_t n) { silu_rows<32>(x, y, n); }
LC_AVX512 void silu_bwd_avx512(const float* x, const float* dy, float* dx, int64_t n) {
  silu_backward_rows<64>(x, dy, dx, n);
}
LC_AVX2 void silu_bwd_avx2(const float* x, const float* dy, float* dx, int64_t n) {
  silu_backward_rows<32>(x, dy, dx, n);
}
LC_AVX512 void swiglu_avx512(const float* g, const float* u, float* y, int64_t n) {
  swiglu_rows<64>(g, u, y, n);
}
LC_AVX2 void swiglu_avx2(const float* g, const float* u, float* y, int64_t n) {
  swiglu_rows<32>(g, u, y, n);
}
LC_AVX512 void swiglu_bwd_avx512(const float* g, const float* u, const float* dy, float* dg,
                                 float* du, int64_t n) {
  swiglu_backward_rows<64>(g, u, dy, dg, du, n);
}
LC_AVX2 void swiglu_bwd_avx2(const float* g, const float* u, const float* dy, float* dg, float* du,
                             int64_t n) {
  swiglu_backward_rows<32>(g, u, dy, dg, du, n);
}
LC_AVX512 float softmax_row_avx512(float* x, int64_t n) { return softmax_row<64>(x, n); }
LC_AVX2 float softmax_row_avx2(float* x, int64_t n) { return softmax_row<32>(x, n); }
LC_AVX512 double exp_shift_avx512(float* x, int64_t n, float m) { return exp_shift_row<64>(x, n, m); }
LC_AVX2 double exp_shift_avx2(float* x, int64_t n, float m) { return exp_shift_row<32>(x, n, m); }
#endif

// Rows per chunk: about 64K logits, so small batches stay on one thread.
int64_t row_grain(int64_t C) { return std::max<int64_t>(1, (int64_t(1) << 16) / std::max<int64_t>(C, 1)); }

}  // namespace

int64_t cross_entropy_forward_f32(const float* x, const int32_t* t, int64_t N, int64_t C,
                                  int64_t ignore_index, double ls, float* loss_rows, float* lse) {
  for (int64_t i = 0; i < N; ++i)
    if (t[i] != ignore_index && (t[i] < 0 || t[i] >= C)) return i;
  const CpuKernels isa = cpu_kernels();
  parallel_for(N, row_grain(C), [&](int64_t i0, int64_t i1) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == CpuKernels::Avx512) return fwd_avx512(x, t, i0, i1, C, ignore_index, ls, loss_rows, lse);
    if (isa == CpuKernels::Avx2) return fwd_avx2(x, t, i0, i1, C, ignore_index, ls, loss_rows, lse);
#endif
    (void)isa;
    forward_rows<16>(x, t, i0, i1, C, ignore_index, ls, loss_rows, lse);
  });
  return -1;
}

void cross_entropy_backward_f32(const float* x, const float* lse, const int32_t* t, int64_t N,
                                int64_t C, int64_t ignore_index, double ls, const float* g,
                                bool per_row, double scale, float* d) {
  const CpuKernels isa = cpu_kernels();
  parallel_for(N, row_grain(C), [&](int64_t i0, int64_t i1) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (isa == CpuKernels::Avx512)
      return bwd_avx512(x, lse, t, i0, i1, C, ignore_index, ls, g, per_row, scale, d);
    if (isa == CpuKernels::Avx2)
      return bwd_avx2(x, lse, t, i0, i1, C, ignore_index, ls, g, per_row, scale, d);
#endif
    (void)isa;
    backward_rows<16>(x, lse, t, i0, i1, C, ignore_index, ls, g, per_row, scale, d);
  });
}

double exp_shift_f32(float* x, int64_t n, float m) {
#if defined(__x86_64__) && defined(__GNUC__)
  const CpuKernels isa = cpu_kernels();
  if (isa == CpuKernels::Avx512) return exp_shift_avx512(x, n, m);
  if (isa == CpuKernels::Avx2) return exp_shift_avx2(x, n, m);
#endif
  return exp_shift_row<16>(x, n, m);
}

void silu_f32(const float* x, float* y, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  const CpuKernels isa = cpu_kernels();
  if (isa == CpuKernels::Avx512) return silu_avx512(x, y, n);
  if (isa == CpuKernels::Avx2) return silu_avx2(x, y, n);
#endif
  silu_rows<16>(x, y, n);
}

void silu_backward_f32(const float* x, const float* dy, float* dx, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  const CpuKernels isa = cpu_kernels();
  if (isa == CpuKernels::Avx512) return silu_bwd_avx512(x, dy, dx, n);
  if (isa == CpuKernels::Avx2) return silu_bwd_avx2(x, dy, dx, n);
#endif
  silu_backward_rows<16>(x, dy, dx, n);
}

void swiglu_f32(const float* g, const float* u, float* y, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  const CpuKernels isa = cpu_kernels();
  if (isa == CpuKernels::Avx512) return swiglu_avx512(g, u, y, n);
  if (isa == CpuKernels::Avx2) return swiglu_avx2(g, u, y, n);
#endif
  swiglu_rows<16>(g, u, y, n);
}

void swiglu_backward_f32(const float* g, const float* u, const float* dy, float* dg, float* du,
                         int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  const CpuKernels isa = cpu_kernels();
  if (isa == CpuKernels::Avx512) return swiglu_bwd_avx512(g, u, dy, dg, du, n);
  if (isa == CpuKernels::Avx2) return swiglu_bwd_avx2(g, u, dy, dg, du, n);
#endif
  swiglu_backward_rows<16>(g, u, dy, dg, du, n);
}

float softmax_row_f32(float* x, int64_t n) {
#if defined(__x86_64__) && defined(__GNUC__)
  const CpuKernels isa = cpu_kernels();
  if (isa == CpuKernels::Avx512) return softmax_row_avx512(x, n);
  if (isa == CpuKernels::Avx2) return softmax_row_avx2(x, n);
#endif
  return softmax_row<16>(x, n);
}

}  // namespace lc
