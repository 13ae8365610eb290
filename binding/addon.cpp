// N-API glue: unwrap handles and numbers, call lc::ops, wrap results, and turn
// C++ exceptions into JS Errors (with a `code`). Argument checking with good
// messages happens in TypeScript; the checks here only keep bad calls from
// reaching native memory. No global JS state: the addon is context-aware.
#include <napi.h>

#include <cstring>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "../src/backend.h"
#include "../src/cuda_api.h"
#include "../src/half.h"
#include "../src/ops.h"
#include "bench.h"
#include "distributed.h"
#include "glue.h"
#include "../src/half.h"

namespace {

using lc::Tensor;
using lc_napi::check;
using lc_napi::flag;
using lc_napi::i64;
using lc_napi::num;

struct AddonData {
  Napi::FunctionReference ctor;
  int64_t reported_bytes = 0;
  Napi::FunctionReference collect;  // a full garbage collection (setGarbageCollector)
  ~AddonData() { lc::set_out_of_memory_hook(nullptr, nullptr); }  // this thread's env is going
};

// Tell V8 how much host memory this thread's tensors hold, so the garbage collector runs
// finalizers of unreferenced tensors under that pressure: CPU storages are process memory, which
// V8's heap competes for. Device memory is not reported: V8 would count GPU gigabytes against
// the host heap and collect again and again (tens of ms each) with no host memory to gain.
// Device tensors are freed by dispose(), tidy() and the graph's release; an allocation that
// fails runs a full collection (the hook below) before it retries.
void sync_external(Napi::Env env) {
  auto* d = env.GetInstanceData<AddonData>();
  int64_t live = lc::live_host_bytes_this_thread();
  int64_t delta = live - d->reported_bytes;
  if (delta != 0) {
    Napi::MemoryManagement::AdjustExternalMemory(env, delta);
    d->reported_bytes = live;
  }
}

// What a tensor handle (an instance of the class NativeTensor, with no methods) wraps.
struct NativeTensor {
  Tensor tensor;
};

// Runs when a handle is garbage-collected and when its environment is torn down (a worker that
// ends or is terminated).
void finalize_handle(Napi::node_addon_api_basic_env, void* data, void*) noexcept {
  delete static_cast<NativeTensor*>(data);  // frees the storage unless another handle shares it
}

napi_value construct_handle(napi_env env, napi_callback_info info) noexcept {
  return lc_napi::boundary(env, [&]() -> napi_value {
    napi_value self;
    check(env, napi_get_cb_info(env, info, nullptr, nullptr, &self, nullptr));
    auto owned = std::make_unique<NativeTensor>();
    check(env, napi_wrap(env, self, owned.get(), finalize_handle, nullptr, nullptr));
    owned.release();  // the handle's finalizer deletes it
    return self;
  });
}

Napi::Function define_handle_class(Napi::Env env) {
  napi_value cls;
  check(env, napi_define_class(env, "NativeTensor", NAPI_AUTO_LENGTH, construct_handle, nullptr, 0,
                               nullptr, &cls));
  return Napi::Function(env, cls);
}

NativeTensor* handle_of(Napi::Object o) {
  void* p = nullptr;
  check(o.Env(), napi_unwrap(o.Env(), o, &p));
  return static_cast<NativeTensor*>(p);
}

// Every exported function goes through here: the body runs inside lc_napi::boundary.
Napi::Function fn(Napi::Env env, const char* name,
                  std::function<Napi::Value(const Napi::CallbackInfo&)> body) {
  return lc_napi::make_function(env, name, [body](const Napi::CallbackInfo& info) -> Napi::Value {
    Napi::Value v = body(info);
    sync_external(info.Env());
    return v;
  });
}

Napi::Value wrap(Napi::Env env, Tensor t) {
  auto* d = env.GetInstanceData<AddonData>();
  Napi::Object o = d->ctor.New({});
  handle_of(o)->tensor = std::move(t);
  return o;
}

Napi::Value wrap_or_null(Napi::Env env, Tensor t) {
  return t.storage ? wrap(env, std::move(t)) : env.Null();
}

NativeTensor* unwrap_raw(const Napi::Value& v, const char* what) {
  Napi::Env env = v.Env();
  auto* d = env.GetInstanceData<AddonData>();
  if (!v.IsObject() || !v.As<Napi::Object>().InstanceOf(d->ctor.Value()))
    throw Napi::TypeError::New(env, std::string(what) + ": expected a native tensor handle");
  return handle_of(v.As<Napi::Object>());
}

const Tensor& T(const Napi::Value& v, const char* what) {
  NativeTensor* n = unwrap_raw(v, what);
  if (!n->tensor.storage || n->tensor.storage->released())
    throw lc::Error(std::string(what) + ": tensor has been disposed", "ERR_TENSOR_DISPOSED");
  return n->tensor;
}

const Tensor* optT(const Napi::Value& v, const char* what) {
  return v.IsNull() || v.IsUndefined() ? nullptr : &T(v, what);
}

uint64_t u64(const Napi::Value& v, const char* what) {
  if (!v.IsBigInt()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a bigint");
  bool lossless = true;
  return v.As<Napi::BigInt>().Uint64Value(&lossless);
}

lc::Shape shape_arg(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an array");
  Napi::Array a = v.As<Napi::Array>();
  lc::Shape s(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) {
    s[i] = i64(a.Get(i), what);
    if (s[i] < 0) throw lc::Error(std::string(what) + ": negative dimension");
  }
  return s;
}

// An enum code from JS, checked against the enum's name table (the one `enums` exports).
template <typename E, size_t N>
E enum_arg(const Napi::Value& v, const lc::EnumName<E> (&table)[N], const char* what) {
  int64_t code = i64(v, what);
  for (const auto& e : table)
    if (static_cast<int64_t>(e.value) == code) return e.value;
  throw lc::Error(std::string("unknown ") + what + " code " + std::to_string(code));
}

template <typename E, size_t N>
Napi::Object enum_object(Napi::Env env, const lc::EnumName<E> (&table)[N]) {
  Napi::Object o = Napi::Object::New(env);
  for (const auto& e : table) o.Set(e.name, static_cast<int>(e.value));
  return o;
}

lc::DType dtype_arg(const Napi::Value& v) { return enum_arg(v, lc::kDTypeNames, "dtype"); }

lc::Device device_arg(const Napi::Value& type, const Napi::Value& index) {
  return lc::Device{enum_arg(type, lc::kDeviceTypeNames, "device type"),
                    static_cast<int>(i64(index, "device index"))};
}

// Whether an op had an optional input (its gradient needs no data of it, so it may be disposed).
bool present(const Napi::Value& v, const char* what) {
  if (v.IsNull() || v.IsUndefined()) return false;
  unwrap_raw(v, what);
  return true;
}

// The need-flags of a backward, one per input of the op in input order.
std::vector<bool> needs_arg(const Napi::Value& v, size_t n, const char* what) {
  if (!v.IsArray() || v.As<Napi::Array>().Length() != n)
    throw Napi::TypeError::New(v.Env(), std::string(what) + ": needs must be an array of " +
                                            std::to_string(n) + " booleans");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<bool> out(n);
  for (uint32_t i = 0; i < n; ++i) out[i] = flag(a.Get(i));
  return out;
}

Napi::Array arr(Napi::Env env, std::initializer_list<Napi::Value> vs) {
  Napi::Array a = Napi::Array::New(env, vs.size());
  uint32_t i = 0;
  for (const auto& v : vs) a.Set(i++, v);
  return a;
}

std::vector<Tensor> tensor_list(const Napi::Value& v, const char* what) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be an array");
  Napi::Array a = v.As<Napi::Array>();
  std::vector<Tensor> out;
  out.reserve(a.Length());
  for (uint32_t i = 0; i < a.Length(); ++i) out.push_back(T(a.Get(i), what));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto data = std::make_unique<AddonData>();
  data->ctor = Napi::Persistent(define_handle_class(env));
  env.SetInstanceData<AddonData>(data.release());

  auto def = [&](const char* name, std::function<Napi::Value(const Napi::CallbackInfo&)> body) {
    exports.Set(name, fn(env, name, std::move(body)));
  };

  // ---- the codes of the core's enums, by name (built from the tables beside the enums)
  Napi::Object enums = Napi::Object::New(env);
  enums.Set("dtype", enum_object(env, lc::kDTypeNames));
  enums.Set("deviceType", enum_object(env, lc::kDeviceTypeNames));
  enums.Set("binaryOp", enum_object(env, lc::kBinaryOpNames));
  enums.Set("unaryOp", enum_object(env, lc::kUnaryOpNames));
  enums.Set("randomKind", enum_object(env, lc::kRandomKindNames));
  enums.Set("compareOp", enum_object(env, lc::kCompareOpNames));
  exports.Set("enums", enums);

  // ---- memory pressure: a device allocation that fails calls this thread's collector first
  def("setGarbageCollector", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto* d = a.Env().GetInstanceData<AddonData>();
    if (!a[0].IsFunction()) throw Napi::TypeError::New(a.Env(), "setGarbageCollector: expected a function");
    d->collect = Napi::Persistent(a[0].As<Napi::Function>());
    lc::set_out_of_memory_hook(
        [](void* p) {
          auto* dd = static_cast<AddonData*>(p);
          if (!dd->collect.IsEmpty()) dd->collect.Call({});
        },
        d);
    return a.Env().Undefined();
  });

  // ---- creation, memory, host transfer
  def("full", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::full(shape_arg(a[0], "shape"), dtype_arg(a[1]),
                                       device_arg(a[2], a[3]), num(a[4], "value")));
  });
  def("fromArray", [](const Napi::CallbackInfo& a) {
    if (!a[0].IsTypedArray()) throw Napi::TypeError::New(a.Env(), "fromArray: expected a typed array");
    Napi::TypedArray ta = a[0].As<Napi::TypedArray>();
    lc::DType dt = dtype_arg(a[2]);
    // The halves come as their raw 16-bit patterns (a Uint16Array): safetensors data loads
    // without passing through float32.
    napi_typedarray_type want = dt == lc::DType::F64   ? napi_float64_array
                                : dt == lc::DType::I32 ? napi_int32_array
                                : lc::is_half(dt)      ? napi_uint16_array
                                                       : napi_float32_array;
    if (ta.TypedArrayType() != want)
      throw Napi::TypeError::New(a.Env(), "fromArray: typed array type does not match dtype");
    // The data pointer from the typed array itself: ta.ArrayBuffer() refuses a SharedArrayBuffer.
    void* base = nullptr;
    check(a.Env(), napi_get_typedarray_info(a.Env(), ta, nullptr, nullptr, &base, nullptr, nullptr));
    return wrap(a.Env(), lc::ops::from_host(base, ta.ByteLength(), shape_arg(a[1], "shape"), dt,
                                            device_arg(a[3], a[4])));
  });
  def("toArray", [](const Napi::CallbackInfo& a) -> Napi::Value {
    const Tensor& t = T(a[0], "toArray");
    size_t n = static_cast<size_t>(t.numel());
    Napi::Env env = a.Env();
    switch (t.dtype) {
      case lc::DType::F32: {
        auto out = Napi::Float32Array::New(env, n);
        lc::ops::to_host(t, out.Data(), n * 4);
        return out;
      }
      case lc::DType::F64: {
        auto out = Napi::Float64Array::New(env, n);
        lc::ops::to_host(t, out.Data(), n * 8);
        return out;
      }
      case lc::DType::BF16:
      case lc::DType::F16: {  // as float32 numbers (exact: every half is a float32)
        std::vector<uint16_t> bits(n);
        lc::ops::to_host(t, bits.data(), n * 2);
        auto out = Napi::Float32Array::New(env, n);
        const bool bf = t.dtype == lc::DType::BF16;
        for (size_t i = 0; i < n; ++i)
          out[i] = bf ? lc::bf16_bits_to_float(bits[i]) : lc::f16_bits_to_float(bits[i]);
        return out;
      }
      default: {
        auto out = Napi::Int32Array::New(env, n);
        lc::ops::to_host(t, out.Data(), n * 4);
        return out;
      }
    }
  });
  // The raw 16-bit patterns of a bfloat16 or float16 tensor (what safetensors stores).
  def("toHalfBits", [](const Napi::CallbackInfo& a) -> Napi::Value {
    const Tensor& t = T(a[0], "toHalfBits");
    if (!lc::is_half(t.dtype))
      throw Napi::TypeError::New(a.Env(), "toHalfBits: expected a bfloat16 or float16 tensor");
    size_t n = static_cast<size_t>(t.numel());
    auto out = Napi::Uint16Array::New(a.Env(), n);
    lc::ops::to_host(t, out.Data(), n * 2);
    return out;
  });
  def("random", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::random(shape_arg(a[0], "shape"), dtype_arg(a[1]),
                                         device_arg(a[2], a[3]),
                                         enum_arg(a[4], lc::kRandomKindNames, "random kind"),
                                         u64(a[5], "seed"), u64(a[6], "offset"), num(a[7], "a"),
                                         num(a[8], "b")));
  });
  def("view", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), T(a[0], "view").view(shape_arg(a[1], "shape")));
  });
  def("dispose", [](const Napi::CallbackInfo& a) -> Napi::Value {
    NativeTensor* n = unwrap_raw(a[0], "dispose");
    if (n->tensor.storage) n->tensor.storage->release();
    return a.Env().Undefined();
  });
  def("isDisposed", [](const Napi::CallbackInfo& a) -> Napi::Value {
    NativeTensor* n = unwrap_raw(a[0], "isDisposed");
    return Napi::Boolean::New(a.Env(), !n->tensor.storage || n->tensor.storage->released());
  });
  def("copy_", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::ops::copy_(T(a[0], "copy_ destination"), T(a[1], "copy_ source"));
    return a.Env().Undefined();
  });
  def("to", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::to(T(a[0], "to"), device_arg(a[1], a[2]), dtype_arg(a[3])));
  });
  def("liveBytes", [](const Napi::CallbackInfo& a) -> Napi::Value {
    return Napi::Number::New(a.Env(), static_cast<double>(lc::live_bytes_this_thread()));
  });

  // ---- elementwise and shape ops
  def("binary", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::binary(enum_arg(a[0], lc::kBinaryOpNames, "binary op"),
                                         T(a[1], "binary a"), T(a[2], "binary b")));
  });
  def("affine", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::affine(T(a[0], "affine"), num(a[1], "alpha"), num(a[2], "beta")));
  });
  def("axpy_", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::ops::axpy_(T(a[0], "axpy y"), T(a[1], "axpy x"), num(a[2], "alpha"));
    return a.Env().Undefined();
  });
  def("unary", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::unary(enum_arg(a[0], lc::kUnaryOpNames, "unary op"), T(a[1], "unary")));
  });
  def("unaryBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::unary_backward(enum_arg(a[0], lc::kUnaryOpNames, "unary op"),
                                                 T(a[1], "unary x"), T(a[2], "unary grad")));
  });
  def("sumTo", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::sum_to(T(a[0], "sum"), shape_arg(a[1], "shape")));
  });
  def("expand", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::expand(T(a[0], "expand"), shape_arg(a[1], "shape")));
  });
  def("permute", [](const Napi::CallbackInfo& a) {
    lc::Shape perm = shape_arg(a[1], "perm");
    return wrap(a.Env(), lc::ops::permute(T(a[0], "permute"), perm));
  });
  def("allFinite", [](const Napi::CallbackInfo& a) -> Napi::Value {
    return Napi::Boolean::New(a.Env(), lc::ops::all_finite(T(a[0], "allFinite")));
  });
  def("softmax", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::softmax(T(a[0], "softmax")));
  });
  def("softmaxBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::softmax_backward(T(a[0], "softmax y"), T(a[1], "softmax grad")));
  });
  // ---- selection, scans, masks, clamp, pow, log-softmax
  // minmax(x, dim, isMax) -> [values, indices] (dim kept as 1)
  def("minmax", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto o = lc::ops::minmax(T(a[0], "max x"), i64(a[1], "dim"), flag(a[2]));
    Napi::Env env = a.Env();
    return arr(env, {wrap(env, o.values), wrap(env, o.indices)});
  });
  def("indexDimBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::index_dim_backward(T(a[0], "index grad"), T(a[1], "indices"),
                                                     i64(a[2], "dim"), shape_arg(a[3], "shape")));
  });
  // topk(x, k, dim, largest) -> [values, indices]
  def("topk", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto o = lc::ops::topk(T(a[0], "topk x"), i64(a[1], "k"), i64(a[2], "dim"), flag(a[3]));
    Napi::Env env = a.Env();
    return arr(env, {wrap(env, o.values), wrap(env, o.indices)});
  });
  def("cumsum", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::cumsum(T(a[0], "cumsum x"), i64(a[1], "dim"), flag(a[2])));
  });
  def("compare", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::compare(enum_arg(a[0], lc::kCompareOpNames, "compare op"),
                                          T(a[1], "compare a"), T(a[2], "compare b")));
  });
  def("where", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::where(T(a[0], "where cond"), T(a[1], "where a"), T(a[2], "where b")));
  });
  def("clamp", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::clamp(T(a[0], "clamp x"), num(a[1], "min"), num(a[2], "max")));
  });
  def("clampBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::clamp_backward(T(a[0], "clamp x"), num(a[1], "min"), num(a[2], "max"),
                                                 T(a[3], "clamp grad")));
  });
  def("pow", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::pow(T(a[0], "pow base"), T(a[1], "pow exponent")));
  });
  // powBackward(a, b, dy, needs[a, b]) -> [da, db]
  def("powBackward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto need = needs_arg(a[3], 2, "powBackward");
    auto g = lc::ops::pow_backward(T(a[0], "pow base"), T(a[1], "pow exponent"), T(a[2], "pow grad"),
                                   need[0], need[1]);
    Napi::Env env = a.Env();
    return arr(env, {wrap_or_null(env, g.da), wrap_or_null(env, g.db)});
  });
  def("logSoftmax", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::log_softmax(T(a[0], "logSoftmax")));
  });
  def("logSoftmaxBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::log_softmax_backward(T(a[0], "logSoftmax y"), T(a[1], "logSoftmax grad")));
  });
  def("bmm", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::bmm(T(a[0], "matmul a"), T(a[1], "matmul b"), flag(a[2]), flag(a[3])));
  });

  // ---- layers
  def("linear", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::linear(T(a[0], "linear x"), T(a[1], "linear weight"),
                                         optT(a[2], "linear bias")));
  });
  // Backwards take their need-flags as one array in the op's input order and return the
  // gradients in that order (null where not needed); an absent optional input gets none.
  // linearBackward(dy, x, W, b|null, needs[x, W, b]) -> [dx, dW, db]
  def("linearBackward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    bool has_b = present(a[3], "bias");
    auto need = needs_arg(a[4], 3, "linearBackward");
    auto g = lc::ops::linear_backward(T(a[0], "grad"), T(a[1], "x"), T(a[2], "weight"), need[0],
                                      need[1], need[2] && has_b);
    Napi::Env env = a.Env();
    return arr(env, {wrap_or_null(env, g.dx), wrap_or_null(env, g.dW), wrap_or_null(env, g.db)});
  });
  def("loraForward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto o = lc::ops::lora_forward(T(a[0], "x"), T(a[1], "weight"), optT(a[2], "bias"), T(a[3], "A"),
                                   T(a[4], "B"), num(a[5], "scale"), num(a[6], "dropout"),
                                   u64(a[7], "seed"), u64(a[8], "offset"));
    Napi::Env env = a.Env();
    return arr(env, {wrap(env, o.y), wrap(env, o.h)});
  });
  // loraBackward(dy, x, W, A, B, b|null, h, scale, p, seed, offset, needs[x, W, A, B, b])
  //   -> [dx, dW, dA, dB, db]
  def("loraBackward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    bool has_b = present(a[5], "bias");
    auto need = needs_arg(a[11], 5, "loraBackward");
    auto g = lc::ops::lora_backward(T(a[0], "grad"), T(a[1], "x"), T(a[2], "weight"), T(a[3], "A"),
                                    T(a[4], "B"), T(a[6], "h"), num(a[7], "scale"),
                                    num(a[8], "dropout"), u64(a[9], "seed"), u64(a[10], "offset"),
                                    need[0], need[2], need[3], need[1], need[4] && has_b);
    Napi::Env env = a.Env();
    return arr(env, {wrap_or_null(env, g.dx), wrap_or_null(env, g.dW), wrap_or_null(env, g.dA),
                     wrap_or_null(env, g.dB), wrap_or_null(env, g.db)});
  });
  def("dropout", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::dropout(T(a[0], "dropout"), num(a[1], "p"), u64(a[2], "seed"),
                                          u64(a[3], "offset")));
  });
  def("loraMerge", [](const Napi::CallbackInfo& a) -> Napi::Value {
    bool ok = lc::ops::lora_merge(T(a[0], "weight"), T(a[1], "A"), T(a[2], "B"), num(a[3], "scale"),
                                  flag(a[4]));
    return Napi::Boolean::New(a.Env(), ok);
  });

  // ---- optimiser: adamStep(params, grads, expAvg, expAvgSq, maxExpAvgSq|null, steps, cfg...)
  def("adamStep", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto ps = tensor_list(a[0], "params"), gs = tensor_list(a[1], "grads");
    auto ms = tensor_list(a[2], "exp_avg"), vs = tensor_list(a[3], "exp_avg_sq");
    bool ams = !(a[4].IsNull() || a[4].IsUndefined());
    std::vector<Tensor> vmax = ams ? tensor_list(a[4], "max_exp_avg_sq") : std::vector<Tensor>{};
    if (!a[5].IsArray()) throw Napi::TypeError::New(a.Env(), "steps must be an array");
    Napi::Array steps = a[5].As<Napi::Array>();
    size_t n = ps.size();
    if (gs.size() != n || ms.size() != n || vs.size() != n || steps.Length() != n ||
        (ams && vmax.size() != n))
      throw lc::Error("adam: parameter, gradient and state lists differ in length");
    std::vector<lc::AdamParam> list(n);
    for (size_t i = 0; i < n; ++i)
      list[i] = lc::AdamParam{ps[i], gs[i], ms[i], vs[i], ams ? vmax[i] : Tensor{},
                              i64(steps.Get(static_cast<uint32_t>(i)), "step")};
    lc::AdamConfig cfg{num(a[6], "lr"),    num(a[7], "beta1"), num(a[8], "beta2"),
                       num(a[9], "eps"),   num(a[10], "weightDecay"), flag(a[11]), ams};
    lc::ops::adam_step(list, cfg);
    return a.Env().Undefined();
  });

  // ---- clipGradNorm_(grads, maxNorm, skipNonfinite) -> the total norm (0-d); grads scaled in place
  def("clipGradNorm_", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::clip_grad_norm_(tensor_list(a[0], "grads"), num(a[1], "maxNorm"), flag(a[2])));
  });

  // ---- losses
  def("crossEntropyForward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto o = lc::ops::cross_entropy_forward(T(a[0], "logits"), T(a[1], "targets"),
                                            i64(a[2], "ignoreIndex"), num(a[3], "labelSmoothing"));
    Napi::Env env = a.Env();
    return arr(env, {wrap(env, o.loss_rows), wrap(env, o.lse)});
  });
  def("crossEntropyBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::cross_entropy_backward(
                             T(a[0], "logits"), T(a[1], "lse"), T(a[2], "targets"),
                             i64(a[3], "ignoreIndex"), num(a[4], "labelSmoothing"), T(a[5], "grad"),
                             num(a[6], "scale")));
  });
  def("linearCrossEntropyForward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto o = lc::ops::linear_cross_entropy_forward(T(a[0], "x"), T(a[1], "weight"),
                                                   T(a[2], "targets"), i64(a[3], "ignoreIndex"),
                                                   num(a[4], "labelSmoothing"));
    Napi::Env env = a.Env();
    return arr(env, {wrap(env, o.logits), wrap(env, o.loss_rows), wrap(env, o.lse)});
  });
  def("linearCrossEntropyBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::linear_cross_entropy_backward(
                             T(a[0], "logits"), T(a[1], "lse"), T(a[2], "targets"),
                             i64(a[3], "ignoreIndex"), num(a[4], "labelSmoothing"), T(a[5], "grad"),
                             num(a[6], "scale"), T(a[7], "weight")));
  });

  // ---- transformer blocks
  def("embeddingForward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::embedding(T(a[0], "embedding ids"), T(a[1], "embedding weight")));
  });
  def("embeddingBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::embedding_backward(T(a[0], "embedding ids"),
                                                     optT(a[1], "embedding order"),
                                                     T(a[2], "embedding grad"),
                                                     i64(a[3], "numEmbeddings")));
  });
  def("rmsNormForward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto o = lc::ops::rms_norm(T(a[0], "rmsNorm x"), optT(a[1], "rmsNorm weight"),
                               num(a[2], "eps"));
    Napi::Env env = a.Env();
    return arr(env, {wrap(env, o.y), wrap(env, o.rstd)});
  });
  // rmsNormBackward(dy, x, weight|null, rstd, needs[x, weight]) -> [dx, dweight]
  def("rmsNormBackward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    const Tensor* w = optT(a[2], "rmsNorm weight");
    auto need = needs_arg(a[4], 2, "rmsNormBackward");
    auto g = lc::ops::rms_norm_backward(T(a[0], "rmsNorm grad"), T(a[1], "rmsNorm x"), w,
                                        T(a[3], "rmsNorm rstd"), need[0], need[1] && w);
    Napi::Env env = a.Env();
    return arr(env, {wrap_or_null(env, g.dx), wrap_or_null(env, g.dweight)});
  });
  def("swigluForward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::swiglu(T(a[0], "swiglu gate"), T(a[1], "swiglu up")));
  });
  // swigluBackward(gate, up, dy, needs[gate, up]) -> [dgate, dup]
  def("swigluBackward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto need = needs_arg(a[3], 2, "swigluBackward");
    auto g = lc::ops::swiglu_backward(T(a[0], "swiglu gate"), T(a[1], "swiglu up"),
                                      T(a[2], "swiglu grad"), need[0], need[1]);
    Napi::Env env = a.Env();
    return arr(env, {wrap_or_null(env, g.dgate), wrap_or_null(env, g.dup)});
  });
  def("rotaryForward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::rotary(T(a[0], "rotary x"), T(a[1], "rotary cos"),
                                         T(a[2], "rotary sin")));
  });
  def("rotaryBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::rotary_backward(T(a[0], "rotary grad"), T(a[1], "rotary cos"),
                                                  T(a[2], "rotary sin")));
  });
  def("attentionForward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto o = lc::ops::attention(T(a[0], "attention q"), T(a[1], "attention k"),
                                T(a[2], "attention v"), flag(a[3]), num(a[4], "scale"),
                                optT(a[5], "attention starts"), flag(a[6]));
    Napi::Env env = a.Env();
    return arr(env, {wrap(env, o.out), wrap(env, o.lse)});
  });
  // attentionBackward(dout, q, k, v, out, lse, causal, scale, needs[q, k, v], starts|null, bthd)
  //   -> [dq, dk, dv]
  def("attentionBackward", [](const Napi::CallbackInfo& a) -> Napi::Value {
    auto need = needs_arg(a[8], 3, "attentionBackward");
    auto g = lc::ops::attention_backward(T(a[0], "attention grad"), T(a[1], "attention q"),
                                         T(a[2], "attention k"), T(a[3], "attention v"),
                                         T(a[4], "attention out"), T(a[5], "attention lse"),
                                         flag(a[6]), num(a[7], "scale"), need[0], need[1], need[2],
                                         optT(a[9], "attention starts"), flag(a[10]));
    Napi::Env env = a.Env();
    return arr(env, {wrap_or_null(env, g.dq), wrap_or_null(env, g.dk), wrap_or_null(env, g.dv)});
  });

  // ---- views and joins (copies: tensors are contiguous)
  // stridedRead(x, sizes, strides, offset) -> a new tensor of `sizes`
  def("stridedRead", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::strided_read(T(a[0], "strided read"), shape_arg(a[1], "sizes"),
                                               shape_arg(a[2], "strides"), i64(a[3], "offset")));
  });
  // stridedWrite(dst, sizes, strides, offset, src): src into dst's strided region, in place
  def("stridedWrite", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::ops::strided_write_(T(a[0], "strided write destination"), shape_arg(a[1], "sizes"),
                            shape_arg(a[2], "strides"), i64(a[3], "offset"),
                            T(a[4], "strided write source"));
    return a.Env().Undefined();
  });
  def("gather", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::gather(T(a[0], "gather x"), T(a[1], "gather index"),
                                         i64(a[2], "dim"), flag(a[3])));
  });
  def("gatherBackward", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::gather_backward(T(a[0], "gather index"),
                                                  optT(a[1], "gather order"), i64(a[2], "dim"),
                                                  flag(a[3]), T(a[4], "gather grad"),
                                                  shape_arg(a[5], "shape")));
  });
  def("triangle", [](const Napi::CallbackInfo& a) {
    return wrap(a.Env(), lc::ops::triangle(T(a[0], "triangle"), i64(a[1], "k"), flag(a[2])));
  });

  // ---- CUDA devices (index -1 = every device used so far)
  def("cudaSynchronize", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::cuda::synchronize(static_cast<int>(i64(a[0], "device index")));
    return a.Env().Undefined();
  });
  def("cudaMemoryStats", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::cuda::MemoryStats m = lc::cuda::memory_stats(static_cast<int>(i64(a[0], "device index")));
    Napi::Object o = Napi::Object::New(a.Env());
    o.Set("allocated", static_cast<double>(m.allocated));
    o.Set("reserved", static_cast<double>(m.reserved));
    o.Set("peak", static_cast<double>(m.peak));
    return o;
  });
  def("cudaResetPeak", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::cuda::reset_peak(static_cast<int>(i64(a[0], "device index")));
    return a.Env().Undefined();
  });
  def("cudaEmptyCache", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::cuda::empty_cache(static_cast<int>(i64(a[0], "device index")));
    return a.Env().Undefined();
  });
  def("cudaSetAllowTF32", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::cuda::set_allow_tf32(flag(a[0]));
    return a.Env().Undefined();
  });
  def("cudaGetAllowTF32", [](const Napi::CallbackInfo& a) -> Napi::Value {
    return Napi::Boolean::New(a.Env(), lc::cuda::allow_tf32());
  });
  // ---- introspection
  def("backendInfo", [](const Napi::CallbackInfo& a) -> Napi::Value {
    Napi::Env env = a.Env();
    const lc::CpuInfo b = lc::cpu_info();
    Napi::Object cpu = Napi::Object::New(env);
    cpu.Set("blas", b.blas);
    cpu.Set("blasPath", b.blas_path);
    if (!b.blas_reason.empty()) cpu.Set("blasReason", b.blas_reason);
    cpu.Set("blasThreads", b.blas_threads);
    cpu.Set("threads", b.threads);
    Napi::Array features = Napi::Array::New(env, b.features.size());
    for (size_t i = 0; i < b.features.size(); ++i) features.Set(static_cast<uint32_t>(i), b.features[i]);
    cpu.Set("features", features);
    cpu.Set("kernels", b.kernels);
    cpu.Set("bf16Gemm", b.bf16_gemm);
    const lc::cuda::Info& ci = lc::cuda::info();
    Napi::Object cuda = Napi::Object::New(env);
    cuda.Set("compiled", ci.compiled);
    cuda.Set("available", ci.available);
    cuda.Set("reason", ci.reason);
    auto devices = [&](const std::vector<lc::cuda::DeviceInfo>& list, bool with_reason) {
      Napi::Array devs = Napi::Array::New(env, list.size());
      for (size_t i = 0; i < list.size(); ++i) {
        const auto& d = list[i];
        Napi::Object od = Napi::Object::New(env);
        od.Set("name", d.name);
        od.Set("memory", static_cast<double>(d.memory));
        od.Set("capability", std::to_string(d.major) + "." + std::to_string(d.minor));
        od.Set("multiprocessors", d.multiprocessors);
        od.Set("ordinal", d.ordinal);
        if (with_reason) od.Set("reason", d.reason);
        devs.Set(static_cast<uint32_t>(i), od);
      }
      return devs;
    };
    cuda.Set("devices", devices(ci.devices, false));
    cuda.Set("unusableDevices", devices(ci.unusable_devices, true));
    if (!ci.cublas_path.empty()) {
      Napi::Object cb = Napi::Object::New(env);
      cb.Set("path", ci.cublas_path);
      cb.Set("version", ci.cublas_version);
      cuda.Set("cublas", cb);
    } else {
      cuda.Set("cublas", env.Null());
    }
    cuda.Set("runtimeVersion", ci.runtime_version);
    cuda.Set("driverVersion", ci.driver_version);
    cuda.Set("architectures", ci.architectures);
    Napi::Object o = Napi::Object::New(env);
    o.Set("cpu", cpu);
    o.Set("cuda", cuda);
    return o;
  });

  // ---- for the benchmarks only (binding/bench.cpp)
  exports.Set("bench", lc_napi::bench_exports(env, T));
  // ---- process groups over MPI and NCCL (binding/distributed.cpp)
  exports.Set("distributed", lc_napi::distributed_exports(env, T));
  return exports;
}

}  // namespace

// Not NODE_API_MODULE: its wrapper lets a C++ exception out when the environment cannot take the
// JS error (a worker terminated while it loads the addon).
NAPI_MODULE_INIT() {
  return lc_napi::boundary(env, [&]() -> napi_value { return Init(Napi::Env(env), Napi::Object(env, exports)); });
}
