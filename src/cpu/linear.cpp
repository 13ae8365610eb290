// Matrix products on the CPU: the batched GEMM behind matmul and the linear
// layer (gemm_f32/gemm_f64: a CBLAS or the built-in kernel), and the LoRA
// forward and backward. On the built-in kernel the bias and the adapter's
// rank-r term are extra K steps of the frozen product (its tail), so the output
// is written once, and without dropout the tail's h = x A^T (dh = s dy B for
// dx) is made by that product from the rows it packs. A CBLAS cannot take them, and a GEMM with K = r is a poor fit
// for it: there the adapter's product is added into the output row by row
// (bias and dropout mask in the same pass, low_rank.cpp), and the frozen GEMM
// accumulates on top of it with beta = 1; so too dx under dropout, whose mask
// applies to the adapter's term only.
#include <string>
#include <vector>

#include "blas.h"
#include "cpu_backend.h"
#include "gemm.h"

namespace lc {
namespace {

inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_f32(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                 int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_f64(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const bf16* A,
                 int64_t lda, const bf16* B, int64_t ldb, float beta, bf16* C, int64_t ldc) {
  gemm_bf16(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const f16* A,
                 int64_t lda, const f16* B, int64_t ldb, float beta, f16* C, int64_t ldc) {
  gemm_f16(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void gemm_tail(bool tA, bool tB, int64_t M, int64_t N, int64_t K, const float* A,
                      int64_t lda, const float* B, int64_t ldb, float* C, int64_t ldc,
                      const GemmTail<float>& t) {
  builtin_sgemm_tail(tA, tB, M, N, K, A, lda, B, ldb, 0.0f, C, ldc, t);
}
inline void gemm_tail(bool tA, bool tB, int64_t M, int64_t N, int64_t K, const double* A,
                      int64_t lda, const double* B, int64_t ldb, double* C, int64_t ldc,
                      const GemmTail<double>& t) {
  builtin_dgemm_tail(tA, tB, M, N, K, A, lda, B, ldb, 0.0, C, ldc, t);
}

// The built-in kernel takes the adapter's rank-r term as extra steps of the frozen product (a
// GEMM tail); an external BLAS cannot, so there the row-wise pass writes it first.
inline bool fused_tail(int64_t K) { return K > 0 && blas_info().name == "builtin"; }

inline void low_rank_rows(float* C, int64_t M, int64_t N, int64_t r, float alpha, const float* U,
                          const float* V, const float* init, bool acc, double p, uint64_t seed,
                          uint64_t offset) {
  low_rank_rows_f32(C, M, N, r, alpha, U, V, init, acc, p, seed, offset);
}
inline void low_rank_rows(double* C, int64_t M, int64_t N, int64_t r, double alpha, const double* U,
                          const double* V, const double* init, bool acc, double p, uint64_t seed,
                          uint64_t offset) {
  low_rank_rows_f64(C, M, N, r, alpha, U, V, init, acc, p, seed, offset);
}

// out [cols, rows] = in [rows, cols]^T, for the small adapter matrices.
template <typename T>
std::vector<T> transposed(const T* in, int64_t rows, int64_t cols) {
  std::vector<T> out(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = in[i * cols + j];
  return out;
}

}  // namespace

void CpuBackend::gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha,
                      const Tensor& A, int64_t sA, const Tensor& B, int64_t sB, double beta,
                      const Tensor& C, int64_t sC, int64_t batch) {
  // Halves: bf16/f16 in and out, float32 accumulation (half_gemm.cpp).
  dispatch_floating(C.dtype, "matmul", [&](auto z) {
    using T = decltype(z);
    using M_ = opmath_t<T>;
    const T* pa = A.data<T>();
    const T* pb = B.data<T>();
    T* pc = C.data<T>();
    int64_t lda = tA ? M : K, ldb = tB ? K : N;
    for (int64_t i = 0; i < batch; ++i)
      lc::gemm(tA, tB, M, N, K, static_cast<M_>(alpha), pa + i * sA, lda, pb + i * sB, ldb,
               static_cast<M_>(beta), pc + i * sC, N);
  });
}

// float32 on the built-in kernel without label smoothing: the logits' product folds each row's
// logsumexp in as it writes them (builtin_sgemm_lse), and a row's loss is lse - its target's
// logit. Targets are checked first, as the cross entropy checks them.
void CpuBackend::linear_cross_entropy_forward(const Tensor& x, const Tensor& W,
                                              const Tensor& targets, int64_t ignore_index,
                                              double ls, const Tensor& logits,
                                              const Tensor& loss_rows, const Tensor& lse) {
  const int64_t N = x.shape[0], H = x.shape[1], V = W.shape[0];
  if (x.dtype != DType::F32 || ls != 0 || H == 0 || !fused_tail(H)) {
    Backend::linear_cross_entropy_forward(x, W, targets, ignore_index, ls, logits, loss_rows, lse);
    return;
  }
  const int32_t* t = targets.data<int32_t>();
  for (int64_t i = 0; i < N; ++i)
    if (t[i] != ignore_index && (t[i] < 0 || t[i] >= V))
      fail("cross entropy: target " + std::to_string(t[i]) + " at row " + std::to_string(i) +
           " is outside [0, " + std::to_string(V) + ")");
  float* l = logits.data<float>();
  float* pl = lse.data<float>();
  builtin_sgemm_lse(N, V, H, x.data<float>(), H, W.data<float>(), H, l, V, pl);
  float* lr = loss_rows.data<float>();
  for (int64_t i = 0; i < N; ++i)
    lr[i] = t[i] == ignore_index ? 0.f : static_cast<float>(static_cast<double>(pl[i]) - l[i * V + t[i]]);
}

// float32 on the built-in kernel: the row factors of cross_entropy_backward_f32 (fast_f32.cpp),
// dlogits[i, k] = gs exp(x - lse) - gs ls / V, less gs (1 - ls) at the target, where gs is the
// row's grad times grad_scale (0 for an ignored row), applied to the logits as the product packs
// them. The same float formula as that pass but for the target's share, there subtracted in
// float rather than formed in double.
void CpuBackend::linear_cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                               const Tensor& targets, int64_t ignore_index,
                                               double ls, const Tensor& grad, double grad_scale,
                                               const Tensor& W, const Tensor& dx) {
  if (logits.dtype != DType::F32 || !fused_tail(logits.shape[1])) {
    Backend::linear_cross_entropy_backward(logits, lse, targets, ignore_index, ls, grad,
                                           grad_scale, W, dx);
    return;
  }
  const int64_t N = logits.shape[0], V = logits.shape[1], H = W.shape[1];
  const int32_t* t = targets.data<int32_t>();
  const float* g = grad.data<float>();
  const bool per_row = grad.numel() != 1;
  const double off = ls / static_cast<double>(V);
  std::vector<float> mul(static_cast<size_t>(N)), sub(mul.size()), tsub(mul.size());
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore_index) continue;  // mul 0: a zero row
    const double gs = grad_scale * static_cast<double>(g[per_row ? i : 0]);
    mul[i] = static_cast<float>(gs);
    sub[i] = static_cast<float>(gs * off);
    tsub[i] = static_cast<float>(gs * (1.0 - ls));
  }
  SoftmaxRows rows;
  rows.shift = lse.data<float>();
  rows.mul = mul.data();
  rows.sub = sub.data();
  rows.tsub = tsub.data();
  rows.tgt = t;
  builtin_sgemm_softmax_a(N, H, V, logits.data<float>(), V, rows, W.data<float>(), H,
                          dx.data<float>(), H);
}

void CpuBackend::linear_forward(const Tensor& x, const Tensor& W, const Tensor* b,
                                const Tensor& y) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0];
  if (!b || is_half(x.dtype) || !fused_tail(K)) {
    Backend::linear_forward(x, W, b, y);
    return;
  }
  // y = x W^T + 1 b^T: the bias as one more K step of the product, so y is written once.
  dispatch_float(y.dtype, "linear", [&](auto z) {
    using T = decltype(z);
    GemmTail<T> t;
    t.bias = b->data<T>();
    gemm_tail(false, true, M, N, K, x.data<T>(), K, W.data<T>(), K, y.data<T>(), N, t);
  });
}

void CpuBackend::lora_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                              const Tensor& B, double scale, double p, uint64_t seed,
                              uint64_t offset, const Tensor& y, const Tensor& h) {
  // Halves (all in one half type, or a half base with float32 adapters) take the composite,
  // whose products run through the half GEMM above.
  if (is_half(x.dtype)) {
    Backend::lora_forward(x, W, b, A, B, scale, p, seed, offset, y, h);
    return;
  }
  dispatch_float(y.dtype, "lora forward", [&](auto z) {
    using T = decltype(z);
    int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
    T* py = y.data<T>();
    // h = drop(x) A^T  [M, r] (set)
    Tensor xd;
    if (p > 0) {
      xd = empty(x.shape, x.dtype, device());
      dropout(x, xd, p, seed, offset);
    }
    if (fused_tail(K)) {
      // y = x W^T + [h, 1] [scale B^T; b]: the adapter and the bias ride on the frozen
      // product's last K block, so y is written once; without dropout h = x A^T too is made
      // there, from x's rows as the product packs them.
      GemmTail<T> t;
      t.q = r, t.ldu = r, t.u_scale = static_cast<T>(scale);
      t.V = B.data<T>(), t.v_k = 1, t.v_n = r;
      t.bias = b ? b->data<T>() : nullptr;
      if (p > 0) {
        lc::gemm(false, true, M, r, K, T(1), xd.data<T>(), K, A.data<T>(), K, T(0),
                 h.data<T>(), r);
        t.U = h.data<T>();
      } else {
        t.P = A.data<T>(), t.p_t = true, t.Uw = h.data<T>();
      }
      gemm_tail(false, true, M, N, K, x.data<T>(), K, W.data<T>(), K, py, N, t);
      return;
    }
    lc::gemm(false, true, M, r, K, T(1), (p > 0 ? xd : x).data<T>(), K, A.data<T>(), K,
             T(0), h.data<T>(), r);
    // y = b + scale * h B^T in one pass, then the frozen GEMM accumulates
    // x W^T on top (beta = 1): no separate bias or adapter pass over y.
    std::vector<T> Bt = transposed(B.data<T>(), N, r);
    low_rank_rows(py, M, N, r, static_cast<T>(scale), h.data<T>(), Bt.data(),
                  b ? b->data<T>() : nullptr, false, 0.0, 0, 0);
    lc::gemm(false, true, M, N, K, T(1), x.data<T>(), K, W.data<T>(), K, T(1), py, N);
  });
}

void CpuBackend::lora_backward(const Tensor& dy, const Tensor& x, const Tensor& W,
                               const Tensor& A, const Tensor& B, const Tensor& h, double scale,
                               double p, uint64_t seed, uint64_t offset, const Tensor* dx,
                               const Tensor* dA, const Tensor* dB, const Tensor* dW,
                               const Tensor* db) {
  if (is_half(x.dtype)) {
    Backend::lora_backward(dy, x, W, A, B, h, scale, p, seed, offset, dx, dA, dB, dW, db);
    return;
  }
  dispatch_float(dy.dtype, "lora backward", [&](auto z) {
    using T = decltype(z);
    int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
    const T* g = dy.data<T>();
    T sc = static_cast<T>(scale);
    // The products that read dy run back to back (dB, dh, dx's, which packs dy), and dA, the
    // only one that reads x, last: dy's later reads then find it in the last-level cache.
    // dh = scale * dy B  [M, r]: the gradient at the adapter's bottleneck; made by dx's product
    // where it has the adapter's steps, else a product of its own.
    std::vector<T> dh;
    const bool dh_in_dx = dx && p == 0 && fused_tail(N);
    if (dA || dx) dh.resize(static_cast<size_t>(M * r));
    // dB = scale * dy^T h  [N, r] (set)
    if (dB) lc::gemm(true, false, N, r, M, sc, g, N, h.data<T>(), r, T(0), dB->data<T>(), r);
    if (!dh.empty() && !dh_in_dx)
      lc::gemm(false, false, M, r, N, sc, g, N, B.data<T>(), r, T(0), dh.data(), r);
    if (dh_in_dx) {
      // dx = dy W + dh A in one product, the adapter's steps appended to the frozen ones, and
      // dh = scale * dy B made from dy's rows as it packs them.
      GemmTail<T> t;
      t.q = r, t.ldu = r, t.V = A.data<T>(), t.v_k = K, t.v_n = 1;
      t.P = B.data<T>(), t.p_alpha = sc, t.Uw = dh.data();
      gemm_tail(false, false, M, K, N, g, N, W.data<T>(), K, dx->data<T>(), K, t);
    } else if (dx) {
      // dx = drop'(dh A) (set, mask applied in the same pass), then the
      // frozen path dy W accumulates on top (beta = 1).
      T* pdx = dx->data<T>();
      low_rank_rows(pdx, M, K, r, T(1), dh.data(), A.data<T>(), nullptr, false, p, seed, offset);
      lc::gemm(false, false, M, K, N, T(1), g, N, W.data<T>(), K, T(1), pdx, K);
    }
    if (dA) {
      // dA = dh^T drop(x)  [r, K] (set); the mask is regenerated, not stored.
      Tensor xd;
      if (p > 0) {
        xd = empty(x.shape, x.dtype, device());
        dropout(x, xd, p, seed, offset);
      }
      lc::gemm(true, false, r, K, M, T(1), dh.data(), r, (p > 0 ? xd : x).data<T>(), K,
               T(0), dA->data<T>(), K);
    }
    if (dW) lc::gemm(true, false, N, K, M, T(1), g, N, x.data<T>(), K, T(0), dW->data<T>(), K);
    if (db) reduce_sum_to(dy, *db);  // column sums of dy, in double
  });
}

}  // namespace lc
