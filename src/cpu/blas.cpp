#include "blas.h"

#include <dlfcn.h>

#include <climits>
#include <cstdlib>
#include <mutex>

#include "../parallel.h"
#include "../tensor.h"
#include "gemm.h"

namespace lc {
namespace {

// The few CBLAS entry points we use, declared here (no cblas.h at build time).
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;
using sgemm_t = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int,
                         float, float*, int);
using dgemm_t = void (*)(int, int, int, int, int, int, double, const double*, int, const double*,
                         int, double, double*, int);
using threads_t = int (*)();

struct Blas {
  BlasInfo info;
  sgemm_t sgemm = nullptr;
  dgemm_t dgemm = nullptr;
};

bool try_load(Blas& b, const std::string& path, std::string& why) {
  void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* e = dlerror();
    why += path + ": " + (e ? e : "cannot be loaded") + "; ";
    return false;
  }
  auto s = reinterpret_cast<sgemm_t>(dlsym(h, "cblas_sgemm"));
  auto d = reinterpret_cast<dgemm_t>(dlsym(h, "cblas_dgemm"));
  if (!s || !d) {
    why += path + ": has no cblas_sgemm/cblas_dgemm; ";
    dlclose(h);
    return false;
  }
  b.sgemm = s;
  b.dgemm = d;
  b.info.path = path;
  auto nt = reinterpret_cast<threads_t>(dlsym(h, "openblas_get_num_threads"));
  b.info.name = nt ? "openblas" : "cblas";
  b.info.threads = nt ? nt() : 1;
  return true;  // the handle stays open for the life of the process
}

const Blas& blas() {
  static Blas b;
  static std::once_flag once;
  // Outside call_once: an exception must not unwind through it (GCC's call_once runs on
  // pthread_once, and a throw there aborts). Throws for an impossible LORA_CUDA_CPU_KERNELS.
  const CpuKernels isa = cpu_kernels();
  std::call_once(once, [isa] {
    const char* env = std::getenv("LORA_CUDA_BLAS");
    std::string why;
    bool ok = false;
    if (env && *env && std::string(env) == "builtin") {
      why = "LORA_CUDA_BLAS=builtin";
    } else if (env && *env) {
      ok = try_load(b, env, why);
    } else if (isa == CpuKernels::Avx512) {
      // Measured on a Zen 4 VM (bench/NOTES.md): the built-in AVX-512 kernel matches OpenBLAS's
      // rate on the model's products, and one thread pool for every product and loop beats two
      // (OpenBLAS's threads spin after each call and lose the cores under contention).
      why = "the built-in AVX-512 kernel is the default where the processor has AVX-512 "
            "(LORA_CUDA_BLAS=libopenblas.so.0 loads OpenBLAS instead)";
    } else {
      ok = try_load(b, "libopenblas.so.0", why) || try_load(b, "libblas.so.3", why);
    }
    if (!ok) {
      b.info.name = "builtin";
      b.info.path = "";
      if (why.size() >= 2 && why.compare(why.size() - 2, 2, "; ") == 0) why.resize(why.size() - 2);
      b.info.reason = why;
      b.info.threads = num_threads();
    }
  });
  return b;
}

bool fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

template <typename T, typename Fn, typename Builtin>
void gemm_impl(Fn lib, Builtin builtin, bool tA, bool tB, int64_t M, int64_t N, int64_t K, T alpha,
               const T* A, int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0 || alpha == T(0)) {
    // Defined here so every path agrees: C = beta * C, and beta == 0 never reads C.
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) C[i * ldc + j] = beta == T(0) ? T(0) : beta * C[i * ldc + j];
    return;
  }
  // Every product goes to one library: mixing OpenBLAS's threads (which
  // spin after each call) with our pool inside one op costs more than the
  // built-in kernel saves on the adapter's thin products (bench/NOTES.md).
  if (lib && fits_int(M) && fits_int(N) && fits_int(K) && fits_int(lda) && fits_int(ldb) &&
      fits_int(ldc)) {
    lib(kRowMajor, tA ? kTrans : kNoTrans, tB ? kTrans : kNoTrans, int(M), int(N), int(K), alpha, A,
        int(lda), B, int(ldb), beta, C, int(ldc));
    return;
  }
  builtin(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

const BlasInfo& blas_info() { return blas().info; }

void gemm_f32(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
              int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  gemm_impl<float>(blas().sgemm, builtin_sgemm, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C,
                   ldc);
}

void gemm_f64(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha, const double* A,
              int64_t lda, const double* B, int64_t ldb, double beta, double* C, int64_t ldc) {
  gemm_impl<double>(blas().dgemm, builtin_dgemm, tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C,
                    ldc);
}

}  // namespace lc
