// The op layer: checks shapes, dtypes and devices (the TypeScript layer checks
// first and gives the friendlier message; these checks keep the core safe on
// its own), allocates outputs and calls the tensor's backend.
#pragma once
#include <cstdint>
#include <vector>

#include "backend.h"

namespace lc::ops {

Tensor full(const Shape& shape, DType dtype, Device dev, double value);
Tensor from_host(const void* data, size_t bytes, const Shape& shape, DType dtype, Device dev);
void to_host(const Tensor& t, void* dst, size_t bytes);
Tensor random(const Shape& shape, DType dtype, Device dev, RandomKind kind, uint64_t seed,
              uint64_t offset, double a, double b);

void copy_(const Tensor& dst, const Tensor& src);   // same numel; crosses devices
Tensor to(const Tensor& t, Device dev, DType dtype);  // new tensor (always a copy)

Shape broadcast_shapes(const Shape& a, const Shape& b);
Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b);
Tensor affine(const Tensor& x, double alpha, double beta);
void axpy_(const Tensor& y, const Tensor& x, double alpha);
Tensor unary(UnaryOp op, const Tensor& x);
Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy);
Tensor sum_to(const Tensor& x, const Shape& shape);
Tensor expand(const Tensor& x, const Shape& shape);
Tensor permute(const Tensor& x, const std::vector<int64_t>& perm);
bool all_finite(const Tensor& x);
Tensor softmax(const Tensor& x);  // over the last dim
Tensor softmax_backward(const Tensor& y, const Tensor& dy);
// x * keep / (1 - p), keep drawn by element index from (seed, offset): the same call on the
// gradient is the backward. 0 <= p < 1.
Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset);

// ---- selection, scans, masks, clamp, pow, log-softmax (semantics in backend.h)
struct ValuesIndices {
  Tensor values, indices;  // indices int32
};
// Max or min along dim: values and indices of x's shape with dim as 1.
ValuesIndices minmax(const Tensor& x, int64_t dim, bool is_max);
// The gradient of a pick along dim (max/min/topk): dy and indices of one shape, dim k.
Tensor index_dim_backward(const Tensor& dy, const Tensor& indices, int64_t dim,
                          const Shape& x_shape);
// The k largest (or smallest) along dim, sorted: x's shape with dim as k.
ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim, bool largest);
Tensor cumsum(const Tensor& x, int64_t dim, bool reverse);
Tensor compare(CompareOp op, const Tensor& a, const Tensor& b);  // int32 mask, broadcast
Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b);  // broadcast
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy);
Tensor pow(const Tensor& a, const Tensor& b);  // broadcast
struct PowGrads {
  Tensor da, db;  // a's and b's shapes; storage null when not requested
};
PowGrads pow_backward(const Tensor& a, const Tensor& b, const Tensor& dy, bool need_da,
                      bool need_db);
Tensor log_softmax(const Tensor& x);  // over the last dim
Tensor log_softmax_backward(const Tensor& y, const Tensor& dy);

// Batched product of 3-D tensors: a [Ba, m, k] (or [Ba, k, m] with transA),
// b [Bb, k, n] (or [Bb, n, k]); Ba and Bb equal or 1 (broadcast without a copy).
Tensor bmm(const Tensor& a, const Tensor& b, bool transA, bool transB);

// C = alpha op(a) op(b) + beta C in place, 2-D operands on one device.
void gemm_into(const Tensor& a, const Tensor& b, const Tensor& c, bool transA, bool transB,
               double alpha, double beta);

Tensor linear(const Tensor& x, const Tensor& W, const Tensor* b);
struct LinearGrads {
  Tensor dx, dW, db;  // storage null when not requested
};
LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& W, bool need_dx,
                            bool need_dW, bool need_db);

struct LoraOut {
  Tensor y, h;
};
LoraOut lora_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                     const Tensor& B, double scale, double p, uint64_t seed, uint64_t offset);
struct LoraGrads {
  Tensor dx, dA, dB, dW, db;  // storage null when not requested
};
LoraGrads lora_backward(const Tensor& dy, const Tensor& x, const Tensor& W, const Tensor& A,
                        const Tensor& B, const Tensor& h, double scale, double p, uint64_t seed,
                        uint64_t offset, bool need_dx, bool need_dA, bool need_dB, bool need_dW,
                        bool need_db);
bool lora_merge(const Tensor& W, const Tensor& A, const Tensor& B, double scale, bool safe);

void adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg);
// The total L2 norm of the grads (0-d), and the grads scaled in place to at most max_norm
// (Backend::clip_grad_norm_); all on one device in one float dtype.
Tensor clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm, bool skip_nonfinite);

struct CrossEntropyOut {
  Tensor loss_rows, lse;
};
CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                      int64_t ignore_index, double label_smoothing);
Tensor cross_entropy_backward(const Tensor& logits, const Tensor& lse, const Tensor& targets,
                              int64_t ignore_index, double label_smoothing, const Tensor& grad,
                              double grad_scale);
// linear(x, W) (no bias) and cross_entropy_forward of it in one call: {logits, loss_rows, lse}.
struct LinearCrossEntropyOut {
  Tensor logits, loss_rows, lse;
};
LinearCrossEntropyOut linear_cross_entropy_forward(const Tensor& x, const Tensor& W,
                                                   const Tensor& targets, int64_t ignore_index,
                                                   double label_smoothing);
// dx [N, H] = cross_entropy_backward(...) W for logits [N, V] = x W^T, W [V, H] (the head's input
// gradient without the [N, V] one in memory on the CPU).
Tensor linear_cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                     const Tensor& targets, int64_t ignore_index,
                                     double label_smoothing, const Tensor& grad, double grad_scale,
                                     const Tensor& W);

// ---- transformer blocks (see backend.h for the exact semantics)
// ids int32 of any shape, weight [V, D] -> [...ids.shape, D].
Tensor embedding(const Tensor& ids, const Tensor& weight);
// dy [...ids.shape, D] -> dweight [num_embeddings, D]; order: null or the positions sorted by
// (id, position), int32 [N] (Backend::embedding_backward; CUDA needs it).
Tensor embedding_backward(const Tensor& ids, const Tensor* order, const Tensor& dy,
                          int64_t num_embeddings);

struct RmsNormOut {
  Tensor y, rstd;  // rstd [rows]
};
RmsNormOut rms_norm(const Tensor& x, const Tensor* weight, double eps);
struct RmsNormGrads {
  Tensor dx, dweight;  // storage null when not requested
};
RmsNormGrads rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                               const Tensor& rstd, bool need_dx, bool need_dweight);

// silu(gate) * up (Backend::swiglu_forward); gate and up of one shape and dtype.
Tensor swiglu(const Tensor& gate, const Tensor& up);
struct SwigluGrads {
  Tensor dgate, dup;  // storage null when not requested
};
SwigluGrads swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, bool need_dgate,
                            bool need_dup);

Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin);
Tensor rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin);

struct AttentionOut {
  Tensor out, lse;  // lse [B, Hq, T], float32 for 16-bit inputs
};
// starts: null or int32 [B, T] (causal only), the first key each query sees (backend.h).
// bthd: q/k/v/out laid out [B, T, H, D] instead of [B, H, T, D] (backend.h).
AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                       double scale, const Tensor* starts = nullptr, bool bthd = false);
struct AttentionGrads {
  Tensor dq, dk, dv;  // storage null when not requested
};
// out: the forward's output.
AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  bool causal, double scale, bool need_dq, bool need_dk,
                                  bool need_dv, const Tensor* starts = nullptr, bool bthd = false);

// ---- views and joins (backend.h: strided_copy, index_gather, triangle)
// A new contiguous tensor of `sizes`: element i = x[offset + sum_d i_d strides[d]].
Tensor strided_read(const Tensor& x, const Shape& sizes, const std::vector<int64_t>& strides,
                    int64_t offset);
// dst[offset + sum_d i_d strides[d]] = src[i] for every index i of `sizes` (src has that many
// elements; the caller keeps the destination elements distinct).
void strided_write_(const Tensor& dst, const Shape& sizes, const std::vector<int64_t>& strides,
                    int64_t offset, const Tensor& src);
// index int32 on x's device. select (torch.index_select): index 1-D, the result is x's shape with
// dim's size that of the index. Else (torch.gather): index has x's rank, no larger than x in the
// other dims, and the result has its shape.
Tensor gather(const Tensor& x, const Tensor& index, int64_t dim, bool select);
// dx of x_shape (set): dy scatter-added back through the same index. order: null, or with
// select the index positions sorted by (value, position) (Backend::index_gather_backward).
Tensor gather_backward(const Tensor& index, const Tensor* order, int64_t dim, bool select,
                       const Tensor& dy, const Shape& x_shape);
// tril (upper false) / triu over the last two dims (x at least 2-D).
Tensor triangle(const Tensor& x, int64_t k, bool upper);

}  // namespace lc::ops
