// Vectorised, threaded float32 paths of row-wise ops whose plain loops cost
// more than the matrix products around them in a training step (the cross
// entropy over a 49k vocabulary: two passes of exp over 25M logits). Each is
// compiled for AVX-512, AVX2+FMA and the portable width and runs the copy
// cpu_kernels() chose; exp is a Cephes-style polynomial (about 2 ulp, exact 0
// below -88.4, NaN kept; SiLU's over the whole float range, +inf past ln(FLT_MAX) as expf), row sums
// in double as the plain loops do.
#pragma once
#include <cstdint>

namespace lc {

// Cross entropy forward over logits [N, C]: lse[i] = logsumexp(row i) and
// loss_rows[i] as CpuBackend::cross_entropy_forward. Returns -1, or the first
// row whose target is neither ignore_index nor in [0, C) (the caller then
// reports it; rows may have been written).
int64_t cross_entropy_forward_f32(const float* x, const int32_t* t, int64_t N, int64_t C,
                                  int64_t ignore_index, double ls, float* loss_rows, float* lse);

// dlogits = scale * g_i * (softmax(row i) - smoothed one-hot of t[i]); rows
// with t[i] == ignore_index are zero. g has one value per row (per_row) or one.
void cross_entropy_backward_f32(const float* x, const float* lse, const int32_t* t, int64_t N,
                                int64_t C, int64_t ignore_index, double ls, const float* g,
                                bool per_row, double scale, float* d);

// SiLU over n floats, y = x / (1 + exp(-x)), and its backward dx = dy * s * (1 + x * (1 - s)) with
// s = 1 / (1 + exp(-x)): the formulas of elementwise.cpp on the vectorised exp, one pass each
// (the MLP's activation: two passes of exp over [tokens, intermediate] per layer and step).
// Called per chunk of the caller's split (no threading inside); every element takes the vector
// formula, the last n % width too, so results do not depend on where the chunks fall.
void silu_f32(const float* x, float* y, int64_t n);
void silu_backward_f32(const float* x, const float* dy, float* dx, int64_t n);
// The Llama MLP's gate, y = silu(g) u, and its backward du = dy silu(g), dg = (dy u) silu'(g),
// each product rounded as SiLU then a multiply round it (the same bits), in one pass each.
// Every element takes the vector formula (the last n % width too), so chunking never shows.
void swiglu_f32(const float* g, const float* u, float* y, int64_t n);
void swiglu_backward_f32(const float* g, const float* u, const float* dy, float* dg, float* du,
                         int64_t n);

// x[j] = exp(x[j] - m) for j < n, returning their sum in double: a softmax row (attention's).
double exp_shift_f32(float* x, int64_t n, float m);

// Attention's softmax row in place: x[j] = exp(x[j] - m) / sum over j < n (n >= 1, m the row's
// max), returning the logsumexp m + log(sum) (sum in double): the bits of the scalar max, then
// exp_shift_f32, then a multiply by 1 / sum, with the max and the multiply vectorised too.
float softmax_row_f32(float* x, int64_t n);

}  // namespace lc
