// CPU implementation of the embedding bag forward: the oracle of the CUDA
// tests and the path used without a GPU. Bags are split over threads; within a
// bag, rows are accumulated in float32 (double for double tables) in the order
// of the ids, which is the order the CUDA kernels use too. The loops
// (embedding_bag_forward_cpu_impl.h) are compiled for AVX-512, AVX2 and the
// baseline, and the widest the CPU runs is used.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/common/cpu_isa.h"
#include "kernels/common/cpu_parallel.h"
#include "kernels/embedding_bag/embedding_bag_forward.h"

namespace spembed::detail {

#define SPEMBED_CPU_ISA_IMPL "kernels/embedding_bag/embedding_bag_forward_cpu_impl.h"
#include "kernels/common/cpu_isa_copies.inc"

// `return fn(...)` of the copy of the loops for the widest instruction set.
#if defined(__x86_64__)
#define SPEMBED_WIDEST_COPY(fn, ...)      \
  switch (cpu_isa()) {                    \
    case CpuIsa::kAvx512:                 \
      return cpu_avx512::fn(__VA_ARGS__); \
    case CpuIsa::kAvx2:                   \
      return cpu_avx2::fn(__VA_ARGS__);   \
    default:                              \
      return cpu_base::fn(__VA_ARGS__);   \
  }
#else
#define SPEMBED_WIDEST_COPY(fn, ...) return cpu_base::fn(__VA_ARGS__)
#endif

void embedding_bag_forward_cpu(const EmbeddingBagForwardParams& p) {
  SPEMBED_WIDEST_COPY(forward, p);
}

IdScan scan_ids_cpu(const void* ids, IndexType index_type, int64_t begin, int64_t end, int64_t rows,
                    int64_t padding_idx) {
  auto scan = [&](auto typed) -> IdScan {
    SPEMBED_WIDEST_COPY(scan_ids, typed, begin, end, rows, padding_idx);
  };
  return index_type == IndexType::kI32 ? scan(static_cast<const int32_t*>(ids))
                                       : scan(static_cast<const int64_t*>(ids));
}

bool offsets_decrease_cpu(const void* offsets, IndexType index_type, int64_t begin, int64_t end) {
  auto scan = [&](auto typed) -> bool { SPEMBED_WIDEST_COPY(offsets_decrease, typed, begin, end); };
  return index_type == IndexType::kI32 ? scan(static_cast<const int32_t*>(offsets))
                                       : scan(static_cast<const int64_t*>(offsets));
}

#undef SPEMBED_WIDEST_COPY

}  // namespace spembed::detail
