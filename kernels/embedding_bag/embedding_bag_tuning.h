// Every tuning constant of the embedding bag kernels, with the reason for its
// value. None is measured yet (no GPU has run them): each rests on the
// register and byte counts stated beside it, and the same values serve sm_80
// and sm_90. A value that a benchmark changes names its benchmarks/results
// file here; a value that differs by architecture becomes a function of it.
#pragma once

#include <cstdint>

namespace spembed::detail {

// ---- Forward (embedding_bag_pooled_kernel.cuh, embedding_bag_checks.cu) ----

// Threads per block of the lookup kernel, its __launch_bounds__ and its launch
// block size. 4 warps, a multiple of every group size (1..32 lanes): the
// kernels use 80-128 registers, and small blocks let an SM fill its register
// file in finer steps (at 96 registers, 5 blocks of 128 = 20 warps fit, but
// only 2 blocks of 256 = 16 warps).
constexpr int kForwardBlockThreads = 128;
// Resident blocks per SM the lookup kernel's registers must allow (its
// __launch_bounds__): at most 65536 / (4 x 128) = 128 registers per thread,
// so at least 512 threads per SM. Stating it also stops ptxas for sm_90 from
// trading a few spilled bytes for occupancy, which it does with a bare
// __launch_bounds__.
constexpr int kForwardMinBlocksPerSm = 4;

// 16-byte table loads a lane keeps in flight: the vectors of up to
// kVecsInFlight / kVecPerThread rows are loaded before the first is
// accumulated. 8 x 16 B = 128 B per lane; at the 512-640 threads per SM the
// kernels' 90-128 registers allow, that is 64-80 KiB per SM, 2.5-3x the
// bandwidth-delay product of an H100's HBM3 (3.35 TB/s x ~1 us / 132 SMs
// ~ 25 KiB). Its 32 registers still leave room for the accumulators.
constexpr int kVecsInFlight = 8;

// Output elements a lane may accumulate: fp32 sums, or for MAX the max and
// its argmax row (up to 3 registers per element with int64 ids). 16 sums
// (4 fp32 or 2 fp16 vectors) plus the 32 registers of kVecsInFlight keep the
// kernels near 90-100 registers, 5 blocks per SM; 32 fp16 sums would cost a
// block per SM for the same bytes in flight.
constexpr int kMaxSumAccumulators = 16;
constexpr int kMaxMaxAccumulators = 8;

// Threads per block of the check kernel; a multiple of 32 (warp ballots).
constexpr int kCheckBlockThreads = 256;

// Threads per block of the max_norm renormalisation (embedding_renorm.cu):
// 4 warps, one row per warp at a time; the kernel is a few dozen registers
// and its cost is the row reads and writes.
constexpr int kRenormBlockThreads = 128;

// ---- Backward (embedding_bag_backward_*.cu / .cuh) ----

// Threads per block of every backward kernel that works in lane groups: a
// multiple of the widest group (32 lanes). 4 warps, as the forward's lookup
// (kForwardBlockThreads), for the same reason: the kernels use 64-128
// registers and small blocks fill an SM's register file in finer steps.
constexpr int kBackwardBlockThreads = 128;
// Threads per block of the element-wise index kernels (flags, expand).
constexpr int kIndexBlockThreads = 256;
// Vectors per lane at most: 16 fp32 sums per lane, the forward's register
// budget for sums (kMaxSumAccumulators).
constexpr int kMaxVecPerLane = 4;
// The same for float64 tables: 4 fp64 sums (8 registers) per lane. With 16
// or 8 (CUDA 13, sm_80 / sm_90) the non-MAX reduce kernel spilled under the
// 128-register bound; fp64 rows take more lanes or column blocks instead.
constexpr int kMaxVecPerLaneF64 = 1;

// Resident blocks per SM the lane-group kernels' registers must allow: at
// most 65536 / (4 x 128) = 128 registers per thread (as the forward's
// kForwardMinBlocksPerSm).
constexpr int kBackwardMinBlocksPerSm = 4;

// Resident blocks per SM the element-wise kernels' registers must allow:
// 65536 / (4 x 256) = 64 registers per thread, plenty for them. Stating it
// keeps ptxas from squeezing them into 32 registers and spilling, which it
// does with a bare __launch_bounds__. (prepare: blocks of 128, twice as many.)
constexpr int kIndexMinBlocksPerSm = 4;

// Table entries per upload launch: 32 x 96 bytes stays well inside the 4 KiB
// of kernel parameters every architecture accepts.
constexpr int kTablesPerUpload = 32;

}  // namespace spembed::detail
