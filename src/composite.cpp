// The composite ops of backend.h, written once from the primitives: every
// backend runs these unless it overrides one to fuse it (the CPU fuses the
// adapter's rank-r pass, cpu/linear.cpp). Temporaries are tensors on the
// backend's own device, so they come from its allocator (on CUDA, the caching
// allocator, stream-ordered: freed after the queued work that reads them).
//
// The LoRA forward adds the adapter's product into the output through the
// GEMM's beta = 1 instead of a separate pass, and the backward computes no
// weight gradient for a frozen weight (dW null). The dropout mask is drawn
// from (seed, offset) by element index in the same pass that applies it, and
// redrawn in backward rather than stored.
//
// A half-precision layer (x and W bfloat16 or float16) runs as PEFT runs it:
// the base layer in the half type (GEMM accumulating in float32, rounded once),
// the adapter in A and B's dtype, float32 by default (PEFT's
// autocast_adapter_dtype) or the layer's own half type, its input cast once
// here; the sum result + lora is formed in float32 and rounded once to the
// half type (PEFT's `result = result + lora; result.to(result_dtype)`).
#include "backend.h"

namespace lc {
namespace {

// One product of dense row-major matrices, batch 1: C = alpha op(A) op(B) + beta C.
void mm(Backend& be, bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha,
        const Tensor& A, const Tensor& B, double beta, const Tensor& C) {
  be.gemm(tA, tB, M, N, K, alpha, A, 0, B, 0, beta, C, 0, 1);
}

// t, or a copy of it in `dtype` (the cast rounds to nearest even into a half type).
Tensor as_dtype(Backend& be, const Tensor& t, DType dtype) {
  if (t.dtype == dtype) return t;
  Tensor out = empty(t.shape, dtype, be.device());
  be.copy(out, t);
  return out;
}

// The adapter's input: drop(x) in the adapters' dtype, x itself when neither applies.
Tensor adapter_input(Backend& be, const Tensor& x, DType dtype, double p, uint64_t seed,
                     uint64_t offset) {
  Tensor xa = as_dtype(be, x, dtype);
  if (p <= 0) return xa;
  Tensor xd = xa.storage == x.storage ? empty(x.shape, dtype, be.device()) : xa;
  be.dropout(xa, xd, p, seed, offset);
  return xd;
}

}  // namespace

void Backend::linear_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& y) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0];
  // y = b in every row, then the GEMM accumulates x W^T on top (beta = 1).
  if (b) expand(*b, y);
  mm(*this, false, true, M, N, K, 1.0, x, W, b ? 1.0 : 0.0, y);
}

void Backend::linear_backward(const Tensor& dy, const Tensor& x, const Tensor& W,
                              const Tensor* dx, const Tensor* dW, const Tensor* db) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0];
  if (dx) mm(*this, false, false, M, K, N, 1.0, dy, W, 0.0, *dx);  // dx = dy W (set)
  if (dW) mm(*this, true, false, N, K, M, 1.0, dy, x, 0.0, *dW);   // dW = dy^T x (set)
  if (db) reduce_sum_to(dy, *db);                                 // db = column sums of dy (set)
}

void Backend::lora_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                           const Tensor& B, double scale, double p, uint64_t seed, uint64_t offset,
                           const Tensor& y, const Tensor& h) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
  if (is_half(x.dtype)) {
    // The base layer: y = b + x W^T in the half type, rounded once (beta = 1 over the bias).
    if (b) expand(*b, y);
    mm(*this, false, true, M, N, K, 1.0, x, W, b ? 1.0 : 0.0, y);
    // h = drop(x) A^T [M, r] in the adapters' dtype, x cast once.
    Tensor xa = adapter_input(*this, x, A.dtype, p, seed, offset);
    mm(*this, false, true, M, r, K, 1.0, xa, A, 0.0, h);
    // y = (y + scale h B^T) in float32, rounded once into y.
    Tensor yf = as_dtype(*this, y, DType::F32);
    mm(*this, false, true, M, N, r, scale, as_dtype(*this, h, DType::F32),
       as_dtype(*this, B, DType::F32), 1.0, yf);
    copy(y, yf);
    return;
  }
  // h = drop(x) A^T  [M, r] (set)
  Tensor xd;
  if (p > 0) {
    xd = empty(x.shape, x.dtype, device());
    dropout(x, xd, p, seed, offset);
  }
  mm(*this, false, true, M, r, K, 1.0, p > 0 ? xd : x, A, 0.0, h);
  // y = b + scale h B^T, then the frozen product x W^T accumulates on top (beta = 1).
  if (b) expand(*b, y);
  mm(*this, false, true, M, N, r, scale, h, B, b ? 1.0 : 0.0, y);
  mm(*this, false, true, M, N, K, 1.0, x, W, 1.0, y);
}

void Backend::lora_backward(const Tensor& dy, const Tensor& x, const Tensor& W, const Tensor& A,
                            const Tensor& B, const Tensor& h, double scale, double p,
                            uint64_t seed, uint64_t offset, const Tensor* dx, const Tensor* dA,
                            const Tensor* dB, const Tensor* dW, const Tensor* db) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
  if (is_half(x.dtype)) {
    // PEFT's autograd on a half layer: the grad reaching the adapter is dy cast to the adapters'
    // dtype (exact); dA, dB in that dtype; x's grad is the base layer's dy W (half, rounded)
    // plus the adapter path's, rounded to the half type, added as autograd accumulates them.
    const DType ta = A.dtype;
    Tensor dya = as_dtype(*this, dy, ta);
    if (dB) mm(*this, true, false, N, r, M, scale, dya, h, 0.0, *dB);
    Tensor dh;
    if (dA || dx) {
      dh = empty({M, r}, ta, device());
      mm(*this, false, false, M, r, N, scale, dya, B, 0.0, dh);
    }
    if (dA) mm(*this, true, false, r, K, M, 1.0, dh, adapter_input(*this, x, ta, p, seed, offset),
               0.0, *dA);
    if (dx) {
      Tensor dxa = empty({M, K}, ta, device());
      mm(*this, false, false, M, K, r, 1.0, dh, A, 0.0, dxa);
      if (p > 0) dropout(dxa, dxa, p, seed, offset);
      mm(*this, false, false, M, K, N, 1.0, dy, W, 0.0, *dx);
      axpy(*dx, as_dtype(*this, dxa, x.dtype), 1.0);
    }
    if (dW) mm(*this, true, false, N, K, M, 1.0, dy, x, 0.0, *dW);
    if (db) reduce_sum_to(dy, *db);
    return;
  }
  // dB = scale dy^T h  [N, r] (set)
  if (dB) mm(*this, true, false, N, r, M, scale, dy, h, 0.0, *dB);
  Tensor dh;
  if (dA || dx) {
    // dh = scale dy B  [M, r]: the gradient at the adapter's bottleneck.
    dh = empty({M, r}, x.dtype, device());
    mm(*this, false, false, M, r, N, scale, dy, B, 0.0, dh);
  }
  if (dA) {
    // dA = dh^T drop(x)  [r, K] (set); the mask is redrawn, not stored.
    Tensor xd;
    if (p > 0) {
      xd = empty(x.shape, x.dtype, device());
      dropout(x, xd, p, seed, offset);
    }
    mm(*this, true, false, r, K, M, 1.0, dh, p > 0 ? xd : x, 0.0, *dA);
  }
  if (dx) {
    // dx = drop'(dh A) (set; the mask applied in place), then the frozen path
    // dy W accumulates on top (beta = 1).
    mm(*this, false, false, M, K, r, 1.0, dh, A, 0.0, *dx);
    if (p > 0) dropout(*dx, *dx, p, seed, offset);
    mm(*this, false, false, M, K, N, 1.0, dy, W, 1.0, *dx);
  }
  if (dW) mm(*this, true, false, N, K, M, 1.0, dy, x, 0.0, *dW);  // dW = dy^T x (set)
  if (db) reduce_sum_to(dy, *db);                                // db = column sums of dy (set)
}

bool Backend::lora_merge(const Tensor& W, const Tensor& A, const Tensor& B, double scale,
                         bool safe) {
  const int64_t N = W.shape[0], K = W.shape[1], r = A.shape[0];
  if (is_half(W.dtype)) {
    // W + scale B A computed in float32 and rounded once into the half type; `safe` checks
    // the rounded result (a float16 overflow is an infinity there).
    Tensor wf = as_dtype(*this, W, DType::F32);
    mm(*this, false, false, N, K, r, scale, as_dtype(*this, B, DType::F32),
       as_dtype(*this, A, DType::F32), 1.0, wf);
    if (!safe) {
      copy(W, wf);
      return true;
    }
    Tensor tmp = empty(W.shape, W.dtype, device());
    copy(tmp, wf);
    if (!all_finite(tmp)) return false;
    copy(W, tmp);
    return true;
  }
  if (!safe) {
    // W += scale B A: one GEMM over W.
    mm(*this, false, false, N, K, r, scale, B, A, 1.0, W);
    return true;
  }
  // Build the result aside, check it, and only then replace W, so a refused
  // merge leaves W bit-identical.
  Tensor tmp = empty(W.shape, W.dtype, device());
  copy(tmp, W);
  mm(*this, false, false, N, K, r, scale, B, A, 1.0, tmp);
  if (!all_finite(tmp)) return false;
  copy(W, tmp);
  return true;
}

void Backend::linear_cross_entropy_forward(const Tensor& x, const Tensor& W,
                                           const Tensor& targets, int64_t ignore_index,
                                           double label_smoothing, const Tensor& logits,
                                           const Tensor& loss_rows, const Tensor& lse) {
  linear_forward(x, W, nullptr, logits);
  cross_entropy_forward(logits, targets, ignore_index, label_smoothing, loss_rows, lse);
}

void Backend::linear_cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                            const Tensor& targets, int64_t ignore_index,
                                            double label_smoothing, const Tensor& grad,
                                            double grad_scale, const Tensor& W, const Tensor& dx) {
  const int64_t N = logits.shape[0], V = logits.shape[1], H = W.shape[1];
  Tensor d = empty(logits.shape, logits.dtype, device());
  cross_entropy_backward(logits, lse, targets, ignore_index, label_smoothing, grad, grad_scale, d);
  mm(*this, false, false, N, H, V, 1.0, d, W, 0.0, dx);  // dx = dlogits W (set)
}

void Backend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  unary(UnaryOp::Silu, gate, out);  // out holds silu(gate) for the moment
  binary(BinaryOp::Mul, out, up, out);
}

void Backend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy,
                              const Tensor* dgate, const Tensor* dup) {
  if (dup) {
    unary(UnaryOp::Silu, gate, *dup);
    binary(BinaryOp::Mul, dy, *dup, *dup);
  }
  if (dgate) {
    Tensor t = empty(dy.shape, dy.dtype, device());
    binary(BinaryOp::Mul, dy, up, t);
    unary_backward(UnaryOp::Silu, gate, t, *dgate);
  }
}

}  // namespace lc
