// Shared by the binding's source files: the one place C++ exceptions become JS
// Errors (with a `code`), and the checked conversions of number arguments.
#pragma once
#include <napi.h>

#include <cstdint>
#include <new>
#include <string>
#include <utility>

#include "../src/tensor.h"

namespace lc_napi {

inline Napi::Error js_error(Napi::Env env, const std::string& msg, const std::string& code) {
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, code));
  return e;
}

// Runs body(); no C++ exception escapes into N-API (that would abort the process).
template <typename Body>
Napi::Value guarded(Napi::Env env, Body&& body) {
  try {
    return std::forward<Body>(body)();
  } catch (const Napi::Error&) {
    throw;
  } catch (const lc::Error& e) {
    throw js_error(env, e.what(), e.code());
  } catch (const std::bad_alloc&) {
    throw js_error(env, "out of memory", "ERR_OUT_OF_MEMORY");
  } catch (const std::exception& e) {
    throw js_error(env, e.what(), "ERR_LORA_NATIVE");
  }
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
