// Prefix sums along a dim (suffix sums for the backward), accumulated in double as on the CPU
// (src/cpu/cumsum.cpp): one thread per (outer, inner) column, in order, so both backends round
// alike (halves once per output, from the double sum).
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename T>
__global__ void cumsum_kernel(const T* x, int64_t cols, int64_t n, int64_t inner, bool reverse, T* out) {
  LC_GRID_STRIDE(c, cols) {
    const int64_t base = (c / inner) * n * inner + c % inner;
    double acc = 0;
    for (int64_t s = 0; s < n; ++s) {
      const int64_t j = reverse ? n - 1 - s : s;
      acc += static_cast<double>(x[base + j * inner]);
      out[base + j * inner] = static_cast<T>(acc);
    }
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::cumsum(const Tensor& x, int64_t dim, bool reverse, const Tensor& out) {
  Guard g(c_);
  const DimSplit ds = split_at_dim(x.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner;
  const int64_t cols = outer * inner;
  if (!cols || !n) return;
  dispatch_floating(x.dtype, "cumsum", [&](auto z) {
    using T = decltype(z);
    cumsum_kernel<T><<<grid_for(cols), kThreads, 0, c_.stream>>>(dp<T>(x), cols, n, inner, reverse, dp<T>(out));
  });
  launched(c_, "cumsum");
}

}  // namespace lc::cuda
