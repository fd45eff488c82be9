// The two places where a kernel meets the machine it runs on: its launch and
// its dynamic shared memory. Every kernel launch and every use of dynamic
// shared memory goes through these, so that the same kernel source builds for
// the GPU (nvcc) and for the CPU emulator (SPEMBED_EMULATION, g++ against
// tests/emulator/, see docs/emulation.md).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace spembed::detail {

// Launches kernel(args...) on (grid, block, dynamic_smem_bytes, stream), as
// the triple-chevron syntax does; read the launch's error afterwards with
// launch_status().
template <typename... Params, typename... Args>
inline void launch_kernel(void (*kernel)(Params...), dim3 grid, dim3 block,
                          size_t dynamic_smem_bytes, cudaStream_t stream, const Args&... args) {
#if defined(SPEMBED_EMULATION)
  ::spembed::emu::launch(reinterpret_cast<const void*>(kernel), grid, block, dynamic_smem_bytes,
                         stream, [kernel, args...] { kernel(args...); });
#else
  // clang-format would split the chevrons into "> > >", which nvcc rejects.
  // clang-format off
  kernel<<<grid, block, dynamic_smem_bytes, stream>>>(args...);
  // clang-format on
#endif
}

// The block's dynamic shared memory (16-byte aligned) as T*.
template <typename T>
__device__ __forceinline__ T* dynamic_shared_memory() {
#if defined(SPEMBED_EMULATION)
  return static_cast<T*>(::spembed::emu::dynamic_shared_memory());
#else
  extern __shared__ __align__(16) unsigned char spembed_dynamic_smem[];
  return reinterpret_cast<T*>(spembed_dynamic_smem);
#endif
}

// The error of the launch just queued; with SPEMBED_DEBUG_SYNC, also waits for
// it to finish so that a fault is reported by the launch that caused it.
inline int launch_status(cudaStream_t stream) {
  cudaError_t status = cudaGetLastError();
#ifdef SPEMBED_DEBUG_SYNC
  if (status == cudaSuccess) status = cudaStreamSynchronize(stream);
#else
  (void)stream;
#endif
  return static_cast<int>(status);
}

}  // namespace spembed::detail
