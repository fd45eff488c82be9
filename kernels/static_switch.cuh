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

#include "kernels/embedding_bag_forward_launch.cuh"
#include "kernels/embedding_bag_params.h"

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

// Element type of a table or output: float, __half or __nv_bfloat16.
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

// What the lookup kernel computes per bag (see PoolKind).
#define SPEMBED_POOL_KIND_SWITCH(KIND, NAME, ...)                                              \
  [&] {                                                                                        \
    switch (KIND) {                                                                            \
      case ::spembed::detail::PoolKind::kWeightedSum: {                                        \
        static constexpr ::spembed::detail::PoolKind NAME =                                    \
            ::spembed::detail::PoolKind::kWeightedSum;                                         \
        return __VA_ARGS__();                                                                  \
      }                                                                                        \
      case ::spembed::detail::PoolKind::kMax: {                                                \
        static constexpr ::spembed::detail::PoolKind NAME = ::spembed::detail::PoolKind::kMax; \
        return __VA_ARGS__();                                                                  \
      }                                                                                        \
      case ::spembed::detail::PoolKind::kSum:                                                  \
      default: {                                                                               \
        static constexpr ::spembed::detail::PoolKind NAME = ::spembed::detail::PoolKind::kSum; \
        return __VA_ARGS__();                                                                  \
      }                                                                                        \
    }                                                                                          \
  }()

// Vectors per lane per row of the lookup kernel: 1, 2 or 4.
#define SPEMBED_VEC_PER_THREAD_SWITCH(VEC, NAME, ...) \
  [&] {                                               \
    if ((VEC) >= 4) {                                 \
      static constexpr int NAME = 4;                  \
      return __VA_ARGS__();                           \
    } else if ((VEC) == 2) {                          \
      static constexpr int NAME = 2;                  \
      return __VA_ARGS__();                           \
    } else {                                          \
      static constexpr int NAME = 1;                  \
      return __VA_ARGS__();                           \
    }                                                 \
  }()

// Lanes per work item of the lookup kernel: 1, 2, 4, 8, 16 or 32.
#define SPEMBED_LANES_SWITCH(LANES, NAME, ...) \
  [&] {                                        \
    switch (LANES) {                           \
      case 32: {                               \
        static constexpr int NAME = 32;        \
        return __VA_ARGS__();                  \
      }                                        \
      case 16: {                               \
        static constexpr int NAME = 16;        \
        return __VA_ARGS__();                  \
      }                                        \
      case 8: {                                \
        static constexpr int NAME = 8;         \
        return __VA_ARGS__();                  \
      }                                        \
      case 4: {                                \
        static constexpr int NAME = 4;         \
        return __VA_ARGS__();                  \
      }                                        \
      case 2: {                                \
        static constexpr int NAME = 2;         \
        return __VA_ARGS__();                  \
      }                                        \
      default: {                               \
        static constexpr int NAME = 1;         \
        return __VA_ARGS__();                  \
      }                                        \
    }                                          \
  }()
