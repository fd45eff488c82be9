// Grid mapping of the kernels in this file:
//  - pad: one warp per row (sequence, head, position) of the padded output;
//    lanes on consecutive copy units (16 / 8 / 4 / 2 bytes) of the row, so
//    reads and writes are coalesced; padding rows are written as zeros.
//  - unpad: one warp per (token, head) row of the packed output; the warp
//    finds its token's sequence by binary search of cu_seqlens.
//  - masked softmax: one warp per (sequence, head, query row); lanes stride
//    over the row's keys; one pass for the running max and sum (merged across
//    lanes with shuffles), one pass to write P.
//  - fill / compare: grid-stride loops, one element per thread per step
//    (bench_device.cuh).
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <climits>
#include <cmath>

#include "attention_baseline.h"
#include "bench_device.cuh"

namespace spembed_bench {
namespace {

constexpr int kBlock = 256;  // threads per block of every kernel here
constexpr int kWarpsPerBlock = kBlock / 32;
// Grid-stride kernels use this many blocks per SM: enough resident warps to
// keep the memory system busy (2048 threads per SM / kBlock).
constexpr int kBlocksPerSm = 2048 / kBlock;

// Blocks for one warp per row.
unsigned warp_rows_blocks(int64_t rows) {
  return static_cast<unsigned>((rows + kWarpsPerBlock - 1) / kWarpsPerBlock);
}

unsigned grid_stride_blocks(int64_t n) {
  int device = 0;
  int sms = 0;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t needed = (n + kBlock - 1) / kBlock;
  const int64_t cap = int64_t{sms} * kBlocksPerSm;
  return static_cast<unsigned>(needed < cap ? (needed > 0 ? needed : 1) : cap);
}

using device::from_float;
using device::to_float;

// The runtime type as a template parameter, in one place.
template <typename F>
cudaError_t dispatch_type(AttnType t, F&& f) {
  switch (t) {
    case AttnType::kF32:
      return f(float{});
    case AttnType::kF16:
      return f(__half{});
    case AttnType::kBF16:
      return f(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

// ---- pad / unpad ----------------------------------------------------------------------

// Rows are indexed in 32 bits (the launchers check the count): 64-bit
// division is a subroutine call that costs registers and stack.
template <typename U>
__global__ void __launch_bounds__(kBlock)
    pad_kernel(const U* packed, const int32_t* cu, uint32_t rows, uint32_t max_len, uint32_t heads,
               int units, U* padded) {
  const uint32_t row = blockIdx.x * uint32_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  // row = (b * heads + h) * max_len + l
  const uint32_t l = row % max_len;
  const uint32_t bh = row / max_len;
  const uint32_t h = bh % heads;
  const uint32_t b = bh / heads;
  const int64_t first = cu[b];
  U* dst = padded + int64_t{row} * units;
  if (l < static_cast<uint32_t>(cu[b + 1] - first)) {
    const U* src = packed + ((first + l) * heads + h) * units;
    for (int u = lane; u < units; u += 32) dst[u] = src[u];
  } else {
    for (int u = lane; u < units; u += 32) dst[u] = U{};
  }
}

template <typename U>
__global__ void __launch_bounds__(kBlock)
    unpad_kernel(const U* padded, const int32_t* cu, int32_t batch, uint32_t rows, uint32_t max_len,
                 uint32_t heads, int units, U* packed) {
  const uint32_t row = blockIdx.x * uint32_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  // row = t * heads + h
  const uint32_t h = row % heads;
  const auto t = static_cast<int32_t>(row / heads);
  // The last b with cu[b] <= t (empty sequences share their offset with the
  // next one and are skipped).
  int32_t lo = 0, hi = batch;
  while (lo < hi) {
    const int32_t mid = (lo + hi + 1) / 2;
    if (cu[mid] <= t) {
      lo = mid;
    } else {
      hi = mid - 1;
    }
  }
  const int64_t l = t - cu[lo];
  const U* src = padded + ((int64_t{lo} * heads + h) * max_len + l) * units;
  U* dst = packed + int64_t{row} * units;
  for (int u = lane; u < units; u += 32) dst[u] = src[u];
}

// Calls f(U{}) with the widest copy unit dividing `row_bytes` (even: the
// elements are 2 or 4 bytes).
template <typename F>
cudaError_t dispatch_unit(int64_t row_bytes, F&& f) {
  if (row_bytes % 16 == 0) return f(uint4{});
  if (row_bytes % 8 == 0) return f(uint2{});
  if (row_bytes % 4 == 0) return f(uint32_t{});
  return f(uint16_t{});
}

// ---- masked softmax ---------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kBlock)
    masked_softmax_kernel(T* scores, const int32_t* cu_q, const int32_t* cu_k, uint32_t heads,
                          uint32_t max_q, int64_t max_k, uint32_t rows, bool causal) {
  const uint32_t row = blockIdx.x * uint32_t{kWarpsPerBlock} + threadIdx.x / 32;
  if (row >= rows) return;
  const int lane = static_cast<int>(threadIdx.x % 32);
  // row = (b * heads + h) * max_q + i
  const uint32_t i = row % max_q;
  const uint32_t b = row / max_q / heads;
  const int64_t lq = cu_q[b + 1] - cu_q[b];
  if (i >= lq) return;
  const int64_t lk = cu_k[b + 1] - cu_k[b];
  int64_t hi = causal ? i + lk - lq + 1 : lk;
  hi = hi < 0 ? 0 : (hi > lk ? lk : hi);
  T* s = scores + int64_t{row} * max_k;
  float m = -INFINITY;
  float l = 0.0f;
  for (int64_t j = lane; j < hi; j += 32) {
    const float x = to_float(s[j]);
    const float m_new = fmaxf(m, x);
    l = l * __expf(m - m_new) + __expf(x - m_new);
    m = m_new;
  }
  for (int offset = 16; offset > 0; offset /= 2) {
    const float m_o = __shfl_xor_sync(0xFFFFFFFFu, m, offset);
    const float l_o = __shfl_xor_sync(0xFFFFFFFFu, l, offset);
    const float m_new = fmaxf(m, m_o);
    // A lane that saw no key has m = -inf and l = 0: scale it by 0, not NaN.
    const float a = m == -INFINITY ? 0.0f : __expf(m - m_new);
    const float c = m_o == -INFINITY ? 0.0f : __expf(m_o - m_new);
    l = l * a + l_o * c;
    m = m_new;
  }
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int64_t j = lane; j < lk; j += 32) {
    const float p = j < hi ? __expf(to_float(s[j]) - m) * inv : 0.0f;
    s[j] = from_float<T>(p);
  }
}

}  // namespace

cudaError_t fill_attention_input(void* data, AttnType type, int64_t n, uint64_t salt,
                                 cudaStream_t stream) {
  return dispatch_type(type, [&](auto zero) {
    using T = decltype(zero);
    device::fill_kernel<kBlock>
        <<<grid_stride_blocks(n), kBlock, 0, stream>>>(static_cast<T*>(data), n, salt);
    return cudaGetLastError();
  });
}

cudaError_t pad_sequences(const void* packed, int elem_bytes, const int32_t* cu_seqlens,
                          int64_t batch, int64_t max_len, int64_t heads, int64_t head_dim,
                          void* padded, cudaStream_t stream) {
  const int64_t rows = batch * heads * max_len;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int64_t row_bytes = head_dim * elem_bytes;
  return dispatch_unit(row_bytes, [&](auto zero) {
    using U = decltype(zero);
    pad_kernel<<<warp_rows_blocks(rows), kBlock, 0, stream>>>(
        static_cast<const U*>(packed), cu_seqlens, static_cast<uint32_t>(rows),
        static_cast<uint32_t>(max_len), static_cast<uint32_t>(heads),
        static_cast<int>(row_bytes / static_cast<int64_t>(sizeof(U))), static_cast<U*>(padded));
    return cudaGetLastError();
  });
}

cudaError_t unpad_sequences(const void* padded, int elem_bytes, const int32_t* cu_seqlens,
                            int64_t batch, int64_t total, int64_t max_len, int64_t heads,
                            int64_t head_dim, void* packed, cudaStream_t stream) {
  const int64_t rows = total * heads;
  if (rows > INT32_MAX || batch > INT32_MAX) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  const int64_t row_bytes = head_dim * elem_bytes;
  return dispatch_unit(row_bytes, [&](auto zero) {
    using U = decltype(zero);
    unpad_kernel<<<warp_rows_blocks(rows), kBlock, 0, stream>>>(
        static_cast<const U*>(padded), cu_seqlens, static_cast<int32_t>(batch),
        static_cast<uint32_t>(rows), static_cast<uint32_t>(max_len), static_cast<uint32_t>(heads),
        static_cast<int>(row_bytes / static_cast<int64_t>(sizeof(U))), static_cast<U*>(packed));
    return cudaGetLastError();
  });
}

cudaError_t masked_softmax(void* scores, AttnType type, const int32_t* cu_seqlens_q,
                           const int32_t* cu_seqlens_k, int64_t batch, int64_t heads, int64_t max_q,
                           int64_t max_k, bool causal, cudaStream_t stream) {
  const int64_t rows = batch * heads * max_q;
  if (rows > INT32_MAX) return cudaErrorInvalidValue;
  if (rows == 0) return cudaSuccess;
  return dispatch_type(type, [&](auto zero) {
    using T = decltype(zero);
    masked_softmax_kernel<<<warp_rows_blocks(rows), kBlock, 0, stream>>>(
        static_cast<T*>(scores), cu_seqlens_q, cu_seqlens_k, static_cast<uint32_t>(heads),
        static_cast<uint32_t>(max_q), max_k, static_cast<uint32_t>(rows), causal);
    return cudaGetLastError();
  });
}

cudaError_t count_attention_mismatches(const void* out, const void* ref, AttnType type, int64_t n,
                                       double tol, unsigned long long* result,
                                       cudaStream_t stream) {
  return dispatch_type(type, [&](auto zero) {
    using T = decltype(zero);
    device::mismatch_kernel<kBlock><<<grid_stride_blocks(n), kBlock, 0, stream>>>(
        static_cast<const T*>(out), static_cast<const T*>(ref), n, static_cast<float>(tol), result);
    return cudaGetLastError();
  });
}

}  // namespace spembed_bench
