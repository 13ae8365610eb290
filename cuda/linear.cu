// Matrix products on cuBLAS: the batched GEMM behind matmul and behind the
// linear layer, LoRA and the merge (written from it once, src/composite.cpp).
// Row-major throughout: a row-major C = op(A) op(B) is the column-major
// C^T = op(B)^T op(A)^T, so every call hands cuBLAS the operands swapped.
// bfloat16 / float16 operands go through cublasGemmEx (tensor cores, fp32
// accumulation, one rounding on store), as PyTorch's bf16 matmul does; their
// result may also be float32 (half inputs, a float32 output).
#include <climits>

#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
// The products are cuBLAS calls; only the degenerate K = 0 product needs a
// kernel of its own.
namespace {
template <typename T>
__global__ void scale_kernel(T* p, int64_t n, opmath_t<T> beta) {
  LC_GRID_STRIDE(i, n) p[i] = static_cast<T>(ld(p[i]) * beta);
}
}  // namespace

// ================================================================ methods
namespace {

int as_int(int64_t v, const char* what) {
  if (v < 0 || v > INT_MAX)
    fail(std::string("matrix product: ") + what + " = " + std::to_string(v) +
         " is beyond what cuBLAS takes (2^31 - 1)");
  return static_cast<int>(v);
}

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

BlasDataType blas_type(DType t) {
  switch (t) {
    case DType::BF16: return kBlasR16BF;
    case DType::F16: return kBlasR16F;
    default: return kBlasR32F;
  }
}

}  // namespace

void CudaBackend::gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha,
                       const Tensor& At, int64_t sA, const Tensor& Bt, int64_t sB, double beta,
                       const Tensor& Ct, int64_t sC, int64_t batch) {
  Guard g(c_);
  const DType dtype = Ct.dtype;
  // One dtype throughout, or half inputs with a float32 result (cublasGemmEx's fp32 output).
  if (At.dtype != Bt.dtype || (dtype != At.dtype && !(is_half(At.dtype) && dtype == DType::F32)))
    fail(std::string("matrix product: A, B and C must share a dtype (or C float32 with half A and B), got ") +
         dtype_name(At.dtype) + ", " + dtype_name(Bt.dtype) + " and " + dtype_name(dtype));
  const void* A = At.raw();
  const void* B = Bt.raw();
  void* C = Ct.raw();
  // Row strides of the stored (untransposed) matrices; C is dense.
  const int64_t lda = tA ? M : K, ldb = tB ? K : N, ldc = N;
  if (M == 0 || N == 0 || batch == 0) return;
  if (K == 0) {
    // An empty sum: C = beta C, over adjacent batches.
    LC_CHECK(batch == 1 || sC == M * N, "matrix product: K = 0 needs a dense C");
    const int64_t n = batch * M * N;
    if (beta == 1.0) return;
    if (beta == 0.0) {  // C is not read, as cuBLAS does with beta = 0 (it may hold NaN)
      check(cudaMemsetAsync(C, 0, static_cast<size_t>(n) * dtype_size(dtype), c_.stream), "cudaMemsetAsync");
      return;
    }
    dispatch_floating(dtype, "matrix product", [&](auto z) {
      using T = decltype(z);
      scale_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(static_cast<T*>(C), n,
                                                               static_cast<opmath_t<T>>(beta));
    });
    launched(c_, "matrix product (K = 0)");
    return;
  }
  const int m = as_int(N, "N"), n = as_int(M, "M"), k = as_int(K, "K");
  const int l_a = as_int(ldb, "ldb"), l_b = as_int(lda, "lda"), l_c = as_int(ldc, "ldc");
  const int nb = as_int(batch, "batch");
  const Cublas& b = cublas();
  // Halves keep the handle's math mode (it only concerns float32 inputs), so a model mixing
  // the two does not switch it on every call.
  cublasHandle_t h = blas_handle(c_, dtype == DType::F32 || is_half(At.dtype));
  if (is_half(At.dtype)) {
    // alpha and beta are floats for CUBLAS_COMPUTE_32F.
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    const BlasDataType ab = blas_type(At.dtype), ct = blas_type(dtype);
    if (nb == 1)
      check_blas(b.gemm_ex(h, op(tB), op(tA), m, n, k, &al, B, ab, l_a, A, ab, l_b, &be, C, ct, l_c,
                           CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT_TENSOR_OP),
                 "cublasGemmEx");
    else
      check_blas(b.gemm_strided_batched_ex(h, op(tB), op(tA), m, n, k, &al, B, ab, l_a, sB, A, ab, l_b,
                                           sA, &be, C, ct, l_c, sC, nb, CUBLAS_COMPUTE_32F,
                                           CUBLAS_GEMM_DEFAULT_TENSOR_OP),
                 "cublasGemmStridedBatchedEx");
  } else if (dtype == DType::F32) {
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    const float* pa = static_cast<const float*>(B);
    const float* pb = static_cast<const float*>(A);
    float* pc = static_cast<float*>(C);
    if (nb == 1)
      check_blas(b.sgemm(h, op(tB), op(tA), m, n, k, &al, pa, l_a, pb, l_b, &be, pc, l_c), "cublasSgemm");
    else
      check_blas(b.sgemm_strided_batched(h, op(tB), op(tA), m, n, k, &al, pa, l_a, sB, pb, l_b, sA,
                                         &be, pc, l_c, sC, nb),
                 "cublasSgemmStridedBatched");
  } else if (dtype == DType::F64) {
    const double* pa = static_cast<const double*>(B);
    const double* pb = static_cast<const double*>(A);
    double* pc = static_cast<double*>(C);
    if (nb == 1)
      check_blas(b.dgemm(h, op(tB), op(tA), m, n, k, &alpha, pa, l_a, pb, l_b, &beta, pc, l_c), "cublasDgemm");
    else
      check_blas(b.dgemm_strided_batched(h, op(tB), op(tA), m, n, k, &alpha, pa, l_a, sB, pb, l_b,
                                         sA, &beta, pc, l_c, sC, nb),
                 "cublasDgemmStridedBatched");
  } else {
    fail("matrix product: expected float32, float64, bfloat16 or float16");
  }
  launched(c_, "matrix product (cuBLAS)");
}

}  // namespace lc::cuda
