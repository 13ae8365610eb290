// The host side of the emulated CUDA runtime: devices, errors (per-thread last
// error, sticky faults), streams and events (work runs when it is queued, which
// is one valid stream order), device memory in guarded pages with the
// stream-ordered pool's accounting (cudaMallocAsync, release threshold, trim)
// and a fixed total, so that out of memory happens as on a GPU, and copies and
// fills checked against the allocations they touch.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "abi.h"
#include "emu.h"

extern "C" int cuDriverGetVersion(int* version);  // the emulated driver (driver.cpp)

struct CUstream_st {
  int device;
};
struct CUevent_st {
  int device;
  unsigned flags;
  bool recorded;
  std::chrono::steady_clock::time_point t;
};
struct CUmemPoolHandle_st {
  int device;
  uint64_t threshold = 0;  // release threshold: cached memory above it goes back at a synchronisation
  uint64_t used = 0;       // bytes handed out by cudaMallocAsync
  uint64_t cached = 0;     // freed bytes the pool keeps
  uint64_t reserved_high = 0, used_high = 0;
};

namespace emu {

std::string fmt(const char* f, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

namespace {

int env_int(const char* name, int dflt, int lo, int hi) {
  const char* s = std::getenv(name);
  if (!s || !*s) return dflt;
  char* end = nullptr;
  long v = std::strtol(s, &end, 10);
  if (*end || v < lo || v > hi) {
    std::fprintf(stderr, "lora-cuda CUDA emulator: %s=%s is not an integer in [%d, %d]; using %d\n", name, s, lo,
                 hi, dflt);
    return dflt;
  }
  return static_cast<int>(v);
}

struct Device {
  CUmemPoolHandle_st pool;
  uint64_t malloc_bytes = 0;  // cudaMalloc, outside the pool
  uint64_t in_use() const { return pool.used + pool.cached + malloc_bytes; }
};

// Process-wide state, never destroyed: tensors may be freed after static destructors ran.
struct State {
  std::recursive_mutex mu;
  std::vector<Device> devices;
  cudaError_t sticky = cudaSuccess;
  std::string sticky_text;  // cudaGetErrorString of the sticky error
  std::set<const CUstream_st*> streams;
  std::set<const CUevent_st*> events;
  std::map<const char*, Alloc> live;  // by p
  struct Freed {
    Alloc a;
  };
  std::deque<Freed> quarantine;
  size_t quarantine_bytes = 0;
  std::map<const void*, size_t> func_smem;  // cudaFuncAttributeMaxDynamicSharedMemorySize
  size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
};

State& st() {
  static State* s = [] {
    auto* v = new State();
    v->devices.resize(static_cast<size_t>(device_count()));
    for (size_t i = 0; i < v->devices.size(); ++i) v->devices[i].pool.device = static_cast<int>(i);
    return v;
  }();
  return *s;
}

struct LastError {
  cudaError_t last = cudaSuccess;  // what cudaGetLastError returns
  cudaError_t detail_code = cudaSuccess;
  std::string detail_text;  // cudaGetErrorString of the most recent error with details
};
thread_local LastError t_err;
thread_local int t_device = 0;

const char* error_text(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInsufficientDriver: return "CUDA driver version is insufficient for CUDA runtime version";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidKernelImage: return "device kernel image is invalid";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
    case cudaErrorInvalidPtx: return "a PTX JIT compilation failed";
    case cudaErrorJitCompilerNotFound: return "PTX JIT compiler library not found";
    case cudaErrorUnsupportedPtxVersion: return "the provided PTX was compiled with an unsupported toolchain.";
    case cudaErrorJitCompilationDisabled: return "PTX JIT compilation was disabled";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchTimeout: return "the launch timed out and was terminated";
    case cudaErrorAssert: return "device-side assert triggered";
    case cudaErrorHardwareStackError: return "hardware stack error";
    case cudaErrorIllegalInstruction: return "an illegal instruction was encountered";
    case cudaErrorMisalignedAddress: return "misaligned address";
    case cudaErrorInvalidAddressSpace: return "operation not supported on global/shared address space";
    case cudaErrorInvalidPc: return "invalid program counter";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorNotSupported: return "operation not supported";
    default: return "unknown error";
  }
}

const char* error_name(cudaError_t e) {
  switch (e) {
#define N(x) \
  case x: return #x;
    N(cudaSuccess) N(cudaErrorInvalidValue) N(cudaErrorMemoryAllocation) N(cudaErrorInitializationError)
    N(cudaErrorInvalidConfiguration) N(cudaErrorInvalidDevicePointer) N(cudaErrorInvalidMemcpyDirection)
    N(cudaErrorInsufficientDriver) N(cudaErrorInvalidDeviceFunction) N(cudaErrorNoDevice)
    N(cudaErrorInvalidDevice) N(cudaErrorInvalidKernelImage) N(cudaErrorNoKernelImageForDevice)
    N(cudaErrorInvalidPtx) N(cudaErrorJitCompilerNotFound) N(cudaErrorUnsupportedPtxVersion)
    N(cudaErrorJitCompilationDisabled) N(cudaErrorInvalidResourceHandle) N(cudaErrorNotReady)
    N(cudaErrorIllegalAddress) N(cudaErrorLaunchOutOfResources) N(cudaErrorLaunchTimeout)
    N(cudaErrorAssert) N(cudaErrorHardwareStackError) N(cudaErrorIllegalInstruction)
    N(cudaErrorMisalignedAddress) N(cudaErrorInvalidAddressSpace) N(cudaErrorInvalidPc)
    N(cudaErrorLaunchFailure) N(cudaErrorNotSupported) N(cudaErrorUnknown)
#undef N
    default: return "cudaErrorUnknown";
  }
}

using Lock = std::lock_guard<std::recursive_mutex>;

bool valid_device(int d) { return d >= 0 && d < device_count(); }

// Every call but the error queries returns a pending sticky error first.
#define EMU_STICKY()                          \
  do {                                        \
    if (st().sticky != cudaSuccess) return st().sticky; \
  } while (0)

bool live_stream(cudaStream_t s) { return !s || st().streams.count(s); }

// ---- memory

size_t round_up(size_t n, size_t m) { return (n + m - 1) / m * m; }

// Guarded pages for `bytes`: [guard][head canary, data][guard], data flush
// against the back guard so that the first byte past the end faults.
cudaError_t map_alloc(size_t bytes, int device, int kind, void** out) {
  State& s = st();
  const size_t data_len = round_up(bytes, s.page);
  const size_t map_len = data_len + 2 * s.page;
  void* m = mmap(nullptr, map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (m == MAP_FAILED) return cudaErrorMemoryAllocation;
  char* base = static_cast<char*>(m);
  if (mprotect(base + s.page, data_len, PROT_READ | PROT_WRITE) != 0) {
    munmap(m, map_len);
    return cudaErrorMemoryAllocation;
  }
  Alloc a;
  a.map = base;
  a.map_len = map_len;
  a.p = base + s.page + data_len - bytes;
  a.bytes = bytes;
  a.head = data_len - bytes;
  a.device = device;
  a.kind = kind;
  // NaN bytes for float and double: a read of memory never written shows.
  std::memset(base + s.page, 0xFF, data_len);
  s.live[a.p] = a;
  *out = a.p;
  return cudaSuccess;
}

void quarantine(const Alloc& a) {
  State& s = st();
  // Inaccessible from now on (and its memory returned), so a late use faults.
  mmap(a.map, a.map_len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
  s.quarantine.push_back({a});
  s.quarantine_bytes += a.map_len;
  while (s.quarantine.size() > 4096 || s.quarantine_bytes > (size_t{8} << 30)) {
    const Alloc& o = s.quarantine.front().a;
    munmap(o.map, o.map_len);
    s.quarantine_bytes -= o.map_len;
    s.quarantine.pop_front();
  }
}

std::string alloc_str(const Alloc& a) {
  const char* what = a.kind == 2 ? "pinned host allocation" : "device allocation";
  return fmt("the %zu-byte %s at %p", a.bytes, what, static_cast<void*>(a.p));
}

// Frees a live allocation of the given kinds; false when p is none.
cudaError_t unmap_alloc(void* p, bool host, const char* api) {
  State& s = st();
  auto it = s.live.find(static_cast<char*>(p));
  if (it == s.live.end() || (it->second.kind == 2) != host) {
    std::string where = describe_address(p);
    // Freeing what is not (or no longer) allocated is a bug worth stopping at.
    fault(cudaErrorInvalidValue, fmt("%s(%p): not a live %s allocation (%s)", api, p, host ? "pinned host" : "device",
                                     where.c_str()));
    return cudaErrorInvalidValue;
  }
  Alloc a = it->second;
  std::string why;
  if (!head_intact(a, &why)) fault(cudaErrorIllegalAddress, why + " (found when it was freed)");
  s.live.erase(it);
  if (a.device >= 0) {
    Device& d = s.devices[static_cast<size_t>(a.device)];
    if (a.kind == 1) {
      d.pool.used -= a.bytes;
      d.pool.cached += a.bytes;  // the pool keeps freed memory
    } else {
      d.malloc_bytes -= a.bytes;
    }
  }
  quarantine(a);
  return cudaSuccess;
}

void trim_pool(CUmemPoolHandle_st& p, uint64_t keep) {
  if (p.used + p.cached > keep) p.cached = keep > p.used ? keep - p.used : 0;
}

// At a synchronisation the pool gives back what exceeds its release threshold.
void release_above_threshold(int device) {
  CUmemPoolHandle_st& p = st().devices[static_cast<size_t>(device)].pool;
  trim_pool(p, p.threshold);
}

cudaError_t device_alloc(void** ptr, size_t size, int device, bool pool) {
  if (!ptr) return fail(cudaErrorInvalidValue, "a null result pointer");
  *ptr = nullptr;
  if (size == 0) return cudaSuccess;
  State& s = st();
  Device& d = s.devices[static_cast<size_t>(device)];
  const bool from_cache = pool && d.pool.cached >= size;
  if (!from_cache && (size > kTotalMemory || d.in_use() + size > kTotalMemory))
    return fail(cudaErrorMemoryAllocation,
                fmt("%zu bytes requested, %llu of %zu in use", size, static_cast<unsigned long long>(d.in_use()),
                    kTotalMemory));
  cudaError_t e = map_alloc(size, device, pool ? 1 : 0, ptr);
  if (e != cudaSuccess) return fail(e, "the host could not map the memory");
  if (pool) {
    if (from_cache) d.pool.cached -= size;
    d.pool.used += size;
    if (d.pool.used > d.pool.used_high) d.pool.used_high = d.pool.used;
    if (d.pool.used + d.pool.cached > d.pool.reserved_high) d.pool.reserved_high = d.pool.used + d.pool.cached;
  } else {
    d.malloc_bytes += size;
  }
  return cudaSuccess;
}

// A copy or fill of device memory: the range must lie in one live allocation
// (pinned host memory counts, as on a GPU with unified addressing).
cudaError_t check_device_range(const void* p, size_t n, const char* api, const char* what) {
  std::string why;
  if (check_range(p, n, -2, &why) == 0) return cudaSuccess;
  return fail(cudaErrorInvalidValue, fmt("%s: the %s range [%p, +%zu) is not device memory: %s", api, what, p, n,
                                         why.c_str()));
}

bool overlaps(const void* a, const void* b, size_t n) {
  auto x = reinterpret_cast<uintptr_t>(a), y = reinterpret_cast<uintptr_t>(b);
  return x < y + n && y < x + n;
}

cudaError_t do_memcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t stream,
                      const char* api) {
  if (!live_stream(stream)) return fail(cudaErrorInvalidResourceHandle, fmt("%s: not a live stream", api));
  if (n == 0) return cudaSuccess;
  if (!dst || !src) return fail(cudaErrorInvalidValue, fmt("%s: a null pointer", api));
  if (kind == cudaMemcpyDefault) {
    kind = find_live(dst) ? (find_live(src) ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
                          : (find_live(src) ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  cudaError_t e = cudaSuccess;
  switch (kind) {
    case cudaMemcpyHostToDevice: e = check_device_range(dst, n, api, "destination"); break;
    case cudaMemcpyDeviceToHost: e = check_device_range(src, n, api, "source"); break;
    case cudaMemcpyDeviceToDevice:
      e = check_device_range(dst, n, api, "destination");
      if (e == cudaSuccess) e = check_device_range(src, n, api, "source");
      break;
    case cudaMemcpyHostToHost: break;
    default: return fail(cudaErrorInvalidMemcpyDirection, fmt("%s: copy kind %d", api, static_cast<int>(kind)));
  }
  if (e != cudaSuccess) return e;
  if (overlaps(dst, src, n)) {
    fault(cudaErrorInvalidValue, fmt("%s: source [%p, +%zu) and destination %p overlap", api, src, n, dst));
    return cudaErrorInvalidValue;
  }
  std::memcpy(dst, src, n);
  return cudaSuccess;
}

cudaError_t do_memset(void* p, int v, size_t n, cudaStream_t stream, const char* api) {
  if (!live_stream(stream)) return fail(cudaErrorInvalidResourceHandle, fmt("%s: not a live stream", api));
  if (n == 0) return cudaSuccess;
  cudaError_t e = check_device_range(p, n, api, "destination");
  if (e != cudaSuccess) return e;
  std::memset(p, v, n);
  return cudaSuccess;
}

// ---- the services the emulated cuBLAS uses (abi.h)

void svc_lock() { st().mu.lock(); }
void svc_unlock() { st().mu.unlock(); }
cudaError_t svc_sticky() { return st().sticky; }
int svc_stream_device(cudaStream_t s) {
  Lock l(st().mu);
  return stream_device(s);
}
int svc_check_range(const void* p, size_t bytes, int device, char* msg, size_t len) {
  Lock l(st().mu);
  std::string why;
  int r = check_range(p, bytes, device, &why);
  if (r != 0 && msg && len) std::snprintf(msg, len, "%s", why.c_str());
  return r;
}
void svc_fault(cudaError_t code, const char* msg) { fault(code, msg); }

const Services g_services = {kServicesVersion, svc_lock, svc_unlock, svc_sticky, svc_stream_device,
                             svc_check_range, svc_fault};

struct Register {
  Register() { lora_cuda_emu_set_services(&g_services); }
} g_register;

}  // namespace

// ---- shared with exec.cpp

int device_count() {
  static int n = env_int("LORA_CUDA_EMU_DEVICES", 1, 1, 8);
  return n;
}
int multiprocessors() {
  static int n = env_int("LORA_CUDA_EMU_MULTIPROCESSORS", 4, 1, 1024);
  return n;
}

cudaError_t launch_error(int device) {
  // "N:KIND,...": every launch on device N fails as it would on a GPU the
  // binary has no code for (no-kernel-image) or whose driver cannot compile
  // its PTX (unsupported-ptx). Anything else is a mistake in the test: stop.
  static const std::vector<cudaError_t> errors = [] {
    std::vector<cudaError_t> v(static_cast<size_t>(device_count()), cudaSuccess);
    const char* s = std::getenv("LORA_CUDA_EMU_LAUNCH_ERROR");
    std::string text = s ? s : "";
    size_t at = 0;
    while (at < text.size()) {
      size_t end = text.find(',', at);
      if (end == std::string::npos) end = text.size();
      std::string item = text.substr(at, end - at);
      at = end + 1;
      size_t colon = item.find(':');
      char* num_end = nullptr;
      long d = colon == std::string::npos ? -1 : std::strtol(item.c_str(), &num_end, 10);
      std::string kind = colon == std::string::npos ? "" : item.substr(colon + 1);
      cudaError_t e = kind == "no-kernel-image"   ? cudaErrorNoKernelImageForDevice
                      : kind == "unsupported-ptx" ? cudaErrorUnsupportedPtxVersion
                                                  : cudaSuccess;
      if (d < 0 || d >= device_count() || num_end != item.c_str() + colon || e == cudaSuccess) {
        std::fprintf(stderr,
                     "lora-cuda CUDA emulator: LORA_CUDA_EMU_LAUNCH_ERROR=%s: \"%s\" is not DEVICE:KIND with DEVICE "
                     "in [0, %d) and KIND no-kernel-image or unsupported-ptx\n",
                     s, item.c_str(), device_count());
        std::abort();
      }
      v[static_cast<size_t>(d)] = e;
    }
    return v;
  }();
  return errors[static_cast<size_t>(device)];
}

std::recursive_mutex& gpu_mutex() { return st().mu; }
int current_device() { return t_device; }

int stream_device(cudaStream_t s) {
  if (!s) return t_device;
  return st().streams.count(s) ? s->device : -1;
}

cudaError_t fail(cudaError_t e, const std::string& detail) {
  t_err.last = e;
  t_err.detail_code = e;
  t_err.detail_text = std::string(error_text(e)) + (detail.empty() ? "" : " (" + detail + ")");
  return e;
}

void fault(cudaError_t e, const std::string& detail) {
  State& s = st();
  Lock l(s.mu);
  static int printed = 0;
  if (printed < 10) {
    ++printed;
    std::fprintf(stderr, "lora-cuda CUDA emulator: %s: %s\n", error_name(e), detail.c_str());
  }
  if (s.sticky != cudaSuccess) return;  // the first fault is the one reported
  s.sticky = e;
  s.sticky_text = std::string(error_text(e)) + " (CUDA emulator: " + detail + ")";
}

cudaError_t sticky() { return st().sticky; }

const Alloc* find_live(const void* addr) {
  State& s = st();
  const char* a = static_cast<const char*>(addr);
  auto it = s.live.upper_bound(a);
  if (it == s.live.begin()) return nullptr;
  --it;
  const Alloc& al = it->second;
  return a <= al.p + al.bytes ? &al : nullptr;
}

int check_range(const void* p, size_t bytes, int device, std::string* why) {
  const Alloc* a = find_live(p);
  const char* c = static_cast<const char*>(p);
  if (!a || (bytes > 0 && c == a->p + a->bytes)) {
    if (why) *why = describe_address(p);
    return -1;
  }
  if (bytes > static_cast<size_t>(a->p + a->bytes - c)) {
    if (why)
      *why = fmt("%zu bytes from offset %zu run %zu bytes past the end of %s", bytes,
                 static_cast<size_t>(c - a->p), bytes - static_cast<size_t>(a->p + a->bytes - c),
                 alloc_str(*a).c_str());
    return -1;
  }
  if (device >= 0 && a->device != device) {
    if (why)
      *why = a->device < 0 ? fmt("%s, not device memory", alloc_str(*a).c_str())
                           : fmt("%s is on cuda:%d, not cuda:%d", alloc_str(*a).c_str(), a->device, device);
    return -1;
  }
  return 0;
}

std::string describe_address(const void* addr) {
  State& s = st();
  const char* c = static_cast<const char*>(addr);
  if (!addr) return "a null pointer";
  if (const Alloc* a = find_live(addr)) {
    if (c == a->p + a->bytes) return fmt("the first byte past the end of %s", alloc_str(*a).c_str());
    return fmt("offset %zu of %s", static_cast<size_t>(c - a->p), alloc_str(*a).c_str());
  }
  // Guard pages and head canaries of live allocations.
  auto near = [&](const Alloc& a) -> std::string {
    if (c < a.map || c >= a.map + a.map_len) return "";
    if (c >= a.p + a.bytes)
      return fmt("byte %zu past the end of %s", static_cast<size_t>(c - (a.p + a.bytes)) + 1, alloc_str(a).c_str());
    return fmt("%zu bytes before the start of %s", static_cast<size_t>(a.p - c), alloc_str(a).c_str());
  };
  auto it = s.live.upper_bound(c);
  if (it != s.live.end()) {
    std::string r = near(it->second);
    if (!r.empty()) return r;
  }
  if (it != s.live.begin()) {
    std::string r = near(std::prev(it)->second);
    if (!r.empty()) return r;
  }
  for (auto q = s.quarantine.rbegin(); q != s.quarantine.rend(); ++q) {
    const Alloc& a = q->a;
    if (c >= a.map && c < a.map + a.map_len)
      return fmt("memory freed before (offset %lld of %s, freed)", static_cast<long long>(c - a.p),
                 alloc_str(a).c_str());
  }
  return fmt("address %p, which is no device memory (host memory, or never allocated)", addr);
}

bool all_ff(const void* p, size_t n) {
  static const auto* ones = [] {
    auto* b = new unsigned char[4096];
    std::memset(b, 0xFF, 4096);
    return b;
  }();
  const char* c = static_cast<const char*>(p);
  for (size_t off = 0; off < n; off += 4096)
    if (std::memcmp(c + off, ones, std::min<size_t>(4096, n - off)) != 0) return false;
  return true;
}

bool head_intact(const Alloc& a, std::string* why) {
  const unsigned char* h = reinterpret_cast<const unsigned char*>(a.p) - a.head;
  if (all_ff(h, a.head)) return true;
  size_t i = 0;
  while (h[i] == 0xFF) ++i;
  if (why) *why = fmt("a write %zu bytes before the start of %s", a.head - i, alloc_str(a).c_str());
  return false;
}

size_t max_dynamic_smem(const void* fn) {
  State& s = st();
  auto it = s.func_smem.find(fn);
  return it == s.func_smem.end() ? kSharedDefault : it->second;
}

}  // namespace emu

// ================================================================ the API

using namespace emu;

const char* cudaGetErrorString(cudaError_t e) {
  State& s = st();
  if (e != cudaSuccess && e == s.sticky) return s.sticky_text.c_str();
  if (e != cudaSuccess && e == t_err.detail_code) return t_err.detail_text.c_str();
  return error_text(e);
}
const char* cudaGetErrorName(cudaError_t e) { return error_name(e); }

cudaError_t cudaGetLastError(void) {
  Lock l(st().mu);
  cudaError_t e = st().sticky != cudaSuccess ? st().sticky : t_err.last;
  t_err.last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError(void) {
  Lock l(st().mu);
  return st().sticky != cudaSuccess ? st().sticky : t_err.last;
}

cudaError_t cudaDriverGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue);
  return cuDriverGetVersion(v) == 0 ? cudaSuccess : fail(cudaErrorInvalidValue);
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  if (!v) return fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int* n) {
  if (!n) return fail(cudaErrorInvalidValue);
  *n = device_count();
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (!p) return fail(cudaErrorInvalidValue);
  if (!valid_device(d)) return fail(cudaErrorInvalidDevice);
  std::memset(p, 0, sizeof *p);
  std::snprintf(p->name, sizeof p->name, "%s", kDeviceName);
  p->totalGlobalMem = kTotalMemory;
  p->sharedMemPerBlock = kSharedDefault;
  p->sharedMemPerBlockOptin = kSharedOptin;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = kMaxThreadsPerBlock;
  p->maxThreadsDim[0] = 1024;
  p->maxThreadsDim[1] = 1024;
  p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 0x7fffffff;
  p->maxGridSize[1] = 65535;
  p->maxGridSize[2] = 65535;
  p->major = kMajor;
  p->minor = kMinor;
  p->multiProcessorCount = multiprocessors();
  p->unifiedAddressing = 1;
  p->memoryPoolsSupported = 1;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int d) {
  if (!v) return fail(cudaErrorInvalidValue);
  if (!valid_device(d)) return fail(cudaErrorInvalidDevice);
  switch (a) {
    case cudaDevAttrMaxThreadsPerBlock: *v = kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *v = static_cast<int>(kSharedDefault); break;
    case cudaDevAttrWarpSize: *v = 32; break;
    case cudaDevAttrMultiProcessorCount: *v = multiprocessors(); break;
    case cudaDevAttrComputeCapabilityMajor: *v = kMajor; break;
    case cudaDevAttrComputeCapabilityMinor: *v = kMinor; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = static_cast<int>(kSharedOptin); break;
    case cudaDevAttrMemoryPoolsSupported: *v = env_int("LORA_CUDA_EMU_NO_POOLS", 0, 0, 1) ? 0 : 1; break;
    default: return fail(cudaErrorInvalidValue, fmt("device attribute %d", static_cast<int>(a)));
  }
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int d) {
  if (!valid_device(d)) return fail(cudaErrorInvalidDevice);
  t_device = d;
  Lock l(st().mu);
  EMU_STICKY();
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  if (!d) return fail(cudaErrorInvalidValue);
  *d = t_device;
  return cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) {
  Lock l(st().mu);
  EMU_STICKY();
  release_above_threshold(t_device);
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_b, size_t* total_b) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!free_b || !total_b) return fail(cudaErrorInvalidValue);
  const Device& d = st().devices[static_cast<size_t>(t_device)];
  *total_b = kTotalMemory;
  *free_b = kTotalMemory - static_cast<size_t>(d.in_use());
  return cudaSuccess;
}

// ---- streams

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned int flags) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!s || (flags & ~1u)) return fail(cudaErrorInvalidValue);
  auto* v = new CUstream_st{t_device};
  st().streams.insert(v);
  *s = v;
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) { return cudaStreamCreateWithFlags(s, cudaStreamDefault); }

cudaError_t cudaStreamDestroy(cudaStream_t s) {
  Lock l(st().mu);
  if (!s || !st().streams.erase(s)) return fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;  // the object is kept: a later use is an invalid handle, not a crash
}

cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  Lock l(st().mu);
  EMU_STICKY();
  int d = stream_device(s);
  if (d < 0) return fail(cudaErrorInvalidResourceHandle);
  release_above_threshold(d);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
  Lock l(st().mu);
  EMU_STICKY();
  return stream_device(s) < 0 ? fail(cudaErrorInvalidResourceHandle) : cudaSuccess;
}

// ---- memory

cudaError_t cudaMalloc(void** p, size_t size) {
  Lock l(st().mu);
  EMU_STICKY();
  return device_alloc(p, size, t_device, false);
}

cudaError_t cudaFree(void* p) {
  Lock l(st().mu);
  if (!p) return st().sticky;
  cudaError_t e = unmap_alloc(p, false, "cudaFree");
  return st().sticky != cudaSuccess ? st().sticky : e;
}

cudaError_t cudaMallocAsync(void** p, size_t size, cudaStream_t s) {
  Lock l(st().mu);
  EMU_STICKY();
  int d = stream_device(s);
  if (d < 0) return fail(cudaErrorInvalidResourceHandle, "cudaMallocAsync: not a live stream");
  return device_alloc(p, size, d, true);
}

cudaError_t cudaFreeAsync(void* p, cudaStream_t s) {
  Lock l(st().mu);
  if (stream_device(s) < 0) return fail(cudaErrorInvalidResourceHandle, "cudaFreeAsync: not a live stream");
  if (!p) return st().sticky;
  // Work queued before the free has already run, so the memory can go now.
  cudaError_t e = unmap_alloc(p, false, "cudaFreeAsync");
  return st().sticky != cudaSuccess ? st().sticky : e;
}

cudaError_t cudaMallocHost(void** p, size_t size) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!p) return fail(cudaErrorInvalidValue);
  *p = nullptr;
  if (size == 0) return cudaSuccess;
  return map_alloc(size, -1, 2, p) == cudaSuccess ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaFreeHost(void* p) {
  Lock l(st().mu);
  if (!p) return cudaSuccess;
  return unmap_alloc(p, true, "cudaFreeHost");
}

cudaError_t cudaDeviceGetDefaultMemPool(cudaMemPool_t* pool, int d) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!pool) return fail(cudaErrorInvalidValue);
  if (!valid_device(d)) return fail(cudaErrorInvalidDevice);
  *pool = &st().devices[static_cast<size_t>(d)].pool;
  return cudaSuccess;
}

namespace {
bool valid_pool(cudaMemPool_t p) {
  for (Device& d : st().devices)
    if (&d.pool == p) return true;
  return false;
}
}  // namespace

cudaError_t cudaMemPoolSetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!valid_pool(pool) || !value) return fail(cudaErrorInvalidValue);
  uint64_t v;
  std::memcpy(&v, value, sizeof v);
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: pool->threshold = v; return cudaSuccess;
    case cudaMemPoolAttrReservedMemHigh:
    case cudaMemPoolAttrUsedMemHigh:
      if (v != 0) return fail(cudaErrorInvalidValue, "a high watermark can only be reset to 0");
      if (attr == cudaMemPoolAttrReservedMemHigh) pool->reserved_high = 0;
      else pool->used_high = 0;
      return cudaSuccess;
    default: return fail(cudaErrorInvalidValue, fmt("memory pool attribute %d cannot be set", static_cast<int>(attr)));
  }
}

cudaError_t cudaMemPoolGetAttribute(cudaMemPool_t pool, cudaMemPoolAttr attr, void* value) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!valid_pool(pool) || !value) return fail(cudaErrorInvalidValue);
  uint64_t v;
  switch (attr) {
    case cudaMemPoolAttrReleaseThreshold: v = pool->threshold; break;
    case cudaMemPoolAttrReservedMemCurrent: v = pool->used + pool->cached; break;
    case cudaMemPoolAttrReservedMemHigh: v = pool->reserved_high; break;
    case cudaMemPoolAttrUsedMemCurrent: v = pool->used; break;
    case cudaMemPoolAttrUsedMemHigh: v = pool->used_high; break;
    default: return fail(cudaErrorInvalidValue, fmt("memory pool attribute %d", static_cast<int>(attr)));
  }
  std::memcpy(value, &v, sizeof v);
  return cudaSuccess;
}

cudaError_t cudaMemPoolTrimTo(cudaMemPool_t pool, size_t keep) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!valid_pool(pool)) return fail(cudaErrorInvalidValue);
  trim_pool(*pool, keep);
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind kind, cudaStream_t s) {
  Lock l(st().mu);
  EMU_STICKY();
  return do_memcpy(dst, src, n, kind, s, "cudaMemcpyAsync");
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind kind) {
  Lock l(st().mu);
  EMU_STICKY();
  return do_memcpy(dst, src, n, kind, nullptr, "cudaMemcpy");
}
cudaError_t cudaMemsetAsync(void* p, int v, size_t n, cudaStream_t s) {
  Lock l(st().mu);
  EMU_STICKY();
  return do_memset(p, v, n, s, "cudaMemsetAsync");
}
cudaError_t cudaMemset(void* p, int v, size_t n) {
  Lock l(st().mu);
  EMU_STICKY();
  return do_memset(p, v, n, nullptr, "cudaMemset");
}

// ---- events: work runs when it is queued, so the time between two records is
// the host time the emulated work in between took.

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned int flags) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!e || (flags & ~0x7u)) return fail(cudaErrorInvalidValue);
  auto* v = new CUevent_st{t_device, flags, false, {}};
  st().events.insert(v);
  *e = v;
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) { return cudaEventCreateWithFlags(e, cudaEventDefault); }

cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!e || !st().events.count(e)) return fail(cudaErrorInvalidResourceHandle);
  int d = stream_device(s);
  if (d < 0 || d != e->device) return fail(cudaErrorInvalidResourceHandle);
  e->recorded = true;
  e->t = std::chrono::steady_clock::now();
  return cudaSuccess;
}

cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  Lock l(st().mu);
  EMU_STICKY();
  return e && st().events.count(e) ? cudaSuccess : fail(cudaErrorInvalidResourceHandle);
}
cudaError_t cudaEventQuery(cudaEvent_t e) { return cudaEventSynchronize(e); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!ms) return fail(cudaErrorInvalidValue);
  if (!a || !b || !st().events.count(a) || !st().events.count(b)) return fail(cudaErrorInvalidResourceHandle);
  if ((a->flags | b->flags) & cudaEventDisableTiming) return fail(cudaErrorInvalidResourceHandle);
  if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle, "an event was never recorded");
  *ms = std::chrono::duration<float, std::milli>(b->t - a->t).count();
  return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t e) {
  Lock l(st().mu);
  if (!e || !st().events.erase(e)) return fail(cudaErrorInvalidResourceHandle);
  return cudaSuccess;
}

cudaError_t cudaFuncSetAttribute(const void* fn, cudaFuncAttribute attr, int value) {
  Lock l(st().mu);
  EMU_STICKY();
  if (!fn) return fail(cudaErrorInvalidDeviceFunction);
  switch (attr) {
    case cudaFuncAttributeMaxDynamicSharedMemorySize:
      if (value < 0 || static_cast<size_t>(value) > kSharedOptin)
        return fail(cudaErrorInvalidValue, fmt("%d bytes of dynamic shared memory (at most %zu)", value, kSharedOptin));
      st().func_smem[fn] = static_cast<size_t>(value);
      return cudaSuccess;
    case cudaFuncAttributePreferredSharedMemoryCarveout:
      return value >= -1 && value <= 100 ? cudaSuccess : fail(cudaErrorInvalidValue);
    default: return fail(cudaErrorInvalidValue);
  }
}
