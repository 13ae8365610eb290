// Helpers shared by the kernel files: strided indexing (broadcast and
// permuted reads), warp and block reductions, type-generic math, the
// float/double dispatch of the methods, and launch shapes.
//
// Half storage (bf16, f16 of src/half.h): a kernel on T reads its elements as
// opmath_t<T> (float for the halves, T itself for float and double), computes
// in it, and rounds once when it stores, as PyTorch's CUDA kernels do; for
// float and double the code is what it was, bit for bit.
#pragma once
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "../src/dispatch.h"
#include "../src/tensor.h"
#include "cuda_backend.h"
#include "indexer.h"
#include "runtime.h"

namespace lc::cuda {

constexpr int kThreads = 256;

#define LC_GRID_STRIDE(i, n)                                                          \
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += static_cast<int64_t>(blockDim.x) * gridDim.x)

// ---- reductions. Every thread of the warp / block gets the result.
template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
// blockDim.x must be a multiple of 32 (at most 1024); every thread must call it.
template <typename A>
__device__ A block_sum(A v) {
  __shared__ A part[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // the previous call's readers are done with `part`
  if (lane == 0) part[w] = v;
  __syncthreads();
  return warp_sum(lane < nw ? part[lane] : A(0));
}
template <typename A>
__device__ A block_max(A v) {
  __shared__ A part[32];
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) part[w] = v;
  __syncthreads();
  return warp_max(lane < nw ? part[lane] : A(-INFINITY));
}

// ---- math on float and double with the matching precision.
__device__ __forceinline__ float d_exp(float x) { return expf(x); }
__device__ __forceinline__ double d_exp(double x) { return exp(x); }
__device__ __forceinline__ float d_log(float x) { return logf(x); }
__device__ __forceinline__ double d_log(double x) { return log(x); }
__device__ __forceinline__ float d_erf(float x) { return erff(x); }
__device__ __forceinline__ double d_erf(double x) { return erf(x); }
__device__ __forceinline__ float d_tanh(float x) { return tanhf(x); }
__device__ __forceinline__ double d_tanh(double x) { return tanh(x); }
__device__ __forceinline__ float d_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double d_sqrt(double x) { return sqrt(x); }
__device__ __forceinline__ float d_abs(float x) { return fabsf(x); }
__device__ __forceinline__ double d_abs(double x) { return fabs(x); }
__device__ __forceinline__ bool d_finite(float x) { return isfinite(x); }
__device__ __forceinline__ bool d_finite(double x) { return isfinite(x); }

// ---- half storage. ld(x) is an element in its arithmetic type; scalars a
// launcher hands a kernel (alpha, a clamp bound) travel as opmath_t<T> too, so
// they are not rounded to the storage type first.
template <typename T>
__device__ __forceinline__ opmath_t<T> ld(T v) {
  return static_cast<opmath_t<T>>(v);
}

// Runs fn(W{}) with W an unsigned word of the dtype's size (2, 4 or 8 bytes):
// the kernels that only move elements (copies, gathers, masks) serve every dtype.
template <typename Fn>
void dispatch_word(DType t, Fn&& fn) {
  switch (dtype_size(t)) {
    case 8: fn(uint64_t{}); return;
    case 4: fn(uint32_t{}); return;
    default: fn(uint16_t{}); return;
  }
}

// Runs fn(T{}, S{}) for an op on data of dtype t that keeps a side tensor of
// dtype s (RMSNorm's rstd, the cross entropy's log-sum-exp and loss, rotary
// tables): s is t, or float32 beside half data (statistics kept in float).
template <typename Fn>
void dispatch_with_side(DType t, DType s, const char* op, const char* side, Fn&& fn) {
  dispatch_floating(t, op, [&](auto z) {
    using T = decltype(z);
    if (s == t) {
      fn(z, z);
      return;
    }
    if constexpr (is_half_v<T>) {
      if (s == DType::F32) {
        fn(z, float{});
        return;
      }
    }
    fail(std::string(op) + ": " + side + " must be " + dtype_name(t) +
         (is_half_v<T> ? " or float32" : "") + " beside " + dtype_name(t) + " data, got " +
         dtype_name(s));
  });
}

// ---- bad-input reports. A check kernel notes the flat index of the first bad
// element by atomicMin, so that the report names the lowest index (as the CPU
// does) whatever the order blocks run in; all ones means none.
__device__ __forceinline__ void note_bad(unsigned long long* first, int64_t n) {
  atomicMin(first, static_cast<unsigned long long>(n));
}

// A device word of 64 bits set to all ones, in scratch memory that `holder`
// keeps alive while the queued kernels use it (F64 storage is just its 8 bytes).
inline unsigned long long* first_bad_word(Context& c, Tensor& holder) {
  holder = scratch(c, {1}, DType::F64);
  auto* p = static_cast<unsigned long long*>(holder.raw());
  check(cudaMemsetAsync(p, 0xFF, sizeof(unsigned long long), c.stream), "cudaMemsetAsync");
  return p;
}

// Launch shape of a kernel with one block per row, its threads striding over
// the columns: enough threads for long rows, no idle warps for short ones; the
// blocks stride over rows past the grid.
inline int row_threads(int64_t cols) {
  return cols >= 2048 ? 256 : cols >= 512 ? 128 : cols >= 128 ? 64 : 32;
}
inline unsigned row_grid(int64_t rows) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(rows, 1 << 20)));
}
inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Typed device pointer of a tensor.
template <typename T>
inline T* dp(const Tensor& t) {
  return static_cast<T*>(t.raw());
}

}  // namespace lc::cuda
