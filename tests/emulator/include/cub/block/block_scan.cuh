// cub::BlockScan sums for the emulation build: device code that runs under
// the emulator as the kernels do (threadIdx, __syncthreads from the
// force-included spembed_emulator/device.h).
//
// Every algorithm is the same simple one: each thread writes its input into
// TempStorage, one barrier, then each thread sums the entries it needs. As in
// CUB there is no trailing barrier: a caller that reuses the TempStorage must
// __syncthreads() between uses, and the race detector catches one that does
// not. Unlike CUB, a block whose shape differs from the template's is a
// kernel fault rather than garbage.
#pragma once

#include <cuda_runtime_api.h>

#include <cub/detail/emulation_support.cuh>

namespace cub {

enum BlockScanAlgorithm { BLOCK_SCAN_RAKING, BLOCK_SCAN_RAKING_MEMOIZE, BLOCK_SCAN_WARP_SCANS };

template <typename T, int BLOCK_DIM_X, BlockScanAlgorithm ALGORITHM = BLOCK_SCAN_RAKING,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1, int LEGACY_PTX_ARCH = 0>
class BlockScan {
  static_assert(BLOCK_DIM_X > 0 && BLOCK_DIM_Y > 0 && BLOCK_DIM_Z > 0,
                "BlockScan needs a non-empty block");
  static constexpr int kBlockThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;

 public:
  struct TempStorage {
    T thread_inputs[kBlockThreads];
  };

  __device__ __forceinline__ BlockScan(TempStorage& temp_storage)
      : storage_(temp_storage), linear_tid_(calling_thread_rank()) {}

  __device__ __forceinline__ void ExclusiveSum(T input, T& output) {
    T unused_aggregate{};
    scan<false, false>(input, output, unused_aggregate);
  }
  __device__ __forceinline__ void ExclusiveSum(T input, T& output, T& block_aggregate) {
    scan<false, true>(input, output, block_aggregate);
  }
  __device__ __forceinline__ void InclusiveSum(T input, T& output) {
    T unused_aggregate{};
    scan<true, false>(input, output, unused_aggregate);
  }
  __device__ __forceinline__ void InclusiveSum(T input, T& output, T& block_aggregate) {
    scan<true, true>(input, output, block_aggregate);
  }

 private:
  // Row-major rank of the calling thread in its block.
  __device__ static int calling_thread_rank() {
    if (blockDim.x != static_cast<unsigned>(BLOCK_DIM_X) ||
        blockDim.y != static_cast<unsigned>(BLOCK_DIM_Y) ||
        blockDim.z != static_cast<unsigned>(BLOCK_DIM_Z)) {
      ::spembed::emu::device_fault(
          "cub::BlockScan for blocks of %d x %d x %d threads used in a block of %u x %u x %u",
          BLOCK_DIM_X, BLOCK_DIM_Y, BLOCK_DIM_Z, blockDim.x, blockDim.y, blockDim.z);
    }
    return static_cast<int>(threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z));
  }

  template <bool kInclusive, bool kWantsAggregate>
  __device__ void scan(T input, T& output, T& block_aggregate) {
    storage_.thread_inputs[linear_tid_] = input;
    __syncthreads();
    // Only the entries this thread needs: its prefix, or all for the total.
    const int prefix_end = kInclusive ? linear_tid_ + 1 : linear_tid_;
    const int read_end = kWantsAggregate ? kBlockThreads : prefix_end;
    T prefix{};
    T total{};
    for (int rank = 0; rank < read_end; ++rank) {
      const T value = storage_.thread_inputs[rank];
      if (rank < prefix_end) prefix = emulation::wrapping_add(prefix, value);
      total = emulation::wrapping_add(total, value);
    }
    output = prefix;
    if constexpr (kWantsAggregate) block_aggregate = total;
  }

  TempStorage& storage_;
  int linear_tid_;
};

}  // namespace cub
