// The data steps of the sharded collection: check and count the ids by
// destination, bucketize them, assemble what a rank received into one
// table-batched lookup, and permute pooled rows and gradients between the
// [B_local, sum dims] layout and the per-rank blocks. CPU versions over host
// memory (route_cpu.cpp) and CUDA versions over device memory (route.cu, the
// *_cuda functions: their structs' pointers are device pointers, and they
// queue on `stream` without synchronising). The host layer (host/distributed)
// owns the layout and the exchanges.
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
  // CUDA only: [world + 1] shards held by ranks before d, which places rank
  // d's lengths at batch * shard_prefix[d] in one buffer.
  const int64_t* shard_prefix = nullptr;
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
  // CUDA only: [total_dim] the table of each output column.
  int64_t total_dim = 0;
  const int64_t* column_table = nullptr;
};
void route_combine(const RouteCombine& c, const void* const* pooled_a, const float* const* pooled_b,
                   DType out_dtype, void* output, int64_t out_stride);

// Source side of the backward: grad [batch, total] (grad_dtype, row stride
// grad_stride) into, for each rank d, grad_a[d] [batch, dim_a[d]] (grad_dtype)
// and grad_b[d] [batch, dim_b[d]] float32 (MEAN: divided by the bag's count
// as the single-device backward does).
void route_split_grad(const RouteCombine& c, const void* grad, DType grad_dtype,
                      int64_t grad_stride, void* const* grad_a, float* const* grad_b);

// ---- CUDA ----------------------------------------------------------------
// Each returns a cudaError_t value (0: queued).

// route_count over device memory. `lengths` gets every rank's [L_d * batch]
// per-bag counts (at batch * shard_prefix[d]); *check (device) the checks.
// Unlike the CPU version, the counts are formed even when the offsets are bad
// (reading nothing out of bounds); the caller then uses only
// check->bad_offset_position.
int route_count_cuda(const RouteSource& src, int64_t* lengths, int64_t* counts, int64_t* bag_counts,
                     RouteCheck* check, void* stream);

// Device storage for the scans of the steps below (CUB's device-wide scans).
struct RouteScanTemp {
  void* data = nullptr;
  size_t bytes = 0;
};
// The most values a CUDA step scans (bags x shards of one exchange).
constexpr int64_t kRouteMaxScanItems = (int64_t{1} << 31) - 1;
// The storage for scans of up to max_items values (CUB's query, on the current
// device).
int route_scan_temp_bytes(int64_t max_items, size_t* bytes);

// route_scatter over device memory: `cursor` gets the exclusive scan of the
// `num_lengths` lengths (and is advanced), ids / weights (when src.weights)
// every rank's pieces, rank after rank.
int route_scatter_cuda(const RouteSource& src, const int64_t* lengths, int64_t* cursor,
                       int64_t num_lengths, int64_t* ids, float* weights, const RouteScanTemp& temp,
                       void* stream);

// route_assemble over device memory. The received lengths are source-major
// (source s's [num_shards * batch_s] at num_shards * first_bag[s]), the ids
// and weights too, packed.
struct RouteAssemble {
  int world = 1;
  int64_t num_shards = 0;
  int64_t num_a = 0;
  int64_t total_batch = 0;
  int64_t nnz_a = 0;                   // ids of group A (the host knows it from the counts)
  const int64_t* first_bag = nullptr;  // [world + 1]
  const int64_t* recv_lengths = nullptr;
  const int64_t* recv_ids = nullptr;
  const float* recv_weights = nullptr;  // or null
  int64_t* offsets_a = nullptr;         // [num_a * total_batch + 1]
  int64_t* offsets_b = nullptr;         // [(num_shards - num_a) * total_batch + 1]
  int64_t* ids = nullptr;
  float* weights = nullptr;  // null when recv_weights is
  // Scratch of num_shards * total_batch values each, and the scans' storage.
  int64_t* recv_start = nullptr;
  int64_t* bag_length = nullptr;
  int64_t* bag_source = nullptr;
  RouteScanTemp scan_temp;
};
int route_assemble_cuda(const RouteAssemble& a, void* stream);

// The exchanged rows of every rank d in one buffer: at base + at[d], the
// [max_batch, dim_a[d]] rows of the output dtype (4-byte slots), then float32
// [max_batch, dim_b[d]].
struct RouteDeviceRows {
  char* base = nullptr;
  const int64_t* at = nullptr;  // [world] byte offsets
  int64_t max_batch = 0;
};
int route_combine_cuda(const RouteCombine& c, const RouteDeviceRows& rows, DType out_dtype,
                       void* output, int64_t out_stride, void* stream);
int route_split_grad_cuda(const RouteCombine& c, const RouteDeviceRows& rows, const void* grad,
                          DType grad_dtype, int64_t grad_stride, void* stream);

}  // namespace spembed::detail
