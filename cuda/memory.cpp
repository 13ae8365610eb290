// CUDA memory: the backend's allocations (the caching allocator of
// runtime.cpp), copies to, from and on the device, temporaries, and the
// registry of one CudaBackend per device.
#include <mutex>
#include <vector>

#include "../src/cuda_api.h"
#include "cuda_backend.h"

namespace lc::cuda {

void* CudaBackend::allocate(size_t bytes) {
  Guard g(c_);
  return device_alloc(c_, bytes);
}

void CudaBackend::deallocate(void* p, size_t bytes) {
  try {
    Guard g(c_);
    device_free(c_, p, bytes);
  } catch (...) {
    // A destructor must not throw (the runtime may be shutting down at exit).
  }
}

void CudaBackend::write_from_host(const Tensor& dst, const void* src) {
  Guard g(c_);
  // From pageable memory the copy is staged before the call returns, so the
  // source may be reused at once.
  check(cudaMemcpyAsync(dst.raw(), src, dst.numel() * dtype_size(dst.dtype),
                        cudaMemcpyHostToDevice, c_.stream),
        "copy to the GPU");
}

void CudaBackend::read_to_host(const Tensor& src, void* dst) {
  Guard g(c_);
  check(cudaMemcpyAsync(dst, src.raw(), src.numel() * dtype_size(src.dtype),
                        cudaMemcpyDeviceToHost, c_.stream),
        "copy from the GPU");
  sync(c_);
}

void CudaBackend::copy(const Tensor& dst, const Tensor& src) {
  Guard g(c_);
  if (dst.dtype == src.dtype) {
    if (dst.raw() != src.raw())
      check(cudaMemcpyAsync(dst.raw(), src.raw(), dst.numel() * dtype_size(dst.dtype),
                            cudaMemcpyDeviceToDevice, c_.stream),
            "copy on the GPU");
    return;
  }
  cast(dst, src);
}

Tensor scratch(Context& c, const Shape& shape, DType dtype) {
  return empty(shape, dtype, Device{DeviceType::CUDA, c.index});
}

Backend& backend(int index) {
  Context& c = context(index);  // throws when CUDA or the device is unavailable
  static std::mutex mu;
  static auto* backends = new std::vector<CudaBackend*>();  // never destroyed, like the contexts
  std::lock_guard<std::mutex> lk(mu);
  if (backends->size() <= static_cast<size_t>(index)) backends->resize(index + 1, nullptr);
  if (!(*backends)[index]) (*backends)[index] = new CudaBackend(c);
  return *(*backends)[index];
}

}  // namespace lc::cuda
