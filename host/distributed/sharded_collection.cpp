// The sharded embedding-bag collection: argument checks, the agreement on
// status and counts, the exchanges, and the local table-batched lookups and
// backward on this rank's shards (docs/distributed.md).
#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "host/common/api_common.h"
#include "host/common/errors.h"
#include "host/common/tensor_checks.h"
#include "host/distributed/comm.h"
#include "host/distributed/layout.h"

using namespace spembed::detail;

namespace {

constexpr size_t kAlign = 16;
size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Byte offsets of the workspace's regions, fixed at create from the capacity.
struct WorkspacePlan {
  size_t bag_counts = 0;    // int64 [T * Bm]
  size_t send_lengths = 0;  // int64, per rank d: [L_d * Bm] at send_lengths_at[d]
  size_t send_ids = 0;      // int64 [Nm]
  size_t send_weights = 0;  // float [Nm]
  size_t recv_lengths = 0;  // int64, per source s: [L * Bm]
  size_t recv_ids = 0;      // int64 [W * Nm]
  size_t recv_weights = 0;  // float [W * Nm]
  size_t offsets_a = 0;     // int64 [L_a * W * Bm + 1]
  size_t offsets_b = 0;     // int64 [L_b * W * Bm + 1]
  size_t ids = 0;           // int64 [W * Nm]
  size_t weights = 0;       // float [W * Nm]
  size_t rows_a = 0;        // [W * Bm, dim_a] of 4-byte (or narrower) elements
  size_t rows_b = 0;        // float [W * Bm, dim_b]
  size_t argmax = 0;        // MAX backward: int64 [W * Bm, dim_a], the recomputed argmax
  size_t max_out = 0;       // and its forward output, float [W * Bm, dim_a]
  size_t back = 0;          // per rank d: [Bm, dim_a[d]] then float [Bm, dim_b[d]]
  std::vector<size_t> send_lengths_at;  // [W]
  std::vector<size_t> back_at;          // [W]
  size_t total = 0;
};

// The record each rank contributes to the one all-gather of a call.
enum RecordField : int64_t {
  kStatus = 0,
  kBatch = 1,
  kHasWeights = 2,
  kDtype = 3,   // output / grad dtype code
  kCounts = 4,  // then ids routed to each rank
};

int64_t dtype_code(DType t) { return static_cast<int64_t>(t); }

}  // namespace

struct spembed_sharded_collection_st {
  spembed_handle_t handle = nullptr;
  spembed_comm_t comm = nullptr;
  int rank = 0;
  int world = 1;
  ShardLayout layout;
  DType table_dtype{};
  spembed_embedding_bag_options_t options{};
  int64_t max_batch = 0;
  int64_t max_ids = 0;
  spembed_table_batch_t batch_a = nullptr;
  spembed_table_batch_t batch_b = nullptr;
  WorkspacePlan ws;
  // Scratch sized at create, so that calls allocate nothing.
  std::vector<int64_t> record, records, counts, cursor, source_cursor;
  int64_t lookup_status = 0;             // sent with the pooled rows to every rank
  std::vector<int64_t> lookup_statuses;  // [W] received
  std::vector<CommPiece> sends, recvs;
  std::vector<RouteDest> dests;
  std::vector<RouteReceived> received;
  std::vector<const void*> pooled_a;
  std::vector<const float*> pooled_b;
  std::vector<void*> grad_a;
  std::vector<float*> grad_b;

  ~spembed_sharded_collection_st() {
    if (batch_a != nullptr) spembed_table_batch_destroy(batch_a);
    if (batch_b != nullptr) spembed_table_batch_destroy(batch_b);
  }
};

namespace {

using Collection = spembed_sharded_collection_st;

WorkspacePlan plan_workspace(const ShardLayout& l, int rank, int64_t max_batch, int64_t max_ids,
                             bool max_pooling) {
  WorkspacePlan p;
  const size_t W = static_cast<size_t>(l.world);
  const size_t Bm = static_cast<size_t>(max_batch);
  const size_t Nm = static_cast<size_t>(max_ids);
  const size_t T = static_cast<size_t>(l.num_tables);
  const size_t L = l.shards[static_cast<size_t>(rank)].size();
  const size_t La = static_cast<size_t>(l.num_a[static_cast<size_t>(rank)]);
  const size_t dim_a = static_cast<size_t>(l.dim_a[static_cast<size_t>(rank)]);
  const size_t dim_b = static_cast<size_t>(l.dim_b[static_cast<size_t>(rank)]);
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  p.bag_counts = take(8 * T * Bm);
  p.send_lengths = at;
  p.send_lengths_at.resize(W);
  for (size_t d = 0; d < W; ++d) p.send_lengths_at[d] = take(8 * l.shards[d].size() * Bm);
  p.send_ids = take(8 * Nm);
  p.send_weights = take(4 * Nm);
  p.recv_lengths = take(8 * W * L * Bm);
  p.recv_ids = take(8 * W * Nm);
  p.recv_weights = take(4 * W * Nm);
  p.offsets_a = take(8 * (La * W * Bm + 1));
  p.offsets_b = take(8 * ((L - La) * W * Bm + 1));
  p.ids = take(8 * W * Nm);
  p.weights = take(4 * W * Nm);
  p.rows_a = take(4 * W * Bm * dim_a);
  p.rows_b = take(4 * W * Bm * dim_b);
  if (max_pooling) {
    p.argmax = take(8 * W * Bm * dim_a);
    p.max_out = take(4 * W * Bm * dim_a);
  }
  p.back = at;
  p.back_at.resize(W);
  for (size_t d = 0; d < W; ++d) {
    p.back_at[d] = take(4 * Bm * static_cast<size_t>(l.dim_a[d] + l.dim_b[d]));
  }
  p.total = at;
  return p;
}

// CPU tensors only in this version; CUDA ones get NOT_SUPPORTED.
spembed_status_t check_cpu(const DLTensor& t, const char* name) {
  if (t.device.device_type == kDLCPU) return SPEMBED_STATUS_SUCCESS;
  if (t.device.device_type == kDLCUDA) {
    return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                "%s: a CUDA tensor; the sharded collection's CUDA data path (bucketize / permute "
                "kernels and device-side exchanges) is not implemented in this version, only CPU "
                "tensors over the in-process communicator",
                name);
  }
  return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: device type %d is not kDLCPU", name,
              static_cast<int>(t.device.device_type));
}

// What the local checks of a call found, for the later steps.
struct CallInputs {
  int64_t batch = 0;
  int64_t nnz = 0;
  IndexType index_type{};
  const void* indices = nullptr;
  const void* offsets = nullptr;
  const float* weights = nullptr;
  DType dtype{};  // output (forward) / grad_output (backward)
  void* rows = nullptr;
  int64_t row_stride = 0;
  int64_t* report = nullptr;
};

spembed_status_t check_inputs(const Collection& c, const DLTensor* indices, const DLTensor* offsets,
                              const DLTensor* weights, const DLTensor* rows, const char* rows_name,
                              DLTensor* report, void* workspace, size_t workspace_bytes,
                              CallInputs* in) {
  if (indices == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "indices: must not be NULL");
  if (offsets == nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "offsets: must not be NULL (fixed_bag_size is not supported here)");
  }
  if (rows == nullptr)
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must not be NULL", rows_name);
  SPEMBED_RETURN_IF_ERROR(check_cpu(*indices, "indices"));
  SPEMBED_RETURN_IF_ERROR(check_cpu(*offsets, "offsets"));
  SPEMBED_RETURN_IF_ERROR(check_cpu(*rows, rows_name));
  SPEMBED_RETURN_IF_ERROR(check_index_dtype(*indices, "indices", &in->index_type));
  SPEMBED_RETURN_IF_ERROR(check_vector(*indices, "indices", -1));
  in->nnz = indices->shape[0];
  if (in->nnz > c.max_ids) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "indices: %" PRId64 " ids exceed max_local_ids=%" PRId64 " given to create",
                in->nnz, c.max_ids);
  }
  SPEMBED_RETURN_IF_ERROR(check_dtype_is(
      *offsets, "offsets", indices->dtype,
      in->index_type == IndexType::kI32 ? "int32 (as indices)" : "int64 (as indices)"));
  SPEMBED_RETURN_IF_ERROR(check_vector(*offsets, "offsets", -1));
  const int64_t T = c.layout.num_tables;
  const int64_t len = offsets->shape[0];
  if (len < 1 || (len - 1) % T != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "offsets: length %" PRId64 " is not num_tables * B_local + 1 (num_tables=%" PRId64
                ")",
                len, T);
  }
  in->batch = (len - 1) / T;
  if (in->batch > c.max_batch) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "offsets: B_local=%" PRId64 " exceeds max_local_batch=%" PRId64 " given to create",
                in->batch, c.max_batch);
  }
  SPEMBED_RETURN_IF_ERROR(check_data(*indices, "indices", &in->indices));
  SPEMBED_RETURN_IF_ERROR(check_data(*offsets, "offsets", &in->offsets));
  if (weights != nullptr) {
    if (c.options.pooling != SPEMBED_POOLING_SUM) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "per_sample_weights: only with SUM pooling (the collection's is %s)",
                  c.options.pooling == SPEMBED_POOLING_MEAN ? "MEAN" : "MAX");
    }
    SPEMBED_RETURN_IF_ERROR(check_cpu(*weights, "per_sample_weights"));
    SPEMBED_RETURN_IF_ERROR(check_dtype_is(*weights, "per_sample_weights", kFloat32, "float32"));
    SPEMBED_RETURN_IF_ERROR(check_vector(*weights, "per_sample_weights", in->nnz));
    const void* w = nullptr;
    SPEMBED_RETURN_IF_ERROR(check_data(*weights, "per_sample_weights", &w));
    in->weights = static_cast<const float*>(w);
  }
  SPEMBED_RETURN_IF_ERROR(check_float_dtype(*rows, rows_name, &in->dtype));
  SPEMBED_RETURN_IF_ERROR(
      check_matrix(*rows, rows_name, in->batch, c.layout.total_dim, &in->row_stride));
  const void* r = nullptr;
  SPEMBED_RETURN_IF_ERROR(check_data(*rows, rows_name, &r));
  in->rows = const_cast<void*>(r);
  SPEMBED_RETURN_IF_ERROR(check_report(report, DLDevice{kDLCPU, 0}, &in->report));
  if (workspace_bytes < c.ws.total) {
    return fail(SPEMBED_STATUS_WORKSPACE_TOO_SMALL,
                "workspace: %zu bytes given, %zu needed (see "
                "spembed_sharded_collection_workspace_size)",
                workspace_bytes, c.ws.total);
  }
  if (workspace == nullptr && c.ws.total > 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "workspace: must not be NULL");
  }
  if (reinterpret_cast<uintptr_t>(workspace) % kAlign != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "workspace: must be aligned to %zu bytes", kAlign);
  }
  return SPEMBED_STATUS_SUCCESS;
}

RouteSource make_source(const Collection& c, const CallInputs& in) {
  RouteSource s;
  s.world = c.world;
  s.num_tables = c.layout.num_tables;
  s.batch = in.batch;
  s.nnz = in.nnz;
  s.index_type = in.index_type;
  s.indices = in.indices;
  s.offsets = in.offsets;
  s.weights = in.weights;
  s.tables = c.layout.tables.data();
  s.padding_idx = c.options.padding_idx;
  s.skip_bad = c.options.bounds_policy == SPEMBED_BOUNDS_SKIP;
  s.local_index = c.layout.local_index.data();
  return s;
}

// Checks the data, writes the report, and fails as the single-device op does.
spembed_status_t check_data_and_count(Collection& c, const CallInputs& in, char* ws,
                                      const char* function) {
  const RouteSource src = make_source(c, in);
  int64_t* bag_counts = reinterpret_cast<int64_t*>(ws + c.ws.bag_counts);
  const RouteCheck check = route_count(src, c.counts.data(), bag_counts);
  const bool bad_offsets = check.bad_offset_position >= 0;
  const bool bad_ids =
      !bad_offsets && check.bad_index_count > 0 && c.options.bounds_policy == SPEMBED_BOUNDS_ERROR;
  spembed_status_t status = SPEMBED_STATUS_SUCCESS;
  if (bad_offsets) status = SPEMBED_STATUS_INVALID_ARGUMENT;
  if (bad_ids) status = SPEMBED_STATUS_INDEX_OUT_OF_RANGE;
  if (in.report != nullptr) {
    in.report[SPEMBED_REPORT_STATUS] = status;
    in.report[SPEMBED_REPORT_BAD_INDEX_COUNT] = check.bad_index_count;
    in.report[SPEMBED_REPORT_BAD_INDEX_POSITION] = check.bad_index_position;
    in.report[SPEMBED_REPORT_BAD_INDEX_VALUE] =
        check.bad_index_position >= 0 ? check.bad_index_value : 0;
    in.report[SPEMBED_REPORT_BAD_OFFSET_POSITION] = check.bad_offset_position;
  }
  if (bad_offsets) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: offsets[%" PRId64 "] is bad (first 0, non-decreasing, last nnz=%" PRId64 ")",
                function, check.bad_offset_position, in.nnz);
  }
  if (bad_ids) {
    return fail(SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
                "%s: indices[%" PRId64 "] = %" PRId64 " is outside [0, %" PRId64
                ") of table %" PRId64 " (%" PRId64 " bad ids on rank %d)",
                function, check.bad_index_position, check.bad_index_value,
                c.layout.tables[static_cast<size_t>(check.bad_index_table)].rows,
                check.bad_index_table, check.bad_index_count, c.rank);
  }
  return SPEMBED_STATUS_SUCCESS;
}

// The one all-gather of a call: status, batch, weights flag, dtype, counts.
// Returns the agreed status (this rank's own failure first).
spembed_status_t agree(Collection& c, spembed_status_t local, const CallInputs& in, void* stream,
                       const char* function) {
  const size_t W = static_cast<size_t>(c.world);
  const size_t stride = kCounts + W;
  std::fill(c.record.begin(), c.record.end(), 0);
  c.record[kStatus] = local;
  if (local == SPEMBED_STATUS_SUCCESS) {
    c.record[kBatch] = in.batch;
    c.record[kHasWeights] = in.weights != nullptr;
    c.record[kDtype] = dtype_code(in.dtype);
    for (size_t d = 0; d < W; ++d) {
      int64_t n = 0;
      for (int64_t t = 0; t < c.layout.num_tables; ++t)
        n += c.counts[static_cast<size_t>(t) * W + d];
      c.record[kCounts + d] = n;
    }
  }
  const spembed_status_t gathered = c.comm->all_gather_host(
      c.record.data(), static_cast<int64_t>(stride), c.records.data(), stream);
  if (local != SPEMBED_STATUS_SUCCESS) return local;
  if (gathered != SPEMBED_STATUS_SUCCESS) return gathered;
  for (size_t r = 0; r < W; ++r) {
    const int64_t s = c.records[r * stride + kStatus];
    if (s != SPEMBED_STATUS_SUCCESS) {
      return fail(static_cast<spembed_status_t>(s),
                  "%s: rank %zu failed (%s; its message names the argument); this rank's "
                  "arguments were fine and nothing was written",
                  function, r, spembed_status_string(static_cast<spembed_status_t>(s)));
    }
  }
  for (size_t r = 1; r < W; ++r) {
    if (c.records[r * stride + kHasWeights] != c.records[kHasWeights]) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "per_sample_weights: given on some ranks only (rank 0: %s, rank %zu: %s); "
                  "nothing was written",
                  c.records[kHasWeights] ? "given" : "NULL", r,
                  c.records[r * stride + kHasWeights] ? "given" : "NULL");
    }
    if (c.records[r * stride + kDtype] != c.records[kDtype]) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "%s: dtypes of the output / grad_output differ between ranks 0 and %zu; "
                  "nothing was written",
                  function, r);
    }
  }
  return SPEMBED_STATUS_SUCCESS;
}

int64_t batch_of(const Collection& c, size_t rank) {
  return c.records[rank * (kCounts + static_cast<size_t>(c.world)) + kBatch];
}
int64_t count_of(const Collection& c, size_t from, int to) {
  return c
      .records[from * (kCounts + static_cast<size_t>(c.world)) + kCounts + static_cast<size_t>(to)];
}

// Routed input of this rank after the exchange.
struct Routed {
  int64_t total_batch = 0;
  int64_t nnz_a = 0;
  int64_t nnz = 0;
  int64_t* offsets_a = nullptr;
  int64_t* offsets_b = nullptr;
  int64_t* ids = nullptr;
  float* weights = nullptr;
};

// Bucketizes this rank's ids and lists the routing pieces of the exchange
// (the backward appends its gradient pieces before exchanging).
void list_routing(Collection& c, const CallInputs& in, char* ws) {
  const size_t W = static_cast<size_t>(c.world);
  const ShardLayout& l = c.layout;
  const bool weighted = c.records[kHasWeights] != 0;
  int64_t ids_at = 0;
  for (size_t d = 0; d < W; ++d) {
    RouteDest& dest = c.dests[d];
    dest.num_shards = static_cast<int64_t>(l.shards[d].size());
    dest.lengths = reinterpret_cast<int64_t*>(ws + c.ws.send_lengths_at[d]);
    dest.ids = reinterpret_cast<int64_t*>(ws + c.ws.send_ids) + ids_at;
    dest.weights = weighted ? reinterpret_cast<float*>(ws + c.ws.send_weights) + ids_at : nullptr;
    ids_at += count_of(c, static_cast<size_t>(c.rank), static_cast<int>(d));
  }
  route_scatter(make_source(c, in), c.counts.data(), c.dests.data(), c.cursor.data());
  const size_t L = l.shards[static_cast<size_t>(c.rank)].size();
  int64_t recv_at = 0;
  c.sends.clear();
  c.recvs.clear();
  for (size_t p = 0; p < W; ++p) {
    const int peer = static_cast<int>(p);
    const RouteDest& dest = c.dests[p];
    const size_t n_out = static_cast<size_t>(count_of(c, static_cast<size_t>(c.rank), peer));
    c.sends.push_back({peer, dest.lengths, 8 * static_cast<size_t>(dest.num_shards * in.batch)});
    c.sends.push_back({peer, dest.ids, 8 * n_out});
    if (weighted) c.sends.push_back({peer, dest.weights, 4 * n_out});
    RouteReceived& r = c.received[p];
    r.batch = batch_of(c, p);
    const int64_t n_in = count_of(c, p, c.rank);
    int64_t* lengths = reinterpret_cast<int64_t*>(ws + c.ws.recv_lengths) +
                       static_cast<int64_t>(p * L) * c.max_batch;
    int64_t* ids = reinterpret_cast<int64_t*>(ws + c.ws.recv_ids) + recv_at;
    float* weights = reinterpret_cast<float*>(ws + c.ws.recv_weights) + recv_at;
    r.lengths = lengths;
    r.ids = ids;
    r.weights = weighted ? weights : nullptr;
    c.recvs.push_back({peer, lengths, 8 * L * static_cast<size_t>(r.batch)});
    c.recvs.push_back({peer, ids, 8 * static_cast<size_t>(n_in)});
    if (weighted) c.recvs.push_back({peer, weights, 4 * static_cast<size_t>(n_in)});
    recv_at += n_in;
  }
}

Routed assemble(Collection& c, char* ws) {
  Routed r;
  const size_t W = static_cast<size_t>(c.world);
  for (size_t p = 0; p < W; ++p) r.total_batch += batch_of(c, p);
  r.offsets_a = reinterpret_cast<int64_t*>(ws + c.ws.offsets_a);
  r.offsets_b = reinterpret_cast<int64_t*>(ws + c.ws.offsets_b);
  r.ids = reinterpret_cast<int64_t*>(ws + c.ws.ids);
  r.weights = c.records[kHasWeights] ? reinterpret_cast<float*>(ws + c.ws.weights) : nullptr;
  const int64_t L = static_cast<int64_t>(c.layout.shards[static_cast<size_t>(c.rank)].size());
  route_assemble(c.received.data(), c.world, L, c.layout.num_a[static_cast<size_t>(c.rank)],
                 r.offsets_a, r.offsets_b, r.ids, r.weights, &r.nnz_a, &r.nnz,
                 c.source_cursor.data());
  return r;
}

// DLTensor views over workspace memory (shape arrays owned by the caller's frame).
struct View {
  int64_t shape[2] = {0, 0};
  DLTensor t{};
  View(void* data, DLDataType dtype, int64_t n0) {
    shape[0] = n0;
    t = DLTensor{data, DLDevice{kDLCPU, 0}, 1, dtype, shape, nullptr, 0};
  }
  View(void* data, DLDataType dtype, int64_t n0, int64_t n1) {
    shape[0] = n0;
    shape[1] = n1;
    t = DLTensor{data, DLDevice{kDLCPU, 0}, 2, dtype, shape, nullptr, 0};
  }
};

DLDataType dl_of(DType t) {
  switch (t) {
    case DType::kF16:
      return DLDataType{kDLFloat, 16, 1};
    case DType::kBF16:
      return DLDataType{kDLBfloat, 16, 1};
    default:
      return DLDataType{kDLFloat, 32, 1};
  }
}

// The options of the local calls: ids are already checked and padding dropped.
spembed_embedding_bag_options_t local_options(const Collection& c, bool group_a) {
  spembed_embedding_bag_options_t o = c.options;
  o.padding_idx = -1;
  o.bounds_policy = SPEMBED_BOUNDS_ERROR;
  o.fixed_bag_size = 0;
  if (!group_a) o.pooling = SPEMBED_POOLING_SUM;
  return o;
}

RouteCombine make_combine(const Collection& c, const CallInputs& in, char* ws) {
  RouteCombine k;
  k.world = c.world;
  k.num_tables = c.layout.num_tables;
  k.batch = in.batch;
  k.tables = c.layout.tables.data();
  k.a_col = c.layout.a_col.data();
  k.b_col = c.layout.b_col.data();
  k.dim_a = c.layout.dim_a.data();
  k.dim_b = c.layout.dim_b.data();
  k.bag_counts = reinterpret_cast<const int64_t*>(ws + c.ws.bag_counts);
  k.mean = c.options.pooling == SPEMBED_POOLING_MEAN;
  return k;
}

}  // namespace

extern "C" spembed_status_t spembed_sharded_collection_create(
    spembed_handle_t handle, const spembed_table_spec_t* specs, int64_t num_tables,
    const spembed_shard_plan_entry_t* plan, DLDataType table_dtype, spembed_comm_t comm,
    const DLTensor* shards, int64_t num_shards, const spembed_embedding_bag_options_t* options,
    int64_t max_local_batch, int64_t max_local_ids, spembed_sharded_collection_t* collection) {
  return guarded("spembed_sharded_collection_create", [&]() -> spembed_status_t {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    if (collection == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "collection: must not be NULL");
    }
    if (comm == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "comm: must not be NULL");
    SPEMBED_RETURN_IF_ERROR(check_specs_and_plan(specs, num_tables, plan, comm->world));
    DType dtype{};
    {
      DLTensor probe{};
      probe.dtype = table_dtype;
      if (check_float_dtype(probe, "table_dtype", &dtype) != SPEMBED_STATUS_SUCCESS) {
        return SPEMBED_STATUS_INVALID_ARGUMENT;
      }
    }
    if (comm->device_type != kDLCPU) {
      return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                  "comm: a CUDA (NCCL) communicator; the sharded collection's CUDA data path is "
                  "not implemented in this version (CPU tensors over the in-process "
                  "communicator only)");
    }
    spembed_embedding_bag_options_t opts;
    spembed_embedding_bag_options_init(&opts);
    if (options != nullptr) opts = *options;
    if (opts.pooling == SPEMBED_POOLING_NONE) {
      return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                  "options.pooling: NONE is not supported by the sharded collection (SUM, MEAN "
                  "and, for TABLE_WISE tables, MAX are)");
    }
    if (opts.pooling == SPEMBED_POOLING_MAX) {
      for (int64_t t = 0; t < num_tables; ++t) {
        if (plan[t].sharding == SPEMBED_SHARDING_ROW_WISE) {
          return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                      "plan[%" PRId64
                      "]: ROW_WISE with MAX pooling is not supported (it would "
                      "need a max-reduction with argmax across the row blocks); use TABLE_WISE "
                      "or SUM / MEAN",
                      t);
        }
      }
      if (opts.scale_grad_by_freq) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                    "options.scale_grad_by_freq: not with MAX pooling (as torch)");
      }
    }
    if (opts.pooling != SPEMBED_POOLING_SUM && opts.pooling != SPEMBED_POOLING_MEAN &&
        opts.pooling != SPEMBED_POOLING_MAX) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "options.pooling: %d is not a pooling mode",
                  static_cast<int>(opts.pooling));
    }
    if (opts.fixed_bag_size != 0) {
      return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                  "options.fixed_bag_size: must be 0 (pass offsets) for the sharded collection");
    }
    if (opts.bounds_policy != SPEMBED_BOUNDS_ERROR && opts.bounds_policy != SPEMBED_BOUNDS_SKIP) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "options.bounds_policy: %d is not a policy",
                  static_cast<int>(opts.bounds_policy));
    }
    if (max_local_batch < 0 || max_local_ids < 0 || max_local_batch > (int64_t{1} << 40) ||
        max_local_ids > (int64_t{1} << 40)) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "max_local_batch / max_local_ids: %" PRId64 " / %" PRId64 " must be in [0, 2^40]",
                  max_local_batch, max_local_ids);
    }
    auto c = std::make_unique<spembed_sharded_collection_st>();
    c->handle = handle;
    c->comm = comm;
    c->rank = comm->rank;
    c->world = comm->world;
    c->layout = make_layout(specs, num_tables, plan, comm->world);
    c->table_dtype = dtype;
    c->options = opts;
    c->max_batch = max_local_batch;
    c->max_ids = max_local_ids;
    const auto& mine = c->layout.shards[static_cast<size_t>(c->rank)];
    if (num_shards != static_cast<int64_t>(mine.size())) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "num_shards: %" PRId64
                  " given, rank %d holds %zu under the plan (see "
                  "spembed_shard_plan_local_shards)",
                  num_shards, c->rank, mine.size());
    }
    if (num_shards > 0 && shards == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "shards: must not be NULL");
    }
    char name[48];
    for (size_t j = 0; j < mine.size(); ++j) {
      std::snprintf(name, sizeof(name), "shards[%zu]", j);
      SPEMBED_RETURN_IF_ERROR(check_cpu(shards[j], name));
      DType dt{};
      SPEMBED_RETURN_IF_ERROR(check_float_dtype(shards[j], name, &dt));
      if (dt != dtype) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: dtype differs from table_dtype", name);
      }
      int64_t stride = 0;
      SPEMBED_RETURN_IF_ERROR(check_matrix(shards[j], name, mine[j].rows, mine[j].dim, &stride));
    }
    const int64_t num_a = c->layout.num_a[static_cast<size_t>(c->rank)];
    if (num_a > 0) {
      SPEMBED_RETURN_IF_ERROR(spembed_table_batch_create(handle, shards, num_a, &c->batch_a));
    }
    if (num_shards > num_a) {
      SPEMBED_RETURN_IF_ERROR(
          spembed_table_batch_create(handle, shards + num_a, num_shards - num_a, &c->batch_b));
    }
    c->ws = plan_workspace(c->layout, c->rank, max_local_batch, max_local_ids,
                           opts.pooling == SPEMBED_POOLING_MAX);
    const size_t W = static_cast<size_t>(c->world);
    const size_t T = static_cast<size_t>(num_tables);
    c->record.assign(kCounts + W, 0);
    c->records.assign(W * (kCounts + W), 0);
    c->counts.assign(T * W, 0);
    c->cursor.assign(T * W, 0);
    c->source_cursor.assign(W, 0);
    c->lookup_statuses.assign(W, 0);
    c->sends.reserve(6 * W);
    c->recvs.reserve(6 * W);
    c->dests.resize(W);
    c->received.resize(W);
    c->pooled_a.resize(W);
    c->pooled_b.resize(W);
    c->grad_a.resize(W);
    c->grad_b.resize(W);
    *collection = c.release();
    return SPEMBED_STATUS_SUCCESS;
  });
}

extern "C" spembed_status_t spembed_sharded_collection_destroy(
    spembed_sharded_collection_t collection) {
  return guarded("spembed_sharded_collection_destroy", [&] {
    if (collection == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "collection: must not be NULL");
    }
    delete collection;
    return SPEMBED_STATUS_SUCCESS;
  });
}

extern "C" spembed_status_t spembed_sharded_collection_workspace_size(
    spembed_sharded_collection_t collection, size_t* bytes) {
  return guarded("spembed_sharded_collection_workspace_size", [&] {
    if (collection == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "collection: must not be NULL");
    }
    if (bytes == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "bytes: must not be NULL");
    *bytes = collection->ws.total;
    return SPEMBED_STATUS_SUCCESS;
  });
}

extern "C" spembed_status_t spembed_sharded_collection_forward(
    spembed_sharded_collection_t collection, const DLTensor* indices, const DLTensor* offsets,
    const DLTensor* per_sample_weights, DLTensor* output, DLTensor* report, void* workspace,
    size_t workspace_bytes, spembed_stream_t stream) {
  static const char* const kFn = "spembed_sharded_collection_forward";
  return guarded(kFn, [&]() -> spembed_status_t {
    // Without a collection this rank cannot take part; the others would wait.
    if (collection == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "collection: must not be NULL");
    }
    Collection& c = *collection;
    char* ws = static_cast<char*>(workspace);
    CallInputs in;
    spembed_status_t local = check_inputs(c, indices, offsets, per_sample_weights, output, "output",
                                          report, workspace, workspace_bytes, &in);
    if (local == SPEMBED_STATUS_SUCCESS) local = check_data_and_count(c, in, ws, kFn);
    SPEMBED_RETURN_IF_ERROR(agree(c, local, in, stream, kFn));

    list_routing(c, in, ws);
    SPEMBED_RETURN_IF_ERROR(
        c.comm->exchange(c.sends.data(), c.sends.size(), c.recvs.data(), c.recvs.size(), stream));
    const Routed r = assemble(c, ws);

    // Local lookups over the global batch of this rank's shards.
    const size_t me = static_cast<size_t>(c.rank);
    const int64_t num_a = c.layout.num_a[me];
    const int64_t num_b = static_cast<int64_t>(c.layout.shards[me].size()) - num_a;
    const int64_t dim_a = c.layout.dim_a[me];
    const int64_t dim_b = c.layout.dim_b[me];
    const DLDataType out_dl = dl_of(in.dtype);
    const size_t esize = static_cast<size_t>(dtype_bytes(in.dtype));
    char* rows_a = ws + c.ws.rows_a;
    char* rows_b = ws + c.ws.rows_b;
    spembed_status_t inner = SPEMBED_STATUS_SUCCESS;
    if (num_a > 0 && r.total_batch > 0) {
      View ids(r.ids, kInt64, r.nnz_a);
      View offs(r.offsets_a, kInt64, num_a * r.total_batch + 1);
      View w(r.weights, kFloat32, r.nnz_a);
      View out(rows_a, out_dl, r.total_batch, dim_a);
      const spembed_embedding_bag_options_t o = local_options(c, true);
      inner = spembed_embedding_bag_batched_forward(c.handle, c.batch_a, &ids.t, &offs.t,
                                                    r.weights ? &w.t : nullptr, &o, &out.t, nullptr,
                                                    nullptr, nullptr, 0, stream);
    }
    if (inner == SPEMBED_STATUS_SUCCESS && num_b > 0 && r.total_batch > 0) {
      View ids(r.ids + r.nnz_a, kInt64, r.nnz - r.nnz_a);
      View offs(r.offsets_b, kInt64, num_b * r.total_batch + 1);
      View w(r.weights ? r.weights + r.nnz_a : nullptr, kFloat32, r.nnz - r.nnz_a);
      View out(rows_b, kFloat32, r.total_batch, dim_b);
      const spembed_embedding_bag_options_t o = local_options(c, false);
      inner = spembed_embedding_bag_batched_forward(c.handle, c.batch_b, &ids.t, &offs.t,
                                                    r.weights ? &w.t : nullptr, &o, &out.t, nullptr,
                                                    nullptr, nullptr, 0, stream);
    }

    // Pooled rows back to the ranks whose samples they are, each with this
    // rank's lookup status, so that every rank sees a failed local lookup.
    const size_t W = static_cast<size_t>(c.world);
    c.lookup_status = inner;
    c.sends.clear();
    c.recvs.clear();
    int64_t first = 0;
    for (size_t p = 0; p < W; ++p) {
      const int peer = static_cast<int>(p);
      const int64_t b = batch_of(c, p);
      // (host memory: the CUDA path, once written, needs a device copy)
      c.sends.push_back({peer, &c.lookup_status, sizeof(int64_t)});
      c.sends.push_back({peer, rows_a + static_cast<size_t>(first * dim_a) * esize,
                         static_cast<size_t>(b * dim_a) * esize});
      c.sends.push_back({peer, rows_b + static_cast<size_t>(first * dim_b) * 4,
                         static_cast<size_t>(b * dim_b) * 4});
      first += b;
      char* back = ws + c.ws.back_at[p];
      char* back_b = back + static_cast<size_t>(c.max_batch * c.layout.dim_a[p]) * 4;
      c.recvs.push_back({peer, &c.lookup_statuses[p], sizeof(int64_t)});
      c.recvs.push_back({peer, back, static_cast<size_t>(in.batch * c.layout.dim_a[p]) * esize});
      c.recvs.push_back({peer, back_b, static_cast<size_t>(in.batch * c.layout.dim_b[p]) * 4});
      c.pooled_a[p] = back;
      c.pooled_b[p] = reinterpret_cast<const float*>(back_b);
    }
    SPEMBED_RETURN_IF_ERROR(
        c.comm->exchange(c.sends.data(), c.sends.size(), c.recvs.data(), c.recvs.size(), stream));
    if (inner != SPEMBED_STATUS_SUCCESS) return inner;
    for (size_t p = 0; p < W; ++p) {
      if (c.lookup_statuses[p] != SPEMBED_STATUS_SUCCESS) {
        return fail(static_cast<spembed_status_t>(c.lookup_statuses[p]),
                    "%s: the local lookup of rank %zu failed; nothing was written", kFn, p);
      }
    }
    route_combine(make_combine(c, in, ws), c.pooled_a.data(), c.pooled_b.data(), in.dtype, in.rows,
                  in.row_stride);
    return SPEMBED_STATUS_SUCCESS;
  });
}

namespace {

spembed_status_t check_states(const Collection& c, DLTensor* states1, DLTensor* states2,
                              const spembed_optimizer_options_t* optimizer) {
  if (optimizer == nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "optimizer: must not be NULL (the backward applies a fused optimizer step)");
  }
  const spembed_optimizer_t kind = optimizer->optimizer;
  if (kind < SPEMBED_OPTIMIZER_SGD || kind > SPEMBED_OPTIMIZER_ADAM) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "optimizer->optimizer: %d is not an optimizer",
                static_cast<int>(kind));
  }
  if (kind == SPEMBED_OPTIMIZER_ADAM && optimizer->step < 1) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "optimizer->step: %" PRId64 " must be >= 1",
                optimizer->step);
  }
  const auto& mine = c.layout.shards[static_cast<size_t>(c.rank)];
  const bool need1 = kind != SPEMBED_OPTIMIZER_SGD;
  const bool need2 = kind == SPEMBED_OPTIMIZER_ADAM;
  char name[48];
  for (int which = 1; which <= 2; ++which) {
    DLTensor* states = which == 1 ? states1 : states2;
    const bool need = which == 1 ? need1 : need2;
    if (!need || mine.empty()) continue;
    if (states == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "states%d: must not be NULL for this optimizer",
                  which);
    }
    for (size_t j = 0; j < mine.size(); ++j) {
      std::snprintf(name, sizeof(name), "states%d[%zu]", which, j);
      SPEMBED_RETURN_IF_ERROR(check_cpu(states[j], name));
      SPEMBED_RETURN_IF_ERROR(check_dtype_is(states[j], name, kFloat32, "float32"));
      if (kind == SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD) {
        SPEMBED_RETURN_IF_ERROR(check_vector(states[j], name, mine[j].rows));
      } else {
        int64_t stride = 0;
        SPEMBED_RETURN_IF_ERROR(check_matrix(states[j], name, mine[j].rows, mine[j].dim, &stride));
      }
    }
  }
  return SPEMBED_STATUS_SUCCESS;
}

}  // namespace

extern "C" spembed_status_t spembed_sharded_collection_backward(
    spembed_sharded_collection_t collection, const DLTensor* indices, const DLTensor* offsets,
    const DLTensor* per_sample_weights, const DLTensor* grad_output, DLTensor* states1,
    DLTensor* states2, const spembed_optimizer_options_t* optimizer, DLTensor* report,
    void* workspace, size_t workspace_bytes, spembed_stream_t stream) {
  static const char* const kFn = "spembed_sharded_collection_backward";
  return guarded(kFn, [&]() -> spembed_status_t {
    if (collection == nullptr) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "collection: must not be NULL");
    }
    Collection& c = *collection;
    char* ws = static_cast<char*>(workspace);
    CallInputs in;
    spembed_status_t local = check_inputs(c, indices, offsets, per_sample_weights, grad_output,
                                          "grad_output", report, workspace, workspace_bytes, &in);
    if (local == SPEMBED_STATUS_SUCCESS) local = check_states(c, states1, states2, optimizer);
    if (local == SPEMBED_STATUS_SUCCESS) local = check_data_and_count(c, in, ws, kFn);
    SPEMBED_RETURN_IF_ERROR(agree(c, local, in, stream, kFn));

    list_routing(c, in, ws);
    // Gradient slices to the ranks that hold the rows, appended to the routing.
    const size_t W = static_cast<size_t>(c.world);
    const size_t me = static_cast<size_t>(c.rank);
    const size_t esize = static_cast<size_t>(dtype_bytes(in.dtype));
    const int64_t dim_a = c.layout.dim_a[me];
    const int64_t dim_b = c.layout.dim_b[me];
    char* rows_a = ws + c.ws.rows_a;
    char* rows_b = ws + c.ws.rows_b;
    for (size_t p = 0; p < W; ++p) {
      char* back = ws + c.ws.back_at[p];
      c.grad_a[p] = back;
      c.grad_b[p] =
          reinterpret_cast<float*>(back + static_cast<size_t>(c.max_batch * c.layout.dim_a[p]) * 4);
    }
    route_split_grad(make_combine(c, in, ws), in.rows, in.dtype, in.row_stride, c.grad_a.data(),
                     c.grad_b.data());
    int64_t first = 0;
    for (size_t p = 0; p < W; ++p) {
      const int peer = static_cast<int>(p);
      const int64_t b = batch_of(c, p);
      c.sends.push_back(
          {peer, c.grad_a[p], static_cast<size_t>(in.batch * c.layout.dim_a[p]) * esize});
      c.sends.push_back({peer, c.grad_b[p], static_cast<size_t>(in.batch * c.layout.dim_b[p]) * 4});
      c.recvs.push_back({peer, rows_a + static_cast<size_t>(first * dim_a) * esize,
                         static_cast<size_t>(b * dim_a) * esize});
      c.recvs.push_back({peer, rows_b + static_cast<size_t>(first * dim_b) * 4,
                         static_cast<size_t>(b * dim_b) * 4});
      first += b;
    }
    SPEMBED_RETURN_IF_ERROR(
        c.comm->exchange(c.sends.data(), c.sends.size(), c.recvs.data(), c.recvs.size(), stream));
    const Routed r = assemble(c, ws);

    // The single-device sparse backward and optimizer step on the routed bags.
    const int64_t num_a = c.layout.num_a[me];
    const int64_t num_b = static_cast<int64_t>(c.layout.shards[me].size()) - num_a;
    if (r.total_batch == 0) return SPEMBED_STATUS_SUCCESS;
    if (num_a > 0) {
      View ids(r.ids, kInt64, r.nnz_a);
      View offs(r.offsets_a, kInt64, num_a * r.total_batch + 1);
      View w(r.weights, kFloat32, r.nnz_a);
      View grad(rows_a, dl_of(in.dtype), r.total_batch, dim_a);
      spembed_embedding_bag_batched_backward_args_t args{};
      args.indices = &ids.t;
      args.offsets = &offs.t;
      args.per_sample_weights = r.weights ? &w.t : nullptr;
      args.grad_output = &grad.t;
      args.states1 = states1;
      args.states2 = states2;
      args.optimizer = optimizer;
      const spembed_embedding_bag_options_t o = local_options(c, true);
      // MAX: the forward keeps no state, so its argmax is recomputed here
      // (same ids in the same order: the same winners as the forward's).
      View argmax(ws + c.ws.argmax, kInt64, r.total_batch, dim_a);
      if (o.pooling == SPEMBED_POOLING_MAX) {
        View out(ws + c.ws.max_out, kFloat32, r.total_batch, dim_a);
        SPEMBED_RETURN_IF_ERROR(
            spembed_embedding_bag_batched_forward(c.handle, c.batch_a, &ids.t, &offs.t, nullptr, &o,
                                                  &out.t, &argmax.t, nullptr, nullptr, 0, stream));
        args.argmax = &argmax.t;
      }
      SPEMBED_RETURN_IF_ERROR(spembed_embedding_bag_batched_backward(c.handle, c.batch_a, &args, &o,
                                                                     SPEMBED_BACKWARD_DETERMINISTIC,
                                                                     nullptr, nullptr, 0, stream));
    }
    if (num_b > 0) {
      View ids(r.ids + r.nnz_a, kInt64, r.nnz - r.nnz_a);
      View offs(r.offsets_b, kInt64, num_b * r.total_batch + 1);
      View w(r.weights ? r.weights + r.nnz_a : nullptr, kFloat32, r.nnz - r.nnz_a);
      View grad(rows_b, kFloat32, r.total_batch, dim_b);
      spembed_embedding_bag_batched_backward_args_t args{};
      args.indices = &ids.t;
      args.offsets = &offs.t;
      args.per_sample_weights = r.weights ? &w.t : nullptr;
      args.grad_output = &grad.t;
      args.states1 = states1 ? states1 + num_a : nullptr;
      args.states2 = states2 ? states2 + num_a : nullptr;
      args.optimizer = optimizer;
      const spembed_embedding_bag_options_t o = local_options(c, false);
      SPEMBED_RETURN_IF_ERROR(spembed_embedding_bag_batched_backward(c.handle, c.batch_b, &args, &o,
                                                                     SPEMBED_BACKWARD_DETERMINISTIC,
                                                                     nullptr, nullptr, 0, stream));
    }
    return SPEMBED_STATUS_SUCCESS;
  });
}
