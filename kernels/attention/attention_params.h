// Parameters of the varlen attention forward and backward, shared by the CPU
// implementation and the CUDA kernels, and the mask arithmetic both use.
// host/attention/attention.cpp fills them after validating every argument, so the
// implementations may assume: shapes and dtypes agree, head_dim is in
// [1, 256], heads % kv_heads == 0, pointers that must be set are set, and (on
// CPU) cu_seqlens are well formed. Strides are in elements; the innermost
// (head_dim) stride is 1.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/common/types.h"

namespace spembed::detail {

// Largest head_dim any path serves (docs/design.md: 1..256).
constexpr int kAttentionMaxHeadDim = 256;

// A [tokens, heads, head_dim] tensor.
struct TokenTensor {
  const void* data = nullptr;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
  SPEMBED_HOST_DEVICE int64_t offset(int64_t token, int64_t head) const {
    return token * token_stride + head * head_stride;
  }
};

// The mask as a band of key offsets relative to the bottom-right diagonal:
// query i of a sequence sees key j iff 0 <= j < Lk and
//   lo <= j - (i + Lk - Lq) <= hi.
// Unbounded sides hold +-kUnbounded, far beyond any int32 length, so the
// int64 sums below never overflow.
struct AttentionBand {
  static constexpr int64_t kUnbounded = int64_t{1} << 40;
  int64_t lo = -kUnbounded;
  int64_t hi = kUnbounded;
};

// window_left / window_right < 0 mean "no limit"; causal caps hi at 0.
inline AttentionBand make_band(bool causal, int64_t window_left, int64_t window_right) {
  AttentionBand band;
  if (window_left >= 0) band.lo = -window_left;
  if (window_right >= 0) band.hi = window_right;
  if (causal && band.hi > 0) band.hi = 0;
  return band;
}

// A half-open range [begin, end); empty when end <= begin.
struct Range {
  int64_t begin;
  int64_t end;
};

// Keys that the queries [i0, i1) of a sequence see (together; rows inside
// may see fewer).
SPEMBED_HOST_DEVICE inline Range visible_keys(const AttentionBand& band, int64_t lq, int64_t lk,
                                              int64_t i0, int64_t i1) {
  const int64_t diag = lk - lq;
  const int64_t b = i0 + diag + band.lo;
  const int64_t e = i1 - 1 + diag + band.hi + 1;
  return {b < 0 ? 0 : b, e > lk ? lk : e};
}

// Queries that see at least one of the keys [j0, j1).
SPEMBED_HOST_DEVICE inline Range visible_queries(const AttentionBand& band, int64_t lq, int64_t lk,
                                                 int64_t j0, int64_t j1) {
  const int64_t diag = lk - lq;
  const int64_t b = j0 - diag - band.hi;
  const int64_t e = j1 - 1 - diag - band.lo + 1;
  return {b < 0 ? 0 : b, e > lq ? lq : e};
}

SPEMBED_HOST_DEVICE inline bool key_visible(const AttentionBand& band, int64_t lq, int64_t lk,
                                            int64_t i, int64_t j) {
  const int64_t rel = j - (i + lk - lq);
  return j >= 0 && j < lk && rel >= band.lo && rel <= band.hi;
}

struct AttentionParams {
  DType dtype = DType::kF32;  // of q, k, v, out, dout, dq, dk, dv
  int64_t batch = 0;          // B
  int64_t total_q = 0;
  int64_t total_k = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  AttentionBand band;
  float scale = 0.f;  // resolved: never 0
  // Hints (0: unknown); CUDA picks tile shapes from them, never correctness.
  int64_t max_seqlen_q = 0;
  int64_t max_seqlen_k = 0;

  const int32_t* cu_seqlens_q = nullptr;  // [B + 1]
  const int32_t* cu_seqlens_k = nullptr;  // [B + 1]
  TokenTensor q, k, v;
  // Forward: written. Backward: read (the forward's O).
  TokenTensor out;
  float* lse = nullptr;  // [heads, total_q]; forward: may be null; backward: read, required

  // Backward only.
  TokenTensor dout;
  TokenTensor dq, dk, dv;  // written (data cast from const)
  bool deterministic = true;

  int64_t* report = nullptr;  // SPEMBED_REPORT_SIZE entries on the op's device, or null
  void* workspace = nullptr;  // CUDA: see AttentionWorkspace

  SPEMBED_HOST_DEVICE int group() const { return heads / kv_heads; }  // query heads per kv head
};

// The CUDA workspace, carved into 256-byte aligned pieces:
//   [record: 256 B][q tile starts: int32 [B + 1]][k tile starts: int32 [B + 1]]
//   backward only: [rowsum(dO * O): float32 [heads, total_q]]
struct AttentionWorkspace {
  static constexpr size_t kAlign = 256;
  static size_t round_up(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }
  static size_t record_bytes() { return kAlign; }
  static size_t tiles_bytes(int64_t batch) {
    return round_up(static_cast<size_t>(batch + 1) * sizeof(int32_t));
  }
  static size_t forward_bytes(int64_t batch) { return record_bytes() + 2 * tiles_bytes(batch); }
  static size_t backward_bytes(int64_t batch, int64_t total_q, int64_t heads) {
    return forward_bytes(batch) +
           round_up(static_cast<size_t>(total_q) * static_cast<size_t>(heads) * sizeof(float));
  }
};

}  // namespace spembed::detail
