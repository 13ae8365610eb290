// The CUDA runtime side of the backend: probing (driver, devices, cuBLAS),
// per-device contexts, error checks, synchronisation, the caching allocator,
// memory statistics and events. Every CUDA and cuBLAS call is checked.
#include "runtime.h"

#include <dlfcn.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <unordered_map>

#include "../src/cuda_api.h"

#ifndef LORA_CUDA_ARCHS_STR
#define LORA_CUDA_ARCHS_STR ""
#endif

namespace lc::cuda {
namespace {

std::atomic<bool> g_allow_tf32{false};

std::string mib(double bytes) {
  char b[32];
  std::snprintf(b, sizeof b, "%.1f MiB", bytes / (1024.0 * 1024.0));
  return b;
}

std::string cuda_version_str(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

bool sticky(cudaError_t e) {
  switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorHardwareStackError:
    case cudaErrorAssert:
    case cudaErrorLaunchTimeout:
      return true;
    default:
      return false;
  }
}

std::string error_words(cudaError_t e) {
  return std::string(cudaGetErrorString(e)) + " (" + cudaGetErrorName(e) + ")";
}

std::string device_words(const DeviceInfo& d) {
  return "CUDA device " + std::to_string(d.ordinal) + " (" + d.name + ", compute capability " +
         std::to_string(d.major) + "." + std::to_string(d.minor) + ")";
}

// Why a device cannot run this build's kernels, or "" when it can: a GPU
// answers every query even when the binary has no code it can run, so a
// kernel is launched on it and its result read back. The launch creates the
// device's context, as its first use would.
std::string test_device(const DeviceInfo& d, int driver_version) {
  // Machine code starts at sm_75; older GPUs cannot run these kernels.
  if (d.major * 10 + d.minor < 75) return device_words(d) + ": this build needs compute capability 7.5 or newer";
  const int want = 0x4c6f5241 + d.ordinal;
  int got = 0;
  cudaError_t e = probe_launch(d.ordinal, want, &got);
  cudaGetLastError();  // a launch error is not sticky: it must not fail the next call
  if (e == cudaSuccess && got == want) return "";
  const std::string cc = std::to_string(d.major * 10 + d.minor);
  const std::string rebuild = "build it from source for this GPU with LORA_CUDA_ARCHS=" + cc +
                              "-real (in the installed package: npm install cmake-js node-addon-api && "
                              "LORA_CUDA_ARCHS=" + cc + "-real npm run build:native)";
  switch (e) {
    case cudaSuccess:
      return device_words(d) + " ran a test kernel that did not write its result (read back " +
             std::to_string(got) + ", expected " + std::to_string(want) + ")";
    case cudaErrorNoKernelImageForDevice:
    case cudaErrorInvalidKernelImage:
    case cudaErrorInvalidDeviceFunction:
      return device_words(d) + " cannot run this build's kernels: " + error_words(e) +
             ". The binary has GPU code for " + LORA_CUDA_ARCHS_STR + " only; " + rebuild;
    case cudaErrorUnsupportedPtxVersion:
    case cudaErrorInvalidPtx:
    case cudaErrorJitCompilerNotFound:
    case cudaErrorJitCompilationDisabled:
      return device_words(d) + " cannot run this build's kernels: " + error_words(e) +
             ". The NVIDIA driver" + (driver_version ? " (CUDA " + cuda_version_str(driver_version) + ")" : "") +
             " cannot compile the PTX of this build (CUDA " + cuda_version_str(CUDART_VERSION) +
             ") for it: update the driver to one for CUDA " + cuda_version_str(CUDART_VERSION) +
             " or newer, or " + rebuild;
    default:
      return device_words(d) + " could not run a test kernel: " + error_words(e);
  }
}

Info probe() {
  Info info;
  info.compiled = true;
  info.runtime_version = CUDART_VERSION;
  info.architectures = LORA_CUDA_ARCHS_STR;
  // The static runtime loads the driver library itself; asking the loader first
  // gives the plain reason when there is none.
  if (!dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL)) {
    const char* e = dlerror();
    info.reason = std::string("no NVIDIA driver: libcuda.so.1 could not be loaded (") +
                  (e ? e : "not found") + ")";
    return info;
  }
  int dv = 0;
  cudaDriverGetVersion(&dv);
  info.driver_version = dv;
  int n = 0;
  cudaError_t e = cudaGetDeviceCount(&n);
  cudaGetLastError();
  if (e == cudaErrorInsufficientDriver || (e == cudaSuccess && dv && dv < CUDART_VERSION / 1000 * 1000)) {
    info.reason = "the NVIDIA driver is too old: it supports CUDA " + cuda_version_str(dv) +
                  ", this build needs CUDA " + cuda_version_str(CUDART_VERSION / 1000 * 1000) +
                  " or newer (update the driver)";
    return info;
  }
  if (e == cudaErrorNoDevice || (e == cudaSuccess && n == 0)) {
    info.reason = "no CUDA GPU was found (the driver is installed; check CUDA_VISIBLE_DEVICES)";
    return info;
  }
  if (e != cudaSuccess) {
    info.reason = std::string("CUDA could not be initialised: ") + cudaGetErrorString(e) + " (" +
                  cudaGetErrorName(e) + ")";
    return info;
  }
  int current = 0;  // the probe's launches change this thread's device: put it back after
  cudaGetDevice(&current);
  for (int i = 0; i < n; ++i) {
    DeviceInfo d;
    d.ordinal = i;
    cudaDeviceProp p;
    std::memset(&p, 0, sizeof p);
    cudaError_t pe = cudaGetDeviceProperties(&p, i);
    if (pe != cudaSuccess) {
      cudaGetLastError();
      d.name = "unknown";
      d.reason = "CUDA device " + std::to_string(i) + " could not be queried: " + error_words(pe);
      info.unusable_devices.push_back(d);
      continue;
    }
    d.name = p.name;
    d.memory = static_cast<int64_t>(p.totalGlobalMem);
    d.major = p.major;
    d.minor = p.minor;
    d.multiprocessors = p.multiProcessorCount;
    d.reason = test_device(d, info.driver_version);
    (d.reason.empty() ? info.devices : info.unusable_devices).push_back(d);
  }
  int now = current;
  cudaGetDevice(&now);
  if (now != current) cudaSetDevice(current);
  cudaGetLastError();
  if (info.devices.empty()) {
    const auto& u = info.unusable_devices;
    if (u.size() == 1) {
      info.reason = u[0].reason;
    } else {
      info.reason = "none of the " + std::to_string(u.size()) + " CUDA GPUs can be used: ";
      for (size_t i = 0; i < u.size(); ++i) info.reason += (i ? "; " : "") + u[i].reason;
    }
    return info;
  }
  const Cublas& b = cublas();
  info.cublas_path = b.path;
  info.cublas_version = b.version;
  if (!b.loaded) {
    info.reason = b.error +
                  ". Install cuBLAS 12 or 13 (the CUDA toolkit, or the nvidia-cublas Python wheel with "
                  "its lib directory on LD_LIBRARY_PATH), or set LORA_CUDA_CUBLAS to the library's path";
    return info;
  }
  info.available = true;
  return info;
}

std::mutex g_ctx_mu;
std::vector<Context*>& contexts() {
  static auto* v = new std::vector<Context*>();  // never destroyed: tensors may outlive statics
  return *v;
}

Context* create_context(int index, int ordinal) {
  auto* c = new Context();
  c->index = index;
  c->ordinal = ordinal;
  check(cudaSetDevice(ordinal), "cudaSetDevice");
  check(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  int pools = 0;
  check(cudaDeviceGetAttribute(&pools, cudaDevAttrMemoryPoolsSupported, ordinal), "cudaDeviceGetAttribute");
  c->pools = pools != 0;
  if (c->pools) {
    // Keep freed memory in the pool: a training step then never calls the driver.
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, ordinal), "cudaDeviceGetDefaultMemPool");
    uint64_t keep = UINT64_MAX;
    check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep),
          "cudaMemPoolSetAttribute");
  }
  int sms = 1;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, ordinal), "cudaDeviceGetAttribute");
  c->multiprocessors = sms;
  int major = 0, minor = 0;
  check(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, ordinal), "cudaDeviceGetAttribute");
  check(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, ordinal), "cudaDeviceGetAttribute");
  c->capability = major * 10 + minor;
  check(cudaDeviceGetAttribute(&c->smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, ordinal),
        "cudaDeviceGetAttribute");
  check(cudaMalloc(reinterpret_cast<void**>(&c->err), sizeof(DeviceError)), "cudaMalloc");
  check(cudaMalloc(reinterpret_cast<void**>(&c->flag), sizeof(int)), "cudaMalloc");
  check(cudaMemsetAsync(c->err, 0, sizeof(DeviceError), c->stream), "cudaMemsetAsync");
  HostWords* hw = nullptr;
  check(cudaMallocHost(reinterpret_cast<void**>(&hw), sizeof(HostWords)), "cudaMallocHost");
  std::memset(hw, 0, sizeof *hw);
  c->host = hw;
  const char* s = std::getenv("LORA_CUDA_SYNC");
  c->sync_each_op = s && *s && std::strcmp(s, "0") != 0;
  check(cudaStreamSynchronize(c->stream), "cudaStreamSynchronize");
  return c;
}

std::string device_error_message(const DeviceError& d) {
  auto s = [](long long v) { return std::to_string(v); };
  switch (d.code) {
    case kErrEmbeddingId:
      return "embedding: id " + s(d.a) + " at index " + s(d.b) + " is outside [0, " + s(d.c) + ")";
    case kErrEmbeddingBackwardId:
      return "embedding backward: id " + s(d.a) + " at index " + s(d.b) + " is outside [0, " +
             s(d.c) + ")";
    case kErrCastInt32:  // the CPU backend's words
      return int32_conversion_error(d.b, d.v).what();
    case kErrCrossEntropyTarget:
      return "cross entropy: target " + s(d.a) + " at row " + s(d.b) + " is outside [0, " + s(d.c) +
             ")";
    case kErrGatherIndex:  // the CPU backend's words
      return "gather: index " + s(d.a) + " at position " + s(d.b) + " is outside [0, " + s(d.c) +
             ")";
    default:
      return "a CUDA kernel reported bad input (code " + s(d.code) + ")";
  }
}

}  // namespace

[[noreturn]] void throw_cuda(cudaError_t e, const std::string& what) {
  cudaGetLastError();  // a non-sticky error must not be reported again by the next check
  std::string msg = what + ": " + cudaGetErrorString(e) + " (" + cudaGetErrorName(e) + ")";
  if (sticky(e)) msg += "; the GPU context is no longer usable in this process";
  throw Error(msg, e == cudaErrorMemoryAllocation ? "ERR_CUDA_OOM" : "ERR_CUDA");
}

void check_blas(cublasStatus_t s, const char* what) {
  if (s == 0) return;
  std::string name = cublas_status_name(s);
  const Cublas& b = cublas();
  std::string detail = b.status_string ? b.status_string(s) : "";
  throw Error(std::string(what) + " failed: " + name + (detail.empty() ? "" : " (" + detail + ")"),
              s == 3 ? "ERR_CUDA_OOM" : "ERR_CUDA");
}

Context& context(int index) {
  const Info& i = info();
  if (!i.available) throw Error("CUDA is not available: " + i.reason, "ERR_CUDA_UNAVAILABLE");
  int n = static_cast<int>(i.devices.size());
  if (index < 0 || index >= n)
    throw Error("device cuda:" + std::to_string(index) + " does not exist (" + std::to_string(n) +
                    " CUDA device" + (n == 1 ? "" : "s") + ")",
                "ERR_CUDA_UNAVAILABLE");
  std::lock_guard<std::mutex> lk(g_ctx_mu);
  auto& v = contexts();
  if (v.size() < static_cast<size_t>(n)) v.resize(n, nullptr);
  if (!v[index]) v[index] = create_context(index, i.devices[index].ordinal);
  return *v[index];
}

Guard::Guard(Context& c) : ctx(c), lock_(c.mu) { check(cudaSetDevice(c.ordinal), "cudaSetDevice"); }

void launched(Context& c, const char* op) {
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) throw_cuda(e, std::string(op) + ": kernel launch failed");
  if (c.pending.size() < 16) c.pending.push_back(op);
  else c.pending.back() = std::string("... ") + op;
  if (c.sync_each_op) sync(c);
}

void sync(Context& c) {
  HostWords* hw = c.host;
  cudaError_t e = cudaMemcpyAsync(&hw->err, c.err, sizeof(DeviceError), cudaMemcpyDeviceToHost, c.stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(c.stream);
  if (e != cudaSuccess) {
    size_t n = c.pending.size();
    std::string ops;
    for (size_t i = 0; i < n; ++i) ops += (i ? ", " : "") + c.pending[i];
    c.pending.clear();
    if (n == 0) throw_cuda(e, "CUDA error at synchronisation");
    if (n == 1) throw_cuda(e, "CUDA error in " + ops);
    throw_cuda(e, "CUDA error in one of the ops queued since the last synchronisation (" + ops +
                      "; set LORA_CUDA_SYNC=1 to stop at the failing one)");
  }
  c.pending.clear();
  if (hw->err.code != kErrNone) {
    DeviceError d = hw->err;
    hw->err.code = kErrNone;
    check(cudaMemsetAsync(c.err, 0, sizeof(DeviceError), c.stream), "cudaMemsetAsync");
    throw Error(device_error_message(d), d.code == kErrCastInt32 ? kErrOutOfRange : "ERR_LORA_NATIVE");
  }
}

int read_flag(Context& c) {
  HostWords* hw = c.host;
  check(cudaMemcpyAsync(&hw->flag, c.flag, sizeof(int), cudaMemcpyDeviceToHost, c.stream),
        "cudaMemcpyAsync");
  sync(c);
  return hw->flag;
}

namespace {

// The fallback cache's block size for a request: 512-byte steps up to 1 MiB, then 2 MiB steps,
// so that a block is reused by requests of about its size.
size_t cache_rounded(size_t bytes) {
  const size_t step = bytes <= (size_t{1} << 20) ? 512 : (size_t{2} << 20);
  return (bytes + step - 1) / step * step;
}

void* cache_take(Context& c, size_t rounded) {
  for (auto& [size, blocks] : c.cache) {
    if (size != rounded || blocks.empty()) continue;
    void* p = blocks.back();
    blocks.pop_back();
    c.cached -= static_cast<int64_t>(rounded);
    return p;
  }
  return nullptr;
}

// Frees every cached block (after the queued work that may still use them).
void cache_release(Context& c) {
  if (c.cache.empty()) return;
  cudaStreamSynchronize(c.stream);
  for (auto& [size, blocks] : c.cache)
    for (void* p : blocks) cudaFree(p);
  cudaGetLastError();
  c.cache.clear();
  c.cached = 0;
}

// Gives the memory no tensor uses back to the driver: the pool's cached blocks, or the fallback cache.
void release_cached(Context& c) {
  check(cudaStreamSynchronize(c.stream), "cudaStreamSynchronize");
  if (c.pools) {
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, c.ordinal), "cudaDeviceGetDefaultMemPool");
    check(cudaMemPoolTrimTo(pool, 0), "cudaMemPoolTrimTo");
  } else {
    cache_release(c);
  }
}

}  // namespace

void* device_alloc(Context& c, size_t bytes) {
  void* p = nullptr;
  const size_t size = c.pools ? bytes : cache_rounded(bytes);
  if (!c.pools && (p = cache_take(c, size)) != nullptr) {
    c.allocated += static_cast<int64_t>(bytes);
    if (c.allocated > c.peak) c.peak = c.allocated;
    return p;
  }
  auto attempt = [&]() { return c.pools ? cudaMallocAsync(&p, size, c.stream) : cudaMalloc(&p, size); };
  cudaError_t e = attempt();
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    // Tensors no JS code refers to any more may still hold device memory until the garbage
    // collector finalizes them (device memory is not reported to V8, so nothing hurries it):
    // a full collection frees them, then the cache goes back to the driver, and one retry.
    run_out_of_memory_hook();
    release_cached(c);
    e = attempt();
  }
  if (e == cudaErrorMemoryAllocation) {
    cudaGetLastError();
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    cudaGetLastError();
    throw Error("CUDA out of memory on cuda:" + std::to_string(c.index) + ": could not allocate " +
                    mib(static_cast<double>(bytes)) + " (lora-cuda holds " +
                    mib(static_cast<double>(c.allocated)) + " in tensors; the GPU has " +
                    mib(static_cast<double>(free_b)) + " free of " +
                    mib(static_cast<double>(total_b)) + ")",
                "ERR_CUDA_OOM");
  }
  check(e, c.pools ? "cudaMallocAsync" : "cudaMalloc");
  c.allocated += static_cast<int64_t>(bytes);
  if (c.allocated > c.peak) c.peak = c.allocated;
  return p;
}

void device_free(Context& c, void* p, size_t bytes) noexcept {
  c.allocated -= static_cast<int64_t>(bytes);
  if (c.pools) {
    // Stream-ordered: the memory returns to the pool after the queued work that
    // uses it. Errors are ignored (at exit the runtime may already be gone).
    if (cudaFreeAsync(p, c.stream) != cudaSuccess) cudaGetLastError();
    return;
  }
  // Kept for the next request of its size: every use is on this stream, so a later kernel
  // that gets the block runs after the queued ones that still read it.
  const size_t size = cache_rounded(bytes);
  try {
    for (auto& [s, blocks] : c.cache) {
      if (s != size) continue;
      blocks.push_back(p);
      c.cached += static_cast<int64_t>(size);
      return;
    }
    c.cache.emplace_back(size, std::vector<void*>{p});
    c.cached += static_cast<int64_t>(size);
  } catch (...) {
    if (cudaFree(p) != cudaSuccess) cudaGetLastError();
  }
}

cublasHandle_t blas_handle(Context& c, bool fp32) {
  const Cublas& b = cublas();
  if (!c.blas) {
    cublasHandle_t h = nullptr;
    check_blas(b.create(&h), "cublasCreate");
    c.blas = h;
    check_blas(b.set_stream(h, c.stream), "cublasSetStream");
  }
  int want = fp32 && g_allow_tf32.load() ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH;
  if (want != c.blas_math) {
    check_blas(b.set_math_mode(c.blas, static_cast<cublasMath_t>(want)), "cublasSetMathMode");
    c.blas_math = want;
  }
  return c.blas;
}

// ---------------------------------------------------------------- the API of src/cuda_api.h

const Info& info() {
  static const Info i = probe();
  return i;
}

void synchronize(int index) {
  if (index >= 0) {
    Context& c = context(index);
    Guard g(c);
    sync(c);
    return;
  }
  std::vector<Context*> all;
  {
    std::lock_guard<std::mutex> lk(g_ctx_mu);
    all = contexts();
  }
  for (Context* c : all)
    if (c) {
      Guard g(*c);
      sync(*c);
    }
}

MemoryStats memory_stats(int index) {
  Context& c = context(index);
  Guard g(c);
  MemoryStats s;
  s.allocated = c.allocated;
  s.peak = c.peak;
  if (c.pools) {
    cudaMemPool_t pool;
    check(cudaDeviceGetDefaultMemPool(&pool, c.ordinal), "cudaDeviceGetDefaultMemPool");
    uint64_t r = 0;
    check(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &r), "cudaMemPoolGetAttribute");
    s.reserved = static_cast<int64_t>(r);
  } else {
    s.reserved = c.allocated + c.cached;
  }
  return s;
}

void reset_peak(int index) {
  Context& c = context(index);
  Guard g(c);
  c.peak = c.allocated;
}

void empty_cache(int index) {
  Context& c = context(index);
  Guard g(c);
  sync(c);
  release_cached(c);
}

void set_allow_tf32(bool allow) { g_allow_tf32.store(allow); }
bool allow_tf32() { return g_allow_tf32.load(); }

namespace {
struct Event {
  cudaEvent_t ev;
  int dev;
};
std::mutex g_ev_mu;
std::unordered_map<int64_t, Event>& events() {
  static auto* m = new std::unordered_map<int64_t, Event>();
  return *m;
}
int64_t g_next_event = 1;
Event find_event(int64_t id) {
  std::lock_guard<std::mutex> lk(g_ev_mu);
  auto it = events().find(id);
  if (it == events().end()) throw Error("unknown CUDA event " + std::to_string(id));
  return it->second;
}
}  // namespace

int64_t event_record(int index) {
  Context& c = context(index);
  Guard g(c);
  cudaEvent_t e;
  check(cudaEventCreate(&e), "cudaEventCreate");
  cudaError_t r = cudaEventRecord(e, c.stream);
  if (r != cudaSuccess) {
    cudaEventDestroy(e);
    throw_cuda(r, "cudaEventRecord");
  }
  std::lock_guard<std::mutex> lk(g_ev_mu);
  int64_t id = g_next_event++;
  events()[id] = Event{e, index};
  return id;
}

double event_elapsed_ms(int64_t start, int64_t end) {
  Event a = find_event(start), b = find_event(end);
  Context& c = context(b.dev);
  Guard g(c);
  sync(c);  // surfaces a kernel error with the op names instead of a bare event error
  float ms = 0;
  check(cudaEventElapsedTime(&ms, a.ev, b.ev), "cudaEventElapsedTime");
  return ms;
}

void event_destroy(int64_t id) {
  Event e{};
  {
    std::lock_guard<std::mutex> lk(g_ev_mu);
    auto it = events().find(id);
    if (it == events().end()) return;
    e = it->second;
    events().erase(it);
  }
  cudaEventDestroy(e.ev);
  cudaGetLastError();
}

}  // namespace lc::cuda
