// Library-wide entry points: version, status names, errors, handles, reports.
#include <cuda_runtime_api.h>

#include <cinttypes>

#include "host/common/errors.h"
#include "host/common/handle.h"
#include "kernels/common/cpu_parallel.h"

using spembed::detail::fail;
using spembed::detail::guarded;

extern "C" {

int spembed_get_version(void) { return SPEMBED_VERSION; }

const char* spembed_status_string(spembed_status_t status) {
  switch (status) {
    case SPEMBED_STATUS_SUCCESS:
      return "SPEMBED_STATUS_SUCCESS";
    case SPEMBED_STATUS_INVALID_ARGUMENT:
      return "SPEMBED_STATUS_INVALID_ARGUMENT";
    case SPEMBED_STATUS_NOT_SUPPORTED:
      return "SPEMBED_STATUS_NOT_SUPPORTED";
    case SPEMBED_STATUS_INDEX_OUT_OF_RANGE:
      return "SPEMBED_STATUS_INDEX_OUT_OF_RANGE";
    case SPEMBED_STATUS_WORKSPACE_TOO_SMALL:
      return "SPEMBED_STATUS_WORKSPACE_TOO_SMALL";
    case SPEMBED_STATUS_CUDA_ERROR:
      return "SPEMBED_STATUS_CUDA_ERROR";
    case SPEMBED_STATUS_ALLOC_FAILED:
      return "SPEMBED_STATUS_ALLOC_FAILED";
    case SPEMBED_STATUS_INTERNAL_ERROR:
      return "SPEMBED_STATUS_INTERNAL_ERROR";
  }
  return "SPEMBED_STATUS_UNKNOWN";
}

const char* spembed_last_error(void) { return spembed::detail::last_error_message(); }

spembed_status_t spembed_set_num_threads(int threads) {
  return guarded("spembed_set_num_threads", [&] {
    if (threads < 0) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "threads: must be >= 0 (0: the default), got %d",
                  threads);
    }
    spembed::detail::set_cpu_threads(threads);
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_set_cpu_parallel_runner(spembed_parallel_runner_t runner, void* user) {
  return guarded("spembed_set_cpu_parallel_runner", [&] {
    spembed::detail::set_cpu_parallel_runner(runner, user);
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_get_num_threads(int* threads) {
  return guarded("spembed_get_num_threads", [&] {
    if (threads == nullptr)
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "threads: must not be NULL");
    *threads = spembed::detail::cpu_threads();
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_create(spembed_handle_t* handle) {
  return guarded("spembed_create", [&] {
    if (handle == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "handle: must not be NULL");
    auto* h = new spembed_handle_st;
    // No usable device (no driver, no GPU) leaves a CPU-only handle.
    int count = 0;
    int device = -1;
    if (cudaGetDeviceCount(&count) == cudaSuccess && count > 0 &&
        cudaGetDevice(&device) == cudaSuccess) {
      h->cuda_device = device;
    }
    cudaGetLastError();  // a failed query must not leak into the caller's error state
    *handle = h;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_destroy(spembed_handle_t handle) {
  return guarded("spembed_destroy", [&] {
    if (handle == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "handle: must not be NULL");
    delete handle;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_handle_device(spembed_handle_t handle, int* cuda_device) {
  return guarded("spembed_handle_device", [&] {
    if (handle == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "handle: must not be NULL");
    if (cuda_device == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "cuda_device: must not be NULL");
    }
    *cuda_device = handle->cuda_device;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_report_status(const int64_t report[SPEMBED_REPORT_SIZE]) {
  return guarded("spembed_report_status", [&] {
    if (report == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "report: must not be NULL");
    const int64_t status = report[SPEMBED_REPORT_STATUS];
    if (status == SPEMBED_STATUS_SUCCESS) return SPEMBED_STATUS_SUCCESS;
    if (status == SPEMBED_STATUS_INVALID_ARGUMENT) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "offsets[%" PRId64
                  "]: offsets must start at 0, be non-decreasing and end at "
                  "their total (nnz; for varlen attention, position i <= B is cu_seqlens_q[i] "
                  "and B + 1 + i is cu_seqlens_k[i])",
                  report[SPEMBED_REPORT_BAD_OFFSET_POSITION]);
    }
    if (status == SPEMBED_STATUS_INDEX_OUT_OF_RANGE) {
      return fail(SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
                  "indices[%" PRId64 "]=%" PRId64 " is out of range of its table (%" PRId64
                  " out-of-range ids in all)",
                  report[SPEMBED_REPORT_BAD_INDEX_POSITION], report[SPEMBED_REPORT_BAD_INDEX_VALUE],
                  report[SPEMBED_REPORT_BAD_INDEX_COUNT]);
    }
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "report: unknown status %" PRId64, status);
  });
}

}  // extern "C"
