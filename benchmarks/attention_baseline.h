// Device helpers of the attention benchmark (attention_bench.cpp): input
// initialisation, the pieces of the stock padded path (pad, masked softmax,
// unpad; the two GEMMs are cuBLAS's) and the output comparison. Launchers
// return the launch error; none synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace spembed_bench {

enum class AttnType { kF32, kF16, kBF16 };

inline int attn_type_bytes(AttnType t) { return t == AttnType::kF32 ? 4 : 2; }

// data[i] = k / 16 with k in [-16, 16] hashed from (salt, i): exact in every
// type here, so every peer reads the same values.
cudaError_t fill_attention_input(void* data, AttnType type, int64_t n, uint64_t salt,
                                 cudaStream_t stream);

// Packed [total, heads, head_dim] (compact) -> padded [batch, heads, max_len,
// head_dim]: padded[b, h, l] = packed[cu_seqlens[b] + l, h] for l < L_b, zero
// beyond. The rows are copied in the widest of 16 / 8 / 4 / 2-byte units that
// divides head_dim * elem_bytes (both buffers come from cudaMalloc).
// batch * heads * max_len must be below 2^31 (else cudaErrorInvalidValue),
// as must total * heads for the unpad and batch * heads * max_q for the
// softmax.
cudaError_t pad_sequences(const void* packed, int elem_bytes, const int32_t* cu_seqlens,
                          int64_t batch, int64_t max_len, int64_t heads, int64_t head_dim,
                          void* padded, cudaStream_t stream);

// The inverse for the `total` packed tokens: packed[t, h] = padded[b, h, t -
// cu_seqlens[b]] with b the sequence of token t (binary search of cu_seqlens).
cudaError_t unpad_sequences(const void* padded, int elem_bytes, const int32_t* cu_seqlens,
                            int64_t batch, int64_t total, int64_t max_len, int64_t heads,
                            int64_t head_dim, void* packed, cudaStream_t stream);

// In place on scores [batch, heads, max_q, max_k] (already scaled), one warp
// per row (b, h, i) with i < Lq_b: P[j] = softmax over the visible keys j <
// hi (hi = Lk_b, or min(Lk_b, i + Lk_b - Lq_b + 1) with `causal`, aligned
// bottom-right as spembed's mask), P[j] = 0 for hi <= j < Lk_b; fp32 max, sum
// and exp, stored in the scores' type. A row that sees no key is all zero.
// Left alone: the rows of padding queries (i >= Lq_b: their outputs are
// dropped by the unpad) and the columns of padding keys (j >= Lk_b: those
// scores are q . 0 = 0 and meet zero rows of the padded V in P V).
cudaError_t masked_softmax(void* scores, AttnType type, const int32_t* cu_seqlens_q,
                           const int32_t* cu_seqlens_k, int64_t batch, int64_t heads, int64_t max_q,
                           int64_t max_k, bool causal, cudaStream_t stream);

// Counts the elements of two [n] arrays with !(|out - ref| <= tol * max(1,
// |ref|)) (NaN counts) into result[0] and keeps the smallest such position in
// result[1] (which the caller sets to all ones beforehand).
cudaError_t count_attention_mismatches(const void* out, const void* ref, AttnType type, int64_t n,
                                       double tol, unsigned long long* result, cudaStream_t stream);

}  // namespace spembed_bench
