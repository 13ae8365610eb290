// Comparisons with broadcasting into int32 masks, and where(cond, a, b), any dtype; as the CPU
// backend (src/cpu/compare.cpp). Halves compare as float; where moves elements as words.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename T>
__device__ __forceinline__ int32_t apply_compare(int op, T a, T b) {
  switch (op) {
    case 0: return a == b;
    case 1: return a != b;
    case 2: return a < b;
    case 3: return a <= b;
    case 4: return a > b;
    default: return a >= b;  // 5; other codes are refused before any launch
  }
}

template <typename T>
__global__ void compare_kernel(int op, const T* a, Indexer ia, const T* b, Indexer ib, int32_t* out,
                               int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = apply_compare(op, ld(a[ia(i)]), ld(b[ib(i)]));
}

template <typename T>
__global__ void where_kernel(const int32_t* cond, Indexer ic, const T* a, Indexer ia, const T* b,
                             Indexer ib, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = cond[ic(i)] ? a[ia(i)] : b[ib(i)];
}

template <typename Fn>
void dispatch_any(DType t, const char* op, Fn&& fn) {
  if (t == DType::I32) fn(int32_t{});
  else dispatch_floating(t, op, fn);
}

}  // namespace

// ================================================================ methods

void CudaBackend::compare(CompareOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  Guard g(c_);
  const int64_t n = out.numel();
  if (!n) return;
  auto ix = make_indexers(out.shape, {broadcast_strides(a.shape, out.shape), broadcast_strides(b.shape, out.shape)});
  dispatch_any(a.dtype, "compare", [&](auto z) {
    using T = decltype(z);
    compare_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(static_cast<int>(op), dp<T>(a), ix[0], dp<T>(b),
                                                                ix[1], dp<int32_t>(out), n);
  });
  launched(c_, "compare");
}

void CudaBackend::where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) {
  Guard g(c_);
  const int64_t n = out.numel();
  if (!n) return;
  auto ix = make_indexers(out.shape, {broadcast_strides(cond.shape, out.shape), broadcast_strides(a.shape, out.shape),
                                      broadcast_strides(b.shape, out.shape)});
  dispatch_word(out.dtype, [&](auto z) {
    using T = decltype(z);
    where_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<int32_t>(cond), ix[0], dp<T>(a), ix[1], dp<T>(b),
                                                              ix[2], dp<T>(out), n);
  });
  launched(c_, "where");
}

}  // namespace lc::cuda
