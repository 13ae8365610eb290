// Scaled dot-product attention on the CPU, grouped KV heads, forward and backward. Each query
// head's rows go kRows at a time through the built-in GEMM: the block's scores scale * q k^T
// (only the keys its last row may see when causal), the softmax rows (each row's keys start at
// its first visible key and end at its last; the rest are zero), then P v; the backward
// recomputes P from the saved logsumexp and the same score product, so its probabilities come
// from the forward's scores to the last bit. Heads are split over the thread pool. Either layout
// ([B, H, T, D] or [B, T, H, D]) is read through row strides; bfloat16 and float16 inputs are
// widened to float, computed as float32 and rounded once.
#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_backend.h"
#include "fast_f32.h"
#include "gemm.h"

namespace lc {
namespace {

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
  // Element offset of row i of slice s (= b * H + h) of a tensor with H heads, L rows, D columns,
  // and the stride between its rows.
  int64_t row(int64_t s, int64_t i, int64_t H, int64_t L, int64_t D) const {
    return bthd ? ((s / H) * L + i) * H * D + (s % H) * D : (s * L + i) * D;
  }
  int64_t ld(int64_t H, int64_t D) const { return bthd ? H * D : D; }
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

// The products run on the built-in GEMM (single-threaded here: it is called from inside the
// per-head tasks), whatever BLAS the backend's matmul uses, so a result never depends on it.
inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                 int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  builtin_sgemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}
inline void gemm(bool tA, bool tB, int64_t M, int64_t N, int64_t K, double alpha,
                 const double* A, int64_t lda, const double* B, int64_t ldb, double beta,
                 double* C, int64_t ldc) {
  builtin_dgemm(tA, tB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

// x[j] = exp(x[j] - m) for j < n; returns their sum in double. float32 uses the cross entropy's
// vectorised exp (fast_f32.h), float64 the library's.
inline double exp_shift(float* x, int64_t n, float m) { return exp_shift_f32(x, n, m); }
inline double exp_shift(double* x, int64_t n, double m) {
  double l = 0;
  for (int64_t j = 0; j < n; ++j) l += (x[j] = std::exp(x[j] - m));
  return l;
}

// Query rows are taken kRows at a time: the block's scores [kRows, keys] stay in cache, memory
// is O(kRows * S) per thread at any length, and a causal block only multiplies the keys its last
// row sees (3/4 of the square at T = S = 128).
constexpr int64_t kRows = 64;

// One query head bh's rows [i0, i1): its scores scale * q k^T over keys [0, jn) (jn = what the
// last row sees) into s [rows, jn] (row stride jn). The forward and the backward both call this,
// so the backward's probabilities come from the forward's scores to the last bit.
template <typename T>
void block_scores(const T* q, const T* k, const AttnDims& a, int64_t bh, int64_t i0, int64_t i1,
                  int64_t jn, T scale, T* s) {
  const int64_t kv = a.kv_of(bh);
  gemm(false, true, i1 - i0, jn, a.Dh, scale, q + a.qrow(bh, i0), a.ld(a.Hq, a.Dh),
       k + a.krow(kv, 0), a.ld(a.Hkv, a.Dh), T(0), s, jn);
}

template <typename T>
void attn_forward(const T* pq, const T* pk, const T* pv, T* po, T* pl, const AttnDims& a,
                  bool causal, double scale_d, const int32_t* st) {
  const T scale = static_cast<T>(scale_d);
  const int64_t cost = std::max<int64_t>(1, a.T * a.S * (a.Dh + a.Dv));
  par_items(a.B * a.Hq, cost, [&](int64_t h0, int64_t h1) {
    std::vector<T> s(static_cast<size_t>(std::min(kRows, a.T) * a.S));
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t kv = a.kv_of(bh);
      for (int64_t i0 = 0; i0 < a.T; i0 += kRows) {
        const int64_t i1 = std::min(a.T, i0 + kRows), jn = a.visible(i1 - 1, causal);
        if (jn > 0) block_scores(pq, pk, a, bh, i0, i1, jn, scale, s.data());
        // Each row: P = softmax over its keys [j0, je), zero elsewhere; lse saved.
        for (int64_t i = i0; i < i1; ++i) {
          T* p = s.data() + (i - i0) * jn;
          const int64_t je = a.visible(i, causal), j0 = first_key(st, bh / a.Hq, a.T, i, a.off);
          if (je == 0) {  // no keys: a zero row, as softmax over nothing times nothing
            std::fill_n(p, jn, T(0));
            pl[bh * a.T + i] = -std::numeric_limits<T>::infinity();
            continue;
          }
          if constexpr (std::is_same_v<T, float>) {
            pl[bh * a.T + i] = softmax_row_f32(p + j0, je - j0);  // the same steps, vectorised
          } else {
            T m = p[j0];
            for (int64_t j = j0 + 1; j < je; ++j) m = std::max(m, p[j]);
            const double l = exp_shift(p + j0, je - j0, m);
            const T inv = static_cast<T>(1.0 / l);
            for (int64_t j = j0; j < je; ++j) p[j] *= inv;
            pl[bh * a.T + i] = static_cast<T>(static_cast<double>(m) + std::log(l));
          }
          std::fill_n(p, j0, T(0));
          std::fill_n(p + je, jn - je, T(0));
        }
        // out rows (set) = P v.
        gemm(false, false, i1 - i0, a.Dv, jn, T(1), s.data(), jn, pv + a.vrow(kv, 0),
             a.ld(a.Hkv, a.Dv), T(0), po + a.orow(bh, i0), a.ld(a.Hq, a.Dv));
      }
    }
  });
}

// pdq, pdk, pdv (set) in the inputs' layouts; null when not wanted.
template <typename T>
void attn_backward(const T* pg, const T* pq, const T* pk, const T* pv, const T* pl, T* pdq,
                   T* pdk, T* pdv, const AttnDims& a, bool causal, double scale_d,
                   const int32_t* st) {
  const T scale = static_cast<T>(scale_d);
  const bool need_ds = pdq || pdk;  // the score gradient feeds dq and dk
  // dk and dv are built per query head in contiguous scratch [B * Hq, S, D] and summed into
  // each kv head (in its layout) afterwards, so tasks never write to the same memory.
  std::vector<T> dk_part, dv_part;
  if (pdk) dk_part.assign(static_cast<size_t>(a.B * a.Hq * a.S * a.Dh), T(0));
  if (pdv) dv_part.assign(static_cast<size_t>(a.B * a.Hq * a.S * a.Dv), T(0));
  const int64_t cost = std::max<int64_t>(1, a.T * a.S * (2 * a.Dh + 3 * a.Dv));
  par_items(a.B * a.Hq, cost, [&](int64_t h0, int64_t h1) {
    const size_t block = static_cast<size_t>(std::min(kRows, a.T) * a.S);
    std::vector<T> p(block), ds(need_ds ? block : 0);
    for (int64_t bh = h0; bh < h1; ++bh) {
      const int64_t kv = a.kv_of(bh);
      const T* q = pq + a.qrow(bh, 0);
      const T* g = pg + a.orow(bh, 0);
      const int64_t ldq = a.ld(a.Hq, a.Dh), ldo = a.ld(a.Hq, a.Dv);
      for (int64_t i0 = 0; i0 < a.T; i0 += kRows) {
        const int64_t i1 = std::min(a.T, i0 + kRows), rows = i1 - i0,
                      jn = a.visible(i1 - 1, causal);
        if (jn == 0) {  // no row sees a key: dq is zero, nothing reaches dk or dv
          if (pdq)
            for (int64_t i = i0; i < i1; ++i) std::fill_n(pdq + a.qrow(bh, i), a.Dh, T(0));
          continue;
        }
        // P recomputed from the saved logsumexp, zero outside each row's keys [j0, je).
        block_scores(pq, pk, a, bh, i0, i1, jn, scale, p.data());
        for (int64_t i = i0; i < i1; ++i) {
          T* pr = p.data() + (i - i0) * jn;
          const int64_t je = a.visible(i, causal), j0 = first_key(st, bh / a.Hq, a.T, i, a.off);
          const T l = pl[bh * a.T + i];
          if (je == 0) {
            std::fill_n(pr, jn, T(0));
            continue;
          }
          exp_shift(pr + j0, je - j0, l);
          std::fill_n(pr, j0, T(0));
          std::fill_n(pr + je, jn - je, T(0));
        }
        // dv_j (accumulate over row blocks) += sum_i P_ij dO_i.
        if (pdv)
          gemm(true, false, jn, a.Dv, rows, T(1), p.data(), jn, g + i0 * ldo, ldo, T(1),
               dv_part.data() + bh * a.S * a.Dv, a.Dv);
        if (!need_ds) continue;
        // dP = dO v^T; dS_ij = scale * P_ij (dP_ij - sum_j P_ij dP_ij).
        gemm(false, true, rows, jn, a.Dv, T(1), g + i0 * ldo, ldo, pv + a.vrow(kv, 0),
             a.ld(a.Hkv, a.Dv), T(0), ds.data(), jn);
        for (int64_t i = i0; i < i1; ++i) {
          const T* pr = p.data() + (i - i0) * jn;
          T* dr = ds.data() + (i - i0) * jn;
          const int64_t je = a.visible(i, causal),
                        j0 = je ? first_key(st, bh / a.Hq, a.T, i, a.off) : 0;
          double dot = 0;
          for (int64_t j = j0; j < je; ++j) dot += static_cast<double>(pr[j]) * dr[j];
          const T D = static_cast<T>(dot);
          for (int64_t j = j0; j < je; ++j) dr[j] = scale * (pr[j] * (dr[j] - D));
          std::fill_n(dr, j0, T(0));
          std::fill_n(dr + je, jn - je, T(0));
        }
        // dq rows (set) = dS k; dk_j (accumulate over row blocks) += sum_i dS_ij q_i.
        if (pdq)
          gemm(false, false, rows, a.Dh, jn, T(1), ds.data(), jn, pk + a.krow(kv, 0),
               a.ld(a.Hkv, a.Dh), T(0), pdq + a.qrow(bh, i0), ldq);
        if (pdk)
          gemm(true, false, jn, a.Dh, rows, T(1), ds.data(), jn, q + i0 * ldq, ldq, T(1),
               dk_part.data() + bh * a.S * a.Dh, a.Dh);
      }
    }
  });
  // Sum the per-query-head parts into each kv head (set), in the kv layout.
  auto reduce = [&](const std::vector<T>& part, T* dst, int64_t D, bool is_k) {
    par_items(a.B * a.Hkv, a.group * a.S * D, [&](int64_t s0, int64_t s1) {
      for (int64_t kv = s0; kv < s1; ++kv) {
        int64_t b = kv / a.Hkv, kvh = kv % a.Hkv;
        const T* first = part.data() + (b * a.Hq + kvh * a.group) * a.S * D;
        for (int64_t j = 0; j < a.S; ++j) {
          T* o = dst + (is_k ? a.krow(kv, j) : a.vrow(kv, j));
          std::copy(first + j * D, first + (j + 1) * D, o);
          for (int64_t g = 1; g < a.group; ++g) {
            const T* x = first + (g * a.S + j) * D;
            for (int64_t d = 0; d < D; ++d) o[d] += x[d];
          }
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
