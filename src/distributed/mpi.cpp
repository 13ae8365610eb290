#include "mpi.h"

#include <dlfcn.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>

namespace lc::dist {
namespace {

// Open MPI's handles: pointers to objects inside libmpi.
using Handle = void*;
using Request = void*;

constexpr int kThreadSerialized = 2;          // MPI_THREAD_SERIALIZED in Open MPI's mpi.h
void* const kInPlace = reinterpret_cast<void*>(1);  // MPI_IN_PLACE in Open MPI's mpi.h

const char* const kInstall =
    "install Open MPI (Debian/Ubuntu: apt-get install openmpi-bin libopenmpi3; Fedora: dnf install "
    "openmpi) or set LORA_CUDA_MPI to the path of its libmpi.so.40";

struct Lib {
  MpiInfo info;
  void* lib = nullptr;
  int (*initialized)(int*) = nullptr;
  int (*finalized)(int*) = nullptr;
  int (*init_thread)(int*, char***, int, int*) = nullptr;
  int (*finalize)() = nullptr;
  int (*comm_rank)(Handle, int*) = nullptr;
  int (*comm_size)(Handle, int*) = nullptr;
  int (*comm_set_errhandler)(Handle, Handle) = nullptr;
  int (*error_string)(int, char*, int*) = nullptr;
  int (*iallreduce)(const void*, void*, int, Handle, Handle, Handle, Request*) = nullptr;
  int (*ibcast)(void*, int, Handle, int, Handle, Request*) = nullptr;
  int (*ibarrier)(Handle, Request*) = nullptr;
  int (*allreduce)(const void*, void*, int, Handle, Handle, Handle) = nullptr;
  int (*bcast)(void*, int, Handle, int, Handle) = nullptr;
  int (*barrier)(Handle) = nullptr;
  int (*test)(Request*, int*, void*) = nullptr;
  int (*abort)(Handle, int) = nullptr;
  Handle comm_world = nullptr, errors_return = nullptr, op_sum = nullptr;
  Handle t_float = nullptr, t_double = nullptr, t_int = nullptr;
};

template <typename F>
bool sym(void* lib, const char* name, F& out, std::string& missing) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out) missing += (missing.empty() ? "" : ", ") + std::string(name);
  return out != nullptr;
}

bool bind(void* lib, Lib& m, std::string& why) {
  std::string missing;
  // Open MPI's predefined objects; MPICH has none of these (its handles are integers).
  if (!dlsym(lib, "ompi_mpi_comm_world")) {
    why = dlsym(lib, "MPI_Init") != nullptr
              ? "it is an MPI of MPICH's ABI (MPICH, Intel MPI, MVAPICH), which lora-cuda does not "
                "support; " + std::string(kInstall)
              : "it is not an MPI library";
    return false;
  }
  sym(lib, "ompi_mpi_comm_world", m.comm_world, missing);
  sym(lib, "ompi_mpi_errors_return", m.errors_return, missing);
  sym(lib, "ompi_mpi_op_sum", m.op_sum, missing);
  sym(lib, "ompi_mpi_float", m.t_float, missing);
  sym(lib, "ompi_mpi_double", m.t_double, missing);
  sym(lib, "ompi_mpi_int", m.t_int, missing);
  sym(lib, "MPI_Initialized", m.initialized, missing);
  sym(lib, "MPI_Finalized", m.finalized, missing);
  sym(lib, "MPI_Init_thread", m.init_thread, missing);
  sym(lib, "MPI_Finalize", m.finalize, missing);
  sym(lib, "MPI_Comm_rank", m.comm_rank, missing);
  sym(lib, "MPI_Comm_size", m.comm_size, missing);
  sym(lib, "MPI_Comm_set_errhandler", m.comm_set_errhandler, missing);
  sym(lib, "MPI_Error_string", m.error_string, missing);
  sym(lib, "MPI_Iallreduce", m.iallreduce, missing);
  sym(lib, "MPI_Ibcast", m.ibcast, missing);
  sym(lib, "MPI_Ibarrier", m.ibarrier, missing);
  sym(lib, "MPI_Allreduce", m.allreduce, missing);
  sym(lib, "MPI_Bcast", m.bcast, missing);
  sym(lib, "MPI_Barrier", m.barrier, missing);
  sym(lib, "MPI_Test", m.test, missing);
  sym(lib, "MPI_Abort", m.abort, missing);
  if (!missing.empty()) {
    why = "it lacks " + missing + " (an Open MPI older than 1.7?)";
    return false;
  }
  int (*get_version)(char*, int*) = nullptr;
  std::string ignore;
  if (sym(lib, "MPI_Get_library_version", get_version, ignore)) {
    std::vector<char> buf(8192, 0);
    int len = 0;
    if (get_version(buf.data(), &len) == 0) {
      std::string v(buf.data());
      m.info.version = v.substr(0, v.find_first_of(",\n"));
    }
  }
  return true;
}

Lib load() {
  Lib m;
  std::vector<std::string> names, tried;
  // A library named by the user is the only one tried: another MPI found instead would not be
  // the one mpirun started.
  if (const char* env = std::getenv("LORA_CUDA_MPI"); env && *env) {
    names.push_back(env);
  } else {
    names.push_back("libmpi.so.40");
    names.push_back("libmpi.so");
  }
  for (const std::string& n : names) {
    // RTLD_GLOBAL: Open MPI's plugins, which it dlopens itself, need libmpi's symbols.
    void* lib = dlopen(n.c_str(), RTLD_NOW | RTLD_GLOBAL);
    if (!lib) {
      const char* e = dlerror();
      tried.push_back(n + " (" + (e ? e : "not found") + ")");
      continue;
    }
    Lib cand;
    std::string why;
    if (!bind(lib, cand, why)) {
      tried.push_back(n + " (" + why + ")");
      dlclose(lib);
      continue;
    }
    cand.lib = lib;
    cand.info.loaded = true;
    Dl_info di;
    void* f = dlsym(lib, "MPI_Init_thread");
    cand.info.path = f && dladdr(f, &di) && di.dli_fname ? di.dli_fname : n;
    return cand;  // stays open for the life of the process
  }
  m.info.error = "MPI was not found (" + std::string(kInstall) + "); tried ";
  for (size_t i = 0; i < tried.size(); ++i) m.info.error += (i ? "; " : "") + tried[i];
  return m;
}

Lib& lib() {
  static Lib m = load();
  return m;
}

std::mutex mu;        // one collective at a time (MPI_THREAD_SERIALIZED)
bool started = false;  // mpi_init succeeded
bool broken = false;   // a collective failed or timed out: the group cannot be trusted
std::string broken_why;
// Buffers of collectives that timed out: MPI may still write into them, so they are never freed.
std::vector<std::vector<char>>& abandoned() {
  static auto* v = new std::vector<std::vector<char>>();
  return *v;
}

std::vector<char>* staging() {
  static auto* v = new std::vector<char>[3];  // per dtype
  return v;
}

Lib& need() {
  Lib& m = lib();
  if (!m.info.loaded) throw Error(m.info.error, "ERR_DIST_UNAVAILABLE");
  return m;
}

std::string err_text(Lib& m, int code) {
  char buf[1024] = {0};
  int len = 0;
  if (m.error_string && m.error_string(code, buf, &len) == 0 && buf[0]) return buf;
  return "MPI error " + std::to_string(code);
}

void check(Lib& m, int rc, const std::string& what) {
  if (rc == 0) return;
  broken = true;
  broken_why = what + " failed: " + err_text(m, rc);
  throw Error("MPI: " + broken_why + " (a rank may have died)", "ERR_DIST_FAILED");
}

void ready(Lib& m, const char* what) {
  if (!started) throw Error(std::string(what) + ": MPI is not initialised (call initDistributed first)", "ERR_DIST_NOT_INITIALIZED");
  int fin = 0;
  m.finalized(&fin);
  if (fin) throw Error(std::string(what) + ": MPI has been finalised", "ERR_DIST_NOT_INITIALIZED");
  if (broken) throw Error(std::string(what) + ": the process group is broken by an earlier failure (" + broken_why + ")", "ERR_DIST_FAILED");
}

// Waits for every request, polling MPI_Test (which also drives MPI's progress) and yielding the CPU
// in between; throws ERR_DIST_TIMEOUT after timeout_s seconds (0: no limit).
void wait_all(Lib& m, std::vector<Request>& reqs, double timeout_s, const char* what,
              std::vector<char>* buffer) {
  auto start = std::chrono::steady_clock::now();
  size_t done = 0;
  std::vector<bool> finished(reqs.size(), false);
  for (uint64_t spin = 0; done < reqs.size(); ++spin) {
    for (size_t i = 0; i < reqs.size(); ++i) {
      if (finished[i]) continue;
      int flag = 0;
      int rc = m.test(&reqs[i], &flag, nullptr);  // nullptr = MPI_STATUS_IGNORE
      if (rc != 0) {
        if (buffer) abandoned().push_back(std::move(*buffer));
        check(m, rc, what);
      }
      if (flag) {
        finished[i] = true;
        ++done;
      }
    }
    if (done == reqs.size()) break;
    if ((spin & 255) == 255 && timeout_s > 0) {
      double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      if (s > timeout_s) {
        if (buffer) abandoned().push_back(std::move(*buffer));
        broken = true;
        broken_why = std::string(what) + " timed out";
        throw Error("MPI: " + std::string(what) + " did not complete within " + std::to_string(timeout_s) +
                        " s: another rank has died, stalled or is running different code",
                    "ERR_DIST_TIMEOUT");
      }
    }
    sched_yield();  // ranks often share cores; let the peer run
  }
}

bool mpi_known(DType t) { return t == DType::F32 || t == DType::F64 || t == DType::I32; }

Handle mpi_type(Lib& m, DType t) {
  switch (t) {
    case DType::F32: return m.t_float;
    case DType::F64: return m.t_double;
    case DType::I32: return m.t_int;
    case DType::BF16:
    case DType::F16: break;
  }
  return nullptr;
}

void check_tensors(const std::vector<Tensor>& ts, const char* what) {
  for (const Tensor& t : ts) {
    if (t.device().type != DeviceType::CPU)
      throw Error(std::string(what) + ": the MPI backend takes CPU tensors, got one on " + t.device().str(), "ERR_DIST_DEVICE");
    // Refused in lib/distributed.ts before any call; kept here so no caller packs a type MPI is not told.
    if (!mpi_known(t.dtype))
      throw Error(std::string(what) + ": MPI collectives take float32, float64 or int32 tensors, got " + dtype_name(t.dtype),
                  "ERR_INVALID_ARG_TYPE");
  }
}

// The tensors of one dtype, packed one after the other.
struct Pack {
  DType dtype;
  std::vector<const Tensor*> tensors;
  size_t bytes = 0;
};

std::vector<Pack> packs_of(const std::vector<Tensor>& ts) {
  std::vector<Pack> packs;
  for (const Tensor& t : ts) {
    Pack* p = nullptr;
    for (Pack& q : packs)
      if (q.dtype == t.dtype) p = &q;
    if (!p) {
      packs.push_back(Pack{t.dtype, {}, 0});
      p = &packs.back();
    }
    p->tensors.push_back(&t);
    p->bytes += static_cast<size_t>(t.numel()) * dtype_size(t.dtype);
  }
  return packs;
}

// Packs the tensors of each dtype into one buffer, runs `post(ptr, count, type, request)` on its
// bucket-sized pieces one after the other, and copies the result back.
template <typename Post>
void bucketed(Lib& m, const std::vector<Tensor>& ts, size_t bucket_bytes, double timeout_s,
              const char* what, Post post, bool mean, int world) {
  if (bucket_bytes < 16) bucket_bytes = 16;
  if (world == 1) return;  // nothing to exchange; sum and mean of one rank are its values
  for (const Pack& p : packs_of(ts)) {
    size_t es = dtype_size(p.dtype);
    // Kept between calls (one step's gradients after another): a new buffer each time would cost
    // its page faults again on every step.
    std::vector<char>& buf = staging()[static_cast<int>(p.dtype)];
    if (buf.size() < p.bytes) {
      buf = std::vector<char>();
      buf.resize(p.bytes);
    }
    size_t off = 0;
    for (const Tensor* t : p.tensors) {
      size_t n = static_cast<size_t>(t->numel()) * es;
      if (n) std::memcpy(buf.data() + off, t->raw(), n);
      off += n;
    }
    size_t per = bucket_bytes / es;
    if (per > (1u << 30)) per = 1u << 30;  // MPI counts are int
    size_t count = p.bytes / es;
    std::vector<Request> reqs;
    for (size_t first = 0; first < count; first += per) {
      size_t n = std::min(per, count - first);
      Request r = nullptr;
      int rc = post(buf.data() + first * es, static_cast<int>(n), mpi_type(m, p.dtype), &r);
      if (rc != 0) {
        // Requests already posted may still use the buffer.
        abandoned().push_back(std::move(buf));
        check(m, rc, what);
      }
      // One bucket in flight at a time: posting them all at once measured slower here (Open MPI's
      // nonblocking collectives then compete for the same shared-memory segments).
      if (r) {
        reqs.assign(1, r);
        wait_all(m, reqs, timeout_s, what, &buf);
      }
    }
    // The mean's division in the same pass as the copy back (the buffer is read once).
    off = 0;
    for (const Tensor* t : p.tensors) {
      size_t n = static_cast<size_t>(t->numel());
      const char* src = buf.data() + off;
      if (mean && p.dtype == DType::F32) {
        const float* f = reinterpret_cast<const float*>(src);
        float* d = t->data<float>();
        const float w = static_cast<float>(world);
        for (size_t i = 0; i < n; ++i) d[i] = f[i] / w;
      } else if (mean && p.dtype == DType::F64) {
        const double* f = reinterpret_cast<const double*>(src);
        double* d = t->data<double>();
        const double w = static_cast<double>(world);
        for (size_t i = 0; i < n; ++i) d[i] = f[i] / w;
      } else if (n) {
        std::memcpy(t->raw(), src, n * es);
      }
      off += n * es;
    }
  }
}

}  // namespace

const MpiInfo& mpi_info() { return lib().info; }

void mpi_init() {
  std::lock_guard<std::mutex> lock(mu);
  Lib& m = need();
  if (started) return;
  int fin = 0;
  m.finalized(&fin);
  if (fin) throw Error("MPI has been finalised in this process; it cannot be initialised again", "ERR_DIST_NOT_INITIALIZED");
  int already = 0;
  m.initialized(&already);
  if (!already) {
    int provided = 0;
    int rc = m.init_thread(nullptr, nullptr, kThreadSerialized, &provided);
    if (rc != 0) throw Error("MPI_Init_thread failed: " + err_text(m, rc), "ERR_DIST_FAILED");
  }
  // Errors come back as return codes (thrown here) instead of aborting every rank.
  int rc = m.comm_set_errhandler(m.comm_world, m.errors_return);
  if (rc != 0) throw Error("MPI_Comm_set_errhandler failed: " + err_text(m, rc), "ERR_DIST_FAILED");
  started = true;
}

bool mpi_initialized() {
  std::lock_guard<std::mutex> lock(mu);
  if (!started) return false;
  int fin = 0;
  lib().finalized(&fin);
  return !fin;
}

int mpi_rank() {
  std::lock_guard<std::mutex> lock(mu);
  Lib& m = need();
  ready(m, "rank");
  int r = 0;
  check(m, m.comm_rank(m.comm_world, &r), "MPI_Comm_rank");
  return r;
}

int mpi_size() {
  std::lock_guard<std::mutex> lock(mu);
  Lib& m = need();
  ready(m, "worldSize");
  int s = 0;
  check(m, m.comm_size(m.comm_world, &s), "MPI_Comm_size");
  return s;
}

void mpi_all_reduce(const std::vector<Tensor>& tensors, bool mean, double timeout_s, size_t bucket_bytes) {
  std::lock_guard<std::mutex> lock(mu);
  Lib& m = need();
  ready(m, "allReduce");
  check_tensors(tensors, "allReduce");
  for (const Tensor& t : tensors)
    if (mean && t.dtype == DType::I32) throw Error("allReduce: 'mean' needs floating-point tensors, got int32", "ERR_DIST_DTYPE");
  int world = 1;
  check(m, m.comm_size(m.comm_world, &world), "MPI_Comm_size");
  if (timeout_s > 0) {
    bucketed(m, tensors, bucket_bytes, timeout_s, "MPI_Iallreduce",
             [&](void* p, int n, Handle type, Request* r) { return m.iallreduce(kInPlace, p, n, type, m.op_sum, m.comm_world, r); },
             mean, world);
  } else {
    // No limit: the blocking calls, which MPI may implement faster.
    bucketed(m, tensors, bucket_bytes, 0, "MPI_Allreduce",
             [&](void* p, int n, Handle type, Request* r) {
               *r = nullptr;
               return m.allreduce(kInPlace, p, n, type, m.op_sum, m.comm_world);
             },
             mean, world);
  }
}

void mpi_broadcast(const std::vector<Tensor>& tensors, int root, double timeout_s, size_t bucket_bytes) {
  std::lock_guard<std::mutex> lock(mu);
  Lib& m = need();
  ready(m, "broadcast");
  check_tensors(tensors, "broadcast");
  int world = 1;
  check(m, m.comm_size(m.comm_world, &world), "MPI_Comm_size");
  if (root < 0 || root >= world)
    throw Error("broadcast: root " + std::to_string(root) + " is not a rank of this world of " + std::to_string(world), kErrOutOfRange);
  if (timeout_s > 0) {
    bucketed(m, tensors, bucket_bytes, timeout_s, "MPI_Ibcast",
             [&](void* p, int n, Handle type, Request* r) { return m.ibcast(p, n, type, root, m.comm_world, r); },
             false, world);
  } else {
    bucketed(m, tensors, bucket_bytes, 0, "MPI_Bcast",
             [&](void* p, int n, Handle type, Request* r) {
               *r = nullptr;
               return m.bcast(p, n, type, root, m.comm_world);
             },
             false, world);
  }
}

void mpi_barrier(double timeout_s) {
  std::lock_guard<std::mutex> lock(mu);
  Lib& m = need();
  ready(m, "barrier");
  if (timeout_s > 0) {
    std::vector<Request> reqs(1, nullptr);
    check(m, m.ibarrier(m.comm_world, &reqs[0]), "MPI_Ibarrier");
    wait_all(m, reqs, timeout_s, "MPI_Ibarrier", nullptr);
  } else {
    check(m, m.barrier(m.comm_world), "MPI_Barrier");
  }
}

void mpi_abort(int code) {
  Lib& m = need();
  if (!started) throw Error("abortDistributed: MPI is not initialised", "ERR_DIST_NOT_INITIALIZED");
  m.abort(m.comm_world, code);
}

void mpi_finalize() {
  std::lock_guard<std::mutex> lock(mu);
  Lib& m = lib();
  if (!m.info.loaded || !started) return;
  int fin = 0;
  m.finalized(&fin);
  if (fin) return;
  m.finalize();
}

}  // namespace lc::dist
