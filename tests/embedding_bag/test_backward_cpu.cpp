// The CPU embedding bag backward (the oracle of the CUDA tests): first against
// hand-computed values, then against the independent double reference of
// backward_util.cpp on random problems, against finite differences of the
// public forward, the documented summation order, determinism, the fused
// optimizer steps against torch.optim's formulas in double, stochastic
// rounding, the table-batched form and the C++ API.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "backward_util.h"
#include "spembed/spembed.hpp"
#include "test_util.h"

namespace spembed_test {
namespace {

class BackwardCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(handle_.create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  }
  spembed_handle_t handle() const { return handle_.get(); }

  // Runs bp on the CPU into fresh outputs; fails the test on a bad status.
  BackwardOutputs run(BackwardProblem& bp,
                      spembed_backward_algorithm_t algorithm = SPEMBED_BACKWARD_DETERMINISTIC) {
    BackwardOutputs out = fresh_outputs(bp);
    BackwardViews v = host_views(bp, out);
    const spembed_status_t st = run_backward(handle(), bp, v, algorithm);
    EXPECT_EQ(st, SPEMBED_STATUS_SUCCESS)
        << spembed_status_string(st) << ": " << spembed_last_error();
    return out;
  }

 private:
  Handle handle_;
};

// ---- hand-computed ---------------------------------------------------------------

// Table rows k = [k, -k]; three bags {1, 3, 1}, {}, {0, 4, 4, 2}; padding_idx 0.
struct Tiny {
  HostTensor table = make_matrix(kF32, 5, 2, {0, 0, 1, -1, 2, -2, 3, -3, 4, -4});
  HostTensor indices = make_index_tensor(kI64, {1, 3, 1, 0, 4, 4, 2});
  HostTensor offsets = make_index_tensor(kI64, {0, 3, 3, 7});
  HostTensor go = make_matrix(kF32, 3, 2, {1, 2, 5, 6, -1, 0.5});
  HostTensor grad = make_matrix(kF32, 5, 2, std::vector<double>(10, 0.0));
  HostTensor ids = HostTensor(kI64, {7});
  HostTensor rows = HostTensor(kF32, {7, 2});
  HostTensor count = HostTensor(kI64, {1});
  spembed_embedding_bag_options_t options{};
  spembed_embedding_bag_backward_args_t args{};
  Tiny(spembed_pooling_t pooling) {
    spembed_embedding_bag_options_init(&options);
    options.pooling = pooling;
    options.padding_idx = 0;
    for (HostTensor* t : {&ids, &rows, &count}) t->fill_bytes(kPoisonByte);
    args.indices = indices.dl();
    args.offsets = offsets.dl();
    args.grad_output = go.dl();
    args.table = table.dl();
    args.grad_table = grad.dl();
    args.unique_ids = ids.dl();
    args.unique_grads = rows.dl();
    args.num_unique = count.dl();
  }
  void expect_grad(const std::vector<float>& want) const {
    for (int64_t r = 0; r < 5; ++r) {
      for (int64_t c = 0; c < 2; ++c) {
        EXPECT_EQ(grad.get(r, c), want[static_cast<size_t>(r * 2 + c)])
            << "row " << r << " col " << c;
      }
    }
  }
  void expect_sparse(const std::vector<int64_t>& touched) const {
    ASSERT_EQ(count.get_int(0), static_cast<int64_t>(touched.size()));
    for (size_t u = 0; u < touched.size(); ++u) {
      EXPECT_EQ(ids.get_int(static_cast<int64_t>(u)), touched[u]);
      for (int64_t c = 0; c < 2; ++c) {
        EXPECT_EQ(rows.get(static_cast<int64_t>(u), c), grad.get(touched[u], c));
      }
    }
    EXPECT_EQ(ids.get_int(static_cast<int64_t>(touched.size())), -1) << "written past U";
  }
};

TEST_F(BackwardCpu, HandComputedSumWeighted) {
  Tiny x(SPEMBED_POOLING_SUM);
  HostTensor w = make_f32_tensor({1, 2, 0.5f, 9, 1, 3, -2});
  HostTensor gw(kF32, {7});
  gw.fill_bytes(kPoisonByte);
  x.args.per_sample_weights = w.dl();
  x.args.grad_per_sample_weights = gw.dl();
  ASSERT_EQ(
      spembed_embedding_bag_backward(handle(), &x.args, &x.options, SPEMBED_BACKWARD_DETERMINISTIC,
                                     nullptr, nullptr, 0, nullptr),
      SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  // row 1: 1*[1,2] + 0.5*[1,2]; row 3: 2*[1,2]; row 4: 1*[-1,.5] + 3*[-1,.5]; row 2: -2*[-1,.5].
  x.expect_grad({0, 0, 1.5f, 3, 2, -1, 2, 4, -4, 2});
  x.expect_sparse({1, 2, 3, 4});
  // go(bag) . row(id): bag 0 go [1,2]; bag 2 go [-1,.5]; padding gives 0.
  const std::vector<float> want = {-1, -3, -1, 0, -6, -6, -3};
  for (int64_t i = 0; i < 7; ++i) EXPECT_EQ(gw.get(i), want[static_cast<size_t>(i)]) << i;
}

TEST_F(BackwardCpu, HandComputedMean) {
  Tiny x(SPEMBED_POOLING_MEAN);
  ASSERT_EQ(
      spembed_embedding_bag_backward(handle(), &x.args, &x.options, SPEMBED_BACKWARD_DETERMINISTIC,
                                     nullptr, nullptr, 0, nullptr),
      SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  // Both bags count 3 ids (the padding id 0 is not counted).
  const float a = 1.0f / 3.0f, b = 2.0f / 3.0f, c = -1.0f / 3.0f, d = 0.5f / 3.0f;
  x.expect_grad({0, 0, a + a, b + b, c, d, a, b, c + c, d + d});
  x.expect_sparse({1, 2, 3, 4});
}

// scale_grad_by_freq: bags {1, 3, 1}, {}, {0, 4, 4, 2} with go [1,2], [5,6],
// [-1,.5]: row 1 (2 ids) (2 * [1,2]) / 2; row 3 (1 id) [1,2]; row 4 (2 ids)
// (2 * [-1,.5]) / 2; row 2 (1 id) [-1,.5]; padding row 0 nothing. ATOMIC
// gives the same (it runs the sorted reduction when scaling).
TEST_F(BackwardCpu, HandComputedScaleGradByFreq) {
  for (spembed_backward_algorithm_t algorithm :
       {SPEMBED_BACKWARD_DETERMINISTIC, SPEMBED_BACKWARD_ATOMIC}) {
    Tiny x(SPEMBED_POOLING_SUM);
    x.options.scale_grad_by_freq = 1;
    ASSERT_EQ(spembed_embedding_bag_backward(handle(), &x.args, &x.options, algorithm, nullptr,
                                             nullptr, 0, nullptr),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    x.expect_grad({0, 0, 1, 2, -1, 0.5f, 1, 2, -1, 0.5f});
    x.expect_sparse({1, 2, 3, 4});
  }
  // Off by default: the same call sums.
  Tiny plain(SPEMBED_POOLING_SUM);
  EXPECT_EQ(plain.options.scale_grad_by_freq, 0);
  ASSERT_EQ(
      spembed_embedding_bag_backward(handle(), &plain.args, &plain.options,
                                     SPEMBED_BACKWARD_DETERMINISTIC, nullptr, nullptr, 0, nullptr),
      SPEMBED_STATUS_SUCCESS);
  plain.expect_grad({0, 0, 2, 4, -1, 0.5f, 1, 2, -2, 1});
}

TEST_F(BackwardCpu, HandComputedMaxRepeatedRowsGetTheGradientOnce) {
  Tiny x(SPEMBED_POOLING_MAX);
  HostTensor out(kF32, {3, 2});
  HostTensor argmax(kI64, {3, 2});
  ASSERT_EQ(spembed_embedding_bag_forward(handle(), x.table.dl(), x.indices.dl(), x.offsets.dl(),
                                          nullptr, &x.options, out.dl(), argmax.dl(), nullptr,
                                          nullptr, 0, nullptr),
            SPEMBED_STATUS_SUCCESS);
  // bag 0 {1,3,1}: col 0 max 3 (row 3), col 1 max -1 (row 1); bag 1 empty;
  // bag 2 {4,4,2}: col 0 row 4, col 1 row 2.
  const std::vector<int64_t> want_argmax = {3, 1, -1, -1, 4, 2};
  for (int64_t k = 0; k < 6; ++k) ASSERT_EQ(argmax.get_int(k / 2, k % 2), want_argmax[size_t(k)]);
  x.args.argmax = argmax.dl();
  ASSERT_EQ(
      spembed_embedding_bag_backward(handle(), &x.args, &x.options, SPEMBED_BACKWARD_DETERMINISTIC,
                                     nullptr, nullptr, 0, nullptr),
      SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  // Row 1 appears twice in bag 0 but gets go[0,1] = 2 once; row 4 twice in bag 2, -1 once.
  x.expect_grad({0, 0, 0, 2, 0, 0.5f, 1, 0, -1, 0});
  x.expect_sparse({1, 2, 3, 4});
}

TEST_F(BackwardCpu, HandComputedNoneWithWeightsAndPadding) {
  HostTensor table = make_matrix(kF32, 3, 2, {0, 0, 1, 1, 2, 2});
  HostTensor indices = make_index_tensor(kI32, {1, 0, 1});
  HostTensor w = make_f32_tensor({2, 5, 1});
  HostTensor go = make_matrix(kBF16, 3, 2, {1, 2, 7, 7, 3, -1});
  HostTensor grad = make_matrix(kF32, 3, 2, {1, 1, 1, 1, 1, 1});
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_options_init(&options);
  options.pooling = SPEMBED_POOLING_NONE;
  options.padding_idx = 0;
  spembed_embedding_bag_backward_args_t a{};
  a.indices = indices.dl();
  a.per_sample_weights = w.dl();
  a.grad_output = go.dl();
  a.table = table.dl();
  a.grad_table = grad.dl();
  ASSERT_EQ(spembed_embedding_bag_backward(handle(), &a, &options, SPEMBED_BACKWARD_DETERMINISTIC,
                                           nullptr, nullptr, 0, nullptr),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  // row 1: 1 + 2*[1,2] + 1*[3,-1] = [6, 4]; rows 0 (padding) and 2 unchanged.
  const std::vector<double> want = {1, 1, 6, 4, 1, 1};
  for (int64_t k = 0; k < 6; ++k) EXPECT_EQ(grad.get(k / 2, k % 2), want[size_t(k)]) << k;
}

// NONE ignores offsets, as the forward does (spembed.h): bad values, another
// length or dtype give the same gradients as NULL offsets and a clean report.
// The GPU suite runs the same calls on CUDA.
TEST_F(BackwardCpu, NoneIgnoresOffsets) {
  BackwardSpec s;
  s.fwd.seed = 41;
  s.fwd.pooling = SPEMBED_POOLING_NONE;
  s.fwd.weighted = true;
  s.fwd.dims = {5};
  s.fwd.rows = 20;
  s.fwd.bag_lengths = {3, 0, 4, 2};
  s.weight_grads = true;
  BackwardProblem bp = make_backward_problem(s, handle());
  const BackwardOutputs want = run(bp);
  HostTensor bad_values = make_index_tensor(s.fwd.index_dtype, {4, 2, 0, 7, 1});
  HostTensor other_dtype = make_index_tensor(kI32, {0, 9});
  for (const HostTensor* offsets : {&bad_values, &other_dtype}) {
    BackwardOutputs out = fresh_outputs(bp);
    BackwardViews v = host_views(bp, out);
    v.offsets = offsets->dl();
    const spembed_status_t st = run_backward(handle(), bp, v, SPEMBED_BACKWARD_DETERMINISTIC);
    ASSERT_EQ(st, SPEMBED_STATUS_SUCCESS)
        << spembed_status_string(st) << ": " << spembed_last_error();
    EXPECT_EQ(compare_bitwise("none with offsets", bp, want, out), 0);
    EXPECT_EQ(out.report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(out.report.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
  }
}

TEST_F(BackwardCpu, HandComputedSkipAndReport) {
  HostTensor table = make_matrix(kF32, 3, 2, {0, 0, 1, 1, 2, 2});
  HostTensor indices = make_index_tensor(kI64, {1, 9, -1, 1});
  HostTensor offsets = make_index_tensor(kI64, {0, 4});
  HostTensor go = make_matrix(kF16, 1, 2, {4, 2});
  HostTensor grad = make_matrix(kF32, 3, 2, std::vector<double>(6, 0.0));
  HostTensor report = make_report();
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_options_init(&options);
  options.pooling = SPEMBED_POOLING_MEAN;
  options.bounds_policy = SPEMBED_BOUNDS_SKIP;
  spembed_embedding_bag_backward_args_t a{};
  a.indices = indices.dl();
  a.offsets = offsets.dl();
  a.grad_output = go.dl();
  a.table = table.dl();
  a.grad_table = grad.dl();
  ASSERT_EQ(spembed_embedding_bag_backward(handle(), &a, &options, SPEMBED_BACKWARD_DETERMINISTIC,
                                           report.dl(), nullptr, 0, nullptr),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  // Two ids count (the skipped ones do not): row 1 gets 2 * [4, 2] / 2.
  const std::vector<double> want = {0, 0, 4, 2, 0, 0};
  for (int64_t k = 0; k < 6; ++k) EXPECT_EQ(grad.get(k / 2, k % 2), want[size_t(k)]) << k;
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 2);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 1);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 9);
}

// ---- against the double reference ---------------------------------------------------

struct OracleCase {
  spembed_pooling_t pooling;
  bool weighted;
  DLDataType index_dtype;
  DLDataType grad_dtype;
  DataKind data;
  bool skip;  // SKIP policy with out-of-range ids
};

std::string oracle_name(const ::testing::TestParamInfo<OracleCase>& info) {
  const OracleCase& c = info.param;
  return pooling_name(c.pooling) + (c.weighted ? "_weighted" : "") + "_" +
         dtype_name(c.index_dtype) + "_go" + dtype_name(c.grad_dtype) +
         (c.data == DataKind::kInt ? "_int" : "_real") + (c.skip ? "_skip" : "");
}

// What GoogleTest prints for GetParam() (instead of a byte dump).
void PrintTo(const OracleCase& c, std::ostream* os) {
  *os << "pooling=" << pooling_name(c.pooling) << " weighted=" << (c.weighted ? "yes" : "no")
      << " idx=" << dtype_name(c.index_dtype) << " grad_out=" << dtype_name(c.grad_dtype)
      << " data=" << (c.data == DataKind::kInt ? "int" : "real")
      << " bounds=" << (c.skip ? "SKIP" : "ERROR");
}

class BackwardOracle : public BackwardCpu, public ::testing::WithParamInterface<OracleCase> {};

// Bag lengths with empty bags, single ids and a bag longer than two chunks.
std::vector<int64_t> awkward_lengths(Rng& rng, int64_t bags) {
  std::vector<int64_t> lengths;
  for (int64_t b = 0; b < bags; ++b)
    lengths.push_back(rng.uniform_int(0, 3) == 0 ? 0 : rng.uniform_int(1, 40));
  lengths[1] = 600;
  lengths[2] = 1;
  return lengths;
}

TEST_P(BackwardOracle, MatchesReference) {
  const OracleCase& c = GetParam();
  Rng rng(0x5eed + static_cast<uint64_t>(c.pooling));
  BackwardSpec s;
  s.fwd.pooling = c.pooling;
  s.fwd.weighted = c.weighted;
  s.fwd.index_dtype = c.index_dtype;
  s.fwd.dims = {7};
  s.fwd.rows = 40;  // few rows: many exceed one chunk of contributions
  s.fwd.bag_lengths = awkward_lengths(rng, 64);
  s.fwd.padding_idx = 3;
  s.fwd.padding_fraction = 0.1;
  s.fwd.data = c.data;
  if (c.skip) {
    s.fwd.bounds_policy = SPEMBED_BOUNDS_SKIP;
    s.fwd.bad_id_fraction = 0.05;
  }
  s.fwd.seed = 11 + static_cast<uint64_t>(c.pooling) * 3 + (c.weighted ? 1 : 0);
  s.grad_dtype = c.grad_dtype;
  // grad_output float64: a float64 table (they go together).
  if (same_dtype(c.grad_dtype, kF64)) s.fwd.table_dtype = kF64;
  s.grad_data = c.data;
  s.weight_grads = c.weighted;
  BackwardProblem bp = make_backward_problem(s, handle());
  const BackwardExpected e = reference_backward(bp);
  const BackwardOutputs out = run(bp);
  EXPECT_EQ(check_gradients("cpu", bp, out, e), 0);
  if (c.skip) {
    EXPECT_GT(out.report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 0);
  }
}

std::vector<OracleCase> oracle_cases() {
  std::vector<OracleCase> cases;
  const std::pair<spembed_pooling_t, bool> modes[] = {
      {SPEMBED_POOLING_SUM, false}, {SPEMBED_POOLING_SUM, true},   {SPEMBED_POOLING_MEAN, false},
      {SPEMBED_POOLING_MAX, false}, {SPEMBED_POOLING_NONE, false}, {SPEMBED_POOLING_NONE, true}};
  for (const auto& [pooling, weighted] : modes) {
    for (DLDataType index : {kI32, kI64}) {
      for (DLDataType go : {kF32, kF16, kBF16, kF64}) {
        cases.push_back({pooling, weighted, index, go, DataKind::kInt, false});
      }
    }
    cases.push_back({pooling, weighted, kI64, kF32, DataKind::kReal, false});
    cases.push_back({pooling, weighted, kI64, kF64, DataKind::kReal, false});
    cases.push_back({pooling, weighted, kI32, kF32, DataKind::kInt, true});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardOracle, ::testing::ValuesIn(oracle_cases()), oracle_name);

// Every pooling, weights, padding, SKIP and a row over two chunks, with
// scale_grad_by_freq, against the double reference; and the optimizer step
// from the scaled gradient.
TEST_F(BackwardCpu, ScaleGradByFreqMatchesReference) {
  const std::pair<spembed_pooling_t, bool> modes[] = {{SPEMBED_POOLING_SUM, false},
                                                      {SPEMBED_POOLING_SUM, true},
                                                      {SPEMBED_POOLING_MEAN, false},
                                                      {SPEMBED_POOLING_NONE, true}};
  for (const auto& [pooling, weighted] : modes) {
    for (bool step : {false, true}) {
      SCOPED_TRACE(testing::Message()
                   << "pooling " << pooling << " weighted " << weighted << " step " << step);
      Rng rng(0xf7e0 + static_cast<uint64_t>(pooling));
      BackwardSpec s;
      s.fwd.pooling = pooling;
      s.fwd.weighted = weighted;
      s.fwd.dims = {7};
      s.fwd.rows = 40;
      s.fwd.bag_lengths = awkward_lengths(rng, 48);
      s.fwd.padding_idx = 3;
      s.fwd.padding_fraction = 0.1;
      s.fwd.bounds_policy = SPEMBED_BOUNDS_SKIP;
      s.fwd.bad_id_fraction = 0.05;
      s.fwd.scale_grad_by_freq = true;
      s.fwd.data = DataKind::kReal;
      s.grad_data = DataKind::kReal;
      s.step = step;
      if (step) {
        spembed_optimizer_options_init(&s.optimizer);
        s.optimizer.optimizer = SPEMBED_OPTIMIZER_ADAGRAD;
        s.optimizer.learning_rate = 0.1f;
      }
      BackwardProblem bp = make_backward_problem(s, handle());
      const BackwardExpected e = reference_backward(bp);
      const BackwardOutputs out = run(bp);
      EXPECT_EQ(check_gradients("cpu", bp, out, e), 0);
      if (step) {
        EXPECT_EQ(check_optimizer("cpu", bp, out, e), 0);
      }
    }
  }
}

TEST_F(BackwardCpu, EmptyInputTouchesNothing) {
  BackwardSpec s;
  s.fwd.bag_lengths = {0, 0, 0};
  BackwardProblem bp = make_backward_problem(s, handle());
  const BackwardOutputs out = run(bp);
  EXPECT_EQ(out.num_unique.get_int(0), 0);
  EXPECT_EQ(check_gradients("cpu", bp, out, reference_backward(bp)), 0);
}

// ---- against the forward: the gradient is the derivative ------------------------------

// f(T) = sum(forward(T) * go) is linear in T for SUM, MEAN and NONE, so for a
// direction D: f(T + D) - f(T) = sum(forward(D) * go) = <grad, D>. With
// integer-valued data every float32 operation of SUM / NONE is exact.
TEST_F(BackwardCpu, DirectionalDerivativeOfTheForward) {
  for (spembed_pooling_t pooling :
       {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_NONE}) {
    for (bool weighted : {false, true}) {
      if (weighted && pooling == SPEMBED_POOLING_MEAN) continue;
      SCOPED_TRACE(pooling_name(pooling) + (weighted ? " weighted" : ""));
      BackwardSpec s;
      s.fwd.pooling = pooling;
      s.fwd.weighted = weighted;
      s.fwd.dims = {5};
      s.fwd.rows = 30;
      Rng rng(77 + static_cast<uint64_t>(pooling));
      s.fwd.bag_lengths = awkward_lengths(rng, 20);
      s.fwd.padding_idx = 2;
      s.fwd.padding_fraction = 0.1;
      s.fwd.seed = 5 + static_cast<uint64_t>(pooling);
      s.sparse = false;
      BackwardProblem bp = make_backward_problem(s, handle());
      for (int64_t r = 0; r < s.fwd.rows; ++r) {
        for (int64_t d = 0; d < 5; ++d) bp.grad_tables[0].set(r, d, 0.0);
      }
      const BackwardOutputs out = run(bp);

      // forward(D) for a random integer-valued direction D.
      HostTensor dir(kF32, {s.fwd.rows, 5});
      fill_random(dir, rng, DataKind::kInt);
      Problem& p = bp.fwd;
      const int64_t out_rows = pooling == SPEMBED_POOLING_NONE ? p.nnz() : p.bags_per_table;
      HostTensor y(kF32, {out_rows, 5});
      ASSERT_EQ(spembed_embedding_bag_forward(handle(), dir.dl(), p.indices.dl(),
                                              p.has_offsets ? p.offsets_t.dl() : nullptr,
                                              weighted ? p.weights_t.dl() : nullptr, &p.options,
                                              y.dl(), nullptr, nullptr, nullptr, 0, nullptr),
                SPEMBED_STATUS_SUCCESS)
          << spembed_last_error();
      double change = 0.0, change_abs = 0.0;
      for (int64_t r = 0; r < out_rows; ++r) {
        for (int64_t d = 0; d < 5; ++d) {
          change += y.get(r, d) * bp.grad_output.get(r, d);
          change_abs += std::fabs(y.get(r, d) * bp.grad_output.get(r, d));
        }
      }
      double inner = 0.0;
      for (int64_t r = 0; r < s.fwd.rows; ++r) {
        for (int64_t d = 0; d < 5; ++d) inner += out.grad_tables[0].get(r, d) * dir.get(r, d);
      }
      if (pooling == SPEMBED_POOLING_MEAN) {
        // Both sides divide by the bag counts in float32: a few roundings of
        // each term; 2^-20 relative covers 16 unit roundoffs.
        EXPECT_NEAR(inner, change, change_abs * std::ldexp(1.0, -20));
      } else {
        EXPECT_EQ(inner, change);
      }
    }
  }
}

// ---- summation order -------------------------------------------------------------------

// A row with 1000 contributions of real values: its gradient is bitwise the
// documented order (chunks of SPEMBED_BACKWARD_CHUNK summed from +0, then the
// chunk sums in order), emulated here in float.
TEST_F(BackwardCpu, DocumentedChunkedSummationOrder) {
  BackwardSpec s;
  s.fwd.dims = {4};
  s.fwd.rows = 10;
  s.fwd.weighted = true;
  s.fwd.bag_lengths = {300, 0, 450, 250};
  s.fwd.data = DataKind::kReal;
  s.grad_data = DataKind::kReal;
  s.ids = IdDistribution::kHotRow30;
  BackwardProblem bp = make_backward_problem(s, handle());
  Problem& p = bp.fwd;
  for (int64_t& id : p.ids) id = 4;  // every position into row 4
  p.indices = make_index_tensor(kI64, p.ids);
  const BackwardOutputs out = run(bp);
  for (int64_t d = 0; d < 4; ++d) {
    float total = 0.0f;
    float chunk = 0.0f;
    int64_t k = 0;
    for (int64_t g = 0; g < 4; ++g) {
      for (int64_t i = p.offsets[size_t(g)]; i < p.offsets[size_t(g) + 1]; ++i, ++k) {
        const float term = p.weights[size_t(i)] * static_cast<float>(bp.grad_output.get(g, d));
        chunk = chunk + term;
        if ((k + 1) % SPEMBED_BACKWARD_CHUNK == 0) {
          total = k + 1 == SPEMBED_BACKWARD_CHUNK ? chunk : total + chunk;
          chunk = 0.0f;
        }
      }
    }
    total = total + chunk;  // the last, partial chunk (1000 is not a multiple of 256)
    const float want = static_cast<float>(bp.grad_tables[0].get(4, d)) + total;
    EXPECT_EQ(static_cast<float>(out.grad_tables[0].get(4, d)), want) << "column " << d;
    EXPECT_EQ(static_cast<float>(out.unique_grads.get(0, d)), total) << "column " << d;
  }
}

// ---- determinism -----------------------------------------------------------------------

TEST_F(BackwardCpu, TwentyRunsAreBitwiseIdentical) {
  for (IdDistribution dist : {IdDistribution::kHotRow30, IdDistribution::kZipf12}) {
    BackwardSpec s;
    s.fwd.dims = {33};
    s.fwd.rows = 500;
    s.fwd.weighted = true;
    Rng rng(99);
    s.fwd.bag_lengths = awkward_lengths(rng, 400);
    s.fwd.data = DataKind::kReal;
    s.grad_data = DataKind::kReal;
    s.ids = dist;
    s.weight_grads = true;
    s.step = true;
    spembed_optimizer_options_init(&s.optimizer);
    s.optimizer.optimizer = SPEMBED_OPTIMIZER_ADAM;
    BackwardProblem bp = make_backward_problem(s, handle());
    const BackwardOutputs first = run(bp);
    for (int k = 1; k < 20; ++k) {
      const BackwardOutputs again = run(bp);
      ASSERT_EQ(compare_bitwise("run " + std::to_string(k), bp, first, again), 0);
    }
    // ATOMIC differs only in how (a) is summed on CUDA; on the CPU it is the same path.
    const BackwardOutputs atomic = run(bp, SPEMBED_BACKWARD_ATOMIC);
    EXPECT_EQ(compare_bitwise("atomic", bp, first, atomic), 0);
  }
}

// ---- optimizers --------------------------------------------------------------------------

struct OptimizerCase {
  spembed_optimizer_t optimizer;
  DLDataType table_dtype;
  float weight_decay;
  bool stochastic;
};

std::string optimizer_name(spembed_optimizer_t o) {
  switch (o) {
    case SPEMBED_OPTIMIZER_SGD:
      return "sgd";
    case SPEMBED_OPTIMIZER_ADAGRAD:
      return "adagrad";
    case SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD:
      return "rowwise_adagrad";
    case SPEMBED_OPTIMIZER_ADAM:
      return "adam";
  }
  return "unknown";
}

class BackwardOptimizer : public BackwardCpu,
                          public ::testing::WithParamInterface<OptimizerCase> {};

TEST_P(BackwardOptimizer, TwoStepsMatchTorchFormulas) {
  const OptimizerCase& c = GetParam();
  BackwardSpec s;
  s.fwd.table_dtype = c.table_dtype;
  s.fwd.dims = {9};
  s.fwd.rows = 60;
  s.fwd.bag_lengths = {5, 0, 12, 3, 7, 1, 9, 4};
  s.fwd.padding_idx = 1;
  s.fwd.padding_fraction = 0.1;
  s.fwd.weighted = true;
  s.fwd.seed = 3 + static_cast<uint64_t>(c.optimizer);
  s.step = true;
  s.weight_grads = true;
  spembed_optimizer_options_init(&s.optimizer);
  s.optimizer.optimizer = c.optimizer;
  s.optimizer.learning_rate = 0.05f;
  s.optimizer.weight_decay = c.weight_decay;
  s.optimizer.eps = 1e-6f;
  s.optimizer.stochastic_rounding = c.stochastic ? 1 : 0;
  s.optimizer.seed = 1234;
  BackwardProblem bp = make_backward_problem(s, handle());
  const BackwardExpected e = reference_backward(bp);
  BackwardOutputs out = run(bp);
  EXPECT_EQ(check_gradients("step 1", bp, out, e), 0);  // (d) reads the weights before the step
  EXPECT_EQ(check_optimizer("step 1", bp, out, e), 0);

  // Step 2 from the library's state after step 1.
  for (size_t t = 0; t < out.tables.size(); ++t) bp.fwd.tables[t] = out.tables[t].clone();
  for (size_t t = 0; t < out.states1.size(); ++t) bp.states1[t] = out.states1[t].clone();
  for (size_t t = 0; t < out.states2.size(); ++t) bp.states2[t] = out.states2[t].clone();
  bp.spec.optimizer.step = 2;
  bp.spec.optimizer.seed = 5678;
  bp.spec.weight_grads = false;
  const BackwardOutputs out2 = run(bp);
  EXPECT_EQ(check_optimizer("step 2", bp, out2, e), 0);
}

std::vector<OptimizerCase> optimizer_cases() {
  std::vector<OptimizerCase> cases;
  for (spembed_optimizer_t o : {SPEMBED_OPTIMIZER_SGD, SPEMBED_OPTIMIZER_ADAGRAD,
                                SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD, SPEMBED_OPTIMIZER_ADAM}) {
    for (DLDataType t : {kF32, kF16, kBF16, kF64}) {
      for (float wd : {0.0f, 0.01f}) {
        cases.push_back({o, t, wd, false});
        if (!same_dtype(t, kF32) && !same_dtype(t, kF64)) cases.push_back({o, t, wd, true});
      }
    }
  }
  return cases;
}

std::string optimizer_case_name(const ::testing::TestParamInfo<OptimizerCase>& info) {
  const OptimizerCase& c = info.param;
  return optimizer_name(c.optimizer) + "_" + dtype_name(c.table_dtype) +
         (c.weight_decay > 0 ? "_wd" : "") + (c.stochastic ? "_sr" : "");
}

// What GoogleTest prints for GetParam() (instead of a byte dump).
void PrintTo(const OptimizerCase& c, std::ostream* os) {
  *os << "optimizer=" << optimizer_name(c.optimizer) << " table=" << dtype_name(c.table_dtype)
      << " weight_decay=" << c.weight_decay
      << " stochastic_rounding=" << (c.stochastic ? "yes" : "no");
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardOptimizer, ::testing::ValuesIn(optimizer_cases()),
                         optimizer_case_name);

// ---- stochastic rounding -----------------------------------------------------------------

// rows x dim weights all w0, one id per bag, the same go everywhere: SGD with
// lr 1 makes every weight the same float32 value v = w0 - g, which is then
// rounded to float16 / bfloat16.
struct SrProblem {
  HostTensor table, indices, go;
  spembed_embedding_bag_options_t options{};
  spembed_optimizer_options_t opt{};
  spembed_embedding_bag_backward_args_t args{};
  SrProblem(DLDataType dtype, int64_t rows, int64_t dim, double w0, float g, uint64_t seed) {
    table = make_matrix(dtype, rows, dim, std::vector<double>(static_cast<size_t>(rows * dim), w0));
    std::vector<int64_t> ids(static_cast<size_t>(rows));
    for (int64_t r = 0; r < rows; ++r) ids[size_t(r)] = r;
    indices = make_index_tensor(kI64, ids);
    go = make_matrix(kF32, rows, dim, std::vector<double>(static_cast<size_t>(rows * dim), g));
    spembed_embedding_bag_options_init(&options);
    options.fixed_bag_size = 1;
    spembed_optimizer_options_init(&opt);
    opt.learning_rate = 1.0f;
    opt.stochastic_rounding = 1;
    opt.seed = seed;
    args.indices = indices.dl();
    args.grad_output = go.dl();
    args.table = table.dl();
    args.optimizer = &opt;
  }
  spembed_status_t run(spembed_handle_t h) {
    return spembed_embedding_bag_backward(h, &args, &options, SPEMBED_BACKWARD_DETERMINISTIC,
                                          nullptr, nullptr, 0, nullptr);
  }
  double mean() const {
    double sum = 0.0;
    for (int64_t r = 0; r < table.size(0); ++r) {
      for (int64_t d = 0; d < table.size(1); ++d) sum += table.get(r, d);
    }
    return sum / static_cast<double>(table.size(0) * table.size(1));
  }
};

TEST_F(BackwardCpu, StochasticRoundingIsReproducibleAndUnbiased) {
  struct Case {
    DLDataType dtype;
    double w0;
    double ulp;  // of the result's binade
  };
  // 1 + 0.3 ulp in each format's [1, 2) binade, and a float16 subnormal.
  for (const Case& c :
       {Case{kBF16, 1.0, std::ldexp(1.0, -7)}, Case{kF16, 1.0, std::ldexp(1.0, -10)},
        Case{kF16, 0.0, std::ldexp(1.0, -24)}}) {
    SCOPED_TRACE(dtype_name(c.dtype) + " w0=" + std::to_string(c.w0));
    const float g = static_cast<float>(-0.3 * c.ulp);
    const double v = static_cast<double>(static_cast<float>(c.w0) - g);  // the float32 result
    SrProblem a(c.dtype, 512, 64, c.w0, g, 42), b(c.dtype, 512, 64, c.w0, g, 42),
        other(c.dtype, 512, 64, c.w0, g, 43);
    ASSERT_EQ(a.run(handle()), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    ASSERT_EQ(b.run(handle()), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    ASSERT_EQ(other.run(handle()), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    EXPECT_TRUE(a.table.bytes_equal(b.table.bytes())) << "same seed, different result";
    EXPECT_FALSE(a.table.bytes_equal(other.table.bytes())) << "another seed, same result";
    // Each result is one of the two neighbours of v, so the mean of N
    // independent roundings has standard deviation <= ulp / (2 sqrt(N)); 6
    // of those is a false-alarm rate below 1e-8. Round-to-nearest would be
    // 0.3 ulp off, 150 standard deviations.
    const double n = 512.0 * 64.0;
    EXPECT_NEAR(a.mean(), v, 6.0 * c.ulp / (2.0 * std::sqrt(n)));
    for (int64_t r = 0; r < 512; r += 97) {
      const double x = a.table.get(r, 0);
      EXPECT_TRUE(x == c.w0 || x == c.w0 + c.ulp) << x;
    }
  }
}

// ---- table-batched --------------------------------------------------------------------

TEST_F(BackwardCpu, BatchedMixedDims) {
  for (spembed_pooling_t pooling :
       {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX}) {
    SCOPED_TRACE(pooling_name(pooling));
    BackwardSpec s;
    s.fwd.batched = true;
    s.fwd.pooling = pooling;
    s.fwd.weighted = pooling == SPEMBED_POOLING_SUM;
    s.fwd.dims = {3, 8, 1, 5};
    s.fwd.rows = 25;
    Rng rng(7);
    s.fwd.bag_lengths = {};
    for (int k = 0; k < 4 * 6; ++k) s.fwd.bag_lengths.push_back(rng.uniform_int(0, 9));
    s.fwd.padding_idx = 0;
    s.fwd.padding_fraction = 0.1;
    s.fwd.index_dtype = kI32;
    s.fwd.seed = 21 + static_cast<uint64_t>(pooling);
    s.weight_grads = s.fwd.weighted;
    s.step = true;
    spembed_optimizer_options_init(&s.optimizer);
    s.optimizer.optimizer = SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
    BackwardProblem bp = make_backward_problem(s, handle());
    const BackwardExpected e = reference_backward(bp);
    const BackwardOutputs out = run(bp);
    EXPECT_EQ(check_gradients("batched", bp, out, e), 0);
    EXPECT_EQ(check_optimizer("batched", bp, out, e), 0);
  }
}

// ---- C++ API --------------------------------------------------------------------------

TEST_F(BackwardCpu, CppApi) {
  spembed::Handle h;
  Tiny x(SPEMBED_POOLING_SUM);
  spembed::EmbeddingBagOptions options;
  options.with_padding_idx(0);
  spembed::EmbeddingBagBackwardArgs args = x.args;
  h.embedding_bag_backward(args, options);
  x.expect_grad({0, 0, 2, 4, -1, 0.5f, 1, 2, -2, 1});
  EXPECT_EQ(h.backward_workspace_size(kDLCPU, kI64, 100, 1000, 8), 0u);
  spembed::OptimizerOptions opt;
  opt.with_optimizer(SPEMBED_OPTIMIZER_ADAM).with_step(0);
  args.optimizer = &opt;
  try {
    h.embedding_bag_backward(args, options);
    ADD_FAILURE() << "step 0 was accepted";
  } catch (const spembed::Error& err) {
    EXPECT_EQ(err.status(), SPEMBED_STATUS_INVALID_ARGUMENT);
    EXPECT_NE(std::string(err.what()).find("optimizer.step"), std::string::npos) << err.what();
  }
}

}  // namespace
}  // namespace spembed_test
