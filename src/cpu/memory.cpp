// CPU memory: 64-byte aligned host allocations, host copies, and copies
// between tensors with a dtype cast.
#include <cstdlib>
#include <cstring>
#include <list>
#include <mutex>
#include <utility>
#include <vector>
#include <string>
#include <type_traits>
#include <unordered_map>

#include "../dispatch.h"
#include "../half.h"
#include "cpu_backend.h"

namespace lc {

namespace {
// Freed blocks of 128 KiB and more are kept for reuse. A training step frees and
// reallocates the same buffers every time (the logits over a 49k vocabulary are
// 100 MB; a layer's activations a few MiB). glibc serves blocks that size with
// mmap, or trims them off its heap when freed, and getting them back costs a page
// fault and a cleared page per 4 KiB: a 2 MiB product output paid ~900 faults,
// three times the product's own time, on every call. Blocks are matched by exact
// (page-rounded) size; at most kCacheBytes are held, the oldest freed first.
constexpr size_t kCachedBlock = size_t(128) << 10;
#if defined(__SANITIZE_ADDRESS__)
constexpr size_t kCacheBytes = 0;  // AddressSanitizer must see every free to catch later use
#else
constexpr size_t kCacheBytes = size_t(512) << 20;
#endif
struct BlockCache {
  std::mutex mu;
  std::list<std::pair<size_t, void*>> fifo;  // oldest first
  // Per size, the entries of fifo in the order freed (a hit takes the newest, still warm in cache).
  std::unordered_map<size_t, std::vector<std::list<std::pair<size_t, void*>>::iterator>> by_size;
  size_t bytes = 0;
};
BlockCache& block_cache() {
  static BlockCache* c = new BlockCache;  // never destroyed: tensors may be freed during exit
  return *c;
}
size_t round_page(size_t bytes) { return (bytes + 4095) / 4096 * 4096; }
}  // namespace

void* CpuBackend::allocate(size_t bytes) {
  const bool cached = bytes >= kCachedBlock;
  const size_t n = cached ? round_page(bytes) : (bytes + 63) / 64 * 64;
  if (cached) {
    BlockCache& c = block_cache();
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.by_size.find(n);
    if (it != c.by_size.end() && !it->second.empty()) {
      auto entry = it->second.back();
      it->second.pop_back();
      void* p = entry->second;
      c.fifo.erase(entry);
      c.bytes -= n;
      return p;
    }
  }
  // 64-byte alignment suits the vector loads of BLAS kernels.
  void* p = std::aligned_alloc(64, n);
  if (!p) throw Error("out of memory allocating " + std::to_string(bytes) + " bytes on the CPU",
                      "ERR_OUT_OF_MEMORY");
  return p;
}

void CpuBackend::deallocate(void* p, size_t bytes) {
  if (p && bytes >= kCachedBlock && round_page(bytes) <= kCacheBytes) {
    BlockCache& c = block_cache();
    const size_t n = round_page(bytes);
    std::vector<void*> drop;
    {
      std::lock_guard<std::mutex> lock(c.mu);
      c.by_size[n].push_back(c.fifo.emplace(c.fifo.end(), n, p));
      c.bytes += n;
      while (c.bytes > kCacheBytes) {
        // The oldest entry is the first of its size's list.
        auto& same = c.by_size[c.fifo.front().first];
        same.erase(same.begin());
        drop.push_back(c.fifo.front().second);
        c.bytes -= c.fifo.front().first;
        c.fifo.pop_front();
      }
    }
    for (void* q : drop) std::free(q);
    return;
  }
  std::free(p);
}

void CpuBackend::write_from_host(const Tensor& dst, const void* src) {
  std::memcpy(dst.raw(), src, dst.numel() * dtype_size(dst.dtype));
}

void CpuBackend::read_to_host(const Tensor& src, void* dst) {
  std::memcpy(dst, src.raw(), src.numel() * dtype_size(src.dtype));
}

void CpuBackend::copy(const Tensor& dst, const Tensor& src) {
  int64_t n = dst.numel();
  if (dst.dtype == src.dtype) {
    if (dst.raw() != src.raw()) std::memmove(dst.raw(), src.raw(), n * dtype_size(dst.dtype));
    return;
  }
  if (dst.dtype == DType::I32) {
    // Float to int32 truncates; NaN, infinities and values outside int32's range are refused
    // (converting them is undefined behaviour), before anything is written.
    dispatch_floating(src.dtype, "copy", [&](auto z) {
      const auto* s = src.data<decltype(z)>();
      for (int64_t i = 0; i < n; ++i) {
        const double v = static_cast<opmath_t<decltype(z)>>(s[i]);
        if (!(v > -2147483649.0 && v < 2147483648.0)) throw int32_conversion_error(i, v);
      }
    });
  }
  // Every cast goes through the source's value (float for the halves) and rounds once into the
  // destination (to nearest even for the halves; float64 -> half rounds through float, as torch).
  auto cast = [n](auto* d, const auto* s) {
    using D = std::remove_pointer_t<decltype(d)>;
    using S = std::remove_const_t<std::remove_pointer_t<decltype(s)>>;
    for (int64_t i = 0; i < n; ++i) {
      if constexpr (std::is_same_v<D, int32_t>)
        d[i] = static_cast<int32_t>(static_cast<opmath_t<S>>(s[i]));
      else if constexpr (is_half_v<S> && is_half_v<D>)
        d[i] = D(static_cast<float>(s[i]));
      else
        d[i] = static_cast<D>(s[i]);
    }
  };
  auto from = [&](auto* d) {
    switch (src.dtype) {
      case DType::F32: cast(d, src.data<float>()); break;
      case DType::F64: cast(d, src.data<double>()); break;
      case DType::I32: cast(d, src.data<int32_t>()); break;
      case DType::BF16: cast(d, src.data<bf16>()); break;
      case DType::F16: cast(d, src.data<f16>()); break;
    }
  };
  switch (dst.dtype) {
    case DType::F32: from(dst.data<float>()); break;
    case DType::F64: from(dst.data<double>()); break;
    case DType::I32: from(dst.data<int32_t>()); break;
    case DType::BF16: from(dst.data<bf16>()); break;
    case DType::F16: from(dst.data<f16>()); break;
  }
}

}  // namespace lc
