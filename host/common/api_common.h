// What every C API entry point shares, whatever the operation: the handle
// check, the optional report tensor, the caller's CUDA workspace, and running
// a launch on the tensors' device.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "host/common/errors.h"
#include "spembed/spembed.h"

namespace spembed::detail {

constexpr DLDataType kFloat32{kDLFloat, 32, 1};
constexpr DLDataType kInt64{kDLInt, 64, 1};
constexpr size_t kWorkspaceAlignment = 16;  // the check record is updated with 8-byte atomics

spembed_status_t check_handle(spembed_handle_t handle);

// A workspace size query's device type: kDLCPU or kDLCUDA.
spembed_status_t check_device_type(DLDeviceType device_type);
// A workspace size query's ids: int32 or int64, nnz >= 0.
spembed_status_t check_index_query(DLDataType index_dtype, int64_t nnz);

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
