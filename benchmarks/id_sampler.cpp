#include "id_sampler.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace spembed_bench {
namespace {

double zipf_alpha(Dist dist) { return dist == Dist::kZipf120 ? 1.2 : 1.05; }

// Cumulative weights sum_{k <= r} (k + 1)^-alpha, summed in rank order (the
// Python script sums in the same order).
const std::vector<double>& zipf_cumulative(int64_t rows, double alpha) {
  static std::mutex mutex;
  static std::map<std::pair<int64_t, double>, std::unique_ptr<std::vector<double>>> cache;
  std::lock_guard<std::mutex> lock(mutex);
  auto& slot = cache[{rows, alpha}];
  if (!slot) {
    slot = std::make_unique<std::vector<double>>(static_cast<size_t>(rows));
    double sum = 0.0;
    for (int64_t r = 0; r < rows; ++r) {
      sum += std::pow(static_cast<double>(r + 1), -alpha);
      (*slot)[static_cast<size_t>(r)] = sum;
    }
  }
  return *slot;
}

template <typename Body>
void parallel_for(int64_t n, Body body) {
  const int64_t threads = std::max<int64_t>(1, std::thread::hardware_concurrency());
  // Below this many ids a thread costs more than it saves.
  constexpr int64_t kMinPerThread = 1 << 16;
  const int64_t used = std::min(threads, std::max<int64_t>(1, n / kMinPerThread));
  std::vector<std::thread> pool;
  for (int64_t t = 0; t < used; ++t) {
    const int64_t begin = n * t / used;
    const int64_t end = n * (t + 1) / used;
    pool.emplace_back([=] { body(begin, end); });
  }
  for (auto& th : pool) th.join();
}

}  // namespace

const char* dist_name(Dist dist) {
  switch (dist) {
    case Dist::kUniform:
      return "uniform";
    case Dist::kZipf105:
      return "zipf1.05";
    case Dist::kZipf120:
      return "zipf1.2";
    case Dist::kHot30:
      return "hot30";
  }
  return "?";
}

double counter_uniform(uint64_t seed, uint64_t i) {
  uint64_t z = seed + (i + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * 0x1.0p-53;
}

void generate_ids(Dist dist, int64_t rows, uint64_t seed, uint64_t first_counter, uint64_t shift,
                  int64_t* ids, int64_t n) {
  if (dist == Dist::kUniform) {
    parallel_for(n, [=](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const double u = counter_uniform(seed, first_counter + static_cast<uint64_t>(k));
        ids[k] = std::min<int64_t>(rows - 1, static_cast<int64_t>(u * static_cast<double>(rows)));
      }
    });
    return;
  }
  const std::vector<double>& cum = zipf_cumulative(rows, zipf_alpha(dist));
  const double total = cum.back();
  const uint64_t urows = static_cast<uint64_t>(rows);
  const bool hot = dist == Dist::kHot30;
  parallel_for(n, [&, seed, first_counter, shift, ids, hot](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      const double u = counter_uniform(seed, first_counter + static_cast<uint64_t>(k));
      if (hot && u < kHotShare) {
        ids[k] = static_cast<int64_t>(shift % urows);  // rank 0, scattered
        continue;
      }
      const double target =
          hot ? cum[0] + (u - kHotShare) / (1.0 - kHotShare) * (total - cum[0]) : u * total;
      const auto rank = static_cast<uint64_t>(std::min<int64_t>(
          rows - 1, std::upper_bound(cum.begin(), cum.end(), target) - cum.begin()));
      ids[k] = static_cast<int64_t>((rank * kRankScatter + shift) % urows);
    }
  });
}

}  // namespace spembed_bench
