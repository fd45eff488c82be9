// The sharded embedding-bag collection: argument checks, the agreement on
// status and counts, the exchanges, and the local table-batched lookups and
// backward on this rank's shards (docs/distributed.md). One flow for both
// devices: each data step calls the CPU or the CUDA version of route.h, and
// on CUDA the host reads back only what decides its next step (the checks and
// counts, then the local lookups' statuses).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

#include "host/common/api_common.h"
#include "host/common/errors.h"
#include "host/common/handle.h"
#include "host/common/tensor_checks.h"
#include "host/distributed/comm.h"
#include "host/distributed/layout.h"

using namespace spembed::detail;

namespace {

constexpr size_t kAlign = 16;
size_t align_up(size_t n, size_t to = kAlign) { return (n + to - 1) / to * to; }

// Byte offsets of the workspace's regions, fixed at create from the capacity.
// Lengths are packed with the call's batch: rank d's [L_d * B] at
// B * shard_prefix[d] when sending, source s's [L * B_s] at L * first_bag[s]
// when receiving.
struct WorkspacePlan {
  size_t bag_counts = 0;        // int64 [T * Bm]
  size_t send_lengths = 0;      // int64 [sum L_d * Bm]
  size_t send_ids = 0;          // int64 [Nm]
  size_t send_weights = 0;      // float [Nm]
  size_t recv_lengths = 0;      // int64 [L * W * Bm]
  size_t recv_ids = 0;          // int64 [W * Nm]
  size_t recv_weights = 0;      // float [W * Nm]
  size_t offsets_a = 0;         // int64 [L_a * W * Bm + 1]
  size_t offsets_b = 0;         // int64 [L_b * W * Bm + 1]
  size_t ids = 0;               // int64 [W * Nm]
  size_t weights = 0;           // float [W * Nm]
  size_t rows_a = 0;            // [W * Bm, dim_a] of 4-byte (or narrower) elements
  size_t rows_b = 0;            // float [W * Bm, dim_b]
  size_t argmax = 0;            // MAX backward: int64 [W * Bm, dim_a], the recomputed argmax
  size_t max_out = 0;           // and its forward output, float [W * Bm, dim_a]
  size_t back = 0;              // per rank d: [Bm, dim_a[d]] then float [Bm, dim_b[d]]
  std::vector<size_t> back_at;  // [W]
  // CUDA only.
  size_t check = 0;        // RouteCheck then int64 counts [T * W]: read back at once
  size_t send_cursor = 0;  // int64 [sum L_d * Bm]
  size_t recv_start = 0;   // int64 [L * W * Bm], and the two below
  size_t bag_length = 0;
  size_t bag_source = 0;
  size_t first_bag = 0;    // int64 [W + 1]
  size_t status_send = 0;  // int64: this rank's lookup status
  size_t status_recv = 0;  // int64 [W]
  size_t scan_temp = 0;    // the scans' storage
  size_t scan_temp_bytes = 0;
  size_t inner = 0;  // the local lookups' and backward's own workspace
  size_t inner_bytes = 0;
  size_t total = 0;
};

// The record each rank contributes to the one all-gather of a call.
enum RecordField : int64_t {
  kStatus = 0,
  kBatch = 1,
  kHasWeights = 2,
  kDtype = 3,   // output / grad dtype code
  kCounts = 4,  // then ids routed to each rank, then those of them for its TABLE_WISE shards
};

int64_t dtype_code(DType t) { return static_cast<int64_t>(t); }

// RouteCheck as the device writes it: five int64 fields.
constexpr size_t kCheckValues = 5;
static_assert(sizeof(RouteCheck) == 8 * kCheckValues, "RouteCheck is read back as int64 values");

// The layout arrays the CUDA steps read, in one device allocation made at
// create (the host copies are in ShardLayout).
struct DeviceLayout {
  void* memory = nullptr;
  RouteTable* tables = nullptr;     // [T]
  int64_t* local_index = nullptr;   // [W * T]
  int64_t* shard_prefix = nullptr;  // [W + 1]
  int64_t* a_col = nullptr;         // [T]
  int64_t* b_col = nullptr;         // [W * T]
  int64_t* dim_a = nullptr;         // [W]
  int64_t* dim_b = nullptr;         // [W]
  int64_t* column_table = nullptr;  // [total_dim]
  int64_t* back_at = nullptr;       // [W]
};

}  // namespace

struct spembed_sharded_collection_st {
  spembed_handle_t handle = nullptr;
  spembed_comm_t comm = nullptr;
  int rank = 0;
  int world = 1;
  DLDevice device{kDLCPU, 0};  // of every tensor and of the workspace
  bool cuda = false;
  ShardLayout layout;
  std::vector<int64_t> shard_prefix;  // [W + 1]
  DeviceLayout device_layout;         // CUDA
  DType table_dtype{};
  spembed_embedding_bag_options_t options{};
  int64_t max_batch = 0;
  int64_t max_ids = 0;
  spembed_table_batch_t batch_a = nullptr;
  spembed_table_batch_t batch_b = nullptr;
  WorkspacePlan ws;
  // Scratch sized at create, so that calls allocate nothing.
  std::vector<int64_t> record, records, counts, cursor, source_cursor;
  std::vector<int64_t> first_bag;     // [W + 1] of the call's global batch
  std::vector<int64_t> check_counts;  // CUDA: the check record and counts read back
  int64_t report_values[SPEMBED_REPORT_SIZE] = {};
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
    if (device_layout.memory != nullptr) cudaFree(device_layout.memory);
  }
};

namespace {

using Collection = spembed_sharded_collection_st;

// The most values one of the CUDA steps scans: every rank's lengths when
// sending, this rank's received ones when assembling.
int64_t max_scan_items(const ShardLayout& l, int rank, int64_t max_batch) {
  int64_t all_shards = 0;
  for (const auto& shards : l.shards) all_shards += static_cast<int64_t>(shards.size());
  const auto mine = static_cast<int64_t>(l.shards[static_cast<size_t>(rank)].size());
  return std::max(all_shards, mine * l.world) * max_batch;
}

WorkspacePlan plan_workspace(const ShardLayout& l, int rank, int64_t max_batch, int64_t max_ids,
                             bool max_pooling, bool cuda, size_t scan_temp_bytes,
                             size_t inner_bytes) {
  WorkspacePlan p;
  const size_t W = static_cast<size_t>(l.world);
  const size_t Bm = static_cast<size_t>(max_batch);
  const size_t Nm = static_cast<size_t>(max_ids);
  const size_t T = static_cast<size_t>(l.num_tables);
  const size_t L = l.shards[static_cast<size_t>(rank)].size();
  const size_t La = static_cast<size_t>(l.num_a[static_cast<size_t>(rank)]);
  const size_t dim_a = static_cast<size_t>(l.dim_a[static_cast<size_t>(rank)]);
  const size_t dim_b = static_cast<size_t>(l.dim_b[static_cast<size_t>(rank)]);
  size_t all_shards = 0;
  for (size_t d = 0; d < W; ++d) all_shards += l.shards[d].size();
  size_t at = 0;
  auto take = [&](size_t bytes) {
    const size_t here = at;
    at += align_up(bytes);
    return here;
  };
  p.bag_counts = take(8 * T * Bm);
  p.send_lengths = take(8 * all_shards * Bm);
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
  if (cuda) {
    p.check = take(8 * (kCheckValues + T * W));
    p.send_cursor = take(8 * all_shards * Bm);
    p.recv_start = take(8 * W * L * Bm);
    p.bag_length = take(8 * W * L * Bm);
    p.bag_source = take(8 * W * L * Bm);
    p.first_bag = take(8 * (W + 1));
    p.status_send = take(8);
    p.status_recv = take(8 * W);
    // CUB's storage and the inner calls' regions start at 256-byte boundaries.
    at = align_up(at, 256);
    p.scan_temp = take(scan_temp_bytes);
    p.scan_temp_bytes = scan_temp_bytes;
    at = align_up(at, 256);
    p.inner = take(inner_bytes);
    p.inner_bytes = inner_bytes;
  }
  p.total = at;
  return p;
}

// Every tensor of a call on the collection's device.
spembed_status_t check_on_device(const Collection& c, const DLTensor& t, const char* name) {
  return check_same_device(t, name, c.device);
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
  SPEMBED_RETURN_IF_ERROR(check_on_device(c, *indices, "indices"));
  SPEMBED_RETURN_IF_ERROR(check_on_device(c, *offsets, "offsets"));
  SPEMBED_RETURN_IF_ERROR(check_on_device(c, *rows, rows_name));
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
    SPEMBED_RETURN_IF_ERROR(check_on_device(c, *weights, "per_sample_weights"));
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
  SPEMBED_RETURN_IF_ERROR(check_report(report, c.device, &in->report));
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
  s.padding_idx = c.options.padding_idx;
  s.skip_bad = c.options.bounds_policy == SPEMBED_BOUNDS_SKIP;
  if (c.cuda) {
    s.tables = c.device_layout.tables;
    s.local_index = c.device_layout.local_index;
    s.shard_prefix = c.device_layout.shard_prefix;
  } else {
    s.tables = c.layout.tables.data();
    s.local_index = c.layout.local_index.data();
    s.shard_prefix = c.shard_prefix.data();
  }
  return s;
}

// Runs `steps` (returning a cudaError_t value) on the collection's device.
template <typename Steps>
spembed_status_t on_device(const Collection& c, Steps&& steps) {
  return launch_on_device(c.device.device_id, std::forward<Steps>(steps));
}

RouteScanTemp scan_temp(const Collection& c, char* ws) {
  return RouteScanTemp{ws + c.ws.scan_temp, c.ws.scan_temp_bytes};
}

// Rank d's lengths in the send buffer (packed with this call's batch).
int64_t* send_lengths(const Collection& c, char* ws, int64_t batch, size_t d) {
  return reinterpret_cast<int64_t*>(ws + c.ws.send_lengths) + batch * c.shard_prefix[d];
}

// The checks and per-table counts of this rank's ids: on CUDA counted on the
// device (its per-rank bag lengths too, for the scatter) and read back, the
// one point where the host waits for the device before the exchanges.
spembed_status_t count_ids(Collection& c, const CallInputs& in, char* ws, void* stream,
                           RouteCheck* check) {
  const RouteSource src = make_source(c, in);
  int64_t* bag_counts = reinterpret_cast<int64_t*>(ws + c.ws.bag_counts);
  if (!c.cuda) {
    *check = route_count(src, c.counts.data(), bag_counts);
    return SPEMBED_STATUS_SUCCESS;
  }
  auto* device_check = reinterpret_cast<RouteCheck*>(ws + c.ws.check);
  auto* device_counts = reinterpret_cast<int64_t*>(ws + c.ws.check) + kCheckValues;
  const size_t bytes = 8 * c.check_counts.size();
  SPEMBED_RETURN_IF_ERROR(on_device(c, [&] {
    int e = route_count_cuda(src, send_lengths(c, ws, in.batch, 0), device_counts, bag_counts,
                             device_check, stream);
    if (e != 0) return e;
    const auto s = static_cast<cudaStream_t>(stream);
    e = cudaMemcpyAsync(c.check_counts.data(), device_check, bytes, cudaMemcpyDeviceToHost, s);
    return e != 0 ? e : static_cast<int>(cudaStreamSynchronize(s));
  }));
  const int64_t* values = c.check_counts.data();  // RouteCheck's fields in order, then counts
  check->bad_offset_position = values[0];
  check->bad_index_count = values[1];
  check->bad_index_position = values[2];
  check->bad_index_value = values[3];
  check->bad_index_table = values[4];
  std::copy(values + kCheckValues, values + kCheckValues + c.counts.size(), c.counts.begin());
  if (check->bad_offset_position >= 0) {
    // As the CPU version: with bad offsets the ids are not looked at.
    const int64_t position = check->bad_offset_position;
    *check = RouteCheck{};
    check->bad_offset_position = position;
  }
  return SPEMBED_STATUS_SUCCESS;
}

// Writes the report (host or device memory) from report_values.
spembed_status_t write_report(Collection& c, int64_t* report, void* stream) {
  if (report == nullptr) return SPEMBED_STATUS_SUCCESS;
  if (!c.cuda) {
    std::memcpy(report, c.report_values, sizeof(c.report_values));
    return SPEMBED_STATUS_SUCCESS;
  }
  // Pageable source: the copy has taken the values when it returns.
  return on_device(c, [&] {
    return static_cast<int>(cudaMemcpyAsync(report, c.report_values, sizeof(c.report_values),
                                            cudaMemcpyHostToDevice,
                                            static_cast<cudaStream_t>(stream)));
  });
}

// Checks the data, writes the report, and fails as the single-device op does.
spembed_status_t check_data_and_count(Collection& c, const CallInputs& in, char* ws, void* stream,
                                      const char* function) {
  RouteCheck check;
  SPEMBED_RETURN_IF_ERROR(count_ids(c, in, ws, stream, &check));
  const bool bad_offsets = check.bad_offset_position >= 0;
  const bool bad_ids =
      !bad_offsets && check.bad_index_count > 0 && c.options.bounds_policy == SPEMBED_BOUNDS_ERROR;
  spembed_status_t status = SPEMBED_STATUS_SUCCESS;
  if (bad_offsets) status = SPEMBED_STATUS_INVALID_ARGUMENT;
  if (bad_ids) status = SPEMBED_STATUS_INDEX_OUT_OF_RANGE;
  c.report_values[SPEMBED_REPORT_STATUS] = status;
  c.report_values[SPEMBED_REPORT_BAD_INDEX_COUNT] = check.bad_index_count;
  c.report_values[SPEMBED_REPORT_BAD_INDEX_POSITION] = check.bad_index_position;
  c.report_values[SPEMBED_REPORT_BAD_INDEX_VALUE] =
      check.bad_index_position >= 0 ? check.bad_index_value : 0;
  c.report_values[SPEMBED_REPORT_BAD_OFFSET_POSITION] = check.bad_offset_position;
  SPEMBED_RETURN_IF_ERROR(write_report(c, in.report, stream));
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

size_t record_stride(const Collection& c) { return kCounts + 2 * static_cast<size_t>(c.world); }

// The one all-gather of a call: status, batch, weights flag, dtype, counts.
// Returns the agreed status (this rank's own failure first).
spembed_status_t agree(Collection& c, spembed_status_t local, const CallInputs& in, void* stream,
                       const char* function) {
  const size_t W = static_cast<size_t>(c.world);
  const size_t stride = record_stride(c);
  std::fill(c.record.begin(), c.record.end(), 0);
  c.record[kStatus] = local;
  if (local == SPEMBED_STATUS_SUCCESS) {
    c.record[kBatch] = in.batch;
    c.record[kHasWeights] = in.weights != nullptr;
    c.record[kDtype] = dtype_code(in.dtype);
    for (size_t t = 0; t < static_cast<size_t>(c.layout.num_tables); ++t) {
      const RouteTable& table = c.layout.tables[t];
      for (size_t d = 0; d < W; ++d) {
        const int64_t n = c.counts[t * W + d];
        c.record[kCounts + d] += n;
        if (table.block == 0) c.record[kCounts + W + d] += n;  // d's TABLE_WISE shard
      }
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
  c.first_bag[0] = 0;
  for (size_t r = 0; r < W; ++r)
    c.first_bag[r + 1] = c.first_bag[r] + c.records[r * stride + kBatch];
  return SPEMBED_STATUS_SUCCESS;
}

int64_t batch_of(const Collection& c, size_t rank) {
  return c.records[rank * record_stride(c) + kBatch];
}
// Ids rank `from` routes to rank `to` (of them for to's TABLE_WISE shards).
int64_t count_of(const Collection& c, size_t from, int to) {
  return c.records[from * record_stride(c) + kCounts + static_cast<size_t>(to)];
}
int64_t count_a_of(const Collection& c, size_t from, int to) {
  return c.records[from * record_stride(c) + kCounts + static_cast<size_t>(c.world + to)];
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
spembed_status_t list_routing(Collection& c, const CallInputs& in, char* ws, void* stream) {
  const size_t W = static_cast<size_t>(c.world);
  const ShardLayout& l = c.layout;
  const bool weighted = c.records[kHasWeights] != 0;
  auto* send_ids = reinterpret_cast<int64_t*>(ws + c.ws.send_ids);
  auto* send_weights = weighted ? reinterpret_cast<float*>(ws + c.ws.send_weights) : nullptr;
  int64_t ids_at = 0;
  for (size_t d = 0; d < W; ++d) {
    RouteDest& dest = c.dests[d];
    dest.num_shards = static_cast<int64_t>(l.shards[d].size());
    dest.lengths = send_lengths(c, ws, in.batch, d);
    dest.ids = send_ids + ids_at;
    dest.weights = weighted ? send_weights + ids_at : nullptr;
    ids_at += count_of(c, static_cast<size_t>(c.rank), static_cast<int>(d));
  }
  if (c.cuda) {
    // The lengths were counted with the checks.
    SPEMBED_RETURN_IF_ERROR(on_device(c, [&] {
      return route_scatter_cuda(make_source(c, in), send_lengths(c, ws, in.batch, 0),
                                reinterpret_cast<int64_t*>(ws + c.ws.send_cursor),
                                in.batch * c.shard_prefix[W], send_ids, send_weights,
                                scan_temp(c, ws), stream);
    }));
  } else {
    route_scatter(make_source(c, in), c.counts.data(), c.dests.data(), c.cursor.data());
  }
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
                       static_cast<int64_t>(L) * c.first_bag[p];
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
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t assemble(Collection& c, char* ws, void* stream, Routed* routed) {
  Routed& r = *routed;
  const size_t W = static_cast<size_t>(c.world);
  r.total_batch = c.first_bag[W];
  r.offsets_a = reinterpret_cast<int64_t*>(ws + c.ws.offsets_a);
  r.offsets_b = reinterpret_cast<int64_t*>(ws + c.ws.offsets_b);
  r.ids = reinterpret_cast<int64_t*>(ws + c.ws.ids);
  r.weights = c.records[kHasWeights] ? reinterpret_cast<float*>(ws + c.ws.weights) : nullptr;
  const size_t me = static_cast<size_t>(c.rank);
  const int64_t L = static_cast<int64_t>(c.layout.shards[me].size());
  if (!c.cuda) {
    route_assemble(c.received.data(), c.world, L, c.layout.num_a[me], r.offsets_a, r.offsets_b,
                   r.ids, r.weights, &r.nnz_a, &r.nnz, c.source_cursor.data());
    return SPEMBED_STATUS_SUCCESS;
  }
  for (size_t p = 0; p < W; ++p) {
    r.nnz += count_of(c, p, c.rank);
    r.nnz_a += count_a_of(c, p, c.rank);
  }
  RouteAssemble a;
  a.world = c.world;
  a.num_shards = L;
  a.num_a = c.layout.num_a[me];
  a.total_batch = r.total_batch;
  a.nnz_a = r.nnz_a;
  a.first_bag = reinterpret_cast<int64_t*>(ws + c.ws.first_bag);
  a.recv_lengths = reinterpret_cast<const int64_t*>(ws + c.ws.recv_lengths);
  a.recv_ids = reinterpret_cast<const int64_t*>(ws + c.ws.recv_ids);
  a.recv_weights = r.weights ? reinterpret_cast<const float*>(ws + c.ws.recv_weights) : nullptr;
  a.offsets_a = r.offsets_a;
  a.offsets_b = r.offsets_b;
  a.ids = r.ids;
  a.weights = r.weights;
  a.recv_start = reinterpret_cast<int64_t*>(ws + c.ws.recv_start);
  a.bag_length = reinterpret_cast<int64_t*>(ws + c.ws.bag_length);
  a.bag_source = reinterpret_cast<int64_t*>(ws + c.ws.bag_source);
  a.scan_temp = scan_temp(c, ws);
  return on_device(c, [&] {
    // Pageable source: the copy has taken the values when it returns.
    const int e = cudaMemcpyAsync(ws + c.ws.first_bag, c.first_bag.data(), 8 * (W + 1),
                                  cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream));
    return e != 0 ? e : route_assemble_cuda(a, stream);
  });
}

// DLTensor views over workspace memory (shape arrays owned by the caller's frame).
struct View {
  int64_t shape[2] = {0, 0};
  DLTensor t{};
  View(DLDevice device, void* data, DLDataType dtype, int64_t n0) {
    shape[0] = n0;
    t = DLTensor{data, device, 1, dtype, shape, nullptr, 0};
  }
  View(DLDevice device, void* data, DLDataType dtype, int64_t n0, int64_t n1) {
    shape[0] = n0;
    shape[1] = n1;
    t = DLTensor{data, device, 2, dtype, shape, nullptr, 0};
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
  k.bag_counts = reinterpret_cast<const int64_t*>(ws + c.ws.bag_counts);
  k.mean = c.options.pooling == SPEMBED_POOLING_MEAN;
  k.total_dim = c.layout.total_dim;
  const DeviceLayout& dl = c.device_layout;
  k.tables = c.cuda ? dl.tables : c.layout.tables.data();
  k.a_col = c.cuda ? dl.a_col : c.layout.a_col.data();
  k.b_col = c.cuda ? dl.b_col : c.layout.b_col.data();
  k.dim_a = c.cuda ? dl.dim_a : c.layout.dim_a.data();
  k.dim_b = c.cuda ? dl.dim_b : c.layout.dim_b.data();
  k.column_table = dl.column_table;
  return k;
}

// Rank p's exchanged rows in the workspace: [Bm, dim_a[p]] of the output /
// grad dtype (4-byte slots), then float32 [Bm, dim_b[p]] (route.h's
// RouteDeviceRows reads the same layout on the device).
char* rows_a_of(const Collection& c, char* ws, size_t p) { return ws + c.ws.back_at[p]; }
float* rows_b_of(const Collection& c, char* ws, size_t p) {
  return reinterpret_cast<float*>(rows_a_of(c, ws, p) +
                                  static_cast<size_t>(c.max_batch * c.layout.dim_a[p]) * 4);
}

RouteDeviceRows device_rows(const Collection& c, char* ws) {
  return RouteDeviceRows{ws, c.device_layout.back_at, c.max_batch};
}

// Copies the layout arrays to one device allocation (create only).
spembed_status_t upload_layout(Collection& c) {
  const ShardLayout& l = c.layout;
  const size_t W = static_cast<size_t>(c.world);
  std::vector<int64_t> column_table;
  for (size_t t = 0; t < l.tables.size(); ++t) {
    column_table.insert(column_table.end(), static_cast<size_t>(l.tables[t].dim),
                        static_cast<int64_t>(t));
  }
  std::vector<int64_t> back_at(c.ws.back_at.begin(), c.ws.back_at.end());
  struct Piece {
    const void* host;
    size_t bytes;
    void** device;
  };
  DeviceLayout& d = c.device_layout;
  const Piece pieces[] = {
      {l.tables.data(), sizeof(RouteTable) * l.tables.size(), reinterpret_cast<void**>(&d.tables)},
      {l.local_index.data(), 8 * l.local_index.size(), reinterpret_cast<void**>(&d.local_index)},
      {c.shard_prefix.data(), 8 * (W + 1), reinterpret_cast<void**>(&d.shard_prefix)},
      {l.a_col.data(), 8 * l.a_col.size(), reinterpret_cast<void**>(&d.a_col)},
      {l.b_col.data(), 8 * l.b_col.size(), reinterpret_cast<void**>(&d.b_col)},
      {l.dim_a.data(), 8 * W, reinterpret_cast<void**>(&d.dim_a)},
      {l.dim_b.data(), 8 * W, reinterpret_cast<void**>(&d.dim_b)},
      {column_table.data(), 8 * column_table.size(), reinterpret_cast<void**>(&d.column_table)},
      {back_at.data(), 8 * W, reinterpret_cast<void**>(&d.back_at)},
  };
  size_t total = 0;
  for (const Piece& p : pieces) total += align_up(p.bytes);
  return on_device(c, [&] {
    cudaError_t e = cudaMalloc(&d.memory, std::max<size_t>(total, kAlign));
    size_t at = 0;
    for (const Piece& p : pieces) {
      if (e != cudaSuccess) break;
      *p.device = static_cast<char*>(d.memory) + at;
      if (p.bytes > 0) e = cudaMemcpy(*p.device, p.host, p.bytes, cudaMemcpyHostToDevice);
      at += align_up(p.bytes);
    }
    if (e != cudaSuccess) cudaGetLastError();
    return static_cast<int>(e);
  });
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
    DLDevice device{kDLCPU, 0};
    if (comm->device_type == kDLCUDA) {
      if (handle->cuda_device < 0) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                    "handle: serves the CPU only, but comm exchanges CUDA memory");
      }
      device = DLDevice{kDLCUDA, handle->cuda_device};
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
    c->device = device;
    c->cuda = device.device_type == kDLCUDA;
    c->layout = make_layout(specs, num_tables, plan, comm->world);
    c->shard_prefix.assign(static_cast<size_t>(c->world) + 1, 0);
    for (size_t d = 0; d < static_cast<size_t>(c->world); ++d) {
      c->shard_prefix[d + 1] =
          c->shard_prefix[d] + static_cast<int64_t>(c->layout.shards[d].size());
    }
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
      SPEMBED_RETURN_IF_ERROR(check_on_device(*c, shards[j], name));
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
    const size_t W = static_cast<size_t>(c->world);
    const size_t T = static_cast<size_t>(num_tables);
    size_t inner_bytes = 0;
    if (c->cuda) {
      // The local calls see at most the global batch: W * max_local_ids ids.
      SPEMBED_RETURN_IF_ERROR(
          spembed_embedding_bag_forward_workspace_size(handle, kDLCUDA, &inner_bytes));
      for (spembed_table_batch_t b : {c->batch_a, c->batch_b}) {
        if (b == nullptr) continue;
        size_t bytes = 0;
        SPEMBED_RETURN_IF_ERROR(spembed_embedding_bag_batched_backward_workspace_size(
            handle, b, kInt64, static_cast<int64_t>(W) * max_local_ids,
            SPEMBED_BACKWARD_DETERMINISTIC, &bytes));
        inner_bytes = std::max(inner_bytes, bytes);
      }
    }
    size_t scan_bytes = 0;
    if (c->cuda) {
      const int64_t items = max_scan_items(c->layout, c->rank, max_local_batch);
      if (items > kRouteMaxScanItems) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                    "max_local_batch: %" PRId64 " x %" PRId64
                    " shards of one exchange exceeds 2^31 - 1 bags on CUDA",
                    max_local_batch, items / std::max<int64_t>(max_local_batch, 1));
      }
      SPEMBED_RETURN_IF_ERROR(
          on_device(*c, [&] { return route_scan_temp_bytes(items, &scan_bytes); }));
    }
    c->ws = plan_workspace(c->layout, c->rank, max_local_batch, max_local_ids,
                           opts.pooling == SPEMBED_POOLING_MAX, c->cuda, scan_bytes, inner_bytes);
    if (c->cuda) SPEMBED_RETURN_IF_ERROR(upload_layout(*c));
    c->record.assign(kCounts + 2 * W, 0);
    c->records.assign(W * (kCounts + 2 * W), 0);
    c->first_bag.assign(W + 1, 0);
    c->check_counts.assign(kCheckValues + T * W, 0);
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
    if (local == SPEMBED_STATUS_SUCCESS) local = check_data_and_count(c, in, ws, stream, kFn);
    SPEMBED_RETURN_IF_ERROR(agree(c, local, in, stream, kFn));

    SPEMBED_RETURN_IF_ERROR(list_routing(c, in, ws, stream));
    SPEMBED_RETURN_IF_ERROR(
        c.comm->exchange(c.sends.data(), c.sends.size(), c.recvs.data(), c.recvs.size(), stream));
    Routed r;
    SPEMBED_RETURN_IF_ERROR(assemble(c, ws, stream, &r));

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
    void* inner = c.cuda ? ws + c.ws.inner : nullptr;
    spembed_status_t lookup = SPEMBED_STATUS_SUCCESS;
    if (num_a > 0 && r.total_batch > 0) {
      View ids(c.device, r.ids, kInt64, r.nnz_a);
      View offs(c.device, r.offsets_a, kInt64, num_a * r.total_batch + 1);
      View w(c.device, r.weights, kFloat32, r.nnz_a);
      View out(c.device, rows_a, out_dl, r.total_batch, dim_a);
      const spembed_embedding_bag_options_t o = local_options(c, true);
      lookup = spembed_embedding_bag_batched_forward(
          c.handle, c.batch_a, &ids.t, &offs.t, r.weights ? &w.t : nullptr, &o, &out.t, nullptr,
          nullptr, inner, c.ws.inner_bytes, stream);
    }
    if (lookup == SPEMBED_STATUS_SUCCESS && num_b > 0 && r.total_batch > 0) {
      View ids(c.device, r.ids + r.nnz_a, kInt64, r.nnz - r.nnz_a);
      View offs(c.device, r.offsets_b, kInt64, num_b * r.total_batch + 1);
      View w(c.device, r.weights ? r.weights + r.nnz_a : nullptr, kFloat32, r.nnz - r.nnz_a);
      View out(c.device, rows_b, kFloat32, r.total_batch, dim_b);
      const spembed_embedding_bag_options_t o = local_options(c, false);
      lookup = spembed_embedding_bag_batched_forward(
          c.handle, c.batch_b, &ids.t, &offs.t, r.weights ? &w.t : nullptr, &o, &out.t, nullptr,
          nullptr, inner, c.ws.inner_bytes, stream);
    }

    // Pooled rows back to the ranks whose samples they are, each with this
    // rank's lookup status, so that every rank sees a failed local lookup (on
    // CUDA the statuses travel in device memory and are read back).
    const size_t W = static_cast<size_t>(c.world);
    c.lookup_status = lookup;
    int64_t* status_send = &c.lookup_status;
    int64_t* status_recv = c.lookup_statuses.data();
    if (c.cuda) {
      status_send = reinterpret_cast<int64_t*>(ws + c.ws.status_send);
      status_recv = reinterpret_cast<int64_t*>(ws + c.ws.status_recv);
      SPEMBED_RETURN_IF_ERROR(on_device(c, [&] {
        return static_cast<int>(cudaMemcpyAsync(status_send, &c.lookup_status, 8,
                                                cudaMemcpyHostToDevice,
                                                static_cast<cudaStream_t>(stream)));
      }));
    }
    c.sends.clear();
    c.recvs.clear();
    int64_t first = 0;
    for (size_t p = 0; p < W; ++p) {
      const int peer = static_cast<int>(p);
      const int64_t b = batch_of(c, p);
      c.sends.push_back({peer, status_send, sizeof(int64_t)});
      c.sends.push_back({peer, rows_a + static_cast<size_t>(first * dim_a) * esize,
                         static_cast<size_t>(b * dim_a) * esize});
      c.sends.push_back({peer, rows_b + static_cast<size_t>(first * dim_b) * 4,
                         static_cast<size_t>(b * dim_b) * 4});
      first += b;
      char* back = rows_a_of(c, ws, p);
      float* back_b = rows_b_of(c, ws, p);
      c.recvs.push_back({peer, status_recv + p, sizeof(int64_t)});
      c.recvs.push_back({peer, back, static_cast<size_t>(in.batch * c.layout.dim_a[p]) * esize});
      c.recvs.push_back({peer, back_b, static_cast<size_t>(in.batch * c.layout.dim_b[p]) * 4});
      c.pooled_a[p] = back;
      c.pooled_b[p] = back_b;
    }
    SPEMBED_RETURN_IF_ERROR(
        c.comm->exchange(c.sends.data(), c.sends.size(), c.recvs.data(), c.recvs.size(), stream));
    if (lookup != SPEMBED_STATUS_SUCCESS) return lookup;
    if (c.cuda) {
      SPEMBED_RETURN_IF_ERROR(on_device(c, [&] {
        const auto s = static_cast<cudaStream_t>(stream);
        const int e = cudaMemcpyAsync(c.lookup_statuses.data(), status_recv, 8 * W,
                                      cudaMemcpyDeviceToHost, s);
        return e != 0 ? e : static_cast<int>(cudaStreamSynchronize(s));
      }));
    }
    for (size_t p = 0; p < W; ++p) {
      if (c.lookup_statuses[p] != SPEMBED_STATUS_SUCCESS) {
        return fail(static_cast<spembed_status_t>(c.lookup_statuses[p]),
                    "%s: the local lookup of rank %zu failed; nothing was written", kFn, p);
      }
    }
    const RouteCombine combine = make_combine(c, in, ws);
    if (c.cuda) {
      return on_device(c, [&] {
        return route_combine_cuda(combine, device_rows(c, ws), in.dtype, in.rows, in.row_stride,
                                  stream);
      });
    }
    route_combine(combine, c.pooled_a.data(), c.pooled_b.data(), in.dtype, in.rows, in.row_stride);
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
      SPEMBED_RETURN_IF_ERROR(check_on_device(c, states[j], name));
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
    if (local == SPEMBED_STATUS_SUCCESS) local = check_data_and_count(c, in, ws, stream, kFn);
    SPEMBED_RETURN_IF_ERROR(agree(c, local, in, stream, kFn));

    SPEMBED_RETURN_IF_ERROR(list_routing(c, in, ws, stream));
    // Gradient slices to the ranks that hold the rows, appended to the routing.
    const size_t W = static_cast<size_t>(c.world);
    const size_t me = static_cast<size_t>(c.rank);
    const size_t esize = static_cast<size_t>(dtype_bytes(in.dtype));
    const int64_t dim_a = c.layout.dim_a[me];
    const int64_t dim_b = c.layout.dim_b[me];
    char* rows_a = ws + c.ws.rows_a;
    char* rows_b = ws + c.ws.rows_b;
    for (size_t p = 0; p < W; ++p) {
      c.grad_a[p] = rows_a_of(c, ws, p);
      c.grad_b[p] = rows_b_of(c, ws, p);
    }
    const RouteCombine split = make_combine(c, in, ws);
    if (c.cuda) {
      SPEMBED_RETURN_IF_ERROR(on_device(c, [&] {
        return route_split_grad_cuda(split, device_rows(c, ws), in.rows, in.dtype, in.row_stride,
                                     stream);
      }));
    } else {
      route_split_grad(split, in.rows, in.dtype, in.row_stride, c.grad_a.data(), c.grad_b.data());
    }
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
    Routed r;
    SPEMBED_RETURN_IF_ERROR(assemble(c, ws, stream, &r));

    // The single-device sparse backward and optimizer step on the routed bags.
    const int64_t num_a = c.layout.num_a[me];
    const int64_t num_b = static_cast<int64_t>(c.layout.shards[me].size()) - num_a;
    if (r.total_batch == 0) return SPEMBED_STATUS_SUCCESS;
    void* inner = c.cuda ? ws + c.ws.inner : nullptr;
    if (num_a > 0) {
      View ids(c.device, r.ids, kInt64, r.nnz_a);
      View offs(c.device, r.offsets_a, kInt64, num_a * r.total_batch + 1);
      View w(c.device, r.weights, kFloat32, r.nnz_a);
      View grad(c.device, rows_a, dl_of(in.dtype), r.total_batch, dim_a);
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
      View argmax(c.device, ws + c.ws.argmax, kInt64, r.total_batch, dim_a);
      if (o.pooling == SPEMBED_POOLING_MAX) {
        View out(c.device, ws + c.ws.max_out, kFloat32, r.total_batch, dim_a);
        SPEMBED_RETURN_IF_ERROR(spembed_embedding_bag_batched_forward(
            c.handle, c.batch_a, &ids.t, &offs.t, nullptr, &o, &out.t, &argmax.t, nullptr, inner,
            c.ws.inner_bytes, stream));
        args.argmax = &argmax.t;
      }
      SPEMBED_RETURN_IF_ERROR(spembed_embedding_bag_batched_backward(
          c.handle, c.batch_a, &args, &o, SPEMBED_BACKWARD_DETERMINISTIC, nullptr, inner,
          c.ws.inner_bytes, stream));
    }
    if (num_b > 0) {
      View ids(c.device, r.ids + r.nnz_a, kInt64, r.nnz - r.nnz_a);
      View offs(c.device, r.offsets_b, kInt64, num_b * r.total_batch + 1);
      View w(c.device, r.weights ? r.weights + r.nnz_a : nullptr, kFloat32, r.nnz - r.nnz_a);
      View grad(c.device, rows_b, kFloat32, r.total_batch, dim_b);
      spembed_embedding_bag_batched_backward_args_t args{};
      args.indices = &ids.t;
      args.offsets = &offs.t;
      args.per_sample_weights = r.weights ? &w.t : nullptr;
      args.grad_output = &grad.t;
      args.states1 = states1 ? states1 + num_a : nullptr;
      args.states2 = states2 ? states2 + num_a : nullptr;
      args.optimizer = optimizer;
      const spembed_embedding_bag_options_t o = local_options(c, false);
      SPEMBED_RETURN_IF_ERROR(spembed_embedding_bag_batched_backward(
          c.handle, c.batch_b, &args, &o, SPEMBED_BACKWARD_DETERMINISTIC, nullptr, inner,
          c.ws.inner_bytes, stream));
    }
    return SPEMBED_STATUS_SUCCESS;
  });
}
