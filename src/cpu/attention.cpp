// Scaled dot-product attention on the CPU, grouped KV heads, forward and
// backward. Plain loops laid out so that the inner loops are unit-stride and
// vectorise (keys and values transposed once per call); rows, then heads,
// split over the thread pool. The backward recomputes the probabilities from
// the saved logsumexp with the forward's exact operations.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cpu_backend.h"

namespace lc {
namespace {

// y[0:n] += a * x[0:n]
template <typename T>
inline void row_axpy(T* y, T a, const T* x, int64_t n) {
  for (int64_t d = 0; d < n; ++d) y[d] += a * x[d];
}

// dst[s] [cols, rows] = src[s] [rows, cols]^T for `slices` matrices.
template <typename T>
void transpose_slices(const T* src, int64_t slices, int64_t rows, int64_t cols, T* dst) {
  par_items(slices, rows * cols, [&](int64_t b, int64_t e) {
    for (int64_t s = b; s < e; ++s) {
      const T* in = src + s * rows * cols;
      T* out = dst + s * rows * cols;
      for (int64_t i = 0; i < rows; ++i)
        for (int64_t j = 0; j < cols; ++j) out[j * rows + i] = in[i * cols + j];
    }
  });
}

// s[j] = (scale * q_i) . k_j for j < jn, with Kt [Dh, S] the keys transposed
// (so the loop over j is unit-stride). Forward and backward both call this, so
// the backward's probabilities are the forward's to the last bit.
template <typename T>
inline void scores(const T* qi, const T* Kt, int64_t S, int64_t Dh, int64_t jn, T scale, T* s) {
  std::fill_n(s, jn, T(0));
  for (int64_t d = 0; d < Dh; ++d) row_axpy(s, scale * qi[d], Kt + d * S, jn);
}

struct AttnDims {
  int64_t B, Hq, Hkv, T, S, Dh, Dv, group;
  AttnDims(const Tensor& q, const Tensor& v)
      : B(q.shape[0]), Hq(q.shape[1]), Hkv(v.shape[1]), T(q.shape[2]), S(v.shape[2]),
        Dh(q.shape[3]), Dv(v.shape[3]), group(v.shape[1] ? q.shape[1] / v.shape[1] : 1),
        off(S > T ? S - T : 0) {}
  // Causal alignment (bottom-right): query i sits at key position i + off, off = S - T >= 0
  // (0 when S == T; S > T is a decode step over cached keys).
  int64_t off;
  // Flat index of the kv head read by query slice bh = b * Hq + h.
  int64_t kv_of(int64_t bh) const { return (bh / Hq) * Hkv + (bh % Hq) / group; }
  // Keys visible to query row i.
  int64_t visible(int64_t i, bool causal) const { return causal ? std::min(i + off + 1, S) : S; }
};

// First key visible to query row i of batch row b: starts[b, i] (clamped into [0, i + off], so
// a bad value cannot reach outside the row), or 0 without starts.
inline int64_t first_key(const int32_t* st, int64_t b, int64_t T, int64_t i, int64_t off) {
  if (!st) return 0;
  return std::max<int64_t>(0, std::min<int64_t>(st[b * T + i], i + off));
}

template <typename T>
void attn_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale_d,
                  const Tensor& out, const Tensor& lse, const Tensor* starts) {
  const int32_t* st = starts ? starts->data<int32_t>() : nullptr;
  const AttnDims a(q, v);
  const T* pq = q.data<T>();
  const T* pv = v.data<T>();
  T* po = out.data<T>();
  T* pl = lse.data<T>();
  const T scale = static_cast<T>(scale_d);
  std::vector<T> Kt(static_cast<size_t>(k.numel()));
  if (!Kt.empty()) transpose_slices(k.data<T>(), a.B * a.Hkv, a.S, a.Dh, Kt.data());
  // Rows of all heads are independent: split over B * Hq * T rows.
  int64_t rows = a.B * a.Hq * a.T;
  int64_t cost = std::max<int64_t>(1, (causal ? a.S / 2 : a.S) * (a.Dh + a.Dv + 1));
  par_items(rows, cost, [&](int64_t r0, int64_t r1) {
    std::vector<T> s(static_cast<size_t>(a.S));
    for (int64_t r = r0; r < r1; ++r) {
      int64_t i = r % a.T, bh = r / a.T, kv = a.kv_of(bh);
      int64_t jn = a.visible(i, causal);
      const int64_t j0 = first_key(st, bh / a.Hq, a.T, i, a.off);
      T* o = po + r * a.Dv;
      std::fill_n(o, a.Dv, T(0));
      if (jn == 0) {  // no keys: a zero row, as softmax over nothing times nothing
        pl[r] = -std::numeric_limits<T>::infinity();
        continue;
      }
      // Scores of keys j0..jn-1, kept at s[j0..jn-1] (j0 == 0 without starts).
      scores(pq + r * a.Dh, Kt.data() + kv * a.Dh * a.S + j0, a.S, a.Dh, jn - j0, scale,
             s.data() + j0);
      T m = s[j0];
      for (int64_t j = j0 + 1; j < jn; ++j) m = std::max(m, s[j]);
      double l = 0;
      for (int64_t j = j0; j < jn; ++j) {
        s[j] = std::exp(s[j] - m);
        l += s[j];
      }
      const T* vk = pv + kv * a.S * a.Dv;
      for (int64_t j = j0; j < jn; ++j) row_axpy(o, s[j], vk + j * a.Dv, a.Dv);
      T inv = static_cast<T>(1.0 / l);
      for (int64_t d = 0; d < a.Dv; ++d) o[d] *= inv;
      pl[r] = static_cast<T>(static_cast<double>(m) + std::log(l));
    }
  });
}

template <typename T>
void attn_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& lse, bool causal, double scale_d, const Tensor* dq,
                   const Tensor* dk, const Tensor* dv, const Tensor* starts) {
  const AttnDims a(q, v);
  const int32_t* st = starts ? starts->data<int32_t>() : nullptr;
  const T* pg = dout.data<T>();
  const T* pq = q.data<T>();
  const T* pk = k.data<T>();
  const T* pl = lse.data<T>();
  const T scale = static_cast<T>(scale_d);
  const bool need_ds = dq || dk;  // the score gradient feeds dq and dk
  std::vector<T> Kt(static_cast<size_t>(k.numel())), Vt;
  if (!Kt.empty()) transpose_slices(pk, a.B * a.Hkv, a.S, a.Dh, Kt.data());
  if (need_ds && v.numel()) {
    Vt.resize(static_cast<size_t>(v.numel()));
    transpose_slices(v.data<T>(), a.B * a.Hkv, a.S, a.Dv, Vt.data());
  }
  // One task per query head. dk/dv of a kv head shared by several query heads
  // are built per query head in scratch and summed afterwards, so tasks never
  // write to the same memory.
  const bool shared = a.group > 1;
  std::vector<T> dk_part, dv_part;
  if (shared && dk) dk_part.resize(static_cast<size_t>(a.B * a.Hq * a.S * a.Dh));
  if (shared && dv) dv_part.resize(static_cast<size_t>(a.B * a.Hq * a.S * a.Dv));
  T* pdq = dq ? dq->data<T>() : nullptr;
  T* pdk = dk ? (shared ? dk_part.data() : dk->data<T>()) : nullptr;
  T* pdv = dv ? (shared ? dv_part.data() : dv->data<T>()) : nullptr;

  int64_t cost = std::max<int64_t>(1, a.T * (causal ? a.S / 2 : a.S) * (2 * a.Dh + 2 * a.Dv + 2));
  par_items(a.B * a.Hq, cost, [&](int64_t h0, int64_t h1) {
    std::vector<T> p(static_cast<size_t>(a.S)), ds(static_cast<size_t>(a.S));
    for (int64_t bh = h0; bh < h1; ++bh) {
      int64_t kv = a.kv_of(bh);
      // Without sharing, query slice bh and kv slice kv are the same index.
      T* dkh = pdk ? pdk + bh * a.S * a.Dh : nullptr;
      T* dvh = pdv ? pdv + bh * a.S * a.Dv : nullptr;
      if (dkh) std::fill_n(dkh, a.S * a.Dh, T(0));
      if (dvh) std::fill_n(dvh, a.S * a.Dv, T(0));
      const T* Ktk = Kt.data() + kv * a.Dh * a.S;
      const T* Vtk = Vt.empty() ? nullptr : Vt.data() + kv * a.Dv * a.S;
      const T* kk = pk + kv * a.S * a.Dh;
      for (int64_t i = 0; i < a.T; ++i) {
        int64_t r = bh * a.T + i;
        int64_t jn = a.visible(i, causal);
        const int64_t j0 = first_key(st, bh / a.Hq, a.T, i, a.off);
        const T* qi = pq + r * a.Dh;
        const T* gi = pg + r * a.Dv;
        T* dqi = pdq ? pdq + r * a.Dh : nullptr;
        if (dqi) std::fill_n(dqi, a.Dh, T(0));
        if (jn == 0) continue;
        // P row (keys j0..jn-1 at p[j0..jn-1]), recomputed from the saved logsumexp.
        scores(qi, Ktk + j0, a.S, a.Dh, jn - j0, scale, p.data() + j0);
        T l = pl[r];
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
        for (int64_t j = j0; j < jn; ++j) ds[j] = scale * (p[j] * (ds[j] - D));
        if (dqi)  // dq_i = sum_j dS_ij k_j
          for (int64_t j = j0; j < jn; ++j) row_axpy(dqi, ds[j], kk + j * a.Dh, a.Dh);
        if (dkh)  // dk_j += dS_ij q_i
          for (int64_t j = j0; j < jn; ++j) row_axpy(dkh + j * a.Dh, ds[j], qi, a.Dh);
      }
    }
  });
  if (!shared) return;
  // Sum the per-query-head parts into each kv head (set).
  auto reduce = [&](const std::vector<T>& part, T* dst, int64_t D) {
    int64_t n = a.S * D;
    par_items(a.B * a.Hkv, a.group * n, [&](int64_t s0, int64_t s1) {
      for (int64_t kv = s0; kv < s1; ++kv) {
        int64_t b = kv / a.Hkv, kvh = kv % a.Hkv;
        T* o = dst + kv * n;
        const T* first = part.data() + (b * a.Hq + kvh * a.group) * n;
        std::copy(first, first + n, o);
        for (int64_t g = 1; g < a.group; ++g) row_axpy(o, T(1), first + g * n, n);
      }
    });
  };
  if (dk) reduce(dk_part, dk->data<T>(), a.Dh);
  if (dv) reduce(dv_part, dv->data<T>(), a.Dv);
}

}  // namespace

void CpuBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                   double scale, const Tensor& out, const Tensor& lse,
                                   const Tensor* starts) {
  dispatch_float(q.dtype, "attention", [&](auto z) {
    attn_forward<decltype(z)>(q, k, v, causal, scale, out, lse, starts);
  });
}

void CpuBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                    const Tensor& v, const Tensor& lse, bool causal, double scale,
                                    const Tensor* dq, const Tensor* dk, const Tensor* dv,
                                    const Tensor* starts) {
  dispatch_float(q.dtype, "attention backward", [&](auto z) {
    attn_backward<decltype(z)>(dout, q, k, v, lse, causal, scale, dq, dk, dv, starts);
  });
}

}  // namespace lc
