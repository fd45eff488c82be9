// Column arithmetic of the backward's lane-group kernels
// (embedding_bag_backward_reduce_kernel.cuh): a group of G lanes, V vectors
// of 4 columns per lane, column blocks of W = G * V * 4 <= 512 columns; lane
// j's vector v of block blk starts at column blk * W + (v * G + j) * 4.
//
// No int arithmetic, as in the forward (embedding_bag_pooled_kernel.cuh,
// uint32 vector indices): every dim the host accepts is < 2^31, so
// dim + W - 1 (the block count) and every column a lane computes (< dim + W)
// fit 32 bits unsigned, where int would overflow for a dim within a column
// block of 2^31. Plain code for host and device, so that the CPU tests check
// it at the dims no device test can allocate.
#pragma once

#include <cstdint>

#include "kernels/common/types.h"

namespace spembed::detail {

// Column blocks of a row of dim columns (dim < 2^31, 1 <= W <= 512).
SPEMBED_HOST_DEVICE constexpr uint32_t backward_column_blocks(uint32_t dim, uint32_t W) {
  return (dim + W - 1) / W;
}

// First column of lane j's vector v in column block blk (blk < the row's
// column blocks, v * lanes + j < W / 4): below dim + W - 3 < 2^32. Computed
// in 64 bits, which lets the compiler fold it into the row addresses (the
// reduce and combine kernels need fewer registers than with int or uint32);
// a kernel may narrow it to uint32 exactly.
SPEMBED_HOST_DEVICE constexpr int64_t backward_column(uint32_t blk, uint32_t W, int v, int lanes,
                                                      int j) {
  return static_cast<int64_t>(blk) * W + (v * lanes + j) * 4;
}

}  // namespace spembed::detail
