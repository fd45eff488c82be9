// Bad arguments of every backward entry point: each is rejected with the
// right status and a message naming the argument, and nothing is written
// (every output's bytes, the table's and the states' are compared with a
// snapshot taken before the call).
#include <gtest/gtest.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include "backward_util.h"
#include "kernels/embedding_bag/embedding_bag_backward_columns.h"
#include "kernels/embedding_bag/embedding_bag_backward_workspace.h"
#include "test_util.h"

namespace spembed_test {
namespace {

// A valid single-table SUM call with every output requested (Adam), plus
// handles to break it one way at a time.
struct Valid {
  Handle handle;
  HostTensor table = make_matrix(kF32, 6, 4, std::vector<double>(24, 0.5));
  HostTensor indices = make_index_tensor(kI64, {1, 2, 2, 5, 3});
  HostTensor offsets = make_index_tensor(kI64, {0, 2, 5});
  HostTensor weights = make_f32_tensor({1, 2, 3, 4, 5});
  HostTensor go = make_matrix(kF32, 2, 4, std::vector<double>(8, 1.0));
  HostTensor grad = make_matrix(kF32, 6, 4, std::vector<double>(24, 0.0));
  HostTensor ids = HostTensor(kI64, {5});
  HostTensor rows = HostTensor(kF32, {5, 4});
  HostTensor count = HostTensor(kI64, {1});
  HostTensor s1 = make_matrix(kF32, 6, 4, std::vector<double>(24, 0.0));
  HostTensor s2 = make_matrix(kF32, 6, 4, std::vector<double>(24, 0.0));
  HostTensor gw = HostTensor(kF32, {5});
  HostTensor report = make_report();
  spembed_embedding_bag_options_t options{};
  spembed_optimizer_options_t opt{};
  spembed_embedding_bag_backward_args_t args{};
  spembed_backward_algorithm_t algorithm = SPEMBED_BACKWARD_DETERMINISTIC;

  Valid() {
    for (HostTensor* t : {&ids, &rows, &count, &gw}) t->fill_bytes(kPoisonByte);
    spembed_embedding_bag_options_init(&options);
    spembed_optimizer_options_init(&opt);
    opt.optimizer = SPEMBED_OPTIMIZER_ADAM;
    args.indices = indices.dl();
    args.offsets = offsets.dl();
    args.per_sample_weights = weights.dl();
    args.grad_output = go.dl();
    args.grad_table = grad.dl();
    args.unique_ids = ids.dl();
    args.unique_grads = rows.dl();
    args.num_unique = count.dl();
    args.table = table.dl();
    args.state1 = s1.dl();
    args.state2 = s2.dl();
    args.optimizer = &opt;
    args.grad_per_sample_weights = gw.dl();
  }
  std::vector<const HostTensor*> written() const {
    return {&table, &grad, &ids, &rows, &count, &s1, &s2, &gw};
  }
  spembed_status_t call() {
    return spembed_embedding_bag_backward(handle.get(), &args, &options, algorithm, report.dl(),
                                          nullptr, 0, nullptr);
  }
};

struct BadCase {
  std::string name;
  std::function<void(Valid&)> breaks;
  spembed_status_t status;
  std::vector<std::string> mentions;
  bool report_written = false;  // the data checks write the report on failure
};

// What GoogleTest prints for GetParam() (instead of a byte dump).
void PrintTo(const BadCase& c, std::ostream* os) {
  *os << c.name << ": expects " << spembed_status_string(c.status) << " naming "
      << ::testing::PrintToString(c.mentions) << (c.report_written ? ", report written" : "");
}

std::vector<BadCase> bad_cases() {
  return {
      {"NullTable",
       [](Valid& v) { v.args.table = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"table"}},
      {"NoOutput",
       [](Valid& v) {
         v.args.grad_table = v.args.unique_ids = v.args.unique_grads = v.args.num_unique = nullptr;
         v.args.optimizer = nullptr;
         v.args.state1 = v.args.state2 = nullptr;
         v.args.grad_per_sample_weights = nullptr;
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"no output"}},
      {"NullIndices",
       [](Valid& v) { v.args.indices = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"indices"}},
      {"NullGradOutput",
       [](Valid& v) { v.args.grad_output = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_output"}},
      {"GradOutputShape",
       [](Valid& v) {
         v.go.set_view_shape({3, 4});
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_output"}},
      {"GradOutputDtype",
       [](Valid& v) { v.go.set_view_dtype(kF64); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_output"}},
      {"GradOutputDevice",
       [](Valid& v) {
         v.go.set_view_device(DLDevice{kDLCUDA, 0});
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_output"}},
      {"MaxWithoutArgmax",
       [](Valid& v) {
         v.options.pooling = SPEMBED_POOLING_MAX;
         v.args.per_sample_weights = nullptr;
         v.args.grad_per_sample_weights = nullptr;
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"argmax"}},
      {"ScaleGradByFreqWithMax",
       [](Valid& v) {
         v.options.pooling = SPEMBED_POOLING_MAX;
         v.options.scale_grad_by_freq = 1;
         v.args.argmax = v.indices.dl();  // a valid call otherwise would need argmax
         v.args.per_sample_weights = nullptr;
         v.args.grad_per_sample_weights = nullptr;
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"options.scale_grad_by_freq", "MAX"}},
      {"ArgmaxWithoutMax",
       [](Valid& v) { v.args.argmax = v.indices.dl(); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"argmax"}},
      {"GradTableShape",
       [](Valid& v) {
         v.grad.set_view_shape({6, 3});
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_table"}},
      {"GradTableDtype",
       [](Valid& v) { v.grad.set_view_dtype(kF16); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_table"}},
      {"SparseMissingNumUnique",
       [](Valid& v) { v.args.num_unique = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"num_unique"}},
      {"SparseMissingGrads",
       [](Valid& v) { v.args.unique_grads = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"unique_grads"}},
      {"UniqueIdsCapacity",
       [](Valid& v) { v.ids.set_view_shape({4}); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"unique_ids"}},
      {"UniqueIdsDtype",
       [](Valid& v) { v.ids.set_view_dtype(kI32); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"unique_ids"}},
      {"UniqueGradsShape",
       [](Valid& v) {
         v.rows.set_view_shape({5, 3});
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"unique_grads"}},
      {"NumUniqueDtype",
       [](Valid& v) { v.count.set_view_dtype(kI32); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"num_unique"}},
      {"UnknownOptimizer",
       [](Valid& v) { v.opt.optimizer = static_cast<spembed_optimizer_t>(9); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"optimizer"}},
      {"NanLearningRate",
       [](Valid& v) { v.opt.learning_rate = std::numeric_limits<float>::quiet_NaN(); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"learning_rate"}},
      {"NegativeEps",
       [](Valid& v) { v.opt.eps = -1.0f; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"eps"}},
      {"InfWeightDecay",
       [](Valid& v) { v.opt.weight_decay = INFINITY; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"weight_decay"}},
      {"Beta1One",
       [](Valid& v) { v.opt.beta1 = 1.0f; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"beta1"}},
      {"Beta2Negative",
       [](Valid& v) { v.opt.beta2 = -0.1f; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"beta2"}},
      {"AdamStepZero", [](Valid& v) { v.opt.step = 0; }, SPEMBED_STATUS_INVALID_ARGUMENT, {"step"}},
      {"AdamMissingState2",
       [](Valid& v) { v.args.state2 = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"state2"}},
      {"AdamState1Shape",
       [](Valid& v) {
         v.s1.set_view_shape({5, 4});
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"state1"}},
      {"AdamState2Dtype",
       [](Valid& v) { v.s2.set_view_dtype(kF16); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"state2"}},
      {"SgdWithState",
       [](Valid& v) {
         v.opt.optimizer = SPEMBED_OPTIMIZER_SGD;
         v.args.state2 = nullptr;
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"state1"}},
      {"AdagradWithState2",
       [](Valid& v) { v.opt.optimizer = SPEMBED_OPTIMIZER_ADAGRAD; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"state2"}},
      {"RowwiseState2D",
       [](Valid& v) {
         v.opt.optimizer = SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
         v.args.state2 = nullptr;
       },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"state1"}},
      {"StateWithoutOptimizer",
       [](Valid& v) { v.args.optimizer = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"state1"}},
      {"WeightGradsWithoutWeights",
       [](Valid& v) { v.args.per_sample_weights = nullptr; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_per_sample_weights"}},
      {"WeightGradsShape",
       [](Valid& v) { v.gw.set_view_shape({4}); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"grad_per_sample_weights"}},
      {"WeightsWithMean",
       [](Valid& v) { v.options.pooling = SPEMBED_POOLING_MEAN; },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"per_sample_weights"}},
      {"UnknownAlgorithm",
       [](Valid& v) { v.algorithm = static_cast<spembed_backward_algorithm_t>(7); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"algorithm"}},
      {"UnknownPooling",
       [](Valid& v) { v.options.pooling = static_cast<spembed_pooling_t>(11); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"pooling"}},
      {"ReportDtype",
       [](Valid& v) { v.report.set_view_dtype(kI32); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"report"}},
      {"OutOfRangeIdUnderError",
       [](Valid& v) {
         v.table.set_view_shape({5, 4});
         v.grad.set_view_shape({5, 4});
         v.s1.set_view_shape({5, 4});
         v.s2.set_view_shape({5, 4});
       },
       SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
       {"indices[3]=5"},
       true},
      {"BadOffsets",
       [](Valid& v) { v.offsets.set_int(1, 6); },
       SPEMBED_STATUS_INVALID_ARGUMENT,
       {"offsets"},
       true},
  };
}

class BackwardBadArgument : public ::testing::TestWithParam<BadCase> {};

TEST_P(BackwardBadArgument, RejectedAndNothingWritten) {
  const BadCase& c = GetParam();
  {  // the valid call succeeds: each case breaks exactly one thing
    Valid ok;
    ASSERT_EQ(ok.call(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  }
  Valid v;
  if (c.name == "OutOfRangeIdUnderError") v.indices.set_int(3, 5);
  c.breaks(v);
  std::vector<std::vector<uint8_t>> before;
  for (const HostTensor* t : v.written()) before.push_back(t->bytes());
  const std::vector<uint8_t> report_before = v.report.bytes();
  const spembed_status_t st = v.call();
  EXPECT_EQ(st, c.status) << spembed_status_string(st) << ": " << spembed_last_error();
  EXPECT_TRUE(mentions_any(spembed_last_error(), c.mentions))
      << "message \"" << spembed_last_error() << "\" should name " << c.mentions[0];
  const std::vector<const HostTensor*> outs = v.written();
  for (size_t k = 0; k < outs.size(); ++k) {
    EXPECT_TRUE(outs[k]->bytes_equal(before[k])) << "output " << k << " was written";
  }
  if (c.report_written) {
    EXPECT_EQ(v.report.get_int(SPEMBED_REPORT_STATUS), c.status);
  } else {
    EXPECT_TRUE(v.report.bytes_equal(report_before)) << "report was written";
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, BackwardBadArgument, ::testing::ValuesIn(bad_cases()),
                         [](const ::testing::TestParamInfo<BadCase>& param) {
                           return param.param.name;
                         });

TEST(BackwardValidation, NullHandleAndArgs) {
  Valid v;
  EXPECT_EQ(spembed_embedding_bag_backward(nullptr, &v.args, nullptr, v.algorithm, nullptr, nullptr,
                                           0, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"handle"}));
  EXPECT_EQ(spembed_embedding_bag_backward(v.handle.get(), nullptr, nullptr, v.algorithm, nullptr,
                                           nullptr, 0, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"args"}));
}

TEST(BackwardValidation, OptimizerDefaults) {
  spembed_optimizer_options_t o;
  std::memset(&o, 0x7F, sizeof(o));
  spembed_optimizer_options_init(&o);
  EXPECT_EQ(o.optimizer, SPEMBED_OPTIMIZER_SGD);
  EXPECT_EQ(o.learning_rate, 0.01f);
  EXPECT_EQ(o.eps, 1e-8f);
  EXPECT_EQ(o.beta1, 0.9f);
  EXPECT_EQ(o.beta2, 0.999f);
  EXPECT_EQ(o.weight_decay, 0.0f);
  EXPECT_EQ(o.step, 1);
  EXPECT_EQ(o.stochastic_rounding, 0);
  EXPECT_EQ(o.seed, 0u);
  spembed_optimizer_options_init(nullptr);  // no crash
}

TEST(BackwardValidation, WorkspaceSizeQuery) {
  Handle h;
  size_t bytes = 123;
  ASSERT_EQ(spembed_embedding_bag_backward_workspace_size(h.get(), kDLCPU, kI32, 1000, 100, 16,
                                                          SPEMBED_BACKWARD_DETERMINISTIC, &bytes),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(bytes, 0u);
  struct Bad {
    spembed_handle_t handle;
    DLDeviceType device;
    DLDataType index;
    int64_t nnz, rows, dim;
    int algorithm;
    size_t* out;
    const char* name;
  };
  for (const Bad& b : {Bad{nullptr, kDLCPU, kI32, 1, 1, 1, 0, &bytes, "handle"},
                       Bad{h.get(), kDLCPU, kI32, 1, 1, 1, 0, nullptr, "bytes"},
                       Bad{h.get(), kDLMetal, kI32, 1, 1, 1, 0, &bytes, "device_type"},
                       Bad{h.get(), kDLCPU, kF32, 1, 1, 1, 0, &bytes, "index_dtype"},
                       Bad{h.get(), kDLCPU, kI64, -1, 1, 1, 0, &bytes, "nnz"},
                       Bad{h.get(), kDLCPU, kI64, 1, -1, 1, 0, &bytes, "rows"},
                       Bad{h.get(), kDLCPU, kI64, 1, 1, 0, 0, &bytes, "dim"},
                       Bad{h.get(), kDLCPU, kI64, 1, 1, 1, 5, &bytes, "algorithm"}}) {
    bytes = 77;
    EXPECT_EQ(spembed_embedding_bag_backward_workspace_size(
                  b.handle, b.device, b.index, b.nnz, b.rows, b.dim,
                  static_cast<spembed_backward_algorithm_t>(b.algorithm), b.out),
              SPEMBED_STATUS_INVALID_ARGUMENT)
        << b.name;
    EXPECT_TRUE(mentions_any(spembed_last_error(), {b.name})) << spembed_last_error();
    EXPECT_EQ(bytes, 77u) << b.name << ": written on failure";
  }
}

// The batched query: 0 for a CPU batch; the batch and the shared arguments
// are checked, nothing written on failure.
TEST(BackwardValidation, BatchedWorkspaceSizeQuery) {
  Handle h;
  Handle other;
  HostTensor t0(kF32, {10, 3});
  HostTensor t1(kF32, {20, 8});
  const std::vector<DLTensor> views = {*t0.dl(), *t1.dl()};
  TableBatch batch(h.get(), views);
  size_t bytes = 123;
  ASSERT_EQ(spembed_embedding_bag_batched_backward_workspace_size(h.get(), batch.get(), kI64, 50,
                                                                  SPEMBED_BACKWARD_ATOMIC, &bytes),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  EXPECT_EQ(bytes, 0u);
  struct Bad {
    spembed_handle_t handle;
    spembed_table_batch_t batch;
    DLDataType index;
    int64_t nnz;
    size_t* out;
    const char* name;
  };
  for (const Bad& b : {Bad{nullptr, batch.get(), kI64, 1, &bytes, "handle"},
                       Bad{h.get(), nullptr, kI64, 1, &bytes, "batch"},
                       Bad{other.get(), batch.get(), kI64, 1, &bytes, "batch"},
                       Bad{h.get(), batch.get(), kF16, 1, &bytes, "index_dtype"},
                       Bad{h.get(), batch.get(), kI64, -3, &bytes, "nnz"},
                       Bad{h.get(), batch.get(), kI64, 1, nullptr, "bytes"}}) {
    bytes = 77;
    EXPECT_EQ(spembed_embedding_bag_batched_backward_workspace_size(
                  b.handle, b.batch, b.index, b.nnz, SPEMBED_BACKWARD_DETERMINISTIC, b.out),
              SPEMBED_STATUS_INVALID_ARGUMENT)
        << b.name;
    EXPECT_TRUE(mentions_any(spembed_last_error(), {b.name})) << spembed_last_error();
    EXPECT_EQ(bytes, 77u) << b.name << ": written on failure";
  }
}

// The CUDA workspace is a function of what the queries are given only: the
// width of its positions depends on nnz and the rows (never on the bag
// count, which the queries do not know), bag indices are 64-bit in every
// layout, and the public query is that plan's size. (A call with 2^32 bags
// cannot be allocated in a test; before, the call widened its positions for
// such bag counts and needed more bytes than the query had said.)
TEST(BackwardWorkspacePlan, PositionWidthFromTheQueryArgumentsOnly) {
  using spembed::detail::backward_wide_positions;
  const int64_t kI32Max = std::numeric_limits<int32_t>::max();
  const int64_t kU32Max = std::numeric_limits<uint32_t>::max();
  EXPECT_FALSE(backward_wide_positions(0, 0));
  EXPECT_FALSE(backward_wide_positions(1000, 100));
  EXPECT_FALSE(backward_wide_positions(kI32Max - 2, kU32Max - 1));  // the largest narrow case
  EXPECT_TRUE(backward_wide_positions(kI32Max - 1, 10));  // nnz + 1 no longer fits CUB's int
  EXPECT_TRUE(backward_wide_positions(kI32Max, 10));
  EXPECT_TRUE(backward_wide_positions(int64_t{1} << 40, 10));
  EXPECT_TRUE(backward_wide_positions(10, kU32Max));  // the sentinel key total_rows
  EXPECT_TRUE(backward_wide_positions(10, int64_t{1} << 40));
}

TEST(BackwardWorkspacePlan, BagIndicesAreWideInEveryLayout) {
  using spembed::detail::plan_backward_workspace;
  for (const auto& [nnz, rows] : {std::pair<int64_t, int64_t>{1000, 50},
                                  std::pair<int64_t, int64_t>{777, int64_t{1} << 33}}) {
    SCOPED_TRACE("nnz " + std::to_string(nnz) + " rows " + std::to_string(rows));
    const auto planned = plan_backward_workspace(nullptr, nnz, 1, rows, 16);
    std::vector<unsigned char> memory(planned.total_bytes);
    const auto ws = plan_backward_workspace(memory.data(), nnz, 1, rows, 16);
    EXPECT_EQ(ws.total_bytes, planned.total_bytes);
    EXPECT_EQ(ws.wide, rows >= (int64_t{1} << 32));
    // bag_of holds nnz 64-bit bag indices before the next array starts.
    const auto* bag_of = static_cast<unsigned char*>(ws.bag_of);
    const auto* next = static_cast<unsigned char*>(ws.count_of);
    EXPECT_GE(next - bag_of, static_cast<std::ptrdiff_t>(nnz * sizeof(uint64_t)));
    // Every array lies inside the workspace, after the check record.
    const std::vector<const void*> arrays = {
        ws.keys[0],  ws.keys[1],     ws.vals[0],   ws.vals[1],  ws.bag_of,      ws.count_of,
        ws.scratch,  ws.unique_keys, ws.run_start, ws.run_item, ws.run_partial, ws.item_run,
        ws.hot_runs, ws.counters,    ws.cub_temp,  ws.partials};
    for (const void* a : arrays) {
      const auto* at = static_cast<const unsigned char*>(a);
      EXPECT_GE(at, memory.data() + spembed::detail::kForwardWorkspaceBytes);
      EXPECT_LT(at, memory.data() + memory.size());
    }
  }
}

TEST(BackwardWorkspacePlan, QueryIsThePlansSize) {
  using spembed::detail::plan_backward_workspace;
  Handle h;
  const int64_t kI32Max = std::numeric_limits<int32_t>::max();
  struct Case {
    int64_t nnz, rows, dim;
  };
  for (const Case& c :
       {Case{0, 1, 1}, Case{1, 1, 1}, Case{1000, 100, 16}, Case{5, 3, 1 << 20},
        Case{kI32Max - 2, 10, 8}, Case{kI32Max - 1, 10, 8}, Case{10, int64_t{1} << 32, 8}}) {
    size_t bytes = 0;
    ASSERT_EQ(
        spembed_embedding_bag_backward_workspace_size(h.get(), kDLCUDA, kI64, c.nnz, c.rows, c.dim,
                                                      SPEMBED_BACKWARD_DETERMINISTIC, &bytes),
        SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    EXPECT_EQ(
        bytes,
        plan_backward_workspace(nullptr, c.nnz, 1, c.rows, static_cast<int32_t>(c.dim)).total_bytes)
        << c.nnz << " " << c.rows << " " << c.dim;
  }
}

// The backward kernels' column arithmetic (uint32, as the forward's) at the
// widest dims the host accepts, which no test can allocate: every column of
// the row is covered once, none past the last block, nothing wraps around.
TEST(BackwardColumns, EveryAcceptedDim) {
  using spembed::detail::backward_column;
  using spembed::detail::backward_column_blocks;
  const int64_t kI32Max = std::numeric_limits<int32_t>::max();
  for (const int lanes : {1, 8, 32}) {
    for (const int vecs : {1, 4}) {
      const auto W = static_cast<uint32_t>(lanes * vecs * 4);
      for (const int64_t dim : {int64_t{1}, int64_t{513}, kI32Max - W, kI32Max - W + 1, kI32Max - 3,
                                kI32Max - 1, kI32Max}) {
        SCOPED_TRACE("dim " + std::to_string(dim) + " W " + std::to_string(W));
        const uint32_t blocks = backward_column_blocks(static_cast<uint32_t>(dim), W);
        EXPECT_EQ(int64_t{blocks}, (dim + W - 1) / W);
        // The last lane's last vector in the last block: W - 4 past the block's
        // start, covering the row's end, below 2^32 (the bag kernel narrows
        // columns to uint32).
        const int64_t last_start = backward_column(blocks - 1, W, vecs - 1, lanes, lanes - 1);
        EXPECT_EQ(last_start, int64_t{blocks - 1} * W + W - 4);
        EXPECT_LT(backward_column(blocks - 1, W, 0, lanes, 0), dim);
        EXPECT_GE(last_start + 4, dim);
        EXPECT_LT(last_start + 3, int64_t{1} << 32);
      }
    }
  }
}

// The batched form: its own argument names, per-table views, NONE refused.
TEST(BackwardValidation, Batched) {
  BackwardSpec s;
  s.fwd.batched = true;
  s.fwd.dims = {3, 5};
  s.fwd.rows = 10;
  s.fwd.bag_lengths = {2, 1, 0, 3};
  s.step = true;
  spembed_optimizer_options_init(&s.optimizer);
  s.optimizer.optimizer = SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
  Handle h;
  BackwardProblem bp = make_backward_problem(s, h.get());
  {
    BackwardOutputs out = fresh_outputs(bp);
    BackwardViews v = host_views(bp, out);
    ASSERT_EQ(run_backward(h.get(), bp, v, SPEMBED_BACKWARD_DETERMINISTIC), SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
  }
  struct Case {
    const char* name;
    std::function<void(BackwardViews&)> breaks;
    spembed_pooling_t pooling;
    spembed_status_t status;
  };
  const std::vector<Case> cases = {
      {"grad_tables[1]", [](BackwardViews& v) { v.grad_tables[1].shape[1] = 4; },
       SPEMBED_POOLING_SUM, SPEMBED_STATUS_INVALID_ARGUMENT},
      {"states1[1]", [](BackwardViews& v) { v.states1[1].dtype = kF16; }, SPEMBED_POOLING_SUM,
       SPEMBED_STATUS_INVALID_ARGUMENT},
      {"unique_ids", [](BackwardViews& v) { v.unique_ids->dtype = kI32; }, SPEMBED_POOLING_SUM,
       SPEMBED_STATUS_INVALID_ARGUMENT},
      {"unique_grads", [](BackwardViews& v) { v.unique_grads->shape[1] = 3; }, SPEMBED_POOLING_SUM,
       SPEMBED_STATUS_INVALID_ARGUMENT},
      {"pooling", [](BackwardViews&) {}, SPEMBED_POOLING_NONE, SPEMBED_STATUS_NOT_SUPPORTED},
  };
  for (const Case& c : cases) {
    BackwardOutputs out = fresh_outputs(bp);
    std::vector<std::vector<uint8_t>> before;
    for (const HostTensor& t : out.grad_tables) before.push_back(t.bytes());
    for (const HostTensor& t : out.tables) before.push_back(t.bytes());
    for (const HostTensor& t : out.states1) before.push_back(t.bytes());
    before.push_back(out.unique_ids.bytes());
    before.push_back(out.unique_grads.bytes());
    before.push_back(out.num_unique.bytes());
    BackwardViews v = host_views(bp, out);  // views of this case's fresh outputs
    c.breaks(v);
    bp.fwd.options.pooling = c.pooling;
    const spembed_status_t st = run_backward(h.get(), bp, v, SPEMBED_BACKWARD_DETERMINISTIC);
    bp.fwd.options.pooling = SPEMBED_POOLING_SUM;
    EXPECT_EQ(st, c.status) << c.name << ": " << spembed_last_error();
    EXPECT_TRUE(mentions_any(spembed_last_error(), {c.name})) << spembed_last_error();
    size_t k = 0;
    for (const HostTensor& t : out.grad_tables) EXPECT_TRUE(t.bytes_equal(before[k++])) << c.name;
    for (const HostTensor& t : out.tables) EXPECT_TRUE(t.bytes_equal(before[k++])) << c.name;
    for (const HostTensor& t : out.states1) EXPECT_TRUE(t.bytes_equal(before[k++])) << c.name;
    EXPECT_TRUE(out.unique_ids.bytes_equal(before[k++])) << c.name;
    EXPECT_TRUE(out.unique_grads.bytes_equal(before[k++])) << c.name;
    EXPECT_TRUE(out.num_unique.bytes_equal(before[k++])) << c.name;
  }
}

// CUDA tensors on a handle without a device (or a CPU-only build machine):
// rejected before any device work, naming the tensor.
TEST(BackwardValidation, MixedDevices) {
  Valid v;
  v.grad.set_view_device(DLDevice{kDLCUDA, 0});
  EXPECT_EQ(v.call(), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"grad_table"})) << spembed_last_error();
}

}  // namespace
}  // namespace spembed_test
