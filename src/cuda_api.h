// What the core and the binding know of CUDA: plain C++, no CUDA types. The
// CUDA build implements it in cuda/; a build without CUDA links
// src/cuda_stub.cpp, which reports "not compiled" and refuses CUDA devices.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "backend.h"

namespace lc::cuda {

struct DeviceInfo {
  int ordinal = 0;       // the CUDA runtime's device number (after CUDA_VISIBLE_DEVICES)
  std::string name;
  int64_t memory = 0;    // bytes
  int major = 0, minor = 0;  // compute capability
  int multiprocessors = 0;
  std::string reason;    // why it cannot be used ("" in `devices`)
};

struct Info {
  bool compiled = false;    // the CUDA backend is in this build
  bool available = false;   // a driver, a GPU that runs this build's kernels and cuBLAS were found
  std::string reason;       // why not, in words ("" when available)
  // The devices that ran the probe's kernel; cuda:N is devices[N], which is
  // device `devices[N].ordinal` of the runtime (the same unless a device
  // before it is unusable, as with CUDA_VISIBLE_DEVICES).
  std::vector<DeviceInfo> devices;
  std::vector<DeviceInfo> unusable_devices;  // the others, each with its reason
  std::string cublas_path;  // the library loaded ("" when none)
  std::string cublas_version;  // "13.0.2" ("" when none)
  int runtime_version = 0;  // CUDART_VERSION this build was compiled with (13000 = 13.0)
  int driver_version = 0;   // the highest CUDA version the driver supports (0 = no driver)
  std::string architectures;  // the GPU architectures compiled in ("75-real;80-real;...")
};

// Probed once per process (driver, devices, a kernel launched on each, cuBLAS);
// later calls return the same.
const Info& info();

// The backend of cuda:index; throws ERR_CUDA_UNAVAILABLE with info().reason
// when CUDA cannot be used, or when the device does not exist.
Backend& backend(int index);

// Waits for all work queued on the device (index < 0: every device used so
// far). An error raised by a queued kernel is thrown here, naming the op.
void synchronize(int index);

struct MemoryStats {
  int64_t allocated = 0;  // bytes held by live tensors (and temporaries) on the device
  int64_t reserved = 0;   // bytes the caching allocator holds from the driver
  int64_t peak = 0;       // highest `allocated` since start or reset_peak
};
MemoryStats memory_stats(int index);
void reset_peak(int index);
// Returns cached, unused device memory to the driver.
void empty_cache(int index);

// TF32 tensor-core math for float32 matrix products (off by default: results
// then match float32 GEMMs to rounding).
void set_allow_tf32(bool allow);
bool allow_tf32();

// CUDA events for benchmarks: record on the device's stream, read the time
// between two (waits for the later one).
int64_t event_record(int index);
double event_elapsed_ms(int64_t start, int64_t end);
void event_destroy(int64_t id);

}  // namespace lc::cuda
