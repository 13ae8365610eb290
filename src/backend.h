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
  Relu = 0, Gelu = 1, GeluTanh = 2, Silu = 3, Exp = 4, Log = 5, Neg = 6, Sqrt = 7, Abs = 8,
  Sigmoid = 9, Tanh = 10
};
constexpr int kUnaryOps = 11;
inline constexpr EnumName<UnaryOp> kUnaryOpNames[] = {
    {"relu", UnaryOp::Relu}, {"gelu", UnaryOp::Gelu}, {"geluTanh", UnaryOp::GeluTanh},
    {"silu", UnaryOp::Silu}, {"exp", UnaryOp::Exp},   {"log", UnaryOp::Log},
    {"neg", UnaryOp::Neg},   {"sqrt", UnaryOp::Sqrt}, {"abs", UnaryOp::Abs},
    {"sigmoid", UnaryOp::Sigmoid}, {"tanh", UnaryOp::Tanh}};
static_assert(sizeof(kUnaryOpNames) / sizeof(kUnaryOpNames[0]) == kUnaryOps,
              "every UnaryOp needs a name");
// Comparisons give int32 masks (1 where true, 0 where false): the core has no bool dtype.
enum class CompareOp : int { Eq = 0, Ne = 1, Lt = 2, Le = 3, Gt = 4, Ge = 5 };
constexpr int kCompareOps = 6;
inline constexpr EnumName<CompareOp> kCompareOpNames[] = {
    {"eq", CompareOp::Eq}, {"ne", CompareOp::Ne}, {"lt", CompareOp::Lt},
    {"le", CompareOp::Le}, {"gt", CompareOp::Gt}, {"ge", CompareOp::Ge}};
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

  // ---- selection, scans, masks, clamp, pow, log-softmax (minmax, topk, cumsum, compare,
  // clamp, pow, log_softmax .cpp/.cu). "Along dim": x is viewed as [outer, n, inner] with
  // n = x.shape[dim]; indices are int32.
  // values, indices [outer, inner] (set): the max (or min) over n and the first index that reaches
  // it; a NaN wins (max and min propagate NaN, as torch), the first NaN's index. n >= 1.
  virtual void minmax_dim(const Tensor& x, int64_t dim, bool is_max, const Tensor& values,
                          const Tensor& indices) = 0;
  // dx (x's shape [outer, n, inner]) (set): zeros, then dy[o, j, i] added at
  // dx[o, indices[o, j, i], i] for j ascending; dy and indices [outer, k, inner].
  virtual void index_dim_backward(const Tensor& dy, const Tensor& indices, int64_t dim,
                                  const Tensor& dx) = 0;
  // values, indices [outer, k, inner] (set): the k largest (or smallest) along dim, sorted
  // (largest first, or smallest first); equal values in index order; NaN counts as the largest.
  virtual void topk(const Tensor& x, int64_t dim, int64_t k, bool largest, const Tensor& values,
                    const Tensor& indices) = 0;
  // out (set) = inclusive prefix sums along dim (suffix sums with `reverse`: the backward),
  // accumulated in double.
  virtual void cumsum(const Tensor& x, int64_t dim, bool reverse, const Tensor& out) = 0;
  // out int32 (set) = a[bcast] op b[bcast] ? 1 : 0; a and b of one dtype (any).
  virtual void compare(CompareOp op, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out (set) = cond[bcast] != 0 ? a[bcast] : b[bcast]; cond int32, a, b and out of one dtype.
  virtual void where(const Tensor& cond, const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // out (set) = min(max(x, lo), hi) (NaN stays NaN); lo = -inf / hi = +inf for a one-sided clamp.
  virtual void clamp(const Tensor& x, double lo, double hi, const Tensor& out) = 0;
  // dx (set) = dy where lo <= x <= hi (the boundary included, as torch), else 0.
  virtual void clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy,
                              const Tensor& dx) = 0;
  // out (set) = a[bcast] ^ b[bcast].
  virtual void pow(const Tensor& a, const Tensor& b, const Tensor& out) = 0;
  // With torch's conventions, per output element (out's shape; reduced by the op layer):
  // da (set) = dy * (b == 0 ? 0 : b * a^(b-1)); db (set) = dy * (a == 0 && b >= 0 ? 0 : a^b log a).
  virtual void pow_backward(const Tensor& a, const Tensor& b, const Tensor& dy, const Tensor* da,
                            const Tensor* db) = 0;
  // Log-softmax over the last dim, max-subtracted, the log-sum-exp in double. y (set).
  virtual void log_softmax(const Tensor& x, const Tensor& y) = 0;
  // dx (set) = dy - exp(y) * sum_j dy_j per row.
  virtual void log_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) = 0;

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
  // The head and its cross entropy: logits [N, V] (set) = x [N, H] W^T (W [V, H]), then loss_rows
  // and lse (set) as cross_entropy_forward gives them. The CPU folds the logsumexp into the
  // product as it writes the logits instead of a pass reading them back.
  virtual void linear_cross_entropy_forward(const Tensor& x, const Tensor& W,
                                            const Tensor& targets, int64_t ignore_index,
                                            double label_smoothing, const Tensor& logits,
                                            const Tensor& loss_rows, const Tensor& lse);
  // The head's input gradient through its cross entropy: dx [N, H] (set) = dlogits W, dlogits
  // as cross_entropy_backward makes it from logits [N, V] (= x W^T), lse, targets, grad and
  // grad_scale; W [V, H]. The CPU forms dlogits while packing the product's operand, never
  // writing the [N, V] gradient out.
  virtual void linear_cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                             const Tensor& targets, int64_t ignore_index,
                                             double label_smoothing, const Tensor& grad,
                                             double grad_scale, const Tensor& W,
                                             const Tensor& dx);

  // ---- optimiser: every parameter in one call
  virtual void adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg) = 0;
  // torch.nn.utils.clip_grad_norm_ over every gradient in one call: norm (0-d, the grads' dtype)
  // = sqrt of the sum of squares (accumulated in double), then each grad *= min(1, max_norm /
  // (norm + 1e-6)) in place. With skip_nonfinite, a norm that is NaN or Inf scales nothing.
  virtual void clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm, bool skip_nonfinite,
                               const Tensor& norm) = 0;

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
  // With `causal` (S >= T) query i sees keys 0..i + S - T (bottom-right aligned: with S > T
  // the queries are the last T of S positions, a decode step over cached keys). out [B, Hq, T, Dv] (set) =
  // softmax(scale * q k^T) v; lse [B, Hq, T] (set) = logsumexp of each row of scaled scores,
  // kept for backward, which recomputes the probabilities from it. S == 0 gives zero rows.
  // `starts` (null, or int32 [B, T] with causal): query i of row b sees keys starts[b, i]..i only,
  // 0 <= starts[b, i] <= i + S - T (checked by the caller). One array expresses right and left padding
  // (a padded query sees itself only) and packed documents (each token's document start).
  // bthd: q [B, T, Hq, Dh], k [B, S, Hkv, Dh], v [B, S, Hkv, Dv], out [B, T, Hq, Dv] instead (the
  // layout linear projections produce, so no permuted copies); lse stays [B, Hq, T]. float32,
  // float64, bfloat16, float16; lse is float32 for the 16-bit types (float math inside).
  virtual void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                 double scale, const Tensor& out, const Tensor& lse,
                                 const Tensor* starts, bool bthd) = 0;
  // dq (set); dk, dv (set: summed over the query heads that share a kv head). out: the forward's
  // output (D_i = dout_i . out_i).
  virtual void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse, bool causal,
                                  double scale, const Tensor* dq, const Tensor* dk, const Tensor* dv,
                                  const Tensor* starts, bool bthd) = 0;

  // The Llama MLP's gate (SwiGLU): out (set) = silu(gate) * up, same shapes and dtype, rounded as
  // SiLU followed by a multiply round it (PyTorch's act_fn(gate_proj(x)) * up_proj(x), each op
  // rounding to the tensors' dtype). Composite: unary + binary; the CPU fuses float32 into one pass.
  virtual void swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out);
  // dgate (set) = silu'(gate) * (dy * up), dup (set) = dy * silu(gate), as the two ops' backwards
  // round them; either may be null (not wanted).
  virtual void swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy,
                               const Tensor* dgate, const Tensor* dup);

  // ---- views and joins (slicing, cat, gather, triangles): tensors stay contiguous, so these copy.
  // For every index i of `sizes`: dst[dst_offset + sum_d i_d dst_strides[d]] =
  // src[src_offset + sum_d i_d src_strides[d]] (element offsets and strides, >= 0, in range;
  // any dtype, the same for both; the destination elements are distinct).
  virtual void strided_copy(const Tensor& dst, int64_t dst_offset,
                            const std::vector<int64_t>& dst_strides, const Tensor& src,
                            int64_t src_offset, const std::vector<int64_t>& src_strides,
                            const Shape& sizes) = 0;
  // Gather along `dim` (torch.gather / index_select): for every index i of out's shape,
  // out[i] (set) = x[i with i[dim] replaced by index[sum_d i_d index_strides[d]]]; any dtype.
  // index int32; an entry outside [0, x.shape[dim]) throws (CUDA: at the next synchronisation)
  // and its element is written as 0.
  virtual void index_gather(const Tensor& x, const Tensor& index,
                            const std::vector<int64_t>& index_strides, int64_t dim,
                            const Tensor& out) = 0;
  // dx (set): zeros, then dy[i] added at x's position of out element i, for i ascending (a
  // position several entries name sums them in that order on every backend: the same bits).
  // order: null, or for a 1-D index shared by every line (index_select) its positions sorted by
  // (value, position), int32, from which CUDA sums each value's run without scanning the whole
  // index per element; the CPU does not need it.
  virtual void index_gather_backward(const Tensor& index, const Tensor* order,
                                     const std::vector<int64_t>& index_strides, int64_t dim,
                                     const Tensor& dy, const Tensor& dx) = 0;
  // out (set) = x with the elements of each matrix (last two dims, row r, column c) zeroed
  // where c - r > k (lower: tril) or c - r < k (upper: triu); any dtype.
  virtual void triangle(const Tensor& x, int64_t k, bool upper, const Tensor& out) = 0;
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
  // The bfloat16 GEMM: "avx512bf16" (native vdpbf16ps kernel) or "panels" (float32 GEMM on
  // converted panels; always so for float16).
  std::string bf16_gemm;
};
CpuInfo cpu_info();

}  // namespace lc
