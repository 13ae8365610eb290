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
#include "backend.h"

namespace lc {
namespace {

// One product of dense row-major matrices, batch 1: C = alpha op(A) op(B) + beta C.
void mm(Backend& be, bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha,
        const Tensor& A, const Tensor& B, double beta, const Tensor& C) {
  be.gemm(tA, tB, M, N, K, alpha, A, 0, B, 0, beta, C, 0, 1);
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

}  // namespace lc
