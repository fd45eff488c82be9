// CUDA varlen attention: the entry points host/ calls. Queues, on the
// caller's stream and without synchronising or allocating:
//
//   1. plan (one block): checks cu_seqlens_q / cu_seqlens_k (first entry 0,
//      non-decreasing, last entry total) into the record, and writes the tile
//      schedules: q_starts[b] = sum over b' < b of ceil(Lq_b' / q rows),
//      k_starts likewise for keys (block-wide scans over B in chunks);
//   2. the compute kernels, which return at once if the record shows a bad
//      entry: the forward on tensor cores (attention_mma_kernel.cuh) for
//      fp16 / bf16 when use_mma_forward holds, the backward's dQ and dK/dV
//      on tensor cores (attention_mma_bwd_kernel.cuh) when use_mma_backward
//      holds (attention_dispatch.h: sm_80 or newer, fp16 / bf16, head dim
//      and rows aligned), else the SIMT kernels (attention_kernel.cuh);
//   3. the report, if p.report is set.
// The host never reads cu_seqlens: grids come from ceil(total / rows) + B,
// which bounds the number of tiles; blocks past the schedule's end exit.
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <cub/block/block_scan.cuh>
#include <type_traits>

#include "kernels/attention/attention.h"
#include "kernels/attention/attention_dispatch.h"
#include "kernels/attention/attention_launch.h"
#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/static_switch.cuh"
#include "spembed/spembed.h"

namespace spembed::detail {

namespace {

// gridDim.x limit of the CUDA launch configuration.
constexpr int64_t kMaxGridX = 2147483647;

__device__ __forceinline__ int64_t tiles_of(const int32_t* cu, int64_t b, int rows) {
  const int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
  return len > 0 ? (len + rows - 1) / rows : 0;
}

__global__ void __launch_bounds__(kPlanThreads)
    attention_plan_kernel(const int32_t* cu_q, const int32_t* cu_k, int64_t batch, int64_t total_q,
                          int64_t total_k, int q_rows, int k_rows, int32_t* q_starts,
                          int32_t* k_starts, AttentionRecord* record) {
  using Scan = cub::BlockScan<int64_t, kPlanThreads>;
  __shared__ typename Scan::TempStorage scan_storage;
  __shared__ unsigned long long first_bad;
  if (threadIdx.x == 0) first_bad = kNoPosition;
  __syncthreads();

  // Positions: i for cu_seqlens_q[i], B + 1 + i for cu_seqlens_k[i].
  for (int64_t i = threadIdx.x; i <= batch; i += kPlanThreads) {
    const bool bad_q = (i == 0 && cu_q[0] != 0) || (i < batch && cu_q[i] > cu_q[i + 1]) ||
                       (i == batch && cu_q[batch] != total_q);
    const bool bad_k = (i == 0 && cu_k[0] != 0) || (i < batch && cu_k[i] > cu_k[i + 1]) ||
                       (i == batch && cu_k[batch] != total_k);
    if (bad_q) atomicMin(&first_bad, static_cast<unsigned long long>(i));
    if (bad_k) atomicMin(&first_bad, static_cast<unsigned long long>(batch + 1 + i));
  }

  int64_t q_carry = 0, k_carry = 0;
  for (int64_t base = 0; base < batch; base += kPlanThreads) {
    const int64_t b = base + threadIdx.x;
    const int64_t nq = b < batch ? tiles_of(cu_q, b, q_rows) : 0;
    const int64_t nk = b < batch ? tiles_of(cu_k, b, k_rows) : 0;
    int64_t q_off = 0, k_off = 0, q_total = 0, k_total = 0;
    Scan(scan_storage).ExclusiveSum(nq, q_off, q_total);
    __syncthreads();
    Scan(scan_storage).ExclusiveSum(nk, k_off, k_total);
    __syncthreads();
    // With sound offsets every start is < 2^31 (at most total / rows + B);
    // with bad ones the compute kernels never read the schedule.
    if (b < batch) {
      q_starts[b] = static_cast<int32_t>(q_carry + q_off);
      k_starts[b] = static_cast<int32_t>(k_carry + k_off);
    }
    q_carry += q_total;
    k_carry += k_total;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    q_starts[batch] = static_cast<int32_t>(q_carry);
    k_starts[batch] = static_cast<int32_t>(k_carry);
    record->first_bad_position = first_bad;
  }
}

__global__ void attention_report_kernel(const AttentionRecord* record, int64_t* report) {
  const unsigned long long bad = record->first_bad_position;
  report[SPEMBED_REPORT_STATUS] =
      bad == kNoPosition ? SPEMBED_STATUS_SUCCESS : SPEMBED_STATUS_INVALID_ARGUMENT;
  report[SPEMBED_REPORT_BAD_INDEX_COUNT] = 0;
  report[SPEMBED_REPORT_BAD_INDEX_POSITION] = -1;
  report[SPEMBED_REPORT_BAD_INDEX_VALUE] = 0;
  report[SPEMBED_REPORT_BAD_OFFSET_POSITION] = bad == kNoPosition ? -1 : static_cast<int64_t>(bad);
}

struct Workspace {
  AttentionRecord* record;
  int32_t* q_starts;
  int32_t* k_starts;
  float* rowsum;  // backward only
};

Workspace carve(const AttentionParams& p) {
  char* base = static_cast<char*>(p.workspace);
  Workspace w;
  w.record = reinterpret_cast<AttentionRecord*>(base);
  base += AttentionWorkspace::record_bytes();
  w.q_starts = reinterpret_cast<int32_t*>(base);
  base += AttentionWorkspace::tiles_bytes(p.batch);
  w.k_starts = reinterpret_cast<int32_t*>(base);
  base += AttentionWorkspace::tiles_bytes(p.batch);
  w.rowsum = reinterpret_cast<float*>(base);
  return w;
}

int64_t grid_tiles(int64_t total, int64_t batch, int rows) {
  return min64((total + rows - 1) / rows + batch, kMaxGridX);
}

int launch_plan(const AttentionParams& p, const Workspace& w, int q_rows, int k_rows,
                cudaStream_t stream) {
  launch_kernel(attention_plan_kernel, 1, kPlanThreads, 0, stream, p.cu_seqlens_q, p.cu_seqlens_k,
                p.batch, p.total_q, p.total_k, q_rows, k_rows, w.q_starts, w.k_starts, w.record);
  return launch_status(stream);
}

int launch_report(const AttentionParams& p, const Workspace& w, cudaStream_t stream) {
  if (p.report == nullptr) return 0;
  launch_kernel(attention_report_kernel, 1, 1, 0, stream, w.record, p.report);
  return launch_status(stream);
}

// Queries per sequence the forward plans for: the caller's bound, else the
// mean (a hint only: every tile shape is correct for every length).
int64_t forward_rows_hint(const AttentionParams& p) {
  return p.max_seqlen_q > 0 ? p.max_seqlen_q
         : p.batch > 0      ? (p.total_q + p.batch - 1) / p.batch
                            : 0;
}

int forward_tpr(const AttentionParams& p) {
  return forward_rows_hint(p) <= kShortQueryRows ? 16 : 4;
}

// Every row of a tensor at a 16-byte boundary: base pointer 16-byte aligned,
// token and head strides multiples of 8 elements.
bool rows_16_byte_aligned(const TokenTensor& t) {
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && t.token_stride % kMmaHeadDimAlign == 0 &&
         t.head_stride % kMmaHeadDimAlign == 0;
}

// The compute capability the dispatch rule sees: the current device's; 0
// (SIMT only) if it cannot be read, or when the environment variable
// SPEMBED_ATTENTION_KERNELS=simt asks for the SIMT kernels on every call (an
// internal override, so that tests and benchmarks run both variants on the
// same inputs).
int dispatch_compute_capability() {
  if (const char* kernels = std::getenv("SPEMBED_ATTENTION_KERNELS");
      kernels != nullptr && std::strcmp(kernels, "simt") == 0) {
    return 0;
  }
  int device = 0, major = 0, minor = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess) {
    (void)cudaGetLastError();  // not the caller's error: the SIMT kernels still serve the call
    return 0;
  }
  return compute_capability(major, minor);
}

bool use_mma_forward(const AttentionParams& p, int capability) {
  return use_tensor_core_attention(capability, p.dtype, p.head_dim,
                                   rows_16_byte_aligned(p.q) && rows_16_byte_aligned(p.k) &&
                                       rows_16_byte_aligned(p.v) && rows_16_byte_aligned(p.out));
}

// The tensor-core backward: the forward's rule, for every tensor it reads or
// writes (q, k, v, out, dout, dq, dk, dv).
bool use_mma_backward(const AttentionParams& p, int capability) {
  return use_mma_forward(p, capability) && rows_16_byte_aligned(p.dout) &&
         rows_16_byte_aligned(p.dq) && rows_16_byte_aligned(p.dk) && rows_16_byte_aligned(p.dv);
}

// Warps per block of the tensor-core forward: 1 (16 queries) when sequences
// hold at most 16 queries (one warp's mma rows), else 4 (64 queries). Same
// hint as forward_tpr.
int mma_forward_warps(const AttentionParams& p) {
  return forward_rows_hint(p) <= kMmaWarpRows ? 1 : 4;
}

}  // namespace

int attention_forward_cuda(const AttentionParams& p, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const Workspace w = carve(p);
  const bool mma = use_mma_forward(p, dispatch_compute_capability());
  const int mma_warps = mma_forward_warps(p);
  const int tpr = forward_tpr(p);
  const int q_rows = mma ? attention_mma_rows(mma_warps) : attention_rows(tpr);
  if (const int error = launch_plan(p, w, q_rows, kAttnKeyTile, stream)) return error;
  AttentionLaunch l;
  l.record = w.record;
  l.tile_starts = w.q_starts;
  l.grid_tiles = grid_tiles(p.total_q, p.batch, q_rows);
  if (l.grid_tiles > 0 && p.total_q > 0) {
    const int error = SPEMBED_DTYPE_SWITCH(p.dtype, T, [&] {
      if constexpr (std::is_same_v<T, float>) {
        return launch_attention_forward<T>(p, l, tpr, stream);
      } else {
        return mma ? launch_attention_mma_forward<T>(p, l, mma_warps, stream)
                   : launch_attention_forward<T>(p, l, tpr, stream);
      }
    });
    if (error != 0) return error;
  }
  return launch_report(p, w, stream);
}

int attention_backward_cuda(const AttentionParams& p, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const Workspace w = carve(p);
  const int max_d = p.head_dim <= 32 ? 32 : p.head_dim <= 64 ? 64 : p.head_dim <= 128 ? 128 : 256;
  const bool mma = use_mma_backward(p, dispatch_compute_capability());
  // Both schedules (q tiles of dQ, k tiles of dK/dV) use the same row count.
  const int rows = mma ? kMmaBwdRows : attention_rows(attention_backward_tpr(max_d));
  if (const int error = launch_plan(p, w, rows, rows, stream)) return error;
  AttentionLaunch q_launch;
  q_launch.record = w.record;
  q_launch.tile_starts = w.q_starts;
  q_launch.rowsum = w.rowsum;
  q_launch.grid_tiles = p.total_q > 0 ? grid_tiles(p.total_q, p.batch, rows) : 0;
  AttentionLaunch k_launch = q_launch;
  k_launch.tile_starts = w.k_starts;
  k_launch.grid_tiles = p.total_k > 0 ? grid_tiles(p.total_k, p.batch, rows) : 0;
  const int error = SPEMBED_DTYPE_SWITCH(p.dtype, T, [&] {
    if constexpr (std::is_same_v<T, float>) {
      return launch_attention_backward<T>(p, q_launch, k_launch, w.rowsum, stream);
    } else {
      return mma ? launch_attention_mma_backward<T>(p, q_launch, k_launch, w.rowsum, stream)
                 : launch_attention_backward<T>(p, q_launch, k_launch, w.rowsum, stream);
    }
  });
  if (error != 0) return error;
  return launch_report(p, w, stream);
}

}  // namespace spembed::detail
