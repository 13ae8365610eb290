// cuBLAS, loaded at run time. The build machines have no cuBLAS headers or
// libraries, and the addon must load where there is none, so the few types and
// entry points used are declared here (they follow cublas_api.h of cuBLAS 12
// and 13, whose ABI for these functions is the same) and resolved with dlsym.
//
// Search order: $LORA_CUDA_CUBLAS (a path to libcublas.so.*), then
// libcublas.so.13 and libcublas.so.12 through the dynamic loader's usual paths
// (LD_LIBRARY_PATH, the ld.so cache: a CUDA toolkit, or the directory of the
// nvidia-cublas Python wheel put on LD_LIBRARY_PATH).
#pragma once
#include <cuda_runtime_api.h>

#include <string>

namespace lc::cuda {

using cublasHandle_t = struct cublasContext*;
using cublasStatus_t = int;  // 0 = CUBLAS_STATUS_SUCCESS
enum cublasOperation_t : int { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 };
enum cublasMath_t : int { CUBLAS_DEFAULT_MATH = 0, CUBLAS_TF32_TENSOR_OP_MATH = 3 };
// The products on 16-bit types (cublasGemmEx): operand types (cudaDataType_t of
// library_types.h; named apart from it, which a runtime header may declare),
// the compute type and the algorithm choice.
enum BlasDataType : int { kBlasR32F = 0, kBlasR16F = 2, kBlasR16BF = 14 };
enum cublasComputeType_t : int { CUBLAS_COMPUTE_32F = 68 };
enum cublasGemmAlgo_t : int { CUBLAS_GEMM_DEFAULT_TENSOR_OP = 99 };

struct Cublas {
  bool loaded = false;
  std::string path;     // the library that was loaded
  std::string version;  // "major.minor.patch"
  std::string error;    // why it could not be loaded

  cublasStatus_t (*create)(cublasHandle_t*) = nullptr;
  cublasStatus_t (*destroy)(cublasHandle_t) = nullptr;
  cublasStatus_t (*set_stream)(cublasHandle_t, cudaStream_t) = nullptr;
  cublasStatus_t (*set_math_mode)(cublasHandle_t, cublasMath_t) = nullptr;
  cublasStatus_t (*sgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                          const float*, const float*, int, const float*, int, const float*,
                          float*, int) = nullptr;
  cublasStatus_t (*dgemm)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                          const double*, const double*, int, const double*, int, const double*,
                          double*, int) = nullptr;
  cublasStatus_t (*sgemm_strided_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                          int, int, int, const float*, const float*, int,
                                          long long, const float*, int, long long, const float*,
                                          float*, int, long long, int) = nullptr;
  cublasStatus_t (*dgemm_strided_batched)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                          int, int, int, const double*, const double*, int,
                                          long long, const double*, int, long long,
                                          const double*, double*, int, long long,
                                          int) = nullptr;
  // bf16 / fp16 inputs and outputs (or fp32 outputs) with fp32 accumulation
  // (CUBLAS_COMPUTE_32F) on tensor cores; alpha and beta are floats.
  cublasStatus_t (*gemm_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t, int, int, int,
                            const void*, const void*, BlasDataType, int, const void*, BlasDataType,
                            int, const void*, void*, BlasDataType, int, cublasComputeType_t,
                            cublasGemmAlgo_t) = nullptr;
  cublasStatus_t (*gemm_strided_batched_ex)(cublasHandle_t, cublasOperation_t, cublasOperation_t,
                                            int, int, int, const void*, const void*, BlasDataType,
                                            int, long long, const void*, BlasDataType, int,
                                            long long, const void*, void*, BlasDataType, int,
                                            long long, int, cublasComputeType_t,
                                            cublasGemmAlgo_t) = nullptr;
  // Optional (absent in old releases): a readable name for a status.
  const char* (*status_string)(cublasStatus_t) = nullptr;
};

// Loads cuBLAS once per process; check `loaded` and `error`.
const Cublas& cublas();

// "CUBLAS_STATUS_..." for a status code.
std::string cublas_status_name(cublasStatus_t s);

}  // namespace lc::cuda
