// Shared by the binding's source files: the boundary where C++ exceptions become JS Errors (with a
// `code`), and the checked conversions of number arguments.
#pragma once
#include <napi.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <new>
#include <string>
#include <utility>

#include "../src/tensor.h"

namespace lc_napi {

inline Napi::Error js_error(Napi::Env env, const std::string& msg, const std::string& code) {
  Napi::Error e = code == lc::kErrOutOfRange ? Napi::RangeError::New(env, msg) : Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// Throws the JS error of a failed N-API call (the pending exception, if any) as a C++ exception.
inline void check(napi_env env, napi_status status) {
  if (status != napi_ok) throw Napi::Error::New(env);
}

// The JS error for the C++ exception being handled (call it inside a catch block).
inline napi_value current_js_error(Napi::Env env) {
  try {
    throw;
  } catch (const Napi::Error& e) {
    return e.Value();
  } catch (const lc::Error& e) {
    return js_error(env, e.what(), e.code()).Value();
  } catch (const std::bad_alloc&) {
    return js_error(env, "out of memory", "ERR_OUT_OF_MEMORY").Value();
  } catch (const std::exception& e) {
    return js_error(env, e.what(), "ERR_LORA_NATIVE").Value();
  } catch (...) {
    return js_error(env, "unknown native exception", "ERR_LORA_NATIVE").Value();
  }
}

// Makes the C++ exception being handled the pending JS exception (call it inside a catch block).
// Never throws: while a worker's environment shuts down (worker.terminate(), its resourceLimits)
// N-API can no longer run JS, so making or throwing the error fails, and a C++ exception leaving a
// callback would abort the whole process. Then nothing is thrown: no JS runs there again anyway.
inline void throw_current_as_js(napi_env env) noexcept {
  try {
    // Fails only when an exception is already pending (it stays) or the environment is shutting down.
    napi_throw(env, current_js_error(Napi::Env(env)));
  } catch (...) {
    // The environment is shutting down.
  }
}

// Every callback from JS into the addon runs its body through here (the exported functions, the
// tensor handle's constructor, the module's initialisation): no C++ exception reaches N-API.
template <typename Body>
napi_value boundary(napi_env env, Body&& body) noexcept {
  try {
    return std::forward<Body>(body)();
  } catch (...) {
    throw_current_as_js(env);
    return nullptr;
  }
}

using FunctionBody = std::function<Napi::Value(const Napi::CallbackInfo&)>;

inline napi_value call_function_body(napi_env env, napi_callback_info info) noexcept {
  return boundary(env, [&]() -> napi_value {
    Napi::CallbackInfo ci(env, info);
    return (*static_cast<const FunctionBody*>(ci.Data()))(ci);
  });
}

inline void delete_function_body(Napi::node_addon_api_basic_env, void* data, void*) noexcept {
  delete static_cast<FunctionBody*>(data);
}

// A JS function that runs body inside boundary(). (Napi::Function::New would catch only
// Napi::Error, and rethrow from its catch block when the environment cannot take the error.)
inline Napi::Function make_function(Napi::Env env, const char* name, FunctionBody body) {
  auto owned = std::make_unique<FunctionBody>(std::move(body));
  napi_value f;
  check(env, napi_create_function(env, name, NAPI_AUTO_LENGTH, call_function_body, owned.get(), &f));
  check(env, napi_add_finalizer(env, f, owned.get(), delete_function_body, nullptr, nullptr));
  owned.release();  // the function's finalizer deletes it
  return Napi::Function(env, f);
}

inline double num(const Napi::Value& v, const char* what) {
  if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), std::string(what) + " must be a number");
  return v.As<Napi::Number>().DoubleValue();
}

inline int64_t i64(const Napi::Value& v, const char* what) {
  double d = num(v, what);
  // Converting NaN, an infinity or a value beyond int64 is undefined behaviour (UBSan).
  if (!(d >= -9223372036854775808.0 && d < 9223372036854775808.0))
    throw Napi::RangeError::New(v.Env(), std::string(what) + " must be an integer");
  return static_cast<int64_t>(d);
}

inline bool flag(const Napi::Value& v) { return v.ToBoolean().Value(); }

}  // namespace lc_napi
