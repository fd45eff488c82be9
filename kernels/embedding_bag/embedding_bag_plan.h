// The lookup kernel's group-shape planner: plain constexpr C++ (no CUDA
// header), so that the CPU tests check every decision directly
// (tests/embedding_bag/test_forward_plan.cpp).
#pragma once

#include <cstdint>

#include "kernels/embedding_bag/embedding_bag_tuning.h"

namespace spembed::detail {

// What the lookup kernel computes per bag. MEAN is kSum plus a division at the
// end, and NONE is kSum or kWeightedSum over bags of one id; both are runtime
// flags, not kinds, since they cost nothing in the inner loop.
enum class PoolKind : uint8_t { kSum, kWeightedSum, kMax };

// Largest vectors-per-lane for a kind, given the elements per vector (4 or 8
// for 16-byte vectors of fp32 or fp16/bf16, 1 for element-wise loads): a
// power of two <= 4 whose accumulators fit the kind's register budget. 4 keeps
// at least two rows in flight per lane (kVecsInFlight / 4).
constexpr int max_vec_per_thread(PoolKind kind, int elems_per_vec) {
  const int budget = kind == PoolKind::kMax ? kMaxMaxAccumulators : kMaxSumAccumulators;
  int v = 4;
  while (v > 1 && v * elems_per_vec > budget) v /= 2;
  return v;
}

// Group shape (lanes G, vectors per lane V) for rows of `row_vecs` vectors:
// the fewest lanes that cover the row with the kind's largest V, at most a
// warp; rows wider than 32 x V vectors are split into column chunks. Fewer
// lanes per row means more bags per warp and more bytes in flight per lane:
// short bags (one-hot lookups) are a chain of dependent loads (offsets, id,
// row), so what hides it is the number of bags in flight, not the width of
// one load. (D=16 fp32: one lane per bag, 32 bags per warp.)
struct GroupShape {
  int lanes;
  int vec_per_thread;
};

constexpr int next_pow2(int64_t x) {
  int p = 1;
  while (p < x && p < (1 << 30)) p *= 2;
  return p;
}

constexpr GroupShape plan_group_shape(PoolKind kind, int elems_per_vec, int64_t row_vecs) {
  const int vmax = max_vec_per_thread(kind, elems_per_vec);
  int lanes = next_pow2((row_vecs + vmax - 1) / vmax);
  if (lanes > 32) lanes = 32;
  const int v = next_pow2((row_vecs + lanes - 1) / lanes);
  return {lanes, v < vmax ? v : vmax};
}

// The shapes plan_group_shape can return: the only ones compiled.
constexpr bool is_planned_shape(PoolKind kind, int elems_per_vec, int lanes, int vec) {
  const int vmax = max_vec_per_thread(kind, elems_per_vec);
  return vec <= vmax && (lanes == 1 || vec == vmax);
}

}  // namespace spembed::detail
