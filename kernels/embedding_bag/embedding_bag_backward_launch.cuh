// Internal interface between the CUDA embedding bag backward's entry point
// (embedding_bag_backward.cu), its index pipeline (embedding_bag_backward_sort.cu)
// and its reduction kernels (embedding_bag_backward_reduce_kernel.cuh): the
// workspace layout, the launch plan and the launchers. Not part of the public API.
//
// Pipeline of the deterministic reduction (every step on the caller's stream,
// no host synchronisation; the counts it produces stay on the device):
//
//   prepare    key = linearized row (row_base + id) of each position, or the
//              sentinel total_rows for padding / skipped ids; value = position;
//              the bag of each position (with offsets) and, for MEAN, its count
//   sort       stable radix sort of (key, position) over the key's bits only
//   [MAX]      keep the first position of each (row, bag): flags, scan, scatter
//   runs       scan of the run heads: unique rows, run starts, run count
//   scan       per run: first sorted entry, first work item (exclusive sums)
//   expand     work item -> run, the list of multi-chunk ("hot") runs and
//              their partial rows, the counts (U, items); writes num_unique
//   reduce     one group per work item (run, chunk of SPEMBED_BACKWARD_CHUNK):
//              single-chunk runs finish with the epilogue (a)/(b)/(c), chunks of
//              hot runs write their sum to a partial slot
//   combine    one group per hot run: adds its chunk sums in order, epilogue
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/embedding_bag/embedding_bag_backward_params.h"
#include "kernels/embedding_bag/embedding_bag_backward_workspace.h"
#include "kernels/embedding_bag/embedding_bag_forward_launch.cuh"

namespace spembed::detail {

// Columns a lane owns per vector: 4 consecutive fp32 values (one 16-byte
// load of fp32 grad_output, 8 bytes of fp16 / bf16).
constexpr int kColsPerVec = 4;

// How the lane-group kernels lay onto the grid (plan_backward_groups).
struct BackwardLaunch {
  int32_t lanes = 1;            // G: lanes per work item (power of two, 1..32)
  int32_t vec_per_lane = 1;     // V: 4-column vectors per lane per column block (1..4)
  uint32_t grid = 0;            // blocks of kBackwardBlockThreads
  bool go_vec = false;          // grad_output base and row stride allow vector loads
  bool read_record = false;     // the check kernel ran: write nothing if it found bad data
  bool count_bad = false;       // this kernel counts SKIPped ids into the record
  bool do_dense = false;        // (a) in this kernel
  bool do_weight_grad = false;  // (d) in this kernel
};

// What the reduce kernel's contributions are (runtime; MAX is a template flag).
enum class ContribKind : uint8_t { kPlain, kWeighted, kMean, kMax };

__host__ __device__ inline ContribKind contrib_kind(const EmbeddingBagBackwardParams& p) {
  if (p.pooling == SPEMBED_POOLING_MAX) return ContribKind::kMax;
  if (p.pooling == SPEMBED_POOLING_MEAN) return ContribKind::kMean;
  return p.weights != nullptr ? ContribKind::kWeighted : ContribKind::kPlain;
}

// Index pipeline (embedding_bag_backward_sort.cu). Each returns a cudaError_t.
// Host-side CUB temp storage query (needs a device); 0 on success.
int backward_cub_temp_bytes(const EmbeddingBagBackwardParams& p, const BackwardWorkspace& ws,
                            size_t* bytes);
// Under ERROR with several tables: counts the ids outside their table.
int launch_backward_batched_id_checks(const EmbeddingBagBackwardParams& p, cudaStream_t stream);
// prepare .. expand; fills ws.sorted.
int launch_backward_index_pipeline(const EmbeddingBagBackwardParams& p, BackwardWorkspace& ws,
                                   const BackwardLaunch& prepare_plan, cudaStream_t stream);

// Lane-group kernels for one table dtype (instantiated per dtype, CMakeLists.txt).
// Bag-major: (a) by atomics and / or (d).
template <typename TableT>
int launch_backward_bag_kernel(const EmbeddingBagBackwardParams& p, const BackwardLaunch& plan,
                               cudaStream_t stream);
// Reduce (one group per work item) then combine (one group per hot run).
template <typename TableT>
int launch_backward_reduce(const EmbeddingBagBackwardParams& p, const BackwardWorkspace& ws,
                           const BackwardLaunch& plan, cudaStream_t stream);

}  // namespace spembed::detail
