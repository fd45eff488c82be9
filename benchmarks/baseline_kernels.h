// Device helpers of the benchmarks: the plain one-thread-per-output embedding
// bag (the "naive" peer), the atomicAdd-scatter backward (the "stock" peer of
// the backward), table initialisation, the L2 flush, the copy used to
// measure bandwidth, and the output comparison. Launchers return the launch
// error; none synchronises.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

namespace spembed_bench {

enum class Elem { kF32, kF16 };

inline int elem_bytes(Elem e) { return e == Elem::kF32 ? 4 : 2; }

// table[r, c] = k / 16 with k in [-16, 16] hashed from (salt, r * dim + c):
// sums of up to 2^11 such values are exact in fp32, so every peer's fp32
// result must match the reference exactly (MEAN excepted).
cudaError_t fill_table(void* table, Elem elem, int64_t rows, int64_t dim, uint64_t salt,
                       cudaStream_t stream);

// Reads `bytes` of `buffer` (a multiple of 16 bytes) through L2. Reading
// rather than writing leaves L2 holding clean lines, so the timed kernel that
// follows pays for no write-back of the flush.
cudaError_t flush_l2_by_reading(const void* buffer, size_t bytes, unsigned* sink,
                                cudaStream_t stream);

// dst = src with 16-byte loads and stores (bytes a multiple of 16).
cudaError_t copy_bytes(const void* src, void* dst, size_t bytes, cudaStream_t stream);

// out[b, d] = sum (or mean) over j in [offsets[b], offsets[b+1]) of
// table[ids[j], d], accumulated in fp32, stored in the table's type.
cudaError_t naive_embedding_bag(const void* table, Elem elem, int64_t dim, const int64_t* ids,
                                const int64_t* offsets, int64_t bags, bool mean, void* out,
                                cudaStream_t stream);

// One table of the naive table-batched lookup.
struct NaiveTable {
  const void* data;
  int64_t dim;
  int64_t out_col;  // first output column of this table
};

// out[b, tables[t].out_col + d] = sum over bag t * bags_per_table + b.
// `tables` is in device memory.
cudaError_t naive_embedding_bag_batched(const NaiveTable* tables, int num_tables, Elem elem,
                                        int64_t total_dim, const int64_t* ids,
                                        const int64_t* offsets, int64_t bags_per_table, void* out,
                                        cudaStream_t stream);

// The stock embedding bag backward (the "stock" peer of the backward): one
// thread per (position, column) of one table's ids, atomicAdd of its bag's
// grad_output element into the dense gradient, SUM pooling:
//   grad[ids[j], d] += grad_output[b, grad_col + d]
// for j in [0, nnz), b the bag holding position first_pos + j (found by a
// binary search of offsets[0, bags], which hold absolute positions), d < dim.
// grad is [rows, dim] fp32, grad_output [bags, grad_stride] fp32.
cudaError_t stock_embedding_bag_backward(float* grad, int64_t dim, const int64_t* ids, int64_t nnz,
                                         const int64_t* offsets, int64_t bags, int64_t first_pos,
                                         const float* grad_output, int64_t grad_stride,
                                         int64_t grad_col, cudaStream_t stream);

// Element-wise comparison of two [n] arrays of `elem`: counts the elements
// with !(|out - ref| <= rel_tol * max(1, |ref|)) (NaN counts) into
// result[0] and keeps the smallest such position in result[1] (which the
// caller sets to all ones beforehand).
cudaError_t count_mismatches(const void* out, const void* ref, Elem elem, int64_t n, double rel_tol,
                             unsigned long long* result, cudaStream_t stream);

}  // namespace spembed_bench
