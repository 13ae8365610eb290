// The CPU backend: the reference implementation of every Backend op. Matrix
// products go through gemm_f32/gemm_f64 (a CBLAS or the built-in kernel); the
// rest are plain loops, split over threads only where the tensors are large.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <new>
#include <type_traits>
#include <vector>

#include "../backend.h"
#include "../cuda_api.h"
#include "../parallel.h"
#include "../philox.h"
#include "blas.h"
#include "cpu_transformer.h"
#include "dispatch.h"
#include "gemm.h"

namespace lc {


namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per thread chunk for elementwise loops

inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_f32(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
                 int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_f64(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

inline void low_rank_rows(float* C, int64_t M, int64_t N, int64_t r, float alpha, const float* U,
                          const float* V, const float* init, bool acc, double p, uint64_t seed,
                          uint64_t offset) {
  low_rank_rows_f32(C, M, N, r, alpha, U, V, init, acc, p, seed, offset);
}
inline void low_rank_rows(double* C, int64_t M, int64_t N, int64_t r, double alpha, const double* U,
                          const double* V, const double* init, bool acc, double p, uint64_t seed,
                          uint64_t offset) {
  low_rank_rows_f64(C, M, N, r, alpha, U, V, init, acc, p, seed, offset);
}

// out [cols, rows] = in [rows, cols]^T, for the small adapter matrices.
template <typename T>
std::vector<T> transposed(const T* in, int64_t rows, int64_t cols) {
  std::vector<T> out(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = in[i * cols + j];
  return out;
}

template <typename Fn>
void par(int64_t n, Fn&& fn) {
  if (n < 2 * kGrain) {
    fn(int64_t{0}, n);
  } else {
    parallel_for(n, kGrain, fn);
  }
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

template <typename T>
inline T apply_binary(BinaryOp op, T a, T b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
  }
  return T(0);
}

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;

template <typename T>
inline T unary_f(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::Relu: return x > T(0) ? x : T(0);
    case UnaryOp::Gelu: return T(0.5) * x * (T(1) + std::erf(x * T(kSqrt1_2)));
    case UnaryOp::GeluTanh: {
      T u = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      return T(0.5) * x * (T(1) + std::tanh(u));
    }
    case UnaryOp::Silu: return x / (T(1) + std::exp(-x));
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return std::log(x);
    case UnaryOp::Neg: return -x;
    case UnaryOp::Sqrt: return std::sqrt(x);
    case UnaryOp::Abs: return std::abs(x);
  }
  return T(0);
}

template <typename T>
inline T unary_df(UnaryOp op, T x) {
  switch (op) {
    case UnaryOp::Relu: return x > T(0) ? T(1) : T(0);
    case UnaryOp::Gelu:
      return T(0.5) * (T(1) + std::erf(x * T(kSqrt1_2))) +
             x * T(kInvSqrt2Pi) * std::exp(T(-0.5) * x * x);
    case UnaryOp::GeluTanh: {
      T u = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      T t = std::tanh(u);
      return T(0.5) * (T(1) + t) +
             T(0.5) * x * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * 0.044715) * x * x);
    }
    case UnaryOp::Silu: {
      T s = T(1) / (T(1) + std::exp(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    case UnaryOp::Exp: return std::exp(x);
    case UnaryOp::Log: return T(1) / x;
    case UnaryOp::Neg: return T(-1);
    case UnaryOp::Sqrt: return T(0.5) / std::sqrt(x);
    case UnaryOp::Abs: return x > T(0) ? T(1) : x < T(0) ? T(-1) : T(0);  // torch's sign, 0 at 0
  }
  return T(0);
}

// x * mask / (1 - p), with the mask drawn from (seed, offset).
template <typename T>
void apply_dropout(const T* x, T* out, int64_t n, double p, uint64_t seed, uint64_t offset) {
  uint32_t thr = dropout_threshold(p);
  T keep_scale = T(1.0 / (1.0 - p));
  par(n, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      out[i] = dropout_keep(seed, offset, static_cast<uint64_t>(i), thr) ? x[i] * keep_scale : T(0);
  });
}

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device{DeviceType::CPU, 0}; }

  void* allocate(size_t bytes) override {
    // 64-byte alignment suits the vector loads of BLAS kernels.
    void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes on the CPU",
                        "ERR_OUT_OF_MEMORY");
    return p;
  }
  void deallocate(void* p, size_t) override { std::free(p); }

  void write_from_host(const Tensor& dst, const void* src) override {
    std::memcpy(dst.raw(), src, dst.numel() * dtype_size(dst.dtype));
  }
  void read_to_host(const Tensor& src, void* dst) override {
    std::memcpy(dst, src.raw(), src.numel() * dtype_size(src.dtype));
  }
  void copy(const Tensor& dst, const Tensor& src) override {
    int64_t n = dst.numel();
    if (dst.dtype == src.dtype) {
      if (dst.raw() != src.raw()) std::memmove(dst.raw(), src.raw(), n * dtype_size(dst.dtype));
      return;
    }
    if (dst.dtype == DType::I32) {
      // Float to int32 truncates; NaN, infinities and values outside int32's range are refused
      // (converting them is undefined behaviour), before anything is written.
      dispatch_float(src.dtype, "copy", [&](auto z) {
        const auto* s = src.data<decltype(z)>();
        for (int64_t i = 0; i < n; ++i)
          if (!(s[i] > -2147483649.0 && s[i] < 2147483648.0))
            fail("copy: element " + std::to_string(i) + " (" + std::to_string(s[i]) +
                 ") cannot be converted to int32 (integers in [-2147483648, 2147483647])");
      });
    }
    auto cast = [n](auto* d, const auto* s) {
      for (int64_t i = 0; i < n; ++i) d[i] = static_cast<std::remove_pointer_t<decltype(d)>>(s[i]);
    };
    auto from = [&](auto* d) {
      switch (src.dtype) {
        case DType::F32: cast(d, src.data<float>()); break;
        case DType::F64: cast(d, src.data<double>()); break;
        case DType::I32: cast(d, src.data<int32_t>()); break;
      }
    };
    switch (dst.dtype) {
      case DType::F32: from(dst.data<float>()); break;
      case DType::F64: from(dst.data<double>()); break;
      case DType::I32: from(dst.data<int32_t>()); break;
    }
  }

  void fill(const Tensor& t, double value) override {
    int64_t n = t.numel();
    if (t.dtype == DType::I32) {
      std::fill_n(t.data<int32_t>(), n, static_cast<int32_t>(value));
      return;
    }
    dispatch_float(t.dtype, "fill", [&](auto z) {
      using T = decltype(z);
      std::fill_n(t.data<T>(), n, static_cast<T>(value));
    });
  }

  void random(const Tensor& t, RandomKind kind, uint64_t seed, uint64_t offset, double a,
              double b) override {
    dispatch_float(t.dtype, "random", [&](auto z) {
      using T = decltype(z);
      T* p = t.data<T>();
      par(t.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) {
          p[i] = static_cast<T>(philox_sample(kind == RandomKind::Normal, seed, offset,
                                              static_cast<uint64_t>(i), a, b));
        }
      });
    });
  }

  void binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) override {
    dispatch_float(out.dtype, "binary op", [&](auto z) {
      using T = decltype(z);
      const T* pa = a.data<T>();
      const T* pb = b.data<T>();
      T* po = out.data<T>();
      int64_t n = out.numel();
      if (a.shape == out.shape && b.shape == out.shape) {
        par(n, [&](int64_t s, int64_t e) {
          for (int64_t i = s; i < e; ++i) po[i] = apply_binary(op, pa[i], pb[i]);
        });
        return;
      }
      if (a.shape == out.shape && b.numel() == 1) {
        T bv = pb[0];
        par(n, [&](int64_t s, int64_t e) {
          for (int64_t i = s; i < e; ++i) po[i] = apply_binary(op, pa[i], bv);
        });
        return;
      }
      const std::vector<int64_t> st[2] = {broadcast_strides(a.shape, out.shape),
                                          broadcast_strides(b.shape, out.shape)};
      for_each_bcast<2>(out.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                           const int64_t* ist) {
        if (!ist) {
          po[base] = apply_binary(op, pa[off[0]], pb[off[1]]);
          return;
        }
        for (int64_t i = 0; i < len; ++i)
          po[base + i] = apply_binary(op, pa[off[0] + i * ist[0]], pb[off[1] + i * ist[1]]);
      });
    });
  }

  void affine(const Tensor& x, double alpha, double beta, const Tensor& out) override {
    dispatch_float(out.dtype, "affine", [&](auto z) {
      using T = decltype(z);
      const T* px = x.data<T>();
      T* po = out.data<T>();
      T al = static_cast<T>(alpha), be = static_cast<T>(beta);
      par(out.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = al * px[i] + be;
      });
    });
  }

  void axpy(const Tensor& y, const Tensor& x, double alpha) override {
    dispatch_float(y.dtype, "axpy", [&](auto z) {
      using T = decltype(z);
      const T* px = x.data<T>();
      T* py = y.data<T>();
      T al = static_cast<T>(alpha);
      par(y.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) py[i] += al * px[i];
      });
    });
  }

  void unary(UnaryOp op, const Tensor& x, const Tensor& out) override {
    dispatch_float(out.dtype, "unary op", [&](auto z) {
      using T = decltype(z);
      const T* px = x.data<T>();
      T* po = out.data<T>();
      par(out.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = unary_f(op, px[i]);
      });
    });
  }

  void unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy, const Tensor& dx) override {
    dispatch_float(dx.dtype, "unary backward", [&](auto z) {
      using T = decltype(z);
      const T* px = x.data<T>();
      const T* pg = dy.data<T>();
      T* po = dx.data<T>();
      par(dx.numel(), [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = pg[i] * unary_df(op, px[i]);
      });
    });
  }

  void reduce_sum_to(const Tensor& x, const Tensor& out) override {
    dispatch_float(out.dtype, "sum", [&](auto z) {
      using T = decltype(z);
      const T* px = x.data<T>();
      T* po = out.data<T>();
      int64_t n = x.numel(), m = out.numel();
      // Accumulate in double: gradient sums over many rows lose little precision.
      if (m == 1) {
        double acc = 0;
        for (int64_t i = 0; i < n; ++i) acc += px[i];
        po[0] = static_cast<T>(acc);
        return;
      }
      if (m == n) {
        std::memcpy(po, px, sizeof(T) * n);
        return;
      }
      // Walk x with out's (broadcast) strides; out's dims are x's dims or 1.
      const std::vector<int64_t> st[1] = {broadcast_strides(out.shape, x.shape)};
      std::vector<double> acc(static_cast<size_t>(m), 0.0);
      for_each_bcast<1>(x.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                         const int64_t* ist) {
        if (!ist) {
          acc[off[0]] += px[base];
          return;
        }
        for (int64_t i = 0; i < len; ++i) acc[off[0] + i * ist[0]] += px[base + i];
      });
      for (int64_t i = 0; i < m; ++i) po[i] = static_cast<T>(acc[i]);
    });
  }

  void expand(const Tensor& x, const Tensor& out) override {
    gather(x, out, broadcast_strides(x.shape, out.shape), "expand");
  }

  void permute(const Tensor& x, const std::vector<int64_t>& perm, const Tensor& out) override {
    size_t r = x.shape.size();
    std::vector<int64_t> xst(r, 1);
    for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) xst[d] = xst[d + 1] * x.shape[d + 1];
    // Output dim d walks input dim perm[d].
    std::vector<int64_t> st(r);
    for (size_t d = 0; d < r; ++d) st[d] = xst[perm[d]];
    gather(x, out, st, "permute");
  }

  bool all_finite(const Tensor& x) override {
    bool ok = true;
    dispatch_float(x.dtype, "all_finite", [&](auto z) {
      using T = decltype(z);
      const T* p = x.data<T>();
      for (int64_t i = 0, n = x.numel(); i < n && ok; ++i) ok = std::isfinite(p[i]);
    });
    return ok;
  }

  void softmax(const Tensor& x, const Tensor& y) override {
    dispatch_float(x.dtype, "softmax", [&](auto z) {
      using T = decltype(z);
      int64_t cols = x.shape.back(), rows = x.numel() / cols;
      const T* px = x.data<T>();
      T* py = y.data<T>();
      auto rows_fn = [&](int64_t r0, int64_t r1) {
        for (int64_t i = r0; i < r1; ++i) {
          const T* r = px + i * cols;
          T* o = py + i * cols;
          T mx = r[0];
          for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, r[j]);
          double sum = 0;
          for (int64_t j = 0; j < cols; ++j) {
            o[j] = std::exp(r[j] - mx);
            sum += o[j];
          }
          T inv = static_cast<T>(1.0 / sum);
          for (int64_t j = 0; j < cols; ++j) o[j] *= inv;
        }
      };
      if (rows * cols < 2 * kGrain) rows_fn(0, rows);
      else parallel_for(rows, std::max<int64_t>(1, kGrain / cols), rows_fn);
    });
  }

  void softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) override {
    dispatch_float(y.dtype, "softmax backward", [&](auto z) {
      using T = decltype(z);
      int64_t cols = y.shape.back(), rows = y.numel() / cols;
      const T* py = y.data<T>();
      const T* pg = dy.data<T>();
      T* pd = dx.data<T>();
      for (int64_t i = 0; i < rows; ++i) {
        const T* yr = py + i * cols;
        const T* gr = pg + i * cols;
        T* dr = pd + i * cols;
        double dot = 0;
        for (int64_t j = 0; j < cols; ++j) dot += static_cast<double>(gr[j]) * yr[j];
        T d = static_cast<T>(dot);
        for (int64_t j = 0; j < cols; ++j) dr[j] = yr[j] * (gr[j] - d);
      }
    });
  }

  void dropout(const Tensor& x, const Tensor& out, double p, uint64_t seed,
               uint64_t offset) override {
    dispatch_float(out.dtype, "dropout", [&](auto z) {
      using T = decltype(z);
      apply_dropout(x.data<T>(), out.data<T>(), out.numel(), p, seed, offset);
    });
  }

  void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha, const Tensor& A,
            int64_t sA, const Tensor& B, int64_t sB, double beta, const Tensor& C, int64_t sC,
            int64_t batch) override {
    dispatch_float(C.dtype, "matmul", [&](auto z) {
      using T = decltype(z);
      const T* pa = A.data<T>();
      const T* pb = B.data<T>();
      T* pc = C.data<T>();
      int64_t lda = tA ? M : K, ldb = tB ? K : N;
      for (int64_t i = 0; i < batch; ++i)
        lc::gemm(tA, tB, M, N, K, static_cast<T>(alpha), pa + i * sA, lda, pb + i * sB, ldb,
                 static_cast<T>(beta), pc + i * sC, N);
    });
  }

  void lora_forward(const Tensor& x, const Tensor& W, const Tensor* b, const Tensor& A,
                    const Tensor& B, double scale, double p, uint64_t seed, uint64_t offset,
                    const Tensor& y, const Tensor& h) override {
    dispatch_float(y.dtype, "lora forward", [&](auto z) {
      using T = decltype(z);
      int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
      T* py = y.data<T>();
      // h = drop(x) A^T  [M, r]
      const T* xd = x.data<T>();
      std::vector<T> tmp;
      if (p > 0) {
        tmp.resize(static_cast<size_t>(M * K));
        apply_dropout(x.data<T>(), tmp.data(), M * K, p, seed, offset);
        xd = tmp.data();
      }
      lc::gemm(false, true, M, r, K, T(1), xd, K, A.data<T>(), K, T(0), h.data<T>(), r);
      // y = b + scale * h B^T in one pass, then the frozen GEMM accumulates
      // x W^T on top (beta = 1): no separate bias or adapter pass over y.
      std::vector<T> Bt = transposed(B.data<T>(), N, r);
      low_rank_rows(py, M, N, r, static_cast<T>(scale), h.data<T>(), Bt.data(),
                    b ? b->data<T>() : nullptr, false, 0.0, 0, 0);
      lc::gemm(false, true, M, N, K, T(1), x.data<T>(), K, W.data<T>(), K, T(1), py, N);
    });
  }

  void lora_backward(const Tensor& dy, const Tensor& x, const Tensor& W, const Tensor& A,
                     const Tensor& B, const Tensor& h, double scale, double p, uint64_t seed,
                     uint64_t offset, const Tensor* dx, const Tensor* dA, const Tensor* dB,
                     const Tensor* dW, const Tensor* db) override {
    dispatch_float(dy.dtype, "lora backward", [&](auto z) {
      using T = decltype(z);
      int64_t M = x.shape[0], K = x.shape[1], N = W.shape[0], r = A.shape[0];
      const T* g = dy.data<T>();
      T sc = static_cast<T>(scale);
      // dB = scale * dy^T h  [N, r] (set)
      if (dB) lc::gemm(true, false, N, r, M, sc, g, N, h.data<T>(), r, T(0), dB->data<T>(), r);
      std::vector<T> dh;
      if (dA || dx) {
        // dh = scale * dy B  [M, r]: the gradient at the adapter's bottleneck.
        dh.resize(static_cast<size_t>(M * r));
        lc::gemm(false, false, M, r, N, sc, g, N, B.data<T>(), r, T(0), dh.data(), r);
      }
      if (dA) {
        // dA = dh^T drop(x)  [r, K] (set); the mask is regenerated, not stored.
        const T* xd = x.data<T>();
        std::vector<T> xd_buf;
        if (p > 0) {
          xd_buf.resize(static_cast<size_t>(M * K));
          apply_dropout(x.data<T>(), xd_buf.data(), M * K, p, seed, offset);
          xd = xd_buf.data();
        }
        lc::gemm(true, false, r, K, M, T(1), dh.data(), r, xd, K, T(0), dA->data<T>(), K);
      }
      if (dx) {
        // dx = drop'(dh A) (set, mask applied in the same pass), then the
        // frozen path dy W accumulates on top (beta = 1).
        T* pdx = dx->data<T>();
        low_rank_rows(pdx, M, K, r, T(1), dh.data(), A.data<T>(), nullptr, false, p, seed, offset);
        lc::gemm(false, false, M, K, N, T(1), g, N, W.data<T>(), K, T(1), pdx, K);
      }
      if (dW) lc::gemm(true, false, N, K, M, T(1), g, N, x.data<T>(), K, T(0), dW->data<T>(), K);
      if (db) reduce_sum_to(dy, *db);  // column sums of dy, in double
    });
  }

  void adam_step(const std::vector<AdamParam>& params, const AdamConfig& c) override {
    for (const AdamParam& ap : params) {
      dispatch_float(ap.param.dtype, "adam", [&](auto z) {
        using T = decltype(z);
        T* p = ap.param.data<T>();
        const T* g = ap.grad.data<T>();
        T* m = ap.exp_avg.data<T>();
        T* v = ap.exp_avg_sq.data<T>();
        T* vmax = c.amsgrad ? ap.max_exp_avg_sq.data<T>() : nullptr;
        // Same operation order as torch.optim.Adam / AdamW (single-tensor path).
        double bc1 = 1.0 - std::pow(c.beta1, static_cast<double>(ap.step));
        double bc2 = 1.0 - std::pow(c.beta2, static_cast<double>(ap.step));
        T step_size = static_cast<T>(c.lr / bc1);
        T bc2_sqrt = static_cast<T>(std::sqrt(bc2));
        T b1 = static_cast<T>(c.beta1), b2 = static_cast<T>(c.beta2);
        T omb1 = static_cast<T>(1.0 - c.beta1), omb2 = static_cast<T>(1.0 - c.beta2);
        T eps = static_cast<T>(c.eps), wd = static_cast<T>(c.weight_decay);
        T decay = static_cast<T>(1.0 - c.lr * c.weight_decay);
        // Adam adds wd * p to the gradient (L2); AdamW shrinks p first (decoupled).
        bool l2 = !c.decoupled && c.weight_decay != 0;
        bool shrink = c.decoupled && c.weight_decay != 0;
        par(ap.param.numel(), [&](int64_t s, int64_t e) {
          for (int64_t i = s; i < e; ++i) {
            T gi = g[i];
            if (shrink) p[i] = p[i] * decay;
            if (l2) gi = gi + wd * p[i];
            m[i] = m[i] * b1 + omb1 * gi;
            v[i] = v[i] * b2 + omb2 * gi * gi;
            T vv = v[i];
            if (vmax) {
              vmax[i] = std::max(vmax[i], vv);
              vv = vmax[i];
            }
            T denom = std::sqrt(vv) / bc2_sqrt + eps;
            p[i] = p[i] - step_size * (m[i] / denom);
          }
        });
      });
    }
  }

  void cross_entropy_forward(const Tensor& logits, const Tensor& targets, int64_t ignore_index,
                             double ls, const Tensor& loss_rows, const Tensor& lse) override {
    dispatch_float(logits.dtype, "cross entropy", [&](auto z) {
      using T = decltype(z);
      int64_t N = logits.shape[0], C = logits.shape[1];
      const T* x = logits.data<T>();
      const int32_t* t = targets.data<int32_t>();
      T* lr = loss_rows.data<T>();
      T* pl = lse.data<T>();
      for (int64_t i = 0; i < N; ++i) {
        const T* row = x + i * C;
        int64_t ti = t[i];
        if (ti != ignore_index && (ti < 0 || ti >= C))
          fail("cross entropy: target " + std::to_string(ti) + " at row " + std::to_string(i) +
               " is outside [0, " + std::to_string(C) + ")");
        double mx = -INFINITY;
        for (int64_t j = 0; j < C; ++j) mx = std::max(mx, static_cast<double>(row[j]));
        double s = 0, sum_x = 0;
        for (int64_t j = 0; j < C; ++j) {
          s += std::exp(static_cast<double>(row[j]) - mx);
          sum_x += row[j];
        }
        double l = mx + std::log(s);
        pl[i] = static_cast<T>(l);
        if (ti == ignore_index) {
          lr[i] = T(0);
          continue;
        }
        double nll = l - row[ti];
        double smooth = l - sum_x / static_cast<double>(C);
        lr[i] = static_cast<T>((1.0 - ls) * nll + ls * smooth);
      }
    });
  }

  void cross_entropy_backward(const Tensor& logits, const Tensor& lse, const Tensor& targets,
                              int64_t ignore_index, double ls, const Tensor& grad,
                              double grad_scale, const Tensor& dlogits) override {
    dispatch_float(logits.dtype, "cross entropy backward", [&](auto z) {
      using T = decltype(z);
      int64_t N = logits.shape[0], C = logits.shape[1];
      const T* x = logits.data<T>();
      const T* pl = lse.data<T>();
      const int32_t* t = targets.data<int32_t>();
      T* d = dlogits.data<T>();
      const T* pg = grad.data<T>();
      bool per_row = grad.numel() != 1;
      double off = ls / static_cast<double>(C);
      for (int64_t i = 0; i < N; ++i) {
        double gs = grad_scale * static_cast<double>(pg[per_row ? i : 0]);
        T* drow = d + i * C;
        if (t[i] == ignore_index) {
          std::fill_n(drow, C, T(0));
          continue;
        }
        const T* row = x + i * C;
        double l = pl[i];
        for (int64_t j = 0; j < C; ++j) {
          double target = off + (j == t[i] ? 1.0 - ls : 0.0);
          drow[j] = static_cast<T>(gs * (std::exp(static_cast<double>(row[j]) - l) - target));
        }
      }
    });
  }

  // ---- transformer blocks (cpu_transformer.cpp)
  void embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out) override {
    cpu_tf::embedding_forward(ids, weight, out);
  }
  void embedding_backward(const Tensor& ids, const Tensor*, const Tensor& dy,
                          const Tensor& dweight) override {
    cpu_tf::embedding_backward(ids, dy, dweight);  // walks the positions in order itself
  }
  void rms_norm_forward(const Tensor& x, const Tensor* weight, double eps, const Tensor& y,
                        const Tensor& rstd) override {
    cpu_tf::rms_norm_forward(x, weight, eps, y, rstd);
  }
  void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                         const Tensor& rstd, const Tensor* dx, const Tensor* dweight) override {
    cpu_tf::rms_norm_backward(dy, x, weight, rstd, dx, dweight);
  }
  void rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin,
                      const Tensor& out) override {
    cpu_tf::rotary_forward(x, cos, sin, out);
  }
  void rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin,
                       const Tensor& dx) override {
    cpu_tf::rotary_backward(dy, cos, sin, dx);
  }
  void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                         double scale, const Tensor& out, const Tensor& lse) override {
    cpu_tf::attention_forward(q, k, v, causal, scale, out, lse);
  }
  void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                          const Tensor& lse, bool causal, double scale, const Tensor* dq,
                          const Tensor* dk, const Tensor* dv) override {
    cpu_tf::attention_backward(dout, q, k, v, lse, causal, scale, dq, dk, dv);
  }

 private:
  // out[i] = x[offset of i under `strides`] in out's index order: a broadcast
  // (stride 0) or a permutation (strides reordered) of x.
  static void gather(const Tensor& x, const Tensor& out, const std::vector<int64_t>& strides,
                     const char* op) {
    auto run = [&](auto z) {
      using T = decltype(z);
      const T* px = x.data<T>();
      T* po = out.data<T>();
      const std::vector<int64_t> st[1] = {strides};
      for_each_bcast<1>(out.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                           const int64_t* ist) {
        if (!ist) {
          po[base] = px[off[0]];
          return;
        }
        for (int64_t i = 0; i < len; ++i) po[base + i] = px[off[0] + i * ist[0]];
      });
    };
    if (out.dtype == DType::I32) run(int32_t{});
    else dispatch_float(out.dtype, op, run);
  }
};

}  // namespace

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

Backend& backend_for(Device dev) {
  if (dev.type == DeviceType::CPU) return cpu_backend();
  return cuda::backend(dev.index);
}

}  // namespace lc
