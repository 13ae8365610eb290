// N-API glue of the process groups (src/distributed/): unwrap arguments, call, wrap results.
// lib/distributed.ts checks the arguments first and is the only caller.
#include "distributed.h"

#include <string>
#include <vector>

#include "../src/distributed/mpi.h"
#include "../src/distributed/nccl_api.h"
#include "glue.h"

namespace lc_napi {

Napi::Object distributed_exports(Napi::Env env, TensorArg T) {
  Napi::Object o = Napi::Object::New(env);
  auto def = [&](const char* name, auto body) { o.Set(name, make_function(env, name, body)); };
  auto tensors = [T](const Napi::Value& v) {
    if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), "tensors: expected an array of tensor handles");
    Napi::Array a = v.As<Napi::Array>();
    std::vector<lc::Tensor> ts;
    for (uint32_t i = 0; i < a.Length(); ++i) ts.push_back(T(a.Get(i), "tensors"));
    return ts;
  };
  auto bytes = [](const Napi::Value& v) {
    int64_t b = i64(v, "bucket bytes");
    if (b < 1) throw Napi::RangeError::New(v.Env(), "bucket bytes must be positive");
    return static_cast<size_t>(b);
  };

  def("mpiInfo", [](const Napi::CallbackInfo& a) -> Napi::Value {
    const lc::dist::MpiInfo& i = lc::dist::mpi_info();
    Napi::Object r = Napi::Object::New(a.Env());
    r.Set("loaded", i.loaded);
    r.Set("path", i.path);
    r.Set("version", i.version);
    r.Set("error", i.error);
    return r;
  });
  def("mpiInit", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::mpi_init();
    Napi::Object r = Napi::Object::New(a.Env());
    r.Set("rank", lc::dist::mpi_rank());
    r.Set("worldSize", lc::dist::mpi_size());
    return r;
  });
  def("mpiInitialized", [](const Napi::CallbackInfo& a) -> Napi::Value {
    return Napi::Boolean::New(a.Env(), lc::dist::mpi_initialized());
  });
  def("mpiAllReduce", [=](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::mpi_all_reduce(tensors(a[0]), flag(a[1]), num(a[2], "timeout"), bytes(a[3]));
    return a.Env().Undefined();
  });
  def("mpiBroadcast", [=](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::mpi_broadcast(tensors(a[0]), static_cast<int>(i64(a[1], "root")), num(a[2], "timeout"), bytes(a[3]));
    return a.Env().Undefined();
  });
  def("mpiBarrier", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::mpi_barrier(num(a[0], "timeout"));
    return a.Env().Undefined();
  });
  def("mpiAbort", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::mpi_abort(static_cast<int>(i64(a[0], "code")));
    return a.Env().Undefined();
  });
  def("mpiFinalize", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::mpi_finalize();
    return a.Env().Undefined();
  });

  def("ncclInfo", [](const Napi::CallbackInfo& a) -> Napi::Value {
    const lc::dist::NcclInfo& i = lc::dist::nccl_info();
    Napi::Object r = Napi::Object::New(a.Env());
    r.Set("compiled", i.compiled);
    r.Set("loaded", i.loaded);
    r.Set("path", i.path);
    r.Set("version", i.version);
    r.Set("error", i.error);
    return r;
  });
  def("ncclUniqueId", [](const Napi::CallbackInfo& a) -> Napi::Value {
    std::vector<uint8_t> id = lc::dist::nccl_unique_id();
    return Napi::Buffer<uint8_t>::Copy(a.Env(), id.data(), id.size());
  });
  def("ncclInit", [](const Napi::CallbackInfo& a) -> Napi::Value {
    if (!a[2].IsBuffer()) throw Napi::TypeError::New(a.Env(), "unique id: expected a Buffer");
    auto b = a[2].As<Napi::Buffer<uint8_t>>();
    std::vector<uint8_t> id(b.Data(), b.Data() + b.Length());
    lc::dist::nccl_init(static_cast<int>(i64(a[0], "world size")), static_cast<int>(i64(a[1], "rank")), id,
                        static_cast<int>(i64(a[3], "device")), num(a[4], "timeout"));
    return a.Env().Undefined();
  });
  def("ncclAllReduce", [=](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::nccl_all_reduce(tensors(a[0]), flag(a[1]), num(a[2], "timeout"), bytes(a[3]));
    return a.Env().Undefined();
  });
  def("ncclBroadcast", [=](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::nccl_broadcast(tensors(a[0]), static_cast<int>(i64(a[1], "root")), num(a[2], "timeout"), bytes(a[3]));
    return a.Env().Undefined();
  });
  def("ncclBarrier", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::nccl_barrier(num(a[0], "timeout"));
    return a.Env().Undefined();
  });
  def("ncclDestroy", [](const Napi::CallbackInfo& a) -> Napi::Value {
    lc::dist::nccl_destroy();
    return a.Env().Undefined();
  });
  return o;
}

}  // namespace lc_napi
