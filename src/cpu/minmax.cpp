// Max and min along a dim with the index of the first extreme (torch.max(dim) / argmax), and
// the backward shared with topk: gradients put back at the chosen indices. Halves compare as
// float (exactly) and their values are copied.
#include <cmath>
#include <string>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::minmax_dim(const Tensor& x, int64_t dim, bool is_max, const Tensor& values,
                            const Tensor& indices) {
  const DimSplit ds = split_at_dim(x.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner;
  dispatch_floating(x.dtype, is_max ? "max" : "min", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* pv = values.data<T>();
    int32_t* pi = indices.data<int32_t>();
    par_items(outer * inner, n, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const int64_t o = c / inner, i = c % inner;
        const T* col = px + o * n * inner + i;
        M best = M(col[0]);
        int64_t at = 0;
        if (!std::isnan(best)) {
          for (int64_t j = 1; j < n; ++j) {
            const M v = M(col[j * inner]);
            // Strictly better only: ties keep the first index. A NaN wins and ends the search.
            if (std::isnan(v) || (is_max ? v > best : v < best)) {
              best = v;
              at = j;
              if (std::isnan(v)) break;
            }
          }
        }
        pv[c] = col[at * inner];
        pi[c] = static_cast<int32_t>(at);
      }
    });
  });
}

void CpuBackend::index_dim_backward(const Tensor& dy, const Tensor& indices, int64_t dim,
                                    const Tensor& dx) {
  const DimSplit ds = split_at_dim(dx.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner, k = dy.shape[dim];
  dispatch_floating(dx.dtype, "index backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* pg = dy.data<T>();
    const int32_t* pi = indices.data<int32_t>();
    T* pd = dx.data<T>();
    std::fill_n(pd, dx.numel(), T(0));
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t j = 0; j < k; ++j)
        for (int64_t i = 0; i < inner; ++i) {
          const int64_t src = (o * k + j) * inner + i;
          // The indices come from the forward; checked anyway, dx being a fresh tensor.
          LC_CHECK(pi[src] >= 0 && pi[src] < n, "index backward: index " + std::to_string(pi[src]) +
                                                    " is out of range for a dim of " + std::to_string(n));
          T& d = pd[(o * n + pi[src]) * inner + i];
          d = T(M(d) + M(pg[src]));
        }
  });
}

}  // namespace lc
