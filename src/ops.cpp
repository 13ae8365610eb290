#include "ops.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <string>
#include <vector>

namespace lc::ops {
namespace {

// Every floating op takes the 16-bit types: bfloat16 and float16 besides float32 and float64.
void require_floating(const Tensor& t, const char* op, const char* name) {
  LC_CHECK(is_floating(t.dtype), std::string(op) + ": " + name +
                                     " must be float32, float64, bfloat16 or float16, got " +
                                     dtype_name(t.dtype));
}

// The dtype an op computes and keeps its float statistics in (rstd, a loss, a logsumexp):
// float32 for the halves (PyTorch's opmath type), the dtype itself otherwise.
DType opmath_dtype(DType t) { return is_half(t) ? DType::F32 : t; }

// t must be in `dtype` on like's device: the float32 statistics saved beside a half tensor.
void require_dtype(const Tensor& t, DType dtype, const Tensor& like, const char* op,
                   const char* name) {
  LC_CHECK(t.device() == like.device(), std::string(op) + ": " + name + " is on " +
                                            t.device().str() + " but the input is on " +
                                            like.device().str());
  LC_CHECK(t.dtype == dtype, std::string(op) + ": " + name + " must be " + dtype_name(dtype) +
                                 " for a " + dtype_name(like.dtype) + " input, got " +
                                 dtype_name(t.dtype));
}

void same(const Tensor& a, const Tensor& b, const char* op, const char* na, const char* nb) {
  LC_CHECK(a.device() == b.device(), std::string(op) + ": " + na + " is on " + a.device().str() +
                                         " but " + nb + " is on " + b.device().str());
  LC_CHECK(a.dtype == b.dtype, std::string(op) + ": " + na + " is " + dtype_name(a.dtype) + " but " +
                                   nb + " is " + dtype_name(b.dtype));
}

void rank(const Tensor& t, int64_t r, const char* op, const char* name) {
  LC_CHECK(t.dim() == r, std::string(op) + ": " + name + " must have " + std::to_string(r) +
                             " dims, got shape " + shape_str(t.shape));
}

void dim_eq(int64_t got, int64_t want, const char* op, const std::string& what) {
  LC_CHECK(got == want, std::string(op) + ": " + what + " must be " + std::to_string(want) +
                            ", got " + std::to_string(got));
}

Backend& be(const Tensor& t) { return backend_for(t.device()); }

}  // namespace

Tensor full(const Shape& shape, DType dtype, Device dev, double value) {
  // Converting NaN, an infinity or a value outside int32's range to int32 is undefined behaviour.
  LC_CHECK(dtype != DType::I32 || (value > -2147483649.0 && value < 2147483648.0),
           "fill: " + std::to_string(value) +
               " cannot be stored in an int32 tensor (integers in [-2147483648, 2147483647])");
  Tensor t = empty(shape, dtype, dev);
  if (t.numel()) backend_for(dev).fill(t, value);
  return t;
}

Tensor from_host(const void* data, size_t bytes, const Shape& shape, DType dtype, Device dev) {
  Tensor t = empty(shape, dtype, dev);
  LC_CHECK(bytes == t.numel() * dtype_size(dtype),
           "from_host: " + std::to_string(bytes) + " bytes given for shape " + shape_str(shape) +
               " of " + dtype_name(dtype));
  if (bytes) backend_for(dev).write_from_host(t, data);
  return t;
}

void to_host(const Tensor& t, void* dst, size_t bytes) {
  LC_CHECK(bytes == t.numel() * dtype_size(t.dtype), "to_host: destination size mismatch");
  if (bytes) be(t).read_to_host(t, dst);
}

Tensor random(const Shape& shape, DType dtype, Device dev, RandomKind kind, uint64_t seed,
              uint64_t offset, double a, double b) {
  Tensor t = empty(shape, dtype, dev);
  require_floating(t, "random", "tensor");
  if (t.numel()) backend_for(dev).random(t, kind, seed, offset, a, b);
  return t;
}

void copy_(const Tensor& dst, const Tensor& src) {
  LC_CHECK(dst.numel() == src.numel(), "copy_: source has " + std::to_string(src.numel()) +
                                           " elements, destination " + std::to_string(dst.numel()));
  if (!dst.numel()) return;
  if (dst.device() == src.device()) {
    be(dst).copy(dst, src);
    return;
  }
  // Across devices: through a host buffer of the source's dtype.
  Tensor host = empty(src.shape, src.dtype, Device{});
  be(src).read_to_host(src, host.raw());
  if (dst.dtype == src.dtype) {
    be(dst).write_from_host(dst, host.raw());
  } else {
    Tensor cast = empty(src.shape, dst.dtype, Device{});
    cpu_backend().copy(cast, host);
    be(dst).write_from_host(dst, cast.raw());
  }
}

Tensor to(const Tensor& t, Device dev, DType dtype) {
  Tensor out = empty(t.shape, dtype, dev);
  copy_(out, t);
  return out;
}

Shape broadcast_shapes(const Shape& a, const Shape& b) {
  size_t r = std::max(a.size(), b.size());
  Shape out(r);
  for (size_t i = 0; i < r; ++i) {
    int64_t da = i < r - a.size() ? 1 : a[i - (r - a.size())];
    int64_t db = i < r - b.size() ? 1 : b[i - (r - b.size())];
    LC_CHECK(da == db || da == 1 || db == 1,
             "shapes " + shape_str(a) + " and " + shape_str(b) + " cannot be broadcast together");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

Tensor binary(BinaryOp op, const Tensor& a, const Tensor& b) {
  same(a, b, "binary op", "a", "b");
  require_floating(a, "binary op", "a");
  Tensor out = empty(broadcast_shapes(a.shape, b.shape), a.dtype, a.device());
  if (out.numel()) be(a).binary(op, a, b, out);
  return out;
}

Tensor affine(const Tensor& x, double alpha, double beta) {
  require_floating(x, "affine", "x");
  Tensor out = empty(x.shape, x.dtype, x.device());
  if (out.numel()) be(x).affine(x, alpha, beta, out);
  return out;
}

void axpy_(const Tensor& y, const Tensor& x, double alpha) {
  same(y, x, "accumulate", "destination", "source");
  require_floating(y, "accumulate", "destination");
  LC_CHECK(y.numel() == x.numel(), "accumulate: shapes " + shape_str(y.shape) + " and " +
                                       shape_str(x.shape) + " differ");
  if (y.numel()) be(y).axpy(y, x, alpha);
}

namespace {
void check_unary_op(UnaryOp op) {
  const int o = static_cast<int>(op);
  LC_CHECK(o >= 0 && o < kUnaryOps, "unary op: no op " + std::to_string(o));
}
}  // namespace

Tensor unary(UnaryOp op, const Tensor& x) {
  check_unary_op(op);
  require_floating(x, "unary op", "x");
  Tensor out = empty(x.shape, x.dtype, x.device());
  if (out.numel()) be(x).unary(op, x, out);
  return out;
}

Tensor unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy) {
  check_unary_op(op);
  same(x, dy, "unary backward", "x", "grad");
  require_floating(x, "unary backward", "x");
  LC_CHECK(x.numel() == dy.numel(), "unary backward: grad shape mismatch");
  Tensor dx = empty(x.shape, x.dtype, x.device());
  if (dx.numel()) be(x).unary_backward(op, x, dy, dx);
  return dx;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  require_floating(x, "sum", "x");
  LC_CHECK(shape.size() <= x.shape.size(), "sum: cannot reduce " + shape_str(x.shape) + " to " +
                                                shape_str(shape));
  size_t off = x.shape.size() - shape.size();
  for (size_t i = 0; i < shape.size(); ++i)
    LC_CHECK(shape[i] == x.shape[off + i] || shape[i] == 1,
             "sum: cannot reduce " + shape_str(x.shape) + " to " + shape_str(shape));
  Tensor out = empty(shape, x.dtype, x.device());
  if (!out.numel()) return out;
  if (!x.numel()) {
    be(x).fill(out, 0.0);
    return out;
  }
  be(x).reduce_sum_to(x, out);
  return out;
}

Tensor expand(const Tensor& x, const Shape& shape) {
  LC_CHECK(broadcast_shapes(x.shape, shape) == shape,
           "expand: cannot broadcast " + shape_str(x.shape) + " to " + shape_str(shape));
  Tensor out = empty(shape, x.dtype, x.device());
  if (out.numel()) be(x).expand(x, out);
  return out;
}

Tensor permute(const Tensor& x, const std::vector<int64_t>& perm) {
  LC_CHECK(perm.size() == x.shape.size(), "permute: expected " + std::to_string(x.dim()) +
                                              " dims in the permutation");
  std::vector<bool> seen(perm.size(), false);
  Shape shape(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) {
    LC_CHECK(perm[i] >= 0 && perm[i] < x.dim() && !seen[perm[i]], "permute: invalid permutation");
    seen[perm[i]] = true;
    shape[i] = x.shape[perm[i]];
  }
  Tensor out = empty(shape, x.dtype, x.device());
  if (out.numel()) be(x).permute(x, perm, out);
  return out;
}

bool all_finite(const Tensor& x) {
  require_floating(x, "all_finite", "x");
  return x.numel() == 0 || be(x).all_finite(x);
}

Tensor softmax(const Tensor& x) {
  require_floating(x, "softmax", "x");
  LC_CHECK(x.dim() >= 1, "softmax: x must have at least one dim");
  Tensor y = empty(x.shape, x.dtype, x.device());
  if (y.numel()) be(x).softmax(x, y);
  return y;
}

Tensor softmax_backward(const Tensor& y, const Tensor& dy) {
  same(y, dy, "softmax backward", "y", "grad");
  LC_CHECK(y.shape == dy.shape, "softmax backward: grad shape mismatch");
  Tensor dx = empty(y.shape, y.dtype, y.device());
  if (dx.numel()) be(y).softmax_backward(y, dy, dx);
  return dx;
}

Tensor bmm(const Tensor& a, const Tensor& b, bool tA, bool tB) {
  const char* op = "matmul";
  same(a, b, op, "a", "b");
  require_floating(a, op, "a");
  rank(a, 3, op, "a");
  rank(b, 3, op, "b");
  int64_t Ba = a.shape[0], Bb = b.shape[0];
  LC_CHECK(Ba == Bb || Ba == 1 || Bb == 1, "matmul: batch sizes " + std::to_string(Ba) + " and " +
                                               std::to_string(Bb) + " differ");
  int64_t M = tA ? a.shape[2] : a.shape[1], K = tA ? a.shape[1] : a.shape[2];
  int64_t Kb = tB ? b.shape[2] : b.shape[1], N = tB ? b.shape[1] : b.shape[2];
  LC_CHECK(K == Kb, "matmul: inner dimensions differ (" + std::to_string(K) + " and " +
                        std::to_string(Kb) + ")");
  int64_t batch = std::max(Ba, Bb);
  Tensor c = empty({batch, M, N}, a.dtype, a.device());
  if (!c.numel()) return c;
  be(a).gemm(tA, tB, M, N, K, 1.0, a, Ba == 1 ? 0 : M * K, b, Bb == 1 ? 0 : K * N, 0.0, c, M * N,
             batch);
  return c;
}

void gemm_into(const Tensor& a, const Tensor& b, const Tensor& c, bool tA, bool tB, double alpha,
               double beta) {
  const char* op = "gemm";
  same(a, b, op, "a", "b");
  same(a, c, op, "a", "c");
  require_floating(a, op, "a");
  rank(a, 2, op, "a");
  rank(b, 2, op, "b");
  rank(c, 2, op, "c");
  int64_t M = tA ? a.shape[1] : a.shape[0], K = tA ? a.shape[0] : a.shape[1];
  int64_t Kb = tB ? b.shape[1] : b.shape[0], N = tB ? b.shape[0] : b.shape[1];
  dim_eq(Kb, K, op, "the inner dimension of b");
  dim_eq(c.shape[0], M, op, "c.shape[0]");
  dim_eq(c.shape[1], N, op, "c.shape[1]");
  if (!c.numel()) return;
  be(a).gemm(tA, tB, M, N, K, alpha, a, 0, b, 0, beta, c, 0, 1);
}

namespace {
void check_linear(const char* op, const Tensor& x, const Tensor& W, const Tensor* b) {
  rank(x, 2, op, "x");
  rank(W, 2, op, "weight");
  same(x, W, op, "x", "weight");
  require_floating(x, op, "x");
  dim_eq(x.shape[1], W.shape[1], op, "x.shape[1] (in features)");
  if (b) {
    same(x, *b, op, "x", "bias");
    rank(*b, 1, op, "bias");
    dim_eq(b->shape[0], W.shape[0], op, "bias.shape[0]");
  }
}
// A and B share a dtype: the layer's, or float32 on a bfloat16/float16 layer (PEFT's
// autocast_adapter_dtype keeps a half layer's adapters in float32). No other mix.
void check_adapter(const char* op, const Tensor& W, const Tensor& A, const Tensor& B) {
  rank(A, 2, op, "A");
  rank(B, 2, op, "B");
  if (is_half(W.dtype) && A.dtype == DType::F32) {
    LC_CHECK(A.device() == W.device(), std::string(op) + ": weight is on " + W.device().str() +
                                           " but A is on " + A.device().str());
    same(A, B, op, "A", "B");
  } else {
    LC_CHECK(!is_half(W.dtype) || A.dtype == W.dtype,
             std::string(op) + ": A is " + dtype_name(A.dtype) + " but weight is " +
                 dtype_name(W.dtype) + " (the adapters of a " + dtype_name(W.dtype) +
                 " layer are " + dtype_name(W.dtype) + " or float32)");
    same(W, A, op, "weight", "A");
    same(W, B, op, "weight", "B");
  }
  dim_eq(A.shape[1], W.shape[1], op, "A.shape[1] (in features)");
  dim_eq(B.shape[0], W.shape[0], op, "B.shape[0] (out features)");
  dim_eq(B.shape[1], A.shape[0], op, "B.shape[1] (rank)");
}
void check_grad_out(const char* op, const Tensor& dy, const Tensor& x, const Tensor& W) {
  same(dy, x, op, "grad", "x");
  rank(dy, 2, op, "grad");
  dim_eq(dy.shape[0], x.shape[0], op, "grad.shape[0]");
  dim_eq(dy.shape[1], W.shape[0], op, "grad.shape[1]");
}
Tensor maybe(bool want, const Shape& s, const Tensor& like) {
  return want ? empty(s, like.dtype, like.device()) : Tensor{};
}
const Tensor* ptr(const Tensor& t) { return t.storage ? &t : nullptr; }
bool empty_problem(const Tensor& x, const Tensor& W) { return x.numel() == 0 || W.numel() == 0; }
// The gradients of an empty problem: zeros, but the bias's is still the column sums of dy (with no
// input features, y = b in every row).
void empty_problem_grads(Backend& be, const Tensor& dy, std::initializer_list<Tensor*> grads, Tensor& db) {
  for (Tensor* t : grads)
    if (t->storage && t->numel()) be.fill(*t, 0.0);
  if (db.storage && db.numel()) {
    if (dy.numel()) be.reduce_sum_to(dy, db);
    else be.fill(db, 0.0);
  }
}
}  // namespace

Tensor linear(const Tensor& x, const Tensor& W, const Tensor* b) {
  check_linear("linear", x, W, b);
  Tensor y = empty({x.shape[0], W.shape[0]}, x.dtype, x.device());
  if (y.numel()) be(x).linear_forward(x, W, b, y);
  return y;
}

LinearGrads linear_backward(const Tensor& dy, const Tensor& x, const Tensor& W, bool need_dx,
                            bool need_dW, bool need_db) {
  check_linear("linear backward", x, W, nullptr);
  check_grad_out("linear backward", dy, x, W);
  LinearGrads g{maybe(need_dx, x.shape, x), maybe(need_dW, W.shape, W), maybe(need_db, {W.shape[0]}, W)};
  if (empty_problem(x, W)) {
    empty_problem_grads(be(x), dy, {&g.dx, &g.dW}, g.db);
    return g;
  }
  be(x).linear_backward(dy, x, W, ptr(g.dx), ptr(g.dW), ptr(g.db));
  return g;
}

LoraOut lora_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                     const Tensor& B, double scale, double p, uint64_t seed, uint64_t offset) {
  check_linear("lora forward", x, W, b);
  check_adapter("lora forward", W, A, B);
  LC_CHECK(p >= 0 && p < 1, "lora forward: dropout must be in [0, 1)");
  // h, the adapter's bottleneck, is in the adapters' dtype.
  LoraOut o{empty({x.shape[0], W.shape[0]}, x.dtype, x.device()),
            empty({x.shape[0], A.shape[0]}, A.dtype, x.device())};
  if (o.y.numel()) be(x).lora_forward(x, W, b, A, B, scale, p, seed, offset, o.y, o.h);
  return o;
}

LoraGrads lora_backward(const Tensor& dy, const Tensor& x, const Tensor& W, const Tensor& A,
                        const Tensor& B, const Tensor& h, double scale, double p, uint64_t seed,
                        uint64_t offset, bool need_dx, bool need_dA, bool need_dB, bool need_dW,
                        bool need_db) {
  const char* op = "lora backward";
  check_linear(op, x, W, nullptr);
  check_adapter(op, W, A, B);
  check_grad_out(op, dy, x, W);
  require_dtype(h, A.dtype, x, op, "saved h");
  LC_CHECK(h.dim() == 2 && h.shape[0] == x.shape[0] && h.shape[1] == A.shape[0],
           "lora backward: saved h has the wrong shape " + shape_str(h.shape));
  LoraGrads g{maybe(need_dx, x.shape, x), maybe(need_dA, A.shape, A), maybe(need_dB, B.shape, B),
              maybe(need_dW, W.shape, W), maybe(need_db, {W.shape[0]}, W)};
  if (empty_problem(x, W)) {
    empty_problem_grads(be(x), dy, {&g.dx, &g.dA, &g.dB, &g.dW}, g.db);
    return g;
  }
  be(x).lora_backward(dy, x, W, A, B, h, scale, p, seed, offset, ptr(g.dx), ptr(g.dA), ptr(g.dB),
                      ptr(g.dW), ptr(g.db));
  return g;
}

bool lora_merge(const Tensor& W, const Tensor& A, const Tensor& B, double scale, bool safe) {
  rank(W, 2, "merge", "weight");
  require_floating(W, "merge", "weight");
  check_adapter("merge", W, A, B);
  if (!W.numel()) return true;
  return be(W).lora_merge(W, A, B, scale, safe);
}

Tensor dropout(const Tensor& x, double p, uint64_t seed, uint64_t offset) {
  require_floating(x, "dropout", "x");
  LC_CHECK(p >= 0 && p < 1, "dropout: p must be in [0, 1)");
  Tensor out = empty(x.shape, x.dtype, x.device());
  if (out.numel()) be(x).dropout(x, out, p, seed, offset);
  return out;
}

void adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg) {
  if (params.empty()) return;
  Device dev = params[0].param.device();
  for (const AdamParam& p : params) {
    const char* op = "adam";
    require_floating(p.param, op, "param");
    same(p.param, p.grad, op, "param", "grad");
    same(p.param, p.exp_avg, op, "param", "exp_avg");
    same(p.param, p.exp_avg_sq, op, "param", "exp_avg_sq");
    LC_CHECK(p.param.device() == dev, "adam: all parameters must be on one device");
    int64_t n = p.param.numel();
    LC_CHECK(p.grad.numel() == n && p.exp_avg.numel() == n && p.exp_avg_sq.numel() == n,
             "adam: grad or state has the wrong size for a parameter of shape " +
                 shape_str(p.param.shape));
    if (cfg.amsgrad) {
      LC_CHECK(p.max_exp_avg_sq.storage != nullptr && p.max_exp_avg_sq.numel() == n,
               "adam: amsgrad state missing");
      same(p.param, p.max_exp_avg_sq, op, "param", "max_exp_avg_sq");
    }
    LC_CHECK(p.step >= 1, "adam: step must be >= 1");
  }
  backend_for(dev).adam_step(params, cfg);
}

Tensor clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm, bool skip_nonfinite) {
  LC_CHECK(!grads.empty(), "clip grad norm: no gradients");
  const Tensor& first = grads[0];
  // The norm's dtype is PyTorch's promotion over the grads: float64 over float32 over the
  // halves, bfloat16 with float16 giving float32 (a half model's float32 adapters mix so).
  DType nd = first.dtype;
  for (const Tensor& g : grads) {
    require_floating(g, "clip grad norm", "grad");
    LC_CHECK(g.device() == first.device(), std::string("clip grad norm: the first grad is on ") +
                                               first.device().str() + " but a grad is on " + g.device().str());
    if (g.dtype == nd) continue;
    if (g.dtype == DType::F64 || nd == DType::F64) nd = DType::F64;
    else nd = DType::F32;
  }
  Tensor norm = empty({}, nd, first.device());
  backend_for(first.device()).clip_grad_norm_(grads, max_norm, skip_nonfinite, norm);
  return norm;
}

CrossEntropyOut cross_entropy_forward(const Tensor& logits, const Tensor& targets,
                                      int64_t ignore_index, double ls) {
  const char* op = "cross entropy";
  rank(logits, 2, op, "logits");
  require_floating(logits, op, "logits");
  LC_CHECK(targets.dtype == DType::I32, "cross entropy: targets must be int32");
  LC_CHECK(targets.device() == logits.device(), "cross entropy: targets on another device");
  dim_eq(targets.numel(), logits.shape[0], op, "number of targets");
  LC_CHECK(logits.shape[1] > 0, "cross entropy: logits must have at least one class");
  // The per-row loss and logsumexp: float32 for half logits (the loss of a half model is
  // computed and kept in float32).
  const DType lt = opmath_dtype(logits.dtype);
  CrossEntropyOut o{empty({logits.shape[0]}, lt, logits.device()),
                    empty({logits.shape[0]}, lt, logits.device())};
  if (logits.numel())
    be(logits).cross_entropy_forward(logits, targets, ignore_index, ls, o.loss_rows, o.lse);
  return o;
}

Tensor cross_entropy_backward(const Tensor& logits, const Tensor& lse, const Tensor& targets,
                              int64_t ignore_index, double ls, const Tensor& grad,
                              double grad_scale) {
  const char* op = "cross entropy backward";
  rank(logits, 2, op, "logits");
  require_floating(logits, op, "logits");
  require_dtype(lse, opmath_dtype(logits.dtype), logits, op, "lse");
  require_dtype(grad, opmath_dtype(logits.dtype), logits, op, "grad");
  LC_CHECK(targets.dtype == DType::I32 && targets.numel() == logits.shape[0],
           "cross entropy backward: bad targets");
  LC_CHECK(grad.numel() == 1 || grad.numel() == logits.shape[0],
           "cross entropy backward: grad must have 1 or N elements");
  Tensor d = empty(logits.shape, logits.dtype, logits.device());
  if (d.numel())
    be(logits).cross_entropy_backward(logits, lse, targets, ignore_index, ls, grad, grad_scale, d);
  return d;
}

LinearCrossEntropyOut linear_cross_entropy_forward(const Tensor& x, const Tensor& W,
                                                   const Tensor& targets, int64_t ignore_index,
                                                   double ls) {
  const char* op = "linear cross entropy";
  rank(x, 2, op, "x");
  rank(W, 2, op, "weight");
  require_floating(x, op, "x");
  same(x, W, op, "x", "weight");
  dim_eq(W.shape[1], x.shape[1], op, "weight's columns (x's features)");
  LC_CHECK(targets.dtype == DType::I32, "linear cross entropy: targets must be int32");
  LC_CHECK(targets.device() == x.device(), "linear cross entropy: targets on another device");
  dim_eq(targets.numel(), x.shape[0], op, "number of targets");
  LC_CHECK(W.shape[0] > 0, "linear cross entropy: the weight must have at least one row (class)");
  const DType lt = opmath_dtype(x.dtype);
  LinearCrossEntropyOut o{empty({x.shape[0], W.shape[0]}, x.dtype, x.device()),
                          empty({x.shape[0]}, lt, x.device()), empty({x.shape[0]}, lt, x.device())};
  if (x.shape[0])
    be(x).linear_cross_entropy_forward(x, W, targets, ignore_index, ls, o.logits, o.loss_rows,
                                       o.lse);
  return o;
}

Tensor linear_cross_entropy_backward(const Tensor& logits, const Tensor& lse,
                                     const Tensor& targets, int64_t ignore_index, double ls,
                                     const Tensor& grad, double grad_scale, const Tensor& W) {
  const char* op = "linear cross entropy backward";
  rank(logits, 2, op, "logits");
  rank(W, 2, op, "weight");
  require_floating(logits, op, "logits");
  same(logits, W, op, "logits", "weight");
  dim_eq(W.shape[0], logits.shape[1], op, "weight's rows (one per class)");
  require_dtype(lse, opmath_dtype(logits.dtype), logits, op, "lse");
  require_dtype(grad, opmath_dtype(logits.dtype), logits, op, "grad");
  dim_eq(lse.numel(), logits.shape[0], op, "number of logsumexps");
  LC_CHECK(targets.dtype == DType::I32 && targets.numel() == logits.shape[0] &&
               targets.device() == logits.device(),
           "linear cross entropy backward: bad targets");
  LC_CHECK(grad.numel() == 1 || grad.numel() == logits.shape[0],
           "linear cross entropy backward: grad must have 1 or N elements");
  Tensor dx = empty({logits.shape[0], W.shape[1]}, W.dtype, W.device());
  if (dx.numel())
    be(logits).linear_cross_entropy_backward(logits, lse, targets, ignore_index, ls, grad,
                                             grad_scale, W, dx);
  return dx;
}

// ---------------------------------------------------------------- selection, scans, masks

namespace {
void check_dim(const char* op, const Tensor& x, int64_t dim) {
  LC_CHECK(dim >= 0 && dim < x.dim(), std::string(op) + ": dim " + std::to_string(dim) +
                                          " is out of range for shape " + shape_str(x.shape));
  LC_CHECK(x.shape[dim] <= 2147483647LL,
           std::string(op) + ": dim " + std::to_string(dim) + " is too long for int32 indices");
}
Shape with_dim(Shape s, int64_t dim, int64_t v) {
  s[dim] = v;
  return s;
}
void check_mask(const char* op, const Tensor& mask, const Tensor& like, const char* name) {
  LC_CHECK(mask.dtype == DType::I32, std::string(op) + ": " + name + " must be int32, got " +
                                         dtype_name(mask.dtype));
  LC_CHECK(mask.device() == like.device(), std::string(op) + ": " + name + " is on " +
                                               mask.device().str() + " but the values are on " +
                                               like.device().str());
}
}  // namespace

ValuesIndices minmax(const Tensor& x, int64_t dim, bool is_max) {
  const char* op = is_max ? "max" : "min";
  require_floating(x, op, "x");
  check_dim(op, x, dim);
  LC_CHECK(x.shape[dim] > 0, std::string(op) + ": cannot reduce an empty dim of shape " +
                                 shape_str(x.shape));
  Shape s = with_dim(x.shape, dim, 1);
  ValuesIndices o{empty(s, x.dtype, x.device()), empty(s, DType::I32, x.device())};
  if (x.numel()) be(x).minmax_dim(x, dim, is_max, o.values, o.indices);
  return o;
}

Tensor index_dim_backward(const Tensor& dy, const Tensor& indices, int64_t dim,
                          const Shape& x_shape) {
  const char* op = "index backward";
  require_floating(dy, op, "grad");
  check_mask(op, indices, dy, "indices");
  LC_CHECK(dy.shape == indices.shape && dim >= 0 && dim < dy.dim() &&
               static_cast<int64_t>(x_shape.size()) == dy.dim() &&
               with_dim(dy.shape, dim, 0) == with_dim(x_shape, dim, 0),
           "index backward: grad " + shape_str(dy.shape) + " and indices " +
               shape_str(indices.shape) + " do not fit " + shape_str(x_shape));
  // The indices come from the forward of this op, so they are in range.
  Tensor dx = empty(x_shape, dy.dtype, dy.device());
  if (!dx.numel()) return dx;
  if (!dy.numel()) be(dy).fill(dx, 0.0);
  else be(dy).index_dim_backward(dy, indices, dim, dx);
  return dx;
}

ValuesIndices topk(const Tensor& x, int64_t k, int64_t dim, bool largest) {
  require_floating(x, "topk", "x");
  check_dim("topk", x, dim);
  LC_CHECK(k >= 0 && k <= x.shape[dim], "topk: k must be in [0, " + std::to_string(x.shape[dim]) +
                                            "], got " + std::to_string(k));
  Shape s = with_dim(x.shape, dim, k);
  ValuesIndices o{empty(s, x.dtype, x.device()), empty(s, DType::I32, x.device())};
  if (o.values.numel()) be(x).topk(x, dim, k, largest, o.values, o.indices);
  return o;
}

Tensor cumsum(const Tensor& x, int64_t dim, bool reverse) {
  require_floating(x, "cumsum", "x");
  check_dim("cumsum", x, dim);
  Tensor out = empty(x.shape, x.dtype, x.device());
  if (out.numel()) be(x).cumsum(x, dim, reverse, out);
  return out;
}

Tensor compare(CompareOp op, const Tensor& a, const Tensor& b) {
  const int o = static_cast<int>(op);
  LC_CHECK(o >= 0 && o < kCompareOps, "compare: no op " + std::to_string(o));
  same(a, b, "compare", "a", "b");
  Tensor out = empty(broadcast_shapes(a.shape, b.shape), DType::I32, a.device());
  if (out.numel()) be(a).compare(op, a, b, out);
  return out;
}

Tensor where(const Tensor& cond, const Tensor& a, const Tensor& b) {
  same(a, b, "where", "a", "b");
  check_mask("where", cond, a, "cond");
  Tensor out = empty(broadcast_shapes(cond.shape, broadcast_shapes(a.shape, b.shape)), a.dtype,
                     a.device());
  if (out.numel()) be(a).where(cond, a, b, out);
  return out;
}

Tensor clamp(const Tensor& x, double lo, double hi) {
  require_floating(x, "clamp", "x");
  LC_CHECK(!std::isnan(lo) && !std::isnan(hi), "clamp: the bounds must not be NaN");
  Tensor out = empty(x.shape, x.dtype, x.device());
  if (out.numel()) be(x).clamp(x, lo, hi, out);
  return out;
}

Tensor clamp_backward(const Tensor& x, double lo, double hi, const Tensor& dy) {
  require_floating(x, "clamp backward", "x");
  same(x, dy, "clamp backward", "x", "grad");
  LC_CHECK(x.shape == dy.shape, "clamp backward: grad shape mismatch");
  Tensor dx = empty(x.shape, x.dtype, x.device());
  if (dx.numel()) be(x).clamp_backward(x, lo, hi, dy, dx);
  return dx;
}

Tensor pow(const Tensor& a, const Tensor& b) {
  same(a, b, "pow", "base", "exponent");
  require_floating(a, "pow", "base");
  Tensor out = empty(broadcast_shapes(a.shape, b.shape), a.dtype, a.device());
  if (out.numel()) be(a).pow(a, b, out);
  return out;
}

PowGrads pow_backward(const Tensor& a, const Tensor& b, const Tensor& dy, bool need_da,
                      bool need_db) {
  const char* op = "pow backward";
  same(a, b, op, "base", "exponent");
  same(a, dy, op, "base", "grad");
  require_floating(a, op, "base");
  LC_CHECK(dy.shape == broadcast_shapes(a.shape, b.shape), "pow backward: grad has shape " +
                                                               shape_str(dy.shape));
  // Per output element first, then summed down to each operand's shape.
  Tensor da = maybe(need_da, dy.shape, dy), db = maybe(need_db, dy.shape, dy);
  if (dy.numel() && (need_da || need_db)) be(a).pow_backward(a, b, dy, ptr(da), ptr(db));
  PowGrads g;
  if (need_da) g.da = da.shape == a.shape ? da : sum_to(da, a.shape);
  if (need_db) g.db = db.shape == b.shape ? db : sum_to(db, b.shape);
  return g;
}

Tensor log_softmax(const Tensor& x) {
  require_floating(x, "log softmax", "x");
  LC_CHECK(x.dim() >= 1, "log softmax: x must have at least one dim");
  Tensor y = empty(x.shape, x.dtype, x.device());
  if (y.numel()) be(x).log_softmax(x, y);
  return y;
}

Tensor log_softmax_backward(const Tensor& y, const Tensor& dy) {
  same(y, dy, "log softmax backward", "y", "grad");
  require_floating(y, "log softmax backward", "y");
  LC_CHECK(y.shape == dy.shape, "log softmax backward: grad shape mismatch");
  Tensor dx = empty(y.shape, y.dtype, y.device());
  if (dx.numel()) be(y).log_softmax_backward(y, dy, dx);
  return dx;
}

// ---------------------------------------------------------------- transformer blocks

namespace {
void check_ids(const char* op, const Tensor& ids, const Tensor& like) {
  LC_CHECK(ids.dtype == DType::I32, std::string(op) + ": ids must be int32, got " +
                                        dtype_name(ids.dtype));
  LC_CHECK(ids.device() == like.device(), std::string(op) + ": ids are on " + ids.device().str() +
                                              " but the weight is on " + like.device().str());
}
// x [..., T, Dh] against cos/sin [T, Dh].
void check_rotary(const char* op, const Tensor& x, const Tensor& cos, const Tensor& sin) {
  require_floating(x, op, "x");
  // Half x takes its tables in its own dtype or in float32 (transformers computes them in float32).
  if (is_half(x.dtype) && cos.dtype == DType::F32) {
    require_dtype(cos, DType::F32, x, op, "cos");
    require_dtype(sin, DType::F32, x, op, "sin");
  } else {
    same(x, cos, op, "x", "cos");
    same(x, sin, op, "x", "sin");
  }
  rank(cos, 2, op, "cos");
  LC_CHECK(cos.shape == sin.shape, std::string(op) + ": cos has shape " + shape_str(cos.shape) +
                                       " but sin has shape " + shape_str(sin.shape));
  LC_CHECK(x.dim() >= 2, std::string(op) + ": x must have at least 2 dims [..., T, Dh], got " +
                             "shape " + shape_str(x.shape));
  dim_eq(x.shape[x.dim() - 2], cos.shape[0], op, "x.shape[-2] (T)");
  dim_eq(x.shape[x.dim() - 1], cos.shape[1], op, "x.shape[-1] (head dim)");
  LC_CHECK(cos.shape[1] % 2 == 0, std::string(op) + ": the head dim must be even, got " +
                                      std::to_string(cos.shape[1]));
}
// Attention shapes: [B, H, T, D], or [B, T, H, D] with bthd (heads at dim hd, length at dim td).
struct AttnAxes {
  int hd, td;
  explicit AttnAxes(bool bthd) : hd(bthd ? 2 : 1), td(bthd ? 1 : 2) {}
};
void check_attention(const char* op, const Tensor& q, const Tensor& k, const Tensor& v,
                     bool causal, bool bthd) {
  LC_CHECK(is_floating(q.dtype), std::string(op) + ": q must be float32, float64, bfloat16 or "
                                                   "float16, got " + dtype_name(q.dtype));
  same(q, k, op, "q", "k");
  same(q, v, op, "q", "v");
  rank(q, 4, op, "q");
  rank(k, 4, op, "k");
  rank(v, 4, op, "v");
  const AttnAxes x(bthd);
  const std::string H = std::to_string(x.hd), L = std::to_string(x.td);
  dim_eq(k.shape[0], q.shape[0], op, "k.shape[0] (batch)");
  dim_eq(k.shape[3], q.shape[3], op, "k.shape[3] (head dim)");
  dim_eq(v.shape[0], k.shape[0], op, "v.shape[0] (batch)");
  dim_eq(v.shape[x.hd], k.shape[x.hd], op, "v.shape[" + H + "] (kv heads)");
  dim_eq(v.shape[x.td], k.shape[x.td], op, "v.shape[" + L + "] (key length)");
  LC_CHECK(k.shape[x.hd] >= 1 && q.shape[x.hd] % k.shape[x.hd] == 0,
           std::string(op) + ": the query heads (" + std::to_string(q.shape[x.hd]) +
               ") must be a multiple of the kv heads (" + std::to_string(k.shape[x.hd]) + ")");
  // Causal with S > T: the T queries are the last T positions of the S keys (a decode step).
  LC_CHECK(!causal || k.shape[x.td] >= q.shape[x.td],
           std::string(op) + ": the key length (" + std::to_string(k.shape[x.td]) +
               ") must be at least the query length (" + std::to_string(q.shape[x.td]) +
               ") with causal masking");
}
// The per-query first keys: int32 [B, T] beside q, causal only (their values are clamped
// into [0, i] by the kernels; the TypeScript layer refuses values outside it).
void check_starts(const char* op, const Tensor* starts, const Tensor& q, bool causal, bool bthd) {
  if (!starts) return;
  const int64_t T = q.shape[AttnAxes(bthd).td];
  LC_CHECK(causal, std::string(op) + ": key starts need causal attention");
  LC_CHECK(starts->dtype == DType::I32, std::string(op) + ": starts must be int32, got " +
                                            dtype_name(starts->dtype));
  LC_CHECK(starts->device() == q.device(), std::string(op) + ": starts are on " +
                                               starts->device().str() + " but q is on " +
                                               q.device().str());
  LC_CHECK(starts->shape == Shape({q.shape[0], T}),
           std::string(op) + ": starts must have shape [B, T] = " +
               shape_str({q.shape[0], T}) + ", got " + shape_str(starts->shape));
}
}  // namespace

Tensor embedding(const Tensor& ids, const Tensor& weight) {
  const char* op = "embedding";
  rank(weight, 2, op, "weight");
  require_floating(weight, op, "weight");
  check_ids(op, ids, weight);
  Shape shape = ids.shape;
  shape.push_back(weight.shape[1]);
  Tensor out = empty(shape, weight.dtype, weight.device());
  if (ids.numel()) be(weight).embedding_forward(ids, weight, out);  // checks the ids
  return out;
}

Tensor embedding_backward(const Tensor& ids, const Tensor* order, const Tensor& dy,
                          int64_t num_embeddings) {
  const char* op = "embedding backward";
  require_floating(dy, op, "grad");
  check_ids(op, ids, dy);
  if (order) {
    check_ids(op, *order, dy);
    LC_CHECK(order->numel() == ids.numel(), "embedding backward: order has " +
                                                std::to_string(order->numel()) + " positions for " +
                                                std::to_string(ids.numel()) + " ids");
  }
  LC_CHECK(num_embeddings >= 0, "embedding backward: num_embeddings must be >= 0");
  LC_CHECK(dy.dim() == ids.dim() + 1 &&
               std::equal(ids.shape.begin(), ids.shape.end(), dy.shape.begin()),
           "embedding backward: grad has shape " + shape_str(dy.shape) + " for ids of shape " +
               shape_str(ids.shape));
  Tensor dw = empty({num_embeddings, dy.shape.back()}, dy.dtype, dy.device());
  if (ids.numel() || dw.numel()) be(dy).embedding_backward(ids, order, dy, dw);
  return dw;
}

RmsNormOut rms_norm(const Tensor& x, const Tensor* weight, double eps) {
  const char* op = "rms norm";
  require_floating(x, op, "x");
  LC_CHECK(x.dim() >= 1, "rms norm: x must have at least one dim");
  LC_CHECK(std::isfinite(eps) && eps >= 0, "rms norm: eps must be a finite number >= 0");
  int64_t D = x.shape.back();
  if (weight) {
    same(x, *weight, op, "x", "weight");
    rank(*weight, 1, op, "weight");
    dim_eq(weight->shape[0], D, op, "weight.shape[0]");
  }
  Shape rows(x.shape.begin(), x.shape.end() - 1);
  // rstd in float32 for half x (LlamaRMSNorm's statistics are float32).
  RmsNormOut o{empty(x.shape, x.dtype, x.device()),
               empty({shape_numel(rows)}, opmath_dtype(x.dtype), x.device())};
  if (x.numel())
    be(x).rms_norm_forward(x, weight, eps, o.y, o.rstd);
  else if (o.rstd.numel())  // D == 0: the mean of nothing counts as 0
    be(x).fill(o.rstd, 1.0 / std::sqrt(eps));
  return o;
}

RmsNormGrads rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                               const Tensor& rstd, bool need_dx, bool need_dweight) {
  const char* op = "rms norm backward";
  require_floating(x, op, "x");
  same(x, dy, op, "x", "grad");
  require_dtype(rstd, opmath_dtype(x.dtype), x, op, "rstd");
  LC_CHECK(x.dim() >= 1 && dy.shape == x.shape, "rms norm backward: grad has shape " +
                                                    shape_str(dy.shape) + ", x has shape " +
                                                    shape_str(x.shape));
  int64_t D = x.shape.back();
  LC_CHECK(rstd.numel() == shape_numel(Shape(x.shape.begin(), x.shape.end() - 1)),
           "rms norm backward: saved rstd has the wrong size");
  if (weight) {
    same(x, *weight, op, "x", "weight");
    rank(*weight, 1, op, "weight");
    dim_eq(weight->shape[0], D, op, "weight.shape[0]");
  }
  LC_CHECK(!need_dweight || weight, "rms norm backward: dweight requested without a weight");
  RmsNormGrads g{maybe(need_dx, x.shape, x), maybe(need_dweight, {D}, x)};
  if (!x.numel()) {
    for (Tensor* t : {&g.dx, &g.dweight})
      if (t->storage && t->numel()) be(x).fill(*t, 0.0);
    return g;
  }
  be(x).rms_norm_backward(dy, x, weight, rstd, ptr(g.dx), ptr(g.dweight));
  return g;
}

namespace {
void check_swiglu(const char* op, const Tensor& gate, const Tensor& up) {
  require_floating(gate, op, "gate");
  same(gate, up, op, "gate", "up");
  LC_CHECK(gate.shape == up.shape, std::string(op) + ": gate has shape " + shape_str(gate.shape) +
                                       " but up has shape " + shape_str(up.shape));
}
}  // namespace

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_swiglu("swiglu", gate, up);
  Tensor out = empty(gate.shape, gate.dtype, gate.device());
  if (out.numel()) be(gate).swiglu_forward(gate, up, out);
  return out;
}

SwigluGrads swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy, bool need_dgate,
                            bool need_dup) {
  check_swiglu("swiglu backward", gate, up);
  same(gate, dy, "swiglu backward", "gate", "grad");
  LC_CHECK(dy.shape == gate.shape, "swiglu backward: grad has shape " + shape_str(dy.shape) +
                                       " but gate has shape " + shape_str(gate.shape));
  SwigluGrads g;
  if (need_dgate) g.dgate = empty(gate.shape, gate.dtype, gate.device());
  if (need_dup) g.dup = empty(gate.shape, gate.dtype, gate.device());
  if (gate.numel() && (need_dgate || need_dup))
    be(gate).swiglu_backward(gate, up, dy, need_dgate ? &g.dgate : nullptr,
                             need_dup ? &g.dup : nullptr);
  return g;
}

Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  check_rotary("rotary", x, cos, sin);
  Tensor out = empty(x.shape, x.dtype, x.device());
  if (out.numel()) be(x).rotary_forward(x, cos, sin, out);
  return out;
}

Tensor rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin) {
  check_rotary("rotary backward", dy, cos, sin);
  Tensor dx = empty(dy.shape, dy.dtype, dy.device());
  if (dx.numel()) be(dy).rotary_backward(dy, cos, sin, dx);
  return dx;
}

// The dtype of the saved logsumexp: float32 for 16-bit inputs (statistics in float).
static DType lse_dtype(DType t) { return is_half(t) ? DType::F32 : t; }

AttentionOut attention(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                       double scale, const Tensor* starts, bool bthd) {
  check_attention("attention", q, k, v, causal, bthd);
  check_starts("attention", starts, q, causal, bthd);
  LC_CHECK(std::isfinite(scale), "attention: scale must be finite");
  const AttnAxes x(bthd);
  int64_t B = q.shape[0], Hq = q.shape[x.hd], T = q.shape[x.td], Dv = v.shape[3];
  AttentionOut o{empty(bthd ? Shape{B, T, Hq, Dv} : Shape{B, Hq, T, Dv}, q.dtype, q.device()),
                 empty({B, Hq, T}, lse_dtype(q.dtype), q.device())};
  if (o.lse.numel())
    be(q).attention_forward(q, k, v, causal, scale, o.out, o.lse, starts, bthd);
  return o;
}

AttentionGrads attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                  const Tensor& v, const Tensor& out, const Tensor& lse,
                                  bool causal, double scale, bool need_dq, bool need_dk,
                                  bool need_dv, const Tensor* starts, bool bthd) {
  const char* op = "attention backward";
  check_attention(op, q, k, v, causal, bthd);
  check_starts(op, starts, q, causal, bthd);
  LC_CHECK(std::isfinite(scale), "attention backward: scale must be finite");
  const AttnAxes x(bthd);
  int64_t B = q.shape[0], Hq = q.shape[x.hd], T = q.shape[x.td];
  const Shape oshape = bthd ? Shape{B, T, Hq, v.shape[3]} : Shape{B, Hq, T, v.shape[3]};
  same(q, dout, op, "q", "grad");
  same(q, out, op, "q", "out");
  LC_CHECK(lse.device() == q.device() && lse.dtype == lse_dtype(q.dtype),
           "attention backward: saved lse must be " + std::string(dtype_name(lse_dtype(q.dtype))) +
               " on " + q.device().str());
  LC_CHECK(dout.shape == oshape, "attention backward: grad has shape " + shape_str(dout.shape));
  LC_CHECK(out.shape == oshape, "attention backward: out has shape " + shape_str(out.shape));
  LC_CHECK(lse.shape == Shape({B, Hq, T}),
           "attention backward: saved lse has the wrong shape " + shape_str(lse.shape));
  AttentionGrads g{maybe(need_dq, q.shape, q), maybe(need_dk, k.shape, k),
                   maybe(need_dv, v.shape, v)};
  if (!lse.numel()) {  // no query rows: nothing flows back
    for (Tensor* t : {&g.dq, &g.dk, &g.dv})
      if (t->storage && t->numel()) be(q).fill(*t, 0.0);
    return g;
  }
  be(q).attention_backward(dout, q, k, v, out, lse, causal, scale, ptr(g.dq), ptr(g.dk),
                           ptr(g.dv), starts, bthd);
  return g;
}

// ---- views and joins
namespace {
// Checks that every element a (sizes, strides, offset) walk reaches lies in t.
void check_strided(const char* op, const Tensor& t, const Shape& sizes,
                   const std::vector<int64_t>& strides, int64_t offset) {
  LC_CHECK(strides.size() == sizes.size(), std::string(op) + ": " + std::to_string(strides.size()) +
                                               " strides for " + std::to_string(sizes.size()) +
                                               " sizes");
  LC_CHECK(sizes.size() <= 64, std::string(op) + ": too many dims");
  int64_t last = offset;
  for (size_t d = 0; d < sizes.size(); ++d) {
    LC_CHECK(sizes[d] >= 0 && strides[d] >= 0,
             std::string(op) + ": sizes and strides must be >= 0");
    if (sizes[d] > 0) last += (sizes[d] - 1) * strides[d];
  }
  if (shape_numel(sizes) == 0) return;
  LC_CHECK(offset >= 0 && last < t.numel(),
           std::string(op) + ": the strided region reaches element " + std::to_string(last) +
               " of a tensor of " + std::to_string(t.numel()) + " elements");
}

std::vector<int64_t> row_major(const Shape& shape) {
  std::vector<int64_t> st(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d)
    st[d] = st[d + 1] * shape[d + 1];
  return st;
}

// The output shape of a gather and the index's strides over it.
Shape gather_shape(const char* op, const Shape& xs, const Tensor& index, int64_t dim, bool select,
                   std::vector<int64_t>& index_strides) {
  LC_CHECK(index.dtype == DType::I32,
           std::string(op) + ": index must be int32, got " + dtype_name(index.dtype));
  const int64_t r = static_cast<int64_t>(xs.size());
  LC_CHECK(r >= 1 && dim >= 0 && dim < r,
           std::string(op) + ": dim " + std::to_string(dim) + " is out of range for shape " +
               shape_str(xs));
  if (select) {
    rank(index, 1, op, "index");
    Shape out = xs;
    out[dim] = index.shape[0];
    index_strides.assign(r, 0);
    index_strides[dim] = 1;
    return out;
  }
  LC_CHECK(index.dim() == r, std::string(op) + ": index must have " + std::to_string(r) +
                                 " dims, got shape " + shape_str(index.shape));
  for (int64_t d = 0; d < r; ++d)
    LC_CHECK(d == dim || index.shape[d] <= xs[d],
             std::string(op) + ": index shape " + shape_str(index.shape) +
                 " is larger than the input's " + shape_str(xs) + " in dim " + std::to_string(d));
  index_strides = row_major(index.shape);
  return index.shape;
}
}  // namespace

Tensor strided_read(const Tensor& x, const Shape& sizes, const std::vector<int64_t>& strides,
                    int64_t offset) {
  check_strided("strided read", x, sizes, strides, offset);
  Tensor out = empty(sizes, x.dtype, x.device());
  if (out.numel()) be(x).strided_copy(out, 0, row_major(sizes), x, offset, strides, sizes);
  return out;
}

void strided_write_(const Tensor& dst, const Shape& sizes, const std::vector<int64_t>& strides,
                    int64_t offset, const Tensor& src) {
  const char* op = "strided write";
  same(dst, src, op, "destination", "source");
  check_strided(op, dst, sizes, strides, offset);
  LC_CHECK(src.numel() == shape_numel(sizes),
           std::string(op) + ": source has " + std::to_string(src.numel()) + " elements for sizes " +
               shape_str(sizes));
  if (src.numel()) be(dst).strided_copy(dst, offset, strides, src, 0, row_major(sizes), sizes);
}

Tensor gather(const Tensor& x, const Tensor& index, int64_t dim, bool select) {
  const char* op = select ? "index_select" : "gather";
  LC_CHECK(x.device() == index.device(), std::string(op) + ": x is on " + x.device().str() +
                                             " but index is on " + index.device().str());
  std::vector<int64_t> ist;
  Shape shape = gather_shape(op, x.shape, index, dim, select, ist);
  Tensor out = empty(shape, x.dtype, x.device());
  if (out.numel()) be(x).index_gather(x, index, ist, dim, out);
  return out;
}

Tensor gather_backward(const Tensor& index, const Tensor* order, int64_t dim, bool select,
                       const Tensor& dy, const Shape& x_shape) {
  const char* op = select ? "index_select backward" : "gather backward";
  require_floating(dy, op, "grad");
  LC_CHECK(dy.device() == index.device(), std::string(op) + ": grad is on " + dy.device().str() +
                                              " but index is on " + index.device().str());
  for (int64_t s : x_shape) LC_CHECK(s >= 0, std::string(op) + ": bad input shape");
  std::vector<int64_t> ist;
  Shape shape = gather_shape(op, x_shape, index, dim, select, ist);
  LC_CHECK(shape == dy.shape, std::string(op) + ": grad has shape " + shape_str(dy.shape) +
                                  ", expected " + shape_str(shape));
  if (order) {
    LC_CHECK(select, std::string(op) + ": a sort order is for index_select only");
    LC_CHECK(order->dtype == DType::I32 && order->device() == index.device() &&
                 order->numel() == index.numel(),
             std::string(op) + ": order must be int32 on the index's device, one entry per index");
  }
  Tensor dx = empty(x_shape, dy.dtype, dy.device());
  if (dx.numel()) be(dy).index_gather_backward(index, order, ist, dim, dy, dx);
  return dx;
}

Tensor triangle(const Tensor& x, int64_t k, bool upper) {
  LC_CHECK(x.dim() >= 2, std::string(upper ? "triu" : "tril") +
                             ": the input must have at least 2 dims, got shape " +
                             shape_str(x.shape));
  Tensor out = empty(x.shape, x.dtype, x.device());
  if (out.numel()) be(x).triangle(x, k, upper, out);
  return out;
}

}  // namespace lc::ops
