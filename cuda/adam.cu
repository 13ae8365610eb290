// Adam / AdamW over every parameter of a step in one launch (multi-tensor):
// the kernel gets a table of (param, grad, moments, size, bias corrections)
// as its argument and each block finds its tensor by binary search over the
// blocks' prefix sums. The update is element for element the CPU backend's,
// which follows torch.optim.Adam / AdamW (single-tensor path). Half parameters
// (with their gradients and moments in the same dtype) update in float, each
// stored value rounded once, as torch's fused Adam does; float32 adapters on a
// half model are plain float32 parameters here.
#include <algorithm>

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

}  // namespace

// ================================================================ methods

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
