// The backend registry (which Backend serves a device) and what the CPU
// backend runs on.
#include "backend.h"

#include "cpu/blas.h"
#include "cpu/cpu_backend.h"
#include "cpu/gemm.h"
#include "cuda_api.h"
#include "parallel.h"

namespace lc {

Backend& cpu_backend() {
  static CpuBackend b;
  return b;
}

Backend& backend_for(Device dev) {
  if (dev.type == DeviceType::CPU) return cpu_backend();
  return cuda::backend(dev.index);
}

CpuInfo cpu_info() {
  const BlasInfo& b = blas_info();
  CpuInfo i;
  i.blas = b.name;
  i.blas_path = b.path;
  i.blas_reason = b.reason;
  i.blas_threads = b.threads;
  i.threads = num_threads();
#if defined(__x86_64__) && defined(__GNUC__)
  // __builtin_cpu_supports takes only string literals.
  if (__builtin_cpu_supports("avx2")) i.features.emplace_back("avx2");
  if (__builtin_cpu_supports("fma")) i.features.emplace_back("fma");
  if (__builtin_cpu_supports("avx512f")) i.features.emplace_back("avx512f");
  if (__builtin_cpu_supports("avx512vl")) i.features.emplace_back("avx512vl");
  if (__builtin_cpu_supports("avx512bf16")) i.features.emplace_back("avx512bf16");
#endif
  // The built-in GEMM, the rank-r pass and the fused loops all run the copy chosen here (CPUID, or
  // LORA_CUDA_CPU_KERNELS); an impossible forced choice throws, as every product then would.
  i.kernels = cpu_kernels_name(cpu_kernels());
  i.bf16_gemm = bf16_gemm_kernel_name(bf16_gemm_kernel());
  return i;
}

}  // namespace lc
