// What the emulated runtime (inside the addon) offers the emulated cuBLAS
// library (libcublas-emu.so), handed over through the emulated driver library
// (libcuda.so.1), which both load, as a real cuBLAS and runtime share the
// driver. Plain C types only: the three are separate shared objects.
#pragma once
#include <cstddef>
#include <cstdint>

#include "cuda_runtime_api.h"

namespace emu {

constexpr uint32_t kServicesVersion = 1;

struct Services {
  uint32_t version;
  // Takes and releases the emulated GPU: work runs one piece at a time, in stream order.
  void (*lock)();
  void (*unlock)();
  // The pending sticky error (cudaSuccess when none).
  cudaError_t (*sticky)();
  // The device of a stream (null: the current device's default stream); -1 when it is not a live stream.
  int (*stream_device)(cudaStream_t stream);
  // 0 when [p, p + bytes) lies inside one live allocation on `device`; otherwise
  // -1 and a description of what is there in msg.
  int (*check_range)(const void* p, size_t bytes, int device, char* msg, size_t msg_len);
  // Records a fault of work on the GPU: a sticky error with this description.
  void (*fault)(cudaError_t code, const char* msg);
};

}  // namespace emu

extern "C" {
// In libcuda.so.1 (src/driver.cpp).
void lora_cuda_emu_set_services(const emu::Services* s);
const emu::Services* lora_cuda_emu_services();
}
