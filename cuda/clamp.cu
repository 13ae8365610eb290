// clamp(x, lo, hi) and its gradient (1 inside [lo, hi], the boundary included), as the CPU
// backend (src/cpu/clamp.cpp). Halves compare as float with float bounds.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename T>
__global__ void clamp_kernel(const T* x, opmath_t<T> lo, opmath_t<T> hi, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) {
    const opmath_t<T> v = ld(x[i]);
    const opmath_t<T> up = v < lo ? lo : v;
    out[i] = isnan(v) ? x[i] : static_cast<T>(up > hi ? hi : up);
  }
}

template <typename T>
__global__ void clamp_backward_kernel(const T* x, opmath_t<T> lo, opmath_t<T> hi, const T* dy, T* dx,
                                      int64_t n) {
  LC_GRID_STRIDE(i, n) dx[i] = ld(x[i]) >= lo && ld(x[i]) <= hi ? dy[i] : T(0);
}

}  // namespace

// ================================================================ methods

void CudaBackend::clamp(const Tensor& x, double lo, double hi, const Tensor& out) {
  Guard g(c_);
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_floating(x.dtype, "clamp", [&](auto z) {
    using T = decltype(z);
    using A = opmath_t<T>;
    clamp_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(x), static_cast<A>(lo), static_cast<A>(hi),
                                                              dp<T>(out), n);
  });
  launched(c_, "clamp");
}

void CudaBackend::clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy, const Tensor& dx) {
  Guard g(c_);
  const int64_t n = dx.numel();
  if (!n) return;
  dispatch_floating(x.dtype, "clamp backward", [&](auto z) {
    using T = decltype(z);
    using A = opmath_t<T>;
    clamp_backward_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(x), static_cast<A>(lo),
                                                                       static_cast<A>(hi), dp<T>(dy), dp<T>(dx), n);
  });
  launched(c_, "clamp backward");
}

}  // namespace lc::cuda
