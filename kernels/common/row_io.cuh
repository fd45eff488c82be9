// Device building blocks of the embedding kernels: reading table rows into
// their accumulation type (accumulate.h: double for float64 tables, else
// fp32; 16 bytes at a time, or one element at a time when rows are not
// 16-byte aligned), and writing results in the caller's dtype, rounded to
// nearest even.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "kernels/common/accumulate.h"
#include "kernels/common/ptx.cuh"
#include "kernels/common/types.h"

namespace spembed::detail {

// Read-only loads of table rows. kKeepInL1 = false: the load does not
// allocate in L1. A lookup reads each row once, so when a warp-wide load
// covers whole 32-byte sectors of the rows it touches, L1 would only hold dead
// lines; leaving it to the indices and offsets that the group re-reads is
// worth more. When it covers less than a sector (one lane per row, or
// element-wise loads), the lane's next load reads the rest of the sector:
// kKeepInL1 = true lets L1 serve it instead of a second L2 request.
template <bool kKeepInL1>
__device__ __forceinline__ uint4 load_row_v4(const void* p) {
  return kKeepInL1 ? ptx::ld_global_nc_v4_u32(p) : ptx::ld_global_nc_no_allocate_v4_u32(p);
}

template <bool kKeepInL1>
__device__ __forceinline__ uint32_t load_row_b32(const void* p) {
  return kKeepInL1 ? ptx::ld_global_nc_b32(p) : ptx::ld_global_nc_no_allocate_b32(p);
}

template <bool kKeepInL1>
__device__ __forceinline__ uint64_t load_row_b64(const void* p) {
  return kKeepInL1 ? ptx::ld_global_nc_b64(p) : ptx::ld_global_nc_no_allocate_b64(p);
}

template <bool kKeepInL1>
__device__ __forceinline__ uint16_t load_row_b16(const void* p) {
  return kKeepInL1 ? ptx::ld_global_nc_b16(p) : ptx::ld_global_nc_no_allocate_b16(p);
}

// Read-only cached load of an index, offset or weight.
template <typename T>
__device__ __forceinline__ T load_ro(const T* p) {
  if constexpr (sizeof(T) == 8 && std::is_integral_v<T>) {
    return static_cast<T>(__ldg(reinterpret_cast<const long long*>(p)));
  } else {
    return __ldg(p);
  }
}

// Separately rounded add / multiply / divide of the accumulation type.
__device__ __forceinline__ float add_rn(float a, float b) { return __fadd_rn(a, b); }
__device__ __forceinline__ double add_rn(double a, double b) { return __dadd_rn(a, b); }
__device__ __forceinline__ float mul_rn(float a, float b) { return __fmul_rn(a, b); }
__device__ __forceinline__ double mul_rn(double a, double b) { return __dmul_rn(a, b); }
__device__ __forceinline__ float div_rn(float a, float b) { return __fdiv_rn(a, b); }
__device__ __forceinline__ double div_rn(double a, double b) { return __ddiv_rn(a, b); }

// Two 32-bit words (low first) -> the double they hold.
__device__ __forceinline__ double words_to_double(uint32_t lo, uint32_t hi) {
  return __longlong_as_double(static_cast<long long>((uint64_t{hi} << 32) | lo));
}

// Bits of one 2- or 4-byte table element -> float (exact for those dtypes).
template <typename T>
__device__ __forceinline__ float bits_to_float(uint32_t bits) {
  if constexpr (sizeof(T) == 4) {
    return __uint_as_float(bits);
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
  } else {
    return __uint_as_float(bits << 16);  // bfloat16 is the top half of a float
  }
}

// One "vector" of a table row: the unit a lane loads. kVec16: 16 bytes
// (2 fp64, 4 fp32 or 8 fp16/bf16 elements); otherwise one element, for rows
// whose base, stride or dim rule out 16-byte loads (8-byte elements are then
// loaded 8 bytes at a time: DLPack float64 data is 8-byte aligned).
template <typename TableT, bool kVec16>
struct RowVector;

template <typename TableT>
struct RowVector<TableT, true> {
  static constexpr int kElems = 16 / static_cast<int>(sizeof(TableT));
  using Raw = uint4;
  using Acc = accumulator_t<TableT>;

  __device__ static Raw zero() { return make_uint4(0u, 0u, 0u, 0u); }
  // Vector `vec` of the row starting at `row`.
  template <bool kKeepInL1>
  __device__ static Raw load(const TableT* row, uint32_t vec) {
    return load_row_v4<kKeepInL1>(reinterpret_cast<const uint4*>(row) + vec);
  }
  __device__ static void widen(const Raw& r, Acc (&x)[kElems]) {
    const uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      if constexpr (sizeof(TableT) == 8) {  // element k/2, word k%2 (little endian)
        if (k % 2 == 0) x[k / 2] = words_to_double(w[k], w[k | 1]);
      } else if constexpr (sizeof(TableT) == 4) {
        x[k] = bits_to_float<TableT>(w[k]);
      } else {  // element 2k is the low half of word k (little endian)
        x[2 * k] = bits_to_float<TableT>(w[k] & 0xffffu);
        x[2 * k + 1] = bits_to_float<TableT>(w[k] >> 16);
      }
    }
  }
};

template <typename TableT>
struct RowVector<TableT, false> {
  static constexpr int kElems = 1;
  using Raw = std::conditional_t<sizeof(TableT) == 8, uint64_t,
                                 std::conditional_t<sizeof(TableT) == 4, uint32_t, uint16_t>>;
  using Acc = accumulator_t<TableT>;

  __device__ static Raw zero() { return 0; }
  template <bool kKeepInL1>
  __device__ static Raw load(const TableT* row, uint32_t elem) {
    if constexpr (sizeof(TableT) == 8) {
      return load_row_b64<kKeepInL1>(row + elem);
    } else if constexpr (sizeof(TableT) == 4) {
      return load_row_b32<kKeepInL1>(row + elem);
    } else {
      return load_row_b16<kKeepInL1>(row + elem);
    }
  }
  __device__ static void widen(const Raw& r, Acc (&x)[1]) {
    if constexpr (sizeof(TableT) == 8) {
      x[0] = __longlong_as_double(static_cast<long long>(r));
    } else {
      x[0] = bits_to_float<TableT>(r);
    }
  }
};

// float -> output element, round to nearest even. (A double result goes to a
// double output only: float64 tables write float64 outputs.)
template <typename OutT>
__device__ __forceinline__ OutT from_float(double x) {
  static_assert(std::is_same_v<OutT, double>, "double results are stored as double");
  return x;
}
template <typename OutT>
__device__ __forceinline__ OutT from_float(float x) {
  if constexpr (std::is_same_v<OutT, __half>) {
    return __float2half_rn(x);
  } else if constexpr (std::is_same_v<OutT, __nv_bfloat16>) {
    return __float2bfloat16_rn(x);
  } else {
    return x;
  }
}

template <typename OutT>
__device__ __forceinline__ uint32_t to_bits(OutT x) {
  if constexpr (std::is_same_v<OutT, __half>) {
    return __half_as_ushort(x);
  } else if constexpr (std::is_same_v<OutT, __nv_bfloat16>) {
    return __bfloat16_as_ushort(x);
  } else {
    return __float_as_uint(x);
  }
}

// Writes kElems consecutive outputs at dst. `vector_ok`: dst is aligned to
// min(16, kElems * sizeof(OutT)) bytes, so the values go out in one or two
// vector stores; otherwise element by element. The vector stores are
// intrinsics (__stwb: an ordinary write-back store) because plain ones get
// merged with the element-wise branch, which stores the same bytes, into
// element-wise stores.
template <typename OutT, int kElems, typename AccT>
__device__ __forceinline__ void store_elems(OutT* dst, const AccT (&x)[kElems], bool vector_ok) {
  if constexpr (kElems > 1) {
    if (vector_ok) {
      constexpr int kWords = kElems * static_cast<int>(sizeof(OutT)) / 4;
      uint32_t w[kWords];
      if constexpr (sizeof(OutT) == 8) {  // two words per element, low first
#pragma unroll
        for (int k = 0; k < kElems; ++k) {
          const auto bits = static_cast<uint64_t>(__double_as_longlong(from_float<OutT>(x[k])));
          w[2 * k] = static_cast<uint32_t>(bits);
          w[2 * k + 1] = static_cast<uint32_t>(bits >> 32);
        }
      } else {
        constexpr int kPerWord = 4 / static_cast<int>(sizeof(OutT));
#pragma unroll
        for (int k = 0; k < kWords; ++k) {
          w[k] = to_bits(from_float<OutT>(x[kPerWord * k]));
          if constexpr (kPerWord == 2) w[k] |= to_bits(from_float<OutT>(x[2 * k + 1])) << 16;
        }
      }
      if constexpr (kWords % 4 == 0) {
#pragma unroll
        for (int q = 0; q < kWords / 4; ++q) {
          __stwb(reinterpret_cast<uint4*>(dst) + q,
                 make_uint4(w[4 * q], w[4 * q + 1], w[4 * q + 2], w[4 * q + 3]));
        }
      } else {
        static_assert(kWords == 2, "a vector of outputs is 8, 16 or 32 bytes");
        __stwb(reinterpret_cast<uint2*>(dst), make_uint2(w[0], w[1]));
      }
      return;
    }
  }
#pragma unroll
  for (int e = 0; e < kElems; ++e) dst[e] = from_float<OutT>(x[e]);
}

// store_elems for the runtime output dtype; `elem` counts elements of `base`.
// Double results (float64 tables) have float64 outputs.
template <int kElems>
__device__ __forceinline__ void store_outputs(void* base, DType out_dtype, int64_t elem,
                                              const double (&x)[kElems], bool vector_ok) {
  store_elems<double, kElems>(static_cast<double*>(base) + elem, x, vector_ok);
}

template <int kElems>
__device__ __forceinline__ void store_outputs(void* base, DType out_dtype, int64_t elem,
                                              const float (&x)[kElems], bool vector_ok) {
  switch (out_dtype) {
    case DType::kF16:
      store_elems<__half, kElems>(static_cast<__half*>(base) + elem, x, vector_ok);
      break;
    case DType::kBF16:
      store_elems<__nv_bfloat16, kElems>(static_cast<__nv_bfloat16*>(base) + elem, x, vector_ok);
      break;
    case DType::kF32:
    default:
      store_elems<float, kElems>(static_cast<float*>(base) + elem, x, vector_ok);
      break;
  }
}

}  // namespace spembed::detail
