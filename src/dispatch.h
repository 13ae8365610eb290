// Runs fn(float{}) or fn(double{}) for a tensor's dtype: one template body
// serves both float types; anything else is an error naming the op.
// dispatch_floating adds the 16-bit storage types (fn(bf16{}), fn(f16{})) for
// the ops whose bodies compute in opmath_t<T> and round once on store.
#pragma once
#include <string>

#include "half.h"
#include "tensor.h"

namespace lc {

template <typename Fn>
void dispatch_float(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32: fn(float{}); return;
    case DType::F64: fn(double{}); return;
    default: fail(std::string(op) + ": expected a float32 or float64 tensor, got " + dtype_name(t));
  }
}

template <typename Fn>
void dispatch_floating(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32: fn(float{}); return;
    case DType::F64: fn(double{}); return;
    case DType::BF16: fn(bf16{}); return;
    case DType::F16: fn(f16{}); return;
    default:
      fail(std::string(op) + ": expected a float32, float64, bfloat16 or float16 tensor, got " +
           dtype_name(t));
  }
}

}  // namespace lc
