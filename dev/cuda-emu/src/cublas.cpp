// The emulated cuBLAS (libcublas-emu.so): the entry points cuda/cublas.cpp
// loads, with cuBLAS's column-major semantics and argument checks (transa and
// transb, leading dimensions at least the stored rows, batch strides, beta = 0
// never reading C, alpha and beta through host pointers), computed with plain
// loops that accumulate in double. TF32 math mode rounds the float inputs to
// TF32 (10 mantissa bits) as tensor cores do. cublasGemmEx and
// cublasGemmStridedBatchedEx take bfloat16 / float16 inputs with a result of
// the same type or float (CUBLAS_COMPUTE_32F, float alpha and beta): the
// accumulator, in double, is rounded to float (the tensor cores' fp32
// accumulator) and then once to the 16-bit type on store. The operands must lie in live
// device memory of the handle's device, as the emulated runtime tracks it; a
// product that reaches outside is a fault of the GPU (a sticky error at the
// next runtime call), as it would be on a GPU.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "abi.h"

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

enum Status : int {
  kSuccess = 0,
  kNotInitialized = 1,
  kAllocFailed = 3,
  kInvalidValue = 7,
  kArchMismatch = 8,
  kMappingError = 11,
  kExecutionFailed = 13,
  kInternalError = 14,
  kNotSupported = 15,
  kLicenseError = 16,
};
enum Op : int { kOpN = 0, kOpT = 1, kOpC = 2 };
constexpr int kTf32TensorOpMath = 3;

struct Handle {
  unsigned magic;
  cudaStream_t stream;
  int math;
  int device;
};
constexpr unsigned kMagic = 0x1c0b1a5u;

const emu::Services* svc() {
  const emu::Services* s = lora_cuda_emu_services();
  return s && s->version == emu::kServicesVersion ? s : nullptr;
}

bool valid(const Handle* h) { return h && h->magic == kMagic; }

float tf32(float x) {
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  if ((b & 0x7f800000u) != 0x7f800000u) {  // finite: round to nearest, ties to even, at mantissa bit 13
    b += 0xfffu + ((b >> 13) & 1u);
    b &= ~0x1fffu;
  }
  std::memcpy(&x, &b, sizeof x);
  return x;
}

// The 16-bit types as the GPU stores them (bit patterns), converted here by
// their definition rather than by the project's own conversions (src/half.h),
// so that the emulator checks those: a value is rounded to p significant bits
// (to nearest, ties to even: nearbyint in the default rounding mode) at the
// quantum of its binade, or of the smallest normal binade for subnormals.
struct Bf16 {
  uint16_t bits;
};
struct F16 {
  uint16_t bits;
};

// Finite x rounded to p bits with minimum normal exponent emin; beyond max_finite an infinity.
double round_bits(double x, int p, int emin, double max_finite) {
  if (x == 0 || std::isinf(x)) return x;
  const int e = std::max(std::ilogb(x), emin);
  const double q = std::ldexp(1.0, e - (p - 1));
  const double r = std::nearbyint(x / q) * q;
  return std::fabs(r) > max_finite ? std::copysign(INFINITY, x) : r;
}

double value(float v) { return v; }
double value(double v) { return v; }
double value(Bf16 v) {
  const uint32_t b = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &b, sizeof f);
  return f;
}
double value(F16 v) {
  const int e = (v.bits >> 10) & 0x1f, m = v.bits & 0x3ff;
  const double sign = (v.bits & 0x8000) ? -1.0 : 1.0;
  if (e == 0x1f) return m ? NAN : sign * INFINITY;
  if (e == 0) return sign * std::ldexp(m, -24);
  return sign * std::ldexp(1024 + m, e - 25);
}

template <typename T>
T stored(float v);
template <>
float stored<float>(float v) {
  return v;
}
template <>
Bf16 stored<Bf16>(float v) {
  if (std::isnan(v)) return Bf16{0x7fff};  // the canonical NaN the conversion intrinsics give
  const float r = static_cast<float>(round_bits(v, 8, -126, 0x1.fep127));  // exact in float
  uint32_t b;
  std::memcpy(&b, &r, sizeof b);
  return Bf16{static_cast<uint16_t>(b >> 16)};
}
template <>
F16 stored<F16>(float v) {
  if (std::isnan(v)) return F16{0x7fff};
  const double r = round_bits(v, 11, -14, 65504.0);
  const uint16_t sign = std::signbit(r) ? 0x8000 : 0;
  const double a = std::fabs(r);
  if (std::isinf(a)) return F16{static_cast<uint16_t>(sign | 0x7c00)};
  if (a < 0x1p-14) return F16{static_cast<uint16_t>(sign | static_cast<uint16_t>(std::ldexp(a, 24)))};
  const int e = std::ilogb(a);
  const int m = static_cast<int>(std::ldexp(a, 10 - e)) - 1024;
  return F16{static_cast<uint16_t>(sign | ((e + 15) << 10) | m)};
}

// The value stored into a result of type T from an accumulated double: float
// and double as C++ converts, the 16-bit types through float (one rounding
// from the fp32 accumulator).
template <typename T>
T store(double v) {
  if constexpr (std::is_same<T, double>::value) return v;
  else return stored<T>(static_cast<float>(v));
}

// Bytes spanned by a column-major rows x cols matrix with leading dimension ld.
size_t extent(int rows, int cols, int ld, size_t elem) {
  if (rows == 0 || cols == 0) return 0;
  return (static_cast<size_t>(cols - 1) * static_cast<size_t>(ld) + static_cast<size_t>(rows)) * elem;
}

struct Operand {
  const char* name;
  const void* p;
  size_t bytes;  // over all batches
  size_t first;  // of the first matrix
};

// Every operand in device memory of the handle's device, the result apart from
// the inputs (C last in ops); else a GPU fault.
bool operands_ok(const emu::Services* s, const char* api, const Handle* h, const Operand* ops, int n) {
  char why[512];
  for (int i = 0; i < n; ++i) {
    if (ops[i].bytes == 0) continue;
    if (s->check_range(ops[i].p, ops[i].bytes, h->device, why, sizeof why) != 0) {
      char msg[768];
      std::snprintf(msg, sizeof msg, "%s: matrix %s (%zu bytes from %p) is not in device memory of cuda:%d: %s", api,
                    ops[i].name, ops[i].bytes, ops[i].p, h->device, why);
      s->fault(cudaErrorIllegalAddress, msg);
      return false;
    }
  }
  // The result must not overlap an input: cuBLAS would read what it has already written.
  // (The first matrices of a batch are compared: strided batches may interleave.)
  const Operand& c = ops[n - 1];
  for (int i = 0; i + 1 < n; ++i) {
    auto a = reinterpret_cast<uintptr_t>(ops[i].p), b = reinterpret_cast<uintptr_t>(c.p);
    if (ops[i].first && c.first && a < b + c.first && b < a + ops[i].first) {
      char msg[256];
      std::snprintf(msg, sizeof msg, "%s: matrix C (%zu bytes from %p) overlaps matrix %s (%zu bytes from %p)", api,
                    c.first, c.p, ops[i].name, ops[i].first, ops[i].p);
      s->fault(cudaErrorLaunchFailure, msg);
      return false;
    }
  }
  return true;
}

// Inputs of type T, the result of type TC (T, or float for 16-bit inputs).
template <typename T, typename TC>
void gemm_one(int ta, int tb, int m, int n, int k, double alpha, const T* A, int lda, const T* B, int ldb,
              double beta, TC* C, int ldc, bool round_tf32, std::vector<double>& ap, std::vector<double>& acc) {
  auto in = [&](T v) -> double {
    if constexpr (std::is_same<T, float>::value) return round_tf32 ? tf32(v) : v;
    return value(v);
  };
  const bool product = alpha != 0.0 && k > 0;  // alpha = 0: A and B are not read
  if (product) {
    // op(A) as column-major m x k, so the inner loop runs down a column.
    ap.resize(static_cast<size_t>(m) * static_cast<size_t>(k));
    for (int l = 0; l < k; ++l)
      for (int i = 0; i < m; ++i)
        ap[static_cast<size_t>(l) * m + i] =
            in(ta == kOpN ? A[i + static_cast<size_t>(l) * lda] : A[l + static_cast<size_t>(i) * lda]);
  }
  acc.resize(static_cast<size_t>(m));
  for (int j = 0; j < n; ++j) {
    std::fill(acc.begin(), acc.end(), 0.0);
    if (product) {
      for (int l = 0; l < k; ++l) {
        const double b = in(tb == kOpN ? B[l + static_cast<size_t>(j) * ldb] : B[j + static_cast<size_t>(l) * ldb]);
        const double* a = &ap[static_cast<size_t>(l) * m];
        for (int i = 0; i < m; ++i) acc[i] += a[i] * b;
      }
    }
    TC* c = C + static_cast<size_t>(j) * ldc;
    for (int i = 0; i < m; ++i) {
      double v = product ? alpha * acc[i] : 0.0;
      if (beta != 0.0) v += beta * value(c[i]);  // beta = 0: C is only written
      c[i] = store<TC>(v);
    }
  }
}

// Inputs T, result TC, alpha and beta S (T for the typed entry points, float for the Ex ones).
template <typename T, typename TC = T, typename S = T>
int gemm(const char* api, Handle* h, int ta, int tb, int m, int n, int k, const S* alpha, const T* A, int lda,
         long long sa, const T* B, int ldb, long long sb, const S* beta, TC* C, int ldc, long long sc, int batch) {
  const emu::Services* s = svc();
  if (!s || !valid(h)) return kNotInitialized;
  if ((ta != kOpN && ta != kOpT && ta != kOpC) || (tb != kOpN && tb != kOpT && tb != kOpC)) return kInvalidValue;
  if (m < 0 || n < 0 || k < 0 || batch < 0) return kInvalidValue;
  const int rows_a = ta == kOpN ? m : k, cols_a = ta == kOpN ? k : m;
  const int rows_b = tb == kOpN ? k : n, cols_b = tb == kOpN ? n : k;
  if (lda < std::max(1, rows_a) || ldb < std::max(1, rows_b) || ldc < std::max(1, m)) return kInvalidValue;
  if (!alpha || !beta) return kInvalidValue;
  if (m == 0 || n == 0 || batch == 0) return kSuccess;
  s->lock();
  struct Unlock {
    const emu::Services* s;
    ~Unlock() { s->unlock(); }
  } unlock{s};
  if (s->sticky() != cudaSuccess) return kSuccess;  // the GPU is already in error; the next runtime call says so
  const int dev = s->stream_device(h->stream);
  if (dev < 0 || dev != h->device) {
    s->fault(cudaErrorInvalidResourceHandle, (std::string(api) + ": the handle's stream is not a live stream of its device").c_str());
    return kSuccess;
  }
  const double al = static_cast<double>(*alpha), be = static_cast<double>(*beta);
  const bool reads_ab = al != 0.0 && k > 0;
  auto span = [&](int rows, int cols, int ld, long long stride, size_t elem) -> size_t {
    size_t one = extent(rows, cols, ld, elem);
    if (batch == 1 || one == 0) return one;
    if (stride < 0) return SIZE_MAX;  // not supported here: refuse as out of range
    return static_cast<size_t>(stride) * elem * static_cast<size_t>(batch - 1) + one;
  };
  Operand ops[3] = {
      {"A", A, reads_ab ? span(rows_a, cols_a, lda, sa, sizeof(T)) : 0,
       reads_ab ? extent(rows_a, cols_a, lda, sizeof(T)) : 0},
      {"B", B, reads_ab ? span(rows_b, cols_b, ldb, sb, sizeof(T)) : 0,
       reads_ab ? extent(rows_b, cols_b, ldb, sizeof(T)) : 0},
      {"C", C, span(m, n, ldc, sc, sizeof(TC)), extent(m, n, ldc, sizeof(TC))}};
  if (!operands_ok(s, api, h, ops, 3)) return kSuccess;
  const bool round = std::is_same<T, float>::value && (h->math & 0xf) == kTf32TensorOpMath;  // 32F inputs only
  std::vector<double> ap, acc;
  for (int b = 0; b < batch; ++b)
    gemm_one<T, TC>(ta, tb, m, n, k, al, A + b * sa, lda, B + b * sb, ldb, be, C + b * sc, ldc, round, ap, acc);
  return kSuccess;
}

// cudaDataType_t and cuBLAS values the Ex entry points take.
constexpr int kR32F = 0, kR16F = 2, kR16BF = 14;
constexpr int kCompute32F = 68;
constexpr int kGemmDefault = -1, kGemmDefaultTensorOp = 99;

// The Ex products: the type combinations of CUBLAS_COMPUTE_32F that the
// project uses (16BF or 16F inputs with a result of the same type or 32F;
// 32F throughout); other types, compute types and algorithms are not
// emulated (CUBLAS_STATUS_NOT_SUPPORTED).
int gemm_ex(const char* api, Handle* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
            int atype, int lda, long long sa, const void* B, int btype, int ldb, long long sb, const void* beta,
            void* C, int ctype, int ldc, long long sc, int batch, int compute, int algo) {
  if (!valid(h)) return kNotInitialized;
  if (compute != kCompute32F || (algo != kGemmDefault && algo != kGemmDefaultTensorOp)) return kNotSupported;
  if (atype != btype) return kNotSupported;
  const float* al = static_cast<const float*>(alpha);
  const float* be = static_cast<const float*>(beta);
  if (atype == kR16BF && ctype == kR16BF)
    return gemm<Bf16, Bf16, float>(api, h, ta, tb, m, n, k, al, static_cast<const Bf16*>(A), lda, sa,
                                   static_cast<const Bf16*>(B), ldb, sb, be, static_cast<Bf16*>(C), ldc, sc, batch);
  if (atype == kR16BF && ctype == kR32F)
    return gemm<Bf16, float, float>(api, h, ta, tb, m, n, k, al, static_cast<const Bf16*>(A), lda, sa,
                                    static_cast<const Bf16*>(B), ldb, sb, be, static_cast<float*>(C), ldc, sc, batch);
  if (atype == kR16F && ctype == kR16F)
    return gemm<F16, F16, float>(api, h, ta, tb, m, n, k, al, static_cast<const F16*>(A), lda, sa,
                                 static_cast<const F16*>(B), ldb, sb, be, static_cast<F16*>(C), ldc, sc, batch);
  if (atype == kR16F && ctype == kR32F)
    return gemm<F16, float, float>(api, h, ta, tb, m, n, k, al, static_cast<const F16*>(A), lda, sa,
                                   static_cast<const F16*>(B), ldb, sb, be, static_cast<float*>(C), ldc, sc, batch);
  if (atype == kR32F && ctype == kR32F)
    return gemm<float, float, float>(api, h, ta, tb, m, n, k, al, static_cast<const float*>(A), lda, sa,
                                     static_cast<const float*>(B), ldb, sb, be, static_cast<float*>(C), ldc, sc, batch);
  return kNotSupported;
}

}  // namespace

EMU_EXPORT int cublasCreate_v2(Handle** out) {
  const emu::Services* s = svc();
  if (!s) return kNotInitialized;  // loaded without the emulated runtime
  if (!out) return kInvalidValue;
  int dev = s->stream_device(nullptr);
  *out = new Handle{kMagic, nullptr, 0, dev < 0 ? 0 : dev};
  return kSuccess;
}

EMU_EXPORT int cublasDestroy_v2(Handle* h) {
  if (!valid(h)) return kNotInitialized;
  h->magic = 0;  // kept: a later use is refused instead of crashing
  return kSuccess;
}

EMU_EXPORT int cublasSetStream_v2(Handle* h, cudaStream_t s) {
  const emu::Services* v = svc();
  if (!v || !valid(h)) return kNotInitialized;
  int dev = v->stream_device(s);
  if (dev < 0) return kInvalidValue;
  h->stream = s;
  h->device = dev;
  return kSuccess;
}

EMU_EXPORT int cublasSetMathMode(Handle* h, int mode) {
  if (!valid(h)) return kNotInitialized;
  const int base = mode & 0xf, flags = mode & ~0xf;
  if (base < 0 || base > 3 || (flags & ~16)) return kInvalidValue;
  h->math = mode;
  return kSuccess;
}

EMU_EXPORT int cublasGetProperty(int type, int* value) {
  if (!value) return kInvalidValue;
  static const int v[3] = {13, 0, 0};
  if (type < 0 || type > 2) return kInvalidValue;
  *value = v[type];
  return kSuccess;
}

EMU_EXPORT const char* cublasGetStatusString(int s) {
  switch (s) {
    case kSuccess: return "the operation completed successfully";
    case kNotInitialized: return "the library was not initialized";
    case kAllocFailed: return "the resource allocation failed";
    case kInvalidValue: return "an invalid numeric value was used as an argument";
    case kArchMismatch: return "an absent device architectural feature is required";
    case kMappingError: return "an access to GPU memory space failed";
    case kExecutionFailed: return "the GPU program failed to execute";
    case kInternalError: return "an internal operation failed";
    case kNotSupported: return "the functionality requested is not supported";
    case kLicenseError: return "error detected trying to check the license";
    default: return "unknown error";
  }
}

EMU_EXPORT int cublasSgemm_v2(Handle* h, int ta, int tb, int m, int n, int k, const float* alpha, const float* A,
                              int lda, const float* B, int ldb, const float* beta, float* C, int ldc) {
  return gemm<float>("cublasSgemm_v2", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

EMU_EXPORT int cublasDgemm_v2(Handle* h, int ta, int tb, int m, int n, int k, const double* alpha, const double* A,
                              int lda, const double* B, int ldb, const double* beta, double* C, int ldc) {
  return gemm<double>("cublasDgemm_v2", h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}

EMU_EXPORT int cublasSgemmStridedBatched(Handle* h, int ta, int tb, int m, int n, int k, const float* alpha,
                                         const float* A, int lda, long long sa, const float* B, int ldb,
                                         long long sb, const float* beta, float* C, int ldc, long long sc,
                                         int batch) {
  return gemm<float>("cublasSgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                     sc, batch);
}

EMU_EXPORT int cublasDgemmStridedBatched(Handle* h, int ta, int tb, int m, int n, int k, const double* alpha,
                                         const double* A, int lda, long long sa, const double* B, int ldb,
                                         long long sb, const double* beta, double* C, int ldc, long long sc,
                                         int batch) {
  return gemm<double>("cublasDgemmStridedBatched", h, ta, tb, m, n, k, alpha, A, lda, sa, B, ldb, sb, beta, C, ldc,
                      sc, batch);
}

EMU_EXPORT int cublasGemmEx(Handle* h, int ta, int tb, int m, int n, int k, const void* alpha, const void* A,
                            int atype, int lda, const void* B, int btype, int ldb, const void* beta, void* C,
                            int ctype, int ldc, int compute, int algo) {
  return gemm_ex("cublasGemmEx", h, ta, tb, m, n, k, alpha, A, atype, lda, 0, B, btype, ldb, 0, beta, C, ctype,
                 ldc, 0, 1, compute, algo);
}

EMU_EXPORT int cublasGemmStridedBatchedEx(Handle* h, int ta, int tb, int m, int n, int k, const void* alpha,
                                          const void* A, int atype, int lda, long long sa, const void* B, int btype,
                                          int ldb, long long sb, const void* beta, void* C, int ctype, int ldc,
                                          long long sc, int batch, int compute, int algo) {
  return gemm_ex("cublasGemmStridedBatchedEx", h, ta, tb, m, n, k, alpha, A, atype, lda, sa, B, btype, ldb, sb,
                 beta, C, ctype, ldc, sc, batch, compute, algo);
}
