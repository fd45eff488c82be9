// CPU max_norm renormalisation: the distinct valid rows the ids name, each
// renormalised once, in the arithmetic order the CUDA kernel uses
// (embedding_renorm.h), over threads by row.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "kernels/common/cpu_parallel.h"
#include "kernels/common/host_half.h"
#include "kernels/embedding_bag/embedding_renorm.h"

namespace spembed::detail {
namespace {

template <typename Index>
std::vector<int64_t> distinct_rows(const RenormParams& p) {
  const auto* ids = static_cast<const Index*>(p.indices);
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(p.nnz));
  for (int64_t i = 0; i < p.nnz; ++i) {
    const auto id = static_cast<int64_t>(ids[i]);
    if (id >= 0 && id < p.table.rows) rows.push_back(id);
  }
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  return rows;
}

float load(DType t, const void* row, int64_t c) {
  switch (t) {
    case DType::kF16:
      return half_to_float(static_cast<const uint16_t*>(row)[c]);
    case DType::kBF16:
      return bf16_to_float(static_cast<const uint16_t*>(row)[c]);
    case DType::kF32:
    default:
      return static_cast<const float*>(row)[c];
  }
}

void store(DType t, void* row, int64_t c, float v) {
  switch (t) {
    case DType::kF16:
      static_cast<uint16_t*>(row)[c] = float_to_half(v);
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(row)[c] = float_to_bf16(v);
      break;
    case DType::kF32:
    default:
      static_cast<float*>(row)[c] = v;
  }
}

void renorm_row(const RenormParams& p, int64_t r) {
  char* row = static_cast<char*>(const_cast<void*>(p.table.data)) +
              r * p.table.row_stride * dtype_bytes(p.table_dtype);
  const int64_t dim = p.table.dim;
  float lanes[kRenormLanes] = {};
  for (int64_t c = 0; c < dim; ++c) {
    float& acc = lanes[c % kRenormLanes];
    acc = opt_add(acc, renorm_term(load(p.table_dtype, row, c), p.norm_type));
  }
  // The warp's butterfly: after the step at distance d every lane holds
  // lanes[j] + lanes[j ^ d] (the same bits on both lanes of a pair).
  for (int d = kRenormLanes / 2; d >= 1; d /= 2) {
    float next[kRenormLanes];
    for (int j = 0; j < kRenormLanes; ++j) next[j] = opt_add(lanes[j], lanes[j ^ d]);
    std::copy(next, next + kRenormLanes, lanes);
  }
  const float scale = renorm_scale(renorm_norm(lanes[0], p.norm_type), p.max_norm);
  if (scale == 1.0f) return;
  for (int64_t c = 0; c < dim; ++c) {
    store(p.table_dtype, row, c, opt_mul(load(p.table_dtype, row, c), scale));
  }
}

}  // namespace

void embedding_renorm_cpu(const RenormParams& p) {
  const std::vector<int64_t> rows =
      p.index_type == IndexType::kI32 ? distinct_rows<int32_t>(p) : distinct_rows<int64_t>(p);
  parallel_for(static_cast<int64_t>(rows.size()), 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) renorm_row(p, rows[static_cast<size_t>(k)]);
  });
}

}  // namespace spembed::detail
