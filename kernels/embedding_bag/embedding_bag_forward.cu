// CUDA embedding bag forward: the entry point host/ calls. Queues, on the
// caller's stream and without synchronising or allocating:
//
//   1. reset of the DataCheckRecord in p.workspace   (if checks run or a report is wanted)
//   2. data checks: offsets, and ids under ERROR     (if offsets are given or ERROR)
//   3. the lookup (embedding_bag_pooled_kernel.cuh), which writes nothing if
//      step 2 found a bad offset or, under ERROR, a bad id
//   4. the report                                    (if p.report is set)
//
// This file also plans the lookup's grid (plan_forward): lanes per bag, vectors
// per lane and column chunks, from the widest table's dim.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/static_switch.cuh"
#include "kernels/embedding_bag/embedding_bag_forward.h"
#include "kernels/embedding_bag/embedding_bag_forward_launch.cuh"

namespace spembed::detail {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Lanes, vectors per lane and column chunks from the widest table's dim (see
// plan_group_shape), the grid, and whether outputs can be stored a vector at
// a time.
ForwardLaunch plan_forward(const EmbeddingBagForwardParams& p, int64_t num_bags) {
  ForwardLaunch plan;
  plan.kind = p.pooling == SPEMBED_POOLING_MAX ? PoolKind::kMax
              : p.weights != nullptr           ? PoolKind::kWeightedSum
                                               : PoolKind::kSum;
  plan.vec16 = p.rows_16b_aligned;
  const int elems_per_vec = plan.vec16 ? 16 / dtype_bytes(p.table_dtype) : 1;
  const int64_t row_vecs = std::max<int64_t>(ceil_div(p.max_dim, elems_per_vec), 1);
  const GroupShape shape = plan_group_shape(plan.kind, elems_per_vec, row_vecs);
  plan.lanes = shape.lanes;
  plan.vec_per_thread = shape.vec_per_thread;
  plan.chunks = ceil_div(row_vecs, int64_t{shape.lanes} * shape.vec_per_thread);
  plan.num_items = num_bags * plan.chunks;
  const int64_t items_per_block = kForwardBlockThreads / shape.lanes;
  plan.grid = static_cast<uint32_t>(
      std::min<int64_t>(ceil_div(plan.num_items, items_per_block), int64_t{2147483647}));

  // With 16-byte table vectors every dim, hence every out_col, is a multiple
  // of elems_per_vec (the kernel re-checks out_col); the output's base and row
  // stride must allow stores of a vector's worth of outputs.
  const int64_t out_bytes = dtype_bytes(p.out_dtype);
  const int64_t store_align = std::min<int64_t>(16, elems_per_vec * out_bytes);
  plan.out_vector_ok = elems_per_vec > 1 &&
                       reinterpret_cast<uintptr_t>(p.output) % store_align == 0 &&
                       (p.out_row_stride * out_bytes) % store_align == 0;
  return plan;
}

}  // namespace

int embedding_bag_forward_cuda(const EmbeddingBagForwardParams& p, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const bool check_ids = p.bounds_policy == SPEMBED_BOUNDS_ERROR && p.nnz > 0;
  const bool run_checks = p.offsets != nullptr || check_ids;
  const bool use_record = run_checks || p.report != nullptr;

  if (use_record) {
    if (const int error = launch_reset_check_record(p, stream)) return error;
  }
  if (run_checks) {
    if (const int error = launch_data_checks(p, check_ids, stream)) return error;
  }

  // NONE is SUM over bags of exactly one id, one per output row.
  EmbeddingBagForwardParams lookup = p;
  if (p.pooling == SPEMBED_POOLING_NONE) {
    lookup.offsets = nullptr;
    lookup.fixed_bag_size = 1;
    lookup.num_tables = 1;
    lookup.bags_per_table = p.nnz;
    lookup.argmax = nullptr;
  }
  const int64_t num_bags = lookup.num_bags();
  ForwardLaunch plan = plan_forward(lookup, num_bags);
  plan.read_record = run_checks;
  plan.count_bad = use_record && p.bounds_policy == SPEMBED_BOUNDS_SKIP;
  if (plan.num_items > 0) {
    const int error = SPEMBED_TABLE_DTYPE_SWITCH(p.table_dtype, TableT, [&] {
      return launch_embedding_bag_pooled<TableT>(lookup, plan, stream);
    });
    if (error != 0) return error;
  }

  if (p.report != nullptr) return launch_write_report(p, stream);
  return 0;
}

}  // namespace spembed::detail
