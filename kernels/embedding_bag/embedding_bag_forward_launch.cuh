// Internal interface between the CUDA embedding bag forward's entry point
// (embedding_bag_forward.cu) and its kernels: launch plans, the tuning
// constants both sides use, and the launchers. Not part of the public API.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/embedding_bag/embedding_bag_params.h"
#include "kernels/embedding_bag/embedding_bag_plan.h"
#include "kernels/embedding_bag/embedding_bag_tuning.h"

namespace spembed::detail {

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
// explicitly instantiated per dtype (embedding_bag/CMakeLists.txt). Returns the
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
