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
  // As given; float tables use them rounded to float.
  double max_norm = 0.0;
  double norm_type = 2.0;
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
constexpr double kRenormEpsilon64 = 1e-7;

// The arithmetic below is in T, the accumulation type of the table: float, or
// double for float64 tables.
SPEMBED_HOST_DEVICE inline float renorm_pow(float a, float b) { return powf(a, b); }
SPEMBED_HOST_DEVICE inline double renorm_pow(double a, double b) { return pow(a, b); }
SPEMBED_HOST_DEVICE inline float renorm_abs(float a) { return fabsf(a); }
SPEMBED_HOST_DEVICE inline double renorm_abs(double a) { return fabs(a); }

// One column's term of the norm sum.
template <typename T>
SPEMBED_HOST_DEVICE inline T renorm_term(T x, T norm_type) {
  const T a = renorm_abs(x);
  if (norm_type == T(1)) return a;
  if (norm_type == T(2)) return opt_mul(x, x);
  return renorm_pow(a, norm_type);
}

// The norm from the sum of the terms.
template <typename T>
SPEMBED_HOST_DEVICE inline T renorm_norm(T sum, T norm_type) {
  if (norm_type == T(1)) return sum;
  if (norm_type == T(2)) return opt_sqrt(sum);
  return renorm_pow(sum, opt_div(T(1), norm_type));
}

// The factor a row is multiplied by: 1 (untouched) when its norm is within
// max_norm.
template <typename T>
SPEMBED_HOST_DEVICE inline T renorm_scale(T norm, T max_norm) {
  const T epsilon = sizeof(T) == 8 ? T(kRenormEpsilon64) : T(kRenormEpsilon);
  return norm > max_norm ? opt_div(max_norm, opt_add(norm, epsilon)) : T(1);
}

void embedding_renorm_cpu(const RenormParams& p);

// CUDA workspace bytes for nnz ids (the record, the sorted ids, the sort's
// storage), a multiple of 256.
size_t embedding_renorm_cuda_workspace_bytes(IndexType index_type, int64_t nnz);
int embedding_renorm_cuda(const RenormParams& p, void* stream);

}  // namespace spembed::detail
