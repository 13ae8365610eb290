// The k largest (or smallest) elements along a dim, sorted, with their indices. The CPU backend
// (src/cpu/topk.cpp) is the reference: equal values in index order, NaN above every number.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

// Whether element (va, a) ranks before (vb, b).
template <typename T>
__device__ __forceinline__ bool ranks_before(bool largest, T va, int64_t a, T vb, int64_t b) {
  const bool na = isnan(va), nb = isnan(vb);
  if (na || nb) {
    if (na && nb) return a < b;
    return largest ? na : nb;
  }
  if (va != vb) return largest ? va > vb : va < vb;
  return a < b;
}

// One thread per (outer, inner) column: an insertion into the column's k outputs for each of the
// n elements (k is small where topk is used: sampling, retrieval).
template <typename T>
__global__ void topk_kernel(const T* x, int64_t cols, int64_t n, int64_t k, int64_t inner, bool largest,
                            T* values, int32_t* indices) {
  LC_GRID_STRIDE(c, cols) {
    const int64_t o = c / inner, i = c % inner;
    const T* col = x + o * n * inner + i;
    T* vo = values + o * k * inner + i;
    int32_t* io = indices + o * k * inner + i;
    int64_t filled = 0;
    for (int64_t j = 0; j < n; ++j) {
      const T v = col[j * inner];
      if (filled == k && !ranks_before(largest, v, j, vo[(k - 1) * inner], io[(k - 1) * inner])) continue;
      int64_t p = filled < k ? filled++ : k - 1;
      while (p > 0 && ranks_before(largest, v, j, vo[(p - 1) * inner], io[(p - 1) * inner])) {
        vo[p * inner] = vo[(p - 1) * inner];
        io[p * inner] = io[(p - 1) * inner];
        --p;
      }
      vo[p * inner] = v;
      io[p * inner] = static_cast<int32_t>(j);
    }
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::topk(const Tensor& x, int64_t dim, int64_t k, bool largest, const Tensor& values,
                       const Tensor& indices) {
  Guard g(c_);
  int64_t outer = 1, inner = 1;
  for (int64_t d = 0; d < dim; ++d) outer *= x.shape[d];
  const int64_t n = x.shape[dim];
  for (size_t d = dim + 1; d < x.shape.size(); ++d) inner *= x.shape[d];
  const int64_t cols = outer * inner;
  if (!cols || !k) return;
  dispatch_float(x.dtype, "topk", [&](auto z) {
    using T = decltype(z);
    topk_kernel<T><<<grid_for(cols), kThreads, 0, c_.stream>>>(dp<T>(x), cols, n, k, inner, largest,
                                                                dp<T>(values), dp<int32_t>(indices));
  });
  launched(c_, "topk");
}

}  // namespace lc::cuda
