// The CPU varlen attention (the oracle of the CUDA tests): hand-computed
// cases, agreement with the independent float64 reference of
// attention_test_util on random inputs (masks, windows, GQA, every dtype),
// a finite-difference check of the backward, and determinism.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "attention_test_util.h"

namespace spembed_test {
namespace {

class AttentionCpu : public ::testing::Test {
 public:
  void SetUp() override { ASSERT_EQ(spembed_create(&handle_), SPEMBED_STATUS_SUCCESS); }
  void TearDown() override { spembed_destroy(handle_); }

  void forward(AttentionData& d, HostTensor& out, HostTensor* lse) {
    ASSERT_EQ(spembed_varlen_attention_forward(
                  handle_, d.q.dl(), d.k.dl(), d.v.dl(), d.cu_q.dl(), d.cu_k.dl(), &d.options,
                  out.dl(), lse ? lse->dl() : nullptr, nullptr, nullptr, 0, nullptr),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
  }
  void backward(AttentionData& d, HostTensor& out, HostTensor& lse, HostTensor& dq, HostTensor& dk,
                HostTensor& dv) {
    ASSERT_EQ(spembed_varlen_attention_backward(handle_, d.q.dl(), d.k.dl(), d.v.dl(), out.dl(),
                                                d.dout.dl(), lse.dl(), d.cu_q.dl(), d.cu_k.dl(),
                                                &d.options, 1, dq.dl(), dk.dl(), dv.dl(), nullptr,
                                                nullptr, 0, nullptr),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
  }

  spembed_handle_t handle_ = nullptr;
};

// d = 1, scale 1, causal. Sequences (Lq, Lk): (2, 2), (0, 0), (3, 1), (1, 0).
TEST_F(AttentionCpu, HandComputedCausalWithEmptyAndMaskedRows) {
  AttentionCase c;
  c.head_dim = 1;
  c.lens_q = {2, 0, 3, 1};
  c.lens_k = {2, 0, 1, 0};
  c.causal = true;
  c.scale = 1.f;
  AttentionData d = make_attention(c);
  // Q tokens: seq0 {1, 2}, seq2 {5, 6, 7}, seq3 {4}; K: seq0 {0, 1}, seq2 {1};
  // V: seq0 {2, 4}, seq2 {3}. All exact in float32.
  const double qv[] = {1, 2, 5, 6, 7, 4}, kv[] = {0, 1, 1}, vv[] = {2, 4, 3};
  for (int t = 0; t < 6; ++t) d.q.set(t, 0, qv[t]);
  for (int t = 0; t < 3; ++t) {
    d.k.set(t, 0, kv[t]);
    d.v.set(t, 0, vv[t]);
  }
  HostTensor out = make_q_like(d), lse = make_lse(d);
  forward(d, out, &lse);
  const double e2 = std::exp(2.0);
  const double ninf = -std::numeric_limits<double>::infinity();
  // seq0 query 0 sees key 0 only (bottom-right causal, Lq == Lk): O = 2, lse = 0.
  // seq0 query 1 sees keys 0, 1 with scores 0, 2.
  // seq2 (Lq 3 > Lk 1): queries 0, 1 see nothing; query 2 sees key 0 (score 7).
  // seq3 has no keys.
  const double want_o[] = {2, (2 + 4 * e2) / (1 + e2), 0, 0, 3, 0};
  const double want_lse[] = {0, std::log(1 + e2), ninf, ninf, 7, ninf};
  for (int t = 0; t < 6; ++t) {
    SCOPED_TRACE("token " + std::to_string(t));
    EXPECT_NEAR(out.get(t, 0), want_o[t], 4e-7 * std::fabs(want_o[t]));
    if (std::isinf(want_lse[t])) {
      EXPECT_TRUE(std::isinf(lse.get(0, t)) && lse.get(0, t) < 0) << lse.get(0, t);
    } else {
      EXPECT_NEAR(lse.get(0, t), want_lse[t], 4e-7 * (1 + std::fabs(want_lse[t])));
    }
  }

  // Backward with dO = 1: masked rows and key-less sequences get zero
  // gradients; seq2's only key is seen by query 2 alone with P = 1, so
  // dV = dO = 1 and dK = scale * dS * q = 0 (dS = P (dO.v - dO.O) = 0).
  for (int t = 0; t < 6; ++t) d.dout.set(t, 0, 1.0);
  HostTensor dq = make_q_like(d), dk = make_k_like(d), dv = make_k_like(d);
  backward(d, out, lse, dq, dk, dv);
  EXPECT_EQ(dq.get(2, 0), 0.0);
  EXPECT_EQ(dq.get(3, 0), 0.0);
  EXPECT_EQ(dq.get(5, 0), 0.0);
  EXPECT_EQ(dq.get(4, 0), 0.0);
  EXPECT_EQ(dk.get(2, 0), 0.0);
  EXPECT_NEAR(dv.get(2, 0), 1.0, 1e-6);
  // seq0: dV[0] = P00 + P10 = 1 + 1/(1+e^2); dV[1] = e^2/(1+e^2).
  EXPECT_NEAR(dv.get(0, 0), 1 + 1 / (1 + e2), 1e-6);
  EXPECT_NEAR(dv.get(1, 0), e2 / (1 + e2), 1e-6);
  // dQ[1] = sum_j dS_1j k_j with dS_1j = P_1j (v_j - O_1), k = {0, 1}:
  // = P_11 (4 - O_1).
  const double p11 = e2 / (1 + e2), o1 = (2 + 4 * e2) / (1 + e2);
  EXPECT_NEAR(dq.get(1, 0), p11 * (4 - o1), 1e-6);
  EXPECT_EQ(dq.get(0, 0), 0.0);  // row 0 sees one key: P = 1, dS = 1 * (2 - 2) = 0
}

struct RefCase {
  const char* name;
  AttentionCase c;
};

// What GoogleTest prints for GetParam() (instead of a byte dump).
void PrintTo(const RefCase& r, std::ostream* os) {
  const AttentionCase& c = r.c;
  const auto lens = [&](const std::vector<int64_t>& v) {
    std::string s;
    for (int64_t x : v) s += (s.empty() ? "" : ",") + std::to_string(x);
    return "{" + s + "}";
  };
  *os << r.name << ": dtype=" << dtype_name(c.dtype) << " heads=" << c.heads << "/" << c.kv_heads
      << " d=" << c.head_dim << " lens_q=" << lens(c.lens_q) << " lens_k=" << lens(c.lens_k)
      << " causal=" << (c.causal ? "yes" : "no") << " window=" << c.window_left << ","
      << c.window_right << " scale=" << c.scale << " seed=" << c.seed;
}

AttentionCase make_case(DLDataType t, int heads, int kv_heads, int d, std::vector<int64_t> lq,
                        std::vector<int64_t> lk, bool causal, int64_t wl = -1, int64_t wr = -1,
                        float scale = 0.f) {
  AttentionCase c;
  c.dtype = t;
  c.heads = heads;
  c.kv_heads = kv_heads;
  c.head_dim = d;
  c.lens_q = std::move(lq);
  c.lens_k = std::move(lk);
  c.causal = causal;
  c.window_left = wl;
  c.window_right = wr;
  c.scale = scale;
  return c;
}

class AttentionCpuReference : public AttentionCpu, public ::testing::WithParamInterface<RefCase> {};

// The CPU forward computes in float64 and rounds once: |error| <= u |ref| plus
// float64 noise. The backward reads O and lse as stored (float32 for lse;
// O in the dtype), which perturbs P by about u_dtype (|lse| + |dO.O|);
// 64 u_dtype (1 + max |ref|) covers that for the magnitudes of these inputs
// (|q.k| * scale <= 3 for unit-range data).
void expect_matches_float64_reference(AttentionCpu& t, AttentionData& d, HostTensor& out,
                                      HostTensor& lse, HostTensor& dq, HostTensor& dk,
                                      HostTensor& dv);

TEST_P(AttentionCpuReference, MatchesFloat64Reference) {
  AttentionData d = make_attention(GetParam().c);
  HostTensor out = make_q_like(d), lse = make_lse(d);
  HostTensor dq = make_q_like(d), dk = make_k_like(d), dv = make_k_like(d);
  expect_matches_float64_reference(*this, d, out, lse, dq, dk, dv);
}

void expect_matches_float64_reference(AttentionCpu& t, AttentionData& d, HostTensor& out,
                                      HostTensor& lse, HostTensor& dq, HostTensor& dk,
                                      HostTensor& dv) {
  t.forward(d, out, &lse);
  const AttentionResult ref = reference_attention(d);
  const double u = unit_roundoff(d.c.dtype);
  const std::vector<double> got = read_all(out);
  for (size_t i = 0; i < got.size(); ++i) {
    ASSERT_LE(std::fabs(got[i] - ref.out[i]), u * std::fabs(ref.out[i]) + 1e-12)
        << "out element " << i;
  }
  const std::vector<double> got_lse = read_all(lse);
  for (size_t i = 0; i < got_lse.size(); ++i) {
    if (std::isinf(ref.lse[i])) {
      ASSERT_TRUE(std::isinf(got_lse[i]) && got_lse[i] < 0) << "lse " << i;
    } else {
      ASSERT_LE(std::fabs(got_lse[i] - ref.lse[i]), 2.0 * 0x1p-24 * std::fabs(ref.lse[i]) + 1e-12)
          << "lse " << i;
    }
  }
  t.backward(d, out, lse, dq, dk, dv);
  const struct {
    const char* name;
    const HostTensor& t;
    const std::vector<double>& r;
  } grads[] = {{"dq", dq, ref.dq}, {"dk", dk, ref.dk}, {"dv", dv, ref.dv}};
  for (const auto& g : grads) {
    double scale = 1.0;
    for (double x : g.r) scale = std::max(scale, std::fabs(x));
    EXPECT_LE(max_abs_diff(read_all(g.t), g.r), 64 * u * scale) << g.name;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AttentionCpuReference,
    ::testing::Values(
        RefCase{"self_f32", make_case(kF32, 2, 2, 8, {5, 0, 17}, {5, 0, 17}, false)},
        RefCase{"causal_f32", make_case(kF32, 2, 1, 7, {5, 1, 17}, {5, 1, 17}, true)},
        RefCase{"target_f32", make_case(kF32, 4, 2, 5, {3, 2}, {11, 0}, false)},
        RefCase{"target_causal_f32", make_case(kF32, 4, 4, 3, {3, 6}, {11, 4}, true)},
        RefCase{"window_f32", make_case(kF32, 2, 1, 4, {9, 12}, {9, 10}, false, 2, 1)},
        RefCase{"window_causal_f32", make_case(kF32, 1, 1, 6, {9}, {9}, true, 3, -1, 0.5f)},
        RefCase{"mqa_f16", make_case(kF16, 4, 1, 16, {7, 3}, {7, 9}, true)},
        RefCase{"gqa_bf16", make_case(kBF16, 8, 2, 9, {6, 0, 4}, {8, 3, 4}, false)},
        // Longer than one key block (256) and one work item (256 rows).
        RefCase{"long_causal_f32", make_case(kF32, 2, 1, 20, {300, 530}, {300, 530}, true)},
        RefCase{"long_target_f16", make_case(kF16, 2, 2, 64, {5, 1}, {700, 3}, false)},
        // Target candidates streamed over every head (forward_stream_item):
        // GQA, causal with Lq < Lk, several key blocks and a ragged last chunk.
        RefCase{"long_target_gqa_causal_f32",
                make_case(kF32, 4, 2, 20, {3, 16, 1}, {600, 300, 17}, true)},
        RefCase{"long_window_bf16",
                make_case(kBF16, 3, 3, 33, {280, 17}, {600, 17}, false, 300, 40)}),
    [](const ::testing::TestParamInfo<RefCase>& case_info) {
      return std::string(case_info.param.name);
    });

// Central differences of L = sum dO * O on the CPU forward against the CPU
// backward, for every input element of a small case. Step h = 2^-6: the
// truncation error is O(h^2) ~ 2e-4 times third derivatives of order 1, the
// float32 rounding of O contributes ~ u |L| / h ~ 1e-5.
TEST_F(AttentionCpu, BackwardMatchesFiniteDifferences) {
  AttentionData d = make_attention(make_case(kF32, 2, 1, 3, {3, 2}, {4, 2}, true));
  HostTensor out = make_q_like(d), lse = make_lse(d);
  forward(d, out, &lse);
  HostTensor dq = make_q_like(d), dk = make_k_like(d), dv = make_k_like(d);
  backward(d, out, lse, dq, dk, dv);
  auto loss = [&] {
    HostTensor o = make_q_like(d);
    forward(d, o, nullptr);
    double l = 0.0;
    const std::vector<double> ov = read_all(o), gv = read_all(d.dout);
    for (size_t i = 0; i < ov.size(); ++i) l += ov[i] * gv[i];
    return l;
  };
  const double h = 1.0 / 64;
  struct Input {
    const char* name;
    HostTensor* x;
    HostTensor* grad;
  } inputs[] = {{"q", &d.q, &dq}, {"k", &d.k, &dk}, {"v", &d.v, &dv}};
  for (const Input& in : inputs) {
    for (int64_t r = 0; r < in.x->size(0); ++r) {
      for (int64_t col = 0; col < in.x->size(1); ++col) {
        const double x0 = in.x->get(r, col);
        in.x->set(r, col, x0 + h);
        const double up = loss();
        in.x->set(r, col, x0 - h);
        const double down = loss();
        in.x->set(r, col, x0);
        const double numeric = (up - down) / (2 * h);
        EXPECT_NEAR(in.grad->get(r, col), numeric, 1e-3 * (1 + std::fabs(numeric)))
            << in.name << "[" << r << ", " << col << "]";
      }
    }
  }
}

TEST_F(AttentionCpu, RepeatedCallsAreBitwiseIdentical) {
  AttentionData d = make_attention(make_case(kF32, 4, 2, 24, {40, 3, 70}, {50, 3, 70}, true));
  HostTensor out = make_q_like(d), lse = make_lse(d);
  forward(d, out, &lse);
  HostTensor dq = make_q_like(d), dk = make_k_like(d), dv = make_k_like(d);
  backward(d, out, lse, dq, dk, dv);
  for (int run = 0; run < 3; ++run) {
    HostTensor out2 = make_q_like(d), lse2 = make_lse(d);
    forward(d, out2, &lse2);
    EXPECT_TRUE(out2.bytes_equal(out.bytes()));
    EXPECT_TRUE(lse2.bytes_equal(lse.bytes()));
    HostTensor dq2 = make_q_like(d), dk2 = make_k_like(d), dv2 = make_k_like(d);
    backward(d, out, lse, dq2, dk2, dv2);
    EXPECT_TRUE(dq2.bytes_equal(dq.bytes()));
    EXPECT_TRUE(dk2.bytes_equal(dk.bytes()));
    EXPECT_TRUE(dv2.bytes_equal(dv.bytes()));
  }
}

// SPEMBED_ATTENTION_CPU_ISA caps the instruction set of the tile kernels
// (AVX-512, AVX2 or portable code; a level the CPU lacks runs the best it
// has): each level meets the float64 reference's bounds, over masks,
// windows, GQA, odd head dims and several key blocks.
TEST_F(AttentionCpu, EveryInstructionSetMatchesFloat64Reference) {
  const AttentionCase cases[] = {
      make_case(kF32, 4, 2, 7, {9, 0, 300}, {9, 2, 300}, true),
      make_case(kF16, 4, 1, 16, {7, 3}, {7, 290}, false, 100, 5),
      make_case(kBF16, 2, 2, 50, {4, 33}, {40, 33}, true),
  };
  for (const char* isa : {"portable", "avx2", "avx512"}) {
    ASSERT_EQ(setenv("SPEMBED_ATTENTION_CPU_ISA", isa, 1), 0);
    for (const AttentionCase& c : cases) {
      SCOPED_TRACE(std::string(isa) + " " + dtype_name(c.dtype) +
                   " d=" + std::to_string(c.head_dim));
      AttentionData d = make_attention(c);
      HostTensor out = make_q_like(d), lse = make_lse(d);
      HostTensor dq = make_q_like(d), dk = make_k_like(d), dv = make_k_like(d);
      expect_matches_float64_reference(*this, d, out, lse, dq, dk, dv);
    }
  }
  ASSERT_EQ(unsetenv("SPEMBED_ATTENTION_CPU_ISA"), 0);
}

// Work items (256-row chunks of a sequence, per kv head) are claimed by any
// thread, each output written by one item in a fixed order: the results are
// bitwise the same for every thread count.
TEST_F(AttentionCpu, ResultsDoNotDependOnTheThreadCount) {
  AttentionData d =
      make_attention(make_case(kF32, 4, 2, 24, {600, 3, 70, 257}, {600, 3, 90, 257}, true, 400));
  HostTensor out = make_q_like(d), lse = make_lse(d);
  HostTensor dq = make_q_like(d), dk = make_k_like(d), dv = make_k_like(d);
  ASSERT_EQ(spembed_set_num_threads(1), SPEMBED_STATUS_SUCCESS);
  forward(d, out, &lse);
  backward(d, out, lse, dq, dk, dv);
  for (int threads : {2, 3, 5}) {
    SCOPED_TRACE("threads " + std::to_string(threads));
    ASSERT_EQ(spembed_set_num_threads(threads), SPEMBED_STATUS_SUCCESS);
    HostTensor out2 = make_q_like(d), lse2 = make_lse(d);
    forward(d, out2, &lse2);
    EXPECT_TRUE(out2.bytes_equal(out.bytes()));
    EXPECT_TRUE(lse2.bytes_equal(lse.bytes()));
    HostTensor dq2 = make_q_like(d), dk2 = make_k_like(d), dv2 = make_k_like(d);
    backward(d, out, lse, dq2, dk2, dv2);
    EXPECT_TRUE(dq2.bytes_equal(dq.bytes()));
    EXPECT_TRUE(dk2.bytes_equal(dk.bytes()));
    EXPECT_TRUE(dv2.bytes_equal(dv.bytes()));
  }
  ASSERT_EQ(spembed_set_num_threads(0), SPEMBED_STATUS_SUCCESS);
}

}  // namespace
}  // namespace spembed_test
