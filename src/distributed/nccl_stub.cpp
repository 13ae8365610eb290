// NCCL in a build without the CUDA backend: everything reports that it cannot be used.
#include "nccl_api.h"

namespace lc::dist {
namespace {
[[noreturn]] void unavailable() {
  throw Error("NCCL is not available: " + nccl_info().error, "ERR_DIST_UNAVAILABLE");
}
}  // namespace

const NcclInfo& nccl_info() {
  static const NcclInfo i = [] {
    NcclInfo v;
    v.error = "this build of lora-cuda was compiled without the CUDA backend, which NCCL needs";
    return v;
  }();
  return i;
}

std::vector<uint8_t> nccl_unique_id() { unavailable(); }
void nccl_init(int, int, const std::vector<uint8_t>&, int, double) { unavailable(); }
bool nccl_initialized() { return false; }
int nccl_device() { return -1; }
void nccl_all_reduce(const std::vector<Tensor>&, bool, double, size_t) { unavailable(); }
void nccl_broadcast(const std::vector<Tensor>&, int, double, size_t) { unavailable(); }
void nccl_barrier(double) { unavailable(); }
void nccl_destroy() {}

}  // namespace lc::dist
