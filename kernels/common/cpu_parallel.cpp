// The persistent worker pool behind parallel_for (see cpu_parallel.h).
#include "kernels/common/cpu_parallel.h"

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>
#include <vector>

namespace spembed::detail {
namespace {

int default_threads() {
  if (const char* env = std::getenv("SPEMBED_NUM_THREADS")) {
    const int value = std::atoi(env);
    if (value > 0) return value;
  }
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

std::atomic<int> g_threads_override{0};

// True on the pool's workers and on a caller while it runs its region's
// chunks: a parallel_for from inside a chunk then runs inline.
thread_local bool t_in_region = false;

class WorkerPool {
 public:
  ~WorkerPool() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  // False when the pool is busy with another region (the caller then runs inline).
  bool run(int64_t chunks, int threads, void (*chunk)(void*, int64_t), void* context) {
    std::unique_lock<std::mutex> region(region_mutex_, std::try_to_lock);
    if (!region.owns_lock()) return false;
    const int helpers = static_cast<int>(std::min<int64_t>(threads, chunks)) - 1;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      while (static_cast<int>(workers_.size()) < helpers) {
        workers_.emplace_back([this] { worker_loop(); });
      }
      job_ = Job{chunk, context, chunks};
      next_chunk_.store(0, std::memory_order_relaxed);
      helpers_wanted_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    work(job_);
    std::unique_lock<std::mutex> lock(mutex_);
    helpers_wanted_ = 0;  // a worker waking late must not join a finished region
    done_.wait(lock, [this] { return helpers_running_ == 0; });
    return true;
  }

 private:
  struct Job {
    void (*chunk)(void*, int64_t) = nullptr;
    void* context = nullptr;
    int64_t chunks = 0;
  };

  void work(const Job& job) {
    t_in_region = true;
    for (int64_t i = next_chunk_.fetch_add(1); i < job.chunks; i = next_chunk_.fetch_add(1)) {
      job.chunk(job.context, i);
    }
    t_in_region = false;
  }

  void worker_loop() {
    uint64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      wake_.wait(lock, [&] { return stopping_ || (generation_ != seen && helpers_wanted_ > 0); });
      if (stopping_) return;
      seen = generation_;
      --helpers_wanted_;
      ++helpers_running_;
      const Job job = job_;
      lock.unlock();
      work(job);
      lock.lock();
      if (--helpers_running_ == 0) done_.notify_all();
    }
  }

  std::mutex region_mutex_;  // one region at a time
  std::mutex mutex_;         // guards everything below
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  Job job_;
  std::atomic<int64_t> next_chunk_{0};
  uint64_t generation_ = 0;
  int helpers_wanted_ = 0;
  int helpers_running_ = 0;
  bool stopping_ = false;
};

WorkerPool& pool() {
  static WorkerPool instance;
  return instance;
}

}  // namespace

int cpu_threads() {
  const int value = g_threads_override.load(std::memory_order_relaxed);
  if (value > 0) return value;
  static const int from_environment = default_threads();
  return from_environment;
}

void set_cpu_threads(int threads) {
  g_threads_override.store(std::max(0, threads), std::memory_order_relaxed);
}

namespace {

using Runner = void (*)(int64_t, void (*)(void*, int64_t), void*, void*);
std::atomic<Runner> g_runner{nullptr};
std::atomic<void*> g_runner_user{nullptr};

// A region handed to the runner: each piece runs marked as inside a region,
// so that a parallel_for within it runs inline, as on the pool.
struct RunnerRegion {
  void (*chunk)(void*, int64_t);
  void* context;
  static void piece(void* raw, int64_t i) {
    const auto* region = static_cast<const RunnerRegion*>(raw);
    const bool outer = t_in_region;
    t_in_region = true;
    region->chunk(region->context, i);
    t_in_region = outer;
  }
};

}  // namespace

void set_cpu_parallel_runner(Runner runner, void* user) {
  g_runner_user.store(user, std::memory_order_relaxed);
  g_runner.store(runner, std::memory_order_release);
}

void run_chunks(int64_t chunks, int threads, void (*chunk)(void*, int64_t), void* context) {
  if (chunks <= 0) return;
  if (threads > 1 && chunks > 1 && !t_in_region) {
    if (const Runner runner = g_runner.load(std::memory_order_acquire)) {
      RunnerRegion region{chunk, context};
      runner(chunks, &RunnerRegion::piece, &region, g_runner_user.load(std::memory_order_relaxed));
      return;
    }
    if (pool().run(chunks, threads, chunk, context)) return;
  }
  for (int64_t i = 0; i < chunks; ++i) chunk(context, i);
}

}  // namespace spembed::detail
