// The emulator's warp matrix functions (nvcuda::wmma): 16x16x16 products of
// __half or __nv_bfloat16 operands and 16x16x8 products of precision::tf32
// operands (float in memory and in the fragment) into float accumulators, as
// the tensor cores compute them (exact products, fp32 accumulation). A tf32
// operand is read as the tensor cores read it, its low 13 mantissa bits
// dropped: elements not rounded with __float_to_tf32 after the load (as CUDA
// requires) give truncated, not rounded, products.
//
// Each lane holds only its own elements of a fragment, at the positions the
// sm_80+ mma.sync layout gives them (8 per lane for 16-bit operands and
// accumulators, 4 for tf32 ones: lane l = 4 g + t holds rows g and g + 8), so code that reads a fragment's x[] as if it held a row, or
// stores a fragment with one layout and loads it with another, computes wrong
// numbers here too. Every call is a warp function: all 32 lanes must reach the
// same call (the emulator reports a divergent or skipped one), and
//   - load_matrix_sync reads this lane's elements when the lane arrives, before
//     the warp meets: data other lanes write without a __syncwarp() (or
//     __syncthreads()) in between is not seen (NaN from fresh shared memory);
//   - store_matrix_sync writes this lane's elements after the warp met, each
//     lane as it goes on: reading another lane's elements needs a __syncwarp();
//   - mma_sync exchanges the operands through the warp: a lane that did not
//     load its part contributes what its fragment holds.
// Pointers must be 256-bit aligned and ldm a multiple of 16 bytes, as CUDA
// requires; otherwise the launch fails with a message naming the call.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

namespace nvcuda {
namespace wmma {

struct row_major {};
struct col_major {};
struct matrix_a {};
struct matrix_b {};
struct accumulator {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

template <typename T, int N>
struct __frag_base {
  enum { num_elements = N };
  typedef T element_type;
  typedef T storage_element_type;
  T x[N];
};

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment;

template <typename T, typename L>
class fragment<matrix_a, 16, 16, 16, T, L> : public __frag_base<T, 8> {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "the emulator's matrix_a fragments are __half or __nv_bfloat16");
  static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                "matrix_a needs row_major or col_major");
};
template <typename T, typename L>
class fragment<matrix_b, 16, 16, 16, T, L> : public __frag_base<T, 8> {
  static_assert(std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value,
                "the emulator's matrix_b fragments are __half or __nv_bfloat16");
  static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                "matrix_b needs row_major or col_major");
};
template <typename L>
class fragment<matrix_a, 16, 16, 8, precision::tf32, L> : public __frag_base<float, 4> {
  static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                "matrix_a needs row_major or col_major");
};
template <typename L>
class fragment<matrix_b, 16, 16, 8, precision::tf32, L> : public __frag_base<float, 4> {
  static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                "matrix_b needs row_major or col_major");
};
template <>
class fragment<accumulator, 16, 16, 16, float, void> : public __frag_base<float, 8> {};
template <>
class fragment<accumulator, 16, 16, 8, float, void> : public __frag_base<float, 8> {};

// cvt.rna.tf32.f32: to 10 mantissa bits, to nearest with ties away from zero; the result is a
// float whose low 13 bits are zero (Inf and NaN pass unchanged).
inline float __float_to_tf32(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
}

namespace detail {

inline int lane() {
  const int t = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  return t & 31;
}
inline int warp() {
  const int t = static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  return t >> 5;
}
// (row, column) of element e of lane l: A and C (M x K, M x N) as the rows of
// mma.m16n8k16's A and C, B (K x N) as its columns.
inline void pos_ac(int l, int e, int& r, int& c) {
  const int g = l >> 2, t = l & 3;
  r = g + 8 * ((e >> 1) & 1);
  c = 2 * t + (e & 1) + 8 * (e >> 2);
}
inline void pos_b(int l, int e, int& r, int& c) {
  const int g = l >> 2, t = l & 3;
  r = 2 * t + (e & 1) + 8 * ((e >> 1) & 1);
  c = g + 8 * (e >> 2);
}
// The same for tf32 operands, as mma.m16n8k8's: A (16 x 8) and B (8 x 16, two n8 halves).
inline void pos_a8(int l, int e, int& r, int& c) {
  const int g = l >> 2, t = l & 3;
  r = g + 8 * (e & 1);
  c = t + 4 * (e >> 1);
}
inline void pos_b8(int l, int e, int& r, int& c) {
  const int g = l >> 2, t = l & 3;
  r = t + 4 * (e & 1);
  c = g + 8 * (e >> 1);
}
// A tf32 operand as the tensor cores read it: the low 13 bits ignored.
inline float tf32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  u &= 0xffffe000u;
  std::memcpy(&x, &u, 4);
  return x;
}
inline int64_t offset(int r, int c, unsigned ldm, bool col) {
  return col ? static_cast<int64_t>(c) * ldm + r : static_cast<int64_t>(r) * ldm + c;
}
inline void check_ptr(const char* fn, const void* p, unsigned ldm, size_t elem, const char* file, int line) {
  if (reinterpret_cast<uintptr_t>(p) % 32)
    ::emu::device_fault(file, line, (std::string(fn) + ": the pointer is not 256-bit aligned").c_str());
  if ((ldm * elem) % 16)
    ::emu::device_fault(file, line,
                        (std::string(fn) + ": ldm (" + std::to_string(ldm) + " elements) is not a multiple of 16 bytes").c_str());
}
template <typename L>
constexpr bool is_col() {
  return std::is_same<L, col_major>::value;
}
// Where a warp puts the operands of its product (blocks run one at a time on a thread).
struct Scratch {
  float a[256], b[256], c[256];
};
inline thread_local Scratch g_scratch[32];

}  // namespace detail

template <typename Use, typename T, typename L>
inline void fill_fragment(fragment<Use, 16, 16, 16, T, L>& f, const T& v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}
template <typename Use, typename L>
inline void fill_fragment(fragment<Use, 16, 16, 8, precision::tf32, L>& f, float v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}
inline void fill_fragment(fragment<accumulator, 16, 16, 16, float, void>& f, float v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}
inline void fill_fragment(fragment<accumulator, 16, 16, 8, float, void>& f, float v) {
  for (int e = 0; e < f.num_elements; ++e) f.x[e] = v;
}

template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 16, T, L>& f, const T* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_ptr("wmma::load_matrix_sync", p, ldm, sizeof(T), file, line);
  const int l = detail::lane();
  for (int e = 0; e < 8; ++e) {
    int r, c;
    detail::pos_ac(l, e, r, c);
    f.x[e] = p[detail::offset(r, c, ldm, detail::is_col<L>())];
  }
  ::emu::warp_op(file, line, ::emu::kWmmaLoad, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
}
template <typename T, typename L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 16, T, L>& f, const T* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_ptr("wmma::load_matrix_sync", p, ldm, sizeof(T), file, line);
  const int l = detail::lane();
  for (int e = 0; e < 8; ++e) {
    int r, c;
    detail::pos_b(l, e, r, c);
    f.x[e] = p[detail::offset(r, c, ldm, detail::is_col<L>())];
  }
  ::emu::warp_op(file, line, ::emu::kWmmaLoad, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
}
template <typename L>
inline void load_matrix_sync(fragment<matrix_a, 16, 16, 8, precision::tf32, L>& f, const float* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_ptr("wmma::load_matrix_sync", p, ldm, sizeof(float), file, line);
  const int l = detail::lane();
  for (int e = 0; e < 4; ++e) {
    int r, c;
    detail::pos_a8(l, e, r, c);
    f.x[e] = p[detail::offset(r, c, ldm, detail::is_col<L>())];
  }
  ::emu::warp_op(file, line, ::emu::kWmmaLoad, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
}
template <typename L>
inline void load_matrix_sync(fragment<matrix_b, 16, 16, 8, precision::tf32, L>& f, const float* p, unsigned ldm,
                             const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_ptr("wmma::load_matrix_sync", p, ldm, sizeof(float), file, line);
  const int l = detail::lane();
  for (int e = 0; e < 4; ++e) {
    int r, c;
    detail::pos_b8(l, e, r, c);
    f.x[e] = p[detail::offset(r, c, ldm, detail::is_col<L>())];
  }
  ::emu::warp_op(file, line, ::emu::kWmmaLoad, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
}
template <int K>
inline void load_matrix_sync(fragment<accumulator, 16, 16, K, float, void>& f, const float* p, unsigned ldm,
                             layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_ptr("wmma::load_matrix_sync", p, ldm, sizeof(float), file, line);
  const int l = detail::lane();
  for (int e = 0; e < 8; ++e) {
    int r, c;
    detail::pos_ac(l, e, r, c);
    f.x[e] = p[detail::offset(r, c, ldm, layout == mem_col_major)];
  }
  ::emu::warp_op(file, line, ::emu::kWmmaLoad, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
}

template <int K>
inline void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, K, float, void>& f, unsigned ldm,
                              layout_t layout, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  detail::check_ptr("wmma::store_matrix_sync", p, ldm, sizeof(float), file, line);
  ::emu::warp_op(file, line, ::emu::kWmmaStore, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
  const int l = detail::lane();
  for (int e = 0; e < 8; ++e) {
    int r, c;
    detail::pos_ac(l, e, r, c);
    p[detail::offset(r, c, ldm, layout == mem_col_major)] = f.x[e];
  }
}

// d = a b + c. The lanes put their elements of a, b and c into the warp's
// scratch, meet, each computes its elements of d (products exact, summed in
// double, rounded once to float), and meet again before the scratch is reused.
template <typename T, typename La, typename Lb>
inline void mma_sync(fragment<accumulator, 16, 16, 16, float, void>& d, const fragment<matrix_a, 16, 16, 16, T, La>& a,
                     const fragment<matrix_b, 16, 16, 16, T, Lb>& b,
                     const fragment<accumulator, 16, 16, 16, float, void>& c, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  detail::Scratch& s = detail::g_scratch[detail::warp()];
  const int l = detail::lane();
  for (int e = 0; e < 8; ++e) {
    int r, k;
    detail::pos_ac(l, e, r, k);
    s.a[r * 16 + k] = static_cast<float>(a.x[e]);
    s.c[r * 16 + k] = c.x[e];
    detail::pos_b(l, e, r, k);
    s.b[r * 16 + k] = static_cast<float>(b.x[e]);
  }
  ::emu::warp_op(file, line, ::emu::kWmmaMma, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
  float out[8];
  for (int e = 0; e < 8; ++e) {
    int r, n;
    detail::pos_ac(l, e, r, n);
    double acc = s.c[r * 16 + n];
    for (int k = 0; k < 16; ++k) acc += static_cast<double>(s.a[r * 16 + k]) * s.b[k * 16 + n];
    out[e] = static_cast<float>(acc);
  }
  ::emu::warp_op(file, line, ::emu::kWmmaMmaDone, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
  for (int e = 0; e < 8; ++e) d.x[e] = out[e];
}

// The same for tf32 operands (16 x 8 by 8 x 16), each read without its low 13 bits.
template <typename La, typename Lb>
inline void mma_sync(fragment<accumulator, 16, 16, 8, float, void>& d,
                     const fragment<matrix_a, 16, 16, 8, precision::tf32, La>& a,
                     const fragment<matrix_b, 16, 16, 8, precision::tf32, Lb>& b,
                     const fragment<accumulator, 16, 16, 8, float, void>& c, const char* file = __builtin_FILE(),
                     int line = __builtin_LINE()) {
  detail::Scratch& s = detail::g_scratch[detail::warp()];
  const int l = detail::lane();
  for (int e = 0; e < 8; ++e) {
    int r, k;
    detail::pos_ac(l, e, r, k);
    s.c[r * 16 + k] = c.x[e];
  }
  for (int e = 0; e < 4; ++e) {
    int r, k;
    detail::pos_a8(l, e, r, k);
    s.a[r * 8 + k] = detail::tf32_bits(a.x[e]);
    detail::pos_b8(l, e, k, r);
    s.b[k * 16 + r] = detail::tf32_bits(b.x[e]);
  }
  ::emu::warp_op(file, line, ::emu::kWmmaMma, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
  float out[8];
  for (int e = 0; e < 8; ++e) {
    int r, n;
    detail::pos_ac(l, e, r, n);
    double acc = s.c[r * 16 + n];
    for (int k = 0; k < 8; ++k) acc += static_cast<double>(s.a[r * 8 + k]) * s.b[k * 16 + n];
    out[e] = static_cast<float>(acc);
  }
  ::emu::warp_op(file, line, ::emu::kWmmaMmaDone, 0xffffffffu, 0, 32, nullptr, nullptr, 0);
  for (int e = 0; e < 8; ++e) d.x[e] = out[e];
}

}  // namespace wmma
}  // namespace nvcuda
