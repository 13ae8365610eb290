// clamp(x, lo, hi) and its gradient (1 inside [lo, hi], the boundary included, 0 outside).
// Halves are compared with the bounds in float and the result rounded once.
#include <cmath>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::clamp(const Tensor& x, double lo, double hi, const Tensor& out) {
  dispatch_floating(x.dtype, "clamp", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    const M l = static_cast<M>(lo), h = static_cast<M>(hi);
    par(out.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        const M v = M(px[i]);
        // torch: min(max(x, lo), hi), so hi wins when lo > hi; NaN passes through.
        po[i] = T(std::isnan(v) ? v : (v < l ? l : v) > h ? h : (v < l ? l : v));
      }
    });
  });
}

void CpuBackend::clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy,
                                const Tensor& dx) {
  dispatch_floating(x.dtype, "clamp backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    const T* pg = dy.data<T>();
    T* pd = dx.data<T>();
    const M l = static_cast<M>(lo), h = static_cast<M>(hi);
    par(dx.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) pd[i] = M(px[i]) >= l && M(px[i]) <= h ? pg[i] : T(M(0));
    });
  });
}

}  // namespace lc
