// max_norm renormalisation of the rows a lookup names (spembed_embedding_renorm):
// its parameters, the arithmetic the CPU and CUDA paths share (so that they
// agree bitwise for norm types 1 and 2), and the entry points.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "kernels/common/types.h"
#include "kernels/embedding_bag/embedding_bag_params.h"
#include "kernels/embedding_bag/optimizer_math.h"

namespace spembed::detail {

struct RenormParams {
  DType table_dtype = DType::kF32;
  IndexType index_type = IndexType::kI64;
  TableMeta table;  // data is written in place
  const void* indices = nullptr;
  int64_t nnz = 0;
  float max_norm = 0.0f;
  float norm_type = 2.0f;
  spembed_bounds_policy_t bounds_policy = SPEMBED_BOUNDS_ERROR;
  // The same ids as a single-table NONE lookup: what the data checks (CPU
  // and CUDA) and the report see. Its workspace is the CUDA record.
  EmbeddingBagForwardParams checks;
  void* workspace = nullptr;  // CUDA: record, sorted ids, sort storage
};

// Lanes whose partial sums make a row's norm: a warp on CUDA, 32 strided
// accumulators on the CPU.
constexpr int kRenormLanes = 32;
// Added to the norm before dividing, as torch does.
constexpr float kRenormEpsilon = 1e-7f;

// One column's term of the norm sum.
SPEMBED_HOST_DEVICE inline float renorm_term(float x, float norm_type) {
  const float a = fabsf(x);
  if (norm_type == 1.0f) return a;
  if (norm_type == 2.0f) return opt_mul(x, x);
  return powf(a, norm_type);
}

// The norm from the sum of the terms.
SPEMBED_HOST_DEVICE inline float renorm_norm(float sum, float norm_type) {
  if (norm_type == 1.0f) return sum;
  if (norm_type == 2.0f) return opt_sqrt(sum);
  return powf(sum, opt_div(1.0f, norm_type));
}

// The factor a row is multiplied by: 1 (untouched) when its norm is within
// max_norm.
SPEMBED_HOST_DEVICE inline float renorm_scale(float norm, float max_norm) {
  return norm > max_norm ? opt_div(max_norm, opt_add(norm, kRenormEpsilon)) : 1.0f;
}

void embedding_renorm_cpu(const RenormParams& p);

// CUDA workspace bytes for nnz ids (the record, the sorted ids, the sort's
// storage), a multiple of 256.
size_t embedding_renorm_cuda_workspace_bytes(IndexType index_type, int64_t nnz);
int embedding_renorm_cuda(const RenormParams& p, void* stream);

}  // namespace spembed::detail
