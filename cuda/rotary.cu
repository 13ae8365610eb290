// Rotary position embedding on CUDA ("rotate half" layout): the forward map
// and its transpose, which is the backward. Half data computes in float and
// rounds once; the cos/sin tables are the data's dtype or float32.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

// With h = Dh / 2, per row of Dh at position t = row % Tn:
//   forward:  out_j = x_j c_j - x_{j+h} s_j (j < h),       x_j c_j + x_{j-h} s_j (j >= h)
//   adjoint:  dx_j = g_j c_j + g_{j+h} s_{j+h} (j < h),   g_j c_j - g_{j-h} s_{j-h} (j >= h)
template <typename T, typename C>
__global__ void rotary_kernel(const T* x, const C* cs, const C* sn, T* out, int64_t n, int64_t Tn,
                              int64_t Dh, bool adjoint) {
  using A = opmath_t<T>;
  const int64_t h = Dh / 2;
  LC_GRID_STRIDE(i, n) {
    const int64_t r = i / Dh, j = i - r * Dh;
    const T* xr = x + r * Dh;
    const C* c = cs + (r % Tn) * Dh;
    const C* s = sn + (r % Tn) * Dh;
    auto xv = [&](int64_t k) { return ld(xr[k]); };
    auto cv = [&](int64_t k) { return static_cast<A>(ld(c[k])); };
    auto sv = [&](int64_t k) { return static_cast<A>(ld(s[k])); };
    A o;
    if (!adjoint)
      o = j < h ? xv(j) * cv(j) - xv(j + h) * sv(j) : xv(j) * cv(j) + xv(j - h) * sv(j);
    else
      o = j < h ? xv(j) * cv(j) + xv(j + h) * sv(j + h) : xv(j) * cv(j) - xv(j - h) * sv(j - h);
    out[i] = static_cast<T>(o);
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
  LC_CHECK(cos.dtype == sin.dtype, std::string(op) + ": cos and sin must share a dtype");
  dispatch_with_side(x.dtype, cos.dtype, op, "cos/sin", [&](auto z, auto zc) {
    using T = decltype(z);
    using C = decltype(zc);
    rotary_kernel<T, C><<<grid_for(n), kThreads, 0, c.stream>>>(dp<T>(x), dp<C>(cos), dp<C>(sin),
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
