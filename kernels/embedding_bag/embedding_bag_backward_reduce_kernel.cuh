// Lane-group kernels of the CUDA embedding bag backward. Included only by the
// per-table-dtype instantiation files kernels/embedding_bag/CMakeLists.txt generates.
//
// Column layout, shared by every kernel here: a group of G lanes (G a power of
// two, 1..32) works on one row at a time; lane j owns V vectors of 4
// consecutive columns, vector v covering columns blk*W + (v*G + j)*4 .. +3,
// W = G*V*4 being a column block (G and V from plan_backward_groups: the
// fewest lanes that cover the widest table's row with up to 4 vectors each;
// D = 128: G = 8, V = 4, four rows per warp; rows wider than 512 columns take
// several blocks). So the group's load of vector v reads G contiguous 16-byte
// (fp32) or 8-byte (fp16 / bf16) pieces of a row. Unaligned rows, dims that
// are not multiples of 4 and row tails fall back to element loads.
//
// Grid mappings (blocks of kBackwardBlockThreads = 128 / G groups; grids of
// at most one wave of resident blocks, grid-stride loops over device-side
// counts, so no launch depends on a host read of the counts):
//   reduce   one group per work item (see the pipeline in
//            embedding_bag_backward_launch.cuh): a run of at most one chunk,
//            or, for runs of more contributions, one chunk of
//            SPEMBED_BACKWARD_CHUNK sorted entries. Lane j fetches entry b + j
//            of a batch of G (position, bag, scale), the group broadcasts each
//            with shuffles and accumulates its grad_output row in entry order,
//            each column sequentially in fp32. Complete runs finish with the
//            epilogue; chunks of hot runs store their sum as a partial row.
//            (Without room for partials, one group walks all chunks of a run.)
//   combine  one group per hot run: adds the run's partial rows in chunk
//            order, then the epilogue. A hot row thus spreads over
//            ceil(L / CHUNK) groups instead of serialising on one.
//   bag      one group per bag: (a) by float atomics (16-byte red.global.add
//            on sm_90) and / or (d), the dot product of the bag's grad_output
//            row with each of its ids' table rows (group tree reduction).
//
// Sums, gradients, states and per-sample weights are in the table's
// accumulation type Acc (accumulator_t: double for float64 tables, whose
// grad_output is float64 too, else float).
//
// Epilogue per row (compile-time table dtype, runtime outputs): (a) grad_table
// += sum; (b) unique id and gradient row (zeros up to max_dim); (c) optimizer
// step through optimizer_math.h, row-wise Adagrad's sum of g'^2 by a group
// tree reduction, weights rounded to nearest even or stochastically.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/row_io.cuh"
#include "kernels/common/static_switch.cuh"
#include "kernels/embedding_bag/embedding_bag_backward_columns.h"
#include "kernels/embedding_bag/embedding_bag_backward_launch.cuh"
#include "kernels/embedding_bag/optimizer_kinds.h"
#include "kernels/embedding_bag/optimizer_math.h"

namespace spembed::detail {
namespace backward {

struct Group {
  int lanes;       // G
  int j;           // lane within the group
  unsigned mask;   // the group's lanes within the warp
  int64_t first;   // this group's first item
  int64_t stride;  // groups in the grid
};

__device__ __forceinline__ Group make_group(int lanes) {
  Group g;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  g.lanes = lanes;
  g.j = lane & (lanes - 1);
  g.mask = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1u) << (lane & ~(lanes - 1));
  const int64_t per_block = kBackwardBlockThreads / lanes;
  g.first = static_cast<int64_t>(blockIdx.x) * per_block + threadIdx.x / lanes;
  g.stride = static_cast<int64_t>(gridDim.x) * per_block;
  return g;
}

__device__ __forceinline__ int64_t shfl64(unsigned mask, int64_t v, int src, int width) {
  return static_cast<int64_t>(__shfl_sync(mask, static_cast<long long>(v), src, width));
}

template <typename Acc>
__device__ __forceinline__ Acc group_sum(const Group& g, Acc v) {
  for (int o = g.lanes / 2; o > 0; o /= 2) v = add_rn(v, __shfl_xor_sync(g.mask, v, o, g.lanes));
  return v;
}

__device__ __forceinline__ bool record_says_stop(const EmbeddingBagBackwardParams& p) {
  const auto* record = static_cast<const DataCheckRecord*>(p.workspace);
  if (record->first_bad_offset_position != kNoPosition) return true;
  return p.bounds_policy == SPEMBED_BOUNDS_ERROR && record->bad_index_count != 0;
}

// A narrow (uint32) or wide (uint64) workspace entry.
__device__ __forceinline__ int64_t ld_pos(const void* base, int64_t i, bool wide) {
  return wide ? static_cast<int64_t>(static_cast<const uint64_t*>(base)[i])
              : static_cast<int64_t>(static_cast<const uint32_t*>(base)[i]);
}

// The bag of position pos (with offsets): uint64 in both layouts.
__device__ __forceinline__ int64_t ld_bag(const BackwardWorkspace& ws, int64_t pos) {
  return static_cast<int64_t>(static_cast<const uint64_t*>(ws.bag_of)[pos]);
}

__device__ __forceinline__ int64_t ld_index(const void* base, int64_t i, IndexType type) {
  return type == IndexType::kI32
             ? static_cast<int64_t>(load_ro(static_cast<const int32_t*>(base) + i))
             : load_ro(static_cast<const int64_t*>(base) + i);
}

template <typename T>
__device__ __forceinline__ accumulator_t<T> elem_to_float(T x) {
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
    return x;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __half2float(x);
  } else {
    return __bfloat162float(x);
  }
}

// 4 columns c0..c0+3 of a row in the accumulation type Acc (T's, or float
// for partial sums and states); columns >= dim read as 0. `vec`: the row and
// dim allow one 16-byte (fp32) or 8-byte (fp16 / bf16) load, or two 16-byte
// loads (fp64; vec_ok asks 32-byte alignment, the vector's size).
// Columns are 64-bit here (embedding_bag_backward_columns.h): nothing wraps.
// kReadOnly: data no kernel of this call writes (grad_output, table for (d)).
template <typename T, bool kReadOnly>
__device__ __forceinline__ void load4(const T* row, int64_t c0, int64_t dim, bool vec,
                                      accumulator_t<T> (&x)[4]) {
  if (vec) {
    if constexpr (sizeof(T) == 8) {
      const auto* v = reinterpret_cast<const double2*>(row + c0);
      const double2 a = kReadOnly ? __ldg(v) : v[0];
      const double2 b = kReadOnly ? __ldg(v + 1) : v[1];
      x[0] = a.x;
      x[1] = a.y;
      x[2] = b.x;
      x[3] = b.y;
    } else if constexpr (sizeof(T) == 4) {
      const float4 r = kReadOnly ? __ldg(reinterpret_cast<const float4*>(row + c0))
                                 : *reinterpret_cast<const float4*>(row + c0);
      x[0] = r.x;
      x[1] = r.y;
      x[2] = r.z;
      x[3] = r.w;
    } else {
      const uint2 r = kReadOnly ? __ldg(reinterpret_cast<const uint2*>(row + c0))
                                : *reinterpret_cast<const uint2*>(row + c0);
      x[0] = bits_to_float<T>(r.x & 0xffffu);
      x[1] = bits_to_float<T>(r.x >> 16);
      x[2] = bits_to_float<T>(r.y & 0xffffu);
      x[3] = bits_to_float<T>(r.y >> 16);
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    if (c0 + e < dim) {
      if constexpr (kReadOnly) {
        x[e] = elem_to_float(__ldg(row + c0 + e));
      } else {
        x[e] = elem_to_float(row[c0 + e]);
      }
    } else {
      x[e] = 0;
    }
  }
}

// Stores 4 accumulation-type values (float or double) at columns c0..c0+3.
template <typename Acc>
__device__ __forceinline__ void store4(Acc* row, int64_t c0, int64_t dim, bool vec,
                                       const Acc (&x)[4]) {
  if (vec) {
    if constexpr (sizeof(Acc) == 8) {
      auto* v = reinterpret_cast<double2*>(row + c0);
      v[0] = make_double2(x[0], x[1]);
      v[1] = make_double2(x[2], x[3]);
    } else {
      *reinterpret_cast<float4*>(row + c0) = make_float4(x[0], x[1], x[2], x[3]);
    }
    return;
  }
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    if (c0 + e < dim) row[c0 + e] = x[e];
  }
}

// Updated weights -> the table's dtype (nearest even, or stochastic with the
// random bits of (seed, linearized row, column)).
template <typename TableT>
__device__ __forceinline__ void store4_weights(TableT* row, int64_t c0, int64_t dim, bool vec,
                                               const accumulator_t<TableT> (&x)[4], bool stochastic,
                                               uint64_t seed, int64_t key) {
  if constexpr (sizeof(TableT) >= 4) {
    store4(row, c0, dim, vec, x);
  } else {
    uint16_t bits[4];
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (stochastic) {
        const uint32_t random = sr_random_bits(seed, key, static_cast<int32_t>(c0 + e));
        bits[e] = std::is_same_v<TableT, __half> ? sr_float_to_half(x[e], random)
                                                 : sr_float_to_bf16(x[e], random);
      } else {
        bits[e] = static_cast<uint16_t>(to_bits(from_float<TableT>(x[e])));
      }
    }
    if (vec) {
      *reinterpret_cast<uint2*>(row + c0) =
          make_uint2(bits[0] | (uint32_t{bits[1]} << 16), bits[2] | (uint32_t{bits[3]} << 16));
      return;
    }
    auto* out = reinterpret_cast<uint16_t*>(row);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      if (c0 + e < dim) out[c0 + e] = bits[e];
    }
  }
}

// Does (base, stride) allow vectors of 4 elements of `bytes` each in rows of dim?
__device__ __forceinline__ bool vec_ok(const void* base, int64_t stride, int dim, int bytes) {
  return base == nullptr ||
         (reinterpret_cast<uintptr_t>(base) % (4 * bytes) == 0 && stride % 4 == 0 && dim % 4 == 0);
}

// The table's metadata in place (device array, or the kernel parameter), so
// that its fields are loaded where used instead of held in registers.
__device__ __forceinline__ const BackwardTableMeta& table_of(const EmbeddingBagBackwardParams& p,
                                                             int64_t t) {
  return p.num_tables > 1 ? p.tables[t] : p.single_table;
}

// A thread's sums of one column block, kept in shared memory: the epilogue
// and the partial rows read them back, so they do not hold 16 registers
// across the optimizer step (the kernels stay within kBackwardMinBlocksPerSm's 128
// registers). Slot (v, e) of thread x is at [v * 4 + e][x]: no bank conflicts
// (fp64: two-way, the 8-byte words of a warp span 64 banks), and a thread only
// touches its own slots, so no barrier is needed.
template <typename Acc>
struct Sums {
  Acc* base;
  __device__ Acc& operator()(int v, int e) const {
    return base[(v * kColsPerVec + e) * kBackwardBlockThreads];
  }
};

template <typename Acc>
__device__ __forceinline__ Sums<Acc> thread_sums() {
  __shared__ Acc sums[kMaxVecPerLane * kColsPerVec][kBackwardBlockThreads];
  return Sums<Acc>{&sums[0][threadIdx.x]};
}

// Row of a contribution: its bag's (table, out row, grad_output column).
struct BagRow {
  int64_t table;
  int64_t out_row;
};

__device__ __forceinline__ BagRow bag_row(const EmbeddingBagBackwardParams& p, int64_t bag) {
  if (p.pooling == SPEMBED_POOLING_NONE || p.num_tables == 1) return {0, bag};
  const int64_t t = bag / p.bags_per_table;
  return {t, bag - t * p.bags_per_table};
}

// The optimizer step and outputs of one row. sum_block(blk, g) puts the
// row's reduced gradient for column block blk (it may be called twice per
// block: row-wise Adagrad needs the whole row's sum of g'^2 first).
// Outputs of one column block of a row whose sums are in g: (a), (b), (c).
// Everything is derived here from p and t, not carried across the reduction
// (which needs the registers).
template <typename TableT, typename Acc = accumulator_t<TableT>>
__device__ __forceinline__ void apply_block(const EmbeddingBagBackwardParams& p,
                                            const BackwardLaunch& plan, const Group& grp, int64_t u,
                                            int64_t key, const BackwardTableMeta& t, uint32_t blk,
                                            const Sums<Acc>& g, Acc row_state) {
  constexpr int kAccBytes = sizeof(Acc);
  const int V = plan.vec_per_lane;
  const uint32_t W = grp.lanes * V * kColsPerVec;
  const uint32_t dim = t.dim;
  const int64_t id = key - t.row_base;
  const spembed_optimizer_options_t& o = p.optimizer;
#pragma unroll
  for (int v = 0; v < kMaxVecPerLane; ++v) {
    const int64_t c0 = backward_column(blk, W, v, grp.lanes, grp.j);
    if (v >= V || c0 >= dim) continue;
    if (plan.do_dense && t.grad_table != nullptr) {
      Acc* row = static_cast<Acc*>(t.grad_table) + id * t.grad_table_stride;
      const bool vec = vec_ok(t.grad_table, t.grad_table_stride, dim, kAccBytes);
      Acc x[4];
      load4<Acc, false>(row, c0, dim, vec, x);
#pragma unroll
      for (int e = 0; e < 4; ++e) x[e] = add_rn(x[e], g(v, e));
      store4(row, c0, dim, vec, x);
    }
    if (p.unique_grads != nullptr) {
      const Acc x[4] = {g(v, 0), g(v, 1), g(v, 2), g(v, 3)};
      store4(static_cast<Acc*>(p.unique_grads) + u * p.unique_grads_stride, c0, dim,
             vec_ok(p.unique_grads, p.unique_grads_stride, dim, kAccBytes), x);
    }
    if (!p.has_optimizer) continue;
    auto* weights = static_cast<TableT*>(t.weights) + id * t.weight_stride;
    const bool w_vec = vec_ok(t.weights, t.weight_stride, dim, sizeof(TableT));
    const OptimizerKind kind = optimizer_kind(o.optimizer);
    const bool elementwise_state = kind.state1 == StateShape::kPerElement;
    const bool adam = kind.state2 == StateShape::kPerElement;
    const bool state_vec = vec_ok(t.state1, t.state1_stride, dim, kAccBytes) &&
                           (!adam || vec_ok(t.state2, t.state2_stride, dim, kAccBytes));
    Acc* s1_row = elementwise_state ? static_cast<Acc*>(t.state1) + id * t.state1_stride : nullptr;
    Acc* s2_row = adam ? static_cast<Acc*>(t.state2) + id * t.state2_stride : nullptr;
    Acc w[4];
    Acc s1[4] = {0, 0, 0, 0};
    Acc s2[4] = {0, 0, 0, 0};
    load4<TableT, false>(weights, c0, dim, w_vec, w);
    if (s1_row != nullptr) load4<Acc, false>(s1_row, c0, dim, state_vec, s1);
    if (s2_row != nullptr) load4<Acc, false>(s2_row, c0, dim, state_vec, s2);
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const Acc gp = opt_decayed_grad(g(v, e), w[e], o.weight_decay);
      switch (o.optimizer) {
        case SPEMBED_OPTIMIZER_ADAGRAD:
          w[e] = opt_adagrad(w[e], gp, s1[e], o.learning_rate, o.eps);
          break;
        case SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD:
          w[e] = opt_rowwise_adagrad(w[e], gp, row_state, o.learning_rate, o.eps);
          break;
        case SPEMBED_OPTIMIZER_ADAM:
          w[e] = opt_adam(w[e], gp, s1[e], s2[e], o.learning_rate, o.beta1, o.beta2, o.eps,
                          static_cast<Acc>(p.adam_bias_correction1),
                          static_cast<Acc>(p.adam_bias_correction2));
          break;
        case SPEMBED_OPTIMIZER_SGD:
        default:
          w[e] = opt_sgd(w[e], gp, o.learning_rate);
          break;
      }
    }
    store4_weights<TableT>(weights, c0, dim, w_vec, w, o.stochastic_rounding != 0, o.seed, key);
    if (s1_row != nullptr) store4(s1_row, c0, dim, state_vec, s1);
    if (s2_row != nullptr) store4(s2_row, c0, dim, state_vec, s2);
  }
}

// The optimizer step and outputs of one row, the run u of `len` ids.
// reduce_block(blk, g) puts the row's sum for column block blk into g (it is
// called twice per block of a row of several blocks under row-wise Adagrad,
// which needs the whole row's sum of g'^2 first); with scale_grad_by_freq the
// sum is then divided by len, as the CPU implementation does.
template <typename TableT, typename ReduceBlock, typename Acc = accumulator_t<TableT>>
__device__ __forceinline__ void row_epilogue(const EmbeddingBagBackwardParams& p,
                                             const BackwardLaunch& plan, const Group& grp,
                                             int64_t u, int64_t key, int64_t len,
                                             const BackwardTableMeta& t,
                                             ReduceBlock&& reduce_block) {
  const auto sum_block = [&](uint32_t blk, const Sums<Acc>& g) {
    reduce_block(blk, g);
    if (!p.scale_grad_by_freq) return;
    const auto frequency = static_cast<Acc>(len);
#pragma unroll
    for (int v = 0; v < kMaxVecPerLane; ++v) {
      if (v >= plan.vec_per_lane) continue;
#pragma unroll
      for (int e = 0; e < kColsPerVec; ++e) g(v, e) = div_rn(g(v, e), frequency);
    }
  };
  const uint32_t W = grp.lanes * plan.vec_per_lane * kColsPerVec;
  const uint32_t num_blocks = backward_column_blocks(t.dim, W);
  const bool rowwise =
      p.has_optimizer && optimizer_kind(p.optimizer.optimizer).state1 == StateShape::kPerRow;
  const Sums<Acc> g = thread_sums<Acc>();
  Acc row_state = 0;
  if (rowwise) {
    Acc squares = 0;
    for (uint32_t blk = 0; blk < num_blocks; ++blk) {
      sum_block(blk, g);
      const uint32_t dim = t.dim;
      const auto* weights =
          static_cast<const TableT*>(t.weights) + (key - t.row_base) * t.weight_stride;
      const bool w_vec = vec_ok(t.weights, t.weight_stride, dim, sizeof(TableT));
#pragma unroll
      for (int v = 0; v < kMaxVecPerLane; ++v) {
        const int64_t c0 = backward_column(blk, W, v, grp.lanes, grp.j);
        if (v >= plan.vec_per_lane || c0 >= dim) continue;
        Acc w[4];
        load4<TableT, false>(weights, c0, dim, w_vec, w);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          if (c0 + e < dim) {
            squares = opt_rowwise_square_accumulate(
                squares, opt_decayed_grad(g(v, e), w[e], p.optimizer.weight_decay));
          }
        }
      }
    }
    squares = group_sum(grp, squares);
    // Lane 0 of the group reads the row's state and, at the end, writes it:
    // the other lanes get it by shuffle, so no lane reads the state while
    // lane 0 may already be storing the new one.
    Acc old_state = 0;
    if (grp.j == 0)
      old_state = static_cast<const Acc*>(t.state1)[(key - t.row_base) * t.state1_stride];
    old_state = __shfl_sync(grp.mask, old_state, 0, grp.lanes);
    row_state = opt_rowwise_state(old_state, squares, t.dim);
  }
  for (uint32_t blk = 0; blk < num_blocks; ++blk) {
    if (!rowwise || num_blocks > 1) sum_block(blk, g);
    apply_block<TableT>(p, plan, grp, u, key, t, blk, g, row_state);
  }

  if (p.unique_grads != nullptr) {
    Acc* unique_row = static_cast<Acc*>(p.unique_grads) + u * p.unique_grads_stride;
    const auto max_dim = static_cast<uint32_t>(p.max_dim);
    for (uint32_t c = static_cast<uint32_t>(t.dim) + grp.j; c < max_dim; c += grp.lanes) {
      unique_row[c] = 0;
    }
    if (grp.j == 0) {
      if (p.num_tables > 1 || p.index_type == IndexType::kI64) {
        static_cast<int64_t*>(p.unique_ids)[u] = key;
      } else {
        static_cast<int32_t*>(p.unique_ids)[u] = static_cast<int32_t>(key);
      }
    }
  }
  if (rowwise && grp.j == 0) {
    static_cast<Acc*>(t.state1)[(key - t.row_base) * t.state1_stride] = row_state;
  }
}

// Sum of the contributions of sorted entries [e0, e1) (one run, or one chunk
// of it) to column block blk, in the documented order: chunks of CHUNK
// entries from e0, each summed sequentially from +0, chunk sums added in order.
template <typename GradT, bool kMax, typename Acc = accumulator_t<GradT>>
__device__ __forceinline__ void sum_entries(const EmbeddingBagBackwardParams& p,
                                            const BackwardWorkspace& ws, const BackwardLaunch& plan,
                                            const Group& grp, ContribKind kind, int64_t e0,
                                            int64_t e1, int64_t id, const BackwardTableMeta& t,
                                            uint32_t blk, const Sums<Acc>& total) {
  const int V = plan.vec_per_lane;
  const uint32_t W = grp.lanes * V * kColsPerVec;
  const uint32_t dim = t.dim;
  const bool none = p.pooling == SPEMBED_POOLING_NONE;
  const int64_t col = none ? 0 : t.grad_col;
  const bool go_vec = plan.go_vec && col % 4 == 0 && dim % 4 == 0;
  const auto* go = static_cast<const GradT*>(p.grad_output);
  const void* positions = ws.vals[ws.sorted];
  // The planner gives fp64 tables at most kMaxVecPerLaneF64 vectors per lane.
  constexpr int kVecs = sizeof(Acc) == 8 ? kMaxVecPerLaneF64 : kMaxVecPerLane;

  for (int64_t cs = e0; cs < e1; cs += SPEMBED_BACKWARD_CHUNK) {
    const int64_t ce = min(e1, cs + SPEMBED_BACKWARD_CHUNK);
    Acc acc[kVecs][kColsPerVec];
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
#pragma unroll
      for (int e = 0; e < kColsPerVec; ++e) acc[v][e] = 0;
    }
    for (int64_t b = cs; b < ce; b += grp.lanes) {
      // Lane j fetches entry b + j: its position, bag and scale.
      int64_t my_bag = 0;
      Acc my_scale = 1;
      if (b + grp.j < ce) {
        const int64_t pos = ld_pos(positions, b + grp.j, ws.wide);
        my_bag = none ? pos : p.fixed_bag_size > 0 ? pos / p.fixed_bag_size : ld_bag(ws, pos);
        if (kind == ContribKind::kWeighted)
          my_scale = load_ro(static_cast<const Acc*>(p.weights) + pos);
        if (kind == ContribKind::kMean)
          my_scale = static_cast<Acc>(ld_pos(ws.count_of, pos, ws.wide));
      }
      const int n = static_cast<int>(min(static_cast<int64_t>(grp.lanes), ce - b));
      for (int k = 0; k < n; ++k) {
        const int64_t bag = shfl64(grp.mask, my_bag, k, grp.lanes);
        const Acc scale = __shfl_sync(grp.mask, my_scale, k, grp.lanes);
        const BagRow br = bag_row(p, bag);
        const GradT* go_row = go + br.out_row * p.grad_row_stride + col;
#pragma unroll
        for (int v = 0; v < kVecs; ++v) {
          const int64_t c0 = backward_column(blk, W, v, grp.lanes, grp.j);
          if (v >= V || c0 >= dim) continue;
          Acc x[4];
          load4<GradT, true>(go_row, c0, dim, go_vec, x);
          if constexpr (kMax) {
            const int64_t arow = br.out_row * p.argmax_row_stride + col + c0;
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const bool carries = c0 + e < dim && ld_index(p.argmax, arow + e, p.index_type) == id;
              acc[v][e] = add_rn(acc[v][e], carries ? x[e] : Acc(0));
            }
          } else {
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              const Acc c = kind == ContribKind::kWeighted ? mul_rn(scale, x[e])
                            : kind == ContribKind::kMean   ? div_rn(x[e], scale)
                                                           : x[e];
              acc[v][e] = add_rn(acc[v][e], c);
            }
          }
        }
      }
    }
#pragma unroll
    for (int v = 0; v < kVecs; ++v) {
#pragma unroll
      for (int e = 0; e < kColsPerVec; ++e) {
        total(v, e) = cs == e0 ? acc[v][e] : add_rn(total(v, e), acc[v][e]);
      }
    }
  }
}

// One run of equal keys in the sorted ids: where it starts, its length, its
// key (linearized row) and its table, found from its first entry's bag.
struct Run {
  int64_t start, len, key;
  const BackwardTableMeta* table;
};

__device__ __forceinline__ Run load_run(const EmbeddingBagBackwardParams& p,
                                        const BackwardWorkspace& ws, int64_t u) {
  Run r;
  r.start = ld_pos(ws.run_start, u, ws.wide);
  r.len = ld_pos(ws.run_start, u + 1, ws.wide) - r.start;
  r.key = ld_pos(ws.unique_keys, u, ws.wide);
  const int64_t pos0 = ld_pos(ws.vals[ws.sorted], r.start, ws.wide);
  const int64_t bag0 = p.pooling == SPEMBED_POOLING_NONE ? pos0
                       : p.fixed_bag_size > 0            ? pos0 / p.fixed_bag_size
                                                         : ld_bag(ws, pos0);
  r.table = &table_of(p, bag_row(p, bag0).table);
  return r;
}

template <typename TableT, typename GradT, bool kMax>
__global__ void __launch_bounds__(kBackwardBlockThreads, kBackwardMinBlocksPerSm)
    reduce_kernel(const __grid_constant__ EmbeddingBagBackwardParams p,
                  const __grid_constant__ BackwardWorkspace ws,
                  const __grid_constant__ BackwardLaunch plan) {
  using Acc = accumulator_t<TableT>;
  if (plan.read_record && record_says_stop(p)) return;
  const Group grp = make_group(plan.lanes);
  const ContribKind kind = contrib_kind(p);
  const int V = plan.vec_per_lane;
  const uint32_t W = grp.lanes * V * kColsPerVec;
  const auto num_items = static_cast<int64_t>(ws.counters->num_items);

  for (int64_t item = grp.first; item < num_items; item += grp.stride) {
    const int64_t u = ld_pos(ws.item_run, item, ws.wide);
    const Run r = load_run(p, ws, u);
    const int64_t start = r.start, len = r.len, key = r.key;
    const BackwardTableMeta& t = *r.table;
    const int64_t id = key - t.row_base;
    const bool hot = len > SPEMBED_BACKWARD_CHUNK;

    if (hot) {
      // One chunk of a hot run -> its partial row.
      const int64_t c = item - ld_pos(ws.run_item, u, ws.wide);
      const int64_t e0 = start + c * SPEMBED_BACKWARD_CHUNK;
      const int64_t e1 = min(start + len, e0 + SPEMBED_BACKWARD_CHUNK);
      Acc* partial =
          static_cast<Acc*>(ws.partials) + (ld_pos(ws.run_partial, u, ws.wide) + c) * p.max_dim;
      const bool part_vec = p.max_dim % 4 == 0;
      const uint32_t num_blocks = backward_column_blocks(t.dim, W);
      for (uint32_t blk = 0; blk < num_blocks; ++blk) {
        const Sums<Acc> g = thread_sums<Acc>();
        sum_entries<GradT, kMax>(p, ws, plan, grp, kind, e0, e1, id, t, blk, g);
#pragma unroll
        for (int v = 0; v < kMaxVecPerLane; ++v) {
          const int64_t c0 = backward_column(blk, W, v, grp.lanes, grp.j);
          if (v >= V || c0 >= t.dim) continue;
          const Acc x[4] = {g(v, 0), g(v, 1), g(v, 2), g(v, 3)};
          store4(partial, c0, t.dim, part_vec && t.dim % 4 == 0, x);
        }
      }
      continue;
    }
    row_epilogue<TableT>(p, plan, grp, u, key, len, t, [&](uint32_t blk, const Sums<Acc>& g) {
      sum_entries<GradT, kMax>(p, ws, plan, grp, kind, start, start + len, id, t, blk, g);
    });
  }
}

template <typename TableT>
__global__ void __launch_bounds__(kBackwardBlockThreads, kBackwardMinBlocksPerSm)
    combine_kernel(const __grid_constant__ EmbeddingBagBackwardParams p,
                   const __grid_constant__ BackwardWorkspace ws,
                   const __grid_constant__ BackwardLaunch plan) {
  using Acc = accumulator_t<TableT>;
  if (plan.read_record && record_says_stop(p)) return;
  const Group grp = make_group(plan.lanes);
  const int V = plan.vec_per_lane;
  const uint32_t W = grp.lanes * V * kColsPerVec;
  const auto num_hot = static_cast<int64_t>(ws.counters->num_hot);

  for (int64_t h = grp.first; h < num_hot; h += grp.stride) {
    const int64_t u = ld_pos(ws.hot_runs, h, ws.wide);
    const Run r = load_run(p, ws, u);
    const int64_t len = r.len, key = r.key;
    const BackwardTableMeta& t = *r.table;
    const int64_t first_partial = ld_pos(ws.run_partial, u, ws.wide);
    const int64_t chunks = (len + SPEMBED_BACKWARD_CHUNK - 1) / SPEMBED_BACKWARD_CHUNK;
    const bool part_vec = p.max_dim % 4 == 0 && t.dim % 4 == 0;
    row_epilogue<TableT>(p, plan, grp, u, key, len, t, [&](uint32_t blk, const Sums<Acc>& g) {
      for (int64_t c = 0; c < chunks; ++c) {
        const Acc* partial = static_cast<const Acc*>(ws.partials) + (first_partial + c) * p.max_dim;
#pragma unroll
        for (int v = 0; v < kMaxVecPerLane; ++v) {
          const int64_t c0 = backward_column(blk, W, v, grp.lanes, grp.j);
          if (v >= V || c0 >= t.dim) continue;
          Acc x[4];
          load4<Acc, false>(partial, c0, t.dim, part_vec, x);
#pragma unroll
          for (int e = 0; e < 4; ++e) g(v, e) = c == 0 ? x[e] : add_rn(g(v, e), x[e]);
        }
      }
    });
  }
}

// Float atomics of 4 contributions to grad_table columns c0..c0+3 (fp64:
// one 8-byte atomic per element).
template <typename Acc>
__device__ __forceinline__ void atomic_add4(Acc* row, int64_t c0, int64_t dim, bool vec,
                                            const Acc (&x)[4]) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (sizeof(Acc) == 4) {
    if (vec) {
      atomicAdd(reinterpret_cast<float4*>(row + c0), make_float4(x[0], x[1], x[2], x[3]));
      return;
    }
  }
#endif
#pragma unroll
  for (int e = 0; e < 4; ++e) {
    if (c0 + e < dim) atomicAdd(row + c0 + e, x[e]);
  }
}

template <typename TableT, typename GradT>
__global__ void __launch_bounds__(kBackwardBlockThreads, kBackwardMinBlocksPerSm)
    bag_kernel(const __grid_constant__ EmbeddingBagBackwardParams p,
               const __grid_constant__ BackwardLaunch plan) {
  using Acc = accumulator_t<TableT>;
  constexpr int kAccBytes = sizeof(Acc);
  if (plan.read_record && record_says_stop(p)) return;
  const Group grp = make_group(plan.lanes);
  const ContribKind kind = contrib_kind(p);
  const int V = plan.vec_per_lane;
  const uint32_t W = grp.lanes * V * kColsPerVec;
  const bool none = p.pooling == SPEMBED_POOLING_NONE;
  const int64_t num_bags = none ? p.nnz : p.num_tables * p.bags_per_table;
  const auto* go = static_cast<const GradT*>(p.grad_output);

  for (int64_t bag = grp.first; bag < num_bags; bag += grp.stride) {
    const BagRow br = bag_row(p, bag);
    const BackwardTableMeta& t = table_of(p, br.table);
    const uint32_t dim = t.dim;
    const uint32_t num_blocks = backward_column_blocks(dim, W);
    const int64_t col = none ? 0 : t.grad_col;
    const bool go_vec = plan.go_vec && col % 4 == 0 && dim % 4 == 0;
    const GradT* go_row = go + br.out_row * p.grad_row_stride + col;
    const bool dense = plan.do_dense && t.grad_table != nullptr;
    const bool gt_vec = vec_ok(t.grad_table, t.grad_table_stride, dim, kAccBytes);
    Acc* const grad_table = static_cast<Acc*>(t.grad_table);
    int64_t begin;
    int64_t end;
    if (none) {
      begin = bag;
      end = bag + 1;
    } else {
      if (p.fixed_bag_size > 0) {
        begin = bag * p.fixed_bag_size;
        end = begin + p.fixed_bag_size;
      } else {
        begin = ld_index(p.offsets, bag, p.index_type);
        end = ld_index(p.offsets, bag + 1, p.index_type);
      }
      begin = min(max(begin, int64_t{0}), p.nnz);
      end = min(max(end, begin), p.nnz);
    }
    auto contributes = [&](int64_t id) {
      return !(p.padding_idx >= 0 && id == p.padding_idx) && id >= 0 && id < t.rows;
    };

    // MAX routes each column straight to its argmax row (the forward wrote
    // only ids of the bag there; -1 for empty bags).
    if (kind == ContribKind::kMax) {
      if (plan.count_bad && grp.j == 0) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t id = ld_index(p.indices, i, p.index_type);
          if (!contributes(id) && !(p.padding_idx >= 0 && id == p.padding_idx)) {
            auto* record = static_cast<DataCheckRecord*>(p.workspace);
            atomicAdd(&record->bad_index_count, 1ull);
            atomicMin(&record->first_bad_index_position, static_cast<unsigned long long>(i));
          }
        }
      }
      if (!dense) continue;
      for (uint32_t blk = 0; blk < num_blocks; ++blk) {
#pragma unroll
        for (int v = 0; v < kMaxVecPerLane; ++v) {
          // 32-bit columns in this kernel (exact, embedding_bag_backward_columns.h):
          // fewer registers here than 64-bit ones.
          const auto c0 = static_cast<uint32_t>(backward_column(blk, W, v, grp.lanes, grp.j));
          if (v >= V || c0 >= dim) continue;
          Acc x[4];
          load4<GradT, true>(go_row, c0, dim, go_vec, x);
          const int64_t arow = br.out_row * p.argmax_row_stride + col + c0;
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            if (static_cast<uint32_t>(e) >= dim - c0) continue;
            const int64_t a = ld_index(p.argmax, arow + e, p.index_type);
            if (a >= 0 && a < t.rows)
              atomicAdd(grad_table + a * t.grad_table_stride + c0 + e, x[e]);
          }
        }
      }
      continue;
    }

    Acc count = 1;
    if (kind == ContribKind::kMean) {
      // 64-bit: one bag may hold more than 2^31 ids.
      int64_t n = 0;
      for (int64_t i = begin + grp.j; i < end; i += grp.lanes) {
        n += contributes(ld_index(p.indices, i, p.index_type)) ? 1 : 0;
      }
      for (int o = grp.lanes / 2; o > 0; o /= 2) {
        n += static_cast<int64_t>(
            __shfl_xor_sync(grp.mask, static_cast<long long>(n), o, grp.lanes));
      }
      count = static_cast<Acc>(n);
    }
    for (int64_t i = begin; i < end; ++i) {
      const int64_t id = ld_index(p.indices, i, p.index_type);
      const bool valid = contributes(id);
      if (plan.count_bad && grp.j == 0 && !valid && !(p.padding_idx >= 0 && id == p.padding_idx)) {
        auto* record = static_cast<DataCheckRecord*>(p.workspace);
        atomicAdd(&record->bad_index_count, 1ull);
        atomicMin(&record->first_bad_index_position, static_cast<unsigned long long>(i));
      }
      if (plan.do_weight_grad) {
        Acc dot = 0;
        if (valid) {
          const auto* w_row = static_cast<const TableT*>(t.weights) + id * t.weight_stride;
          const bool w_vec = vec_ok(t.weights, t.weight_stride, dim, sizeof(TableT));
          for (uint32_t blk = 0; blk < num_blocks; ++blk) {
#pragma unroll
            for (int v = 0; v < kMaxVecPerLane; ++v) {
              const auto c0 = static_cast<uint32_t>(backward_column(blk, W, v, grp.lanes, grp.j));
              if (v >= V || c0 >= dim) continue;
              Acc x[4];
              Acc w[4];
              load4<GradT, true>(go_row, c0, dim, go_vec, x);
              load4<TableT, true>(w_row, c0, dim, w_vec, w);
#pragma unroll
              for (int e = 0; e < 4; ++e) dot = add_rn(dot, mul_rn(x[e], w[e]));
            }
          }
        }
        dot = group_sum(grp, dot);
        if (grp.j == 0) static_cast<Acc*>(p.grad_weights)[i] = dot;
      }
      if (dense && valid) {
        const Acc scale = kind == ContribKind::kWeighted
                              ? load_ro(static_cast<const Acc*>(p.weights) + i)
                              : count;
        Acc* row = grad_table + id * t.grad_table_stride;
        for (uint32_t blk = 0; blk < num_blocks; ++blk) {
#pragma unroll
          for (int v = 0; v < kMaxVecPerLane; ++v) {
            const auto c0 = static_cast<uint32_t>(backward_column(blk, W, v, grp.lanes, grp.j));
            if (v >= V || c0 >= dim) continue;
            Acc x[4];
            load4<GradT, true>(go_row, c0, dim, go_vec, x);
#pragma unroll
            for (int e = 0; e < 4; ++e) {
              x[e] = kind == ContribKind::kWeighted ? mul_rn(scale, x[e])
                     : kind == ContribKind::kMean   ? div_rn(x[e], scale)
                                                    : x[e];
            }
            atomic_add4(row, c0, dim, gt_vec, x);
          }
        }
      }
    }
  }
}

// One wave of resident blocks (grid-stride loops cover the rest), at most
// enough for `items` work items.
template <typename Kernel>
int resident_grid(Kernel kernel, int64_t items, int lanes, uint32_t* grid) {
  int device = 0;
  int sms = 0;
  int per_sm = 0;
  cudaError_t e = cudaGetDevice(&device);
  if (e == cudaSuccess) e = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (e == cudaSuccess) {
    e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kBackwardBlockThreads, 0);
  }
  if (e != cudaSuccess) return static_cast<int>(e);
  const int64_t groups_per_block = kBackwardBlockThreads / lanes;
  const int64_t needed = std::max<int64_t>((items + groups_per_block - 1) / groups_per_block, 1);
  *grid = static_cast<uint32_t>(std::min<int64_t>(needed, int64_t{sms} * std::max(per_sm, 1)));
  return 0;
}

// grad_output's element type: a float64 table's is double (host/ checks it),
// the others' float, __half or __nv_bfloat16.
#define SPEMBED_GRAD_DTYPE_SWITCH(TABLE_T, DTYPE, TYPE, ...) \
  [&] {                                                      \
    if constexpr (std::is_same_v<TABLE_T, double>) {         \
      using TYPE = double;                                   \
      return __VA_ARGS__();                                  \
    } else {                                                 \
      return SPEMBED_DTYPE_SWITCH(DTYPE, TYPE, __VA_ARGS__); \
    }                                                        \
  }()

}  // namespace backward

template <typename TableT>
int launch_backward_bag_kernel(const EmbeddingBagBackwardParams& p, const BackwardLaunch& plan,
                               cudaStream_t stream) {
  const int64_t num_bags = p.pooling == SPEMBED_POOLING_NONE ? p.nnz : p.num_bags();
  return SPEMBED_GRAD_DTYPE_SWITCH(TableT, p.grad_dtype, GradT, [&] {
    auto kernel = backward::bag_kernel<TableT, GradT>;
    uint32_t grid = 0;
    if (const int e = backward::resident_grid(kernel, num_bags, plan.lanes, &grid)) return e;
    launch_kernel(kernel, grid, kBackwardBlockThreads, 0, stream, p, plan);
    return launch_status(stream);
  });
}

template <typename TableT>
int launch_backward_reduce(const EmbeddingBagBackwardParams& p, const BackwardWorkspace& ws,
                           const BackwardLaunch& plan, cudaStream_t stream) {
  // Work items: at most one per entry; hot runs: at most max_partial_rows.
  const int error = SPEMBED_GRAD_DTYPE_SWITCH(TableT, p.grad_dtype, GradT, [&] {
    return SPEMBED_BOOL_SWITCH(p.pooling == SPEMBED_POOLING_MAX, kMax, [&] {
      auto kernel = backward::reduce_kernel<TableT, GradT, kMax>;
      uint32_t grid = 0;
      if (const int e = backward::resident_grid(kernel, p.nnz, plan.lanes, &grid)) return e;
      launch_kernel(kernel, grid, kBackwardBlockThreads, 0, stream, p, ws, plan);
      return launch_status(stream);
    });
  });
  if (error != 0) return error;
  auto kernel = backward::combine_kernel<TableT>;
  uint32_t grid = 0;
  if (const int e = backward::resident_grid(kernel, max_partial_rows(p.nnz), plan.lanes, &grid)) {
    return e;
  }
  launch_kernel(kernel, grid, kBackwardBlockThreads, 0, stream, p, ws, plan);
  return launch_status(stream);
}

}  // namespace spembed::detail
