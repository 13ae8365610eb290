// Adam / AdamW over every parameter of a step in one launch (multi-tensor):
// the kernel gets a table of (param, grad, moments, size, bias corrections)
// as its argument and each block finds its tensor by binary search over the
// blocks' prefix sums. The update is element for element the CPU backend's,
// which follows torch.optim.Adam / AdamW (single-tensor path). Half parameters
// (with their gradients and moments in the same dtype) update in float, each
// stored value rounded once, as torch's fused Adam does; float32 adapters on a
// half model are plain float32 parameters here.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

constexpr int kAdamChunk = 2048;  // elements per block
// Table entries per launch: the argument stays below the 32 KB kernel-argument
// limit of CUDA 12.1+ drivers (every driver that runs this CUDA 13 build).
constexpr int kAdamMaxTensors = 320;

struct AdamEntry {
  void* p;
  const void* g;
  void* m;
  void* v;
  void* vmax;  // amsgrad only
  int64_t n;
  double step_size;  // lr / (1 - beta1^step)
  double bc2_sqrt;   // sqrt(1 - beta2^step)
};
struct AdamTable {
  int count;
  int64_t block_start[kAdamMaxTensors + 1];  // prefix sums of blocks per tensor
  AdamEntry e[kAdamMaxTensors];
};
static_assert(sizeof(AdamTable) < 32000, "the Adam table must fit in the kernel arguments");

struct AdamScalars {
  double beta1, beta2, eps, weight_decay, decay;  // decay = 1 - lr * wd (AdamW)
  bool l2, shrink;
};

template <typename T>
__global__ void adam_kernel(const __grid_constant__ AdamTable tab, AdamScalars s) {
  const int64_t b = blockIdx.x;
  int lo = 0, hi = tab.count - 1;  // the last tensor whose first block is <= b
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (tab.block_start[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  const AdamEntry& e = tab.e[lo];
  T* p = static_cast<T*>(e.p);
  const T* g = static_cast<const T*>(e.g);
  T* m = static_cast<T*>(e.m);
  T* v = static_cast<T*>(e.v);
  T* vmax = static_cast<T*>(e.vmax);
  using A = opmath_t<T>;
  const A step_size = static_cast<A>(e.step_size), bc2_sqrt = static_cast<A>(e.bc2_sqrt);
  const A b1 = static_cast<A>(s.beta1), b2 = static_cast<A>(s.beta2);
  const A omb1 = static_cast<A>(1.0 - s.beta1), omb2 = static_cast<A>(1.0 - s.beta2);
  const A eps = static_cast<A>(s.eps), wd = static_cast<A>(s.weight_decay);
  const A decay = static_cast<A>(s.decay);
  const int64_t start = (b - tab.block_start[lo]) * kAdamChunk;
  const int64_t end = min(e.n, start + kAdamChunk);
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    A pi = ld(p[i]), gi = ld(g[i]);
    if (s.shrink) pi = pi * decay;
    if (s.l2) gi = gi + wd * pi;
    A mi = ld(m[i]) * b1 + omb1 * gi;
    A vi = ld(v[i]) * b2 + omb2 * gi * gi;
    m[i] = static_cast<T>(mi);
    v[i] = static_cast<T>(vi);
    A vv = vi;
    if (vmax) {
      vv = max(ld(vmax[i]), vi);
      vmax[i] = static_cast<T>(vv);
    }
    A denom = d_sqrt(vv) / bc2_sqrt + eps;
    p[i] = static_cast<T>(pi - step_size * (mi / denom));
  }
}

// ---- clip_grad_norm_: sum of squares per chunk (double), one block adds the partials in
// order (deterministic), then every gradient is scaled by the coefficient it left on the device.
// The grads may mix dtypes (a half model's float32 adapters): each entry names its own.
constexpr int kClipChunk = 8192;  // elements per block
constexpr int kClipMaxTensors = 900;

struct ClipEntry {
  void* g;
  int64_t n;
  int dtype;  // DType
};
struct ClipTable {
  int count;
  int64_t block_start[kClipMaxTensors + 1];
  ClipEntry e[kClipMaxTensors];
};
static_assert(sizeof(ClipTable) < 32000, "the clip table must fit in the kernel arguments");

__device__ __forceinline__ int clip_entry(const ClipTable& tab, int64_t b) {
  int lo = 0, hi = tab.count - 1;  // the last tensor whose first block is <= b
  while (lo < hi) {
    int mid = (lo + hi + 1) / 2;
    if (tab.block_start[mid] <= b) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

template <typename T>
__device__ double clip_sumsq(const T* g, int64_t start, int64_t end) {
  double acc = 0;
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
    const double v = static_cast<double>(ld(g[i]));
    acc += v * v;
  }
  return acc;
}

__global__ void clip_sumsq_kernel(const __grid_constant__ ClipTable tab, double* partial) {
  const int64_t b = blockIdx.x;
  const int k = clip_entry(tab, b);
  const ClipEntry& e = tab.e[k];
  const int64_t start = (b - tab.block_start[k]) * kClipChunk;
  const int64_t end = min(e.n, start + kClipChunk);
  double acc = 0;
  switch (static_cast<DType>(e.dtype)) {
    case DType::F64: acc = clip_sumsq(static_cast<const double*>(e.g), start, end); break;
    case DType::BF16: acc = clip_sumsq(static_cast<const bf16*>(e.g), start, end); break;
    case DType::F16: acc = clip_sumsq(static_cast<const f16*>(e.g), start, end); break;
    default: acc = clip_sumsq(static_cast<const float*>(e.g), start, end); break;
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) partial[b] = acc;
}

// One block: the partials of every launch so far, in order; the norm (S, the grads' promoted
// dtype) and the coefficient out. torch: clip_coef = max_norm / (total_norm + 1e-6), clamped to
// 1, as tensor ops in the norm's dtype (each rounded to it); a NaN norm scales by 1 (leaves the
// grads as they are), as the CPU does. coef: that value, widened to double.
template <typename S>
__global__ void clip_total_kernel(const double* partial, int64_t n, double max_norm, S* norm, double* coef) {
  using A = opmath_t<S>;
  double acc = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) acc += partial[i];
  acc = block_sum(acc);
  if (threadIdx.x == 0) {
    const S nrm = static_cast<S>(sqrt(acc));
    *norm = nrm;
    const S denom = static_cast<S>(ld(nrm) + static_cast<A>(1e-6));
    const S c = static_cast<S>(static_cast<A>(max_norm) / ld(denom));
    *coef = ld(c) <= A(1) ? static_cast<double>(ld(c)) : 1.0;
  }
}

// Each grad times the coefficient in its own arithmetic type, rounded once.
template <typename T>
__device__ void clip_scale(T* g, int64_t start, int64_t end, double coef) {
  const opmath_t<T> c = static_cast<opmath_t<T>>(coef);
  for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) g[i] = static_cast<T>(ld(g[i]) * c);
}

__global__ void clip_scale_kernel(const __grid_constant__ ClipTable tab, const double* coef) {
  const int64_t b = blockIdx.x;
  const int k = clip_entry(tab, b);
  const ClipEntry& e = tab.e[k];
  const double c = *coef;
  const int64_t start = (b - tab.block_start[k]) * kClipChunk;
  const int64_t end = min(e.n, start + kClipChunk);
  switch (static_cast<DType>(e.dtype)) {
    case DType::F64: clip_scale(static_cast<double*>(e.g), start, end, c); break;
    case DType::BF16: clip_scale(static_cast<bf16*>(e.g), start, end, c); break;
    case DType::F16: clip_scale(static_cast<f16*>(e.g), start, end, c); break;
    default: clip_scale(static_cast<float*>(e.g), start, end, c); break;
  }
}

}  // namespace

// ================================================================ methods

void CudaBackend::clip_grad_norm_(const std::vector<Tensor>& grads, double max_norm,
                                  bool skip_nonfinite, const Tensor& norm) {
  Guard g(c_);
  // The tables of the launches (more than kClipMaxTensors gradients take several).
  std::vector<ClipTable> tables;
  std::vector<int64_t> first_block;  // each table's first block in the partials
  int64_t total_blocks = 0;
  for (const Tensor& t : grads) {
    const int64_t n = t.numel();
    if (n == 0) continue;
    const int64_t nb = (n + kClipChunk - 1) / kClipChunk;
    if (tables.empty() || tables.back().count == kClipMaxTensors ||
        tables.back().block_start[tables.back().count] + nb > 0x7fffffffLL) {
      tables.emplace_back();
      tables.back().count = 0;
      tables.back().block_start[0] = 0;
      first_block.push_back(total_blocks);
    }
    ClipTable& tab = tables.back();
    tab.e[tab.count] = ClipEntry{t.raw(), n, static_cast<int>(t.dtype)};
    tab.block_start[tab.count + 1] = tab.block_start[tab.count] + nb;
    ++tab.count;
    total_blocks += nb;
  }
  Tensor partial = scratch(c_, {std::max<int64_t>(total_blocks, 1)}, DType::F64);
  Tensor coef = scratch(c_, {}, DType::F64);
  for (size_t k = 0; k < tables.size(); ++k) {
    const int64_t blocks = tables[k].block_start[tables[k].count];
    clip_sumsq_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c_.stream>>>(tables[k], dp<double>(partial) + first_block[k]);
    launched(c_, "clip grad norm");
  }
  bool finite = true;
  dispatch_floating(norm.dtype, "clip grad norm", [&](auto z) {
    using S = decltype(z);
    clip_total_kernel<S><<<1, 1024, 0, c_.stream>>>(dp<double>(partial), total_blocks, max_norm, dp<S>(norm), dp<double>(coef));
    launched(c_, "clip grad norm");
    if (skip_nonfinite) {
      S host{};
      check(cudaMemcpyAsync(&host, dp<S>(norm), sizeof(S), cudaMemcpyDeviceToHost, c_.stream), "copy from the GPU");
      sync(c_);
      finite = std::isfinite(static_cast<double>(host));
    }
  });
  if (!finite) return;
  for (const ClipTable& tab : tables) {
    const int64_t blocks = tab.block_start[tab.count];
    clip_scale_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, c_.stream>>>(tab, dp<double>(coef));
    launched(c_, "clip grad norm");
  }
}

void CudaBackend::adam_step(const std::vector<AdamParam>& params, const AdamConfig& cfg) {
  Guard g(c_);
  AdamScalars s{cfg.beta1, cfg.beta2, cfg.eps, cfg.weight_decay, 1.0 - cfg.lr * cfg.weight_decay,
                !cfg.decoupled && cfg.weight_decay != 0, cfg.decoupled && cfg.weight_decay != 0};
  for (DType dt : {DType::F32, DType::F64, DType::BF16, DType::F16}) {
    AdamTable tab;
    tab.count = 0;
    int64_t blocks = 0;
    auto flush = [&]() {
      if (tab.count == 0) return;
      tab.block_start[tab.count] = blocks;
      if (blocks > 0) {
        dispatch_floating(dt, "adam", [&](auto z) {
          using T = decltype(z);
          adam_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, c_.stream>>>(tab, s);
        });
        launched(c_, "adam step");
      }
      tab.count = 0;
      blocks = 0;
    };
    for (const AdamParam& ap : params) {
      if (ap.param.dtype != dt) continue;
      const int64_t n = ap.param.numel();
      if (n == 0) continue;
      const int64_t nb = (n + kAdamChunk - 1) / kAdamChunk;
      if (tab.count == kAdamMaxTensors || blocks + nb > 0x7fffffffLL) flush();
      AdamEntry& e = tab.e[tab.count];
      e.p = ap.param.raw();
      e.g = ap.grad.raw();
      e.m = ap.exp_avg.raw();
      e.v = ap.exp_avg_sq.raw();
      e.vmax = cfg.amsgrad ? ap.max_exp_avg_sq.raw() : nullptr;
      e.n = n;
      const double bc1 = 1.0 - std::pow(cfg.beta1, static_cast<double>(ap.step));
      const double bc2 = 1.0 - std::pow(cfg.beta2, static_cast<double>(ap.step));
      e.step_size = cfg.lr / bc1;
      e.bc2_sqrt = std::sqrt(bc2);
      tab.block_start[tab.count] = blocks;
      blocks += nb;
      ++tab.count;
    }
    flush();
  }
}

}  // namespace lc::cuda
