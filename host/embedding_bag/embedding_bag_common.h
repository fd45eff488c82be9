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

// `batch` is non-NULL and was created with `handle` (which is not checked here).
spembed_status_t check_batch_of(spembed_handle_t handle, spembed_table_batch_t batch);

// The defaults when `given` is NULL; fails on unknown enum values.
spembed_status_t resolve_options(const spembed_embedding_bag_options_t* given,
                                 spembed_embedding_bag_options_t* options);

// Describes one table view; fails if it is not a usable table.
spembed_status_t describe_table(const DLTensor& table, const char* name, DType* dtype,
                                TableMeta* meta);

// Validates the inputs of a lookup (indices, offsets, per-sample weights)
// against `options` for `num_tables` tables on `device`, and fills the
// index_type, indices, nnz, offsets, fixed_bag_size, num_tables,
// bags_per_table and weights fields of `p`.
spembed_status_t check_lookup_inputs(DLDevice device, int64_t num_tables, const DLTensor* indices,
                                     const DLTensor* offsets, const DLTensor* weights,
                                     const spembed_embedding_bag_options_t& options,
                                     EmbeddingBagForwardParams* p);

}  // namespace spembed::detail
