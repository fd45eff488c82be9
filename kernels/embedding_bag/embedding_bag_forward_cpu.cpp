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

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,f16c")
#define SPEMBED_CPU_ISA_LEVEL 2
namespace {
namespace cpu_avx512 {
#include "kernels/embedding_bag/embedding_bag_forward_cpu_impl.h"
static_assert(kVecBytes == 64, "the AVX-512 copy must use 64-byte vectors");
}  // namespace cpu_avx512
}  // namespace
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("avx2,f16c")
#undef SPEMBED_CPU_ISA_LEVEL
#define SPEMBED_CPU_ISA_LEVEL 1
namespace {
namespace cpu_avx2 {
#include "kernels/embedding_bag/embedding_bag_forward_cpu_impl.h"
static_assert(kVecBytes == 32, "the AVX2 copy must use 32-byte vectors");
}  // namespace cpu_avx2
}  // namespace
#pragma GCC pop_options
#undef SPEMBED_CPU_ISA_LEVEL
#endif

#define SPEMBED_CPU_ISA_LEVEL 0
namespace {
namespace cpu_base {
#include "kernels/embedding_bag/embedding_bag_forward_cpu_impl.h"
}  // namespace cpu_base
}  // namespace
#undef SPEMBED_CPU_ISA_LEVEL

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
