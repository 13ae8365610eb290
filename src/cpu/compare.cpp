// Comparisons with broadcasting, giving int32 masks (1 true, 0 false), and where(cond, a, b):
// the mask ops behind eq/ne/lt/le/gt/ge, where and maskedFill. Any dtype.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "cpu_backend.h"

namespace lc {

namespace {
template <typename Fn>
void dispatch_any(DType t, Fn&& fn) {
  if (t == DType::I32) fn(int32_t{});
  else dispatch_floating(t, "compare", fn);
}

template <typename T>
inline int32_t apply_compare(CompareOp op, T a_, T b_) {
  // Halves compare as float (exactly).
  using M = std::conditional_t<std::is_same_v<T, int32_t>, int32_t, opmath_t<T>>;
  const M a = M(a_), b = M(b_);
  switch (op) {
    case CompareOp::Eq: return a == b;
    case CompareOp::Ne: return a != b;
    case CompareOp::Lt: return a < b;
    case CompareOp::Le: return a <= b;
    case CompareOp::Gt: return a > b;
    case CompareOp::Ge: return a >= b;
  }
  return 0;
}
}  // namespace

void CpuBackend::compare(CompareOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_any(a.dtype, [&](auto z) {
    using T = decltype(z);
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    int32_t* po = out.data<int32_t>();
    const std::vector<int64_t> st[2] = {broadcast_strides(a.shape, out.shape),
                                        broadcast_strides(b.shape, out.shape)};
    for_each_bcast<2>(out.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                         const int64_t* ist) {
      if (!ist) {
        po[base] = apply_compare(op, pa[off[0]], pb[off[1]]);
        return;
      }
      for (int64_t i = 0; i < len; ++i)
        po[base + i] = apply_compare(op, pa[off[0] + i * ist[0]], pb[off[1] + i * ist[1]]);
    });
  });
}

void CpuBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_any(out.dtype, [&](auto z) {
    using T = decltype(z);
    const int32_t* pc = cond.data<int32_t>();
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
    const std::vector<int64_t> st[3] = {broadcast_strides(cond.shape, out.shape),
                                        broadcast_strides(a.shape, out.shape),
                                        broadcast_strides(b.shape, out.shape)};
    for_each_bcast<3>(out.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                         const int64_t* ist) {
      if (!ist) {
        po[base] = pc[off[0]] ? pa[off[1]] : pb[off[2]];
        return;
      }
      for (int64_t i = 0; i < len; ++i)
        po[base + i] = pc[off[0] + i * ist[0]] ? pa[off[1] + i * ist[1]] : pb[off[2] + i * ist[2]];
    });
  });
}

}  // namespace lc
