// CPU implementation of the embedding bag forward: the oracle of the CUDA
// tests and the path used without a GPU. Bags are split over threads; within a
// bag, rows are accumulated in float32 (double for double tables) in the order
// of the ids, which is the order the CUDA kernels use too. The loops
// (embedding_bag_forward_cpu_impl.h) are compiled for AVX-512, AVX2 and the
// baseline, and the widest the CPU runs is used.
#include <algorithm>
#include <cstdint>
#include <cstring>
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

void embedding_bag_forward_cpu(const EmbeddingBagForwardParams& p) {
  switch (cpu_isa()) {
#if defined(__x86_64__)
    case CpuIsa::kAvx512:
      cpu_avx512::forward(p);
      return;
    case CpuIsa::kAvx2:
      cpu_avx2::forward(p);
      return;
#endif
    default:
      cpu_base::forward(p);
      return;
  }
}

}  // namespace spembed::detail
