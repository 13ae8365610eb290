// MPI, loaded at run time. The addon must load where no MPI is installed, so
// the few entry points used are declared here and resolved with dlsym, as
// cuda/cublas.h does for cuBLAS.
//
// Open MPI's ABI: handles are pointers to global objects of the library
// (MPI_COMM_WORLD is &ompi_mpi_comm_world, MPI_FLOAT &ompi_mpi_float, ...),
// found by dlsym. MPICH's ABI (integer handles; MPICH, Intel MPI, MVAPICH) is
// recognised and refused with a message saying so.
//
// Search order: $LORA_CUDA_MPI (a path to libmpi.so.*) alone when set, else
// libmpi.so.40 (Open MPI 3, 4 and 5) and libmpi.so through the dynamic
// loader's usual paths. The library is opened RTLD_GLOBAL: Open MPI's plugins (mca_*.so)
// resolve their symbols against it.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "../tensor.h"

namespace lc::dist {

struct MpiInfo {
  bool loaded = false;
  std::string path;     // the library that was loaded
  std::string version;  // MPI_Get_library_version's first line ("Open MPI v4.1.4, ...")
  std::string error;    // why it could not be loaded (names what to install)
};

// Loads libmpi once per process (no MPI call is made); check `loaded` and `error`.
const MpiInfo& mpi_info();

// MPI_Init_thread (MPI_THREAD_SERIALIZED) once per process, with MPI_ERRORS_RETURN on
// MPI_COMM_WORLD so that a failed call throws here instead of aborting the job.
// Throws ERR_DIST_UNAVAILABLE when the library is missing.
void mpi_init();
bool mpi_initialized();  // by mpi_init, and not finalized
int mpi_rank();
int mpi_size();

// Every collective below is one MPI nonblocking call per bucket (at most
// `bucket_bytes` each, one after the other), completed by polling
// MPI_Test, so a peer that never arrives gives ERR_DIST_TIMEOUT after
// `timeout_s` seconds instead of a hang (0: wait forever, blocking calls).
// After a timeout the process group is broken: later calls throw.
// Tensors must be on the CPU; float32, float64 or int32.

// Sums (mean: then divides by the world size) each tensor in place across ranks.
// The tensors are packed by dtype into one buffer each, so the call costs one
// reduction per bucket however many tensors there are.
void mpi_all_reduce(const std::vector<Tensor>& tensors, bool mean, double timeout_s,
                    size_t bucket_bytes);
// Copies `root`'s values of each tensor into the others' (shapes must agree).
void mpi_broadcast(const std::vector<Tensor>& tensors, int root, double timeout_s,
                   size_t bucket_bytes);
void mpi_barrier(double timeout_s);
// Ends the job at once on every rank (MPI_Abort): for a rank that cannot go on.
void mpi_abort(int code);
// MPI_Finalize; a no-op when not initialised or already finalised.
void mpi_finalize();

}  // namespace lc::dist
