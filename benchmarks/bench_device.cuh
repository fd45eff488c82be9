// Device building blocks shared by the benchmarks' CUDA files
// (baseline_kernels.cu, attention_baseline.cu): fp32 conversions of the
// element types, and the grid-stride fill and comparison kernels, one element
// per thread per step, in blocks of kThreads (the including file's block
// size).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

namespace spembed_bench::device {

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float v) {
  return __float2half_rn(v);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// The device twin of mix64 (bench_common.h).
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// data[i] = k / 16 with k in [-16, 16] hashed from (salt, i), i < n (the
// host twin is cpu_table in bench_common.cpp).
template <int kThreads, typename T>
__global__ void __launch_bounds__(kThreads) fill_kernel(T* data, int64_t n, uint64_t salt) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * kThreads) {
    const int k =
        static_cast<int>(mix64(salt * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i)) % 33) - 16;
    data[i] = from_float<T>(static_cast<float>(k) / 16.0f);
  }
}

// Counts the i < n with !(|out[i] - ref[i]| <= rel_tol * max(1, |ref[i]|))
// (NaN counts) into result[0] and keeps the smallest such i in result[1].
template <int kThreads, typename T>
__global__ void __launch_bounds__(kThreads)
    mismatch_kernel(const T* out, const T* ref, int64_t n, float rel_tol,
                    unsigned long long* result) {
  for (int64_t i = blockIdx.x * int64_t{kThreads} + threadIdx.x; i < n;
       i += int64_t{gridDim.x} * kThreads) {
    const float o = to_float(out[i]);
    const float r = to_float(ref[i]);
    if (!(fabsf(o - r) <= rel_tol * fmaxf(1.0f, fabsf(r)))) {
      atomicAdd(&result[0], 1ull);
      atomicMin(&result[1], static_cast<unsigned long long>(i));
    }
  }
}

}  // namespace spembed_bench::device
