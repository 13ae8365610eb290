// The backend registry: which Backend serves a device.
#include "backend.h"

#include "cpu/cpu_backend.h"
#include "cuda_api.h"

namespace lc {

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

Backend& backend_for(Device dev) {
  if (dev.type == DeviceType::CPU) return cpu_backend();
  return cuda::backend(dev.index);
}

}  // namespace lc
