// a ^ b with broadcasting and its gradients with torch's conventions at 0, as the CPU backend
// (src/cpu/pow.cpp). Halves compute in float and round once.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

__device__ __forceinline__ float d_pow(float a, float b) { return powf(a, b); }
__device__ __forceinline__ double d_pow(double a, double b) { return ::pow(a, b); }

template <typename T>
__global__ void pow_kernel(const T* a, Indexer ia, const T* b, Indexer ib, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = static_cast<T>(d_pow(ld(a[ia(i)]), ld(b[ib(i)])));
}

// da = dy * (b == 0 ? 0 : b a^(b-1)); db = dy * (a == 0 && b >= 0 ? 0 : a^b log a); either may be null.
template <typename T>
__global__ void pow_backward_kernel(const T* a, Indexer ia, const T* b, Indexer ib, const T* dy, T* da,
                                    T* db, int64_t n) {
  LC_GRID_STRIDE(i, n) {
    using A = opmath_t<T>;
    const A av = ld(a[ia(i)]), bv = ld(b[ib(i)]), g = ld(dy[i]);
    if (da) da[i] = static_cast<T>(bv == A(0) ? A(0) : g * bv * d_pow(av, bv - A(1)));
    if (db) db[i] = static_cast<T>(av == A(0) && bv >= A(0) ? A(0) : g * d_pow(av, bv) * d_log(av));
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::pow(const Tensor& a, const Tensor& b, const Tensor& out) {
  Guard g(c_);
  const int64_t n = out.numel();
  if (!n) return;
  auto ix = make_indexers(out.shape, {broadcast_strides(a.shape, out.shape), broadcast_strides(b.shape, out.shape)});
  dispatch_floating(out.dtype, "pow", [&](auto z) {
    using T = decltype(z);
    pow_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(a), ix[0], dp<T>(b), ix[1], dp<T>(out), n);
  });
  launched(c_, "pow");
}

void CudaBackend::pow_backward(const Tensor& a, const Tensor& b, const Tensor& dy, const Tensor* da,
                               const Tensor* db) {
  Guard g(c_);
  const int64_t n = dy.numel();
  if (!n) return;
  auto ix = make_indexers(dy.shape, {broadcast_strides(a.shape, dy.shape), broadcast_strides(b.shape, dy.shape)});
  dispatch_floating(dy.dtype, "pow backward", [&](auto z) {
    using T = decltype(z);
    pow_backward_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(a), ix[0], dp<T>(b), ix[1], dp<T>(dy),
                                                                     da ? dp<T>(*da) : nullptr,
                                                                     db ? dp<T>(*db) : nullptr, n);
  });
  launched(c_, "pow backward");
}

}  // namespace lc::cuda
