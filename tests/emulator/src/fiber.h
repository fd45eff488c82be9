// Fibers for the emulator: one per CUDA thread of a block, all of a block's
// fibers on one OS thread. A switch is a hand-written save / restore of the
// callee-saved registers (ucontext's swapcontext makes a signal-mask system
// call on every switch, ~300 ns here; a warp collective costs 32 switches and
// an attention tile thousands of collectives). The sanitizers are told about
// every switch: AddressSanitizer through __sanitizer_start/finish_switch_fiber,
// ThreadSanitizer through its fiber API with the no-sync flag, so that a switch
// orders nothing and only the emulated barriers create happens-before edges.
#pragma once

#include <cstddef>

namespace spembed::emu {

class Fiber {
 public:
  using Entry = void (*)(void* arg);
  // A fiber with its own stack of `stack_bytes` (plus a guard page) that runs
  // entry(arg) when first switched to. `entry` must never return.
  Fiber(Entry entry, void* arg, size_t stack_bytes);
  ~Fiber();
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;

  // From the OS thread's own context (the scheduler) into this fiber; returns
  // when the fiber calls switch_to_scheduler().
  void resume();
  // From inside this fiber back to the scheduler that resumed it.
  void switch_to_scheduler();
  // Forgets a fiber suspended in the middle of its entry (a kernel that
  // faulted): its stack is released without unwinding.
  bool started() const { return started_; }

  // Called once by entry() when the fiber first runs (sanitizer bookkeeping).
  void on_first_entry();

  // ThreadSanitizer: releases the sync object `sync` on behalf of this fiber,
  // suspended, from the scheduler that resumes it (for a fiber abandoned
  // mid-kernel, whose work the host must still see as done). A no-op in the
  // other builds.
  void release_on_behalf(void* sync);

 private:
  void* stack_ = nullptr;       // mapping, guard page included
  size_t mapped_bytes_ = 0;
  char* stack_bottom_ = nullptr;  // lowest usable address
  size_t stack_bytes_ = 0;
  void* sp_ = nullptr;            // saved stack pointer while suspended
  void* scheduler_sp_ = nullptr;  // the scheduler's, while this fiber runs
  bool started_ = false;
  // AddressSanitizer: the fake stack of whichever side switched away, and the
  // scheduler's stack bounds (learnt on the first switch in).
  void* fake_stack_ = nullptr;
  void* scheduler_fake_stack_ = nullptr;
  const void* scheduler_stack_bottom_ = nullptr;
  size_t scheduler_stack_size_ = 0;
  // ThreadSanitizer's fiber for this one and the scheduler's.
  void* tsan_fiber_ = nullptr;
  void* tsan_scheduler_ = nullptr;
};

}  // namespace spembed::emu
