// Sums over broadcast dims (the gradient of a broadcast, bias gradients,
// sum/mean): out has x's rank, or fewer leading dims, with 1 on every summed
// dim. Accumulates in double like the CPU backend (halves read as float, rounded
// once on store), and deterministically: each
// output is summed in a fixed order, in at most `splits` chunks whose partial
// sums are added in order by a second kernel.
#include <algorithm>

#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

// One thread per output; chunk `blockIdx.y` of the summed elements. Used when
// the summed dims are not the innermost (bias gradients: neighbouring threads
// read neighbouring columns, so loads coalesce).
template <typename T>
__global__ void sum_by_thread(const T* x, Indexer kept, Indexer red, int64_t m, int64_t r,
                              int64_t chunk, double* partial, T* out) {
  int64_t o = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (o >= m) return;
  int64_t j0 = static_cast<int64_t>(blockIdx.y) * chunk, j1 = min(r, j0 + chunk);
  const T* base = x + kept(o);
  double acc = 0;
  for (int64_t j = j0; j < j1; ++j) acc += static_cast<double>(base[red(j)]);
  if (partial) partial[static_cast<int64_t>(blockIdx.y) * m + o] = acc;
  else out[o] = static_cast<T>(acc);
}

// One block per output; chunk `blockIdx.y`. Used when the innermost dim is
// summed (row sums): the block's threads read consecutive elements.
template <typename T>
__global__ void sum_by_block(const T* x, Indexer kept, Indexer red, int64_t m, int64_t r,
                             int64_t chunk, double* partial, T* out) {
  int64_t o = blockIdx.x;
  int64_t j0 = static_cast<int64_t>(blockIdx.y) * chunk, j1 = min(r, j0 + chunk);
  const T* base = x + kept(o);
  double acc = 0;
  for (int64_t j = j0 + threadIdx.x; j < j1; j += blockDim.x) acc += static_cast<double>(base[red(j)]);
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    if (partial) partial[static_cast<int64_t>(blockIdx.y) * m + o] = acc;
    else out[o] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void sum_partials(const double* partial, int64_t m, int splits, T* out) {
  LC_GRID_STRIDE(o, m) {
    double acc = 0;
    for (int s = 0; s < splits; ++s) acc += partial[s * m + o];
    out[o] = static_cast<T>(acc);
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::reduce_sum_to(const Tensor& x, const Tensor& out) {
  Guard g(c_);
  const int64_t n = x.numel(), m = out.numel();
  if (!m) return;
  if (!n) {
    fill(out, 0.0);
    return;
  }
  if (m == n) {  // nothing is summed, but a sum starts from +0: -0 becomes +0, as on the CPU and in torch
    affine(x, 1.0, 0.0, out);
    return;
  }
  // Split x's dims into kept ones (indexed by the output) and summed ones.
  const size_t rank = x.shape.size(), lead = rank - out.shape.size();
  std::vector<int64_t> xst(rank, 1);
  for (int64_t d = static_cast<int64_t>(rank) - 2; d >= 0; --d) xst[d] = xst[d + 1] * x.shape[d + 1];
  Shape kept_shape, red_shape;
  std::vector<int64_t> kept_st, red_st;
  bool inner_summed = false;
  for (size_t d = 0; d < rank; ++d) {
    int64_t od = d < lead ? 1 : out.shape[d - lead];
    if (x.shape[d] == 1) continue;
    if (od == 1) {
      red_shape.push_back(x.shape[d]);
      red_st.push_back(xst[d]);
      inner_summed = inner_summed || d == rank - 1;
    } else {
      kept_shape.push_back(x.shape[d]);
      kept_st.push_back(xst[d]);
    }
  }
  const int64_t r = n / m;
  Indexer kept = make_indexers(kept_shape, {kept_st})[0];
  Indexer red = make_indexers(red_shape, {red_st})[0];
  const int64_t sms = c_.multiprocessors;
  dispatch_floating(x.dtype, "sum", [&](auto z) {
    using T = decltype(z);
    const bool by_block = inner_summed || m < kThreads;
    // Enough chunks to fill the GPU, none smaller than a few hundred elements.
    int64_t splits = by_block ? std::min<int64_t>((sms * 8 + m - 1) / m, (r + 1023) / 1024)
                              : std::min<int64_t>((sms * 2048 + m - 1) / m, (r + 63) / 64);
    splits = std::max<int64_t>(1, std::min<int64_t>(splits, 65535));
    const int64_t chunk = (r + splits - 1) / splits;
    Tensor partial;
    double* pp = nullptr;
    if (splits > 1) {
      partial = scratch(c_, {splits * m}, DType::F64);
      pp = dp<double>(partial);
    }
    if (by_block) {
      if (m > 0x7fffffffLL) fail("sum: too many outputs for one launch: " + std::to_string(m));
      dim3 grid(static_cast<unsigned>(m), static_cast<unsigned>(splits));
      sum_by_block<T><<<grid, kThreads, 0, c_.stream>>>(dp<T>(x), kept, red, m, r, chunk, pp, dp<T>(out));
    } else {
      dim3 grid(static_cast<unsigned>((m + kThreads - 1) / kThreads), static_cast<unsigned>(splits));
      sum_by_thread<T><<<grid, kThreads, 0, c_.stream>>>(dp<T>(x), kept, red, m, r, chunk, pp, dp<T>(out));
    }
    launched(c_, "sum");
    if (splits > 1) {
      sum_partials<T><<<grid_for(m), kThreads, 0, c_.stream>>>(pp, m, static_cast<int>(splits), dp<T>(out));
      launched(c_, "sum");
    }
  });
}

}  // namespace lc::cuda
