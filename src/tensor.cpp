#include "tensor.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "backend.h"

namespace lc {

namespace {
thread_local int64_t t_live_bytes = 0;
thread_local int64_t t_live_host_bytes = 0;
thread_local void (*t_oom_hook)(void*) = nullptr;
thread_local void* t_oom_arg = nullptr;
thread_local bool t_oom_running = false;
thread_local int64_t t_peak_bytes = 0;  // the most t_live_bytes has been since the last reset
}

void fail(const std::string& msg) { throw Error(msg); }

Error int32_conversion_error(int64_t index, double value) {
  std::string v;
  if (std::isnan(value)) {
    v = "NaN";
  } else if (std::isinf(value)) {
    v = value > 0 ? "Infinity" : "-Infinity";
  } else {
    // As JS prints numbers: integers below 1e21 in full, others in the shortest text that reads back.
    char buf[40];
    if (value == std::trunc(value) && std::fabs(value) < 1e21) {
      std::snprintf(buf, sizeof buf, "%.0f", value);
    } else {
      for (int p = 1; p <= 17; ++p) {
        std::snprintf(buf, sizeof buf, "%.*g", p, value);
        if (std::strtod(buf, nullptr) == value) break;
      }
    }
    v = buf;
  }
  return Error("copy: element " + std::to_string(index) + " (" + v +
                   ") cannot be converted to int32 (integers in [-2147483648, 2147483647])",
               kErrOutOfRange);
}

size_t dtype_size(DType t) { return t == DType::F64 ? 8 : is_half(t) ? 2 : 4; }
const char* dtype_name(DType t) {
  for (const auto& e : kDTypeNames)
    if (e.value == t) return e.name;
  return "?";
}

std::string Device::str() const {
  return type == DeviceType::CPU ? std::string("cpu") : "cuda:" + std::to_string(index);
}

DimSplit split_at_dim(const Shape& s, int64_t dim) {
  DimSplit r{1, s[static_cast<size_t>(dim)], 1};
  for (int64_t d = 0; d < dim; ++d) r.outer *= s[static_cast<size_t>(d)];
  for (size_t d = static_cast<size_t>(dim) + 1; d < s.size(); ++d) r.inner *= s[d];
  return r;
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) {
    LC_CHECK(d >= 0, "negative dimension in shape " + shape_str(s));
    LC_CHECK(d == 0 || n <= INT64_MAX / d, "shape " + shape_str(s) + " has too many elements");
    n *= d;
  }
  return n;
}

std::vector<int64_t> broadcast_strides(const Shape& shape, const Shape& out) {
  size_t r = out.size(), k = shape.size();
  std::vector<int64_t> st(r, 0);
  int64_t s = 1;
  for (size_t i = 0; i < k; ++i) {
    size_t d = k - 1 - i, o = r - 1 - i;
    st[o] = shape[d] == 1 ? 0 : s;
    s *= shape[d];
  }
  return st;
}

std::string shape_str(const Shape& s) {
  std::ostringstream o;
  o << '[';
  for (size_t i = 0; i < s.size(); ++i) o << (i ? ", " : "") << s[i];
  o << ']';
  return o.str();
}

Storage::Storage(Device dev, size_t bytes) : dev_(dev), bytes_(bytes) {
  if (bytes_ > 0) {
    ptr_ = backend_for(dev_).allocate(bytes_);
    t_live_bytes += static_cast<int64_t>(bytes_);
    if (dev_.type == DeviceType::CPU) t_live_host_bytes += static_cast<int64_t>(bytes_);
    t_peak_bytes = std::max(t_peak_bytes, t_live_bytes);
  }
}

Storage::~Storage() { release(); }

void Storage::release() {
  released_ = true;
  if (!ptr_) return;
  backend_for(dev_).deallocate(ptr_, bytes_);
  ptr_ = nullptr;
  t_live_bytes -= static_cast<int64_t>(bytes_);
  if (dev_.type == DeviceType::CPU) t_live_host_bytes -= static_cast<int64_t>(bytes_);
}

void* Storage::data() const {
  LC_CHECK(!released(), "tensor memory has been released (dispose() was called)");
  return ptr_;
}

int64_t live_bytes_this_thread() { return t_live_bytes; }

int64_t live_host_bytes_this_thread() { return t_live_host_bytes; }

void set_out_of_memory_hook(void (*hook)(void*), void* arg) {
  t_oom_hook = hook;
  t_oom_arg = arg;
}

void run_out_of_memory_hook() {
  // Not re-entered: an allocation failing inside the collection (a finalizer) just fails.
  if (!t_oom_hook || t_oom_running) return;
  t_oom_running = true;
  try {
    t_oom_hook(t_oom_arg);
  } catch (...) {
  }
  t_oom_running = false;
}

int64_t peak_live_bytes_this_thread(bool reset) {
  const int64_t peak = std::max(t_peak_bytes, t_live_bytes);
  if (reset) t_peak_bytes = t_live_bytes;
  return peak;
}

Tensor Tensor::view(const Shape& s) const {
  LC_CHECK(shape_numel(s) == numel(),
           "view: cannot view a tensor of shape " + shape_str(shape) + " as " + shape_str(s));
  return Tensor{storage, s, dtype};
}

Tensor empty(const Shape& shape, DType dtype, Device dev) {
  for (int64_t d : shape) LC_CHECK(d >= 0, "negative dimension in shape " + shape_str(shape));
  int64_t n = shape_numel(shape);
  LC_CHECK(static_cast<uint64_t>(n) <= SIZE_MAX / dtype_size(dtype),
           "shape " + shape_str(shape) + " is too large to allocate");
  return Tensor{std::make_shared<Storage>(dev, static_cast<size_t>(n) * dtype_size(dtype)), shape,
                dtype};
}

}  // namespace lc
