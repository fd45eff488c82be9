// The parts of the emulated tensor-core PTX (spembed_emulator/ptx.h) that run
// outside the kernel's own accesses: the warp-collective compute functions of
// ldmatrix and mma.sync, and the per-thread bookkeeping of cp.async groups.
//
// Written from the PTX ISA's tables, not from the kernels:
//   ldmatrix .m8n8 (x1 / x2 / x4, .trans): lanes 8i .. 8i+7 address rows 0..7
//     of matrix i; register i of lane l holds (row l>>2, cols 2(l%4), +1), or
//     with .trans (rows 2(l%4), +1, col l>>2); the lower element in the low
//     16 bits.
//   mma .m16n8k16 .row.col f32 += {f16, bf16}: the fragment tables of
//     "Matrix Fragments for mma.m16n8k16 with floating point type" (the row /
//     col formulas of a_i, b_i, c_i below, with groupID = lane >> 2 and
//     threadID_in_group = lane % 4).
//
// Under ThreadSanitizer this file is compiled without instrumentation (as the
// scheduler): a compute function runs once per collective in whichever fiber
// arrives last and touches only the emulator's lane buffers. No memcpy /
// memset here (ThreadSanitizer intercepts them even from uninstrumented code):
// bytes move by plain loops.
#include <cmath>
#include <cstdint>

#include "spembed_emulator/ptx.h"

namespace spembed::emu::ptx_emulation {
namespace {

void copy_bytes(unsigned char* dst, const unsigned char* src, size_t n) {
  for (size_t i = 0; i < n; ++i) dst[i] = src[i];
}

template <typename T>
T read_lane(const unsigned char* p) {
  T v;
  copy_bytes(reinterpret_cast<unsigned char*>(&v), p, sizeof(T));
  return v;
}

template <typename T>
void write_lane(unsigned char* p, const T& v) {
  copy_bytes(p, reinterpret_cast<const unsigned char*>(&v), sizeof(T));
}

// IEEE binary16 -> float (exact).
float half_to_float(uint32_t h) {
  const uint32_t sign = (h >> 15) & 1u;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  float v;
  if (exponent == 0) {
    v = std::ldexp(static_cast<float>(mantissa), -24);  // zero, subnormal
  } else if (exponent == 31) {
    v = mantissa != 0 ? NAN : INFINITY;
  } else {
    v = std::ldexp(static_cast<float>(mantissa | 0x400u), static_cast<int>(exponent) - 25);
  }
  return sign != 0 ? -v : v;
}

// bfloat16 -> float: the high half of a float.
float bf16_to_float(uint32_t h) {
  union {
    uint32_t u;
    float f;
  } bits;
  bits.u = (h & 0xffffu) << 16;
  return bits.f;
}

// D = A B + C for one warp; `to_float` decodes a 16-bit element.
void mma_m16n8k16(WarpLanes& lanes, float (*to_float)(uint32_t)) {
  float a[16][16], b[16][8], c[16][8];
  for (int r = 0; r < 16; ++r) {
    for (int k = 0; k < 16; ++k) a[r][k] = NAN;
    for (int n = 0; n < 8; ++n) c[r][n] = NAN;
  }
  for (int k = 0; k < 16; ++k) {
    for (int n = 0; n < 8; ++n) b[k][n] = NAN;
  }
  for (int l = 0; l < 32; ++l) {
    if (lanes.in[l] == nullptr) continue;  // .aligned: the mask is always full
    const MmaIn in = read_lane<MmaIn>(lanes.in[l]);
    const int group = l >> 2, tig = l % 4;
    for (int i = 0; i < 8; ++i) {
      const int row = (i < 2 || (i >= 4 && i < 6)) ? group : group + 8;
      const int col = tig * 2 + (i & 1) + (i >= 4 ? 8 : 0);
      a[row][col] = to_float((in.a[i / 2] >> (16 * (i & 1))) & 0xffffu);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = tig * 2 + (i & 1) + (i >= 2 ? 8 : 0);
      b[row][group] = to_float((in.b[i / 2] >> (16 * (i & 1))) & 0xffffu);
    }
    for (int i = 0; i < 4; ++i) {
      const int row = i < 2 ? group : group + 8;
      c[row][tig * 2 + (i & 1)] = in.c[i];
    }
  }
  float d[16][8];
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      // fp16 x fp16 and bf16 x bf16 products are exact in fp32; summed in k
      // order, then added to C.
      float sum = 0.f;
      for (int k = 0; k < 16; ++k) {
        const float product = a[r][k] * b[k][n];
        sum = sum + product;
      }
      d[r][n] = c[r][n] + sum;
    }
  }
  for (int l = 0; l < 32; ++l) {
    if (lanes.out[l] == nullptr) continue;
    const int group = l >> 2, tig = l % 4;
    MmaOut out;
    for (int i = 0; i < 4; ++i) out.d[i] = d[i < 2 ? group : group + 8][tig * 2 + (i & 1)];
    write_lane(lanes.out[l], out);
  }
}

// cp.async state of one thread of a block.
constexpr int kMaxPendingCopies = 256;
constexpr unsigned kMaxBlockThreads = 1024;

struct ThreadCpAsync {
  uint64_t serial = 0;      // block run the state belongs to (block serials start at 1)
  uint64_t open_group = 0;  // group of the copies not committed yet
  int count = 0;
  CpAsyncCopy copies[kMaxPendingCopies];
  uint64_t group[kMaxPendingCopies];
};

// The calling thread's state. Each worker OS thread runs one block at a time,
// so per-OS-thread arrays indexed by the thread's linear index suffice.
ThreadCpAsync& thread_state() {
  static thread_local ThreadCpAsync* threads = nullptr;
  if (threads == nullptr) threads = new ThreadCpAsync[kMaxBlockThreads];
  ThreadCpAsync& s = threads[linear_thread_index()];
  const uint64_t serial = block_serial();
  if (s.serial != serial) {
    s.serial = serial;
    s.open_group = 0;
    s.count = 0;
  }
  return s;
}

}  // namespace

const char* ldmatrix_name(int form) {
  static const char* const names[] = {
      "ldmatrix.sync.aligned.m8n8.x1.shared.b16",       "ldmatrix.sync.aligned.m8n8.x2.shared.b16",
      "ldmatrix.sync.aligned.m8n8.x4.shared.b16",       "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16",
      "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16", "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16"};
  return form >= 0 && form < 6 ? names[form] : "ldmatrix";
}

void ldmatrix_compute(WarpLanes& lanes, const void* context) {
  const int form = static_cast<int>(reinterpret_cast<uintptr_t>(context));
  const int matrices = form % 3 == 0 ? 1 : form % 3 == 1 ? 2 : 4;
  const bool trans = form >= 3;
  // rows[i][r]: row r of matrix i, 8 elements, as supplied by lane 8i + r.
  uint16_t rows[4][8][8];
  for (int i = 0; i < matrices; ++i) {
    for (int r = 0; r < 8; ++r) {
      const unsigned char* src = lanes.in[8 * i + r];
      for (int e = 0; e < 8; ++e) {
        rows[i][r][e] = src == nullptr ? 0xffffu
                                       : static_cast<uint16_t>(src[2 * e] | (src[2 * e + 1] << 8));
      }
    }
  }
  for (int l = 0; l < 32; ++l) {
    if (lanes.out[l] == nullptr) continue;
    const int group = l >> 2, tig = l % 4;
    LdmatrixOut out{};
    for (int i = 0; i < matrices; ++i) {
      uint32_t lo, hi;
      if (trans) {
        lo = rows[i][2 * tig][group];
        hi = rows[i][2 * tig + 1][group];
      } else {
        lo = rows[i][group][2 * tig];
        hi = rows[i][group][2 * tig + 1];
      }
      out.r[i] = lo | (hi << 16);
    }
    write_lane(lanes.out[l], out);
  }
}

void mma_f16_compute(WarpLanes& lanes, const void*) { mma_m16n8k16(lanes, &half_to_float); }
void mma_bf16_compute(WarpLanes& lanes, const void*) { mma_m16n8k16(lanes, &bf16_to_float); }

void cp_async_record(const CpAsyncCopy& copy) {
  ThreadCpAsync& s = thread_state();
  if (s.count == kMaxPendingCopies) {
    device_fault("cp.async: more than %d copies pending in one thread (an emulator limit; "
                 "wait_group lands them)",
                 kMaxPendingCopies);
  }
  s.copies[s.count] = copy;
  s.group[s.count] = s.open_group;
  ++s.count;
}

void cp_async_commit() { ++thread_state().open_group; }

void cp_async_wait(int pending, void (*land)(const CpAsyncCopy&)) {
  ThreadCpAsync& s = thread_state();
  // Committed groups are 0 .. open_group - 1; all but the newest `pending`
  // complete.
  const uint64_t keep = static_cast<uint64_t>(pending);
  const uint64_t done_below = s.open_group > keep ? s.open_group - keep : 0;
  CpAsyncCopy ready[kMaxPendingCopies];
  int n_ready = 0, n_left = 0;
  for (int i = 0; i < s.count; ++i) {
    if (s.group[i] < done_below) {
      ready[n_ready++] = s.copies[i];
    } else {
      s.copies[n_left] = s.copies[i];
      s.group[n_left] = s.group[i];
      ++n_left;
    }
  }
  s.count = n_left;
  for (int i = 0; i < n_ready; ++i) land(ready[i]);
}

}  // namespace spembed::emu::ptx_emulation
