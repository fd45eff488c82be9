// The CPU worker pool (kernels/common/cpu_parallel.h), compiled into this
// test directly: every index runs exactly once whatever the thread count,
// nested and concurrent regions run (inline) instead of deadlocking, and the
// thread count follows set_cpu_threads.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/common/cpu_parallel.h"

namespace spembed::detail {
namespace {

// Counts how often each index of [0, n) was visited.
std::vector<int> visit_counts(int64_t n, int64_t min_per_chunk) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  parallel_for(n, min_per_chunk, [&](int64_t begin, int64_t end) {
    ASSERT_LE(0, begin);
    ASSERT_LE(begin, end);
    ASSERT_LE(end, n);
    for (int64_t i = begin; i < end; ++i) hits[static_cast<size_t>(i)].fetch_add(1);
  });
  std::vector<int> out;
  for (auto& h : hits) out.push_back(h.load());
  return out;
}

TEST(CpuParallel, EveryIndexOnceForEveryThreadCount) {
  for (int threads : {1, 2, 3, 8}) {
    set_cpu_threads(threads);
    EXPECT_EQ(cpu_threads(), threads);
    for (int64_t n : {int64_t{0}, int64_t{1}, int64_t{7}, int64_t{1000}, int64_t{100003}}) {
      for (int64_t grain : {int64_t{1}, int64_t{16}, int64_t{4096}}) {
        const auto counts = visit_counts(n, grain);
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(counts[static_cast<size_t>(i)], 1)
              << "index " << i << " n " << n << " grain " << grain << " threads " << threads;
        }
      }
    }
  }
  set_cpu_threads(0);
  EXPECT_GE(cpu_threads(), 1);
}

TEST(CpuParallel, UsesMoreThanOneThreadWhenAsked) {
  set_cpu_threads(4);
  std::mutex m;
  std::vector<std::thread::id> seen;
  std::atomic<int> arrived{0};
  // Every chunk waits (bounded) until a second chunk has started, so two
  // threads must be running chunks at once for more than one id to appear.
  parallel_for(4, 1, [&](int64_t, int64_t) {
    arrived.fetch_add(1);
    for (int spin = 0; spin < 2000 && arrived.load() < 2; ++spin) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    std::lock_guard<std::mutex> lock(m);
    seen.push_back(std::this_thread::get_id());
  });
  std::sort(seen.begin(), seen.end());
  EXPECT_GT(std::unique(seen.begin(), seen.end()) - seen.begin(), 1);
  set_cpu_threads(0);
}

TEST(CpuParallel, NestedRegionsRunInline) {
  set_cpu_threads(4);
  std::atomic<int64_t> total{0};
  parallel_for(64, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      parallel_for(100, 1, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
    }
  });
  EXPECT_EQ(total.load(), 64 * 100);
  set_cpu_threads(0);
}

TEST(CpuParallel, ConcurrentCallersEachGetAllTheirWork) {
  set_cpu_threads(3);
  constexpr int kCallers = 4;
  std::vector<int64_t> sums(kCallers, 0);
  std::vector<std::thread> callers;
  for (int c = 0; c < kCallers; ++c) {
    callers.emplace_back([&sums, c] {
      for (int repeat = 0; repeat < 50; ++repeat) {
        std::atomic<int64_t> sum{0};
        parallel_for(1000, 10, [&](int64_t b, int64_t e) {
          for (int64_t i = b; i < e; ++i) sum.fetch_add(i);
        });
        sums[static_cast<size_t>(c)] += sum.load();
      }
    });
  }
  for (auto& t : callers) t.join();
  for (int c = 0; c < kCallers; ++c) EXPECT_EQ(sums[static_cast<size_t>(c)], 50 * (999 * 1000 / 2));
  set_cpu_threads(0);
}

// A runner that runs the pieces of a region on threads of its own, last piece
// first, and counts the regions it was given.
std::atomic<int> g_regions{0};
void reverse_runner(int64_t n, void (*task)(void*, int64_t), void* context, void*) {
  g_regions.fetch_add(1);
  std::vector<std::thread> threads;
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([=] {
      for (int64_t i = n - 1 - t; i >= 0; i -= 2) task(context, i);
    });
  }
  for (auto& thread : threads) thread.join();
}

TEST(CpuParallel, InstalledRunnerGetsTheRegions) {
  set_cpu_threads(3);
  set_cpu_parallel_runner(&reverse_runner, nullptr);
  g_regions = 0;
  for (int64_t n : {int64_t{7}, int64_t{1000}, int64_t{100003}}) {
    const auto counts = visit_counts(n, 1);
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(counts[static_cast<size_t>(i)], 1) << i;
  }
  EXPECT_EQ(g_regions.load(), 3);
  // Regions inside a piece run inline, not through the runner again.
  std::atomic<int64_t> total{0};
  parallel_for(64, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      parallel_for(100, 1, [&](int64_t b, int64_t e) { total.fetch_add(e - b); });
    }
  });
  EXPECT_EQ(total.load(), 64 * 100);
  EXPECT_EQ(g_regions.load(), 4);
  // One thread, or null (the pool again): the runner is not called.
  set_cpu_threads(1);
  visit_counts(1000, 1);
  set_cpu_threads(3);
  set_cpu_parallel_runner(nullptr, nullptr);
  const auto counts = visit_counts(1000, 1);
  EXPECT_EQ(std::count(counts.begin(), counts.end(), 1), 1000);
  EXPECT_EQ(g_regions.load(), 4);
  set_cpu_threads(0);
}

}  // namespace
}  // namespace spembed::detail
