// Every tuning constant of the attention kernels, with the reason for its
// value. None is measured yet (no GPU has run them): the same values serve
// sm_80 and sm_90. A value that a benchmark changes names its
// benchmarks/results file here; a value that differs by architecture becomes
// a function of it.
#pragma once

#include <cstdint>

namespace spembed::detail {

// ---- SIMT kernels (attention_kernel.cuh) ----
constexpr int kAttnThreads = 128;  // threads per block of every compute kernel
constexpr int kAttnKeyTile = 32;   // keys per tile (forward, dQ); queries per tile (dK/dV)

// Forward lanes per query row: 16 (8 queries per block) when sequences hold
// at most this many queries (target attention: a few candidates per
// history), so that a block is not mostly idle rows; else 4 (32 queries).
constexpr int64_t kShortQueryRows = 8;

// ---- Tensor-core kernels (attention_mma_kernel.cuh, attention_mma_bwd_kernel.cuh) ----
constexpr int kMmaKeyTile = 64;  // keys per K / V tile

// Warps per block of the tensor-core backward (dQ and dK/dV): 64 rows per
// block, the plan's q and k tiles.
constexpr int kMmaBwdWarps = 4;

// ---- Plan (attention.cu) ----
// Threads of the plan kernel: one block scans B in chunks of this many.
constexpr int kPlanThreads = 256;

}  // namespace spembed::detail
