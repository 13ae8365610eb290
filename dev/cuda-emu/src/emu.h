// Internals shared by the emulated runtime (runtime.cpp) and the executor of
// kernels (exec.cpp).
#pragma once
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "cuda_runtime_api.h"

namespace emu {

// The emulated device.
constexpr const char* kDeviceName = "lora-cuda CUDA emulator";
constexpr size_t kTotalMemory = size_t{2} << 30;  // 2 GiB
constexpr int kMajor = 9, kMinor = 0;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr size_t kSharedDefault = 48 * 1024;        // per block, without an opt-in
constexpr size_t kSharedOptin = 227 * 1024;         // cudaFuncAttributeMaxDynamicSharedMemorySize at most
int device_count();
int multiprocessors();
// The error every launch on the device fails with (LORA_CUDA_EMU_LAUNCH_ERROR), or cudaSuccess.
cudaError_t launch_error(int device);

// One lock for the whole emulated GPU: API calls and kernels run one at a time.
std::recursive_mutex& gpu_mutex();

int current_device();
// The device of a live stream (the current device for the null stream), or -1.
int stream_device(cudaStream_t s);

// A non-sticky error of the calling thread's last call (with details for cudaGetErrorString).
cudaError_t fail(cudaError_t e, const std::string& detail = "");
// A fault of work on the GPU: sticky, as a kernel fault is on a real device.
void fault(cudaError_t e, const std::string& detail);
cudaError_t sticky();

// Device memory. Every allocation has its own pages, ends flush against an
// inaccessible page (and starts after one), and its unused head is filled with
// a canary; freed memory becomes inaccessible for a while.
struct Alloc {
  char* map;
  size_t map_len;
  char* p;  // what the caller got
  size_t bytes;
  size_t head;  // canary bytes before p, on accessible pages
  int device;   // -1: pinned host memory
  int kind;     // 0 cudaMalloc, 1 cudaMallocAsync, 2 cudaMallocHost
};
// The live allocation with p <= addr <= p + bytes (one past the end counts), or null.
const Alloc* find_live(const void* addr);
// 0 when [p, p + bytes) is inside one live allocation on `device` (-1: any,
// -2: device or pinned host memory of any device); else -1 and a description.
int check_range(const void* p, size_t bytes, int device, std::string* why);
// What is at addr (for fault messages): inside, before or after which allocation, freed, ...
std::string describe_address(const void* addr);
// Whether n bytes at p are all 0xFF (canaries, memory never written).
bool all_ff(const void* p, size_t n);
// False (and a description) when the canary before the allocation was overwritten.
bool head_intact(const Alloc& a, std::string* why);

// The largest dynamic shared memory a kernel may launch with.
size_t max_dynamic_smem(const void* fn);

std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));

}  // namespace emu
