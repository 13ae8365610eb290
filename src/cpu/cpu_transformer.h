// CPU kernels of the transformer blocks (cpu_transformer.cpp); CpuBackend
// forwards its Backend methods to them.
#pragma once
#include <cstdint>

#include "../tensor.h"

namespace lc {

namespace cpu_tf {
void embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out);
void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dweight);
void rms_norm_forward(const Tensor& x, const Tensor* weight, double eps, const Tensor& y,
                      const Tensor& rstd);
void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                       const Tensor& rstd, const Tensor* dx, const Tensor* dweight);
void rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& out);
void rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, const Tensor& dx);
void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                       double scale, const Tensor& out, const Tensor& lse);
void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& lse, bool causal, double scale, const Tensor* dq,
                        const Tensor* dk, const Tensor* dv);
}  // namespace cpu_tf

}  // namespace lc
