// clamp(x, lo, hi) and its gradient (1 inside [lo, hi], the boundary included), as the CPU
// backend (src/cpu/clamp.cpp).
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename T>
__global__ void clamp_kernel(const T* x, T lo, T hi, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) {
    const T v = x[i];
    const T up = v < lo ? lo : v;
    out[i] = isnan(v) ? v : up > hi ? hi : up;
  }
}

template <typename T>
__global__ void clamp_backward_kernel(const T* x, T lo, T hi, const T* dy, T* dx, int64_t n) {
  LC_GRID_STRIDE(i, n) dx[i] = x[i] >= lo && x[i] <= hi ? dy[i] : T(0);
}

}  // namespace

// ================================================================ methods

void CudaBackend::clamp(const Tensor& x, double lo, double hi, const Tensor& out) {
  Guard g(c_);
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_float(x.dtype, "clamp", [&](auto z) {
    using T = decltype(z);
    clamp_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(x), static_cast<T>(lo), static_cast<T>(hi),
                                                              dp<T>(out), n);
  });
  launched(c_, "clamp");
}

void CudaBackend::clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy, const Tensor& dx) {
  Guard g(c_);
  const int64_t n = dx.numel();
  if (!n) return;
  dispatch_float(x.dtype, "clamp backward", [&](auto z) {
    using T = decltype(z);
    clamp_backward_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(x), static_cast<T>(lo),
                                                                       static_cast<T>(hi), dp<T>(dy), dp<T>(dx), n);
  });
  launched(c_, "clamp backward");
}

}  // namespace lc::cuda
