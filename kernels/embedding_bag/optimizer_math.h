// Arithmetic of the fused optimizer step of the embedding bag backward (c),
// shared by the CPU implementation and the CUDA kernels so that both apply the
// same operations in the same order, in the accumulation type (float32, or
// float64 for float64 tables: every function below exists for both). Every multiply, add, divide
// and square root is a separately rounded IEEE operation (the CUDA side uses the _rn intrinsics,
// which no compiler flag contracts or approximates; the CPU side is compiled with
// -ffp-contract=off). What may still differ between the two is only the order of reductions done
// outside this file (the row sum of g'^2 of row-wise Adagrad), so optimizer results are compared
// with a tolerance, not bitwise.
//
// g is a row's reduced gradient, w a weight read in the accumulation type,
// g' = g + wd * w; the float hyperparameters are widened exactly for float64.
// Formulas: see spembed_optimizer_t in spembed.h.
//
// Stochastic rounding of float32 to float16 / bfloat16: the random bits of an
// element are a counter-based hash of (seed, linearized row, column), so a
// result depends only on the seed and the element, never on thread order.
//  bfloat16: add the low 16 random bits to the float32 bit pattern, then drop
//    its low 16 bits. Since the pattern is sign-magnitude, this rounds the
//    magnitude up with probability (dropped part) / (bfloat16 ulp).
//  float16, normal range (|x| >= 2^-14): the same on the 13 mantissa bits
//    float16 drops (the result is exact in float16, or 2^16 which is inf).
//  float16, subnormal range (|x| < 2^-14): in units of 2^-24 (the subnormal
//    ulp), |x| = whole + fraction; whole + 1 with probability fraction (24
//    random bits compared with the fraction).
//  NaN and infinities are not randomised: infinities keep their sign, NaN
//    becomes a quiet NaN.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/common/types.h"

namespace spembed::detail {

// ---- separately rounded float32 / float64 operations -------------------------

SPEMBED_HOST_DEVICE inline float opt_mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

SPEMBED_HOST_DEVICE inline float opt_add(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

SPEMBED_HOST_DEVICE inline float opt_sub(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

SPEMBED_HOST_DEVICE inline float opt_div(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

SPEMBED_HOST_DEVICE inline float opt_sqrt(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

SPEMBED_HOST_DEVICE inline double opt_mul(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}

SPEMBED_HOST_DEVICE inline double opt_add(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}

SPEMBED_HOST_DEVICE inline double opt_sub(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dsub_rn(a, b);
#else
  return a - b;
#endif
}

SPEMBED_HOST_DEVICE inline double opt_div(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}

SPEMBED_HOST_DEVICE inline double opt_sqrt(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

SPEMBED_HOST_DEVICE inline uint32_t opt_float_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

SPEMBED_HOST_DEVICE inline float opt_bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

// ---- optimizer element updates --------------------------------------------------
// T is the accumulation type; hyperparameters (float in the options) are
// converted to T by the caller's argument, so they are not deduced.

template <typename T>
struct OptArg {
  using type = T;
};
template <typename T>
using opt_arg_t = typename OptArg<T>::type;

// g' = g + wd * w (L2 weight decay, as torch.optim's weight_decay).
template <typename T>
SPEMBED_HOST_DEVICE inline T opt_decayed_grad(T g, T w, opt_arg_t<T> weight_decay) {
  return opt_add(g, opt_mul(weight_decay, w));
}

// SGD: w - lr * g'.
template <typename T>
SPEMBED_HOST_DEVICE inline T opt_sgd(T w, T gp, opt_arg_t<T> lr) {
  return opt_sub(w, opt_mul(lr, gp));
}

// Adagrad: s += g'^2; w - lr * (g' / (sqrt(s) + eps)). Updates `s`.
template <typename T>
SPEMBED_HOST_DEVICE inline T opt_adagrad(T w, T gp, T& s, opt_arg_t<T> lr, opt_arg_t<T> eps) {
  s = opt_add(s, opt_mul(gp, gp));
  return opt_sub(w, opt_mul(lr, opt_div(gp, opt_add(opt_sqrt(s), eps))));
}

// Row-wise Adagrad, step 1: the running sum of g'^2 over a row's columns
// (the CPU sums sequentially from +0 in column order).
template <typename T>
SPEMBED_HOST_DEVICE inline T opt_rowwise_square_accumulate(T acc, T gp) {
  return opt_add(acc, opt_mul(gp, gp));
}

// Row-wise Adagrad, step 2: the new state s + (sum of g'^2) / dim.
template <typename T>
SPEMBED_HOST_DEVICE inline T opt_rowwise_state(T s, T sum_squares, int32_t dim) {
  return opt_add(s, opt_div(sum_squares, static_cast<T>(dim)));
}

// Row-wise Adagrad, step 3, per column with the row's new state:
// w - lr * (g' / (sqrt(s) + eps)).
template <typename T>
SPEMBED_HOST_DEVICE inline T opt_rowwise_adagrad(T w, T gp, T s, opt_arg_t<T> lr,
                                                 opt_arg_t<T> eps) {
  return opt_sub(w, opt_mul(lr, opt_div(gp, opt_add(opt_sqrt(s), eps))));
}

// Adam: m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2;
// w - (lr / bc1) * (m / (sqrt(v) / sqrt(bc2) + eps)), where bc1 = 1 - b1^step
// and bc2 = 1 - b2^step are computed by the host in double and converted to T
// (EmbeddingBagBackwardParams). Updates `m` and `v`.
template <typename T>
SPEMBED_HOST_DEVICE inline T opt_adam(T w, T gp, T& m, T& v, opt_arg_t<T> lr, opt_arg_t<T> beta1,
                                      opt_arg_t<T> beta2, opt_arg_t<T> eps,
                                      opt_arg_t<T> bias_correction1,
                                      opt_arg_t<T> bias_correction2) {
  m = opt_add(opt_mul(beta1, m), opt_mul(opt_sub(T(1), beta1), gp));
  v = opt_add(opt_mul(beta2, v), opt_mul(opt_sub(T(1), beta2), opt_mul(gp, gp)));
  const T step_size = opt_div(lr, bias_correction1);
  const T denom = opt_add(opt_div(opt_sqrt(v), opt_sqrt(bias_correction2)), eps);
  return opt_sub(w, opt_mul(step_size, opt_div(m, denom)));
}

// ---- stochastic rounding ----------------------------------------------------------

// splitmix64's finaliser: a bijective 64-bit mix with full avalanche.
SPEMBED_HOST_DEVICE inline uint64_t opt_mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// 32 random bits of element (row, column) for `seed`; row is the linearized row.
SPEMBED_HOST_DEVICE inline uint32_t sr_random_bits(uint64_t seed, int64_t row, int32_t column) {
  uint64_t h = opt_mix64(seed + 0x9e3779b97f4a7c15ull);  // splitmix64's increment (golden ratio)
  h = opt_mix64(h ^ static_cast<uint64_t>(row));
  h = opt_mix64(h ^ static_cast<uint64_t>(static_cast<uint32_t>(column)));
  return static_cast<uint32_t>(h >> 32);
}

// float32 -> bfloat16 bits, rounded stochastically with `random`.
SPEMBED_HOST_DEVICE inline uint16_t sr_float_to_bf16(float x, uint32_t random) {
  const uint32_t u = opt_float_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) {  // inf or NaN
    if (u & 0x007fffffu) return static_cast<uint16_t>((u >> 16) | 0x40u);
    return static_cast<uint16_t>(u >> 16);
  }
  return static_cast<uint16_t>((u + (random & 0xffffu)) >> 16);
}

// float32 -> float16 bits, rounded stochastically with `random`.
SPEMBED_HOST_DEVICE inline uint16_t sr_float_to_half(float x, uint32_t random) {
  const uint32_t u = opt_float_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7fffffffu;
  if (magnitude >= 0x7f800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u));
  }
  if (magnitude < 0x38800000u) {  // below 2^-14: float16 subnormal range, ulp 2^-24
    const float scaled = opt_mul(opt_bits_float(magnitude), 16777216.0f);  // exact: * 2^24
    uint32_t whole = static_cast<uint32_t>(scaled);
    const float fraction = opt_sub(scaled, static_cast<float>(whole));  // exact, < 2^10
    const float threshold = opt_mul(static_cast<float>(random >> 8), 1.0f / 16777216.0f);
    if (threshold < fraction) ++whole;  // whole may become 1024: the smallest normal
    return static_cast<uint16_t>(sign | whole);
  }
  const uint32_t truncated = (magnitude + (random & 0x1fffu)) & ~0x1fffu;
  if (truncated >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 2^16: inf
  return static_cast<uint16_t>(sign | ((truncated - (112u << 23)) >> 13));
}

}  // namespace spembed::detail
