// The emulated NVIDIA driver, libcuda.so.1: the CUDA backend probes for that
// library before anything else, so the emulated addon links it, and the
// emulated cuBLAS finds the emulated runtime through it (abi.h).
#include "abi.h"

#define EMU_EXPORT __attribute__((visibility("default")))

namespace {
const emu::Services* g_services = nullptr;
}

extern "C" {

// The driver API's version call: the CUDA version the emulated driver supports.
EMU_EXPORT int cuDriverGetVersion(int* version) {
  if (!version) return 1;  // CUDA_ERROR_INVALID_VALUE
  *version = CUDART_VERSION;
  return 0;
}

EMU_EXPORT void lora_cuda_emu_set_services(const emu::Services* s) { g_services = s; }
EMU_EXPORT const emu::Services* lora_cuda_emu_services() { return g_services; }

}
