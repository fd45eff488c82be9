// cub::DoubleBuffer for the emulation build.
#pragma once

#include <cuda_runtime_api.h>

namespace cub {

// A pair of same-sized device buffers; `selector` names the one holding the
// current data. Sorts ping-pong between the two and update `selector`.
template <typename T>
struct DoubleBuffer {
  T* d_buffers[2];
  int selector;

  __host__ __device__ __forceinline__ DoubleBuffer() : d_buffers{nullptr, nullptr}, selector(0) {}

  __host__ __device__ __forceinline__ DoubleBuffer(T* d_current, T* d_alternate)
      : d_buffers{d_current, d_alternate}, selector(0) {}

  __host__ __device__ __forceinline__ T* Current() { return d_buffers[selector]; }

  __host__ __device__ __forceinline__ T* Alternate() { return d_buffers[selector ^ 1]; }
};

}  // namespace cub
