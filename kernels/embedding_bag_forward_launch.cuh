// Internal interface between the CUDA embedding bag forward's entry point
// (embedding_bag_forward.cu) and its kernels: launch plans, the tuning
// constants both sides use, and the launchers. Not part of the public API.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/embedding_bag_params.h"

namespace spembed::detail {

// The "none" value of a DataCheckRecord position.
constexpr unsigned long long kNoPosition = ~0ull;

// Threads per block of the lookup kernel, its __launch_bounds__ and its launch
// block size. 4 warps, a multiple of every group size (1..32 lanes): the
// kernels use 80-128 registers, and small blocks let an SM fill its register
// file in finer steps (at 96 registers, 5 blocks of 128 = 20 warps fit, but
// only 2 blocks of 256 = 16 warps).
constexpr int kForwardBlockThreads = 128;
// Resident blocks per SM the lookup kernel's registers must allow (its
// __launch_bounds__): at most 65536 / (4 x 128) = 128 registers per thread,
// so at least 512 threads per SM. Stating it also stops ptxas for sm_90 from
// trading a few spilled bytes for occupancy, which it does with a bare
// __launch_bounds__.
constexpr int kForwardMinBlocksPerSm = 4;

// 16-byte table loads a lane keeps in flight: the vectors of up to
// kVecsInFlight / kVecPerThread rows are loaded before the first is
// accumulated. 8 x 16 B = 128 B per lane; at the 512-640 threads per SM the
// kernels' 90-128 registers allow, that is 64-80 KiB per SM, 2.5-3x the
// bandwidth-delay product of an H100's HBM3 (3.35 TB/s x ~1 us / 132 SMs
// ~ 25 KiB). Its 32 registers still leave room for the accumulators.
constexpr int kVecsInFlight = 8;

// Output elements a lane may accumulate: fp32 sums, or for MAX the max and
// its argmax row (up to 3 registers per element with int64 ids). 16 sums
// (4 fp32 or 2 fp16 vectors) plus the 32 registers of kVecsInFlight keep the
// kernels near 90-100 registers, 5 blocks per SM; 32 fp16 sums would cost a
// block per SM for the same bytes in flight.
constexpr int kMaxSumAccumulators = 16;
constexpr int kMaxMaxAccumulators = 8;

// What the lookup kernel computes per bag. MEAN is kSum plus a division at the
// end, and NONE is kSum or kWeightedSum over bags of one id; both are runtime
// flags, not kinds, since they cost nothing in the inner loop.
enum class PoolKind : uint8_t { kSum, kWeightedSum, kMax };

// Largest vectors-per-lane for a kind, given the elements per vector (4 or 8
// for 16-byte vectors of fp32 or fp16/bf16, 1 for element-wise loads): a
// power of two <= 4 whose accumulators fit the kind's register budget. 4 keeps
// at least two rows in flight per lane (kVecsInFlight / 4).
constexpr int max_vec_per_thread(PoolKind kind, int elems_per_vec) {
  const int budget = kind == PoolKind::kMax ? kMaxMaxAccumulators : kMaxSumAccumulators;
  int v = 4;
  while (v > 1 && v * elems_per_vec > budget) v /= 2;
  return v;
}

// Group shape (lanes G, vectors per lane V) for rows of `row_vecs` vectors:
// the fewest lanes that cover the row with the kind's largest V, at most a
// warp; rows wider than 32 x V vectors are split into column chunks. Fewer
// lanes per row means more bags per warp and more bytes in flight per lane:
// short bags (one-hot lookups) are a chain of dependent loads (offsets, id,
// row), so what hides it is the number of bags in flight, not the width of
// one load. (D=16 fp32: one lane per bag, 32 bags per warp.)
struct GroupShape {
  int lanes;
  int vec_per_thread;
};

constexpr int next_pow2(int64_t x) {
  int p = 1;
  while (p < x && p < (1 << 30)) p *= 2;
  return p;
}

constexpr GroupShape plan_group_shape(PoolKind kind, int elems_per_vec, int64_t row_vecs) {
  const int vmax = max_vec_per_thread(kind, elems_per_vec);
  int lanes = next_pow2((row_vecs + vmax - 1) / vmax);
  if (lanes > 32) lanes = 32;
  const int v = next_pow2((row_vecs + lanes - 1) / lanes);
  return {lanes, v < vmax ? v : vmax};
}

// The shapes plan_group_shape can return: the only ones compiled.
constexpr bool is_planned_shape(PoolKind kind, int elems_per_vec, int lanes, int vec) {
  const int vmax = max_vec_per_thread(kind, elems_per_vec);
  return vec <= vmax && (lanes == 1 || vec == vmax);
}

// How a lookup is laid onto the grid; chosen on the host by plan_forward()
// (embedding_bag_forward.cu), read by the lookup kernel.
struct ForwardLaunch {
  int64_t num_items = 0;       // work items: bags x column chunks
  int64_t chunks = 1;          // column chunks per bag (rows wider than 32 lanes x V vectors)
  int32_t lanes = 1;           // G: lanes per work item, 1..32
  int32_t vec_per_thread = 1;  // V: vectors per lane per row; 1, 2 or 4
  uint32_t grid = 0;           // blocks of kForwardBlockThreads
  PoolKind kind = PoolKind::kSum;
  bool vec16 = false;          // 16-byte vectors (p.rows_16b_aligned), else single elements
  bool read_record = false;    // the check kernel ran: write nothing if it found bad data
  bool count_bad = false;      // count out-of-range ids in the record (SKIP, record in use)
  bool out_vector_ok = false;  // output base and row stride allow a vector's outputs in one store
};

// Lookup kernel launcher for one table dtype (float, __half, __nv_bfloat16),
// explicitly instantiated in embedding_bag_pooled_<dtype>.cu. Returns the
// launch's cudaError_t.
template <typename TableT>
int launch_embedding_bag_pooled(const EmbeddingBagForwardParams& p, const ForwardLaunch& plan,
                                cudaStream_t stream);

// Data-check kernels (embedding_bag_checks.cu). Each returns a cudaError_t.
// Resets the DataCheckRecord in p.workspace.
int launch_reset_check_record(const EmbeddingBagForwardParams& p, cudaStream_t stream);
// Flags bad offsets (when p.offsets is set) and, with `check_ids`, counts ids
// outside their table's rows.
int launch_data_checks(const EmbeddingBagForwardParams& p, bool check_ids, cudaStream_t stream);
// Writes p.report from the record.
int launch_write_report(const EmbeddingBagForwardParams& p, cudaStream_t stream);

// The error of the launch just queued; with SPEMBED_DEBUG_SYNC, also waits for
// it to finish so that a fault is reported by the launch that caused it.
inline int launch_status(cudaStream_t stream) {
  cudaError_t status = cudaGetLastError();
#ifdef SPEMBED_DEBUG_SYNC
  if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
#else
  (void)stream;
#endif
  return static_cast<int>(status);
}

}  // namespace spembed::detail
