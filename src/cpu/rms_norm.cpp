// RMSNorm on the CPU, as Hugging Face's LlamaRMSNorm; sums in double. For bfloat16/float16 x
// (and weight) the arithmetic is float, rstd is float32, and the forward rounds where
// LlamaRMSNorm does: (x * rstd) to x's dtype, then weight * that, rounded again.
#include <cmath>
#include <vector>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::rms_norm_forward(const Tensor& x, const Tensor* weight, double eps,
                                  const Tensor& y, const Tensor& rstd) {
  int64_t D = x.shape.back(), R = x.numel() / D;
  dispatch_floating(x.dtype, "rms norm", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    const T* w = weight ? weight->data<T>() : nullptr;
    T* py = y.data<T>();
    M* ps = rstd.data<M>();
    par_items(R, 3 * D, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * D;
        T* yr = py + r * D;
        double ss = 0;
        for (int64_t j = 0; j < D; ++j) ss += static_cast<double>(M(xr[j])) * M(xr[j]);
        M rs = static_cast<M>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
        ps[r] = rs;
        // weight * (x * rstd), in this order, as LlamaRMSNorm (T(...) is a no-op for float).
        if (w)
          for (int64_t j = 0; j < D; ++j) yr[j] = T(M(w[j]) * M(T(M(xr[j]) * rs)));
        else
          for (int64_t j = 0; j < D; ++j) yr[j] = T(M(xr[j]) * rs);
      }
    });
  });
}

void CpuBackend::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                                   const Tensor& rstd, const Tensor* dx, const Tensor* dweight) {
  int64_t D = x.shape.back(), R = x.numel() / D;
  dispatch_floating(x.dtype, "rms norm backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    const T* pg = dy.data<T>();
    const M* ps = rstd.data<M>();
    const T* w = weight ? weight->data<T>() : nullptr;
    if (dx) {
      // With g = dy * weight and r = rstd:
      //   dx_k = r g_k - r^3 x_k / D * sum_j g_j x_j
      T* pd = dx->data<T>();
      par_items(R, 4 * D, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* xr = px + r * D;
          const T* gr = pg + r * D;
          T* dr = pd + r * D;
          double dot = 0;
          if (w)
            for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(M(gr[j])) * M(w[j]) * M(xr[j]);
          else
            for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(M(gr[j])) * M(xr[j]);
          double rs = ps[r];
          M c = static_cast<M>(rs * rs * rs * dot / static_cast<double>(D));
          M rt = static_cast<M>(rs);
          if (w)
            for (int64_t j = 0; j < D; ++j) dr[j] = T(rt * (M(gr[j]) * M(w[j])) - c * M(xr[j]));
          else
            for (int64_t j = 0; j < D; ++j) dr[j] = T(rt * M(gr[j]) - c * M(xr[j]));
        }
      });
    }
    if (dweight) {
      // dweight_j = sum over rows of dy_j x_j r, in double; columns split over threads.
      T* pw = dweight->data<T>();
      par_items(D, R, [&](int64_t c0, int64_t c1) {
        std::vector<double> acc(static_cast<size_t>(c1 - c0), 0.0);
        for (int64_t r = 0; r < R; ++r) {
          const T* xr = px + r * D;
          const T* gr = pg + r * D;
          double rs = ps[r];
          for (int64_t j = c0; j < c1; ++j)
            acc[j - c0] += static_cast<double>(M(gr[j])) * (static_cast<double>(M(xr[j])) * rs);
        }
        for (int64_t j = c0; j < c1; ++j) pw[j] = static_cast<T>(acc[j - c0]);
      });
    }
  });
}

}  // namespace lc
