// The k largest (or smallest) elements along a dim, sorted, with their indices. The CPU backend
// (src/cpu/topk.cpp) is the reference: equal values in index order, NaN above every number.
// Halves compare as float; the values are copied unchanged.
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

// One block per (outer, inner) column, its threads striding over the column's n elements: each
// element counts the elements that rank before it (stopping at k) and, when fewer than k do,
// writes itself at that rank. The ranking is a strict order (ties by index), so every rank below
// k is written exactly once, with no atomics. An element outside the top k stops counting at k,
// so a column costs about n * k comparisons in all, spread over the block.
template <typename T>
__global__ void topk_kernel(const T* x, int64_t cols, int64_t n, int64_t k, int64_t inner, bool largest,
                            T* values, int32_t* indices) {
  for (int64_t c = blockIdx.x; c < cols; c += gridDim.x) {
    const int64_t o = c / inner, i = c % inner;
    const T* col = x + o * n * inner + i;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const opmath_t<T> v = ld(col[j * inner]);
      int64_t rank = 0;
      for (int64_t m = 0; m < n && rank < k; ++m)
        if (m != j && ranks_before(largest, ld(col[m * inner]), m, v, j)) ++rank;
      if (rank < k) {
        values[(o * k + rank) * inner + i] = col[j * inner];
        indices[(o * k + rank) * inner + i] = static_cast<int32_t>(j);
      }
    }
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::topk(const Tensor& x, int64_t dim, int64_t k, bool largest, const Tensor& values,
                       const Tensor& indices) {
  Guard g(c_);
  const DimSplit ds = split_at_dim(x.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner;
  const int64_t cols = outer * inner;
  if (!cols || !k) return;
  dispatch_floating(x.dtype, "topk", [&](auto z) {
    using T = decltype(z);
    topk_kernel<T><<<row_grid(cols), row_threads(n), 0, c_.stream>>>(dp<T>(x), cols, n, k, inner, largest,
                                                                dp<T>(values), dp<int32_t>(indices));
  });
  launched(c_, "topk");
}

}  // namespace lc::cuda
