// Views and joins on CUDA: strided copies (slices, cat, their gradients), the gather along a dim
// of torch.gather / index_select with an atomic-free backward that adds in the CPU's order (the
// same bits), and tril/triu. Elements move as 2-, 4- or 8-byte words, so every dtype is served;
// the backward sums add in opmath_t (float for the halves) and round once.
// A bad index is reported to the next synchronisation, as the CPU would throw.
#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

template <typename W>
__global__ void strided_copy_kernel(W* d, Indexer id, const W* s, Indexer is, int64_t n) {
  LC_GRID_STRIDE(i, n) d[id(i)] = s[is(i)];
}

// The same with 32-bit index arithmetic (Indexer::at32) for n < 2^31.
template <typename W>
__global__ void strided_copy32_kernel(W* d, Indexer id, const W* s, Indexer is, int64_t n) {
  for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < static_cast<uint32_t>(n); i += blockDim.x * gridDim.x)
    d[id.at32(i)] = s[is.at32(i)];
}

// out element i reads x at xi(i) (its coordinates but dim's) + index[ii(i)] * dim_stride; a bad
// index writes 0 and is noted, never read.
template <typename W>
__global__ void gather_kernel(const W* x, Indexer xi, const int32_t* idx, Indexer ii,
                              int64_t dim_stride, int64_t size, W* out, int64_t n,
                              unsigned long long* first) {
  LC_GRID_STRIDE(i, n) {
    const int64_t io = ii(i);
    const int64_t v = idx[io];
    if (v < 0 || v >= size) {
      out[i] = W(0);
      note_bad(first, io);
    } else {
      out[i] = x[xi(i) + v * dim_stride];
    }
  }
}

// The shapes and strides the backward walks, unmerged (it needs each coordinate).
struct GatherGeom {
  int rank, dim;
  int64_t dx[kMaxDims];   // dx's shape (contiguous)
  int64_t dy[kMaxDims];   // dy's shape (contiguous)
  int64_t dys[kMaxDims];  // dy's strides
  int64_t is[kMaxDims];   // the index's strides over dy's shape
};

// One thread per dx element p (set): the dy elements whose index names p's coordinate along dim,
// taken along dim in ascending order, as the CPU adds them (zero first, then in out's order).
template <typename T>
__global__ void gather_backward_kernel(const int32_t* idx, GatherGeom g, const T* dy, T* dx,
                                       int64_t n, unsigned long long* first) {
  LC_GRID_STRIDE(p, n) {
    int64_t rem = p, v = 0, base_dy = 0, base_i = 0;
    bool inside = true;
    for (int d = g.rank - 1; d >= 0; --d) {
      const int64_t c = rem % g.dx[d];
      rem /= g.dx[d];
      if (d == g.dim) {
        v = c;
      } else {
        if (c >= g.dy[d]) inside = false;
        base_dy += c * g.dys[d];
        base_i += c * g.is[d];
      }
    }
    opmath_t<T> acc = 0;
    if (inside) {
      const int64_t L = g.dy[g.dim];
      for (int64_t j = 0; j < L; ++j) {
        const int64_t io = base_i + j * g.is[g.dim];
        const int64_t iv = idx[io];
        if (iv < 0 || iv >= g.dx[g.dim]) {
          note_bad(first, io);
        } else if (iv == v) {
          acc += ld(dy[base_dy + j * g.dys[g.dim]]);
        }
      }
    }
    dx[p] = static_cast<T>(acc);
  }
}

// index_select with the index's sort order: dy viewed as [outer, L, inner], dx as [outer, S,
// inner] (zeroed first). The thread at the start of a value's run of sorted positions sums the
// run, in position order as the CPU adds, into dx at that value: no atomics, and each dy element
// read once. Order entries outside [0, L) end a run, so no read leaves the tensors.
template <typename T>
__global__ void select_backward_kernel(const int32_t* idx, const int32_t* order, const T* dy,
                                       T* dx, int64_t outer, int64_t L, int64_t S, int64_t inner,
                                       unsigned long long* first) {
  LC_GRID_STRIDE(i, outer * L * inner) {
    const int64_t c = i % inner, p = (i / inner) % L, o = i / (inner * L);
    const int64_t n = order[p];
    if (n < 0 || n >= L) continue;
    const int64_t v = idx[n];
    if (v < 0 || v >= S) {
      if (o == 0 && c == 0) note_bad(first, n);
      continue;
    }
    if (p > 0) {
      const int64_t m = order[p - 1];
      if (m >= 0 && m < L && idx[m] == v) continue;  // inside a run: its start sums it
    }
    opmath_t<T> acc = 0;
    for (int64_t q = p; q < L; ++q) {
      const int64_t nq = order[q];
      if (nq < 0 || nq >= L || idx[nq] != v) break;
      acc += ld(dy[(o * L + nq) * inner + c]);
    }
    dx[(o * S + v) * inner + c] = static_cast<T>(acc);
  }
}

__global__ void gather_report_kernel(const int32_t* idx, const unsigned long long* first,
                                     int64_t size, DeviceError* err) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  const unsigned long long io = *first;
  if (io == ~0ull) return;
  if (atomicCAS(&err->code, 0, static_cast<int>(kErrGatherIndex)) == 0) {
    err->a = idx[io];
    err->b = static_cast<long long>(io);
    err->c = size;
  }
}

template <typename W>
__global__ void triangle_kernel(const W* x, W* out, int64_t n, int64_t R, int64_t C, int64_t k,
                                bool upper) {
  LC_GRID_STRIDE(i, n) {
    const int64_t row = i / C, c = i - row * C, r = row % R;
    const bool keep = upper ? c - r >= k : c - r <= k;
    out[i] = keep ? x[i] : W(0);
  }
}

std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> st(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d)
    st[d] = st[d + 1] * shape[d + 1];
  return st;
}

}  // namespace

// ================================================================ methods

void CudaBackend::strided_copy(const Tensor& dst, int64_t dst_offset,
                               const std::vector<int64_t>& dst_strides, const Tensor& src,
                               int64_t src_offset, const std::vector<int64_t>& src_strides,
                               const Shape& sizes) {
  const int64_t n = shape_numel(sizes);
  if (n == 0) return;
  Guard g(c_);
  auto ix = make_indexers(sizes, {dst_strides, src_strides});
  dispatch_word(dst.dtype, [&](auto w) {
    using W = decltype(w);
    if (fits32(n))
      strided_copy32_kernel<W><<<grid_for(n), kThreads, 0, c_.stream>>>(
          dp<W>(dst) + dst_offset, ix[0], dp<W>(src) + src_offset, ix[1], n);
    else
      strided_copy_kernel<W><<<grid_for(n), kThreads, 0, c_.stream>>>(
          dp<W>(dst) + dst_offset, ix[0], dp<W>(src) + src_offset, ix[1], n);
  });
  launched(c_, "strided copy");
}

void CudaBackend::index_gather(const Tensor& x, const Tensor& index,
                               const std::vector<int64_t>& index_strides, int64_t dim,
                               const Tensor& out) {
  const int64_t n = out.numel();
  if (n == 0) return;
  Guard g(c_);
  std::vector<int64_t> xst = contiguous_strides(x.shape);
  const int64_t dim_stride = xst[dim], size = x.shape[dim];
  xst[dim] = 0;
  auto ix = make_indexers(out.shape, {xst, index_strides});
  Tensor holder;
  unsigned long long* first = first_bad_word(c_, holder);
  dispatch_word(x.dtype, [&](auto w) {
    using W = decltype(w);
    gather_kernel<W><<<grid_for(n), kThreads, 0, c_.stream>>>(
        dp<W>(x), ix[0], dp<int32_t>(index), ix[1], dim_stride, size, dp<W>(out), n, first);
  });
  launched(c_, "gather");
  gather_report_kernel<<<1, 1, 0, c_.stream>>>(dp<int32_t>(index), first, size, c_.err);
  launched(c_, "gather");
}

// Without a sort order, one thread per dx element scans the index along dim (fine for gather's
// short index lines); index_select passes the order and sums runs instead.
void CudaBackend::index_gather_backward(const Tensor& index, const Tensor* order,
                                        const std::vector<int64_t>& index_strides, int64_t dim,
                                        const Tensor& dy, const Tensor& dx) {
  const int64_t n = dx.numel();
  if (n == 0) return;
  Guard g(c_);
  if (dy.numel() == 0 || order) {
    check(cudaMemsetAsync(dx.raw(), 0, static_cast<size_t>(n) * dtype_size(dx.dtype), c_.stream),
          "cudaMemsetAsync");
    if (dy.numel() == 0) return;
  }
  if (order) {
    const DimSplit ds = split_at_dim(dx.shape, dim);
    const int64_t outer = ds.outer, inner = ds.inner, L = dy.shape[dim], S = ds.n;
    Tensor holder;
    unsigned long long* first = first_bad_word(c_, holder);
    dispatch_floating(dx.dtype, "index_select backward", [&](auto z) {
      using T = decltype(z);
      select_backward_kernel<T><<<grid_for(outer * L * inner), kThreads, 0, c_.stream>>>(
          dp<int32_t>(index), dp<int32_t>(*order), dp<T>(dy), dp<T>(dx), outer, L, S, inner,
          first);
    });
    launched(c_, "index_select backward");
    gather_report_kernel<<<1, 1, 0, c_.stream>>>(dp<int32_t>(index), first, S, c_.err);
    launched(c_, "index_select backward");
    return;
  }
  if (dx.dim() > kMaxDims)
    fail("gather backward on CUDA: at most " + std::to_string(kMaxDims) + " dims, got shape " +
         shape_str(dx.shape));
  GatherGeom geom{};
  geom.rank = static_cast<int>(dx.dim());
  geom.dim = static_cast<int>(dim);
  const std::vector<int64_t> dys = contiguous_strides(dy.shape);
  for (int d = 0; d < geom.rank; ++d) {
    geom.dx[d] = dx.shape[d];
    geom.dy[d] = dy.shape[d];
    geom.dys[d] = dys[d];
    geom.is[d] = index_strides[d];
  }
  Tensor holder;
  unsigned long long* first = first_bad_word(c_, holder);
  dispatch_floating(dx.dtype, "gather backward", [&](auto z) {
    using T = decltype(z);
    gather_backward_kernel<T><<<grid_for(n), kThreads, 0, c_.stream>>>(
        dp<int32_t>(index), geom, dp<T>(dy), dp<T>(dx), n, first);
  });
  launched(c_, "gather backward");
  gather_report_kernel<<<1, 1, 0, c_.stream>>>(dp<int32_t>(index), first, dx.shape[dim], c_.err);
  launched(c_, "gather backward");
}

void CudaBackend::triangle(const Tensor& x, int64_t k, bool upper, const Tensor& out) {
  const int64_t n = x.numel();
  if (n == 0) return;
  Guard g(c_);
  const int64_t R = x.shape[x.dim() - 2], C = x.shape[x.dim() - 1];
  dispatch_word(x.dtype, [&](auto w) {
    using W = decltype(w);
    triangle_kernel<W><<<grid_for(n), kThreads, 0, c_.stream>>>(dp<W>(x), dp<W>(out), n, R, C, k,
                                                                upper);
  });
  launched(c_, upper ? "triu" : "tril");
}

}  // namespace lc::cuda
