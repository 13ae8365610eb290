// Adam / AdamW, element for element as torch.optim.Adam / AdamW (single-tensor path), and
// clip_grad_norm_ over every gradient in one call.
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::adam_step(const std::vector<AdamParam>& params, const AdamConfig& c) {
  for (const AdamParam& ap : params) {
    dispatch_float(ap.param.dtype, "adam", [&](auto z) {
      using T = decltype(z);
      T* p = ap.param.data<T>();
      const T* g = ap.grad.data<T>();
      T* m = ap.exp_avg.data<T>();
      T* v = ap.exp_avg_sq.data<T>();
      T* vmax = c.amsgrad ? ap.max_exp_avg_sq.data<T>() : nullptr;
      // Same operation order as torch.optim.Adam / AdamW (single-tensor path).
      double bc1 = 1.0 - std::pow(c.beta1, static_cast<double>(ap.step));
      double bc2 = 1.0 - std::pow(c.beta2, static_cast<double>(ap.step));
      T step_size = static_cast<T>(c.lr / bc1);
      T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
      T b1 = static_cast<T>(c.beta1), b2 = static_cast<T>(c.beta2);
      T omb1 = static_cast<T>(1.0 - c.beta1), omb2 = static_cast<T>(1.0 - c.beta2);
      T eps = static_cast<T>(c.eps), wd = static_cast<T>(c.weight_decay);
      T decay = static_cast<T>(1.0 - c.lr * c.weight_decay);
      // Adam adds wd * p to the gradient (L2); AdamW shrinks p first (decoupled).
      bool l2 = !c.decoupled && c.weight_decay != 0;
      bool shrink = c.decoupled && c.weight_decay != 0;
      par(ap.param.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) {
          T gi = g[i];
          if (shrink) p[i] = p[i] * decay;
          if (l2) gi = gi + wd * p[i];
          m[i] = m[i] * b1 + omb1 * gi;
          v[i] = v[i] * b2 + omb2 * gi * gi;
          T vv = v[i];
          if (vmax) {
            vmax[i] = std::max(vmax[i], vv);
            vv = vmax[i];
          }
          T denom = std::sqrt(vv) / bc2_sqrt + eps;
          p[i] = p[i] - step_size * (m[i] / denom);
        }
      });
    });
  }
}

void CpuBackend::clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm,
                                 bool skip_nonfinite, const Tensor& norm) {
  dispatch_float(norm.dtype, "clip grad norm", [&](auto z) {
    using T = decltype(z);
    // Sum of squares in double over fixed chunks, added in order: the same bits on any number
    // of threads.
    double total = 0;
    for (const Tensor& g : grads) {
      const T* d = g.data<T>();
      const int64_t n = g.numel(), chunks = (n + kGrain - 1) / kGrain;
      std::vector<double> part(static_cast<size_t>(chunks), 0.0);
      par_items(chunks, kGrain, [&](int64_t s, int64_t e) {
        for (int64_t c = s; c < e; ++c) {
          double acc = 0;
          const int64_t end = std::min(n, (c + 1) * kGrain);
          for (int64_t i = c * kGrain; i < end; ++i) acc += static_cast<double>(d[i]) * static_cast<double>(d[i]);
          part[static_cast<size_t>(c)] = acc;
        }
      });
      for (double p : part) total += p;
    }
    const T nrm = static_cast<T>(std::sqrt(total));
    norm.data<T>()[0] = nrm;
    if (skip_nonfinite && !std::isfinite(static_cast<double>(nrm))) return;
    // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1, in the grads' dtype;
    // a NaN norm scales by 1 (leaves the grads as they are).
    T coef = static_cast<T>(max_norm) / (nrm + static_cast<T>(1e-6));
    if (!(coef <= T(1))) coef = T(1);
    for (const Tensor& g : grads) {
      T* d = g.data<T>();
      par(g.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) d[i] = d[i] * coef;
      });
    }
  });
}

}  // namespace lc
