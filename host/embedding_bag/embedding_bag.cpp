// C API of the embedding bag forward: argument validation, then dispatch to the
// CPU implementation or the CUDA launcher by the tensors' device.
#include <cuda_runtime_api.h>

#include <cinttypes>
#include <climits>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>

#include "host/common/errors.h"
#include "host/common/handle.h"
#include "host/common/tensor_checks.h"
#include "host/embedding_bag/data_checks.h"
#include "host/embedding_bag/embedding_bag_common.h"
#include "host/embedding_bag/table_batch.h"
#include "kernels/embedding_bag/embedding_bag_forward.h"

namespace spembed::detail {

spembed_status_t check_batch_of(spembed_handle_t handle, spembed_table_batch_t batch) {
  if (batch == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "batch: must not be NULL");
  if (batch->handle != handle) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "batch: was created with another handle");
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t resolve_options(const spembed_embedding_bag_options_t* given,
                                 spembed_embedding_bag_options_t* options) {
  spembed_embedding_bag_options_init(options);
  if (given == nullptr) return SPEMBED_STATUS_SUCCESS;
  // A C caller may store any int in an enum field; read the raw ints, since
  // loading an out-of-range value as the C++ enum type is undefined.
  static_assert(
      sizeof(spembed_pooling_t) == sizeof(int) && sizeof(spembed_bounds_policy_t) == sizeof(int),
      "C enums are int-sized");
  int pooling = 0;
  int bounds_policy = 0;
  std::memcpy(&pooling, &given->pooling, sizeof(int));
  std::memcpy(&bounds_policy, &given->bounds_policy, sizeof(int));
  if (pooling < SPEMBED_POOLING_SUM || pooling > SPEMBED_POOLING_NONE) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "options.pooling: unknown value %d", pooling);
  }
  if (bounds_policy != SPEMBED_BOUNDS_ERROR && bounds_policy != SPEMBED_BOUNDS_SKIP) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "options.bounds_policy: unknown value %d",
                bounds_policy);
  }
  *options = *given;
  if (options->fixed_bag_size < 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "options.fixed_bag_size: %" PRId64 " must be >= 0 (0: use offsets)",
                options->fixed_bag_size);
  }
  if (options->padding_idx < 0) options->padding_idx = -1;
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t describe_table(const DLTensor& table, const char* name, DType* dtype,
                                TableMeta* meta) {
  SPEMBED_RETURN_IF_ERROR(check_float_dtype(table, name, dtype, /*allow_f64=*/true));
  if (table.ndim != 2 || table.shape == nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must be 2-D [rows, dim], got ndim=%d", name,
                table.ndim);
  }
  const int64_t dim = table.shape[1];
  if (dim < 1 || dim > INT32_MAX) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: dim %" PRId64 " must be in [1, 2^31)", name,
                dim);
  }
  SPEMBED_RETURN_IF_ERROR(check_matrix(table, name, -1, dim, &meta->row_stride));
  SPEMBED_RETURN_IF_ERROR(check_data(table, name, &meta->data));
  // The CUDA kernels load float64 elements 8 bytes at a time.
  if (*dtype == DType::kF64 && reinterpret_cast<uintptr_t>(meta->data) % 8 != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: float64 data (data + byte_offset) must be 8-byte aligned", name);
  }
  meta->rows = table.shape[0];
  meta->dim = static_cast<int32_t>(dim);
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_output_dtype_pairs(DType table, DType output, const char* name) {
  if ((table == DType::kF64) != (output == DType::kF64)) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                table == DType::kF64
                    ? "%s: must be float64 with a float64 table (it accumulates in float64)"
                    : "%s: float64 needs a float64 table; use float32, float16 or bfloat16",
                name);
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_lookup_inputs(DLDevice device, DType table_dtype, int64_t num_tables,
                                     const DLTensor* indices, const DLTensor* offsets,
                                     const DLTensor* weights,
                                     const spembed_embedding_bag_options_t& options,
                                     EmbeddingBagForwardParams* p) {
  const bool none = options.pooling == SPEMBED_POOLING_NONE;
  if (indices == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "indices: must not be NULL");
  SPEMBED_RETURN_IF_ERROR(check_same_device(*indices, "indices", device));
  SPEMBED_RETURN_IF_ERROR(check_index_dtype(*indices, "indices", &p->index_type));
  SPEMBED_RETURN_IF_ERROR(check_vector(*indices, "indices", -1));
  SPEMBED_RETURN_IF_ERROR(check_data(*indices, "indices", &p->indices));
  p->nnz = indices->shape[0];

  // NONE gathers one row per id: bags play no part, so its offsets, if given,
  // are ignored (not checked, not read) on every device, forward and backward.
  if (none) offsets = nullptr;

  const int64_t L = options.fixed_bag_size;
  int64_t total_bags = 0;
  if (L > 0) {
    if (offsets != nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "offsets: must be NULL when options.fixed_bag_size > 0 (bags are implied)");
    }
    if (L > INT32_MAX || p->nnz % (L * num_tables) != 0) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "indices: nnz=%" PRId64 " is not a multiple of fixed_bag_size=%" PRId64
                  " x num_tables=%" PRId64,
                  p->nnz, L, num_tables);
    }
    total_bags = p->nnz / L;
  } else if (offsets != nullptr) {
    SPEMBED_RETURN_IF_ERROR(check_same_device(*offsets, "offsets", device));
    SPEMBED_RETURN_IF_ERROR(
        check_dtype_is(*offsets, "offsets", indices->dtype, "the dtype of indices"));
    SPEMBED_RETURN_IF_ERROR(check_vector(*offsets, "offsets", -1));
    if (offsets->shape[0] < 1) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "offsets: must hold bags + 1 >= 1 entries");
    }
    SPEMBED_RETURN_IF_ERROR(check_data(*offsets, "offsets", &p->offsets));
    total_bags = offsets->shape[0] - 1;
    if (total_bags % num_tables != 0) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "offsets: %" PRId64 " bags is not a multiple of num_tables=%" PRId64
                  " (offsets must be [num_tables * B + 1])",
                  total_bags, num_tables);
    }
  } else if (!none) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "offsets: must not be NULL unless options.fixed_bag_size > 0 or pooling is NONE");
  }
  p->fixed_bag_size = L;
  p->num_tables = num_tables;
  p->bags_per_table = total_bags / num_tables;

  if (weights != nullptr) {
    if (options.pooling != SPEMBED_POOLING_SUM && !none) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "per_sample_weights: only allowed with SUM or NONE pooling");
    }
    SPEMBED_RETURN_IF_ERROR(check_same_device(*weights, "per_sample_weights", device));
    SPEMBED_RETURN_IF_ERROR(check_dtype_is(*weights, "per_sample_weights",
                                           accumulation_dl_dtype(table_dtype),
                                           accumulation_dtype_name(table_dtype)));
    SPEMBED_RETURN_IF_ERROR(check_vector(*weights, "per_sample_weights", p->nnz));
    const void* data = nullptr;
    SPEMBED_RETURN_IF_ERROR(check_data(*weights, "per_sample_weights", &data));
    p->weights = data;
  }
  return SPEMBED_STATUS_SUCCESS;
}

namespace {

bool rows_16b_aligned(const TableMeta& t, DType dtype) {
  const int64_t bytes = dtype_bytes(dtype);
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0 && (t.row_stride * bytes) % 16 == 0 &&
         (t.dim * bytes) % 16 == 0;
}

// What the table side of a call contributes; the rest is common.
struct TableSide {
  DLDevice device{};
  DType dtype{};
  int64_t num_tables = 1;
  const TableMeta* host_tables = nullptr;
  const TableMeta* device_tables = nullptr;  // CUDA, num_tables > 1
  int64_t out_cols = 0;
  int32_t max_dim = 0;
  bool rows_16b_aligned = false;
};

struct Outputs {
  DLTensor* output;
  DLTensor* argmax;
  DLTensor* report;
};

// Validates everything but the table side and fills `p`. Nothing is read from
// the tensors' data here.
spembed_status_t prepare(const TableSide& side, const DLTensor* indices, const DLTensor* offsets,
                         const DLTensor* weights, const spembed_embedding_bag_options_t& options,
                         const Outputs& out, void* workspace, size_t workspace_bytes,
                         EmbeddingBagForwardParams* p) {
  const bool batched = side.num_tables > 1 || side.device_tables != nullptr;
  const bool none = options.pooling == SPEMBED_POOLING_NONE;
  if (indices == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "indices: must not be NULL");
  if (out.output == nullptr)
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "output: must not be NULL");
  SPEMBED_RETURN_IF_ERROR(check_lookup_inputs(side.device, side.dtype, side.num_tables, indices,
                                              offsets, weights, options, p));

  const int64_t out_rows = none ? p->nnz : p->bags_per_table;
  SPEMBED_RETURN_IF_ERROR(check_same_device(*out.output, "output", side.device));
  SPEMBED_RETURN_IF_ERROR(
      check_float_dtype(*out.output, "output", &p->out_dtype, /*allow_f64=*/true));
  SPEMBED_RETURN_IF_ERROR(check_output_dtype_pairs(side.dtype, p->out_dtype, "output"));
  SPEMBED_RETURN_IF_ERROR(
      check_matrix(*out.output, "output", out_rows, side.out_cols, &p->out_row_stride));
  const void* out_data = nullptr;
  SPEMBED_RETURN_IF_ERROR(check_data(*out.output, "output", &out_data));
  p->output = const_cast<void*>(out_data);

  if (out.argmax != nullptr) {
    if (options.pooling != SPEMBED_POOLING_MAX) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "argmax: only allowed with MAX pooling");
    }
    SPEMBED_RETURN_IF_ERROR(check_same_device(*out.argmax, "argmax", side.device));
    SPEMBED_RETURN_IF_ERROR(
        check_dtype_is(*out.argmax, "argmax", indices->dtype, "the dtype of indices"));
    SPEMBED_RETURN_IF_ERROR(
        check_matrix(*out.argmax, "argmax", out_rows, side.out_cols, &p->argmax_row_stride));
    const void* data = nullptr;
    SPEMBED_RETURN_IF_ERROR(check_data(*out.argmax, "argmax", &data));
    p->argmax = const_cast<void*>(data);
  }

  SPEMBED_RETURN_IF_ERROR(check_report(out.report, side.device, &p->report));

  if (side.device.device_type == kDLCUDA) {
    SPEMBED_RETURN_IF_ERROR(check_cuda_workspace(workspace, workspace_bytes, kForwardWorkspaceBytes,
                                                 "spembed_embedding_bag_forward_workspace_size"));
    p->workspace = workspace;
  }

  p->table_dtype = side.dtype;
  p->pooling = options.pooling;
  p->bounds_policy = options.bounds_policy;
  p->padding_idx = options.padding_idx;
  p->tables = side.device.device_type == kDLCUDA && batched ? side.device_tables : side.host_tables;
  p->single_table = side.host_tables[0];
  p->max_dim = side.max_dim;
  p->rows_16b_aligned = side.rows_16b_aligned;
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t run(const EmbeddingBagForwardParams& p, const TableSide& side,
                     spembed_stream_t stream) {
  if (side.device.device_type == kDLCPU) {
    // host_tables is what the CPU checks need, whatever p.tables points at.
    EmbeddingBagForwardParams host_view = p;
    host_view.tables = side.host_tables;
    const DataCheckResult checked = check_data_cpu(host_view);
    SPEMBED_RETURN_IF_ERROR(conclude_data_checks(host_view, checked));
    host_view.all_ids_contribute = checked.all_ids_contribute;
    embedding_bag_forward_cpu(host_view);
    return SPEMBED_STATUS_SUCCESS;
  }
  // Launch on the tensors' device even if the caller's current device differs.
  return launch_on_device(side.device.device_id,
                          [&] { return embedding_bag_forward_cuda(p, stream); });
}

}  // namespace
}  // namespace spembed::detail

using namespace spembed::detail;

extern "C" {

void spembed_embedding_bag_options_init(spembed_embedding_bag_options_t* options) {
  if (options == nullptr) return;
  options->pooling = SPEMBED_POOLING_SUM;
  options->padding_idx = -1;
  options->bounds_policy = SPEMBED_BOUNDS_ERROR;
  options->fixed_bag_size = 0;
  options->scale_grad_by_freq = 0;
}

spembed_status_t spembed_embedding_bag_forward_workspace_size(spembed_handle_t handle,
                                                              DLDeviceType device_type,
                                                              size_t* bytes) {
  return guarded("spembed_embedding_bag_forward_workspace_size", [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    if (bytes == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "bytes: must not be NULL");
    SPEMBED_RETURN_IF_ERROR(check_device_type(device_type));
    *bytes = device_type == kDLCUDA ? kForwardWorkspaceBytes : 0;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_embedding_bag_forward(spembed_handle_t handle, const DLTensor* table,
                                               const DLTensor* indices, const DLTensor* offsets,
                                               const DLTensor* per_sample_weights,
                                               const spembed_embedding_bag_options_t* options,
                                               DLTensor* output, DLTensor* argmax, DLTensor* report,
                                               void* workspace, size_t workspace_bytes,
                                               spembed_stream_t stream) {
  return guarded("spembed_embedding_bag_forward", [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    spembed_embedding_bag_options_t opts;
    SPEMBED_RETURN_IF_ERROR(resolve_options(options, &opts));
    if (table == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "table: must not be NULL");
    SPEMBED_RETURN_IF_ERROR(check_op_device(handle, *table, "table"));
    TableMeta meta;
    TableSide side;
    side.device = table->device;
    SPEMBED_RETURN_IF_ERROR(describe_table(*table, "table", &side.dtype, &meta));
    side.host_tables = &meta;
    side.out_cols = meta.dim;
    side.max_dim = meta.dim;
    side.rows_16b_aligned = rows_16b_aligned(meta, side.dtype);
    EmbeddingBagForwardParams p;
    SPEMBED_RETURN_IF_ERROR(prepare(side, indices, offsets, per_sample_weights, opts,
                                    Outputs{output, argmax, report}, workspace, workspace_bytes,
                                    &p));
    return run(p, side, stream);
  });
}

spembed_status_t spembed_table_batch_create(spembed_handle_t handle, const DLTensor* tables,
                                            int64_t num_tables, spembed_table_batch_t* batch) {
  return guarded("spembed_table_batch_create", [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    if (batch == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "batch: must not be NULL");
    if (tables == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "tables: must not be NULL");
    if (num_tables < 1 || num_tables > INT32_MAX) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "num_tables: %" PRId64 " must be in [1, 2^31)",
                  num_tables);
    }
    auto b = std::make_unique<spembed_table_batch_st>();
    b->handle = handle;
    b->tables.resize(static_cast<size_t>(num_tables));
    b->rows_16b_aligned = true;
    char name[48];
    for (int64_t t = 0; t < num_tables; ++t) {
      std::snprintf(name, sizeof(name), "tables[%" PRId64 "]", t);
      SPEMBED_RETURN_IF_ERROR(check_op_device(handle, tables[t], name));
      DType dtype{};
      TableMeta& meta = b->tables[static_cast<size_t>(t)];
      SPEMBED_RETURN_IF_ERROR(describe_table(tables[t], name, &dtype, &meta));
      if (t == 0) {
        b->device = tables[0].device;
        b->dtype = dtype;
      } else {
        SPEMBED_RETURN_IF_ERROR(check_same_device(tables[t], name, b->device));
        if (dtype != b->dtype) {
          return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                      "%s: dtype differs from tables[0]; all tables of a batch share one dtype",
                      name);
        }
      }
      meta.out_col = static_cast<int32_t>(b->total_dim);
      b->total_dim += meta.dim;
      if (b->total_dim > INT32_MAX) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "tables: the sum of dims exceeds 2^31 - 1");
      }
      if (meta.dim > b->max_dim) b->max_dim = meta.dim;
      b->rows_16b_aligned = b->rows_16b_aligned && rows_16b_aligned(meta, dtype);
    }
    if (b->device.device_type == kDLCUDA) {
      const size_t bytes = b->tables.size() * sizeof(TableMeta);
      void* device_tables = nullptr;
      cudaError_t error = cudaMalloc(&device_tables, bytes);
      if (error != cudaSuccess) {
        cudaGetLastError();
        return fail(SPEMBED_STATUS_ALLOC_FAILED, "tables: cudaMalloc of %zu bytes failed: %s",
                    bytes, cudaGetErrorString(error));
      }
      error = cudaMemcpy(device_tables, b->tables.data(), bytes, cudaMemcpyHostToDevice);
      if (error != cudaSuccess) {
        cudaFree(device_tables);
        return fail(SPEMBED_STATUS_CUDA_ERROR, "tables: upload of the table metadata failed: %s",
                    cudaGetErrorString(error));
      }
      b->device_tables = static_cast<TableMeta*>(device_tables);
    }
    *batch = b.release();
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_table_batch_destroy(spembed_table_batch_t batch) {
  return guarded("spembed_table_batch_destroy", [&] {
    if (batch == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "batch: must not be NULL");
    const cudaError_t error = batch->device_tables ? cudaFree(batch->device_tables) : cudaSuccess;
    delete batch;
    if (error != cudaSuccess) {
      return fail(SPEMBED_STATUS_CUDA_ERROR, "batch: cudaFree failed: %s",
                  cudaGetErrorString(error));
    }
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_table_batch_total_dim(spembed_table_batch_t batch, int64_t* total_dim) {
  return guarded("spembed_table_batch_total_dim", [&] {
    if (batch == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "batch: must not be NULL");
    if (total_dim == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "total_dim: must not be NULL");
    }
    *total_dim = batch->total_dim;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_embedding_bag_batched_forward(
    spembed_handle_t handle, spembed_table_batch_t batch, const DLTensor* indices,
    const DLTensor* offsets, const DLTensor* per_sample_weights,
    const spembed_embedding_bag_options_t* options, DLTensor* output, DLTensor* argmax,
    DLTensor* report, void* workspace, size_t workspace_bytes, spembed_stream_t stream) {
  return guarded("spembed_embedding_bag_batched_forward", [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    SPEMBED_RETURN_IF_ERROR(check_batch_of(handle, batch));
    spembed_embedding_bag_options_t opts;
    SPEMBED_RETURN_IF_ERROR(resolve_options(options, &opts));
    if (opts.pooling == SPEMBED_POOLING_NONE) {
      return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                  "options.pooling: NONE is not available for table-batched lookups (rows of "
                  "different tables have different widths); use spembed_embedding_bag_forward");
    }
    TableSide side;
    side.device = batch->device;
    side.dtype = batch->dtype;
    side.num_tables = static_cast<int64_t>(batch->tables.size());
    side.host_tables = batch->tables.data();
    side.device_tables = batch->device_tables;
    side.out_cols = batch->total_dim;
    side.max_dim = batch->max_dim;
    side.rows_16b_aligned = batch->rows_16b_aligned;
    EmbeddingBagForwardParams p;
    SPEMBED_RETURN_IF_ERROR(prepare(side, indices, offsets, per_sample_weights, opts,
                                    Outputs{output, argmax, report}, workspace, workspace_bytes,
                                    &p));
    return run(p, side, stream);
  });
}

}  // extern "C"
