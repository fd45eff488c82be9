// spembed_embedding_renorm on the CPU: hand-computed rows, the float64
// reference on random tables of every dtype and norm types 1, 2 and 3, each
// row renormalised once however often it is named, the bounds policies, and
// every bad argument (a clear status naming it, the table untouched).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "renorm_util.h"
#include "spembed/spembed.h"
#include "test_util.h"

namespace spembed_test {
namespace {

class RenormCpu : public ::testing::Test {
 protected:
  spembed_handle_t handle() const { return handle_.get(); }
  spembed_status_t renorm(RenormProblem& p, spembed_bounds_policy_t policy = SPEMBED_BOUNDS_ERROR,
                          DLTensor* report = nullptr) {
    return spembed_embedding_renorm(handle(), p.table.dl(), p.indices.dl(), p.max_norm, p.norm_type,
                                    policy, report, nullptr, 0, nullptr);
  }

 private:
  Handle handle_;
};

// Rows [3, 4] (norm 5), [0.6, 0.8] (norm 1), [6, 8] (norm 10), [30, 40]
// (not named); ids {0, 2, 0, 1}; max_norm 2: rows 0 and 2 scaled once by
// 2 / (norm + 1e-7) in float32, row 1 within the norm, row 3 untouched.
TEST_F(RenormCpu, HandComputed) {
  RenormProblem p;
  p.table = make_matrix(kF32, 4, 2, {3, 4, 0.6, 0.8, 6, 8, 30, 40});
  p.indices = make_index_tensor(kI64, {0, 2, 0, 1});
  p.max_norm = 2.0;
  ASSERT_EQ(renorm(p), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  const float s0 = 2.0f / (5.0f + 1e-7f), s2 = 2.0f / (10.0f + 1e-7f);
  EXPECT_EQ(p.table.get(0, 0), static_cast<double>(3.0f * s0));
  EXPECT_EQ(p.table.get(0, 1), static_cast<double>(4.0f * s0));
  EXPECT_EQ(p.table.get(1, 0), static_cast<double>(0.6f));
  EXPECT_EQ(p.table.get(1, 1), static_cast<double>(0.8f));
  EXPECT_EQ(p.table.get(2, 0), static_cast<double>(6.0f * s2));
  EXPECT_EQ(p.table.get(2, 1), static_cast<double>(8.0f * s2));
  EXPECT_EQ(p.table.get(3, 0), 30.0);
  EXPECT_EQ(p.table.get(3, 1), 40.0);

  // norm_type 1: row [3, -4] has norm 7.
  RenormProblem q;
  q.table = make_matrix(kF32, 1, 2, {3, -4});
  q.indices = make_index_tensor(kI32, {0, 0});
  q.max_norm = 3.5;
  q.norm_type = 1.0;
  ASSERT_EQ(renorm(q), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  const float s = 3.5f / (7.0f + 1e-7f);
  EXPECT_EQ(q.table.get(0, 0), static_cast<double>(3.0f * s));
  EXPECT_EQ(q.table.get(0, 1), static_cast<double>(-4.0f * s));
}

TEST_F(RenormCpu, MatchesReference) {
  uint64_t seed = 40;
  for (DLDataType dtype : {kF32, kF16, kBF16, kF64}) {
    for (DLDataType index : {kI32, kI64}) {
      for (double norm_type : {1.0, 2.0, 3.0}) {
        for (int64_t dim : {1, 7, 33, 100}) {
          SCOPED_TRACE(dtype_name(dtype) + " " + dtype_name(index) + " p " +
                       std::to_string(norm_type) + " dim " + std::to_string(dim));
          RenormProblem p = make_renorm_problem(dtype, index, 50, dim, 120, ++seed);
          p.norm_type = norm_type;
          // About half the rows exceed it.
          p.max_norm = median_row_norm(p.table, norm_type);
          const RenormExpected e =
              reference_renorm(p, unit_roundoff(dtype), subnormal_spacing(dtype));
          const std::vector<uint8_t> original = p.table.bytes();
          ASSERT_EQ(renorm(p), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
          EXPECT_FALSE(p.table.bytes_equal(original)) << "no row was renormalised";
          for (int64_t r = 0; r < 50; ++r) {
            for (int64_t c = 0; c < dim; ++c) {
              const size_t k = static_cast<size_t>(r * dim + c);
              ASSERT_LE(std::fabs(p.table.get(r, c) - e.values[k]), e.bounds[k])
                  << "row " << r << " col " << c << " named " << e.named[static_cast<size_t>(r)];
            }
          }
        }
      }
    }
  }
}

// The hot row is named 40 times and renormalised once (scaled 40 times it
// would be far below the reference); a second call then moves it by at most
// a rounding (its norm is max_norm * norm / (norm + 1e-7), up to rounding).
TEST_F(RenormCpu, EachRowOnce) {
  RenormProblem p = make_renorm_problem(kF32, kI64, 20, 16, 120, 77);
  p.max_norm = 1.0;
  const RenormExpected e = reference_renorm(p, unit_roundoff(kF32), subnormal_spacing(kF32));
  ASSERT_EQ(renorm(p), SPEMBED_STATUS_SUCCESS);
  for (int64_t c = 0; c < 16; ++c) {
    const size_t k = static_cast<size_t>(1 * 16 + c);
    EXPECT_LE(std::fabs(p.table.get(1, c) - e.values[k]), e.bounds[k]);
  }
  const HostTensor once = p.table.clone();
  ASSERT_EQ(renorm(p), SPEMBED_STATUS_SUCCESS);
  for (int64_t r = 0; r < 20; ++r) {
    for (int64_t c = 0; c < 16; ++c) {
      EXPECT_LE(std::fabs(p.table.get(r, c) - once.get(r, c)), 1e-6 * std::fabs(once.get(r, c)));
    }
  }
}

TEST_F(RenormCpu, BoundsPolicies) {
  // ERROR: the call fails naming the first bad position; nothing is written.
  RenormProblem p = make_renorm_problem(kF32, kI64, 30, 8, 60, 91, /*bad_ids=*/3);
  p.max_norm = 0.5;
  const std::vector<uint8_t> before = p.table.bytes();
  HostTensor report = make_report();
  EXPECT_EQ(renorm(p, SPEMBED_BOUNDS_ERROR, report.dl()), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  EXPECT_NE(std::string(spembed_last_error()).find("indices"), std::string::npos)
      << spembed_last_error();
  EXPECT_TRUE(p.table.bytes_equal(before));
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 3);

  // SKIP: bad ids are ignored (and counted), the others renormalised.
  const RenormExpected e = reference_renorm(p, unit_roundoff(kF32), subnormal_spacing(kF32));
  ASSERT_EQ(renorm(p, SPEMBED_BOUNDS_SKIP, report.dl()), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 3);
  for (int64_t r = 0; r < 30; ++r) {
    for (int64_t c = 0; c < 8; ++c) {
      const size_t k = static_cast<size_t>(r * 8 + c);
      ASSERT_LE(std::fabs(p.table.get(r, c) - e.values[k]), e.bounds[k]) << r << ", " << c;
    }
  }
}

TEST_F(RenormCpu, EmptyIndicesTouchNothing) {
  RenormProblem p = make_renorm_problem(kBF16, kI32, 10, 4, 0, 5);
  p.max_norm = 0.1;
  const std::vector<uint8_t> before = p.table.bytes();
  ASSERT_EQ(renorm(p), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  EXPECT_TRUE(p.table.bytes_equal(before));
}

TEST_F(RenormCpu, BadArgumentsNameTheArgumentAndWriteNothing) {
  struct Bad {
    const char* name;
    void (*breaks)(RenormProblem&, DLTensor**);
    spembed_status_t status;
    const char* mentions;
  };
  const Bad cases[] = {
      {"MaxNormZero", [](RenormProblem& p, DLTensor**) { p.max_norm = 0.0; },
       SPEMBED_STATUS_INVALID_ARGUMENT, "max_norm"},
      {"MaxNormNaN", [](RenormProblem& p, DLTensor**) { p.max_norm = std::nan(""); },
       SPEMBED_STATUS_INVALID_ARGUMENT, "max_norm"},
      {"NormTypeNegative", [](RenormProblem& p, DLTensor**) { p.norm_type = -2.0; },
       SPEMBED_STATUS_INVALID_ARGUMENT, "norm_type"},
      {"NormTypeInfinite", [](RenormProblem& p, DLTensor**) { p.norm_type = INFINITY; },
       SPEMBED_STATUS_INVALID_ARGUMENT, "norm_type"},
      {"IndicesFloat", [](RenormProblem& p, DLTensor**) { p.indices.set_view_dtype(kF32); },
       SPEMBED_STATUS_INVALID_ARGUMENT, "indices"},
      {"IndicesTwoDimensional",
       [](RenormProblem& p, DLTensor**) {
         p.indices.set_view_shape({2, 3});
       },
       SPEMBED_STATUS_INVALID_ARGUMENT, "indices"},
      {"TableOneDimensional", [](RenormProblem& p, DLTensor**) { p.table.set_view_shape({60}); },
       SPEMBED_STATUS_INVALID_ARGUMENT, "table"},
      {"TableInt", [](RenormProblem& p, DLTensor**) { p.table.set_view_dtype(kI32); },
       SPEMBED_STATUS_INVALID_ARGUMENT, "table"},
      {"IndicesOnCuda",
       [](RenormProblem& p, DLTensor**) {
         p.indices.set_view_device(DLDevice{kDLCUDA, 0});
       },
       SPEMBED_STATUS_INVALID_ARGUMENT, "indices"},
  };
  for (const Bad& c : cases) {
    SCOPED_TRACE(c.name);
    RenormProblem p = make_renorm_problem(kF32, kI64, 10, 6, 6, 3);
    p.max_norm = 0.1;
    const std::vector<uint8_t> before = p.table.bytes();
    DLTensor* unused = nullptr;
    c.breaks(p, &unused);
    EXPECT_EQ(renorm(p), c.status);
    EXPECT_NE(std::string(spembed_last_error()).find(c.mentions), std::string::npos)
        << spembed_last_error();
    EXPECT_TRUE(p.table.bytes_equal(before));
  }
  RenormProblem p = make_renorm_problem(kF32, kI64, 10, 6, 6, 3);
  EXPECT_EQ(spembed_embedding_renorm(handle(), nullptr, p.indices.dl(), 1.0, 2.0,
                                     SPEMBED_BOUNDS_ERROR, nullptr, nullptr, 0, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spembed_last_error()).find("table"), std::string::npos);
  EXPECT_EQ(spembed_embedding_renorm(handle(), p.table.dl(), nullptr, 1.0, 2.0,
                                     SPEMBED_BOUNDS_ERROR, nullptr, nullptr, 0, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spembed_last_error()).find("indices"), std::string::npos);
  EXPECT_EQ(spembed_embedding_renorm(handle(), p.table.dl(), p.indices.dl(), 1.0, 2.0,
                                     static_cast<spembed_bounds_policy_t>(7), nullptr, nullptr, 0,
                                     nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spembed_last_error()).find("bounds_policy"), std::string::npos);
}

TEST_F(RenormCpu, WorkspaceQuery) {
  size_t bytes = 1;
  ASSERT_EQ(spembed_embedding_renorm_workspace_size(handle(), kDLCPU, kI64, 1000, &bytes),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(bytes, 0u);
  size_t small = 0, large = 0;
  ASSERT_EQ(spembed_embedding_renorm_workspace_size(handle(), kDLCUDA, kI32, 10, &small),
            SPEMBED_STATUS_SUCCESS);
  ASSERT_EQ(spembed_embedding_renorm_workspace_size(handle(), kDLCUDA, kI64, 100000, &large),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_GT(small, 0u);
  EXPECT_GE(large, small + 100000 * 8);
  EXPECT_EQ(large % 256, 0u);
  EXPECT_EQ(spembed_embedding_renorm_workspace_size(handle(), kDLCUDA, kF32, 10, &bytes),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_NE(std::string(spembed_last_error()).find("index_dtype"), std::string::npos);
  EXPECT_EQ(spembed_embedding_renorm_workspace_size(handle(), kDLCUDA, kI64, -1, &bytes),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(spembed_embedding_renorm_workspace_size(handle(), kDLCUDA, kI64, 1, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
}

}  // namespace
}  // namespace spembed_test
