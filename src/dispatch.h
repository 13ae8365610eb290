// Runs fn(float{}) or fn(double{}) for a tensor's dtype: one template body
// serves both float types; anything else is an error naming the op.
#pragma once
#include <string>

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

}  // namespace lc
