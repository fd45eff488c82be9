// C API of the embedding bag backward: argument validation (everything is
// checked before anything is written), then dispatch to the CPU
// implementation or the CUDA launcher by the tensors' device.
#include "kernels/embedding_bag/embedding_bag_backward.h"

#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "host/common/errors.h"
#include "host/common/handle.h"
#include "host/common/tensor_checks.h"
#include "host/embedding_bag/data_checks.h"
#include "host/embedding_bag/embedding_bag_common.h"
#include "host/embedding_bag/table_batch.h"
#include "kernels/embedding_bag/optimizer_kinds.h"

namespace spembed::detail {
namespace {

constexpr const char* kWorkspaceQuery = "spembed_embedding_bag_backward_workspace_size";
constexpr const char* kBatchedWorkspaceQuery =
    "spembed_embedding_bag_batched_backward_workspace_size";

spembed_status_t check_algorithm(const spembed_backward_algorithm_t& algorithm) {
  int raw = 0;  // a C caller may store any int in an enum (see resolve_options)
  static_assert(sizeof(spembed_backward_algorithm_t) == sizeof(int), "C enums are int-sized");
  std::memcpy(&raw, &algorithm, sizeof(int));
  if (raw != SPEMBED_BACKWARD_DETERMINISTIC && raw != SPEMBED_BACKWARD_ATOMIC) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "algorithm: unknown value %d", raw);
  }
  return SPEMBED_STATUS_SUCCESS;
}

// The arguments both workspace queries share.
spembed_status_t check_query_common(spembed_handle_t handle, DLDataType index_dtype, int64_t nnz,
                                    spembed_backward_algorithm_t algorithm, size_t* bytes) {
  SPEMBED_RETURN_IF_ERROR(check_handle(handle));
  if (bytes == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "bytes: must not be NULL");
  SPEMBED_RETURN_IF_ERROR(check_index_query(index_dtype, nnz));
  return check_algorithm(algorithm);
}

// The table side of a call: one table, or a batch's tables (host copies).
struct TableSide {
  DLDevice device{};
  DType dtype{};
  int64_t num_tables = 1;
  const TableMeta* tables = nullptr;
  int64_t out_cols = 0;
  int32_t max_dim = 0;
};

// Everything a backward call reads and writes, in the single-table or the
// batched form. Per-table views are arrays of num_tables entries (or NULL).
struct Request {
  const DLTensor* indices = nullptr;
  const DLTensor* offsets = nullptr;
  const DLTensor* per_sample_weights = nullptr;
  const DLTensor* argmax = nullptr;
  const DLTensor* grad_output = nullptr;
  DLTensor* grad_tables = nullptr;
  DLTensor* unique_ids = nullptr;
  DLTensor* unique_grads = nullptr;
  DLTensor* num_unique = nullptr;
  DLTensor* states1 = nullptr;
  DLTensor* states2 = nullptr;
  const spembed_optimizer_options_t* optimizer = nullptr;
  DLTensor* grad_per_sample_weights = nullptr;
  bool batched = false;
};

// The name of table t's view in the error messages: "grad_table" (single
// table) or "grad_tables[t]".
struct ViewName {
  char text[48];
  ViewName(const Request& r, const char* single, const char* batched, int64_t t) {
    if (r.batched) {
      std::snprintf(text, sizeof(text), "%s[%" PRId64 "]", batched, t);
    } else {
      std::snprintf(text, sizeof(text), "%s", single);
    }
  }
};

// A [rows, cols] matrix of the accumulation dtype of `table` (float32, or
// float64 for float64 tables) on `device`; returns its data and row stride.
spembed_status_t check_acc_matrix(const DLTensor& tensor, const char* name, DLDevice device,
                                  DType table, int64_t rows, int64_t cols, void** data,
                                  int64_t* stride) {
  SPEMBED_RETURN_IF_ERROR(check_same_device(tensor, name, device));
  SPEMBED_RETURN_IF_ERROR(
      check_dtype_is(tensor, name, accumulation_dl_dtype(table), accumulation_dtype_name(table)));
  SPEMBED_RETURN_IF_ERROR(check_matrix(tensor, name, rows, cols, stride));
  const void* pointer = nullptr;
  SPEMBED_RETURN_IF_ERROR(check_data(tensor, name, &pointer));
  *data = const_cast<void*>(pointer);
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_optimizer_options(const spembed_optimizer_options_t& o) {
  int raw = 0;
  static_assert(sizeof(spembed_optimizer_t) == sizeof(int), "C enums are int-sized");
  std::memcpy(&raw, &o.optimizer, sizeof(int));
  if (!is_known_optimizer(raw)) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "optimizer.optimizer: unknown value %d", raw);
  }
  struct Scalar {
    const char* name;
    float value;
  };
  // torch.optim rejects negative values of these too.
  for (const Scalar& s : {Scalar{"learning_rate", o.learning_rate}, Scalar{"eps", o.eps},
                          Scalar{"weight_decay", o.weight_decay}}) {
    if (!std::isfinite(s.value) || s.value < 0.0f) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "optimizer.%s: %g must be finite and >= 0",
                  s.name, double{s.value});
    }
  }
  if (raw == SPEMBED_OPTIMIZER_ADAM) {
    for (const Scalar& s : {Scalar{"beta1", o.beta1}, Scalar{"beta2", o.beta2}}) {
      if (!(s.value >= 0.0f && s.value < 1.0f)) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "optimizer.%s: %g must be in [0, 1)", s.name,
                    double{s.value});
      }
    }
    if (o.step < 1) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "optimizer.step: %" PRId64 " must be >= 1 (Adam's step count)", o.step);
    }
  }
  return SPEMBED_STATUS_SUCCESS;
}

// Validates a request and fills `p`, the per-table `metas` and the forward
// view `fp` the CPU data checks take. Reads no tensor data.
spembed_status_t prepare(const TableSide& side, const Request& r,
                         const spembed_embedding_bag_options_t& options,
                         spembed_backward_algorithm_t algorithm, DLTensor* report, void* workspace,
                         size_t workspace_bytes, EmbeddingBagBackwardParams* p,
                         std::vector<BackwardTableMeta>* metas, EmbeddingBagForwardParams* fp) {
  SPEMBED_RETURN_IF_ERROR(check_algorithm(algorithm));
  const DLDevice device = side.device;
  const int64_t T = side.num_tables;
  const bool none = options.pooling == SPEMBED_POOLING_NONE;
  if (options.scale_grad_by_freq != 0 && options.pooling == SPEMBED_POOLING_MAX) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "options.scale_grad_by_freq: not supported with MAX pooling (as in torch)");
  }
  SPEMBED_RETURN_IF_ERROR(check_lookup_inputs(device, side.dtype, T, r.indices, r.offsets,
                                              r.per_sample_weights, options, fp));
  const int64_t nnz = fp->nnz;

  const bool want_dense = r.grad_tables != nullptr;
  const bool want_sparse =
      r.unique_ids != nullptr || r.unique_grads != nullptr || r.num_unique != nullptr;
  const bool want_step = r.optimizer != nullptr;
  const bool want_weight_grads = r.grad_per_sample_weights != nullptr;
  if (!want_dense && !want_sparse && !want_step && !want_weight_grads) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "args: no output requested; give at least one of %s, unique_ids + unique_grads "
                "+ num_unique, optimizer, grad_per_sample_weights",
                r.batched ? "grad_tables" : "grad_table");
  }

  // grad_output and argmax, shaped like the forward's output.
  const int64_t out_rows = none ? nnz : fp->bags_per_table;
  if (r.grad_output == nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "grad_output: must not be NULL");
  }
  SPEMBED_RETURN_IF_ERROR(check_same_device(*r.grad_output, "grad_output", device));
  SPEMBED_RETURN_IF_ERROR(
      check_float_dtype(*r.grad_output, "grad_output", &p->grad_dtype, /*allow_f64=*/true));
  SPEMBED_RETURN_IF_ERROR(check_output_dtype_pairs(side.dtype, p->grad_dtype, "grad_output"));
  SPEMBED_RETURN_IF_ERROR(
      check_matrix(*r.grad_output, "grad_output", out_rows, side.out_cols, &p->grad_row_stride));
  SPEMBED_RETURN_IF_ERROR(check_data(*r.grad_output, "grad_output", &p->grad_output));

  if (options.pooling == SPEMBED_POOLING_MAX) {
    if (r.argmax == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "argmax: required with MAX pooling (the forward's argmax output)");
    }
    SPEMBED_RETURN_IF_ERROR(check_same_device(*r.argmax, "argmax", device));
    SPEMBED_RETURN_IF_ERROR(
        check_dtype_is(*r.argmax, "argmax", r.indices->dtype, "the dtype of indices"));
    SPEMBED_RETURN_IF_ERROR(
        check_matrix(*r.argmax, "argmax", out_rows, side.out_cols, &p->argmax_row_stride));
    SPEMBED_RETURN_IF_ERROR(check_data(*r.argmax, "argmax", &p->argmax));
  } else if (r.argmax != nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "argmax: only allowed with MAX pooling");
  }

  // Per-table metadata, and (a).
  metas->assign(static_cast<size_t>(T), BackwardTableMeta{});
  int64_t row_base = 0;
  for (int64_t t = 0; t < T; ++t) {
    const TableMeta& table = side.tables[t];
    BackwardTableMeta& m = (*metas)[static_cast<size_t>(t)];
    m.weights = const_cast<void*>(table.data);
    m.rows = table.rows;
    m.weight_stride = table.row_stride;
    m.dim = table.dim;
    m.grad_col = table.out_col;
    m.row_base = row_base;
    row_base += table.rows;
    if (want_dense) {
      const ViewName name(r, "grad_table", "grad_tables", t);
      SPEMBED_RETURN_IF_ERROR(check_acc_matrix(r.grad_tables[t], name.text, device, side.dtype,
                                               table.rows, table.dim, &m.grad_table,
                                               &m.grad_table_stride));
    }
  }
  p->total_rows = row_base;
  p->dense_grad = want_dense;

  // (b)
  if (want_sparse) {
    const char* missing = r.unique_ids == nullptr     ? "unique_ids"
                          : r.unique_grads == nullptr ? "unique_grads"
                          : r.num_unique == nullptr   ? "num_unique"
                                                      : nullptr;
    if (missing != nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "%s: must not be NULL; the row-sparse gradient needs unique_ids, "
                  "unique_grads and num_unique together",
                  missing);
    }
    SPEMBED_RETURN_IF_ERROR(check_same_device(*r.unique_ids, "unique_ids", device));
    if (r.batched) {
      SPEMBED_RETURN_IF_ERROR(check_dtype_is(*r.unique_ids, "unique_ids", kInt64,
                                             "int64 (linearized rows of the batch)"));
    } else {
      SPEMBED_RETURN_IF_ERROR(
          check_dtype_is(*r.unique_ids, "unique_ids", r.indices->dtype, "the dtype of indices"));
    }
    SPEMBED_RETURN_IF_ERROR(check_vector(*r.unique_ids, "unique_ids", -1));
    const int64_t capacity = r.unique_ids->shape[0];
    if (capacity < nnz) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "unique_ids: capacity %" PRId64 " < nnz=%" PRId64
                  "; the number of touched rows can be as large as nnz",
                  capacity, nnz);
    }
    const void* ids = nullptr;
    SPEMBED_RETURN_IF_ERROR(check_data(*r.unique_ids, "unique_ids", &ids));
    p->unique_ids = const_cast<void*>(ids);
    SPEMBED_RETURN_IF_ERROR(check_acc_matrix(*r.unique_grads, "unique_grads", device, side.dtype,
                                             capacity, side.max_dim, &p->unique_grads,
                                             &p->unique_grads_stride));
    SPEMBED_RETURN_IF_ERROR(check_same_device(*r.num_unique, "num_unique", device));
    SPEMBED_RETURN_IF_ERROR(check_dtype_is(*r.num_unique, "num_unique", kInt64, "int64"));
    SPEMBED_RETURN_IF_ERROR(check_vector(*r.num_unique, "num_unique", 1));
    const void* count = nullptr;
    SPEMBED_RETURN_IF_ERROR(check_data(*r.num_unique, "num_unique", &count));
    p->num_unique = static_cast<int64_t*>(const_cast<void*>(count));
  }

  // (c)
  if (want_step) {
    const spembed_optimizer_options_t& o = *r.optimizer;
    SPEMBED_RETURN_IF_ERROR(check_optimizer_options(o));
    const OptimizerKind kind = optimizer_kind(o.optimizer);
    const bool needs1 = kind.state1 != StateShape::kNone;
    const bool needs2 = kind.state2 != StateShape::kNone;
    const bool rowwise = kind.state1 == StateShape::kPerRow;
    const char* optimizer_name = kind.name;
    const char* states1 = r.batched ? "states1" : "state1";
    const char* states2 = r.batched ? "states2" : "state2";
    if (needs1 && r.states1 == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must not be NULL for %s", states1,
                  optimizer_name);
    }
    if (!needs1 && r.states1 != nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must be NULL for %s (it keeps no state)",
                  states1, optimizer_name);
    }
    if (needs2 && r.states2 == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must not be NULL for %s", states2,
                  optimizer_name);
    }
    if (!needs2 && r.states2 != nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "%s: must be NULL for %s (it keeps no second state)", states2, optimizer_name);
    }
    for (int64_t t = 0; t < T && needs1; ++t) {
      BackwardTableMeta& m = (*metas)[static_cast<size_t>(t)];
      const ViewName name1(r, "state1", "states1", t);
      if (rowwise) {
        const DLTensor& s = r.states1[t];
        SPEMBED_RETURN_IF_ERROR(check_same_device(s, name1.text, device));
        SPEMBED_RETURN_IF_ERROR(check_dtype_is(s, name1.text, accumulation_dl_dtype(side.dtype),
                                               accumulation_dtype_name(side.dtype)));
        SPEMBED_RETURN_IF_ERROR(check_vector(s, name1.text, m.rows));
        const void* data = nullptr;
        SPEMBED_RETURN_IF_ERROR(check_data(s, name1.text, &data));
        m.state1 = const_cast<void*>(data);
        m.state1_stride = 1;
      } else {
        SPEMBED_RETURN_IF_ERROR(check_acc_matrix(r.states1[t], name1.text, device, side.dtype,
                                                 m.rows, m.dim, &m.state1, &m.state1_stride));
      }
      if (needs2) {
        const ViewName name2(r, "state2", "states2", t);
        SPEMBED_RETURN_IF_ERROR(check_acc_matrix(r.states2[t], name2.text, device, side.dtype,
                                                 m.rows, m.dim, &m.state2, &m.state2_stride));
      }
    }
    p->has_optimizer = true;
    p->optimizer = o;
    if (kind.bias_corrected) {
      const double step = static_cast<double>(o.step);
      p->adam_bias_correction1 = 1.0 - std::pow(double{o.beta1}, step);
      p->adam_bias_correction2 = 1.0 - std::pow(double{o.beta2}, step);
    }
  } else if (r.states1 != nullptr || r.states2 != nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: only used by an optimizer step, and optimizer is NULL",
                r.states1 != nullptr ? (r.batched ? "states1" : "state1")
                                     : (r.batched ? "states2" : "state2"));
  }

  // (d)
  if (want_weight_grads) {
    if (r.per_sample_weights == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "grad_per_sample_weights: needs per_sample_weights (SUM or NONE pooling)");
    }
    SPEMBED_RETURN_IF_ERROR(
        check_same_device(*r.grad_per_sample_weights, "grad_per_sample_weights", device));
    SPEMBED_RETURN_IF_ERROR(check_dtype_is(*r.grad_per_sample_weights, "grad_per_sample_weights",
                                           accumulation_dl_dtype(side.dtype),
                                           accumulation_dtype_name(side.dtype)));
    SPEMBED_RETURN_IF_ERROR(
        check_vector(*r.grad_per_sample_weights, "grad_per_sample_weights", nnz));
    const void* data = nullptr;
    SPEMBED_RETURN_IF_ERROR(
        check_data(*r.grad_per_sample_weights, "grad_per_sample_weights", &data));
    p->grad_weights = const_cast<void*>(data);
  }

  SPEMBED_RETURN_IF_ERROR(check_report(report, device, &p->report));
  if (device.device_type == kDLCUDA) {
    const size_t needed =
        embedding_bag_backward_cuda_workspace(nnz, T, p->total_rows, side.max_dim);
    SPEMBED_RETURN_IF_ERROR(check_cuda_workspace(
        workspace, workspace_bytes, needed, r.batched ? kBatchedWorkspaceQuery : kWorkspaceQuery));
    p->workspace = workspace;
    p->workspace_bytes = workspace_bytes;
  }

  // The forward view of the lookup, for the CPU data checks.
  fp->table_dtype = side.dtype;
  fp->pooling = options.pooling;
  fp->bounds_policy = options.bounds_policy;
  fp->padding_idx = options.padding_idx;
  fp->tables = side.tables;
  fp->single_table = side.tables[0];
  fp->max_dim = side.max_dim;
  fp->report = p->report;

  p->table_dtype = side.dtype;
  p->index_type = fp->index_type;
  p->pooling = options.pooling;
  p->bounds_policy = options.bounds_policy;
  // Scaling by frequency needs every row's ids grouped: the sorted reduction.
  p->scale_grad_by_freq = options.scale_grad_by_freq != 0;
  p->algorithm = p->scale_grad_by_freq ? SPEMBED_BACKWARD_DETERMINISTIC : algorithm;
  p->padding_idx = options.padding_idx;
  p->indices = fp->indices;
  p->nnz = nnz;
  p->offsets = fp->offsets;
  p->fixed_bag_size = fp->fixed_bag_size;
  p->weights = fp->weights;
  p->num_tables = T;
  p->bags_per_table = out_rows;
  p->tables = metas->data();
  p->single_table = metas->front();
  p->max_dim = side.max_dim;
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t run(const EmbeddingBagBackwardParams& p, const EmbeddingBagForwardParams& fp,
                     DLDevice device, spembed_stream_t stream) {
  if (device.device_type == kDLCPU) {
    SPEMBED_RETURN_IF_ERROR(conclude_data_checks(fp, check_data_cpu(fp)));
    embedding_bag_backward_cpu(p);
    return SPEMBED_STATUS_SUCCESS;
  }
  return launch_on_device(device.device_id, [&] { return embedding_bag_backward_cuda(p, stream); });
}

// Validates, then runs on the tensors' device.
spembed_status_t prepare_and_run(const TableSide& side, const Request& r,
                                 const spembed_embedding_bag_options_t& options,
                                 spembed_backward_algorithm_t algorithm, DLTensor* report,
                                 void* workspace, size_t workspace_bytes, spembed_stream_t stream) {
  EmbeddingBagBackwardParams p;
  EmbeddingBagForwardParams fp;
  std::vector<BackwardTableMeta> metas;
  SPEMBED_RETURN_IF_ERROR(
      prepare(side, r, options, algorithm, report, workspace, workspace_bytes, &p, &metas, &fp));
  return run(p, fp, side.device, stream);
}

// The fields the single-table and batched argument structs share by name.
template <typename Args>
Request common_request(const Args& a) {
  Request r;
  r.indices = a.indices;
  r.offsets = a.offsets;
  r.per_sample_weights = a.per_sample_weights;
  r.argmax = a.argmax;
  r.grad_output = a.grad_output;
  r.unique_ids = a.unique_ids;
  r.unique_grads = a.unique_grads;
  r.num_unique = a.num_unique;
  r.optimizer = a.optimizer;
  r.grad_per_sample_weights = a.grad_per_sample_weights;
  return r;
}

}  // namespace
}  // namespace spembed::detail

using namespace spembed::detail;

extern "C" {

void spembed_optimizer_options_init(spembed_optimizer_options_t* options) {
  if (options == nullptr) return;
  options->optimizer = SPEMBED_OPTIMIZER_SGD;
  options->learning_rate = 0.01f;
  options->eps = 1e-8f;
  options->beta1 = 0.9f;
  options->beta2 = 0.999f;
  options->weight_decay = 0.0f;
  options->step = 1;
  options->stochastic_rounding = 0;
  options->seed = 0;
}

spembed_status_t spembed_embedding_bag_backward_workspace_size(
    spembed_handle_t handle, DLDeviceType device_type, DLDataType index_dtype, int64_t nnz,
    int64_t rows, int64_t dim, spembed_backward_algorithm_t algorithm, size_t* bytes) {
  return guarded(kWorkspaceQuery, [&] {
    SPEMBED_RETURN_IF_ERROR(check_query_common(handle, index_dtype, nnz, algorithm, bytes));
    SPEMBED_RETURN_IF_ERROR(check_device_type(device_type));
    if (rows < 0) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "rows: %" PRId64 " must be >= 0", rows);
    }
    if (dim < 1 || dim > INT32_MAX) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "dim: %" PRId64 " must be in [1, 2^31)", dim);
    }
    *bytes = device_type == kDLCUDA
                 ? embedding_bag_backward_cuda_workspace(nnz, 1, rows, static_cast<int32_t>(dim))
                 : 0;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_embedding_bag_batched_backward_workspace_size(
    spembed_handle_t handle, spembed_table_batch_t batch, DLDataType index_dtype, int64_t nnz,
    spembed_backward_algorithm_t algorithm, size_t* bytes) {
  return guarded(kBatchedWorkspaceQuery, [&] {
    SPEMBED_RETURN_IF_ERROR(check_query_common(handle, index_dtype, nnz, algorithm, bytes));
    SPEMBED_RETURN_IF_ERROR(check_batch_of(handle, batch));
    int64_t total_rows = 0;
    for (const TableMeta& t : batch->tables) total_rows += t.rows;
    *bytes = batch->device.device_type == kDLCUDA
                 ? embedding_bag_backward_cuda_workspace(
                       nnz, static_cast<int64_t>(batch->tables.size()), total_rows, batch->max_dim)
                 : 0;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_embedding_bag_backward(spembed_handle_t handle,
                                                const spembed_embedding_bag_backward_args_t* args,
                                                const spembed_embedding_bag_options_t* options,
                                                spembed_backward_algorithm_t algorithm,
                                                DLTensor* report, void* workspace,
                                                size_t workspace_bytes, spembed_stream_t stream) {
  return guarded("spembed_embedding_bag_backward", [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    if (args == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "args: must not be NULL");
    spembed_embedding_bag_options_t opts;
    SPEMBED_RETURN_IF_ERROR(resolve_options(options, &opts));
    if (args->table == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "table: must not be NULL (the forward's table; it gives rows and dim)");
    }
    SPEMBED_RETURN_IF_ERROR(check_op_device(handle, *args->table, "table"));
    TableMeta meta;
    TableSide side;
    side.device = args->table->device;
    SPEMBED_RETURN_IF_ERROR(describe_table(*args->table, "table", &side.dtype, &meta));
    side.tables = &meta;
    side.out_cols = meta.dim;
    side.max_dim = meta.dim;
    Request r = common_request(*args);
    r.grad_tables = args->grad_table;
    r.states1 = args->state1;
    r.states2 = args->state2;
    return prepare_and_run(side, r, opts, algorithm, report, workspace, workspace_bytes, stream);
  });
}

spembed_status_t spembed_embedding_bag_batched_backward(
    spembed_handle_t handle, spembed_table_batch_t batch,
    const spembed_embedding_bag_batched_backward_args_t* args,
    const spembed_embedding_bag_options_t* options, spembed_backward_algorithm_t algorithm,
    DLTensor* report, void* workspace, size_t workspace_bytes, spembed_stream_t stream) {
  return guarded("spembed_embedding_bag_batched_backward", [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    SPEMBED_RETURN_IF_ERROR(check_batch_of(handle, batch));
    if (args == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "args: must not be NULL");
    spembed_embedding_bag_options_t opts;
    SPEMBED_RETURN_IF_ERROR(resolve_options(options, &opts));
    if (opts.pooling == SPEMBED_POOLING_NONE) {
      return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                  "options.pooling: NONE is not available for table-batched lookups (rows of "
                  "different tables have different widths); use spembed_embedding_bag_backward");
    }
    TableSide side;
    side.device = batch->device;
    side.dtype = batch->dtype;
    side.num_tables = static_cast<int64_t>(batch->tables.size());
    side.tables = batch->tables.data();
    side.out_cols = batch->total_dim;
    side.max_dim = batch->max_dim;
    Request r = common_request(*args);
    r.batched = true;
    r.grad_tables = args->grad_tables;
    r.states1 = args->states1;
    r.states2 = args->states2;
    return prepare_and_run(side, r, opts, algorithm, report, workspace, workspace_bytes, stream);
  });
}

}  // extern "C"
