// Tests of the emulator itself: small kernels of this file's own, compiled as
// the emulation build compiles the kernels (g++ -x c++ with
// spembed_emulator/device.h), each written with one of the bugs the emulator
// is there to catch. Every test fails if the emulator misses its bug, in every
// build it runs in; how a bug is caught depends on the build:
//   - barrier / warp-collective faults, deadlocks and bad launch
//     configurations: the emulator's own checks (every build);
//   - memory nobody wrote: the poison byte in results (every build);
//   - a missing __syncthreads: the wrong value the random thread order makes
//     a reader see (plain and ASan builds), a data race (TSan build);
//   - reads past a device allocation or past dynamic shared memory:
//     AddressSanitizer (ASan build; the tests skip in the others).
// docs/emulation.md describes the emulator.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "kernels/common/kernel_launch.cuh"

namespace {

using spembed::detail::dynamic_shared_memory;
using spembed::detail::launch_kernel;

// ---- Kernels ------------------------------------------------------------------

// Warp 0 waits at a barrier inside a branch; warp 1 skips the branch and
// waits at the barrier after it.
__global__ void half_block_barrier_kernel(float* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  }
  __syncthreads();
  out[threadIdx.x] = 1.0f;
}

// Even and odd lanes of one warp wait at two different barriers.
__global__ void divergent_warp_barrier_kernel(float* out) {
  if (threadIdx.x % 2 == 0) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 2.0f;
}

// In block 1, thread 33 (lane 1 of warp 1) returns early; lane 0 of its warp
// then shuffles with a mask naming lanes 0 and 1.
__global__ void shuffle_exited_lane_kernel(float* out) {
  if (blockIdx.x == 1 && threadIdx.x == 33) return;
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x % 32 < 2) v = __shfl_sync(0x3u, v, 1);
  out[blockIdx.x * blockDim.x + threadIdx.x] = v;
}

// Thread 3 calls a shuffle whose mask (lane 0 only) leaves it out.
__global__ void mask_without_caller_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x == 3) v = __shfl_down_sync(0x1u, v, 1);
  out[threadIdx.x] = v;
}

// Lane 0 waits at a shuffle with lane 1, which waits at a barrier.
__global__ void shuffle_barrier_deadlock_kernel(float* out) {
  float v = static_cast<float>(threadIdx.x);
  if (threadIdx.x == 0) {
    v = __shfl_sync(0x3u, v, 1);
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = v;
}

// Marks that block `blockIdx.x` ran.
__global__ void mark_blocks_kernel(int* ran) {
  if (threadIdx.x == 0) ran[blockIdx.x] = 1;
}

// Fills `n` ints of dynamic shared memory and reads them back reversed.
__global__ void large_smem_kernel(int* out, int n) {
  int* s = dynamic_shared_memory<int>();
  for (int i = static_cast<int>(threadIdx.x); i < n; i += static_cast<int>(blockDim.x)) s[i] = i;
  __syncthreads();
  out[threadIdx.x] = s[n - 1 - static_cast<int>(threadIdx.x)];
}

__global__ void scale_kernel(const float* in, float* out, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) out[i] = 2.0f * in[i];
}

// Even threads write their shared slot; every thread reads its own.
__global__ void half_written_smem_kernel(float* out) {
  float* s = dynamic_shared_memory<float>();
  if (threadIdx.x % 2 == 0) s[threadIdx.x] = static_cast<float>(threadIdx.x);
  __syncthreads();
  out[blockIdx.x * blockDim.x + threadIdx.x] = s[threadIdx.x];
}

// Every thread writes its shared slot, then reads its left neighbour's: with
// kSync the barrier in between makes that correct, without it the read races
// with the neighbour's write.
template <bool kSync>
__global__ void neighbour_exchange_kernel(float* out) {
  float* s = dynamic_shared_memory<float>();
  const unsigned t = threadIdx.x;
  s[t] = static_cast<float>(t + 1);
  if constexpr (kSync) __syncthreads();
  out[blockIdx.x * blockDim.x + t] = s[(t + blockDim.x - 1) % blockDim.x];
}

#if !defined(__SANITIZE_THREAD__)
// The same exchange through static __shared__ memory (kept from the previous
// block of the worker, not poisoned), values tagged with `tag`.
__global__ void static_smem_exchange_kernel(float* out, float tag) {
  __shared__ float s[64];
  const unsigned t = threadIdx.x;
  s[t] = tag + static_cast<float>(t);
  out[blockIdx.x * blockDim.x + t] = s[(t + 63) % 64];
}
#endif

// Each lane passes its value round the warp through shared memory, twice;
// __syncwarp orders every write before the reads of it and every read before
// the next write to the same slot. out[t] == 2 * t.
__global__ void syncwarp_exchange_kernel(float* out) {
  float* s = dynamic_shared_memory<float>();
  const unsigned t = threadIdx.x;
  const unsigned lane = t % 32;
  const unsigned base = t - lane;
  s[t] = static_cast<float>(t);
  __syncwarp();
  const float right = s[base + (lane + 1) % 32];
  __syncwarp();
  s[t] = 2.0f * right;
  __syncwarp();
  out[blockIdx.x * blockDim.x + t] = s[base + (lane + 31) % 32];
}

// Records the order in which the scheduler ran the block's threads.
__global__ void run_order_kernel(unsigned* counter, unsigned* order) {
  order[threadIdx.x] = atomicAdd(counter, 1u);
}

// A block sum with a fixed reduction tree: the same bits whatever the order
// the threads run in.
__global__ void block_sum_kernel(const float* in, float* out) {
  float* warp_sums = dynamic_shared_memory<float>();
  const unsigned t = threadIdx.x;
  float v = in[blockIdx.x * blockDim.x + t];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (t % 32 == 0) warp_sums[t / 32] = v;
  __syncthreads();
  if (t < 32) {
    v = t < blockDim.x / 32 ? warp_sums[t] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (t == 0) out[blockIdx.x] = v;
  }
}

__global__ void add_one_kernel(int* data, int n) {
  const int i = static_cast<int>(blockIdx.x * blockDim.x + threadIdx.x);
  if (i < n) data[i] += 1;
}

// Sums in[0..n) per thread; kOffByOne makes the loop bound `<= n`, one
// element past the end.
template <bool kOffByOne>
__global__ void strided_sum_kernel(const float* in, float* out, int n) {
  float acc = 0.0f;
  const int last = kOffByOne ? n : n - 1;
  for (int i = static_cast<int>(threadIdx.x); i <= last; i += static_cast<int>(blockDim.x)) {
    acc += in[i];
  }
  out[threadIdx.x] = acc;
}

// Each thread reads the shared slot right of its own; kOffByOne lets the last
// thread read one past the block's `n` floats of dynamic shared memory.
template <bool kOffByOne>
__global__ void smem_right_neighbour_kernel(float* out, int n) {
  float* s = dynamic_shared_memory<float>();
  const int t = static_cast<int>(threadIdx.x);
  s[t] = static_cast<float>(t);
  __syncthreads();
  const int right = kOffByOne ? t + 1 : (t + 1) % n;
  out[t] = s[right];
}

// ---- Helpers ------------------------------------------------------------------

::testing::AssertionResult Contains(const std::string& text, const std::string& part) {
  if (text.find(part) != std::string::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << part << "\" not in \"" << text << "\"";
}

// A cudaMalloc'd array (filled with the poison byte by the emulator).
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(size_t count) : count_(count) {
    EXPECT_EQ(cudaMalloc(reinterpret_cast<void**>(&ptr_), count * sizeof(T)), cudaSuccess);
  }
  ~DeviceArray() { cudaFree(ptr_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  T* get() const { return ptr_; }
  size_t bytes() const { return count_ * sizeof(T); }
  std::vector<T> read() const {
    std::vector<T> host(count_);
    EXPECT_EQ(cudaMemcpy(host.data(), ptr_, bytes(), cudaMemcpyDeviceToHost), cudaSuccess);
    return host;
  }
  void write(const std::vector<T>& host) {
    ASSERT_LE(host.size(), count_);
    EXPECT_EQ(cudaMemcpy(ptr_, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice),
              cudaSuccess);
  }

 private:
  T* ptr_ = nullptr;
  size_t count_;
};

template <typename T>
bool is_poison(const T& value) {
  unsigned char bytes[sizeof(T)];
  std::memcpy(bytes, &value, sizeof(T));
  for (unsigned char b : bytes) {
    if (b != spembed::emu::kPoisonByte) return false;
  }
  return true;
}

// The check the kernels' tests make of a result.
bool close_to(float got, float want) { return std::fabs(got - want) <= 1e-6f * std::fabs(want); }

class EmulatorTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaDeviceReset(), cudaSuccess); }
  void TearDown() override { cudaDeviceReset(); }

  // The launch just made must have faulted: the report names the kernel, the
  // block and the thread ("kernel K, block (x,y,z), thread (x,y,z): what"),
  // the error is sticky until cudaDeviceReset, which clears it. Returns the
  // report for further checks.
  std::string expect_fault(const std::string& kernel, const std::string& block,
                           const std::string& thread, long long faults_before) {
    const std::string report = spembed::emu::last_fault();
    EXPECT_TRUE(Contains(report, "kernel "));
    EXPECT_TRUE(Contains(report, kernel + "("));
    EXPECT_TRUE(Contains(report, ", block " + block + ", thread " + thread + ": "));
    EXPECT_EQ(spembed::emu::faults_found(), faults_before + 1);
    // Sticky: every call reports it, again and again.
    EXPECT_EQ(cudaGetLastError(), cudaErrorLaunchFailure);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaErrorLaunchFailure);
    void* p = nullptr;
    EXPECT_EQ(cudaMalloc(&p, 4), cudaErrorLaunchFailure);
    EXPECT_EQ(cudaDeviceReset(), cudaSuccess);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    EXPECT_EQ(spembed::emu::last_fault(), "");
    return report;
  }
};

// Death tests re-execute the binary for the statement (the process has the
// emulator's worker threads).
class EmulatorDeathTest : public EmulatorTest {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    EmulatorTest::SetUp();
  }
};

#if defined(__SANITIZE_THREAD__)
// Makes ThreadSanitizer end the process at its first report (exit code 66),
// so that in a death test's child a race is a death; restores TSAN_OPTIONS.
class ScopedHaltOnRace {
 public:
  ScopedHaltOnRace() {
    const char* old = std::getenv("TSAN_OPTIONS");
    had_ = old != nullptr;
    if (had_) old_ = old;
    const std::string options = (had_ && !old_.empty() ? old_ + ":" : "") + "halt_on_error=1";
    setenv("TSAN_OPTIONS", options.c_str(), 1);
  }
  ~ScopedHaltOnRace() {
    if (had_) {
      setenv("TSAN_OPTIONS", old_.c_str(), 1);
    } else {
      unsetenv("TSAN_OPTIONS");
    }
  }
  ScopedHaltOnRace(const ScopedHaltOnRace&) = delete;
  ScopedHaltOnRace& operator=(const ScopedHaltOnRace&) = delete;

 private:
  bool had_ = false;
  std::string old_;
};
#endif

constexpr int kExchangeThreads = 64;
constexpr int kExchangeBlocks = 2;
constexpr int kExchangeLaunches = 32;

// Runs neighbour_exchange_kernel<kSync> `launches` times; returns how many
// reads, over all launches, missed the neighbour's value, and in
// `launches_with_miss` how many launches had at least one.
template <bool kSync>
int run_neighbour_exchange(int launches, int* launches_with_miss) {
  DeviceArray<float> out(kExchangeThreads * kExchangeBlocks);
  int misses = 0;
  *launches_with_miss = 0;
  for (int l = 0; l < launches; ++l) {
    launch_kernel(neighbour_exchange_kernel<kSync>, kExchangeBlocks, kExchangeThreads,
                  kExchangeThreads * sizeof(float), nullptr, out.get());
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> got = out.read();
    int missed_here = 0;
    for (int i = 0; i < kExchangeThreads * kExchangeBlocks; ++i) {
      const int t = i % kExchangeThreads;
      const float want = static_cast<float>((t + kExchangeThreads - 1) % kExchangeThreads + 1);
      if (got[i] != want) ++missed_here;
    }
    misses += missed_here;
    *launches_with_miss += missed_here > 0;
  }
  return misses;
}

// ---- Barrier and warp-collective faults -----------------------------------------

// Whether `text` contains pieces[0] N1 pieces[1] N2 ... : the pieces with a
// line number after each but the last. Returns the numbers, or {} if not.
// (Not std::regex: under -fsanitize=address GCC 12 warns in <regex>.)
std::vector<int> match_lines(const std::string& text, const std::vector<std::string>& pieces) {
  const std::string& first = pieces.front();
  for (size_t start = text.find(first); start != std::string::npos;
       start = text.find(first, start + 1)) {
    std::vector<int> lines;
    size_t pos = start + first.size();
    for (size_t k = 1; k < pieces.size(); ++k) {
      size_t end = pos;
      while (end < text.size() && text[end] >= '0' && text[end] <= '9') ++end;
      if (end == pos || text.compare(end, pieces[k].size(), pieces[k]) != 0) break;
      lines.push_back(std::stoi(text.substr(pos, end - pos)));
      pos = end + pieces[k].size();
    }
    if (lines.size() + 1 == pieces.size()) return lines;
  }
  return {};
}

// The lines of the two barrier sites in a divergent-barrier report: the one
// the reported thread waits at, then the other thread's.
std::vector<int> barrier_lines(const std::string& report, const std::string& other_thread) {
  return match_lines(
      report, {"divergent barrier: this thread waits at __syncthreads() at "
               "test_emulator_faults.cu:",
               ", thread " + other_thread + " at __syncthreads() at test_emulator_faults.cu:", ""});
}

TEST_F(EmulatorTest, BarrierInABranchHalfTheBlockTakesIsADivergentBarrier) {
  DeviceArray<float> out(64);
  const long long faults = spembed::emu::faults_found();
  launch_kernel(half_block_barrier_kernel, 1, 64, 0, nullptr, out.get());
  // Thread 0 (warp 0) waits at the barrier in the branch; thread 32, the first
  // of warp 1, at the one after it, which comes later in the file.
  const std::string report =
      expect_fault("half_block_barrier_kernel", "(0,0,0)", "(32,0,0)", faults);
  const std::vector<int> lines = barrier_lines(report, "(0,0,0)");
  ASSERT_EQ(lines.size(), 2u) << report;
  EXPECT_GT(lines[0], lines[1]) << report;
  // The block stopped at the barrier: nothing after it ran.
  for (float v : out.read()) EXPECT_TRUE(is_poison(v));
}

TEST_F(EmulatorTest, BarrierDivergentInsideAWarpIsADivergentBarrier) {
  DeviceArray<float> out(32);
  const long long faults = spembed::emu::faults_found();
  launch_kernel(divergent_warp_barrier_kernel, 1, 32, 0, nullptr, out.get());
  // Thread 1 (odd: the else branch, later in the file) against thread 0.
  const std::string report =
      expect_fault("divergent_warp_barrier_kernel", "(0,0,0)", "(1,0,0)", faults);
  const std::vector<int> lines = barrier_lines(report, "(0,0,0)");
  ASSERT_EQ(lines.size(), 2u) << report;
  EXPECT_GT(lines[0], lines[1]) << report;
  for (float v : out.read()) EXPECT_TRUE(is_poison(v));
}

TEST_F(EmulatorTest, ShuffleMaskNamingALaneThatReturnedIsAFault) {
  DeviceArray<float> out(2 * 64);
  const long long faults = spembed::emu::faults_found();
  launch_kernel(shuffle_exited_lane_kernel, 2, 64, 0, nullptr, out.get());
  // Block 0 is fine; in block 1 lane 0 of warp 1 (thread 32) is reported,
  // whether lane 1 exited before it reached the shuffle or while it waited.
  const std::string report =
      expect_fault("shuffle_exited_lane_kernel", "(1,0,0)", "(32,0,0)", faults);
  EXPECT_TRUE(Contains(report, "__shfl_sync"));
  EXPECT_TRUE(Contains(report, "mask 0x00000003"));
  EXPECT_TRUE(Contains(report, "names lane 1, which has exited"));
}

TEST_F(EmulatorTest, ShuffleMaskWithoutTheCallingLaneIsAFault) {
  DeviceArray<float> out(32);
  const long long faults = spembed::emu::faults_found();
  launch_kernel(mask_without_caller_kernel, 1, 32, 0, nullptr, out.get());
  const std::string report =
      expect_fault("mask_without_caller_kernel", "(0,0,0)", "(3,0,0)", faults);
  EXPECT_EQ(match_lines(report, {"__shfl_down_sync at test_emulator_faults.cu:",
                                 " with mask 0x00000001, which does not include the calling "
                                 "lane 3"})
                .size(),
            1u)
      << report;
}

TEST_F(EmulatorTest, ShuffleWaitingForALaneAtABarrierIsADeadlock) {
  DeviceArray<float> out(32);
  const long long faults = spembed::emu::faults_found();
  launch_kernel(shuffle_barrier_deadlock_kernel, 1, 32, 0, nullptr, out.get());
  const std::string report =
      expect_fault("shuffle_barrier_deadlock_kernel", "(0,0,0)", "(0,0,0)", faults);
  const std::vector<int> lines = match_lines(
      report,
      {"deadlock: __shfl_sync with mask 0x00000003 at test_emulator_faults.cu:",
       " waits for lane 1, which waits at __syncthreads() at test_emulator_faults.cu:", ""});
  ASSERT_EQ(lines.size(), 2u) << report;
  EXPECT_LT(lines[0], lines[1]) << report;  // the shuffle comes first
}

// ---- Launch configuration ---------------------------------------------------------

TEST_F(EmulatorTest, BlockOf1025ThreadsIsAnInvalidConfigurationNotRun) {
  DeviceArray<int> ran(1);
  const long long launches = spembed::emu::launches_of("mark_blocks_kernel");
  const long long faults = spembed::emu::faults_found();
  launch_kernel(mark_blocks_kernel, 1, 1025, 0, nullptr, ran.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  // Returned once, not sticky; nothing ran, nothing faulted.
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(spembed::emu::launches_of("mark_blocks_kernel"), launches);
  EXPECT_EQ(spembed::emu::faults_found(), faults);
  EXPECT_EQ(spembed::emu::last_fault(), "");
  EXPECT_TRUE(is_poison(ran.read()[0]));
  // 1025 threads in two dimensions as well.
  launch_kernel(mark_blocks_kernel, 1, dim3(41, 25), 0, nullptr, ran.get());
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  // 1024 is the limit: that one runs.
  launch_kernel(mark_blocks_kernel, 1, 1024, 0, nullptr, ran.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(ran.read()[0], 1);
  EXPECT_EQ(spembed::emu::launches_of("mark_blocks_kernel"), launches + 1);
}

TEST_F(EmulatorTest, DynamicSharedMemoryOver48KiBNeedsTheAttribute) {
  constexpr int kBytes = 64 * 1024;
  constexpr int kInts = kBytes / 4;
  constexpr int kThreads = 256;
  DeviceArray<int> out(kThreads);
  const long long launches = spembed::emu::launches_of("large_smem_kernel");
  // Without cudaFuncSetAttribute: refused, not run, not sticky.
  launch_kernel(large_smem_kernel, 1, kThreads, kBytes, nullptr, out.get(), kInts);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(spembed::emu::launches_of("large_smem_kernel"), launches);
  EXPECT_EQ(spembed::emu::last_fault(), "");
  // With it: runs, and all 64 KiB are usable.
  ASSERT_EQ(
      cudaFuncSetAttribute(large_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kBytes),
      cudaSuccess);
  launch_kernel(large_smem_kernel, 1, kThreads, kBytes, nullptr, out.get(), kInts);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(spembed::emu::launches_of("large_smem_kernel"), launches + 1);
  const std::vector<int> got = out.read();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(got[t], kInts - 1 - t) << t;
  // The attribute is the limit: 4 bytes more are refused.
  launch_kernel(large_smem_kernel, 1, kThreads, kBytes + 4, nullptr, out.get(), kInts + 1);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  // Back to the default, for a rerun in this process (--gtest_repeat).
  EXPECT_EQ(cudaFuncSetAttribute(large_smem_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                 48 * 1024),
            cudaSuccess);
}

// ---- Memory nobody wrote ----------------------------------------------------------

TEST_F(EmulatorTest, NeverWrittenDeviceMemoryReachesTheOutputAsPoison) {
  constexpr int kCount = 64;
  constexpr int kCopied = 48;    // the host uploads only these
  constexpr int kComputed = 60;  // the kernel writes only these
  DeviceArray<float> in(kCount);
  DeviceArray<float> out(kCount);
  std::vector<float> host(kCopied);
  std::iota(host.begin(), host.end(), 1.0f);
  in.write(host);
  launch_kernel(scale_kernel, 1, 64, 0, nullptr, in.get(), out.get(), kComputed);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = out.read();
  float checksum = 0.0f;
  for (int i = 0; i < kCount; ++i) {
    const float want = 2.0f * static_cast<float>(i + 1);
    if (i < kCopied) {
      EXPECT_EQ(got[i], want) << i;
    } else {
      // Computed from never-written input: NaN, and the usual check fails.
      EXPECT_TRUE(std::isnan(got[i])) << i;
      EXPECT_FALSE(close_to(got[i], want)) << i;
    }
    // Never written at all: still every byte 0xFF.
    if (i >= kComputed) {
      EXPECT_TRUE(is_poison(got[i])) << i;
    }
    checksum += got[i];
  }
  EXPECT_TRUE(std::isnan(checksum));
  const std::vector<float> input = in.read();
  for (int i = kCopied; i < kCount; ++i) EXPECT_TRUE(is_poison(input[i])) << i;
}

TEST_F(EmulatorTest, NeverWrittenDynamicSharedMemoryReachesTheOutputAsPoison) {
  constexpr int kThreads = 64;
  constexpr int kBlocks = 3;
  DeviceArray<float> out(kThreads * kBlocks);
  launch_kernel(half_written_smem_kernel, kBlocks, kThreads, kThreads * sizeof(float), nullptr,
                out.get());
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = out.read();
  // Every block's shared memory starts poisoned, not with the previous
  // block's values.
  for (int i = 0; i < kThreads * kBlocks; ++i) {
    const int t = i % kThreads;
    if (t % 2 == 0) {
      EXPECT_EQ(got[i], static_cast<float>(t)) << i;
    } else {
      EXPECT_TRUE(is_poison(got[i])) << i;
    }
  }
}

// ---- A missing __syncthreads ------------------------------------------------------

#if defined(__SANITIZE_THREAD__)
TEST_F(EmulatorDeathTest, MissingSyncthreadsBeforeASharedReadIsADataRace) {
  const ScopedHaltOnRace halt;
  int launches_with_miss = 0;
  EXPECT_DEATH(run_neighbour_exchange<false>(1, &launches_with_miss),
               "ThreadSanitizer: data race.*neighbour_exchange_kernel<false>");
  // With the barrier: no report (a race would end the child with 66), and the
  // values are right.
  EXPECT_EXIT(
      {
        const int misses = run_neighbour_exchange<true>(kExchangeLaunches, &launches_with_miss);
        std::exit(misses == 0 ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "");
}
#else
TEST_F(EmulatorTest, MissingSyncthreadsBeforeASharedReadShowsInTheResults) {
  // Threads run in a random order between barriers, so without the barrier a
  // reader runs before its neighbour about half the time; the first thread of
  // a launch always does. Deterministic for a given SPEMBED_EMULATION_SEED.
  int launches_with_miss = 0;
  const int misses = run_neighbour_exchange<false>(kExchangeLaunches, &launches_with_miss);
  EXPECT_EQ(launches_with_miss, kExchangeLaunches);
  // In thread order only thread 0 would miss; in random order many do.
  EXPECT_GT(misses, kExchangeLaunches * kExchangeBlocks);
  // Through static __shared__ memory the missed value is the previous
  // launch's (stale) rather than poison; it is just as wrong.
  DeviceArray<float> out(kExchangeThreads * kExchangeBlocks);
  int stale = 0;
  for (int l = 0; l < kExchangeLaunches; ++l) {
    const float tag = 1000.0f * static_cast<float>(l + 1);
    launch_kernel(static_smem_exchange_kernel, kExchangeBlocks, kExchangeThreads, 0, nullptr,
                  out.get(), tag);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const std::vector<float> got = out.read();
    for (int i = 0; i < kExchangeThreads * kExchangeBlocks; ++i) {
      const int t = i % kExchangeThreads;
      stale += got[i] != tag + static_cast<float>((t + 63) % 64);
    }
  }
  EXPECT_GT(stale, kExchangeLaunches * kExchangeBlocks);
}
#endif

TEST_F(EmulatorTest, SyncthreadsBeforeTheSharedReadIsCorrect) {
  // Under ThreadSanitizer a race here would be reported (and the test binary
  // exit 66); the death test above checks that no report is made.
  int launches_with_miss = 0;
  EXPECT_EQ(run_neighbour_exchange<true>(kExchangeLaunches, &launches_with_miss), 0);
  EXPECT_EQ(launches_with_miss, 0);
}

// ---- __syncwarp ---------------------------------------------------------------------

bool syncwarp_exchange_is_correct() {
  constexpr int kThreads = 64;
  constexpr int kBlocks = 2;
  DeviceArray<float> out(kThreads * kBlocks);
  bool ok = true;
  for (int l = 0; l < 8; ++l) {
    launch_kernel(syncwarp_exchange_kernel, kBlocks, kThreads, kThreads * sizeof(float), nullptr,
                  out.get());
    ok = ok && cudaGetLastError() == cudaSuccess;
    const std::vector<float> got = out.read();
    for (int i = 0; i < kThreads * kBlocks; ++i) {
      const int t = i % kThreads;
      ok = ok && got[i] == 2.0f * static_cast<float>(t);
    }
  }
  return ok;
}

TEST_F(EmulatorDeathTest, SyncwarpExchangeThroughSharedMemoryIsCorrectAndRaceFree) {
#if defined(__SANITIZE_THREAD__)
  {
    const ScopedHaltOnRace halt;
    EXPECT_EXIT(std::exit(syncwarp_exchange_is_correct() ? 0 : 1), ::testing::ExitedWithCode(0),
                "");
  }
#endif
  EXPECT_TRUE(syncwarp_exchange_is_correct());
}

// ---- Reads out of bounds: AddressSanitizer -----------------------------------------

TEST_F(EmulatorDeathTest, ReadOnePastACudaMallocBufferIsAHeapBufferOverflow) {
#if defined(__SANITIZE_ADDRESS__)
  constexpr int kCount = 100;
  constexpr int kThreads = 32;
  DeviceArray<float> in(kCount);
  DeviceArray<float> out(kThreads);
  in.write(std::vector<float>(kCount, 1.0f));
  // In bounds: clean, and the sums are right.
  launch_kernel(strided_sum_kernel<false>, 1, kThreads, 0, nullptr, in.get(), out.get(), kCount);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = out.read();
  for (int t = 0; t < kThreads; ++t) {
    EXPECT_EQ(got[t], static_cast<float>((kCount - 1 - t) / kThreads + 1)) << t;
  }
  // `i <= n`: thread kCount % kThreads reads in[kCount], the 4 bytes right
  // after the exact-size allocation.
  EXPECT_DEATH(
      {
        launch_kernel(strided_sum_kernel<true>, 1, kThreads, 0, nullptr, in.get(), out.get(),
                      kCount);
        cudaDeviceSynchronize();
      },
      "heap-buffer-overflow.*READ of size 4.*strided_sum_kernel<true>.*"
      "0 bytes to the right of 400-byte region");
#else
  GTEST_SKIP() << "runs in the AddressSanitizer build (-DSPEMBED_SANITIZER=address)";
#endif
}

TEST_F(EmulatorDeathTest, ReadPastDynamicSharedMemoryIsAHeapBufferOverflow) {
#if defined(__SANITIZE_ADDRESS__)
  constexpr int kThreads = 64;
  DeviceArray<float> out(kThreads);
  launch_kernel(smem_right_neighbour_kernel<false>, 1, kThreads, kThreads * sizeof(float), nullptr,
                out.get(), kThreads);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<float> got = out.read();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(got[t], static_cast<float>((t + 1) % kThreads));
  // The last thread reads s[64], past the launch's 64 floats.
  EXPECT_DEATH(
      {
        launch_kernel(smem_right_neighbour_kernel<true>, 1, kThreads, kThreads * sizeof(float),
                      nullptr, out.get(), kThreads);
        cudaDeviceSynchronize();
      },
      "heap-buffer-overflow.*READ of size 4.*smem_right_neighbour_kernel<true>.*"
      "0 bytes to the right of 256-byte region");
#else
  GTEST_SKIP() << "runs in the AddressSanitizer build (-DSPEMBED_SANITIZER=address)";
#endif
}

// The runtime's own bounds check, in every build: a copy one element past an
// allocation is refused (cudaErrorInvalidValue, not sticky) and copies nothing.
TEST_F(EmulatorTest, CopyOnePastACudaMallocBufferIsRefused) {
  DeviceArray<float> buf(16);
  std::vector<float> host(17, 3.0f);
  EXPECT_EQ(cudaMemcpy(buf.get(), host.data(), 17 * sizeof(float), cudaMemcpyHostToDevice),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemcpy(host.data(), buf.get(), 17 * sizeof(float), cudaMemcpyDeviceToHost),
            cudaErrorInvalidValue);
  EXPECT_EQ(cudaMemset(buf.get() + 1, 0, 16 * sizeof(float)), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  for (float v : buf.read()) EXPECT_TRUE(is_poison(v));
  EXPECT_EQ(host[0], 3.0f);
}

// ---- The scheduling seed ------------------------------------------------------------

std::vector<unsigned> run_order() {
  constexpr int kThreads = 64;
  DeviceArray<unsigned> counter(1);
  DeviceArray<unsigned> order(kThreads);
  EXPECT_EQ(cudaMemset(counter.get(), 0, sizeof(unsigned)), cudaSuccess);
  launch_kernel(run_order_kernel, 1, kThreads, 0, nullptr, counter.get(), order.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  return order.read();
}

std::vector<float> block_sums() {
  constexpr int kThreads = 256;
  constexpr int kBlocks = 4;
  std::vector<float> host(kThreads * kBlocks);
  for (size_t i = 0; i < host.size(); ++i) host[i] = 1.0f / static_cast<float>(i + 3);
  DeviceArray<float> in(host.size());
  DeviceArray<float> out(kBlocks);
  in.write(host);
  launch_kernel(block_sum_kernel, kBlocks, kThreads, (kThreads / 32) * sizeof(float), nullptr,
                in.get(), out.get());
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  std::vector<float> sums = out.read();
  for (int b = 0; b < kBlocks; ++b) {
    double want = 0.0;
    for (int t = 0; t < kThreads; ++t) want += host[b * kThreads + t];
    EXPECT_NEAR(sums[b], want, 1e-5 * want) << b;
  }
  return sums;
}

uint64_t seed_from_environment() {
  const char* env = std::getenv("SPEMBED_EMULATION_SEED");
  return env != nullptr ? std::strtoull(env, nullptr, 0) : 1;
}

TEST_F(EmulatorTest, DeterministicKernelGivesTheSameBitsUnderTwoSeeds) {
  spembed::emu::set_seed(7);
  const std::vector<unsigned> order_7 = run_order();
  const std::vector<float> sums_7 = block_sums();
  // The same seed replays the same order.
  spembed::emu::set_seed(7);
  EXPECT_EQ(run_order(), order_7);
  spembed::emu::set_seed(8);
  const std::vector<unsigned> order_8 = run_order();
  const std::vector<float> sums_8 = block_sums();
  spembed::emu::set_seed(seed_from_environment());
  // Both orders are permutations of the threads, and they differ...
  std::vector<unsigned> sorted_7 = order_7;
  std::vector<unsigned> sorted_8 = order_8;
  std::sort(sorted_7.begin(), sorted_7.end());
  std::sort(sorted_8.begin(), sorted_8.end());
  std::vector<unsigned> identity(order_7.size());
  std::iota(identity.begin(), identity.end(), 0u);
  EXPECT_EQ(sorted_7, identity);
  EXPECT_EQ(sorted_8, identity);
  EXPECT_NE(order_7, order_8);
  EXPECT_NE(order_7, identity);
  // ...but the deterministic kernel's results are the same bits.
  ASSERT_EQ(sums_7.size(), sums_8.size());
  EXPECT_EQ(std::memcmp(sums_7.data(), sums_8.data(), sums_7.size() * sizeof(float)), 0);
}

// ---- Streams and graphs -------------------------------------------------------------

TEST_F(EmulatorTest, CapturedWorkRunsOnlyAtGraphLaunchOncePerLaunch) {
  constexpr int kCount = 100;
  DeviceArray<int> data(kCount);
  DeviceArray<int> copy(kCount);
  DeviceArray<int> filled(kCount);
  ASSERT_EQ(cudaMemset(data.get(), 0, data.bytes()), cudaSuccess);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  const long long launches = spembed::emu::launches_of("add_one_kernel");

  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  EXPECT_EQ(cudaStreamIsCapturing(stream, &status), cudaSuccess);
  EXPECT_EQ(status, cudaStreamCaptureStatusActive);
  launch_kernel(add_one_kernel, 1, 128, 0, stream, data.get(), kCount);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(copy.get(), data.get(), data.bytes(), cudaMemcpyDeviceToDevice, stream),
            cudaSuccess);
  EXPECT_EQ(cudaMemsetAsync(filled.get(), 0, filled.bytes(), stream), cudaSuccess);
  cudaGraph_t graph = nullptr;
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess);

  // Captured, not run.
  EXPECT_EQ(spembed::emu::launches_of("add_one_kernel"), launches);
  for (int v : data.read()) EXPECT_EQ(v, 0);
  for (int v : copy.read()) EXPECT_TRUE(is_poison(v));
  for (int v : filled.read()) EXPECT_TRUE(is_poison(v));

  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);
  EXPECT_EQ(spembed::emu::launches_of("add_one_kernel"), launches);
  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(spembed::emu::launches_of("add_one_kernel"), launches + 1);
  for (int v : data.read()) EXPECT_EQ(v, 1);
  for (int v : copy.read()) EXPECT_EQ(v, 1);
  for (int v : filled.read()) EXPECT_EQ(v, 0);

  ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  EXPECT_EQ(spembed::emu::launches_of("add_one_kernel"), launches + 2);
  for (int v : data.read()) EXPECT_EQ(v, 2);
  for (int v : copy.read()) EXPECT_EQ(v, 2);

  EXPECT_EQ(cudaGraphExecDestroy(exec), cudaSuccess);
  EXPECT_EQ(cudaGraphDestroy(graph), cudaSuccess);
  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

TEST_F(EmulatorTest, MemcpyAndMemsetRunInStreamOrderWithKernels) {
  constexpr int kCount = 300;
  DeviceArray<int> data(kCount);
  cudaStream_t stream = nullptr;
  ASSERT_EQ(cudaStreamCreate(&stream), cudaSuccess);
  std::vector<int> host(kCount, -7);

  // memset, three kernels, copy back: the copy sees all three.
  EXPECT_EQ(cudaMemsetAsync(data.get(), 0, data.bytes(), stream), cudaSuccess);
  for (int k = 0; k < 3; ++k) {
    launch_kernel(add_one_kernel, (kCount + 127) / 128, 128, 0, stream, data.get(), kCount);
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(host.data(), data.get(), data.bytes(), cudaMemcpyDeviceToHost, stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  for (int v : host) EXPECT_EQ(v, 3);

  // upload, kernel, memset of the first half, copy back.
  std::vector<int> source(kCount);
  std::iota(source.begin(), source.end(), 10);
  EXPECT_EQ(
      cudaMemcpyAsync(data.get(), source.data(), data.bytes(), cudaMemcpyHostToDevice, stream),
      cudaSuccess);
  launch_kernel(add_one_kernel, (kCount + 127) / 128, 128, 0, stream, data.get(), kCount);
  EXPECT_EQ(cudaMemsetAsync(data.get(), 0, (kCount / 2) * sizeof(int), stream), cudaSuccess);
  EXPECT_EQ(cudaMemcpyAsync(host.data(), data.get(), data.bytes(), cudaMemcpyDeviceToHost, stream),
            cudaSuccess);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  for (int i = 0; i < kCount; ++i) EXPECT_EQ(host[i], i < kCount / 2 ? 0 : source[i] + 1) << i;

  EXPECT_EQ(cudaStreamDestroy(stream), cudaSuccess);
}

}  // namespace
