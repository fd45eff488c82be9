// Embedding bag lookup kernel: SUM, MEAN and MAX pooling, and NONE as bags of
// one id. Included only by the per-dtype instantiation files that
// kernels/embedding_bag/CMakeLists.txt generates.
//
// Grid mapping: one group of G lanes (G a power of two, 1..32) per work item
// = (bag, column chunk); a block of kForwardBlockThreads holds
// kForwardBlockThreads / G groups, and a grid-stride loop covers items beyond
// the grid. Lane j of a group owns vectors chunk*G*V + v*G + j (v < V) of the
// bag's table row, a vector being 16 bytes (4 fp32 or 8 fp16/bf16 elements)
// when p.rows_16b_aligned, else one element; so the warp-wide load of vector
// v reads G contiguous vectors of each of the warp's 32/G rows. Each lane
// holds V vectors' worth of fp32 accumulators in registers. G and V
// (plan_group_shape) are the fewest lanes that cover the widest table's row
// with up to 4 vectors each: D=16 fp32 is one lane per bag (32 bags per
// warp), D=128 fp32 8 lanes (4 bags per warp), D=128 fp16 4 lanes, and rows
// wider than 32 lanes x V vectors split into chunks on separate warps
// (D=1024 fp32: 2 chunks of 512 columns). A narrower table of a batch
// predicates off its extra lanes and vectors.
//
// A group walks its bag's ids a batch at a time: lane j loads ids
// m*G + j of the batch (coalesced, with their weights) while the previous
// batch is reduced, checks them against padding_idx and the table's rows, and
// the group broadcasts them with width-G shuffles. The V vectors of
// kVecsInFlight / V rows are loaded before the first is accumulated; rows are
// accumulated in the order of the ids, each output element sequentially, in
// the table's accumulation type (fp32; fp64 for fp64 tables, whose 16-byte
// vectors hold 2 elements), and converted to the output dtype once.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/row_io.cuh"
#include "kernels/embedding_bag/embedding_bag_forward_launch.cuh"
#include "kernels/embedding_bag/embedding_bag_params.h"
#include "kernels/embedding_bag/embedding_bag_switch.cuh"

namespace spembed::detail {

// a / b for a >= 0, b > 0, with the cheaper 32-bit division when both fit.
__device__ __forceinline__ int64_t div_nonneg(int64_t a, int64_t b) {
  if ((static_cast<uint64_t>(a) | static_cast<uint64_t>(b)) <= 0xffffffffull) {
    return static_cast<uint32_t>(a) / static_cast<uint32_t>(b);
  }
  return a / b;
}

template <typename T>
__device__ __forceinline__ T shfl_group(unsigned mask, T value, int src, int width) {
  if constexpr (sizeof(T) == 8) {
    return static_cast<T>(__shfl_sync(mask, static_cast<long long>(value), src, width));
  } else {
    return __shfl_sync(mask, value, src, width);
  }
}

// SKIP: an out-of-range id found during the lookup (rare; no aggregation).
__device__ __forceinline__ void record_bad_index(void* workspace, int64_t position) {
  auto* record = static_cast<DataCheckRecord*>(workspace);
  atomicAdd(&record->bad_index_count, 1ull);
  atomicMin(&record->first_bad_index_position, static_cast<unsigned long long>(position));
}

template <typename TableT, typename IdxT, PoolKind kKind, bool kVec16, int kLanes,
          int kVecPerThread>
__global__ void __launch_bounds__(kForwardBlockThreads, kForwardMinBlocksPerSm)
    embedding_bag_pooled_kernel(const __grid_constant__ EmbeddingBagForwardParams p,
                                const ForwardLaunch plan) {
  using Vec = RowVector<TableT, kVec16>;
  using Raw = typename Vec::Raw;
  using Acc = typename Vec::Acc;
  constexpr int kElems = Vec::kElems;
  constexpr int kV = kVecPerThread;
  constexpr int kRows = kVecsInFlight / kV;  // rows loaded per step
  // A batch holds at least a step's ids: narrow groups load several per lane.
  constexpr int kIdsPerLane = kRows > kLanes ? kRows / kLanes : 1;
  constexpr int kBatch = kLanes * kIdsPerLane;
  constexpr int kItemsPerBlock = kForwardBlockThreads / kLanes;
  // Does a warp-wide load read less than a 32-byte sector of each row?
  constexpr bool kKeepRowsInL1 = kLanes * sizeof(Raw) < 32;
  constexpr bool kIsMax = kKind == PoolKind::kMax;
  constexpr bool kWeighted = kKind == PoolKind::kWeightedSum;

  // The check kernel ran before on the stream: any bad offset, or any bad id
  // under ERROR, means nothing may be written.
  if (plan.read_record) {
    const auto* record = static_cast<const DataCheckRecord*>(p.workspace);
    if (record->first_bad_offset_position != kNoPosition) return;
    if (p.bounds_policy == SPEMBED_BOUNDS_ERROR && record->bad_index_count != 0) return;
  }

  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int j = lane & (kLanes - 1);
  const unsigned mask =
      kLanes == 32 ? 0xffffffffu : ((1u << kLanes) - 1u) << (lane & ~(kLanes - 1));
  const auto* ids = static_cast<const IdxT*>(p.indices);
  const auto* offsets = static_cast<const IdxT*>(p.offsets);
  const bool has_padding = p.padding_idx >= 0;
  // NONE starts from -0 so that a single row passes through bit-exactly
  // (-0 + x == x for every x, +0 + -0 is +0); a sum starts from +0.
  const Acc sum_init = p.pooling == SPEMBED_POOLING_NONE ? Acc(-0.0) : Acc(0.0);
  const auto* sample_weights = static_cast<const Acc*>(p.weights);
  const bool mean = p.pooling == SPEMBED_POOLING_MEAN;

  for (int64_t item = static_cast<int64_t>(blockIdx.x) * kItemsPerBlock + threadIdx.x / kLanes;
       item < plan.num_items; item += static_cast<int64_t>(gridDim.x) * kItemsPerBlock) {
    int64_t bag = item;
    int64_t chunk = 0;
    if (plan.chunks > 1) {
      bag = div_nonneg(item, plan.chunks);
      chunk = item - bag * plan.chunks;
    }
    TableMeta table;
    int64_t out_row = bag;
    if (p.num_tables > 1) {
      const int64_t t = div_nonneg(bag, p.bags_per_table);
      out_row = bag - t * p.bags_per_table;
      table = p.tables[t];
    } else {
      table = p.single_table;
    }
    // Vector indices fit 32 bits unsigned: dim < 2^31, plus less than a
    // chunk, so first_vec + v * kLanes cannot wrap around.
    const uint32_t row_vecs = kVec16 ? table.dim / kElems : table.dim;
    const int64_t chunk_first_vec = chunk * (kLanes * kV);
    // A chunk past a narrower table's row has nothing to do; chunk 0 always
    // runs, since it is the one that counts the bag's out-of-range ids.
    if (chunk > 0 && chunk_first_vec >= row_vecs) continue;
    const uint32_t first_vec = static_cast<uint32_t>(chunk_first_vec + j);

    // Offsets were not validated on the host: clamp into [0, nnz] so that any
    // values stay memory-safe (bad ones stopped the kernel above).
    int64_t begin;
    int64_t end;
    if (p.fixed_bag_size > 0) {
      begin = bag * p.fixed_bag_size;
      end = begin + p.fixed_bag_size;
    } else {
      begin = static_cast<int64_t>(load_ro(offsets + bag));
      end = static_cast<int64_t>(load_ro(offsets + bag + 1));
    }
    begin = min(max(begin, int64_t{0}), p.nnz);
    end = min(max(end, begin), p.nnz);

    Acc acc[kV][kElems];
    IdxT arg[kIsMax ? kV : 1][kIsMax ? kElems : 1];
#pragma unroll
    for (int v = 0; v < kV; ++v) {
#pragma unroll
      for (int e = 0; e < kElems; ++e) acc[v][e] = kIsMax ? Acc(0.0) : sum_init;
    }
#pragma unroll
    for (int v = 0; v < (kIsMax ? kV : 1); ++v) {
#pragma unroll
      for (int e = 0; e < (kIsMax ? kElems : 1); ++e) arg[v][e] = IdxT{-1};
    }
    int64_t count = 0;
    const auto* table_data = static_cast<const TableT*>(table.data);

    // Lane j holds ids m * kLanes + j (m < kIdsPerLane) of a batch.
    IdxT next_id[kIdsPerLane];
    Acc next_weight[kIdsPerLane];
#pragma unroll
    for (int m = 0; m < kIdsPerLane; ++m) {
      const int q = m * kLanes + j;
      next_id[m] = q < end - begin ? load_ro(ids + begin + q) : IdxT{0};
      next_weight[m] = Acc(1.0);
      if constexpr (kWeighted) {
        if (q < end - begin) next_weight[m] = load_ro(sample_weights + begin + q);
      }
    }
    for (int64_t base = begin; base < end; base += kBatch) {
      const int64_t left = end - base;
      // Broadcast values: the id, or -1 for "contributes nothing".
      IdxT live_id[kIdsPerLane];
      Acc weight_of[kIdsPerLane];
#pragma unroll
      for (int m = 0; m < kIdsPerLane; ++m) {
        const int q = m * kLanes + j;
        const int64_t id = static_cast<int64_t>(next_id[m]);
        const bool in_batch = q < left;
        const bool padding = has_padding && id == p.padding_idx;
        const bool in_range = id >= 0 && id < table.rows;
        if (plan.count_bad && chunk == 0 && in_batch && !padding && !in_range) {
          record_bad_index(p.workspace, base + q);
        }
        live_id[m] = in_batch && !padding && in_range ? next_id[m] : IdxT{-1};
        weight_of[m] = next_weight[m];
      }
      // Prefetch the next batch while this one is reduced.
#pragma unroll
      for (int m = 0; m < kIdsPerLane; ++m) {
        const int q = m * kLanes + j;
        if (q < left - kBatch) {
          next_id[m] = load_ro(ids + base + kBatch + q);
          if constexpr (kWeighted) next_weight[m] = load_ro(sample_weights + base + kBatch + q);
        }
      }

#pragma unroll 1
      for (int step = 0; step < kBatch / kRows && step * kRows < left; ++step) {
        IdxT row_id[kRows];
        Acc weight[kRows];
        bool live[kRows];
        Raw raw[kRows][kV];
#pragma unroll
        for (int u = 0; u < kRows; ++u) {
          // Row q of the batch is held by lane q % kLanes in slot q / kLanes;
          // with several ids per lane there is a single step.
          const int q = step * kRows + u;
          const int m = kIdsPerLane == 1 ? 0 : u / kLanes;
          const int src = kIdsPerLane == 1 ? q : u % kLanes;
          if constexpr (kLanes == 1) {
            row_id[u] = live_id[m];
            weight[u] = weight_of[m];
          } else {
            row_id[u] = shfl_group(mask, live_id[m], src, kLanes);
            weight[u] = kWeighted ? __shfl_sync(mask, weight_of[m], src, kLanes) : Acc(1.0);
          }
          live[u] = q < left && row_id[u] >= 0;
          const TableT* row =
              table_data + (live[u] ? static_cast<int64_t>(row_id[u]) * table.row_stride : 0);
#pragma unroll
          for (int v = 0; v < kV; ++v) {
            const uint32_t vec = first_vec + v * kLanes;
            raw[u][v] = live[u] && vec < row_vecs ? Vec::template load<kKeepRowsInL1>(row, vec)
                                                  : Vec::zero();
          }
        }
#pragma unroll
        for (int u = 0; u < kRows; ++u) {
          if (!live[u]) continue;
          ++count;
#pragma unroll
          for (int v = 0; v < kV; ++v) {
            Acc x[kElems];
            Vec::widen(raw[u][v], x);
#pragma unroll
            for (int e = 0; e < kElems; ++e) {
              if constexpr (kIsMax) {
                // The first pooled row sets the max; a later row replaces it
                // only when strictly greater, so ties keep the earlier row.
                const bool take = count == 1 || x[e] > acc[v][e];
                acc[v][e] = take ? x[e] : acc[v][e];
                arg[v][e] = take ? row_id[u] : arg[v][e];
              } else if constexpr (kWeighted) {
                // Multiply, then add: two roundings, as the CPU reference.
                acc[v][e] = add_rn(acc[v][e], mul_rn(weight[u], x[e]));
              } else {
                acc[v][e] = add_rn(acc[v][e], x[e]);
              }
            }
          }
        }
      }
    }

    // Epilogue: empty bags give 0 (and argmax -1); MEAN divides by the count.
    const int64_t out_elem = out_row * p.out_row_stride + table.out_col;
    const bool vector_ok = plan.out_vector_ok && table.out_col % kElems == 0;
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      const uint32_t vec = first_vec + v * kLanes;
      if (vec >= row_vecs) continue;
#pragma unroll
      for (int e = 0; e < kElems; ++e) {
        if (count == 0) {
          acc[v][e] = Acc(0.0);
        } else if (kKind == PoolKind::kSum && mean) {
          acc[v][e] = div_rn(acc[v][e], static_cast<Acc>(count));
        }
      }
      store_outputs<kElems>(p.output, p.out_dtype, out_elem + int64_t{vec} * kElems, acc[v],
                            vector_ok);
      if constexpr (kIsMax) {
        if (p.argmax != nullptr) {
          IdxT* a = static_cast<IdxT*>(p.argmax) + out_row * p.argmax_row_stride + table.out_col +
                    int64_t{vec} * kElems;
#pragma unroll
          for (int e = 0; e < kElems; ++e) a[e] = count == 0 ? IdxT{-1} : arg[v][e];
        }
      }
    }
  }
}

template <typename TableT>
int launch_embedding_bag_pooled(const EmbeddingBagForwardParams& p, const ForwardLaunch& plan,
                                cudaStream_t stream) {
  return SPEMBED_INDEX_SWITCH(p.index_type, IdxT, [&] {
    return SPEMBED_POOL_KIND_SWITCH(plan.kind, kKind, [&] {
      return SPEMBED_BOOL_SWITCH(plan.vec16, kVec16, [&] {
        return SPEMBED_LANES_SWITCH(plan.lanes, kLanes, [&] {
          return SPEMBED_VEC_PER_THREAD_SWITCH(plan.vec_per_thread, kV, [&] {
            // Only the shapes plan_group_shape produces are compiled.
            constexpr int kElems = RowVector<TableT, kVec16>::kElems;
            if constexpr (!is_planned_shape(kKind, kElems, kLanes, kV)) {
              return static_cast<int>(cudaErrorInvalidConfiguration);
            } else {
              launch_kernel(embedding_bag_pooled_kernel<TableT, IdxT, kKind, kVec16, kLanes, kV>,
                            plan.grid, kForwardBlockThreads, 0, stream, p, plan);
              return launch_status(stream);
            }
          });
        });
      });
    });
  });
}

}  // namespace spembed::detail
