// A minimal parallel-for for the CPU implementation: splits [0, n) into
// contiguous chunks over the hardware threads. Small ranges run inline, where
// starting threads would cost more than the work.
#pragma once

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace spembed::detail {

template <typename Body>  // Body(int64_t begin, int64_t end)
void parallel_for(int64_t n, int64_t min_per_thread, Body&& body) {
  const int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t threads = std::min(hw, n / std::max<int64_t>(1, min_per_thread));
  if (threads <= 1) {
    if (n > 0) body(int64_t{0}, n);
    return;
  }
  const int64_t chunk = (n + threads - 1) / threads;
  std::vector<std::thread> pool;
  pool.reserve(static_cast<size_t>(threads - 1));
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * chunk;
    const int64_t end = std::min(n, begin + chunk);
    if (begin < end) pool.emplace_back([&body, begin, end] { body(begin, end); });
  }
  body(int64_t{0}, std::min(n, chunk));
  for (auto& thread : pool) thread.join();
}

}  // namespace spembed::detail
