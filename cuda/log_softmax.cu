// Log-softmax over the last dim and its backward: one block per row, its threads striding over
// the columns, sums in double as on the CPU (src/cpu/log_softmax.cpp); halves read as float and
// round once on store.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename T>
__global__ void log_softmax_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* r = x + row * cols;
    T* o = y + row * cols;
    opmath_t<T> mx = -INFINITY;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = max(mx, ld(r[j]));
    mx = block_max(mx);
    double s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
      s += exp(static_cast<double>(r[j]) - static_cast<double>(mx));
    s = block_sum(s);
    const double lse = static_cast<double>(mx) + log(s);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) o[j] = static_cast<T>(static_cast<double>(r[j]) - lse);
  }
}

// dx = dy - exp(y) * sum_j dy_j per row (set).
template <typename T>
__global__ void log_softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* yr = y + row * cols;
    const T* gr = dy + row * cols;
    T* dr = dx + row * cols;
    double s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(gr[j]);
    s = block_sum(s);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
      dr[j] = static_cast<T>(static_cast<double>(gr[j]) - exp(static_cast<double>(yr[j])) * s);
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::log_softmax(const Tensor& x, const Tensor& y) {
  Guard g(c_);
  const int64_t cols = x.shape.back(), rows = cols ? x.numel() / cols : 0;
  if (!rows) return;
  dispatch_floating(x.dtype, "log softmax", [&](auto z) {
    using T = decltype(z);
    log_softmax_kernel<T><<<row_grid(rows), row_threads(cols), 0, c_.stream>>>(dp<T>(x), dp<T>(y), rows, cols);
  });
  launched(c_, "log softmax");
}

void CudaBackend::log_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  Guard g(c_);
  const int64_t cols = y.shape.back(), rows = cols ? y.numel() / cols : 0;
  if (!rows) return;
  dispatch_floating(y.dtype, "log softmax backward", [&](auto z) {
    using T = decltype(z);
    log_softmax_backward_kernel<T><<<row_grid(rows), row_threads(cols), 0, c_.stream>>>(dp<T>(y), dp<T>(dy),
                                                                                         dp<T>(dx), rows, cols);
  });
  launched(c_, "log softmax backward");
}

}  // namespace lc::cuda
