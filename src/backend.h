// The one interface every device implements. The op layer (ops.h) validates
// shapes, dtypes and devices and allocates outputs; a backend only computes.
//
// Two kinds of method: primitives (pure virtual), which every backend writes
// with its own kernels, and composites (linear, LoRA, merge), written once in
// composite.cpp from the primitives. A backend overrides a composite only to
// fuse it (the CPU fuses the adapter's rank-r pass).
//
// Gradient outputs follow one rule, written beside each method: "set" means the
// output is overwritten; "accumulate" means the result is added to what is
// there. A null output pointer means that gradient is not wanted and no work
// is done for it (frozen weights cost nothing).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tensor.h"

namespace lc {

enum class BinaryOp : int { Add = 0, Sub = 1, Mul = 2, Div = 3 };
inline constexpr EnumName<BinaryOp> kBinaryOpNames[] = {
    {"add", BinaryOp::Add}, {"sub", BinaryOp::Sub}, {"mul", BinaryOp::Mul}, {"div", BinaryOp::Div}};
enum class UnaryOp : int {
  Relu = 0, Gelu = 1, GeluTanh = 2, Silu = 3, Exp = 4, Log = 5, Neg = 6, Sqrt = 7, Abs = 8
};
constexpr int kUnaryOps = 9;
inline constexpr EnumName<UnaryOp> kUnaryOpNames[] = {
    {"relu", UnaryOp::Relu}, {"gelu", UnaryOp::Gelu}, {"geluTanh", UnaryOp::GeluTanh},
    {"silu", UnaryOp::Silu}, {"exp", UnaryOp::Exp},   {"log", UnaryOp::Log},
    {"neg", UnaryOp::Neg},   {"sqrt", UnaryOp::Sqrt}, {"abs", UnaryOp::Abs}};
static_assert(sizeof(kUnaryOpNames) / sizeof(kUnaryOpNames[0]) == kUnaryOps,
              "every UnaryOp needs a name");
enum class RandomKind : int { Normal = 0, Uniform = 1 };
inline constexpr EnumName<RandomKind> kRandomKindNames[] = {{"normal", RandomKind::Normal},
                                                            {"uniform", RandomKind::Uniform}};

// One parameter of a multi-tensor Adam/AdamW update.
struct AdamParam {
  Tensor param, grad, exp_avg, exp_avg_sq;
  Tensor max_exp_avg_sq;  // amsgrad only; storage null otherwise
  int64_t step;           // step count after this update (1 on the first)
};
struct AdamConfig {
  double lr, beta1, beta2, eps, weight_decay;
  bool decoupled;  // AdamW: p *= 1 - lr*wd before the update; Adam adds wd*p to the gradient
  bool amsgrad;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual Device device() const = 0;

  // ---- memory
  virtual void* allocate(size_t bytes) = 0;
  virtual void deallocate(void* p, size_t bytes) = 0;
  virtual void write_from_host(const Tensor& dst, const void* src) = 0;  // same dtype
  virtual void read_to_host(const Tensor& src, void* dst) = 0;
  virtual void copy(const Tensor& dst, const Tensor& src) = 0;  // same device; casts dtype

  // ---- creation
  virtual void fill(const Tensor& t, double value) = 0;
  // Counter-based (Philox4x32-10): element i of a call depends only on
  // (seed, offset, i), so every device produces the same values.
  virtual void random(const Tensor& t, RandomKind kind, uint64_t seed, uint64_t offset, double a,
                      double b) = 0;

  // ---- elementwise
  // out[i] = a[bcast] op b[bcast]; a and b are broadcast to out's shape.
  virtual void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  virtual void affine(const Tensor& x, double alpha, double beta, const Tensor& out) = 0;  // alpha*x+beta
  virtual void axpy(const Tensor& y, const Tensor& x, double alpha) = 0;  // y += alpha*x (accumulate)
  virtual void unary(UnaryOp op, const Tensor& x, const Tensor& out) = 0;
  // dx = dy * f'(x) (set)
  virtual void unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy, const Tensor& dx) = 0;
  // out has x's rank (leading dims may be missing) with some dims 1: sums over the others.
  virtual void reduce_sum_to(const Tensor& x, const Tensor& out) = 0;
  virtual void expand(const Tensor& x, const Tensor& out) = 0;  // broadcast copy
  virtual void permute(const Tensor& x, const std::vector<int64_t>& perm, const Tensor& out) = 0;
  virtual bool all_finite(const Tensor& x) = 0;
  // Softmax over the last dim (rows = numel / last dim), max-subtracted. y (set).
  virtual void softmax(const Tensor& x, const Tensor& y) = 0;
  // dx = y * (dy - sum_j dy_j y_j) per row (set).
  virtual void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;
  // out = x * keep / (1 - p), keep drawn from (seed, offset) by element index
  // (Philox, as random); out may be x. 0 <= p < 1.
  virtual void dropout(const Tensor& x, const Tensor& out, double p, uint64_t seed,
                       uint64_t offset) = 0;

  // ---- matrix products (row-major, batched with element strides)
  // C[b] = alpha * op(A[b]) op(B[b]) + beta * C[b]
  virtual void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
                    const Tensor& A, int64_t strideA, const Tensor& B, int64_t strideB, double beta,
                    const Tensor& C, int64_t strideC, int64_t batch) = 0;

  // ---- composites (composite.cpp)
  // Linear layer: x [M, K], W [N, K], b [N] or null; y [M, N] (set)
  virtual void linear_forward(const Tensor& x, const Tensor& W, const Tensor* b,
                              const Tensor& y);
  // dx [M, K] (set), dW [N, K] (set), db [N] (set)
  virtual void linear_backward(const Tensor& dy, const Tensor& x, const Tensor& W,
                               const Tensor* dx, const Tensor* dW, const Tensor* db);

  // LoRA: y = x W^T + b + scale * (drop(x) A^T) B^T, A [r, K], B [N, r]
  // h [M, r] = drop(x) A^T is kept for backward (set). The dropout mask is not
  // stored: backward regenerates it from (seed, offset). p == 0 means no dropout.
  virtual void lora_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                            const Tensor& B, double scale, double p, uint64_t seed, uint64_t offset,
                            const Tensor& y, const Tensor& h);
  // dx (set) through both paths; dA, dB, dW, db (set).
  virtual void lora_backward(const Tensor& dy, const Tensor& x, const Tensor& W, const Tensor& A,
                             const Tensor& B, const Tensor& h, double scale, double p, uint64_t seed,
                             uint64_t offset, const Tensor* dx, const Tensor* dA, const Tensor* dB,
                             const Tensor* dW, const Tensor* db);
  // W += scale * B A in place (scale < 0 unmerges). With `safe`, the result is
  // built aside and checked for non-finite values; on failure W is untouched
  // and false is returned.
  virtual bool lora_merge(const Tensor& W, const Tensor& A, const Tensor& B, double scale,
                          bool safe);

  // ---- optimiser: every parameter in one call
  virtual void adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg) = 0;

  // ---- losses. logits [N, C]; targets int32 [N] (same device); rows whose target equals
  // ignore_index contribute nothing. loss_rows [N] = -log softmax(logits)[target]
  // (0 for ignored rows), lse [N] = logsumexp per row (kept for backward).
  virtual void cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                     int64_t ignore_index, double label_smoothing,
                                     const Tensor& loss_rows, const Tensor& lse) = 0;
  // dlogits (set) = (softmax - smoothed one-hot) * grad[i] * grad_scale for
  // non-ignored rows, 0 for ignored ones. grad holds 1 value (a reduced loss)
  // or N (one per row).
  virtual void cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                      const Tensor& targets, int64_t ignore_index,
                                      double label_smoothing, const Tensor& grad,
                                      double grad_scale, const Tensor& dlogits) = 0;

  // ---- transformer blocks
  // Embedding: ids int32 (any shape, N ids), weight [V, D]; out [N, D] (set) = weight[ids[n]].
  // An id outside [0, V) throws before anything is written.
  virtual void embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out) = 0;
  // dweight [V, D] (set): zeros, then row n of dy [N, D] added at row ids[n], for n ascending
  // (repeated ids add up in position order, so every backend gives the same bits). order [N]
  // int32, or null: the positions sorted by (ids[n], n), from which a backend that cannot walk
  // the positions in turn (CUDA) sums each id's rows without atomics; the CPU does not need it.
  virtual void embedding_backward(const Tensor& ids, const Tensor* order, const Tensor& dy,
                                  const Tensor& dweight) = 0;

  // RMSNorm over the last dim D of x (rows R = numel / D), as Hugging Face's LlamaRMSNorm:
  // rstd [R] (set) = 1 / sqrt(mean(x^2) + eps) with the mean in double, kept for backward;
  // y (set) = weight * (x * rstd), weight [D] or null (no scaling).
  virtual void rms_norm_forward(const Tensor& x, const Tensor* weight, double eps, const Tensor& y,
                                const Tensor& rstd) = 0;
  // dx (set), dweight [D] (set; only with a weight).
  virtual void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                                 const Tensor& rstd, const Tensor* dx, const Tensor* dweight) = 0;

  // Rotary position embedding, "rotate half" layout: x [..., T, Dh] (Dh even), cos/sin [T, Dh];
  // out (set) = x * cos + rotate_half(x) * sin, rotate_half(x) = concat(-x[Dh/2:], x[:Dh/2]).
  virtual void rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                              const Tensor& out) = 0;
  // dx (set): the transpose of the forward map applied to dy (cos/sin get no gradient).
  virtual void rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin,
                               const Tensor& dx) = 0;

  // Scaled dot-product attention with grouped KV heads: q [B, Hq, T, Dh], k [B, Hkv, S, Dh],
  // v [B, Hkv, S, Dv], Hq a multiple of Hkv; query head h reads kv head h / (Hq / Hkv).
  // With `causal` (S == T) query i sees keys 0..i. out [B, Hq, T, Dv] (set) =
  // softmax(scale * q k^T) v; lse [B, Hq, T] (set) = logsumexp of each row of scaled scores,
  // kept for backward, which recomputes the probabilities from it. S == 0 gives zero rows.
  // `starts` (null, or int32 [B, T] with causal): query i of row b sees keys starts[b, i]..i only,
  // 0 <= starts[b, i] <= i (checked by the caller). One array expresses right and left padding
  // (a padded query sees itself only) and packed documents (each token's document start).
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                 double scale, const Tensor& out, const Tensor& lse,
                                 const Tensor* starts) = 0;
  // dq (set); dk, dv (set: summed over the query heads that share a kv head).
  virtual void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& lse, bool causal, double scale,
                                  const Tensor* dq, const Tensor* dk, const Tensor* dv,
                                  const Tensor* starts) = 0;
};

// The backend of a device (backend.cpp); CUDA devices throw when CUDA is unavailable.
Backend& backend_for(Device dev);
Backend& cpu_backend();

// What the CPU backend runs on, as backendInfo reports it.
struct CpuInfo {
  std::string blas;         // "openblas", "cblas" or "builtin"
  std::string blas_path;    // library that was loaded ("" for builtin)
  std::string blas_reason;  // why the built-in GEMM is used, when it is
  int blas_threads = 0;     // threads the library reports (builtin: the pool's)
  int threads = 0;          // threads of the pool the CPU backend splits work over
  // Instruction-set extensions of this processor that matter here ("avx2", "fma", "avx512f",
  // "avx512bf16"), and the ones this build's own kernels use on it ("avx2+fma" or "generic").
  std::vector<std::string> features;
  std::string kernels;
};
CpuInfo cpu_info();

}  // namespace lc
