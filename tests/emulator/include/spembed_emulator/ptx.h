// The emulator's implementation of kernels/common/ptx.cuh: each PTX instruction the
// kernels use, with the semantics the PTX ISA gives it, including the faults
// hardware raises (a misaligned vector access is an error, not a slow load).
#pragma once

#include <cstdint>
#include <cstring>

#include "spembed_emulator/device.h"

namespace spembed::emu::ptx_emulation {

// The parts of the emulated PTX that run outside the kernel's fibers
// (tests/emulator/src/ptx_collectives.cpp, compiled without ThreadSanitizer
// instrumentation: the warps' compute functions and the cp.async bookkeeping
// touch only the emulator's own buffers, never the kernel's memory).

// Collective ids: one per instruction form, so that lanes at two different
// forms never meet in one collective.
enum : int {
  kCollectiveLdmatrix = kFirstUserCollective,  // + ldmatrix_form(): 6 forms
  kCollectiveMmaF16 = kCollectiveLdmatrix + 6,
  kCollectiveMmaBf16,
};

// ldmatrix forms 0..5: x1, x2, x4, then the same .trans.
constexpr int ldmatrix_form(int matrices, bool trans) {
  return (matrices == 1 ? 0 : matrices == 2 ? 1 : 2) + (trans ? 3 : 0);
}
const char* ldmatrix_name(int form);

struct LdmatrixIn {
  unsigned char row[16];  // the row this lane addresses (lanes whose address is used)
};
struct LdmatrixOut {
  uint32_t r[4];
};
// context: the form, cast to a pointer.
void ldmatrix_compute(WarpLanes& lanes, const void* context);

struct MmaIn {
  uint32_t a[4];
  uint32_t b[2];
  float c[4];
};
struct MmaOut {
  float d[4];
};
void mma_f16_compute(WarpLanes& lanes, const void* context);
void mma_bf16_compute(WarpLanes& lanes, const void* context);

// cp.async bookkeeping of the calling thread (per block run: stale state of an
// earlier block is dropped).
struct CpAsyncCopy {
  uint32_t dst;  // shared-window offset
  int src_bytes;
  const void* src;
};
void cp_async_record(const CpAsyncCopy& copy);
void cp_async_commit();
// Removes the copies of every committed group but the newest `pending` ones
// and lands them, oldest first, through `land` (called in the thread's fiber).
void cp_async_wait(int pending, void (*land)(const CpAsyncCopy&));

}  // namespace spembed::emu::ptx_emulation

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
inline uint64_t ld_global_nc_b64(const void* p) {
  return emulated::load_aligned<uint64_t>(p, "ld.global.nc.b64");
}
inline uint64_t ld_global_nc_no_allocate_b64(const void* p) {
  return emulated::load_aligned<uint64_t>(p, "ld.global.nc.L1::no_allocate.b64");
}
inline uint16_t ld_global_nc_b16(const void* p) {
  return emulated::load_aligned<uint16_t>(p, "ld.global.nc.b16");
}
inline uint16_t ld_global_nc_no_allocate_b16(const void* p) {
  return emulated::load_aligned<uint16_t>(p, "ld.global.nc.L1::no_allocate.b16");
}

// ---- cp.async.cg.shared.global, commit_group, wait_group ---------------------
// PTX ISA, "Data Movement and Conversion Instructions: cp.async": a copy of
// cp-size 16 from global to shared memory, both addresses aligned to 16 bytes;
// src-size (0..16) bytes are read and the rest of the 16 are zero-filled
// (src-size 0 reads nothing). commit_group closes the thread's uncommitted
// copies into a group; wait_group N returns once at most the N most recent of
// the thread's committed groups are still pending. Only the issuing thread is
// ordered after its copies: other threads see them after a barrier.
//
// Emulated as late as the ISA allows: issuing it records the copy and fills the
// 16 destination bytes with the poison byte (the hardware may be writing them
// at any time until the wait), and the data land in the issuing thread's
// wait_group that covers the copy's group, read and written then, in that
// thread's fiber (ThreadSanitizer and AddressSanitizer see the kernel's own
// accesses). A reader that skips the wait, or the barrier after it, reads
// poison or races with the writing thread; a copy never waited for never
// lands. The per-thread bookkeeping lives in ptx_collectives.cpp.
inline void cp_async_cg_shared_global_16(uint32_t dst, const void* src, int src_bytes) {
  constexpr const char* kName = "cp.async.cg.shared.global [dst], [src], 16, src-size";
  if (src_bytes < 0 || src_bytes > 16) {
    ::spembed::emu::device_fault("%s: src-size %d outside [0, 16]", kName, src_bytes);
  }
  if (dst % 16 != 0) {
    ::spembed::emu::device_fault("%s: destination 0x%x (shared window) is not 16-byte aligned",
                                 kName, dst);
  }
  if (reinterpret_cast<uintptr_t>(src) % 16 != 0) {
    ::spembed::emu::device_fault("%s: source %p is not 16-byte aligned", kName, src);
  }
  auto* d = static_cast<unsigned char*>(::spembed::emu::shared_window_pointer(dst, 16));
  std::memset(d, ::spembed::emu::kPoisonByte, 16);
  ::spembed::emu::ptx_emulation::cp_async_record(
      ::spembed::emu::ptx_emulation::CpAsyncCopy{dst, src_bytes, src});
}

inline void cp_async_commit_group() { ::spembed::emu::ptx_emulation::cp_async_commit(); }

namespace emulated {
// A recorded copy landing (called back from the bookkeeping, in the issuing
// thread's fiber).
inline void cp_async_land(const ::spembed::emu::ptx_emulation::CpAsyncCopy& c) {
  auto* d = static_cast<unsigned char*>(::spembed::emu::shared_window_pointer(c.dst, 16));
  if (c.src_bytes > 0) std::memcpy(d, c.src, static_cast<size_t>(c.src_bytes));
  if (c.src_bytes < 16) std::memset(d + c.src_bytes, 0, static_cast<size_t>(16 - c.src_bytes));
}
}  // namespace emulated

template <int kPending>
inline void cp_async_wait_group() {
  static_assert(kPending >= 0, "wait_group N with N >= 0");
  ::spembed::emu::ptx_emulation::cp_async_wait(kPending, &emulated::cp_async_land);
}

// ---- ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 ----------------
// PTX ISA, "Warp-level matrix load instruction: ldmatrix": a warp-wide load of
// 1, 2 or 4 8x8 matrices of 16-bit elements from shared memory. Lanes
// 8i .. 8i + 7 supply the addresses of rows 0..7 of matrix i (the addresses of
// the other lanes are not used); each row is 16 contiguous bytes at a 16-byte
// aligned address. Register i of lane l receives two elements of matrix i
// (groupID g = l >> 2, threadID_in_group t = l % 4; lower element in the low
// half): (row g, cols 2t, 2t + 1), or with .trans (rows 2t, 2t + 1, col g).
// Every lane of the warp executes it (.sync.aligned). Emulated: each lane whose
// address is used checks it and reads its own 16 bytes, then the warp
// redistributes them (ptx_collectives.cpp).
namespace emulated {
template <int kMatrices, bool kTrans>
inline void ldmatrix(uint32_t* r, uint32_t address) {
  namespace pe = ::spembed::emu::ptx_emulation;
  static_assert(kMatrices == 1 || kMatrices == 2 || kMatrices == 4, ".x1, .x2 or .x4");
  const int form = pe::ldmatrix_form(kMatrices, kTrans);
  const char* const name = pe::ldmatrix_name(form);
  const unsigned lane = ::spembed::emu::lane_id();
  pe::LdmatrixIn in{};
  if (lane < 8u * kMatrices) {
    if (address % 16 != 0) {
      ::spembed::emu::device_fault(
          "%s: row address 0x%x of lane %u (shared window) is not 16-byte aligned", name, address,
          lane);
    }
    std::memcpy(in.row, ::spembed::emu::shared_window_pointer(address, 16), 16);
  }
  pe::LdmatrixOut out{};
  ::spembed::emu::warp_collective(SPEMBED_EMU_SITE, pe::kCollectiveLdmatrix + form, name,
                                  0xffffffffu, &in, sizeof(in), &out, sizeof(out),
                                  &pe::ldmatrix_compute,
                                  reinterpret_cast<const void*>(static_cast<uintptr_t>(form)));
  for (int i = 0; i < kMatrices; ++i) r[i] = out.r[i];
}
}  // namespace emulated

inline void ldmatrix_sync_aligned_m8n8_x4_shared_b16(uint32_t (&r)[4], uint32_t address) {
  emulated::ldmatrix<4, false>(r, address);
}
inline void ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(uint32_t (&r)[4], uint32_t address) {
  emulated::ldmatrix<4, true>(r, address);
}
// The .x1 / .x2 forms: not used by the kernels (kernels/common/ptx.cuh has none), here
// for the emulator's tests of the fragment tables.
inline void ldmatrix_sync_aligned_m8n8_x1_shared_b16(uint32_t (&r)[1], uint32_t address) {
  emulated::ldmatrix<1, false>(r, address);
}
inline void ldmatrix_sync_aligned_m8n8_x1_trans_shared_b16(uint32_t (&r)[1], uint32_t address) {
  emulated::ldmatrix<1, true>(r, address);
}
inline void ldmatrix_sync_aligned_m8n8_x2_shared_b16(uint32_t (&r)[2], uint32_t address) {
  emulated::ldmatrix<2, false>(r, address);
}
inline void ldmatrix_sync_aligned_m8n8_x2_trans_shared_b16(uint32_t (&r)[2], uint32_t address) {
  emulated::ldmatrix<2, true>(r, address);
}

// ---- mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}.{f16,bf16}.f32 ----------
// PTX ISA, "Matrix multiply-accumulate operation using mma instruction",
// "Matrix Fragments for mma.m16n8k16 with floating point type": D = A B + C
// with A 16x16 (row), B 16x8 (col), C and D 16x8 fp32, one warp. With g =
// lane >> 2 and t = lane % 4, lane l holds
//   A: a0..a7 in 4 .b32 registers (two elements each, lower index low):
//      row g for a0, a1, a4, a5 and g + 8 for a2, a3, a6, a7;
//      col 2t + (i & 1), + 8 for a4..a7;
//   B: b0..b3 in 2 registers: row (k) 2t + (i & 1), + 8 for b2, b3; col g;
//   C / D: c0..c3: row g for c0, c1, g + 8 for c2, c3; col 2t + (i & 1).
// Emulated as a warp collective (ptx_collectives.cpp): the products are exact
// in fp32; each D element is C + (the 16 products summed in fp32 in k order),
// which rounds differently from the tensor cores (docs/emulation.md).
namespace emulated {
inline void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1,
                         bool bf16) {
  namespace pe = ::spembed::emu::ptx_emulation;
  pe::MmaIn in{};
  for (int i = 0; i < 4; ++i) in.a[i] = a[i];
  in.b[0] = b0;
  in.b[1] = b1;
  for (int i = 0; i < 4; ++i) in.c[i] = c[i];
  pe::MmaOut out{};
  ::spembed::emu::warp_collective(SPEMBED_EMU_SITE,
                                  bf16 ? pe::kCollectiveMmaBf16 : pe::kCollectiveMmaF16,
                                  bf16 ? "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
                                       : "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32",
                                  0xffffffffu, &in, sizeof(in), &out, sizeof(out),
                                  bf16 ? &pe::mma_bf16_compute : &pe::mma_f16_compute, nullptr);
  for (int i = 0; i < 4; ++i) c[i] = out.d[i];
}
}  // namespace emulated

inline void mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(float (&c)[4], const uint32_t (&a)[4],
                                                              uint32_t b0, uint32_t b1) {
  emulated::mma_m16n8k16(c, a, b0, b1, false);
}
inline void mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(float (&c)[4],
                                                                const uint32_t (&a)[4], uint32_t b0,
                                                                uint32_t b1) {
  emulated::mma_m16n8k16(c, a, b0, b1, true);
}

}  // namespace spembed::ptx
