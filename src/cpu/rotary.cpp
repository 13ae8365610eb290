// Rotary position embedding on the CPU ("rotate half" layout): the forward
// map and its transpose, which is the backward. bfloat16/float16 x takes cos/sin
// tables in its own dtype or in float32 (the tables transformers computes in
// float32); the arithmetic is float, rounded once per element.
#include <string>
#include <type_traits>

#include "cpu_backend.h"

namespace lc {
namespace {
// With h = Dh / 2, per row:
//   forward:  out_j = x_j c_j - x_{j+h} s_j (j < h),       x_j c_j + x_{j-h} s_j (j >= h)
//   adjoint:  dx_j = g_j c_j + g_{j+h} s_{j+h} (j < h),   g_j c_j - g_{j-h} s_{j-h} (j >= h)
void rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, bool adjoint,
            const Tensor& out) {
  int64_t T_ = cos.shape[0], Dh = cos.shape[1], h = Dh / 2, R = x.numel() / Dh;
  const char* op = adjoint ? "rotary backward" : "rotary";
  dispatch_floating(x.dtype, op, [&](auto z) {
   using T = decltype(z);
   dispatch_floating(cos.dtype, op, [&](auto zc) {
    using C = decltype(zc);
    if constexpr (std::is_same_v<C, T> || (is_half_v<T> && std::is_same_v<C, float>)) {
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    const C* pc = cos.data<C>();
    const C* psn = sin.data<C>();
    T* po = out.data<T>();
    par_items(R, 2 * Dh, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * Dh;
        const C* c = pc + (r % T_) * Dh;
        const C* s = psn + (r % T_) * Dh;
        T* o = po + r * Dh;
        auto X = [&](int64_t j) { return M(xr[j]); };
        auto Cs = [&](int64_t j) { return M(c[j]); };
        auto Sn = [&](int64_t j) { return M(s[j]); };
        if (!adjoint) {
          for (int64_t j = 0; j < h; ++j) o[j] = T(X(j) * Cs(j) - X(j + h) * Sn(j));
          for (int64_t j = h; j < Dh; ++j) o[j] = T(X(j) * Cs(j) + X(j - h) * Sn(j));
        } else {
          for (int64_t j = 0; j < h; ++j) o[j] = T(X(j) * Cs(j) + X(j + h) * Sn(j + h));
          for (int64_t j = h; j < Dh; ++j) o[j] = T(X(j) * Cs(j) - X(j - h) * Sn(j - h));
        }
      }
    });
    } else {
      fail(std::string(op) + ": cos/sin are " + dtype_name(cos.dtype) + " for x of " +
           dtype_name(x.dtype));
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
