// Embedding on CUDA: a row gather forward, and an atomic-free backward that
// adds each id's rows in position order, as the CPU does (the same bits).
// Bad ids are reported to the next synchronisation, as the CPU would throw.
// The forward moves elements as words (any dtype); the backward sums halves in
// float and rounds once.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

__global__ void ids_check_kernel(const int32_t* ids, int64_t N, int64_t V,
                                 unsigned long long* first) {
  LC_GRID_STRIDE(n, N) {
    const int64_t id = ids[n];
    if (id < 0 || id >= V) note_bad(first, n);
  }
}

// One thread: turns the first bad index (all ones: none) into the device error
// report; an earlier op's report, if any, wins.
__global__ void ids_report_kernel(const int32_t* ids, const unsigned long long* first, int64_t N,
                                  int64_t V, int code, DeviceError* err) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const unsigned long long n = *first;
  if (n >= static_cast<unsigned long long>(N)) return;
  if (atomicCAS(&err->code, 0, code) == 0) {
    err->a = ids[n];
    err->b = static_cast<long long>(n);
    err->c = V;
  }
}

// Threads over the flat [N, D] output, so consecutive threads copy
// consecutive columns of a row. A bad id gives a zero row, never a read.
template <typename T>
__global__ void embedding_forward_kernel(const int32_t* ids, const T* w, T* out, int64_t N,
                                         int64_t V, int64_t D, unsigned long long* first) {
  LC_GRID_STRIDE(i, N * D) {
    const int64_t n = i / D, d = i - n * D;
    const int64_t id = ids[n];
    if (id < 0 || id >= V) {
      out[i] = T(0);
      if (d == 0) note_bad(first, n);
    } else {
      out[i] = w[id * D + d];
    }
  }
}

// dweight row v (set; rows no id names stay as zeroed) = the dy rows at v's
// positions added in position order, as the CPU adds them: the same bits, and
// no atomics. order lists the positions sorted by (id, position), so each id's
// positions form one run; the threads at the start of a run sum it, one
// column each (consecutive threads, consecutive columns). Order entries
// outside [0, N) end a run, so no read leaves the tensors.
template <typename T>
__global__ void embedding_backward_kernel(const int32_t* ids, const int32_t* order, const T* dy,
                                          T* dw, int64_t N, int64_t V, int64_t D,
                                          unsigned long long* first) {
  LC_GRID_STRIDE(i, N * D) {
    const int64_t p = i / D, d = i - p * D;
    const int64_t n = order[p];
    if (n < 0 || n >= N) continue;
    const int64_t id = ids[n];
    if (id < 0 || id >= V) {
      if (d == 0) note_bad(first, n);
      continue;
    }
    if (p > 0) {
      const int64_t m = order[p - 1];
      if (m >= 0 && m < N && ids[m] == id) continue;  // inside a run: its start sums it
    }
    opmath_t<T> acc = 0;
    for (int64_t q = p; q < N; ++q) {
      const int64_t nq = order[q];
      if (nq < 0 || nq >= N || ids[nq] != id) break;
      acc += ld(dy[nq * D + d]);
    }
    dw[id * D + d] = static_cast<T>(acc);
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out) {
  Guard g(c_);
  const int64_t N = ids.numel(), V = weight.shape[0], D = weight.shape[1];
  if (N == 0) return;
  const int32_t* pid = dp<int32_t>(ids);
  Tensor holder;
  unsigned long long* first = first_bad_word(c_, holder);
  if (D == 0) {  // nothing to copy, but the ids are still checked
    ids_check_kernel<<<grid_for(N), kThreads, 0, c_.stream>>>(pid, N, V, first);
    launched(c_, "embedding");
  } else {
    dispatch_word(weight.dtype, [&](auto w) {
      using W = decltype(w);
      embedding_forward_kernel<W><<<grid_for(N * D), kThreads, 0, c_.stream>>>(
          pid, dp<W>(weight), dp<W>(out), N, V, D, first);
      launched(c_, "embedding");
    });
  }
  ids_report_kernel<<<1, 1, 0, c_.stream>>>(pid, first, N, V, kErrEmbeddingId, c_.err);
  launched(c_, "embedding");
}

// order (positions sorted by (id, position)) is required: the kernel sums each
// id's run of positions from it.
void CudaBackend::embedding_backward(const Tensor& ids, const Tensor* order, const Tensor& dy,
                                     const Tensor& dweight) {
  if (!order && ids.numel() && dweight.numel())
    fail("embedding backward on CUDA: the ids' sort order is required");
  Guard g(c_);
  const int64_t N = ids.numel(), V = dweight.shape[0], D = dweight.shape[1];
  if (V * D > 0)
    check(cudaMemsetAsync(dweight.raw(), 0, static_cast<size_t>(V * D) * dtype_size(dweight.dtype),
                          c_.stream),
          "cudaMemsetAsync");
  if (N == 0) return;
  const int32_t* pid = dp<int32_t>(ids);
  Tensor holder;
  unsigned long long* first = first_bad_word(c_, holder);
  if (D == 0) {
    ids_check_kernel<<<grid_for(N), kThreads, 0, c_.stream>>>(pid, N, V, first);
    launched(c_, "embedding backward");
  } else {
    dispatch_floating(dweight.dtype, "embedding backward", [&](auto z) {
      using T = decltype(z);
      embedding_backward_kernel<T><<<grid_for(N * D), kThreads, 0, c_.stream>>>(
          pid, dp<int32_t>(*order), dp<T>(dy), dp<T>(dweight), N, V, D, first);
      launched(c_, "embedding backward");
    });
  }
  ids_report_kernel<<<1, 1, 0, c_.stream>>>(pid, first, N, V, kErrEmbeddingBackwardId, c_.err);
  launched(c_, "embedding backward");
}

}  // namespace lc::cuda
