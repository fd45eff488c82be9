// Validation and dispatch pieces shared by the embedding bag forward and
// backward entry points (host/embedding_bag.cpp, host/embedding_bag_backward.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "host/errors.h"
#include "kernels/embedding_bag_params.h"
#include "spembed/spembed.h"

namespace spembed::detail {

constexpr DLDataType kFloat32{kDLFloat, 32, 1};
constexpr DLDataType kInt64{kDLInt, 64, 1};
constexpr size_t kWorkspaceAlignment = 16;  // the check record is updated with 8-byte atomics

spembed_status_t check_handle(spembed_handle_t handle);
// `batch` is non-NULL and was created with `handle` (which is not checked here).
spembed_status_t check_batch_of(spembed_handle_t handle, spembed_table_batch_t batch);

// The defaults when `given` is NULL; fails on unknown enum values.
spembed_status_t resolve_options(const spembed_embedding_bag_options_t* given,
                                 spembed_embedding_bag_options_t* options);

// Describes one table view; fails if it is not a usable table.
spembed_status_t describe_table(const DLTensor& table, const char* name, DType* dtype,
                                TableMeta* meta);

// Validates the inputs of a lookup (indices, offsets, per-sample weights)
// against `options` for `num_tables` tables on `device`, and fills the
// index_type, indices, nnz, offsets, fixed_bag_size, num_tables,
// bags_per_table and weights fields of `p`.
spembed_status_t check_lookup_inputs(DLDevice device, int64_t num_tables, const DLTensor* indices,
                                     const DLTensor* offsets, const DLTensor* weights,
                                     const spembed_embedding_bag_options_t& options,
                                     EmbeddingBagForwardParams* p);

// The optional report tensor (NULL is fine): int64 [SPEMBED_REPORT_SIZE] on `device`.
spembed_status_t check_report(DLTensor* report, DLDevice device, int64_t** data);

// A CUDA workspace of at least `needed` bytes, aligned; `query` names the size query.
spembed_status_t check_cuda_workspace(void* workspace, size_t workspace_bytes, size_t needed,
                                      const char* query);

// Makes `device_id` current (restoring the caller's device afterwards) and
// runs `launch`, which returns a cudaError_t value.
template <typename Launch>
spembed_status_t launch_on_device(int device_id, Launch&& launch) {
  int current = -1;
  cudaError_t status = cudaGetDevice(&current);
  if (status == cudaSuccess && current != device_id) status = cudaSetDevice(device_id);
  if (status != cudaSuccess) {
    return fail(SPEMBED_STATUS_CUDA_ERROR, "cuda:%d: cannot make it the current device: %s",
                device_id, cudaGetErrorString(status));
  }
  const int error = launch();
  if (current != device_id) cudaSetDevice(current);
  if (error != 0) {
    return fail(SPEMBED_STATUS_CUDA_ERROR, "CUDA launch failed: %s",
                cudaGetErrorString(static_cast<cudaError_t>(error)));
  }
  return SPEMBED_STATUS_SUCCESS;
}

}  // namespace spembed::detail
