// a ^ b with broadcasting, and its gradients with torch's conventions: no gradient to the base
// where the exponent is 0, none to the exponent where the base is 0 and the exponent >= 0.
// Halves compute in float, rounded once on store.
#include <cmath>
#include <vector>

#include "cpu_backend.h"

namespace lc {

namespace {
template <typename T>
inline T grad_base(T a, T b, T g) {
  return b == T(0) ? T(0) : g * b * std::pow(a, b - T(1));
}
template <typename T>
inline T grad_exponent(T a, T b, T g) {
  return a == T(0) && b >= T(0) ? T(0) : g * std::pow(a, b) * std::log(a);
}
}  // namespace

void CpuBackend::pow(const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_floating(out.dtype, "pow", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
    const std::vector<int64_t> st[2] = {broadcast_strides(a.shape, out.shape),
                                        broadcast_strides(b.shape, out.shape)};
    for_each_bcast<2>(out.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                         const int64_t* ist) {
      if (!ist) {
        po[base] = T(std::pow(M(pa[off[0]]), M(pb[off[1]])));
        return;
      }
      for (int64_t i = 0; i < len; ++i)
        po[base + i] = T(std::pow(M(pa[off[0] + i * ist[0]]), M(pb[off[1] + i * ist[1]])));
    });
  });
}

void CpuBackend::pow_backward(const Tensor& a, const Tensor& b, const Tensor& dy, const Tensor* da,
                              const Tensor* db) {
  dispatch_floating(dy.dtype, "pow backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    const T* pg = dy.data<T>();
    T* pda = da ? da->data<T>() : nullptr;
    T* pdb = db ? db->data<T>() : nullptr;
    const std::vector<int64_t> st[2] = {broadcast_strides(a.shape, dy.shape),
                                        broadcast_strides(b.shape, dy.shape)};
    for_each_bcast<2>(dy.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                        const int64_t* ist) {
      const int64_t n = ist ? len : 1;
      for (int64_t i = 0; i < n; ++i) {
        const M av = M(pa[off[0] + (ist ? i * ist[0] : 0)]), bv = M(pb[off[1] + (ist ? i * ist[1] : 0)]);
        const M g = M(pg[base + i]);
        if (pda) pda[base + i] = T(grad_base(av, bv, g));
        if (pdb) pdb[base + i] = T(grad_exponent(av, bv, g));
      }
    });
  });
}

}  // namespace lc
