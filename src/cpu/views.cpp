// Views and joins on the CPU: strided copies (slices, cat, their gradients), the gather along a
// dim of torch.gather / index_select with its scatter-add backward, and tril/triu. Tensors are
// contiguous, so every one of these copies; elements are moved as 2-, 4- or 8-byte words, so
// they serve every dtype. The gather's scatter-add sums halves in float, rounded once.
#include <cstring>
#include <string>
#include <vector>

#include "cpu_backend.h"

namespace lc {
namespace {

// Row-major element strides of a contiguous tensor of `shape`.
std::vector<int64_t> contiguous_strides(const Shape& shape) {
  std::vector<int64_t> st(shape.size(), 1);
  for (int64_t d = static_cast<int64_t>(shape.size()) - 2; d >= 0; --d)
    st[d] = st[d + 1] * shape[d + 1];
  return st;
}

// fn(W{}) with W the unsigned word of the dtype's size.
template <typename Fn>
void dispatch_word(DType t, Fn&& fn) {
  if (dtype_size(t) == 8) fn(uint64_t{});
  else if (dtype_size(t) == 2) fn(uint16_t{});
  else fn(uint32_t{});
}

[[noreturn]] void bad_index(int64_t v, int64_t pos, int64_t size) {
  fail("gather: index " + std::to_string(v) + " at position " + std::to_string(pos) +
       " is outside [0, " + std::to_string(size) + ")");
}

// Walks out's shape in order: fn(out_index, x_offset_without_dim, index_offset) per element.
template <typename Fn>
void walk_gather(const Shape& out, const Shape& xshape, const std::vector<int64_t>& index_strides,
                 int64_t dim, Fn&& fn) {
  std::vector<int64_t> st[2] = {contiguous_strides(xshape), index_strides};
  st[0][dim] = 0;  // the index gives that coordinate
  for_each_bcast<2>(out, st, [&](int64_t base, int64_t n, const int64_t* off, const int64_t* ist) {
    for (int64_t j = 0; j < n; ++j)
      fn(base + j, off[0] + (ist ? j * ist[0] : 0), off[1] + (ist ? j * ist[1] : 0));
  });
}

}  // namespace

void CpuBackend::strided_copy(const Tensor& dst, int64_t dst_offset,
                              const std::vector<int64_t>& dst_strides, const Tensor& src,
                              int64_t src_offset, const std::vector<int64_t>& src_strides,
                              const Shape& sizes) {
  if (shape_numel(sizes) == 0) return;
  const std::vector<int64_t> st[2] = {dst_strides, src_strides};
  dispatch_word(dst.dtype, [&](auto w) {
    using W = decltype(w);
    W* d = dst.data<W>() + dst_offset;
    const W* s = src.data<W>() + src_offset;
    for_each_bcast<2>(sizes, st, [&](int64_t, int64_t n, const int64_t* off, const int64_t* ist) {
      W* dd = d + off[0];
      const W* ss = s + off[1];
      if (!ist) {
        *dd = *ss;
      } else if (ist[0] == 1 && ist[1] == 1) {
        std::memcpy(dd, ss, sizeof(W) * n);
      } else {
        for (int64_t j = 0; j < n; ++j) dd[j * ist[0]] = ss[j * ist[1]];
      }
    });
  });
}

void CpuBackend::index_gather(const Tensor& x, const Tensor& index,
                              const std::vector<int64_t>& index_strides, int64_t dim,
                              const Tensor& out) {
  const int64_t size = x.shape[dim], xst = contiguous_strides(x.shape)[dim];
  const int32_t* idx = index.data<int32_t>();
  dispatch_word(x.dtype, [&](auto w) {
    using W = decltype(w);
    const W* px = x.data<W>();
    W* po = out.data<W>();
    walk_gather(out.shape, x.shape, index_strides, dim, [&](int64_t i, int64_t xo, int64_t io) {
      const int64_t v = idx[io];
      if (v < 0 || v >= size) bad_index(v, io, size);
      po[i] = px[xo + v * xst];
    });
  });
}

// Serial, in out's order: the one order every backend adds in (so it needs no sort order).
void CpuBackend::index_gather_backward(const Tensor& index, const Tensor*,
                                       const std::vector<int64_t>& index_strides, int64_t dim,
                                       const Tensor& dy, const Tensor& dx) {
  const int64_t size = dx.shape[dim], xst = contiguous_strides(dx.shape)[dim];
  const int32_t* idx = dy.numel() ? index.data<int32_t>() : nullptr;
  dispatch_floating(dx.dtype, "gather backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    // The sums: in dx itself, or for the halves in a float buffer rounded once at the end.
    std::vector<M> buf(is_half_v<T> ? static_cast<size_t>(dx.numel()) : 0);
    T* pdx = dx.data<T>();
    M* acc = is_half_v<T> ? buf.data() : reinterpret_cast<M*>(pdx);
    std::fill_n(acc, dx.numel(), M(0));
    const T* g = dy.data<T>();
    walk_gather(dy.shape, dx.shape, index_strides, dim, [&](int64_t i, int64_t xo, int64_t io) {
      const int64_t v = idx[io];
      if (v < 0 || v >= size) bad_index(v, io, size);
      acc[xo + v * xst] += M(g[i]);
    });
    if constexpr (is_half_v<T>)
      for (int64_t i = 0, n = dx.numel(); i < n; ++i) pdx[i] = T(buf[i]);
  });
}

void CpuBackend::triangle(const Tensor& x, int64_t k, bool upper, const Tensor& out) {
  const int64_t R = x.shape[x.dim() - 2], C = x.shape[x.dim() - 1];
  const int64_t rows = R ? x.numel() / C : 0;
  if (x.numel() == 0) return;
  dispatch_word(x.dtype, [&](auto w) {
    using W = decltype(w);
    const W* px = x.data<W>();
    W* po = out.data<W>();
    par_items(rows, C, [&](int64_t b, int64_t e) {
      for (int64_t row = b; row < e; ++row) {
        const int64_t r = row % R;
        for (int64_t c = 0; c < C; ++c) {
          const bool keep = upper ? c - r >= k : c - r <= k;
          po[row * C + c] = keep ? px[row * C + c] : W(0);
        }
      }
    });
  });
}

}  // namespace lc
