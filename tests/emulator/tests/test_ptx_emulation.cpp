// The emulated tensor-core PTX (spembed_emulator/ptx.h) against plain matrix
// products and copies. The kernels here build their fragments from the PTX
// ISA's layout tables written below, in this file, in the register-level form
// of the ISA's figures (not the element formulas the emulator uses, and not
// the attention kernels' lane index code), so a wrong table on either side
// makes a product or a load come out wrong:
//   - mma.sync.aligned.m16n8k16.row.col.f32.{f16,bf16}: exact products of
//     small dyadic values (every partial sum exact in fp32), random reals
//     against a float64 product, and a deliberately swapped register that
//     must be caught;
//   - ldmatrix .x1 / .x2 / .x4, plain and .trans, with rows scattered over
//     shared memory and garbage addresses in the lanes whose address is unused;
//     ldmatrix + mma end to end (A row-major, B from [n][k] and via .trans
//     from [k][n]);
//   - cp.async: zero-filled tails for every src-size 0..16 at the very end of
//     an allocation (AddressSanitizer sees any read past src-size), src-size 0
//     from an address that would crash if read, groups and wait_group N, a
//     reader that skips the wait seeing poison, copies never waited for never
//     landing (not even in a later block);
//   - faults: misaligned ldmatrix / cp.async addresses, addresses outside
//     shared memory, and lanes of one warp at two different instruction forms.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/ptx.cuh"
#include "spembed_emulator/runtime.h"

namespace {

using spembed::detail::dynamic_shared_memory;
using spembed::detail::launch_kernel;

// ---- The ISA's fragment tables (register-level) --------------------------------
// groupID g = lane >> 2, threadID_in_group t = lane % 4; a .b32 register holds
// two 16-bit elements, the first in the low half.

struct Cell {
  int row, col;
};

// mma.m16n8k16, A (16 x 16, .row): register r of a lane holds (row, col) and
// (row, col + 1) with
//   r = 0: (g,     2t)       r = 1: (g + 8, 2t)
//   r = 2: (g,     2t + 8)   r = 3: (g + 8, 2t + 8)
Cell a_cell(int lane, int r) {
  static const int row_add[4] = {0, 8, 0, 8};
  static const int col_add[4] = {0, 0, 8, 8};
  return {lane / 4 + row_add[r], 2 * (lane % 4) + col_add[r]};
}
// B (16 x 8, .col): register r holds (k, n) and (k + 1, n) with
//   r = 0: (2t, g)   r = 1: (2t + 8, g)
Cell b_cell(int lane, int r) { return {2 * (lane % 4) + 8 * r, lane / 4}; }
// C / D (16 x 8, fp32): element e of a lane is
//   e = 0: (g, 2t)   e = 1: (g, 2t + 1)   e = 2: (g + 8, 2t)   e = 3: (g + 8, 2t + 1)
Cell c_cell(int lane, int e) { return {lane / 4 + (e >= 2 ? 8 : 0), 2 * (lane % 4) + e % 2}; }

// ldmatrix .m8n8: register i of lane l holds, of matrix i,
//   (row g, cols 2t and 2t + 1), or with .trans (rows 2t and 2t + 1, col g);
// lanes 8i .. 8i + 7 give the addresses of rows 0..7 of matrix i.
uint32_t ldmatrix_expected(const std::vector<uint16_t>& m /* [matrix][8][8] */, int i, int lane,
                           bool trans) {
  const int g = lane / 4, t = lane % 4;
  const auto at = [&](int row, int col) { return uint32_t{m[(i * 8 + row) * 8 + col]}; };
  return trans ? at(2 * t, g) | (at(2 * t + 1, g) << 16) : at(g, 2 * t) | (at(g, 2 * t + 1) << 16);
}

// ---- Host helpers ----------------------------------------------------------------

template <typename T>
struct DeviceArray {
  explicit DeviceArray(size_t n, const T* init = nullptr) : count(n) {
    EXPECT_EQ(cudaMalloc(&ptr, n * sizeof(T)), cudaSuccess);
    if (init != nullptr) {
      EXPECT_EQ(cudaMemcpy(ptr, init, n * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
    }
  }
  explicit DeviceArray(const std::vector<T>& v) : DeviceArray(v.size(), v.data()) {}
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  std::vector<T> get() const {
    std::vector<T> v(count);
    EXPECT_EQ(cudaMemcpy(v.data(), ptr, count * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
  T* ptr = nullptr;
  size_t count;
};

uint16_t to_bits(float x, bool bf16) {
  uint16_t bits;
  if (bf16) {
    const __nv_bfloat16 h = __float2bfloat16_rn(x);
    std::memcpy(&bits, &h, 2);
  } else {
    const __half h = __float2half_rn(x);
    std::memcpy(&bits, &h, 2);
  }
  return bits;
}

float from_bits(uint16_t bits, bool bf16) {
  if (bf16) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

// A kernel fault: the sticky error is set and the report names `what`; the
// device is reset for the next test.
void expect_fault(const std::string& what) {
  EXPECT_NE(cudaDeviceSynchronize(), cudaSuccess);
  const std::string fault = spembed::emu::last_fault();
  EXPECT_NE(fault.find(what), std::string::npos) << "fault: " << fault;
  cudaDeviceReset();
}

class PtxEmulation : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(cudaDeviceReset(), cudaSuccess); }
  void TearDown() override { EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess); }
  std::mt19937_64 rng{20240611};
};

// ---- mma.sync from registers -------------------------------------------------------

// D = A B + C for one warp: fragments gathered from a (16 x 16 row-major),
// b ([k][n], 16 x 8) and c (16 x 8) by the tables above; `swap_a` swaps a1 and
// a2 first (a wrong table the comparison must catch).
__global__ void mma_kernel(const uint16_t* a, const uint16_t* b, const float* c, float* d,
                           bool bf16, bool swap_a) {
  const int lane = static_cast<int>(threadIdx.x);
  uint32_t af[4], b0, b1;
  for (int r = 0; r < 4; ++r) {
    const Cell x = a_cell(lane, r);
    af[r] = a[x.row * 16 + x.col] | (uint32_t{a[x.row * 16 + x.col + 1]} << 16);
  }
  if (swap_a) {
    const uint32_t tmp = af[1];
    af[1] = af[2];
    af[2] = tmp;
  }
  uint32_t bf[2];
  for (int r = 0; r < 2; ++r) {
    const Cell x = b_cell(lane, r);
    bf[r] = b[x.row * 8 + x.col] | (uint32_t{b[(x.row + 1) * 8 + x.col]} << 16);
  }
  b0 = bf[0];
  b1 = bf[1];
  float acc[4];
  for (int e = 0; e < 4; ++e) acc[e] = c[c_cell(lane, e).row * 8 + c_cell(lane, e).col];
  if (bf16) {
    spembed::ptx::mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(acc, af, b0, b1);
  } else {
    spembed::ptx::mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(acc, af, b0, b1);
  }
  for (int e = 0; e < 4; ++e) d[c_cell(lane, e).row * 8 + c_cell(lane, e).col] = acc[e];
}

struct MmaProblem {
  std::vector<uint16_t> a, b;      // element bits
  std::vector<float> c;            // 16 x 8
  std::vector<double> ref, terms;  // A B + C in float64, and sum of |products| + |c|
};

// Dyadic values k / 4 with |k| <= 8 (exact in fp16 and bf16; every partial sum
// of the product is a multiple of 1 / 16 below 2^10: exact in fp32), or reals.
MmaProblem make_mma_problem(std::mt19937_64& rng, bool bf16, bool dyadic) {
  MmaProblem p;
  std::uniform_int_distribution<int> small(-8, 8);
  std::uniform_real_distribution<float> real(-2.f, 2.f);
  const auto draw = [&] { return dyadic ? small(rng) / 4.f : real(rng); };
  p.a.resize(16 * 16);
  p.b.resize(16 * 8);
  p.c.resize(16 * 8);
  for (uint16_t& x : p.a) x = to_bits(draw(), bf16);
  for (uint16_t& x : p.b) x = to_bits(draw(), bf16);
  for (float& x : p.c) x = dyadic ? small(rng) / 16.f : real(rng);
  p.ref.assign(16 * 8, 0.0);
  p.terms.assign(16 * 8, 0.0);
  for (int r = 0; r < 16; ++r) {
    for (int n = 0; n < 8; ++n) {
      double s = p.c[r * 8 + n], t = std::fabs(s);
      for (int k = 0; k < 16; ++k) {
        const double x = double{from_bits(p.a[r * 16 + k], bf16)} * from_bits(p.b[k * 8 + n], bf16);
        s += x;
        t += std::fabs(x);
      }
      p.ref[r * 8 + n] = s;
      p.terms[r * 8 + n] = t;
    }
  }
  return p;
}

std::vector<float> run_mma(const MmaProblem& p, bool bf16, bool swap_a) {
  DeviceArray<uint16_t> a(p.a), b(p.b);
  DeviceArray<float> c(p.c), d(16 * 8);
  launch_kernel(mma_kernel, 1, 32, 0, nullptr, static_cast<const uint16_t*>(a.ptr),
                static_cast<const uint16_t*>(b.ptr), static_cast<const float*>(c.ptr), d.ptr, bf16,
                swap_a);
  EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
  return d.get();
}

TEST_F(PtxEmulation, MmaIsTheExactProductOnDyadicValues) {
  for (bool bf16 : {false, true}) {
    for (int rep = 0; rep < 4; ++rep) {
      SCOPED_TRACE(std::string(bf16 ? "bf16" : "f16") + " rep " + std::to_string(rep));
      const MmaProblem p = make_mma_problem(rng, bf16, true);
      const std::vector<float> d = run_mma(p, bf16, false);
      for (int i = 0; i < 16 * 8; ++i)
        ASSERT_EQ(double{d[i]}, p.ref[i]) << "row " << i / 8 << " col " << i % 8;
    }
  }
}

TEST_F(PtxEmulation, MmaAccumulatesInFp32OnReals) {
  for (bool bf16 : {false, true}) {
    SCOPED_TRACE(bf16 ? "bf16" : "f16");
    const MmaProblem p = make_mma_problem(rng, bf16, false);
    const std::vector<float> d = run_mma(p, bf16, false);
    for (int i = 0; i < 16 * 8; ++i) {
      // 17 fp32 additions: at most ~17 u of the sum of magnitudes.
      EXPECT_LE(std::fabs(d[i] - p.ref[i]), 17 * 0x1p-24 * p.terms[i]) << i;
    }
  }
}

// The comparison catches a wrong fragment table: with a1 and a2 swapped (rows
// g + 8 and columns 2t + 8 exchanged) the product comes out wrong.
TEST_F(PtxEmulation, SwappedFragmentRegistersAreCaught) {
  for (bool bf16 : {false, true}) {
    const MmaProblem p = make_mma_problem(rng, bf16, true);
    const std::vector<float> d = run_mma(p, bf16, true);
    int wrong = 0;
    for (int i = 0; i < 16 * 8; ++i) wrong += double{d[i]} != p.ref[i];
    EXPECT_GT(wrong, 16 * 8 / 2) << (bf16 ? "bf16" : "f16");
  }
}

// ---- ldmatrix --------------------------------------------------------------------

constexpr int kSlots = 40;  // 16-byte rows of shared memory; matrix rows are scattered over them

template <int kMatrices, bool kTrans>
__global__ void ldmatrix_kernel(const uint16_t* m, const int* slot_of_row, uint32_t* out) {
  auto* smem = dynamic_shared_memory<uint16_t>();
  const int lane = static_cast<int>(threadIdx.x);
  for (int e = lane; e < kMatrices * 64; e += 32) smem[slot_of_row[e / 8] * 8 + e % 8] = m[e];
  __syncthreads();
  uint32_t address;
  if (lane < 8 * kMatrices) {
    // Lane 8i + r: row r of matrix i.
    address = static_cast<uint32_t>(__cvta_generic_to_shared(smem + slot_of_row[lane] * 8));
  } else {
    // Unused by this form: must be neither read nor checked.
    address = lane % 2 == 0 ? 3u : 0xfffffff0u;
  }
  uint32_t r[kMatrices];
  if constexpr (kMatrices == 1) {
    if constexpr (kTrans)
      spembed::ptx::ldmatrix_sync_aligned_m8n8_x1_trans_shared_b16(r, address);
    else
      spembed::ptx::ldmatrix_sync_aligned_m8n8_x1_shared_b16(r, address);
  } else if constexpr (kMatrices == 2) {
    if constexpr (kTrans)
      spembed::ptx::ldmatrix_sync_aligned_m8n8_x2_trans_shared_b16(r, address);
    else
      spembed::ptx::ldmatrix_sync_aligned_m8n8_x2_shared_b16(r, address);
  } else {
    if constexpr (kTrans)
      spembed::ptx::ldmatrix_sync_aligned_m8n8_x4_trans_shared_b16(r, address);
    else
      spembed::ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(r, address);
  }
  for (int i = 0; i < kMatrices; ++i) out[lane * kMatrices + i] = r[i];
}

template <int kMatrices, bool kTrans>
void check_ldmatrix(std::mt19937_64& rng) {
  SCOPED_TRACE("x" + std::to_string(kMatrices) + (kTrans ? ".trans" : ""));
  std::vector<uint16_t> m(kMatrices * 64);
  for (uint16_t& x : m) x = static_cast<uint16_t>(rng());
  std::vector<int> slots(kSlots);
  for (int i = 0; i < kSlots; ++i) slots[i] = i;
  std::shuffle(slots.begin(), slots.end(), rng);
  slots.resize(kMatrices * 8);
  DeviceArray<uint16_t> dm(m);
  DeviceArray<int> ds(slots);
  DeviceArray<uint32_t> out(32 * kMatrices);
  launch_kernel(ldmatrix_kernel<kMatrices, kTrans>, 1, 32, kSlots * 16, nullptr,
                static_cast<const uint16_t*>(dm.ptr), static_cast<const int*>(ds.ptr), out.ptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
  const std::vector<uint32_t> got = out.get();
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < kMatrices; ++i) {
      EXPECT_EQ(got[lane * kMatrices + i], ldmatrix_expected(m, i, lane, kTrans))
          << "lane " << lane << " register " << i;
    }
  }
}

TEST_F(PtxEmulation, LdmatrixDistributesRowsAsTheIsaSays) {
  check_ldmatrix<1, false>(rng);
  check_ldmatrix<2, false>(rng);
  check_ldmatrix<4, false>(rng);
  check_ldmatrix<1, true>(rng);
  check_ldmatrix<2, true>(rng);
  check_ldmatrix<4, true>(rng);
}

// ---- ldmatrix + mma end to end ------------------------------------------------------

// A (16 x 16, row-major) with ldmatrix.x4: matrices (rows 0-7, k 0-7),
// (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15, k 8-15) are a0..a3 by the
// tables above. B either stored [n][k] (B col-major) with ldmatrix.x2:
// matrices (n 0-7, k 0-7), (n 0-7, k 8-15) = b0, b1; or stored [k][n] with
// ldmatrix.x2.trans: matrices (k 0-7), (k 8-15).
__global__ void ldmatrix_mma_kernel(const uint16_t* a, const uint16_t* b_kn, float* d, bool bf16,
                                    bool b_trans) {
  constexpr int kLd = 24;  // row stride in elements: 48 bytes
  auto* smem = dynamic_shared_memory<uint16_t>();
  uint16_t* as = smem;             // [16][kLd]
  uint16_t* bs = smem + 16 * kLd;  // [8][kLd] ([n][k]) or [16][kLd] ([k][n])
  const int lane = static_cast<int>(threadIdx.x);
  for (int e = lane; e < 256; e += 32) as[(e / 16) * kLd + e % 16] = a[e];
  for (int e = lane; e < 128; e += 32) {
    const int k = e / 8, n = e % 8;
    if (b_trans) {
      bs[k * kLd + n] = b_kn[e];
    } else {
      bs[n * kLd + k] = b_kn[e];
    }
  }
  __syncthreads();
  const int i = lane / 8, r = lane % 8;
  uint32_t af[4];
  spembed::ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(
      af,
      static_cast<uint32_t>(__cvta_generic_to_shared(as + (r + 8 * (i % 2)) * kLd + 8 * (i / 2))));
  uint32_t bf[2];
  if (b_trans) {
    spembed::ptx::ldmatrix_sync_aligned_m8n8_x2_trans_shared_b16(
        bf, static_cast<uint32_t>(__cvta_generic_to_shared(bs + (r + 8 * (i % 2)) * kLd)));
  } else {
    spembed::ptx::ldmatrix_sync_aligned_m8n8_x2_shared_b16(
        bf, static_cast<uint32_t>(__cvta_generic_to_shared(bs + r * kLd + 8 * (i % 2))));
  }
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (bf16) {
    spembed::ptx::mma_sync_aligned_m16n8k16_row_col_f32_bf16_bf16_f32(acc, af, bf[0], bf[1]);
  } else {
    spembed::ptx::mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(acc, af, bf[0], bf[1]);
  }
  for (int e = 0; e < 4; ++e) d[c_cell(lane, e).row * 8 + c_cell(lane, e).col] = acc[e];
}

TEST_F(PtxEmulation, LdmatrixThenMmaIsTheProduct) {
  for (bool bf16 : {false, true}) {
    for (bool b_trans : {false, true}) {
      SCOPED_TRACE(std::string(bf16 ? "bf16" : "f16") + (b_trans ? " B via .trans" : " B [n][k]"));
      MmaProblem p = make_mma_problem(rng, bf16, true);
      DeviceArray<uint16_t> a(p.a), b(p.b);
      DeviceArray<float> d(16 * 8);
      launch_kernel(ldmatrix_mma_kernel, 1, 32, (16 + 16) * 24 * 2, nullptr,
                    static_cast<const uint16_t*>(a.ptr), static_cast<const uint16_t*>(b.ptr), d.ptr,
                    bf16, b_trans);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
      const std::vector<float> got = d.get();
      for (int i = 0; i < 16 * 8; ++i) {
        EXPECT_EQ(double{got[i]}, p.ref[i] - p.c[i]) << "row " << i / 8 << " col " << i % 8;
      }
    }
  }
}

// ---- cp.async --------------------------------------------------------------------

uint32_t shared_offset(const void* p) { return static_cast<uint32_t>(__cvta_generic_to_shared(p)); }

// Thread k copies 16 bytes from src + 16 k with src-size sizes[k] into
// shared memory, then (after wait_group 0 and a barrier) thread k + 1 (mod
// n) copies them out: the reader is another thread.
__global__ void cp_async_tail_kernel(const unsigned char* src, const int* sizes,
                                     unsigned char* out) {
  auto* smem = dynamic_shared_memory<unsigned char>();
  const int n = static_cast<int>(blockDim.x);
  const int k = static_cast<int>(threadIdx.x);
  spembed::ptx::cp_async_cg_shared_global_16(shared_offset(smem + 16 * k), src + 16 * k, sizes[k]);
  spembed::ptx::cp_async_commit_group();
  spembed::ptx::cp_async_wait_group<0>();
  __syncthreads();
  const int j = (k + 1) % n;
  for (int b = 0; b < 16; ++b) out[16 * j + b] = smem[16 * j + b];
}

TEST_F(PtxEmulation, CpAsyncZeroFillsPastSrcSize) {
  // Thread k reads k % 17 bytes; the buffer ends right after the last
  // thread's bytes, so reading more than src-size is a heap overflow
  // (AddressSanitizer).
  constexpr int kThreads = 51;
  std::vector<int> sizes(kThreads);
  for (int k = 0; k < kThreads; ++k) sizes[k] = k % 17;
  sizes[kThreads - 1] = 5;
  const size_t bytes = 16 * (kThreads - 1) + 5;
  std::vector<unsigned char> src(bytes);
  for (unsigned char& b : src) b = static_cast<unsigned char>(rng() % 255);  // never 0xFF
  DeviceArray<unsigned char> dsrc(src);
  DeviceArray<int> dsizes(sizes);
  DeviceArray<unsigned char> out(16 * kThreads);
  launch_kernel(cp_async_tail_kernel, 1, kThreads, 16 * kThreads, nullptr,
                static_cast<const unsigned char*>(dsrc.ptr), static_cast<const int*>(dsizes.ptr),
                out.ptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
  const std::vector<unsigned char> got = out.get();
  for (int k = 0; k < kThreads; ++k) {
    for (int b = 0; b < 16; ++b) {
      const unsigned char want = b < sizes[k] ? src[16 * k + b] : 0;
      ASSERT_EQ(got[16 * k + b], want) << "thread " << k << " byte " << b;
    }
  }
}

// src-size 0 reads nothing: from one past the end of an allocation, and from
// an address that crashes the process if read.
__global__ void cp_async_src_size_zero_kernel(const unsigned char* past_end, unsigned char* out) {
  auto* smem = dynamic_shared_memory<unsigned char>();
  const int k = static_cast<int>(threadIdx.x);
  const unsigned char* src =
      k == 0 ? past_end : reinterpret_cast<const unsigned char*>(uintptr_t{256});
  spembed::ptx::cp_async_cg_shared_global_16(shared_offset(smem + 16 * k), src, 0);
  spembed::ptx::cp_async_commit_group();
  spembed::ptx::cp_async_wait_group<0>();
  for (int b = 0; b < 16; ++b) out[16 * k + b] = smem[16 * k + b];
}

TEST_F(PtxEmulation, CpAsyncSrcSizeZeroReadsNothing) {
  DeviceArray<unsigned char> buffer(64), out(32);
  launch_kernel(cp_async_src_size_zero_kernel, 1, 2, 32, nullptr,
                static_cast<const unsigned char*>(buffer.ptr + 64), out.ptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
  for (unsigned char b : out.get()) EXPECT_EQ(b, 0);
}

// One thread, three copies: A (group 0), B (group 1), C (not committed).
// Snapshots of shared memory after wait_group 1, wait_group 0, then commit
// and wait_group 0.
__global__ void cp_async_groups_kernel(const unsigned char* src, unsigned char* snapshots) {
  auto* smem = dynamic_shared_memory<unsigned char>();
  namespace ptx = spembed::ptx;
  if (threadIdx.x == 0) {
    ptx::cp_async_cg_shared_global_16(shared_offset(smem), src, 16);
    ptx::cp_async_commit_group();
    ptx::cp_async_cg_shared_global_16(shared_offset(smem + 16), src + 16, 16);
    ptx::cp_async_commit_group();
    ptx::cp_async_cg_shared_global_16(shared_offset(smem + 32), src + 32, 16);
    ptx::cp_async_wait_group<1>();
    for (int b = 0; b < 48; ++b) snapshots[b] = smem[b];
    ptx::cp_async_wait_group<0>();
    for (int b = 0; b < 48; ++b) snapshots[48 + b] = smem[b];
    ptx::cp_async_commit_group();
    ptx::cp_async_wait_group<0>();
    for (int b = 0; b < 48; ++b) snapshots[96 + b] = smem[b];
  }
}

TEST_F(PtxEmulation, CpAsyncLandsWhenItsGroupIsWaitedFor) {
  std::vector<unsigned char> src(48);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i + 1);
  DeviceArray<unsigned char> dsrc(src), snaps(3 * 48);
  launch_kernel(cp_async_groups_kernel, 1, 32, 48, nullptr,
                static_cast<const unsigned char*>(dsrc.ptr), snaps.ptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
  const std::vector<unsigned char> s = snaps.get();
  const unsigned char poison = spembed::emu::kPoisonByte;
  for (int b = 0; b < 48; ++b) {
    const int copy = b / 16;  // A, B, C
    EXPECT_EQ(s[b], copy == 0 ? src[b] : poison) << "after wait_group 1, byte " << b;
    EXPECT_EQ(s[48 + b], copy <= 1 ? src[b] : poison) << "after wait_group 0, byte " << b;
    EXPECT_EQ(s[96 + b], src[b]) << "after commit, wait_group 0, byte " << b;
  }
}

// Thread 0 fills shared memory, issues a copy over it and commits; thread 1
// reads it after a barrier but before thread 0's wait (poison: the copy is in
// flight), and again after thread 0's wait and a barrier (the data).
__global__ void cp_async_skipped_wait_kernel(const unsigned char* src, unsigned char* before,
                                             unsigned char* after) {
  auto* smem = dynamic_shared_memory<unsigned char>();
  if (threadIdx.x == 0) {
    for (int b = 0; b < 16; ++b) smem[b] = 0x11;
    spembed::ptx::cp_async_cg_shared_global_16(shared_offset(smem), src, 16);
    spembed::ptx::cp_async_commit_group();
  }
  __syncthreads();
  if (threadIdx.x == 1) {
    for (int b = 0; b < 16; ++b) before[b] = smem[b];
  }
  __syncthreads();
  if (threadIdx.x == 0) spembed::ptx::cp_async_wait_group<0>();
  __syncthreads();
  if (threadIdx.x == 1) {
    for (int b = 0; b < 16; ++b) after[b] = smem[b];
  }
}

TEST_F(PtxEmulation, CpAsyncReaderThatSkipsTheWaitSeesPoison) {
  std::vector<unsigned char> src(16, 0x42);
  DeviceArray<unsigned char> dsrc(src), before(16), after(16);
  launch_kernel(cp_async_skipped_wait_kernel, 1, 64, 16, nullptr,
                static_cast<const unsigned char*>(dsrc.ptr), before.ptr, after.ptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
  for (unsigned char b : before.get()) EXPECT_EQ(b, spembed::emu::kPoisonByte);
  for (unsigned char b : after.get()) EXPECT_EQ(b, 0x42);
}

// A copy never waited for never lands: not in its block, and not in the next
// block run by the same thread index (whose wait_group must not land it).
__global__ void cp_async_never_waited_kernel(const unsigned char* src, unsigned char* seen,
                                             bool issue) {
  auto* smem = dynamic_shared_memory<unsigned char>();
  if (threadIdx.x == 0) {
    if (issue) {
      spembed::ptx::cp_async_cg_shared_global_16(shared_offset(smem), src, 16);
      spembed::ptx::cp_async_commit_group();
    } else {
      spembed::ptx::cp_async_wait_group<0>();
      for (int b = 0; b < 16; ++b) seen[b] = smem[b];
    }
  }
}

TEST_F(PtxEmulation, CpAsyncNeverWaitedForNeverLands) {
  std::vector<unsigned char> src(16, 0x42);
  DeviceArray<unsigned char> dsrc(src), seen(16);
  for (bool issue : {true, false}) {
    launch_kernel(cp_async_never_waited_kernel, 1, 32, 16, nullptr,
                  static_cast<const unsigned char*>(dsrc.ptr), seen.ptr, issue);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess) << spembed::emu::last_fault();
  }
  for (unsigned char b : seen.get()) EXPECT_EQ(b, spembed::emu::kPoisonByte);
}

// ---- Faults ---------------------------------------------------------------------------

// kind 0: lane 5 gives a row address 8 bytes off the 16-byte grid;
// 1: lane 30 gives an address past the end of shared memory;
// 2: cp.async to a misaligned destination; 3: from a misaligned source;
// 4: lanes 0-15 at ldmatrix.x4, lanes 16-31 at mma (two instruction forms).
__global__ void fault_kernel(const unsigned char* src, int kind) {
  auto* smem = dynamic_shared_memory<uint16_t>();
  const int lane = static_cast<int>(threadIdx.x);
  uint32_t address = shared_offset(smem + lane * 8);
  if (kind == 0 && lane == 5) address += 8;
  if (kind == 1 && lane == 30) address = shared_offset(smem) + 32 * 16;
  uint32_t r[4] = {0, 0, 0, 0};
  if (kind == 2 && lane == 0) spembed::ptx::cp_async_cg_shared_global_16(address + 4, src, 16);
  if (kind == 3 && lane == 0) spembed::ptx::cp_async_cg_shared_global_16(address, src + 2, 16);
  if (kind == 4 && lane >= 16) {
    float c[4] = {0.f, 0.f, 0.f, 0.f};
    spembed::ptx::mma_sync_aligned_m16n8k16_row_col_f32_f16_f16_f32(c, r, 0u, 0u);
    return;
  }
  spembed::ptx::ldmatrix_sync_aligned_m8n8_x4_shared_b16(r, address);
}

TEST_F(PtxEmulation, BadAddressesAndMixedFormsFault) {
  DeviceArray<unsigned char> src(64);
  const struct {
    int kind;
    const char* what;
  } cases[] = {{0, "ldmatrix.sync.aligned.m8n8.x4.shared.b16: row address 0x58 of lane 5"},
               {1, "outside the block's 512 bytes of dynamic shared memory"},
               {2, "destination 0x4 (shared window) is not 16-byte aligned"},
               {3, "is not 16-byte aligned"},
               {4, "deadlock"}};
  for (const auto& c : cases) {
    SCOPED_TRACE(c.kind);
    launch_kernel(fault_kernel, 1, 32, 32 * 16, nullptr, static_cast<const unsigned char*>(src.ptr),
                  c.kind);
    expect_fault(c.what);
  }
}

}  // namespace
