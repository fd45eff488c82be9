// Tensor-core forward of the varlen attention for fp16 / bf16 (flash-attention
// 2 style): mma.sync m16n8k16 with fp32 accumulators, ldmatrix from shared
// memory, cp.async double buffering of the K / V tiles. attention.cu picks it
// when head_dim is a multiple of 8 up to 128 and every tensor can be read 16
// bytes at a time (see use_mma_forward there); otherwise the SIMT kernel of
// attention_kernel.cuh runs.
//
// Grid and data.
//   grid (q tiles, heads), kWarps * 32 threads; the q tiles come from the same
//   device-side schedule as the SIMT forward (attention.cu's plan kernel with
//   kRows = 16 * kWarps query rows per tile; find_tile binary-searches the
//   sequence). kWarps = 4 (64 queries per block) in general, 1 (16 queries)
//   when sequences hold at most 16 queries (target attention).
//   Warp w owns the 16 query rows [16 w, 16 w + 16) of the tile. The block
//   streams the keys its rows can see (visible_keys) in tiles of kMmaKeyTile =
//   64 through two shared-memory buffers: cp.async of tile n + 1 is in flight
//   while tile n is computed. A warp whose rows see none of a tile's keys, or
//   that has no valid rows, skips the tile's math (it still loads and syncs).
//
// Per warp and key tile (all in registers):
//   S = Q K^T       Q fragments (ldmatrix, once per q tile) x K (ldmatrix);
//   softmax         S * scale * log2(e); masked entries -inf (per element,
//                   only on tiles the band cuts or the sequence ends in);
//                   running row max / sum in fp32 (quad shuffles);
//   O = O * alpha + P V   P rounded to T in registers, reused as the A
//                   operand (see "C -> A" below); V via ldmatrix.trans.
// At the end O / l is rounded once to T, staged through the warp's own Q rows
// of shared memory and written 16 bytes per lane; lse = (m + log2 l) ln 2.
// Rows that see no key keep m = -inf, l = 0: O = 0 and lse = -inf, as in the
// SIMT kernel and the CPU oracle (exp2 subtracts 0 instead of -inf: no NaN).
//
// Fragment layouts of mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16} (PTX
// ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"), with
// g = lane / 4 (groupID) and t = lane % 4 (threadID_in_group). Every .b32
// register holds two 16-bit elements, the lower column / k index in the low
// half.
//   A 16x16 (row major), 4 regs:  a0 = (row g,     cols 2t, 2t+1)
//                                 a1 = (row g + 8, cols 2t, 2t+1)
//                                 a2 = (row g,     cols 2t+8, 2t+9)
//                                 a3 = (row g + 8, cols 2t+8, 2t+9)
//   B 16x8 (col major), 2 regs:   b0 = (k 2t, 2t+1,   col g)
//                                 b1 = (k 2t+8, 2t+9, col g)
//   C / D 16x8 fp32, 4 regs:      c0, c1 = (row g,     cols 2t, 2t+1)
//                                 c2, c3 = (row g + 8, cols 2t, 2t+1)
//
// ldmatrix.m8n8.x4.b16: lanes 8i .. 8i+7 give the row addresses of 8x8
// matrix i; register ri of a lane then holds matrix i's (row g, cols 2t,
// 2t+1); with .trans it holds (rows 2t, 2t+1, col g). Hence:
//   Q (A of S = Q K^T, k-step ks): lane l points at Q row l % 16, col
//     16 ks + 8 (l / 16): matrices (rows 0-7, k 0-7), (rows 8-15, k 0-7),
//     (rows 0-7, k 8-15), (rows 8-15, k 8-15) = a0, a1, a2, a3.
//   K (B of S; B[k][n] = K[key n][dim k], so K row-major in shared memory is
//     B col-major): for keys 16 np .. 16 np + 15 and k-step ks, lane l points
//     at key 16 np + 8 (l / 16) + l % 8, col 16 ks + 8 ((l / 8) % 2):
//     registers = b0, b1 of key n-tile 2 np, then b0, b1 of n-tile 2 np + 1.
//   V (B of O = P V; B[k][n] = V[key k][dim n], row major in shared memory,
//     so .trans): for keys 16 kk .. 16 kk + 15 (k-step kk) and dims 16 dp ..
//     16 dp + 15, lane l points at key 16 kk + 8 ((l / 8) % 2) + l % 8, col
//     16 dp + 8 (l / 16): registers = b0, b1 of dim n-tile 2 dp, then b0, b1
//     of dim n-tile 2 dp + 1 (.trans turns (key row, dim col) into (k 2t, 2t+1;
//     col g)).
//
// C -> A (P reused without shared memory): S n-tile j holds keys 8j .. 8j+7;
// a thread's c0, c1 are (row g, keys 8j + 2t, 8j + 2t + 1) and c2, c3 the same
// keys of row g + 8. The A operand of P V for k-step kk covers keys 16 kk ..
// 16 kk + 15:
//   a0 = (row g,     k 2t, 2t+1)   = keys 16kk + 2t..     = S tile 2kk,   c0 c1
//   a1 = (row g + 8, k 2t, 2t+1)   = keys 16kk + 2t..     = S tile 2kk,   c2 c3
//   a2 = (row g,     k 2t+8, 2t+9) = keys 16kk + 8 + 2t.. = S tile 2kk+1, c0 c1
//   a3 = (row g + 8, k 2t+8, 2t+9) = keys 16kk + 8 + 2t.. = S tile 2kk+1, c2 c3
// The same thread holds both, so P is packed in place: no shuffle.
//
// Shared memory (T elements): Q [16 kWarps][kD + 8], K and V [2][64][kD + 8].
// Rows are padded by 8 elements: a row stride that is an odd multiple of 16
// bytes puts the 8 rows of each ldmatrix matrix on 8 distinct 16-byte bank
// groups (conflict-free), and keeps every 16-byte cp.async destination
// aligned. head_dim d < kD (any multiple of 8) is zero-filled by cp.async
// (columns d..kD-1 and rows past the sequence read 0 bytes), so the padding
// adds 0 to S and to O and is never stored.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "kernels/attention/attention_dispatch.h"
#include "kernels/attention/attention_kernel.cuh"
#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/ptx.cuh"

namespace spembed::detail {

// Mutation checks of the emulation build (tests/emulator/CMakeLists.txt
// compiles the tensor-core forward with each value and shows that the
// attention suite then fails): 1 swaps the a1 / a2 fragment registers of the
// C -> A reuse, 2 drops the barrier after cp.async.wait_group, 3 moves the
// mask's diagonal one key later. Only those test targets set it; 0 (the
// kernels as written) everywhere else.
#if !defined(SPEMBED_FAULT_INJECTION)
#define SPEMBED_FAULT_INJECTION 0
#endif
constexpr int kFaultInjection = SPEMBED_FAULT_INJECTION;

// ---- PTX building blocks ------------------------------------------------------

__device__ __forceinline__ uint32_t smem_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16 bytes global -> shared; with fill = false nothing is read and the 16
// bytes become zero (src-size 0).
__device__ __forceinline__ void cp_async_16(uint32_t dst, const void* src, bool fill) {
  ptx::cp_async_cg_shared_global_16(dst, src, fill ? 16 : 0);
}

__device__ __forceinline__ void cp_async_commit() { ptx::cp_async_commit_group(); }

__device__ __forceinline__ void cp_async_wait_all() { ptx::cp_async_wait_group<0>(); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t address) {
  ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(r, address);
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], uint32_t address) {
  ptx::ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(r, address);
}

// c += A B for one m16n8k16 tile (layouts at the top of the file).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0,
                                          uint32_t b1) {
  if constexpr (std::is_same_v<T, __half>) {
    ptx::mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(c, a, b0, b1);
  } else {
    static_assert(std::is_same_v<T, __nv_bfloat16>, "fp16 or bf16");
    ptx::mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(c, a, b0, b1);
  }
}

// Two floats rounded to nearest even into one .b32: lo in the low half.
template <typename T>
__device__ __forceinline__ uint32_t pack_pair(float lo, float hi) {
  uint32_t bits;
  if constexpr (std::is_same_v<T, __half>) {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&bits, &v, sizeof(bits));
  } else {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    memcpy(&bits, &v, sizeof(bits));
  }
  return bits;
}

// ---- fragment helpers (shared with attention_mma_bwd_kernel.cuh) ------------------

// Lane offsets (elements) of the three ldmatrix patterns (top of the file):
// a_lane for A from a row-major [m][k] tile (Q), b_lane for B from a [n][k]
// tile (K), bt_lane for B from a row-major [k][n] tile via .trans (V).
__device__ __forceinline__ int mma_a_lane(int lane, int w0, int ld) {
  return (w0 + lane % 16) * ld + (lane / 16) * 8;
}
__device__ __forceinline__ int mma_b_lane(int lane, int ld) {
  return ((lane / 16) * 8 + lane % 8) * ld + ((lane / 8) % 2) * 8;
}
__device__ __forceinline__ int mma_bt_lane(int lane, int ld) {
  return (((lane / 8) % 2) * 8 + lane % 8) * ld + (lane / 16) * 8;
}

// acc[kD / 8] += X B with X the 16 x kK accumulator tile x (C -> A, rounded to
// T) and B[k][n] a row-major [k][n] tile (b_rows at bt_lane, .trans).
template <typename T, int kD, int kK, int kLd>
__device__ __forceinline__ void mma_acc_by_rows_trans(float (&acc)[kD / 8][4],
                                                      const float (&x)[kK / 8][4],
                                                      const T* b_rows) {
#pragma unroll
  for (int kk = 0; kk < kK / 16; ++kk) {
    uint32_t a[4] = {pack_pair<T>(x[2 * kk][0], x[2 * kk][1]),
                     pack_pair<T>(x[2 * kk][2], x[2 * kk][3]),
                     pack_pair<T>(x[2 * kk + 1][0], x[2 * kk + 1][1]),
                     pack_pair<T>(x[2 * kk + 1][2], x[2 * kk + 1][3])};
    if constexpr (kFaultInjection == 1) {  // mutation check: a1 <-> a2
      const uint32_t a1 = a[1];
      a[1] = a[2];
      a[2] = a1;
    }
#pragma unroll
    for (int dp = 0; dp < kD / 16; ++dp) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, smem_address(b_rows + kk * 16 * kLd + dp * 16));
      mma_16816<T>(acc[2 * dp], a, b[0], b[1]);
      mma_16816<T>(acc[2 * dp + 1], a, b[2], b[3]);
    }
  }
}

// Row g + 8 r of a 16 x (8 kNTiles) accumulator tile (r = 0: c0, c1; r = 1:
// c2, c3): the columns outside [lo, hi) become `fill`.
template <int kNTiles>
__device__ __forceinline__ void mma_mask_columns(float (&c)[kNTiles][4], int r, int lo, int hi,
                                                 int t, float fill) {
#pragma unroll
  for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = 8 * j + 2 * t + e;
      if (col < lo || col >= hi) c[j][2 * r + e] = fill;
    }
  }
}

// The band and the key tile's end on a warp's 16 x kN tile of scores (rows:
// queries wi0 + g, wi0 + g + 8 of its wn valid ones; columns: keys kt ..
// kt + nk - 1): the entries outside become `fill`, per element only where
// some valid row of the warp misses some key of the tile.
template <int kN>
__device__ __forceinline__ void mma_mask_key_band(float (&s)[kN / 8][4], const AttentionBand& band,
                                                  int64_t wi0, int wn, int64_t diag, int64_t kt,
                                                  int nk, int g, int t, float fill) {
  if constexpr (kFaultInjection == 3) ++diag;  // mutation check: the diagonal one key later
  const bool whole =
      nk == kN && kt >= wi0 + wn - 1 + diag + band.lo && kt + kN - 1 <= wi0 + diag + band.hi;
  if (!whole) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Row i sees keys kt + [jlo, jhi) of this tile.
      const int64_t rel = wi0 + g + 8 * r + diag - kt;
      const int64_t lo = rel + band.lo;
      const int64_t hi = rel + band.hi + 1;
      const int jlo = static_cast<int>(lo < 0 ? 0 : (lo > kN ? kN : lo));
      const int jhi = static_cast<int>(hi < 0 ? 0 : (hi > nk ? nk : hi));
      mma_mask_columns<kN / 8>(s, r, jlo, jhi, t, fill);
    }
  }
}

// Rounds the warp's 16 x kD accumulator to T, row g times mul_g and row g + 8
// times mul_g8, into rows of `stage` (the warp's own shared-memory rows), then
// stores rows [0, wn), columns [0, d) to `dst` rows row0.. of head `head`, 16
// bytes per lane.
template <typename T, int kD, int kLd>
__device__ __forceinline__ void mma_store_rows(const float (&acc)[kD / 8][4], float mul_g,
                                               float mul_g8, T* stage, const TokenTensor& dst,
                                               int64_t row0, int wn, int head, int d, int lane) {
  const int g = lane / 4;
  const int t = lane % 4;
  __syncwarp();
#pragma unroll
  for (int j = 0; j < kD / 8; ++j) {
    const int col = 8 * j + 2 * t;
    // col and kLd are even: 4-byte aligned.
    *reinterpret_cast<uint32_t*>(stage + g * kLd + col) =
        pack_pair<T>(acc[j][0] * mul_g, acc[j][1] * mul_g);
    *reinterpret_cast<uint32_t*>(stage + (g + 8) * kLd + col) =
        pack_pair<T>(acc[j][2] * mul_g8, acc[j][3] * mul_g8);
  }
  __syncwarp();
  constexpr int kChunks = kD / kMmaHeadDimAlign;
  T* const out = static_cast<T*>(const_cast<void*>(dst.data));
#pragma unroll
  for (int it = 0; it < kMmaWarpRows * kChunks / 32; ++it) {
    const int e = lane + it * 32;
    const int r = e / kChunks;
    const int c = (e % kChunks) * kMmaHeadDimAlign;
    if (r < wn && c < d) {
      const uint4 v = *reinterpret_cast<const uint4*>(stage + r * kLd + c);
      *reinterpret_cast<uint4*>(out + dst.offset(row0 + r, head) + c) = v;
    }
  }
}

// ---- the kernel -------------------------------------------------------------------

template <typename T, int kD, int kWarps>
struct MmaForwardSmem {
  static constexpr int kRows = attention_mma_rows(kWarps);
  static constexpr int kLd = kD + 8;  // row stride (elements): an odd multiple of 16 bytes
  static constexpr int kKvTile = kMmaKeyTile * kLd;
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + kRows * kLd;  // two buffers
  static constexpr int kV = kK + 2 * kKvTile;  // two buffers
  static constexpr int kElems = kV + 2 * kKvTile;
  static constexpr size_t kBytes = kElems * sizeof(T);
  static_assert((kLd * sizeof(T)) % 32 == 16, "row stride must be an odd multiple of 16 bytes");
};

// Rows [row0, row0 + n) of head `head` of `t`, columns [0, d), into kRows x kD
// of shared memory (row stride kLd) by 16-byte cp.async; the rest is zero.
// Thread x copies column chunk x % kChunks of rows x / kChunks + k * kStep.
template <typename T, int kD, int kRows, int kThreads, int kLd>
__device__ __forceinline__ void load_rows_async(T* smem, const TokenTensor& t, int64_t row0, int n,
                                                int head, int d) {
  constexpr int kChunks = kD / kMmaHeadDimAlign;  // 16-byte chunks per row
  static_assert(kThreads % kChunks == 0 && kRows % (kThreads / kChunks) == 0,
                "a thread keeps one column chunk and whole rows");
  constexpr int kStep = kThreads / kChunks;  // rows between a thread's copies
  const int r0 = static_cast<int>(threadIdx.x) / kChunks;
  const int c = (static_cast<int>(threadIdx.x) % kChunks) * kMmaHeadDimAlign;
  const T* const base = static_cast<const T*>(t.data) + head * t.head_stride;
  const T* src = base + (row0 + r0) * t.token_stride + c;
  const int64_t src_step = kStep * t.token_stride;
  uint32_t dst = smem_address(smem + r0 * kLd + c);
#pragma unroll
  for (int r = r0; r < kRows; r += kStep) {
    const bool fill = r < n && c < d;
    // A zero-fill reads nothing; the address stays a valid one of the tensor.
    cp_async_16(dst, fill ? src : base, fill);
    src += src_step;
    dst += kStep * kLd * sizeof(T);
  }
}

template <typename T, int kD, int kWarps>
__global__ void __launch_bounds__(kWarps * 32)
    attention_mma_forward_kernel(const __grid_constant__ AttentionParams p, AttentionLaunch l) {
  using S = MmaForwardSmem<T, kD, kWarps>;
  constexpr int kThreads = kWarps * 32;
  constexpr int kRows = S::kRows;
  constexpr int kLd = S::kLd;
  constexpr int kN = kMmaKeyTile;
  constexpr int kQkSteps = kD / 16;  // k-steps of S = Q K^T
  constexpr int kSTiles = kN / 8;    // n-tiles of S (8 keys each)
  constexpr int kOTiles = kD / 8;    // n-tiles of O (8 dims each)
  static_assert(kD % 16 == 0 && kN % 16 == 0, "whole mma tiles");

  T* const smem = dynamic_shared_memory<T>();
  T* const qs = smem + S::kQ;

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
  const int w0 = warp * kMmaWarpRows;  // this warp's first row within the tile

  // Per-lane ldmatrix offsets (elements), see the top of the file.
  const int q_lane = mma_a_lane(lane, w0, kLd);
  const int k_lane = mma_b_lane(lane, kLd);
  const int v_lane = mma_bt_lane(lane, kLd);

  for (int64_t tile = blockIdx.x; tile < n_tiles; tile += gridDim.x) {
    const TileRef ref = find_tile(l.tile_starts, p.batch, tile);
    const SeqBounds sq = seq_bounds(p, ref.b);
    const int64_t i0 = ref.index * kRows;
    const int nq = static_cast<int>(min64(kRows, sq.lq - i0));
    const int64_t diag = sq.lk - sq.lq;
    const Range keys = visible_keys(p.band, sq.lq, sq.lk, i0, i0 + nq);
    const int64_t n_key_tiles = keys.end > keys.begin ? (keys.end - keys.begin + kN - 1) / kN : 0;
    // This warp's valid rows [wi0, wi0 + wn) and the keys they see.
    const int wn = nq - w0 < 0 ? 0 : (nq - w0 > kMmaWarpRows ? kMmaWarpRows : nq - w0);
    const int64_t wi0 = i0 + w0;
    const Range wkeys = wn > 0 ? visible_keys(p.band, sq.lq, sq.lk, wi0, wi0 + wn) : Range{0, 0};

    __syncthreads();  // the previous tile's readers of Q / K / V shared memory are done
    if (n_key_tiles > 0) {
      const int nk0 = static_cast<int>(min64(kN, keys.end - keys.begin));
      load_rows_async<T, kD, kRows, kThreads, kLd>(qs, p.q, sq.q0 + i0, nq, h, d);
      load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kK, p.k, sq.k0 + keys.begin, nk0, kh, d);
      load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kV, p.v, sq.k0 + keys.begin, nk0, kh, d);
      cp_async_commit();
    }

    float o[kOTiles][4];
#pragma unroll
    for (int j = 0; j < kOTiles; ++j) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0.f;
    float m[2] = {-INFINITY, -INFINITY};  // running max of rows g, g + 8 (log2 units)
    float lsum[2] = {0.f, 0.f};           // running sum of exp2(s - m), this lane's columns
    uint32_t qf[kQkSteps][4];

    for (int64_t n = 0; n < n_key_tiles; ++n) {
      const int buf = static_cast<int>(n % 2);
      const int64_t kt = keys.begin + n * kN;
      const int nk = static_cast<int>(min64(kN, keys.end - kt));
      cp_async_wait_all();
      // Tile n is in shared memory for every thread, and every warp is done
      // with tile n - 1, whose buffer the next load overwrites.
      if constexpr (kFaultInjection != 2) __syncthreads();  // 2: mutation check
      if (n + 1 < n_key_tiles) {
        const int64_t kt1 = kt + kN;
        const int nk1 = static_cast<int>(min64(kN, keys.end - kt1));
        const int off = (1 - buf) * S::kKvTile;
        load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kK + off, p.k, sq.k0 + kt1, nk1, kh, d);
        load_rows_async<T, kD, kN, kThreads, kLd>(smem + S::kV + off, p.v, sq.k0 + kt1, nk1, kh, d);
        cp_async_commit();
      }
      if (wn == 0) continue;  // warp-uniform: no valid rows
      if (n == 0) {
#pragma unroll
        for (int ks = 0; ks < kQkSteps; ++ks)
          ldmatrix_x4(qf[ks], smem_address(qs + q_lane + ks * 16));
      }
      if (wkeys.end <= kt || kt + nk <= wkeys.begin) continue;  // warp-uniform: sees none

      const T* ks_tile = smem + S::kK + buf * S::kKvTile;
      const T* vs_tile = smem + S::kV + buf * S::kKvTile;

      // S = Q K^T
      float s[kSTiles][4];
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
      for (int ks = 0; ks < kQkSteps; ++ks) {
#pragma unroll
        for (int np = 0; np < kSTiles / 2; ++np) {
          uint32_t b[4];
          ldmatrix_x4(b, smem_address(ks_tile + k_lane + np * 16 * kLd + ks * 16));
          mma_16816<T>(s[2 * np], qf[ks], b[0], b[1]);
          mma_16816<T>(s[2 * np + 1], qf[ks], b[2], b[3]);
        }
      }

      // Scores in log2 units; the band and the tile's end per element, only
      // where some valid row of the warp misses some key of the tile.
#pragma unroll
      for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
        for (int e = 0; e < 4; ++e) s[j][e] *= scale_log2;
      }
      mma_mask_key_band<kN>(s, p.band, wi0, wn, diag, kt, nk, g, t, -INFINITY);

      // Online softmax, rows g (r = 0: c0, c1) and g + 8 (r = 1: c2, c3).
      float alpha[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float mx = -INFINITY;
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) mx = fmaxf(mx, fmaxf(s[j][2 * r], s[j][2 * r + 1]));
        // The row's 4 lanes (one quad) hold its 64 columns.
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
        mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
        const float m_new = fmaxf(m[r], mx);
        // A row that has seen nothing keeps m = -inf; subtract 0 instead so
        // that exp2 gives 0, not NaN.
        const float m_use = m_new == -INFINITY ? 0.f : m_new;
        alpha[r] = exp2f(m[r] - m_use);
        m[r] = m_new;
        float psum = 0.f;
#pragma unroll
        for (int j = 0; j < kSTiles; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pe = exp2f(s[j][2 * r + e] - m_use);
            s[j][2 * r + e] = pe;
            psum += pe;
          }
        }
        lsum[r] = lsum[r] * alpha[r] + psum;
      }
#pragma unroll
      for (int j = 0; j < kOTiles; ++j) {
        o[j][0] *= alpha[0];
        o[j][1] *= alpha[0];
        o[j][2] *= alpha[1];
        o[j][3] *= alpha[1];
      }

      // O += P V, P packed from the S accumulators (C -> A at the top).
      mma_acc_by_rows_trans<T, kD, kN, kLd>(o, s, vs_tile + v_lane);
    }

    if (wn == 0) continue;  // warp-uniform; the next tile starts with a block barrier
    // Row sums over the quad; O / l rounded once to T.
    float inv[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      lsum[r] += __shfl_xor_sync(0xffffffffu, lsum[r], 1);
      lsum[r] += __shfl_xor_sync(0xffffffffu, lsum[r], 2);
      inv[r] = lsum[r] > 0.f ? 1.f / lsum[r] : 0.f;
    }
    // Stage O in this warp's own Q rows (its Q fragments are in registers;
    // no other warp reads these rows), then 16-byte stores of whole rows.
    mma_store_rows<T, kD, kLd>(o, inv[0], inv[1], qs + w0 * kLd, p.out, sq.q0 + wi0, wn, h, d,
                               lane);
    if (p.lse != nullptr && t == 0) {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        const int row = g + 8 * r;
        if (row < wn) {
          p.lse[h * p.total_q + sq.q0 + wi0 + row] =
              lsum[r] > 0.f ? (m[r] + log2f(lsum[r])) * kLn2 : -INFINITY;
        }
      }
    }
  }
}

template <typename T, int kD, int kWarps>
int launch_attention_mma_forward_kernel(const AttentionParams& p, const AttentionLaunch& l,
                                        cudaStream_t stream) {
  using S = MmaForwardSmem<T, kD, kWarps>;
  auto kernel = attention_mma_forward_kernel<T, kD, kWarps>;
  if (const int error = set_smem(kernel, S::kBytes)) return error;
  const dim3 grid(static_cast<unsigned>(l.grid_tiles), static_cast<unsigned>(p.heads));
  launch_kernel(kernel, grid, kWarps * 32, S::kBytes, stream, p, l);
  return launch_status(stream);
}

// Per-dtype entry point (T = __half or __nv_bfloat16), instantiated in
// attention_mma_fwd_{f16,bf16}.cu. `warps` is 1 or 4 (16 or 64 query rows per
// block; l's schedule must have been planned with attention_mma_rows(warps)).
// head_dim: a multiple of 8 in [8, 128], run in the bucket 32, 64 or 128.
template <typename T>
int launch_attention_mma_forward(const AttentionParams& p, const AttentionLaunch& l, int warps,
                                 cudaStream_t stream) {
  const auto by_warps = [&](auto d_bucket) {
    constexpr int kD = decltype(d_bucket)::value;
    return warps == 1 ? launch_attention_mma_forward_kernel<T, kD, 1>(p, l, stream)
                      : launch_attention_mma_forward_kernel<T, kD, 4>(p, l, stream);
  };
  if (p.head_dim <= 32) return by_warps(std::integral_constant<int, 32>{});
  if (p.head_dim <= 64) return by_warps(std::integral_constant<int, 64>{});
  return by_warps(std::integral_constant<int, 128>{});
}

}  // namespace spembed::detail
