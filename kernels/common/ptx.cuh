// Every inline PTX instruction the kernels use, one named wrapper per
// instruction form, so that kernels contain no asm of their own. The CPU
// emulator (SPEMBED_EMULATION) implements the same functions from the PTX ISA
// in tests/emulator/include/spembed_emulator/ptx.h.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#if defined(SPEMBED_EMULATION)
#include "spembed_emulator/ptx.h"
#else

namespace spembed::ptx {

// cp.async and the bf16 mma.sync forms need sm_80, ldmatrix sm_75. For older
// targets (CMAKE_CUDA_ARCHITECTURES may list them for the SIMT kernels) the
// tensor-core wrappers below trap instead of failing the build at ptxas; the
// host never sends such a device to the kernels that call them
// (use_tensor_core_attention in kernels/attention/attention_dispatch.h).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define SPEMBED_PTX_SM80(...) __trap()
#else
#define SPEMBED_PTX_SM80(...) __VA_ARGS__
#endif

// ld.global.nc: read-only loads through the non-coherent path. The
// L1::no_allocate forms do not keep the line in L1. `volatile` keeps each load
// where the kernel puts it: under its predicate, and in the batch issued
// before the first use.
__device__ __forceinline__ uint4 ld_global_nc_v4_u32(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
__device__ __forceinline__ uint4 ld_global_nc_no_allocate_v4_u32(const void* p) {
  uint4 r;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
               : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t ld_global_nc_b32(const void* p) {
  uint32_t r;
  asm volatile("ld.global.nc.b32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ uint32_t ld_global_nc_no_allocate_b32(const void* p) {
  uint32_t r;
  asm volatile("ld.global.nc.L1::no_allocate.b32 %0, [%1];" : "=r"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ uint64_t ld_global_nc_b64(const void* p) {
  uint64_t r;
  asm volatile("ld.global.nc.b64 %0, [%1];" : "=l"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ uint64_t ld_global_nc_no_allocate_b64(const void* p) {
  uint64_t r;
  asm volatile("ld.global.nc.L1::no_allocate.b64 %0, [%1];" : "=l"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ uint16_t ld_global_nc_b16(const void* p) {
  uint16_t r;
  asm volatile("ld.global.nc.b16 %0, [%1];" : "=h"(r) : "l"(p));
  return r;
}
__device__ __forceinline__ uint16_t ld_global_nc_no_allocate_b16(const void* p) {
  uint16_t r;
  asm volatile("ld.global.nc.L1::no_allocate.b16 %0, [%1];" : "=h"(r) : "l"(p));
  return r;
}

// cp.async.cg.shared.global: 16 bytes from global memory to the shared-window
// address `dst`, asynchronously; src_bytes < 16 zero-fills the rest (0 reads
// nothing). The copy is complete only after the wait_group that covers its
// commit group.
__device__ __forceinline__ void cp_async_cg_shared_global_16(uint32_t dst, const void* src,
                                                             int src_bytes) {
  SPEMBED_PTX_SM80(asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst),
                                "l"(__cvta_generic_to_global(src)), "r"(src_bytes)
                                : "memory"));
}

__device__ __forceinline__ void cp_async_commit_group() {
  SPEMBED_PTX_SM80(asm volatile("cp.async.commit_group;\n" ::: "memory"));
}

// Waits until at most kPending of the thread's committed groups are in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait_group() {
  SPEMBED_PTX_SM80(asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory"));
}

// ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 b16 matrices
// from shared memory; lanes 8i..8i+7 give the row addresses of matrix i.
__device__ __forceinline__ void ldmatrix_sync_aligned_m8n8_x4_shared_b16(uint32_t (&r)[4],
                                                                         uint32_t address) {
  SPEMBED_PTX_SM80(asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                                : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                                : "r"(address)));
}

__device__ __forceinline__ void ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(uint32_t (&r)[4],
                                                                               uint32_t address) {
  SPEMBED_PTX_SM80(
      asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                   : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                   : "r"(address)));
}

// mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32: c += A B
// for one warp-wide 16x8x16 tile, fp32 accumulation.
__device__ __forceinline__ void mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(
    float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  SPEMBED_PTX_SM80(
      asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
          "{%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}

__device__ __forceinline__ void mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(
    float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  SPEMBED_PTX_SM80(
      asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, "
          "{%8, %9}, {%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1)));
}

}  // namespace spembed::ptx

#undef SPEMBED_PTX_SM80

#endif  // SPEMBED_EMULATION
