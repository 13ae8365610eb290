// A small persistent thread pool for the CPU backend. The built-in GEMM and the
// larger elementwise loops split their work with parallel_for; everything else
// stays single-threaded so small tensors pay no synchronisation cost.
#pragma once
#include <cstdint>
#include <functional>

namespace lc {

// Number of worker threads parallel_for may use (including the calling thread).
// LORA_CUDA_NUM_THREADS overrides the default (hardware concurrency).
int num_threads();

// Runs fn(begin, end) over [0, n) split into contiguous chunks of at least
// `grain` items, on up to num_threads() threads; returns when all chunks are
// done. The first exception thrown by a chunk is rethrown on the caller.
// Nested calls (from inside a chunk) run serially on the calling thread.
void parallel_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace lc
