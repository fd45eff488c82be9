// The emulator's implementation of kernels/ptx.cuh: each PTX instruction the
// kernels use, with the semantics the PTX ISA gives it, including the faults
// hardware raises (a misaligned vector access is an error, not a slow load).
#pragma once

#include <cstdint>
#include <cstring>

#include "spembed_emulator/device.h"

namespace spembed::ptx {
namespace emulated {

// A load of `Bytes` at p, which must be aligned to its size.
template <typename T>
inline T load_aligned(const void* p, const char* instruction) {
  if (reinterpret_cast<uintptr_t>(p) % sizeof(T) != 0) {
    ::spembed::emu::device_fault("%s of %zu bytes at %p: misaligned address", instruction,
                                 sizeof(T), p);
  }
  T r;
  std::memcpy(&r, p, sizeof(T));
  return r;
}

}  // namespace emulated

// ld.global.nc[.L1::no_allocate]: a plain load here (no caches to steer).
inline uint4 ld_global_nc_v4_u32(const void* p) {
  return emulated::load_aligned<uint4>(p, "ld.global.nc.v4.u32");
}
inline uint4 ld_global_nc_no_allocate_v4_u32(const void* p) {
  return emulated::load_aligned<uint4>(p, "ld.global.nc.L1::no_allocate.v4.u32");
}
inline uint32_t ld_global_nc_b32(const void* p) {
  return emulated::load_aligned<uint32_t>(p, "ld.global.nc.b32");
}
inline uint32_t ld_global_nc_no_allocate_b32(const void* p) {
  return emulated::load_aligned<uint32_t>(p, "ld.global.nc.L1::no_allocate.b32");
}
inline uint16_t ld_global_nc_b16(const void* p) {
  return emulated::load_aligned<uint16_t>(p, "ld.global.nc.b16");
}
inline uint16_t ld_global_nc_no_allocate_b16(const void* p) {
  return emulated::load_aligned<uint16_t>(p, "ld.global.nc.L1::no_allocate.b16");
}

// ---- Not yet emulated: a kernel that reaches these faults ---------------------

inline void cp_async_cg_shared_global_16(uint32_t, const void*, int) {
  ::spembed::emu::device_fault("cp.async is not emulated yet");
}
inline void cp_async_commit_group() {
  ::spembed::emu::device_fault("cp.async.commit_group is not emulated yet");
}
template <int kPending>
inline void cp_async_wait_group() {
  ::spembed::emu::device_fault("cp.async.wait_group is not emulated yet");
}
inline void ldmatrix_sync_aligned_m8n8_x4_shared_b16(uint32_t (&)[4], uint32_t) {
  ::spembed::emu::device_fault("ldmatrix is not emulated yet");
}
inline void ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(uint32_t (&)[4], uint32_t) {
  ::spembed::emu::device_fault("ldmatrix is not emulated yet");
}
inline void mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(float (&)[4], const uint32_t (&)[4],
                                                             uint32_t, uint32_t) {
  ::spembed::emu::device_fault("mma.sync is not emulated yet");
}
inline void mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(float (&)[4],
                                                               const uint32_t (&)[4], uint32_t,
                                                               uint32_t) {
  ::spembed::emu::device_fault("mma.sync is not emulated yet");
}

}  // namespace spembed::ptx
