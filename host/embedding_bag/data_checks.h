// Checks of the data of a CPU call (offsets and ids), made before anything is
// written. The CUDA path makes the same checks on the device (kernels/).
#pragma once

#include "kernels/embedding_bag/embedding_bag_params.h"

namespace spembed::detail {

struct DataCheckResult {
  int64_t bad_offset_position = -1;  // as SPEMBED_REPORT_BAD_OFFSET_POSITION
  int64_t bad_index_count = 0;
  int64_t bad_index_position = -1;
  int64_t bad_index_value = 0;
  int64_t bad_index_table = 0;  // the table the first bad id was looked up in
  // Every id is in range and none is padding_idx (set only when the offsets
  // are sound): EmbeddingBagForwardParams::all_ids_contribute.
  bool all_ids_contribute = false;
};

// Scans p.offsets (if any) and every id of p (host memory). Ids are checked
// only when the offsets are sound, since they decide each id's table.
DataCheckResult check_data_cpu(const EmbeddingBagForwardParams& p);

// The call's outcome: SUCCESS, or a failure with its message set. Writes
// p.report (host memory) when set.
spembed_status_t conclude_data_checks(const EmbeddingBagForwardParams& p,
                                      const DataCheckResult& result);

}  // namespace spembed::detail
