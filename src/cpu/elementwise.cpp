// Elementwise CPU ops: fill, random draws, binary ops with broadcasting,
// affine, axpy, unary ops and their derivatives, broadcast and permute copies,
// the finiteness check and dropout. Compiled without FMA contraction: the
// random draws must round exactly as the CUDA kernels do (philox.h).
// Every op reads bfloat16/float16 as float, computes in M = opmath_t<T> and
// rounds once on store (T(...)), as PyTorch's CPU kernels for the halves.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../philox.h"
#include "cpu_backend.h"
#include "fast_f32.h"

namespace lc {
namespace {

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
    case UnaryOp::Sigmoid: return T(1) / (T(1) + std::exp(-x));
    case UnaryOp::Tanh: return std::tanh(x);
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
    case UnaryOp::Sigmoid: {
      T s = T(1) / (T(1) + std::exp(-x));
      return s * (T(1) - s);
    }
    case UnaryOp::Tanh: {
      T t = std::tanh(x);
      return T(1) - t * t;
    }
  }
  return T(0);
}

// out[i] = x[offset of i under `strides`] in out's index order: a broadcast
// (stride 0) or a permutation (strides reordered) of x.
void gather(const Tensor& x, const Tensor& out, const std::vector<int64_t>& strides,
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
  else dispatch_floating(out.dtype, op, run);
}

}  // namespace

void CpuBackend::fill(const Tensor& t, double value) {
  int64_t n = t.numel();
  if (t.dtype == DType::I32) {
    std::fill_n(t.data<int32_t>(), n, static_cast<int32_t>(value));
    return;
  }
  dispatch_floating(t.dtype, "fill", [&](auto z) {
    using T = decltype(z);
    std::fill_n(t.data<T>(), n, static_cast<T>(value));
  });
}

void CpuBackend::random(const Tensor& t, RandomKind kind, uint64_t seed, uint64_t offset,
                        double a, double b) {
  // Halves: the draw (a double, as for float) rounds once into the half.
  dispatch_floating(t.dtype, "random", [&](auto z) {
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

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_floating(out.dtype, "binary op", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* pa = a.data<T>();
    const T* pb = b.data<T>();
    T* po = out.data<T>();
    int64_t n = out.numel();
    if (a.shape == out.shape && b.shape == out.shape) {
      par(n, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = T(apply_binary<M>(op, M(pa[i]), M(pb[i])));
      });
      return;
    }
    if (a.shape == out.shape && b.numel() == 1) {
      const M bv = M(pb[0]);
      par(n, [&](int64_t s, int64_t e) {
        for (int64_t i = s; i < e; ++i) po[i] = T(apply_binary<M>(op, M(pa[i]), bv));
      });
      return;
    }
    const std::vector<int64_t> st[2] = {broadcast_strides(a.shape, out.shape),
                                        broadcast_strides(b.shape, out.shape)};
    for_each_bcast<2>(out.shape, st, [&](int64_t base, int64_t len, const int64_t* off,
                                         const int64_t* ist) {
      if (!ist) {
        po[base] = T(apply_binary<M>(op, M(pa[off[0]]), M(pb[off[1]])));
        return;
      }
      for (int64_t i = 0; i < len; ++i)
        po[base + i] =
            T(apply_binary<M>(op, M(pa[off[0] + i * ist[0]]), M(pb[off[1] + i * ist[1]])));
    });
  });
}

void CpuBackend::affine(const Tensor& x, double alpha, double beta, const Tensor& out) {
  dispatch_floating(out.dtype, "affine", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    M al = static_cast<M>(alpha), be = static_cast<M>(beta);
    par(out.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) po[i] = T(al * M(px[i]) + be);
    });
  });
}

void CpuBackend::axpy(const Tensor& y, const Tensor& x, double alpha) {
  dispatch_floating(y.dtype, "axpy", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* py = y.data<T>();
    M al = static_cast<M>(alpha);
    par(y.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) py[i] = T(M(py[i]) + al * M(px[i]));
    });
  });
}

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  if (op == UnaryOp::Silu && out.dtype == DType::F32) {  // the vectorised exp (fast_f32.h)
    const float* px = x.data<float>();
    float* po = out.data<float>();
    par(out.numel(), [&](int64_t s, int64_t e) { silu_f32(px + s, po + s, e - s); });
    return;
  }
  dispatch_floating(out.dtype, "unary op", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    par(out.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) po[i] = T(unary_f<M>(op, M(px[i])));
    });
  });
}

void CpuBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy,
                                const Tensor& dx) {
  if (op == UnaryOp::Silu && dx.dtype == DType::F32) {
    const float *px = x.data<float>(), *pg = dy.data<float>();
    float* po = dx.data<float>();
    par(dx.numel(), [&](int64_t s, int64_t e) { silu_backward_f32(px + s, pg + s, po + s, e - s); });
    return;
  }
  dispatch_floating(dx.dtype, "unary backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    const T* pg = dy.data<T>();
    T* po = dx.data<T>();
    par(dx.numel(), [&](int64_t s, int64_t e) {
      for (int64_t i = s; i < e; ++i) po[i] = T(M(pg[i]) * unary_df<M>(op, M(px[i])));
    });
  });
}

void CpuBackend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  if (out.dtype != DType::F32) return Backend::swiglu_forward(gate, up, out);
  const float *pg = gate.data<float>(), *pu = up.data<float>();
  float* po = out.data<float>();
  par(out.numel(), [&](int64_t s, int64_t e) { swiglu_f32(pg + s, pu + s, po + s, e - s); });
}

void CpuBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy,
                                 const Tensor* dgate, const Tensor* dup) {
  if (dy.dtype != DType::F32 || !dgate || !dup)
    return Backend::swiglu_backward(gate, up, dy, dgate, dup);
  const float *pg = gate.data<float>(), *pu = up.data<float>(), *pd = dy.data<float>();
  float *dg = dgate->data<float>(), *du = dup->data<float>();
  par(dy.numel(), [&](int64_t s, int64_t e) {
    swiglu_backward_f32(pg + s, pu + s, pd + s, dg + s, du + s, e - s);
  });
}

void CpuBackend::expand(const Tensor& x, const Tensor& out) {
  gather(x, out, broadcast_strides(x.shape, out.shape), "expand");
}

void CpuBackend::permute(const Tensor& x, const std::vector<int64_t>& perm,
                         const Tensor& out) {
  size_t r = x.shape.size();
  std::vector<int64_t> xst(r, 1);
  for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) xst[d] = xst[d + 1] * x.shape[d + 1];
  // Output dim d walks input dim perm[d].
  std::vector<int64_t> st(r);
  for (size_t d = 0; d < r; ++d) st[d] = xst[perm[d]];
  gather(x, out, st, "permute");
}

bool CpuBackend::all_finite(const Tensor& x) {
  bool ok = true;
  dispatch_floating(x.dtype, "all_finite", [&](auto z) {
    using T = decltype(z);
    const T* p = x.data<T>();
    for (int64_t i = 0, n = x.numel(); i < n && ok; ++i) ok = std::isfinite(opmath_t<T>(p[i]));
  });
  return ok;
}

// out = x * keep / (1 - p), keep drawn from (seed, offset) by element index;
// elementwise, so out may be x.
void CpuBackend::dropout(const Tensor& x, const Tensor& out, double p, uint64_t seed,
                         uint64_t offset) {
  dispatch_floating(out.dtype, "dropout", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const T* px = x.data<T>();
    T* po = out.data<T>();
    uint32_t thr = dropout_threshold(p);
    M keep_scale = M(1.0 / (1.0 - p));
    par(out.numel(), [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i)
        po[i] = dropout_keep(seed, offset, static_cast<uint64_t>(i), thr)
                    ? T(M(px[i]) * keep_scale)
                    : T(M(0));
    });
  });
}

}  // namespace lc
