// The CUDA embedding bag backward against the CPU one (and both against the
// double reference of backward_util.cpp) through the public C API: the same
// problem runs on CUDA tensors with poisoned outputs and on CPU tensors.
//  - DETERMINISTIC (a) dense and (b) row-sparse gradients: bitwise equal to
//    the CPU (the documented chunked order), for both index dtypes and every
//    grad_output dtype, on uniform, Zipf 1.05 / 1.2 and hot-row ids, empty
//    bags, bags longer than a block, dims 1 to 257, and table batches.
//  - ATOMIC (a): within the reference's order-independent bound.
//  - (c) optimizer and (d) weight gradients: within the reference's bounds
//    (the CUDA side may reduce in another order).
//  - 20 runs on CUDA bitwise identical; ERROR / SKIP through the report;
//    the workspace contract (whatever the bag count); NONE ignoring offsets;
//    a hot row with more work items than the expand kernel's block.
// Every test skips when no device is usable and fails instead when
// SPEMBED_REQUIRE_GPU=1 (see gpu_util.h).
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "backward_util.h"
#include "gpu_util.h"
#include "test_util.h"

namespace spembed_test {
namespace {

// Device copies of a problem's inputs and of one run's outputs.
class DeviceBackward {
 public:
  DeviceBackward(BackwardProblem& bp, const BackwardOutputs& out) {
    Problem& p = bp.fwd;
    for (const HostTensor& t : out.tables) tables_.emplace_back(t);
    indices_ = DeviceTensor(p.indices);
    if (p.has_offsets) offsets_ = DeviceTensor(p.offsets_t);
    if (p.spec.weighted) weights_ = DeviceTensor(p.weights_t);
    if (p.spec.pooling == SPEMBED_POOLING_MAX) argmax_ = DeviceTensor(p.argmax);
    grad_output_ = DeviceTensor(bp.grad_output);
    for (const HostTensor& t : out.grad_tables) grad_tables_.emplace_back(t);
    for (const HostTensor& t : out.states1) states1_.emplace_back(t);
    for (const HostTensor& t : out.states2) states2_.emplace_back(t);
    if (bp.spec.sparse) {
      unique_ids_ = DeviceTensor(out.unique_ids);
      unique_grads_ = DeviceTensor(out.unique_grads);
      num_unique_ = DeviceTensor(out.num_unique);
    }
    if (bp.spec.weight_grads) grad_weights_ = DeviceTensor(out.grad_weights);
    report_ = DeviceTensor(out.report);

    for (DeviceTensor& t : tables_) views.tables.push_back(*t.dl());
    views.indices = indices_.dl();
    views.offsets = p.has_offsets ? offsets_.dl() : nullptr;
    views.weights = p.spec.weighted ? weights_.dl() : nullptr;
    views.argmax = p.spec.pooling == SPEMBED_POOLING_MAX ? argmax_.dl() : nullptr;
    views.grad_output = grad_output_.dl();
    for (DeviceTensor& t : grad_tables_) views.grad_tables.push_back(*t.dl());
    for (DeviceTensor& t : states1_) views.states1.push_back(*t.dl());
    for (DeviceTensor& t : states2_) views.states2.push_back(*t.dl());
    if (bp.spec.sparse) {
      views.unique_ids = unique_ids_.dl();
      views.unique_grads = unique_grads_.dl();
      views.num_unique = num_unique_.dl();
    }
    if (bp.spec.weight_grads) views.grad_weights = grad_weights_.dl();
    views.report = report_.dl();
  }
  DeviceBackward(const DeviceBackward&) = delete;
  DeviceBackward& operator=(const DeviceBackward&) = delete;

  void download(BackwardOutputs& out) const {
    for (size_t t = 0; t < tables_.size(); ++t) tables_[t].download(out.tables[t]);
    for (size_t t = 0; t < grad_tables_.size(); ++t) grad_tables_[t].download(out.grad_tables[t]);
    for (size_t t = 0; t < states1_.size(); ++t) states1_[t].download(out.states1[t]);
    for (size_t t = 0; t < states2_.size(); ++t) states2_[t].download(out.states2[t]);
    if (views.unique_ids != nullptr) {
      unique_ids_.download(out.unique_ids);
      unique_grads_.download(out.unique_grads);
      num_unique_.download(out.num_unique);
    }
    if (views.grad_weights != nullptr) grad_weights_.download(out.grad_weights);
    report_.download(out.report);
  }

  BackwardViews views;

 private:
  std::vector<DeviceTensor> tables_, grad_tables_, states1_, states2_;
  DeviceTensor indices_, offsets_, weights_, argmax_, grad_output_;
  DeviceTensor unique_ids_, unique_grads_, num_unique_, grad_weights_, report_;
};

class BackwardGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    SPEMBED_REQUIRE_CUDA_OR_SKIP();
    handle_ = std::make_unique<Handle>();
    ASSERT_EQ(handle_->create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  }
  spembed_handle_t handle() const { return handle_->get(); }
  // The message of run_cuda's call.
  const std::string& last_error() const { return last_error_; }

  // The queried workspace: the batched query for batched problems (it
  // creates v's batch, as run_backward would).
  size_t workspace_size(const BackwardProblem& bp, BackwardViews& v,
                        spembed_backward_algorithm_t algorithm) {
    size_t bytes = 0;
    spembed_status_t st = SPEMBED_STATUS_SUCCESS;
    if (bp.fwd.spec.batched) {
      if (!v.batch) v.batch = std::make_shared<TableBatch>(handle(), v.tables);
      st = spembed_embedding_bag_batched_backward_workspace_size(
          handle(), v.batch->get(), bp.fwd.spec.index_dtype, bp.nnz(), algorithm, &bytes);
    } else {
      st = spembed_embedding_bag_backward_workspace_size(handle(), kDLCUDA, bp.fwd.spec.index_dtype,
                                                         bp.nnz(), bp.total_rows, bp.max_dim,
                                                         algorithm, &bytes);
    }
    EXPECT_EQ(st, SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    return bytes;
  }

  // Runs bp on CUDA into fresh outputs (downloaded), with a workspace of the
  // queried size less `workspace_short_by` bytes, and `offsets` (uploaded) in
  // place of bp's if given. Returns the call's status in *status (or expects
  // success).
  BackwardOutputs run_cuda(BackwardProblem& bp, spembed_backward_algorithm_t algorithm,
                           spembed_status_t* status = nullptr, size_t workspace_short_by = 0,
                           const HostTensor* offsets = nullptr) {
    BackwardOutputs out = fresh_outputs(bp);
    {
      DeviceBackward dev(bp, out);
      DeviceTensor device_offsets;
      if (offsets != nullptr) {
        device_offsets = DeviceTensor(*offsets);
        dev.views.offsets = device_offsets.dl();
      }
      const size_t needed = workspace_size(bp, dev.views, algorithm);
      EXPECT_GT(needed, workspace_short_by);
      const size_t given = needed > workspace_short_by ? needed - workspace_short_by : 0;
      DeviceBuffer workspace(std::max<size_t>(given, 1));
      const spembed_status_t st =
          run_backward(handle(), bp, dev.views, algorithm, workspace.get(), given, nullptr);
      last_error_ = spembed_last_error();  // destroying a batch below clears it
      if (status != nullptr) {
        *status = st;
      } else {
        EXPECT_EQ(st, SPEMBED_STATUS_SUCCESS)
            << spembed_status_string(st) << ": " << spembed_last_error();
      }
      SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
      dev.download(out);
    }
    return out;
  }

  BackwardOutputs run_cpu(BackwardProblem& bp, const HostTensor* offsets = nullptr) {
    BackwardOutputs out = fresh_outputs(bp);
    BackwardViews v = host_views(bp, out);
    if (offsets != nullptr) v.offsets = offsets->dl();
    const spembed_status_t st = run_backward(handle(), bp, v, SPEMBED_BACKWARD_DETERMINISTIC);
    EXPECT_EQ(st, SPEMBED_STATUS_SUCCESS)
        << spembed_status_string(st) << ": " << spembed_last_error();
    return out;
  }

  // CUDA deterministic == CPU bitwise on (a) and (b); (c) and (d) of both
  // within the reference's bounds.
  void compare(BackwardProblem& bp, const std::string& what) {
    SCOPED_TRACE(what);
    const BackwardExpected e = reference_backward(bp);
    const BackwardOutputs cpu = run_cpu(bp);
    const BackwardOutputs gpu = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
    EXPECT_EQ(check_gradients("cpu", bp, cpu, e), 0);
    EXPECT_EQ(check_gradients("cuda", bp, gpu, e), 0);
    EXPECT_EQ(same_gradients(bp, cpu, gpu), 0);
    if (bp.spec.step) {
      EXPECT_EQ(check_optimizer("cpu", bp, cpu, e), 0);
      EXPECT_EQ(check_optimizer("cuda", bp, gpu, e), 0);
    }
  }

  // (a) and (b) bitwise.
  static int64_t same_gradients(const BackwardProblem& bp, const BackwardOutputs& a,
                                const BackwardOutputs& b) {
    int64_t bad = 0;
    for (size_t t = 0; t < a.grad_tables.size(); ++t) {
      if (!a.grad_tables[t].bytes_equal(b.grad_tables[t].bytes())) {
        ADD_FAILURE() << "grad_tables[" << t << "]: CUDA differs bitwise from the CPU";
        ++bad;
      }
    }
    if (bp.spec.sparse) {
      for (const auto& [x, y, name] : {std::tuple{&a.unique_ids, &b.unique_ids, "unique_ids"},
                                       std::tuple{&a.unique_grads, &b.unique_grads, "unique_grads"},
                                       std::tuple{&a.num_unique, &b.num_unique, "num_unique"}}) {
        if (!x->bytes_equal(y->bytes())) {
          ADD_FAILURE() << name << ": CUDA differs bitwise from the CPU";
          ++bad;
        }
      }
    }
    return bad;
  }

 private:
  std::unique_ptr<Handle> handle_;
  std::string last_error_;
};

// ---- the cases ---------------------------------------------------------------------------

BackwardSpec base_spec(uint64_t seed) {
  BackwardSpec s;
  s.fwd.seed = seed;
  s.fwd.data = DataKind::kReal;  // rounding makes the summation order visible
  s.grad_data = DataKind::kReal;
  return s;
}

// Bag counts of the larger cases: 1/8 with SPEMBED_TEST_SHAPES=small (the
// emulation build), which still puts a hot row past several chunks of
// SPEMBED_BACKWARD_CHUNK entries and keeps every path.
int64_t bag_count(int64_t n) { return small_shapes() ? std::max<int64_t>(n / 8, 16) : n; }

std::vector<int64_t> random_lengths(uint64_t seed, int64_t bags, int64_t max_len) {
  Rng rng(seed);
  std::vector<int64_t> lengths;
  for (int64_t b = 0; b < bags; ++b) {
    lengths.push_back(rng.uniform_int(0, 4) == 0 ? 0 : rng.uniform_int(1, max_len));
  }
  return lengths;
}

TEST_F(BackwardGpu, DtypesAndPoolingsMatchCpuBitwise) {
  const std::pair<spembed_pooling_t, bool> modes[] = {{SPEMBED_POOLING_SUM, true},
                                                      {SPEMBED_POOLING_SUM, false},
                                                      {SPEMBED_POOLING_MEAN, false},
                                                      {SPEMBED_POOLING_NONE, true}};
  uint64_t seed = 100;
  for (const auto& [pooling, weighted] : modes) {
    for (DLDataType index : {kI32, kI64}) {
      for (DLDataType dtype : {kF32, kF16, kBF16, kF64}) {
        BackwardSpec s = base_spec(++seed);
        s.fwd.pooling = pooling;
        s.fwd.weighted = weighted;
        s.fwd.index_dtype = index;
        s.fwd.table_dtype = dtype;
        s.grad_dtype = dtype;
        s.fwd.dims = {37};
        s.fwd.rows = 300;
        s.fwd.bag_lengths = random_lengths(seed, 200, 60);
        s.fwd.padding_idx = 7;
        s.fwd.padding_fraction = 0.05;
        s.weight_grads = weighted;
        BackwardProblem bp = make_backward_problem(s, handle());
        compare(bp, pooling_name(pooling) + (weighted ? " weighted " : " ") + dtype_name(index) +
                        " " + dtype_name(dtype));
      }
    }
  }
}

TEST_F(BackwardGpu, DistributionsAndDims) {
  const IdDistribution dists[] = {IdDistribution::kUniform, IdDistribution::kZipf105,
                                  IdDistribution::kZipf12, IdDistribution::kHotRow30};
  const char* names[] = {"uniform", "zipf1.05", "zipf1.2", "hot30"};
  uint64_t seed = 500;
  for (int k = 0; k < 4; ++k) {
    for (int64_t dim : {1, 3, 64, 128, 257}) {
      BackwardSpec s = base_spec(++seed);
      s.ids = dists[k];
      s.fwd.weighted = true;
      s.fwd.dims = {dim};
      s.fwd.rows = 5000;
      s.fwd.bag_lengths = random_lengths(seed, bag_count(2048), 40);
      s.fwd.bag_lengths[3] = 5000;  // longer than a block
      BackwardProblem bp = make_backward_problem(s, handle());
      compare(bp, std::string(names[k]) + " dim " + std::to_string(dim));
    }
  }
}

TEST_F(BackwardGpu, EmptyBagsAndEmptyInput) {
  for (std::vector<int64_t> lengths :
       {std::vector<int64_t>{0, 0, 0, 0}, std::vector<int64_t>{0, 3, 0, 0, 1, 0}}) {
    BackwardSpec s = base_spec(900 + lengths.size());
    s.fwd.bag_lengths = lengths;
    BackwardProblem bp = make_backward_problem(s, handle());
    compare(bp, "bags " + std::to_string(lengths.size()));
  }
}

TEST_F(BackwardGpu, BatchedMixedDims) {
  for (spembed_pooling_t pooling :
       {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX}) {
    BackwardSpec s = base_spec(1000 + static_cast<uint64_t>(pooling));
    s.fwd.batched = true;
    s.fwd.pooling = pooling;
    s.fwd.weighted = pooling == SPEMBED_POOLING_SUM;
    s.weight_grads = s.fwd.weighted;
    s.fwd.dims = {3, 64, 1, 257, 16};
    s.fwd.rows = 700;
    s.fwd.bag_lengths = random_lengths(s.fwd.seed, 5 * 300, 30);
    s.fwd.index_dtype = kI32;
    s.ids = IdDistribution::kZipf105;
    BackwardProblem bp = make_backward_problem(s, handle());
    compare(bp, "batched " + pooling_name(pooling));
  }
}

TEST_F(BackwardGpu, Optimizers) {
  uint64_t seed = 1500;
  for (spembed_optimizer_t o : {SPEMBED_OPTIMIZER_SGD, SPEMBED_OPTIMIZER_ADAGRAD,
                                SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD, SPEMBED_OPTIMIZER_ADAM}) {
    for (DLDataType dtype : {kF32, kF16, kBF16, kF64}) {
      for (int sr = 0; sr < (same_dtype(dtype, kF32) || same_dtype(dtype, kF64) ? 1 : 2); ++sr) {
        BackwardSpec s;
        s.fwd.seed = ++seed;  // integer-valued data: exact gradients, bounds from the step only
        s.fwd.table_dtype = dtype;
        s.fwd.dims = {130};
        s.fwd.rows = 400;
        s.fwd.bag_lengths = random_lengths(seed, 300, 20);
        s.fwd.weighted = true;
        s.ids = IdDistribution::kHotRow30;
        s.weight_grads = true;
        s.step = true;
        spembed_optimizer_options_init(&s.optimizer);
        s.optimizer.optimizer = o;
        s.optimizer.learning_rate = 0.05f;
        s.optimizer.weight_decay = 0.01f;
        s.optimizer.eps = 1e-6f;
        s.optimizer.stochastic_rounding = sr;
        s.optimizer.seed = 77;
        BackwardProblem bp = make_backward_problem(s, handle());
        compare(bp, "optimizer " + std::to_string(o) + " " + dtype_name(dtype) + (sr ? " sr" : ""));
      }
    }
  }
}

// scale_grad_by_freq: a hot row over several chunks (the combine kernel
// divides) and cold rows (the reduce kernel divides), SUM / MEAN / NONE (MAX
// rejects the option, as torch does), every table dtype, the row-wise Adagrad
// step (which reads the whole scaled row first): CUDA bitwise equal to the
// CPU, both within the reference's bound; ATOMIC runs the sorted reduction
// and gives the same bits.
TEST_F(BackwardGpu, ScaleGradByFreqMatchesCpuBitwise) {
  const std::pair<spembed_pooling_t, bool> modes[] = {
      {SPEMBED_POOLING_SUM, true}, {SPEMBED_POOLING_MEAN, false}, {SPEMBED_POOLING_NONE, false}};
  uint64_t seed = 1700;
  for (const auto& [pooling, weighted] : modes) {
    for (DLDataType dtype : {kF32, kF16, kBF16, kF64}) {
      BackwardSpec s = base_spec(++seed);
      s.fwd.pooling = pooling;
      s.fwd.weighted = weighted;
      s.fwd.table_dtype = dtype;
      s.fwd.dims = {70};
      s.fwd.rows = 500;
      s.fwd.bag_lengths = random_lengths(seed, bag_count(1200), 12);
      s.fwd.padding_idx = 7;
      s.fwd.padding_fraction = 0.05;
      s.fwd.scale_grad_by_freq = true;
      s.ids = IdDistribution::kHotRow30;
      s.step = same_dtype(dtype, kBF16);
      if (s.step) {
        spembed_optimizer_options_init(&s.optimizer);
        s.optimizer.optimizer = SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
      }
      BackwardProblem bp = make_backward_problem(s, handle());
      const std::string what = "pooling " + std::to_string(pooling) + " " + dtype_name(dtype);
      compare(bp, what);
      if (!s.step) {
        SCOPED_TRACE(what + " ATOMIC");
        const BackwardOutputs det = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
        const BackwardOutputs atomic = run_cuda(bp, SPEMBED_BACKWARD_ATOMIC);
        EXPECT_EQ(same_gradients(bp, det, atomic), 0);
      }
    }
  }
}

TEST_F(BackwardGpu, TwentyRunsAreBitwiseIdentical) {
  BackwardSpec s = base_spec(2000);
  s.fwd.weighted = true;
  s.fwd.dims = {96};
  s.fwd.rows = 3000;
  s.fwd.bag_lengths = random_lengths(2000, bag_count(4096), 50);
  s.ids = IdDistribution::kHotRow30;
  s.weight_grads = true;
  s.step = true;
  spembed_optimizer_options_init(&s.optimizer);
  s.optimizer.optimizer = SPEMBED_OPTIMIZER_ADAM;
  BackwardProblem bp = make_backward_problem(s, handle());
  const BackwardOutputs first = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
  for (int k = 1; k < 20; ++k) {
    const BackwardOutputs again = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
    ASSERT_EQ(compare_bitwise("cuda run " + std::to_string(k), bp, first, again), 0);
  }
}

TEST_F(BackwardGpu, AtomicWithinTheReferenceBound) {
  for (IdDistribution dist : {IdDistribution::kUniform, IdDistribution::kHotRow30}) {
    BackwardSpec s = base_spec(2100 + static_cast<uint64_t>(dist));
    s.fwd.weighted = true;
    s.fwd.dims = {64};
    s.fwd.rows = 2000;
    s.fwd.bag_lengths = random_lengths(s.fwd.seed, bag_count(3000), 40);
    s.ids = dist;
    BackwardProblem bp = make_backward_problem(s, handle());
    const BackwardExpected e = reference_backward(bp);
    const BackwardOutputs cpu = run_cpu(bp);
    const BackwardOutputs gpu = run_cuda(bp, SPEMBED_BACKWARD_ATOMIC);
    EXPECT_EQ(check_gradients("cuda atomic", bp, gpu, e), 0);
    // (b) always takes the sorted reduction.
    EXPECT_TRUE(cpu.unique_grads.bytes_equal(gpu.unique_grads.bytes()));
    EXPECT_TRUE(cpu.unique_ids.bytes_equal(gpu.unique_ids.bytes()));
  }
}

TEST_F(BackwardGpu, BoundsPoliciesThroughTheReport) {
  // SKIP: the same results as the CPU, the same report.
  BackwardSpec s = base_spec(2200);
  s.fwd.bounds_policy = SPEMBED_BOUNDS_SKIP;
  s.fwd.bad_id_fraction = 0.05;
  s.fwd.bag_lengths = random_lengths(2200, 100, 20);
  BackwardProblem bp = make_backward_problem(s, handle());
  compare(bp, "skip");
  const BackwardOutputs cpu = run_cpu(bp);
  const BackwardOutputs gpu = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
  EXPECT_TRUE(cpu.report.bytes_equal(gpu.report.bytes())) << "SKIP report differs";
  EXPECT_GT(gpu.report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 0);

  // ERROR: SUCCESS from the call, the failure in the report, nothing written.
  bp.fwd.options.bounds_policy = SPEMBED_BOUNDS_ERROR;
  const BackwardOutputs fresh = fresh_outputs(bp);
  const BackwardOutputs err = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
  EXPECT_EQ(err.report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  EXPECT_EQ(err.report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION),
            cpu.report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION));
  int64_t report[SPEMBED_REPORT_SIZE];
  for (int k = 0; k < SPEMBED_REPORT_SIZE; ++k) report[k] = err.report.get_int(k);
  EXPECT_EQ(spembed_report_status(report), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  EXPECT_TRUE(err.grad_tables[0].bytes_equal(fresh.grad_tables[0].bytes()));
  EXPECT_TRUE(err.unique_ids.bytes_equal(fresh.unique_ids.bytes()));
  EXPECT_TRUE(err.unique_grads.bytes_equal(fresh.unique_grads.bytes()));
  EXPECT_TRUE(err.num_unique.bytes_equal(fresh.num_unique.bytes()));
}

// The workspace contract: the queried size is exactly enough, and one byte
// less is WORKSPACE_TOO_SMALL with nothing written, whatever the bag count:
// the layout depends only on what the queries are given (nnz, rows, dim), so
// a call with more bags than ids (empty bags), a batched call or NONE needs
// no more than the query said. (Before, the call chose its position width
// from the bag count, which the query took to be nnz: a call with 2^32 bags
// or more needed more bytes than queried and failed as a CUDA launch
// failure. That size cannot be allocated here; BackwardWorkspacePlan in
// test_backward_validation.cpp checks the plan itself.)
TEST_F(BackwardGpu, WorkspaceTooSmall) {
  struct Case {
    std::string what;
    BackwardSpec spec;
  };
  std::vector<Case> cases;
  {
    BackwardSpec s = base_spec(2300);
    s.fwd.bag_lengths = random_lengths(2300, 50, 10);
    cases.push_back({"sum", s});
  }
  {
    BackwardSpec s = base_spec(2301);
    s.fwd.bag_lengths.assign(600, 0);  // 600 bags, 12 ids
    for (int64_t b : {3, 70, 71, 598}) s.fwd.bag_lengths[static_cast<size_t>(b)] = 3;
    s.fwd.pooling = SPEMBED_POOLING_MEAN;
    cases.push_back({"more bags than ids", s});
  }
  {
    BackwardSpec s = base_spec(2302);
    s.fwd.batched = true;
    s.fwd.dims = {3, 8};
    s.fwd.bag_lengths = random_lengths(2302, 2 * 40, 6);
    s.fwd.bag_lengths[5] = 0;
    cases.push_back({"batched", s});
  }
  {
    BackwardSpec s = base_spec(2303);
    s.fwd.pooling = SPEMBED_POOLING_NONE;
    s.fwd.bag_lengths = random_lengths(2303, 30, 5);
    cases.push_back({"none", s});
  }
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    BackwardProblem bp = make_backward_problem(c.spec, handle());
    ASSERT_GT(bp.nnz(), 0);
    spembed_status_t st = SPEMBED_STATUS_SUCCESS;
    const BackwardOutputs fresh = fresh_outputs(bp);
    const BackwardOutputs out = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC, &st, 1);
    EXPECT_EQ(st, SPEMBED_STATUS_WORKSPACE_TOO_SMALL)
        << spembed_status_string(st) << ": " << last_error();
    EXPECT_TRUE(mentions_any(last_error(), {"workspace"})) << last_error();
    EXPECT_EQ(compare_bitwise("one byte short", bp, fresh, out), 0);
    EXPECT_TRUE(out.report.bytes_equal(fresh.report.bytes()));
    compare(bp, "the queried size");  // exactly the queried bytes: success, CPU bitwise
  }
}

// NONE ignores offsets (spembed.h), on CUDA as on the CPU and in the
// forward: bad offsets give the gradients of no offsets and a clean report
// (before, the CPU rejected them and CUDA dropped them).
TEST_F(BackwardGpu, NoneIgnoresOffsets) {
  BackwardSpec s = base_spec(2500);
  s.fwd.pooling = SPEMBED_POOLING_NONE;
  s.fwd.weighted = true;
  s.weight_grads = true;
  s.fwd.dims = {12};
  s.fwd.bag_lengths = random_lengths(2500, 40, 8);
  BackwardProblem bp = make_backward_problem(s, handle());
  const HostTensor bad = make_index_tensor(s.fwd.index_dtype, {4, 2, 0, bp.nnz() + 3});
  const BackwardOutputs cpu = run_cpu(bp);
  const BackwardOutputs cpu_bad = run_cpu(bp, &bad);
  const BackwardOutputs gpu_bad = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC, nullptr, 0, &bad);
  const BackwardOutputs atomic_bad = run_cuda(bp, SPEMBED_BACKWARD_ATOMIC, nullptr, 0, &bad);
  EXPECT_EQ(compare_bitwise("cpu, bad offsets", bp, cpu, cpu_bad), 0);
  EXPECT_EQ(compare_bitwise("cuda, bad offsets", bp, cpu, gpu_bad), 0);
  EXPECT_EQ(check_gradients("cuda atomic, bad offsets", bp, atomic_bad, reference_backward(bp)), 0);
  for (const BackwardOutputs* o : {&cpu_bad, &gpu_bad, &atomic_bad}) {
    EXPECT_EQ(o->report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(o->report.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
  }
}

// A row hit far more often than a block has threads has more work items
// (chunks of SPEMBED_BACKWARD_CHUNK) than the expand kernel's block: they are
// written by the whole block, found by a search over the block's runs. With
// a hot row, warm rows of a few chunks and cold rows of one, in any order,
// the result is the CPU's bit for bit, and twice the same.
TEST_F(BackwardGpu, HotRowWorkItemsSpreadOverTheBlock) {
  const int64_t nnz = small_shapes() ? 100000 : 400000;
  BackwardSpec s = base_spec(2600);
  s.fwd.weighted = true;
  s.weight_grads = true;
  s.fwd.dims = {6};
  s.fwd.rows = 2000;
  s.fwd.bag_lengths.assign(200, nnz / 200);
  BackwardProblem bp = make_backward_problem(s, handle());
  Problem& p = bp.fwd;
  ASSERT_EQ(p.nnz(), nnz);
  // 3 in 4 ids: row 1234 (the hot row, over 256 chunks); of the others, 3 in
  // 4 go to 40 warm rows (2 or more chunks each), 1 in 4 to 600 cold rows (one
  // chunk each).
  for (int64_t k = 0; k < nnz; ++k) {
    int64_t id = 1234;
    if (k % 4 == 3) id = 100 + (k / 4) % 40;
    if (k % 16 == 15) id = 300 + (k / 16) % 600;
    p.ids[static_cast<size_t>(k)] = id;
  }
  p.indices = make_index_tensor(p.spec.index_dtype, p.ids);
  ASSERT_GT(3 * nnz / 4 / SPEMBED_BACKWARD_CHUNK, 256);
  compare(bp, "hot row");
  const BackwardOutputs first = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
  const BackwardOutputs again = run_cuda(bp, SPEMBED_BACKWARD_DETERMINISTIC);
  EXPECT_EQ(compare_bitwise("hot row, run twice", bp, first, again), 0);
}

}  // namespace
}  // namespace spembed_test
