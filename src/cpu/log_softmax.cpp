// Log-softmax over the last dim: x - max - log(sum exp(x - max)), the sum in double; and its
// backward dx = dy - exp(y) * sum(dy). Halves are read as float and rounded once on store.
#include <algorithm>
#include <cmath>

#include "cpu_backend.h"

namespace lc {

void CpuBackend::log_softmax(const Tensor& x, const Tensor& y) {
  dispatch_floating(x.dtype, "log softmax", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const int64_t cols = x.shape.back(), rows = x.numel() / cols;
    const T* px = x.data<T>();
    T* py = y.data<T>();
    par_items(rows, cols, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T* r = px + i * cols;
        T* o = py + i * cols;
        M mx = M(r[0]);
        for (int64_t j = 1; j < cols; ++j) mx = std::max(mx, M(r[j]));
        double s = 0;
        for (int64_t j = 0; j < cols; ++j) s += std::exp(static_cast<double>(M(r[j])) - static_cast<double>(mx));
        const double lse = static_cast<double>(mx) + std::log(s);
        for (int64_t j = 0; j < cols; ++j) o[j] = static_cast<T>(static_cast<double>(M(r[j])) - lse);
      }
    });
  });
}

void CpuBackend::log_softmax_backward(const Tensor& y, const Tensor& dy, const Tensor& dx) {
  dispatch_floating(y.dtype, "log softmax backward", [&](auto z) {
    using T = decltype(z);
    using M = opmath_t<T>;
    const int64_t cols = y.shape.back(), rows = y.numel() / cols;
    const T* py = y.data<T>();
    const T* pg = dy.data<T>();
    T* pd = dx.data<T>();
    par_items(rows, cols, [&](int64_t r0, int64_t r1) {
      for (int64_t i = r0; i < r1; ++i) {
        const T* yr = py + i * cols;
        const T* gr = pg + i * cols;
        T* dr = pd + i * cols;
        double s = 0;
        for (int64_t j = 0; j < cols; ++j) s += static_cast<double>(M(gr[j]));
        for (int64_t j = 0; j < cols; ++j)
          dr[j] = static_cast<T>(static_cast<double>(M(gr[j])) - std::exp(static_cast<double>(M(yr[j]))) * s);
      }
    });
  });
}

}  // namespace lc
