#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>

#if defined(SPEMBED_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if defined(SPEMBED_EMU_TSAN)
#include <sanitizer/tsan_interface.h>
#endif

#if !defined(__x86_64__)
#error "the emulator's fiber switch is written for x86-64"
#endif

// switch_stack(save, next): pushes the System V callee-saved registers, stores
// the stack pointer in *save, loads `next` and pops the registers saved there.
// A new fiber's stack is laid out so that the pops load its entry point and
// argument, and `ret` lands in fiber_trampoline.
extern "C" void spembed_emu_switch_stack(void** save, void* next);
extern "C" void spembed_emu_fiber_trampoline();
asm(R"(
.text
.globl spembed_emu_switch_stack
.type spembed_emu_switch_stack, @function
spembed_emu_switch_stack:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size spembed_emu_switch_stack, .-spembed_emu_switch_stack

.globl spembed_emu_fiber_trampoline
.type spembed_emu_fiber_trampoline, @function
spembed_emu_fiber_trampoline:
  movq %r13, %rdi
  callq *%r12
  ud2
.size spembed_emu_fiber_trampoline, .-spembed_emu_fiber_trampoline
)");

namespace spembed::emu {

Fiber::Fiber(Entry entry, void* arg, size_t stack_bytes) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  stack_bytes_ = (stack_bytes + page - 1) / page * page;
  mapped_bytes_ = stack_bytes_ + page;
  stack_ = mmap(nullptr, mapped_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS |
                MAP_NORESERVE, -1, 0);
  if (stack_ == MAP_FAILED) {
    std::fprintf(stderr, "spembed emulator: cannot map a %zu-byte fiber stack\n", mapped_bytes_);
    std::abort();
  }
  // The lowest page stays inaccessible: an overflow faults instead of
  // corrupting the neighbouring stack.
  mprotect(stack_, page, PROT_NONE);
  stack_bottom_ = static_cast<char*>(stack_) + page;

  // Initial frame, from sp_ upwards: r15 r14 r13 r12 rbx rbp, return address,
  // padding. After the pops and `ret`, rsp is 16-byte aligned at the
  // trampoline's call, as the ABI requires.
  auto top = reinterpret_cast<uintptr_t>(stack_bottom_ + stack_bytes_) & ~uintptr_t{15};
  auto* frame = reinterpret_cast<void**>(top - 9 * sizeof(void*));
  frame[0] = nullptr;                                  // r15
  frame[1] = nullptr;                                  // r14
  frame[2] = arg;                                      // r13: the argument
  frame[3] = reinterpret_cast<void*>(entry);           // r12: the entry point
  frame[4] = nullptr;                                  // rbx
  frame[5] = nullptr;                                  // rbp
  frame[6] = reinterpret_cast<void*>(&spembed_emu_fiber_trampoline);
  frame[7] = nullptr;
  frame[8] = nullptr;
  sp_ = frame;
#if defined(SPEMBED_EMU_TSAN)
  tsan_fiber_ = __tsan_create_fiber(0);
#endif
}

Fiber::~Fiber() {
#if defined(SPEMBED_EMU_TSAN)
  if (tsan_fiber_ != nullptr) __tsan_destroy_fiber(tsan_fiber_);
#endif
#if defined(SPEMBED_EMU_ASAN)
  // A fiber abandoned mid-kernel leaves poisoned stack redzones behind.
  __asan_unpoison_memory_region(stack_bottom_, stack_bytes_);
#endif
  munmap(stack_, mapped_bytes_);
}

void Fiber::resume() {
#if defined(SPEMBED_EMU_TSAN)
  tsan_scheduler_ = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(tsan_fiber_, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(SPEMBED_EMU_ASAN)
  __sanitizer_start_switch_fiber(&scheduler_fake_stack_, stack_bottom_, stack_bytes_);
#endif
  spembed_emu_switch_stack(&scheduler_sp_, sp_);
#if defined(SPEMBED_EMU_ASAN)
  __sanitizer_finish_switch_fiber(scheduler_fake_stack_, nullptr, nullptr);
#endif
}

void Fiber::on_first_entry() {
  started_ = true;
#if defined(SPEMBED_EMU_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &scheduler_stack_bottom_, &scheduler_stack_size_);
#endif
}

void Fiber::release_on_behalf(void* sync) {
#if defined(SPEMBED_EMU_TSAN)
  void* scheduler = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(tsan_fiber_, __tsan_switch_to_fiber_no_sync);
  __tsan_release(sync);
  __tsan_switch_to_fiber(scheduler, __tsan_switch_to_fiber_no_sync);
#else
  (void)sync;
#endif
}

void Fiber::switch_to_scheduler() {
#if defined(SPEMBED_EMU_TSAN)
  __tsan_switch_to_fiber(tsan_scheduler_, __tsan_switch_to_fiber_no_sync);
#endif
#if defined(SPEMBED_EMU_ASAN)
  __sanitizer_start_switch_fiber(&fake_stack_, scheduler_stack_bottom_, scheduler_stack_size_);
#endif
  spembed_emu_switch_stack(&sp_, scheduler_sp_);
#if defined(SPEMBED_EMU_ASAN)
  __sanitizer_finish_switch_fiber(fake_stack_, &scheduler_stack_bottom_, &scheduler_stack_size_);
#endif
}

}  // namespace spembed::emu
