// The CUDA interface of a build without the CUDA backend (LORA_CUDA=OFF, or
// no nvcc at build time): everything reports that CUDA is not compiled in.
#include "cuda_api.h"

namespace lc::cuda {
namespace {
[[noreturn]] void unavailable() {
  throw Error("CUDA is not available: " + info().reason, "ERR_CUDA_UNAVAILABLE");
}
}  // namespace

const Info& info() {
  static const Info i = [] {
    Info v;
    v.reason = "this build of lora-cuda was compiled without the CUDA backend";
    return v;
  }();
  return i;
}

Backend& backend(int) { unavailable(); }
void synchronize(int) {}
MemoryStats memory_stats(int) { return {}; }
void reset_peak(int) {}
void empty_cache(int) {}
void set_allow_tf32(bool) {}
bool allow_tf32() { return false; }
int64_t event_record(int) { unavailable(); }
double event_elapsed_ms(int64_t, int64_t) { unavailable(); }
void event_destroy(int64_t) {}

}  // namespace lc::cuda
