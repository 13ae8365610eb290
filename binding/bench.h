// The addon's `bench` object (binding/bench.cpp).
#pragma once
#include <napi.h>

#include "../src/tensor.h"

namespace lc_napi {

// Unwraps a tensor handle argument, throwing a JS error for anything else
// (addon.cpp owns the handle class).
using TensorArg = const lc::Tensor& (*)(const Napi::Value&, const char*);

Napi::Object bench_exports(Napi::Env env, TensorArg tensor_arg);

}  // namespace lc_napi
