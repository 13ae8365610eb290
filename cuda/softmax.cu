// Row-wise ops over the last dim: softmax and its backward, and the fused
// cross entropy (log-softmax and NLL with ignore index and label smoothing).
// One block per row, its threads striding over the columns. Softmax sums in
// double as on the CPU; the cross entropy is one online pass in opmath_t<T>
// (float for float32 and the halves), rounding once on store; its loss and
// log-sum-exp (L) and the incoming loss gradient (G) are the logits' dtype or
// float32.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename T>
__global__ void softmax_kernel(const T* x, T* y, int64_t rows, int64_t cols) {
  using A = opmath_t<T>;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const T* r = x + row * cols;
    T* o = y + row * cols;
    A mx = A(-INFINITY);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) mx = max(mx, ld(r[j]));
    mx = block_max(mx);
    double s = 0;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(d_exp(ld(r[j]) - mx));
    s = block_sum(s);
    const A inv = static_cast<A>(1.0 / s);
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) o[j] = static_cast<T>(d_exp(ld(r[j]) - mx) * inv);
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
    const opmath_t<T> d = static_cast<opmath_t<T>>(block_sum(dot));
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x) dr[j] = static_cast<T>(ld(yr[j]) * (ld(gr[j]) - d));
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

// One pass over each row (online softmax: the max and the sum of exponentials together) in
// opmath_t<T>: float32 and half rows accumulate in float, as a GPU cross entropy does.
template <typename T, typename L>
__global__ void cross_entropy_forward_kernel(const T* logits, const int32_t* targets, int64_t N,
                                             int64_t C, int64_t ignore, double ls, L* loss_rows,
                                             L* lse, DeviceError* err) {
  using A = opmath_t<T>;
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    const T* row = logits + i * C;
    const int64_t ti = targets[i];
    const bool ignored = ti == ignore;
    const bool bad = !ignored && (ti < 0 || ti >= C);
    OnlineLse<A> st{A(-INFINITY), A(0)};
    A sum_x = 0;
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      const A v = ld(row[j]);
      if (v > st.m) {
        st.s = (st.m == A(-INFINITY) ? A(0) : st.s * d_exp(st.m - v)) + A(1);
        st.m = v;
      } else if (st.m != A(-INFINITY)) {
        st.s += d_exp(v - st.m);
      }
      sum_x += v;
    }
    st = block_merge(st);
    sum_x = block_sum(sum_x);
    if (threadIdx.x != 0) continue;
    const A l = st.m + d_log(st.s);
    lse[i] = static_cast<L>(l);
    if (bad) {
      if (atomicCAS(&err->code, 0, kErrCrossEntropyTarget) == 0) {
        err->a = ti;
        err->b = i;
        err->c = C;
      }
      loss_rows[i] = L(0);
      continue;
    }
    if (ignored) {
      loss_rows[i] = L(0);
      continue;
    }
    const A nll = l - ld(row[ti]);
    const A smooth = l - sum_x / static_cast<A>(C);
    loss_rows[i] = static_cast<L>(static_cast<A>(1.0 - ls) * nll + static_cast<A>(ls) * smooth);
  }
}

// dlogits (set) = grad * scale * (softmax - smoothed one-hot); 0 for ignored rows. In
// opmath_t<T>, as the forward, rounding once on store.
template <typename T, typename L, typename G>
__global__ void cross_entropy_backward_kernel(const T* logits, const L* lse, const int32_t* targets,
                                              int64_t N, int64_t C, int64_t ignore, double ls,
                                              const G* grad, bool per_row, double grad_scale,
                                              T* dlogits) {
  using A = opmath_t<T>;
  const A off = static_cast<A>(ls / static_cast<double>(C));
  const A hit = static_cast<A>(1.0 - ls);
  for (int64_t i = blockIdx.x; i < N; i += gridDim.x) {
    T* drow = dlogits + i * C;
    const int64_t ti = targets[i];
    if (ti == ignore) {
      for (int64_t j = threadIdx.x; j < C; j += blockDim.x) drow[j] = T(0);
      continue;
    }
    const T* row = logits + i * C;
    const A gs = static_cast<A>(grad_scale * static_cast<double>(grad[per_row ? i : 0]));
    const A l = static_cast<A>(static_cast<double>(lse[i]));
    for (int64_t j = threadIdx.x; j < C; j += blockDim.x) {
      const A target = off + (j == ti ? hit : A(0));
      drow[j] = static_cast<T>(gs * (d_exp(ld(row[j]) - l) - target));
    }
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::softmax(const Tensor& x, const Tensor& y) {
  Guard g(c_);
  const int64_t cols = x.shape.back(), rows = cols ? x.numel() / cols : 0;
  if (!rows || !cols) return;
  dispatch_floating(x.dtype, "softmax", [&](auto z) {
    using T = decltype(z);
    softmax_kernel<T><<<row_grid(rows), row_threads(cols), 0, c_.stream>>>(dp<T>(x), dp<T>(y), rows, cols);
  });
  launched(c_, "softmax");
}

void CudaBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  Guard g(c_);
  const int64_t cols = y.shape.back(), rows = cols ? y.numel() / cols : 0;
  if (!rows || !cols) return;
  dispatch_floating(y.dtype, "softmax backward", [&](auto z) {
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
  LC_CHECK(loss_rows.dtype == lse.dtype, "cross entropy: the loss rows and lse must share a dtype");
  dispatch_with_side(logits.dtype, lse.dtype, "cross entropy", "lse", [&](auto z, auto zl) {
    using T = decltype(z);
    using L = decltype(zl);
    cross_entropy_forward_kernel<T, L><<<row_grid(N), row_threads(C), 0, c_.stream>>>(
        dp<T>(logits), dp<int32_t>(targets), N, C, ignore_index, ls, dp<L>(loss_rows), dp<L>(lse),
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
  dispatch_with_side(logits.dtype, lse.dtype, "cross entropy backward", "lse", [&](auto z, auto zl) {
    using T = decltype(z);
    using L = decltype(zl);
    dispatch_with_side(logits.dtype, grad.dtype, "cross entropy backward", "the loss gradient", [&](auto, auto zg) {
      using G = decltype(zg);
      cross_entropy_backward_kernel<T, L, G><<<row_grid(N), row_threads(C), 0, c_.stream>>>(
          dp<T>(logits), dp<L>(lse), dp<int32_t>(targets), N, C, ignore_index, ls, dp<G>(grad),
          grad.numel() != 1, grad_scale, dp<T>(dlogits));
    });
  });
  launched(c_, "cross entropy backward");
}

}  // namespace lc::cuda
