// What the core and the binding know of NCCL: plain C++, no CUDA types. The
// CUDA build implements it in cuda/nccl.cpp (NCCL loaded at run time, as
// cuBLAS is); a build without CUDA links src/distributed/nccl_stub.cpp, which
// reports that NCCL cannot be used.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "../tensor.h"

namespace lc::dist {

struct NcclInfo {
  bool compiled = false;  // this build has the CUDA backend, through which NCCL runs
  bool loaded = false;    // libnccl was found and has what is needed
  std::string path;       // the library loaded
  std::string version;    // "2.21.5"
  std::string error;      // why NCCL cannot be used (names what to install)
};

// Loads libnccl once per process; makes no NCCL call that needs a GPU.
const NcclInfo& nccl_info();

// A new ncclUniqueId (128 bytes), to be passed from rank 0 to the others.
std::vector<uint8_t> nccl_unique_id();

// One communicator per process, on cuda:`device` (ncclCommInitRank, in the
// device's context). Throws ERR_DIST_UNAVAILABLE without NCCL or CUDA.
void nccl_init(int world, int rank, const std::vector<uint8_t>& id, int device, double timeout_s);
bool nccl_initialized();
int nccl_device();

// As mpi_all_reduce and mpi_broadcast (src/distributed/mpi.h), for tensors on
// the communicator's device: packed per dtype, queued on the device's stream,
// then waited for, polling the stream and ncclCommGetAsyncError; a timeout
// aborts the communicator (ncclCommAbort) and throws ERR_DIST_TIMEOUT.
void nccl_all_reduce(const std::vector<Tensor>& tensors, bool mean, double timeout_s, size_t bucket_bytes);
void nccl_broadcast(const std::vector<Tensor>& tensors, int root, double timeout_s, size_t bucket_bytes);
void nccl_barrier(double timeout_s);
void nccl_destroy();

}  // namespace lc::dist
