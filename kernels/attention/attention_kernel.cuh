// CUDA kernels of the varlen attention forward and backward (flash-style:
// scores never leave the chip; softmax online in fp32).
//
// Work items are tiles of one sequence, listed by a device-side schedule
// (attention.cu): tile_starts[b] is the first tile of sequence b, so a block
// finds its sequence by a binary search over B + 1 entries, and the grid is
// sized from ceil(total / tile_rows) + B, a bound the host knows without
// reading cu_seqlens. No block lands on padding; a sequence of length L gets
// ceil(L / tile_rows) tiles. Within a sequence, tiles are issued last-first,
// so the longest causal rows start earliest.
//
// Thread layout (all kernels, kThreads = 128): thread t owns row t / kTpr of
// the tile's "own" rows (queries in the forward and dQ, keys in dK/dV) and,
// for the other side, every kTpr-th element starting at t % kTpr: keys
// (scores), and columns (head_dim) of its accumulators. The kTpr lanes of a
// row are adjacent lanes of one warp, so row reductions are xor-shuffles and
// the P / dS rows a thread reads back were written by its own warp.
//
//   forward     grid (q tiles, heads)     own rows: kThreads / kTpr queries;
//               loops over the 32-key tiles the mask leaves visible.
//   dQ          grid (q tiles, heads)     the same, accumulating dS K.
//   dK / dV     grid (k tiles, kv_heads)  own rows: kThreads / kTpr keys;
//               loops over the group's query heads and the 32-query tiles
//               that see the keys, accumulating P^T dO and dS^T Q.
// Each output element is summed by one thread in a fixed order: the
// backward is deterministic without atomics.
//
// Shared memory holds fp32 copies of the tiles, zero-filled past head_dim
// and past the sequence, rows padded by one float (odd strides keep the
// row-strided reads conflict-free). head_dim is predicated: kMaxD is the
// bucket (32, 64, 128, 256) the tiles are sized for.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention/attention_launch.h"
#include "kernels/attention/attention_params.h"
#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/types.h"

namespace spembed::detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

template <typename T>
__device__ __forceinline__ float attn_load(const T* p) {
  if constexpr (std::is_same_v<T, __half>) {
    return __half2float(*p);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __bfloat162float(*p);
  } else {
    return *p;
  }
}

template <typename T>
__device__ __forceinline__ void attn_store(T* p, float v) {
  if constexpr (std::is_same_v<T, __half>) {
    *p = __float2half_rn(v);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    *p = __float2bfloat16_rn(v);
  } else {
    *p = v;
  }
}

// Rows [r0, r0 + n) of head `head` of `t`, times `mul`, into smem rows of
// `ld` floats; rows n..kRows-1 and columns head_dim..kMaxD-1 become 0.
template <typename T, int kRows, int kMaxD>
__device__ __forceinline__ void load_tile(float* smem, int ld, const TokenTensor& t, int64_t r0,
                                          int n, int head, int head_dim, float mul) {
  const T* base = static_cast<const T*>(t.data);
  for (int e = threadIdx.x; e < kRows * kMaxD; e += kAttnThreads) {
    const int r = e / kMaxD;
    const int c = e % kMaxD;
    float x = 0.f;
    if (r < n && c < head_dim) x = mul * attn_load(base + t.offset(r0 + r, head) + c);
    smem[r * ld + c] = x;
  }
}

// The sequence of `tile` and the tile's index within it, from the schedule.
struct TileRef {
  int64_t b;
  int64_t index;  // within the sequence, last-first
};

__device__ __forceinline__ TileRef find_tile(const int32_t* starts, int64_t batch, int64_t tile) {
  // Largest b with starts[b] <= tile (empty sequences share starts with the
  // next one; the search lands on the last of them, which is non-empty).
  int64_t lo = 0, hi = batch;  // starts[lo] <= tile < starts[hi]
  while (hi - lo > 1) {
    const int64_t mid = (lo + hi) / 2;
    if (starts[mid] <= tile) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t count = starts[lo + 1] - starts[lo];
  return {lo, count - 1 - (tile - starts[lo])};
}

template <int kTpr>
__device__ __forceinline__ float row_max(float x) {
#pragma unroll
  for (int off = kTpr / 2; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, off));
  return x;
}

template <int kTpr>
__device__ __forceinline__ float row_sum(float x) {
#pragma unroll
  for (int off = kTpr / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xffffffffu, x, off);
  return x;
}

__device__ __forceinline__ bool attention_checks_failed(const AttentionLaunch& l) {
  return l.record->first_bad_position != kNoPosition;
}

struct SeqBounds {
  int64_t q0, lq, k0, lk;
};

__device__ __forceinline__ SeqBounds seq_bounds(const AttentionParams& p, int64_t b) {
  SeqBounds s;
  s.q0 = p.cu_seqlens_q[b];
  s.lq = p.cu_seqlens_q[b + 1] - s.q0;
  s.k0 = p.cu_seqlens_k[b];
  s.lk = p.cu_seqlens_k[b + 1] - s.k0;
  return s;
}

// Row `token` of head `head` of an output tensor, as T.
template <typename T>
__device__ __forceinline__ T* output_row(const TokenTensor& t, int64_t token, int head) {
  return static_cast<T*>(const_cast<void*>(t.data)) + t.offset(token, head);
}

// Writes a thread's accumulator columns sub + kTpr * u (those below
// head_dim), times `mul`, into `out`.
template <int kTpr, int kCols, typename T>
__device__ __forceinline__ void store_columns(T* out, const float (&acc)[kCols], int sub,
                                              int head_dim, float mul) {
#pragma unroll
  for (int u = 0; u < kCols; ++u) {
    const int c = sub + kTpr * u;
    if (c < head_dim) attn_store(out + c, mul * acc[u]);
  }
}

// The backward's two dot products of a thread's own row against the other
// side's rows sub + kTpr * r (r < kN), all rows `kLd` floats apart:
// s[r] = q . k (scores) and dp[r] = dO . v. The own row of Q / dO (dQ) or of
// K / V (dK / dV) is passed as own_a / own_b, the other side's tiles as
// other_a / other_b, in the same order.
template <int kN, int kTpr, int kLd>
__device__ __forceinline__ void backward_dots(const float* own_a, const float* own_b,
                                              const float* other_a, const float* other_b, int sub,
                                              int head_dim, float (&s)[kN], float (&dp)[kN]) {
#pragma unroll
  for (int r = 0; r < kN; ++r) s[r] = dp[r] = 0.f;
  for (int c = 0; c < head_dim; ++c) {
    const float ac = own_a[c];
    const float bc = own_b[c];
#pragma unroll
    for (int r = 0; r < kN; ++r) {
      const int off = (sub + kTpr * r) * kLd + c;
      s[r] = fmaf(ac, other_a[off], s[r]);
      dp[r] = fmaf(bc, other_b[off], dp[r]);
    }
  }
}

// ---- forward ----------------------------------------------------------------

template <int kMaxD, int kTpr>
struct ForwardSmem {
  static constexpr int kRows = attention_rows(kTpr);
  static constexpr int kLdQK = kMaxD + 1;
  static constexpr int kLdP = kAttnKeyTile + 1;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kRows * kLdQK;
  static constexpr int kV = kK + kAttnKeyTile * kLdQK;
  static constexpr int kP = kV + kAttnKeyTile * kMaxD;
  static constexpr int kFloats = kP + kRows * kLdP;
  static constexpr size_t kBytes = kFloats * sizeof(float);
};

template <typename T, int kMaxD, int kTpr>
__global__ void __launch_bounds__(kAttnThreads, 1)
    attention_forward_kernel(const __grid_constant__ AttentionParams p, AttentionLaunch l) {
  using S = ForwardSmem<kMaxD, kTpr>;
  constexpr int kRows = S::kRows;
  constexpr int kKeys = kAttnKeyTile / kTpr;  // scores per thread per key tile
  constexpr int kCols = kMaxD / kTpr;         // output columns per thread
  float* const smem = dynamic_shared_memory<float>();
  float* qs = smem + S::kQ;
  float* ks = smem + S::kK;
  float* vs = smem + S::kV;
  float* ps = smem + S::kP;

  if (attention_checks_failed(l)) return;
  const int64_t n_tiles = l.tile_starts[p.batch];
  const int row = threadIdx.x / kTpr;
  const int sub = threadIdx.x % kTpr;
  const int h = blockIdx.y;
  const int kh = h / p.group();
  const int d = p.head_dim;

  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const TileRef ref = find_tile(l.tile_starts, p.batch, tile);
    const SeqBounds sq = seq_bounds(p, ref.b);
    const int64_t i0 = ref.index * kRows;
    const int nq = static_cast<int>(min64(kRows, sq.lq - i0));
    const int64_t i = i0 + row;  // this thread's query (valid when row < nq)
    const Range keys = visible_keys(p.band, sq.lq, sq.lk, i0, i0 + nq);

    __syncthreads();  // the previous tile's readers of qs are done
    // Q pre-scaled so that scores come out in log2 units.
    load_tile<T, kRows, kMaxD>(qs, S::kLdQK, p.q, sq.q0 + i0, nq, h, d, p.scale * kLog2e);

    float m = -INFINITY;  // running max (log2 units)
    float lsum = 0.f;     // running sum of exp2(s - m), this thread's share
    float o[kCols];
#pragma unroll
    for (int u = 0; u < kCols; ++u) o[u] = 0.f;

    for (int64_t kt = keys.begin; kt < keys.end; kt += kAttnKeyTile) {
      const int nk = static_cast<int>(min64(kAttnKeyTile, keys.end - kt));
      __syncthreads();  // previous key tile fully consumed
      load_tile<T, kAttnKeyTile, kMaxD>(ks, S::kLdQK, p.k, sq.k0 + kt, nk, kh, d, 1.f);
      load_tile<T, kAttnKeyTile, kMaxD>(vs, kMaxD, p.v, sq.k0 + kt, nk, kh, d, 1.f);
      __syncthreads();

      float s[kKeys];
#pragma unroll
      for (int r = 0; r < kKeys; ++r) s[r] = 0.f;
      const float* qrow = qs + row * S::kLdQK;
      for (int c = 0; c < d; ++c) {
        const float qc = qrow[c];
#pragma unroll
        for (int r = 0; r < kKeys; ++r) s[r] = fmaf(qc, ks[(sub + kTpr * r) * S::kLdQK + c], s[r]);
      }
      float tile_max = -INFINITY;
#pragma unroll
      for (int r = 0; r < kKeys; ++r) {
        const int jj = sub + kTpr * r;
        if (row >= nq || jj >= nk || !key_visible(p.band, sq.lq, sq.lk, i, kt + jj)) {
          s[r] = -INFINITY;
        }
        tile_max = fmaxf(tile_max, s[r]);
      }
      const float m_new = fmaxf(m, row_max<kTpr>(tile_max));
      // A row that has seen nothing yet keeps m = -inf; subtract 0 instead so
      // that exp2 gives 0, not NaN.
      const float m_use = m_new == -INFINITY ? 0.f : m_new;
      const float alpha = exp2f(m - m_use);
      float psum = 0.f;
#pragma unroll
      for (int r = 0; r < kKeys; ++r) {
        const float pr = exp2f(s[r] - m_use);
        psum += pr;
        ps[row * S::kLdP + sub + kTpr * r] = pr;
      }
      lsum = lsum * alpha + psum;
      m = m_new;
#pragma unroll
      for (int u = 0; u < kCols; ++u) o[u] *= alpha;
      __syncwarp();  // this row's P, written by its kTpr lanes of this warp
      const float* prow = ps + row * S::kLdP;
      for (int jj = 0; jj < nk; ++jj) {
        const float pj = prow[jj];
        const float* vrow = vs + jj * kMaxD + sub;
#pragma unroll
        for (int u = 0; u < kCols; ++u) o[u] = fmaf(pj, vrow[kTpr * u], o[u]);
      }
    }

    const float l_row = row_sum<kTpr>(lsum);
    if (row < nq) {
      const float inv = l_row > 0.f ? 1.f / l_row : 0.f;
      store_columns<kTpr>(output_row<T>(p.out, sq.q0 + i, h), o, sub, d, inv);
      if (p.lse != nullptr && sub == 0) {
        p.lse[h * p.total_q + sq.q0 + i] = l_row > 0.f ? (m + log2f(l_row)) * kLn2 : -INFINITY;
      }
    }
  }
}

template <typename Kernel>
int set_smem(Kernel kernel, size_t bytes) {
  return static_cast<int>(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(bytes)));
}

// Launches a tile kernel with `bytes` of dynamic shared memory on the grid
// (l.grid_tiles, heads) of kAttnThreads-thread blocks.
template <typename Kernel>
int launch_tile_kernel(Kernel kernel, size_t bytes, const AttentionParams& p,
                       const AttentionLaunch& l, int heads, cudaStream_t stream) {
  if (const int error = set_smem(kernel, bytes)) return error;
  const dim3 grid(static_cast<unsigned>(l.grid_tiles), static_cast<unsigned>(heads));
  launch_kernel(kernel, grid, kAttnThreads, bytes, stream, p, l);
  return launch_status(stream);
}

template <typename T, int kMaxD, int kTpr>
int launch_attention_forward_kernel(const AttentionParams& p, const AttentionLaunch& l,
                                    cudaStream_t stream) {
  return launch_tile_kernel(attention_forward_kernel<T, kMaxD, kTpr>,
                            ForwardSmem<kMaxD, kTpr>::kBytes, p, l, p.heads, stream);
}

// ---- backward ---------------------------------------------------------------

// rowsum(dO * O) per query token and head, fp32: one warp per (token, head).
template <typename T>
__global__ void __launch_bounds__(kAttnThreads, 1)
    attention_rowsum_kernel(const __grid_constant__ AttentionParams p, float* rowsum) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kAttnThreads / 32);
  const int64_t items = p.total_q * p.heads;
  for (int64_t w = blockIdx.x * int64_t{kAttnThreads / 32} + threadIdx.x / 32; w < items;
       w += warps) {
    const int64_t t = w / p.heads;
    const int h = static_cast<int>(w % p.heads);
    const T* dout = static_cast<const T*>(p.dout.data) + p.dout.offset(t, h);
    const T* out = static_cast<const T*>(p.out.data) + p.out.offset(t, h);
    float acc = 0.f;
    for (int c = lane; c < p.head_dim; c += 32)
      acc = fmaf(attn_load(dout + c), attn_load(out + c), acc);
    acc = row_sum<32>(acc);
    if (lane == 0) rowsum[h * p.total_q + t] = acc;
  }
}

template <int kMaxD>
struct DqSmem {
  static constexpr int kTpr = attention_backward_tpr(kMaxD);
  static constexpr int kRows = attention_rows(kTpr);
  static constexpr int kLd = kMaxD + 1;
  static constexpr int kLdS = kAttnKeyTile + 1;
  static constexpr int kQ = 0;
  static constexpr int kDo = kQ + kRows * kLd;
  static constexpr int kK = kDo + kRows * kLd;
  static constexpr int kV = kK + kAttnKeyTile * kLd;
  static constexpr int kDs = kV + kAttnKeyTile * kLd;
  static constexpr int kFloats = kDs + kRows * kLdS;
  static constexpr size_t kBytes = kFloats * sizeof(float);
};

template <typename T, int kMaxD>
__global__ void __launch_bounds__(kAttnThreads, 1)
    attention_dq_kernel(const __grid_constant__ AttentionParams p, AttentionLaunch l) {
  using S = DqSmem<kMaxD>;
  constexpr int kTpr = S::kTpr;
  constexpr int kRows = S::kRows;
  constexpr int kKeys = kAttnKeyTile / kTpr;
  constexpr int kCols = kMaxD / kTpr;
  float* const smem = dynamic_shared_memory<float>();
  float* qs = smem + S::kQ;
  float* dos = smem + S::kDo;
  float* ks = smem + S::kK;
  float* vs = smem + S::kV;
  float* dss = smem + S::kDs;

  if (attention_checks_failed(l)) return;
  const int64_t n_tiles = l.tile_starts[p.batch];
  const int row = threadIdx.x / kTpr;
  const int sub = threadIdx.x % kTpr;
  const int h = blockIdx.y;
  const int kh = h / p.group();
  const int d = p.head_dim;
  const float scale_log2 = p.scale * kLog2e;

  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const TileRef ref = find_tile(l.tile_starts, p.batch, tile);
    const SeqBounds sq = seq_bounds(p, ref.b);
    const int64_t i0 = ref.index * kRows;
    const int nq = static_cast<int>(min64(kRows, sq.lq - i0));
    const int64_t i = i0 + row;
    const Range keys = visible_keys(p.band, sq.lq, sq.lk, i0, i0 + nq);

    __syncthreads();
    load_tile<T, kRows, kMaxD>(qs, S::kLd, p.q, sq.q0 + i0, nq, h, d, 1.f);
    load_tile<T, kRows, kMaxD>(dos, S::kLd, p.dout, sq.q0 + i0, nq, h, d, 1.f);
    // A row that saw no key has lse = -inf: its P is 0 (flagged by lse2 = NaN-free -inf).
    float lse2 = -INFINITY, dsum = 0.f;
    if (row < nq) {
      lse2 = p.lse[h * p.total_q + sq.q0 + i] * kLog2e;
      dsum = l.rowsum[h * p.total_q + sq.q0 + i];
    }
    float acc[kCols];
#pragma unroll
    for (int u = 0; u < kCols; ++u) acc[u] = 0.f;

    for (int64_t kt = keys.begin; kt < keys.end; kt += kAttnKeyTile) {
      const int nk = static_cast<int>(min64(kAttnKeyTile, keys.end - kt));
      __syncthreads();
      load_tile<T, kAttnKeyTile, kMaxD>(ks, S::kLd, p.k, sq.k0 + kt, nk, kh, d, 1.f);
      load_tile<T, kAttnKeyTile, kMaxD>(vs, S::kLd, p.v, sq.k0 + kt, nk, kh, d, 1.f);
      __syncthreads();

      float s[kKeys], dp[kKeys];
      backward_dots<kKeys, kTpr, S::kLd>(qs + row * S::kLd, dos + row * S::kLd, ks, vs, sub, d, s,
                                         dp);
#pragma unroll
      for (int r = 0; r < kKeys; ++r) {
        const int jj = sub + kTpr * r;
        const bool seen = row < nq && jj < nk && lse2 != -INFINITY &&
                          key_visible(p.band, sq.lq, sq.lk, i, kt + jj);
        // s * scale_log2 - lse2 with one rounding (written as fmaf: without
        // it nvcc contracts and g++ does not, and the two differ).
        const float pr = seen ? exp2f(fmaf(s[r], scale_log2, -lse2)) : 0.f;
        dss[row * S::kLdS + jj] = pr * (dp[r] - dsum);
      }
      __syncwarp();
      const float* dsrow = dss + row * S::kLdS;
      for (int jj = 0; jj < nk; ++jj) {
        const float g = dsrow[jj];
        const float* krow = ks + jj * S::kLd + sub;
#pragma unroll
        for (int u = 0; u < kCols; ++u) acc[u] = fmaf(g, krow[kTpr * u], acc[u]);
      }
    }

    if (row < nq) {
      store_columns<kTpr>(output_row<T>(p.dq, sq.q0 + i, h), acc, sub, d, p.scale);
    }
  }
}

template <int kMaxD>
struct DkvSmem {
  static constexpr int kTpr = attention_backward_tpr(kMaxD);
  static constexpr int kKeyRows = attention_rows(kTpr);
  static constexpr int kLd = kMaxD + 1;
  static constexpr int kLdP = kKeyRows + 1;
  static constexpr int kK = 0;
  static constexpr int kV = kK + kKeyRows * kLd;
  static constexpr int kQ = kV + kKeyRows * kLd;
  static constexpr int kDo = kQ + kAttnKeyTile * kLd;
  static constexpr int kP = kDo + kAttnKeyTile * kLd;
  static constexpr int kDs = kP + kAttnKeyTile * kLdP;
  static constexpr int kLse = kDs + kAttnKeyTile * kLdP;
  static constexpr int kDsum = kLse + kAttnKeyTile;
  static constexpr int kFloats = kDsum + kAttnKeyTile;
  static constexpr size_t kBytes = kFloats * sizeof(float);
};

template <typename T, int kMaxD>
__global__ void __launch_bounds__(kAttnThreads, 1)
    attention_dkv_kernel(const __grid_constant__ AttentionParams p, AttentionLaunch l) {
  using S = DkvSmem<kMaxD>;
  constexpr int kTpr = S::kTpr;
  constexpr int kKeyRows = S::kKeyRows;
  constexpr int kQueries = kAttnKeyTile / kTpr;  // scores per thread per query tile
  constexpr int kCols = kMaxD / kTpr;
  float* const smem = dynamic_shared_memory<float>();
  float* ks = smem + S::kK;
  float* vs = smem + S::kV;
  float* qs = smem + S::kQ;
  float* dos = smem + S::kDo;
  float* ps = smem + S::kP;
  float* dss = smem + S::kDs;
  float* lse2s = smem + S::kLse;
  float* dsums = smem + S::kDsum;

  if (attention_checks_failed(l)) return;
  const int64_t n_tiles = l.tile_starts[p.batch];
  const int row = threadIdx.x / kTpr;  // this thread's key within the tile
  const int sub = threadIdx.x % kTpr;
  const int kh = blockIdx.y;
  const int group = p.group();
  const int d = p.head_dim;
  const float scale_log2 = p.scale * kLog2e;

  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const TileRef ref = find_tile(l.tile_starts, p.batch, tile);
    const SeqBounds sq = seq_bounds(p, ref.b);
    const int64_t j0 = ref.index * kKeyRows;
    const int nk = static_cast<int>(min64(kKeyRows, sq.lk - j0));
    const int64_t j = j0 + row;
    const Range queries = visible_queries(p.band, sq.lq, sq.lk, j0, j0 + nk);

    __syncthreads();
    load_tile<T, kKeyRows, kMaxD>(ks, S::kLd, p.k, sq.k0 + j0, nk, kh, d, 1.f);
    load_tile<T, kKeyRows, kMaxD>(vs, S::kLd, p.v, sq.k0 + j0, nk, kh, d, 1.f);
    float dk[kCols], dv[kCols];
#pragma unroll
    for (int u = 0; u < kCols; ++u) dk[u] = dv[u] = 0.f;

    for (int h = kh * group; h < (kh + 1) * group; ++h) {
      for (int64_t it = queries.begin; it < queries.end; it += kAttnKeyTile) {
        const int nq = static_cast<int>(min64(kAttnKeyTile, queries.end - it));
        __syncthreads();
        load_tile<T, kAttnKeyTile, kMaxD>(qs, S::kLd, p.q, sq.q0 + it, nq, h, d, 1.f);
        load_tile<T, kAttnKeyTile, kMaxD>(dos, S::kLd, p.dout, sq.q0 + it, nq, h, d, 1.f);
        if (threadIdx.x < kAttnKeyTile) {
          const int r = threadIdx.x;
          const int64_t t = h * p.total_q + sq.q0 + it + r;
          lse2s[r] = r < nq ? p.lse[t] * kLog2e : -INFINITY;
          dsums[r] = r < nq ? l.rowsum[t] : 0.f;
        }
        __syncthreads();

        float s[kQueries], dp[kQueries];
        backward_dots<kQueries, kTpr, S::kLd>(ks + row * S::kLd, vs + row * S::kLd, qs, dos, sub, d,
                                              s, dp);
#pragma unroll
        for (int r = 0; r < kQueries; ++r) {
          const int ii = sub + kTpr * r;
          const float lse2 = lse2s[ii];
          const bool seen = row < nk && ii < nq && lse2 != -INFINITY &&
                            key_visible(p.band, sq.lq, sq.lk, it + ii, j);
          const float pr = seen ? exp2f(fmaf(s[r], scale_log2, -lse2)) : 0.f;
          ps[ii * S::kLdP + row] = pr;
          dss[ii * S::kLdP + row] = pr * (dp[r] - dsums[ii]);
        }
        __syncwarp();  // this key's P and dS column, written by its lanes of this warp
        for (int ii = 0; ii < nq; ++ii) {
          const float pr = ps[ii * S::kLdP + row];
          const float g = dss[ii * S::kLdP + row];
          const float* dorow = dos + ii * S::kLd + sub;
          const float* qrow = qs + ii * S::kLd + sub;
#pragma unroll
          for (int u = 0; u < kCols; ++u) {
            dv[u] = fmaf(pr, dorow[kTpr * u], dv[u]);
            dk[u] = fmaf(g, qrow[kTpr * u], dk[u]);
          }
        }
      }
    }

    if (row < nk) {
      store_columns<kTpr>(output_row<T>(p.dk, sq.k0 + j, kh), dk, sub, d, p.scale);
      store_columns<kTpr>(output_row<T>(p.dv, sq.k0 + j, kh), dv, sub, d, 1.f);
    }
  }
}

// The rowsum preprocess D = rowsum(dO * O) into `rowsum` (both backwards).
template <typename T>
int launch_attention_rowsum(const AttentionParams& p, float* rowsum, cudaStream_t stream) {
  if (p.total_q <= 0) return 0;
  // Enough warps to cover the rows once up to a few waves; grid-stride beyond.
  constexpr int64_t kMaxRowsumBlocks = 65536;
  const int64_t warps = p.total_q * p.heads;
  const int64_t blocks =
      min64((warps + kAttnThreads / 32 - 1) / (kAttnThreads / 32), kMaxRowsumBlocks);
  launch_kernel(attention_rowsum_kernel<T>, static_cast<unsigned>(blocks), kAttnThreads, 0, stream,
                p, rowsum);
  return launch_status(stream);
}

// The rowsum preprocess, dQ and dK/dV; `q_launch` and `k_launch` carry the
// q-tile and k-tile schedules.
template <typename T, int kMaxD>
int launch_attention_backward_kernels(const AttentionParams& p, const AttentionLaunch& q_launch,
                                      const AttentionLaunch& k_launch, float* rowsum,
                                      cudaStream_t stream) {
  if (const int error = launch_attention_rowsum<T>(p, rowsum, stream)) return error;
  if (q_launch.grid_tiles > 0) {
    if (const int error = launch_tile_kernel(attention_dq_kernel<T, kMaxD>, DqSmem<kMaxD>::kBytes,
                                             p, q_launch, p.heads, stream)) {
      return error;
    }
  }
  if (k_launch.grid_tiles > 0) {
    if (const int error = launch_tile_kernel(attention_dkv_kernel<T, kMaxD>, DkvSmem<kMaxD>::kBytes,
                                             p, k_launch, p.kv_heads, stream)) {
      return error;
    }
  }
  return 0;
}

// head_dim bucket -> kMaxD.
#define SPEMBED_HEAD_DIM_SWITCH(D, NAME, ...) \
  [&] {                                       \
    if ((D) <= 32) {                          \
      static constexpr int NAME = 32;         \
      return __VA_ARGS__();                   \
    } else if ((D) <= 64) {                   \
      static constexpr int NAME = 64;         \
      return __VA_ARGS__();                   \
    } else if ((D) <= 128) {                  \
      static constexpr int NAME = 128;        \
      return __VA_ARGS__();                   \
    } else {                                  \
      static constexpr int NAME = 256;        \
      return __VA_ARGS__();                   \
    }                                         \
  }()

// Per-dtype entry points, instantiated in attention_{f32,f16,bf16}.cu.
// `forward_tpr` is 4 or 16 (lanes per query row of the forward).
template <typename T>
int launch_attention_forward(const AttentionParams& p, const AttentionLaunch& l, int forward_tpr,
                             cudaStream_t stream) {
  return SPEMBED_HEAD_DIM_SWITCH(p.head_dim, kMaxD, [&] {
    return forward_tpr == 16 ? launch_attention_forward_kernel<T, kMaxD, 16>(p, l, stream)
                             : launch_attention_forward_kernel<T, kMaxD, 4>(p, l, stream);
  });
}

template <typename T>
int launch_attention_backward(const AttentionParams& p, const AttentionLaunch& q_launch,
                              const AttentionLaunch& k_launch, float* rowsum, cudaStream_t stream) {
  return SPEMBED_HEAD_DIM_SWITCH(p.head_dim, kMaxD, [&] {
    return launch_attention_backward_kernels<T, kMaxD>(p, q_launch, k_launch, rowsum, stream);
  });
}

}  // namespace spembed::detail
