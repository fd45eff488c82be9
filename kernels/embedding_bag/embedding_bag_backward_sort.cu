// Index pipeline of the CUDA embedding bag backward: from ids and offsets to
// the work items of the reduction (see embedding_bag_backward_launch.cuh for
// the whole pipeline). Positions and keys are one unsigned type PosT: 32-bit
// when the workspace plan says "narrow", else 64-bit; bag indices are 64-bit
// in both (any bag count fits the workspace the query sized).
//
// Grid mappings:
//   prepare  one group of G lanes per bag (G = the average bag length rounded
//            to a power of two, 1..32, so one-hot bags do not idle 31 lanes);
//            lane j handles positions begin + j, begin + j + G, ... of its bag;
//            grid-stride over bags. NONE: one bag per position.
//   flags    (MAX) one thread per sorted entry, grid-stride.
//   heads, runs, run_chunks
//            one thread per sorted entry (per run for run_chunks), grid-stride:
//            run head flags; heads write their run's key and first entry at
//            the scanned run index; each run's number of chunks.
//   expand   blocks of consecutive runs, grid-stride (nnz + 1 threads in
//            all: the thread of index U writes the counts); one thread per
//            run for the hot-run list, and the block's threads together for
//            the work items of the block's runs (a run of L contributions
//            has ceil(L / CHUNK) of them), so a hot row's items are spread
//            over a block.
// The CUB steps (radix sort, scans) size their own grids. (CUB's select and
// run-length encoder, and its scans over transform iterators of 64-bit
// values, spill registers on sm_80 in CUDA 13, which the build forbids: plain
// in-place scans of flags or counts plus scatter kernels do their work here.)
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_scan.cuh>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/row_io.cuh"
#include "kernels/common/static_switch.cuh"
#include "kernels/embedding_bag/embedding_bag_backward_launch.cuh"

namespace spembed::detail {
namespace {

// Largest grid of the element-wise kernels: enough blocks to fill any current
// GPU several times (132 SMs x 8 blocks of 256 threads on an H100 is ~1k),
// the rest is covered by the grid-stride loops.
constexpr int64_t kMaxIndexGrid = 65535;

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

__device__ __forceinline__ bool record_says_stop(const EmbeddingBagBackwardParams& p) {
  const auto* record = static_cast<const DataCheckRecord*>(p.workspace);
  if (record->first_bad_offset_position != kNoPosition) return true;
  return p.bounds_policy == SPEMBED_BOUNDS_ERROR && record->bad_index_count != 0;
}

__device__ __forceinline__ int64_t chunks_of(int64_t len) {
  return (len + SPEMBED_BACKWARD_CHUNK - 1) / SPEMBED_BACKWARD_CHUNK;
}

__device__ __forceinline__ void count_skipped_id(void* workspace, int64_t position) {
  auto* record = static_cast<DataCheckRecord*>(workspace);
  atomicAdd(&record->bad_index_count, 1ull);
  atomicMin(&record->first_bad_index_position, static_cast<unsigned long long>(position));
}

// Under ERROR, batched tables: ids outside their table's rows, counted into
// the record as the forward's check kernel does (that kernel reads the
// forward's table array, so it checks only the offsets here). blockIdx.y walks
// the tables (the ids of table t are the range of its bags' offsets),
// blockIdx.x with a grid-stride loop the ids of a table.
template <typename IdxT>
__global__ void __launch_bounds__(kIndexBlockThreads, kIndexMinBlocksPerSm)
    batched_id_check_kernel(const __grid_constant__ EmbeddingBagBackwardParams p) {
  auto* record = static_cast<DataCheckRecord*>(p.workspace);
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const auto* ids = static_cast<const IdxT*>(p.indices);
  const auto* offsets = static_cast<const IdxT*>(p.offsets);
  for (int64_t t = blockIdx.y; t < p.num_tables; t += gridDim.y) {
    const int64_t rows = p.tables[t].rows;
    int64_t begin;
    int64_t end;
    if (p.fixed_bag_size > 0) {
      begin = t * p.bags_per_table * p.fixed_bag_size;
      end = begin + p.bags_per_table * p.fixed_bag_size;
    } else {
      begin = static_cast<int64_t>(load_ro(offsets + t * p.bags_per_table));
      end = static_cast<int64_t>(load_ro(offsets + (t + 1) * p.bags_per_table));
    }
    begin = min(max(begin, int64_t{0}), p.nnz);
    end = min(max(end, begin), p.nnz);
    for (int64_t base = begin + static_cast<int64_t>(blockIdx.x) * kIndexBlockThreads; base < end;
         base += static_cast<int64_t>(gridDim.x) * kIndexBlockThreads) {
      const int64_t i = base + threadIdx.x;
      bool bad = false;
      if (i < end) {
        const int64_t id = static_cast<int64_t>(load_ro(ids + i));
        bad = !(p.padding_idx >= 0 && id == p.padding_idx) && (id < 0 || id >= rows);
      }
      const unsigned bad_lanes = __ballot_sync(0xffffffffu, bad);
      if (bad_lanes != 0 && lane == __ffs(bad_lanes) - 1) {
        atomicAdd(&record->bad_index_count, static_cast<unsigned long long>(__popc(bad_lanes)));
        atomicMin(&record->first_bad_index_position, static_cast<unsigned long long>(i));
      }
    }
  }
}

// Keys, values, bags and MEAN counts of every position (see the file comment).
template <typename IdxT, typename PosT>
__global__ void __launch_bounds__(kBackwardBlockThreads, 2 * kIndexMinBlocksPerSm)
    prepare_kernel(const __grid_constant__ EmbeddingBagBackwardParams p, const BackwardWorkspace ws,
                   int lanes, bool read_record, bool count_bad) {
  if (read_record && record_says_stop(p)) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int j = lane & (lanes - 1);
  const unsigned mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u) << (lane & ~(lanes - 1));
  const int64_t groups_per_block = kBackwardBlockThreads / lanes;
  const int64_t group = static_cast<int64_t>(blockIdx.x) * groups_per_block + threadIdx.x / lanes;
  const int64_t num_groups = static_cast<int64_t>(gridDim.x) * groups_per_block;

  const bool none = p.pooling == SPEMBED_POOLING_NONE;
  const bool mean = p.pooling == SPEMBED_POOLING_MEAN;
  const bool write_bag = !none && p.fixed_bag_size == 0;
  const int64_t num_bags = none ? p.nnz : p.num_tables * p.bags_per_table;
  const auto* ids = static_cast<const IdxT*>(p.indices);
  const auto* offsets = static_cast<const IdxT*>(p.offsets);
  auto* keys = static_cast<PosT*>(ws.keys[0]);
  auto* vals = static_cast<PosT*>(ws.vals[0]);
  auto* bag_of = static_cast<uint64_t*>(ws.bag_of);
  auto* count_of = static_cast<PosT*>(ws.count_of);
  const PosT sentinel = static_cast<PosT>(p.total_rows);

  for (int64_t bag = group; bag < num_bags; bag += num_groups) {
    int64_t begin;
    int64_t end;
    int64_t t = 0;
    if (none) {
      begin = bag;
      end = bag + 1;
    } else {
      if (p.num_tables > 1) t = bag / p.bags_per_table;
      if (p.fixed_bag_size > 0) {
        begin = bag * p.fixed_bag_size;
        end = begin + p.fixed_bag_size;
      } else {
        begin = static_cast<int64_t>(load_ro(offsets + bag));
        end = static_cast<int64_t>(load_ro(offsets + bag + 1));
      }
      begin = min(max(begin, int64_t{0}), p.nnz);
      end = min(max(end, begin), p.nnz);
    }
    const int64_t rows = p.num_tables > 1 ? p.tables[t].rows : p.single_table.rows;
    const int64_t row_base = p.num_tables > 1 ? p.tables[t].row_base : p.single_table.row_base;
    PosT count = 0;
    for (int64_t i = begin + j; i < end; i += lanes) {
      const int64_t id = static_cast<int64_t>(load_ro(ids + i));
      const bool padding = p.padding_idx >= 0 && id == p.padding_idx;
      const bool in_range = id >= 0 && id < rows;
      if (count_bad && !padding && !in_range) count_skipped_id(p.workspace, i);
      const bool valid = !padding && in_range;
      keys[i] = valid ? static_cast<PosT>(row_base + id) : sentinel;
      vals[i] = static_cast<PosT>(i);
      if (write_bag) bag_of[i] = static_cast<uint64_t>(bag);
      count += valid ? 1 : 0;
    }
    if (mean) {
      for (int o = lanes / 2; o > 0; o /= 2) count += __shfl_xor_sync(mask, count, o, lanes);
      for (int64_t i = begin + j; i < end; i += lanes) count_of[i] = count;
    }
  }
}

// MAX: an entry carries its bag's gradient if it is a real row and the first
// entry of its bag in its run (entries of one bag are adjacent in a run).
template <typename PosT>
__global__ void __launch_bounds__(kIndexBlockThreads, kIndexMinBlocksPerSm)
    max_flags_kernel(const __grid_constant__ EmbeddingBagBackwardParams p,
                     const BackwardWorkspace ws) {
  if (ws.read_record && record_says_stop(p)) return;
  const auto* keys = static_cast<const PosT*>(ws.keys[ws.sorted]);
  const auto* vals = static_cast<const PosT*>(ws.vals[ws.sorted]);
  const auto* bag_of = static_cast<const uint64_t*>(ws.bag_of);
  auto* flags = static_cast<PosT*>(ws.scratch);
  const int64_t fixed = p.fixed_bag_size;
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kIndexBlockThreads + threadIdx.x; s < p.nnz;
       s += static_cast<int64_t>(gridDim.x) * kIndexBlockThreads) {
    const PosT key = keys[s];
    bool carries = key < static_cast<PosT>(p.total_rows);
    if (carries && s > 0 && keys[s - 1] == key) {
      const PosT a = vals[s - 1];
      const PosT b = vals[s];
      carries = fixed > 0 ? static_cast<int64_t>(a) / fixed != static_cast<int64_t>(b) / fixed
                          : bag_of[a] != bag_of[b];
    }
    flags[s] = carries ? 1 : 0;
  }
}

// MAX: moves the carrying entries to the other sort buffer, in order (their
// destinations are the exclusive scan of the flags).
template <typename PosT>
__global__ void __launch_bounds__(kIndexBlockThreads, kIndexMinBlocksPerSm)
    max_compact_kernel(const __grid_constant__ EmbeddingBagBackwardParams p,
                       const BackwardWorkspace ws, int from) {
  if (ws.read_record && record_says_stop(p)) return;
  const auto* flags = static_cast<const PosT*>(ws.scratch);
  const auto* slot = static_cast<const PosT*>(ws.count_of);
  const auto* keys = static_cast<const PosT*>(ws.keys[from]);
  const auto* vals = static_cast<const PosT*>(ws.vals[from]);
  auto* keys_out = static_cast<PosT*>(ws.keys[1 - from]);
  auto* vals_out = static_cast<PosT*>(ws.vals[1 - from]);
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kIndexBlockThreads + threadIdx.x; s < p.nnz;
       s += static_cast<int64_t>(gridDim.x) * kIndexBlockThreads) {
    if (flags[s] != 0) {
      keys_out[slot[s]] = keys[s];
      vals_out[slot[s]] = vals[s];
    }
  }
}

// Work items of the runs, a slot in the hot-run list and partial rows for
// each hot run, and the counts. A block takes kIndexBlockThreads consecutive
// runs at a time (grid-stride):
//  - thread x of the block handles run base + x: a hot run gets its slot and
//    its partial rows (integer atomics: which slots a hot run gets does not
//    change any value, each run's partial rows are added in chunk order);
//    the thread of index U writes the counts;
//  - the runs' work items, a contiguous range (run_item is their exclusive
//    scan), are written by all the block's threads together, item w by
//    thread w mod kIndexBlockThreads: item w belongs to the last run whose
//    first item is <= w, found by a binary search over the block's run_item
//    entries staged in shared memory (or directly when every run of the
//    block has one item). So a row hit L times has its ceil(L / CHUNK) items
//    written by the whole block, not one after the other by one thread.
// item_run's values do not depend on which thread writes them.
template <typename PosT>
__global__ void __launch_bounds__(kIndexBlockThreads, kIndexMinBlocksPerSm)
    expand_kernel(const __grid_constant__ EmbeddingBagBackwardParams p,
                  const BackwardWorkspace ws) {
  if (ws.read_record && record_says_stop(p)) return;
  __shared__ PosT first_item[kIndexBlockThreads + 1];
  const auto* unique_keys = static_cast<const PosT*>(ws.unique_keys);
  const auto* run_start = static_cast<const PosT*>(ws.run_start);
  const auto* run_item = static_cast<const PosT*>(ws.run_item);
  auto* item_run = static_cast<PosT*>(ws.item_run);
  auto* hot_runs = static_cast<PosT*>(ws.hot_runs);
  auto* run_partial = static_cast<PosT*>(ws.run_partial);
  const auto num_runs = static_cast<int64_t>(ws.counters->num_runs);
  // The sentinel key (padding / skipped ids, or MAX's dropped entries) sorts
  // last: its run, if any, is the last one.
  const int64_t valid_runs =
      num_runs > 0 && unique_keys[num_runs - 1] >= static_cast<PosT>(p.total_rows) ? num_runs - 1
                                                                                   : num_runs;
  const int x = static_cast<int>(threadIdx.x);
  // base is block-uniform, and so is every branch around the barriers.
  for (int64_t base = static_cast<int64_t>(blockIdx.x) * kIndexBlockThreads; base <= p.nnz;
       base += static_cast<int64_t>(gridDim.x) * kIndexBlockThreads) {
    const int64_t u = base + x;
    if (u < valid_runs) {
      const int64_t chunks = chunks_of(static_cast<int64_t>(run_start[u + 1] - run_start[u]));
      if (chunks > 1) {
        const auto h = atomicAdd(&ws.counters->num_hot, 1ull);
        hot_runs[h] = static_cast<PosT>(u);
        run_partial[u] = static_cast<PosT>(
            atomicAdd(&ws.counters->num_partial_rows, static_cast<unsigned long long>(chunks)));
      }
    }
    if (u == valid_runs) {
      ws.counters->num_valid_runs = static_cast<unsigned long long>(valid_runs);
      ws.counters->num_items = static_cast<unsigned long long>(run_item[u]);
      if (p.num_unique != nullptr) *p.num_unique = valid_runs;
    }

    // Runs [r0, r0 + runs) of this step own items [run_item[r0], run_item[r0 + runs]).
    const int64_t r0 = min(base, valid_runs);
    const int runs = static_cast<int>(min(base + kIndexBlockThreads, valid_runs) - r0);
    if (runs == 0) continue;  // this block has no more valid runs (uniform)
    for (int k = x; k <= runs; k += kIndexBlockThreads) first_item[k] = run_item[r0 + k];
    __syncthreads();
    const auto i0 = static_cast<int64_t>(first_item[0]);
    const auto i1 = static_cast<int64_t>(first_item[runs]);
    const bool one_each = i1 - i0 == runs;
    for (int64_t w = i0 + x; w < i1; w += kIndexBlockThreads) {
      int k = static_cast<int>(w - i0);
      if (!one_each) {
        // The last k in [0, runs) with first_item[k] <= w (first_item[0] <= w).
        int lo = 0;
        int hi = runs - 1;
        while (lo < hi) {
          const int mid = (lo + hi + 1) / 2;
          if (static_cast<int64_t>(first_item[mid]) <= w) {
            lo = mid;
          } else {
            hi = mid - 1;
          }
        }
        k = lo;
      }
      item_run[w] = static_cast<PosT>(r0 + k);
    }
    __syncthreads();  // the next step overwrites first_item
  }
}

// Sorted entry s starts a run (its key differs from the previous one).
template <typename PosT>
__device__ __forceinline__ PosT run_head(const PosT* keys, int64_t s) {
  return s == 0 || keys[s] != keys[s - 1] ? PosT{1} : PosT{0};
}

template <typename PosT>
__global__ void __launch_bounds__(kIndexBlockThreads, kIndexMinBlocksPerSm)
    heads_kernel(const __grid_constant__ EmbeddingBagBackwardParams p, const BackwardWorkspace ws) {
  if (ws.read_record && record_says_stop(p)) return;
  const auto* keys = static_cast<const PosT*>(ws.keys[ws.sorted]);
  auto* heads = static_cast<PosT*>(ws.scratch);
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kIndexBlockThreads + threadIdx.x; s < p.nnz;
       s += static_cast<int64_t>(gridDim.x) * kIndexBlockThreads) {
    heads[s] = run_head(keys, s);
  }
}

// Work items of each run r <= nnz: its chunks; 0 past the last run.
template <typename PosT>
__global__ void __launch_bounds__(kIndexBlockThreads, kIndexMinBlocksPerSm)
    run_chunks_kernel(const __grid_constant__ EmbeddingBagBackwardParams p,
                      const BackwardWorkspace ws) {
  if (ws.read_record && record_says_stop(p)) return;
  const auto* run_start = static_cast<const PosT*>(ws.run_start);
  auto* run_item = static_cast<PosT*>(ws.run_item);
  const auto num_runs = static_cast<int64_t>(ws.counters->num_runs);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kIndexBlockThreads + threadIdx.x; r <= p.nnz;
       r += static_cast<int64_t>(gridDim.x) * kIndexBlockThreads) {
    run_item[r] =
        r < num_runs
            ? static_cast<PosT>(chunks_of(static_cast<int64_t>(run_start[r + 1] - run_start[r])))
            : PosT{0};
  }
}

// One thread per sorted entry: a run head writes its run's key and first
// entry at its run index (the exclusive scan of the heads, in ws.scratch);
// the last entry writes the run count and the end of the last run.
template <typename PosT>
__global__ void __launch_bounds__(kIndexBlockThreads, kIndexMinBlocksPerSm)
    runs_kernel(const __grid_constant__ EmbeddingBagBackwardParams p, const BackwardWorkspace ws) {
  if (ws.read_record && record_says_stop(p)) return;
  const auto* keys = static_cast<const PosT*>(ws.keys[ws.sorted]);
  const auto* run_of = static_cast<const PosT*>(ws.scratch);
  auto* unique_keys = static_cast<PosT*>(ws.unique_keys);
  auto* run_start = static_cast<PosT*>(ws.run_start);
  if (p.nnz == 0 && blockIdx.x == 0 && threadIdx.x == 0) {
    ws.counters->num_runs = 0;
    run_start[0] = 0;
  }
  for (int64_t s = static_cast<int64_t>(blockIdx.x) * kIndexBlockThreads + threadIdx.x; s < p.nnz;
       s += static_cast<int64_t>(gridDim.x) * kIndexBlockThreads) {
    const PosT h = run_head(keys, s);
    if (h != 0) {
      unique_keys[run_of[s]] = keys[s];
      run_start[run_of[s]] = static_cast<PosT>(s);
    }
    if (s == p.nnz - 1) {
      const PosT runs = run_of[s] + h;
      ws.counters->num_runs = runs;
      run_start[runs] = static_cast<PosT>(p.nnz);
    }
  }
}

// The CUB calls of the pipeline and the kernels between them, with `temp`
// null for the size queries (which launch nothing). NumT: CUB's item count
// type (int for narrow, int64_t for wide).
template <typename PosT, typename NumT>
cudaError_t cub_steps(const EmbeddingBagBackwardParams& p, BackwardWorkspace& ws, void* temp,
                      size_t* temp_bytes, int end_bit, cudaStream_t stream,
                      const BackwardLaunch* prepare_plan) {
  const bool query = temp == nullptr;
  const NumT n = static_cast<NumT>(p.nnz);
  size_t bytes = query ? 0 : *temp_bytes;
  size_t needed = 0;
  auto step = [&](auto&& call) -> cudaError_t {
    size_t b = bytes;
    const cudaError_t e = call(b);
    needed = std::max(needed, b);
    return e;
  };
  auto launched = [&]() { return static_cast<cudaError_t>(launch_status(stream)); };
  const auto index_grid = static_cast<unsigned>(
      std::min(std::max<int64_t>(ceil_div(p.nnz + 1, kIndexBlockThreads), 1), kMaxIndexGrid));
  cudaError_t e = cudaSuccess;

  if (!query) {
    const int64_t num_bags = p.pooling == SPEMBED_POOLING_NONE ? p.nnz : p.num_bags();
    const int64_t groups_per_block = kBackwardBlockThreads / prepare_plan->lanes;
    const auto grid = static_cast<unsigned>(
        std::min(std::max<int64_t>(ceil_div(num_bags, groups_per_block), 1), kMaxIndexGrid));
    const int status = SPEMBED_INDEX_SWITCH(p.index_type, IdxT, [&] {
      launch_kernel(prepare_kernel<IdxT, PosT>, grid, kBackwardBlockThreads, 0, stream, p, ws,
                    prepare_plan->lanes, prepare_plan->read_record, prepare_plan->count_bad);
      return launch_status(stream);
    });
    if (status != 0) return static_cast<cudaError_t>(status);
  }

  cub::DoubleBuffer<PosT> keys(static_cast<PosT*>(ws.keys[0]), static_cast<PosT*>(ws.keys[1]));
  cub::DoubleBuffer<PosT> vals(static_cast<PosT*>(ws.vals[0]), static_cast<PosT*>(ws.vals[1]));
  e = step([&](size_t& b) {
    return cub::DeviceRadixSort::SortPairs(temp, b, keys, vals, n, 0, end_bit, stream);
  });
  if (e != cudaSuccess) return e;
  ws.sorted = keys.selector;

  if (p.pooling == SPEMBED_POOLING_MAX) {
    const int from = ws.sorted;
    if (!query) {
      launch_kernel(max_flags_kernel<PosT>, index_grid, kIndexBlockThreads, 0, stream, p, ws);
      if ((e = launched()) != cudaSuccess) return e;
      // Entries past the carrying ones get the all-ones key: a second
      // sentinel, after every real row.
      e = cudaMemsetAsync(ws.keys[1 - from], 0xff, sizeof(PosT) * p.nnz, stream);
      if (e != cudaSuccess) return e;
    }
    // MAX has no MEAN counts: count_of holds the destinations.
    e = step([&](size_t& b) {
      return cub::DeviceScan::ExclusiveSum(temp, b, static_cast<const PosT*>(ws.scratch),
                                           static_cast<PosT*>(ws.count_of), n, stream);
    });
    if (e != cudaSuccess) return e;
    if (!query) {
      launch_kernel(max_compact_kernel<PosT>, index_grid, kIndexBlockThreads, 0, stream, p, ws,
                    from);
      if ((e = launched()) != cudaSuccess) return e;
    }
    ws.sorted = 1 - from;
  }

  // Runs: the head flags, scanned in place into run indices (MAX's flags
  // are no longer needed), then the runs kernel.
  if (!query) {
    launch_kernel(heads_kernel<PosT>, index_grid, kIndexBlockThreads, 0, stream, p, ws);
    if ((e = launched()) != cudaSuccess) return e;
  }
  e = step([&](size_t& b) {
    return cub::DeviceScan::ExclusiveSum(temp, b, static_cast<PosT*>(ws.scratch),
                                         static_cast<PosT*>(ws.scratch), n, stream);
  });
  if (e != cudaSuccess) return e;
  if (!query) {
    launch_kernel(runs_kernel<PosT>, index_grid, kIndexBlockThreads, 0, stream, p, ws);
    if ((e = launched()) != cudaSuccess) return e;
    launch_kernel(run_chunks_kernel<PosT>, index_grid, kIndexBlockThreads, 0, stream, p, ws);
    if ((e = launched()) != cudaSuccess) return e;
  }
  // Work items, scanned in place over nnz + 1 runs: entry U is the total.
  e = step([&](size_t& b) {
    return cub::DeviceScan::ExclusiveSum(temp, b, static_cast<PosT*>(ws.run_item),
                                         static_cast<PosT*>(ws.run_item), static_cast<NumT>(n + 1),
                                         stream);
  });
  if (e != cudaSuccess) return e;

  if (query) {
    *temp_bytes = needed;
    return cudaSuccess;
  }
  launch_kernel(expand_kernel<PosT>, index_grid, kIndexBlockThreads, 0, stream, p, ws);
  return launched();
}

int key_bits(int64_t total_rows) {
  int bits = 1;
  while (bits < 64 && (uint64_t{1} << bits) <= static_cast<uint64_t>(total_rows)) ++bits;
  return bits;
}

}  // namespace

int backward_cub_temp_bytes(const EmbeddingBagBackwardParams& p, const BackwardWorkspace& ws,
                            size_t* bytes) {
  BackwardWorkspace scratch = ws;
  const int end_bit = key_bits(p.total_rows);
  const cudaError_t e =
      ws.wide ? cub_steps<uint64_t, int64_t>(p, scratch, nullptr, bytes, end_bit, nullptr, nullptr)
              : cub_steps<uint32_t, int>(p, scratch, nullptr, bytes, end_bit, nullptr, nullptr);
  return static_cast<int>(e);
}

int launch_backward_batched_id_checks(const EmbeddingBagBackwardParams& p, cudaStream_t stream) {
  // gridDim.y limit; one thread per id of the average table.
  const int64_t grid_y = std::min<int64_t>(p.num_tables, 65535);
  const int64_t grid_x =
      std::min(std::max<int64_t>(ceil_div(ceil_div(p.nnz, p.num_tables), kIndexBlockThreads), 1),
               kMaxIndexGrid);
  const dim3 grid(static_cast<unsigned>(grid_x), static_cast<unsigned>(grid_y));
  return SPEMBED_INDEX_SWITCH(p.index_type, IdxT, [&] {
    launch_kernel(batched_id_check_kernel<IdxT>, grid, kIndexBlockThreads, 0, stream, p);
    return launch_status(stream);
  });
}

int launch_backward_index_pipeline(const EmbeddingBagBackwardParams& p, BackwardWorkspace& ws,
                                   const BackwardLaunch& prepare_plan, cudaStream_t stream) {
  const int end_bit = key_bits(p.total_rows);
  size_t bytes = ws.cub_temp_bytes;
  const cudaError_t e =
      ws.wide
          ? cub_steps<uint64_t, int64_t>(p, ws, ws.cub_temp, &bytes, end_bit, stream, &prepare_plan)
          : cub_steps<uint32_t, int>(p, ws, ws.cub_temp, &bytes, end_bit, stream, &prepare_plan);
  return static_cast<int>(e);
}

}  // namespace spembed::detail
