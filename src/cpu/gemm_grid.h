// What the built-in GEMM kernels (float32/float64 in builtin_gemm.cpp, bfloat16 in bf16_gemm.cpp)
// share: the per-thread packing buffers and the split of C into one block per thread.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "../parallel.h"

namespace lc::gemm_grid {

// Packing buffers, kept per thread between calls and grown when needed: a product of the model's
// shapes packs megabytes of B, and a new allocation each call costs a page fault per 4 KiB (as much
// as the packing itself). Aligned to a cache line; not zeroed, as packing writes every element used.
// A block never calls back into a GEMM, so one thread never needs a slot twice at once.
template <typename T>
T* pack_buffer(int slot, size_t n) {
  struct Buf {
    std::unique_ptr<T[]> raw;
    size_t cap = 0;
  };
  thread_local Buf bufs[3];
  Buf& b = bufs[slot];
  if (b.cap < n) {
    b.raw.reset();
    b.raw.reset(new T[n + 64 / sizeof(T)]);
    b.cap = n;
  }
  auto a = reinterpret_cast<uintptr_t>(b.raw.get());
  return reinterpret_cast<T*>((a + 63) & ~uintptr_t(63));
}

// Balanced split of `tiles` tiles of `tile` elements into `parts`; returns the element offset where
// part i starts, clamped to `total`.
inline int64_t split_at(int64_t i, int64_t parts, int64_t tiles, int64_t tile, int64_t total) {
  const int64_t q = tiles / parts, r = tiles % parts;
  return std::min(total, (i * q + std::min(i, r)) * tile);
}

// The threads of an M x N x K product with MR x NR register tiles: no more than about 2^20
// multiply-adds each (below that, waking another thread costs more than it saves), then a grid of
// mg x ng C blocks (each thread owns whole blocks, so writes never overlap) minimising the largest
// padded block plus a charge for its packing traffic.
struct Grid {
  int64_t mt, ntl;  // row and column tiles
  int64_t mg, ng;   // blocks down and across
};

inline Grid plan(int64_t M, int64_t N, int64_t K, int64_t MR, int64_t NR,
                 int64_t threads = num_threads()) {
  Grid g{(M + MR - 1) / MR, (N + NR - 1) / NR, 1, 1};
  const double work = double(M) * double(N) * double(K);
  int64_t nt = std::min<int64_t>(threads, int64_t(std::max(1.0, work / double(1 << 20))));
  nt = std::max<int64_t>(1, std::min(nt, g.mt * g.ntl));
  double best = -1;
  for (int64_t m = 1; m <= nt; ++m) {
    const int64_t n = nt / m;
    if (m > g.mt || n > g.ntl) continue;
    const double rows = double((g.mt + m - 1) / m * MR), cols = double((g.ntl + n - 1) / n * NR);
    const double cost = rows * cols + 8.0 * (rows + cols);
    if (best < 0 || cost < best) best = cost, g.mg = m, g.ng = n;
  }
  return g;
}

// fn(k, r0, r1, c0, c1) for every non-empty C block of the grid in each of `kparts` splits of K
// (k = 0 .. kparts - 1, one grid each), the blocks spread over the threads: with as many threads
// as splits, each thread takes one split whole.
template <typename Fn>
void for_each_block(const Grid& g, int64_t MR, int64_t NR, int64_t M, int64_t N, int64_t kparts,
                    Fn&& fn) {
  const int64_t nb = g.mg * g.ng;
  parallel_for(kparts * nb, 1, [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t part = item % nb, pi = part / g.ng, pj = part % g.ng;
      const int64_t r0 = split_at(pi, g.mg, g.mt, MR, M), r1 = split_at(pi + 1, g.mg, g.mt, MR, M);
      const int64_t c0 = split_at(pj, g.ng, g.ntl, NR, N), c1 = split_at(pj + 1, g.ng, g.ntl, NR, N);
      if (r0 < r1 && c0 < c1) fn(item / nb, r0, r1, c0, c1);
    }
  });
}
template <typename Fn>
void for_each_block(const Grid& g, int64_t MR, int64_t NR, int64_t M, int64_t N, Fn&& fn) {
  for_each_block(g, MR, NR, M, N, 1,
                 [&](int64_t, int64_t r0, int64_t r1, int64_t c0, int64_t c1) { fn(r0, r1, c0, c1); });
}

}  // namespace lc::gemm_grid
