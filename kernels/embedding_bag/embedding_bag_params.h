// Parameters of the embedding bag forward, shared by the CPU implementation and
// the CUDA kernels. host/ fills them after validating every argument, so the
// implementations may assume: shapes agree, dtypes are supported, pointers that
// must be set are set, and (on CPU) offsets are well formed.
#pragma once

#include <cstdint>

#include "kernels/common/types.h"
#include "spembed/spembed.h"

namespace spembed::detail {

// One table of a lookup. Element offsets are 64-bit: tables may hold more than
// 2^31 elements.
struct TableMeta {
  const void* data = nullptr;  // row 0, element 0
  int64_t rows = 0;
  int64_t row_stride = 0;  // in elements, >= dim
  int32_t dim = 0;
  int32_t out_col = 0;  // first output column of this table's slice
};

struct EmbeddingBagForwardParams {
  DType table_dtype = DType::kF32;
  DType out_dtype = DType::kF32;
  IndexType index_type = IndexType::kI64;
  spembed_pooling_t pooling = SPEMBED_POOLING_SUM;
  spembed_bounds_policy_t bounds_policy = SPEMBED_BOUNDS_ERROR;
  int64_t padding_idx = -1;  // < 0: none

  const void* indices = nullptr;
  int64_t nnz = 0;
  const void* offsets = nullptr;  // [num_bags + 1]; null with fixed_bag_size or NONE
  int64_t fixed_bag_size = 0;     // > 0: bag i is ids [i*L, (i+1)*L)
  // [nnz] or null; the accumulation type (accumulate.h): double for
  // float64 tables, else float.
  const void* weights = nullptr;

  // Bags are table-major: bag g belongs to table g / bags_per_table and is
  // output row g % bags_per_table.
  int64_t num_tables = 1;
  int64_t bags_per_table = 0;
  // num_tables entries. CPU: host memory. CUDA: device memory when
  // num_tables > 1; a single table is passed by value in `single_table`.
  const TableMeta* tables = nullptr;
  TableMeta single_table;
  int32_t max_dim = 0;
  // Every table's base address and row stride are multiples of 16 bytes and
  // every dim a multiple of 16 bytes' worth of elements: 16-byte loads are safe.
  bool rows_16b_aligned = false;

  void* output = nullptr;  // [bags_per_table, total dim] or, for NONE, [nnz, dim]
  int64_t out_row_stride = 0;
  void* argmax = nullptr;  // MAX only, index_type, or null
  int64_t argmax_row_stride = 0;

  // CPU only: the data check found every id in range and none equal to
  // padding_idx, so the loops need not check ids again.
  bool all_ids_contribute = false;

  int64_t* report = nullptr;  // SPEMBED_REPORT_SIZE entries on the op's device, or null
  void* workspace = nullptr;  // CUDA: the DataCheckRecord below

  int64_t num_bags() const { return num_tables * bags_per_table; }
};

// Device-side record of the data checks (CUDA), kept in the caller's workspace.
// Positions are stored as unsigned so atomicMin keeps the smallest; "none" is
// the all-ones value.
struct DataCheckRecord {
  unsigned long long bad_index_count;
  unsigned long long first_bad_index_position;
  unsigned long long first_bad_offset_position;
};

// Workspace the CUDA forward needs: the record, rounded to the 256-byte
// alignment cudaMalloc gives, so callers can carve workspaces back to back.
constexpr size_t kForwardWorkspaceBytes = 256;
static_assert(sizeof(DataCheckRecord) <= kForwardWorkspaceBytes, "record must fit the workspace");

}  // namespace spembed::detail
