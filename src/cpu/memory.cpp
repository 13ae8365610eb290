// CPU memory: 64-byte aligned host allocations, host copies, and copies
// between tensors with a dtype cast.
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>

#include "cpu_backend.h"

namespace lc {

void* CpuBackend::allocate(size_t bytes) {
  // 64-byte alignment suits the vector loads of BLAS kernels.
  void* p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes on the CPU",
                      "ERR_OUT_OF_MEMORY");
  return p;
}

void CpuBackend::deallocate(void* p, size_t) { std::free(p); }

void CpuBackend::write_from_host(const Tensor& dst, const void* src) {
  std::memcpy(dst.raw(), src, dst.numel() * dtype_size(dst.dtype));
}

void CpuBackend::read_to_host(const Tensor& src, void* dst) {
  std::memcpy(dst, src.raw(), src.numel() * dtype_size(src.dtype));
}

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
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
        if (!(s[i] > -2147483649.0 && s[i] < 2147483648.0)) throw int32_conversion_error(i, s[i]);
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

}  // namespace lc
