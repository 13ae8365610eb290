// Row-wise ops over the last dim: softmax and its backward, and the fused
// cross entropy (log-softmax and NLL with ignore index and label smoothing).
// Sums in double. bfloat16/float16 logits are read as float and every result
// rounds once; the cross entropy's per-row loss and logsumexp are float32 for
// them (opmath_t), as the loss of a half model is computed in float32.
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "cpu_backend.h"
#include "fast_f32.h"

namespace lc {

void CpuBackend::softmax(const Tensor& x, const Tensor& y) {
  dispatch_floating(x.dtype, "softmax", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    int64_t cols = x.shape.back(), rows = x.numel() / cols;
    const T* px = x.data<T>();
    T* py = y.data<T>();
    auto rows_fn = [&](int64_t r0, int64_t r1) {
      std::vector<M> e(static_cast<size_t>(cols));  // the exponentials, unrounded
      for (int64_t i = r0; i < r1; ++i) {
        const T* r = px + i * cols;
        T* o = py + i * cols;
        M mx = M(r[0]);
        for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, M(r[j]));
        double sum = 0;
        for (int64_t j = 0; j < cols; ++j) {
          e[j] = std::exp(M(r[j]) - mx);
          sum += e[j];
        }
        M inv = static_cast<M>(1.0 / sum);
        for (int64_t j = 0; j < cols; ++j) o[j] = T(e[j] * inv);
      }
    };
    if (rows * cols < 2 * kGrain) rows_fn(0, rows);
    else parallel_for(rows, std::max<int64_t>(1, kGrain / cols), rows_fn);
  });
}

void CpuBackend::softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  dispatch_floating(y.dtype, "softmax backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    int64_t cols = y.shape.back(), rows = y.numel() / cols;
    const T* py = y.data<T>();
    const T* pg = dy.data<T>();
    T* pd = dx.data<T>();
    for (int64_t i = 0; i < rows; ++i) {
      const T* yr = py + i * cols;
      const T* gr = pg + i * cols;
      T* dr = pd + i * cols;
      double dot = 0;
      for (int64_t j = 0; j < cols; ++j) dot += static_cast<double>(M(gr[j])) * M(yr[j]);
      M d = static_cast<M>(dot);
      for (int64_t j = 0; j < cols; ++j) dr[j] = T(M(yr[j]) * (M(gr[j]) - d));
    }
  });
}

namespace {

// Half logits run through the float32 rows (fast_f32.cpp) a block of rows at a time, each block
// widened exactly into a float buffer of at most 8 MB: the same numbers as upcasting the logits
// first (transformers' logits.float()) and the same speed, without a float32 copy of them all.
constexpr int64_t kCeBlockFloats = int64_t(1) << 21;

int64_t ce_block_rows(int64_t C) { return std::max<int64_t>(1, kCeBlockFloats / std::max<int64_t>(C, 1)); }

template <typename T>
void widen_block(const T* x, int64_t n, float* out) {
  par(n, [&](int64_t s, int64_t e) {
    for (int64_t i = s; i < e; ++i) out[i] = static_cast<float>(x[i]);
  });
}

[[noreturn]] void bad_target(int64_t ti, int64_t row, int64_t C) {
  fail("cross entropy: target " + std::to_string(ti) + " at row " + std::to_string(row) +
       " is outside [0, " + std::to_string(C) + ")");
}

}  // namespace

void CpuBackend::cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                       int64_t ignore_index, double ls, const Tensor& loss_rows,
                                       const Tensor& lse) {
  // float32: the vectorised, threaded rows of fast_f32.cpp; a bad target falls through to the
  // loop below, which reports it.
  if (logits.dtype == DType::F32 &&
      cross_entropy_forward_f32(logits.data<float>(), targets.data<int32_t>(), logits.shape[0],
                                logits.shape[1], ignore_index, ls, loss_rows.data<float>(),
                                lse.data<float>()) < 0)
    return;
  dispatch_floating(logits.dtype, "cross entropy", [&](auto z) {
    using T = decltype(z);
    using L = opmath_t<T>;  // the loss and logsumexp
    int64_t N = logits.shape[0], C = logits.shape[1];
    if constexpr (is_half_v<T>) {
      const int64_t rows = std::min(ce_block_rows(C), N);
      std::vector<float> buf(static_cast<size_t>(rows * C));
      for (int64_t r0 = 0; r0 < N; r0 += rows) {
        const int64_t nr = std::min(rows, N - r0);
        widen_block(logits.data<T>() + r0 * C, nr * C, buf.data());
        const int64_t bad = cross_entropy_forward_f32(buf.data(), targets.data<int32_t>() + r0, nr, C, ignore_index,
                                                      ls, loss_rows.data<float>() + r0, lse.data<float>() + r0);
        if (bad >= 0) bad_target(targets.data<int32_t>()[r0 + bad], r0 + bad, C);
      }
      return;
    }
    const T* x = logits.data<T>();
    const int32_t* t = targets.data<int32_t>();
    L* lr = loss_rows.data<L>();
    L* pl = lse.data<L>();
    for (int64_t i = 0; i < N; ++i) {
      const T* row = x + i * C;
      int64_t ti = t[i];
      if (ti != ignore_index && (ti < 0 || ti >= C)) bad_target(ti, i, C);
      double mx = -INFINITY;
      for (int64_t j = 0; j < C; ++j) mx = std::max(mx, static_cast<double>(L(row[j])));
      double s = 0, sum_x = 0;
      for (int64_t j = 0; j < C; ++j) {
        s += std::exp(static_cast<double>(L(row[j])) - mx);
        sum_x += static_cast<double>(L(row[j]));
      }
      double l = mx + std::log(s);
      pl[i] = static_cast<L>(l);
      if (ti == ignore_index) {
        lr[i] = L(0);
        continue;
      }
      double nll = l - static_cast<double>(L(row[ti]));
      // Without smoothing the mean logit is not used: a -inf (masked) logit leaves the loss finite,
      // as in PyTorch.
      double smooth = ls > 0 ? l - sum_x / static_cast<double>(C) : 0.0;
      lr[i] = static_cast<L>(ls > 0 ? (1.0 - ls) * nll + ls * smooth : nll);
    }
  });
}

void CpuBackend::cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                        const Tensor& targets, int64_t ignore_index, double ls,
                                        const Tensor& grad, double grad_scale,
                                        const Tensor& dlogits) {
  if (logits.dtype == DType::F32) {
    cross_entropy_backward_f32(logits.data<float>(), lse.data<float>(), targets.data<int32_t>(),
                               logits.shape[0], logits.shape[1], ignore_index, ls,
                               grad.data<float>(), grad.numel() != 1, grad_scale,
                               dlogits.data<float>());
    return;
  }
  dispatch_floating(logits.dtype, "cross entropy backward", [&](auto z) {
    using T = decltype(z);
    using L = opmath_t<T>;
    int64_t N = logits.shape[0], C = logits.shape[1];
    if constexpr (is_half_v<T>) {
      const int64_t rows = std::min(ce_block_rows(C), N);
      std::vector<float> buf(static_cast<size_t>(rows * C)), dbuf(static_cast<size_t>(rows * C));
      const bool per_row = grad.numel() != 1;
      for (int64_t r0 = 0; r0 < N; r0 += rows) {
        const int64_t nr = std::min(rows, N - r0);
        widen_block(logits.data<T>() + r0 * C, nr * C, buf.data());
        cross_entropy_backward_f32(buf.data(), lse.data<float>() + r0, targets.data<int32_t>() + r0, nr, C,
                                   ignore_index, ls, grad.data<float>() + (per_row ? r0 : 0), per_row,
                                   grad_scale, dbuf.data());
        T* d = dlogits.data<T>() + r0 * C;  // rounded once from the float32 gradient
        par(nr * C, [&](int64_t s0, int64_t e) {
          for (int64_t i = s0; i < e; ++i) d[i] = T(dbuf[static_cast<size_t>(i)]);
        });
      }
      return;
    }
    const T* x = logits.data<T>();
    const L* pl = lse.data<L>();
    const int32_t* t = targets.data<int32_t>();
    T* d = dlogits.data<T>();
    const L* pg = grad.data<L>();
    bool per_row = grad.numel() != 1;
    double off = ls / static_cast<double>(C);
    for (int64_t i = 0; i < N; ++i) {
      double gs = grad_scale * static_cast<double>(pg[per_row ? i : 0]);
      T* drow = d + i * C;
      if (t[i] == ignore_index) {
        std::fill_n(drow, C, T(0));
        continue;
      }
      const T* row = x + i * C;
      double l = pl[i];
      for (int64_t j = 0; j < C; ++j) {
        double target = off + (j == t[i] ? 1.0 - ls : 0.0);
        drow[j] = static_cast<T>(gs * (std::exp(static_cast<double>(L(row[j])) - l) - target));
      }
    }
  });
}

}  // namespace lc
