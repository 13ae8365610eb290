// Adam / AdamW, element for element as torch.optim.Adam / AdamW (single-tensor path).
// A bfloat16/float16 parameter keeps its state in its own dtype (as torch's zeros_like state)
// and is updated in float: each element's m, v and p are computed in float and rounded once.
#include <algorithm>
#include <cmath>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::adam_step(const std::vector<AdamParam>& params, const AdamConfig& c) {
  for (const AdamParam& ap : params) {
    dispatch_floating(ap.param.dtype, "adam", [&](auto z) {
      using S = decltype(z);  // storage
      using T = opmath_t<S>;  // arithmetic
      S* p = ap.param.data<S>();
      const S* g = ap.grad.data<S>();
      S* m = ap.exp_avg.data<S>();
      S* v = ap.exp_avg_sq.data<S>();
      S* vmax = c.amsgrad ? ap.max_exp_avg_sq.data<S>() : nullptr;
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
          T gi = T(g[i]);
          T pi = T(p[i]);
          if (shrink) pi = pi * decay;
          if (l2) gi = gi + wd * pi;
          const T mi = T(m[i]) * b1 + omb1 * gi;
          const T vi = T(v[i]) * b2 + omb2 * gi * gi;
          m[i] = S(mi);
          v[i] = S(vi);
          T vv = vi;
          if (vmax) {
            vv = std::max(T(vmax[i]), vv);
            vmax[i] = S(vv);
          }
          T denom = std::sqrt(vv) / bc2_sqrt + eps;
          p[i] = S(pi - step_size * (mi / denom));
        }
      });
    });
  }
}

}  // namespace lc
