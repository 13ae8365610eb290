// Elementwise CUDA ops: fill, random draws, casts, binary ops with
// broadcasting, affine, axpy, unary ops and their derivatives, broadcast and
// permute copies, the finiteness check and dropout. The formulas are those of
// the CPU backend (src/cpu/elementwise.cpp), which is the reference in the
// parity tests. Half types compute in opmath_t (float) and round once on
// store (kernels.cuh).
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "../src/philox.h"
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

constexpr double kSqrt1_2 = 0.70710678118654752440;
constexpr double kInvSqrt2Pi = 0.39894228040143267794;
constexpr double kSqrt2OverPi = 0.79788456080286535588;

template <typename T>
__global__ void fill_kernel(T* p, int64_t n, T v) {
  LC_GRID_STRIDE(i, n) p[i] = v;
}

// Same (seed, offset, index) -> value map as the CPU, bit for bit (philox.h).
template <typename T>
__global__ void random_kernel(T* p, int64_t n, bool normal, uint64_t seed, uint64_t offset,
                              double a, double b) {
  LC_GRID_STRIDE(i, n) p[i] = static_cast<T>(philox_sample(normal, seed, offset, i, a, b));
}

// Every cast goes through the source's value (float for the halves) and rounds
// once into the destination, as the CPU's copy: to nearest even for the halves,
// float64 -> half through float (as torch), half -> half through float.
template <typename D, typename S>
__device__ __forceinline__ D cast_value(S v) {
  if constexpr (std::is_same_v<D, int32_t>)
    return static_cast<int32_t>(static_cast<opmath_t<S>>(v));
  else if constexpr (is_half_v<S> && is_half_v<D>)
    return D(static_cast<float>(v));
  else
    return static_cast<D>(v);
}

template <typename D, typename S>
__global__ void cast_kernel(D* d, const S* s, int64_t n) {
  LC_GRID_STRIDE(i, n) d[i] = cast_value<D>(s[i]);
}

// Float to int32 as on the CPU: NaN, infinities and values outside int32's
// range are refused (converting them is undefined behaviour) and nothing is
// written. A check pass finds the first bad element, the cast writes only if
// there is none, and the report surfaces at the next synchronisation.
template <typename S>
__global__ void int32_range_check_kernel(const S* s, int64_t n, unsigned long long* first) {
  LC_GRID_STRIDE(i, n) {
    const double v = static_cast<double>(s[i]);
    if (!(v > -2147483649.0 && v < 2147483648.0)) note_bad(first, i);
  }
}

template <typename S>
__global__ void cast_to_int32_kernel(int32_t* d, const S* s, int64_t n,
                                     const unsigned long long* first) {
  if (*first != ~0ull) return;
  LC_GRID_STRIDE(i, n) d[i] = cast_value<int32_t>(s[i]);
}

template <typename S>
__global__ void int32_range_report_kernel(const S* s, const unsigned long long* first, int64_t n,
                                          DeviceError* err) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const unsigned long long i = *first;
  if (i >= static_cast<unsigned long long>(n)) return;
  if (atomicCAS(&err->code, 0, kErrCastInt32) == 0) {
    err->b = static_cast<long long>(i);
    err->v = static_cast<double>(s[i]);
  }
}

template <typename T>
__device__ __forceinline__ T apply_binary(int op, T a, T b) {
  switch (op) {
    case 0: return a + b;
    case 1: return a - b;
    case 2: return a * b;
    default: return a / b;
  }
}

template <typename T>
__global__ void binary_same_kernel(int op, const T* a, const T* b, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = static_cast<T>(apply_binary(op, ld(a[i]), ld(b[i])));
}

template <typename T>
__global__ void binary_scalar_kernel(int op, const T* a, const T* b, T* out, int64_t n) {
  const opmath_t<T> bv = ld(b[0]);
  LC_GRID_STRIDE(i, n) out[i] = static_cast<T>(apply_binary(op, ld(a[i]), bv));
}

template <typename T>
__global__ void binary_bcast_kernel(int op, const T* a, Indexer ia, const T* b, Indexer ib,
                                    T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = static_cast<T>(apply_binary(op, ld(a[ia(i)]), ld(b[ib(i)])));
}

// 32-bit grid-stride loop for n < 2^31 (fits32).
#define LC_GRID_STRIDE32(i, n)                                                     \
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < static_cast<uint32_t>(n); \
       i += blockDim.x * gridDim.x)

template <typename T>
__global__ void binary_bcast32_kernel(int op, const T* a, Indexer ia, const T* b, Indexer ib,
                                      T* out, int64_t n) {
  LC_GRID_STRIDE32(i, n) out[i] = static_cast<T>(apply_binary(op, ld(a[ia.at32(i)]), ld(b[ib.at32(i)])));
}

// Four floats moved by one 16-byte load or store (ld.global.v4 on a GPU).
struct alignas(16) F4 {
  float x, y, z, w;
};
// Whether float kernels may use F4 on these pointers: every one 16-byte aligned.
inline bool aligned16(const void* a, const void* b = nullptr, const void* c = nullptr) {
  auto ok = [](const void* p) { return !p || reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  return ok(a) && ok(b) && ok(c);
}

// The same-shape float kernels four elements at a time (n4 = n / 4 groups); the tail goes
// through the scalar kernels.
__global__ void binary_same_f4_kernel(int op, const F4* a, const F4* b, F4* out, int64_t n4) {
  LC_GRID_STRIDE(i, n4) {
    const F4 x = a[i], y = b[i];
    out[i] = F4{apply_binary(op, x.x, y.x), apply_binary(op, x.y, y.y), apply_binary(op, x.z, y.z),
                apply_binary(op, x.w, y.w)};
  }
}

__global__ void affine_f4_kernel(const F4* x, float alpha, float beta, F4* out, int64_t n4) {
  LC_GRID_STRIDE(i, n4) {
    const F4 v = x[i];
    out[i] = F4{alpha * v.x + beta, alpha * v.y + beta, alpha * v.z + beta, alpha * v.w + beta};
  }
}

__global__ void axpy_f4_kernel(F4* y, const F4* x, float alpha, int64_t n4) {
  LC_GRID_STRIDE(i, n4) {
    F4 v = y[i];
    const F4 u = x[i];
    v.x += alpha * u.x;
    v.y += alpha * u.y;
    v.z += alpha * u.z;
    v.w += alpha * u.w;
    y[i] = v;
  }
}

template <typename T>
__global__ void affine_kernel(const T* x, opmath_t<T> alpha, opmath_t<T> beta, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = static_cast<T>(alpha * ld(x[i]) + beta);
}

// y (of Y) += alpha x (of X): the same dtype, or a half and float32 either way
// (a float32 product added into a half output, or the reverse), in float.
template <typename Y, typename X>
__global__ void axpy_kernel(Y* y, const X* x, opmath_t<Y> alpha, int64_t n) {
  using A = opmath_t<Y>;
  LC_GRID_STRIDE(i, n) y[i] = static_cast<Y>(ld(y[i]) + alpha * static_cast<A>(ld(x[i])));
}

template <typename T>
__device__ __forceinline__ T unary_f(int op, T x) {
  switch (op) {
    case 0: return x > T(0) ? x : T(0);
    case 1: return T(0.5) * x * (T(1) + d_erf(x * T(kSqrt1_2)));
    case 2: {
      T u = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      return T(0.5) * x * (T(1) + d_tanh(u));
    }
    case 3: return x / (T(1) + d_exp(-x));
    case 4: return d_exp(x);
    case 5: return d_log(x);
    case 6: return -x;
    case 7: return d_sqrt(x);
    case 8: return d_abs(x);
    case 9: return T(1) / (T(1) + d_exp(-x));
    default: return d_tanh(x);  // 10; ops outside 0..10 are refused before any launch
  }
}

template <typename T>
__device__ __forceinline__ T unary_df(int op, T x) {
  switch (op) {
    case 0: return x > T(0) ? T(1) : T(0);
    case 1:
      return T(0.5) * (T(1) + d_erf(x * T(kSqrt1_2))) + x * T(kInvSqrt2Pi) * d_exp(T(-0.5) * x * x);
    case 2: {
      T u = T(kSqrt2OverPi) * (x + T(0.044715) * x * x * x);
      T t = d_tanh(u);
      return T(0.5) * (T(1) + t) +
             T(0.5) * x * (T(1) - t * t) * T(kSqrt2OverPi) * (T(1) + T(3 * 0.044715) * x * x);
    }
    case 3: {
      T s = T(1) / (T(1) + d_exp(-x));
      return s * (T(1) + x * (T(1) - s));
    }
    case 4: return d_exp(x);
    case 5: return T(1) / x;
    case 6: return T(-1);
    case 7: return T(0.5) / d_sqrt(x);
    case 8: return x > T(0) ? T(1) : x < T(0) ? T(-1) : T(0);  // abs
    case 9: {
      T s = T(1) / (T(1) + d_exp(-x));
      return s * (T(1) - s);
    }
    default: {  // 10: tanh
      T t = d_tanh(x);
      return T(1) - t * t;
    }
  }
}

template <typename T>
__global__ void unary_kernel(int op, const T* x, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = static_cast<T>(unary_f(op, ld(x[i])));
}

template <typename T>
__global__ void unary_backward_kernel(int op, const T* x, const T* dy, T* dx, int64_t n) {
  LC_GRID_STRIDE(i, n) dx[i] = static_cast<T>(ld(dy[i]) * unary_df(op, ld(x[i])));
}

// SwiGLU, out = silu(g) u, and its backward, fused: silu(g) (and dy u) are rounded to T between
// the two steps exactly as the separate unary and binary kernels round them, so the bits equal
// the composite's; one launch each way instead of two forward and four backward (and no temporary).
template <typename T>
__global__ void swiglu_kernel(const T* g, const T* u, T* out, int64_t n) {
  LC_GRID_STRIDE(i, n) {
    const T s = static_cast<T>(unary_f(3, ld(g[i])));
    out[i] = static_cast<T>(ld(s) * ld(u[i]));
  }
}

template <typename T>
__global__ void swiglu_backward_kernel(const T* g, const T* u, const T* dy, T* dg, T* du,
                                       int64_t n) {
  LC_GRID_STRIDE(i, n) {
    const auto x = ld(g[i]), d = ld(dy[i]);
    if (du) du[i] = static_cast<T>(d * ld(static_cast<T>(unary_f(3, x))));
    if (dg) dg[i] = static_cast<T>(ld(static_cast<T>(d * ld(u[i]))) * unary_df(3, x));
  }
}

// Moves elements of 2, 4 or 8 bytes (halves, float, int32, double) by an Indexer.
template <typename W>
__global__ void gather_kernel(const W* x, Indexer ix, W* out, int64_t n) {
  LC_GRID_STRIDE(i, n) out[i] = x[ix(i)];
}

template <typename W>
__global__ void gather32_kernel(const W* x, Indexer ix, W* out, int64_t n) {
  LC_GRID_STRIDE32(i, n) out[i] = x[ix.at32(i)];
}

// *flag starts non-zero; any non-finite element clears it (a plain store:
// every writer writes the same value).
template <typename T>
__global__ void all_finite_kernel(const T* x, int64_t n, int* flag) {
  LC_GRID_STRIDE(i, n) if (!d_finite(ld(x[i]))) *flag = 0;
}

template <typename T>
__global__ void dropout_kernel(const T* x, T* out, int64_t n, uint32_t threshold,
                               opmath_t<T> keep_scale, uint64_t seed, uint64_t offset) {
  LC_GRID_STRIDE(i, n) {
    out[i] = dropout_keep(seed, offset, static_cast<uint64_t>(i), threshold)
                 ? static_cast<T>(ld(x[i]) * keep_scale)
                 : T(0);
  }
}

// y[i] = b[i % cols]: a broadcast whose source is the output's trailing dims
// (bias rows), without an Indexer; moves words as gather_kernel does.
template <typename W>
__global__ void broadcast_rows_kernel(W* y, const W* b, int64_t n, int64_t cols) {
  LC_GRID_STRIDE(i, n) y[i] = b[i % cols];
}

// x, with its leading 1s dropped, is out's trailing dims: out is x repeated.
bool repeats_rows(const Shape& x, const Shape& out) {
  size_t lead = 0;
  while (lead < x.size() && x[lead] == 1) ++lead;
  const size_t k = x.size() - lead;
  return k <= out.size() && std::equal(x.begin() + lead, x.end(), out.end() - k);
}

}  // namespace

// ================================================================ methods

void CudaBackend::fill(const Tensor& t, double value) {
  Guard g(c_);
  int64_t n = t.numel();
  if (!n) return;
  if (t.dtype == DType::I32) {
    fill_kernel<int32_t><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<int32_t>(t), n,
                                                                  static_cast<int32_t>(value));
  } else {
    dispatch_floating(t.dtype, "fill", [&](auto z) {
      using T = decltype(z);
      fill_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(t), n, static_cast<T>(value));
    });
  }
  launched(c_, "fill");
}

void CudaBackend::random(const Tensor& t, RandomKind kind, uint64_t seed, uint64_t offset,
                         double a, double b) {
  Guard g(c_);
  int64_t n = t.numel();
  if (!n) return;
  const bool normal = kind == RandomKind::Normal;
  dispatch_floating(t.dtype, "random", [&](auto z) {
    using T = decltype(z);
    random_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(t), n, normal, seed, offset, a, b);
  });
  launched(c_, normal ? "randn" : "rand");
}

// The caller (copy) holds the Guard.
void CudaBackend::cast(const Tensor& dst, const Tensor& src) {
  int64_t n = dst.numel();
  if (!n) return;
  if (dst.dtype == DType::I32) {  // from a float dtype: checked
    Tensor holder;
    unsigned long long* first = first_bad_word(c_, holder);
    dispatch_floating(src.dtype, "copy (dtype cast)", [&](auto z) {
      using S = decltype(z);
      int32_range_check_kernel<S><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<S>(src), n, first);
      launched(c_, "copy (dtype cast)");
      cast_to_int32_kernel<S><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<int32_t>(dst), dp<S>(src),
                                                                       n, first);
      launched(c_, "copy (dtype cast)");
      int32_range_report_kernel<S><<<1, 1, 0, c_.stream>>>(dp<S>(src), first, n, c_.err);
      launched(c_, "copy (dtype cast)");
    });
    return;
  }
  auto from = [&](auto* d) {
    using D = std::remove_pointer_t<decltype(d)>;
    switch (src.dtype) {
      case DType::F32: cast_kernel<D, float><<<grid_for(n), kThreads, 0, c_.stream>>>(d, dp<float>(src), n); break;
      case DType::F64: cast_kernel<D, double><<<grid_for(n), kThreads, 0, c_.stream>>>(d, dp<double>(src), n); break;
      case DType::I32: cast_kernel<D, int32_t><<<grid_for(n), kThreads, 0, c_.stream>>>(d, dp<int32_t>(src), n); break;
      case DType::BF16: cast_kernel<D, bf16><<<grid_for(n), kThreads, 0, c_.stream>>>(d, dp<bf16>(src), n); break;
      case DType::F16: cast_kernel<D, f16><<<grid_for(n), kThreads, 0, c_.stream>>>(d, dp<f16>(src), n); break;
    }
  };
  switch (dst.dtype) {
    case DType::F32: from(dp<float>(dst)); break;
    case DType::F64: from(dp<double>(dst)); break;
    case DType::I32: from(dp<int32_t>(dst)); break;
    case DType::BF16: from(dp<bf16>(dst)); break;
    case DType::F16: from(dp<f16>(dst)); break;
  }
  launched(c_, "copy (dtype cast)");
}

void CudaBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  Guard g(c_);
  int64_t n = out.numel();
  if (!n) return;
  int o = static_cast<int>(op);
  dispatch_floating(out.dtype, "binary op", [&](auto z) {
    using T = decltype(z);
    if (a.shape == out.shape && b.shape == out.shape) {
      int64_t done = 0;
      if constexpr (std::is_same_v<T, float>) {
        if (n >= 4 && aligned16(dp<T>(a), dp<T>(b), dp<T>(out))) {
          done = n / 4 * 4;
          binary_same_f4_kernel<<<grid_for(n / 4), kThreads, 0, c_.stream>>>(
              o, reinterpret_cast<const F4*>(dp<T>(a)), reinterpret_cast<const F4*>(dp<T>(b)), reinterpret_cast<F4*>(dp<T>(out)), n / 4);
        }
      }
      if (done < n)
        binary_same_kernel<T><<<grid_for(n - done), kThreads, 0, c_.stream>>>(o, dp<T>(a) + done, dp<T>(b) + done, dp<T>(out) + done, n - done);
    } else if (a.shape == out.shape && b.numel() == 1) {
      binary_scalar_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(o, dp<T>(a), dp<T>(b), dp<T>(out), n);
    } else {
      auto ix = make_indexers(out.shape, {broadcast_strides(a.shape, out.shape), broadcast_strides(b.shape, out.shape)});
      if (fits32(n))  // a and b are no larger than out
        binary_bcast32_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(o, dp<T>(a), ix[0], dp<T>(b), ix[1], dp<T>(out), n);
      else
        binary_bcast_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(o, dp<T>(a), ix[0], dp<T>(b), ix[1], dp<T>(out), n);
    }
  });
  launched(c_, "binary op");
}

void CudaBackend::affine(const Tensor& x, double alpha, double beta, const Tensor& out) {
  Guard g(c_);
  int64_t n = out.numel();
  if (!n) return;
  dispatch_floating(out.dtype, "affine", [&](auto z) {
    using T = decltype(z);
    using A = opmath_t<T>;
    int64_t done = 0;
    if constexpr (std::is_same_v<T, float>) {
      if (n >= 4 && aligned16(dp<T>(x), dp<T>(out))) {
        done = n / 4 * 4;
        affine_f4_kernel<<<grid_for(n / 4), kThreads, 0, c_.stream>>>(reinterpret_cast<const F4*>(dp<T>(x)), static_cast<T>(alpha),
                                                                       static_cast<T>(beta), reinterpret_cast<F4*>(dp<T>(out)), n / 4);
      }
    }
    if (done < n)
      affine_kernel<T><<<grid_for(n - done), kThreads, 0, c_.stream>>>(dp<T>(x) + done, static_cast<A>(alpha),
                                                                       static_cast<A>(beta), dp<T>(out) + done, n - done);
  });
  launched(c_, "affine");
}

void CudaBackend::axpy(const Tensor& y, const Tensor& x, double alpha) {
  Guard g(c_);
  int64_t n = y.numel();
  if (!n) return;
  dispatch_floating(y.dtype, "accumulate", [&](auto z) {
    using Y = decltype(z);
    const auto al = static_cast<opmath_t<Y>>(alpha);
    if (x.dtype == y.dtype) {
      int64_t done = 0;
      if constexpr (std::is_same_v<Y, float>) {
        if (n >= 4 && aligned16(dp<Y>(y), dp<Y>(x))) {
          done = n / 4 * 4;
          axpy_f4_kernel<<<grid_for(n / 4), kThreads, 0, c_.stream>>>(reinterpret_cast<F4*>(dp<Y>(y)), reinterpret_cast<const F4*>(dp<Y>(x)),
                                                                       al, n / 4);
        }
      }
      if (done < n)
        axpy_kernel<Y, Y><<<grid_for(n - done), kThreads, 0, c_.stream>>>(dp<Y>(y) + done, dp<Y>(x) + done, al, n - done);
    } else if constexpr (is_half_v<Y>) {
      LC_CHECK(x.dtype == DType::F32, std::string("accumulate: a ") + dtype_name(y.dtype) +
                                          " tensor takes float32 or its own dtype, got " + dtype_name(x.dtype));
      axpy_kernel<Y, float><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<Y>(y), dp<float>(x), al, n);
    } else if constexpr (std::is_same_v<Y, float>) {
      dispatch_floating(x.dtype, "accumulate", [&](auto w) {
        using X = decltype(w);
        if constexpr (is_half_v<X>)
          axpy_kernel<float, X><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<float>(y), dp<X>(x), al, n);
        else
          fail(std::string("accumulate: a float32 tensor takes float32, bfloat16 or float16, got ") +
               dtype_name(x.dtype));
      });
    } else {
      fail(std::string("accumulate: dtypes differ: ") + dtype_name(y.dtype) + " and " + dtype_name(x.dtype));
    }
  });
  launched(c_, "accumulate");
}

void CudaBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out) {
  Guard g(c_);
  int64_t n = out.numel();
  if (!n) return;
  dispatch_floating(out.dtype, "unary op", [&](auto z) {
    using T = decltype(z);
    unary_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(static_cast<int>(op), dp<T>(x), dp<T>(out), n);
  });
  launched(c_, "unary op");
}

void CudaBackend::unary_backward(UnaryOp op, const Tensor& x, const Tensor& dy, const Tensor& dx) {
  Guard g(c_);
  int64_t n = dx.numel();
  if (!n) return;
  dispatch_floating(dx.dtype, "unary backward", [&](auto z) {
    using T = decltype(z);
    unary_backward_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(static_cast<int>(op), dp<T>(x),
                                                                      dp<T>(dy), dp<T>(dx), n);
  });
  launched(c_, "unary backward");
}

void CudaBackend::swiglu_forward(const Tensor& gate, const Tensor& up, const Tensor& out) {
  Guard g(c_);
  const int64_t n = out.numel();
  if (!n) return;
  dispatch_floating(out.dtype, "swiglu", [&](auto z) {
    using T = decltype(z);
    swiglu_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(gate), dp<T>(up), dp<T>(out), n);
  });
  launched(c_, "swiglu");
}

void CudaBackend::swiglu_backward(const Tensor& gate, const Tensor& up, const Tensor& dy,
                                  const Tensor* dgate, const Tensor* dup) {
  Guard g(c_);
  const int64_t n = dy.numel();
  if (!n || (!dgate && !dup)) return;
  dispatch_floating(dy.dtype, "swiglu backward", [&](auto z) {
    using T = decltype(z);
    swiglu_backward_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(
        dp<T>(gate), dp<T>(up), dp<T>(dy), dgate ? dp<T>(*dgate) : nullptr,
        dup ? dp<T>(*dup) : nullptr, n);
  });
  launched(c_, "swiglu backward");
}

// The caller (expand, permute) holds the Guard.
void CudaBackend::gather(const Tensor& x, const Tensor& out, const std::vector<int64_t>& strides) {
  int64_t n = out.numel();
  if (!n) return;
  Indexer ix = make_indexers(out.shape, {strides})[0];
  const bool small = fits32(n) && fits32(x.numel());
  dispatch_word(out.dtype, [&](auto w) {
    using W = decltype(w);
    if (small) gather32_kernel<W><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<W>(x), ix, dp<W>(out), n);
    else gather_kernel<W><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<W>(x), ix, dp<W>(out), n);
  });
  launched(c_, "expand/permute");
}

void CudaBackend::expand(const Tensor& x, const Tensor& out) {
  Guard g(c_);
  const int64_t n = out.numel(), cols = x.numel();
  if (!n || !cols) return;
  if (!repeats_rows(x.shape, out.shape)) {
    gather(x, out, broadcast_strides(x.shape, out.shape));
    return;
  }
  // Bias rows and the like: no Indexer.
  dispatch_word(out.dtype, [&](auto w) {
    using W = decltype(w);
    broadcast_rows_kernel<W><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<W>(out), dp<W>(x), n, cols);
  });
  launched(c_, "expand");
}

void CudaBackend::permute(const Tensor& x, const std::vector<int64_t>& perm, const Tensor& out) {
  Guard g(c_);
  const size_t r = x.shape.size();
  std::vector<int64_t> xst(r, 1);
  for (int64_t d = static_cast<int64_t>(r) - 2; d >= 0; --d) xst[d] = xst[d + 1] * x.shape[d + 1];
  std::vector<int64_t> st(r);
  for (size_t d = 0; d < r; ++d) st[d] = xst[perm[d]];  // output dim d walks input dim perm[d]
  gather(x, out, st);
}

bool CudaBackend::all_finite(const Tensor& x) {
  Guard g(c_);
  int64_t n = x.numel();
  if (!n) return true;
  check(cudaMemsetAsync(c_.flag, 1, sizeof(int), c_.stream), "cudaMemsetAsync");
  dispatch_floating(x.dtype, "all_finite", [&](auto z) {
    using T = decltype(z);
    all_finite_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(x), n, c_.flag);
  });
  launched(c_, "finiteness check");
  return read_flag(c_) != 0;
}

void CudaBackend::dropout(const Tensor& x, const Tensor& out, double p, uint64_t seed,
                          uint64_t offset) {
  Guard g(c_);
  int64_t n = out.numel();
  if (!n) return;
  uint32_t thr = dropout_threshold(p);
  dispatch_floating(out.dtype, "dropout", [&](auto z) {
    using T = decltype(z);
    dropout_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<T>(x), dp<T>(out), n, thr,
                                                               static_cast<opmath_t<T>>(1.0 / (1.0 - p)),
                                                               seed, offset);
  });
  launched(c_, "dropout");
}

}  // namespace lc::cuda
