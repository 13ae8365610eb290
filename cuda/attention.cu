// Scaled dot-product attention on CUDA with grouped KV heads (semantics in
// src/backend.h, reference in src/cpu/attention.cpp), in either layout
// ([B, H, T, D] or the projections' [B, T, H, D]), read through row offsets.
//
// bfloat16 / float16: FlashAttention-2 on tensor cores (nvcuda::wmma, fp32
// accumulation and softmax statistics, only the row logsumexp kept for
// backward), for equal q/v head dims up to 128; other head dims are widened to
// float32 and take the float path.
//
// float32 with TF32 allowed (cuda.setAllowTF32, as PyTorch's allow_tf32 for float32 products)
// on compute capability 8.0+: the same kernels on TF32 fragments (16x16x8, float tiles in
// shared memory, each operand rounded with __float_to_tf32, fp32 accumulation), where the
// float tiles fit the device's opt-in shared memory; else the float path below. TF32 is off by
// default, and float32 then never leaves exact fp32 arithmetic.
//
// float32 / float64: a tiled online-softmax kernel (one warp per query row,
// keys staged through shared memory), with a plain global-memory path for head
// dims the tiles cannot hold. Their backward is atomic-free and deterministic:
// one kernel per query row (D_i and dq), one per key row (dk and dv, summed
// over the query heads of its group).
#include <mma.h>

#include <algorithm>
#include <initializer_list>
#include <type_traits>

#include "../src/cuda_api.h"
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
  bool bthd;  // [B, T, H, D] instead of [B, H, T, D]
};

// Element offset of row i of slice s (= b * H + h) of a tensor with H heads, L rows, D columns,
// and the distance between consecutive rows of a slice.
__host__ __device__ __forceinline__ int64_t attn_row(const AttnDims& a, int64_t s, int64_t i,
                                                     int64_t H, int64_t L, int64_t D) {
  return a.bthd ? ((s / H) * L + i) * H * D + (s % H) * D : (s * L + i) * D;
}
__device__ __forceinline__ int64_t qrow(const AttnDims& a, int64_t bh, int64_t i) {
  return attn_row(a, bh, i, a.Hq, a.T, a.Dh);  // q, dq
}
__device__ __forceinline__ int64_t orow(const AttnDims& a, int64_t bh, int64_t i) {
  return attn_row(a, bh, i, a.Hq, a.T, a.Dv);  // out, dout
}
__device__ __forceinline__ int64_t krow(const AttnDims& a, int64_t kv, int64_t j) {
  return attn_row(a, kv, j, a.Hkv, a.S, a.Dh);  // k, dk
}
__device__ __forceinline__ int64_t vrow(const AttnDims& a, int64_t kv, int64_t j) {
  return attn_row(a, kv, j, a.Hkv, a.S, a.Dv);  // v, dv
}
__device__ __forceinline__ int64_t qstep(const AttnDims& a) { return a.bthd ? a.Hq * a.Dh : a.Dh; }
__device__ __forceinline__ int64_t ostep(const AttnDims& a) { return a.bthd ? a.Hq * a.Dv : a.Dv; }
__device__ __forceinline__ int64_t kstep(const AttnDims& a) { return a.bthd ? a.Hkv * a.Dh : a.Dh; }
__device__ __forceinline__ int64_t vstep(const AttnDims& a) { return a.bthd ? a.Hkv * a.Dv : a.Dv; }

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
// stride sstride) into dst (row stride dstride).
template <typename T>
__device__ __forceinline__ void stage_rows(T* dst, int64_t dstride, const T* src, int64_t sstride,
                                           int64_t rows, int64_t len) {
  for (int64_t idx = threadIdx.x; idx < rows * len; idx += blockDim.x) {
    const int64_t rr = idx / len, d = idx - rr * len;
    dst[rr * dstride + d] = src[rr * sstride + d];
  }
}
// The same for rows first..first+rows-1 of a matrix of `total` rows (row 0 at
// src), zeros past its end (rows of a tile beyond the last query or key).
template <typename T>
__device__ __forceinline__ void stage_rows_clamped(T* dst, int64_t dstride, const T* src,
                                                   int64_t sstride, int64_t first, int64_t rows,
                                                   int64_t total, int64_t len) {
  for (int64_t idx = threadIdx.x; idx < rows * len; idx += blockDim.x) {
    const int64_t rr = idx / len, d = idx - rr * len;
    dst[rr * dstride + d] = first + rr < total ? src[(first + rr) * sstride + d] : T(0);
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
    stage_rows_clamped(Qs, a.Dh, q + qrow(a, bh, 0), qstep(a), i0, br, a.T, a.Dh);
    T m = neg_inf<T>();
    double l = 0;
    T acc[NV];
#pragma unroll
    for (int kk = 0; kk < NV; ++kk) acc[kk] = T(0);
    for (int64_t j0 = 0; j0 < kend; j0 += bc) {
      const int nk = static_cast<int>(min(static_cast<int64_t>(bc), kend - j0));
      __syncthreads();  // Qs written; the previous key tile's readers are done
      stage_rows(Ks, ksd, k + krow(a, kvs, j0), kstep(a), nk, a.Dh);
      stage_rows(Vs, a.Dv, v + vrow(a, kvs, j0), vstep(a), nk, a.Dv);
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
      T* o = out + orow(a, bh, i);
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
    stage_rows_clamped(Qs, a.Dh, q + qrow(a, bh, 0), qstep(a), i0, br, a.T, a.Dh);
    stage_rows_clamped(Gs, a.Dv, dout + orow(a, bh, 0), ostep(a), i0, br, a.T, a.Dv);
    double dsum = 0;
    T Drow = T(0);
    T acc[NV];
#pragma unroll
    for (int kk = 0; kk < NV; ++kk) acc[kk] = T(0);
    for (int pass = 0; pass < passes; ++pass) {
      for (int64_t j0 = 0; j0 < kend; j0 += bc) {
        const int nk = static_cast<int>(min(static_cast<int64_t>(bc), kend - j0));
        __syncthreads();
        stage_rows(Ks, ksd, k + krow(a, kvs, j0), kstep(a), nk, a.Dh);
        stage_rows(Vs, vsd, v + vrow(a, kvs, j0), vstep(a), nk, a.Dv);
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
      T* o = dq + qrow(a, bh, i);
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
    stage_rows_clamped(Kr, a.Dh, k + krow(a, kvs, 0), kstep(a), j0, br, a.S, a.Dh);
    stage_rows_clamped(Vr, a.Dv, v + vrow(a, kvs, 0), vstep(a), j0, br, a.S, a.Dv);
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
        stage_rows(Qs, qsd, q + qrow(a, bh, i0), qstep(a), nq, a.Dh);
        stage_rows(Gs, gsd, dout + orow(a, bh, i0), ostep(a), nq, a.Dv);
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
#pragma unroll
      for (int kk = 0; kk < NV; ++kk) {
        const int64_t d = lane + 32 * kk;
        if (dk && d < a.Dh) dk[krow(a, kvs, j) + d] = ak[kk];
        if (dv && d < a.Dv) dv[vrow(a, kvs, j) + d] = av[kk];
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
    const T* qi = q + qrow(a, bh, i);
    const T* kb = k + krow(a, kvs, 0);
    const T* vb = v + vrow(a, kvs, 0);
    const int64_t ks = kstep(a), vs = vstep(a);
    T* o = out + orow(a, bh, i);
    for (int64_t d = lane; d < a.Dv; d += 32) o[d] = T(0);
    if (jn == 0) {
      if (lane == 0) lse[r] = neg_inf<T>();
      continue;
    }
    T m = neg_inf<T>();
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      const T s = j < jn ? score(qi, kb + j * ks, a.Dh, scale) : neg_inf<T>();
      m = max(m, warp_max(s));
    }
    double l = 0;
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      const T p = j < jn ? d_exp(score(qi, kb + j * ks, a.Dh, scale) - m) : T(0);
      l += warp_sum(static_cast<double>(p));
      const int nv = static_cast<int>(min(int64_t{32}, jn - j0));
      acc_rows_global(o, a.Dv, p, nv, vb + j0 * vs, vs);
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
    const T* qi = q + qrow(a, bh, i);
    const T* gi = dout + orow(a, bh, i);
    const T* kb = k + krow(a, kvs, 0);
    const T* vb = v + vrow(a, kvs, 0);
    const int64_t ks = kstep(a), vs = vstep(a);
    const T li = lse[r];
    double dsum = 0;
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      T p = T(0), dP = T(0);
      if (j < jn) {
        p = d_exp(score(qi, kb + j * ks, a.Dh, scale) - li);
        dP = dot(gi, vb + j * vs, a.Dv);
      }
      dsum += warp_sum(static_cast<double>(p) * static_cast<double>(dP));
    }
    const T Drow = static_cast<T>(dsum);
    if (lane == 0) Dsave[r] = Drow;
    if (!dq) continue;
    T* o = dq + qrow(a, bh, i);
    for (int64_t d = lane; d < a.Dh; d += 32) o[d] = T(0);
    for (int64_t j0 = js; j0 < jn; j0 += 32) {
      const int64_t j = j0 + lane;
      T ds = T(0);
      if (j < jn) {
        const T p = d_exp(score(qi, kb + j * ks, a.Dh, scale) - li);
        ds = scale * (p * (dot(gi, vb + j * vs, a.Dv) - Drow));
      }
      const int nv = static_cast<int>(min(int64_t{32}, jn - j0));
      acc_rows_global(o, a.Dh, ds, nv, kb + j0 * ks, ks);
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
    const T* kj = k + krow(a, kvs, j);
    const T* vj = v + vrow(a, kvs, j);
    T* dkj = dk ? dk + krow(a, kvs, j) : nullptr;
    T* dvj = dv ? dv + vrow(a, kvs, j) : nullptr;
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
          p = d_exp(score(q + qrow(a, bh, i), kj, a.Dh, scale) - lse[r]);
          if (dkj) ds = scale * (p * (dot(dout + orow(a, bh, i), vj, a.Dv) - Dsave[r]));
        }
        const int nq = static_cast<int>(min(int64_t{32}, a.T - i0));
        if (dvj) acc_rows_global(dvj, a.Dv, p, nq, dout + orow(a, bh, i0), ostep(a));
        if (dkj) acc_rows_global(dkj, a.Dh, ds, nq, q + qrow(a, bh, i0), qstep(a));
      }
    }
  }
}

#undef LC_WARP_STRIDE

// ================================================================ tensor cores (bf16, fp16, tf32)
//
// FlashAttention-2 (Dao, 2023) on the warp matrix functions: 16x16x16 products of 16-bit
// operands, or 16x16x8 products of TF32 ones (float32 with TF32 allowed), accumulated in fp32.
// A block of 4 warps takes 64 query rows (forward) or 64 keys (backward), each warp 16 of them;
// tiles of q, k, v, dout are staged in shared memory as the wmma type (float for TF32) with the
// head dim padded with zeros to DP (64 or 128), so any length works. P and dS are rounded to
// the operand type for their products, as FlashAttention does; everything else (scores,
// softmax statistics, the output, dq, dk, dv) stays fp32 until the final store.
// A fragment's element order is the hardware's: row-wise work goes through shared memory, and
// the row of each accumulator element is learnt once by loading a matrix of row numbers.

using namespace nvcuda;

constexpr int kTcTile = 64;          // rows per block and per inner tile
constexpr int kTcThreads = 128;      // 4 warps x 16 rows
constexpr int kTcLds = kTcTile + 4;  // row stride (floats) of a score tile
constexpr int kTcLdp = kTcTile + 8;  // row stride (elements) of a P / dS tile

__device__ __forceinline__ __nv_bfloat16 to_wmma(bf16 x) { return __ushort_as_bfloat16(x.bits); }
__device__ __forceinline__ __half to_wmma(f16 x) { return __ushort_as_half(x.bits); }
__device__ __forceinline__ float to_wmma(float x) { return x; }
template <typename TW>
__device__ __forceinline__ TW wmma_from(float x);
template <>
__device__ __forceinline__ __nv_bfloat16 wmma_from<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}
template <>
__device__ __forceinline__ __half wmma_from<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ float wmma_from<float>(float x) {
  return x;
}

// The tag of the TF32 kernels (wmma::precision::tf32 itself is declared for compute capability
// 8.0 and newer only, and the kernels are instantiated for every architecture of the build).
struct Tf32 {};

// What the kernels stage and multiply for an operand type TW: the shared-memory element E,
// the fragment's K and element type F, and how a loaded fragment or a P / dS value becomes an
// operand. 16-bit types: themselves, 16x16x16. TF32: float tiles, 16x16x8 fragments whose
// elements are rounded with __float_to_tf32 after the load (CUDA leaves the low 13 bits of an
// unconverted element to the hardware), P and dS stored already rounded.
template <typename TW>
struct Tc {
  using E = TW;
  using F = TW;
  static constexpr int K = 16;
  template <typename Frag>
  __device__ static void round(Frag&) {}
  __device__ static E from(float x) { return wmma_from<TW>(x); }
};
#if !defined(__CUDA_ARCH__) || __CUDA_ARCH__ >= 800
#define LC_TF32_MMA 1
#endif
template <>
struct Tc<Tf32> {
  using E = float;
#ifdef LC_TF32_MMA
  using F = wmma::precision::tf32;
#endif
  static constexpr int K = 8;
#ifdef LC_TF32_MMA
  template <typename Frag>
  __device__ static void round(Frag& f) {
#pragma unroll
    for (int e = 0; e < f.num_elements; ++e) f.x[e] = wmma::__float_to_tf32(f.x[e]);
  }
  __device__ static float from(float x) { return wmma::__float_to_tf32(x); }
#endif
};
template <typename TW, typename L>
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, Tc<TW>::K, typename Tc<TW>::F, L>;
template <typename TW, typename L>
using FragB = wmma::fragment<wmma::matrix_b, 16, 16, Tc<TW>::K, typename Tc<TW>::F, L>;
template <typename TW>
using Acc = wmma::fragment<wmma::accumulator, 16, 16, Tc<TW>::K, float>;
// An operand fragment loaded and made ready for mma_sync.
template <typename TW, typename Frag>
__device__ __forceinline__ void tc_load(Frag& f, const typename Tc<TW>::E* p, unsigned ld) {
  wmma::load_matrix_sync(f, p, ld);
  Tc<TW>::round(f);
}
template <typename TS>
struct WmmaOf;
template <>
struct WmmaOf<bf16> {
  using type = __nv_bfloat16;
};
template <>
struct WmmaOf<f16> {
  using type = __half;
};
template <>
struct WmmaOf<float> {
  using type = Tf32;
};

static_assert(Acc<__half>::num_elements == 8, "a 16x16 fp32 accumulator holds 8 elements per lane");

// 16 bytes: 8 elements moved at once.
struct alignas(16) Vec16 {
  uint32_t w[4];
};

// Block-wide: rows first..first+63 of a slice (row r at src + r * step, `total` rows, D
// columns) into dst [64][ld] as the staging type (of the same size); columns D..DP and rows
// past the end are zero. 16-byte loads where the head dim, the row stride and the base allow.
template <int DP, typename TS, typename E>
__device__ __forceinline__ void tc_stage(E* dst, int ld, const TS* src, int64_t step,
                                         int64_t first, int64_t total, int64_t D) {
  static_assert(sizeof(E) == sizeof(TS), "staged as stored");
  constexpr int V = 16 / sizeof(TS);  // elements per 16 bytes
  if (D % V == 0 &&
      ((reinterpret_cast<uintptr_t>(src) | static_cast<uintptr_t>(step) * sizeof(TS)) & 15) == 0) {
    constexpr int C = DP / V;
    for (int idx = threadIdx.x; idx < kTcTile * C; idx += blockDim.x) {
      const int r = idx / C, c = (idx - r * C) * V;
      Vec16 val = {{0, 0, 0, 0}};
      if (first + r < total && c < D) val = *reinterpret_cast<const Vec16*>(src + (first + r) * step + c);
      *reinterpret_cast<Vec16*>(dst + r * ld + c) = val;
    }
    return;
  }
  for (int idx = threadIdx.x; idx < kTcTile * DP; idx += blockDim.x) {
    const int r = idx / DP, d = idx - r * DP;
    dst[r * ld + d] = first + r < total && d < D ? to_wmma(src[(first + r) * step + d])
                                                 : wmma_from<E>(0.0f);
  }
}

// The row (0..15) of each element of this lane's accumulator fragments: a matrix whose entries
// are their row numbers, loaded (buf: the warp's 16 x kTcLds floats of shared memory).
template <typename AccT>
__device__ __forceinline__ void tc_rows(float* buf, int (&rows)[8]) {
  const int lane = threadIdx.x & 31;
  for (int e = lane; e < 256; e += 32) buf[(e >> 4) * kTcLds + (e & 15)] = static_cast<float>(e >> 4);
  __syncwarp();
  AccT f;
  wmma::load_matrix_sync(f, buf, kTcLds, wmma::mem_row_major);
#pragma unroll
  for (int e = 0; e < 8; ++e) rows[e] = static_cast<int>(f.x[e]);
  __syncwarp();
}

// Writes a warp's 16 x 16 fp32 fragment, times `mul`, as rows row0..row0+15, columns
// col0..col0+15 (below `cols`) of a tensor of TS at dst + off(row) (rows below `nrows`),
// through buf (the warp's 16 x kTcLds floats). Lane l writes row l / 2, 8 columns.
template <typename TS, typename AccT, typename Off>
__device__ __forceinline__ void tc_store_rows(const AccT& f, float mul, float* buf, TS* dst,
                                              int64_t row0, int64_t nrows, int64_t col0,
                                              int64_t cols, Off off) {
  const int lane = threadIdx.x & 31, r = lane >> 1, c0 = (lane & 1) * 8;
  __syncwarp();  // earlier readers of buf are done
  wmma::store_matrix_sync(buf, f, kTcLds, wmma::mem_row_major);
  __syncwarp();
  if (row0 + r < nrows) {
    TS* o = dst + off(row0 + r);
#pragma unroll
    for (int c = 0; c < 8; ++c)
      if (col0 + c0 + c < cols) o[col0 + c0 + c] = TS(mul * buf[r * kTcLds + c0 + c]);
  }
}

extern __shared__ __align__(128) unsigned char attn_tc_smem[];

// The warp's 16 x 64 fp32 tile Sw (row stride kTcLds) = X Y^T: X the warp's 16 rows of a
// [.][LDH] tile, Y the 64 rows of another (both DP wide).
template <typename TW, int DP, typename E = typename Tc<TW>::E>
__device__ __forceinline__ void tc_rows_times_t(float* Sw, const E* Xw, const E* Y) {
  constexpr int LDH = DP + 8, KF = Tc<TW>::K, NK = DP / KF;
#pragma unroll
  for (int nt = 0; nt < kTcTile / 16; ++nt) {
    Acc<TW> sf;
    wmma::fill_fragment(sf, 0.0f);
#pragma unroll
    for (int kk = 0; kk < NK; ++kk) {
      FragA<TW, wmma::row_major> xf;
      FragB<TW, wmma::col_major> yf;
      tc_load<TW>(xf, Xw + kk * KF, LDH);
      tc_load<TW>(yf, Y + nt * 16 * LDH + kk * KF, LDH);
      wmma::mma_sync(sf, xf, yf, sf);
    }
    wmma::store_matrix_sync(Sw + nt * 16, sf, kTcLds, wmma::mem_row_major);
  }
}

// acc (the warp's 16 x DP) += Pw Y: Pw the warp's 16 x 64 tile (row stride kTcLdp), Y a
// [64][LDH] tile.
template <typename TW, int DP, typename E = typename Tc<TW>::E>
__device__ __forceinline__ void tc_acc_times(Acc<TW> (&acc)[DP / 16], const E* Pw, const E* Y) {
  constexpr int LDH = DP + 8, NF = DP / 16, KF = Tc<TW>::K;
#pragma unroll
  for (int kk = 0; kk < kTcTile / KF; ++kk) {
    FragA<TW, wmma::row_major> pf;
    tc_load<TW>(pf, Pw + kk * KF, kTcLdp);
#pragma unroll
    for (int nt = 0; nt < NF; ++nt) {
      FragB<TW, wmma::row_major> yf;
      tc_load<TW>(yf, Y + kk * KF * LDH + nt * 16, LDH);
      wmma::mma_sync(acc[nt], pf, yf, acc[nt]);
    }
  }
}


// Bytes of dynamic shared memory: staged tiles of E (2 bytes, or 4 for TF32), fp32 scores and
// per-row values. At DP 64 / 128: forward 44 / 60 KB in 16 bits, 71 / 103 KB in TF32; backward
// 72 / 104 KB, 126 / 190 KB.
template <typename TW, int DP>
constexpr size_t tc_forward_smem() {
  constexpr size_t es = sizeof(typename Tc<TW>::E);
  return 2 * kTcTile * (DP + 8) * es + kTcTile * kTcLds * 4 + kTcTile * kTcLdp * es + kTcTile * 4;
}
template <typename TW, int DP>
constexpr size_t tc_backward_smem() {
  constexpr size_t es = sizeof(typename Tc<TW>::E);
  return 4 * kTcTile * (DP + 8) * es + kTcTile * kTcLds * 4 + 2 * kTcTile * kTcLdp * es + 3 * kTcTile * 4;
}

// Forward: block = 64 query rows of one (b, h) slice; per key tile of 64, S = Q K^T (warp: 16 x
// 64), the online softmax on it (lane: half a row), O = O * corr + P V in fragments.
template <typename TS, typename TW, int DP>
__device__ __forceinline__ void attn_forward_tc_body(const TS* q, const TS* k, const TS* v, TS* out,
                                                     float* lse, AttnDims a, bool causal,
                                                     float scale, const int32_t* st) {
  using E = typename Tc<TW>::E;
  constexpr int LDH = DP + 8, NF = DP / 16, KF = Tc<TW>::K, NK = DP / KF;
  E* Ks = reinterpret_cast<E*>(attn_tc_smem);
  E* Vs = Ks + kTcTile * LDH;
  float* Ss = reinterpret_cast<float*>(Vs + kTcTile * LDH);  // [64][kTcLds] scores
  E* Ps = reinterpret_cast<E*>(Ss + kTcTile * kTcLds);       // [64][kTcLdp] P
  float* Cs = reinterpret_cast<float*>(Ps + kTcTile * kTcLdp);  // [64] per-row factors
  E* Qs = reinterpret_cast<E*>(Ss);  // the q tile, over Ss and Ps until it is in fragments
  static_assert(kTcTile * LDH * sizeof(E) <= kTcTile * (kTcLds * 4 + kTcLdp * sizeof(E)),
                "q tile fits");
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t nrt = (a.T + kTcTile - 1) / kTcTile;
  const int64_t bh = blockIdx.x / nrt, i0 = (blockIdx.x - bh * nrt) * kTcTile;
  const int64_t kvs = kv_of(a, bh), b = bh / a.Hq;

  tc_stage<DP>(Qs, LDH, q + qrow(a, bh, 0), qstep(a), i0, a.T, a.Dh);
  __syncthreads();
  FragA<TW, wmma::row_major> qf[NK];
#pragma unroll
  for (int kk = 0; kk < NK; ++kk) tc_load<TW>(qf[kk], Qs + w * 16 * LDH + kk * KF, LDH);
  __syncthreads();  // every warp holds its q rows before Ss (over Qs) is written
  float* Sw = Ss + w * 16 * kTcLds;
  E* Pw = Ps + w * 16 * kTcLdp;
  float* Cw = Cs + w * 16;
  int rows[8];
  tc_rows<Acc<TW>>(Sw, rows);
  Acc<TW> of[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) wmma::fill_fragment(of[f], 0.0f);

  // Lane: row r of the warp's 16, columns half * 32 .. + 31 of each score tile.
  const int r = lane >> 1, half = lane & 1;
  const int64_t i = i0 + w * 16 + r;
  const bool row_ok = i < a.T;
  const int64_t jn = row_ok ? visible(a, i, causal) : 0;
  const int64_t js = row_ok ? first_key(st, a, b, i) : 0;
  float m = -INFINITY, l = 0.0f;
  // Keys any row of the block sees (block-uniform, so are the barriers below).
  const int64_t kend = causal ? min(a.S, i0 + a.off + kTcTile) : a.S;
  for (int64_t j0 = 0; j0 < kend; j0 += kTcTile) {
    __syncthreads();  // the previous tile's readers are done with Ks, Vs, Ss, Ps, Cs
    tc_stage<DP>(Ks, LDH, k + krow(a, kvs, 0), kstep(a), j0, a.S, a.Dh);
    tc_stage<DP>(Vs, LDH, v + vrow(a, kvs, 0), vstep(a), j0, a.S, a.Dv);
    __syncthreads();
#pragma unroll
    for (int nt = 0; nt < kTcTile / 16; ++nt) {
      Acc<TW> sf;
      wmma::fill_fragment(sf, 0.0f);
#pragma unroll
      for (int kk = 0; kk < NK; ++kk) {
        FragB<TW, wmma::col_major> kf;
        tc_load<TW>(kf, Ks + nt * 16 * LDH + kk * KF, LDH);
        wmma::mma_sync(sf, qf[kk], kf, sf);
      }
      wmma::store_matrix_sync(Sw + nt * 16, sf, kTcLds, wmma::mem_row_major);
    }
    __syncwarp();
    // Online softmax: scale and mask, the new row max, P (rounded for the product), the factor
    // that rescales what was accumulated under the old max.
    float* srow = Sw + r * kTcLds + half * 32;
    E* prow = Pw + r * kTcLdp + half * 32;
    float mx = -INFINITY;
    for (int c = 0; c < 32; ++c) {
      const int64_t j = j0 + half * 32 + c;
      const float sc = j >= js && j < jn ? srow[c] * scale : -INFINITY;
      srow[c] = sc;
      mx = fmaxf(mx, sc);
    }
    mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 1));
    const float mn = fmaxf(m, mx);
    const float corr = mn == -INFINITY ? 1.0f : expf(m - mn);
    float sum = 0.0f;
    for (int c = 0; c < 32; ++c) {
      const float p = srow[c] == -INFINITY ? 0.0f : expf(srow[c] - mn);
      prow[c] = Tc<TW>::from(p);
      sum += p;
    }
    sum += __shfl_xor_sync(kFull, sum, 1);
    l = l * corr + sum;
    m = mn;
    if (half == 0) Cw[r] = corr;
    __syncwarp();
#pragma unroll
    for (int f = 0; f < NF; ++f)
#pragma unroll
      for (int e = 0; e < 8; ++e) of[f].x[e] *= Cw[rows[e]];
    tc_acc_times<TW, DP>(of, Pw, Vs);
  }
  // O / l and lse = m + log l; a row without keys (S == 0) is zeros with lse = -inf.
  __syncwarp();
  if (half == 0) {
    Cw[r] = l > 0.0f ? 1.0f / l : 0.0f;
    if (row_ok) lse[bh * a.T + i] = l > 0.0f ? m + logf(l) : -INFINITY;
  }
  __syncwarp();
#pragma unroll
  for (int f = 0; f < NF; ++f) {
#pragma unroll
    for (int e = 0; e < 8; ++e) of[f].x[e] *= Cw[rows[e]];
    tc_store_rows(of[f], 1.0f, Sw, out, i0 + w * 16, a.T, f * 16, a.Dv,
                  [&](int64_t ii) { return orow(a, bh, ii); });
  }
}

// D_i = dout_i . out_i in fp32 (FlashAttention-2's rowsum(dO * O)), one warp per row.
template <typename TS>
__global__ void attn_backward_dot_tc(const TS* dout, const TS* out, float* Dsave, AttnDims a) {
  const int lane = threadIdx.x & 31;
  const int64_t rows = a.B * a.Hq * a.T;
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
       r < rows; r += static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5)) {
    const int64_t bh = r / a.T, i = r - bh * a.T;
    const TS* g = dout + orow(a, bh, i);
    const TS* o = out + orow(a, bh, i);
    float acc = 0.0f;
    for (int64_t d = lane; d < a.Dv; d += 32) acc += static_cast<float>(g[d]) * static_cast<float>(o[d]);
    acc = warp_sum(acc);
    if (lane == 0) Dsave[r] = acc;
  }
}

// Backward: block = 64 keys of one kv slice (warp: 16 of them), over the query heads of its
// group and the query tiles that see them. Per tile five products: S^T = K Q^T, dV += P^T dO,
// dP^T = V dO^T, dK += dS^T Q, dQ += dS K (fp32 atomics into dqacc [B * Hq * T, Dh]), with
// P = exp(scale S - lse) and dS = P (dP - D).
template <typename TS, typename TW, int DP>
__device__ __forceinline__ void attn_backward_tc_body(const TS* q, const TS* k, const TS* v,
                                                      const TS* dout, const float* lse,
                                                      const float* Dsave, float* dqacc, TS* dk,
                                                      TS* dv, AttnDims a, bool causal, float scale,
                                                      const int32_t* st) {
  using E = typename Tc<TW>::E;
  constexpr int LDH = DP + 8, NF = DP / 16, KF = Tc<TW>::K;
  E* Ks = reinterpret_cast<E*>(attn_tc_smem);
  E* Vs = Ks + kTcTile * LDH;
  E* Qs = Vs + kTcTile * LDH;
  E* Gs = Qs + kTcTile * LDH;                                 // dout tile
  float* Ss = reinterpret_cast<float*>(Gs + kTcTile * LDH);   // [64 keys][kTcLds]: S^T, then dP^T
  E* Ps = reinterpret_cast<E*>(Ss + kTcTile * kTcLds);        // [64 keys][kTcLdp]: P^T
  E* Ds = Ps + kTcTile * kTcLdp;                              // [64 keys][kTcLdp]: dS^T
  float* Ls = reinterpret_cast<float*>(Ds + kTcTile * kTcLdp);  // [64] lse of the query rows
  float* Dr = Ls + kTcTile;                                     // [64] D of the query rows
  int* Js = reinterpret_cast<int*>(Dr + kTcTile);               // [64] their first keys
  const int w = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t nkt = (a.S + kTcTile - 1) / kTcTile;
  const int64_t kvs = blockIdx.x / nkt, j0 = (blockIdx.x - kvs * nkt) * kTcTile;
  const int64_t b = kvs / a.Hkv, hk = kvs - b * a.Hkv;
  tc_stage<DP>(Ks, LDH, k + krow(a, kvs, 0), kstep(a), j0, a.S, a.Dh);
  tc_stage<DP>(Vs, LDH, v + vrow(a, kvs, 0), vstep(a), j0, a.S, a.Dv);
  float* Sw = Ss + w * 16 * kTcLds;
  E* Pw = Ps + w * 16 * kTcLdp;
  E* Dw = Ds + w * 16 * kTcLdp;
  Acc<TW> dkf[NF], dvf[NF];
#pragma unroll
  for (int f = 0; f < NF; ++f) {
    wmma::fill_fragment(dkf[f], 0.0f);
    wmma::fill_fragment(dvf[f], 0.0f);
  }
  // Lane: key row r of the warp's 16, query columns half * 32 .. + 31 of each tile.
  const int r = lane >> 1, half = lane & 1;
  const int64_t j = j0 + w * 16 + r;
  float pr[32];
  // Query rows below the block's first key see none of its keys.
  const int64_t istart = causal ? max(int64_t{0}, j0 - a.off) : 0;
  for (int64_t g = 0; g < a.group; ++g) {
    const int64_t bh = b * a.Hq + hk * a.group + g;
    for (int64_t i0 = istart; i0 < a.T; i0 += kTcTile) {
      __syncthreads();  // Ks, Vs written; the previous tile's readers are done
      tc_stage<DP>(Qs, LDH, q + qrow(a, bh, 0), qstep(a), i0, a.T, a.Dh);
      tc_stage<DP>(Gs, LDH, dout + orow(a, bh, 0), ostep(a), i0, a.T, a.Dv);
      for (int t = threadIdx.x; t < kTcTile; t += blockDim.x) {
        const int64_t i = i0 + t;
        Ls[t] = i < a.T ? lse[bh * a.T + i] : 0.0f;
        Dr[t] = i < a.T ? Dsave[bh * a.T + i] : 0.0f;
        Js[t] = i < a.T ? static_cast<int>(first_key(st, a, b, i)) : 0;
      }
      __syncthreads();
      // S^T = K Q^T: the warp's 16 keys x 64 query rows.
      tc_rows_times_t<TW, DP>(Sw, Ks + w * 16 * LDH, Qs);
      __syncwarp();
      // P^T from the saved logsumexp; keys a query row does not see are 0.
      for (int c = 0; c < 32; ++c) {
        const int t = half * 32 + c;
        const int64_t i = i0 + t;
        const bool vis = i < a.T && j < a.S && j >= Js[t] && (!causal || j <= i + a.off);
        const float p = vis ? expf(Sw[r * kTcLds + t] * scale - Ls[t]) : 0.0f;
        pr[c] = p;
        Pw[r * kTcLdp + t] = Tc<TW>::from(p);
      }
      __syncwarp();
      // dV += P^T dO.
      tc_acc_times<TW, DP>(dvf, Pw, Gs);
      // dP^T = V dO^T, over S^T (read above).
      tc_rows_times_t<TW, DP>(Sw, Vs + w * 16 * LDH, Gs);
      __syncwarp();
      // dS^T = P^T (dP^T - D), rounded for its two products.
      for (int c = 0; c < 32; ++c) {
        const int t = half * 32 + c;
        Dw[r * kTcLdp + t] = Tc<TW>::from(pr[c] * (Sw[r * kTcLds + t] - Dr[t]));
      }
      __syncwarp();
      // dK += dS^T Q.
      tc_acc_times<TW, DP>(dkf, Dw, Qs);
      if (dqacc) {
        __syncthreads();  // every warp's dS^T rows are written
        // dQ (the warp's 16 query rows) += dS K, dS read column-major out of dS^T.
        for (int nt = 0; nt < NF; ++nt) {
          Acc<TW> qa;
          wmma::fill_fragment(qa, 0.0f);
#pragma unroll
          for (int kk = 0; kk < kTcTile / KF; ++kk) {
            FragA<TW, wmma::col_major> df;
            FragB<TW, wmma::row_major> kf;
            tc_load<TW>(df, Ds + kk * KF * kTcLdp + w * 16, kTcLdp);
            tc_load<TW>(kf, Ks + kk * KF * LDH + nt * 16, LDH);
            wmma::mma_sync(qa, df, kf, qa);
          }
          __syncwarp();  // this warp's earlier readers of Sw are done
          wmma::store_matrix_sync(Sw, qa, kTcLds, wmma::mem_row_major);
          __syncwarp();
          const int64_t i = i0 + w * 16 + r;
          if (i < a.T) {
            float* o = dqacc + (bh * a.T + i) * a.Dh + nt * 16 + half * 8;
#pragma unroll
            for (int c = 0; c < 8; ++c)
              if (nt * 16 + half * 8 + c < a.Dh) atomicAdd(o + c, scale * Sw[r * kTcLds + half * 8 + c]);
          }
        }
      }
    }
  }
  // dk = scale dS^T Q, dv = P^T dO, summed over the group: the block's key rows (set).
#pragma unroll
  for (int f = 0; f < NF; ++f) {
    if (dk)
      tc_store_rows(dkf[f], scale, Sw, dk, j0 + w * 16, a.S, f * 16, a.Dh,
                    [&](int64_t jj) { return krow(a, kvs, jj); });
    if (dv)
      tc_store_rows(dvf[f], 1.0f, Sw, dv, j0 + w * 16, a.S, f * 16, a.Dv,
                    [&](int64_t jj) { return vrow(a, kvs, jj); });
  }
}

// bf16 and tf32 tensor-core fragments exist from compute capability 8.0; fp16 ones from 7.0.
// The launchers never start a kernel the device cannot run (tc_runs, tf32_runs), so the stub
// only keeps the build for older architectures whole.
template <typename TW>
__device__ constexpr bool tc_compiled() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  return std::is_same<TW, __half>::value;
#else
  return true;
#endif
}

template <typename TS, typename TW, int DP>
__global__ void __launch_bounds__(kTcThreads)
    attn_forward_tc(const TS* q, const TS* k, const TS* v, TS* out, float* lse, AttnDims a,
                    bool causal, float scale, const int32_t* st) {
  if constexpr (tc_compiled<TW>()) attn_forward_tc_body<TS, TW, DP>(q, k, v, out, lse, a, causal, scale, st);
  else __trap();
}

template <typename TS, typename TW, int DP>
__global__ void __launch_bounds__(kTcThreads)
    attn_backward_tc(const TS* q, const TS* k, const TS* v, const TS* dout, const float* lse,
                     const float* Dsave, float* dqacc, TS* dk, TS* dv, AttnDims a, bool causal,
                     float scale, const int32_t* st) {
  if constexpr (tc_compiled<TW>())
    attn_backward_tc_body<TS, TW, DP>(q, k, v, dout, lse, Dsave, dqacc, dk, dv, a, causal, scale, st);
  else __trap();
}

// dq (in q's layout) = dqacc rounded once.
template <typename TS>
__global__ void attn_dq_store_tc(const float* dqacc, TS* dq, AttnDims a) {
  LC_GRID_STRIDE(idx, a.B * a.Hq * a.T * a.Dh) {
    const int64_t r = idx / a.Dh, d = idx - r * a.Dh;
    dq[qrow(a, r / a.T, r % a.T) + d] = TS(dqacc[idx]);
  }
}

// y = x converted through float (16-bit inputs of the float path and its results).
template <typename S, typename D>
__global__ void attn_convert(const S* x, D* y, int64_t n) {
  LC_GRID_STRIDE(i, n) y[i] = D(static_cast<float>(x[i]));
}

// ---------------------------------------------------------------- launch helpers

AttnDims attn_dims(const Tensor& q, const Tensor& v, bool bthd) {
  AttnDims a;
  const int hd = bthd ? 2 : 1, td = bthd ? 1 : 2;
  a.bthd = bthd;
  a.B = q.shape[0];
  a.Hq = q.shape[hd];
  a.T = q.shape[td];
  a.Dh = q.shape[3];
  a.Hkv = v.shape[hd];
  a.S = v.shape[td];
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

// fn(std::integral_constant<int, DP>) with DP the padded head dim of the tensor-core kernels.
template <typename Fn>
void with_dp(int64_t d, Fn&& fn) {
  if (d <= 64) fn(std::integral_constant<int, 64>{});
  else fn(std::integral_constant<int, 128>{});
}
// The tensor-core kernels take equal q/v head dims up to 128.
bool tc_fits(const AttnDims& a) { return a.Dh == a.Dv && a.Dh >= 1 && a.Dh <= 128; }
// ... on a device with the fragments of the type: bf16 needs compute capability 8.0 (on a
// 7.5 card bf16 attention takes the float path).
bool tc_runs(const Context& c, const AttnDims& a, DType t) {
  return tc_fits(a) && (t != DType::BF16 || c.capability >= 80);
}

// float32 on TF32 tensor cores: when the user allows TF32 (as PyTorch's allow_tf32 lets float32
// products use them), on compute capability 8.0+, for head dims the kernels take, and where the
// float32 tiles fit the device's opt-in shared memory (227 KB on 9.0 / 10.0 take all; 163 KB on
// 8.0 not the backward at DP 128; 99 KB on 8.6 / 8.9 / 12.0 only the forward at DP 64):
// otherwise the exact float path.
bool tf32_runs(const Context& c, const AttnDims& a, bool backward) {
  if (!allow_tf32() || c.capability < 80 || !tc_fits(a)) return false;
  size_t bytes = 0;
  with_dp(a.Dh, [&](auto d) {
    constexpr int DP = decltype(d)::value;
    bytes = backward ? tc_backward_smem<Tf32, DP>() : tc_forward_smem<Tf32, DP>();
  });
  return bytes <= static_cast<size_t>(c.smem_optin);
}

// Kernels whose shared memory passes the default 48 KB need the opt-in (per device, cheap).
template <typename K>
void allow_smem(K* kernel, size_t bytes) {
  if (bytes > static_cast<size_t>(kSmemBytes))
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "cudaFuncSetAttribute");
}

template <typename Fn>
void dispatch_half(DType t, Fn&& fn) {
  if (t == DType::BF16) fn(bf16{});
  else fn(f16{});
}

template <typename S, typename D>
void convert(Context& c, const S* x, D* y, int64_t n, const char* op) {
  if (n == 0) return;
  attn_convert<S, D><<<row_grid(ceil_div(n, kThreads)), kThreads, 0, c.stream>>>(x, y, n);
  launched(c, op);
}

// The float / double path (tiled, or plain for wide heads).
template <typename T>
void forward_float(Context& c, const T* q, const T* k, const T* v, T* out, T* lse,
                   const AttnDims& a, bool causal, double scale, const int32_t* pst,
                   const char* op) {
  const int64_t rows = a.B * a.Hq * a.T;
  const T s = static_cast<T>(scale);
  const Tiles t = plan_tiles(a, a.Dh, odd_stride(a.Dh) + a.Dv, sizeof(T));
  if (t.br) {
    const unsigned grid = row_grid(a.B * a.Hq * ceil_div(a.T, t.br));
    with_nv(std::max(a.Dh, a.Dv), [&](auto nv) {
      attn_forward_tiled<T, decltype(nv)::value><<<grid, 32 * t.br, t.bytes, c.stream>>>(
          q, k, v, out, lse, a, causal, s, t.bc, pst);
      launched(c, op);
    });
  } else {
    attn_forward_plain<T><<<plain_grid(rows), kPlainThreads, 0, c.stream>>>(q, k, v, out, lse, a,
                                                                            causal, s, pst);
    launched(c, op);
  }
}

template <typename T>
void backward_float(Context& c, const T* dout, const T* q, const T* k, const T* v, const T* lse,
                    T* pdq, T* pdk, T* pdv, const AttnDims& a, bool causal, double scale,
                    const int32_t* pst, const char* op) {
  const int64_t rows = a.B * a.Hq * a.T, keys = a.B * a.Hkv * a.S;
  const T s = static_cast<T>(scale);
  // D_i = sum_j P_ij dP_ij feeds dq and dk; the key kernel reads it back.
  Tensor Dt;
  if ((pdq || pdk) && rows > 0) {
    Dt = scratch(c, {rows}, std::is_same<T, float>::value ? DType::F32 : DType::F64);
    const Tiles t = plan_tiles(a, a.Dh + a.Dv, odd_stride(a.Dh) + odd_stride(a.Dv), sizeof(T));
    if (t.br) {
      const unsigned grid = row_grid(a.B * a.Hq * ceil_div(a.T, t.br));
      with_nv(a.Dh, [&](auto nv) {
        attn_backward_q_tiled<T, decltype(nv)::value><<<grid, 32 * t.br, t.bytes, c.stream>>>(
            q, k, v, dout, lse, dp<T>(Dt), pdq, a, causal, s, t.bc, pst);
        launched(c, op);
      });
    } else {
      attn_backward_q_plain<T><<<plain_grid(rows), kPlainThreads, 0, c.stream>>>(
          q, k, v, dout, lse, dp<T>(Dt), pdq, a, causal, s, pst);
      launched(c, op);
    }
  }
  if ((pdk || pdv) && keys > 0) {
    // Read only for dk and only where there are query rows (then Dt exists).
    const T* pD = pdk && rows > 0 ? dp<T>(Dt) : nullptr;
    const Tiles t =
        plan_tiles(a, a.Dh + a.Dv, odd_stride(a.Dh) + odd_stride(a.Dv) + 3, sizeof(T));
    if (t.br) {
      const unsigned grid = row_grid(a.B * a.Hkv * ceil_div(a.S, t.br));
      with_nv(std::max(a.Dh, a.Dv), [&](auto nv) {
        attn_backward_kv_tiled<T, decltype(nv)::value><<<grid, 32 * t.br, t.bytes, c.stream>>>(
            q, k, v, dout, lse, pD, pdk, pdv, a, causal, s, t.bc, pst);
        launched(c, op);
      });
    } else {
      attn_backward_kv_plain<T><<<plain_grid(keys), kPlainThreads, 0, c.stream>>>(
          q, k, v, dout, lse, pD, pdk, pdv, a, causal, s, pst);
      launched(c, op);
    }
  }
}

// The tensor-core forward (TS: bf16, f16, or float on TF32).
template <typename TS>
void forward_tc(Context& c, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& out,
                const Tensor& lse, const AttnDims& a, bool causal, double scale,
                const int32_t* pst, const char* op) {
  using TW = typename WmmaOf<TS>::type;
  with_dp(a.Dh, [&](auto d) {
    constexpr int DP = decltype(d)::value;
    constexpr size_t bytes = tc_forward_smem<TW, DP>();
    allow_smem(attn_forward_tc<TS, TW, DP>, bytes);
    const unsigned grid = static_cast<unsigned>(a.B * a.Hq * ceil_div(a.T, kTcTile));
    attn_forward_tc<TS, TW, DP><<<grid, kTcThreads, bytes, c.stream>>>(
        dp<TS>(q), dp<TS>(k), dp<TS>(v), dp<TS>(out), dp<float>(lse), a, causal,
        static_cast<float>(scale), pst);
    launched(c, op);
  });
}

// The tensor-core backward: D_i, the key-block kernel (dq in fp32 atomics), dq rounded once.
template <typename TS>
void backward_tc(Context& c, const Tensor& dout, const Tensor& q, const Tensor& k,
                 const Tensor& v, const Tensor& out, const Tensor& lse, const AttnDims& a,
                 bool causal, double scale, const Tensor* dq, const Tensor* dk, const Tensor* dv,
                 const int32_t* pst, const char* op) {
  using TW = typename WmmaOf<TS>::type;
  const int64_t rows = a.B * a.Hq * a.T, keys = a.B * a.Hkv * a.S;
  if (!dq && !dk && !dv) return;
  Tensor Dt = scratch(c, {rows}, DType::F32);
  attn_backward_dot_tc<TS><<<plain_grid(rows), kPlainThreads, 0, c.stream>>>(
      dp<TS>(dout), dp<TS>(out), dp<float>(Dt), a);
  launched(c, op);
  Tensor dqacc;
  if (dq) {
    dqacc = scratch(c, {rows * a.Dh}, DType::F32);
    check(cudaMemsetAsync(dqacc.raw(), 0, static_cast<size_t>(rows * a.Dh) * sizeof(float),
                          c.stream),
          "cudaMemsetAsync");
  }
  if (keys > 0) {
    with_dp(a.Dh, [&](auto d) {
      constexpr int DP = decltype(d)::value;
      constexpr size_t bytes = tc_backward_smem<TW, DP>();
      allow_smem(attn_backward_tc<TS, TW, DP>, bytes);
      const unsigned grid = static_cast<unsigned>(a.B * a.Hkv * ceil_div(a.S, kTcTile));
      attn_backward_tc<TS, TW, DP><<<grid, kTcThreads, bytes, c.stream>>>(
          dp<TS>(q), dp<TS>(k), dp<TS>(v), dp<TS>(dout), dp<float>(lse), dp<float>(Dt),
          dq ? dp<float>(dqacc) : nullptr, dk ? dp<TS>(*dk) : nullptr,
          dv ? dp<TS>(*dv) : nullptr, a, causal, static_cast<float>(scale), pst);
      launched(c, op);
    });
  }
  if (dq) {
    attn_dq_store_tc<TS><<<row_grid(ceil_div(rows * a.Dh, kThreads)), kThreads, 0, c.stream>>>(
        dp<float>(dqacc), dp<TS>(*dq), a);
    launched(c, op);
  }
}

// A float32 copy of a 16-bit tensor (the float path for head dims the tensor-core kernels do
// not take).
template <typename TS>
Tensor widen(Context& c, const Tensor& x, const char* op) {
  Tensor f = scratch(c, x.shape, DType::F32);
  convert(c, dp<TS>(x), dp<float>(f), x.numel(), op);
  return f;
}

}  // namespace

// ================================================================ methods

void CudaBackend::attention_forward(const Tensor& q, const Tensor& k, const Tensor& v, bool causal,
                                    double scale, const Tensor& out, const Tensor& lse,
                                    const Tensor* starts, bool bthd) {
  Guard g(c_);
  const int32_t* pst = starts ? dp<int32_t>(*starts) : nullptr;
  const AttnDims a = attn_dims(q, v, bthd);
  const int64_t rows = a.B * a.Hq * a.T;
  if (rows == 0) return;
  const char* op = "attention";
  if (is_half(q.dtype)) {
    dispatch_half(q.dtype, [&](auto z) {
      using TS = decltype(z);
      if (!tc_runs(c_, a, q.dtype)) {
        Tensor qf = widen<TS>(c_, q, op), kf = widen<TS>(c_, k, op), vf = widen<TS>(c_, v, op);
        Tensor of = scratch(c_, out.shape, DType::F32);
        forward_float<float>(c_, dp<float>(qf), dp<float>(kf), dp<float>(vf), dp<float>(of),
                             dp<float>(lse), a, causal, scale, pst, op);
        convert(c_, dp<float>(of), dp<TS>(out), out.numel(), op);
        return;
      }
      forward_tc<TS>(c_, q, k, v, out, lse, a, causal, scale, pst, op);
    });
    return;
  }
  if (q.dtype == DType::F32 && tf32_runs(c_, a, false)) {
    forward_tc<float>(c_, q, k, v, out, lse, a, causal, scale, pst, op);
    return;
  }
  dispatch_float(q.dtype, op, [&](auto z) {
    using T = decltype(z);
    forward_float<T>(c_, dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(out), dp<T>(lse), a, causal, scale,
                     pst, op);
  });
}

void CudaBackend::attention_backward(const Tensor& dout, const Tensor& q, const Tensor& k,
                                     const Tensor& v, const Tensor& out, const Tensor& lse,
                                     bool causal, double scale, const Tensor* dq, const Tensor* dk,
                                     const Tensor* dv, const Tensor* starts, bool bthd) {
  Guard g(c_);
  const int32_t* pst = starts ? dp<int32_t>(*starts) : nullptr;
  const AttnDims a = attn_dims(q, v, bthd);
  // Empty gradients need no work (and may have no memory).
  const bool want_dq = dq && dq->numel() > 0;
  const bool want_dk = dk && dk->numel() > 0;
  const bool want_dv = dv && dv->numel() > 0;
  const char* op = "attention backward";
  if (is_half(q.dtype)) {
    dispatch_half(q.dtype, [&](auto z) {
      using TS = decltype(z);
      if (!tc_runs(c_, a, q.dtype)) {
        Tensor gf = widen<TS>(c_, dout, op), qf = widen<TS>(c_, q, op), kf = widen<TS>(c_, k, op),
               vf = widen<TS>(c_, v, op);
        Tensor dqf = want_dq ? scratch(c_, q.shape, DType::F32) : Tensor();
        Tensor dkf = want_dk ? scratch(c_, k.shape, DType::F32) : Tensor();
        Tensor dvf = want_dv ? scratch(c_, v.shape, DType::F32) : Tensor();
        backward_float<float>(c_, dp<float>(gf), dp<float>(qf), dp<float>(kf), dp<float>(vf),
                              dp<float>(lse), want_dq ? dp<float>(dqf) : nullptr,
                              want_dk ? dp<float>(dkf) : nullptr,
                              want_dv ? dp<float>(dvf) : nullptr, a, causal, scale, pst, op);
        if (want_dq) convert(c_, dp<float>(dqf), dp<TS>(*dq), dq->numel(), op);
        if (want_dk) convert(c_, dp<float>(dkf), dp<TS>(*dk), dk->numel(), op);
        if (want_dv) convert(c_, dp<float>(dvf), dp<TS>(*dv), dv->numel(), op);
        return;
      }
      backward_tc<TS>(c_, dout, q, k, v, out, lse, a, causal, scale, want_dq ? dq : nullptr,
                      want_dk ? dk : nullptr, want_dv ? dv : nullptr, pst, op);
    });
    return;
  }
  if (q.dtype == DType::F32 && tf32_runs(c_, a, true)) {
    backward_tc<float>(c_, dout, q, k, v, out, lse, a, causal, scale, want_dq ? dq : nullptr,
                       want_dk ? dk : nullptr, want_dv ? dv : nullptr, pst, op);
    return;
  }
  dispatch_float(q.dtype, op, [&](auto z) {
    using T = decltype(z);
    backward_float<T>(c_, dp<T>(dout), dp<T>(q), dp<T>(k), dp<T>(v), dp<T>(lse),
                      want_dq ? dp<T>(*dq) : nullptr, want_dk ? dp<T>(*dk) : nullptr,
                      want_dv ? dp<T>(*dv) : nullptr, a, causal, scale, pst, op);
  });
}

}  // namespace lc::cuda
