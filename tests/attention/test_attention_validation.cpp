// Bad input to every varlen attention entry point: the right status, a
// message naming the argument, and no output written (checked byte for byte).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>

#include "attention_test_util.h"

namespace spembed_test {
namespace {

class AttentionValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(spembed_create(&handle_), SPEMBED_STATUS_SUCCESS);
    AttentionCase c;
    c.heads = 4;
    c.kv_heads = 2;
    c.head_dim = 8;
    c.lens_q = {3, 0, 2};
    c.lens_k = {4, 1, 2};
    d_ = make_attention(c);
    out_ = make_q_like(d_);
    lse_ = make_lse(d_);
    dq_ = make_q_like(d_);
    dk_ = make_k_like(d_);
    dv_ = make_k_like(d_);
    fwd_out_ = make_q_like(d_);
    fwd_lse_ = make_lse(d_);
    reset_args();
    // Valid forward outputs for the backward's inputs.
    ASSERT_EQ(call_forward(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  }
  void TearDown() override { spembed_destroy(handle_); }

  spembed_status_t call_forward(DLTensor* out = nullptr, DLTensor* lse = nullptr) {
    return spembed_varlen_attention_forward(handle_, q_, k_, v_, cu_q_, cu_k_, &d_.options,
                                            out ? out : out_.dl(), lse ? lse : lse_.dl(),
                                            nullptr, nullptr, 0, nullptr);
  }
  // The forward into fresh poisoned outputs, and the backward, with the
  // argument pointers as the test left them.
  spembed_status_t forward_into_fresh() {
    return spembed_varlen_attention_forward(handle_, q_, k_, v_, cu_q_, cu_k_, opts_, fo_, fl_,
                                            nullptr, nullptr, 0, nullptr);
  }
  spembed_status_t backward() {
    return spembed_varlen_attention_backward(handle_, q_, k_, v_, bo_, dout_, bl_, cu_q_, cu_k_,
                                             opts_, 1, dq_p_, dk_p_, dv_p_, nullptr, nullptr, 0,
                                             nullptr);
  }

  // Runs `call` and checks status, message and that no output changed.
  void expect_rejected(const std::function<spembed_status_t()>& call, spembed_status_t status,
                       const std::string& name) {
    const auto o = fwd_out_.bytes(), l = fwd_lse_.bytes(), a = dq_.bytes(), b = dk_.bytes(),
               c = dv_.bytes();
    EXPECT_EQ(call(), status);
    const std::string message = spembed_last_error();
    EXPECT_EQ(message.rfind(name, 0), 0u) << "message: " << message;
    EXPECT_TRUE(fwd_out_.bytes_equal(o));
    EXPECT_TRUE(fwd_lse_.bytes_equal(l));
    EXPECT_TRUE(dq_.bytes_equal(a));
    EXPECT_TRUE(dk_.bytes_equal(b));
    EXPECT_TRUE(dv_.bytes_equal(c));
  }
  // Each bad input against both entry points.
  void expect_both_rejected(const std::string& name) {
    expect_rejected([&] { return forward_into_fresh(); }, SPEMBED_STATUS_INVALID_ARGUMENT, name);
    expect_rejected([&] { return backward(); }, SPEMBED_STATUS_INVALID_ARGUMENT, name);
  }

  spembed_handle_t handle_ = nullptr;
  AttentionData d_;
  HostTensor out_, lse_, dq_, dk_, dv_, fwd_out_, fwd_lse_;
  const DLTensor* q_ = nullptr;
  const DLTensor* k_ = nullptr;
  const DLTensor* v_ = nullptr;
  const DLTensor* cu_q_ = nullptr;
  const DLTensor* cu_k_ = nullptr;
  const spembed_attention_options_t* opts_ = nullptr;
  DLTensor* fo_ = nullptr;
  DLTensor* fl_ = nullptr;
  const DLTensor* bo_ = nullptr;
  const DLTensor* bl_ = nullptr;
  const DLTensor* dout_ = nullptr;
  DLTensor* dq_p_ = nullptr;
  DLTensor* dk_p_ = nullptr;
  DLTensor* dv_p_ = nullptr;

 public:
  // Points every argument at the valid tensors.
  void reset_args() {
    q_ = d_.q.dl();
    k_ = d_.k.dl();
    v_ = d_.v.dl();
    cu_q_ = d_.cu_q.dl();
    cu_k_ = d_.cu_k.dl();
    opts_ = &d_.options;
    fo_ = fwd_out_.dl();
    fl_ = fwd_lse_.dl();
    bo_ = out_.dl();
    bl_ = lse_.dl();
    dout_ = d_.dout.dl();
    dq_p_ = dq_.dl();
    dk_p_ = dk_.dl();
    dv_p_ = dv_.dl();
  }
};

TEST_F(AttentionValidation, ValidCallsSucceed) {
  reset_args();
  EXPECT_EQ(forward_into_fresh(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  EXPECT_EQ(backward(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
}

TEST_F(AttentionValidation, NullArguments) {
  reset_args();
  q_ = nullptr;
  expect_both_rejected("q:");
  reset_args();
  cu_k_ = nullptr;
  expect_both_rejected("cu_seqlens_k:");
  reset_args();
  fo_ = nullptr;
  expect_rejected([&] { return forward_into_fresh(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "out:");
  reset_args();
  bl_ = nullptr;
  expect_rejected([&] { return backward(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "lse:");
  reset_args();
  dk_p_ = nullptr;
  expect_rejected([&] { return backward(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "dk:");
  reset_args();
  expect_rejected(
      [&] {
        return spembed_varlen_attention_forward(nullptr, q_, k_, v_, cu_q_, cu_k_, opts_, fo_,
                                                fl_, nullptr, nullptr, 0, nullptr);
      },
      SPEMBED_STATUS_INVALID_ARGUMENT, "handle:");
}

TEST_F(AttentionValidation, MismatchedHeads) {
  // kv_heads = 3 does not divide heads = 4.
  AttentionCase c = d_.c;
  c.kv_heads = 3;
  c.heads = 4;
  AttentionData bad = make_attention(c);
  reset_args();
  k_ = bad.k.dl();
  expect_both_rejected("k:");
  // v with a different number of heads than k.
  reset_args();
  v_ = bad.v.dl();
  expect_both_rejected("v:");
  // out with the kv head count.
  reset_args();
  HostTensor wrong = make_k_like(d_);
  wrong.set_view_shape({d_.total_q, d_.c.kv_heads, d_.c.head_dim});
  fo_ = wrong.dl();
  expect_rejected([&] { return forward_into_fresh(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "out:");
}

TEST_F(AttentionValidation, BadOffsets) {
  // Non-monotonic, first entry not 0, last entry != total, for q and k.
  const struct {
    bool k_side;
    std::vector<int64_t> cu;
    const char* name;
  } cases[] = {
      {false, {0, 3, 2, 5}, "cu_seqlens_q[1]=3 > cu_seqlens_q[2]=2"},
      {false, {1, 3, 3, 5}, "cu_seqlens_q[0]=1"},
      {false, {0, 3, 3, 4}, "cu_seqlens_q[3]=4"},
      {true, {0, 4, 5, 6}, "cu_seqlens_k[3]=6"},
      {true, {0, 4, 3, 7}, "cu_seqlens_k[1]=4 > cu_seqlens_k[2]=3"},
  };
  for (const auto& bc : cases) {
    SCOPED_TRACE(bc.name);
    HostTensor cu = make_index_tensor(kI32, bc.cu);
    reset_args();
    (bc.k_side ? cu_k_ : cu_q_) = cu.dl();
    expect_both_rejected(bc.name);
  }
  // One entry too many for cu_seqlens_k (B + 2).
  HostTensor longer = make_index_tensor(kI32, {0, 4, 5, 7, 7});
  reset_args();
  cu_k_ = longer.dl();
  expect_both_rejected("cu_seqlens_k:");
}

TEST_F(AttentionValidation, WrongDtypes) {
  HostTensor cu64 = make_index_tensor(kI64, {0, 3, 3, 5});
  reset_args();
  cu_q_ = cu64.dl();
  expect_both_rejected("cu_seqlens_q:");
  AttentionCase c = d_.c;
  c.dtype = kF16;
  AttentionData half = make_attention(c);
  reset_args();
  k_ = half.k.dl();
  expect_both_rejected("k:");
  reset_args();
  HostTensor out16 = make_q_like(half);
  fo_ = out16.dl();
  expect_rejected([&] { return forward_into_fresh(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "out:");
  reset_args();
  HostTensor dq16 = make_q_like(half);
  dq_p_ = dq16.dl();
  expect_rejected([&] { return backward(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "dq:");
  reset_args();
  HostTensor lse16(kF16, {d_.c.heads, d_.total_q});
  fl_ = lse16.dl();
  expect_rejected([&] { return forward_into_fresh(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "lse:");
  reset_args();
  HostTensor q64(kF64, {d_.total_q, d_.c.heads * d_.c.head_dim});
  q64.set_view_shape({d_.total_q, d_.c.heads, d_.c.head_dim});
  q_ = q64.dl();
  expect_both_rejected("q:");
}

TEST_F(AttentionValidation, HeadDimOutOfRange) {
  for (int dim : {0, 257}) {
    SCOPED_TRACE(dim);
    HostTensor q(kF32, {d_.total_q, d_.c.heads * std::max(dim, 1)});
    q.set_view_shape({d_.total_q, d_.c.heads, dim});
    reset_args();
    q_ = q.dl();
    expect_both_rejected("q:");
  }
  // k's head_dim differs from q's.
  AttentionCase c = d_.c;
  c.head_dim = 9;
  AttentionData other = make_attention(c);
  reset_args();
  k_ = other.k.dl();
  expect_both_rejected("k:");
}

TEST_F(AttentionValidation, BadShapesAndStrides) {
  reset_args();
  HostTensor lse_wrong(kF32, {d_.c.heads + 1, d_.total_q});
  fl_ = lse_wrong.dl();
  expect_rejected([&] { return forward_into_fresh(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "lse:");
  // Overlapping heads (head stride < head_dim).
  reset_args();
  HostTensor overlap = make_q_like(d_);
  overlap.set_view_strides({d_.c.heads * d_.c.head_dim, d_.c.head_dim / 2, 1});
  fo_ = overlap.dl();
  expect_rejected([&] { return forward_into_fresh(); }, SPEMBED_STATUS_INVALID_ARGUMENT, "out:");
  // Non-unit innermost stride.
  reset_args();
  HostTensor strided = make_q_like(d_);
  strided.set_view_shape({d_.total_q, d_.c.heads, d_.c.head_dim / 2});
  strided.set_view_strides({d_.c.heads * d_.c.head_dim, d_.c.head_dim, 2});
  q_ = strided.dl();
  expect_both_rejected("q:");
  // 2-D q.
  reset_args();
  HostTensor flat(kF32, {d_.total_q, d_.c.heads * d_.c.head_dim});
  q_ = flat.dl();
  expect_both_rejected("q:");
}

TEST_F(AttentionValidation, BadOptions) {
  spembed_attention_options_t o = d_.options;
  const int bad_mask = 7;
  std::memcpy(&o.mask, &bad_mask, sizeof(int));
  reset_args();
  opts_ = &o;
  expect_both_rejected("options.mask:");
  o = d_.options;
  o.window_left = -2;
  expect_both_rejected("options.window_left:");
  o = d_.options;
  o.window_right = -5;
  expect_both_rejected("options.window_right:");
  o = d_.options;
  o.scale = std::numeric_limits<float>::quiet_NaN();
  expect_both_rejected("options.scale:");
  o = d_.options;
  o.max_seqlen_k = -1;
  expect_both_rejected("options.max_seqlen_k:");
}

TEST_F(AttentionValidation, WorkspaceQueries) {
  size_t bytes = 1;
  EXPECT_EQ(spembed_varlen_attention_forward_workspace_size(handle_, kDLCPU, 3, 5, 4, &bytes),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(bytes, 0u);
  EXPECT_EQ(spembed_varlen_attention_forward_workspace_size(handle_, kDLCUDA, 3, 5, 4, &bytes),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_GT(bytes, 0u);
  size_t bwd = 0;
  EXPECT_EQ(spembed_varlen_attention_backward_workspace_size(handle_, kDLCUDA, 3, 5, 4, &bwd),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_GE(bwd, bytes + 5 * 4 * sizeof(float));
  EXPECT_EQ(spembed_varlen_attention_forward_workspace_size(handle_, kDLCUDA, -1, 5, 4, &bytes),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(spembed_last_error()).rfind("batch:", 0), 0u);
  EXPECT_EQ(spembed_varlen_attention_backward_workspace_size(handle_, kDLCUDA, 3, 5, 0, &bytes),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(spembed_last_error()).rfind("heads:", 0), 0u);
  EXPECT_EQ(spembed_varlen_attention_forward_workspace_size(handle_, kDLCUDA, 3, 5, 4, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(spembed_last_error()).rfind("bytes:", 0), 0u);
  EXPECT_EQ(spembed_varlen_attention_forward_workspace_size(handle_, kDLExtDev, 3, 5, 4, &bytes),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_EQ(std::string(spembed_last_error()).rfind("device_type:", 0), 0u);
}

TEST_F(AttentionValidation, CudaTensorWithoutDevice) {
  // A tensor on a CUDA device the handle does not serve is rejected before
  // anything is dereferenced (on a machine without a GPU, or any cuda:7).
  int device = -1;
  ASSERT_EQ(spembed_handle_device(handle_, &device), SPEMBED_STATUS_SUCCESS);
  AttentionCase c = d_.c;
  AttentionData gpu = make_attention(c);
  gpu.q.set_view_device(DLDevice{kDLCUDA, device == 7 ? 6 : 7});
  reset_args();
  q_ = gpu.q.dl();
  expect_both_rejected("q:");
}

}  // namespace
}  // namespace spembed_test
