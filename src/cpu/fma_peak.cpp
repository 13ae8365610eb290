// The floor under every product: the multiply-add rate of the GEMM kernel copy's vector width on
// all of the pool's threads, measured with independent chains of fused multiply-adds that never
// touch memory. A product can at best reach this; the benchmarks divide a step's multiply-adds by
// it to say how far the products are from the hardware (bench/NOTES.md).
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <vector>

#include "../parallel.h"
#include "gemm.h"

namespace lc {
namespace {

// 12 independent accumulators: more than an FMA's latency times the units that can start one per
// cycle on current x86 cores (4 x 2), so the chain never waits on itself.
#define LC_FMA_LOOP(W)                                                                    \
  typedef float V __attribute__((vector_size(W)));                                       \
  V acc[12], b, c;                                                                        \
  for (int i = 0; i < 12; ++i) acc[i] = V{} + float(i);                                   \
  b = V{} + 1.0000001f;                                                                   \
  c = V{} + 1e-7f;                                                                        \
  /* b and c opaque to the compiler, so it cannot fold the chain */                      \
  asm volatile("" : "+m"(b), "+m"(c));                                                    \
  for (int64_t k = 0; k < iters; ++k) {                                                   \
    _Pragma("GCC unroll 12") for (int i = 0; i < 12; ++i) acc[i] = acc[i] * b + c;        \
  }                                                                                       \
  float s = 0;                                                                            \
  for (int i = 0; i < 12; ++i)                                                            \
    for (int j = 0; j < int(W / sizeof(float)); ++j) s += acc[i][j];                      \
  return s;

float fma_loop_generic(int64_t iters) { LC_FMA_LOOP(16) }
#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("avx2,fma"))) float fma_loop_avx2(int64_t iters) { LC_FMA_LOOP(32) }
__attribute__((target("avx512f,avx512vl,avx2,fma"))) float fma_loop_avx512(int64_t iters) {
  LC_FMA_LOOP(64)
}
#endif

}  // namespace

FmaPeak fma_peak(double seconds) {
  const CpuKernels isa = cpu_kernels();
  int lanes = 4;
  float (*loop)(int64_t) = fma_loop_generic;
#if defined(__x86_64__) && defined(__GNUC__)
  if (isa == CpuKernels::Avx512) lanes = 16, loop = fma_loop_avx512;
  if (isa == CpuKernels::Avx2) lanes = 8, loop = fma_loop_avx2;
#endif
  using clock = std::chrono::steady_clock;
  const int nt = num_threads();
  // Size one chunk to about `seconds / 3` from a short single-threaded run.
  int64_t iters = 1 << 16;
  for (;;) {
    const auto t0 = clock::now();
    volatile float sink = loop(iters);
    (void)sink;
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    if (dt > 0.01) {
      iters = std::max<int64_t>(iters, int64_t(double(iters) * seconds / 3 / dt));
      break;
    }
    iters *= 4;
  }
  FmaPeak best{0, 0, nt, cpu_kernels_name(isa)};
  for (int round = 0; round < 3; ++round) {
    // One chunk per thread; the rate counts from the first start to the last end, so a thread
    // that started late (or a chunk run after another on one thread) lowers it, never raises it.
    std::vector<clock::time_point> start(nt), end(nt);
    parallel_for(nt, 1, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        start[t] = clock::now();
        volatile float sink = loop(iters);
        (void)sink;
        end[t] = clock::now();
      }
    });
    const auto first = *std::min_element(start.begin(), start.end());
    const auto last = *std::max_element(end.begin(), end.end());
    const double flops = 2.0 * 12 * lanes * double(iters);
    const double all = flops * nt / std::chrono::duration<double>(last - first).count();
    double one = 0;
    for (int t = 0; t < nt; ++t)
      one = std::max(one, flops / std::chrono::duration<double>(end[t] - start[t]).count());
    if (all > best.gflops * 1e9) best.gflops = all / 1e9, best.gflops_per_thread = one / 1e9;
  }
  return best;
}

}  // namespace lc
