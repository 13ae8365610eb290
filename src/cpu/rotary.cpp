// Rotary position embedding on the CPU ("rotate half" layout): the forward
// map and its transpose, which is the backward.
#include "cpu_backend.h"

namespace lc {
namespace {
// With h = Dh / 2, per row:
//   forward:  out_j = x_j c_j - x_{j+h} s_j (j < h),       x_j c_j + x_{j-h} s_j (j >= h)
//   adjoint:  dx_j = g_j c_j + g_{j+h} s_{j+h} (j < h),   g_j c_j - g_{j-h} s_{j-h} (j >= h)
void rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, bool adjoint,
            const Tensor& out) {
  int64_t T_ = cos.shape[0], Dh = cos.shape[1], h = Dh / 2, R = x.numel() / Dh;
  dispatch_float(x.dtype, adjoint ? "rotary backward" : "rotary", [&](auto z) {
    using T = decltype(z);
    const T* px = x.data<T>();
    const T* pc = cos.data<T>();
    const T* psn = sin.data<T>();
    T* po = out.data<T>();
    par_items(R, 2 * Dh, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * Dh;
        const T* c = pc + (r % T_) * Dh;
        const T* s = psn + (r % T_) * Dh;
        T* o = po + r * Dh;
        if (!adjoint) {
          for (int64_t j = 0; j < h; ++j) o[j] = xr[j] * c[j] - xr[j + h] * s[j];
          for (int64_t j = h; j < Dh; ++j) o[j] = xr[j] * c[j] + xr[j - h] * s[j];
        } else {
          for (int64_t j = 0; j < h; ++j) o[j] = xr[j] * c[j] + xr[j + h] * s[j + h];
          for (int64_t j = h; j < Dh; ++j) o[j] = xr[j] * c[j] - xr[j - h] * s[j - h];
        }
      }
    });
  });
}
}  // namespace

void CpuBackend::rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                                const Tensor& out) {
  rotary(x, cos, sin, false, out);
}

void CpuBackend::rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin,
                                 const Tensor& dx) {
  rotary(dy, cos, sin, true, dx);
}

}  // namespace lc
