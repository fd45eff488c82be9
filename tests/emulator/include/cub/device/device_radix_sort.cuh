// cub::DeviceRadixSort for the emulation build: a stable LSD radix sort on
// the host, 8 bits per pass, handed to the emulated runtime so that it runs
// in stream order (or is recorded by a capturing stream).
//
// As with CUB: a call with d_temp_storage == nullptr only sets
// temp_storage_bytes; the DoubleBuffer forms ping-pong between the two
// buffers pass by pass and flip `selector` once per pass (at call time); the
// pointer forms never write the inputs. The temporary storage holds each
// tile's digit offsets (at most 2 bytes per item), plus, for the pointer
// forms, a copy of the keys and values to ping-pong with. Unlike CUB, misuse that the hardware
// would turn into garbage is an error at call time (cudaErrorInvalidValue):
// negative num_items, a bit range outside the key, a selector other than 0 or
// 1, null buffers, and buffers that overlap each other or the temporary
// storage. The whole temporary storage is overwritten with kPoisonByte before
// the sort uses it.
#pragma once

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cub/detail/emulation_support.cuh>
#include <cub/util_type.cuh>
#include <type_traits>

#include "spembed_emulator/runtime.h"

namespace cub {
namespace emulation {

constexpr int kRadixBits = 8;
constexpr size_t kRadixDigits = size_t{1} << kRadixBits;

// The value type of the keys-only sorts.
struct NoValues {};

template <typename KeyT>
struct RadixKey {
  static_assert(std::is_integral_v<KeyT> && !std::is_same_v<KeyT, bool>,
                "the emulated DeviceRadixSort sorts integer keys");
  static constexpr int kBits = static_cast<int>(sizeof(KeyT) * 8);

  // The key's bits, ordered so that unsigned comparison is key comparison:
  // signed keys get their sign bit flipped, as CUB does (a bit range below
  // the sign bit therefore sorts by the raw bits).
  static uint64_t ordered_bits(KeyT key) {
    uint64_t bits = static_cast<std::make_unsigned_t<KeyT>>(key);
    if constexpr (std::is_signed_v<KeyT>) bits ^= uint64_t{1} << (kBits - 1);
    return bits;
  }
};

// Each pass works as a GPU sort does, tile by tile: count each tile's
// digits, scan the counts into each tile's digit offsets, then scatter every
// tile from its own offsets. A tile holds kSortTileBytes of keys and values
// (at least kMinSortTileItems items), so the offsets take at most 2 bytes per
// item, as CUB's look-back array does: callers size workspaces for that.
constexpr size_t kSortTileBytes = 32 * 1024;
constexpr size_t kMinSortTileItems = 1024;

inline size_t sort_tile_items(size_t key_bytes, size_t value_bytes) {
  return std::max(kMinSortTileItems, kSortTileBytes / (key_bytes + value_bytes));
}

// Where the sort's pieces lie in the temporary storage, relative to its
// aligned base: the tiles' digit offsets, then (pointer forms only) an
// alternate buffer for the keys and one for the values, as the real sort
// needs when it may not overwrite its input.
struct SortTempLayout {
  size_t tile_items = 0;
  size_t alternate_keys_offset = 0;
  size_t alternate_values_offset = 0;
  size_t required_bytes = 0;
};

inline bool sort_temp_layout(size_t num_items, size_t key_bytes, size_t value_bytes,
                             bool needs_alternate_buffers, SortTempLayout& layout) {
  layout.tile_items = sort_tile_items(key_bytes, value_bytes);
  const size_t tiles = num_items / layout.tile_items + (num_items % layout.tile_items != 0);
  size_t offsets_bytes = 0;
  size_t keys_bytes = 0;
  size_t values_bytes = 0;
  if (!aligned_array_bytes(tiles, kRadixDigits * sizeof(size_t), offsets_bytes)) return false;
  if (needs_alternate_buffers && (!aligned_array_bytes(num_items, key_bytes, keys_bytes) ||
                                  !aligned_array_bytes(num_items, value_bytes, values_bytes))) {
    return false;
  }
  size_t total = kTempAlignment - 1;  // aligning the base
  if (!add_bytes(total, offsets_bytes)) return false;
  layout.alternate_keys_offset = offsets_bytes;
  if (!add_bytes(total, keys_bytes)) return false;
  layout.alternate_values_offset = offsets_bytes + keys_bytes;
  if (!add_bytes(total, values_bytes)) return false;
  layout.required_bytes = total;
  return true;
}

template <typename KeyT, typename NumItemsT>
cudaError_t check_sort_arguments(NumItemsT num_items, int begin_bit, int end_bit, size_t& count) {
  if (!item_count(num_items, count)) return cudaErrorInvalidValue;
  if (begin_bit < 0 || end_bit > RadixKey<KeyT>::kBits || begin_bit > end_bit) {
    return cudaErrorInvalidValue;
  }
  return cudaSuccess;
}

inline int radix_passes(size_t count, int begin_bit, int end_bit) {
  return count == 0 ? 0 : (end_bit - begin_bit + kRadixBits - 1) / kRadixBits;
}

// One stable counting-sort pass on the digit of `digit_bits` bits at `shift`.
// `tile_digit_offsets` (kRadixDigits entries per tile) lives in the caller's
// temporary storage.
template <typename KeyT, typename ValueT>
void radix_pass(const KeyT* keys_in, KeyT* keys_out, const ValueT* values_in, ValueT* values_out,
                size_t count, size_t tile_items, int shift, int digit_bits,
                size_t* tile_digit_offsets) {
  const uint64_t digit_mask = (uint64_t{1} << digit_bits) - 1;
  const auto digit_of = [shift, digit_mask](KeyT key) {
    return static_cast<size_t>((RadixKey<KeyT>::ordered_bits(key) >> shift) & digit_mask);
  };
  const size_t tiles = count / tile_items + (count % tile_items != 0);
  const auto tile_end = [count, tile_items](size_t tile) {
    return std::min(count, (tile + 1) * tile_items);
  };
  std::fill_n(tile_digit_offsets, tiles * kRadixDigits, size_t{0});
  for (size_t tile = 0; tile < tiles; ++tile) {
    size_t* const tile_counts = tile_digit_offsets + tile * kRadixDigits;
    for (size_t i = tile * tile_items; i < tile_end(tile); ++i) ++tile_counts[digit_of(keys_in[i])];
  }
  // Digit-major: a tile's items of digit d follow every item of a smaller
  // digit and the earlier tiles' items of digit d.
  size_t next_slot = 0;
  for (size_t digit = 0; digit < kRadixDigits; ++digit) {
    for (size_t tile = 0; tile < tiles; ++tile) {
      size_t& entry = tile_digit_offsets[tile * kRadixDigits + digit];
      const size_t tile_count = entry;
      entry = next_slot;
      next_slot += tile_count;
    }
  }
  for (size_t tile = 0; tile < tiles; ++tile) {
    size_t* const tile_offsets = tile_digit_offsets + tile * kRadixDigits;
    for (size_t i = tile * tile_items; i < tile_end(tile); ++i) {
      const size_t slot = tile_offsets[digit_of(keys_in[i])]++;
      keys_out[slot] = keys_in[i];
      if constexpr (!std::is_same_v<ValueT, NoValues>) values_out[slot] = values_in[i];
    }
  }
}

inline size_t* tile_digit_offsets_in(void* d_temp_storage) {
  return reinterpret_cast<size_t*>(aligned_temp_base(d_temp_storage));
}

// The DoubleBuffer forms; `d_values` is null for the keys-only sort.
template <typename KeyT, typename ValueT, typename NumItemsT>
cudaError_t sort_double_buffers(const char* what, void* d_temp_storage, size_t& temp_storage_bytes,
                                DoubleBuffer<KeyT>& d_keys, DoubleBuffer<ValueT>* d_values,
                                NumItemsT num_items, int begin_bit, int end_bit,
                                cudaStream_t stream) {
  constexpr bool kHasValues = !std::is_same_v<ValueT, NoValues>;
  size_t count = 0;
  const cudaError_t bad_arguments =
      check_sort_arguments<KeyT>(num_items, begin_bit, end_bit, count);
  if (bad_arguments != cudaSuccess) return bad_arguments;
  SortTempLayout layout;
  if (!sort_temp_layout(count, sizeof(KeyT), kHasValues ? sizeof(ValueT) : 0, false, layout)) {
    return cudaErrorInvalidValue;
  }
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = layout.required_bytes;
    return cudaSuccess;
  }
  if (temp_storage_bytes < layout.required_bytes) return cudaErrorInvalidValue;

  const int key_selector = d_keys.selector;
  const int value_selector = kHasValues ? d_values->selector : 0;
  if ((key_selector & ~1) != 0 || (value_selector & ~1) != 0) return cudaErrorInvalidValue;
  KeyT* const keys0 = d_keys.d_buffers[0];
  KeyT* const keys1 = d_keys.d_buffers[1];
  ValueT* const values0 = kHasValues ? d_values->d_buffers[0] : nullptr;
  ValueT* const values1 = kHasValues ? d_values->d_buffers[1] : nullptr;
  const size_t key_span = count * sizeof(KeyT);
  const size_t value_span = kHasValues ? count * sizeof(ValueT) : 0;
  if (count > 0) {
    if (keys0 == nullptr || keys1 == nullptr) return cudaErrorInvalidValue;
    if (kHasValues && (values0 == nullptr || values1 == nullptr)) return cudaErrorInvalidValue;
  }
  const size_t claimed_temp_bytes = temp_storage_bytes;
  if (written_spans_alias({{keys0, key_span},
                           {keys1, key_span},
                           {values0, value_span},
                           {values1, value_span},
                           {d_temp_storage, claimed_temp_bytes}},
                          {})) {
    return cudaErrorInvalidValue;
  }

  const int passes = radix_passes(count, begin_bit, end_bit);
  const cudaError_t enqueued = ::spembed::emu::enqueue_host_work(stream, what, [=] {
    poison_temp_storage(d_temp_storage, claimed_temp_bytes);
    size_t* const tile_digit_offsets = tile_digit_offsets_in(d_temp_storage);
    KeyT* const key_buffers[2] = {keys0, keys1};
    ValueT* const value_buffers[2] = {values0, values1};
    int key_current = key_selector;
    int value_current = value_selector;
    for (int pass = 0; pass < passes; ++pass) {
      const int shift = begin_bit + pass * kRadixBits;
      radix_pass(key_buffers[key_current], key_buffers[key_current ^ 1],
                 value_buffers[value_current], value_buffers[value_current ^ 1], count,
                 layout.tile_items, shift, std::min(kRadixBits, end_bit - shift),
                 tile_digit_offsets);
      key_current ^= 1;
      value_current ^= 1;
    }
  });
  if (enqueued != cudaSuccess) return enqueued;
  // Once per pass, as the real sort flips it after each pass it launches.
  for (int pass = 0; pass < passes; ++pass) {
    d_keys.selector ^= 1;
    if constexpr (kHasValues) d_values->selector ^= 1;
  }
  return cudaSuccess;
}

// The pointer forms: the passes alternate between the output and an
// alternate buffer in the temporary storage, arranged so the last pass
// writes the output; the inputs are only read.
template <typename KeyT, typename ValueT, typename NumItemsT>
cudaError_t sort_out_of_place(const char* what, void* d_temp_storage, size_t& temp_storage_bytes,
                              const KeyT* d_keys_in, KeyT* d_keys_out, const ValueT* d_values_in,
                              ValueT* d_values_out, NumItemsT num_items, int begin_bit, int end_bit,
                              cudaStream_t stream) {
  constexpr bool kHasValues = !std::is_same_v<ValueT, NoValues>;
  size_t count = 0;
  const cudaError_t bad_arguments =
      check_sort_arguments<KeyT>(num_items, begin_bit, end_bit, count);
  if (bad_arguments != cudaSuccess) return bad_arguments;
  SortTempLayout layout;
  if (!sort_temp_layout(count, sizeof(KeyT), kHasValues ? sizeof(ValueT) : 0, true, layout)) {
    return cudaErrorInvalidValue;
  }
  if (d_temp_storage == nullptr) {
    temp_storage_bytes = layout.required_bytes;
    return cudaSuccess;
  }
  if (temp_storage_bytes < layout.required_bytes) return cudaErrorInvalidValue;

  const size_t key_span = count * sizeof(KeyT);
  const size_t value_span = kHasValues ? count * sizeof(ValueT) : 0;
  if (count > 0) {
    if (d_keys_in == nullptr || d_keys_out == nullptr) return cudaErrorInvalidValue;
    if (kHasValues && (d_values_in == nullptr || d_values_out == nullptr)) {
      return cudaErrorInvalidValue;
    }
  }
  const size_t claimed_temp_bytes = temp_storage_bytes;
  if (written_spans_alias({{d_keys_out, key_span},
                           {d_values_out, value_span},
                           {d_temp_storage, claimed_temp_bytes}},
                          {{d_keys_in, key_span}, {d_values_in, value_span}})) {
    return cudaErrorInvalidValue;
  }

  const int passes = radix_passes(count, begin_bit, end_bit);
  return ::spembed::emu::enqueue_host_work(stream, what, [=] {
    poison_temp_storage(d_temp_storage, claimed_temp_bytes);
    if (count == 0) return;
    if (passes == 0) {  // an empty bit range: every key ties, the order stays
      std::copy_n(d_keys_in, count, d_keys_out);
      if constexpr (kHasValues) std::copy_n(d_values_in, count, d_values_out);
      return;
    }
    unsigned char* const base = aligned_temp_base(d_temp_storage);
    KeyT* const alternate_keys = reinterpret_cast<KeyT*>(base + layout.alternate_keys_offset);
    ValueT* const alternate_values =
        kHasValues ? reinterpret_cast<ValueT*>(base + layout.alternate_values_offset) : nullptr;
    size_t* const tile_digit_offsets = tile_digit_offsets_in(d_temp_storage);
    const KeyT* keys_from = d_keys_in;
    const ValueT* values_from = d_values_in;
    for (int pass = 0; pass < passes; ++pass) {
      const bool to_output = (passes - 1 - pass) % 2 == 0;
      KeyT* const keys_to = to_output ? d_keys_out : alternate_keys;
      ValueT* const values_to = to_output ? d_values_out : alternate_values;
      const int shift = begin_bit + pass * kRadixBits;
      radix_pass(keys_from, keys_to, values_from, values_to, count, layout.tile_items, shift,
                 std::min(kRadixBits, end_bit - shift), tile_digit_offsets);
      keys_from = keys_to;
      values_from = values_to;
    }
  });
}

}  // namespace emulation

struct DeviceRadixSort {
  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes,
                               DoubleBuffer<KeyT>& d_keys, DoubleBuffer<ValueT>& d_values,
                               NumItemsT num_items, int begin_bit = 0,
                               int end_bit = static_cast<int>(sizeof(KeyT) * 8),
                               cudaStream_t stream = 0) {
    return emulation::sort_double_buffers("cub::DeviceRadixSort::SortPairs", d_temp_storage,
                                          temp_storage_bytes, d_keys, &d_values, num_items,
                                          begin_bit, end_bit, stream);
  }

  template <typename KeyT, typename ValueT, typename NumItemsT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes,
                               const KeyT* d_keys_in, KeyT* d_keys_out, const ValueT* d_values_in,
                               ValueT* d_values_out, NumItemsT num_items, int begin_bit = 0,
                               int end_bit = static_cast<int>(sizeof(KeyT) * 8),
                               cudaStream_t stream = 0) {
    return emulation::sort_out_of_place("cub::DeviceRadixSort::SortPairs", d_temp_storage,
                                        temp_storage_bytes, d_keys_in, d_keys_out, d_values_in,
                                        d_values_out, num_items, begin_bit, end_bit, stream);
  }

  template <typename KeyT, typename NumItemsT>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes,
                              DoubleBuffer<KeyT>& d_keys, NumItemsT num_items, int begin_bit = 0,
                              int end_bit = static_cast<int>(sizeof(KeyT) * 8),
                              cudaStream_t stream = 0) {
    return emulation::sort_double_buffers<KeyT, emulation::NoValues>(
        "cub::DeviceRadixSort::SortKeys", d_temp_storage, temp_storage_bytes, d_keys, nullptr,
        num_items, begin_bit, end_bit, stream);
  }

  template <typename KeyT, typename NumItemsT>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes,
                              const KeyT* d_keys_in, KeyT* d_keys_out, NumItemsT num_items,
                              int begin_bit = 0, int end_bit = static_cast<int>(sizeof(KeyT) * 8),
                              cudaStream_t stream = 0) {
    return emulation::sort_out_of_place<KeyT, emulation::NoValues>(
        "cub::DeviceRadixSort::SortKeys", d_temp_storage, temp_storage_bytes, d_keys_in, d_keys_out,
        nullptr, nullptr, num_items, begin_bit, end_bit, stream);
  }
};

}  // namespace cub
