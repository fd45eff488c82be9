// CUDA embedding bag backward: the entry point host/ calls, its workspace
// layout and its launch plan. Queues, on the caller's stream and without
// synchronising or allocating:
//
//   0. several tables: their entries copied into the workspace
//   1. reset of the DataCheckRecord at workspace offset 0 (the forward's)
//   2. data checks: offsets, and ids under ERROR (the forward's check kernel;
//      for several tables the ids by launch_backward_batched_id_checks)
//   3. bag kernel: (d), and (a) under ATOMIC                   (if requested)
//   4. the index pipeline and the deterministic reduction with its epilogue
//      (a)/(b)/(c) (embedding_bag_backward_launch.cuh)         (if requested)
//   5. the report                                              (if p.report)
// Every kernel after step 2 writes nothing if the record shows a bad offset
// or, under ERROR, a bad id. (d) runs before step 4 updates any weight.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/static_switch.cuh"
#include "kernels/embedding_bag/embedding_bag_backward.h"
#include "kernels/embedding_bag/embedding_bag_backward_launch.cuh"

namespace spembed::detail {
namespace {

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The power of two >= x, at most a warp.
int pow2_lanes(int64_t x) { return std::min(next_pow2(x), 32); }

// G lanes and V vectors of 4 columns per lane: the fewest lanes that cover
// max_dim with V <= 4 (2 for float64 tables); rows wider than 32 x 4 x 4 =
// 512 columns (256 for float64) take several column blocks.
void plan_backward_groups(int32_t max_dim, DType table_dtype, BackwardLaunch* plan) {
  const int max_vec = table_dtype == DType::kF64 ? kMaxVecPerLaneF64 : kMaxVecPerLane;
  const int64_t vecs = std::max<int64_t>(ceil_div(max_dim, kColsPerVec), 1);
  plan->lanes = pow2_lanes(ceil_div(vecs, max_vec));
  plan->vec_per_lane = std::min(pow2_lanes(ceil_div(vecs, plan->lanes)), max_vec);
}

// The forward's view of the inputs, for its check and report kernels.
EmbeddingBagForwardParams forward_view(const EmbeddingBagBackwardParams& p) {
  EmbeddingBagForwardParams f;
  f.table_dtype = p.table_dtype;
  f.out_dtype = DType::kF32;
  f.index_type = p.index_type;
  f.pooling = p.pooling;
  f.bounds_policy = p.bounds_policy;
  f.padding_idx = p.padding_idx;
  f.indices = p.indices;
  f.nnz = p.nnz;
  f.offsets = p.pooling == SPEMBED_POOLING_NONE ? nullptr : p.offsets;
  f.fixed_bag_size = p.fixed_bag_size;
  f.weights = p.weights;
  f.num_tables = p.num_tables;
  f.bags_per_table = p.bags_per_table;
  // The forward's table array is not available for several tables: its
  // check kernel then checks offsets only (see the entry point).
  f.tables = nullptr;
  f.single_table.data = p.single_table.weights;
  f.single_table.rows = p.single_table.rows;
  f.single_table.row_stride = p.single_table.weight_stride;
  f.single_table.dim = p.single_table.dim;
  f.max_dim = p.max_dim;
  f.report = p.report;
  f.workspace = p.workspace;
  return f;
}

struct TableUpload {
  BackwardTableMeta tables[kTablesPerUpload];
  BackwardTableMeta* dst;
  int count;
};

// Copies the call's table entries into the workspace. They travel as kernel
// parameters, so a captured graph replays them with the values of the
// captured call, and nothing is allocated or synchronised.
__global__ void upload_tables_kernel(const __grid_constant__ TableUpload upload) {
  if (static_cast<int>(threadIdx.x) < upload.count) {
    upload.dst[threadIdx.x] = upload.tables[threadIdx.x];
  }
}

int upload_tables(const EmbeddingBagBackwardParams& p, BackwardTableMeta* dst,
                  cudaStream_t stream) {
  for (int64_t first = 0; first < p.num_tables; first += kTablesPerUpload) {
    TableUpload upload{};
    upload.count = static_cast<int>(std::min<int64_t>(kTablesPerUpload, p.num_tables - first));
    for (int i = 0; i < upload.count; ++i) upload.tables[i] = p.tables[first + i];
    upload.dst = dst + first;
    launch_kernel(upload_tables_kernel, 1, kTablesPerUpload, 0, stream, upload);
    if (const int error = launch_status(stream)) return error;
  }
  return 0;
}

}  // namespace

size_t embedding_bag_backward_cuda_workspace(int64_t nnz, int64_t num_tables, int64_t total_rows,
                                             int32_t max_dim) {
  // The call plans with the same function and the same arguments.
  return plan_backward_workspace(nullptr, nnz, num_tables, total_rows, max_dim).total_bytes;
}

int embedding_bag_backward_cuda(const EmbeddingBagBackwardParams& host_p, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const bool none = host_p.pooling == SPEMBED_POOLING_NONE;
  const int64_t num_bags = none ? host_p.nnz : host_p.num_bags();
  // The layout depends on what the size query is given only (not on the
  // bag count): host/ has checked workspace_bytes against the same plan.
  BackwardWorkspace ws = plan_backward_workspace(host_p.workspace, host_p.nnz, host_p.num_tables,
                                                 host_p.total_rows, host_p.max_dim);
  if (ws.total_bytes > host_p.workspace_bytes) return static_cast<int>(cudaErrorInvalidValue);

  // The kernels' view of the params: with several tables, the table array
  // is the workspace's copy (host_p.tables is in host memory).
  EmbeddingBagBackwardParams p = host_p;
  if (p.num_tables > 1) {
    if (const int error = upload_tables(host_p, ws.tables, stream)) return error;
    p.tables = ws.tables;
  }

  const EmbeddingBagForwardParams f = forward_view(p);
  const bool check_ids = p.bounds_policy == SPEMBED_BOUNDS_ERROR && p.nnz > 0;
  const bool run_checks = f.offsets != nullptr || check_ids;
  const bool use_record = run_checks || p.report != nullptr;
  const bool count_bad = use_record && p.bounds_policy == SPEMBED_BOUNDS_SKIP;

  // Which passes: ATOMIC does (a) in the bag pass; everything else that
  // reduces per row needs the sort.
  const bool atomic_dense = p.dense_grad && p.algorithm == SPEMBED_BACKWARD_ATOMIC;
  const bool sorting = p.has_optimizer || p.unique_ids != nullptr ||
                       (p.dense_grad && p.algorithm == SPEMBED_BACKWARD_DETERMINISTIC);
  const bool bag_pass = atomic_dense || p.grad_weights != nullptr;

  BackwardLaunch plan;
  plan_backward_groups(p.max_dim, p.table_dtype, &plan);
  const int64_t go_bytes = dtype_bytes(p.grad_dtype);
  plan.go_vec = reinterpret_cast<uintptr_t>(p.grad_output) % (4 * go_bytes) == 0 &&
                p.grad_row_stride % 4 == 0;
  plan.read_record = run_checks;

  if (sorting) {
    size_t cub_bytes = 0;
    if (const int error = backward_cub_temp_bytes(p, ws, &cub_bytes)) return error;
    if (cub_bytes > ws.cub_temp_bytes) return static_cast<int>(cudaErrorInvalidValue);
    ws.read_record = run_checks;
  }

  if (use_record) {
    if (const int error = launch_reset_check_record(f, stream)) return error;
  }
  if (run_checks) {
    if (const int error = launch_data_checks(f, check_ids && p.num_tables == 1, stream)) {
      return error;
    }
    if (check_ids && p.num_tables > 1) {
      if (const int error = launch_backward_batched_id_checks(p, stream)) return error;
    }
  }

  if (bag_pass) {
    BackwardLaunch bag_plan = plan;
    bag_plan.do_dense = atomic_dense;
    bag_plan.do_weight_grad = p.grad_weights != nullptr;
    bag_plan.count_bad = count_bad && !sorting;
    const int error = SPEMBED_TABLE_DTYPE_SWITCH(p.table_dtype, TableT, [&] {
      return launch_backward_bag_kernel<TableT>(p, bag_plan, stream);
    });
    if (error != 0) return error;
  }

  if (sorting) {
    const cudaError_t e = cudaMemsetAsync(ws.counters, 0, sizeof(BackwardCounters), stream);
    if (e != cudaSuccess) return static_cast<int>(e);
    // Bags per group of the prepare kernel: the average bag length.
    BackwardLaunch prepare_plan = plan;
    prepare_plan.lanes = pow2_lanes(num_bags > 0 ? ceil_div(p.nnz, num_bags) : 1);
    prepare_plan.count_bad = count_bad;
    if (const int error = launch_backward_index_pipeline(p, ws, prepare_plan, stream)) {
      return error;
    }
    BackwardLaunch reduce_plan = plan;
    reduce_plan.do_dense = p.dense_grad && !atomic_dense;
    const int error = SPEMBED_TABLE_DTYPE_SWITCH(p.table_dtype, TableT, [&] {
      return launch_backward_reduce<TableT>(p, ws, reduce_plan, stream);
    });
    if (error != 0) return error;
  }

  if (p.report != nullptr) return launch_write_report(f, stream);
  return 0;
}

}  // namespace spembed::detail
