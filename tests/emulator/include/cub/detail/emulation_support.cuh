// Shared pieces of the emulated CUB: argument checks, temporary-storage
// carving and the arithmetic of the sums.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>

#include "spembed_emulator/runtime.h"

namespace cub {
namespace emulation {

// Sub-allocations of the caller's temporary storage start on this boundary;
// the required size includes the slack to align the base itself, so a caller
// may pass any slice of its workspace.
constexpr size_t kTempAlignment = 256;

inline size_t round_up_to_alignment(size_t bytes) {
  return (bytes + kTempAlignment - 1) / kTempAlignment * kTempAlignment;
}

inline unsigned char* aligned_temp_base(void* d_temp_storage) {
  const auto address = reinterpret_cast<uintptr_t>(d_temp_storage);
  const uintptr_t aligned = (address + kTempAlignment - 1) / kTempAlignment * kTempAlignment;
  return static_cast<unsigned char*>(d_temp_storage) + (aligned - address);
}

// `count` * `element_bytes` rounded up to the alignment, or false when that
// does not fit in a size_t.
inline bool aligned_array_bytes(size_t count, size_t element_bytes, size_t& bytes) {
  const size_t limit = std::numeric_limits<size_t>::max() - 2 * kTempAlignment;
  if (element_bytes != 0 && count > limit / element_bytes) return false;
  bytes = round_up_to_alignment(count * element_bytes);
  return true;
}

// Adds `more` to `total`, false on overflow.
inline bool add_bytes(size_t& total, size_t more) {
  if (more > std::numeric_limits<size_t>::max() - total) return false;
  total += more;
  return true;
}

// num_items as a count; false when it is negative (CUB leaves that undefined;
// the emulator rejects it).
template <typename NumItemsT>
bool item_count(NumItemsT num_items, size_t& count) {
  static_assert(std::is_integral_v<NumItemsT> && !std::is_same_v<NumItemsT, bool>,
                "num_items must be an integer");
  if constexpr (std::is_signed_v<NumItemsT>) {
    if (num_items < 0) return false;
  }
  if (static_cast<std::make_unsigned_t<NumItemsT>>(num_items) >
      std::numeric_limits<size_t>::max()) {
    return false;
  }
  count = static_cast<size_t>(num_items);
  return true;
}

// A span of device memory, for the aliasing checks.
struct ByteSpan {
  const void* begin;
  size_t bytes;
};

inline bool spans_overlap(const ByteSpan& a, const ByteSpan& b) {
  if (a.bytes == 0 || b.bytes == 0) return false;
  const auto a_begin = reinterpret_cast<uintptr_t>(a.begin);
  const auto b_begin = reinterpret_cast<uintptr_t>(b.begin);
  return a_begin < b_begin + b.bytes && b_begin < a_begin + a.bytes;
}

// True when a span the algorithm writes overlaps any other span it uses
// (the written ones among themselves too). Read-only spans may overlap each
// other.
inline bool written_spans_alias(std::initializer_list<ByteSpan> written,
                                std::initializer_list<ByteSpan> read_only) {
  for (auto w = written.begin(); w != written.end(); ++w) {
    for (auto other = w + 1; other != written.end(); ++other) {
      if (spans_overlap(*w, *other)) return true;
    }
    for (const ByteSpan& r : read_only) {
      if (spans_overlap(*w, r)) return true;
    }
  }
  return false;
}

// Every byte of the caller's temporary storage is overwritten before use, so
// a workspace that is too small or shared with live data shows in results.
inline void poison_temp_storage(void* d_temp_storage, size_t temp_storage_bytes) {
  std::memset(d_temp_storage, ::spembed::emu::kPoisonByte, temp_storage_bytes);
}

// a + b with the GPU's two's-complement wrap-around for integers (signed
// overflow is undefined in host C++, and the sanitizers would stop on it).
template <typename T>
__host__ __device__ __forceinline__ T wrapping_add(T a, T b) {
  if constexpr (std::is_integral_v<T> && !std::is_same_v<T, bool>) {
    using Bits = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<Bits>(static_cast<Bits>(a) + static_cast<Bits>(b)));
  } else {
    return a + b;
  }
}

}  // namespace emulation
}  // namespace cub
