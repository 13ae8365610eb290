// NCCL, loaded at run time. The build machines have no NCCL headers or
// libraries, and the addon must load where there is none, so the few types and
// entry points used are declared here (they follow nccl.h of NCCL 2.x, whose
// ABI for these functions has not changed since 2.10) and resolved with dlsym.
//
// Search order: $LORA_CUDA_NCCL (a path to libnccl.so.*) alone when set, else libnccl.so.2
// through the dynamic loader's usual paths (LD_LIBRARY_PATH, the ld.so cache:
// a CUDA toolkit's libnccl2 package, or the directory of the nvidia-nccl
// Python wheel put on LD_LIBRARY_PATH).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>
#include <string>

namespace lc::cuda {

using ncclComm_t = struct ncclComm*;
using ncclResult_t = int;  // 0 = ncclSuccess
constexpr ncclResult_t kNcclInProgress = 7;  // ncclInProgress (2.14+, nonblocking communicators)
struct ncclUniqueId {
  char internal[128];  // NCCL_UNIQUE_ID_BYTES
};
enum ncclDataType_t : int { ncclInt32 = 2, ncclFloat32 = 7, ncclFloat64 = 8 };
enum ncclRedOp_t : int { ncclSum = 0, ncclAvg = 4 };  // ncclAvg: 2.10+

struct Nccl {
  bool loaded = false;
  std::string path;     // the library that was loaded
  std::string version;  // "major.minor.patch"
  int code = 0;         // ncclGetVersion's: 21005 = 2.10.5
  std::string error;    // why it could not be loaded

  ncclResult_t (*get_version)(int*) = nullptr;
  ncclResult_t (*get_unique_id)(ncclUniqueId*) = nullptr;
  ncclResult_t (*comm_init_rank)(ncclComm_t*, int, ncclUniqueId, int) = nullptr;
  ncclResult_t (*comm_destroy)(ncclComm_t) = nullptr;
  ncclResult_t (*comm_abort)(ncclComm_t) = nullptr;
  ncclResult_t (*comm_get_async_error)(ncclComm_t, ncclResult_t*) = nullptr;
  ncclResult_t (*all_reduce)(const void*, void*, size_t, ncclDataType_t, ncclRedOp_t, ncclComm_t,
                             cudaStream_t) = nullptr;
  ncclResult_t (*broadcast)(const void*, void*, size_t, ncclDataType_t, int, ncclComm_t,
                            cudaStream_t) = nullptr;
  ncclResult_t (*group_start)() = nullptr;
  ncclResult_t (*group_end)() = nullptr;
  const char* (*error_string)(ncclResult_t) = nullptr;
  // Optional (2.13+): the last error's details.
  const char* (*last_error)(ncclComm_t) = nullptr;
};

// Loads NCCL once per process; check `loaded` and `error`.
const Nccl& nccl();

}  // namespace lc::cuda
