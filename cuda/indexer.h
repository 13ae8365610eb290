// Strided reads for broadcast and permuted copies: host code builds an
// Indexer, kernels evaluate it. Host-includable (the CUDA backend's C++ files
// use the stride helpers too).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "../src/tensor.h"

#if defined(__CUDACC__)
#define LC_INDEXER_FN __device__ __forceinline__
#else
#define LC_INDEXER_FN inline
#endif

namespace lc::cuda {

constexpr int kMaxDims = 10;

// Reads a tensor in another shape's index order: element i of the output
// shape `size` is at offset sum_d idx_d(i) * stride[d] of the input (a stride
// of 0 broadcasts that dim).
struct Indexer {
  int rank;
  int64_t size[kMaxDims];
  int64_t stride[kMaxDims];
  LC_INDEXER_FN int64_t operator()(int64_t i) const {
    int64_t off = 0;
    for (int d = rank - 1; d >= 0; --d) {
      int64_t s = size[d];
      int64_t q = i / s;
      off += (i - q * s) * stride[d];
      i = q;
    }
    return off;
  }
  // The same for i < 2^32 with every size below 2^32 (fits32): 32-bit divisions, several times
  // cheaper than 64-bit ones on a GPU, which does them in software.
  LC_INDEXER_FN int64_t at32(uint32_t i) const {
    int64_t off = 0;
    for (int d = rank - 1; d >= 0; --d) {
      const uint32_t s = static_cast<uint32_t>(size[d]);
      const uint32_t q = i / s;
      off += static_cast<int64_t>(i - q * s) * stride[d];
      i = q;
    }
    return off;
  }
};

// Whether kernels over n output elements may index with 32 bits (Indexer::at32): n, and so
// every dim's size, below 2^31 (the grid-stride index then never wraps either).
inline bool fits32(int64_t n) { return n < (int64_t{1} << 31); }

// Indexers over one output shape for several inputs (strides in elements,
// one per output dim). Size-1 dims are dropped and neighbouring dims merged
// where every input allows it, so most tensors need one or two dims.
inline std::vector<Indexer> make_indexers(const Shape& out,
                                          const std::vector<std::vector<int64_t>>& strides) {
  std::vector<int64_t> size;
  std::vector<std::vector<int64_t>> st(strides.size());
  for (size_t d = 0; d < out.size(); ++d) {
    if (out[d] == 1) continue;
    bool merge = !size.empty();
    for (size_t k = 0; k < strides.size() && merge; ++k)
      merge = st[k].back() == strides[k][d] * out[d];
    if (merge) {
      size.back() *= out[d];
      for (size_t k = 0; k < strides.size(); ++k) st[k].back() = strides[k][d];
    } else {
      size.push_back(out[d]);
      for (size_t k = 0; k < strides.size(); ++k) st[k].push_back(strides[k][d]);
    }
  }
  if (size.size() > static_cast<size_t>(kMaxDims))
    fail("CUDA: this op supports at most " + std::to_string(kMaxDims) +
         " non-trivial dims after merging, got shape " + shape_str(out));
  std::vector<Indexer> ix(strides.size());
  for (size_t k = 0; k < strides.size(); ++k) {
    ix[k].rank = static_cast<int>(size.size());
    for (size_t d = 0; d < size.size(); ++d) {
      ix[k].size[d] = size[d];
      ix[k].stride[d] = st[k][d];
    }
  }
  return ix;
}

}  // namespace lc::cuda
