// Prefix sums along a dim (torch.cumsum), and suffix sums for its backward; accumulated in
// double, as torch's CPU kernel accumulates float in double (halves: read as float, each prefix
// rounded once).
#include "cpu_backend.h"

namespace lc {

void CpuBackend::cumsum(const Tensor& x, int64_t dim, bool reverse, const Tensor& out) {
  const DimSplit ds = split_at_dim(x.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner;
  dispatch_floating(x.dtype, "cumsum", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    par_items(outer * inner, n, [&](int64_t b, int64_t e) {
      for (int64_t c = b; c < e; ++c) {
        const int64_t base = (c / inner) * n * inner + c % inner;
        double acc = 0;
        for (int64_t s = 0; s < n; ++s) {
          const int64_t j = reverse ? n - 1 - s : s;
          acc += static_cast<double>(M(px[base + j * inner]));
          po[base + j * inner] = static_cast<T>(acc);
        }
      }
    });
  });
}

}  // namespace lc
