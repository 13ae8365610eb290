// The backend registry (which Backend serves a device) and what the CPU
// backend runs on.
#include "backend.h"

#include "cpu/blas.h"
#include "cpu/cpu_backend.h"
#include "cuda_api.h"
#include "parallel.h"

namespace lc {

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

Backend& backend_for(Device dev) {
  if (dev.type == DeviceType::CPU) return cpu_backend();
  return cuda::backend(dev.index);
}

CpuInfo cpu_info() {
  const BlasInfo& b = blas_info();
  CpuInfo i;
  i.blas = b.name;
  i.blas_path = b.path;
  i.blas_reason = b.reason;
  i.blas_threads = b.threads;
  i.threads = num_threads();
  return i;
}

}  // namespace lc
