// The CPU implementation (the oracle of the CUDA tests) through the C API on
// CPU tensors: first against values computed by hand and written out below,
// then against the independent double-precision reference in test_util.cpp on
// random inputs.
#include <gtest/gtest-spi.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

namespace spembed_test {
namespace {

using Rows = std::vector<std::vector<double>>;

// ---- the test helpers themselves ----------------------------------------------

TEST(TestHelpers, HalfConversionRoundsToNearestEven) {
  EXPECT_EQ(float_to_half(1.0f), 0x3c00);
  EXPECT_EQ(float_to_half(-2.0f), 0xc000);
  EXPECT_EQ(float_to_half(65504.0f), 0x7bff);
  EXPECT_EQ(float_to_half(65519.0f), 0x7bff);               // below the midpoint to 65536
  EXPECT_EQ(float_to_half(65520.0f), 0x7c00);               // the midpoint rounds to even: infinity
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -25)), 0x0000);  // tie between 0 and 2^-24: even
  EXPECT_EQ(float_to_half(std::ldexp(3.0f, -25)), 0x0002);  // tie between 1 and 2 units: even
  EXPECT_EQ(float_to_half(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11)), 0x3c00);  // tie, to even
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(3.0f, -11)), 0x3c02);  // tie, to even
  EXPECT_EQ(float_to_half(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3c01);
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(std::nanf("")))));
  EXPECT_EQ(half_to_float(0x3555), 0.333251953125f);
  EXPECT_EQ(half_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(half_to_float(0xfc00), -INFINITY);
  // Every finite half survives the round trip.
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    if ((h & 0x7c00u) == 0x7c00u) continue;
    ASSERT_EQ(float_to_half(half_to_float(static_cast<uint16_t>(h))), h) << std::hex << h;
  }
}

TEST(TestHelpers, Bf16ConversionRoundsToNearestEven) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie, to even
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(3.0f, -8)), 0x3f82);  // tie, to even
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8) + std::ldexp(1.0f, -20)), 0x3f81);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  EXPECT_TRUE(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
  EXPECT_EQ(bf16_to_float(0x4049), 3.140625f);
  for (uint32_t b = 0; b < 0x10000u; ++b) {
    if ((b & 0x7f80u) == 0x7f80u) continue;
    ASSERT_EQ(float_to_bf16(bf16_to_float(static_cast<uint16_t>(b))), b) << std::hex << b;
  }
}

TEST(TestHelpers, ReferenceMatchesHandComputedSum) {
  ProblemSpec s;
  s.dims = {2};
  s.rows = 3;
  s.bag_lengths = {2, 0};
  s.with_report = false;
  Problem p = make_problem(s);
  p.tables[0] = make_matrix(kF32, 3, 2, {1, 2, 3, 4, 5, 6});
  p.ids = {2, 0};
  const Expected e = reference_forward(p);
  EXPECT_EQ(e.value, (std::vector<double>{6, 8, 0, 0}));
  EXPECT_EQ(e.bound, (std::vector<double>{0, 0, 0, 0}));
}

TEST(TestHelpers, Gamma) {
  EXPECT_DOUBLE_EQ(gamma32(1), std::ldexp(1.0, -24) / (1 - std::ldexp(1.0, -24)));
  EXPECT_GT(gamma32(5000), 5000 * std::ldexp(1.0, -24));
}

// The checks must be able to fail: one ulp off, a stray write into the row
// padding, a wrong argmax row, an error beyond the bound.
TEST(TestHelpers, ChecksCatchSmallErrors) {
  Handle handle;
  ProblemSpec s;
  s.pooling = SPEMBED_POOLING_MAX;
  s.with_argmax = true;
  s.dims = {5};
  s.out_row_pad = 3;
  s.bag_lengths = {4, 2, 7};
  Problem p = make_problem(s);
  const auto before = p.output.bytes();
  ASSERT_EQ(run_forward_cpu(handle.get(), p), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  ASSERT_EQ(check_output("ok", p.output, before, p.expected), 0);
  ASSERT_EQ(check_argmax("ok", p.argmax, p.expected), 0);

  const double v = p.output.get(1, 2);
  p.output.set(1, 2, std::nextafter(static_cast<float>(v), INFINITY));
  EXPECT_NONFATAL_FAILURE(check_output("ulp", p.output, before, p.expected), "output[1][2]");
  p.output.set(1, 2, v);
  p.output.storage()[p.output.element_byte(0, 4) + 4] ^= 1;  // first padding byte of row 0
  EXPECT_NONFATAL_FAILURE(check_output("pad", p.output, before, p.expected), "was written");
  p.output.storage()[p.output.element_byte(0, 4) + 4] ^= 1;
  EXPECT_EQ(check_output("restored", p.output, before, p.expected), 0);

  p.argmax.set_int(2, 0, p.argmax.get_int(2, 0) + 1);
  EXPECT_NONFATAL_FAILURE(check_argmax("argmax", p.argmax, p.expected), "argmax[2][0]");
}

TEST(TestHelpers, BoundedChecksAreNotLoose) {
  Handle handle;
  ProblemSpec s;
  s.pooling = SPEMBED_POOLING_MEAN;
  s.data = DataKind::kReal;
  s.dims = {3};
  s.bag_lengths = {200};
  Problem p = make_problem(s);
  const auto before = p.output.bytes();
  ASSERT_EQ(run_forward_cpu(handle.get(), p), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  ASSERT_EQ(check_output("ok", p.output, before, p.expected), 0);
  const double bound = p.expected.bound[0];
  ASSERT_GT(bound, 0.0);
  // The bound is a few float32 ulps of the sum's magnitude, not a loose tolerance.
  EXPECT_LT(bound, 1e-4);
  p.output.set(0, 0, p.expected.value[0] + 2 * bound);
  EXPECT_NONFATAL_FAILURE(check_output("beyond", p.output, before, p.expected), "output[0][0]");
}

// ---- hand-computed values -------------------------------------------------------

// Per-sample weights for a table of dtype `table`: float64 for float64 tables.
HostTensor sample_weights(DLDataType table, const std::vector<float>& v) {
  if (!same_dtype(table, kF64)) return make_f32_tensor(v);
  HostTensor w(kF64, {static_cast<int64_t>(v.size())});
  for (size_t i = 0; i < v.size(); ++i) w.set(static_cast<int64_t>(i), v[i]);
  return w;
}

struct HandParam {
  DLDataType table;
  DLDataType out;
  DLDataType index;
};

std::string hand_name(const ::testing::TestParamInfo<HandParam>& info) {
  return dtype_name(info.param.table) + "_to_" + dtype_name(info.param.out) + "_" +
         dtype_name(info.param.index);
}

// What GoogleTest prints for GetParam() (instead of a byte dump).
void PrintTo(const HandParam& p, std::ostream* os) {
  *os << "table=" << dtype_name(p.table) << " out=" << dtype_name(p.out)
      << " idx=" << dtype_name(p.index);
}

// The table every hand-computed case uses (values exact in every float dtype):
//   row 0: [ 1,  2,    3   ]
//   row 1: [-1,  0.5,  4   ]
//   row 2: [ 2, -3,    0.25]
//   row 3: [ 0,  1,   -2   ]
//   row 4: [ 2,  2,   -5   ]   (ties row 2 in column 0)
// and the bags: indices [1, 3, 0, 2, 2, 3, 1], offsets [0, 2, 2, 6, 7]:
//   bag 0 = {1, 3}, bag 1 = {}, bag 2 = {0, 2, 2, 3}, bag 3 = {1}.
class HandComputed : public ::testing::TestWithParam<HandParam> {
 protected:
  void SetUp() override { ASSERT_EQ(handle_.create_status(), SPEMBED_STATUS_SUCCESS); }

  HostTensor table(int64_t row_stride = 0, uint64_t byte_offset = 0) const {
    return make_matrix(GetParam().table, 5, 3,
                       {1, 2, 3, -1, 0.5, 4, 2, -3, 0.25, 0, 1, -2, 2, 2, -5}, row_stride,
                       byte_offset);
  }
  HostTensor ids(const std::vector<int64_t>& v, uint64_t byte_offset = 0) const {
    return make_index_tensor(GetParam().index, v, byte_offset);
  }
  HostTensor bag_indices() const { return ids({1, 3, 0, 2, 2, 3, 1}); }
  // Per-sample weights in the table's accumulation dtype.
  HostTensor psw(const std::vector<float>& v) const { return sample_weights(GetParam().table, v); }
  HostTensor bag_offsets() const { return ids({0, 2, 2, 6, 7}); }
  HostTensor output(int64_t rows, int64_t cols, int64_t row_stride = 0,
                    uint64_t byte_offset = 0) const {
    std::vector<int64_t> strides;
    if (row_stride != 0) strides = {row_stride, 1};
    return HostTensor(GetParam().out, {rows, cols}, strides, byte_offset);
  }
  HostTensor argmax(int64_t rows, int64_t cols) const {
    return HostTensor(GetParam().index, {rows, cols});
  }
  static spembed_embedding_bag_options_t options(
      spembed_pooling_t pooling, int64_t padding_idx = -1,
      spembed_bounds_policy_t policy = SPEMBED_BOUNDS_ERROR, int64_t fixed_bag_size = 0) {
    spembed_embedding_bag_options_t o;
    spembed_embedding_bag_options_init(&o);
    o.pooling = pooling;
    o.padding_idx = padding_idx;
    o.bounds_policy = policy;
    o.fixed_bag_size = fixed_bag_size;
    return o;
  }
  spembed_status_t forward(const HostTensor& tab, const HostTensor& idx, const HostTensor* offs,
                           const HostTensor* weights, const spembed_embedding_bag_options_t& o,
                           HostTensor& out, HostTensor* amax = nullptr,
                           HostTensor* report = nullptr) {
    const spembed_status_t st = spembed_embedding_bag_forward(
        handle_.get(), tab.dl(), idx.dl(), offs ? offs->dl() : nullptr,
        weights ? weights->dl() : nullptr, &o, out.dl(), amax ? amax->dl() : nullptr,
        report ? report->dl() : nullptr, nullptr, 0, nullptr);
    if (st != SPEMBED_STATUS_SUCCESS) {
      ADD_FAILURE() << "forward failed: " << spembed_status_string(st) << ": "
                    << spembed_last_error();
    }
    return st;
  }
  // Exact comparison of out[r][c] with want[r][c] (the values are exact in
  // every output dtype), and the row padding beyond want's width untouched.
  static void expect_rows(const HostTensor& out, const std::vector<uint8_t>& before,
                          const Rows& want) {
    Expected e;
    e.rows = static_cast<int64_t>(want.size());
    e.cols = want.empty() ? 0 : static_cast<int64_t>(want[0].size());
    for (const auto& row : want) {
      for (double v : row) {
        e.value.push_back(v);
        e.bound.push_back(0.0);
      }
    }
    check_output("hand", out, before, e);
  }
  static void expect_argmax(const HostTensor& amax, const std::vector<std::vector<int64_t>>& want) {
    for (size_t r = 0; r < want.size(); ++r) {
      for (size_t c = 0; c < want[r].size(); ++c) {
        EXPECT_EQ(amax.get_int(static_cast<int64_t>(r), static_cast<int64_t>(c)), want[r][c])
            << "argmax[" << r << "][" << c << "]";
      }
    }
  }

  Handle handle_;
};

TEST_P(HandComputed, Sum) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_SUM), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 1.5, 2}, {0, 0, 0}, {5, -3, 1.5}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, SumWithDefaultOptions) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  const auto before = out.bytes();
  const spembed_status_t st =
      spembed_embedding_bag_forward(handle_.get(), tab.dl(), idx.dl(), offs.dl(), nullptr, nullptr,
                                    out.dl(), nullptr, nullptr, nullptr, 0, nullptr);
  ASSERT_EQ(st, SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  expect_rows(out, before, {{-1, 1.5, 2}, {0, 0, 0}, {5, -3, 1.5}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, Mean) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MEAN), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-0.5, 0.75, 1}, {0, 0, 0}, {1.25, -0.75, 0.375}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, MaxWithArgmax) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  HostTensor amax = argmax(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MAX), out, &amax),
            SPEMBED_STATUS_SUCCESS);
  // bag 2 column 0: rows 0, 2, 2, 3 give 1, 2, 2, 0: the max 2 comes from row 2.
  expect_rows(out, before, {{0, 1, 4}, {0, 0, 0}, {2, 2, 3}, {-1, 0.5, 4}});
  expect_argmax(amax, {{3, 3, 1}, {-1, -1, -1}, {2, 0, 0}, {1, 1, 1}});
}

TEST_P(HandComputed, MaxWithoutArgmax) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MAX), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{0, 1, 4}, {0, 0, 0}, {2, 2, 3}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, MaxTiesKeepTheFirstRow) {
  // Rows 2 and 4 both hold 2 in column 0.
  HostTensor tab = table(), idx = ids({2, 4, 4, 2}), offs = ids({0, 2, 4}), out = output(2, 3);
  HostTensor amax = argmax(2, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MAX), out, &amax),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{2, 2, 0.25}, {2, 2, 0.25}});
  expect_argmax(amax, {{2, 4, 2}, {4, 4, 2}});
}

TEST_P(HandComputed, MaxOfNegativeValuesIsNotZero) {
  HostTensor tab = table(), idx = ids({2, 1}), offs = ids({0, 1, 2}), out = output(2, 3);
  HostTensor amax = argmax(2, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MAX), out, &amax),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{2, -3, 0.25}, {-1, 0.5, 4}});
  expect_argmax(amax, {{2, 2, 2}, {1, 1, 1}});
}

TEST_P(HandComputed, None) {
  HostTensor tab = table(), idx = ids({4, 0, 0, 2}), out = output(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, nullptr, nullptr, options(SPEMBED_POOLING_NONE), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{2, 2, -5}, {1, 2, 3}, {1, 2, 3}, {2, -3, 0.25}});
}

TEST_P(HandComputed, WeightedSum) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  HostTensor w = psw({0.5f, 2, 1, -1, 0.25f, 4, 3});
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, &w, options(SPEMBED_POOLING_SUM), out),
            SPEMBED_STATUS_SUCCESS);
  // bag 2 = 1*row0 - 1*row2 + 0.25*row2 + 4*row3.
  expect_rows(out, before, {{-0.5, 2.25, -2}, {0, 0, 0}, {-0.5, 8.25, -5.1875}, {-3, 1.5, 12}});
}

TEST_P(HandComputed, WeightedNone) {
  HostTensor tab = table(), idx = ids({1, 3, 0}), out = output(3, 3);
  HostTensor w = psw({0.5f, -2, 0});
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, nullptr, &w, options(SPEMBED_POOLING_NONE), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-0.5, 0.25, 2}, {0, -2, 4}, {0, 0, 0}});
}

TEST_P(HandComputed, PaddingIdxSum) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_SUM, 2), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 1.5, 2}, {0, 0, 0}, {1, 3, 1}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, PaddingIdxIsNotCountedByMean) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MEAN, 2), out),
            SPEMBED_STATUS_SUCCESS);
  // bag 2 = {0, 2, 2, 3} without row 2: (row0 + row3) / 2.
  expect_rows(out, before, {{-0.5, 0.75, 1}, {0, 0, 0}, {0.5, 1.5, 0.5}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, PaddingIdxMax) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  HostTensor amax = argmax(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MAX, 2), out, &amax),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{0, 1, 4}, {0, 0, 0}, {1, 2, 3}, {-1, 0.5, 4}});
  expect_argmax(amax, {{3, 3, 1}, {-1, -1, -1}, {0, 0, 0}, {1, 1, 1}});
}

TEST_P(HandComputed, BagOfOnlyPaddingIsEmpty) {
  HostTensor tab = table(), idx = ids({2, 2, 0}), offs = ids({0, 2, 3});
  for (spembed_pooling_t pooling :
       {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX}) {
    SCOPED_TRACE(pooling_name(pooling));
    HostTensor out = output(2, 3);
    HostTensor amax = argmax(2, 3);
    const auto before = out.bytes();
    ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(pooling, 2), out,
                      pooling == SPEMBED_POOLING_MAX ? &amax : nullptr),
              SPEMBED_STATUS_SUCCESS);
    expect_rows(out, before, {{0, 0, 0}, {1, 2, 3}});
    if (pooling == SPEMBED_POOLING_MAX) expect_argmax(amax, {{-1, -1, -1}, {0, 0, 0}});
  }
}

TEST_P(HandComputed, PaddingIdxNoneGivesZeroRows) {
  HostTensor tab = table(), idx = ids({1, 2, 0}), out = output(3, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, nullptr, nullptr, options(SPEMBED_POOLING_NONE, 2), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 0.5, 4}, {0, 0, 0}, {1, 2, 3}});
}

TEST_P(HandComputed, AllBagsEmpty) {
  HostTensor tab = table(), idx = ids({}), offs = ids({0, 0, 0});
  for (spembed_pooling_t pooling :
       {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX}) {
    SCOPED_TRACE(pooling_name(pooling));
    HostTensor out = output(2, 3);
    HostTensor amax = argmax(2, 3);
    const auto before = out.bytes();
    ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(pooling), out,
                      pooling == SPEMBED_POOLING_MAX ? &amax : nullptr),
              SPEMBED_STATUS_SUCCESS);
    expect_rows(out, before, {{0, 0, 0}, {0, 0, 0}});
    if (pooling == SPEMBED_POOLING_MAX) expect_argmax(amax, {{-1, -1, -1}, {-1, -1, -1}});
  }
}

TEST_P(HandComputed, FixedBagSize) {
  HostTensor tab = table(), idx = ids({1, 3, 0, 2, 2, 3});
  HostTensor out = output(3, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, nullptr, nullptr,
                    options(SPEMBED_POOLING_SUM, -1, SPEMBED_BOUNDS_ERROR, 2), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 1.5, 2}, {3, -1, 3.25}, {2, -2, -1.75}});
}

TEST_P(HandComputed, FixedBagSizeMeanAndMax) {
  HostTensor tab = table(), idx = ids({1, 3, 0, 2, 2, 3});
  HostTensor out = output(3, 3);
  auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, nullptr, nullptr,
                    options(SPEMBED_POOLING_MEAN, -1, SPEMBED_BOUNDS_ERROR, 2), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-0.5, 0.75, 1}, {1.5, -0.5, 1.625}, {1, -1, -0.875}});
  HostTensor out2 = output(3, 3);
  HostTensor amax = argmax(3, 3);
  before = out2.bytes();
  ASSERT_EQ(forward(tab, idx, nullptr, nullptr,
                    options(SPEMBED_POOLING_MAX, -1, SPEMBED_BOUNDS_ERROR, 2), out2, &amax),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out2, before, {{0, 1, 4}, {2, 2, 3}, {2, 1, 0.25}});
  expect_argmax(amax, {{3, 3, 1}, {2, 0, 0}, {2, 3, 2}});
}

TEST_P(HandComputed, TableRowStrideLargerThanDim) {
  // The 3 padding elements of every row hold NaN (HostTensor's fill): reading
  // them would show in the sums.
  HostTensor tab = table(6), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_SUM), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 1.5, 2}, {0, 0, 0}, {5, -3, 1.5}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, OutputRowStrideLargerThanDim) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3, 5);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_SUM), out),
            SPEMBED_STATUS_SUCCESS);
  // expect_rows also checks that the 2 padding elements per row keep their poison.
  expect_rows(out, before, {{-1, 1.5, 2}, {0, 0, 0}, {5, -3, 1.5}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, ExplicitCompactStrides) {
  HostTensor tab = table(3), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3, 3);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_SUM), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 1.5, 2}, {0, 0, 0}, {5, -3, 1.5}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, ByteOffsetHonoured) {
  // The bytes before each tensor's element 0 are poison: reading them as the
  // start of the table, ids or offsets would give NaN or wild ids.
  HostTensor tab = table(0, 64);
  HostTensor idx = ids({1, 3, 0, 2, 2, 3, 1}, 16);
  HostTensor offs = ids({0, 2, 2, 6, 7}, 8);
  HostTensor out = output(4, 3, 0, 32);
  const auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_SUM), out),
            SPEMBED_STATUS_SUCCESS);
  // check_output also checks that the 32 bytes before element 0 were not written.
  expect_rows(out, before, {{-1, 1.5, 2}, {0, 0, 0}, {5, -3, 1.5}, {-1, 0.5, 4}});
}

TEST_P(HandComputed, SkipPolicyCountsAndReports) {
  // bag 0 = {1, 7 (bad)}, bag 1 = {0, -3 (bad), 2}.
  HostTensor tab = table(), idx = ids({1, 7, 0, -3, 2}), offs = ids({0, 2, 5});
  HostTensor report = make_report();
  for (spembed_pooling_t pooling : {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN}) {
    SCOPED_TRACE(pooling_name(pooling));
    HostTensor out = output(2, 3);
    const auto before = out.bytes();
    ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(pooling, -1, SPEMBED_BOUNDS_SKIP), out,
                      nullptr, &report),
              SPEMBED_STATUS_SUCCESS);
    if (pooling == SPEMBED_POOLING_SUM) {
      expect_rows(out, before, {{-1, 0.5, 4}, {3, -1, 3.25}});
    } else {  // skipped ids are not counted
      expect_rows(out, before, {{-1, 0.5, 4}, {1.5, -0.5, 1.625}});
    }
    EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 2);
    EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 1);
    EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 7);
    EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
    EXPECT_EQ(spembed_report_status(static_cast<const int64_t*>(report.dl()->data)),
              SPEMBED_STATUS_SUCCESS);
  }
}

TEST_P(HandComputed, SkipPolicyMaxAndNone) {
  HostTensor tab = table(), idx = ids({5, 1, -1, 2}), offs = ids({0, 2, 4});
  HostTensor out = output(2, 3), amax = argmax(2, 3);
  auto before = out.bytes();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_MAX, -1, SPEMBED_BOUNDS_SKIP),
                    out, &amax),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 0.5, 4}, {2, -3, 0.25}});
  expect_argmax(amax, {{1, 1, 1}, {2, 2, 2}});
  HostTensor rows = output(4, 3);
  HostTensor report = make_report();
  before = rows.bytes();
  ASSERT_EQ(forward(tab, idx, nullptr, nullptr,
                    options(SPEMBED_POOLING_NONE, -1, SPEMBED_BOUNDS_SKIP), rows, nullptr, &report),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(rows, before, {{0, 0, 0}, {-1, 0.5, 4}, {0, 0, 0}, {2, -3, 0.25}});
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 2);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 0);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 5);
}

TEST_P(HandComputed, CleanReport) {
  HostTensor tab = table(), idx = bag_indices(), offs = bag_offsets(), out = output(4, 3);
  HostTensor report = make_report();
  ASSERT_EQ(forward(tab, idx, &offs, nullptr, options(SPEMBED_POOLING_SUM), out, nullptr, &report),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 0);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), -1);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
}

// Three tables: A (the 5 x 3 table), B [2 x 1] = {10, -20}, C [3 x 2] =
// {[1, 1], [2, -2], [0.5, 0.5]}; B = 2 samples; bags (table-major):
//   A: {1, 3}, {0};  B: {}, {1, 0, 1};  C: {2}, {0, 1}.
class HandBatched : public HandComputed {
 protected:
  void make_tables() {
    tables_.push_back(table());
    tables_.push_back(make_matrix(GetParam().table, 2, 1, {10, -20}));
    tables_.push_back(make_matrix(GetParam().table, 3, 2, {1, 1, 2, -2, 0.5, 0.5}));
    std::vector<DLTensor> views;
    for (HostTensor& t : tables_) views.push_back(*t.dl());
    batch_ = std::make_unique<TableBatch>(handle_.get(), views);
    ASSERT_EQ(batch_->create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  }
  spembed_status_t batched(const HostTensor& idx, const HostTensor* offs, const HostTensor* weights,
                           const spembed_embedding_bag_options_t& o, HostTensor& out,
                           HostTensor* amax = nullptr, HostTensor* report = nullptr) {
    const spembed_status_t st = spembed_embedding_bag_batched_forward(
        handle_.get(), batch_->get(), idx.dl(), offs ? offs->dl() : nullptr,
        weights ? weights->dl() : nullptr, &o, out.dl(), amax ? amax->dl() : nullptr,
        report ? report->dl() : nullptr, nullptr, 0, nullptr);
    if (st != SPEMBED_STATUS_SUCCESS) {
      ADD_FAILURE() << "batched forward failed: " << spembed_status_string(st) << ": "
                    << spembed_last_error();
    }
    return st;
  }
  HostTensor batch_indices() const { return ids({1, 3, 0, 1, 0, 1, 2, 0, 1}); }
  HostTensor batch_offsets() const { return ids({0, 2, 3, 3, 6, 7, 9}); }

  std::vector<HostTensor> tables_;
  std::unique_ptr<TableBatch> batch_;
};

TEST_P(HandBatched, TotalDim) {
  make_tables();
  int64_t total = 0;
  ASSERT_EQ(spembed_table_batch_total_dim(batch_->get(), &total), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(total, 6);
}

TEST_P(HandBatched, Sum) {
  make_tables();
  HostTensor idx = batch_indices(), offs = batch_offsets(), out = output(2, 6);
  const auto before = out.bytes();
  ASSERT_EQ(batched(idx, &offs, nullptr, options(SPEMBED_POOLING_SUM), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 1.5, 2, 0, 0.5, 0.5}, {1, 2, 3, -30, 3, -1}});
}

TEST_P(HandBatched, Mean) {
  make_tables();
  HostTensor idx = batch_indices(), offs = batch_offsets(), out = output(2, 6);
  const auto before = out.bytes();
  ASSERT_EQ(batched(idx, &offs, nullptr, options(SPEMBED_POOLING_MEAN), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-0.5, 0.75, 1, 0, 0.5, 0.5}, {1, 2, 3, -10, 1.5, -0.5}});
}

TEST_P(HandBatched, MaxWithArgmax) {
  make_tables();
  HostTensor idx = batch_indices(), offs = batch_offsets(), out = output(2, 6);
  HostTensor amax = argmax(2, 6);
  const auto before = out.bytes();
  ASSERT_EQ(batched(idx, &offs, nullptr, options(SPEMBED_POOLING_MAX), out, &amax),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{0, 1, 4, 0, 0.5, 0.5}, {1, 2, 3, 10, 2, 1}});
  // Argmax rows are rows of each table.
  expect_argmax(amax, {{3, 3, 1, -1, 2, 2}, {0, 0, 0, 0, 1, 0}});
}

TEST_P(HandBatched, WeightedSumWithOutputRowStride) {
  make_tables();
  HostTensor idx = batch_indices(), offs = batch_offsets(), out = output(2, 6, 9);
  HostTensor w = sample_weights(GetParam().table, {2, 1, -1, 0.5f, 1, 0.25f, 4, 1, -2});
  const auto before = out.bytes();
  ASSERT_EQ(batched(idx, &offs, &w, options(SPEMBED_POOLING_SUM), out), SPEMBED_STATUS_SUCCESS);
  // A: 2*row1 + row3; -row0.  B: -; 0.5*(-20) + 10 + 0.25*(-20).  C: 4*[0.5,0.5]; [1,1] - 2*[2,-2].
  expect_rows(out, before, {{-2, 2, 6, 0, 2, 2}, {-1, -2, -3, -5, -3, 5}});
}

TEST_P(HandBatched, FixedBagSize) {
  make_tables();
  // Bag size 1: A: {4}, {0}; B: {1}, {0}; C: {2}, {1}.
  HostTensor idx = ids({4, 0, 1, 0, 2, 1}), out = output(2, 6);
  const auto before = out.bytes();
  ASSERT_EQ(batched(idx, nullptr, nullptr,
                    options(SPEMBED_POOLING_SUM, -1, SPEMBED_BOUNDS_ERROR, 1), out),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{2, 2, -5, -20, 0.5, 0.5}, {1, 2, 3, 10, 2, -2}});
}

TEST_P(HandBatched, PaddingIdxAppliesToEveryTable) {
  make_tables();
  HostTensor idx = batch_indices(), offs = batch_offsets(), out = output(2, 6);
  const auto before = out.bytes();
  ASSERT_EQ(batched(idx, &offs, nullptr, options(SPEMBED_POOLING_MEAN, 1), out),
            SPEMBED_STATUS_SUCCESS);
  // A: {3}, {0};  B: {}, {0};  C: {2}, {0}.
  expect_rows(out, before, {{0, 1, -2, 0, 0.5, 0.5}, {1, 2, 3, 10, 1, 1}});
}

TEST_P(HandBatched, SkipUsesEachTablesOwnRows) {
  make_tables();
  // Id 2 is a row of A and C but not of B (2 rows): position 4 is bad.
  HostTensor idx = ids({1, 3, 0, 1, 2, 1, 2, 0, 1}), offs = batch_offsets(), out = output(2, 6);
  HostTensor report = make_report();
  const auto before = out.bytes();
  ASSERT_EQ(batched(idx, &offs, nullptr, options(SPEMBED_POOLING_SUM, -1, SPEMBED_BOUNDS_SKIP), out,
                    nullptr, &report),
            SPEMBED_STATUS_SUCCESS);
  expect_rows(out, before, {{-1, 1.5, 2, 0, 0.5, 0.5}, {1, 2, 3, -40, 3, -1}});
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 1);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 4);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 2);
}

const HandParam kHandParams[] = {
    {kF32, kF32, kI32},   {kF32, kF32, kI64},   {kF16, kF16, kI32}, {kF16, kF16, kI64},
    {kBF16, kBF16, kI32}, {kBF16, kBF16, kI64}, {kF16, kF32, kI64}, {kBF16, kF32, kI32},
    {kF32, kF16, kI64},   {kF32, kBF16, kI32},  {kF64, kF64, kI32}, {kF64, kF64, kI64},
};
INSTANTIATE_TEST_SUITE_P(Dtypes, HandComputed, ::testing::ValuesIn(kHandParams), hand_name);
INSTANTIATE_TEST_SUITE_P(Dtypes, HandBatched, ::testing::ValuesIn(kHandParams), hand_name);

// ---- numerics the hand-computed table cannot show ----------------------------

class Numerics : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(handle_.create_status(), SPEMBED_STATUS_SUCCESS); }
  // Sum of rows {0, 1, ..., n-1} of a one-column table holding `values`, as
  // `out_t`; returns the single output value.
  double sum_column(DLDataType table_t, DLDataType out_t, const std::vector<double>& values) {
    const auto n = static_cast<int64_t>(values.size());
    HostTensor tab = make_matrix(table_t, n, 1, values);
    std::vector<int64_t> all(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) all[static_cast<size_t>(i)] = i;
    HostTensor idx = make_index_tensor(kI64, all), offs = make_index_tensor(kI64, {0, n});
    HostTensor out(out_t, {1, 1});
    const spembed_status_t st =
        spembed_embedding_bag_forward(handle_.get(), tab.dl(), idx.dl(), offs.dl(), nullptr,
                                      nullptr, out.dl(), nullptr, nullptr, nullptr, 0, nullptr);
    EXPECT_EQ(st, SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    return out.get(0, 0);
  }
  Handle handle_;
};

TEST_F(Numerics, OutputRoundsToNearestEven) {
  // 1 + 2^-11 lies halfway between two halves: ties go to the even one, 1.
  EXPECT_EQ(sum_column(kF32, kF16, {1.0, std::ldexp(1.0, -11)}), 1.0);
  EXPECT_EQ(sum_column(kF32, kF16, {1.0, std::ldexp(3.0, -11)}), 1.0 + std::ldexp(1.0, -9));
  EXPECT_EQ(sum_column(kF32, kF16, {1.0, std::ldexp(1.0, -11), std::ldexp(1.0, -20)}),
            1.0 + std::ldexp(1.0, -10));
  EXPECT_EQ(sum_column(kF32, kBF16, {1.0, std::ldexp(1.0, -8)}), 1.0);
  EXPECT_EQ(sum_column(kF32, kBF16, {1.0, std::ldexp(3.0, -8)}), 1.0 + std::ldexp(1.0, -6));
}

// The vectorized 16-bit stores (kernels/common/cpu_simd.h) must round every
// float32 sum exactly as the scalar conversions do, NaN payloads, infinities,
// overflow, ties and subnormals included, on the loop for rows of whole
// vectors (every id contributes) and on the general one (a padding id).
TEST_F(Numerics, SixteenBitOutputsRoundLikeTheScalarConversions) {
  constexpr int64_t kDim = 64;  // whole vectors on every instruction set
  const uint32_t special[] = {0x7f800001u, 0xffc12345u, 0x7fa00000u, 0x7fffffffu, 0x7f800000u,
                              0xff800000u, 0x477fefffu, 0x477ff000u, 0xc77ff000u, 0x7f7fffffu,
                              0x00000001u, 0x807fffffu, 0x33000000u, 0x33400000u, 0x38800000u,
                              0x387fffffu, 0x3f801000u, 0x3f803000u, 0x3f808000u, 0x3f818000u,
                              0x80000000u, 0x00000000u, 0x3eaaaaabu, 0xc2c80001u};
  const int64_t rows = 8;
  std::vector<uint32_t> bits(static_cast<size_t>(rows * kDim));
  Rng rng(7);
  for (size_t i = 0; i < bits.size(); ++i) {
    bits[i] = i < std::size(special) ? special[i] : static_cast<uint32_t>(rng.gen()());
  }
  HostTensor tab(kF32, {rows, kDim});
  std::memcpy(tab.storage(), bits.data(), bits.size() * sizeof(uint32_t));
  // One row per bag: each output is +0 + that row, a float32 the test can round itself.
  HostTensor idx = make_index_tensor(kI64, {0, 1, 2, 3, 4, 5, 6, 7});
  HostTensor offs = make_index_tensor(kI64, {0, 1, 2, 3, 4, 5, 6, 7, 8});
  for (const int64_t padding_idx : {int64_t{-1}, int64_t{7}}) {
    spembed_embedding_bag_options_t opts;
    spembed_embedding_bag_options_init(&opts);
    opts.padding_idx = padding_idx;
    auto run = [&](DLDataType out_t) {
      HostTensor out(out_t, {rows, kDim});
      EXPECT_EQ(
          spembed_embedding_bag_forward(handle_.get(), tab.dl(), idx.dl(), offs.dl(), nullptr,
                                        &opts, out.dl(), nullptr, nullptr, nullptr, 0, nullptr),
          SPEMBED_STATUS_SUCCESS)
          << spembed_last_error();
      return out;
    };
    const HostTensor out32 = run(kF32), out16 = run(kF16), outb16 = run(kBF16);
    for (int64_t e = 0; e < rows * kDim; ++e) {
      float sum;
      uint16_t half, bf16;
      std::memcpy(&sum, out32.storage() + e * 4, 4);
      std::memcpy(&half, out16.storage() + e * 2, 2);
      std::memcpy(&bf16, outb16.storage() + e * 2, 2);
      ASSERT_EQ(half, float_to_half(sum)) << "element " << e << ", padding_idx " << padding_idx;
      ASSERT_EQ(bf16, float_to_bf16(sum)) << "element " << e << ", padding_idx " << padding_idx;
    }
  }
}

TEST_F(Numerics, AccumulatesInFloat32) {
  // In fp16 arithmetic 2048 + 1 + 1 stays 2048 (spacing 2); fp32 gives 2050.
  EXPECT_EQ(sum_column(kF16, kF32, {2048, 1, 1}), 2050.0);
  // In bf16 arithmetic 256 + 1 stays 256.
  EXPECT_EQ(sum_column(kBF16, kF32, {256, 1}), 257.0);
  // Output rounding happens once, at the end: 2048 + 1 + 1 = 2050 in fp16.
  EXPECT_EQ(sum_column(kF16, kF16, {2048, 1, 1}), 2050.0);
}

TEST_F(Numerics, AccumulatesInIdOrder) {
  // The header promises float32 accumulation in the order of the ids:
  // (2^24 + 1) rounds to 2^24 (tie to even), then - 2^24 gives 0, not 1.
  const double big = std::ldexp(1.0, 24);
  EXPECT_EQ(sum_column(kF32, kF32, {big, 1.0, -big}), 0.0);
  EXPECT_EQ(sum_column(kF32, kF32, {big, -big, 1.0}), 1.0);
  // float64 tables accumulate in float64, in the same order: 2^53 + 1 rounds
  // to 2^53; 2^24 + 1 is exact.
  const double big64 = std::ldexp(1.0, 53);
  EXPECT_EQ(sum_column(kF64, kF64, {big64, 1.0, -big64}), 0.0);
  EXPECT_EQ(sum_column(kF64, kF64, {big64, -big64, 1.0}), 1.0);
  EXPECT_EQ(sum_column(kF64, kF64, {big, 1.0, -big}), 1.0);
}

TEST_F(Numerics, EmptyTensorsWithNullData) {
  // Frameworks hand out empty tensors with a null data pointer (torch.empty(0)).
  HostTensor tab = make_matrix(kF32, 2, 2, {1, 2, 3, 4});
  HostTensor idx(kI64, {0});
  idx.set_view_data(nullptr);
  HostTensor offs = make_index_tensor(kI64, {0, 0, 0});
  HostTensor out(kF32, {2, 2});
  const auto before = out.bytes();
  ASSERT_EQ(spembed_embedding_bag_forward(handle_.get(), tab.dl(), idx.dl(), offs.dl(), nullptr,
                                          nullptr, out.dl(), nullptr, nullptr, nullptr, 0, nullptr),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  Expected e;
  e.rows = 2;
  e.cols = 2;
  e.value.assign(4, 0.0);
  e.bound.assign(4, 0.0);
  check_output("empty", out, before, e);
}

TEST_F(Numerics, ZeroBagsIsANoOp) {
  HostTensor tab = make_matrix(kF32, 2, 2, {1, 2, 3, 4});
  HostTensor idx(kI64, {0});
  HostTensor offs = make_index_tensor(kI64, {0});
  HostTensor out(kF32, {0, 2});
  EXPECT_EQ(spembed_embedding_bag_forward(handle_.get(), tab.dl(), idx.dl(), offs.dl(), nullptr,
                                          nullptr, out.dl(), nullptr, nullptr, nullptr, 0, nullptr),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
}

// ---- random inputs against the independent reference ----------------------------

struct RandomParam {
  DLDataType table;
  DLDataType out;
  DLDataType index;
  spembed_pooling_t pooling;
  bool weighted;
  int64_t dim;
  DataKind data;
  bool batched;
};

std::string random_name(const ::testing::TestParamInfo<RandomParam>& info) {
  const RandomParam& p = info.param;
  return dtype_name(p.table) + "_to_" + dtype_name(p.out) + "_" + dtype_name(p.index) + "_" +
         pooling_name(p.pooling) + (p.weighted ? "Weighted" : "") + "_dim" + std::to_string(p.dim) +
         (p.data == DataKind::kInt ? "_int" : "_real") + (p.batched ? "_batched" : "");
}

// What GoogleTest prints for GetParam() (instead of a byte dump).
void PrintTo(const RandomParam& p, std::ostream* os) {
  *os << "table=" << dtype_name(p.table) << " out=" << dtype_name(p.out)
      << " idx=" << dtype_name(p.index) << " pooling=" << pooling_name(p.pooling)
      << " weighted=" << (p.weighted ? "yes" : "no") << " dim=" << p.dim
      << " data=" << (p.data == DataKind::kInt ? "int" : "real")
      << " batched=" << (p.batched ? "yes" : "no");
}

class RandomVsReference : public ::testing::TestWithParam<RandomParam> {};

TEST_P(RandomVsReference, MatchesWithinBound) {
  const RandomParam& rp = GetParam();
  Handle handle;
  ASSERT_EQ(handle.create_status(), SPEMBED_STATUS_SUCCESS);
  ProblemSpec s;
  s.table_dtype = rp.table;
  s.out_dtype = rp.out;
  s.index_dtype = rp.index;
  s.pooling = rp.pooling;
  s.weighted = rp.weighted;
  s.with_argmax = rp.pooling == SPEMBED_POOLING_MAX;
  s.batched = rp.batched;
  s.dims = rp.batched ? std::vector<int64_t>{rp.dim, 1, 3, 16} : std::vector<int64_t>{rp.dim};
  s.rows = 50;
  s.table_row_pad = 3;
  s.out_row_pad = 2;
  // Lengths 0, 1, 7, 32 and 200, repeated per table; padding and skipped ids mixed in.
  const std::vector<int64_t> one_table{7, 0, 1, 32, 200, 1, 0, 7};
  s.bag_lengths.clear();
  for (size_t t = 0; t < s.dims.size(); ++t) {
    s.bag_lengths.insert(s.bag_lengths.end(), one_table.begin(), one_table.end());
  }
  s.padding_idx = 4;
  s.padding_fraction = 0.05;
  s.bounds_policy = SPEMBED_BOUNDS_SKIP;
  s.bad_id_fraction = 0.03;
  s.data = rp.data;
  s.seed = std::hash<std::string>{}(random_name({rp, 0}));
  Problem p = make_problem(s);
  const auto before = p.output.bytes();
  ASSERT_EQ(run_forward_cpu(handle.get(), p), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  EXPECT_EQ(check_output("cpu", p.output, before, p.expected), 0);
  if (s.with_argmax) {
    EXPECT_EQ(check_argmax("cpu", p.argmax, p.expected), 0);
  }
  EXPECT_EQ(p.report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(p.report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), p.expected.bad_count);
  EXPECT_GT(p.expected.bad_count, 0);
  EXPECT_EQ(p.report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), p.expected.bad_position);
  EXPECT_EQ(p.report.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), p.expected.bad_value);
}

std::vector<RandomParam> random_params() {
  std::vector<RandomParam> out;
  const std::pair<DLDataType, DLDataType> dtypes[] = {{kF32, kF32}, {kF16, kF16},  {kBF16, kBF16},
                                                      {kF16, kF32}, {kF32, kBF16}, {kF64, kF64}};
  const std::pair<spembed_pooling_t, bool> modes[] = {
      {SPEMBED_POOLING_SUM, false}, {SPEMBED_POOLING_SUM, true},   {SPEMBED_POOLING_MEAN, false},
      {SPEMBED_POOLING_MAX, false}, {SPEMBED_POOLING_NONE, false}, {SPEMBED_POOLING_NONE, true}};
  for (const auto& [table, outt] : dtypes) {
    for (const auto& [pooling, weighted] : modes) {
      for (int64_t dim : {1, 3, 16, 257}) {
        for (DataKind data : {DataKind::kInt, DataKind::kReal}) {
          for (bool batched : {false, true}) {
            if (batched && pooling == SPEMBED_POOLING_NONE) continue;
            const DLDataType index = (dim + static_cast<int64_t>(data)) % 2 ? kI32 : kI64;
            out.push_back({table, outt, index, pooling, weighted, dim, data, batched});
          }
        }
      }
    }
  }
  return out;
}

INSTANTIATE_TEST_SUITE_P(Sweep, RandomVsReference, ::testing::ValuesIn(random_params()),
                         random_name);

// Every id valid and no padding: the forward's loops for rows of whole
// vectors (dims 8 to 128 on each instruction set), with runs of one-id bags
// (single-valued features) between longer ones, weighted or not.
TEST(AllIdsContribute, MatchesReference) {
  Handle handle;
  ASSERT_EQ(handle.create_status(), SPEMBED_STATUS_SUCCESS);
  const std::pair<DLDataType, DLDataType> dtypes[] = {{kF32, kF32}, {kBF16, kBF16}, {kF16, kF32}};
  for (const auto& [table, out] : dtypes) {
    for (const spembed_pooling_t pooling : {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN}) {
      for (const bool weighted : {false, true}) {
        if (weighted && pooling != SPEMBED_POOLING_SUM) continue;
        for (const int64_t dim : {8, 16, 32, 64, 128}) {
          ProblemSpec s;
          s.table_dtype = table;
          s.out_dtype = out;
          s.index_dtype = dim % 32 == 0 ? kI32 : kI64;
          s.pooling = pooling;
          s.weighted = weighted;
          s.dims = {dim};
          s.rows = 300;
          s.bag_lengths.clear();
          for (int run = 0; run < 6; ++run) {
            s.bag_lengths.insert(s.bag_lengths.end(), 20, 1);
            s.bag_lengths.push_back(run * 3);
          }
          s.padding_idx = -1;
          s.padding_fraction = 0;
          s.bad_id_fraction = 0;
          s.data = DataKind::kReal;
          s.seed = static_cast<uint64_t>(dim * 131 + (weighted ? 7 : 0) + pooling * 17);
          Problem p = make_problem(s);
          const auto before = p.output.bytes();
          ASSERT_EQ(run_forward_cpu(handle.get(), p), SPEMBED_STATUS_SUCCESS)
              << spembed_last_error();
          EXPECT_EQ(check_output("cpu", p.output, before, p.expected), 0)
              << dtype_name(table) << " -> " << dtype_name(out) << " " << pooling_name(pooling)
              << (weighted ? " weighted" : "") << " dim " << dim;
        }
      }
    }
  }
}

}  // namespace
}  // namespace spembed_test
