// Validation and dispatch pieces shared by the embedding bag forward and
// backward entry points (host/embedding_bag/embedding_bag.cpp,
// host/embedding_bag/embedding_bag_backward.cpp).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "host/common/api_common.h"
#include "host/common/errors.h"
#include "kernels/embedding_bag/embedding_bag_params.h"
#include "spembed/spembed.h"

namespace spembed::detail {

constexpr DLDataType kFloat64{kDLFloat, 64, 1};

// The DLPack dtype of what a call on a table of `table` dtype computes and
// keeps besides its output (per-sample weights and their gradient, gradients,
// optimizer states): float64 for float64 tables, float32 for the others
// (kernels/common/accumulate.h), and its name for messages.
inline DLDataType accumulation_dl_dtype(DType table) {
  return table == DType::kF64 ? kFloat64 : kFloat32;
}
inline const char* accumulation_dtype_name(DType table) {
  return table == DType::kF64 ? "float64 (the table is float64)" : "float32";
}

// A float64 output or grad_output goes with a float64 table, and a float64
// table with a float64 output or grad_output (`name` is the tensor's).
spembed_status_t check_output_dtype_pairs(DType table, DType output, const char* name);

// `batch` is non-NULL and was created with `handle` (which is not checked here).
spembed_status_t check_batch_of(spembed_handle_t handle, spembed_table_batch_t batch);

// The defaults when `given` is NULL; fails on unknown enum values.
spembed_status_t resolve_options(const spembed_embedding_bag_options_t* given,
                                 spembed_embedding_bag_options_t* options);

// Describes one table view; fails if it is not a usable table.
spembed_status_t describe_table(const DLTensor& table, const char* name, DType* dtype,
                                TableMeta* meta);

// Validates the inputs of a lookup (indices, offsets, per-sample weights of
// the accumulation dtype of `table_dtype`) against `options` for
// `num_tables` tables on `device`, and fills the
// index_type, indices, nnz, offsets, fixed_bag_size, num_tables,
// bags_per_table and weights fields of `p`.
spembed_status_t check_lookup_inputs(DLDevice device, DType table_dtype, int64_t num_tables,
                                     const DLTensor* indices, const DLTensor* offsets,
                                     const DLTensor* weights,
                                     const spembed_embedding_bag_options_t& options,
                                     EmbeddingBagForwardParams* p);

}  // namespace spembed::detail
