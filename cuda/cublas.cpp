#include "cublas.h"

#include <dlfcn.h>

#include <cstdlib>
#include <vector>

namespace lc::cuda {
namespace {

template <typename F>
bool sym(void* lib, const char* name, F& out, std::string& missing) {
  out = reinterpret_cast<F>(dlsym(lib, name));
  if (!out) missing += (missing.empty() ? "" : ", ") + std::string(name);
  return out != nullptr;
}

// Fills `c` from an opened library; false (with c.error) when a symbol is missing.
bool bind(void* lib, Cublas& c) {
  std::string missing;
  sym(lib, "cublasCreate_v2", c.create, missing);
  sym(lib, "cublasDestroy_v2", c.destroy, missing);
  sym(lib, "cublasSetStream_v2", c.set_stream, missing);
  sym(lib, "cublasSetMathMode", c.set_math_mode, missing);
  sym(lib, "cublasSgemm_v2", c.sgemm, missing);
  sym(lib, "cublasDgemm_v2", c.dgemm, missing);
  sym(lib, "cublasSgemmStridedBatched", c.sgemm_strided_batched, missing);
  sym(lib, "cublasDgemmStridedBatched", c.dgemm_strided_batched, missing);
  sym(lib, "cublasGemmEx", c.gemm_ex, missing);
  sym(lib, "cublasGemmStridedBatchedEx", c.gemm_strided_batched_ex, missing);
  if (!missing.empty()) {
    c.error = "it lacks " + missing;
    return false;
  }
  std::string ignore;
  sym(lib, "cublasGetStatusString", c.status_string, ignore);
  // cublasGetProperty(libraryPropertyType: 0 major, 1 minor, 2 patch, int*) needs no GPU.
  int (*get_property)(int, int*) = nullptr;
  if (sym(lib, "cublasGetProperty", get_property, ignore)) {
    int v[3] = {0, 0, 0};
    for (int i = 0; i < 3; ++i) get_property(i, &v[i]);
    c.version = std::to_string(v[0]) + "." + std::to_string(v[1]) + "." + std::to_string(v[2]);
  }
  return true;
}

std::string loaded_path(void* lib, const std::string& fallback) {
  // The address of a symbol names the file the loader actually opened.
  void* f = dlsym(lib, "cublasCreate_v2");
  Dl_info di;
  if (f && dladdr(f, &di) && di.dli_fname) return di.dli_fname;
  return fallback;
}

Cublas load() {
  Cublas c;
  std::vector<std::string> tried;
  std::vector<std::string> names;
  if (const char* env = std::getenv("LORA_CUDA_CUBLAS"); env && *env) names.push_back(env);
  names.push_back("libcublas.so.13");
  names.push_back("libcublas.so.12");
  for (const std::string& n : names) {
    void* lib = dlopen(n.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      const char* e = dlerror();
      tried.push_back(n + " (" + (e ? e : "not found") + ")");
      continue;
    }
    Cublas cand;
    if (!bind(lib, cand)) {
      tried.push_back(n + " (" + cand.error + ")");
      dlclose(lib);
      continue;
    }
    cand.loaded = true;
    cand.path = loaded_path(lib, n);
    return cand;  // the library stays open for the life of the process
  }
  c.error = "cuBLAS was not found; tried ";
  for (size_t i = 0; i < tried.size(); ++i) c.error += (i ? "; " : "") + tried[i];
  return c;
}

}  // namespace

const Cublas& cublas() {
  static const Cublas c = load();
  return c;
}

std::string cublas_status_name(cublasStatus_t s) {
  switch (s) {
    case 0: return "CUBLAS_STATUS_SUCCESS";
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case 16: return "CUBLAS_STATUS_LICENSE_ERROR";
    default: return "cuBLAS status " + std::to_string(s);
  }
}

}  // namespace lc::cuda
