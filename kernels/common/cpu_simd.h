// Vector helpers of the CPU implementation, compiled once per instruction set.
//
// A CPU source includes its kernels several times, each time inside
// `#pragma GCC target(...)` and its own namespace (see cpu_isa.h); this file
// is included inside each of them, so its vector width follows the target:
// 64 bytes with AVX-512, 32 with AVX2, 16 (SSE2) otherwise. Every operation is
// an IEEE operation per lane (no contraction: the CPU sources are built with
// -ffp-contract=off), so a result never depends on the width.
//
// No include guard: it is meant to be included once per target namespace,
// with SPEMBED_CPU_ISA_LEVEL defined as that target's: 2 AVX-512 (F, BW, VL,
// DQ), 1 AVX2 with F16C, 0 the baseline (GCC's target pragma does not update
// the __AVX2__-style macros, so the includer says which it is).
#if !defined(SPEMBED_CPU_ISA_LEVEL)
#error "define SPEMBED_CPU_ISA_LEVEL before including cpu_simd.h"
#endif

// float and double lanes of one vector register.
constexpr int kVecBytes = SPEMBED_CPU_ISA_LEVEL == 2 ? 64 : SPEMBED_CPU_ISA_LEVEL == 1 ? 32 : 16;
typedef float vfloat __attribute__((vector_size(kVecBytes)));
typedef double vdouble __attribute__((vector_size(kVecBytes)));
typedef uint16_t vhalfbits __attribute__((vector_size(kVecBytes / 2)));
typedef uint32_t vbits __attribute__((vector_size(kVecBytes)));

template <typename A>
struct VecOf;
template <>
struct VecOf<float> {
  using type = vfloat;
};
template <>
struct VecOf<double> {
  using type = vdouble;
};
template <typename A>
using vec_t = typename VecOf<A>::type;
template <typename A>
constexpr int kLanes = kVecBytes / static_cast<int>(sizeof(A));

template <typename V, typename A>
inline V vbroadcast(A a) {
  V v;
  for (int l = 0; l < kLanes<A>; ++l) v[l] = a;
  return v;
}

// Loads kLanes<acc_t<T>> elements of T, widened to the accumulator type.
inline vfloat vload(const float* p) {
  vfloat v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline vdouble vload(const double* p) {
  vdouble v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}
inline vfloat vload(const bf16_t* p) {
#if SPEMBED_CPU_ISA_LEVEL == 2
  // (spelled out: GCC widens the generic form below in two halves; masked
  // forms, as GCC 12 warns about the unmasked ones' undefined sources)
  const __m512i wide =
      _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return reinterpret_cast<vfloat>(_mm512_maskz_slli_epi32(0xffff, wide, 16));
#elif SPEMBED_CPU_ISA_LEVEL == 1
  return reinterpret_cast<vfloat>(_mm256_slli_epi32(
      _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
#else
  vhalfbits h;
  std::memcpy(&h, p, sizeof(h));
  const vbits u = __builtin_convertvector(h, vbits) << 16;  // bf16 is float's top half
  vfloat v;
  std::memcpy(&v, &u, sizeof(v));
  return v;
#endif
}
inline vfloat vload(const f16_t* p) {
#if SPEMBED_CPU_ISA_LEVEL == 2
  return reinterpret_cast<vfloat>(
      _mm512_maskz_cvtph_ps(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#elif SPEMBED_CPU_ISA_LEVEL == 1
  return reinterpret_cast<vfloat>(
      _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
#else
  vfloat v;
  for (int l = 0; l < kLanes<float>; ++l) v[l] = half_to_float(p[l].bits);
  return v;
#endif
}

// float lanes rounded to bfloat16 (nearest even), bit for bit as
// float_to_bf16: integer arithmetic on the bits, NaNs quieted the same way.
inline vhalfbits to_bf16_bits(vfloat v) {
  vbits u;
  std::memcpy(&u, &v, sizeof(u));
  const vbits rounded = (u + (0x7fffu + ((u >> 16) & 1u))) >> 16;
  const vbits quiet_nan = (u >> 16) | 0x40u;
  const vbits r = (u & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded;
  return __builtin_convertvector(r, vhalfbits);
}

#if SPEMBED_CPU_ISA_LEVEL >= 1
// float lanes rounded to float16 (nearest even), bit for bit as
// float_to_half: the F16C conversion rounds the same way, but keeps a NaN's
// payload where float_to_half returns one quiet NaN, so NaN lanes are
// replaced. (float denormals become +-0 either way, whatever MXCSR says.)
inline vhalfbits to_half_bits(vfloat v) {
#if SPEMBED_CPU_ISA_LEVEL == 2
  // (the masked form: GCC 12 warns about the unmasked one's undefined source)
  const __m256i h =
      _mm512_maskz_cvtps_ph(0xffff, reinterpret_cast<__m512>(v), _MM_FROUND_TO_NEAREST_INT);
#else
  const __m128i h = _mm256_cvtps_ph(reinterpret_cast<__m256>(v), _MM_FROUND_TO_NEAREST_INT);
#endif
  vhalfbits converted;
  std::memcpy(&converted, &h, sizeof(converted));
  vbits u;
  std::memcpy(&u, &v, sizeof(u));
  const vbits nan = (u & 0x7fffffffu) > 0x7f800000u ? ~vbits{} : vbits{};
  const vhalfbits nan16 = __builtin_convertvector(nan, vhalfbits);
  const vhalfbits quiet_nan = __builtin_convertvector(((u >> 16) & 0x8000u) | 0x7e00u, vhalfbits);
  return (converted & ~nan16) | (quiet_nan & nan16);
}
#endif

// Stores a vector of accumulators as kLanes elements of Out (rounded to
// nearest even for 16-bit outputs, bit for bit as the scalar conversions).
template <typename Out, typename V>
inline void vstore(Out* p, V v) {
  using A = std::remove_reference_t<decltype(v[0])>;
  if constexpr (std::is_same_v<Out, A>) {
    std::memcpy(p, &v, sizeof(v));
  } else if constexpr (std::is_same_v<A, float> && std::is_same_v<Out, bf16_t>) {
    const vhalfbits h = to_bf16_bits(v);
    std::memcpy(p, &h, sizeof(h));
#if SPEMBED_CPU_ISA_LEVEL >= 1
  } else if constexpr (std::is_same_v<A, float> && std::is_same_v<Out, f16_t>) {
    const vhalfbits h = to_half_bits(v);
    std::memcpy(p, &h, sizeof(h));
#endif
  } else {
    for (int l = 0; l < kLanes<A>; ++l) p[l] = from_acc<Out>(v[l]);
  }
}

// Prefetches the `bytes` bytes at `p` into the caches, one line at a time.
inline void prefetch_bytes(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(c + b, 0, 3);
}
