// The launchers of the CUDA backend, one group per file. Each queues its
// kernels (or cuBLAS calls) on the device's stream and returns; the caller
// holds the device's Guard. Semantics ("set" / "accumulate", shapes) are those
// of the matching Backend method in src/backend.h; the CPU backend is the
// reference each one is tested against.
#pragma once
#include <cstdint>
#include <vector>

#include "../src/backend.h"
#include "runtime.h"

namespace lc::cu {

// ---- elementwise.cu
void fill(Context& c, const Tensor& t, double value);
void random(Context& c, const Tensor& t, bool normal, uint64_t seed, uint64_t offset, double a,
            double b);
void cast_copy(Context& c, const Tensor& dst, const Tensor& src);  // dtypes differ
void binary(Context& c, BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out);
void affine(Context& c, const Tensor& x, double alpha, double beta, const Tensor& out);
void axpy(Context& c, const Tensor& y, const Tensor& x, double alpha);
void unary(Context& c, UnaryOp op, const Tensor& x, const Tensor& out);
void unary_backward(Context& c, UnaryOp op, const Tensor& x, const Tensor& dy, const Tensor& dx);
// out[i] = x[offset of i under `strides`] (a broadcast or a permutation), any dtype.
void gather(Context& c, const Tensor& x, const Tensor& out, const std::vector<int64_t>& strides);
bool all_finite(Context& c, const Tensor& x);  // synchronises
// out = x * keep / (1 - p), the mask from (seed, offset) by element index; out may be x.
void dropout(Context& c, const Tensor& x, const Tensor& out, double p, uint64_t seed,
             uint64_t offset);
// out (set) = x repeated: x's shape, leading 1s dropped, is out's trailing dims.
void broadcast_rows(Context& c, const Tensor& x, const Tensor& out);

// ---- reduce.cu
// out (set): x summed over the dims where out has 1 (or lacks the leading dim).
void sum_to(Context& c, const Tensor& x, const Tensor& out);

// ---- softmax.cu (softmax and cross entropy)
void softmax(Context& c, const Tensor& x, const Tensor& y);
void softmax_backward(Context& c, const Tensor& y, const Tensor& dy, const Tensor& dx);
void cross_entropy_forward(Context& c, const Tensor& logits, const Tensor& targets,
                           int64_t ignore_index, double label_smoothing, const Tensor& loss_rows,
                           const Tensor& lse);
void cross_entropy_backward(Context& c, const Tensor& logits, const Tensor& lse,
                            const Tensor& targets, int64_t ignore_index, double label_smoothing,
                            const Tensor& grad, double grad_scale, const Tensor& dlogits);

// ---- linear.cu (cuBLAS products)
// Row-major C[b] = alpha op(A[b]) op(B[b]) + beta C[b] on raw device pointers of `dtype`;
// lda/ldb/ldc are the row strides of the stored matrices, s* the batch strides (0 broadcasts).
void gemm(Context& c, DType dtype, bool tA, bool tB, int64_t M, int64_t N, int64_t K,
          double alpha, const void* A, int64_t lda, int64_t sA, const void* B, int64_t ldb,
          int64_t sB, double beta, void* C, int64_t ldc, int64_t sC, int64_t batch);

// ---- adam.cu (all parameters of one call in one launch per dtype)
void adam_step(Context& c, const std::vector<AdamParam>& params, const AdamConfig& cfg);

// ---- transformer.cu
void embedding_forward(Context& c, const Tensor& ids, const Tensor& weight, const Tensor& out);
void embedding_backward(Context& c, const Tensor& ids, const Tensor* order, const Tensor& dy,
                        const Tensor& dweight);
void rms_norm_forward(Context& c, const Tensor& x, const Tensor* weight, double eps,
                      const Tensor& y, const Tensor& rstd);
void rms_norm_backward(Context& c, const Tensor& dy, const Tensor& x, const Tensor* weight,
                       const Tensor& rstd, const Tensor* dx, const Tensor* dweight);
void rotary_forward(Context& c, const Tensor& x, const Tensor& cos, const Tensor& sin,
                    const Tensor& out);
void rotary_backward(Context& c, const Tensor& dy, const Tensor& cos, const Tensor& sin,
                     const Tensor& dx);
void attention_forward(Context& c, const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                       double scale, const Tensor& out, const Tensor& lse);
void attention_backward(Context& c, const Tensor& dout, const Tensor& q, const Tensor& k,
                        const Tensor& v, const Tensor& lse, bool causal, double scale,
                        const Tensor* dq, const Tensor* dk, const Tensor* dv);

// A temporary device tensor on c's device (from the caching allocator).
Tensor scratch(Context& c, const Shape& shape, DType dtype);

}  // namespace lc::cu
