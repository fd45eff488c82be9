#include "host/embedding_bag/data_checks.h"

#include <algorithm>
#include <cinttypes>

#include "host/common/errors.h"
#include "kernels/embedding_bag/embedding_bag_forward.h"

namespace spembed::detail {
namespace {

template <typename Index>
void scan(const EmbeddingBagForwardParams& p, DataCheckResult* r) {
  const auto* offsets = static_cast<const Index*>(p.offsets);
  const auto* ids = static_cast<const Index*>(p.indices);
  const int64_t bags = p.num_bags();
  if (offsets != nullptr) {
    if (offsets[0] != 0) {
      r->bad_offset_position = 0;
    } else {
      // Branch-free blocks (vectorized per instruction set); the first
      // decrease is searched for only in a block that has one.
      constexpr int64_t kBlock = 4096;
      for (int64_t b0 = 0; b0 < bags && r->bad_offset_position < 0; b0 += kBlock) {
        const int64_t b1 = std::min(bags, b0 + kBlock);
        if (!offsets_decrease_cpu(offsets, p.index_type, b0, b1)) continue;
        for (int64_t b = b0; b < b1; ++b) {
          if (offsets[b] > offsets[b + 1]) {
            r->bad_offset_position = b;
            break;
          }
        }
      }
      if (r->bad_offset_position < 0 && offsets[bags] != p.nnz) r->bad_offset_position = bags;
    }
    if (r->bad_offset_position >= 0) return;
  }
  r->all_ids_contribute = true;
  auto check_range = [&](int64_t begin, int64_t end, int64_t table) {
    const int64_t rows = p.tables[table].rows;
    // A branch-free, vectorized pass first; the slow scan below, which
    // records the first bad id, runs only for a range that has one.
    const IdScan found = scan_ids_cpu(ids, p.index_type, begin, end, rows, p.padding_idx);
    if (found.any_not_contributing) r->all_ids_contribute = false;
    if (!found.any_bad) return;
    for (int64_t i = begin; i < end; ++i) {
      const int64_t id = static_cast<int64_t>(ids[i]);
      if ((p.padding_idx >= 0 && id == p.padding_idx) || (id >= 0 && id < rows)) continue;
      if (r->bad_index_count++ == 0 || i < r->bad_index_position) {
        r->bad_index_position = i;
        r->bad_index_value = id;
        r->bad_index_table = table;
      }
    }
  };
  if (p.pooling == SPEMBED_POOLING_NONE) {  // single table; bags do not matter
    check_range(0, p.nnz, 0);
    return;
  }
  // The offsets are sound here, so a table's bags cover one contiguous range
  // of ids (table-major): one range per table.
  for (int64_t t = 0; t < p.num_tables; ++t) {
    const int64_t b0 = t * p.bags_per_table;
    const int64_t b1 = b0 + p.bags_per_table;
    const int64_t begin = offsets ? static_cast<int64_t>(offsets[b0]) : b0 * p.fixed_bag_size;
    const int64_t end = offsets ? static_cast<int64_t>(offsets[b1]) : b1 * p.fixed_bag_size;
    check_range(begin, end, t);
  }
}

}  // namespace

DataCheckResult check_data_cpu(const EmbeddingBagForwardParams& p) {
  DataCheckResult result;
  if (p.index_type == IndexType::kI32) {
    scan<int32_t>(p, &result);
  } else {
    scan<int64_t>(p, &result);
  }
  return result;
}

namespace {
template <typename Index>
spembed_status_t offsets_failure(const EmbeddingBagForwardParams& p, int64_t i) {
  const auto* offsets = static_cast<const Index*>(p.offsets);
  const int64_t bags = p.num_bags();
  const int64_t here = static_cast<int64_t>(offsets[i]);
  if (i == 0 && here != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "offsets[0]=%" PRId64 ": offsets must start at 0",
                here);
  }
  if (i < bags) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "offsets[%" PRId64 "]=%" PRId64 " > offsets[%" PRId64 "]=%" PRId64
                ": offsets must be non-decreasing",
                i, here, i + 1, static_cast<int64_t>(offsets[i + 1]));
  }
  return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
              "offsets[%" PRId64 "]=%" PRId64 " != nnz=%" PRId64
              ": the last offset must equal the number of indices",
              i, here, p.nnz);
}
}  // namespace

spembed_status_t conclude_data_checks(const EmbeddingBagForwardParams& p,
                                      const DataCheckResult& r) {
  spembed_status_t status = SPEMBED_STATUS_SUCCESS;
  if (r.bad_offset_position >= 0) {
    status = p.index_type == IndexType::kI32 ? offsets_failure<int32_t>(p, r.bad_offset_position)
                                             : offsets_failure<int64_t>(p, r.bad_offset_position);
  } else if (r.bad_index_count > 0 && p.bounds_policy == SPEMBED_BOUNDS_ERROR) {
    status =
        fail(SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
             "indices[%" PRId64 "]=%" PRId64 " is out of range [0, %" PRId64 ") of table %" PRId64
             "; %" PRId64 " out-of-range ids in all (bounds policy ERROR)",
             r.bad_index_position, r.bad_index_value, p.tables[r.bad_index_table].rows,
             r.bad_index_table, r.bad_index_count);
  }
  if (p.report != nullptr) {
    p.report[SPEMBED_REPORT_STATUS] = status;
    p.report[SPEMBED_REPORT_BAD_INDEX_COUNT] = r.bad_index_count;
    p.report[SPEMBED_REPORT_BAD_INDEX_POSITION] = r.bad_index_position;
    p.report[SPEMBED_REPORT_BAD_INDEX_VALUE] = r.bad_index_value;
    p.report[SPEMBED_REPORT_BAD_OFFSET_POSITION] = r.bad_offset_position;
  }
  return status;
}

}  // namespace spembed::detail
