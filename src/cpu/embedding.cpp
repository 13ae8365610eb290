// Embedding on the CPU: a row gather forward, and a backward that adds the
// rows of dy at their ids in position order (the order every backend uses).
// For bfloat16/float16 the sums are kept in float and rounded once per row.
#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_backend.h"

namespace lc {
namespace {

void check_ids(const int32_t* id, int64_t n, int64_t V, const char* op) {
  for (int64_t i = 0; i < n; ++i)
    if (id[i] < 0 || id[i] >= V)
      fail(std::string(op) + ": id " + std::to_string(id[i]) + " at index " + std::to_string(i) +
           " is outside [0, " + std::to_string(V) + ")");
}

// y[0:n] += a * x[0:n]
template <typename T>
inline void row_axpy(T* y, T a, const T* x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

}  // namespace

void CpuBackend::embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out) {
  int64_t N = ids.numel(), V = weight.shape[0], D = weight.shape[1];
  const int32_t* id = ids.data<int32_t>();
  check_ids(id, N, V, "embedding");
  if (D == 0) return;
  dispatch_floating(weight.dtype, "embedding", [&](auto z) {
    using T = decltype(z);
    const T* w = weight.data<T>();
    T* o = out.data<T>();
    par_items(N, D, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n)
        std::memcpy(o + n * D, w + static_cast<int64_t>(id[n]) * D, sizeof(T) * D);
    });
  });
}

// Walks the positions in order itself, so it needs no sort order.
void CpuBackend::embedding_backward(const Tensor& ids, const Tensor*, const Tensor& dy,
                                    const Tensor& dweight) {
  int64_t N = ids.numel(), V = dweight.shape[0], D = dweight.shape[1];
  const int32_t* id = N ? ids.data<int32_t>() : nullptr;
  check_ids(id, N, V, "embedding backward");
  if (V * D == 0) return;
  dispatch_floating(dweight.dtype, "embedding backward", [&](auto z) {
    using T = decltype(z);
    T* dw = dweight.data<T>();
    std::fill_n(dw, V * D, T(0));
    if (N == 0) return;
    const T* g = dy.data<T>();
    if constexpr (is_half_v<T>) {
      // The positions grouped by id (stably: each id's rows in position order), then each
      // id's row summed in float and rounded once: no sum is kept in the half type.
      std::vector<int64_t> order(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n) order[n] = n;
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return id[a] < id[b]; });
      std::vector<int64_t> starts;  // where each id's run begins in `order`
      for (int64_t n = 0; n < N; ++n)
        if (n == 0 || id[order[n]] != id[order[n - 1]]) starts.push_back(n);
      starts.push_back(N);
      const int64_t runs = static_cast<int64_t>(starts.size()) - 1;
      par_items(runs, D * (N / std::max<int64_t>(runs, 1)), [&](int64_t b, int64_t e) {
        std::vector<float> acc(static_cast<size_t>(D));
        for (int64_t u = b; u < e; ++u) {
          std::fill(acc.begin(), acc.end(), 0.0f);
          for (int64_t q = starts[u]; q < starts[u + 1]; ++q) {
            const T* gr = g + order[q] * D;
            for (int64_t d = 0; d < D; ++d) acc[d] += static_cast<float>(gr[d]);
          }
          T* row = dw + static_cast<int64_t>(id[order[starts[u]]]) * D;
          for (int64_t d = 0; d < D; ++d) row[d] = T(acc[d]);
        }
      });
      return;
    } else {
    // Columns split over threads: each walks every id over its own columns,
    // so repeated ids never race.
    par_items(D, N, [&](int64_t c0, int64_t c1) {
      for (int64_t n = 0; n < N; ++n)
        row_axpy(dw + static_cast<int64_t>(id[n]) * D + c0, T(1), g + n * D + c0, c1 - c0);
    });
    }
  });
}

}  // namespace lc
