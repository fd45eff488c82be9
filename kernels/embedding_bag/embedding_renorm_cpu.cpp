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

// Acc: the accumulation type (kernels/common/accumulate.h).
template <typename Acc>
Acc load(DType t, const void* row, int64_t c) {
  switch (t) {
    case DType::kF64:
      return static_cast<Acc>(static_cast<const double*>(row)[c]);
    case DType::kF16:
      return half_to_float(static_cast<const uint16_t*>(row)[c]);
    case DType::kBF16:
      return bf16_to_float(static_cast<const uint16_t*>(row)[c]);
    case DType::kF32:
    default:
      return static_cast<const float*>(row)[c];
  }
}

template <typename Acc>
void store(DType t, void* row, int64_t c, Acc v) {
  switch (t) {
    case DType::kF64:
      static_cast<double*>(row)[c] = v;
      break;
    case DType::kF16:
      static_cast<uint16_t*>(row)[c] = float_to_half(static_cast<float>(v));
      break;
    case DType::kBF16:
      static_cast<uint16_t*>(row)[c] = float_to_bf16(static_cast<float>(v));
      break;
    case DType::kF32:
    default:
      static_cast<float*>(row)[c] = static_cast<float>(v);
  }
}

template <typename Acc>
void renorm_row(const RenormParams& p, int64_t r) {
  const auto norm_type = static_cast<Acc>(p.norm_type);
  const auto max_norm = static_cast<Acc>(p.max_norm);
  char* row = static_cast<char*>(const_cast<void*>(p.table.data)) +
              r * p.table.row_stride * dtype_bytes(p.table_dtype);
  const int64_t dim = p.table.dim;
  Acc lanes[kRenormLanes] = {};
  for (int64_t c = 0; c < dim; ++c) {
    Acc& acc = lanes[c % kRenormLanes];
    acc = opt_add(acc, renorm_term(load<Acc>(p.table_dtype, row, c), norm_type));
  }
  // The warp's butterfly: after the step at distance d every lane holds
  // lanes[j] + lanes[j ^ d] (the same bits on both lanes of a pair).
  for (int d = kRenormLanes / 2; d >= 1; d /= 2) {
    Acc next[kRenormLanes];
    for (int j = 0; j < kRenormLanes; ++j) next[j] = opt_add(lanes[j], lanes[j ^ d]);
    std::copy(next, next + kRenormLanes, lanes);
  }
  const Acc scale = renorm_scale(renorm_norm(lanes[0], norm_type), max_norm);
  if (scale == Acc(1)) return;
  for (int64_t c = 0; c < dim; ++c) {
    store<Acc>(p.table_dtype, row, c, opt_mul(load<Acc>(p.table_dtype, row, c), scale));
  }
}

}  // namespace

void embedding_renorm_cpu(const RenormParams& p) {
  const std::vector<int64_t> rows =
      p.index_type == IndexType::kI32 ? distinct_rows<int32_t>(p) : distinct_rows<int64_t>(p);
  parallel_for(static_cast<int64_t>(rows.size()), 256, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      if (p.table_dtype == DType::kF64) {
        renorm_row<double>(p, rows[static_cast<size_t>(k)]);
      } else {
        renorm_row<float>(p, rows[static_cast<size_t>(k)]);
      }
    }
  });
}

}  // namespace spembed::detail
