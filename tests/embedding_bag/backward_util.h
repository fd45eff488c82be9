// Test helpers of the embedding bag backward: a problem (the forward's inputs
// from make_problem, its argmax, a random grad_output and the requested
// outputs, poisoned), an independent reference written in double from the
// semantics in spembed.h (not from the implementation's algorithm), the
// calls through the C API, and the checks with bounds from the numerics.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "test_util.h"

namespace spembed_test {

// How the ids are drawn (overrides make_problem's uniform ids).
enum class IdDistribution { kUniform, kZipf105, kZipf12, kHotRow30 };

struct BackwardSpec {
  ProblemSpec fwd;  // tables, ids, offsets, weights, options (make_problem)
  IdDistribution ids = IdDistribution::kUniform;
  DLDataType grad_dtype = kF32;
  bool dense = true;          // (a)
  bool sparse = true;         // (b)
  bool weight_grads = false;  // (d), needs fwd.weighted
  bool step = false;          // (c)
  spembed_optimizer_options_t optimizer{};
  DataKind grad_data = DataKind::kInt;
  int64_t capacity_extra = 5;  // unique_ids capacity = nnz + this
};

struct BackwardProblem {
  BackwardSpec spec;
  Problem fwd;                          // after the forward ran (argmax filled for MAX)
  HostTensor grad_output;               // [out_rows, total_dim]
  std::vector<HostTensor> grad_tables;  // (a) random initial values (the gradient is added)
  HostTensor unique_ids, unique_grads, num_unique;  // (b) poisoned
  std::vector<HostTensor> states1, states2;         // (c) random non-negative / any
  HostTensor grad_weights;                          // (d) poisoned
  HostTensor report;
  std::vector<int64_t> row_base;  // per table, linearized row of row 0
  int64_t total_rows = 0;
  int32_t max_dim = 0;

  int64_t nnz() const { return fwd.nnz(); }
  int64_t num_tables() const { return fwd.num_tables; }
  bool none() const { return fwd.spec.pooling == SPEMBED_POOLING_NONE; }
};

BackwardProblem make_backward_problem(const BackwardSpec& spec, spembed_handle_t handle);

// Expected results, in double, with per-element error bounds (0: exact).
struct BackwardExpected {
  std::vector<std::vector<double>> grad;            // per table [rows * dim]: the gradient alone
  std::vector<std::vector<double>> grad_bound;      // its bound when added to grad_tables
  std::vector<std::vector<int64_t>> contributions;  // per table row: number of contributions
  std::vector<int64_t> touched;                     // linearized rows, increasing
  std::vector<double> weight_grads, weight_bounds;
};

BackwardExpected reference_backward(const BackwardProblem& bp);

// Views of a problem's tensors as the C API takes them (host or device).
struct BackwardViews {
  std::vector<DLTensor> tables;  // batched: the batch is created from these
  const DLTensor* indices = nullptr;
  const DLTensor* offsets = nullptr;
  const DLTensor* weights = nullptr;
  const DLTensor* argmax = nullptr;
  const DLTensor* grad_output = nullptr;
  std::vector<DLTensor> grad_tables, states1, states2;
  DLTensor* unique_ids = nullptr;
  DLTensor* unique_grads = nullptr;
  DLTensor* num_unique = nullptr;
  DLTensor* grad_weights = nullptr;
  DLTensor* report = nullptr;
  // Batched: created from `tables` by the first run_backward, kept here so that
  // destroying it does not clear the thread's last error message.
  std::shared_ptr<TableBatch> batch;
};

// Fresh outputs of one run: copies of bp's initial outputs, tables and states
// (a run writes these, never bp itself).
struct BackwardOutputs {
  std::vector<HostTensor> grad_tables, tables, states1, states2;
  HostTensor unique_ids, unique_grads, num_unique, grad_weights, report;
};
BackwardOutputs fresh_outputs(const BackwardProblem& bp);

// Views of bp's inputs and of `out`'s outputs, in host memory.
BackwardViews host_views(BackwardProblem& bp, BackwardOutputs& out);

// One call of the single-table or batched backward on `v`.
spembed_status_t run_backward(spembed_handle_t handle, const BackwardProblem& bp, BackwardViews& v,
                              spembed_backward_algorithm_t algorithm, void* workspace = nullptr,
                              size_t workspace_bytes = 0, spembed_stream_t stream = nullptr);

// Checks the outputs in `out` (from bp's initial state) against `e`. Returns
// the number of mismatches; reports the first few, prefixed with `what`.
int64_t check_gradients(const std::string& what, const BackwardProblem& bp,
                        const BackwardOutputs& out, const BackwardExpected& e);

// The optimizer step of bp.spec.optimizer in double on the touched rows from
// bp's initial tables and states, and the check of `out` against it with
// bounds from the float32 operation count (see the .cpp). Untouched rows and
// their states must be bitwise unchanged.
int64_t check_optimizer(const std::string& what, const BackwardProblem& bp,
                        const BackwardOutputs& out, const BackwardExpected& e);

// Bitwise equality of two runs' outputs (the requested ones).
int64_t compare_bitwise(const std::string& what, const BackwardProblem& bp,
                        const BackwardOutputs& a, const BackwardOutputs& b);

}  // namespace spembed_test
