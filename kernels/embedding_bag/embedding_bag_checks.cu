// Device-side data checks of the embedding bag forward, and its report. On
// CUDA the host never reads ids or offsets, so these kernels do what
// host/embedding_bag/data_checks.cpp does on CPU, into the DataCheckRecord kept in the
// caller's workspace:
//
//   reset (1 thread)   count = 0, positions = none
//   checks             bad offsets (atomicMin of the position), and under
//                      ERROR the ids outside their table's rows (count and
//                      smallest position, aggregated per warp)
//   (lookup kernel)    stops if the record shows a problem; under SKIP counts
//                      the out-of-range ids it skips
//   report (1 thread)  the record -> p.report
//
// Check kernel grid: blockIdx.y walks the tables (ids of table t are the
// contiguous range of its bags, so each id's table is known without a search
// over offsets), blockIdx.x with a grid-stride loop walks the ids of a table;
// all blocks together walk the offsets. One element per thread per step.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/row_io.cuh"
#include "kernels/common/static_switch.cuh"
#include "kernels/embedding_bag/embedding_bag_forward_launch.cuh"
#include "kernels/embedding_bag/embedding_bag_params.h"

namespace spembed::detail {
namespace {

// gridDim.y limit of the CUDA launch configuration.
constexpr int64_t kMaxGridY = 65535;
// gridDim.x limit.
constexpr int64_t kMaxGridX = 2147483647;

__global__ void reset_record_kernel(DataCheckRecord* record) {
  record->bad_index_count = 0;
  record->first_bad_index_position = kNoPosition;
  record->first_bad_offset_position = kNoPosition;
}

template <typename IdxT>
__global__ void __launch_bounds__(kCheckBlockThreads)
    data_check_kernel(const __grid_constant__ EmbeddingBagForwardParams p, int64_t num_bags,
                      bool check_ids) {
  auto* record = static_cast<DataCheckRecord*>(p.workspace);
  const int lane = static_cast<int>(threadIdx.x) & 31;

  // Offsets: offsets[0] != 0 (i = 0), offsets[i] > offsets[i + 1] (i), or
  // offsets[num_bags] != nnz (i = num_bags). The loop bound is block-uniform
  // so every lane reaches the ballot.
  if (p.offsets != nullptr) {
    const auto* offsets = static_cast<const IdxT*>(p.offsets);
    const int64_t block = static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x;
    const int64_t stride = static_cast<int64_t>(gridDim.x) * gridDim.y * kCheckBlockThreads;
    for (int64_t base = block * kCheckBlockThreads; base <= num_bags; base += stride) {
      const int64_t i = base + threadIdx.x;
      bool bad = false;
      if (i <= num_bags) {
        const int64_t here = static_cast<int64_t>(load_ro(offsets + i));
        bad = (i == 0 && here != 0) || (i == num_bags && here != p.nnz) ||
              (i < num_bags && here > static_cast<int64_t>(load_ro(offsets + i + 1)));
      }
      const unsigned bad_lanes = __ballot_sync(0xffffffffu, bad);
      if (bad_lanes != 0 && lane == __ffs(bad_lanes) - 1) {
        atomicMin(&record->first_bad_offset_position, static_cast<unsigned long long>(i));
      }
    }
  }

  if (!check_ids) return;
  const auto* ids = static_cast<const IdxT*>(p.indices);
  const auto* offsets = static_cast<const IdxT*>(p.offsets);
  const bool has_padding = p.padding_idx >= 0;
  for (int64_t t = blockIdx.y; t < p.num_tables; t += gridDim.y) {
    int64_t rows;
    int64_t begin = 0;
    int64_t end = p.nnz;
    if (p.num_tables > 1) {
      rows = p.tables[t].rows;
      // With bad offsets these ranges are meaningless but stay memory-safe;
      // the report then ignores the id counts.
      if (p.fixed_bag_size > 0) {
        begin = t * p.bags_per_table * p.fixed_bag_size;
        end = begin + p.bags_per_table * p.fixed_bag_size;
      } else {
        begin = static_cast<int64_t>(load_ro(offsets + t * p.bags_per_table));
        end = static_cast<int64_t>(load_ro(offsets + (t + 1) * p.bags_per_table));
      }
      begin = min(max(begin, int64_t{0}), p.nnz);
      end = min(max(end, begin), p.nnz);
    } else {
      rows = p.single_table.rows;
    }
    for (int64_t base = begin + static_cast<int64_t>(blockIdx.x) * kCheckBlockThreads; base < end;
         base += static_cast<int64_t>(gridDim.x) * kCheckBlockThreads) {
      const int64_t i = base + threadIdx.x;
      bool bad = false;
      if (i < end) {
        const int64_t id = static_cast<int64_t>(load_ro(ids + i));
        bad = !(has_padding && id == p.padding_idx) && (id < 0 || id >= rows);
      }
      const unsigned bad_lanes = __ballot_sync(0xffffffffu, bad);
      if (bad_lanes != 0 && lane == __ffs(bad_lanes) - 1) {  // i is the warp's first bad position
        atomicAdd(&record->bad_index_count, static_cast<unsigned long long>(__popc(bad_lanes)));
        atomicMin(&record->first_bad_index_position, static_cast<unsigned long long>(i));
      }
    }
  }
}

// A bad offset makes the ids unexamined (as on CPU, where the offsets are
// checked first): the report then shows no bad ids.
template <typename IdxT>
__global__ void write_report_kernel(const DataCheckRecord* record, const IdxT* ids,
                                    bool error_policy, int64_t* report) {
  const unsigned long long bad_offset = record->first_bad_offset_position;
  const unsigned long long count = record->bad_index_count;
  const unsigned long long position = record->first_bad_index_position;
  if (bad_offset != kNoPosition) {
    report[SPEMBED_REPORT_STATUS] = SPEMBED_STATUS_INVALID_ARGUMENT;
    report[SPEMBED_REPORT_BAD_INDEX_COUNT] = 0;
    report[SPEMBED_REPORT_BAD_INDEX_POSITION] = -1;
    report[SPEMBED_REPORT_BAD_INDEX_VALUE] = 0;
    report[SPEMBED_REPORT_BAD_OFFSET_POSITION] = static_cast<int64_t>(bad_offset);
    return;
  }
  const bool found = count != 0;
  report[SPEMBED_REPORT_STATUS] =
      error_policy && found ? SPEMBED_STATUS_INDEX_OUT_OF_RANGE : SPEMBED_STATUS_SUCCESS;
  report[SPEMBED_REPORT_BAD_INDEX_COUNT] = static_cast<int64_t>(count);
  report[SPEMBED_REPORT_BAD_INDEX_POSITION] = found ? static_cast<int64_t>(position) : -1;
  report[SPEMBED_REPORT_BAD_INDEX_VALUE] = found ? static_cast<int64_t>(ids[position]) : 0;
  report[SPEMBED_REPORT_BAD_OFFSET_POSITION] = -1;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

int launch_reset_check_record(const EmbeddingBagForwardParams& p, cudaStream_t stream) {
  launch_kernel(reset_record_kernel, 1, 1, 0, stream, static_cast<DataCheckRecord*>(p.workspace));
  return launch_status(stream);
}

int launch_data_checks(const EmbeddingBagForwardParams& p, bool check_ids, cudaStream_t stream) {
  const int64_t num_bags = p.num_bags();
  // One thread per offset, and per id of the average table.
  const int64_t grid_y = check_ids ? std::min(p.num_tables, kMaxGridY) : 1;
  int64_t per_block_row = p.offsets != nullptr ? ceil_div(num_bags + 1, grid_y) : 0;
  if (check_ids) per_block_row = std::max(per_block_row, ceil_div(p.nnz, p.num_tables));
  const int64_t grid_x =
      std::min(std::max(ceil_div(per_block_row, kCheckBlockThreads), int64_t{1}), kMaxGridX);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  return SPEMBED_INDEX_SWITCH(p.index_type, IdxT, [&] {
    launch_kernel(data_check_kernel<IdxT>, grid, kCheckBlockThreads, 0, stream, p, num_bags,
                  check_ids);
    return launch_status(stream);
  });
}

int launch_write_report(const EmbeddingBagForwardParams& p, cudaStream_t stream) {
  return SPEMBED_INDEX_SWITCH(p.index_type, IdxT, [&] {
    launch_kernel(write_report_kernel<IdxT>, 1, 1, 0, stream,
                  static_cast<const DataCheckRecord*>(p.workspace),
                  static_cast<const IdxT*>(p.indices), p.bounds_policy == SPEMBED_BOUNDS_ERROR,
                  p.report);
    return launch_status(stream);
  });
}

}  // namespace spembed::detail
