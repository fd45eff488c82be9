// Entry points of the embedding bag forward implementations. host/ calls these
// after validation; see embedding_bag_params.h for the preconditions.
#pragma once

#include "kernels/embedding_bag/embedding_bag_params.h"

namespace spembed::detail {

// CPU implementation, the oracle of the CUDA tests. Preconditions beyond the
// params': offsets are well formed, and ids outside [0, rows) occur only under
// SPEMBED_BOUNDS_SKIP (they are skipped). Writes the outputs only.
void embedding_bag_forward_cpu(const EmbeddingBagForwardParams& p);

// What a scan of ids[begin, end) found (the host's data check, CPU tensors):
// ids outside [0, rows) that are not padding_idx, and ids that do not
// contribute (outside [0, rows) or equal to padding_idx; padding_idx < 0: none).
struct IdScan {
  bool any_bad = false;
  bool any_not_contributing = false;
};
IdScan scan_ids_cpu(const void* ids, IndexType index_type, int64_t begin, int64_t end, int64_t rows,
                    int64_t padding_idx);
// Whether offsets[b] > offsets[b + 1] for some b in [begin, end) (reads
// offsets[begin, end]).
bool offsets_decrease_cpu(const void* offsets, IndexType index_type, int64_t begin, int64_t end);

// CUDA implementation. Queues on `stream` (a cudaStream_t): clearing the check
// record in p.workspace, the device-side data checks, the lookup, and, when
// p.report is set, the report. Returns the first launch error as a
// cudaError_t value (0 on success). Does not synchronise.
int embedding_bag_forward_cuda(const EmbeddingBagForwardParams& p, void* stream);

}  // namespace spembed::detail
