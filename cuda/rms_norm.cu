// RMSNorm on CUDA, as Hugging Face's LlamaRMSNorm: one block per row, sums in
// double where the CPU sums in double; the weight gradient in two
// deterministic passes (row chunks, then a fixed-order sum over them). Half
// data (T) computes in float; rstd (R) is T or float32 beside halves.
#include <algorithm>

#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

// One block per row (block-uniform row loop, so block_sum's barriers are too).
template <typename T, typename Rs>
__global__ void rms_norm_forward_kernel(const T* x, const T* w, double eps, T* y, Rs* rstd,
                                        int64_t R, int64_t D) {
  using A = opmath_t<T>;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const T* xr = x + r * D;
    T* yr = y + r * D;
    double ss = 0;
    for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
      ss += static_cast<double>(xr[j]) * static_cast<double>(xr[j]);
    ss = block_sum(ss);
    const A rs = static_cast<A>(1.0 / sqrt(ss / static_cast<double>(D) + eps));
    if (threadIdx.x == 0) rstd[r] = static_cast<Rs>(rs);
    // weight * (x * rstd), in this order, as LlamaRMSNorm and the CPU; LlamaRMSNorm rounds
    // x * rstd to the input's dtype before the weight multiplies it (a no-op for float).
    if (w)
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        yr[j] = static_cast<T>(ld(w[j]) * ld(static_cast<T>(ld(xr[j]) * rs)));
    else
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x) yr[j] = static_cast<T>(ld(xr[j]) * rs);
  }
}

// dx_k = r g_k - r^3 x_k / D * sum_j g_j x_j, g = dy * weight; one block per row.
template <typename T, typename Rs>
__global__ void rms_norm_backward_dx_kernel(const T* dy, const T* x, const T* w, const Rs* rstd,
                                            T* dx, int64_t R, int64_t D) {
  using A = opmath_t<T>;
  for (int64_t r = blockIdx.x; r < R; r += gridDim.x) {
    const T* xr = x + r * D;
    const T* gr = dy + r * D;
    T* dr = dx + r * D;
    double dot = 0;
    if (w)
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        dot += static_cast<double>(gr[j]) * static_cast<double>(w[j]) * static_cast<double>(xr[j]);
    else
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        dot += static_cast<double>(gr[j]) * static_cast<double>(xr[j]);
    dot = block_sum(dot);
    const double rs = static_cast<double>(rstd[r]);
    const A cc = static_cast<A>(rs * rs * rs * dot / static_cast<double>(D));
    const A rt = static_cast<A>(rs);
    if (w)
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        dr[j] = static_cast<T>(rt * (ld(gr[j]) * ld(w[j])) - cc * ld(xr[j]));
    else
      for (int64_t j = threadIdx.x; j < D; j += blockDim.x)
        dr[j] = static_cast<T>(rt * ld(gr[j]) - cc * ld(xr[j]));
  }
}

constexpr int kColTile = 32;  // columns per block of the dweight reduction (blockDim.x)
constexpr int kColRows = 8;   // row lanes per block (blockDim.y)

// First pass of dweight_j = sum_r dy_rj x_rj r_r: block (x, y) sums column tile
// x over row chunk y into part[y, j] (double). Threads over columns keep the
// reads coalesced; no atomics, so the result is deterministic.
template <typename T, typename Rs>
__global__ void rms_norm_dweight_partial_kernel(const T* dy, const T* x, const Rs* rstd,
                                                int64_t R, int64_t D, int64_t chunk_rows,
                                                double* part) {
  __shared__ double sh[kColRows][kColTile];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTile + tx;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * chunk_rows;
  const int64_t r1 = min(R, r0 + chunk_rows);
  double acc = 0;
  if (j < D)
    for (int64_t r = r0 + ty; r < r1; r += kColRows)
      acc += static_cast<double>(dy[r * D + j]) *
             (static_cast<double>(x[r * D + j]) * static_cast<double>(rstd[r]));
  sh[ty][tx] = acc;
  __syncthreads();
  if (ty == 0 && j < D) {
    double s = 0;
    for (int k = 0; k < kColRows; ++k) s += sh[k][tx];
    part[static_cast<int64_t>(blockIdx.y) * D + j] = s;
  }
}

// Second pass: dweight_j = sum over the P chunks, in chunk order.
template <typename T>
__global__ void rms_norm_dweight_final_kernel(const double* part, int64_t P, int64_t D, T* dw) {
  LC_GRID_STRIDE(j, D) {
    double s = 0;
    for (int64_t p = 0; p < P; ++p) s += part[p * D + j];
    dw[j] = static_cast<T>(s);
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::rms_norm_forward(const Tensor& x, const Tensor* weight, double eps,
                                   const Tensor& y, const Tensor& rstd) {
  Guard g(c_);
  const int64_t D = x.shape.back(), R = D ? x.numel() / D : 0;
  if (R == 0 || D == 0) return;  // D == 0 is filled by the op layer
  dispatch_with_side(x.dtype, rstd.dtype, "rms norm", "rstd", [&](auto z, auto zr) {
    using T = decltype(z);
    using Rs = decltype(zr);
    rms_norm_forward_kernel<T, Rs><<<row_grid(R), row_threads(D), 0, c_.stream>>>(
        dp<T>(x), weight ? dp<T>(*weight) : nullptr, eps, dp<T>(y), dp<Rs>(rstd), R, D);
    launched(c_, "rms norm");
  });
}

void CudaBackend::rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                                    const Tensor& rstd, const Tensor* dx, const Tensor* dweight) {
  Guard g(c_);
  const int64_t D = x.shape.back(), R = D ? x.numel() / D : 0;
  if (R == 0 || D == 0) return;  // empty x is handled by the op layer
  dispatch_with_side(x.dtype, rstd.dtype, "rms norm backward", "rstd", [&](auto z, auto zr) {
    using T = decltype(z);
    using Rs = decltype(zr);
    if (dx) {
      rms_norm_backward_dx_kernel<T, Rs><<<row_grid(R), row_threads(D), 0, c_.stream>>>(
          dp<T>(dy), dp<T>(x), weight ? dp<T>(*weight) : nullptr, dp<Rs>(rstd), dp<T>(*dx), R, D);
      launched(c_, "rms norm backward");
    }
    if (dweight) {
      // Row chunks: enough blocks to fill the device, each chunk at least
      // kColRows rows; then a fixed-order sum over the chunks.
      const int64_t col_tiles = ceil_div(D, kColTile);
      const int64_t want = ceil_div(8 * std::max(c_.multiprocessors, 1), col_tiles);
      int64_t P = std::max<int64_t>(1, std::min<int64_t>({want, ceil_div(R, kColRows), 1024}));
      const int64_t chunk_rows = ceil_div(R, P);
      P = ceil_div(R, chunk_rows);  // no empty chunks
      Tensor part = scratch(c_, {P * D}, DType::F64);
      rms_norm_dweight_partial_kernel<T, Rs>
          <<<dim3(static_cast<unsigned>(col_tiles), static_cast<unsigned>(P)),
             dim3(kColTile, kColRows), 0, c_.stream>>>(dp<T>(dy), dp<T>(x), dp<Rs>(rstd), R, D,
                                                       chunk_rows, dp<double>(part));
      launched(c_, "rms norm backward");
      rms_norm_dweight_final_kernel<T><<<grid_for(D), kThreads, 0, c_.stream>>>(
          dp<double>(part), P, D, dp<T>(*dweight));
      launched(c_, "rms norm backward");
    }
  });
}

}  // namespace lc::cuda
