// The CPU backend: the reference implementation of every Backend primitive,
// and the fused LoRA overrides. One file per op, forward and backward side by
// side (memory, elementwise, reduce, softmax, linear, adam, embedding,
// rms_norm, rotary, attention .cpp), each defining its methods of CpuBackend.
// Matrix products go through gemm_f32/gemm_f64 (a CBLAS or the built-in
// kernel); the rest are plain loops, split over threads only where the
// tensors are large. Private to the core: the rest of it reaches the CPU
// through backend.h (cpu_backend(), cpu_info()).
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "../backend.h"
#include "../dispatch.h"
#include "../parallel.h"

namespace lc {

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device{DeviceType::CPU, 0}; }

  // ---- memory.cpp
  void* allocate(size_t bytes) override;
  void deallocate(void* p, size_t bytes) override;
  void write_from_host(const Tensor& dst, const void* src) override;
  void read_to_host(const Tensor& src, void* dst) override;
  void copy(const Tensor& dst, const Tensor& src) override;

  // ---- elementwise.cpp
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
  bool all_finite(const Tensor& x) override;
  void dropout(const Tensor& x, const Tensor& out, double p, uint64_t seed,
               uint64_t offset) override;

  // ---- reduce.cpp
  void reduce_sum_to(const Tensor& x, const Tensor& out) override;

  // ---- softmax.cpp (softmax and cross entropy)
  void softmax(const Tensor& x, const Tensor& y) override;
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override;
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                             double label_smoothing, const Tensor& loss_rows,
                             const Tensor& lse) override;
  void cross_entropy_backward(const Tensor& logits, const Tensor& lse, const Tensor& targets,
                              int64_t ignore_index, double label_smoothing, const Tensor& grad,
                              double grad_scale, const Tensor& dlogits) override;

  // ---- minmax.cpp, topk.cpp, cumsum.cpp, compare.cpp (compare, where), clamp.cpp, pow.cpp,
  // log_softmax.cpp
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

  // ---- linear.cpp (GEMM; bias and LoRA's rank-r term as the GEMM's tail, else the row pass)
  void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
            const Tensor& A, int64_t strideA, const Tensor& B, int64_t strideB, double beta,
            const Tensor& C, int64_t strideC, int64_t batch) override;
  void linear_cross_entropy_forward(const Tensor& x, const Tensor& W, const Tensor& targets,
                                    int64_t ignore_index, double label_smoothing,
                                    const Tensor& logits, const Tensor& loss_rows,
                                    const Tensor& lse) override;
  void linear_cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                     const Tensor& targets, int64_t ignore_index,
                                     double label_smoothing, const Tensor& grad, double grad_scale,
                                     const Tensor& W, const Tensor& dx) override;
  void linear_forward(const Tensor& x, const Tensor& W, const Tensor* b,
                      const Tensor& y) override;
  void lora_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                    const Tensor& B, double scale, double p, uint64_t seed, uint64_t offset,
                    const Tensor& y, const Tensor& h) override;
  void lora_backward(const Tensor& dy, const Tensor& x, const Tensor& W, const Tensor& A,
                     const Tensor& B, const Tensor& h, double scale, double p, uint64_t seed,
                     uint64_t offset, const Tensor* dx, const Tensor* dA, const Tensor* dB,
                     const Tensor* dW, const Tensor* db) override;

  // ---- adam.cpp
  void adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg) override;
  void clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm, bool skip_nonfinite,
                       const Tensor& norm) override;

  // ---- embedding.cpp, rms_norm.cpp, rotary.cpp, attention.cpp
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

  // ---- views.cpp (strided copies, gather along a dim, triangles)
  void strided_copy(const Tensor& dst, int64_t dst_offset, const std::vector<int64_t>& dst_strides,
                    const Tensor& src, int64_t src_offset, const std::vector<int64_t>& src_strides,
                    const Shape& sizes) override;
  void index_gather(const Tensor& x, const Tensor& index, const std::vector<int64_t>& index_strides,
                    int64_t dim, const Tensor& out) override;
  void index_gather_backward(const Tensor& index, const Tensor* order,
                             const std::vector<int64_t>& index_strides, int64_t dim,
                             const Tensor& dy, const Tensor& dx) override;
  void triangle(const Tensor& x, int64_t k, bool upper, const Tensor& out) override;
};

// ---- shared loop helpers (integer work only: the files that include them are
// compiled with different floating-point flags, see CMakeLists.txt)

constexpr int64_t kGrain = 1 << 15;  // elements per thread chunk for elementwise loops

// fn(begin, end) over [0, n) elements: serially when small, else on the pool.
template <typename Fn>
void par(int64_t n, Fn&& fn) {
  if (n < 2 * kGrain) {
    fn(int64_t{0}, n);
  } else {
    parallel_for(n, kGrain, fn);
  }
}

constexpr int64_t kWork = 1 << 15;  // about this many multiply-adds per thread chunk

// fn(begin, end) over [0, n) items of about `cost` operations each: serially
// when the total is small, else on the pool in chunks of at least kWork.
template <typename Fn>
void par_items(int64_t n, int64_t cost, Fn&& fn) {
  if (n <= 0) return;
  cost = std::max<int64_t>(cost, 1);
  if (n == 1 || n * cost < 2 * kWork) {
    fn(int64_t{0}, n);
    return;
  }
  parallel_for(n, std::max<int64_t>(1, kWork / cost), fn);
}

// Calls fn(out_index, offsets...) over out's elements in order, with the
// innermost dimension as a tight loop.
template <size_t NIn, typename Fn>
void for_each_bcast(const Shape& out, const std::vector<int64_t> (&strides)[NIn], Fn&& fn) {
  int64_t n = shape_numel(out);
  if (n == 0) return;
  size_t r = out.size();
  if (r == 0) {
    int64_t off[NIn] = {};
    fn(int64_t{0}, int64_t{1}, off, nullptr);
    return;
  }
  int64_t inner = out[r - 1];
  int64_t inner_st[NIn];
  for (size_t j = 0; j < NIn; ++j) inner_st[j] = strides[j][r - 1];
  std::vector<int64_t> idx(r, 0);
  int64_t off[NIn] = {};
  for (int64_t base = 0; base < n; base += inner) {
    fn(base, inner, off, inner_st);
    // advance the outer counter
    for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) {
      ++idx[d];
      for (size_t j = 0; j < NIn; ++j) off[j] += strides[j][d];
      if (idx[d] < out[d]) break;
      for (size_t j = 0; j < NIn; ++j) off[j] -= strides[j][d] * out[d];
      idx[d] = 0;
    }
  }
}

}  // namespace lc
