// The device side of the lora-cuda CUDA emulator: what kernel code sees when a
// cuda/*.cu file is compiled as C++ (after dev/cuda-emu/transform.py has turned
// its launches and __shared__ declarations into the calls below).
//
// Each CUDA thread of a block runs as a fiber; a block's fibers switch only at
// __syncthreads() and the warp functions, where the emulator checks that the
// whole block (warp) arrives at the same call, with a full mask and no thread
// exited. Shared memory and fresh allocations start as NaN bytes. What it finds
// makes the launch fail as a GPU fault would: a sticky error returned by the
// next runtime call, whose cudaGetErrorString names the kernel, block, thread
// and the problem (src/exec.cpp).
#pragma once
#include <math.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __constant__
#define __grid_constant__
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

namespace emu {

// The coordinates of the fiber running now (set by the scheduler at each switch).
extern uint3 g_thread_idx, g_block_idx;
extern dim3 g_block_dim, g_grid_dim;

void syncthreads(const char* file, int line);

enum WarpOp : int { kShflIdx, kShflUp, kShflDown, kShflXor, kSyncWarp, kWmmaLoad, kWmmaStore, kWmmaMma, kWmmaMmaDone };
// The calling lane's value is in `in` (16 bytes, `size` of them used); returns
// with the lane's result in `out` (16 bytes).
void warp_op(const char* file, int line, WarpOp op, unsigned mask, int arg, int width, const void* in,
             void* out, size_t size);

// A fault found by device code of the headers (mma.h): ends the launch as lane faults do.
[[noreturn]] void device_fault(const char* file, int line, const char* what);

// __syncwarp() and __syncwarp(mask), with the call site.
struct SyncWarp {
  const char* file;
  int line;
  void operator()(unsigned mask = 0xffffffffu) const { warp_op(file, line, kSyncWarp, mask, 0, 32, nullptr, nullptr, 0); }
};

template <typename T>
inline T shfl(const char* file, int line, WarpOp op, unsigned mask, T v, int arg, int width = 32) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 16, "shuffle of an unsupported type");
  alignas(16) unsigned char in[16] = {}, out[16];
  std::memcpy(in, &v, sizeof(T));
  warp_op(file, line, op, mask, arg, width, in, out, sizeof(T));
  T r;
  std::memcpy(&r, out, sizeof(T));
  return r;
}

// Static __shared__ variables: one per declaration site and block, NaN bytes at block start.
void* static_smem(const void* site, size_t size, size_t align);
// The block's dynamic shared memory (extern __shared__), NaN bytes at block start.
void* dynamic_smem();

struct LaunchSite {
  const char* kernel;  // the kernel as written at the launch
  const char* file;
  int line;
};

// Launch protocol used by launch() below. begin_launch takes the emulated GPU
// (a lock held until end_launch) and returns false, with the launch error set,
// when the configuration is invalid or an earlier fault is pending.
bool begin_launch(const LaunchSite& site, const char* signature, const void* fn, dim3 grid, dim3 block,
                  size_t smem, cudaStream_t stream);
void check_arg(int index, const void* p);
void run_grid(void (*body)(void*), void* ctx);
void end_launch();

template <typename X>
inline void check_one(int i, const X& x) {
  if constexpr (std::is_pointer<X>::value) check_arg(i, reinterpret_cast<const void*>(x));
}

// kernel<<<grid, block, smem, stream>>>(args...): the arguments are converted to
// the kernel's parameter types once, as CUDA copies them into the launch, and
// every thread of the grid calls the kernel on that copy.
template <typename... P, typename... A>
void launch(const LaunchSite& site, void (*k)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            A&&... a) {
  static_assert(sizeof...(P) == sizeof...(A), "wrong number of kernel arguments");
  using Args = std::tuple<std::remove_cv_t<std::remove_reference_t<P>>...>;
  static_assert(sizeof(Args) <= 32764, "kernel parameters exceed the 32764 bytes CUDA allows");
  // The parameter types, for messages (__PRETTY_FUNCTION__ lists them as "P = {...}").
  if (!begin_launch(site, __PRETTY_FUNCTION__, reinterpret_cast<const void*>(k), grid, block, smem, stream)) return;
  struct Ctx {
    void (*k)(P...);
    Args args;
  } ctx{k, Args(std::forward<A>(a)...)};
  std::apply([](const auto&... x) {
    int i = 0;
    (check_one(i++, x), ...);
  }, ctx.args);
  run_grid([](void* c) {
    Ctx* p = static_cast<Ctx*>(c);
    std::apply(p->k, p->args);
  }, &ctx);
  end_launch();
}

template <typename T>
inline T atomic_cas_loop(T* p, T (*f)(T, T), T v) {
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  for (;;) {
    T nv = f(old, v);
    if (__atomic_compare_exchange(p, &old, &nv, false, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old;
  }
}

}  // namespace emu

#define threadIdx (static_cast<const uint3&>(::emu::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::emu::g_grid_dim))
constexpr int warpSize = 32;

#define __syncthreads() ::emu::syncthreads(__FILE__, __LINE__)
#define __syncwarp ::emu::SyncWarp{__FILE__, __LINE__}
// A trap ends the launch with an error, as on a GPU (cudaErrorLaunchFailure there).
#define __trap() ::emu::device_fault(__FILE__, __LINE__, "__trap()")
#define __shfl_sync(mask, v, ...) ::emu::shfl(__FILE__, __LINE__, ::emu::kShflIdx, (mask), (v), __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) ::emu::shfl(__FILE__, __LINE__, ::emu::kShflUp, (mask), (v), __VA_ARGS__)
#define __shfl_down_sync(mask, v, ...) ::emu::shfl(__FILE__, __LINE__, ::emu::kShflDown, (mask), (v), __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) ::emu::shfl(__FILE__, __LINE__, ::emu::kShflXor, (mask), (v), __VA_ARGS__)

// ---- atomics (the emulated GPU runs one thread at a time; these are atomic anyway)
inline int atomicAdd(int* p, int v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicAdd(unsigned* p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST);
}
inline float atomicAdd(float* p, float v) {
  return ::emu::atomic_cas_loop<float>(p, [](float a, float b) { return a + b; }, v);
}
inline double atomicAdd(double* p, double v) {
  return ::emu::atomic_cas_loop<double>(p, [](double a, double b) { return a + b; }, v);
}
template <typename T>
inline T emu_atomic_cas(T* p, T cmp, T v) {
  __atomic_compare_exchange_n(p, &cmp, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
  return cmp;  // the old value, whether or not it was replaced
}
inline int atomicCAS(int* p, int cmp, int v) { return emu_atomic_cas(p, cmp, v); }
inline unsigned atomicCAS(unsigned* p, unsigned cmp, unsigned v) { return emu_atomic_cas(p, cmp, v); }
inline unsigned long long atomicCAS(unsigned long long* p, unsigned long long cmp, unsigned long long v) {
  return emu_atomic_cas(p, cmp, v);
}
template <typename T>
inline T emu_atomic_min(T* p, T v) {
  return ::emu::atomic_cas_loop<T>(p, [](T a, T b) { return b < a ? b : a; }, v);
}
template <typename T>
inline T emu_atomic_max(T* p, T v) {
  return ::emu::atomic_cas_loop<T>(p, [](T a, T b) { return b > a ? b : a; }, v);
}
inline int atomicMin(int* p, int v) { return emu_atomic_min(p, v); }
inline unsigned atomicMin(unsigned* p, unsigned v) { return emu_atomic_min(p, v); }
inline long long atomicMin(long long* p, long long v) { return emu_atomic_min(p, v); }
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) { return emu_atomic_min(p, v); }
inline int atomicMax(int* p, int v) { return emu_atomic_max(p, v); }
inline unsigned atomicMax(unsigned* p, unsigned v) { return emu_atomic_max(p, v); }
inline long long atomicMax(long long* p, long long v) { return emu_atomic_max(p, v); }
inline unsigned long long atomicMax(unsigned long long* p, unsigned long long v) { return emu_atomic_max(p, v); }
inline int atomicExch(int* p, int v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }
inline unsigned atomicExch(unsigned* p, unsigned v) { return __atomic_exchange_n(p, v, __ATOMIC_SEQ_CST); }

// ---- IEEE double operations rounded once (the emulator never contracts: -ffp-contract=off)
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline long long __double_as_longlong(double x) {
  long long b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
inline double __longlong_as_double(long long b) {
  double x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}
inline int __float_as_int(float x) {
  int b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}
inline float __int_as_float(int b) {
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
}
// Fast-math intrinsics: the emulator computes them exactly (a GPU rounds them less well).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
template <typename T>
inline T __ldg(const T* p) {
  return *p;
}

// ---- min / max as CUDA's math headers declare them (float ones return the
// non-NaN operand, as fminf / fmaxf).
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return fminf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double min(float a, double b) { return fmin(a, b); }
inline double min(double a, float b) { return fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
inline double max(float a, double b) { return fmax(a, b); }
inline double max(double a, float b) { return fmax(a, b); }
