// A stand-in for NCCL (libnccl-emu.so) with the entry points cuda/nccl.cpp loads, for a communicator
// of one rank: there the collectives leave the data as it is, so in place (as lora-cuda calls them)
// they only check their arguments. It lets the NCCL path of the addon (packing into buckets, the
// stream, the waiting, the errors) run under the CUDA emulator. More than one rank is refused.
#include <cstdlib>
#include <cstring>

#define EMU_EXPORT extern "C" __attribute__((visibility("default")))

namespace {
enum Result : int { kSuccess = 0, kInvalidArgument = 4, kInvalidUsage = 5 };
struct Comm {
  int rank = 0;
  bool aborted = false;
};
struct UniqueId {
  char internal[128];
};
bool valid_type(int t) { return t >= 0 && t <= 9; }
}  // namespace

EMU_EXPORT int ncclGetVersion(int* v) {
  if (!v) return kInvalidArgument;
  *v = 21805;
  return kSuccess;
}
EMU_EXPORT int ncclGetUniqueId(UniqueId* id) {
  if (!id) return kInvalidArgument;
  for (int i = 0; i < 128; ++i) id->internal[i] = static_cast<char>(i * 7 + 1);
  return kSuccess;
}
EMU_EXPORT int ncclCommInitRank(Comm** comm, int nranks, UniqueId, int rank) {
  if (!comm) return kInvalidArgument;
  if (nranks != 1 || rank != 0) return kInvalidUsage;  // one process: no peers to reach
  *comm = new Comm();
  return kSuccess;
}
EMU_EXPORT int ncclCommDestroy(Comm* c) {
  delete c;
  return kSuccess;
}
EMU_EXPORT int ncclCommAbort(Comm* c) {
  delete c;
  return kSuccess;
}
EMU_EXPORT int ncclCommGetAsyncError(Comm* c, int* err) {
  if (!c || !err) return kInvalidArgument;
  *err = kSuccess;
  return kSuccess;
}
EMU_EXPORT int ncclAllReduce(const void* send, void* recv, size_t, int type, int op, Comm* c, void*) {
  if (!c || !send || send != recv || !valid_type(type) || op < 0 || op > 4) return kInvalidArgument;
  return kSuccess;
}
EMU_EXPORT int ncclBroadcast(const void* send, void* recv, size_t, int type, int root, Comm* c, void*) {
  if (!c || !send || send != recv || !valid_type(type) || root != 0) return kInvalidArgument;
  return kSuccess;
}
EMU_EXPORT int ncclGroupStart() { return kSuccess; }
EMU_EXPORT int ncclGroupEnd() { return kSuccess; }
EMU_EXPORT const char* ncclGetErrorString(int r) {
  switch (r) {
    case kSuccess: return "no error";
    case kInvalidArgument: return "invalid argument (run with NCCL_DEBUG=WARN for details)";
    case kInvalidUsage: return "invalid usage (run with NCCL_DEBUG=WARN for details)";
    default: return "unknown result code";
  }
}
