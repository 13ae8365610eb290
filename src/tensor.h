// Tensor storage for the native core: a dense, contiguous, row-major buffer
// with a shape, an element type and a device. Views (reshape, detach) share
// one Storage; release() frees the memory early and leaves every view marked
// as released, so later use throws instead of touching freed memory.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace lc {

// Every failure in the core is an lc::Error; the binding turns it into a JS Error.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& msg, std::string code = "ERR_LORA_NATIVE")
      : std::runtime_error(msg), code_(std::move(code)) {}
  const std::string& code() const { return code_; }

 private:
  std::string code_;
};

[[noreturn]] void fail(const std::string& msg);

// The code of an Error for a value the destination cannot hold: the binding throws it as a RangeError.
inline constexpr const char* kErrOutOfRange = "ERR_OUT_OF_RANGE";
// The refusal of a float element that int32 cannot hold (NaN, an infinity, out of range), in the
// words of every backend.
Error int32_conversion_error(int64_t index, double value);
#define LC_CHECK(cond, msg)              \
  do {                                   \
    if (!(cond)) ::lc::fail(msg);        \
  } while (0)

// Each enum the binding exposes has one table of names beside it: the addon exports
// these tables (its `enums`), and lib/ops reads the codes from there by name.
template <typename E>
struct EnumName {
  const char* name;
  E value;
};

// I32 holds class indices and token ids; arithmetic ops take floats only. BF16 and F16 are
// storage types (half.h): ops on them compute in float and round once on store.
enum class DType : int { F32 = 0, F64 = 1, I32 = 2, BF16 = 3, F16 = 4 };
inline constexpr EnumName<DType> kDTypeNames[] = {{"float32", DType::F32},
                                                  {"float64", DType::F64},
                                                  {"int32", DType::I32},
                                                  {"bfloat16", DType::BF16},
                                                  {"float16", DType::F16}};
inline bool is_half(DType t) { return t == DType::BF16 || t == DType::F16; }
inline bool is_floating(DType t) { return t != DType::I32; }
size_t dtype_size(DType t);
const char* dtype_name(DType t);

enum class DeviceType : int { CPU = 0, CUDA = 1 };
inline constexpr EnumName<DeviceType> kDeviceTypeNames[] = {{"cpu", DeviceType::CPU},
                                                            {"cuda", DeviceType::CUDA}};
struct Device {
  DeviceType type = DeviceType::CPU;
  int index = 0;
  bool operator==(const Device& o) const { return type == o.type && index == o.index; }
  bool operator!=(const Device& o) const { return !(*this == o); }
  std::string str() const;
};

using Shape = std::vector<int64_t>;
int64_t shape_numel(const Shape& s);
// A shape seen as [outer, n, inner] around `dim`: how ops along one dim (scans, top-k, max/min,
// index backward) walk a contiguous tensor.
struct DimSplit {
  int64_t outer, n, inner;
};
DimSplit split_at_dim(const Shape& s, int64_t dim);
std::string shape_str(const Shape& s);
// Row-major element strides of `shape` aligned to the last dims of `out`, 0 on
// broadcast dims, so one counter over `out` walks both (every backend's
// broadcasting ops read through these).
std::vector<int64_t> broadcast_strides(const Shape& shape, const Shape& out);

class Storage {
 public:
  Storage(Device dev, size_t bytes);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const;  // throws once released
  size_t bytes() const { return bytes_; }
  Device device() const { return dev_; }
  bool released() const { return released_; }
  void release();

 private:
  Device dev_;
  size_t bytes_;
  void* ptr_ = nullptr;
  bool released_ = false;
};

// Bytes of native memory currently held by storages created on this thread.
// The binding reports the changes to V8 so the garbage collector sees native
// pressure; thread-local because each worker thread has its own JS heap.
int64_t live_bytes_this_thread();
// The most live_bytes_this_thread() has been since the last reset (or the thread's start); with
// `reset`, starts the next interval from the current value. For the memory benchmarks.
int64_t peak_live_bytes_this_thread(bool reset);

// ---- device memory pressure
// Host bytes only (CPU storages): what the binding reports to V8 as external memory.
int64_t live_host_bytes_this_thread();
// Called by a device allocator that ran out of memory, before it retries: the binding sets it
// per thread to a full garbage collection of that thread's JS heap, whose finalizers free the
// storages of unreferenced tensors. Does nothing when none is set (or while one runs).
void set_out_of_memory_hook(void (*hook)(void*), void* arg);
void run_out_of_memory_hook();

struct Tensor {
  std::shared_ptr<Storage> storage;
  Shape shape;
  DType dtype = DType::F32;

  int64_t numel() const { return shape_numel(shape); }
  int64_t dim() const { return static_cast<int64_t>(shape.size()); }
  Device device() const { return storage->device(); }
  void* raw() const { return storage->data(); }
  template <typename T>
  T* data() const {
    return static_cast<T*>(storage->data());
  }
  // Same storage, new shape (numel must match).
  Tensor view(const Shape& s) const;
};

Tensor empty(const Shape& shape, DType dtype, Device dev);

}  // namespace lc
