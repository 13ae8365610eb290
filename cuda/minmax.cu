// Max and min along a dim with the index of the first extreme, and the backward shared with
// topk (gradients put back at the chosen indices). The CPU backend (src/cpu/minmax.cpp) is the
// reference: ties keep the first index, a NaN wins (the first NaN's index). Halves compare as
// float (the pick is stored back unchanged); the backward adds in float and rounds per add.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

// Whether (v, j) replaces the current pick (best, at) of a max (or min); j < 0 marks no pick.
template <typename T>
__device__ __forceinline__ bool takes(bool is_max, T v, int64_t j, T best, int64_t at) {
  if (j < 0) return false;
  if (at < 0) return true;
  const bool nv = isnan(v), nb = isnan(best);
  if (nv != nb) return nv;
  if (!nv && v != best) return is_max ? v > best : v < best;
  return j < at;  // equal (or both NaN): the first index
}

// One thread per (outer, inner) column, walking n: columns with inner > 1 (neighbouring threads
// read neighbouring elements).
template <typename T>
__global__ void minmax_by_thread(const T* x, int64_t cols, int64_t n, int64_t inner, bool is_max,
                                 T* values, int32_t* indices) {
  LC_GRID_STRIDE(c, cols) {
    const T* col = x + (c / inner) * n * inner + c % inner;
    opmath_t<T> best = ld(col[0]);
    int64_t at = 0;
    for (int64_t j = 1; j < n; ++j)
      if (takes(is_max, ld(col[j * inner]), j, best, at)) {
        best = ld(col[j * inner]);
        at = j;
      }
    values[c] = col[at * inner];
    indices[c] = static_cast<int32_t>(at);
  }
}

// One block of kThreads per row (inner == 1: rows and the full reduction): strided picks, then a
// tree over shared memory.
template <typename T>
__global__ void minmax_by_block(const T* x, int64_t rows, int64_t n, bool is_max, T* values,
                                int32_t* indices) {
  using A = opmath_t<T>;
  __shared__ A sv[kThreads];
  __shared__ int64_t si[kThreads];
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* row = x + r * n;
    A best = A(0);
    int64_t at = -1;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
      if (takes(is_max, ld(row[j]), j, best, at)) {
        best = ld(row[j]);
        at = j;
      }
    __syncthreads();  // the previous row's readers are done
    sv[threadIdx.x] = best;
    si[threadIdx.x] = at;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
      if (threadIdx.x < s && takes(is_max, sv[threadIdx.x + s], si[threadIdx.x + s], sv[threadIdx.x], si[threadIdx.x])) {
        sv[threadIdx.x] = sv[threadIdx.x + s];
        si[threadIdx.x] = si[threadIdx.x + s];
      }
      __syncthreads();
    }
    if (threadIdx.x == 0) {
      values[r] = row[si[0]];
      indices[r] = static_cast<int32_t>(si[0]);
    }
  }
}

// dx (zeroed before) += dy at the indices: one thread per (outer, inner) column of dx, j
// ascending, so repeated indices add up in one order (no atomics).
template <typename T>
__global__ void index_dim_backward_kernel(const T* dy, const int32_t* idx, int64_t cols, int64_t n,
                                          int64_t k, int64_t inner, T* dx) {
  LC_GRID_STRIDE(c, cols) {
    const int64_t o = c / inner, i = c % inner;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t src = (o * k + j) * inner + i;
      const int64_t at = idx[src];
      if (at >= 0 && at < n) {  // from the forward: always in range
        T& d = dx[(o * n + at) * inner + i];
        d = static_cast<T>(ld(d) + ld(dy[src]));
      }
    }
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::minmax_dim(const Tensor& x, int64_t dim, bool is_max, const Tensor& values,
                             const Tensor& indices) {
  Guard g(c_);
  const DimSplit ds = split_at_dim(x.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner;
  const int64_t cols = outer * inner;
  if (!cols) return;
  const char* op = is_max ? "max" : "min";
  dispatch_floating(x.dtype, op, [&](auto z) {
    using T = decltype(z);
    if (inner == 1)
      minmax_by_block<T><<<row_grid(cols), kThreads, 0, c_.stream>>>(dp<T>(x), cols, n, is_max, dp<T>(values),
                                                                      dp<int32_t>(indices));
    else
      minmax_by_thread<T><<<grid_for(cols), kThreads, 0, c_.stream>>>(dp<T>(x), cols, n, inner, is_max,
                                                                       dp<T>(values), dp<int32_t>(indices));
  });
  launched(c_, op);
}

void CudaBackend::index_dim_backward(const Tensor& dy, const Tensor& indices, int64_t dim,
                                     const Tensor& dx) {
  Guard g(c_);
  const DimSplit ds = split_at_dim(dx.shape, dim);
  const int64_t outer = ds.outer, n = ds.n, inner = ds.inner;
  const int64_t k = dy.shape[dim], cols = outer * inner;
  fill(dx, 0.0);
  if (!cols || !k) return;
  dispatch_floating(dx.dtype, "index backward", [&](auto z) {
    using T = decltype(z);
    index_dim_backward_kernel<T><<<grid_for(cols), kThreads, 0, c_.stream>>>(
        dp<T>(dy), dp<int32_t>(indices), cols, n, k, inner, dp<T>(dx));
  });
  launched(c_, "index backward");
}

}  // namespace lc::cuda
