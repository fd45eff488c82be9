// The vocabulary every operation shares: element and index types, the
// host/device qualifier of code that runs on both, and the "no position"
// value of the device-side check records.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define SPEMBED_HOST_DEVICE __host__ __device__
#else
#define SPEMBED_HOST_DEVICE
#endif

namespace spembed::detail {

enum class DType : uint8_t { kF32, kF16, kBF16, kF64 };
enum class IndexType : uint8_t { kI32, kI64 };

inline int dtype_bytes(DType t) { return t == DType::kF64 ? 8 : t == DType::kF32 ? 4 : 2; }

// The "none" value of a check record's first-bad position (an atomicMin
// target, so the largest value).
constexpr unsigned long long kNoPosition = ~0ull;

}  // namespace spembed::detail
