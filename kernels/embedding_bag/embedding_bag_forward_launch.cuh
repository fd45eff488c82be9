// Internal interface between the CUDA embedding bag forward's entry point
// (embedding_bag_forward.cu) and its kernels: launch plans, the tuning
// constants both sides use, and the launchers. Not part of the public API.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/embedding_bag/embedding_bag_params.h"
#include "kernels/embedding_bag/embedding_bag_tuning.h"

namespace spembed::detail {

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

}  // namespace spembed::detail
