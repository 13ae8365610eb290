// Per-device state of the CUDA backend and the checks every CUDA call goes
// through: one stream per device (all ops queue on it and return at once), a
// cuBLAS handle bound to it, a stream-ordered caching allocator, and a small
// error word in mapped host memory through which kernels report bad input
// (an id outside the vocabulary) to the next synchronisation.
#pragma once
#include <cuda_runtime_api.h>

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "../src/tensor.h"
#include "cublas.h"

namespace lc::cuda {

// Written by a kernel that finds bad input (the first report wins), read and
// cleared at the next synchronisation, which throws it as an Error.
struct DeviceError {
  int code;  // 0: none
  int pad;
  long long a, b, c;  // what the message needs (the bad value, its index, the bound)
  double v;           // a bad floating-point value
};
enum DeviceErrorCode : int {
  kErrNone = 0,
  kErrEmbeddingId = 1,          // a = id, b = index, c = num embeddings
  kErrEmbeddingBackwardId = 2,  // same
  kErrCrossEntropyTarget = 3,   // a = target, b = row, c = classes
  kErrCastInt32 = 4,            // b = element, v = its value
  kErrGatherIndex = 5,          // a = index value, b = its position in the index, c = size of the dim
};

// Pinned host copies of the device words, read at synchronisation.
struct HostWords {
  DeviceError err;
  int flag;
};

// Worker threads that use one device share its Context: its stream, its error word and its
// queue of pending op names. Ops are serialised by `mu`, but a kernel's asynchronous error (or a
// bad-input report) surfaces at the next synchronisation on that stream, whichever thread runs
// it: a worker can see an error raised by another worker's op. The message names the op; work
// that must not see other threads' failures uses a device of its own.
struct Context {
  int index = 0;    // cuda:index, counting usable devices only
  int ordinal = 0;  // the CUDA runtime's device number (info().devices[index].ordinal)
  cudaStream_t stream = nullptr;
  std::recursive_mutex mu;  // one op at a time per device (worker threads share it)
  cublasHandle_t blas = nullptr;  // created on the first matrix product
  int blas_math = -1;             // math mode last set on the handle
  DeviceError* err = nullptr;     // mapped host memory, also the device pointer (UVA)
  HostWords* host = nullptr;      // pinned; set once at creation, so reading it needs no lock
  int* flag = nullptr;            // mapped scratch word for all_finite
  bool pools = false;             // cudaMallocAsync supported
  int64_t allocated = 0, peak = 0;
  int multiprocessors = 1;
  int capability = 0;  // compute capability as major * 10 + minor (86 for 8.6)
  int smem_optin = 0;  // dynamic shared memory a block may opt in to (bytes)
  // Without stream-ordered pools: freed blocks kept by rounded size for reuse on this stream
  // (cudaFree would synchronise the whole device on every free); returned on OOM or empty_cache.
  std::vector<std::pair<size_t, std::vector<void*>>> cache;
  int64_t cached = 0;
  std::vector<std::string> pending;  // ops queued since the last synchronisation (bounded)
  bool sync_each_op = false;         // LORA_CUDA_SYNC=1: synchronise after every op
};

// The context of cuda:index, created on first use; throws when CUDA or the
// device is not available.
Context& context(int index);

// The probe's test of a device (cuda/probe.cu): a one-block kernel on the null
// stream of device `ordinal` writes `value`, read back into *read. Returns the
// first error (the launch's, the copy's); a non-sticky one is left to clear.
cudaError_t probe_launch(int ordinal, int value, int* read);

// Locks the device for one op and makes it current on this thread.
class Guard {
 public:
  explicit Guard(Context& c);
  Context& ctx;

 private:
  std::lock_guard<std::recursive_mutex> lock_;
};

[[noreturn]] void throw_cuda(cudaError_t e, const std::string& what);
inline void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw_cuda(e, what);
}
void check_blas(cublasStatus_t s, const char* what);

// Call after every kernel launch: checks the launch, remembers the op's name
// for error messages, and synchronises when LORA_CUDA_SYNC is set.
void launched(Context& c, const char* op);

// Waits for the stream; throws a queued kernel's error (naming the ops queued
// since the last synchronisation) or a bad-input report from a kernel.
void sync(Context& c);

// Reads the device's scratch word (after the queued work): all_finite's answer.
int read_flag(Context& c);

// Stream-ordered device memory. OOM releases the cache and retries once, then
// throws ERR_CUDA_OOM.
void* device_alloc(Context& c, size_t bytes);
void device_free(Context& c, void* p, size_t bytes) noexcept;

// A temporary tensor on c's device (from the caching allocator; freed in stream
// order, after the queued work that uses it).
Tensor scratch(Context& c, const Shape& shape, DType dtype);

// The cuBLAS handle of the device, with the math mode of the TF32 setting.
cublasHandle_t blas_handle(Context& c, bool fp32);

// Launch shape for n independent items: blocks of `threads`, capped so that a
// grid-stride loop covers the rest.
inline unsigned grid_for(int64_t n, int threads = 256) {
  int64_t b = (n + threads - 1) / threads;
  if (b < 1) b = 1;
  if (b > 65535 * 8) b = 65535 * 8;
  return static_cast<unsigned>(b);
}

}  // namespace lc::cuda
