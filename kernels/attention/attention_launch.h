// The interface between the attention entry points (attention.cu: plan,
// dispatch, report) and the kernel bodies (attention_kernel.cuh,
// attention_mma_kernel.cuh, attention_mma_bwd_kernel.cuh): the shapes both
// sides plan with, what the host hands a launch, and the launchers. The
// launchers are explicitly instantiated once per dtype in files CMake
// generates (kernels/attention/CMakeLists.txt), so attention.cu compiles no
// kernel body.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/attention/attention_params.h"
#include "kernels/attention/attention_tuning.h"
#include "kernels/common/types.h"

namespace spembed::detail {

SPEMBED_HOST_DEVICE inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Lanes per row in the backward: 4 (32 rows per block) up to head_dim 128;
// 8 (16 rows) at 256, which keeps dK + dV accumulators at 64 registers.
constexpr int attention_backward_tpr(int max_d) { return max_d > 128 ? 8 : 4; }
constexpr int attention_rows(int tpr) { return kAttnThreads / tpr; }

// Device record of the cu_seqlens checks, at the start of the workspace.
struct AttentionRecord {
  unsigned long long first_bad_position;  // kNoPosition when sound
};

// What the host planned for one launch (device pointers into the workspace).
struct AttentionLaunch {
  const AttentionRecord* record = nullptr;
  const int32_t* tile_starts = nullptr;  // q tiles (forward, dQ) or k tiles (dK/dV): [B + 1]
  const float* rowsum = nullptr;         // backward: rowsum(dO * O) [heads, total_q]
  int64_t grid_tiles = 0;                // blocks along x (a bound on the tiles)
};

constexpr int kMmaWarpRows = 16;  // query rows per warp: the M of m16n8k16
constexpr int attention_mma_rows(int warps) { return kMmaWarpRows * warps; }

// Query rows per dQ block and keys per dK/dV block of the tensor-core
// backward: both schedules of the plan kernel use it.
constexpr int kMmaBwdRows = attention_mma_rows(kMmaBwdWarps);

// SIMT kernels (attention_kernel.cuh), every dtype.
template <typename T>
int launch_attention_forward(const AttentionParams& p, const AttentionLaunch& l, int forward_tpr,
                             cudaStream_t stream);
template <typename T>
int launch_attention_backward(const AttentionParams& p, const AttentionLaunch& q_launch,
                              const AttentionLaunch& k_launch, float* rowsum, cudaStream_t stream);

// Tensor-core kernels (attention_mma_kernel.cuh, attention_mma_bwd_kernel.cuh),
// fp16 / bf16; the call must satisfy use_tensor_core_attention
// (attention_dispatch.h).
template <typename T>
int launch_attention_mma_forward(const AttentionParams& p, const AttentionLaunch& l, int warps,
                                 cudaStream_t stream);
template <typename T>
int launch_attention_mma_backward(const AttentionParams& p, const AttentionLaunch& q_launch,
                                  const AttentionLaunch& k_launch, float* rowsum,
                                  cudaStream_t stream);

}  // namespace spembed::detail
