// Helpers of the varlen attention tests: random problems (packed Q, K, V, dO
// and cu_seqlens as host tensors with 3-D views), an independent float64
// reference of the forward and backward, and a "straightforward" reference in
// the inputs' low precision whose error sets the bound the kernels must meet.
#pragma once

#include <cstdint>
#include <vector>

#include "test_util.h"

namespace spembed_test {

struct AttentionCase {
  DLDataType dtype = kF32;
  int heads = 1;
  int kv_heads = 1;
  int head_dim = 8;
  std::vector<int64_t> lens_q{3};
  std::vector<int64_t> lens_k{3};
  bool causal = false;
  int64_t window_left = -1;
  int64_t window_right = -1;
  float scale = 0.f;  // 0: 1/sqrt(head_dim)
  uint64_t seed = 1;
};

// Tensors of a case. Float tensors are stored 2-D [tokens, heads * head_dim]
// (so HostTensor::get / set address them) with a 3-D view
// [tokens, heads, head_dim] for the library.
struct AttentionData {
  AttentionCase c;
  int64_t batch = 0;
  int64_t total_q = 0;
  int64_t total_k = 0;
  HostTensor q, k, v, dout;
  HostTensor cu_q, cu_k;  // int32 [B + 1]
  spembed_attention_options_t options{};

  // Element (token, head, col) of a [tokens, heads, head_dim] tensor.
  double at(const HostTensor& t, int64_t token, int head, int col) const {
    return t.get(token, static_cast<int64_t>(head) * c.head_dim + col);
  }
  float scale() const;
};

AttentionData make_attention(const AttentionCase& c);

// An output tensor shaped like q (heads = c.heads) or k (kv_heads), poisoned.
HostTensor make_q_like(const AttentionData& d);
HostTensor make_k_like(const AttentionData& d);
// float32 [heads, total_q], poisoned.
HostTensor make_lse(const AttentionData& d);

// Results, flat: out / dq [total_q][heads][head_dim], dk / dv
// [total_k][kv_heads][head_dim], lse [heads][total_q].
struct AttentionResult {
  std::vector<double> out, lse, dq, dk, dv;
};

// Exact (float64) forward and backward with dO = d.dout.
AttentionResult reference_attention(const AttentionData& d);
// A straightforward implementation in the inputs' precision: scores, softmax
// and sums (gradients included) in float32, with P (and dS) rounded to the
// input dtype before each product with a matrix, as a padded GEMM + softmax +
// GEMM pipeline in that dtype does; the backward recomputes P from the saved
// float32 lse (the API hands it O and lse); outputs rounded to the dtype.
AttentionResult lowprec_attention(const AttentionData& d);

// Largest |a - b| over matching entries, skipping entries where either is
// -inf in both (lse of rows that see nothing must match exactly: checked
// separately by the tests).
double max_abs_diff(const std::vector<double>& a, const std::vector<double>& b);

// Reads a [tokens, heads, head_dim] output tensor (2-D storage) as doubles.
std::vector<double> read_all(const HostTensor& t);

}  // namespace spembed_test
