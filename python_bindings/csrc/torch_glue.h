// Glue between at::Tensor and the spembed C API: DLTensor views, per-device
// handles, the current stream, workspace from torch's allocator, and the
// translation of a failed status into the matching Python exception.
//
// The op layer uses only device-generic c10 APIs (c10::DeviceGuard and
// c10::Stream::native_handle through the registered CUDA guard), so it needs
// neither CUDA headers nor libc10_cuda and loads into CPU-only torch builds.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <cstdint>

#include "spembed/spembed.h"

namespace spembed_torch {

// A borrowed DLTensor view of `t` (which must outlive the view). The shape
// and strides point into the tensor's own metadata.
struct View {
  DLTensor dl{};
  explicit View(const at::Tensor& t);
  DLTensor* get() { return &dl; }
};

// DLPack dtype of a torch dtype; fails for dtypes spembed does not take.
DLDataType dl_dtype(at::ScalarType type, const char* name);

// The handle that serves `device` (one per CUDA device, created on first use;
// CPU tensors use a CPU-side handle). Thread-safe.
spembed_handle_t handle_for(const c10::Device& device);

// torch's current stream on `device`, or NULL for the CPU.
spembed_stream_t stream_for(const c10::Device& device);

// Scratch of `bytes` from torch's allocator on `device` (an undefined tensor
// when bytes == 0). Keep the tensor alive until the op was queued.
at::Tensor workspace(const c10::Device& device, size_t bytes);

// Throws the Python-visible exception for a failed status: ValueError for
// INVALID_ARGUMENT and WORKSPACE_TOO_SMALL, IndexError for
// INDEX_OUT_OF_RANGE, NotImplementedError for NOT_SUPPORTED, RuntimeError
// otherwise. The message is the library's.
void check(spembed_status_t status, const char* op);

// A report tensor (int64 [SPEMBED_REPORT_SIZE]) on `device`.
at::Tensor new_report(const c10::Device& device);

// For a CUDA report: copies it to the host (a synchronisation) and throws
// the failure it records, if any. CPU calls report through their status.
void check_report(const at::Tensor& report, const char* op);

}  // namespace spembed_torch

namespace spembed_torch {

// Whether ops on CUDA copy their data-check report to the host and raise on
// a failure (a synchronisation per call). On by default; the environment
// variable SPEMBED_SYNC_CHECKS=0 turns it off for CUDA-graph capture, and
// then a rejected CUDA call leaves its outputs unwritten without raising.
bool sync_checks();

}  // namespace spembed_torch
