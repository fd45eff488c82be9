// Tests of the emulated CUB's device-wide algorithms against the standard
// library (std::stable_sort, running sums) on fresh random data. They call
// CUB on the default stream outside any capture, so the runtime runs the work
// before the call returns. BlockScan needs the emulator's block scheduler to
// run; the kernels' tests cover it, and here it only has to compile.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cub/cub.cuh>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

using Bytes = std::vector<unsigned char>;

// A byte no algorithm writes on its own (the poison byte is 0xFF), to see
// whether temporary storage was touched.
constexpr unsigned char kUntouchedByte = 0x5A;

// Every test draws a new seed (SPEMBED_TEST_SEED replays one); failures
// report it.
uint64_t fresh_seed() {
  if (const char* replay = std::getenv("SPEMBED_TEST_SEED")) {
    return std::strtoull(replay, nullptr, 10);
  }
  std::random_device device;
  return (uint64_t{device()} << 32) | device();
}

class EmulatedCubTest : public ::testing::Test {
 protected:
  EmulatedCubTest()
      : seed_(fresh_seed()),
        seed_trace_(__FILE__, __LINE__, "SPEMBED_TEST_SEED=" + std::to_string(seed_)),
        rng_(seed_) {}

  template <typename T>
  std::vector<T> random_vector(size_t count, T low = std::numeric_limits<T>::min(),
                               T high = std::numeric_limits<T>::max()) {
    // The distribution takes no 8-bit types: draw 16-bit ones in range.
    using Drawn =
        std::conditional_t<(sizeof(T) < sizeof(short)),
                           std::conditional_t<std::is_signed_v<T>, short, unsigned short>, T>;
    std::uniform_int_distribution<Drawn> draw(low, high);
    std::vector<T> values(count);
    for (T& value : values) value = static_cast<T>(draw(rng_));
    return values;
  }

  // Fresh random keys and values, and different random contents for the
  // alternate buffers (so that a write to them shows), n of each.
  std::array<std::vector<uint32_t>, 4> random_pair_buffers(size_t n) {
    return {random_vector<uint32_t>(n), random_vector<uint32_t>(n), random_vector<uint32_t>(n),
            random_vector<uint32_t>(n)};
  }

  const uint64_t seed_;
  const ::testing::ScopedTrace seed_trace_;
  std::mt19937_64 rng_;
};

// ---- Reference sort -----------------------------------------------------------

// Bits [begin_bit, end_bit) of the key's two's-complement pattern.
template <typename KeyT>
uint64_t key_bits_in(KeyT key, int begin_bit, int end_bit) {
  const uint64_t bits = static_cast<std::make_unsigned_t<KeyT>>(key);
  const int width = end_bit - begin_bit;
  const uint64_t mask = width >= 64 ? ~uint64_t{0} : (uint64_t{1} << width) - 1;
  return (bits >> begin_bit) & mask;
}

// The radix sort's order: numeric over the whole key (signed keys sort
// negative first), else the unsigned value of the bit range (for signed keys
// only ranges below the sign bit are used here).
template <typename KeyT>
bool sorts_before(KeyT a, KeyT b, int begin_bit, int end_bit) {
  if (begin_bit == 0 && end_bit == static_cast<int>(sizeof(KeyT) * 8)) return a < b;
  return key_bits_in(a, begin_bit, end_bit) < key_bits_in(b, begin_bit, end_bit);
}

template <typename KeyT, typename ValueT>
void reference_sort_pairs(std::vector<KeyT>& keys, std::vector<ValueT>& values, int begin_bit,
                          int end_bit) {
  std::vector<size_t> order(keys.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return sorts_before(keys[a], keys[b], begin_bit, end_bit);
  });
  std::vector<KeyT> sorted_keys;
  std::vector<ValueT> sorted_values;
  for (const size_t from : order) {
    sorted_keys.push_back(keys[from]);
    sorted_values.push_back(values[from]);
  }
  keys = std::move(sorted_keys);
  values = std::move(sorted_values);
}

// The two buffers of keys and of values of a DoubleBuffer sort: the current
// ones hold the input, the alternate ones what a previous use left.
template <typename KeyT, typename ValueT>
struct SortBuffers {
  std::vector<KeyT> keys[2];
  std::vector<ValueT> values[2];
  cub::DoubleBuffer<KeyT> d_keys;
  cub::DoubleBuffer<ValueT> d_values;

  SortBuffers(std::vector<KeyT> input_keys, std::vector<ValueT> input_values,
              std::vector<KeyT> leftover_keys, std::vector<ValueT> leftover_values,
              int selector = 0) {
    keys[selector] = std::move(input_keys);
    keys[selector ^ 1] = std::move(leftover_keys);
    values[selector] = std::move(input_values);
    values[selector ^ 1] = std::move(leftover_values);
    d_keys = cub::DoubleBuffer<KeyT>(keys[0].data(), keys[1].data());
    d_values = cub::DoubleBuffer<ValueT>(values[0].data(), values[1].data());
    d_keys.selector = selector;
    d_values.selector = selector;
  }
  const std::vector<KeyT>& current_keys() const { return keys[d_keys.selector]; }
  const std::vector<ValueT>& current_values() const { return values[d_values.selector]; }
  const std::vector<KeyT>& alternate_keys() const { return keys[d_keys.selector ^ 1]; }
  const std::vector<ValueT>& alternate_values() const { return values[d_values.selector ^ 1]; }
};

// Both phases of a DoubleBuffer SortPairs with exactly the storage asked for.
template <typename KeyT, typename ValueT, typename NumItemsT>
cudaError_t sort_pairs(SortBuffers<KeyT, ValueT>& buffers, NumItemsT num_items, int begin_bit,
                       int end_bit) {
  size_t temp_bytes = 0;
  const cudaError_t error = cub::DeviceRadixSort::SortPairs(
      nullptr, temp_bytes, buffers.d_keys, buffers.d_values, num_items, begin_bit, end_bit);
  if (error != cudaSuccess) return error;
  Bytes temp(temp_bytes, kUntouchedByte);
  return cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, buffers.d_keys, buffers.d_values,
                                         num_items, begin_bit, end_bit);
}

int passes_for(int begin_bit, int end_bit) { return (end_bit - begin_bit + 7) / 8; }

// Sorts the keys with their positions as values (so that the reference
// comparison also checks stability) and checks the result.
template <typename KeyT>
void expect_sort_pairs_matches_reference(const std::vector<KeyT>& input_keys, int begin_bit,
                                         int end_bit, std::mt19937_64& rng) {
  const size_t count = input_keys.size();
  std::vector<uint32_t> positions(count);
  std::iota(positions.begin(), positions.end(), 0u);
  std::vector<KeyT> leftover_keys(count);
  std::vector<uint32_t> leftover_values(count);
  for (KeyT& key : leftover_keys) key = static_cast<KeyT>(rng());
  for (uint32_t& value : leftover_values) value = static_cast<uint32_t>(rng());
  SortBuffers<KeyT, uint32_t> buffers(input_keys, positions, leftover_keys, leftover_values);

  ASSERT_EQ(sort_pairs(buffers, count, begin_bit, end_bit), cudaSuccess);

  std::vector<KeyT> expected_keys = input_keys;
  std::vector<uint32_t> expected_values = positions;
  reference_sort_pairs(expected_keys, expected_values, begin_bit, end_bit);
  EXPECT_EQ(buffers.d_keys.selector, passes_for(begin_bit, end_bit) % 2);
  EXPECT_EQ(buffers.current_keys(), expected_keys);
  EXPECT_EQ(buffers.current_values(), expected_values);
}

// ---- DoubleBuffer -------------------------------------------------------------

TEST(EmulatedCubDoubleBuffer, DefaultsToNullBuffersAndSelectorZero) {
  cub::DoubleBuffer<uint32_t> buffer;
  EXPECT_EQ(buffer.d_buffers[0], nullptr);
  EXPECT_EQ(buffer.d_buffers[1], nullptr);
  EXPECT_EQ(buffer.selector, 0);
}

TEST(EmulatedCubDoubleBuffer, CurrentAndAlternateFollowTheSelector) {
  uint64_t first = 1, second = 2;
  cub::DoubleBuffer<uint64_t> buffer(&first, &second);
  EXPECT_EQ(buffer.selector, 0);
  EXPECT_EQ(buffer.Current(), &first);
  EXPECT_EQ(buffer.Alternate(), &second);
  buffer.selector = 1;
  EXPECT_EQ(buffer.Current(), &second);
  EXPECT_EQ(buffer.Alternate(), &first);
}

// ---- DeviceRadixSort: results -------------------------------------------------

TEST_F(EmulatedCubTest, SortPairsUint32KeysMatchStableSort) {
  expect_sort_pairs_matches_reference(random_vector<uint32_t>(100000), 0, 32, rng_);
}

TEST_F(EmulatedCubTest, SortPairsUint64KeysMatchStableSort) {
  expect_sort_pairs_matches_reference(random_vector<uint64_t>(100000), 0, 64, rng_);
}

TEST_F(EmulatedCubTest, SortPairsSignedKeysSortNumerically) {
  expect_sort_pairs_matches_reference(random_vector<int32_t>(20000), 0, 32, rng_);
  expect_sort_pairs_matches_reference(random_vector<int64_t>(20000), 0, 64, rng_);
  // Small magnitudes of both signs, where a missing sign-bit flip shows.
  expect_sort_pairs_matches_reference(random_vector<int32_t>(5000, -300, 300), 0, 32, rng_);
}

TEST_F(EmulatedCubTest, SortPairsComparesOnlyTheBitRange) {
  expect_sort_pairs_matches_reference(random_vector<uint32_t>(30000), 0, 13, rng_);
  expect_sort_pairs_matches_reference(random_vector<uint32_t>(30000), 5, 21, rng_);
  expect_sort_pairs_matches_reference(random_vector<uint32_t>(30000), 31, 32, rng_);
  expect_sort_pairs_matches_reference(random_vector<uint64_t>(30000), 17, 50, rng_);
  expect_sort_pairs_matches_reference(random_vector<int32_t>(30000), 0, 13, rng_);
  expect_sort_pairs_matches_reference(random_vector<int64_t>(30000), 3, 40, rng_);
}

TEST_F(EmulatedCubTest, SortPairsKeepsTheOrderOfEqualKeys) {
  const std::vector<uint32_t> keys = random_vector<uint32_t>(20000, 0, 15);
  expect_sort_pairs_matches_reference(keys, 0, 32, rng_);

  // And directly: within a key, positions ascend.
  std::vector<uint32_t> positions(keys.size());
  std::iota(positions.begin(), positions.end(), 0u);
  SortBuffers<uint32_t, uint32_t> buffers(keys, positions, std::vector<uint32_t>(keys.size()),
                                          std::vector<uint32_t>(keys.size()));
  ASSERT_EQ(sort_pairs(buffers, static_cast<int>(keys.size()), 0, 4), cudaSuccess);
  const auto& sorted_keys = buffers.current_keys();
  const auto& sorted_positions = buffers.current_values();
  for (size_t i = 1; i < keys.size(); ++i) {
    ASSERT_LE(sorted_keys[i - 1], sorted_keys[i]) << "at " << i;
    if (sorted_keys[i - 1] == sorted_keys[i]) {
      ASSERT_LT(sorted_positions[i - 1], sorted_positions[i]) << "at " << i;
    }
  }
}

TEST_F(EmulatedCubTest, SortPairsOfOneItemMovesItThroughEveryPass) {
  const std::vector<uint64_t> key = random_vector<uint64_t>(1, 1);
  const std::vector<uint32_t> value = random_vector<uint32_t>(1, 1);
  for (const int end_bit : {8, 16, 64}) {
    SortBuffers<uint64_t, uint32_t> buffers(key, value, {0}, {0});
    ASSERT_EQ(sort_pairs(buffers, 1, 0, end_bit), cudaSuccess);
    EXPECT_EQ(buffers.d_keys.selector, passes_for(0, end_bit) % 2) << "end_bit " << end_bit;
    EXPECT_EQ(buffers.current_keys(), key);
    EXPECT_EQ(buffers.current_values(), value);
  }
}

TEST_F(EmulatedCubTest, SortPairsOfNoItemsChangesNothing) {
  const auto keys = random_vector<uint32_t>(64, 1);
  const auto values = random_vector<uint32_t>(64, 1);
  const auto leftover_keys = random_vector<uint32_t>(64, 1);
  const auto leftover_values = random_vector<uint32_t>(64, 1);
  SortBuffers<uint32_t, uint32_t> buffers(keys, values, leftover_keys, leftover_values);
  ASSERT_EQ(sort_pairs(buffers, 0, 0, 32), cudaSuccess);
  EXPECT_EQ(buffers.d_keys.selector, 0);
  EXPECT_EQ(buffers.d_values.selector, 0);
  EXPECT_EQ(buffers.keys[0], keys);
  EXPECT_EQ(buffers.keys[1], leftover_keys);
  EXPECT_EQ(buffers.values[0], values);
  EXPECT_EQ(buffers.values[1], leftover_values);
}

TEST_F(EmulatedCubTest, SortPairsOverAnEmptyBitRangeChangesNothing) {
  const auto [keys, values, leftover_keys, leftover_values] = random_pair_buffers(1000);
  SortBuffers<uint32_t, uint32_t> buffers(keys, values, leftover_keys, leftover_values);
  ASSERT_EQ(sort_pairs(buffers, 1000, 7, 7), cudaSuccess);
  EXPECT_EQ(buffers.d_keys.selector, 0);
  EXPECT_EQ(buffers.keys[0], keys);
  EXPECT_EQ(buffers.keys[1], leftover_keys);
  EXPECT_EQ(buffers.values[0], values);
  EXPECT_EQ(buffers.values[1], leftover_values);
}

// The selector flips once per pass from where it started, and the other
// buffer holds the previous pass: the stable sort by all but the last digit.
TEST_F(EmulatedCubTest, SortPairsPingPongsBetweenTheBuffersPassByPass) {
  constexpr size_t kCount = 5000;
  for (const int start_selector : {0, 1}) {
    for (const auto& [begin_bit, end_bit] :
         std::vector<std::pair<int, int>>{{0, 8}, {0, 13}, {4, 28}, {0, 32}, {3, 11}}) {
      SCOPED_TRACE("selector " + std::to_string(start_selector) + ", bits [" +
                   std::to_string(begin_bit) + ", " + std::to_string(end_bit) + ")");
      const auto keys = random_vector<uint32_t>(kCount);
      std::vector<uint32_t> positions(kCount);
      std::iota(positions.begin(), positions.end(), 0u);
      SortBuffers<uint32_t, uint32_t> buffers(keys, positions, random_vector<uint32_t>(kCount),
                                              random_vector<uint32_t>(kCount), start_selector);
      ASSERT_EQ(sort_pairs(buffers, kCount, begin_bit, end_bit), cudaSuccess);

      const int passes = passes_for(begin_bit, end_bit);
      EXPECT_EQ(buffers.d_keys.selector, start_selector ^ (passes % 2));
      EXPECT_EQ(buffers.d_values.selector, start_selector ^ (passes % 2));
      auto expected_keys = keys;
      auto expected_positions = positions;
      reference_sort_pairs(expected_keys, expected_positions, begin_bit, end_bit);
      EXPECT_EQ(buffers.current_keys(), expected_keys);
      EXPECT_EQ(buffers.current_values(), expected_positions);

      auto previous_keys = keys;
      auto previous_positions = positions;
      const int previous_end_bit = begin_bit + 8 * (passes - 1);
      if (previous_end_bit > begin_bit) {
        reference_sort_pairs(previous_keys, previous_positions, begin_bit, previous_end_bit);
      }
      EXPECT_EQ(buffers.alternate_keys(), previous_keys);
      EXPECT_EQ(buffers.alternate_values(), previous_positions);
    }
  }
}

TEST_F(EmulatedCubTest, SortPairsAcceptsAnyIntegerItemCount) {
  const auto keys = random_vector<uint32_t>(3000);
  const auto values = random_vector<uint64_t>(3000);
  auto expected_keys = keys;
  auto expected_values = values;
  reference_sort_pairs(expected_keys, expected_values, 0, 32);
  const auto sort_with_count = [&](auto num_items) {
    SCOPED_TRACE(std::string("count of ") + std::to_string(sizeof(num_items)) + " bytes, " +
                 (std::is_signed_v<decltype(num_items)> ? "signed" : "unsigned"));
    SortBuffers<uint32_t, uint64_t> buffers(keys, values, std::vector<uint32_t>(3000),
                                            std::vector<uint64_t>(3000));
    ASSERT_EQ(sort_pairs(buffers, num_items, 0, 32), cudaSuccess);
    EXPECT_EQ(buffers.current_keys(), expected_keys);
    EXPECT_EQ(buffers.current_values(), expected_values);
  };
  sort_with_count(int{3000});
  sort_with_count(int64_t{3000});
  sort_with_count(uint32_t{3000});
  sort_with_count(size_t{3000});
  sort_with_count(int16_t{3000});
}

TEST_F(EmulatedCubTest, SortPairsPointerFormWritesTheOutputsOnly) {
  for (const auto& [begin_bit, end_bit] :
       std::vector<std::pair<int, int>>{{0, 8}, {0, 16}, {0, 13}, {2, 26}, {0, 32}}) {
    SCOPED_TRACE("bits [" + std::to_string(begin_bit) + ", " + std::to_string(end_bit) + ")");
    const auto keys = random_vector<uint32_t>(20000);
    const auto values = random_vector<int64_t>(20000);
    auto keys_out = random_vector<uint32_t>(20000);
    auto values_out = random_vector<int64_t>(20000);
    size_t temp_bytes = 0;
    ASSERT_EQ(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data(), keys_out.data(),
                                              values.data(), values_out.data(), 20000, begin_bit,
                                              end_bit),
              cudaSuccess);
    Bytes temp(temp_bytes);
    const auto keys_in = keys;
    const auto values_in = values;
    ASSERT_EQ(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys_in.data(),
                                              keys_out.data(), values_in.data(), values_out.data(),
                                              20000, begin_bit, end_bit),
              cudaSuccess);
    EXPECT_EQ(keys_in, keys);
    EXPECT_EQ(values_in, values);
    auto expected_keys = keys;
    auto expected_values = values;
    reference_sort_pairs(expected_keys, expected_values, begin_bit, end_bit);
    EXPECT_EQ(keys_out, expected_keys);
    EXPECT_EQ(values_out, expected_values);
  }
}

TEST_F(EmulatedCubTest, SortPairsPointerFormOverAnEmptyBitRangeCopiesTheInputs) {
  const auto keys = random_vector<uint64_t>(777);
  const auto values = random_vector<uint16_t>(777);
  std::vector<uint64_t> keys_out(777);
  std::vector<uint16_t> values_out(777);
  size_t temp_bytes = 0;
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data(), keys_out.data(),
                                            values.data(), values_out.data(), 777, 9, 9),
            cudaSuccess);
  Bytes temp(temp_bytes);
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, keys.data(), keys_out.data(),
                                            values.data(), values_out.data(), 777, 9, 9),
            cudaSuccess);
  EXPECT_EQ(keys_out, keys);
  EXPECT_EQ(values_out, values);
}

TEST_F(EmulatedCubTest, SortKeysMatchesStdSort) {
  const auto keys = random_vector<int64_t>(50000);
  auto expected = keys;
  std::sort(expected.begin(), expected.end());

  auto current = keys;
  auto alternate = random_vector<int64_t>(50000);
  cub::DoubleBuffer<int64_t> d_keys(current.data(), alternate.data());
  size_t temp_bytes = 0;
  ASSERT_EQ(cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, d_keys, 50000), cudaSuccess);
  Bytes temp(temp_bytes);
  ASSERT_EQ(cub::DeviceRadixSort::SortKeys(temp.data(), temp_bytes, d_keys, 50000), cudaSuccess);
  EXPECT_EQ(d_keys.selector, 0);  // 8 passes
  EXPECT_EQ(current, expected);

  std::vector<int64_t> keys_out(50000);
  temp_bytes = 0;
  ASSERT_EQ(
      cub::DeviceRadixSort::SortKeys(nullptr, temp_bytes, keys.data(), keys_out.data(), 50000),
      cudaSuccess);
  temp.assign(temp_bytes, 0);
  ASSERT_EQ(
      cub::DeviceRadixSort::SortKeys(temp.data(), temp_bytes, keys.data(), keys_out.data(), 50000),
      cudaSuccess);
  EXPECT_EQ(keys_out, expected);
}

// ---- DeviceRadixSort: the temporary-storage protocol -----------------------

TEST_F(EmulatedCubTest, SortSizeQueryTouchesNothing) {
  const auto [keys, values, leftover_keys, leftover_values] = random_pair_buffers(4096);
  SortBuffers<uint32_t, uint32_t> buffers(keys, values, leftover_keys, leftover_values);
  size_t temp_bytes = 0;
  ASSERT_EQ(
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, buffers.d_keys, buffers.d_values, 4096),
      cudaSuccess);
  EXPECT_GT(temp_bytes, 0u);
  EXPECT_EQ(buffers.d_keys.selector, 0);
  EXPECT_EQ(buffers.d_values.selector, 0);
  EXPECT_EQ(buffers.keys[0], keys);
  EXPECT_EQ(buffers.keys[1], leftover_keys);
  EXPECT_EQ(buffers.values[0], values);
  EXPECT_EQ(buffers.values[1], leftover_values);

  // The size depends on the count and on the key and value sizes.
  size_t no_items_bytes = 0, more_items_bytes = 0, wider_keys_bytes = 0;
  ASSERT_EQ(
      cub::DeviceRadixSort::SortPairs(nullptr, no_items_bytes, buffers.d_keys, buffers.d_values, 0),
      cudaSuccess);
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(nullptr, more_items_bytes, buffers.d_keys,
                                            buffers.d_values, 100000),
            cudaSuccess);
  cub::DoubleBuffer<uint64_t> wide_keys;
  ASSERT_EQ(
      cub::DeviceRadixSort::SortPairs(nullptr, wider_keys_bytes, wide_keys, buffers.d_values, 4096),
      cudaSuccess);
  EXPECT_GT(no_items_bytes, 0u);
  EXPECT_LT(no_items_bytes, temp_bytes);
  EXPECT_LT(temp_bytes, more_items_bytes);
  EXPECT_LT(temp_bytes, wider_keys_bytes);

  // The pointer form: nothing written either.
  std::vector<uint32_t> keys_out = leftover_keys;
  std::vector<uint32_t> values_out = leftover_values;
  temp_bytes = 0;
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data(), keys_out.data(),
                                            values.data(), values_out.data(), 4096),
            cudaSuccess);
  EXPECT_GT(temp_bytes, 0u);
  EXPECT_EQ(keys_out, leftover_keys);
  EXPECT_EQ(values_out, leftover_values);
}

// Callers size their workspace for real CUB, whose DoubleBuffer form needs
// no copy of the data: a few bytes per tile of items.
TEST_F(EmulatedCubTest, SortDoubleBufferFormNeedsNoCopyOfTheData) {
  constexpr size_t kCount = size_t{1} << 20;
  cub::DoubleBuffer<uint64_t> keys;
  cub::DoubleBuffer<uint64_t> values;
  size_t double_buffer_bytes = 0;
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(nullptr, double_buffer_bytes, keys, values, kCount),
            cudaSuccess);
  size_t pointer_form_bytes = 0;
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(
                nullptr, pointer_form_bytes, static_cast<const uint64_t*>(nullptr),
                static_cast<uint64_t*>(nullptr), static_cast<const uint64_t*>(nullptr),
                static_cast<uint64_t*>(nullptr), kCount),
            cudaSuccess);
  EXPECT_LE(double_buffer_bytes, 2 * kCount);
  EXPECT_GE(pointer_form_bytes, 2 * sizeof(uint64_t) * kCount);
}

TEST_F(EmulatedCubTest, SortWithTooLittleStorageFailsAndWritesNothing) {
  const auto [keys, values, leftover_keys, leftover_values] = random_pair_buffers(4096);
  SortBuffers<uint32_t, uint32_t> buffers(keys, values, leftover_keys, leftover_values);
  size_t temp_bytes = 0;
  ASSERT_EQ(
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, buffers.d_keys, buffers.d_values, 4096),
      cudaSuccess);
  const size_t required_bytes = temp_bytes;
  Bytes temp(required_bytes, kUntouchedByte);
  size_t short_bytes = required_bytes - 1;
  EXPECT_EQ(cub::DeviceRadixSort::SortPairs(temp.data(), short_bytes, buffers.d_keys,
                                            buffers.d_values, 4096),
            cudaErrorInvalidValue);
  EXPECT_EQ(short_bytes, required_bytes - 1);
  EXPECT_EQ(buffers.d_keys.selector, 0);
  EXPECT_EQ(buffers.d_values.selector, 0);
  EXPECT_EQ(buffers.keys[0], keys);
  EXPECT_EQ(buffers.keys[1], leftover_keys);
  EXPECT_EQ(buffers.values[0], values);
  EXPECT_EQ(buffers.values[1], leftover_values);
  EXPECT_EQ(temp, Bytes(required_bytes, kUntouchedByte));

  std::vector<uint32_t> keys_out = leftover_keys;
  std::vector<uint32_t> values_out = leftover_values;
  temp_bytes = 0;
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, keys.data(), keys_out.data(),
                                            values.data(), values_out.data(), 4096),
            cudaSuccess);
  temp.assign(temp_bytes, kUntouchedByte);
  short_bytes = temp_bytes - 1;
  EXPECT_EQ(cub::DeviceRadixSort::SortPairs(temp.data(), short_bytes, keys.data(), keys_out.data(),
                                            values.data(), values_out.data(), 4096),
            cudaErrorInvalidValue);
  EXPECT_EQ(keys_out, leftover_keys);
  EXPECT_EQ(values_out, leftover_values);
  EXPECT_EQ(temp, Bytes(temp_bytes, kUntouchedByte));
}

// The whole storage handed in is overwritten, beyond what the sort needs
// too: a workspace shared with live data shows.
TEST_F(EmulatedCubTest, SortOverwritesAllOfTheTemporaryStorage) {
  constexpr size_t kExtraBytes = 100;
  SortBuffers<uint32_t, uint32_t> buffers(
      random_vector<uint32_t>(1000), random_vector<uint32_t>(1000), random_vector<uint32_t>(1000),
      random_vector<uint32_t>(1000));
  size_t temp_bytes = 0;
  ASSERT_EQ(
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, buffers.d_keys, buffers.d_values, 1000),
      cudaSuccess);
  temp_bytes += kExtraBytes;
  Bytes temp(temp_bytes, kUntouchedByte);
  ASSERT_EQ(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, buffers.d_keys,
                                            buffers.d_values, 1000),
            cudaSuccess);
  EXPECT_EQ(Bytes(temp.end() - kExtraBytes, temp.end()), Bytes(kExtraBytes, 0xFF));
}

TEST_F(EmulatedCubTest, SortRejectsBadArgumentsAndWritesNothing) {
  const auto [keys, values, leftover_keys, leftover_values] = random_pair_buffers(512);
  SortBuffers<uint32_t, uint32_t> buffers(keys, values, leftover_keys, leftover_values);
  Bytes temp(1 << 16, kUntouchedByte);
  const auto expect_rejected = [&](const char* what, int num_items, int begin_bit, int end_bit) {
    SCOPED_TRACE(what);
    size_t temp_bytes = temp.size();
    EXPECT_EQ(cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, buffers.d_keys,
                                              buffers.d_values, num_items, begin_bit, end_bit),
              cudaErrorInvalidValue);
    EXPECT_EQ(buffers.keys[0], keys);
    EXPECT_EQ(buffers.keys[1], leftover_keys);
    EXPECT_EQ(buffers.values[0], values);
    EXPECT_EQ(buffers.values[1], leftover_values);
    EXPECT_EQ(temp, Bytes(temp.size(), kUntouchedByte));
  };
  expect_rejected("negative begin_bit", 512, -1, 32);
  expect_rejected("end_bit past the key", 512, 0, 33);
  expect_rejected("begin_bit after end_bit", 512, 9, 8);
  expect_rejected("negative num_items", -1, 0, 32);

  buffers.d_keys.selector = 2;
  expect_rejected("selector 2", 512, 0, 32);
  buffers.d_keys.selector = 0;

  uint32_t* const saved_alternate = buffers.d_keys.d_buffers[1];
  buffers.d_keys.d_buffers[1] = buffers.d_keys.d_buffers[0] + 100;
  expect_rejected("key buffers overlap", 512, 0, 32);
  buffers.d_keys.d_buffers[1] = saved_alternate;

  size_t temp_bytes = 0;
  ASSERT_EQ(
      cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, buffers.d_keys, buffers.d_values, 2),
      cudaSuccess);
  // The keys lie inside the temporary storage.
  auto* const keys_in_temp = reinterpret_cast<uint32_t*>(temp.data() + 1024);
  cub::DoubleBuffer<uint32_t> aliasing_keys(keys_in_temp, buffers.d_keys.d_buffers[1]);
  EXPECT_EQ(
      cub::DeviceRadixSort::SortPairs(temp.data(), temp_bytes, aliasing_keys, buffers.d_values, 2),
      cudaErrorInvalidValue);
  EXPECT_EQ(temp, Bytes(temp.size(), kUntouchedByte));
}

// ---- DeviceScan ---------------------------------------------------------------

template <typename T>
std::vector<T> reference_inclusive_sum(const std::vector<T>& input) {
  std::vector<T> sums(input.size());
  T running{};
  for (size_t i = 0; i < input.size(); ++i) sums[i] = running = static_cast<T>(running + input[i]);
  return sums;
}

template <typename T>
std::vector<T> reference_exclusive_sum(const std::vector<T>& input) {
  std::vector<T> sums(input.size());
  T running{};
  for (size_t i = 0; i < input.size(); ++i) {
    sums[i] = running;
    running = static_cast<T>(running + input[i]);
  }
  return sums;
}

enum class Sum { kExclusive, kInclusive };

// Both phases of a scan with exactly the storage asked for.
template <typename InputIteratorT, typename OutputIteratorT, typename NumItemsT>
cudaError_t scan(Sum sum, InputIteratorT d_in, OutputIteratorT d_out, NumItemsT num_items) {
  const auto call = [&](void* d_temp, size_t& temp_bytes) {
    return sum == Sum::kExclusive
               ? cub::DeviceScan::ExclusiveSum(d_temp, temp_bytes, d_in, d_out, num_items)
               : cub::DeviceScan::InclusiveSum(d_temp, temp_bytes, d_in, d_out, num_items);
  };
  size_t temp_bytes = 0;
  const cudaError_t error = call(nullptr, temp_bytes);
  if (error != cudaSuccess) return error;
  Bytes temp(temp_bytes, kUntouchedByte);
  return call(temp.data(), temp_bytes);
}

TEST_F(EmulatedCubTest, ExclusiveSumMatchesRunningSums) {
  // Full-range 32-bit values: the sum wraps around, as on the GPU.
  const auto wrapping = random_vector<uint32_t>(100000);
  std::vector<uint32_t> wrapping_out(wrapping.size());
  ASSERT_EQ(scan(Sum::kExclusive, wrapping.data(), wrapping_out.data(), 100000), cudaSuccess);
  EXPECT_EQ(wrapping_out, reference_exclusive_sum(wrapping));

  const auto signed_values = random_vector<int64_t>(100000, -1000000, 1000000);
  std::vector<int64_t> signed_out(signed_values.size());
  ASSERT_EQ(scan(Sum::kExclusive, signed_values.data(), signed_out.data(), int64_t{100000}),
            cudaSuccess);
  EXPECT_EQ(signed_out, reference_exclusive_sum(signed_values));
}

TEST_F(EmulatedCubTest, InclusiveSumMatchesRunningSums) {
  const auto values = random_vector<uint64_t>(100000);
  std::vector<uint64_t> out(values.size());
  ASSERT_EQ(scan(Sum::kInclusive, values.data(), out.data(), 100000u), cudaSuccess);
  EXPECT_EQ(out, reference_inclusive_sum(values));
}

TEST_F(EmulatedCubTest, ScansWorkInPlace) {
  const auto values = random_vector<uint32_t>(50000, 0, 7);
  auto data = values;
  ASSERT_EQ(scan(Sum::kExclusive, data.data(), data.data(), 50000), cudaSuccess);
  EXPECT_EQ(data, reference_exclusive_sum(values));

  data = values;
  ASSERT_EQ(scan(Sum::kInclusive, data.data(), data.data(), 50000), cudaSuccess);
  EXPECT_EQ(data, reference_inclusive_sum(values));

  // The same through a pointer to const input, as callers write it.
  data = values;
  const uint32_t* const read_view = data.data();
  ASSERT_EQ(scan(Sum::kExclusive, read_view, data.data(), 50000), cudaSuccess);
  EXPECT_EQ(data, reference_exclusive_sum(values));
}

TEST_F(EmulatedCubTest, ScansOfAnyLength) {
  for (const size_t count : {size_t{1}, size_t{2}, size_t{1023}, size_t{1024}, size_t{1025},
                             size_t{3000}, size_t{4096 + 7}}) {
    SCOPED_TRACE(count);
    const auto values = random_vector<int32_t>(count, 1, 1000);
    std::vector<int32_t> out(count);
    ASSERT_EQ(scan(Sum::kExclusive, values.data(), out.data(), count), cudaSuccess);
    EXPECT_EQ(out, reference_exclusive_sum(values));
    ASSERT_EQ(scan(Sum::kInclusive, values.data(), out.data(), count), cudaSuccess);
    EXPECT_EQ(out, reference_inclusive_sum(values));
  }
}

TEST_F(EmulatedCubTest, ScanOfNoItemsWritesNothing) {
  const auto values = random_vector<int64_t>(16, 1);
  const auto old_out = random_vector<int64_t>(16, 1);
  auto out = old_out;
  ASSERT_EQ(scan(Sum::kExclusive, values.data(), out.data(), 0), cudaSuccess);
  ASSERT_EQ(scan(Sum::kInclusive, values.data(), out.data(), 0), cudaSuccess);
  EXPECT_EQ(out, old_out);
}

// The accumulator is the input's value type: 8-bit inputs wrap at 256 even
// when written to a wider output.
TEST_F(EmulatedCubTest, ExclusiveSumAccumulatesInTheInputValueType) {
  const auto values = random_vector<uint8_t>(5000, 100, 255);
  std::vector<int32_t> out(values.size());
  ASSERT_EQ(scan(Sum::kExclusive, values.data(), out.data(), 5000), cudaSuccess);
  const auto expected_narrow = reference_exclusive_sum(values);
  const std::vector<int32_t> expected(expected_narrow.begin(), expected_narrow.end());
  EXPECT_EQ(out, expected);
}

TEST_F(EmulatedCubTest, ScansTakeIterators) {
  const auto values = random_vector<uint32_t>(3000, 0, 1000);
  std::vector<uint64_t> out(values.size());
  ASSERT_EQ(scan(Sum::kInclusive, values.cbegin(), out.begin(), 3000), cudaSuccess);
  const auto expected_narrow = reference_inclusive_sum(values);
  EXPECT_EQ(out, std::vector<uint64_t>(expected_narrow.begin(), expected_narrow.end()));
}

TEST_F(EmulatedCubTest, ScanSizeQueryTouchesNothingAndTooLittleStorageFails) {
  const auto values = random_vector<uint32_t>(10000, 1);
  const auto old_out = random_vector<uint32_t>(10000, 1);
  auto out = old_out;
  size_t temp_bytes = 0;
  ASSERT_EQ(cub::DeviceScan::ExclusiveSum(nullptr, temp_bytes, values.data(), out.data(), 10000),
            cudaSuccess);
  EXPECT_GT(temp_bytes, 0u);
  EXPECT_EQ(out, old_out);
  size_t no_items_bytes = 0;
  ASSERT_EQ(cub::DeviceScan::ExclusiveSum(nullptr, no_items_bytes, values.data(), out.data(), 0),
            cudaSuccess);
  EXPECT_GT(no_items_bytes, 0u);
  size_t inclusive_bytes = 0;
  ASSERT_EQ(
      cub::DeviceScan::InclusiveSum(nullptr, inclusive_bytes, values.data(), out.data(), 10000),
      cudaSuccess);
  EXPECT_EQ(inclusive_bytes, temp_bytes);

  Bytes temp(temp_bytes, kUntouchedByte);
  size_t short_bytes = temp_bytes - 1;
  EXPECT_EQ(
      cub::DeviceScan::ExclusiveSum(temp.data(), short_bytes, values.data(), out.data(), 10000),
      cudaErrorInvalidValue);
  EXPECT_EQ(
      cub::DeviceScan::InclusiveSum(temp.data(), short_bytes, values.data(), out.data(), 10000),
      cudaErrorInvalidValue);
  EXPECT_EQ(short_bytes, temp_bytes - 1);
  EXPECT_EQ(out, old_out);
  EXPECT_EQ(temp, Bytes(temp_bytes, kUntouchedByte));
}

TEST_F(EmulatedCubTest, ScanRejectsBadArgumentsAndWritesNothing) {
  auto data = random_vector<uint32_t>(2000, 1);
  const auto old_data = data;
  Bytes temp(1 << 16, kUntouchedByte);
  size_t temp_bytes = temp.size();
  EXPECT_EQ(cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, data.data(), data.data(), -1),
            cudaErrorInvalidValue);
  // Output shifted against the input: neither in place nor apart.
  EXPECT_EQ(
      cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, data.data(), data.data() + 1, 1000),
      cudaErrorInvalidValue);
  EXPECT_EQ(
      cub::DeviceScan::InclusiveSum(temp.data(), temp_bytes, data.data(), data.data() + 1, 1000),
      cudaErrorInvalidValue);
  // Output inside the temporary storage.
  auto* const out_in_temp = reinterpret_cast<uint32_t*>(temp.data());
  EXPECT_EQ(cub::DeviceScan::ExclusiveSum(temp.data(), temp_bytes, data.data(), out_in_temp, 10),
            cudaErrorInvalidValue);
  EXPECT_EQ(data, old_data);
  EXPECT_EQ(temp, Bytes(temp.size(), kUntouchedByte));
}

// ---- BlockScan ----------------------------------------------------------------

// Never called: BlockScan runs only inside an emulated kernel. This makes
// every member compile, for the shapes and parameters the kernels may use.
template <typename T, int X, cub::BlockScanAlgorithm kAlgorithm, int Y, int Z>
void use_every_block_scan_member(T* out) {
  using Scan = cub::BlockScan<T, X, kAlgorithm, Y, Z>;
  static typename Scan::TempStorage storage;
  T total{};
  Scan(storage).ExclusiveSum(T{1}, out[0]);
  Scan(storage).ExclusiveSum(T{1}, out[1], total);
  Scan(storage).InclusiveSum(T{1}, out[2]);
  Scan(storage).InclusiveSum(T{1}, out[3], total);
  out[4] = total;
}

[[maybe_unused]] void instantiate_block_scans(int64_t* wide, int32_t* narrow, uint32_t* index) {
  use_every_block_scan_member<int64_t, 128, cub::BLOCK_SCAN_RAKING, 1, 1>(wide);
  use_every_block_scan_member<int32_t, 32, cub::BLOCK_SCAN_WARP_SCANS, 4, 2>(narrow);
  using DefaultScan = cub::BlockScan<uint32_t, 256>;
  static DefaultScan::TempStorage storage;
  DefaultScan(storage).ExclusiveSum(index[0], index[1]);
}

}  // namespace
