// Tensor-core backward of the varlen attention for fp16 / bf16 (flash-attention
// 2 style, deterministic: no atomics). attention.cu takes it under the same
// rule as the tensor-core forward (use_mma_backward there: head_dim a multiple
// of 8 up to 128, every row of q, k, v, out, dout, dq, dk, dv at a 16-byte
// boundary); otherwise the SIMT backward of attention_kernel.cuh runs. It
// reuses the PTX wrappers, the cp.async tile loader and the fragment
// conventions of attention_mma_kernel.cuh (read its header comment first).
//
// Kernels, in stream order:
//   rowsum  D = rowsum(dO * O) per (token, head) in fp32 into the workspace:
//           attention_kernel.cuh's attention_rowsum_kernel, unchanged.
//   dQ      grid (q tiles of 64, heads), 4 warps; warp w owns query rows
//           [16 w, 16 w + 16) of the tile and streams the keys its block can
//           see (visible_keys) in tiles of kN keys (64 at head_dim <= 64, 32
//           at 128) through two cp.async buffers of K and V. Per key tile:
//             S  = Q K^T          A = Q rows (ldmatrix), B = K (ldmatrix)
//             P  = exp2(S * scale * log2 e - lse * log2 e)   fp32
//             dP = dO V^T         A = dO rows (ldmatrix), B = V (ldmatrix)
//             dS = P (dP - D)     fp32, rounded to T as an A operand
//             dQ += dS K          A = dS (C -> A), B = K (ldmatrix.trans)
//           dQ * scale is rounded once to T at the end.
//   dK/dV   grid (k tiles of 64, kv heads), 4 warps; warp w owns keys
//           [16 w, 16 w + 16) of the tile (keys are the M dimension of every
//           product, so no transpose goes through shared memory). The block
//           loops over the group's query heads and, for each, over the query
//           tiles of kM queries (64 at head_dim <= 64, 16 at 128) that see its
//           keys (visible_queries), Q / dO / lse / D double-buffered. Per
//           query tile:
//             S^T  = K Q^T        A = K rows (ldmatrix), B = Q (ldmatrix)
//             P^T  = exp2(S^T * scale * log2 e - lse[col] * log2 e)
//             dV  += P^T dO       A = P^T (C -> A), B = dO (ldmatrix.trans)
//             dP^T = V dO^T       A = V rows (ldmatrix), B = dO (ldmatrix)
//             dS^T = P^T (dP^T - D[col])
//             dK  += dS^T Q       A = dS^T (C -> A), B = Q (ldmatrix.trans)
//           dK * scale and dV are rounded once to T at the end.
// Every gradient element is accumulated by one lane in a fixed order (tiles in
// schedule order, mma k-steps in order): bitwise reproducible.
//
// Operand layouts (m16n8k16, g = lane / 4, t = lane % 4; A / B / C fragments
// and ldmatrix register contents as in attention_mma_kernel.cuh). All tiles
// live row-major in shared memory, [rows][kLd = kD + 8] (odd multiple of 16
// bytes: conflict-free ldmatrix). Three lane address patterns cover every
// operand:
//   a_lane  (A, 16 rows x 16 k from a row-major [m][k] tile; the forward's Q):
//           lane l -> row w0 + l % 16, col 8 (l / 16) (+ 16 ks):
//           registers a0, a1, a2, a3.
//           Used for Q and dO (dQ kernel: M = queries, k = head dim) and for K
//           and V (dK/dV kernel: M = keys, k = head dim).
//   b_lane  (B[k][n] with the tile stored [n][k], i.e. B col-major; the
//           forward's K): lane l -> row 16 np + 8 (l / 16) + l % 8, col
//           8 ((l / 8) % 2) (+ 16 ks): b0, b1 of n-tile 2 np, then of 2 np + 1.
//           Used for K and V in the dQ kernel (B[k = dim][n = key] =
//           K[key][dim]) and for Q and dO in the dK/dV kernel (B[k = dim][n =
//           query] = Q[query][dim]).
//   bt_lane (B[k][n] with the tile stored [k][n], row-major, loaded with
//           .trans; the forward's V): lane l -> row 16 kk + 8 ((l / 8) % 2) +
//           l % 8, col 8 (l / 16) (+ 16 dp): b0, b1 of dim n-tile 2 dp, then
//           of 2 dp + 1.
//           Used for K in dQ += dS K (B[k = key][n = dim] = K[key][dim]) and
//           for dO and Q in dV += P^T dO, dK += dS^T Q (B[k = query][n = dim]).
//
// C -> A (P, dS, P^T, dS^T reused from the accumulators, never through shared
// memory), the forward's derivation with "keys" read as the k dimension of the
// next product: C n-tile j of a 16 x kN product holds columns 8 j .. 8 j + 7;
// a lane's c0, c1 are (row g, cols 8 j + 2t, 8 j + 2t + 1) and c2, c3 the same
// columns of row g + 8. The A operand of k-step kk covers columns 16 kk ..
// 16 kk + 15:
//   a0 = (row g,     k 2t, 2t+1)   = cols 16kk + 2t..     = C tile 2kk,   c0 c1
//   a1 = (row g + 8, k 2t, 2t+1)   = cols 16kk + 2t..     = C tile 2kk,   c2 c3
//   a2 = (row g,     k 2t+8, 2t+9) = cols 16kk + 8 + 2t.. = C tile 2kk+1, c0 c1
//   a3 = (row g + 8, k 2t+8, 2t+9) = cols 16kk + 8 + 2t.. = C tile 2kk+1, c2 c3
// In the dQ kernel the columns are keys (k of dS K); in the dK/dV kernel they
// are queries (k of P^T dO and dS^T Q): S^T = K Q^T computed with keys as
// rows *is* the transposed P, so no shuffle or shared-memory transpose exists.
//
// Per-column / per-row statistics. dQ: lane rows g, g + 8 keep lse2 = lse *
// log2 e and D in registers. dK/dV: the columns are queries, so lse2 and D of
// the query tile sit in shared memory (float [2 buffers][kM]) and a lane reads
// those of its columns 8 j + 2t + e. A query that is past the tile's end or
// has lse = -inf (it sees no key) gets lse2 = +inf: exp2(s - inf) = 0, so its
// P and dS are exactly 0 (the SIMT kernel's "lse = -inf: P = 0"); no NaN as s
// is finite.
//
// Masks. The band is applied per element only on tiles it cuts (the "whole"
// test below); elsewhere only the statistics above act. Query rows / key
// columns past the sequence: dQ masks key columns >= nk on boundary tiles
// (their zero-filled K / V would otherwise give P = exp2(-lse2), harmless
// after * 0 but unbounded); dK/dV masks query columns through lse2 = +inf.
// Key rows past the sequence (dK/dV) and query rows past it (dQ) are computed
// on zero-filled data and never stored. Keys no query sees keep dK = dV = 0;
// rows that see no key keep dQ = 0 (a warp or block with nothing visible
// still writes its zeros).
//
// Output: the warp's fp32 accumulators are rounded to T, staged in the warp's
// own rows of shared memory (the Q rows in dQ, the K / V rows in dK/dV: only
// this warp ever reads them) and stored 16 bytes per lane.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "kernels/attention/attention_kernel.cuh"
#include "kernels/attention/attention_mma_kernel.cuh"
#include "kernels/common/kernel_launch.cuh"

namespace spembed::detail {

// Keys per K / V tile of dQ: 64, or 32 at head dim 128 (dQ 64 fp32
// accumulators, S and dP 16 + 16).
constexpr int mma_dq_key_tile(int d) { return d <= 64 ? 64 : 32; }
// Queries per Q / dO tile of dK/dV: 64, or 16 at head dim 128: the dK + dV
// accumulators take 128 fp32 registers there, and ptxas keeps about 50
// registers of slack at 16 (spill-free with -maxrregcount 208) but spills at
// 32 when the mask arithmetic grows (no margin at 255).
constexpr int mma_dkv_query_tile(int d) { return d <= 64 ? 64 : 16; }

template <typename T, int kD>
struct MmaDqSmem {
  static constexpr int kRows = kMmaBwdRows;
  static constexpr int kN = mma_dq_key_tile(kD);
  static constexpr int kLd = kD + 8;
  static constexpr int kKvTile = kN * kLd;
  static constexpr int kQ = 0;
  static constexpr int kDo = kQ + kRows * kLd;
  static constexpr int kK = kDo + kRows * kLd;  // two buffers
  static constexpr int kV = kK + 2 * kKvTile;   // two buffers
  static constexpr int kElems = kV + 2 * kKvTile;
  static constexpr size_t kBytes = kElems * sizeof(T);
  static_assert((kLd * sizeof(T)) % 32 == 16, "row stride must be an odd multiple of 16 bytes");
};

template <typename T, int kD>
struct MmaDkvSmem {
  static constexpr int kKeys = kMmaBwdRows;
  static constexpr int kM = mma_dkv_query_tile(kD);
  static constexpr int kLd = kD + 8;
  static constexpr int kQTile = kM * kLd;
  static constexpr int kK = 0;
  static constexpr int kV = kK + kKeys * kLd;
  static constexpr int kQ = kV + kKeys * kLd;  // two buffers
  static constexpr int kDo = kQ + 2 * kQTile;  // two buffers
  static constexpr int kElems = kDo + 2 * kQTile;
  // float lse2 [2][kM], then D [2][kM], after the T tiles (16-byte aligned).
  static constexpr size_t kStatsOffset = kElems * sizeof(T);
  static constexpr size_t kBytes = kStatsOffset + 4 * kM * sizeof(float);
  static_assert((kLd * sizeof(T)) % 32 == 16, "row stride must be an odd multiple of 16 bytes");
  static_assert(kStatsOffset % 16 == 0, "aligned statistics");
  static_assert(kM <= kMmaBwdWarps * 32, "one thread per query of a tile loads its statistics");
};

// c[kNTiles] = A B^T-style product of 16 rows (A at a_tile + a_lane) with kNTiles * 8
// rows of a [n][k] tile (b_tile + b_lane), over kD / 16 k-steps.
template <typename T, int kD, int kNTiles, int kLd>
__device__ __forceinline__ void mma_rows_by_rows(float (&c)[kNTiles][4], const T* a_rows,
                                                 const T* b_rows) {
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) c[j][0] = c[j][1] = c[j][2] = c[j][3] = 0.f;
#pragma unroll
  for (int ks = 0; ks < kD / 16; ++ks) {
    uint32_t a[4];
    ldmatrix_x4(a, smem_address(a_rows + ks * 16));
#pragma unroll
    for (int np = 0; np < kNTiles / 2; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, smem_address(b_rows + np * 16 * kLd + ks * 16));
      mma_16816<T>(c[2 * np], a, b[0], b[1]);
      mma_16816<T>(c[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// ---- dQ -------------------------------------------------------------------------

template <typename T, int kD>
__global__ void __launch_bounds__(kMmaBwdWarps * 32)
    attention_mma_dq_kernel(const __grid_constant__ AttentionParams p, AttentionLaunch l) {
  using S = MmaDqSmem<T, kD>;
  constexpr int kThreads = kMmaBwdWarps * 32;
  constexpr int kRows = S::kRows;
  constexpr int kLd = S::kLd;
  constexpr int kN = S::kN;
  constexpr int kSTiles = kN / 8;  // n-tiles of S, dP (8 keys each)
  constexpr int kDTiles = kD / 8;  // n-tiles of dQ (8 dims each)
  static_assert(kD % 16 == 0 && kN % 16 == 0, "whole mma tiles");

  T* const smem = dynamic_shared_memory<T>();
  T* const qs = smem + S::kQ;
  T* const dos = smem + S::kDo;

  if (attention_checks_failed(l)) return;
  const int64_t n_tiles = l.tile_starts[p.batch];
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int h = blockIdx.y;
  const int kh = h / p.group();
  const int d = p.head_dim;
  const float scale_log2 = p.scale * kLog2e;
  const int w0 = warp * kMmaWarpRows;
  const int a_lane = mma_a_lane(lane, w0, kLd);
  const int b_lane = mma_b_lane(lane, kLd);
  const int bt_lane = mma_bt_lane(lane, kLd);

  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const TileRef ref = find_tile(l.tile_starts, p.batch, tile);
    const SeqBounds sq = seq_bounds(p, ref.b);
    const int64_t i0 = ref.index * kRows;
    const int nq = static_cast<int>(min64(kRows, sq.lq - i0));
    const int64_t diag = sq.lk - sq.lq;
    const Range keys = visible_keys(p.band, sq.lq, sq.lk, i0, i0 + nq);
    const int64_t n_key_tiles = keys.end > keys.begin ? (keys.end - keys.begin + kN - 1) / kN : 0;
    const int wn = nq - w0 < 0 ? 0 : (nq - w0 > kMmaWarpRows ? kMmaWarpRows : nq - w0);
    const int64_t wi0 = i0 + w0;
    const Range wkeys = wn > 0 ? visible_keys(p.band, sq.lq, sq.lk, wi0, wi0 + wn) : Range{0, 0};

    __syncthreads();  // the previous tile's readers (and output staging) are done
    if (n_key_tiles > 0) {
      const int nk0 = static_cast<int>(min64(kN, keys.end - keys.begin));
      load_rows_async<T, kD, kRows, kThreads, kLd>(qs, p.q, sq.q0 + i0, nq, h, d);
      load_rows_async<T, kD, kRows, kThreads, kLd>(dos, p.dout, sq.q0 + i0, nq, h, d);
      load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kK, p.k, sq.k0 + keys.begin, nk0, kh, d);
      load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kV, p.v, sq.k0 + keys.begin, nk0, kh, d);
      cp_async_commit();
    }

    // Rows g (r = 0) and g + 8 (r = 1): lse2 = +inf for rows past the tile's
    // end or that see nothing (P = 0), else lse * log2 e; D.
    float lse2[2], dsum[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = g + 8 * r;
      lse2[r] = INFINITY;
      dsum[r] = 0.f;
      if (row < wn) {
        const int64_t at = h * p.total_q + sq.q0 + wi0 + row;
        const float lse = p.lse[at];
        if (lse != -INFINITY) lse2[r] = lse * kLog2e;
        dsum[r] = l.rowsum[at];
      }
    }

    float dq[kDTiles][4];
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) dq[j][0] = dq[j][1] = dq[j][2] = dq[j][3] = 0.f;

    for (int64_t n = 0; n < n_key_tiles; ++n) {
      const int buf = static_cast<int>(n % 2);
      const int64_t kt = keys.begin + n * kN;
      const int nk = static_cast<int>(min64(kN, keys.end - kt));
      cp_async_wait_all();
      // Tile n is visible to every thread; every warp is done with tile n - 1,
      // whose buffer the next load overwrites.
      __syncthreads();
      if (n + 1 < n_key_tiles) {
        const int64_t kt1 = kt + kN;
        const int nk1 = static_cast<int>(min64(kN, keys.end - kt1));
        const int off = (1 - buf) * S::kKvTile;
        load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kK + off, p.k, sq.k0 + kt1, nk1, kh, d);
        load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kV + off, p.v, sq.k0 + kt1, nk1, kh, d);
        cp_async_commit();
      }
      if (wn == 0) continue;                                    // warp-uniform
      if (wkeys.end <= kt || kt + nk <= wkeys.begin) continue;  // warp-uniform: sees none
      const T* const ks_tile = smem + S::kK + buf * S::kKvTile;
      const T* const vs_tile = smem + S::kV + buf * S::kKvTile;

      // S = Q K^T, then P in place.
      float s[kSTiles][4];
      mma_rows_by_rows<T, kD, kSTiles, kLd>(s, qs + a_lane, ks_tile + b_lane);
      // s * scale_log2 - lse2 in one rounding (fmaf: nvcc would contract, g++
      // does not; written out, both builds compute the same).
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] = exp2f(fmaf(s[j][e], scale_log2, -lse2[e / 2]));
      }
      mma_mask_key_band<kN>(s, p.band, wi0, wn, diag, kt, nk, g, t, 0.f);

      // dP = dO V^T; dS = P (dP - D) in place of P.
      {
        float dp[kSTiles][4];
        mma_rows_by_rows<T, kD, kSTiles, kLd>(dp, dos + a_lane, vs_tile + b_lane);
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 4; ++e) s[j][e] *= dp[j][e] - dsum[e / 2];
        }
      }

      // dQ += dS K (dS rounded to T; K as B[k = key][n = dim] via .trans).
      mma_acc_by_rows_trans<T, kD, kN, kLd>(dq, s, ks_tile + bt_lane);
    }

    if (wn == 0) continue;  // warp-uniform; the next tile starts with a block barrier
    // The warp's own Q rows: no other warp reads them, and every cp.async
    // into them completed before the first key tile.
    mma_store_rows<T, kD, kLd>(dq, p.scale, p.scale, qs + w0 * kLd, p.dq, sq.q0 + wi0, wn, h, d,
                               lane);
  }
}

// ---- dK / dV -------------------------------------------------------------------

template <typename T, int kD>
__global__ void __launch_bounds__(kMmaBwdWarps * 32)
    attention_mma_dkv_kernel(const __grid_constant__ AttentionParams p, AttentionLaunch l) {
  using S = MmaDkvSmem<T, kD>;
  constexpr int kThreads = kMmaBwdWarps * 32;
  constexpr int kKeys = S::kKeys;
  constexpr int kLd = S::kLd;
  constexpr int kM = S::kM;
  constexpr int kQTiles = kM / 8;  // n-tiles of S^T, dP^T (8 queries each)
  constexpr int kDTiles = kD / 8;  // n-tiles of dK, dV
  static_assert(kD % 16 == 0 && kM % 16 == 0, "whole mma tiles");

  T* const smem = dynamic_shared_memory<T>();
  T* const ks = smem + S::kK;
  T* const vs = smem + S::kV;
  float* const lse2s =
      reinterpret_cast<float*>(dynamic_shared_memory<unsigned char>() + S::kStatsOffset);
  float* const dsums = lse2s + 2 * kM;

  if (attention_checks_failed(l)) return;
  const int64_t n_tiles = l.tile_starts[p.batch];
  const int warp = static_cast<int>(threadIdx.x) / 32;
  const int lane = static_cast<int>(threadIdx.x) % 32;
  const int g = lane / 4;
  const int t = lane % 4;
  const int kh = blockIdx.y;
  const int group = p.group();
  const int d = p.head_dim;
  const float scale_log2 = p.scale * kLog2e;
  const int w0 = warp * kMmaWarpRows;
  const int a_lane = mma_a_lane(lane, w0, kLd);
  const int b_lane = mma_b_lane(lane, kLd);
  const int bt_lane = mma_bt_lane(lane, kLd);

  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const TileRef ref = find_tile(l.tile_starts, p.batch, tile);
    const SeqBounds sq64 = seq_bounds(p, ref.b);
    // Offsets and lengths come from int32 cu_seqlens: 32-bit from here on
    // (fewer live registers); the band's int64 bounds enter only the tests.
    const int q0 = static_cast<int>(sq64.q0), k0 = static_cast<int>(sq64.k0);
    const int lq = static_cast<int>(sq64.lq), lk = static_cast<int>(sq64.lk);
    const int j0 = static_cast<int>(ref.index) * kKeys;
    const int nk = min(kKeys, lk - j0);
    const int diag = lk - lq;
    const Range q64 = visible_queries(p.band, lq, lk, j0, j0 + nk);
    const int qbegin = static_cast<int>(q64.begin), qend = static_cast<int>(q64.end);
    const int n_q_tiles = qend > qbegin ? (qend - qbegin + kM - 1) / kM : 0;
    const int n_iters = n_q_tiles * group;  // (query head, query tile), heads outer
    const int wn = nk - w0 < 0 ? 0 : (nk - w0 > kMmaWarpRows ? kMmaWarpRows : nk - w0);
    const int wj0 = j0 + w0;
    const Range wq64 = wn > 0 ? visible_queries(p.band, lq, lk, wj0, wj0 + wn) : Range{0, 0};
    const int wqbegin = static_cast<int>(wq64.begin), wqend = static_cast<int>(wq64.end);

    // Query tile n: head kh * group + n / n_q_tiles, first query it, nq rows;
    // Q, dO into buffer n % 2 (cp.async, not committed here), lse2 and D by
    // plain stores (visible after the next block barrier).
    const auto issue = [&](int n) {
      const int buf = n % 2;
      const int hq = kh * group + n / n_q_tiles;
      const int it = qbegin + (n % n_q_tiles) * kM;
      const int nq = min(kM, qend - it);
      load_rows_async<T, kD, kM, kThreads, kLd>(smem + S::kQ + buf * S::kQTile, p.q, q0 + it, nq,
                                                hq, d);
      load_rows_async<T, kD, kM, kThreads, kLd>(smem + S::kDo + buf * S::kQTile, p.dout, q0 + it,
                                                nq, hq, d);
      const int r = static_cast<int>(threadIdx.x);
      if (r < kM) {
        float l2 = INFINITY, dsum = 0.f;
        if (r < nq) {
          const int64_t at = hq * p.total_q + q0 + it + r;
          const float lse = p.lse[at];
          if (lse != -INFINITY) l2 = lse * kLog2e;
          dsum = l.rowsum[at];
        }
        lse2s[buf * kM + r] = l2;
        dsums[buf * kM + r] = dsum;
      }
    };

    __syncthreads();  // the previous tile's readers (and output staging) are done
    if (n_iters > 0) {
      load_rows_async<T, kD, kKeys, kThreads, kLd>(ks, p.k, k0 + j0, nk, kh, d);
      load_rows_async<T, kD, kKeys, kThreads, kLd>(vs, p.v, k0 + j0, nk, kh, d);
      issue(0);
      cp_async_commit();
    }

    float dk[kDTiles][4], dv[kDTiles][4];
#pragma unroll
    for (int j = 0; j < kDTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) dk[j][e] = dv[j][e] = 0.f;
    }

    for (int n = 0; n < n_iters; ++n) {
      const int buf = n % 2;
      const int it = qbegin + (n % n_q_tiles) * kM;
      const int nq = min(kM, qend - it);
      cp_async_wait_all();
      // Tile n (and its statistics) is visible to every thread; every warp is
      // done with tile n - 1, whose buffers the next issue overwrites.
      __syncthreads();
      if (n + 1 < n_iters) {
        issue(n + 1);
        cp_async_commit();
      }
      if (wn == 0) continue;                            // warp-uniform
      if (wqend <= it || it + nq <= wqbegin) continue;  // warp-uniform: no query sees its keys
      const T* const qs_tile = smem + S::kQ + buf * S::kQTile;
      const T* const dos_tile = smem + S::kDo + buf * S::kQTile;
      const float* const lse2_tile = lse2s + buf * kM;
      const float* const dsum_tile = dsums + buf * kM;

      // S^T = K Q^T (keys as rows), then P^T in place.
      float s[kQTiles][4];
      mma_rows_by_rows<T, kD, kQTiles, kLd>(s, ks + a_lane, qs_tile + b_lane);
#pragma unroll
      for (int j = 0; j < kQTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const float l2 = lse2_tile[8 * j + 2 * t + e];
          s[j][e] = exp2f(fmaf(s[j][e], scale_log2, -l2));
          s[j][2 + e] = exp2f(fmaf(s[j][2 + e], scale_log2, -l2));
        }
      }
      // Every (key of the warp, query of the tile) pair inside the band?
      // Queries past nq already have P = 0 (lse2 = +inf).
      const bool whole = int64_t{wj0} - (it + kM - 1) - diag >= p.band.lo &&
                         int64_t{wj0} + kMmaWarpRows - 1 - it - diag <= p.band.hi;
      if (!whole) {
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          // Key j is seen by the queries it + [clo, chi) of this tile.
          const int64_t rel = int64_t{wj0} + g + 8 * r - diag - it;
          const int64_t lo = rel - p.band.hi;
          const int64_t hi = rel - p.band.lo + 1;
          const int clo = static_cast<int>(lo < 0 ? 0 : (lo > kM ? kM : lo));
          const int chi = static_cast<int>(hi < 0 ? 0 : (hi > kM ? kM : hi));
          mma_mask_columns<kQTiles>(s, r, clo, chi, t, 0.f);
        }
      }

      // dV += P^T dO (P^T rounded to T; dO as B[k = query][n = dim] via .trans).
      mma_acc_by_rows_trans<T, kD, kM, kLd>(dv, s, dos_tile + bt_lane);

      // dP^T = V dO^T; dS^T = P^T (dP^T - D[query]) in place of P^T.
      {
        float dp[kQTiles][4];
        mma_rows_by_rows<T, kD, kQTiles, kLd>(dp, vs + a_lane, dos_tile + b_lane);
#pragma unroll
        for (int j = 0; j < kQTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float dsum = dsum_tile[8 * j + 2 * t + e];
            s[j][e] *= dp[j][e] - dsum;
            s[j][2 + e] *= dp[j][2 + e] - dsum;
          }
        }
      }

      // dK += dS^T Q (dS^T rounded to T; Q as B[k = query][n = dim] via .trans).
      mma_acc_by_rows_trans<T, kD, kM, kLd>(dk, s, qs_tile + bt_lane);
    }

    if (wn == 0) continue;  // warp-uniform; the next tile starts with a block barrier
    // The warp's own K / V rows: only this warp reads them (as A operands),
    // and no cp.async is in flight after the last query tile.
    mma_store_rows<T, kD, kLd>(dk, p.scale, p.scale, ks + w0 * kLd, p.dk, k0 + wj0, wn, kh, d,
                               lane);
    mma_store_rows<T, kD, kLd>(dv, 1.f, 1.f, vs + w0 * kLd, p.dv, k0 + wj0, wn, kh, d, lane);
  }
}

// ---- launch ----------------------------------------------------------------------

template <typename T, int kD>
int launch_attention_mma_backward_kernels(const AttentionParams& p, const AttentionLaunch& q_launch,
                                          const AttentionLaunch& k_launch, float* rowsum,
                                          cudaStream_t stream) {
  // launch_tile_kernel runs kAttnThreads-thread blocks.
  static_assert(kMmaBwdWarps * 32 == kAttnThreads, "one warp per 16 rows of a 64-row tile");
  if (const int error = launch_attention_rowsum<T>(p, rowsum, stream)) return error;
  if (q_launch.grid_tiles > 0) {
    if (const int error =
            launch_tile_kernel(attention_mma_dq_kernel<T, kD>, MmaDqSmem<T, kD>::kBytes, p,
                               q_launch, p.heads, stream)) {
      return error;
    }
  }
  if (k_launch.grid_tiles > 0) {
    if (const int error =
            launch_tile_kernel(attention_mma_dkv_kernel<T, kD>, MmaDkvSmem<T, kD>::kBytes, p,
                               k_launch, p.kv_heads, stream)) {
      return error;
    }
  }
  return 0;
}

// Per-dtype entry point (T = __half or __nv_bfloat16), instantiated in
// attention_mma_bwd_{f16,bf16}.cu. Both schedules (q tiles in q_launch, k
// tiles in k_launch) must have been planned with kMmaBwdRows rows per tile.
// head_dim: a multiple of 8 in [8, 128], run in the bucket 32, 64 or 128.
template <typename T>
int launch_attention_mma_backward(const AttentionParams& p, const AttentionLaunch& q_launch,
                                  const AttentionLaunch& k_launch, float* rowsum,
                                  cudaStream_t stream) {
  if (p.head_dim <= 32) {
    return launch_attention_mma_backward_kernels<T, 32>(p, q_launch, k_launch, rowsum, stream);
  }
  if (p.head_dim <= 64) {
    return launch_attention_mma_backward_kernels<T, 64>(p, q_launch, k_launch, rowsum, stream);
  }
  return launch_attention_mma_backward_kernels<T, 128>(p, q_launch, k_launch, rowsum, stream);
}

}  // namespace spembed::detail
