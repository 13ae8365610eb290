// Matrix products on cuBLAS: the batched GEMM behind matmul, the frozen
// linear layer, the LoRA adapter's forward and backward, and the in-place
// merge. Row-major throughout: a row-major C = op(A) op(B) is the column-major
// C^T = op(B)^T op(A)^T, so every call hands cuBLAS the operands swapped.
//
// The LoRA forward adds the adapter's product into the output through the
// GEMM's beta = 1 instead of a separate pass, and the backward computes no
// weight gradient for a frozen weight (dW null). The dropout mask is drawn
// from (seed, offset) by element index in the same pass that applies it, and
// redrawn in backward rather than stored.
#include <climits>

#include "kernels.cuh"
#include "ops.h"

namespace lc::cu {

// ================================================================ kernels
// The products are cuBLAS calls; bias rows, dropout and column sums are the
// kernels of elementwise.cu and reduce.cu. Only the degenerate K = 0 product
// needs one of its own.
namespace {
template <typename T>
__global__ void scale_kernel(T* p, int64_t n, T beta) {
  LC_GRID_STRIDE(i, n) p[i] *= beta;
}
}  // namespace

// ================================================================ launchers
namespace {

int as_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    fail(std::string("matrix product: ") + what + " = " + std::to_string(v) +
         " is beyond what cuBLAS takes (2^31 - 1)");
  return static_cast<int>(v);
}

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

}  // namespace

void gemm(Context& c, DType dtype, bool tA, bool tB, int64_t M, int64_t N, int64_t K,
          double alpha, const void* A, int64_t lda, int64_t sA, const void* B, int64_t ldb,
          int64_t sB, double beta, void* C, int64_t ldc, int64_t sC, int64_t batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {
    // An empty sum: C = beta C. Callers pass dense C (ldc == N, batches adjacent).
    LC_CHECK(ldc == N && (batch == 1 || sC == M * N), "matrix product: K = 0 needs a dense C");
    const int64_t n = batch * M * N;
    if (beta == 1.0) return;
    if (beta == 0.0) {  // C is not read, as cuBLAS does with beta = 0 (it may hold NaN)
      check(cudaMemsetAsync(C, 0, static_cast<size_t>(n) * dtype_size(dtype), c.stream), "cudaMemsetAsync");
      return;
    }
    dispatch_float(dtype, "matrix product", [&](auto z) {
      using T = decltype(z);
      scale_kernel<T><<<grid_for(n), kThreads, 0, c.stream>>>(static_cast<T*>(C), n, static_cast<T>(beta));
    });
    launched(c, "matrix product (K = 0)");
    return;
  }
  const int m = as_int(N, "N"), n = as_int(M, "M"), k = as_int(K, "K");
  const int l_a = as_int(ldb, "ldb"), l_b = as_int(lda, "lda"), l_c = as_int(ldc, "ldc");
  const int nb = as_int(batch, "batch");
  const Cublas& b = cublas();
  cublasHandle_t h = blas_handle(c, dtype == DType::F32);
  if (dtype == DType::F32) {
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    const float* pa = static_cast<const float*>(B);
    const float* pb = static_cast<const float*>(A);
    float* pc = static_cast<float*>(C);
    if (nb == 1)
      check_blas(b.sgemm(h, op(tB), op(tA), m, n, k, &al, pa, l_a, pb, l_b, &be, pc, l_c), "cublasSgemm");
    else
      check_blas(b.sgemm_strided_batched(h, op(tB), op(tA), m, n, k, &al, pa, l_a, sB, pb, l_b, sA,
                                         &be, pc, l_c, sC, nb),
                 "cublasSgemmStridedBatched");
  } else if (dtype == DType::F64) {
    const double* pa = static_cast<const double*>(B);
    const double* pb = static_cast<const double*>(A);
    double* pc = static_cast<double*>(C);
    if (nb == 1)
      check_blas(b.dgemm(h, op(tB), op(tA), m, n, k, &alpha, pa, l_a, pb, l_b, &beta, pc, l_c), "cublasDgemm");
    else
      check_blas(b.dgemm_strided_batched(h, op(tB), op(tA), m, n, k, &alpha, pa, l_a, sB, pb, l_b,
                                         sA, &beta, pc, l_c, sC, nb),
                 "cublasDgemmStridedBatched");
  } else {
    fail("matrix product: expected float32 or float64");
  }
  launched(c, "matrix product (cuBLAS)");
}

namespace {
// One product of dense row-major matrices, batch 1.
void mm(Context& c, DType dt, bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha,
        const void* A, const void* B, double beta, void* C) {
  gemm(c, dt, tA, tB, M, N, K, alpha, A, tA ? M : K, 0, B, tB ? K : N, 0, beta, C, N, 0, 1);
}
}  // namespace

void linear_forward(Context& c, const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& y) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0];
  // y = b in every row, then the GEMM accumulates x W^T on top (beta = 1).
  if (b) broadcast_rows(c, y, *b);
  mm(c, x.dtype, false, true, M, N, K, 1.0, x.raw(), W.raw(), b ? 1.0 : 0.0, y.raw());
}

void linear_backward(Context& c, const Tensor& dy, const Tensor& x, const Tensor& W,
                     const Tensor* dx, const Tensor* dW, const Tensor* db) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0];
  if (dx) mm(c, x.dtype, false, false, M, K, N, 1.0, dy.raw(), W.raw(), 0.0, dx->raw());  // dy W
  if (dW) mm(c, x.dtype, true, false, N, K, M, 1.0, dy.raw(), x.raw(), 0.0, dW->raw());   // dy^T x
  if (db) sum_to(c, dy, *db);
}

void lora_forward(Context& c, const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                  const Tensor& B, double scale, double p, uint64_t seed, uint64_t offset,
                  const Tensor& y, const Tensor& h) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
  const DType dt = x.dtype;
  // h = drop(x) A^T  [M, r]
  Tensor xd;
  const void* xin = x.raw();
  if (p > 0) {
    xd = scratch(c, x.shape, dt);
    dropout(c, x, xd, p, seed, offset);
    xin = xd.raw();
  }
  mm(c, dt, false, true, M, r, K, 1.0, xin, A.raw(), 0.0, h.raw());
  // y = b + scale h B^T, then the frozen product x W^T accumulates on top (beta = 1).
  if (b) broadcast_rows(c, y, *b);
  mm(c, dt, false, true, M, N, r, scale, h.raw(), B.raw(), b ? 1.0 : 0.0, y.raw());
  mm(c, dt, false, true, M, N, K, 1.0, x.raw(), W.raw(), 1.0, y.raw());
}

void lora_backward(Context& c, const Tensor& dy, const Tensor& x, const Tensor& W,
                   const Tensor& A, const Tensor& B, const Tensor& h, double scale, double p,
                   uint64_t seed, uint64_t offset, const Tensor* dx, const Tensor* dA,
                   const Tensor* dB, const Tensor* dW, const Tensor* db) {
  const int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
  const DType dt = x.dtype;
  // dB = scale dy^T h  [N, r] (set)
  if (dB) mm(c, dt, true, false, N, r, M, scale, dy.raw(), h.raw(), 0.0, dB->raw());
  Tensor dh;
  if (dA || dx) {
    // dh = scale dy B  [M, r]: the gradient at the adapter's bottleneck.
    dh = scratch(c, {M, r}, dt);
    mm(c, dt, false, false, M, r, N, scale, dy.raw(), B.raw(), 0.0, dh.raw());
  }
  if (dA) {
    // dA = dh^T drop(x)  [r, K] (set); the mask is redrawn, not stored.
    Tensor xd;
    const void* xin = x.raw();
    if (p > 0) {
      xd = scratch(c, x.shape, dt);
      dropout(c, x, xd, p, seed, offset);
      xin = xd.raw();
    }
    mm(c, dt, true, false, r, K, M, 1.0, dh.raw(), xin, 0.0, dA->raw());
  }
  if (dx) {
    // dx = drop'(dh A) (set; the mask applied in place), then the frozen path
    // dy W accumulates on top (beta = 1).
    mm(c, dt, false, false, M, K, r, 1.0, dh.raw(), A.raw(), 0.0, dx->raw());
    if (p > 0) dropout(c, *dx, *dx, p, seed, offset);
    mm(c, dt, false, false, M, K, N, 1.0, dy.raw(), W.raw(), 1.0, dx->raw());
  }
  if (dW) mm(c, dt, true, false, N, K, M, 1.0, dy.raw(), x.raw(), 0.0, dW->raw());
  if (db) sum_to(c, dy, *db);
}

bool lora_merge(Context& c, const Tensor& W, const Tensor& A, const Tensor& B, double scale,
                bool safe) {
  const int64_t N = W.shape[0], K = W.shape[1], r = A.shape[0];
  const DType dt = W.dtype;
  if (!safe) {
    // W += scale B A: one GEMM over W.
    mm(c, dt, false, false, N, K, r, scale, B.raw(), A.raw(), 1.0, W.raw());
    return true;
  }
  // Build the result aside, check it on the device, and only then replace W,
  // so a refused merge leaves W bit-identical.
  Tensor tmp = scratch(c, W.shape, dt);
  const size_t bytes = static_cast<size_t>(W.numel()) * dtype_size(dt);
  check(cudaMemcpyAsync(tmp.raw(), W.raw(), bytes, cudaMemcpyDeviceToDevice, c.stream), "cudaMemcpyAsync");
  mm(c, dt, false, false, N, K, r, scale, B.raw(), A.raw(), 1.0, tmp.raw());
  if (!all_finite(c, tmp)) return false;
  check(cudaMemcpyAsync(W.raw(), tmp.raw(), bytes, cudaMemcpyDeviceToDevice, c.stream), "cudaMemcpyAsync");
  return true;
}

}  // namespace lc::cu
