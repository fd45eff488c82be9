// The embedding bag kernels' compile-time switches (the shared ones are in
// kernels/common/static_switch.cuh): pooling kind, vectors per lane, lanes
// per work item.
#pragma once

#include "kernels/common/static_switch.cuh"
#include "kernels/embedding_bag/embedding_bag_forward_launch.cuh"

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
