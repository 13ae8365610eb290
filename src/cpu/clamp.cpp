// clamp(x, lo, hi) and its gradient (1 inside [lo, hi], the boundary included, 0 outside).
#include <cmath>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::clamp(const Tensor& x, double lo, double hi, const Tensor& out) {
  dispatch_float(x.dtype, "clamp", [&](auto z) {
    using T = decltype(z);
    const T* px = x.data<T>();
    T* po = out.data<T>();
    const T l = static_cast<T>(lo), h = static_cast<T>(hi);
    par(out.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) {
        const T v = px[i];
        // torch: min(max(x, lo), hi), so hi wins when lo > hi; NaN passes through.
        po[i] = std::isnan(v) ? v : (v < l ? l : v) > h ? h : (v < l ? l : v);
      }
    });
  });
}

void CpuBackend::clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy,
                                const Tensor& dx) {
  dispatch_float(x.dtype, "clamp backward", [&](auto z) {
    using T = decltype(z);
    const T* px = x.data<T>();
    const T* pg = dy.data<T>();
    T* pd = dx.data<T>();
    const T l = static_cast<T>(lo), h = static_cast<T>(hi);
    par(dx.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) pd[i] = px[i] >= l && px[i] <= h ? pg[i] : T(0);
    });
  });
}

}  // namespace lc
