// The lookup kernel's group-shape planner (kernels/embedding_bag/embedding_bag_plan.h)
// on the CPU, over every row width up to a few thousand vectors: the shape
// covers the row (or splits it into full-warp chunks), stays within the
// register budget, is one of the compiled shapes, and uses the fewest lanes.
#include <gtest/gtest.h>

#include <cstdint>

#include "kernels/embedding_bag/embedding_bag_plan.h"

namespace spembed::detail {
namespace {

constexpr PoolKind kKinds[] = {PoolKind::kSum, PoolKind::kWeightedSum, PoolKind::kMax};

TEST(ForwardPlan, VectorsPerLaneFitTheRegisterBudget) {
  for (PoolKind kind : kKinds) {
    const int budget = kind == PoolKind::kMax ? kMaxMaxAccumulators : kMaxSumAccumulators;
    for (int elems : {1, 4, 8}) {
      const int v = max_vec_per_thread(kind, elems);
      SCOPED_TRACE(testing::Message() << "kind " << int(kind) << " elems " << elems);
      EXPECT_TRUE(v == 1 || v == 2 || v == 4);
      EXPECT_LE(v * elems, budget);
      // The largest such power of two up to 4.
      EXPECT_TRUE(v == 4 || 2 * v * elems > budget);
    }
  }
}

TEST(ForwardPlan, GroupShapeCoversTheRowWithTheFewestLanes) {
  for (PoolKind kind : kKinds) {
    for (int elems : {1, 4, 8}) {
      const int vmax = max_vec_per_thread(kind, elems);
      for (int64_t row_vecs = 1; row_vecs <= 4096; ++row_vecs) {
        const GroupShape g = plan_group_shape(kind, elems, row_vecs);
        SCOPED_TRACE(testing::Message()
                     << "kind " << int(kind) << " elems " << elems << " row_vecs " << row_vecs);
        ASSERT_TRUE(g.lanes >= 1 && g.lanes <= 32 && (g.lanes & (g.lanes - 1)) == 0);
        ASSERT_TRUE(g.vec_per_thread >= 1 && g.vec_per_thread <= vmax);
        ASSERT_TRUE(is_planned_shape(kind, elems, g.lanes, g.vec_per_thread));
        const int64_t covered = int64_t{g.lanes} * g.vec_per_thread;
        if (g.lanes < 32) {
          EXPECT_GE(covered, row_vecs);  // one pass covers the row
          // Half the lanes with the largest V would not.
          if (g.lanes > 1) {
            EXPECT_LT(int64_t{g.lanes / 2} * vmax, row_vecs);
          }
        } else {
          EXPECT_EQ(g.vec_per_thread, vmax);  // wide rows: full warps, chunked
        }
      }
    }
  }
}

TEST(ForwardPlan, KnownShapes) {
  // D = 16 fp32 (4 vectors of 4): one lane per bag.
  EXPECT_EQ(plan_group_shape(PoolKind::kSum, 4, 4).lanes, 1);
  EXPECT_EQ(plan_group_shape(PoolKind::kSum, 4, 4).vec_per_thread, 4);
  // D = 128 fp32 (32 vectors): 8 lanes x 4.
  EXPECT_EQ(plan_group_shape(PoolKind::kSum, 4, 32).lanes, 8);
  // MAX keeps fewer accumulators: D = 128 fp32 takes 16 lanes x 2.
  EXPECT_EQ(plan_group_shape(PoolKind::kMax, 4, 32).lanes, 16);
  EXPECT_EQ(plan_group_shape(PoolKind::kMax, 4, 32).vec_per_thread, 2);
}

}  // namespace
}  // namespace spembed::detail
