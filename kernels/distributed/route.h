// The data steps of the sharded collection on the CPU (host memory): check and
// count the ids by destination, bucketize them, assemble what a rank received
// into one table-batched lookup, and permute pooled rows and gradients between
// the [B_local, sum dims] layout and the per-rank blocks. Plain C++ over raw
// pointers; the host layer (host/distributed) owns the layout and the exchanges.
#pragma once

#include <cstdint>

#include "kernels/common/types.h"

namespace spembed::detail {

// A table as the router sees it.
struct RouteTable {
  int64_t rows = 0;
  int64_t dim = 0;
  int64_t out_col = 0;  // first column in [B_local, sum dims]
  int64_t block = 0;    // ROW_WISE: rows per rank block; 0: TABLE_WISE
  int32_t owner = 0;    // TABLE_WISE: the owning rank
};

// One source rank's input.
struct RouteSource {
  int world = 1;
  int64_t num_tables = 0;
  int64_t batch = 0;  // B_local
  int64_t nnz = 0;
  IndexType index_type = IndexType::kI64;
  const void* indices = nullptr;
  const void* offsets = nullptr;   // [num_tables * batch + 1]
  const float* weights = nullptr;  // [nnz] or null
  const RouteTable* tables = nullptr;
  int64_t padding_idx = -1;  // < 0: none
  bool skip_bad = false;     // SKIP: out-of-range ids are dropped and counted
  // local_index[d * num_tables + t]: table t's position in rank d's local
  // shard order, or -1 when d holds none of it.
  const int64_t* local_index = nullptr;
};

struct RouteCheck {
  int64_t bad_offset_position = -1;
  int64_t bad_index_count = 0;
  int64_t bad_index_position = -1;
  int64_t bad_index_value = 0;
  int64_t bad_index_table = 0;
};

// Checks the offsets, then every id (when the offsets are sound). Fills
// counts[t * world + d] (ids of table t routed to rank d) and bag_counts[bag]
// (ids a bag pools: padding and bad ids not counted). Nothing else is written.
RouteCheck route_count(const RouteSource& src, int64_t* counts, int64_t* bag_counts);

// Where the pieces for rank d go: lengths [L_d * batch] (zeroed here), ids
// [ids routed to d] as local rows, weights (when src.weights) likewise.
struct RouteDest {
  int64_t* lengths = nullptr;
  int64_t* ids = nullptr;
  float* weights = nullptr;
  int64_t num_shards = 0;  // L_d
};

// Bucketizes the ids in one pass (route_count must have succeeded). `cursor`
// is scratch of num_tables * world values; counts from route_count.
void route_scatter(const RouteSource& src, const int64_t* counts, const RouteDest* dests,
                   int64_t* cursor);

// What one source sent to this rank.
struct RouteReceived {
  int64_t batch = 0;
  const int64_t* lengths = nullptr;  // [num_shards * batch]
  const int64_t* ids = nullptr;
  const float* weights = nullptr;
};

// Builds the local table-batched input over the global batch (sources in rank
// order): shards [0, num_a) into offsets_a [num_a * B_total + 1], the others
// into offsets_b; their ids at ids[0 ...] then ids[nnz_a ...]. Returns nnz_a
// in *nnz_a and the total in *nnz. `cursor`: scratch of world values.
void route_assemble(const RouteReceived* received, int world, int64_t num_shards, int64_t num_a,
                    int64_t* offsets_a, int64_t* offsets_b, int64_t* ids, float* weights,
                    int64_t* nnz_a, int64_t* nnz, int64_t* cursor);

// Source side of the forward's return. For each rank d: pooled_a[d] is
// [batch, dim_a[d]] in out_dtype (its TABLE_WISE tables, a_col[t] their
// columns there); pooled_b[d] is [batch, dim_b[d]] float32 partial sums of its
// ROW_WISE shards (b_col[d * num_tables + t], -1 when d has none of t).
// Writes output [batch, total] (row stride out_stride): TABLE_WISE columns
// copied, ROW_WISE partials added in rank order, MEAN divided by bag_counts.
struct RouteCombine {
  int world = 1;
  int64_t num_tables = 0;
  int64_t batch = 0;
  const RouteTable* tables = nullptr;
  const int64_t* a_col = nullptr;
  const int64_t* b_col = nullptr;
  const int64_t* dim_a = nullptr;
  const int64_t* dim_b = nullptr;
  const int64_t* bag_counts = nullptr;
  bool mean = false;
};
void route_combine(const RouteCombine& c, const void* const* pooled_a, const float* const* pooled_b,
                   DType out_dtype, void* output, int64_t out_stride);

// Source side of the backward: grad [batch, total] (grad_dtype, row stride
// grad_stride) into, for each rank d, grad_a[d] [batch, dim_a[d]] (grad_dtype)
// and grad_b[d] [batch, dim_b[d]] float32 (MEAN: divided by the bag's count
// as the single-device backward does).
void route_split_grad(const RouteCombine& c, const void* grad, DType grad_dtype,
                      int64_t grad_stride, void* const* grad_a, float* const* grad_b);

}  // namespace spembed::detail
