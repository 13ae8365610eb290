// The CUDA backend: the Backend interface of src/backend.h on one GPU. Each
// method locks the device, makes it current and queues the op's kernels on
// the device's stream (cuda/*.cu); only reads to the host and the finiteness
// check wait for the GPU.
#include <algorithm>
#include <mutex>
#include <vector>

#include "../src/cuda_api.h"
#include "indexer.h"
#include "ops.h"

namespace lc::cu {

Tensor scratch(Context& c, const Shape& shape, DType dtype) {
  return empty(shape, dtype, Device{DeviceType::CUDA, c.index});
}

namespace {

// x, with its leading 1s dropped, is out's trailing dims: out is x repeated.
bool repeats_rows(const Shape& x, const Shape& out) {
  size_t lead = 0;
  while (lead < x.size() && x[lead] == 1) ++lead;
  const size_t k = x.size() - lead;
  return k <= out.size() && std::equal(x.begin() + lead, x.end(), out.end() - k);
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(Context& c) : c_(c) {}
  Device device() const override { return Device{DeviceType::CUDA, c_.index}; }

  // ---- memory
  void* allocate(size_t bytes) override {
    Guard g(c_);
    return device_alloc(c_, bytes);
  }
  void deallocate(void* p, size_t bytes) override {
    try {
      Guard g(c_);
      device_free(c_, p, bytes);
    } catch (...) {
      // A destructor must not throw (the runtime may be shutting down at exit).
    }
  }
  void write_from_host(const Tensor& dst, const void* src) override {
    Guard g(c_);
    // From pageable memory the copy is staged before the call returns, so the
    // source may be reused at once.
    check(cudaMemcpyAsync(dst.raw(), src, dst.numel() * dtype_size(dst.dtype),
                          cudaMemcpyHostToDevice, c_.stream),
          "copy to the GPU");
  }
  void read_to_host(const Tensor& src, void* dst) override {
    Guard g(c_);
    check(cudaMemcpyAsync(dst, src.raw(), src.numel() * dtype_size(src.dtype),
                          cudaMemcpyDeviceToHost, c_.stream),
          "copy from the GPU");
    sync(c_);
  }
  void copy(const Tensor& dst, const Tensor& src) override {
    Guard g(c_);
    if (dst.dtype == src.dtype) {
      if (dst.raw() != src.raw())
        check(cudaMemcpyAsync(dst.raw(), src.raw(), dst.numel() * dtype_size(dst.dtype),
                              cudaMemcpyDeviceToDevice, c_.stream),
              "copy on the GPU");
      return;
    }
    cast_copy(c_, dst, src);
  }

  // ---- creation
  void fill(const Tensor& t, double value) override {
    Guard g(c_);
    cu::fill(c_, t, value);
  }
  void random(const Tensor& t, RandomKind kind, uint64_t seed, uint64_t offset, double a,
              double b) override {
    Guard g(c_);
    cu::random(c_, t, kind == RandomKind::Normal, seed, offset, a, b);
  }

  // ---- elementwise
  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override {
    Guard g(c_);
    cu::binary(c_, op, a, b, out);
  }
  void affine(const Tensor& x, double alpha, double beta, const Tensor& out) override {
    Guard g(c_);
    cu::affine(c_, x, alpha, beta, out);
  }
  void axpy(const Tensor& y, const Tensor& x, double alpha) override {
    Guard g(c_);
    cu::axpy(c_, y, x, alpha);
  }
  void unary(UnaryOp op, const Tensor& x, const Tensor& out) override {
    Guard g(c_);
    cu::unary(c_, op, x, out);
  }
  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy, const Tensor& dx) override {
    Guard g(c_);
    cu::unary_backward(c_, op, x, dy, dx);
  }
  void reduce_sum_to(const Tensor& x, const Tensor& out) override {
    Guard g(c_);
    sum_to(c_, x, out);
  }
  void expand(const Tensor& x, const Tensor& out) override {
    Guard g(c_);
    if (repeats_rows(x.shape, out.shape)) broadcast_rows(c_, x, out);  // bias rows: no indexer
    else gather(c_, x, out, broadcast_strides(x.shape, out.shape));
  }
  void permute(const Tensor& x, const std::vector<int64_t>& perm, const Tensor& out) override {
    Guard g(c_);
    const size_t r = x.shape.size();
    std::vector<int64_t> xst(r, 1);
    for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) xst[d] = xst[d + 1] * x.shape[d + 1];
    std::vector<int64_t> st(r);
    for (size_t d = 0; d < r; ++d) st[d] = xst[perm[d]];  // output dim d walks input dim perm[d]
    gather(c_, x, out, st);
  }
  bool all_finite(const Tensor& x) override {
    Guard g(c_);
    return cu::all_finite(c_, x);
  }
  void softmax(const Tensor& x, const Tensor& y) override {
    Guard g(c_);
    cu::softmax(c_, x, y);
  }
  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override {
    Guard g(c_);
    cu::softmax_backward(c_, y, dy, dx);
  }
  void dropout(const Tensor& x, const Tensor& out, double p, uint64_t seed,
               uint64_t offset) override {
    Guard g(c_);
    cu::dropout(c_, x, out, p, seed, offset);
  }

  // ---- products
  void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha, const Tensor& A,
            int64_t sA, const Tensor& B, int64_t sB, double beta, const Tensor& C, int64_t sC,
            int64_t batch) override {
    Guard g(c_);
    cu::gemm(c_, C.dtype, tA, tB, M, N, K, alpha, A.raw(), tA ? M : K, sA, B.raw(), tB ? K : N,
             sB, beta, C.raw(), N, sC, batch);
  }

  // ---- optimiser and losses
  void adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg) override {
    Guard g(c_);
    cu::adam_step(c_, params, cfg);
  }
  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                             double ls, const Tensor& loss_rows, const Tensor& lse) override {
    Guard g(c_);
    cu::cross_entropy_forward(c_, logits, targets, ignore_index, ls, loss_rows, lse);
  }
  void cross_entropy_backward(const Tensor& logits, const Tensor& lse, const Tensor& targets,
                              int64_t ignore_index, double ls, const Tensor& grad,
                              double grad_scale, const Tensor& dlogits) override {
    Guard g(c_);
    cu::cross_entropy_backward(c_, logits, lse, targets, ignore_index, ls, grad, grad_scale, dlogits);
  }

  // ---- transformer blocks
  void embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out) override {
    Guard g(c_);
    cu::embedding_forward(c_, ids, weight, out);
  }
  void embedding_backward(const Tensor& ids, const Tensor* order, const Tensor& dy,
                          const Tensor& dweight) override {
    if (!order && ids.numel() && dweight.numel())
      fail("embedding backward on CUDA: the ids' sort order is required");
    Guard g(c_);
    cu::embedding_backward(c_, ids, order, dy, dweight);
  }
  void rms_norm_forward(const Tensor& x, const Tensor* weight, double eps, const Tensor& y,
                        const Tensor& rstd) override {
    Guard g(c_);
    cu::rms_norm_forward(c_, x, weight, eps, y, rstd);
  }
  void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                         const Tensor& rstd, const Tensor* dx, const Tensor* dweight) override {
    Guard g(c_);
    cu::rms_norm_backward(c_, dy, x, weight, rstd, dx, dweight);
  }
  void rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                      const Tensor& out) override {
    Guard g(c_);
    cu::rotary_forward(c_, x, cos, sin, out);
  }
  void rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin,
                       const Tensor& dx) override {
    Guard g(c_);
    cu::rotary_backward(c_, dy, cos, sin, dx);
  }
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                         double scale, const Tensor& out, const Tensor& lse) override {
    Guard g(c_);
    cu::attention_forward(c_, q, k, v, causal, scale, out, lse);
  }
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& lse, bool causal, double scale, const Tensor* dq,
                          const Tensor* dk, const Tensor* dv) override {
    Guard g(c_);
    cu::attention_backward(c_, dout, q, k, v, lse, causal, scale, dq, dk, dv);
  }

 private:
  Context& c_;
};

}  // namespace
}  // namespace lc::cu

namespace lc::cuda {

Backend& backend(int index) {
  cu::Context& c = cu::context(index);  // throws when CUDA or the device is unavailable
  static std::mutex mu;
  static auto* backends = new std::vector<cu::CudaBackend*>();  // never destroyed, like the contexts
  std::lock_guard<std::mutex> lk(mu);
  if (backends->size() <= static_cast<size_t>(index)) backends->resize(index + 1, nullptr);
  if (!(*backends)[index]) (*backends)[index] = new cu::CudaBackend(c);
  return *(*backends)[index];
}

}  // namespace lc::cuda
