// The CUDA backend: the Backend interface of src/backend.h on one GPU. One
// file per op, forward and backward side by side (elementwise, reduce,
// softmax, linear, adam, embedding, rms_norm, rotary, attention .cu), each a
// kernels section and then its methods of CudaBackend; memory.cpp holds the
// memory methods and the registry of backends. The composites (linear, LoRA,
// merge) are Backend's defaults, written from these (src/composite.cpp).
//
// Each method locks the device (Guard; recursive, so a method may call
// another), makes it current and queues the op's kernels or cuBLAS calls on
// the device's stream, then returns; only reads to the host and the
// finiteness check wait for the GPU. Semantics ("set" / "accumulate",
// shapes) are those of src/backend.h; the CPU backend is the reference each
// one is tested against.
#pragma once
#include <cstdint>
#include <vector>

#include "../src/backend.h"
#include "runtime.h"

namespace lc::cuda {

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(Context& c) : c_(c) {}
  Device device() const override { return Device{DeviceType::CUDA, c_.index}; }

  // ---- memory.cpp
  void* allocate(size_t bytes) override;
  void deallocate(void* p, size_t bytes) override;
  void write_from_host(const Tensor& dst, const void* src) override;
  void read_to_host(const Tensor& src, void* dst) override;
  void copy(const Tensor& dst, const Tensor& src) override;

  // ---- elementwise.cu
  void fill(const Tensor& t, double value) override;
  void random(const Tensor& t, RandomKind kind, uint64_t seed, uint64_t offset, double a,
              double b) override;
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void affine(const Tensor& x, double alpha, double beta, const Tensor& out) override;
  void axpy(const Tensor& y, const Tensor& x, double alpha) override;
  void unary(UnaryOp op, const Tensor& x, const Tensor& out) override;
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy, const Tensor& dx) override;
  void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) override;
  void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, const Tensor* dgate,
                       const Tensor* dup) override;
  void expand(const Tensor& x, const Tensor& out) override;
  void permute(const Tensor& x, const std::vector<int64_t>& perm, const Tensor& out) override;
  bool all_finite(const Tensor& x) override;  // synchronises
  void dropout(const Tensor& x, const Tensor& out, double p, uint64_t seed,
               uint64_t offset) override;

  // ---- reduce.cu
  void reduce_sum_to(const Tensor& x, const Tensor& out) override;

  // ---- softmax.cu (softmax and cross entropy)
  void softmax(const Tensor& x, const Tensor& y) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                             double label_smoothing, const Tensor& loss_rows,
                             const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& lse, const Tensor& targets,
                              int64_t ignore_index, double label_smoothing, const Tensor& grad,
                              double grad_scale, const Tensor& dlogits) override;

  // ---- minmax.cu, topk.cu, cumsum.cu, compare.cu (compare, where), clamp.cu, pow.cu,
  // log_softmax.cu
  void minmax_dim(const Tensor& x, int64_t dim, bool is_max, const Tensor& values,
                  const Tensor& indices) override;
  void index_dim_backward(const Tensor& dy, const Tensor& indices, int64_t dim,
                          const Tensor& dx) override;
  void topk(const Tensor& x, int64_t dim, int64_t k, bool largest, const Tensor& values,
            const Tensor& indices) override;
  void cumsum(const Tensor& x, int64_t dim, bool reverse, const Tensor& out) override;
  void compare(CompareOp op, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) override;
  void clamp(const Tensor& x, double lo, double hi, const Tensor& out) override;
  void clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy,
                      const Tensor& dx) override;
  void pow(const Tensor& a, const Tensor& b, const Tensor& out) override;
  void pow_backward(const Tensor& a, const Tensor& b, const Tensor& dy, const Tensor* da,
                    const Tensor* db) override;
  void log_softmax(const Tensor& x, const Tensor& y) override;
  void log_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;

  // ---- linear.cu (cuBLAS)
  void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
            const Tensor& A, int64_t strideA, const Tensor& B, int64_t strideB, double beta,
            const Tensor& C, int64_t strideC, int64_t batch) override;

  // ---- adam.cu (all parameters of one call in one launch per dtype)
  void adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg) override;
  void clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm, bool skip_nonfinite,
                       const Tensor& norm) override;

  // ---- embedding.cu, rms_norm.cu, rotary.cu, attention.cu
  void embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out) override;
  void embedding_backward(const Tensor& ids, const Tensor* order, const Tensor& dy,
                          const Tensor& dweight) override;
  void rms_norm_forward(const Tensor& x, const Tensor* weight, double eps, const Tensor& y,
                        const Tensor& rstd) override;
  void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                         const Tensor& rstd, const Tensor* dx, const Tensor* dweight) override;
  void rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                      const Tensor& out) override;
  void rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin,
                       const Tensor& dx) override;
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                         double scale, const Tensor& out, const Tensor& lse,
                         const Tensor* starts, bool bthd) override;
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& out, const Tensor& lse, bool causal, double scale,
                          const Tensor* dq, const Tensor* dk, const Tensor* dv,
                          const Tensor* starts, bool bthd) override;

  // ---- views.cu (strided copies, gather along a dim, triangles)
  void strided_copy(const Tensor& dst, int64_t dst_offset, const std::vector<int64_t>& dst_strides,
                    const Tensor& src, int64_t src_offset, const std::vector<int64_t>& src_strides,
                    const Shape& sizes) override;
  void index_gather(const Tensor& x, const Tensor& index, const std::vector<int64_t>& index_strides,
                    int64_t dim, const Tensor& out) override;
  void index_gather_backward(const Tensor& index, const Tensor* order,
                             const std::vector<int64_t>& index_strides, int64_t dim,
                             const Tensor& dy, const Tensor& dx) override;
  void triangle(const Tensor& x, int64_t k, bool upper, const Tensor& out) override;

 private:
  // ---- elementwise.cu
  void cast(const Tensor& dst, const Tensor& src);  // copy between dtypes (they differ)
  // out[i] = x[offset of i under `strides`] (a broadcast or a permutation), any dtype.
  void gather(const Tensor& x, const Tensor& out, const std::vector<int64_t>& strides);

  Context& c_;
};

}  // namespace lc::cuda
