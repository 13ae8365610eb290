// The k largest (or smallest) elements along a dim, sorted, with their indices (torch.topk).
#include <algorithm>
#include <cmath>
#include <vector>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::topk(const Tensor& x, int64_t dim, int64_t k, bool largest, const Tensor& values,
                      const Tensor& indices) {
  const DimSplit ds = split_at_dim(x.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner;
  dispatch_floating(x.dtype, "topk", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;  // halves compare as float (exactly)
    const T* px = x.data<T>();
    T* pv = values.data<T>();
    int32_t* pi = indices.data<int32_t>();
    par_items(outer * inner, n * 8, [&](int64_t b, int64_t e) {
      std::vector<int64_t> order(static_cast<size_t>(n));
      for (int64_t c = b; c < e; ++c) {
        const int64_t o = c / inner, i = c % inner;
        const T* col = px + o * n * inner + i;
        for (int64_t j = 0; j < n; ++j) order[j] = j;
        // "a before b": a ranks higher; NaN above every number; equal values by index.
        auto before = [&](int64_t a, int64_t bb) {
          const M va = M(col[a * inner]), vb = M(col[bb * inner]);
          const bool na = std::isnan(va), nb = std::isnan(vb);
          if (na || nb) return largest ? (na && !nb) || (na && nb && a < bb) : (nb && !na) || (na && nb && a < bb);
          if (va != vb) return largest ? va > vb : va < vb;
          return a < bb;
        };
        std::partial_sort(order.begin(), order.begin() + k, order.end(), before);
        for (int64_t j = 0; j < k; ++j) {
          pv[(o * k + j) * inner + i] = col[order[j] * inner];
          pi[(o * k + j) * inner + i] = static_cast<int32_t>(order[j]);
        }
      }
    });
  });
}

}  // namespace lc
