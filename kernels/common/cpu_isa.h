// Element types and instruction-set dispatch of the CPU implementation.
//
// The hot loops of a CPU source are written once, in a file included once per
// instruction set, each time inside `#pragma GCC target(...)` and a namespace
// of its own (cpu_simd.h gives them vectors of the target's width); the entry
// point picks one copy at run time with cpu_isa(). The arithmetic is the same
// in every copy, so which one runs never changes a result.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/common/host_half.h"
#include "kernels/common/types.h"

// For the inner loops' helpers that take accumulators by reference: inlined,
// the accumulators stay in registers instead of going through memory per row.
#define SPEMBED_CPU_INLINE __attribute__((always_inline)) inline

namespace spembed::detail {

// 16-bit table elements, as distinct types so templates can tell them apart.
struct f16_t {
  uint16_t bits;
};
struct bf16_t {
  uint16_t bits;
};

// The accumulator of an element type: double for double, else float.
template <typename T>
using acc_t = std::conditional_t<std::is_same_v<T, double>, double, float>;

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(f16_t v) { return half_to_float(v.bits); }
inline float to_acc(bf16_t v) { return bf16_to_float(v.bits); }

// An accumulator rounded to Out (nearest even).
template <typename Out, typename A>
inline Out from_acc(A v) {
  if constexpr (std::is_same_v<Out, f16_t>) {
    return f16_t{float_to_half(static_cast<float>(v))};
  } else if constexpr (std::is_same_v<Out, bf16_t>) {
    return bf16_t{float_to_bf16(static_cast<float>(v))};
  } else {
    return static_cast<Out>(v);
  }
}

// Calls fn(T{}) with the element type of `t`.
template <typename Fn>
void dispatch_element(DType t, Fn&& fn) {
  switch (t) {
    case DType::kF32:
      fn(float{});
      break;
    case DType::kF16:
      fn(f16_t{});
      break;
    case DType::kBF16:
      fn(bf16_t{});
      break;
    case DType::kF64:
      fn(double{});
      break;
  }
}

enum class CpuIsa : uint8_t { kBase, kAvx2, kAvx512 };

// The widest instruction set this CPU runs (AVX-512 F/BW/VL/DQ; AVX2 with
// F16C), unless SPEMBED_CPU_ISA (base, avx2, avx512) asks for a narrower one:
// the tests run every copy that way.
inline CpuIsa cpu_isa() {
  static const CpuIsa isa = [] {
#if defined(__x86_64__) && defined(__GNUC__)
    __builtin_cpu_init();
    CpuIsa best = CpuIsa::kBase;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) best = CpuIsa::kAvx2;
    if (best == CpuIsa::kAvx2 && __builtin_cpu_supports("avx512f") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq")) {
      best = CpuIsa::kAvx512;
    }
    CpuIsa asked = best;
    if (const char* env = std::getenv("SPEMBED_CPU_ISA")) {
      if (std::strcmp(env, "base") == 0) asked = CpuIsa::kBase;
      if (std::strcmp(env, "avx2") == 0) asked = CpuIsa::kAvx2;
    }
    return asked < best ? asked : best;
#else
    return CpuIsa::kBase;
#endif
  }();
  return isa;
}

}  // namespace spembed::detail
