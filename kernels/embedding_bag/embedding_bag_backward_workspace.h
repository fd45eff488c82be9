// Workspace of the CUDA embedding bag backward: its layout, and the width of
// the positions in it. Plain host code (no CUDA headers), shared by the size
// queries (host/), the entry point (embedding_bag_backward.cu), the kernels
// and the tests. Not part of the public API.
//
// The layout is a pure function of what both workspace queries are given:
// nnz, the number of tables, their rows in all and the widest dim. The bag
// count is not among them (a call may have any number of bags, empty ones
// included), so nothing in the layout depends on it: bag indices are always
// stored in 64 bits, and the query and the call always agree.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/embedding_bag/embedding_bag_backward_params.h"
#include "kernels/embedding_bag/embedding_bag_params.h"

namespace spembed::detail {

// Rows of partial sums the hot runs may need: a run of L > CHUNK
// contributions has ceil(L / CHUNK) < 2 L / CHUNK chunks, so all hot runs
// together have fewer than 2 nnz / CHUNK.
inline int64_t max_partial_rows(int64_t nnz) { return 2 * nnz / SPEMBED_BACKWARD_CHUNK + 1; }

// Whether positions, keys and everything derived from them (run indices,
// work items, MEAN counts) are 64-bit ("wide") rather than 32-bit
// ("narrow"). Narrow needs positions < nnz to fit 32 bits and nnz + 1 to fit
// CUB's int item count, and keys up to the sentinel total_rows to fit 32 bits
// below MAX's all-ones second sentinel. Bag indices are not positions: they
// are 64-bit in both layouts.
inline bool backward_wide_positions(int64_t nnz, int64_t total_rows) {
  return nnz >= INT32_MAX - 1 || total_rows >= static_cast<int64_t>(UINT32_MAX);
}

// Bound on CUB's temp storage for the sort and scans of n entries, computed
// without a device (CUB's own query reads the device's architecture). The
// largest piece is the radix sort's look-back array: 256 digit counters of 8
// bytes per tile of at least 1024 keys, i.e. at most 2 bytes per key, plus
// per-pass histograms and a few tile-status arrays of under a byte per
// entry; 4 bytes per entry plus 1 MiB covers them with room to spare. The
// entry point checks the bound against CUB's query.
inline size_t backward_cub_temp_bound(int64_t n) {
  return (size_t{1} << 20) + 4 * static_cast<size_t>(n > 0 ? n : 0);
}

// Alignment of each workspace array: what cudaMalloc gives, and what CUB
// expects of its temp storage.
constexpr size_t kBackwardWorkspaceAlign = 256;

// Device counters of the pipeline, in the workspace (zeroed first).
struct BackwardCounters {
  unsigned long long num_runs;          // runs of the sorted keys, the sentinel's included
  unsigned long long num_valid_runs;    // U: runs of real rows (the sentinel run dropped)
  unsigned long long num_items;         // work items of the reduce kernel
  unsigned long long num_hot;           // runs with more than one chunk
  unsigned long long num_partial_rows;  // partial rows handed out to hot runs
};

// Pointers into the caller's workspace, laid out by plan_backward_workspace.
// "Pos" entries are uint32 when narrow, uint64 when wide
// (backward_wide_positions); bag_of is uint64 always.
struct BackwardWorkspace {
  bool wide = false;
  void* keys[2] = {nullptr, nullptr};  // sort double buffer
  void* vals[2] = {nullptr, nullptr};
  int sorted = 0;               // which buffer holds the sorted (and selected) entries
  void* bag_of = nullptr;       // [nnz] uint64: bag of each position (with offsets)
  void* count_of = nullptr;     // [nnz] MEAN: contributing ids of the position's bag
  void* scratch = nullptr;      // [nnz] MAX: carrier flags; then run index of each entry
  void* unique_keys = nullptr;  // [nnz] run keys
  void* run_start = nullptr;    // [nnz + 1] first sorted entry of each run, then nnz
  void* run_item = nullptr;     // [nnz + 1] first work item of each run (exclusive sum)
  void* run_partial = nullptr;  // [nnz] first partial row of each hot run
  void* item_run = nullptr;     // [nnz] run of each work item
  void* hot_runs = nullptr;     // [max_partial_rows] runs with several chunks
  // [max_partial_rows, max_dim] chunk sums of hot runs, in the accumulation
  // type (float, or double for float64 tables; sized for double).
  void* partials = nullptr;
  BackwardCounters* counters = nullptr;
  void* cub_temp = nullptr;
  size_t cub_temp_bytes = 0;
  BackwardTableMeta* tables = nullptr;  // [num_tables] device copy of p.tables (batched)
  size_t total_bytes = 0;               // of the whole workspace, record included
  bool read_record = false;             // the check kernel ran: stop if it found bad data
};

// The workspace for nnz ids into num_tables tables of total_rows rows in all,
// rows of max_dim columns at most; base may be null (size query: only
// total_bytes and the widths matter). The forward's check record comes
// first (kForwardWorkspaceBytes).
inline BackwardWorkspace plan_backward_workspace(void* base, int64_t nnz, int64_t num_tables,
                                                 int64_t total_rows, int32_t max_dim) {
  BackwardWorkspace ws;
  ws.wide = backward_wide_positions(nnz, total_rows);
  const size_t pos = ws.wide ? 8 : 4;
  const size_t n = static_cast<size_t>(nnz > 0 ? nnz : 0);
  size_t offset = kForwardWorkspaceBytes;
  auto carve = [&](size_t bytes) -> void* {
    void* at = base == nullptr ? nullptr : static_cast<char*>(base) + offset;
    offset +=
        (bytes + kBackwardWorkspaceAlign - 1) / kBackwardWorkspaceAlign * kBackwardWorkspaceAlign;
    return at;
  };
  if (num_tables > 1) {
    ws.tables = static_cast<BackwardTableMeta*>(
        carve(static_cast<size_t>(num_tables) * sizeof(BackwardTableMeta)));
  }
  for (int k = 0; k < 2; ++k) ws.keys[k] = carve(n * pos);
  for (int k = 0; k < 2; ++k) ws.vals[k] = carve(n * pos);
  ws.bag_of = carve(n * sizeof(uint64_t));
  ws.count_of = carve(n * pos);
  ws.scratch = carve(n * pos);
  ws.unique_keys = carve(n * pos);
  ws.run_start = carve((n + 1) * pos);
  ws.run_item = carve((n + 1) * pos);
  ws.run_partial = carve(n * pos);
  ws.item_run = carve(n * pos);
  const auto partial_rows = static_cast<size_t>(max_partial_rows(nnz > 0 ? nnz : 0));
  ws.hot_runs = carve(partial_rows * pos);
  ws.counters = static_cast<BackwardCounters*>(carve(sizeof(BackwardCounters)));
  ws.cub_temp_bytes = backward_cub_temp_bound(nnz);
  ws.cub_temp = carve(ws.cub_temp_bytes);
  const auto cols = static_cast<size_t>(max_dim > 1 ? max_dim : 1);
  // 8 bytes a column whatever the dtype: the size queries do not know it.
  ws.partials = carve(partial_rows * cols * sizeof(double));
  ws.total_bytes = offset;
  return ws;
}

}  // namespace spembed::detail
