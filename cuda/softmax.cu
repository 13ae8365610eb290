// Row-wise ops over the last dim: softmax and its backward, and the fused
// cross entropy (log-softmax and NLL with ignore index and label smoothing).
// One block per row, its threads striding over the columns; sums in double
// as on the CPU.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename T>
__global__ void softmax_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* r = x + row * cols;
    T* o = y + row * cols;
    T mx = T(-INFINITY);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = max(mx, r[j]);
    mx = block_max(mx);
    double s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(d_exp(r[j] - mx));
    s = block_sum(s);
    const T inv = static_cast<T>(1.0 / s);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) o[j] = d_exp(r[j] - mx) * inv;
  }
}

// dx = y * (dy - sum_j dy_j y_j) per row (set).
template <typename T>
__global__ void softmax_backward_kernel(const T* y, const T* dy, T* dx, int64_t rows, int64_t cols) {
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* yr = y + row * cols;
    const T* gr = dy + row * cols;
    T* dr = dx + row * cols;
    double dot = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
      dot += static_cast<double>(gr[j]) * static_cast<double>(yr[j]);
    const T d = static_cast<T>(block_sum(dot));
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dr[j] = yr[j] * (gr[j] - d);
  }
}

// Online softmax state of a row part: running max m and sum s of exp(x - m).
template <typename A>
struct OnlineLse {
  A m, s;
};

// Two parts merged: the larger max, each sum rescaled to it (parts that saw only -inf add 0).
template <typename A>
__device__ __forceinline__ OnlineLse<A> merge(OnlineLse<A> a, OnlineLse<A> b) {
  const A m = max(a.m, b.m);
  if (m == -INFINITY) return {m, A(0)};
  return {m, a.s * d_exp(a.m - m) + b.s * d_exp(b.m - m)};
}

// Every thread gets the merge over the block (blockDim.x a multiple of 32).
template <typename A>
__device__ OnlineLse<A> block_merge(OnlineLse<A> v) {
  __shared__ A pm[32];
  __shared__ A ps[32];
  for (int o = 16; o > 0; o >>= 1) v = merge(v, OnlineLse<A>{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;
  __syncthreads();  // the previous call's readers are done with pm, ps
  if (lane == 0) {
    pm[w] = v.m;
    ps[w] = v.s;
  }
  __syncthreads();
  v = lane < nw ? OnlineLse<A>{pm[lane], ps[lane]} : OnlineLse<A>{A(-INFINITY), A(0)};
  for (int o = 16; o > 0; o >>= 1) v = merge(v, OnlineLse<A>{__shfl_xor_sync(0xffffffffu, v.m, o), __shfl_xor_sync(0xffffffffu, v.s, o)});
  return v;
}

// One pass over each row (online softmax: the max and the sum of exponentials together), in the
// logits' own precision: float32 rows accumulate in float, as a GPU softmax does.
template <typename T>
__global__ void cross_entropy_forward_kernel(const T* logits, const int32_t* targets, int64_t N,
                                             int64_t C, int64_t ignore, double ls, T* loss_rows,
                                             T* lse, DeviceError* err) {
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const T* row = logits + i * C;
    const int64_t ti = targets[i];
    const bool ignored = ti == ignore;
    const bool bad = !ignored && (ti < 0 || ti >= C);
    OnlineLse<T> st{T(-INFINITY), T(0)};
    T sum_x = 0;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      const T v = row[j];
      if (v > st.m) {
        st.s = (st.m == T(-INFINITY) ? T(0) : st.s * d_exp(st.m - v)) + T(1);
        st.m = v;
      } else if (st.m != T(-INFINITY)) {
        st.s += d_exp(v - st.m);
      }
      sum_x += v;
    }
    st = block_merge(st);
    sum_x = block_sum(sum_x);
    if (threadIdx.x != 0) continue;
    const T l = st.m + d_log(st.s);
    lse[i] = l;
    if (bad) {
      if (atomicCAS(&err->code, 0, kErrCrossEntropyTarget) == 0) {
        err->a = ti;
        err->b = i;
        err->c = C;
      }
      loss_rows[i] = T(0);
      continue;
    }
    if (ignored) {
      loss_rows[i] = T(0);
      continue;
    }
    const T nll = l - row[ti];
    const T smooth = l - sum_x / static_cast<T>(C);
    loss_rows[i] = static_cast<T>(1.0 - ls) * nll + static_cast<T>(ls) * smooth;
  }
}

// dlogits (set) = grad * scale * (softmax - smoothed one-hot); 0 for ignored rows. In the
// logits' precision, as the forward.
template <typename T>
__global__ void cross_entropy_backward_kernel(const T* logits, const T* lse, const int32_t* targets,
                                              int64_t N, int64_t C, int64_t ignore, double ls,
                                              const T* grad, bool per_row, double grad_scale,
                                              T* dlogits) {
  const T off = static_cast<T>(ls / static_cast<double>(C));
  const T hit = static_cast<T>(1.0 - ls);
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    T* drow = dlogits + i * C;
    const int64_t ti = targets[i];
    if (ti == ignore) {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) drow[j] = T(0);
      continue;
    }
    const T* row = logits + i * C;
    const T gs = static_cast<T>(grad_scale * static_cast<double>(grad[per_row ? i : 0]));
    const T l = lse[i];
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      const T target = off + (j == ti ? hit : T(0));
      drow[j] = gs * (d_exp(row[j] - l) - target);
    }
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::softmax(const Tensor& x, const Tensor& y) {
  Guard g(c_);
  const int64_t cols = x.shape.back(), rows = cols ? x.numel() / cols : 0;
  if (!rows || !cols) return;
  dispatch_float(x.dtype, "softmax", [&](auto z) {
    using T = decltype(z);
    softmax_kernel<T><<<row_grid(rows), row_threads(cols), 0, c_.stream>>>(dp<T>(x), dp<T>(y), rows, cols);
  });
  launched(c_, "softmax");
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  Guard g(c_);
  const int64_t cols = y.shape.back(), rows = cols ? y.numel() / cols : 0;
  if (!rows || !cols) return;
  dispatch_float(y.dtype, "softmax backward", [&](auto z) {
    using T = decltype(z);
    softmax_backward_kernel<T><<<row_grid(rows), row_threads(cols), 0, c_.stream>>>(
        dp<T>(y), dp<T>(dy), dp<T>(dx), rows, cols);
  });
  launched(c_, "softmax backward");
}

void CudaBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                        int64_t ignore_index, double ls, const Tensor& loss_rows,
                                        const Tensor& lse) {
  Guard g(c_);
  const int64_t N = logits.shape[0], C = logits.shape[1];
  if (!N || !C) return;
  dispatch_float(logits.dtype, "cross entropy", [&](auto z) {
    using T = decltype(z);
    cross_entropy_forward_kernel<T><<<row_grid(N), row_threads(C), 0, c_.stream>>>(
        dp<T>(logits), dp<int32_t>(targets), N, C, ignore_index, ls, dp<T>(loss_rows), dp<T>(lse),
        c_.err);
  });
  launched(c_, "cross entropy");
}

void CudaBackend::cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                         const Tensor& targets, int64_t ignore_index, double ls,
                                         const Tensor& grad, double grad_scale,
                                         const Tensor& dlogits) {
  Guard g(c_);
  const int64_t N = logits.shape[0], C = logits.shape[1];
  if (!N || !C) return;
  dispatch_float(logits.dtype, "cross entropy backward", [&](auto z) {
    using T = decltype(z);
    cross_entropy_backward_kernel<T><<<row_grid(N), row_threads(C), 0, c_.stream>>>(
        dp<T>(logits), dp<T>(lse), dp<int32_t>(targets), N, C, ignore_index, ls, dp<T>(grad),
        grad.numel() != 1, grad_scale, dp<T>(dlogits));
  });
  launched(c_, "cross entropy backward");
}

}  // namespace lc::cuda
