// Runtime flags -> compile-time constants, in one place, so a launcher writes
// its kernel launch once (the idea of flash-attention's static_switch.h).
// Each macro is an expression whose value is what its body returns; the body
// is a lambda that sees NAME as a constexpr value (or TYPE as a type):
//
//   return SPEMBED_BOOL_SWITCH(vec16, kVec16, [&] { return launch<kVec16>(); });
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "kernels/common/types.h"

#define SPEMBED_BOOL_SWITCH(COND, NAME, ...) \
  [&] {                                      \
    if (COND) {                              \
      static constexpr bool NAME = true;     \
      return __VA_ARGS__();                  \
    } else {                                 \
      static constexpr bool NAME = false;    \
      return __VA_ARGS__();                  \
    }                                        \
  }()

// Element type of a float32 / float16 / bfloat16 tensor: float, __half or
// __nv_bfloat16 (callers have rejected kF64, which would take the float branch).
#define SPEMBED_DTYPE_SWITCH(DTYPE, TYPE, ...) \
  [&] {                                        \
    switch (DTYPE) {                           \
      case ::spembed::detail::DType::kF16: {   \
        using TYPE = __half;                   \
        return __VA_ARGS__();                  \
      }                                        \
      case ::spembed::detail::DType::kBF16: {  \
        using TYPE = __nv_bfloat16;            \
        return __VA_ARGS__();                  \
      }                                        \
      case ::spembed::detail::DType::kF32:     \
      default: {                               \
        using TYPE = float;                    \
        return __VA_ARGS__();                  \
      }                                        \
    }                                          \
  }()

// Element type of an embedding table: SPEMBED_DTYPE_SWITCH's, or double.
#define SPEMBED_TABLE_DTYPE_SWITCH(DTYPE, TYPE, ...)       \
  [&] {                                                    \
    if ((DTYPE) == ::spembed::detail::DType::kF64) {       \
      using TYPE = double;                                 \
      return __VA_ARGS__();                                \
    }                                                      \
    return SPEMBED_DTYPE_SWITCH(DTYPE, TYPE, __VA_ARGS__); \
  }()

// Type of indices, offsets and argmax: int32_t or int64_t.
#define SPEMBED_INDEX_SWITCH(INDEX_TYPE, TYPE, ...)           \
  [&] {                                                       \
    if ((INDEX_TYPE) == ::spembed::detail::IndexType::kI32) { \
      using TYPE = int32_t;                                   \
      return __VA_ARGS__();                                   \
    } else {                                                  \
      using TYPE = int64_t;                                   \
      return __VA_ARGS__();                                   \
    }                                                         \
  }()
