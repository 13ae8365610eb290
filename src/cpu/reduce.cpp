// Sums over broadcast dims (the gradient of a broadcast, bias gradients,
// sum/mean), accumulated in double in x's index order (halves too: read as
// float, rounded once into the output).
#include <vector>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::reduce_sum_to(const Tensor& x, const Tensor& out) {
  dispatch_floating(out.dtype, "sum", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    int64_t n = x.numel(), m = out.numel();
    // Accumulate in double: gradient sums over many rows lose little precision.
    if (m == 1) {
      double acc = 0;
      for (int64_t i = 0; i < n; ++i) acc += static_cast<double>(M(px[i]));
      po[0] = static_cast<T>(acc);
      return;
    }
    if (m == n) {
      // Nothing is summed; a sum still starts from +0, so -0 comes out as +0, as torch gives.
      for (int64_t i = 0; i < n; ++i) po[i] = T(M(0) + M(px[i]));
      return;
    }
    // Walk x with out's (broadcast) strides; out's dims are x's dims or 1.
    const std::vector<int64_t> st[1] = {broadcast_strides(out.shape, x.shape)};
    std::vector<double> acc(static_cast<size_t>(m), 0.0);
    for_each_bcast<1>(x.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                       const int64_t* ist) {
      if (!ist) {
        acc[off[0]] += static_cast<double>(M(px[base]));
        return;
      }
      for (int64_t i = 0; i < len; ++i) acc[off[0] + i * ist[0]] += static_cast<double>(M(px[base + i]));
    });
    for (int64_t i = 0; i < m; ++i) po[i] = static_cast<T>(acc[i]);
  });
}

}  // namespace lc
