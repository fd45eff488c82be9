// cub::DeviceScan sums for the emulation build: a two-level scan on the host
// (tile totals in the caller's temporary storage, then each tile from its
// prefix), handed to the emulated runtime so that it runs in stream order
// (or is recorded by a capturing stream).
//
// As with CUB: a call with d_temp_storage == nullptr only sets
// temp_storage_bytes; the sum is accumulated in the input's value type,
// starting from 0, wrapping around on integer overflow as the GPU does;
// d_in == d_out (in place) works. Unlike CUB, negative num_items, null
// pointers and overlap between the input, the output (other than exactly in
// place) and the temporary storage are errors at call time
// (cudaErrorInvalidValue). The whole temporary storage is overwritten with
// kPoisonByte before the scan uses it.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cub/detail/emulation_support.cuh>
#include <iterator>
#include <type_traits>

#include "spembed_emulator/runtime.h"

namespace cub {
namespace emulation {

// Items per tile of the two-level scan: each tile's total takes one
// accumulator in the temporary storage.
constexpr size_t kScanTileItems = 1024;

enum class ScanKind { kExclusive, kInclusive };

template <ScanKind kKind, typename InputIteratorT, typename OutputIteratorT, typename NumItemsT>
cudaError_t scan_sum(const char* what, void* d_temp_storage, size_t& temp_storage_bytes,
                     InputIteratorT d_in, OutputIteratorT d_out, NumItemsT num_items,
                     cudaStream_t stream) {
  using AccumT = std::remove_cv_t<typename std::iterator_traits<InputIteratorT>::value_type>;
  using InputDifference = typename std::iterator_traits<InputIteratorT>::difference_type;
  using OutputDifference = typename std::iterator_traits<OutputIteratorT>::difference_type;
  size_t count = 0;
  if (!item_count(num_items, count)) return cudaErrorInvalidValue;
  const size_t tiles = (count + kScanTileItems - 1) / kScanTileItems;
  size_t tile_totals_bytes = 0;
  if (!aligned_array_bytes(tiles, sizeof(AccumT), tile_totals_bytes)) {
    return cudaErrorInvalidValue;
  }
  size_t required_bytes = kTempAlignment - 1;  // aligning the base
  if (!add_bytes(required_bytes, tile_totals_bytes)) return cudaErrorInvalidValue;
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = required_bytes;
    return cudaSuccess;
  }
  if (temp_storage_bytes < required_bytes) return cudaErrorInvalidValue;

  const size_t claimed_temp_bytes = temp_storage_bytes;
  // Pointer arguments can be checked; other iterators are taken as they are.
  ByteSpan input_span{nullptr, 0};
  ByteSpan output_span{nullptr, 0};
  if constexpr (std::is_pointer_v<InputIteratorT>) {
    if (count > 0 && d_in == nullptr) return cudaErrorInvalidValue;
    input_span = {d_in, count * sizeof(*d_in)};
  }
  if constexpr (std::is_pointer_v<OutputIteratorT>) {
    if (count > 0 && d_out == nullptr) return cudaErrorInvalidValue;
    output_span = {d_out, count * sizeof(*d_out)};
  }
  const ByteSpan temp_span{d_temp_storage, claimed_temp_bytes};
  const bool in_place = input_span.begin != nullptr && input_span.begin == output_span.begin &&
                        input_span.bytes == output_span.bytes;
  if (in_place ? written_spans_alias({output_span, temp_span}, {})
               : written_spans_alias({output_span, temp_span}, {input_span})) {
    return cudaErrorInvalidValue;
  }

  return ::spembed::emu::enqueue_host_work(stream, what, [=] {
    poison_temp_storage(d_temp_storage, claimed_temp_bytes);
    auto* const tile_totals = reinterpret_cast<AccumT*>(aligned_temp_base(d_temp_storage));
    const auto input_at = [d_in](size_t i) -> AccumT {
      return d_in[static_cast<InputDifference>(i)];
    };
    for (size_t tile = 0; tile < tiles; ++tile) {
      const size_t end = std::min(count, (tile + 1) * kScanTileItems);
      AccumT total{};
      for (size_t i = tile * kScanTileItems; i < end; ++i) total = wrapping_add(total, input_at(i));
      tile_totals[tile] = total;
    }
    // Tile totals become tile prefixes, in place.
    AccumT prefix{};
    for (size_t tile = 0; tile < tiles; ++tile) {
      const AccumT total = tile_totals[tile];
      tile_totals[tile] = prefix;
      prefix = wrapping_add(prefix, total);
    }
    for (size_t tile = 0; tile < tiles; ++tile) {
      const size_t end = std::min(count, (tile + 1) * kScanTileItems);
      AccumT running = tile_totals[tile];
      for (size_t i = tile * kScanTileItems; i < end; ++i) {
        // Read before write: in place, d_out[i] is d_in[i].
        const AccumT item = input_at(i);
        if constexpr (kKind == ScanKind::kExclusive) {
          d_out[static_cast<OutputDifference>(i)] = running;
          running = wrapping_add(running, item);
        } else {
          running = wrapping_add(running, item);
          d_out[static_cast<OutputDifference>(i)] = running;
        }
      }
    }
  });
}

}  // namespace emulation

struct DeviceScan {
  template <typename InputIteratorT, typename OutputIteratorT, typename NumItemsT>
  static cudaError_t ExclusiveSum(void* d_temp_storage, size_t& temp_storage_bytes,
                                  InputIteratorT d_in, OutputIteratorT d_out, NumItemsT num_items,
                                  cudaStream_t stream = 0) {
    return emulation::scan_sum<emulation::ScanKind::kExclusive>("cub::DeviceScan::ExclusiveSum",
                                                                d_temp_storage, temp_storage_bytes,
                                                                d_in, d_out, num_items, stream);
  }

  template <typename InputIteratorT, typename OutputIteratorT, typename NumItemsT>
  static cudaError_t InclusiveSum(void* d_temp_storage, size_t& temp_storage_bytes,
                                  InputIteratorT d_in, OutputIteratorT d_out, NumItemsT num_items,
                                  cudaStream_t stream = 0) {
    return emulation::scan_sum<emulation::ScanKind::kInclusive>("cub::DeviceScan::InclusiveSum",
                                                                d_temp_storage, temp_storage_bytes,
                                                                d_in, d_out, num_items, stream);
  }
};

}  // namespace cub
