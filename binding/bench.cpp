// What only the benchmarks (bench/) use, exported as the addon's `bench`
// object: CUDA events for timing on the device's stream, and a plain GEMM into
// an existing matrix to compare the layers with. Not part of the library's API.
#include "bench.h"

#include <string>

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
  return o;
}

}  // namespace lc_napi
