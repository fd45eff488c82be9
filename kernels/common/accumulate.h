// The accumulation type of a table dtype: float64 tables accumulate in
// double, every other dtype in float. Everything a float64 table's call
// computes or keeps (outputs, per-sample weights and their gradient, gradients,
// optimizer states) is float64 too; float32 is the type of the others.
#pragma once

#include <type_traits>

#include "kernels/common/types.h"

namespace spembed::detail {

constexpr DType accumulation_dtype(DType table) {
  return table == DType::kF64 ? DType::kF64 : DType::kF32;
}

// AccumulatorOf<kTable>::type: double for kF64, float otherwise.
template <DType kTable>
struct AccumulatorOf {
  using type = std::conditional_t<kTable == DType::kF64, double, float>;
};

// The same from an element type (the CUDA kernels' TableT).
template <typename TableT>
using accumulator_t = std::conditional_t<std::is_same_v<TableT, double>, double, float>;

}  // namespace spembed::detail
