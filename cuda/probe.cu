// The kernel the probe (runtime.cpp) launches on each device before calling it
// usable: a GPU the binary has neither machine code nor PTX for, or whose
// driver cannot compile the PTX, answers every query and fails only at its
// first launch.
#include "runtime.h"

namespace lc::cuda {
namespace {

__global__ void probe_kernel(int* out, int value) {
  if (blockIdx.x == 0 && threadIdx.x == 0) *out = value;
}

}  // namespace

cudaError_t probe_launch(int ordinal, int value, int* read) {
  cudaError_t e = cudaSetDevice(ordinal);
  if (e != cudaSuccess) return e;
  int* d = nullptr;
  e = cudaMalloc(reinterpret_cast<void**>(&d), sizeof(int));
  if (e != cudaSuccess) return e;
  probe_kernel<<<1, 32, 0, nullptr>>>(d, value);
  e = cudaGetLastError();
  if (e == cudaSuccess) e = cudaMemcpy(read, d, sizeof(int), cudaMemcpyDeviceToHost);
  cudaError_t f = cudaFree(d);
  return e != cudaSuccess ? e : f;
}

}  // namespace lc::cuda
