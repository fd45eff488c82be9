// Entry points of the embedding bag backward implementations. host/ calls
// these after validation; see embedding_bag_backward_params.h.
#pragma once

#include <cstddef>

#include "kernels/embedding_bag/embedding_bag_backward_params.h"

namespace spembed::detail {

// CPU implementation (the oracle): writes the requested outputs (a)-(d).
// Deterministic: each row's gradient is summed in the order of its ids'
// positions, which is also the order of the CUDA deterministic path.
void embedding_bag_backward_cpu(const EmbeddingBagBackwardParams& p);
// Its float64-table half (embedding_bag_backward_cpu_f64.cpp).
void embedding_bag_backward_cpu_f64(const EmbeddingBagBackwardParams& p);

// Workspace bytes of the CUDA backward (the device check record, the table
// array, CUB sort + run-length scratch and the partial sums of hot rows) for
// nnz ids into num_tables tables of total_rows rows in all, max_dim columns
// at most (plan_backward_workspace, embedding_bag_backward_workspace.h). The
// same for both algorithms: ATOMIC needs the sort too when (b) or (c) is
// requested, and the query does not know the outputs. Nor does it know the
// bag count, and the layout does not depend on it: the call needs exactly
// these bytes.
size_t embedding_bag_backward_cuda_workspace(int64_t nnz, int64_t num_tables, int64_t total_rows,
                                             int32_t max_dim);

// CUDA implementation: queues the data checks (as in the forward, sharing its
// check kernels), the reduction and the outputs on `stream` (a cudaStream_t).
// Returns a cudaError_t value. No allocation, no synchronisation.
int embedding_bag_backward_cuda(const EmbeddingBagBackwardParams& p, void* stream);

}  // namespace spembed::detail
