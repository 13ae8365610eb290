// CPU kernels of the transformer blocks: embedding, RMSNorm, rotary position
// embedding and scaled dot-product attention, forward and backward (the
// semantics are written beside each method in backend.h). Plain loops laid out
// so that the inner loops are unit-stride and vectorise; the work is split over
// the thread pool only where it is large. CpuBackend (cpu_backend.cpp) forwards
// its methods here.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "../backend.h"
#include "../parallel.h"
#include "cpu_transformer.h"
#include "dispatch.h"

namespace lc::cpu_tf {
namespace {

constexpr int64_t kWork = 1 << 15;  // about this many multiply-adds per thread chunk

// fn(begin, end) over [0, n) items of about `cost` operations each: serially
// when the total is small, else on the pool in chunks of at least kWork.
template <typename Fn>
void par_items(int64_t n, int64_t cost, Fn&& fn) {
  if (n <= 0) return;
  cost = std::max<int64_t>(cost, 1);
  if (n == 1 || n * cost < 2 * kWork) {
    fn(int64_t{0}, n);
    return;
  }
  parallel_for(n, std::max<int64_t>(1, kWork / cost), fn);
}

void check_ids(const int32_t* id, int64_t n, int64_t V, const char* op) {
  for (int64_t i = 0; i < n; ++i)
    if (id[i] < 0 || id[i] >= V)
      fail(std::string(op) + ": id " + std::to_string(id[i]) + " at index " + std::to_string(i) +
           " is outside [0, " + std::to_string(V) + ")");
}

// y[0:n] += a * x[0:n]
template <typename T>
inline void axpy(T* y, T a, const T* x, int64_t n) {
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
  for (int64_t d = 0; d < Dh; ++d) axpy(s, scale * qi[d], Kt + d * S, jn);
}

struct AttnDims {
  int64_t B, Hq, Hkv, T, S, Dh, Dv, group;
  AttnDims(const Tensor& q, const Tensor& v)
      : B(q.shape[0]), Hq(q.shape[1]), Hkv(v.shape[1]), T(q.shape[2]), S(v.shape[2]),
        Dh(q.shape[3]), Dv(v.shape[3]), group(v.shape[1] ? q.shape[1] / v.shape[1] : 1) {}
  // Flat index of the kv head read by query slice bh = b * Hq + h.
  int64_t kv_of(int64_t bh) const { return (bh / Hq) * Hkv + (bh % Hq) / group; }
  // Keys visible to query row i.
  int64_t visible(int64_t i, bool causal) const { return causal ? std::min(i + 1, S) : S; }
};

template <typename T>
void attn_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal, double scale_d,
                  const Tensor& out, const Tensor& lse) {
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
      T* o = po + r * a.Dv;
      std::fill_n(o, a.Dv, T(0));
      if (jn == 0) {  // no keys: a zero row, as softmax over nothing times nothing
        pl[r] = -std::numeric_limits<T>::infinity();
        continue;
      }
      scores(pq + r * a.Dh, Kt.data() + kv * a.Dh * a.S, a.S, a.Dh, jn, scale, s.data());
      T m = s[0];
      for (int64_t j = 1; j < jn; ++j) m = std::max(m, s[j]);
      double l = 0;
      for (int64_t j = 0; j < jn; ++j) {
        s[j] = std::exp(s[j] - m);
        l += s[j];
      }
      const T* vk = pv + kv * a.S * a.Dv;
      for (int64_t j = 0; j < jn; ++j) axpy(o, s[j], vk + j * a.Dv, a.Dv);
      T inv = static_cast<T>(1.0 / l);
      for (int64_t d = 0; d < a.Dv; ++d) o[d] *= inv;
      pl[r] = static_cast<T>(static_cast<double>(m) + std::log(l));
    }
  });
}

template <typename T>
void attn_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                   const Tensor& lse, bool causal, double scale_d, const Tensor* dq,
                   const Tensor* dk, const Tensor* dv) {
  const AttnDims a(q, v);
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
        const T* qi = pq + r * a.Dh;
        const T* gi = pg + r * a.Dv;
        T* dqi = pdq ? pdq + r * a.Dh : nullptr;
        if (dqi) std::fill_n(dqi, a.Dh, T(0));
        if (jn == 0) continue;
        // P row, recomputed from the saved logsumexp.
        scores(qi, Ktk, a.S, a.Dh, jn, scale, p.data());
        T l = pl[r];
        for (int64_t j = 0; j < jn; ++j) p[j] = std::exp(p[j] - l);
        if (dvh)  // dv_j += p_ij dO_i
          for (int64_t j = 0; j < jn; ++j) axpy(dvh + j * a.Dv, p[j], gi, a.Dv);
        if (!need_ds) continue;
        // dP_ij = dO_i . v_j; dS_ij = P_ij (dP_ij - sum_j P_ij dP_ij), times scale.
        std::fill_n(ds.data(), jn, T(0));
        for (int64_t d = 0; d < a.Dv; ++d) axpy(ds.data(), gi[d], Vtk + d * a.S, jn);
        double dot = 0;
        for (int64_t j = 0; j < jn; ++j) dot += static_cast<double>(p[j]) * ds[j];
        T D = static_cast<T>(dot);
        for (int64_t j = 0; j < jn; ++j) ds[j] = scale * (p[j] * (ds[j] - D));
        if (dqi)  // dq_i = sum_j dS_ij k_j
          for (int64_t j = 0; j < jn; ++j) axpy(dqi, ds[j], kk + j * a.Dh, a.Dh);
        if (dkh)  // dk_j += dS_ij q_i
          for (int64_t j = 0; j < jn; ++j) axpy(dkh + j * a.Dh, ds[j], qi, a.Dh);
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
        for (int64_t g = 1; g < a.group; ++g) axpy(o, T(1), first + g * n, n);
      }
    });
  };
  if (dk) reduce(dk_part, dk->data<T>(), a.Dh);
  if (dv) reduce(dv_part, dv->data<T>(), a.Dv);
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& weight, const Tensor& out) {
  int64_t N = ids.numel(), V = weight.shape[0], D = weight.shape[1];
  const int32_t* id = ids.data<int32_t>();
  check_ids(id, N, V, "embedding");
  if (D == 0) return;
  dispatch_float(weight.dtype, "embedding", [&](auto z) {
    using T = decltype(z);
    const T* w = weight.data<T>();
    T* o = out.data<T>();
    par_items(N, D, [&](int64_t b, int64_t e) {
      for (int64_t n = b; n < e; ++n)
        std::memcpy(o + n * D, w + static_cast<int64_t>(id[n]) * D, sizeof(T) * D);
    });
  });
}

void embedding_backward(const Tensor& ids, const Tensor& dy, const Tensor& dweight) {
  int64_t N = ids.numel(), V = dweight.shape[0], D = dweight.shape[1];
  const int32_t* id = N ? ids.data<int32_t>() : nullptr;
  check_ids(id, N, V, "embedding backward");
  if (V * D == 0) return;
  dispatch_float(dweight.dtype, "embedding backward", [&](auto z) {
    using T = decltype(z);
    T* dw = dweight.data<T>();
    std::fill_n(dw, V * D, T(0));
    if (N == 0) return;
    const T* g = dy.data<T>();
    // Columns split over threads: each walks every id over its own columns,
    // so repeated ids never race.
    par_items(D, N, [&](int64_t c0, int64_t c1) {
      for (int64_t n = 0; n < N; ++n)
        axpy(dw + static_cast<int64_t>(id[n]) * D + c0, T(1), g + n * D + c0, c1 - c0);
    });
  });
}

void rms_norm_forward(const Tensor& x, const Tensor* weight, double eps, const Tensor& y,
                      const Tensor& rstd) {
  int64_t D = x.shape.back(), R = x.numel() / D;
  dispatch_float(x.dtype, "rms norm", [&](auto z) {
    using T = decltype(z);
    const T* px = x.data<T>();
    const T* w = weight ? weight->data<T>() : nullptr;
    T* py = y.data<T>();
    T* ps = rstd.data<T>();
    par_items(R, 3 * D, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * D;
        T* yr = py + r * D;
        double ss = 0;
        for (int64_t j = 0; j < D; ++j) ss += static_cast<double>(xr[j]) * xr[j];
        T rs = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
        ps[r] = rs;
        // weight * (x * rstd), in this order, as LlamaRMSNorm.
        if (w)
          for (int64_t j = 0; j < D; ++j) yr[j] = w[j] * (xr[j] * rs);
        else
          for (int64_t j = 0; j < D; ++j) yr[j] = xr[j] * rs;
      }
    });
  });
}

void rms_norm_backward(const Tensor& dy, const Tensor& x, const Tensor* weight,
                       const Tensor& rstd, const Tensor* dx, const Tensor* dweight) {
  int64_t D = x.shape.back(), R = x.numel() / D;
  dispatch_float(x.dtype, "rms norm backward", [&](auto z) {
    using T = decltype(z);
    const T* px = x.data<T>();
    const T* pg = dy.data<T>();
    const T* ps = rstd.data<T>();
    const T* w = weight ? weight->data<T>() : nullptr;
    if (dx) {
      // With g = dy * weight and r = rstd:
      //   dx_k = r g_k - r^3 x_k / D * sum_j g_j x_j
      T* pd = dx->data<T>();
      par_items(R, 4 * D, [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; ++r) {
          const T* xr = px + r * D;
          const T* gr = pg + r * D;
          T* dr = pd + r * D;
          double dot = 0;
          if (w)
            for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(gr[j]) * w[j] * xr[j];
          else
            for (int64_t j = 0; j < D; ++j) dot += static_cast<double>(gr[j]) * xr[j];
          double rs = ps[r];
          T c = static_cast<T>(rs * rs * rs * dot / static_cast<double>(D));
          T rt = static_cast<T>(rs);
          if (w)
            for (int64_t j = 0; j < D; ++j) dr[j] = rt * (gr[j] * w[j]) - c * xr[j];
          else
            for (int64_t j = 0; j < D; ++j) dr[j] = rt * gr[j] - c * xr[j];
        }
      });
    }
    if (dweight) {
      // dweight_j = sum over rows of dy_j x_j r, in double; columns split over threads.
      T* pw = dweight->data<T>();
      par_items(D, R, [&](int64_t c0, int64_t c1) {
        std::vector<double> acc(static_cast<size_t>(c1 - c0), 0.0);
        for (int64_t r = 0; r < R; ++r) {
          const T* xr = px + r * D;
          const T* gr = pg + r * D;
          double rs = ps[r];
          for (int64_t j = c0; j < c1; ++j)
            acc[j - c0] += static_cast<double>(gr[j]) * (static_cast<double>(xr[j]) * rs);
        }
        for (int64_t j = c0; j < c1; ++j) pw[j] = static_cast<T>(acc[j - c0]);
      });
    }
  });
}

namespace {
// With h = Dh / 2, per row:
//   forward:  out_j = x_j c_j - x_{j+h} s_j (j < h),       x_j c_j + x_{j-h} s_j (j >= h)
//   adjoint:  dx_j = g_j c_j + g_{j+h} s_{j+h} (j < h),   g_j c_j - g_{j-h} s_{j-h} (j >= h)
void rotary(const Tensor& x, const Tensor& cos, const Tensor& sin, bool adjoint,
            const Tensor& out) {
  int64_t T_ = cos.shape[0], Dh = cos.shape[1], h = Dh / 2, R = x.numel() / Dh;
  dispatch_float(x.dtype, adjoint ? "rotary backward" : "rotary", [&](auto z) {
    using T = decltype(z);
    const T* px = x.data<T>();
    const T* pc = cos.data<T>();
    const T* psn = sin.data<T>();
    T* po = out.data<T>();
    par_items(R, 2 * Dh, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const T* xr = px + r * Dh;
        const T* c = pc + (r % T_) * Dh;
        const T* s = psn + (r % T_) * Dh;
        T* o = po + r * Dh;
        if (!adjoint) {
          for (int64_t j = 0; j < h; ++j) o[j] = xr[j] * c[j] - xr[j + h] * s[j];
          for (int64_t j = h; j < Dh; ++j) o[j] = xr[j] * c[j] + xr[j - h] * s[j];
        } else {
          for (int64_t j = 0; j < h; ++j) o[j] = xr[j] * c[j] + xr[j + h] * s[j + h];
          for (int64_t j = h; j < Dh; ++j) o[j] = xr[j] * c[j] - xr[j - h] * s[j - h];
        }
      }
    });
  });
}
}  // namespace

void rotary_forward(const Tensor& x, const Tensor& cos, const Tensor& sin, const Tensor& out) {
  rotary(x, cos, sin, false, out);
}

void rotary_backward(const Tensor& dy, const Tensor& cos, const Tensor& sin, const Tensor& dx) {
  rotary(dy, cos, sin, true, dx);
}

void attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                       double scale, const Tensor& out, const Tensor& lse) {
  dispatch_float(q.dtype, "attention", [&](auto z) {
    attn_forward<decltype(z)>(q, k, v, causal, scale, out, lse);
  });
}

void attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& lse, bool causal, double scale, const Tensor* dq,
                        const Tensor* dk, const Tensor* dv) {
  dispatch_float(q.dtype, "attention backward", [&](auto z) {
    attn_backward<decltype(z)>(dout, q, k, v, lse, causal, scale, dq, dk, dv);
  });
}

}  // namespace lc::cpu_tf
