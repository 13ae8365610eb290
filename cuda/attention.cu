// Scaled dot-product attention on CUDA with grouped KV heads (semantics in
// src/backend.h, reference in src/cpu/attention.cpp). A tiled online-softmax
// kernel (one warp per query row, keys staged through shared memory), with a
// plain global-memory path for head dims the tiles cannot hold. The backward
// is atomic-free and deterministic: one kernel per query row (D_i and dq), one
// per key row (dk and dv, summed over the query heads of its group).
#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "kernels.cuh"

namespace lc::cuda {

// ================================================================ kernels
namespace {

constexpr unsigned kFull = 0xffffffffu;
// The attention tiles stay within the default dynamic shared memory limit, so
// no opt-in attribute (and no per-architecture limit) is needed.
constexpr int64_t kSmemBytes = 48 * 1024;
// The tiled attention kernels keep a row of up to 32 * kMaxNV values per lane
// in registers; wider heads take the global-memory path.
constexpr int kMaxNV = 8;

__device__ __forceinline__ float attn_fma(float a, float b, float c) { return fmaf(a, b, c); }
__device__ __forceinline__ double attn_fma(double a, double b, double c) { return fma(a, b, c); }

template <typename T>
__device__ __forceinline__ T neg_inf() {
  return static_cast<T>(-INFINITY);
}

struct AttnDims {
  int64_t B, Hq, Hkv, T, S, Dh, Dv, group;
  // Causal alignment (bottom-right): query i sits at key position i + off, off = S - T >= 0
  // (0 when S == T; S > T is a decode step over cached keys).
  int64_t off;
};

// Flat kv slice read by query slice bh = b * Hq + h.
__device__ __forceinline__ int64_t kv_of(const AttnDims& a, int64_t bh) {
  return (bh / a.Hq) * a.Hkv + (bh % a.Hq) / a.group;
}
// Keys visible to query row i.
__device__ __forceinline__ int64_t visible(const AttnDims& a, int64_t i, bool causal) {
  return causal ? min(i + a.off + 1, a.S) : a.S;
}
// First key visible to query row i of batch row b: starts[b, i] clamped into [0, i + off] (a
// bad value cannot reach outside the row), or 0 without starts.
__device__ __forceinline__ int64_t first_key(const int32_t* st, const AttnDims& a, int64_t b,
                                             int64_t i) {
  if (!st) return 0;
  return max(int64_t{0}, min(static_cast<int64_t>(st[b * a.T + i]), i + a.off));
}

// Odd row stride of a shared-memory tile read one row per lane: lanes then hit
// distinct banks (for double, distinct bank pairs per half-warp).
__host__ __device__ __forceinline__ int64_t odd_stride(int64_t n) { return n | 1; }

// The scaled score (scale * q) . k and the plain dot product, summed in index
// order with explicit fma: every kernel (tiled or not, forward or backward)
// computes a score with the same operations, so the backward's probabilities
// are the forward's to the last bit.
template <typename T>
__device__ __forceinline__ T score(const T* q, const T* k, int64_t n, T scale) {
  T acc = T(0);
  for (int64_t d = 0; d < n; ++d) acc = attn_fma(scale * q[d], k[d], acc);
  return acc;
}
template <typename T>
__device__ __forceinline__ T dot(const T* a, const T* b, int64_t n) {
  T acc = T(0);
  for (int64_t d = 0; d < n; ++d) acc = attn_fma(a[d], b[d], acc);
  return acc;
}

// Register row (element d = lane + 32 k) += sum_{lo <= jj < hi} coef of lane jj *
// src[jj * stride + d], d < len. The whole warp calls it with the same lo, hi.
template <typename T, int NV>
__device__ __forceinline__ void acc_rows(T (&acc)[NV], int64_t len, T coef, int lo, int hi,
                                         const T* src, int64_t stride) {
  const int lane = threadIdx.x & 31;
  for (int jj = lo; jj < hi; ++jj) {
    const T cj = __shfl_sync(kFull, coef, jj);
    const T* sr = src + jj * stride;
#pragma unroll
    for (int k = 0; k < NV; ++k) {
      const int64_t d = lane + 32 * k;
      if (d < len) acc[k] += cj * sr[d];
    }
  }
}

// The same on a row in global memory (the plain path): row[d] += sum_{jj < n}
// coef of lane jj * src[jj * stride + d], in 32-column chunks so that every
// lane runs every shuffle. The whole warp calls it with the same n.
template <typename T>
__device__ void acc_rows_global(T* row, int64_t len, T coef, int n, const T* src, int64_t stride) {
  const int lane = threadIdx.x & 31;
  for (int64_t d0 = 0; d0 < len; d0 += 32) {
    const int64_t d = d0 + lane;
    T val = d < len ? row[d] : T(0);
    for (int jj = 0; jj < n; ++jj) {
      const T cj = __shfl_sync(kFull, coef, jj);
      if (d < len) val += cj * src[jj * stride + d];
    }
    if (d < len) row[d] = val;
  }
}

// Block-wide copy of `rows` rows of `len` contiguous elements at src (row
// stride len) into dst (row stride dstride).
template <typename T>
__device__ __forceinline__ void stage_rows(T* dst, int64_t dstride, const T* src, int64_t rows,
                                           int64_t len) {
  for (int64_t idx = threadIdx.x; idx < rows * len; idx += blockDim.x) {
    const int64_t rr = idx / len, d = idx - rr * len;
    dst[rr * dstride + d] = src[idx];
  }
}
// The same for rows first..first+rows-1 of a [total, len] matrix, zeros past
// its end (rows of a tile beyond the last query or key).
template <typename T>
__device__ __forceinline__ void stage_rows_clamped(T* dst, int64_t dstride, const T* src,
                                                   int64_t first, int64_t rows, int64_t total,
                                                   int64_t len) {
  for (int64_t idx = threadIdx.x; idx < rows * len; idx += blockDim.x) {
    const int64_t rr = idx / len, d = idx - rr * len;
    dst[rr * dstride + d] = first + rr < total ? src[(first + rr) * len + d] : T(0);
  }
}

extern __shared__ __align__(16) unsigned char attn_smem[];

// Forward, tiled. Block: br = blockDim.x / 32 warps, warp w owns query row
// i0 + w of one (b, h) slice. Shared memory (elements of T):
//   Qs [br][Dh] (the block's q rows), Ks [bc][odd(Dh)], Vs [bc][Dv]; bc <= 32.
// Per key tile, lane l scores key j0 + l against its warp's row; the running
// max m, sum l (double) and the output row (registers, element lane + 32 k)
// are rescaled by exp(m_old - m_new) as the tiles go by.
template <typename T, int NV>
__global__ void attn_forward_tiled(const T* q, const T* k, const T* v, T* out, T* lse, AttnDims a,
                                   bool causal, T scale, int bc, const int32_t* st) {
  T* Qs = reinterpret_cast<T*>(attn_smem);
  const int br = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t ksd = odd_stride(a.Dh);
  T* Ks = Qs + br * a.Dh;
  T* Vs = Ks + bc * ksd;
  const int64_t nrt = (a.T + br - 1) / br, ntiles = a.B * a.Hq * nrt;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t bh = tile / nrt, i0 = (tile - bh * nrt) * br;
    const int64_t kvs = kv_of(a, bh);
    const int64_t i = i0 + w;
    const bool row_ok = i < a.T;
    const int64_t jn = row_ok ? visible(a, i, causal) : 0;
    const int64_t js = row_ok ? first_key(st, a, bh / a.Hq, i) : 0;
    // Keys any row of the block sees (block-uniform, so are the barriers below).
    const int64_t kend = causal ? min(a.S, i0 + a.off + br) : a.S;
    __syncthreads();  // the previous tile's readers are done with Qs
    stage_rows_clamped(Qs, a.Dh, q + bh * a.T * a.Dh, i0, br, a.T, a.Dh);
    T m = neg_inf<T>();
    double l = 0;
    T acc[NV];
#pragma unroll
    for (int kk = 0; kk < NV; ++kk) acc[kk] = T(0);
    for (int64_t j0 = 0; j0 < kend; j0 += bc) {
      const int nk = static_cast<int>(min(static_cast<int64_t>(bc), kend - j0));
      __syncthreads();  // Qs written; the previous key tile's readers are done
      stage_rows(Ks, ksd, k + (kvs * a.S + j0) * a.Dh, nk, a.Dh);
      stage_rows(Vs, a.Dv, v + (kvs * a.S + j0) * a.Dv, nk, a.Dv);
      __syncthreads();
      if (row_ok && j0 < jn && j0 + nk > js) {  // warp-uniform: the tile holds visible keys
        const bool vis = lane < nk && j0 + lane < jn && j0 + lane >= js;
        const T s = vis ? score(Qs + w * a.Dh, Ks + lane * ksd, a.Dh, scale) : neg_inf<T>();
        const T mn = max(m, warp_max(s));
        const T corr = m == neg_inf<T>() ? T(0) : d_exp(m - mn);
        const T p = vis ? d_exp(s - mn) : T(0);
        l = l * static_cast<double>(corr) + warp_sum(static_cast<double>(p));
#pragma unroll
        for (int kk = 0; kk < NV; ++kk) acc[kk] *= corr;
        const int nv = static_cast<int>(min(static_cast<int64_t>(nk), jn - j0));
        acc_rows(acc, a.Dv, p, 0, nv, Vs, a.Dv);
        m = mn;
      }
    }
    if (row_ok) {
      const int64_t r = bh * a.T + i;
      T* o = out + r * a.Dv;
      // No visible keys (S == 0): a zero row and lse = -inf, as the CPU.
      const T inv = jn ? static_cast<T>(1.0 / l) : T(0);
#pragma unroll
      for (int kk = 0; kk < NV; ++kk) {
        const int64_t d = lane + 32 * kk;
        if (d < a.Dv) o[d] = jn ? acc[kk] * inv : T(0);
      }
      if (lane == 0)
        lse[r] = jn ? static_cast<T>(static_cast<double>(m) + log(l)) : neg_inf<T>();
    }
  }
}

// Backward, tiled, per query row: D_i = sum_j P_ij dP_ij (saved for the key
// kernel) and, when dq is wanted, dq_i = sum_j dS_ij k_j. Two sweeps over the
// key tiles: D_i is needed before any dS_ij. Block as the forward; shared
// memory: Qs [br][Dh], Gs [br][Dv] (the rows' q and dout), Ks [bc][odd(Dh)],
// Vs [bc][odd(Dv)] (lane l reads key row l of both).
template <typename T, int NV>
__global__ void attn_backward_q_tiled(const T* q, const T* k, const T* v, const T* dout,
                                      const T* lse, T* Dsave, T* dq, AttnDims a, bool causal,
                                      T scale, int bc, const int32_t* st) {
  T* Qs = reinterpret_cast<T*>(attn_smem);
  const int br = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t ksd = odd_stride(a.Dh), vsd = odd_stride(a.Dv);
  T* Gs = Qs + br * a.Dh;
  T* Ks = Gs + br * a.Dv;
  T* Vs = Ks + bc * ksd;
  const int64_t nrt = (a.T + br - 1) / br, ntiles = a.B * a.Hq * nrt;
  const int passes = dq ? 2 : 1;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t bh = tile / nrt, i0 = (tile - bh * nrt) * br;
    const int64_t kvs = kv_of(a, bh);
    const int64_t i = i0 + w, r = bh * a.T + i;
    const bool row_ok = i < a.T;
    const int64_t jn = row_ok ? visible(a, i, causal) : 0;
    const int64_t js = row_ok ? first_key(st, a, bh / a.Hq, i) : 0;
    const int64_t kend = causal ? min(a.S, i0 + a.off + br) : a.S;
    const T li = row_ok ? lse[r] : T(0);
    __syncthreads();  // the previous tile's readers are done with Qs, Gs
    stage_rows_clamped(Qs, a.Dh, q + bh * a.T * a.Dh, i0, br, a.T, a.Dh);
    stage_rows_clamped(Gs, a.Dv, dout + bh * a.T * a.Dv, i0, br, a.T, a.Dv);
    double dsum = 0;
    T Drow = T(0);
    T acc[NV];
#pragma unroll
    for (int kk = 0; kk < NV; ++kk) acc[kk] = T(0);
    for (int pass = 0; pass < passes; ++pass) {
      for (int64_t j0 = 0; j0 < kend; j0 += bc) {
        const int nk = static_cast<int>(min(static_cast<int64_t>(bc), kend - j0));
        __syncthreads();
        stage_rows(Ks, ksd, k + (kvs * a.S + j0) * a.Dh, nk, a.Dh);
        stage_rows(Vs, vsd, v + (kvs * a.S + j0) * a.Dv, nk, a.Dv);
        __syncthreads();
        if (row_ok && j0 < jn && j0 + nk > js) {  // warp-uniform
          const bool vis = lane < nk && j0 + lane < jn && j0 + lane >= js;
          T p = T(0), dP = T(0);
          if (vis) {
            p = d_exp(score(Qs + w * a.Dh, Ks + lane * ksd, a.Dh, scale) - li);
            dP = dot(Gs + w * a.Dv, Vs + lane * vsd, a.Dv);
          }
          if (pass == 0) {
            dsum += warp_sum(static_cast<double>(p) * static_cast<double>(dP));
          } else {
            const T ds = vis ? scale * (p * (dP - Drow)) : T(0);
            const int nv = static_cast<int>(min(static_cast<int64_t>(nk), jn - j0));
            acc_rows(acc, a.Dh, ds, 0, nv, Ks, ksd);
          }
        }
      }
      if (pass == 0) {
        Drow = static_cast<T>(dsum);
        if (row_ok && lane == 0) Dsave[r] = Drow;
      }
    }
    if (row_ok && dq) {
      T* o = dq + r * a.Dh;
#pragma unroll
      for (int kk = 0; kk < NV; ++kk) {
        const int64_t d = lane + 32 * kk;
        if (d < a.Dh) o[d] = acc[kk];
      }
    }
  }
}

// Backward, tiled, per key row: dk_j = sum dS_ij q_i, dv_j = sum P_ij dout_i
// over the query heads sharing the kv head and the query rows that see j
// (i >= j when causal). Block: warp w owns key row j0 + w of one kv slice;
// lane l takes query row i0 + l of a query tile. Shared memory: Kr [br][Dh],
// Vr [br][Dv] (the block's key rows), Qs [bc][odd(Dh)], Gs [bc][odd(Dv)],
// Ls [bc] (lse), Ds [bc] (D_i; dk only).
template <typename T, int NV>
__global__ void attn_backward_kv_tiled(const T* q, const T* k, const T* v, const T* dout,
                                       const T* lse, const T* Dsave, T* dk, T* dv, AttnDims a,
                                       bool causal, T scale, int bc, const int32_t* st) {
  T* Kr = reinterpret_cast<T*>(attn_smem);
  const int br = blockDim.x >> 5, w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t qsd = odd_stride(a.Dh), gsd = odd_stride(a.Dv);
  T* Vr = Kr + br * a.Dh;
  T* Qs = Vr + br * a.Dv;
  T* Gs = Qs + bc * qsd;
  T* Ls = Gs + bc * gsd;
  T* Ds = Ls + bc;
  // First key of each query row of the tile (shared memory after Ds; starts only).
  int* Js = reinterpret_cast<int*>(Ds + bc);
  const int64_t nkt = (a.S + br - 1) / br, ntiles = a.B * a.Hkv * nkt;
  for (int64_t tile = blockIdx.x; tile < ntiles; tile += gridDim.x) {
    const int64_t kvs = tile / nkt, j0 = (tile - kvs * nkt) * br;
    const int64_t b = kvs / a.Hkv, hk = kvs - b * a.Hkv;
    const int64_t j = j0 + w;
    const bool key_ok = j < a.S;
    __syncthreads();  // the previous tile's readers are done with Kr, Vr
    stage_rows_clamped(Kr, a.Dh, k + kvs * a.S * a.Dh, j0, br, a.S, a.Dh);
    stage_rows_clamped(Vr, a.Dv, v + kvs * a.S * a.Dv, j0, br, a.S, a.Dv);
    T ak[NV], av[NV];
#pragma unroll
    for (int kk = 0; kk < NV; ++kk) ak[kk] = av[kk] = T(0);
    // Query rows below the block's first key see none of its keys.
    const int64_t istart = causal ? max(int64_t{0}, j0 - a.off) : 0;
    for (int64_t g = 0; g < a.group; ++g) {
      const int64_t bh = b * a.Hq + hk * a.group + g;
      for (int64_t i0 = istart; i0 < a.T; i0 += bc) {
        const int nq = static_cast<int>(min(static_cast<int64_t>(bc), a.T - i0));
        __syncthreads();  // Kr, Vr written; the previous query tile's readers are done
        stage_rows(Qs, qsd, q + (bh * a.T + i0) * a.Dh, nq, a.Dh);
        stage_rows(Gs, gsd, dout + (bh * a.T + i0) * a.Dv, nq, a.Dv);
        for (int t = threadIdx.x; t < nq; t += blockDim.x) {
          Ls[t] = lse[bh * a.T + i0 + t];
          Ds[t] = Dsave ? Dsave[bh * a.T + i0 + t] : T(0);
          if (st) Js[t] = static_cast<int>(first_key(st, a, b, i0 + t));
        }
        __syncthreads();
        // First lane whose query row sees key j (warp-uniform).
        const int lo = causal ? static_cast<int>(max(int64_t{0}, min(j - a.off - i0, int64_t{nq}))) : 0;
        if (key_ok && lo < nq) {
          const bool vis = lane >= lo && lane < nq && (!st || Js[lane] <= j);
          T p = T(0), ds = T(0);
          if (vis) {
            p = d_exp(score(Qs + lane * qsd, Kr + w * a.Dh, a.Dh, scale) - Ls[lane]);
            if (dk) ds = scale * (p * (dot(Gs + lane * gsd, Vr + w * a.Dv, a.Dv) - Ds[lane]));
          }
          if (dv) acc_rows(av, a.Dv, p, lo, nq, Gs, gsd);
          if (dk) acc_rows(ak, a.Dh, ds, lo, nq, Qs, qsd);
        }
      }
    }
    if (key_ok) {
      const int64_t row = kvs * a.S + j;
#pragma unroll
      for (int kk = 0; kk < NV; ++kk) {
        const int64_t d = lane + 32 * kk;
        if (dk && d < a.Dh) dk[row * a.Dh + d] = ak[kk];
        if (dv && d < a.Dv) dv[row * a.Dv + d] = av[kk];
      }
    }
  }
}

// The plain path for head dims the tiles cannot hold: one warp per row,
// operands read from global memory, output rows accumulated in place (each
// lane owns its columns). Warp loops are warp-uniform; no block barriers.
#define LC_WARP_STRIDE(r, n)                                                                  \
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); \
       r < (n); r += static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5))

// Forward as the CPU: the row max first, then p = exp(s - m), l and the output.
template <typename T>
__global__ void attn_forward_plain(const T* q, const T* k, const T* v, T* out, T* lse,
                                   AttnDims a, bool causal, T scale, const int32_t* st) {
  const int lane = threadIdx.x & 31;
  LC_WARP_STRIDE(r, a.B * a.Hq * a.T) {
    const int64_t i = r % a.T, bh = r / a.T, kvs = kv_of(a, bh);
    const int64_t jn = visible(a, i, causal), js = first_key(st, a, bh / a.Hq, i);
    const T* qi = q + r * a.Dh;
    const T* kb = k + kvs * a.S * a.Dh;
    const T* vb = v + kvs * a.S * a.Dv;
    T* o = out + r * a.Dv;
    for (int64_t d = lane; d < a.Dv; d += 32) o[d] = T(0);
    if (jn == 0) {
      if (lane == 0) lse[r] = neg_inf<T>();
      continue;
    }
    T m = neg_inf<T>();
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      const T s = j < jn ? score(qi, kb + j * a.Dh, a.Dh, scale) : neg_inf<T>();
      m = max(m, warp_max(s));
    }
    double l = 0;
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      const T p = j < jn ? d_exp(score(qi, kb + j * a.Dh, a.Dh, scale) - m) : T(0);
      l += warp_sum(static_cast<double>(p));
      const int nv = static_cast<int>(min(int64_t{32}, jn - j0));
      acc_rows_global(o, a.Dv, p, nv, vb + j0 * a.Dv, a.Dv);
    }
    const T inv = static_cast<T>(1.0 / l);
    for (int64_t d = lane; d < a.Dv; d += 32) o[d] *= inv;
    if (lane == 0) lse[r] = static_cast<T>(static_cast<double>(m) + log(l));
  }
}

// Backward per query row (plain): D_i, then dq_i when wanted.
template <typename T>
__global__ void attn_backward_q_plain(const T* q, const T* k, const T* v, const T* dout,
                                      const T* lse, T* Dsave, T* dq, AttnDims a, bool causal,
                                      T scale, const int32_t* st) {
  const int lane = threadIdx.x & 31;
  LC_WARP_STRIDE(r, a.B * a.Hq * a.T) {
    const int64_t i = r % a.T, bh = r / a.T, kvs = kv_of(a, bh);
    const int64_t jn = visible(a, i, causal), js = first_key(st, a, bh / a.Hq, i);
    const T* qi = q + r * a.Dh;
    const T* gi = dout + r * a.Dv;
    const T* kb = k + kvs * a.S * a.Dh;
    const T* vb = v + kvs * a.S * a.Dv;
    const T li = lse[r];
    double dsum = 0;
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      T p = T(0), dP = T(0);
      if (j < jn) {
        p = d_exp(score(qi, kb + j * a.Dh, a.Dh, scale) - li);
        dP = dot(gi, vb + j * a.Dv, a.Dv);
      }
      dsum += warp_sum(static_cast<double>(p) * static_cast<double>(dP));
    }
    const T Drow = static_cast<T>(dsum);
    if (lane == 0) Dsave[r] = Drow;
    if (!dq) continue;
    T* o = dq + r * a.Dh;
    for (int64_t d = lane; d < a.Dh; d += 32) o[d] = T(0);
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      T ds = T(0);
      if (j < jn) {
        const T p = d_exp(score(qi, kb + j * a.Dh, a.Dh, scale) - li);
        ds = scale * (p * (dot(gi, vb + j * a.Dv, a.Dv) - Drow));
      }
      const int nv = static_cast<int>(min(int64_t{32}, jn - j0));
      acc_rows_global(o, a.Dh, ds, nv, kb + j0 * a.Dh, a.Dh);
    }
  }
}

// Backward per key row (plain): dk_j and dv_j over the group's query heads.
template <typename T>
__global__ void attn_backward_kv_plain(const T* q, const T* k, const T* v, const T* dout,
                                       const T* lse, const T* Dsave, T* dk, T* dv, AttnDims a,
                                       bool causal, T scale, const int32_t* st) {
  const int lane = threadIdx.x & 31;
  LC_WARP_STRIDE(row, a.B * a.Hkv * a.S) {
    const int64_t j = row % a.S, kvs = row / a.S;
    const int64_t b = kvs / a.Hkv, hk = kvs - b * a.Hkv;
    const T* kj = k + row * a.Dh;
    const T* vj = v + row * a.Dv;
    T* dkj = dk ? dk + row * a.Dh : nullptr;
    T* dvj = dv ? dv + row * a.Dv : nullptr;
    if (dkj)
      for (int64_t d = lane; d < a.Dh; d += 32) dkj[d] = T(0);
    if (dvj)
      for (int64_t d = lane; d < a.Dv; d += 32) dvj[d] = T(0);
    for (int64_t g = 0; g < a.group; ++g) {
      const int64_t bh = b * a.Hq + hk * a.group + g;
      // Causal: rows from j - off on see key j, so every lane of these chunks does.
      for (int64_t i0 = causal ? max(int64_t{0}, j - a.off) : 0; i0 < a.T; i0 += 32) {
        const int64_t i = i0 + lane, r = bh * a.T + i;
        T p = T(0), ds = T(0);
        if (i < a.T && first_key(st, a, b, i) <= j) {
          p = d_exp(score(q + r * a.Dh, kj, a.Dh, scale) - lse[r]);
          if (dkj) ds = scale * (p * (dot(dout + r * a.Dv, vj, a.Dv) - Dsave[r]));
        }
        const int nq = static_cast<int>(min(int64_t{32}, a.T - i0));
        const int64_t r0 = bh * a.T + i0;
        if (dvj) acc_rows_global(dvj, a.Dv, p, nq, dout + r0 * a.Dv, a.Dv);
        if (dkj) acc_rows_global(dkj, a.Dh, ds, nq, q + r0 * a.Dh, a.Dh);
      }
    }
  }
}

#undef LC_WARP_STRIDE

// ---------------------------------------------------------------- launch helpers

AttnDims attn_dims(const Tensor& q, const Tensor& v) {
  AttnDims a;
  a.B = q.shape[0];
  a.Hq = q.shape[1];
  a.T = q.shape[2];
  a.Dh = q.shape[3];
  a.Hkv = v.shape[1];
  a.S = v.shape[2];
  a.Dv = v.shape[3];
  a.group = a.Hkv ? a.Hq / a.Hkv : 1;
  a.off = a.S > a.T ? a.S - a.T : 0;
  return a;
}

// Warps per block (br) and tile rows (bc <= 32) of a tiled attention kernel
// whose shared memory holds br * per_row + bc * per_key elements of `size`
// bytes, within kSmemBytes: as many warps as fit with a tile of at least 8
// rows (1 warp: any tile). br == 0: the head dims are too wide for the tiles.
struct Tiles {
  int br = 0, bc = 0;
  size_t bytes = 0;
};
Tiles plan_tiles(const AttnDims& a, int64_t per_row, int64_t per_key, size_t size) {
  Tiles t;
  if (std::max(a.Dh, a.Dv) > 32 * kMaxNV) return t;
  const int64_t cap = kSmemBytes / static_cast<int64_t>(size);
  for (int br : {8, 4, 2, 1}) {
    const int64_t left = cap - br * per_row;
    if (left < per_key) continue;
    const int64_t bc = std::min<int64_t>(32, left / per_key);
    if (bc >= 8 || br == 1) {
      t.br = br;
      t.bc = static_cast<int>(bc);
      t.bytes = static_cast<size_t>(br * per_row + bc * per_key) * size;
      return t;
    }
  }
  return t;
}

// fn(std::integral_constant<int, NV>) with NV the power of two >= ceil(d / 32).
template <typename Fn>
void with_nv(int64_t d, Fn&& fn) {
  const int64_t n = ceil_div(std::max<int64_t>(d, 1), 32);
  if (n <= 1) fn(std::integral_constant<int, 1>{});
  else if (n <= 2) fn(std::integral_constant<int, 2>{});
  else if (n <= 4) fn(std::integral_constant<int, 4>{});
  else fn(std::integral_constant<int, 8>{});  // plan_tiles admits d <= 32 * kMaxNV only
}

constexpr int kPlainThreads = 128;  // 4 warps (rows) per block on the plain path

unsigned plain_grid(int64_t rows) {
  const int wpb = kPlainThreads / 32;
  return static_cast<unsigned>(
      std::max<int64_t>(1, std::min<int64_t>(ceil_div(rows, wpb), 1 << 20)));
}

}  // namespace

// ================================================================ methods

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    double scale, const Tensor& out, const Tensor& lse,
                                    const Tensor* starts) {
  Guard g(c_);
  const int32_t* pst = starts ? dp<int32_t>(*starts) : nullptr;
  const AttnDims a = attn_dims(q, v);
  const int64_t rows = a.B * a.Hq * a.T;
  if (rows == 0) return;
  const char* op = "attention";
  dispatch_float(q.dtype, op, [&](auto z) {
    using T = decltype(z);
    const T s = static_cast<T>(scale);
    const Tiles t = plan_tiles(a, a.Dh, odd_stride(a.Dh) + a.Dv, sizeof(T));
    if (t.br) {
      const unsigned grid = row_grid(a.B * a.Hq * ceil_div(a.T, t.br));
      with_nv(std::max(a.Dh, a.Dv), [&](auto nv) {
        attn_forward_tiled<T, decltype(nv)::value><<<grid, 32 * t.br, t.bytes, c_.stream>>>(
            dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(out), dp<T>(lse), a, causal, s, t.bc, pst);
        launched(c_, op);
      });
    } else {
      attn_forward_plain<T><<<plain_grid(rows), kPlainThreads, 0, c_.stream>>>(
          dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(out), dp<T>(lse), a, causal, s, pst);
      launched(c_, op);
    }
  });
}

void CudaBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& lse, bool causal, double scale,
                                     const Tensor* dq, const Tensor* dk, const Tensor* dv,
                                     const Tensor* starts) {
  Guard g(c_);
  const int32_t* pst = starts ? dp<int32_t>(*starts) : nullptr;
  const AttnDims a = attn_dims(q, v);
  const int64_t rows = a.B * a.Hq * a.T, keys = a.B * a.Hkv * a.S;
  // Empty gradients need no work (and may have no memory).
  const bool want_dq = dq && dq->numel() > 0;
  const bool want_dk = dk && dk->numel() > 0;
  const bool want_dv = dv && dv->numel() > 0;
  const char* op = "attention backward";
  dispatch_float(q.dtype, op, [&](auto z) {
    using T = decltype(z);
    const T s = static_cast<T>(scale);
    T* pdq = want_dq ? dp<T>(*dq) : nullptr;
    T* pdk = want_dk ? dp<T>(*dk) : nullptr;
    T* pdv = want_dv ? dp<T>(*dv) : nullptr;
    // D_i = sum_j P_ij dP_ij feeds dq and dk; the key kernel reads it back.
    Tensor Dt;
    if ((want_dq || want_dk) && rows > 0) {
      Dt = scratch(c_, {rows}, q.dtype);
      const Tiles t = plan_tiles(a, a.Dh + a.Dv, odd_stride(a.Dh) + odd_stride(a.Dv), sizeof(T));
      if (t.br) {
        const unsigned grid = row_grid(a.B * a.Hq * ceil_div(a.T, t.br));
        with_nv(a.Dh, [&](auto nv) {
          attn_backward_q_tiled<T, decltype(nv)::value><<<grid, 32 * t.br, t.bytes, c_.stream>>>(
              dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(dout), dp<T>(lse), dp<T>(Dt), pdq, a, causal,
              s, t.bc, pst);
          launched(c_, op);
        });
      } else {
        attn_backward_q_plain<T><<<plain_grid(rows), kPlainThreads, 0, c_.stream>>>(
            dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(dout), dp<T>(lse), dp<T>(Dt), pdq, a, causal, s,
            pst);
        launched(c_, op);
      }
    }
    if ((want_dk || want_dv) && keys > 0) {
      // Read only for dk and only where there are query rows (then Dt exists).
      const T* pD = want_dk && rows > 0 ? dp<T>(Dt) : nullptr;
      const Tiles t =
          plan_tiles(a, a.Dh + a.Dv, odd_stride(a.Dh) + odd_stride(a.Dv) + 3, sizeof(T));
      if (t.br) {
        const unsigned grid = row_grid(a.B * a.Hkv * ceil_div(a.S, t.br));
        with_nv(std::max(a.Dh, a.Dv), [&](auto nv) {
          attn_backward_kv_tiled<T, decltype(nv)::value><<<grid, 32 * t.br, t.bytes, c_.stream>>>(
              dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(dout), dp<T>(lse), pD, pdk, pdv, a, causal, s,
              t.bc, pst);
          launched(c_, op);
        });
      } else {
        attn_backward_kv_plain<T><<<plain_grid(keys), kPlainThreads, 0, c_.stream>>>(
            dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(dout), dp<T>(lse), pD, pdk, pdv, a, causal, s,
            pst);
        launched(c_, op);
      }
    }
  });
}

}  // namespace lc::cuda
