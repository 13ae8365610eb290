// Scaled dot-product attention on the CPU, grouped KV heads, forward and
// backward. Plain loops laid out so that the inner loops are unit-stride and
// vectorise (keys and values transposed once per call), compiled once more for
// AVX2+FMA and for AVX-512 and picked with the GEMM's copy (cpu_kernels(): the
// library is built without -march, so the plain copy has 16-byte vectors);
// rows, then heads, split over the thread pool. The backward recomputes the probabilities from
// the saved logsumexp with the forward's exact operations. Either layout
// ([B, H, T, D] or [B, T, H, D]) is read through row offsets; bfloat16 and
// float16 inputs are widened to float, computed as float32 and rounded once.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_backend.h"
#include "gemm.h"

#if defined(__GNUC__)
#define LC_AINLINE inline __attribute__((always_inline))
#else
#define LC_AINLINE inline
#endif

namespace lc {
namespace {

// Three copies of impl(args, begin, end) (plain, AVX2+FMA, AVX-512), as template functions
// name_generic/_avx2/_avx512, and name(isa, args, begin, end) calling the one for cpu_kernels().
#if defined(__x86_64__) && defined(__GNUC__)
#define LC_ISA_COPIES(name, Args, impl)                                                        \
  template <typename T>                                                                        \
  void name##_generic(const Args<T>& f, int64_t b, int64_t e) {                                \
    impl(f, b, e);                                                                             \
  }                                                                                            \
  template <typename T>                                                                        \
  __attribute__((target("avx2,fma"))) void name##_avx2(const Args<T>& f, int64_t b, int64_t e) { \
    impl(f, b, e);                                                                             \
  }                                                                                            \
  template <typename T>                                                                        \
  __attribute__((target("avx512f,avx512vl,avx2,fma,prefer-vector-width=512"))) void            \
      name##_avx512(const Args<T>& f, int64_t b, int64_t e) {                                  \
    impl(f, b, e);                                                                             \
  }                                                                                            \
  template <typename T>                                                                        \
  void name(CpuKernels isa, const Args<T>& f, int64_t b, int64_t e) {                          \
    if (isa == CpuKernels::Avx512) return name##_avx512(f, b, e);                              \
    if (isa == CpuKernels::Avx2) return name##_avx2(f, b, e);                                  \
    name##_generic(f, b, e);                                                                   \
  }
#else
#define LC_ISA_COPIES(name, Args, impl)                                                        \
  template <typename T>                                                                        \
  void name(CpuKernels, const Args<T>& f, int64_t b, int64_t e) {                              \
    impl(f, b, e);                                                                             \
  }
#endif


// y[0:n] += a * x[0:n]
template <typename T>
LC_AINLINE void row_axpy(T* y, T a, const T* x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// Kt[s] [cols, rows] = the rows of slice s transposed, row r of slice s at src + row(s, r).
template <typename T, typename Row>
void transpose_slices(const T* src, int64_t slices, int64_t rows, int64_t cols, Row row, T* dst) {
  par_items(slices, rows * cols, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      T* out = dst + s * rows * cols;
      for (int64_t i = 0; i < rows; ++i) {
        const T* in = src + row(s, i);
        for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = in[j];
      }
    }
  });
}

// s[j] = (scale * q_i) . k_j for j < jn, with Kt [Dh, S] the keys transposed
// (so the loop over j is unit-stride). Forward and backward both call this, so
// the backward's probabilities are the forward's to the last bit.
template <typename T>
LC_AINLINE void scores(const T* qi, const T* Kt, int64_t S, int64_t Dh, int64_t jn, T scale, T* s) {
  std::fill_n(s, jn, T(0));
  for (int64_t d = 0; d < Dh; ++d) row_axpy(s, scale * qi[d], Kt + d * S, jn);
}

struct AttnDims {
  int64_t B, Hq, Hkv, T, S, Dh, Dv, group;
  // Causal alignment (bottom-right): query i sits at key position i + off, off = S - T >= 0
  // (0 when S == T; S > T is a decode step over cached keys).
  int64_t off;
  bool bthd;  // [B, T, H, D] instead of [B, H, T, D]
  AttnDims(const Tensor& q, const Tensor& v, bool bthd_)
      : B(q.shape[0]), Hq(q.shape[bthd_ ? 2 : 1]), Hkv(v.shape[bthd_ ? 2 : 1]),
        T(q.shape[bthd_ ? 1 : 2]), S(v.shape[bthd_ ? 1 : 2]), Dh(q.shape[3]), Dv(v.shape[3]),
        group(Hkv ? Hq / Hkv : 1), off(S > T ? S - T : 0), bthd(bthd_) {}
  // Flat index of the kv head read by query slice bh = b * Hq + h.
  int64_t kv_of(int64_t bh) const { return (bh / Hq) * Hkv + (bh % Hq) / group; }
  // Keys visible to query row i.
  int64_t visible(int64_t i, bool causal) const { return causal ? std::min(i + off + 1, S) : S; }
  // Element offset of row i of slice s (= b * H + h) of a tensor with H heads, L rows, D columns.
  int64_t row(int64_t s, int64_t i, int64_t H, int64_t L, int64_t D) const {
    return bthd ? ((s / H) * L + i) * H * D + (s % H) * D : (s * L + i) * D;
  }
  int64_t qrow(int64_t bh, int64_t i) const { return row(bh, i, Hq, T, Dh); }  // q, dq
  int64_t orow(int64_t bh, int64_t i) const { return row(bh, i, Hq, T, Dv); }  // out, dout
  int64_t krow(int64_t kv, int64_t j) const { return row(kv, j, Hkv, S, Dh); }  // k, dk
  int64_t vrow(int64_t kv, int64_t j) const { return row(kv, j, Hkv, S, Dv); }  // v, dv
};

// First key visible to query row i of batch row b: starts[b, i] (clamped into [0, i + off], so
// a bad value cannot reach outside the row), or 0 without starts.
inline int64_t first_key(const int32_t* st, int64_t b, int64_t T, int64_t i, int64_t off) {
  if (!st) return 0;
  return std::max<int64_t>(0, std::min<int64_t>(st[b * T + i], i + off));
}

// The forward's rows [r0, r1) of all heads (r = bh * T + i), Kt the keys transposed.
template <typename T>
struct FwdRows {
  const T *q, *Kt, *v;
  T *o, *lse;
  const AttnDims* a;
  bool causal;
  T scale;
  const int32_t* st;
};

template <typename T>
LC_AINLINE void fwd_rows_impl(const FwdRows<T>& f, int64_t r0, int64_t r1) {
  const AttnDims& a = *f.a;
  std::vector<T> s(static_cast<size_t>(a.S));
  for (int64_t r = r0; r < r1; ++r) {
    int64_t i = r % a.T, bh = r / a.T, kv = a.kv_of(bh);
    int64_t jn = a.visible(i, f.causal);
    const int64_t j0 = first_key(f.st, bh / a.Hq, a.T, i, a.off);
    T* o = f.o + a.orow(bh, i);
    std::fill_n(o, a.Dv, T(0));
    if (jn == 0) {  // no keys: a zero row, as softmax over nothing times nothing
      f.lse[r] = -std::numeric_limits<T>::infinity();
      continue;
    }
    // Scores of keys j0..jn-1, kept at s[j0..jn-1] (j0 == 0 without starts).
    scores(f.q + a.qrow(bh, i), f.Kt + kv * a.Dh * a.S + j0, a.S, a.Dh, jn - j0, f.scale,
           s.data() + j0);
    T m = s[j0];
    for (int64_t j = j0 + 1; j < jn; ++j) m = std::max(m, s[j]);
    double l = 0;
    for (int64_t j = j0; j < jn; ++j) {
      s[j] = std::exp(s[j] - m);
      l += s[j];
    }
    for (int64_t j = j0; j < jn; ++j) row_axpy(o, s[j], f.v + a.vrow(kv, j), a.Dv);
    T inv = static_cast<T>(1.0 / l);
    for (int64_t d = 0; d < a.Dv; ++d) o[d] *= inv;
    f.lse[r] = static_cast<T>(static_cast<double>(m) + std::log(l));
  }
}

LC_ISA_COPIES(fwd_rows, FwdRows, fwd_rows_impl)

template <typename T>
void attn_forward(const T* pq, const T* pk, const T* pv, T* po, T* pl, const AttnDims& a,
                  bool causal, double scale_d, const int32_t* st) {
  std::vector<T> Kt(static_cast<size_t>(a.B * a.Hkv * a.S * a.Dh));
  if (!Kt.empty())
    transpose_slices(pk, a.B * a.Hkv, a.S, a.Dh, [&](int64_t s, int64_t j) { return a.krow(s, j); },
                     Kt.data());
  const FwdRows<T> f{pq, Kt.data(), pv, po, pl, &a, causal, static_cast<T>(scale_d), st};
  const CpuKernels isa = cpu_kernels();
  // Rows of all heads are independent: split over B * Hq * T rows.
  int64_t rows = a.B * a.Hq * a.T;
  int64_t cost = std::max<int64_t>(1, (causal ? a.S / 2 : a.S) * (a.Dh + a.Dv + 1));
  par_items(rows, cost, [&](int64_t r0, int64_t r1) { fwd_rows(isa, f, r0, r1); });
}

// The backward's query heads [h0, h1) (bh = b * Hq + h): dq in place, dk and dv into per-head
// scratch [S, D] at dk_part / dv_part + bh * S * D.
template <typename T>
struct BwdHeads {
  const T *g, *q, *k, *lse, *Kt, *Vt;
  T *dq, *dk_part, *dv_part;
  const AttnDims* a;
  bool causal;
  T scale;
  const int32_t* st;
};

template <typename T>
LC_AINLINE void bwd_heads_impl(const BwdHeads<T>& f, int64_t h0, int64_t h1) {
  const AttnDims& a = *f.a;
  const bool need_ds = f.dq || f.dk_part;  // the score gradient feeds dq and dk
  std::vector<T> p(static_cast<size_t>(a.S)), ds(static_cast<size_t>(a.S));
  for (int64_t bh = h0; bh < h1; ++bh) {
    int64_t kv = a.kv_of(bh);
    T* dkh = f.dk_part ? f.dk_part + bh * a.S * a.Dh : nullptr;
    T* dvh = f.dv_part ? f.dv_part + bh * a.S * a.Dv : nullptr;
    if (dkh) std::fill_n(dkh, a.S * a.Dh, T(0));
    if (dvh) std::fill_n(dvh, a.S * a.Dv, T(0));
    const T* Ktk = f.Kt + kv * a.Dh * a.S;
    const T* Vtk = f.Vt ? f.Vt + kv * a.Dv * a.S : nullptr;
    for (int64_t i = 0; i < a.T; ++i) {
      int64_t r = bh * a.T + i;
      int64_t jn = a.visible(i, f.causal);
      const int64_t j0 = first_key(f.st, bh / a.Hq, a.T, i, a.off);
      const T* qi = f.q + a.qrow(bh, i);
      const T* gi = f.g + a.orow(bh, i);
      T* dqi = f.dq ? f.dq + a.qrow(bh, i) : nullptr;
      if (dqi) std::fill_n(dqi, a.Dh, T(0));
      if (jn == 0) continue;
      // P row (keys j0..jn-1 at p[j0..jn-1]), recomputed from the saved logsumexp.
      scores(qi, Ktk + j0, a.S, a.Dh, jn - j0, f.scale, p.data() + j0);
      T l = f.lse[r];
      for (int64_t j = j0; j < jn; ++j) p[j] = std::exp(p[j] - l);
      if (dvh)  // dv_j += p_ij dO_i
        for (int64_t j = j0; j < jn; ++j) row_axpy(dvh + j * a.Dv, p[j], gi, a.Dv);
      if (!need_ds) continue;
      // dP_ij = dO_i . v_j; dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij), times scale.
      std::fill_n(ds.data() + j0, jn - j0, T(0));
      for (int64_t d = 0; d < a.Dv; ++d)
        row_axpy(ds.data() + j0, gi[d], Vtk + d * a.S + j0, jn - j0);
      double dot = 0;
      for (int64_t j = j0; j < jn; ++j) dot += static_cast<double>(p[j]) * ds[j];
      T D = static_cast<T>(dot);
      for (int64_t j = j0; j < jn; ++j) ds[j] = f.scale * (p[j] * (ds[j] - D));
      if (dqi)  // dq_i = sum_j dS_ij k_j
        for (int64_t j = j0; j < jn; ++j) row_axpy(dqi, ds[j], f.k + a.krow(kv, j), a.Dh);
      if (dkh)  // dk_j += dS_ij q_i
        for (int64_t j = j0; j < jn; ++j) row_axpy(dkh + j * a.Dh, ds[j], qi, a.Dh);
    }
  }
}

LC_ISA_COPIES(bwd_heads, BwdHeads, bwd_heads_impl)

// pdq, pdk, pdv (set) in the inputs' layouts; null when not wanted.
template <typename T>
void attn_backward(const T* pg, const T* pq, const T* pk, const T* pv, const T* pl, T* pdq,
                   T* pdk, T* pdv, const AttnDims& a, bool causal, double scale_d,
                   const int32_t* st) {
  const bool need_ds = pdq || pdk;  // the score gradient feeds dq and dk
  auto krow = [&](int64_t s, int64_t j) { return a.krow(s, j); };
  auto vrow = [&](int64_t s, int64_t j) { return a.vrow(s, j); };
  std::vector<T> Kt(static_cast<size_t>(a.B * a.Hkv * a.S * a.Dh)), Vt;
  if (!Kt.empty()) transpose_slices(pk, a.B * a.Hkv, a.S, a.Dh, krow, Kt.data());
  if (need_ds && a.B * a.Hkv * a.S * a.Dv > 0) {
    Vt.resize(static_cast<size_t>(a.B * a.Hkv * a.S * a.Dv));
    transpose_slices(pv, a.B * a.Hkv, a.S, a.Dv, vrow, Vt.data());
  }
  // One task per query head. dk/dv are built per query head in contiguous scratch
  // [B * Hq, S, D] and summed into each kv head (in its layout) afterwards, so tasks never
  // write to the same memory.
  std::vector<T> dk_part, dv_part;
  if (pdk) dk_part.resize(static_cast<size_t>(a.B * a.Hq * a.S * a.Dh));
  if (pdv) dv_part.resize(static_cast<size_t>(a.B * a.Hq * a.S * a.Dv));
  const BwdHeads<T> f{pg, pq, pk, pl, Kt.data(), Vt.empty() ? nullptr : Vt.data(), pdq,
                      pdk ? dk_part.data() : nullptr, pdv ? dv_part.data() : nullptr, &a, causal,
                      static_cast<T>(scale_d), st};
  const CpuKernels isa = cpu_kernels();
  int64_t cost = std::max<int64_t>(1, a.T * (causal ? a.S / 2 : a.S) * (2 * a.Dh + 2 * a.Dv + 2));
  par_items(a.B * a.Hq, cost, [&](int64_t h0, int64_t h1) { bwd_heads(isa, f, h0, h1); });
  // Sum the per-query-head parts into each kv head (set), in the kv layout.
  auto reduce = [&](const std::vector<T>& part, T* dst, int64_t D, bool is_k) {
    par_items(a.B * a.Hkv, a.group * a.S * D, [&](int64_t s0, int64_t s1) {
      for (int64_t kv = s0; kv < s1; ++kv) {
        int64_t b = kv / a.Hkv, kvh = kv % a.Hkv;
        const T* first = part.data() + (b * a.Hq + kvh * a.group) * a.S * D;
        for (int64_t j = 0; j < a.S; ++j) {
          T* o = dst + (is_k ? a.krow(kv, j) : a.vrow(kv, j));
          std::copy(first + j * D, first + (j + 1) * D, o);
          for (int64_t g = 1; g < a.group; ++g) row_axpy(o, T(1), first + (g * a.S + j) * D, D);
        }
      }
    });
  };
  if (pdk) reduce(dk_part, pdk, a.Dh, true);
  if (pdv) reduce(dv_part, pdv, a.Dv, false);
}

// The elements of t as float (a 16-bit tensor's values, exactly).
template <typename H>
std::vector<float> widen(const Tensor& t) {
  std::vector<float> f(static_cast<size_t>(t.numel()));
  const H* p = t.data<H>();
  for (size_t i = 0; i < f.size(); ++i) f[i] = static_cast<float>(p[i]);
  return f;
}
// t (set) = f rounded once to t's 16-bit type.
template <typename H>
void narrow(const std::vector<float>& f, const Tensor& t) {
  H* p = t.data<H>();
  for (size_t i = 0; i < f.size(); ++i) p[i] = H(f[i]);
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                   double scale, const Tensor& out, const Tensor& lse,
                                   const Tensor* starts, bool bthd) {
  const AttnDims a(q, v, bthd);
  const int32_t* st = starts ? starts->data<int32_t>() : nullptr;
  dispatch_floating(q.dtype, "attention", [&](auto z) {
    using T = decltype(z);
    if constexpr (is_half_v<T>) {
      const auto fq = widen<T>(q), fk = widen<T>(k), fv = widen<T>(v);
      std::vector<float> fo(static_cast<size_t>(out.numel()));
      attn_forward<float>(fq.data(), fk.data(), fv.data(), fo.data(), lse.data<float>(), a, causal,
                          scale, st);
      narrow<T>(fo, out);
    } else {
      attn_forward<T>(q.data<T>(), k.data<T>(), v.data<T>(), out.data<T>(), lse.data<T>(), a,
                      causal, scale, st);
    }
  });
}

void CpuBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& out, const Tensor& lse,
                                    bool causal, double scale, const Tensor* dq, const Tensor* dk,
                                    const Tensor* dv, const Tensor* starts, bool bthd) {
  (void)out;  // D_i is computed from the probabilities here (the same value)
  const AttnDims a(q, v, bthd);
  const int32_t* st = starts ? starts->data<int32_t>() : nullptr;
  dispatch_floating(q.dtype, "attention backward", [&](auto z) {
    using T = decltype(z);
    if constexpr (is_half_v<T>) {
      const auto fg = widen<T>(dout), fq = widen<T>(q), fk = widen<T>(k), fv = widen<T>(v);
      std::vector<float> gq(dq ? fq.size() : 0), gk(dk ? fk.size() : 0), gv(dv ? fv.size() : 0);
      attn_backward<float>(fg.data(), fq.data(), fk.data(), fv.data(), lse.data<float>(),
                           dq ? gq.data() : nullptr, dk ? gk.data() : nullptr,
                           dv ? gv.data() : nullptr, a, causal, scale, st);
      if (dq) narrow<T>(gq, *dq);
      if (dk) narrow<T>(gk, *dk);
      if (dv) narrow<T>(gv, *dv);
    } else {
      attn_backward<T>(dout.data<T>(), q.data<T>(), k.data<T>(), v.data<T>(), lse.data<T>(),
                       dq ? dq->data<T>() : nullptr, dk ? dk->data<T>() : nullptr,
                       dv ? dv->data<T>() : nullptr, a, causal, scale, st);
    }
  });
}

}  // namespace lc
