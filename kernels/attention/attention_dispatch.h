// Which attention kernels a call runs: a pure function of the device's
// compute capability and the call's dtype, head dim and alignment, kept apart
// from the kernels so that the CPU tests check every decision
// (tests/attention/test_attention_dispatch.cpp) without a device.
#pragma once

#include <cstdint>

#include "kernels/common/types.h"

namespace spembed::detail {

constexpr int kMmaMaxHeadDim = 128;  // largest head_dim bucket of the tensor-core path
constexpr int kMmaHeadDimAlign = 8;  // head_dim and strides: multiples of 16 bytes of fp16
// cp.async and the bf16 mma.sync forms first exist on sm_80 (Ampere); the
// tensor-core kernels are compiled as a trap for older targets
// (kernels/common/ptx.cuh), so an older device must never be sent to them.
constexpr int kMmaMinComputeCapability = 80;

// major * 10 + minor, as nvcc's sm_XY numbering; 0 when unknown.
constexpr int compute_capability(int major, int minor) { return major * 10 + minor; }

// Whether the tensor-core kernels (forward, or backward: the caller passes
// the alignment of every tensor that pass reads or writes) serve a call:
// fp16 / bf16, head_dim a multiple of 8 up to 128, every row 16-byte aligned
// (cp.async and the output stores move 16 bytes), on sm_80 or newer. Anything
// else takes the SIMT kernels, which serve every dtype, head dim and device.
constexpr bool use_tensor_core_attention(int compute_capability, DType dtype, int64_t head_dim,
                                         bool rows_16_byte_aligned) {
  return compute_capability >= kMmaMinComputeCapability &&
         (dtype == DType::kF16 || dtype == DType::kBF16) && head_dim > 0 &&
         head_dim % kMmaHeadDimAlign == 0 && head_dim <= kMmaMaxHeadDim && rows_16_byte_aligned;
}

}  // namespace spembed::detail
