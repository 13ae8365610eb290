// Self-test of the CUDA emulator: what it computes (warp shuffles, atomics,
// barriers, shared memory, launch limits, memory accounting, the emulated
// cuBLAS) and that it stops every kind of kernel bug it claims to find. Each
// case runs in a child process of its own, because a detected bug leaves a
// sticky error, as on a GPU.
//
//   cuda_emu_selftest LIBCUBLAS_EMU   (run by scripts/test-cuda-emu.sh)
#include <cuda_runtime.h>
#include <mma.h>
#include <dlfcn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace {

std::string g_cublas_path;

#define CHECK(cond)                                                                  \
  do {                                                                               \
    if (!(cond)) return std::string("check failed at line ") + std::to_string(__LINE__) + ": " #cond; \
  } while (0)
#define CUDA(call)                                                                                      \
  do {                                                                                                  \
    cudaError_t e_ = (call);                                                                            \
    if (e_ != cudaSuccess) return std::string(#call " -> ") + cudaGetErrorName(e_) + ": " + cudaGetErrorString(e_); \
  } while (0)

// The error a case's launch left: what the next synchronisation reports.
std::string sync_error() {
  cudaError_t e = cudaDeviceSynchronize();
  if (e == cudaSuccess) e = cudaGetLastError();
  return e == cudaSuccess ? "ok" : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

template <typename T>
T* dev(size_t n) {
  void* p = nullptr;
  if (cudaMalloc(&p, n * sizeof(T)) != cudaSuccess) std::abort();
  return static_cast<T*>(p);
}
template <typename T>
std::vector<T> host(const T* d, size_t n) {
  std::vector<T> v(n);
  if (cudaMemcpy(v.data(), d, n * sizeof(T), cudaMemcpyDeviceToHost) != cudaSuccess) std::abort();
  return v;
}

// ---------------------------------------------------------------- kernels that are right

__global__ void shuffles(int* out) {
  const int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
  int* o = out + w * 32 * 8 + lane * 8;
  o[0] = __shfl_sync(0xffffffffu, lane * 10, 5);
  o[1] = __shfl_sync(0xffffffffu, lane * 10, lane + 3, 8);  // within groups of 8
  o[2] = __shfl_up_sync(0xffffffffu, lane * 10, 2);
  o[3] = __shfl_down_sync(0xffffffffu, lane * 10, 3);
  o[4] = __shfl_xor_sync(0xffffffffu, lane * 10, 1);
  o[5] = __shfl_down_sync(0xffffffffu, lane * 10, 3, 16);
  double d = __shfl_xor_sync(0xffffffffu, lane + 0.5, 16);
  o[6] = static_cast<int>(d * 2);
  __syncwarp();
  o[7] = __shfl_up_sync(0xffffffffu, lane, 5, 8);
}

__global__ void atomics(float* f, double* d, int* i, unsigned long long* u, int* cas_wins) {
  atomicAdd(f, 0.5f);
  atomicAdd(d, 0.25);
  atomicAdd(i, 1);
  atomicMax(i + 1, static_cast<int>(threadIdx.x + blockIdx.x * blockDim.x));
  atomicMin(u, 1000ull - threadIdx.x);
  if (atomicCAS(cas_wins, 0, 1) == 0) atomicAdd(cas_wins + 1, 1);
}

// A block reduction through static shared memory, in 3-D blocks.
__global__ void block_reduce(const float* x, float* out) {
  __shared__ float part[256];
  const int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const int n = blockDim.x * blockDim.y * blockDim.z;
  part[t] = x[blockIdx.x * n + t];
  __syncthreads();
  for (int s = n / 2; s > 0; s >>= 1) {
    if (t < s) part[t] += part[t + s];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = part[0];
}

// Shared memory a block never wrote reads as NaN, in every block.
__global__ void fresh_shared(int* nan_static, int* nan_dynamic) {
  __shared__ float s[4];
  extern __shared__ float dyn[];
  if (threadIdx.x == 0) {
    if (std::isnan(s[blockIdx.x % 4])) atomicAdd(nan_static, 1);
    if (std::isnan(dyn[0])) atomicAdd(nan_dynamic, 1);
    s[blockIdx.x % 4] = 1.0f;
    dyn[0] = 1.0f;
  }
}

__global__ void noop(float* p) {
  if (p && threadIdx.x == 0 && blockIdx.x == 0) p[0] = 1.0f;
}

// ---------------------------------------------------------------- kernels with bugs

__global__ void divergent_barrier(float* p) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  p[threadIdx.x] = 0;
}

__global__ void early_return(float* p, int n) {
  if (static_cast<int>(threadIdx.x) >= n) return;
  __syncthreads();
  p[threadIdx.x] = 0;
}

__global__ void divergent_shuffle(float* p) {
  float v = threadIdx.x;
  if (threadIdx.x & 1) v = __shfl_xor_sync(0xffffffffu, v, 1);
  else v = __shfl_down_sync(0xffffffffu, v, 1);
  p[threadIdx.x] = v;
}

__global__ void partial_mask(float* p) { p[threadIdx.x] = __shfl_sync(0x0000ffffu, 1.0f, 0); }

__global__ void partial_warp(float* p) { p[threadIdx.x] = __shfl_sync(0xffffffffu, 1.0f, 0); }

__global__ void lane_skips_shuffle(float* p) {
  float v = 1;
  if (threadIdx.x != 7) v = __shfl_xor_sync(0xffffffffu, v, 2);
  p[threadIdx.x] = v;
}

__global__ void barrier_and_shuffle(float* p) {
  float v = 1;
  if (threadIdx.x < 32) __syncthreads();
  else v = __shfl_xor_sync(0xffffffffu, v, 1);
  p[threadIdx.x] = v;
}

__global__ void read_past_end(const float* x, float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i <= n) out[0] = x[i];  // i == n reads one past the end
}

__global__ void write_before_start(float* p) {
  if (threadIdx.x == 0) p[-1] = 0;
}

__global__ void write_far(float* p) {
  if (threadIdx.x == 0) p[1 << 22] = 0;
}

__global__ void dynamic_shared_overflow(float* p) {
  extern __shared__ float dyn[];
  dyn[threadIdx.x + 256] = 1;  // 256 floats were asked for
  p[0] = dyn[0];
}

__global__ void static_shared_overflow(float* p) {
  __shared__ float s[8];
  s[threadIdx.x] = 1;  // 32 threads, 8 elements
  __syncthreads();
  p[threadIdx.x] = s[0];
}

__device__ int deep(int n, volatile char* sink) {
  volatile char big[4096];
  big[0] = static_cast<char>(n);
  sink[0] = big[0];
  return n > 0 ? deep(n - 1, sink) + big[0] : 0;
}
__global__ void stack_overflow(char* sink) { sink[1] = static_cast<char>(deep(1 << 20, sink)); }

__global__ void divide(int* p, int d) { p[threadIdx.x] = 100 / d; }


// Warp matrix products: each warp computes C = A B + C0 for its own 16x16 matrices, bf16 with
// A row-major and B column-major, fp16 with A column-major and B row-major; C0 loaded row-major,
// C stored column-major.
template <typename T, typename La, typename Lb>
__global__ void wmma_product(const T* a, const T* b, const float* c0, float* c) {
  using namespace nvcuda;
  const int w = threadIdx.x >> 5;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, La> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, Lb> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, a + w * 256, 16);
  wmma::load_matrix_sync(fb, b + w * 256, 16);
  wmma::load_matrix_sync(fc, c0 + w * 256, 16, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c + w * 256, fc, 16, wmma::mem_col_major);
}

// The same with tf32 operands: A 16 x 8, B 8 x 16 (floats), each element rounded with
// __float_to_tf32 after the load, as CUDA requires.
template <typename La, typename Lb>
__global__ void wmma_product_tf32(const float* a, const float* b, const float* c0, float* c) {
  using namespace nvcuda;
  const int w = threadIdx.x >> 5;
  wmma::fragment<wmma::matrix_a, 16, 16, 8, wmma::precision::tf32, La> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 8, wmma::precision::tf32, Lb> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 8, float> fc;
  wmma::load_matrix_sync(fa, a + w * 128, std::is_same<La, wmma::col_major>::value ? 16 : 8);
  wmma::load_matrix_sync(fb, b + w * 128, std::is_same<Lb, wmma::col_major>::value ? 8 : 16);
  for (int e = 0; e < fa.num_elements; ++e) fa.x[e] = wmma::__float_to_tf32(fa.x[e]);
  for (int e = 0; e < fb.num_elements; ++e) fb.x[e] = wmma::__float_to_tf32(fb.x[e]);
  wmma::load_matrix_sync(fc, c0 + w * 256, 16, wmma::mem_row_major);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(c + w * 256, fc, 16, wmma::mem_col_major);
}

// Each lane writes 8 elements of a tile in shared memory and the warp loads it at once: without
// the __syncwarp() a lane reads elements the others have not written yet.
__global__ void wmma_load_unsynced(float* out, int sync) {
  using namespace nvcuda;
  __shared__ __align__(32) __nv_bfloat16 tile[256];
  const int l = threadIdx.x;
  for (int i = 0; i < 8; ++i) tile[l * 8 + i] = __float2bfloat16(1.0f);
  if (sync) __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::load_matrix_sync(fa, tile, 16);
  wmma::load_matrix_sync(fb, tile, 16);
  wmma::fill_fragment(fc, 0.0f);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(out, fc, 16, wmma::mem_row_major);
}

// Reads the element of another lane right after store_matrix_sync, without a __syncwarp().
__global__ void wmma_store_unsynced(float* out) {
  using namespace nvcuda;
  __shared__ __align__(32) float tile[256];
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fc, 2.0f);
  wmma::store_matrix_sync(tile, fc, 16, wmma::mem_row_major);
  out[threadIdx.x] = tile[255 - threadIdx.x];
}

// One lane skips the product.
__global__ void wmma_divergent(float* out) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __half, wmma::row_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> fc;
  wmma::fill_fragment(fa, __float2half(1.0f));
  wmma::fill_fragment(fb, __float2half(1.0f));
  wmma::fill_fragment(fc, 0.0f);
  if (threadIdx.x != 3) wmma::mma_sync(fc, fa, fb, fc);
  out[threadIdx.x] = fc.x[0];
}

// A leading dimension of 12 halves (24 bytes): CUDA needs a multiple of 16 bytes.
__global__ void wmma_bad_ldm(const __half* a, float* out) {
  using namespace nvcuda;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, a, 12);
  out[threadIdx.x] = static_cast<float>(fa.x[0]);
}

// ---------------------------------------------------------------- cases

std::string ok_shuffles() {
  int* out = dev<int>(2 * 32 * 8);
  shuffles<<<1, 64>>>(out);
  CUDA(cudaGetLastError());
  auto v = host(out, 2 * 32 * 8);
  for (int w = 0; w < 2; ++w)
    for (int l = 0; l < 32; ++l) {
      const int* o = &v[(w * 32 + l) * 8];
      CHECK(o[0] == 50);
      CHECK(o[1] == ((l & ~7) + ((l + 3) & 7)) * 10);
      CHECK(o[2] == (l >= 2 ? l - 2 : l) * 10);
      CHECK(o[3] == (l + 3 < 32 ? l + 3 : l) * 10);
      CHECK(o[4] == (l ^ 1) * 10);
      CHECK(o[5] == ((l & 15) + 3 < 16 ? l + 3 : l) * 10);
      CHECK(o[6] == 2 * (l ^ 16) + 1);
      CHECK(o[7] == ((l & 7) >= 5 ? l - 5 : l));
    }
  return sync_error();
}

std::string ok_atomics() {
  float* f = dev<float>(1);
  double* d = dev<double>(1);
  int* i = dev<int>(2);
  unsigned long long* u = dev<unsigned long long>(1);
  int* cas = dev<int>(2);
  CUDA(cudaMemset(f, 0, 4));
  CUDA(cudaMemset(d, 0, 8));
  CUDA(cudaMemset(i, 0, 8));
  CUDA(cudaMemset(u, 0x7f, 8));
  CUDA(cudaMemset(cas, 0, 8));
  atomics<<<3, 100>>>(f, d, i, u, cas);
  CUDA(cudaGetLastError());
  CHECK(host(f, 1)[0] == 150.0f);
  CHECK(host(d, 1)[0] == 75.0);
  CHECK(host(i, 2)[0] == 300 && host(i, 2)[1] == 299);
  CHECK(host(u, 1)[0] == 1000ull - 99);
  CHECK(host(cas, 2)[1] == 1);
  return sync_error();
}

std::string ok_block_reduce() {
  const int blocks = 5, n = 256;
  std::vector<float> x(blocks * n);
  for (size_t k = 0; k < x.size(); ++k) x[k] = static_cast<float>(k % 7);
  float* dx = dev<float>(x.size());
  float* out = dev<float>(blocks);
  CUDA(cudaMemcpy(dx, x.data(), x.size() * 4, cudaMemcpyHostToDevice));
  block_reduce<<<blocks, dim3(8, 4, 8)>>>(dx, out);
  CUDA(cudaGetLastError());
  auto r = host(out, blocks);
  for (int b = 0; b < blocks; ++b) {
    float want = 0;
    for (int k = 0; k < n; ++k) want += x[b * n + k];
    CHECK(r[b] == want);
  }
  return sync_error();
}

std::string ok_fresh_memory() {
  int* counts = dev<int>(2);
  CUDA(cudaMemset(counts, 0, 8));
  fresh_shared<<<6, 32, 64>>>(counts, counts + 1);
  CUDA(cudaGetLastError());
  auto c = host(counts, 2);
  CHECK(c[0] == 6 && c[1] == 6);
  float* p = dev<float>(3);
  auto v = host(p, 3);
  CHECK(std::isnan(v[0]) && std::isnan(v[2]));  // a fresh allocation is NaN bytes
  return sync_error();
}

std::string ok_launch_limits() {
  float* p = dev<float>(1);
  noop<<<1, 1025>>>(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  CHECK(cudaGetLastError() == cudaSuccess);  // not sticky
  noop<<<dim3(1, 65536), 32>>>(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  noop<<<0, 32>>>(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  noop<<<1, dim3(1, 1, 65)>>>(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration);
  noop<<<1, 32, 48 * 1024 + 1>>>(p);
  CHECK(cudaGetLastError() == cudaErrorInvalidValue);
  CUDA(cudaFuncSetAttribute(noop, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024));
  noop<<<1, 32, 100 * 1024>>>(p);
  CUDA(cudaGetLastError());
  CHECK(cudaFuncSetAttribute(noop, cudaFuncAttributeMaxDynamicSharedMemorySize, 228 * 1024) ==
        cudaErrorInvalidValue);
  cudaGetLastError();
  noop<<<1, 32, 0, reinterpret_cast<cudaStream_t>(p)>>>(p);  // not a stream
  CHECK(cudaGetLastError() == cudaErrorInvalidResourceHandle);
  noop<<<2, 1024>>>(nullptr);
  CUDA(cudaGetLastError());
  return sync_error();
}

std::string ok_memory() {
  cudaDeviceProp prop;
  CUDA(cudaGetDeviceProperties(&prop, 0));
  CHECK(std::strcmp(prop.name, "lora-cuda CUDA emulator") == 0 && prop.major == 9);
  void* p = nullptr;
  CHECK(cudaMalloc(&p, prop.totalGlobalMem + 1) == cudaErrorMemoryAllocation);
  CHECK(cudaGetLastError() == cudaErrorMemoryAllocation);
  cudaStream_t s;
  CUDA(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  cudaMemPool_t pool;
  CUDA(cudaDeviceGetDefaultMemPool(&pool, 0));
  uint64_t keep = UINT64_MAX, r = 0;
  CUDA(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  void* a = nullptr;
  CUDA(cudaMallocAsync(&a, 1 << 20, s));
  CUDA(cudaFreeAsync(a, s));
  CUDA(cudaStreamSynchronize(s));
  CUDA(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &r));
  CHECK(r == (1u << 20));  // kept by the pool
  size_t free_b = 0, total_b = 0;
  CUDA(cudaMemGetInfo(&free_b, &total_b));
  CHECK(total_b - free_b >= (1u << 20));
  CUDA(cudaMemPoolTrimTo(pool, 0));
  CUDA(cudaMemPoolGetAttribute(pool, cudaMemPoolAttrReservedMemCurrent, &r));
  CHECK(r == 0);
  // Cached memory counts against the total until it is trimmed.
  const size_t small = prop.totalGlobalMem / 10 * 3, large = prop.totalGlobalMem / 10 * 8;
  CUDA(cudaMallocAsync(&a, small, s));
  CUDA(cudaFreeAsync(a, s));
  CHECK(cudaMallocAsync(&a, large, s) == cudaErrorMemoryAllocation);
  cudaGetLastError();
  CUDA(cudaMemPoolTrimTo(pool, 0));
  CUDA(cudaMallocAsync(&a, large, s));
  CUDA(cudaFreeAsync(a, s));
  // Copies are checked against the allocations they touch.
  float* d = dev<float>(4);
  float h[8] = {};
  CHECK(cudaMemcpy(d, h, 5 * sizeof(float), cudaMemcpyHostToDevice) == cudaErrorInvalidValue);
  CHECK(cudaMemcpy(h, h + 4, 4, cudaMemcpyDeviceToHost) == cudaErrorInvalidValue);
  cudaGetLastError();
  cudaEvent_t e0, e1;
  CUDA(cudaEventCreate(&e0));
  CUDA(cudaEventCreate(&e1));
  CUDA(cudaEventRecord(e0, s));
  CUDA(cudaEventRecord(e1, s));
  float ms = -1;
  CUDA(cudaEventElapsedTime(&ms, e0, e1));
  CHECK(ms >= 0);
  return sync_error();
}

// Column-major C = alpha op(A) op(B) + beta C, against a direct loop.
std::string ok_cublas() {
  void* lib = dlopen(g_cublas_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) return std::string("dlopen: ") + dlerror();
  using Create = int (*)(void**);
  using SetStream = int (*)(void*, cudaStream_t);
  using Dgemm = int (*)(void*, int, int, int, int, int, const double*, const double*, int, const double*, int,
                        const double*, double*, int);
  using DgemmB = int (*)(void*, int, int, int, int, int, const double*, const double*, int, long long,
                         const double*, int, long long, const double*, double*, int, long long, int);
  auto create = reinterpret_cast<Create>(dlsym(lib, "cublasCreate_v2"));
  auto set_stream = reinterpret_cast<SetStream>(dlsym(lib, "cublasSetStream_v2"));
  auto dgemm = reinterpret_cast<Dgemm>(dlsym(lib, "cublasDgemm_v2"));
  auto dgemm_b = reinterpret_cast<DgemmB>(dlsym(lib, "cublasDgemmStridedBatched"));
  CHECK(create && set_stream && dgemm && dgemm_b);
  void* h = nullptr;
  CHECK(create(&h) == 0);
  cudaStream_t s;
  CUDA(cudaStreamCreate(&s));
  CHECK(set_stream(h, s) == 0);
  const int m = 5, n = 4, k = 3, batch = 2;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int lda = (ta ? k : m) + 2, ldb = (tb ? n : k) + 1, ldc = m + 3;
      const long long sa = lda * (ta ? m : k) + 1, sb = ldb * (tb ? k : n), sc = ldc * n;
      std::vector<double> A(sa * batch), B(sb * batch), C(sc * batch);
      for (size_t q = 0; q < A.size(); ++q) A[q] = std::sin(q + 1.0);
      for (size_t q = 0; q < B.size(); ++q) B[q] = std::cos(q + 2.0);
      for (size_t q = 0; q < C.size(); ++q) C[q] = q * 0.5;
      double* dA = dev<double>(A.size());
      double* dB = dev<double>(B.size());
      double* dC = dev<double>(C.size());
      CUDA(cudaMemcpy(dA, A.data(), A.size() * 8, cudaMemcpyHostToDevice));
      CUDA(cudaMemcpy(dB, B.data(), B.size() * 8, cudaMemcpyHostToDevice));
      CUDA(cudaMemcpy(dC, C.data(), C.size() * 8, cudaMemcpyHostToDevice));
      const double alpha = 1.5, beta = -2.0;
      CHECK(dgemm_b(h, ta, tb, m, n, k, &alpha, dA, lda, sa, dB, ldb, sb, &beta, dC, ldc, sc, batch) == 0);
      auto got = host(dC, C.size());
      for (int b = 0; b < batch; ++b)
        for (int j = 0; j < n; ++j)
          for (int i = 0; i < m; ++i) {
            double acc = 0;
            for (int l = 0; l < k; ++l) {
              double a = ta ? A[b * sa + l + i * lda] : A[b * sa + i + l * lda];
              double bb = tb ? B[b * sb + j + l * ldb] : B[b * sb + l + j * ldb];
              acc += a * bb;
            }
            const double want = alpha * acc + beta * C[b * sc + i + j * ldc];
            CHECK(std::fabs(got[b * sc + i + j * ldc] - want) < 1e-12);
          }
      // beta = 0 never reads C: NaN there stays out of the result.
      CUDA(cudaMemset(dC, 0xFF, C.size() * 8));
      const double zero = 0;
      CHECK(dgemm(h, ta, tb, m, n, k, &alpha, dA, lda, dB, ldb, &zero, dC, ldc) == 0);
      got = host(dC, static_cast<size_t>(ldc) * n);
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) CHECK(std::isfinite(got[i + j * ldc]));
    }
  const double one = 1;
  double* d = dev<double>(16);
  CHECK(dgemm(h, 0, 0, 4, 4, 4, &one, d, 3, d, 4, &one, d, 4) == 7);  // lda < m: CUBLAS_STATUS_INVALID_VALUE
  return sync_error();
}

// cublasGemmEx / cublasGemmStridedBatchedEx on bfloat16 and float16: sums rounded once, to
// nearest even, on store (ties, overflow to infinity), a float32 result of 16-bit inputs, strided
// batches with transposes against a direct loop, beta = 0 never reading C, and the refusals.
std::string ok_cublas_ex() {
  void* lib = dlopen(g_cublas_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) return std::string("dlopen: ") + dlerror();
  using Create = int (*)(void**);
  using GemmEx = int (*)(void*, int, int, int, int, int, const void*, const void*, int, int, const void*, int, int,
                         const void*, void*, int, int, int, int);
  using GemmExB = int (*)(void*, int, int, int, int, int, const void*, const void*, int, int, long long,
                          const void*, int, int, long long, const void*, void*, int, int, long long, int, int, int);
  auto create = reinterpret_cast<Create>(dlsym(lib, "cublasCreate_v2"));
  auto gemm_ex = reinterpret_cast<GemmEx>(dlsym(lib, "cublasGemmEx"));
  auto gemm_ex_b = reinterpret_cast<GemmExB>(dlsym(lib, "cublasGemmStridedBatchedEx"));
  CHECK(create && gemm_ex && gemm_ex_b);
  void* h = nullptr;
  CHECK(create(&h) == 0);
  const int R32F = 0, R16F = 2, R16BF = 14, C32F = 68, TENSOR_OP = 99;
  const float one = 1, zero = 0;
  // A 1 x 2 row times a 2 x 1 column of ones: C = a0 + a1, in the given type.
  auto dot2 = [&](int type, uint16_t a0, uint16_t a1, uint16_t ones) -> uint16_t {
    uint16_t* a = dev<uint16_t>(2);
    uint16_t* b = dev<uint16_t>(2);
    uint16_t* c = dev<uint16_t>(1);
    const uint16_t ha[2] = {a0, a1}, hb[2] = {ones, ones};
    cudaMemcpy(a, ha, 4, cudaMemcpyHostToDevice);
    cudaMemcpy(b, hb, 4, cudaMemcpyHostToDevice);
    if (gemm_ex(h, 0, 0, 1, 1, 2, &one, a, type, 1, b, type, 2, &zero, c, type, 1, C32F, TENSOR_OP) != 0) return 1;
    return host(c, 1)[0];
  };
  // bfloat16: 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1); 1 + 3 * 2^-8 rounds up to 1 + 2^-6.
  CHECK(dot2(R16BF, 0x3f80, 0x3b80, 0x3f80) == 0x3f80);
  CHECK(dot2(R16BF, 0x3f80, 0x3c40, 0x3f80) == 0x3f82);
  // float16: 2048 + 1 ties to 2048, 2048 + 3 to 2052; 65504 + 16 overflows, 65504 + 8 does not.
  CHECK(dot2(R16F, 0x6800, 0x3c00, 0x3c00) == 0x6800);
  CHECK(dot2(R16F, 0x6800, 0x4200, 0x3c00) == 0x6802);
  CHECK(dot2(R16F, 0x7bff, 0x4c00, 0x3c00) == 0x7c00);
  CHECK(dot2(R16F, 0x7bff, 0x4800, 0x3c00) == 0x7bff);
  {  // bfloat16 inputs, a float32 result: the sum unrounded (1 + 2^-8).
    uint16_t* a = dev<uint16_t>(2);
    uint16_t* b = dev<uint16_t>(2);
    float* c = dev<float>(1);
    const uint16_t ha[2] = {0x3f80, 0x3b80}, hb[2] = {0x3f80, 0x3f80};
    CUDA(cudaMemcpy(a, ha, 4, cudaMemcpyHostToDevice));
    CUDA(cudaMemcpy(b, hb, 4, cudaMemcpyHostToDevice));
    CHECK(gemm_ex(h, 0, 0, 1, 1, 2, &one, a, R16BF, 1, b, R16BF, 2, &zero, c, R32F, 1, C32F, TENSOR_OP) == 0);
    CHECK(host(c, 1)[0] == 1.00390625f);
  }
  // Strided batches with every transpose, small integers (exact in bfloat16, sums too), beta = 1.
  const int m = 3, n = 4, k = 5, batch = 2;
  auto bf = [](float v) {
    uint32_t b;
    std::memcpy(&b, &v, 4);
    return static_cast<uint16_t>(b >> 16);  // exact for these values
  };
  auto unbf = [](uint16_t v) {
    const uint32_t b = static_cast<uint32_t>(v) << 16;
    float f;
    std::memcpy(&f, &b, 4);
    return f;
  };
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int lda = (ta ? k : m) + 1, ldb = tb ? n : k, ldc = m + 2;
      const long long sa = lda * (ta ? m : k), sb = ldb * (tb ? k : n) + 3, sc = ldc * n;
      std::vector<uint16_t> A(sa * batch), B(sb * batch), C(sc * batch);
      for (size_t q = 0; q < A.size(); ++q) A[q] = bf(static_cast<float>(static_cast<int>(q % 7) - 3));
      for (size_t q = 0; q < B.size(); ++q) B[q] = bf(static_cast<float>(static_cast<int>(q % 5) - 2));
      for (size_t q = 0; q < C.size(); ++q) C[q] = bf(static_cast<float>(q % 3));
      uint16_t* dA = dev<uint16_t>(A.size());
      uint16_t* dB = dev<uint16_t>(B.size());
      uint16_t* dC = dev<uint16_t>(C.size());
      CUDA(cudaMemcpy(dA, A.data(), A.size() * 2, cudaMemcpyHostToDevice));
      CUDA(cudaMemcpy(dB, B.data(), B.size() * 2, cudaMemcpyHostToDevice));
      CUDA(cudaMemcpy(dC, C.data(), C.size() * 2, cudaMemcpyHostToDevice));
      const float alpha = 2, beta = 1;
      CHECK(gemm_ex_b(h, ta, tb, m, n, k, &alpha, dA, R16BF, lda, sa, dB, R16BF, ldb, sb, &beta, dC, R16BF, ldc, sc,
                      batch, C32F, TENSOR_OP) == 0);
      auto got = host(dC, C.size());
      for (int b = 0; b < batch; ++b)
        for (int j = 0; j < n; ++j)
          for (int i = 0; i < m; ++i) {
            float acc = 0;
            for (int l = 0; l < k; ++l) {
              float a = unbf(ta ? A[b * sa + l + i * lda] : A[b * sa + i + l * lda]);
              float bb = unbf(tb ? B[b * sb + j + l * ldb] : B[b * sb + l + j * ldb]);
              acc += a * bb;
            }
            const float want = alpha * acc + beta * unbf(C[b * sc + i + j * ldc]);
            CHECK(unbf(got[b * sc + i + j * ldc]) == want);
          }
      // beta = 0 never reads C: NaN there stays out of the result.
      CUDA(cudaMemset(dC, 0xFF, C.size() * 2));
      CHECK(gemm_ex(h, ta, tb, m, n, k, &alpha, dA, R16BF, lda, dB, R16BF, ldb, &zero, dC, R16BF, ldc, C32F,
                    TENSOR_OP) == 0);
      got = host(dC, static_cast<size_t>(ldc) * n);
      for (int j = 0; j < n; ++j)
        for (int i = 0; i < m; ++i) CHECK(std::isfinite(unbf(got[i + j * ldc])));
    }
  uint16_t* d = dev<uint16_t>(16);
  // lda < m: CUBLAS_STATUS_INVALID_VALUE; a float32 x float32 -> bfloat16 product, mixed input
  // types or another compute type: CUBLAS_STATUS_NOT_SUPPORTED.
  CHECK(gemm_ex(h, 0, 0, 4, 4, 4, &one, d, R16BF, 3, d, R16BF, 4, &one, d, R16BF, 4, C32F, TENSOR_OP) == 7);
  float* f = dev<float>(16);
  CHECK(gemm_ex(h, 0, 0, 4, 4, 4, &one, f, R32F, 4, f, R32F, 4, &zero, d, R16BF, 4, C32F, TENSOR_OP) == 15);
  CHECK(gemm_ex(h, 0, 0, 4, 4, 4, &one, d, R16BF, 4, d, R16F, 4, &zero, f, R32F, 4, C32F, TENSOR_OP) == 15);
  CHECK(gemm_ex(h, 0, 0, 4, 4, 4, &one, d, R16F, 4, d, R16F, 4, &zero, f, R32F, 4, 64, TENSOR_OP) == 15);
  return sync_error();
}

std::string bug_cublas_out_of_range() {
  void* lib = dlopen(g_cublas_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) return std::string("dlopen: ") + dlerror();
  auto create = reinterpret_cast<int (*)(void**)>(dlsym(lib, "cublasCreate_v2"));
  auto sgemm = reinterpret_cast<int (*)(void*, int, int, int, int, int, const float*, const float*, int,
                                        const float*, int, const float*, float*, int)>(
      dlsym(lib, "cublasSgemm_v2"));
  void* h = nullptr;
  CHECK(create(&h) == 0);
  float* a = dev<float>(15);  // 4 x 4 needs 16
  float* c = dev<float>(16);
  const float one = 1, zero = 0;
  CHECK(sgemm(h, 0, 0, 4, 4, 4, &one, a, 4, c, 4, &zero, c, 4) == 0);  // queued; the fault comes at the sync
  return sync_error();
}

#define LAUNCH_BUG(name, grid, block, smem, ...)            \
  std::string bug_##name() {                               \
    float* p = dev<float>(1024);                           \
    (void)p;                                               \
    name<<<grid, block, smem>>>(__VA_ARGS__);              \
    return sync_error();                                   \
  }
LAUNCH_BUG(divergent_barrier, 1, 64, 0, p)
LAUNCH_BUG(divergent_shuffle, 1, 32, 0, p)
LAUNCH_BUG(partial_mask, 1, 32, 0, p)
LAUNCH_BUG(partial_warp, 1, 48, 0, p)
LAUNCH_BUG(lane_skips_shuffle, 1, 32, 0, p)
LAUNCH_BUG(barrier_and_shuffle, 1, 64, 0, p)
LAUNCH_BUG(write_before_start, 1, 32, 0, p)
LAUNCH_BUG(write_far, 1, 32, 0, p)
LAUNCH_BUG(dynamic_shared_overflow, 1, 32, 256 * sizeof(float), p)
LAUNCH_BUG(static_shared_overflow, 1, 32, 0, p)

std::string bug_early_return() {
  float* p = dev<float>(64);
  early_return<<<1, 64>>>(p, 40);
  return sync_error();
}
std::string bug_read_past_end() {
  float* x = dev<float>(100);
  float* out = dev<float>(1);
  read_past_end<<<1, 128>>>(x, out, 100);
  return sync_error();
}
std::string bug_use_after_free() {
  float* p = dev<float>(100);
  CUDA(cudaFree(p));
  noop<<<1, 32>>>(p);
  return sync_error();
}
std::string bug_host_pointer() {
  static float h[4];
  noop<<<1, 32>>>(h);
  return sync_error();
}
std::string bug_stack_overflow() {
  char* sink = dev<char>(2);
  stack_overflow<<<1, 1>>>(sink);
  return sync_error();
}
std::string bug_divide_by_zero() {
  int* p = dev<int>(32);
  divide<<<1, 32>>>(p, 0);
  return sync_error();
}
std::string bug_double_free() {
  float* p = dev<float>(4);
  CUDA(cudaFree(p));
  cudaFree(p);
  return sync_error();
}
// After a fault every call reports it, as on a GPU whose context is lost.
std::string bug_sticky() {
  float* p = dev<float>(4);
  write_before_start<<<1, 32>>>(p);
  cudaDeviceSynchronize();
  void* q = nullptr;
  cudaError_t e = cudaMalloc(&q, 16);
  return e == cudaSuccess ? "ok" : std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
}

std::string bug_cublas_overlap() {
  void* lib = dlopen(g_cublas_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!lib) return std::string("dlopen: ") + dlerror();
  auto create = reinterpret_cast<int (*)(void**)>(dlsym(lib, "cublasCreate_v2"));
  auto sgemm = reinterpret_cast<int (*)(void*, int, int, int, int, int, const float*, const float*, int,
                                        const float*, int, const float*, float*, int)>(
      dlsym(lib, "cublasSgemm_v2"));
  void* h = nullptr;
  CHECK(create(&h) == 0);
  float* a = dev<float>(16);
  float* c = dev<float>(16);
  const float one = 1;
  CHECK(sgemm(h, 0, 0, 4, 4, 4, &one, a, 4, c, 4, &one, c, 4) == 0);  // C = A C + C
  return sync_error();
}


template <typename T, typename La, typename Lb>
std::string check_wmma(float (*round)(float)) {
  const int W = 2;
  std::vector<float> av(W * 256), bv(W * 256), cv(W * 256);
  std::vector<T> ah(W * 256), bh(W * 256);
  for (int i = 0; i < W * 256; ++i) {
    av[i] = round(std::sin(0.37f * i) * 3.0f);
    bv[i] = round(std::cos(0.11f * i + 1.0f) * 2.0f);
    cv[i] = 0.01f * static_cast<float>(i % 17) - 0.05f;
    ah[i] = T(av[i]);
    bh[i] = T(bv[i]);
  }
  T* a = dev<T>(W * 256);
  T* b = dev<T>(W * 256);
  float* c0 = dev<float>(W * 256);
  float* c = dev<float>(W * 256);
  CUDA(cudaMemcpy(a, ah.data(), W * 256 * sizeof(T), cudaMemcpyHostToDevice));
  CUDA(cudaMemcpy(b, bh.data(), W * 256 * sizeof(T), cudaMemcpyHostToDevice));
  CUDA(cudaMemcpy(c0, cv.data(), W * 256 * sizeof(float), cudaMemcpyHostToDevice));
  wmma_product<T, La, Lb><<<1, 32 * W>>>(a, b, c0, c);
  CUDA(cudaGetLastError());
  auto got = host(c, W * 256);
  const bool acol = std::is_same<La, nvcuda::wmma::col_major>::value;
  const bool bcol = std::is_same<Lb, nvcuda::wmma::col_major>::value;
  for (int w = 0; w < W; ++w)
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 16; ++n) {
        double acc = cv[w * 256 + r * 16 + n];
        for (int k = 0; k < 16; ++k)
          acc += static_cast<double>(av[w * 256 + (acol ? k * 16 + r : r * 16 + k)]) *
                 bv[w * 256 + (bcol ? n * 16 + k : k * 16 + n)];
        CHECK(got[w * 256 + n * 16 + r] == static_cast<float>(acc));  // stored column-major
      }
  return sync_error();
}
std::string ok_wmma() {
  std::string r = check_wmma<__nv_bfloat16, nvcuda::wmma::row_major, nvcuda::wmma::col_major>(
      [](float x) { return static_cast<float>(__nv_bfloat16(x)); });
  if (r != "ok") return r;
  return check_wmma<__half, nvcuda::wmma::col_major, nvcuda::wmma::row_major>(
      [](float x) { return static_cast<float>(__half(x)); });
}
// tf32: A (16 x 8) row-major and B (8 x 16) column-major, then the other way round, against
// products of the inputs rounded to 10 mantissa bits by hand (to nearest, ties away from zero).
float tf32_by_hand(float x) {
  int e;
  const double m = std::frexp(static_cast<double>(x), &e);  // |m| in [0.5, 1): 11 significant bits
  return static_cast<float>(std::ldexp(std::round(m * 2048.0) / 2048.0, e));
}
template <typename La, typename Lb>
std::string check_wmma_tf32() {
  const int W = 2;
  std::vector<float> av(W * 128), bv(W * 128), cv(W * 256);
  for (int i = 0; i < W * 128; ++i) {
    av[i] = std::sin(0.37f * i) * 3.0f;
    bv[i] = std::cos(0.11f * i + 1.0f) * 2.0f;
  }
  for (int i = 0; i < W * 256; ++i) cv[i] = 0.01f * static_cast<float>(i % 17) - 0.05f;
  float* a = dev<float>(W * 128);
  float* b = dev<float>(W * 128);
  float* c0 = dev<float>(W * 256);
  float* c = dev<float>(W * 256);
  CUDA(cudaMemcpy(a, av.data(), W * 128 * sizeof(float), cudaMemcpyHostToDevice));
  CUDA(cudaMemcpy(b, bv.data(), W * 128 * sizeof(float), cudaMemcpyHostToDevice));
  CUDA(cudaMemcpy(c0, cv.data(), W * 256 * sizeof(float), cudaMemcpyHostToDevice));
  wmma_product_tf32<La, Lb><<<1, 32 * W>>>(a, b, c0, c);
  CUDA(cudaGetLastError());
  auto got = host(c, W * 256);
  const bool acol = std::is_same<La, nvcuda::wmma::col_major>::value;
  const bool bcol = std::is_same<Lb, nvcuda::wmma::col_major>::value;
  for (int w = 0; w < W; ++w)
    for (int r = 0; r < 16; ++r)
      for (int n = 0; n < 16; ++n) {
        double acc = cv[w * 256 + r * 16 + n];
        for (int k = 0; k < 8; ++k)
          acc += static_cast<double>(tf32_by_hand(av[w * 128 + (acol ? k * 16 + r : r * 8 + k)])) *
                 tf32_by_hand(bv[w * 128 + (bcol ? n * 8 + k : k * 16 + n)]);
        CHECK(got[w * 256 + n * 16 + r] == static_cast<float>(acc));  // stored column-major
      }
  return sync_error();
}
std::string ok_wmma_tf32() {
  using nvcuda::wmma::__float_to_tf32;
  // Ties go away from zero; the low 13 bits are cleared.
  CHECK(__float_to_tf32(1.0f + std::ldexp(1.0f, -11)) == 1.0f + std::ldexp(1.0f, -10));
  CHECK(__float_to_tf32(-1.0f - std::ldexp(1.0f, -11)) == -1.0f - std::ldexp(1.0f, -10));
  CHECK(__float_to_tf32(1.0f + std::ldexp(1.0f, -11) - std::ldexp(1.0f, -23)) == 1.0f);
  CHECK(__float_to_tf32(3.0f) == 3.0f);
  for (float x : {0.1f, -2.7182817f, 1e-30f, 6.0e4f})
    CHECK(__float_to_tf32(x) == tf32_by_hand(x));
  std::string r = check_wmma_tf32<nvcuda::wmma::row_major, nvcuda::wmma::col_major>();
  if (r != "ok") return r;
  return check_wmma_tf32<nvcuda::wmma::col_major, nvcuda::wmma::row_major>();
}
std::string nan_report(const float* d, int n) {
  auto v = host(d, n);
  for (float x : v)
    if (std::isnan(x)) return "read NaN";
  return sync_error();
}
std::string ok_wmma_load_synced() {
  float* out = dev<float>(256);
  wmma_load_unsynced<<<1, 32>>>(out, 1);
  CUDA(cudaGetLastError());
  auto v = host(out, 256);
  for (float x : v) CHECK(x == 16.0f);
  return sync_error();
}
std::string bug_wmma_load_unsynced() {
  float* out = dev<float>(256);
  wmma_load_unsynced<<<1, 32>>>(out, 0);
  return nan_report(out, 256);
}
std::string bug_wmma_store_unsynced() {
  float* out = dev<float>(32);
  wmma_store_unsynced<<<1, 32>>>(out);
  return nan_report(out, 32);
}
std::string bug_wmma_divergent() {
  float* out = dev<float>(32);
  wmma_divergent<<<1, 32>>>(out);
  return sync_error();
}
std::string bug_wmma_bad_ldm() {
  __half* a = dev<__half>(256);
  float* out = dev<float>(32);
  wmma_bad_ldm<<<1, 32>>>(a, out);
  return sync_error();
}

struct Case {
  const char* name;
  std::function<std::string()> run;
  const char* expect;  // "ok", or text the error must contain
};

const Case kCases[] = {
    {"shuffle semantics", ok_shuffles, "ok"},
    {"atomics", ok_atomics, "ok"},
    {"barriers and static shared memory in 3-D blocks", ok_block_reduce, "ok"},
    {"fresh shared memory and allocations read as NaN", ok_fresh_memory, "ok"},
    {"launch limits are launch errors, not sticky", ok_launch_limits, "ok"},
    {"memory: total, pool, trim, checked copies, events", ok_memory, "ok"},
    {"cuBLAS column-major semantics", ok_cublas, "ok"},
    {"cuBLAS GemmEx: bfloat16 and float16 rounded once on store", ok_cublas_ex, "ok"},
    {"warp matrix products (wmma), bf16 and fp16, both layouts", ok_wmma, "ok"},
    {"wmma loads after __syncwarp", ok_wmma_load_synced, "ok"},
    {"warp matrix products (wmma), tf32 16x16x8, both layouts", ok_wmma_tf32, "ok"},
    {"divergent __syncthreads", bug_divergent_barrier, "divergent __syncthreads()"},
    {"__syncthreads after threads returned", bug_early_return, "a barrier not every thread reaches"},
    {"divergent shuffles", bug_divergent_shuffle, "divergent warp"},
    {"a mask that is not full", bug_partial_mask, "with mask 0x0000ffff"},
    {"a shuffle in a partial warp", bug_partial_warp, "in a warp of 16 threads"},
    {"a lane that skips a shuffle", bug_lane_skips_shuffle, "a warp function not every lane calls"},
    {"a barrier against a shuffle", bug_barrier_and_shuffle, "a barrier not every thread reaches"},
    {"a read past the end of an allocation", bug_read_past_end, "read of the first byte past the end of the 400-byte"},
    {"a write before the start of an allocation", bug_write_before_start, "before the start of the 4096-byte"},
    {"a write far outside", bug_write_far, "illegal memory access"},
    {"dynamic shared memory overflow", bug_dynamic_shared_overflow, "past the end of the block's 1024 bytes of dynamic shared memory"},
    {"static shared memory overflow", bug_static_shared_overflow, "past the end of a static __shared__ variable"},
    {"a freed pointer passed to a kernel", bug_use_after_free, "freed"},
    {"a host pointer passed to a kernel", bug_host_pointer, "argument 1 is not memory of cuda:0"},
    {"stack overflow", bug_stack_overflow, "stack overflow"},
    {"integer division by zero", bug_divide_by_zero, "arithmetic trap"},
    {"a double free", bug_double_free, "not a live device allocation"},
    {"errors are sticky", bug_sticky, "cudaErrorIllegalAddress"},
    {"cuBLAS operands outside their allocation", bug_cublas_out_of_range, "matrix A (64 bytes"},
    {"a cuBLAS result that overlaps an input", bug_cublas_overlap, "overlaps matrix B"},
    {"wmma load of a tile other lanes wrote without __syncwarp", bug_wmma_load_unsynced, "read NaN"},
    {"reading another lane's wmma store without __syncwarp", bug_wmma_store_unsynced, "read NaN"},
    {"a lane that skips wmma::mma_sync", bug_wmma_divergent, "wmma::mma_sync"},
    {"a wmma leading dimension that is not 16 bytes", bug_wmma_bad_ldm, "not a multiple of 16 bytes"},
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s LIBCUBLAS_EMU\n", argv[0]);
    return 2;
  }
  g_cublas_path = argv[1];
  int failed = 0;
  for (const Case& c : kCases) {
    int fd[2];
    if (pipe(fd) != 0) return 2;
    std::fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
      close(fd[0]);
      std::freopen("/dev/null", "w", stderr);  // the emulator's own report of the fault
      std::string r = c.run();
      ssize_t w = write(fd[1], r.data(), r.size());
      (void)w;
      _exit(0);
    }
    close(fd[1]);
    std::string got;
    char buf[4096];
    ssize_t n;
    while ((n = read(fd[0], buf, sizeof buf)) > 0) got.append(buf, static_cast<size_t>(n));
    close(fd[0]);
    int status = 0;
    waitpid(pid, &status, 0);
    bool pass = WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
                (std::strcmp(c.expect, "ok") == 0 ? got == "ok" : got.find(c.expect) != std::string::npos);
    if (!WIFEXITED(status)) got = "the case crashed (signal " + std::to_string(WTERMSIG(status)) + ")";
    std::printf("%s %s\n", pass ? "ok  " : "FAIL", c.name);
    if (!pass) {
      std::printf("     expected %s%s\n     got      %s\n", std::strcmp(c.expect, "ok") ? "an error containing: " : "",
                  c.expect, got.c_str());
      ++failed;
    }
  }
  std::printf("cuda-emu selftest: %zu cases, %d failed\n", sizeof kCases / sizeof kCases[0], failed);
  return failed ? 1 : 0;
}
