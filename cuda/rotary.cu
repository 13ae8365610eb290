// Rotary position embedding on CUDA ("rotate half" layout): the forward map
// and its transpose, which is the backward.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

// With h = Dh / 2, per row of Dh at position t = row % Tn:
//   forward:  out_j = x_j c_j - x_{j+h} s_j (j < h),       x_j c_j + x_{j-h} s_j (j >= h)
//   adjoint:  dx_j = g_j c_j + g_{j+h} s_{j+h} (j < h),   g_j c_j - g_{j-h} s_{j-h} (j >= h)
template <typename T>
__global__ void rotary_kernel(const T* x, const T* cs, const T* sn, T* out, int64_t n, int64_t Tn,
                              int64_t Dh, bool adjoint) {
  const int64_t h = Dh / 2;
  LC_GRID_STRIDE(i, n) {
    const int64_t r = i / Dh, j = i - r * Dh;
    const T* xr = x + r * Dh;
    const T* c = cs + (r % Tn) * Dh;
    const T* s = sn + (r % Tn) * Dh;
    T o;
    if (!adjoint)
      o = j < h ? xr[j] * c[j] - xr[j + h] * s[j] : xr[j] * c[j] + xr[j - h] * s[j];
    else
      o = j < h ? xr[j] * c[j] + xr[j + h] * s[j + h] : xr[j] * c[j] - xr[j - h] * s[j - h];
    out[i] = o;
  }
}

}  // namespace

// ================================================================ methods

namespace {
// Both directions: the transpose (adjoint) of the map is its backward.
void rotary(Context& c, const Tensor& x, const Tensor& cos, const Tensor& sin, bool adjoint,
            const Tensor& out) {
  const int64_t Tn = cos.shape[0], Dh = cos.shape[1], n = x.numel();
  if (n == 0 || Tn == 0 || Dh == 0) return;
  const char* op = adjoint ? "rotary backward" : "rotary";
  dispatch_float(x.dtype, op, [&](auto z) {
    using T = decltype(z);
    rotary_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(dp<T>(x), dp<T>(cos), dp<T>(sin),
                                                              dp<T>(out), n, Tn, Dh, adjoint);
    launched(c, op);
  });
}
}  // namespace

void CudaBackend::rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                                 const Tensor& out) {
  Guard g(c_);
  rotary(c_, x, cos, sin, false, out);
}

void CudaBackend::rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin,
                                  const Tensor& dx) {
  Guard g(c_);
  rotary(c_, dy, cos, sin, true, dx);
}

}  // namespace lc::cuda
