// The grid executor and the device-side rendezvous points.
//
// A block runs on one worker OS thread as one fiber per CUDA thread. The
// scheduler resumes a runnable fiber picked at random (seeded) and lets it run
// until it reaches a rendezvous point (a barrier or a warp collective) or
// exits; the last thread to arrive at a rendezvous completes it and makes the
// waiters runnable again. When no fiber is runnable while some have not
// exited, the block is deadlocked and the waiters say why (a barrier that
// part of the block never reaches, a mask naming a lane that waits elsewhere).
//
// ThreadSanitizer: fiber switches carry no ordering (no-sync flag). Order is
// created only where CUDA creates it: each barrier and each __syncwarp is a
// fresh sync object that every participant releases on arrival and acquires
// on departure. The host's work before a launch is released to the launch's
// threads, and their work is acquired by the host after the grid. Blocks
// alternate between two workers; a block is ordered after the previous block
// of its worker (they share the worker's static __shared__ variables), not
// after the block just before it, so races between neighbouring blocks show.
// Nor is a thread ordered after a thread of its own block that ran to its end
// before it started (a kernel with no barrier runs its threads one after
// another): that order is the scheduler's, not CUDA's.
// This file is compiled without ThreadSanitizer instrumentation: its own
// bookkeeping is shared by the fibers on purpose.
#include "scheduler.h"

#include <dlfcn.h>

#include <condition_variable>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cxxabi.h>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "fiber.h"
#include "spembed_emulator/device.h"

#if defined(SPEMBED_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

namespace spembed::emu {

thread_local const ThreadIndex* t_current_index = nullptr;

namespace {

#if defined(SPEMBED_EMU_TSAN)
void hb_release(void* object) { __tsan_release(object); }
void hb_acquire(void* object) { __tsan_acquire(object); }
#else
void hb_release(void*) {}
void hb_acquire(void*) {}
#endif

constexpr int kWorkers = 2;
constexpr unsigned kMaxBlockThreads = 1024;

// One meeting of a barrier or __syncwarp; its address is the sync object.
struct Rendezvous {
  int pending = 0;  // participants still to depart
};

enum class State : uint8_t { kRunnable, kAtBarrier, kAtWarp, kExited };

struct Lane {
  ThreadIndex index{};
  unsigned linear = 0;
  unsigned warp = 0;
  unsigned lane = 0;
  State state = State::kRunnable;
  Site site{};
  int predicate = 0;
  int barrier_result = 0;
  // At a warp collective.
  int op = 0;
  const char* op_name = nullptr;
  unsigned mask = 0;
  WarpCompute compute = nullptr;
  const void* context = nullptr;
  Rendezvous* rendezvous = nullptr;
  alignas(16) unsigned char in[kMaxCollectiveBytes];
  alignas(16) unsigned char out[kMaxCollectiveBytes];
};

struct OpenSyncwarp {
  unsigned warp;
  unsigned mask;
  Rendezvous* rendezvous;
};

struct Block {
  const GridLaunch* launch = nullptr;
  uint3 block_idx{};
  unsigned threads = 0;
  void* smem = nullptr;
  size_t smem_bytes = 0;
  uint64_t serial = 0;
  unsigned live = 0;
  unsigned at_barrier = 0;
  Rendezvous* barrier = nullptr;
  std::vector<OpenSyncwarp> open_syncwarps;
  std::vector<unsigned> runnable;
  uint64_t rng = 0;
  std::string fault;
};

struct Worker;

// What a fiber needs to find its lane.
struct FiberSlot {
  Worker* worker = nullptr;
  unsigned index = 0;
  std::unique_ptr<Fiber> fiber;
};

struct Worker {
  std::thread thread;
  std::mutex mutex;
  std::condition_variable wake;
  Block* job = nullptr;   // set by the host, cleared by the worker when done
  Block* block = nullptr;  // running block (worker side)
  unsigned current = 0;    // lane running
  std::vector<Lane> lanes = std::vector<Lane>(kMaxBlockThreads);
  std::vector<FiberSlot> slots = std::vector<FiberSlot>(kMaxBlockThreads);
  // Sync objects ordering this worker's blocks: the threads of its n-th block
  // acquire order_token[n % 2] as they start and release
  // order_token[(n + 1) % 2] as they end, so that the next block is ordered
  // after them, but no thread of the same block is.
  char order_token[2] = {0, 0};
  uint64_t blocks_run = 0;
};

thread_local Worker* t_worker = nullptr;
char g_launch_token = 0;  // host -> threads of a launch
char g_grid_end_token = 0;  // threads of a launch -> host
char g_fault_token = 0;  // the fiber that wrote a fault report -> host
uint64_t g_block_serial = 0;

size_t fiber_stack_bytes() {
  static const size_t bytes = [] {
    const char* env = std::getenv("SPEMBED_EMULATION_STACK_KB");
    const long kb = env != nullptr ? std::atol(env) : 0;
    return static_cast<size_t>(kb > 0 ? kb : 256) * 1024;
  }();
  return bytes;
}

// The scheduling seed (SPEMBED_EMULATION_SEED, or set_seed) and the grids
// run since it was set: with a block's linear index they pick its order. The
// mutex guards both and lets one grid run at a time.
struct Scheduling {
  std::mutex mutex;
  uint64_t seed = 1;
  uint64_t grids = 0;
};

Scheduling& scheduling() {
  static Scheduling* const state = [] {
    auto* s = new Scheduling;  // never destroyed: grids may run from static destructors
    if (const char* env = std::getenv("SPEMBED_EMULATION_SEED")) {
      s->seed = std::strtoull(env, nullptr, 0);
    }
    return s;
  }();
  return *state;
}

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

std::string format(const char* fmt, va_list args) {
  char buf[1024];
  std::vsnprintf(buf, sizeof(buf), fmt, args);
  return buf;
}

std::string format(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char* fmt, ...) {
  va_list args;
  va_start(args, fmt);
  std::string s = format(fmt, args);
  va_end(args);
  return s;
}

std::string site_text(const Site& s) {
  if (s.file == nullptr) return "?";
  const char* slash = std::strrchr(s.file, '/');
  return format("%s:%d", slash != nullptr ? slash + 1 : s.file, s.line);
}

bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || std::strcmp(a.file, b.file) == 0);
}

// Byte copies through the emulator's lane buffers. Not memcpy: under
// ThreadSanitizer its interceptor would check these accesses, which are the
// emulator's, not the kernel's.
void copy_bytes(unsigned char* dst, const unsigned char* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = src[i];
}

Worker& worker() { return *t_worker; }
Block& block() { return *t_worker->block; }
Lane& me() { return t_worker->lanes[t_worker->current]; }

// Records the block's first fault, reported for `lane`.
void record_fault(const Lane& lane, const std::string& what) {
  Block& b = block();
  if (!b.fault.empty()) return;
  const ThreadIndex& i = lane.index;
  b.fault = format("kernel %s, block (%u,%u,%u), thread (%u,%u,%u): ",
                   describe_code(b.launch->kernel).c_str(), i.block_idx.x, i.block_idx.y,
                   i.block_idx.z, i.thread_idx.x, i.thread_idx.y, i.thread_idx.z) +
            what;
  // The report is built here, by the faulting fiber (allocations and copies
  // that ThreadSanitizer intercepts), and read by the host after the block.
  hb_release(&g_fault_token);
}

// Back to the scheduler until made runnable again.
void suspend() { worker().slots[worker().current].fiber->switch_to_scheduler(); }

// After record_fault, in a statement of its own: the scheduler abandons a
// faulted block, and this never returns. The fiber's stack is dropped without
// unwinding, so nothing owning memory (the report's strings) may be alive
// here, or every fault would leak it (LeakSanitizer, in the ASan build).
[[noreturn]] void stop() {
  suspend();
  std::abort();
}

void make_runnable(unsigned index) {
  Lane& l = worker().lanes[index];
  l.state = State::kRunnable;
  block().runnable.push_back(index);
}

unsigned lanes_in_warp(const Block& b, unsigned warp) {
  const unsigned first = warp * 32;
  return b.threads - first < 32 ? b.threads - first : 32;
}

// Lanes of `warp` that have not exited.
unsigned live_mask(unsigned warp) {
  const Block& b = block();
  unsigned m = 0;
  for (unsigned l = 0; l < lanes_in_warp(b, warp); ++l) {
    if (worker().lanes[warp * 32 + l].state != State::kExited) m |= 1u << l;
  }
  return m;
}

std::string wait_text(const Lane& l) {
  if (l.state == State::kAtBarrier) return "__syncthreads() at " + site_text(l.site);
  if (l.state == State::kAtWarp) {
    return format("%s with mask 0x%08x at %s", l.op_name, l.mask, site_text(l.site).c_str());
  }
  return l.state == State::kExited ? "has exited" : "is running";
}

// Completes the block barrier once every live thread waits at it.
void try_complete_barrier() {
  Block& b = block();
  if (b.at_barrier == 0 || b.at_barrier != b.live) return;
  std::vector<Lane>& lanes = worker().lanes;
  const Lane* first = nullptr;
  int count = 0;
  for (unsigned i = 0; i < b.threads; ++i) {
    const Lane& l = lanes[i];
    if (l.state != State::kAtBarrier) continue;
    if (first == nullptr) {
      first = &l;
    } else if (!same_site(first->site, l.site)) {
      record_fault(l, format("divergent barrier: this thread waits at __syncthreads() at %s, "
                             "thread (%u,%u,%u) at __syncthreads() at %s",
                             site_text(l.site).c_str(), first->index.thread_idx.x,
                             first->index.thread_idx.y, first->index.thread_idx.z,
                             site_text(first->site).c_str()));
      stop();
    }
    count += l.predicate != 0;
  }
  for (unsigned i = 0; i < b.threads; ++i) {
    Lane& l = lanes[i];
    if (l.state != State::kAtBarrier) continue;
    l.barrier_result = count;
    make_runnable(i);
  }
  b.barrier->pending = static_cast<int>(b.at_barrier);
  b.barrier = nullptr;
  b.at_barrier = 0;
}

void depart(Rendezvous* r) {
  hb_acquire(r);
  if (--r->pending == 0) delete r;
}

// The collective `lane` waits at, completed if every lane of its mask waits
// at the same one.
void try_complete_collective(unsigned index) {
  std::vector<Lane>& lanes = worker().lanes;
  const Lane& self = lanes[index];
  const unsigned base = self.warp * 32;
  WarpLanes group{};
  group.mask = self.mask;
  for (unsigned l = 0; l < 32; ++l) {
    if (((self.mask >> l) & 1u) == 0) continue;
    Lane& o = lanes[base + l];
    if (o.state != State::kAtWarp || o.op != self.op || o.mask != self.mask) return;
    group.in[l] = o.in;
    group.out[l] = o.out;
  }
  if (self.compute != nullptr) self.compute(group, self.context);
  Rendezvous* r = self.rendezvous;
  if (r != nullptr) {
    r->pending = __builtin_popcount(self.mask);
    auto& open = block().open_syncwarps;
    for (size_t k = 0; k < open.size(); ++k) {
      if (open[k].rendezvous == r) {
        open[k] = open.back();
        open.pop_back();
        break;
      }
    }
  }
  for (unsigned l = 0; l < 32; ++l) {
    if ((self.mask >> l) & 1u) make_runnable(base + l);
  }
}

// A thread has run to the end of the kernel.
void thread_exited() {
  Lane& self = me();
  Block& b = block();
  self.state = State::kExited;
  --b.live;
  // A collective that names this lane can no longer complete.
  const unsigned base = self.warp * 32;
  for (unsigned l = 0; l < lanes_in_warp(b, self.warp); ++l) {
    const Lane& o = worker().lanes[base + l];
    if (o.state == State::kAtWarp && ((o.mask >> self.lane) & 1u)) {
      record_fault(o, format("%s with mask 0x%08x at %s names lane %u, which has exited",
                             o.op_name, o.mask, site_text(o.site).c_str(), self.lane));
      break;
    }
  }
  try_complete_barrier();
  suspend();
}

void fiber_main(void* arg) {
  auto* slot = static_cast<FiberSlot*>(arg);
  slot->fiber->on_first_entry();
  for (;;) {
    Worker& w = *slot->worker;
    const uint64_t n = w.blocks_run;
    hb_acquire(&g_launch_token);
    hb_acquire(&w.order_token[n % 2]);
    w.block->launch->thread_body();
    hb_release(&g_grid_end_token);
    hb_release(&w.order_token[(n + 1) % 2]);
    thread_exited();
  }
}

// Why a deadlocked block cannot go on: the first waiter whose partner waits
// elsewhere.
void diagnose_deadlock() {
  Block& b = block();
  std::vector<Lane>& lanes = worker().lanes;
  for (unsigned i = 0; i < b.threads; ++i) {
    const Lane& l = lanes[i];
    if (l.state != State::kAtWarp) continue;
    for (unsigned k = 0; k < 32; ++k) {
      if (((l.mask >> k) & 1u) == 0) continue;
      const Lane& o = lanes[l.warp * 32 + k];
      if (o.state == State::kAtWarp && o.op == l.op && o.mask == l.mask) continue;
      record_fault(l, format("deadlock: %s waits for lane %u, which waits at %s",
                             wait_text(l).c_str(), k, wait_text(o).c_str()));
      return;
    }
  }
  for (unsigned i = 0; i < b.threads; ++i) {
    const Lane& l = lanes[i];
    if (l.state == State::kAtBarrier) {
      for (unsigned k = 0; k < b.threads; ++k) {
        const Lane& o = lanes[k];
        if (o.state == State::kAtWarp) {
          record_fault(l, format("deadlock: barrier %s is not reached by thread (%u,%u,%u), "
                                 "which waits at %s",
                                 wait_text(l).c_str(), o.index.thread_idx.x, o.index.thread_idx.y,
                                 o.index.thread_idx.z, wait_text(o).c_str()));
          return;
        }
      }
    }
  }
  record_fault(lanes[0], "deadlock: no thread can proceed");
}

// Runs one block to the end on the calling worker thread.
void run_block(Worker& w, Block& b) {
  w.block = &b;
  const dim3 bd = b.launch->block;
  for (unsigned i = 0; i < b.threads; ++i) {
    Lane& l = w.lanes[i];
    l.index.thread_idx = make_uint3(i % bd.x, (i / bd.x) % bd.y, i / (bd.x * bd.y));
    l.index.block_idx = b.block_idx;
    l.index.block_dim = bd;
    l.index.grid_dim = b.launch->grid;
    l.linear = i;
    l.warp = i / 32;
    l.lane = i % 32;
    l.state = State::kRunnable;
    l.rendezvous = nullptr;
    FiberSlot& slot = w.slots[i];
    if (!slot.fiber) {
      slot.worker = &w;
      slot.index = i;
      slot.fiber = std::make_unique<Fiber>(&fiber_main, &slot, fiber_stack_bytes());
    }
  }
  b.live = b.threads;
  b.runnable.clear();
  for (unsigned i = 0; i < b.threads; ++i) b.runnable.push_back(i);
  // Room for every open __syncwarp (a waiting thread is in one at most), so
  // that no fiber reallocates the list: ThreadSanitizer intercepts the
  // allocation and the copy, and would take one fiber's reallocation of
  // another's list for a race.
  b.open_syncwarps.reserve(b.threads);

  while (b.fault.empty() && !b.runnable.empty()) {
    const size_t pick = splitmix64(b.rng) % b.runnable.size();
    const unsigned i = b.runnable[pick];
    b.runnable[pick] = b.runnable.back();
    b.runnable.pop_back();
    w.current = i;
    t_current_index = &w.lanes[i].index;
    w.slots[i].fiber->resume();
  }
  t_current_index = nullptr;
  if (b.fault.empty() && b.live > 0) diagnose_deadlock();
  if (!b.fault.empty()) {
    // Fibers stopped mid-kernel cannot be resumed for another block. What
    // they did is released to the host as an exited thread's is (they read
    // the launch's arguments, on the host's stack).
    for (unsigned i = 0; i < b.threads; ++i) {
      if (w.lanes[i].state == State::kExited) continue;
      w.slots[i].fiber->release_on_behalf(&g_grid_end_token);
      w.slots[i].fiber.reset();
    }
    // Allocated by the fibers that arrived first, which released them.
    for (const OpenSyncwarp& o : b.open_syncwarps) {
      hb_acquire(o.rendezvous);
      delete o.rendezvous;
    }
    if (b.barrier != nullptr) {
      hb_acquire(b.barrier);
      delete b.barrier;
    }
  }
  ++w.blocks_run;
  w.block = nullptr;
}

void worker_loop(Worker* w) {
  t_worker = w;
  for (;;) {
    Block* job;
    {
      std::unique_lock<std::mutex> lock(w->mutex);
      w->wake.wait(lock, [w] { return w->job != nullptr; });
      job = w->job;
    }
    run_block(*w, *job);
    {
      std::lock_guard<std::mutex> lock(w->mutex);
      w->job = nullptr;
    }
    w->wake.notify_all();
  }
}

Worker& get_worker(int k) {
  // Never destroyed: the threads wait on them until the process exits.
  static Worker* workers = [] {
    auto* ws = new Worker[kWorkers];
    for (int i = 0; i < kWorkers; ++i) {
      ws[i].thread = std::thread(worker_loop, &ws[i]);
      ws[i].thread.detach();
    }
    return ws;
  }();
  return workers[k];
}

void run_on_worker(Worker& w, Block& b) {
  {
    std::lock_guard<std::mutex> lock(w.mutex);
    w.job = &b;
  }
  w.wake.notify_all();
  std::unique_lock<std::mutex> lock(w.mutex);
  w.wake.wait(lock, [&w] { return w.job == nullptr; });
}

}  // namespace

std::string describe_code(const void* address) {
  Dl_info info{};
  if (dladdr(address, &info) == 0) return format("%p", address);
  std::string name;
  if (info.dli_sname != nullptr && info.dli_saddr == address) {
    name = info.dli_sname;
  } else if (info.dli_fname != nullptr) {
    // Kernels have internal linkage: ask addr2line for the symbol table's name.
    const auto offset = reinterpret_cast<uintptr_t>(address) -
                        reinterpret_cast<uintptr_t>(info.dli_fbase);
    const std::string cmd = format("addr2line -f -e '%s' 0x%lx 2>/dev/null", info.dli_fname,
                                   static_cast<unsigned long>(offset));
    if (FILE* p = popen(cmd.c_str(), "r")) {
      char buf[4096];
      if (std::fgets(buf, sizeof(buf), p) != nullptr) {
        name = buf;
        while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) name.pop_back();
      }
      pclose(p);
    }
  }
  if (name.empty() || name == "??") return format("%p", address);
  int status = 0;
  char* demangled = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  if (status == 0 && demangled != nullptr) name = demangled;
  std::free(demangled);
  return name;
}

std::string run_grid(const GridLaunch& launch) {
  Scheduling& sched = scheduling();
  std::lock_guard<std::mutex> guard(sched.mutex);
  const uint64_t launch_count = ++sched.grids;
  const uint64_t seed = sched.seed;
  const dim3 g = launch.grid;
  const unsigned threads = launch.block.x * launch.block.y * launch.block.z;
  std::vector<void*> smem_buffers;
  std::string fault;
  uint64_t linear = 0;
  for (unsigned z = 0; z < g.z && fault.empty(); ++z) {
    for (unsigned y = 0; y < g.y && fault.empty(); ++y) {
      for (unsigned x = 0; x < g.x && fault.empty(); ++x, ++linear) {
        Block b;
        b.launch = &launch;
        b.block_idx = make_uint3(x, y, z);
        b.threads = threads;
        b.serial = ++g_block_serial;
        uint64_t s = seed ^ (launch_count * 0x632be59bd9b4e019ull) ^ (linear * 0x8cb92ba72f3d8dd7ull);
        b.rng = splitmix64(s);
        if (launch.dynamic_smem_bytes > 0) {
          // Exactly the launch's bytes (AddressSanitizer catches the byte past
          // the end), freed after the grid so no worker frees memory its
          // fibers touched.
          void* p = nullptr;
          if (posix_memalign(&p, 128, launch.dynamic_smem_bytes) != 0) std::abort();
          std::memset(p, kPoisonByte, launch.dynamic_smem_bytes);
          smem_buffers.push_back(p);
          b.smem = p;
          b.smem_bytes = launch.dynamic_smem_bytes;
        }
        hb_release(&g_launch_token);
        run_on_worker(get_worker(static_cast<int>(linear % kWorkers)), b);
        hb_acquire(&g_fault_token);
        fault = b.fault;
      }
    }
  }
  hb_acquire(&g_grid_end_token);
  for (void* p : smem_buffers) std::free(p);
  return fault;
}

void set_seed(uint64_t seed) {
  Scheduling& sched = scheduling();
  std::lock_guard<std::mutex> guard(sched.mutex);
  sched.seed = seed;
  sched.grids = 0;
}

// ---- Device-side entry points (spembed_emulator/device.h) -------------------

void* dynamic_shared_memory() { return block().smem; }
size_t dynamic_shared_memory_bytes() { return block().smem_bytes; }

uint32_t shared_window_offset(const void* p) {
  const Block& b = block();
  const auto* c = static_cast<const unsigned char*>(p);
  const auto* base = static_cast<const unsigned char*>(b.smem);
  if (base == nullptr || c < base || c > base + b.smem_bytes) {
    record_fault(me(), format("__cvta_generic_to_shared(%p): not in the block's dynamic shared "
                              "memory [%p, +%zu)", p, b.smem, b.smem_bytes));
    stop();
  }
  return static_cast<uint32_t>(c - base);
}

void* shared_window_pointer(uint32_t offset, size_t bytes) {
  const Block& b = block();
  if (b.smem == nullptr || offset > b.smem_bytes || bytes > b.smem_bytes - offset) {
    record_fault(me(), format("shared memory access of %zu bytes at offset %u: outside the "
                              "block's %zu bytes of dynamic shared memory",
                              bytes, offset, b.smem_bytes));
    stop();
  }
  return static_cast<unsigned char*>(b.smem) + offset;
}

int block_barrier(Site site, int predicate, int reduce) {
  Lane& self = me();
  Block& b = block();
  self.state = State::kAtBarrier;
  self.site = site;
  self.predicate = predicate;
  if (b.barrier == nullptr) b.barrier = new Rendezvous;
  Rendezvous* r = b.barrier;
  hb_release(r);
  ++b.at_barrier;
  try_complete_barrier();
  suspend();
  depart(r);
  const int count = self.barrier_result;
  switch (reduce) {
    case 1:
      return count;
    case 2:
      return count == static_cast<int>(b.live) ? 1 : 0;
    case 3:
      return count > 0 ? 1 : 0;
    default:
      return 0;
  }
}

void warp_collective(Site site, int id, const char* name, unsigned mask, const void* in,
                     size_t in_bytes, void* out, size_t out_bytes, WarpCompute compute,
                     const void* context) {
  Lane& self = me();
  Block& b = block();
  if (in_bytes > kMaxCollectiveBytes || out_bytes > kMaxCollectiveBytes) std::abort();
  if (((mask >> self.lane) & 1u) == 0) {
    record_fault(self, format("%s at %s with mask 0x%08x, which does not include the calling "
                              "lane %u", name, site_text(site).c_str(), mask, self.lane));
    stop();
  }
  const unsigned base = self.warp * 32;
  for (unsigned l = 0; l < 32; ++l) {
    if (((mask >> l) & 1u) == 0) continue;
    if (l >= lanes_in_warp(b, self.warp) || worker().lanes[base + l].state == State::kExited) {
      record_fault(self, format("%s at %s with mask 0x%08x names lane %u, which has exited",
                                name, site_text(site).c_str(), mask, l));
      stop();
    }
  }
  copy_bytes(self.in, static_cast<const unsigned char*>(in), in_bytes);
  self.state = State::kAtWarp;
  self.site = site;
  self.op = id;
  self.op_name = name;
  self.mask = mask;
  self.compute = compute;
  self.context = context;
  self.rendezvous = nullptr;
  if (id == kCollectiveSyncwarp) {
    Rendezvous* r = nullptr;
    for (const OpenSyncwarp& o : b.open_syncwarps) {
      if (o.warp == self.warp && o.mask == mask) r = o.rendezvous;
    }
    if (r == nullptr) {
      r = new Rendezvous;
      b.open_syncwarps.push_back({self.warp, mask, r});
    }
    self.rendezvous = r;
    hb_release(r);
  }
  try_complete_collective(self.linear);
  suspend();
  copy_bytes(static_cast<unsigned char*>(out), self.out, out_bytes);
  if (self.rendezvous != nullptr) depart(self.rendezvous);
}

namespace {

struct ShuffleIn {
  uint64_t value;
  int lane_arg;
  int width;
};

void shuffle_compute(WarpLanes& lanes, const void* context) {
  const auto mode = static_cast<ShuffleMode>(reinterpret_cast<uintptr_t>(context));
  for (unsigned l = 0; l < 32; ++l) {
    if (lanes.in[l] == nullptr) continue;
    ShuffleIn in;
    copy_bytes(reinterpret_cast<unsigned char*>(&in), lanes.in[l], sizeof(in));
    const unsigned width = static_cast<unsigned>(in.width);
    const unsigned first = l & ~(width - 1);
    const unsigned last = first + width - 1;
    long src = l;
    switch (mode) {
      case ShuffleMode::kIndex:
        src = first + (static_cast<unsigned>(in.lane_arg) & (width - 1));
        break;
      case ShuffleMode::kUp:
        src = static_cast<long>(l) - in.lane_arg;
        if (src < static_cast<long>(first)) src = l;
        break;
      case ShuffleMode::kDown:
        src = static_cast<long>(l) + in.lane_arg;
        if (src > static_cast<long>(last)) src = l;
        break;
      case ShuffleMode::kXor:
        src = static_cast<long>(l ^ static_cast<unsigned>(in.lane_arg));
        if (src > static_cast<long>(last)) src = l;
        break;
    }
    // A source lane outside the mask gives an undefined value: poison.
    uint64_t v = ~0ull;
    if (src >= 0 && src < 32 && lanes.in[src] != nullptr) {
      ShuffleIn from;
      copy_bytes(reinterpret_cast<unsigned char*>(&from), lanes.in[src], sizeof(from));
      v = from.value;
    }
    copy_bytes(lanes.out[l], reinterpret_cast<const unsigned char*>(&v), sizeof(v));
  }
}

void vote_compute(WarpLanes& lanes, const void* context) {
  const int id = static_cast<int>(reinterpret_cast<uintptr_t>(context));
  unsigned ballot = 0;
  for (unsigned l = 0; l < 32; ++l) {
    if (lanes.in[l] == nullptr) continue;
    int p;
    copy_bytes(reinterpret_cast<unsigned char*>(&p), lanes.in[l], sizeof(p));
    if (p != 0) ballot |= 1u << l;
  }
  unsigned result = ballot;
  if (id == kCollectiveAny) result = ballot != 0;
  if (id == kCollectiveAll) result = ballot == lanes.mask;
  for (unsigned l = 0; l < 32; ++l) {
    if (lanes.out[l] != nullptr) {
      copy_bytes(lanes.out[l], reinterpret_cast<const unsigned char*>(&result), sizeof(result));
    }
  }
}

}  // namespace

uint64_t warp_shuffle(Site site, unsigned mask, uint64_t value, ShuffleMode mode, int lane_arg,
                      int width) {
  static const char* const names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                      "__shfl_xor_sync"};
  const int m = static_cast<int>(mode);
  if (width <= 0 || width > 32 || (width & (width - 1)) != 0) {
    record_fault(me(), format("%s at %s with width %d (must be a power of two up to 32)",
                              names[m], site_text(site).c_str(), width));
    stop();
  }
  const ShuffleIn in{value, lane_arg, width};
  uint64_t out = 0;
  warp_collective(site, kCollectiveShuffle + m, names[m], mask, &in, sizeof(in), &out, sizeof(out),
                  &shuffle_compute, reinterpret_cast<const void*>(static_cast<uintptr_t>(m)));
  return out;
}

unsigned warp_vote(Site site, int id, unsigned mask, int predicate) {
  const char* name = id == kCollectiveBallot ? "__ballot_sync"
                     : id == kCollectiveAny  ? "__any_sync"
                                             : "__all_sync";
  unsigned out = 0;
  warp_collective(site, id, name, mask, &predicate, sizeof(predicate), &out, sizeof(out),
                  &vote_compute, reinterpret_cast<const void*>(static_cast<uintptr_t>(id)));
  return out;
}

unsigned live_lanes_of_warp() { return live_mask(me().warp); }
unsigned lane_id() { return me().lane; }
unsigned linear_thread_index() { return me().linear; }
uint64_t block_serial() { return block().serial; }

void device_fault(const char* fmt, ...) {
  {
    va_list args;
    va_start(args, fmt);
    const std::string what = format(fmt, args);
    va_end(args);
    record_fault(me(), what);
  }
  stop();
}

}  // namespace spembed::emu
