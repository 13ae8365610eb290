// What only the benchmarks (bench/) use, exported as the addon's `bench`
// object: CUDA events for timing on the device's stream, and a plain GEMM into
// an existing matrix to compare the layers with. Not part of the library's API.
#include "bench.h"

#include <string>

#include "../src/cpu/gemm.h"
#include "../src/cuda_api.h"
#include "../src/ops.h"
#include "glue.h"

namespace lc_napi {

Napi::Object bench_exports(Napi::Env env, TensorArg T) {
  Napi::Object o = Napi::Object::New(env);
  auto def = [&](const char* name, auto body) {
    o.Set(name, make_function(env, name, body));
  };
  def("eventRecord", [](const Napi::CallbackInfo& a) -> Napi::Value {
    return Napi::Number::New(a.Env(), static_cast<double>(lc::cuda::event_record(
                                          static_cast<int>(i64(a[0], "device index")))));
  });
  def("eventElapsed", [](const Napi::CallbackInfo& a) -> Napi::Value {
    return Napi::Number::New(a.Env(), lc::cuda::event_elapsed_ms(i64(a[0], "start event"),
                                                                 i64(a[1], "end event")));
  });
  def("eventDestroy", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::cuda::event_destroy(i64(a[0], "event"));
    return a.Env().Undefined();
  });
  // C = alpha op(A) op(B) + beta C into an existing 2-D C: the plain GEMM the
  // benchmarks compare the layers with.
  def("gemmInto", [T](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::ops::gemm_into(T(a[0], "gemm A"), T(a[1], "gemm B"), T(a[2], "gemm C"), flag(a[3]),
                       flag(a[4]), num(a[5], "alpha"), num(a[6], "beta"));
    return a.Env().Undefined();
  });
  // gemm_bf16 itself on bfloat16 CPU tensors read as flat storage with row strides lda/ldb/ldc
  // (the library's callers pass dense ones): gemmBf16(A, B, C, tA, tB, M, N, K, alpha, beta, lda,
  // ldb, ldc). For the kernel's tests and per-shape timings.
  def("gemmBf16", [T](const Napi::CallbackInfo& a) -> Napi::Value {
    const lc::Tensor& A = T(a[0], "gemmBf16 A");
    const lc::Tensor& B = T(a[1], "gemmBf16 B");
    const lc::Tensor& C = T(a[2], "gemmBf16 C");
    const bool tA = flag(a[3]), tB = flag(a[4]);
    const int64_t M = i64(a[5], "M"), N = i64(a[6], "N"), K = i64(a[7], "K");
    const float alpha = float(num(a[8], "alpha")), beta = float(num(a[9], "beta"));
    const int64_t lda = i64(a[10], "lda"), ldb = i64(a[11], "ldb"), ldc = i64(a[12], "ldc");
    // The stored matrix [rows, cols] with row stride ld must lie inside t.
    auto fits = [&](const lc::Tensor& t, const char* name, int64_t rows, int64_t cols, int64_t ld) {
      if (t.dtype != lc::DType::BF16 || t.device().type != lc::DeviceType::CPU)
        throw Napi::TypeError::New(a.Env(), std::string("gemmBf16: ") + name + " must be a bfloat16 CPU tensor");
      if (rows < 0 || cols < 0 || ld < std::max<int64_t>(cols, 1) || (rows > 0 && (rows - 1) * ld + cols > t.numel()))
        throw Napi::RangeError::New(a.Env(), std::string("gemmBf16: ") + name + " [" + std::to_string(rows) + ", " +
                                                 std::to_string(cols) + "] with row stride " + std::to_string(ld) +
                                                 " does not fit its tensor");
    };
    fits(A, "A", tA ? K : M, tA ? M : K, lda);
    fits(B, "B", tB ? N : K, tB ? K : N, ldb);
    fits(C, "C", M, N, ldc);
    lc::gemm_bf16(tA, tB, M, N, K, alpha, A.data<lc::bf16>(), lda, B.data<lc::bf16>(), ldb, beta,
                  C.data<lc::bf16>(), ldc);
    return a.Env().Undefined();
  });
  // The float32 multiply-add peak of the built-in kernels' vectors on the pool's threads:
  // fmaPeak(seconds) -> { gflops, gflopsPerThread, threads, kernels }.
  def("fmaPeak", [](const Napi::CallbackInfo& a) -> Napi::Value {
    const double seconds = num(a[0], "seconds");
    if (!(seconds > 0 && seconds <= 60))
      throw Napi::RangeError::New(a.Env(), "fmaPeak: seconds must be in (0, 60]");
    const lc::FmaPeak p = lc::fma_peak(seconds);
    Napi::Object r = Napi::Object::New(a.Env());
    r.Set("gflops", p.gflops);
    r.Set("gflopsPerThread", p.gflops_per_thread);
    r.Set("threads", p.threads);
    r.Set("kernels", p.kernels);
    return r;
  });
  // The peak of the tensor bytes live on this thread since the last call with reset (the CPU
  // backend's allocations: tensors only, not the GEMM's per-thread packing buffers).
  def("livePeak", [](const Napi::CallbackInfo& a) -> Napi::Value {
    return Napi::Number::New(a.Env(), static_cast<double>(lc::peak_live_bytes_this_thread(flag(a[0]))));
  });
  return o;
}

}  // namespace lc_napi
