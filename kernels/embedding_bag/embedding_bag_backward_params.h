// Parameters of the embedding bag backward, shared by the CPU implementation
// and the CUDA kernels. host/ fills them after validating every argument (the
// same preconditions as embedding_bag_params.h: on CPU the offsets are sound
// and out-of-range ids occur only under SKIP).
#pragma once

#include <cstdint>

#include "kernels/embedding_bag/embedding_bag_params.h"
#include "spembed/spembed.h"

namespace spembed::detail {

// Per-table targets of the backward. Element offsets are 64-bit.
struct BackwardTableMeta {
  // Gradients, states: the accumulation type of the table dtype (double for
  // float64 tables, else float; kernels/common/accumulate.h).
  void* weights = nullptr;  // the table (read by (d), updated by (c)); dtype p.table_dtype
  int64_t rows = 0;
  int64_t weight_stride = 0;  // row stride of weights, elements
  int32_t dim = 0;
  int32_t grad_col = 0;        // first column of this table in grad_output / argmax
  int64_t row_base = 0;        // linearized row of this table's row 0 (sum of earlier rows)
  void* grad_table = nullptr;  // (a) [rows, dim], or null
  int64_t grad_table_stride = 0;
  void* state1 = nullptr;     // (c) Adagrad/Adam [rows, dim], row-wise Adagrad [rows]
  int64_t state1_stride = 0;  // row stride (elements); 1 for row-wise Adagrad
  void* state2 = nullptr;     // (c) Adam second moment [rows, dim]
  int64_t state2_stride = 0;
};

struct EmbeddingBagBackwardParams {
  DType table_dtype = DType::kF32;
  DType grad_dtype = DType::kF32;  // grad_output's dtype
  IndexType index_type = IndexType::kI64;
  spembed_pooling_t pooling = SPEMBED_POOLING_SUM;
  spembed_bounds_policy_t bounds_policy = SPEMBED_BOUNDS_ERROR;
  spembed_backward_algorithm_t algorithm = SPEMBED_BACKWARD_DETERMINISTIC;
  // Each row's gradient divided by its number of ids (options.scale_grad_by_freq).
  bool scale_grad_by_freq = false;
  int64_t padding_idx = -1;

  const void* indices = nullptr;
  int64_t nnz = 0;
  const void* offsets = nullptr;  // [num_bags + 1], or null (fixed_bag_size, or NONE)
  int64_t fixed_bag_size = 0;
  const void* weights = nullptr;  // per-sample weights (accumulation type), or null
  const void* argmax = nullptr;   // MAX: [bags_per_table, total dim], index_type
  int64_t argmax_row_stride = 0;

  const void* grad_output = nullptr;  // [bags_per_table, total dim] (NONE: [nnz, dim])
  int64_t grad_row_stride = 0;

  int64_t num_tables = 1;
  int64_t bags_per_table = 0;  // NONE: nnz
  // num_tables entries. host/ gives them in HOST memory on both devices: the
  // entries hold this call's output pointers (grad tables, states), and host/
  // has no graph-safe way to upload them per call (no cudaMalloc, and a
  // pageable cudaMemcpyAsync cannot be captured). The CUDA entry point copies
  // them into its workspace with a kernel that takes them by value, and its
  // kernels see a copy of these params whose `tables` points there.
  // single_table == tables[0] always.
  const BackwardTableMeta* tables = nullptr;
  BackwardTableMeta single_table;
  int32_t max_dim = 0;
  int64_t total_rows = 0;  // sum of the tables' rows (the key range of the sort)

  // (a) requested: grad_table of every table is set (the kernels still skip a
  // table whose grad_table is null).
  bool dense_grad = false;

  // (b) row-sparse output; linearized rows (row_base + id).
  void* unique_ids = nullptr;       // single table: index_type; batched: int64
  void* unique_grads = nullptr;     // accumulation type
  int64_t unique_grads_stride = 0;  // row stride, elements (>= max_dim)
  int64_t* num_unique = nullptr;

  // (c) fused optimizer, when has_optimizer.
  bool has_optimizer = false;
  spembed_optimizer_options_t optimizer{};
  // Adam's bias corrections 1 - beta1^step and 1 - beta2^step, computed by
  // host/ in double (1 for the other optimizers); float accumulation rounds
  // them to float.
  double adam_bias_correction1 = 1.0;
  double adam_bias_correction2 = 1.0;

  // (d)
  void* grad_weights = nullptr;  // [nnz], accumulation type

  int64_t* report = nullptr;  // as in the forward
  void* workspace = nullptr;  // CUDA
  size_t workspace_bytes = 0;

  int64_t num_bags() const { return num_tables * bags_per_table; }
};

}  // namespace spembed::detail
