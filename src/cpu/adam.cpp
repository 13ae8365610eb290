// Adam / AdamW, element for element as torch.optim.Adam / AdamW (single-tensor path), and
// clip_grad_norm_ over every gradient in one call. A bfloat16/float16 parameter keeps its state
// in its own dtype (as torch's zeros_like state) and is updated in float: each element's m, v
// and p are computed in float and rounded once.
#include <algorithm>
#include <cmath>
#include <vector>

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

void CpuBackend::clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm,
                                 bool skip_nonfinite, const Tensor& norm) {
  // Sum of squares in double over fixed chunks, added in order: the same bits on any number
  // of threads.
  double total = 0;
  for (const Tensor& g : grads) {
    dispatch_floating(g.dtype, "clip grad norm", [&](auto z) {
      using G = decltype(z);
      const G* d = g.data<G>();
      const int64_t n = g.numel(), chunks = (n + kGrain - 1) / kGrain;
      std::vector<double> part(static_cast<size_t>(chunks), 0.0);
      par_items(chunks, kGrain, [&](int64_t s, int64_t e) {
        for (int64_t c = s; c < e; ++c) {
          double acc = 0;
          const int64_t end = std::min(n, (c + 1) * kGrain);
          for (int64_t i = c * kGrain; i < end; ++i) {
            const double v = static_cast<double>(d[i]);
            acc += v * v;
          }
          part[static_cast<size_t>(c)] = acc;
        }
      });
      for (double p : part) total += p;
    });
  }
  // torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to 1, as tensor ops in the norm's
  // dtype (each rounded to it); a NaN norm scales by 1 (leaves the grads as they are).
  double coef = 1;
  bool finite = true;
  dispatch_floating(norm.dtype, "clip grad norm", [&](auto z) {
    using S = decltype(z);
    using A = opmath_t<S>;
    const S nrm = static_cast<S>(std::sqrt(total));
    norm.data<S>()[0] = nrm;
    finite = std::isfinite(static_cast<double>(nrm));
    const S denom = static_cast<S>(static_cast<A>(nrm) + static_cast<A>(1e-6));
    const S c = static_cast<S>(static_cast<A>(max_norm) / static_cast<A>(denom));
    if (static_cast<A>(c) <= A(1)) coef = static_cast<double>(c);
  });
  if (skip_nonfinite && !finite) return;
  // Each grad times the coefficient in its own arithmetic type, rounded once (torch's
  // _foreach_mul_ of a grad by a 0-d coefficient keeps the grad's dtype).
  for (const Tensor& g : grads) {
    dispatch_floating(g.dtype, "clip grad norm", [&](auto z) {
      using G = decltype(z);
      using A = opmath_t<G>;
      G* d = g.data<G>();
      const A c = static_cast<A>(coef);
      par(g.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) d[i] = static_cast<G>(static_cast<A>(d[i]) * c);
      });
    });
  }
}

}  // namespace lc
