// The addon's `distributed` object (binding/distributed.cpp): MPI and NCCL collectives.
#pragma once
#include <napi.h>

#include "bench.h"

namespace lc_napi {

Napi::Object distributed_exports(Napi::Env env, TensorArg tensor_arg);

}  // namespace lc_napi
