// The device side of CUDA C++ for the emulation build. Force-included (g++
// -include) into every .cu file, which g++ then compiles as host C++: the
// kernels run as written, one fiber per CUDA thread (tests/emulator/src).
//
// What is here: the execution-space keywords, threadIdx & co, static and
// dynamic shared memory, barriers and warp collectives (rendezvous points of
// the emulator's scheduler, checked as compute-sanitizer's synccheck does),
// atomics (GCC __atomic builtins, so ThreadSanitizer sees them as atomics),
// and the intrinsics the kernels use. Where an emulated intrinsic differs
// from the hardware it says so (docs/emulation.md lists them all).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "spembed_emulator/runtime.h"

// ---- Keywords ---------------------------------------------------------------
// __global__, __device__, __host__, __grid_constant__ and __forceinline__ come
// from the toolkit's host_defines.h, empty or as GCC attributes for g++.
// Static __shared__ variables are per OS thread, and each block runs all its
// fibers on one OS thread (the scheduler runs blocks one after another, on
// two worker threads in turn): that is the sharing of a block. Unlike
// hardware they keep the previous block's values, and AddressSanitizer puts
// no redzones around them; dynamic shared memory (below) has both checks.
#undef __shared__
#define __shared__ static thread_local
#define __launch_bounds__(...)

static constexpr int warpSize = 32;

namespace spembed::emu {

// What threadIdx & co read: the running fiber's indices.
struct ThreadIndex {
  uint3 thread_idx;
  uint3 block_idx;
  dim3 block_dim;
  dim3 grid_dim;
};
extern thread_local const ThreadIndex* t_current_index;

// The running block's dynamic shared memory (exactly the launch's bytes,
// filled with kPoisonByte) and its size.
void* dynamic_shared_memory();
size_t dynamic_shared_memory_bytes();
// Shared-window addresses (__cvta_generic_to_shared): offsets into the
// block's dynamic shared memory. A pointer outside it is a fault.
uint32_t shared_window_offset(const void* p);
void* shared_window_pointer(uint32_t offset, size_t bytes);

// Where a barrier or collective is in the source: a barrier is matched by
// its site, so that threads waiting at two different __syncthreads() are a
// divergence, as compute-sanitizer's synccheck reports it.
struct Site {
  const char* file;
  int line;
};

// Barrier of the whole block; `reduce` is 0 (plain), 1 (count), 2 (and),
// 3 (or) of `predicate` over the block's live threads.
int block_barrier(Site site, int predicate, int reduce);

// A warp collective: every lane named in `mask` calls it with the same `op`
// and mask; once all have arrived, compute(...) runs once over the lanes'
// inputs and writes each lane's output. Inputs and outputs are copied
// through the emulator's own buffers (at most kMaxCollectiveBytes each).
constexpr size_t kMaxCollectiveBytes = 128;
struct WarpLanes {
  unsigned mask;                          // lanes taking part
  const unsigned char* in[32];            // each lane's input (null if not in mask)
  unsigned char* out[32];                 // each lane's output
};
using WarpCompute = void (*)(WarpLanes& lanes, const void* context);
// Named collectives the emulator itself implements; others pass their own id
// (a distinct integer from kFirstUserCollective up) and compute function.
enum CollectiveId : int {
  kCollectiveSyncwarp = 1,
  kCollectiveShuffle,  // + ShuffleMode: one id per shuffle instruction
  kCollectiveBallot = kCollectiveShuffle + 4,
  kCollectiveAny,
  kCollectiveAll,
  kFirstUserCollective = 64,
};
void warp_collective(Site site, int id, const char* name, unsigned mask, const void* in,
                     size_t in_bytes, void* out, size_t out_bytes, WarpCompute compute,
                     const void* context);
// Shuffle of a 64-bit value (4-byte types use the low half).
enum class ShuffleMode : int { kIndex, kUp, kDown, kXor };
uint64_t warp_shuffle(Site site, unsigned mask, uint64_t value, ShuffleMode mode, int lane_arg,
                      int width);
unsigned warp_vote(Site site, int id, unsigned mask, int predicate);
// Lanes of the caller's warp that have not exited.
unsigned live_lanes_of_warp();
// Lane of the running thread within its warp, and its linear index in the block.
unsigned lane_id();
unsigned linear_thread_index();
// A number that differs for every block run: per-thread state kept by
// emulated instructions (cp.async groups) is stale when it does not match.
uint64_t block_serial();

// Ends the running kernel with a fault report naming the thread (printf
// format); never returns.
[[noreturn]] void device_fault(const char* format, ...) __attribute__((format(printf, 1, 2)));

template <typename T>
inline uint64_t to_u64_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "shuffle of up to 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
inline T from_u64_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace spembed::emu

#define threadIdx (::spembed::emu::t_current_index->thread_idx)
#define blockIdx (::spembed::emu::t_current_index->block_idx)
#define blockDim (::spembed::emu::t_current_index->block_dim)
#define gridDim (::spembed::emu::t_current_index->grid_dim)

// ---- Barriers and warp collectives -----------------------------------------
// Macros, so that each call carries its source line (the barrier's identity).

#define SPEMBED_EMU_SITE (::spembed::emu::Site{__FILE__, __LINE__})
#define __syncthreads() ((void)::spembed::emu::block_barrier(SPEMBED_EMU_SITE, 0, 0))
#define __syncthreads_count(p) ::spembed::emu::block_barrier(SPEMBED_EMU_SITE, (p), 1)
#define __syncthreads_and(p) ::spembed::emu::block_barrier(SPEMBED_EMU_SITE, (p), 2)
#define __syncthreads_or(p) ::spembed::emu::block_barrier(SPEMBED_EMU_SITE, (p), 3)
#define __syncwarp(...) ::spembed::emu::syncwarp(SPEMBED_EMU_SITE, ##__VA_ARGS__)
#define __shfl_sync(...) \
  ::spembed::emu::shuffle(SPEMBED_EMU_SITE, ::spembed::emu::ShuffleMode::kIndex, __VA_ARGS__)
#define __shfl_up_sync(...) \
  ::spembed::emu::shuffle(SPEMBED_EMU_SITE, ::spembed::emu::ShuffleMode::kUp, __VA_ARGS__)
#define __shfl_down_sync(...) \
  ::spembed::emu::shuffle(SPEMBED_EMU_SITE, ::spembed::emu::ShuffleMode::kDown, __VA_ARGS__)
#define __shfl_xor_sync(...) \
  ::spembed::emu::shuffle(SPEMBED_EMU_SITE, ::spembed::emu::ShuffleMode::kXor, __VA_ARGS__)
#define __ballot_sync(mask, p) \
  ::spembed::emu::warp_vote(SPEMBED_EMU_SITE, ::spembed::emu::kCollectiveBallot, (mask), (p))
#define __any_sync(mask, p)                                                          \
  static_cast<int>(::spembed::emu::warp_vote(SPEMBED_EMU_SITE, ::spembed::emu::kCollectiveAny, \
                                             (mask), (p)))
#define __all_sync(mask, p)                                                          \
  static_cast<int>(::spembed::emu::warp_vote(SPEMBED_EMU_SITE, ::spembed::emu::kCollectiveAll, \
                                             (mask), (p)))

namespace spembed::emu {
inline void syncwarp(Site site, unsigned mask = 0xffffffffu) {
  warp_collective(site, kCollectiveSyncwarp, "__syncwarp", mask, nullptr, 0, nullptr, 0, nullptr,
                  nullptr);
}
template <typename T, typename L>
inline T shuffle(Site site, ShuffleMode mode, unsigned mask, T var, L lane_arg,
                 int width = warpSize) {
  return from_u64_bits<T>(
      warp_shuffle(site, mask, to_u64_bits(var), mode, static_cast<int>(lane_arg), width));
}
}  // namespace spembed::emu

// Hardware returns the lanes converged with the caller, which is up to the
// compiler; the emulator returns every lane that has not exited.
inline unsigned __activemask() { return ::spembed::emu::live_lanes_of_warp(); }

inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- Host-side templates nvcc provides for kernels ---------------------------

template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* kernel, cudaFuncAttribute attr, int value) {
  return ::cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), attr, value);
}
template <typename T>
inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, T* kernel,
                                                                 int block_size,
                                                                 size_t dynamic_smem) {
  return ::cudaOccupancyMaxActiveBlocksPerMultiprocessor(
      blocks, reinterpret_cast<const void*>(kernel), block_size, dynamic_smem);
}

// ---- Atomics: relaxed, as the GPU's are -------------------------------------

namespace spembed::emu {
template <typename T, typename F>
inline T atomic_update(T* address, F update) {
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  static_assert(sizeof(T) == sizeof(Bits), "4- or 8-byte atomics");
  auto* word = reinterpret_cast<Bits*>(address);
  Bits expected = __atomic_load_n(word, __ATOMIC_RELAXED);
  for (;;) {
    const T old = from_u64_bits<T>(expected);
    const T next = update(old);
    Bits desired;
    std::memcpy(&desired, &next, sizeof(T));
    if (__atomic_compare_exchange_n(word, &expected, desired, false, __ATOMIC_RELAXED,
                                    __ATOMIC_RELAXED)) {
      return old;
    }
  }
}
}  // namespace spembed::emu

template <typename T>
inline T atomicAdd(T* address, T value) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    return ::spembed::emu::atomic_update(address, [value](T old) { return old + value; });
  }
}
template <typename T>
inline T atomicSub(T* address, T value) {
  return __atomic_fetch_sub(address, value, __ATOMIC_RELAXED);
}
template <typename T>
inline T atomicMin(T* address, T value) {
  return ::spembed::emu::atomic_update(address, [value](T old) { return value < old ? value : old; });
}
template <typename T>
inline T atomicMax(T* address, T value) {
  return ::spembed::emu::atomic_update(address, [value](T old) { return value > old ? value : old; });
}
template <typename T>
inline T atomicExch(T* address, T value) {
  return ::spembed::emu::atomic_update(address, [value](T) { return value; });
}
template <typename T>
inline T atomicCAS(T* address, T compare, T value) {
  __atomic_compare_exchange_n(address, &compare, value, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;
}
template <typename T>
inline T atomicOr(T* address, T value) {
  return __atomic_fetch_or(address, value, __ATOMIC_RELAXED);
}
template <typename T>
inline T atomicAnd(T* address, T value) {
  return __atomic_fetch_and(address, value, __ATOMIC_RELAXED);
}

// ---- Memory intrinsics --------------------------------------------------------

template <typename T>
inline T __ldg(const T* p) {
  return *p;
}
template <typename T>
inline void __stwb(T* p, T v) {
  *p = v;
}
inline size_t __cvta_generic_to_shared(const void* p) {
  return ::spembed::emu::shared_window_offset(p);
}
inline size_t __cvta_generic_to_global(const void* p) { return reinterpret_cast<size_t>(p); }

// ---- Bits and numbers -------------------------------------------------------
// With -ffp-contract=off (set for the emulated sources) a*b+c is two
// roundings, as __fmul_rn / __fadd_rn ask; nvcc fuses plain a*b+c by default,
// so a kernel expression written without the _rn intrinsics can differ by an
// ulp between emulation and hardware.

inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) {
  return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x));
}
inline unsigned __brev(unsigned x) {
  unsigned r = 0;
  for (int i = 0; i < 32; ++i) r |= ((x >> i) & 1u) << (31 - i);
  return r;
}

inline float __uint_as_float(unsigned x) { return ::spembed::emu::from_u64_bits<float>(x); }
inline unsigned __float_as_uint(float x) {
  return static_cast<unsigned>(::spembed::emu::to_u64_bits(x));
}
inline float __int_as_float(int x) { return ::spembed::emu::from_u64_bits<float>(static_cast<unsigned>(x)); }
inline int __float_as_int(float x) { return static_cast<int>(::spembed::emu::to_u64_bits(x)); }
inline double __longlong_as_double(long long x) {
  return ::spembed::emu::from_u64_bits<double>(static_cast<uint64_t>(x));
}
inline long long __double_as_longlong(double x) {
  return static_cast<long long>(::spembed::emu::to_u64_bits(x));
}

inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dsub_rn(double a, double b) { return a - b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __ddiv_rn(double a, double b) { return a / b; }
inline double __dsqrt_rn(double a) { return std::sqrt(a); }
// Fast-math intrinsics: the hardware's are approximations (ex2.approx,
// lg2.approx: ~2 ulp); the emulator uses the correctly-rounded-ish libm ones.
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// CUDA's min / max overloads for device code.
#define SPEMBED_EMU_MINMAX(T)                      \
  inline T min(T a, T b) { return b < a ? b : a; } \
  inline T max(T a, T b) { return a < b ? b : a; }
SPEMBED_EMU_MINMAX(int)
SPEMBED_EMU_MINMAX(unsigned)
SPEMBED_EMU_MINMAX(long)
SPEMBED_EMU_MINMAX(unsigned long)
SPEMBED_EMU_MINMAX(long long)
SPEMBED_EMU_MINMAX(unsigned long long)
SPEMBED_EMU_MINMAX(float)
SPEMBED_EMU_MINMAX(double)
#undef SPEMBED_EMU_MINMAX
