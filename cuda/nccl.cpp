// NCCL's loader (cuda/nccl.h) and the communicator of src/distributed/nccl_api.h:
// one per process, on one device, its collectives queued on that device's
// stream, so they run in order with the ops that made the gradients.
#include "nccl.h"

#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <vector>

#include "../src/distributed/nccl_api.h"
#include "runtime.h"

namespace lc::cuda {
namespace {

const char* const kInstall =
    "install NCCL 2.10 or later (the libnccl2 package of NVIDIA's CUDA repository, or the nvidia-nccl-cu12 "
    "Python wheel with its lib directory on LD_LIBRARY_PATH) or set LORA_CUDA_NCCL to the path of "
    "libnccl.so.2";

template <typename F>
bool sym(void* lib, const char* name, F& out, std::string& missing) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out) missing += (missing.empty() ? "" : ", ") + std::string(name);
  return out != nullptr;
}

bool bind(void* lib, Nccl& n, std::string& why) {
  std::string missing;
  sym(lib, "ncclGetVersion", n.get_version, missing);
  sym(lib, "ncclGetUniqueId", n.get_unique_id, missing);
  sym(lib, "ncclCommInitRank", n.comm_init_rank, missing);
  sym(lib, "ncclCommDestroy", n.comm_destroy, missing);
  sym(lib, "ncclCommAbort", n.comm_abort, missing);
  sym(lib, "ncclCommGetAsyncError", n.comm_get_async_error, missing);
  sym(lib, "ncclAllReduce", n.all_reduce, missing);
  sym(lib, "ncclBroadcast", n.broadcast, missing);
  sym(lib, "ncclGroupStart", n.group_start, missing);
  sym(lib, "ncclGroupEnd", n.group_end, missing);
  sym(lib, "ncclGetErrorString", n.error_string, missing);
  if (!missing.empty()) {
    why = "it lacks " + missing;
    return false;
  }
  std::string ignore;
  sym(lib, "ncclGetLastError", n.last_error, ignore);
  int v = 0;
  n.get_version(&v);
  n.code = v;
  // 2.9 and later: major*10000 + minor*100 + patch; before: major*1000 + minor*100 + patch.
  int major = v >= 10000 ? v / 10000 : v / 1000, minor = v >= 10000 ? (v / 100) % 100 : (v / 100) % 10;
  n.version = std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(v % 100);
  if (v < 21000) {
    why = "it is NCCL " + n.version + ", older than the 2.10 whose ncclAvg lora-cuda uses";
    return false;
  }
  return true;
}

Nccl load() {
  Nccl c;
  std::vector<std::string> names, tried;
  // A library named by the user is the only one tried.
  if (const char* env = std::getenv("LORA_CUDA_NCCL"); env && *env) names.push_back(env);
  else names.push_back("libnccl.so.2");
  for (const std::string& name : names) {
    void* lib = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      tried.push_back(name + " (" + (e ? e : "not found") + ")");
      continue;
    }
    Nccl cand;
    std::string why;
    if (!bind(lib, cand, why)) {
      tried.push_back(name + " (" + why + ")");
      dlclose(lib);
      continue;
    }
    cand.loaded = true;
    Dl_info di;
    void* f = dlsym(lib, "ncclGetVersion");
    cand.path = f && dladdr(f, &di) && di.dli_fname ? di.dli_fname : name;
    return cand;  // stays open for the life of the process
  }
  c.error = "NCCL was not found (" + std::string(kInstall) + "); tried ";
  for (size_t i = 0; i < tried.size(); ++i) c.error += (i ? "; " : "") + tried[i];
  return c;
}

}  // namespace

const Nccl& nccl() {
  static const Nccl n = load();
  return n;
}

}  // namespace lc::cuda

namespace lc::dist {
namespace {

using namespace lc::cuda;

std::mutex mu;
ncclComm_t comm = nullptr;
int comm_device = -1;
int comm_world = 0;
bool broken = false;
std::string broken_why;

const Nccl& need() {
  const Nccl& n = nccl();
  if (!n.loaded) throw Error("NCCL is not available: " + n.error, "ERR_DIST_UNAVAILABLE");
  return n;
}

std::string text(const Nccl& n, ncclResult_t r) {
  std::string s = n.error_string ? n.error_string(r) : "NCCL error " + std::to_string(r);
  if (n.last_error && comm) {
    const char* d = n.last_error(comm);
    if (d && *d) s += " (" + std::string(d) + ")";
  }
  return s;
}

void fail(const Nccl& n, ncclResult_t r, const std::string& what) {
  broken = true;
  broken_why = what + " failed: " + text(n, r);
  throw Error("NCCL: " + broken_why + " (a rank may have died)", "ERR_DIST_FAILED");
}

void ready(const char* what) {
  if (!comm) throw Error(std::string(what) + ": NCCL is not initialised (call initDistributed first)", "ERR_DIST_NOT_INITIALIZED");
  if (broken) throw Error(std::string(what) + ": the process group is broken by an earlier failure (" + broken_why + ")", "ERR_DIST_FAILED");
}

// Waits for the device's stream, watching the communicator for an asynchronous error (a peer that
// died, a network failure); after timeout_s seconds (0: none) the communicator is aborted, which
// also ends the kernels waiting for the peers.
void wait(const Nccl& n, Context& c, double timeout_s, const char* what) {
  auto start = std::chrono::steady_clock::now();
  for (uint64_t spin = 0;; ++spin) {
    cudaError_t e = cudaStreamQuery(c.stream);
    if (e == cudaSuccess) return;
    if (e != cudaErrorNotReady) throw_cuda(e, what);
    ncclResult_t async = 0;
    ncclResult_t r = n.comm_get_async_error(comm, &async);
    if (r == 0 && async != 0 && async != kNcclInProgress) {
      n.comm_abort(comm);
      comm = nullptr;
      broken = true;
      broken_why = std::string(what) + ": " + text(n, async);
      throw Error("NCCL: " + broken_why + " (a rank may have died)", "ERR_DIST_FAILED");
    }
    if ((spin & 255) == 255 && timeout_s > 0) {
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (s > timeout_s) {
        n.comm_abort(comm);
        comm = nullptr;
        broken = true;
        broken_why = std::string(what) + " timed out";
        throw Error("NCCL: " + std::string(what) + " did not complete within " + std::to_string(timeout_s) +
                        " s: another rank has died, stalled or is running different code",
                    "ERR_DIST_TIMEOUT");
      }
    }
    sched_yield();
  }
}

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::I32: return ncclInt32;
    case DType::BF16:
    case DType::F16: break;  // refused in lib/distributed.ts before any call
  }
  throw Error(std::string("NCCL collectives take float32, float64 or int32 tensors, got ") + dtype_name(t),
              "ERR_INVALID_ARG_TYPE");
}

template <typename Post>
void bucketed(const Nccl& n, const std::vector<Tensor>& ts, size_t bucket_bytes, double timeout_s,
              const char* what, Post post) {
  for (const Tensor& t : ts) {
    Device d = t.device();
    if (d.type != DeviceType::CUDA || d.index != comm_device)
      throw Error(std::string(what) + ": the NCCL process group works on cuda:" + std::to_string(comm_device) +
                      ", got a tensor on " + d.str(), "ERR_DIST_DEVICE");
  }
  Context& c = context(comm_device);
  Guard g(c);
  if (bucket_bytes < 16) bucket_bytes = 16;
  for (DType dt : {DType::F32, DType::F64, DType::I32}) {
    std::vector<const Tensor*> group;
    size_t bytes = 0, es = dtype_size(dt);
    for (const Tensor& t : ts)
      if (t.dtype == dt) {
        group.push_back(&t);
        bytes += static_cast<size_t>(t.numel()) * es;
      }
    if (!bytes) continue;
    Tensor buf = scratch(c, {static_cast<int64_t>(bytes / es)}, dt);
    char* p = static_cast<char*>(buf.raw());
    size_t off = 0;
    for (const Tensor* t : group) {
      size_t b = static_cast<size_t>(t->numel()) * es;
      if (b) check(cudaMemcpyAsync(p + off, t->raw(), b, cudaMemcpyDeviceToDevice, c.stream), what);
      off += b;
    }
    size_t per = bucket_bytes / es, count = bytes / es;
    ncclResult_t r = n.group_start();
    if (r != 0) fail(n, r, "ncclGroupStart");
    for (size_t first = 0; first < count; first += per) {
      r = post(p + first * es, std::min(per, count - first), nccl_type(dt), c.stream);
      if (r != 0 && r != kNcclInProgress) {
        n.group_end();
        fail(n, r, what);
      }
    }
    r = n.group_end();
    if (r != 0 && r != kNcclInProgress) fail(n, r, "ncclGroupEnd");
    off = 0;
    for (const Tensor* t : group) {
      size_t b = static_cast<size_t>(t->numel()) * es;
      if (b) check(cudaMemcpyAsync(t->raw(), p + off, b, cudaMemcpyDeviceToDevice, c.stream), what);
      off += b;
    }
    wait(n, c, timeout_s, what);
  }
}

}  // namespace

const NcclInfo& nccl_info() {
  static const NcclInfo i = [] {
    NcclInfo v;
    v.compiled = true;
    const Nccl& n = nccl();
    v.loaded = n.loaded;
    v.path = n.path;
    v.version = n.version;
    v.error = n.error;
    return v;
  }();
  return i;
}

std::vector<uint8_t> nccl_unique_id() {
  const Nccl& n = need();
  ncclUniqueId id;
  std::memset(&id, 0, sizeof id);
  ncclResult_t r = n.get_unique_id(&id);
  if (r != 0) throw Error("NCCL: ncclGetUniqueId failed: " + text(n, r), "ERR_DIST_FAILED");
  return std::vector<uint8_t>(id.internal, id.internal + sizeof id.internal);
}

void nccl_init(int world, int rank, const std::vector<uint8_t>& id_bytes, int device, double timeout_s) {
  std::lock_guard<std::mutex> lock(mu);
  const Nccl& n = need();
  if (comm) throw Error("initDistributed: an NCCL process group already exists in this process", "ERR_DIST_ALREADY_INITIALIZED");
  if (id_bytes.size() != sizeof(ncclUniqueId))
    throw Error("NCCL: the unique id must be " + std::to_string(sizeof(ncclUniqueId)) + " bytes, got " + std::to_string(id_bytes.size()), "ERR_DIST_FAILED");
  ncclUniqueId id;
  std::memcpy(id.internal, id_bytes.data(), sizeof id.internal);
  Context& c = context(device);  // throws ERR_CUDA_UNAVAILABLE without the device
  Guard g(c);
  ncclComm_t made = nullptr;
  // Blocks until every rank has joined; NCCL_COMM_ID / its own timeout govern a rank that never comes.
  (void)timeout_s;
  ncclResult_t r = n.comm_init_rank(&made, world, id, rank);
  if (r != 0) throw Error("NCCL: ncclCommInitRank (rank " + std::to_string(rank) + " of " + std::to_string(world) + ") failed: " + text(n, r), "ERR_DIST_FAILED");
  comm = made;
  comm_device = device;
  comm_world = world;
  broken = false;
}

bool nccl_initialized() {
  std::lock_guard<std::mutex> lock(mu);
  return comm != nullptr;
}

int nccl_device() {
  std::lock_guard<std::mutex> lock(mu);
  return comm ? comm_device : -1;
}

void nccl_all_reduce(const std::vector<Tensor>& tensors, bool mean, double timeout_s, size_t bucket_bytes) {
  std::lock_guard<std::mutex> lock(mu);
  const Nccl& n = need();
  ready("allReduce");
  for (const Tensor& t : tensors)
    if (mean && t.dtype == DType::I32) throw Error("allReduce: 'mean' needs floating-point tensors, got int32", "ERR_INVALID_ARG_TYPE");
  bucketed(n, tensors, bucket_bytes, timeout_s, "ncclAllReduce",
           [&](void* p, size_t count, ncclDataType_t type, cudaStream_t s) {
             return n.all_reduce(p, p, count, type, mean ? ncclAvg : ncclSum, comm, s);
           });
}

void nccl_broadcast(const std::vector<Tensor>& tensors, int root, double timeout_s, size_t bucket_bytes) {
  std::lock_guard<std::mutex> lock(mu);
  const Nccl& n = need();
  ready("broadcast");
  if (root < 0 || root >= comm_world)
    throw Error("broadcast: root " + std::to_string(root) + " is not a rank of this world of " + std::to_string(comm_world), kErrOutOfRange);
  bucketed(n, tensors, bucket_bytes, timeout_s, "ncclBroadcast",
           [&](void* p, size_t count, ncclDataType_t type, cudaStream_t s) {
             return n.broadcast(p, p, count, type, root, comm, s);
           });
}

void nccl_barrier(double timeout_s) {
  int device;
  {
    std::lock_guard<std::mutex> lock(mu);
    ready("barrier");
    device = comm_device;
  }
  // NCCL has no barrier: a one-element all-reduce that every rank must join.
  Tensor one = empty({1}, DType::F32, Device{DeviceType::CUDA, device});
  nccl_all_reduce({one}, false, timeout_s, 64);
}

void nccl_destroy() {
  std::lock_guard<std::mutex> lock(mu);
  if (!comm) return;
  const Nccl& n = nccl();
  n.comm_destroy(comm);
  comm = nullptr;
  comm_device = -1;
}

}  // namespace lc::dist
