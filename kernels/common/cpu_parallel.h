// The CPU implementation's parallel-for, on one persistent pool of worker
// threads (started on first use, grown to the thread count asked for, never
// restarted per call). The calling thread works too.
//
// Work is split into chunks claimed from an atomic counter, so uneven chunks
// (attention over sequences of different lengths) balance themselves. Which
// thread runs a chunk never changes a result: every chunk writes its own
// outputs, in an order fixed by the chunk alone.
//
// One parallel region runs at a time. A call made while the pool is busy
// (another thread's region, e.g. ranks run as host threads, or a call from
// inside a chunk) runs its chunks inline on the calling thread instead of
// waiting, so nested and concurrent calls can never deadlock.
#pragma once

#include <algorithm>
#include <cstdint>
#include <utility>

namespace spembed::detail {

// Threads a parallel region uses: set_cpu_threads' value, else the
// SPEMBED_NUM_THREADS environment variable, else the hardware threads.
int cpu_threads();
// 0 (or less) returns to the default above.
void set_cpu_threads(int threads);

// Parallel regions go to `runner` (with `user`) instead of the pool; null:
// the pool (spembed_set_cpu_parallel_runner).
void set_cpu_parallel_runner(void (*runner)(int64_t, void (*)(void*, int64_t), void*, void*),
                             void* user);

// Runs chunk(context, i) for every i in [0, chunks) on up to `threads`
// threads, the caller included (or on the installed runner's threads);
// returns when all have run.
void run_chunks(int64_t chunks, int threads, void (*chunk)(void*, int64_t), void* context);

// Calls body(begin, end) over [0, n) in contiguous ranges of at least
// `min_per_chunk` elements (a few ranges per thread, for balance). Ranges too
// small to be worth a thread run inline.
template <typename Body>  // Body(int64_t begin, int64_t end)
void parallel_for(int64_t n, int64_t min_per_chunk, Body&& body) {
  if (n <= 0) return;
  constexpr int64_t kChunksPerThread = 4;
  const int threads = cpu_threads();
  const int64_t by_size = n / std::max<int64_t>(1, min_per_chunk);
  const int64_t chunks = std::min<int64_t>(by_size, int64_t{threads} * kChunksPerThread);
  if (threads <= 1 || chunks <= 1) {
    body(int64_t{0}, n);
    return;
  }
  const int64_t step = (n + chunks - 1) / chunks;
  struct Context {
    Body* body;
    int64_t n, step;
  } context{&body, n, step};
  run_chunks((n + step - 1) / step, threads,
             [](void* raw, int64_t i) {
               auto* c = static_cast<Context*>(raw);
               const int64_t begin = i * c->step;
               (*c->body)(begin, std::min(c->n, begin + c->step));
             },
             &context);
}

}  // namespace spembed::detail
