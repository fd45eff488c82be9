// The checks every C API entry point shares (api_common.h).
#include "host/common/api_common.h"

#include <cinttypes>
#include <cstdint>

#include "host/common/tensor_checks.h"

namespace spembed::detail {

spembed_status_t check_handle(spembed_handle_t handle) {
  if (handle == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "handle: must not be NULL");
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_device_type(DLDeviceType device_type) {
  if (device_type != kDLCPU && device_type != kDLCUDA) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "device_type: %d is not supported; use kDLCPU or kDLCUDA",
                static_cast<int>(device_type));
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_index_query(DLDataType index_dtype, int64_t nnz) {
  const bool int32 = index_dtype.code == kDLInt && index_dtype.bits == 32;
  const bool int64 = index_dtype.code == kDLInt && index_dtype.bits == 64;
  if (!(int32 || int64) || index_dtype.lanes != 1) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "index_dtype: must be int32 or int64");
  }
  if (nnz < 0) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "nnz: %" PRId64 " must be >= 0", nnz);
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_report(DLTensor* report, DLDevice device, int64_t** data) {
  if (report == nullptr) return SPEMBED_STATUS_SUCCESS;
  SPEMBED_RETURN_IF_ERROR(check_same_device(*report, "report", device));
  SPEMBED_RETURN_IF_ERROR(check_dtype_is(*report, "report", kInt64, "int64"));
  SPEMBED_RETURN_IF_ERROR(check_vector(*report, "report", SPEMBED_REPORT_SIZE));
  const void* pointer = nullptr;
  SPEMBED_RETURN_IF_ERROR(check_data(*report, "report", &pointer));
  *data = static_cast<int64_t*>(const_cast<void*>(pointer));
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_cuda_workspace(void* workspace, size_t workspace_bytes, size_t needed,
                                      const char* query) {
  if (workspace_bytes < needed) {
    return fail(SPEMBED_STATUS_WORKSPACE_TOO_SMALL,
                "workspace: %zu bytes given, %zu needed (see %s)", workspace_bytes, needed, query);
  }
  if (workspace == nullptr && needed > 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "workspace: must not be NULL on CUDA");
  }
  if (reinterpret_cast<uintptr_t>(workspace) % kWorkspaceAlignment != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "workspace: must be aligned to %zu bytes",
                kWorkspaceAlignment);
  }
  return SPEMBED_STATUS_SUCCESS;
}

}  // namespace spembed::detail
