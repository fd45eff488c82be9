// CUDA implementation of the sharded collection's data steps (route.h). Each
// step is the CPU one (route_cpu.cpp) over device memory, with the same
// layouts, so that the host layer drives both alike:
//   count:    one thread per source bag checks its offsets and ids, counts
//             its ids per destination rank into its own entries of the
//             lengths, and adds them to the per-table counts (atomics);
//   scatter:  an exclusive scan of the lengths gives every (rank, shard, bag)
//             its place in the send buffer; one thread per bag writes its
//             ids there, in order (so each rank's bags keep their id order);
//   assemble: the received lengths, scanned in source order, locate each
//             received bag; reordered shard-major ((shard, source, bag)) and
//             scanned again they are the local lookups' offsets; one warp per
//             bag copies its ids;
//   combine / split_grad: one thread per output element.
// Scans are CUB's device-wide ones (the arrays are bags x shards: up to
// millions of entries on large batches), their storage in the workspace.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/device/device_scan.cuh>
#include <type_traits>

#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/static_switch.cuh"
#include "kernels/distributed/route.h"

namespace spembed::detail {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxGrid = 65535;

unsigned grid_for(int64_t items, int per_block = kThreads) {
  const int64_t blocks = (items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::clamp<int64_t>(blocks, 1, kMaxGrid));
}

template <typename IdxT>
__device__ __forceinline__ int64_t at(const void* p, int64_t i) {
  return static_cast<int64_t>(static_cast<const IdxT*>(p)[i]);
}

__device__ __forceinline__ int dest_of(const RouteTable& t, int64_t id) {
  return t.block == 0 ? t.owner : static_cast<int>(id / t.block);
}

// Where (rank d, local shard j, bag b) of a source with `batch` bags per
// table sits in the lengths: rank-major, then shard-major.
__device__ __forceinline__ int64_t length_slot(const RouteSource& s, int d, int64_t j, int64_t b) {
  return s.batch * s.shard_prefix[d] + j * s.batch + b;
}

__device__ __forceinline__ bool pooled_id(const RouteSource& s, const RouteTable& t, int64_t id) {
  return !(s.padding_idx >= 0 && id == s.padding_idx) && id >= 0 && id < t.rows;
}

__device__ __forceinline__ void record_min(int64_t* field, int64_t value) {
  atomicMin(reinterpret_cast<unsigned long long*>(field), static_cast<unsigned long long>(value));
}

__global__ void __launch_bounds__(kThreads)
    init_kernel(int64_t* counts, int64_t num_counts, RouteCheck* check) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < num_counts;
       i += stride) {
    counts[i] = 0;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    // Positions are atomicMin targets: "none" is the largest unsigned value,
    // which reads back as -1, RouteCheck's "none".
    check->bad_offset_position = static_cast<int64_t>(kNoPosition);
    check->bad_index_position = static_cast<int64_t>(kNoPosition);
    check->bad_index_count = 0;
    check->bad_index_value = 0;
    check->bad_index_table = 0;
  }
}

// One thread per bag, plus one for the closing offset. With bad offsets the
// ranges are clamped into [0, nnz] (nothing is read out of bounds) and the
// host ignores everything but the bad offset position.
template <typename IdxT>
__global__ void __launch_bounds__(kThreads)
    count_kernel(const RouteSource s, int64_t* lengths, int64_t* counts, int64_t* bag_counts,
                 RouteCheck* check) {
  const int64_t bags = s.num_tables * s.batch;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i <= bags;
       i += stride) {
    const int64_t off = at<IdxT>(s.offsets, i);
    if (i == 0 && off != 0) record_min(&check->bad_offset_position, 0);
    if (i == bags) {
      if (off != s.nnz) record_min(&check->bad_offset_position, bags);
      continue;
    }
    const int64_t next = at<IdxT>(s.offsets, i + 1);
    if (next < off) record_min(&check->bad_offset_position, i);
    const int64_t t = i / s.batch;
    const int64_t b = i - t * s.batch;
    const RouteTable table = s.tables[t];
    const int64_t* local = s.local_index + t;  // local[d * T]: t's shard on rank d
    // This thread is the only writer of its bag's entries: zero them first.
    for (int d = 0; d < s.world; ++d) {
      const int64_t j = local[d * s.num_tables];
      if (j >= 0) lengths[length_slot(s, d, j, b)] = 0;
    }
    const int64_t begin = min(max(off, int64_t{0}), s.nnz);
    const int64_t end = min(max(next, begin), s.nnz);
    int64_t pooled = 0;
    for (int64_t k = begin; k < end; ++k) {
      const int64_t id = at<IdxT>(s.indices, k);
      if (s.padding_idx >= 0 && id == s.padding_idx) continue;
      if (id < 0 || id >= table.rows) {
        atomicAdd(reinterpret_cast<unsigned long long*>(&check->bad_index_count), 1ull);
        record_min(&check->bad_index_position, k);
        continue;
      }
      const int d = dest_of(table, id);
      ++lengths[length_slot(s, d, local[d * s.num_tables], b)];
      ++pooled;
    }
    bag_counts[i] = pooled;
    for (int d = 0; d < s.world; ++d) {
      const int64_t j = local[d * s.num_tables];
      if (j < 0) continue;
      const int64_t n = lengths[length_slot(s, d, j, b)];
      if (n != 0) {
        atomicAdd(reinterpret_cast<unsigned long long*>(&counts[t * s.world + d]),
                  static_cast<unsigned long long>(n));
      }
    }
  }
}

// The first bad id's value and table (one thread; offsets are sound when the
// host reads them).
template <typename IdxT>
__global__ void finish_check_kernel(const RouteSource s, RouteCheck* check) {
  const int64_t pos = check->bad_index_position;
  if (pos < 0 || pos >= s.nnz) return;
  check->bad_index_value = at<IdxT>(s.indices, pos);
  // The last bag starting at or before pos holds it (empty bags before it
  // share its start).
  int64_t lo = 0;
  int64_t hi = s.num_tables * s.batch;  // offsets[hi] == nnz > pos
  while (hi - lo > 1) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (at<IdxT>(s.offsets, mid) <= pos) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  check->bad_index_table = s.batch > 0 ? lo / s.batch : 0;
}

// out = inclusive or exclusive prefix sums of in[0, n) (temp == nullptr:
// the size query, which launches nothing).
// 32-bit counts (route.h bounds the arrays by kRouteMaxScanItems): CUB's
// 64-bit-offset scan kernel spills on sm_80.
template <bool kInclusive>
int scan(void* temp, size_t& temp_bytes, const int64_t* in, int64_t* out, int64_t n,
         cudaStream_t stream) {
  if (n > kRouteMaxScanItems) return static_cast<int>(cudaErrorInvalidValue);
  if (temp != nullptr && n == 0) return 0;
  const auto items = static_cast<int>(n);
  if constexpr (kInclusive) {
    return static_cast<int>(
        cub::DeviceScan::InclusiveSum(temp, temp_bytes, in, out, items, stream));
  } else {
    return static_cast<int>(
        cub::DeviceScan::ExclusiveSum(temp, temp_bytes, in, out, items, stream));
  }
}

// The scan storage a RouteScanTemp holds, checked against what CUB asks for n.
template <bool kInclusive>
int scan(const RouteScanTemp& t, const int64_t* in, int64_t* out, int64_t n, cudaStream_t stream) {
  size_t bytes = 0;
  if (const int e = scan<kInclusive>(nullptr, bytes, in, out, n, stream)) return e;
  if (bytes > t.bytes) return static_cast<int>(cudaErrorInvalidValue);
  bytes = t.bytes;
  return scan<kInclusive>(t.data, bytes, in, out, n, stream);
}

template <typename IdxT>
__global__ void __launch_bounds__(kThreads)
    scatter_kernel(const RouteSource s, int64_t* cursor, int64_t* ids, float* weights) {
  const int64_t bags = s.num_tables * s.batch;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; i < bags;
       i += stride) {
    const int64_t t = i / s.batch;
    const int64_t b = i - t * s.batch;
    const RouteTable table = s.tables[t];
    const int64_t end = at<IdxT>(s.offsets, i + 1);
    for (int64_t k = at<IdxT>(s.offsets, i); k < end; ++k) {
      const int64_t id = at<IdxT>(s.indices, k);
      if (!pooled_id(s, table, id)) continue;
      const int d = dest_of(table, id);
      // cursor entries of this bag belong to this thread alone.
      const int64_t to = cursor[length_slot(s, d, s.local_index[d * s.num_tables + t], b)]++;
      ids[to] = table.block == 0 ? id : id - static_cast<int64_t>(d) * table.block;
      if (weights != nullptr) weights[to] = s.weights[k];
    }
  }
}

// The received bag of assembled bag g (shard-major over the global batch).
struct ReceivedBag {
  int64_t slot;  // in the received lengths (source-major)
  int64_t shard;
};

__device__ __forceinline__ ReceivedBag received_bag(const RouteAssemble& a, int64_t g) {
  const int64_t j = g / a.total_batch;
  const int64_t gb = g - j * a.total_batch;
  // The source whose bags hold gb: the last with first_bag <= gb.
  int lo = 0;
  int hi = a.world;  // first_bag[world] == total_batch > gb
  while (hi - lo > 1) {
    const int mid = (lo + hi) / 2;
    if (a.first_bag[mid] <= gb) {
      lo = mid;
    } else {
      hi = mid;
    }
  }
  const int64_t first = a.first_bag[lo];
  const int64_t batch = a.first_bag[lo + 1] - first;
  return {a.num_shards * first + j * batch + (gb - first), j};
}

__global__ void __launch_bounds__(kThreads)
    reorder_kernel(const RouteAssemble a, const int64_t* recv_start, int64_t* bag_length,
                   int64_t* bag_source) {
  const int64_t n = a.num_shards * a.total_batch;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  const int64_t first = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (first == 0) {
    a.offsets_a[0] = 0;
    a.offsets_b[0] = 0;
  }
  for (int64_t g = first; g < n; g += stride) {
    const ReceivedBag r = received_bag(a, g);
    bag_length[g] = a.recv_lengths[r.slot];
    bag_source[g] = recv_start[r.slot];
  }
}

__global__ void __launch_bounds__(kThreads)
    copy_bags_kernel(const RouteAssemble a, const int64_t* bag_length, const int64_t* bag_source) {
  const int64_t n = a.num_shards * a.total_batch;
  const int64_t split = a.num_a * a.total_batch;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kThreads / 32);
  for (int64_t g = (static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x) / 32; g < n;
       g += warps) {
    const int64_t to = g < split ? a.offsets_a[g] : a.nnz_a + a.offsets_b[g - split];
    const int64_t from = bag_source[g];
    const int64_t len = bag_length[g];
    for (int64_t k = lane; k < len; k += 32) {
      a.ids[to + k] = a.recv_ids[from + k];
      if (a.weights != nullptr) a.weights[to + k] = a.recv_weights[from + k];
    }
  }
}

template <typename T>
__device__ __forceinline__ float to_float(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  if constexpr (std::is_same_v<T, float>) return v;
}

template <typename T>
__device__ __forceinline__ T from_float(float v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  if constexpr (std::is_same_v<T, float>) return v;
}

// Rows exchanged with rank d: its TABLE_WISE columns [batch, dim_a[d]] (the
// output dtype), then float32 ROW_WISE partials [batch, dim_b[d]].
template <typename T>
__device__ __forceinline__ T* rows_a(const RouteDeviceRows& r, int d) {
  return reinterpret_cast<T*>(r.base + r.at[d]);
}
__device__ __forceinline__ float* rows_b(const RouteDeviceRows& r, const RouteCombine& c, int d) {
  return reinterpret_cast<float*>(r.base + r.at[d] + r.max_batch * c.dim_a[d] * 4);
}

// Element e of the [batch, total_dim] output (or gradient): its sample, its
// column there, its table and the column within the table.
struct OutputElement {
  int64_t b, col, t, k;
  RouteTable table;
};

__device__ __forceinline__ OutputElement output_element(const RouteCombine& c, int64_t e) {
  OutputElement x;
  x.b = e / c.total_dim;
  x.col = e - x.b * c.total_dim;
  x.t = c.column_table[x.col];
  x.table = c.tables[x.t];
  x.k = x.col - x.table.out_col;
  return x;
}

template <typename OutT>
__global__ void __launch_bounds__(kThreads)
    combine_kernel(const RouteCombine c, const RouteDeviceRows r, OutT* out, int64_t out_stride) {
  const int64_t n = c.batch * c.total_dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += stride) {
    const auto [b, col, t, k, table] = output_element(c, e);
    OutT* o = out + b * out_stride + col;
    if (table.block == 0) {
      const int d = table.owner;
      *o = rows_a<OutT>(r, d)[b * c.dim_a[d] + c.a_col[t] + k];
      continue;
    }
    // Partials added in rank order, as route_combine does.
    float acc = 0.0f;
    bool first = true;
    for (int d = 0; d < c.world; ++d) {
      const int64_t bc = c.b_col[d * c.num_tables + t];
      if (bc < 0) continue;
      const float v = rows_b(r, c, d)[b * c.dim_b[d] + bc + k];
      acc = first ? v : acc + v;
      first = false;
    }
    const int64_t count = c.bag_counts[t * c.batch + b];
    if (count == 0) acc = 0.0f;
    if (c.mean && count > 0) acc = acc / static_cast<float>(count);
    *o = from_float<OutT>(acc);
  }
}

template <typename GradT>
__global__ void __launch_bounds__(kThreads)
    split_grad_kernel(const RouteCombine c, const RouteDeviceRows r, const GradT* grad,
                      int64_t grad_stride) {
  const int64_t n = c.batch * c.total_dim;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x; e < n; e += stride) {
    const auto [b, col, t, k, table] = output_element(c, e);
    const GradT go = grad[b * grad_stride + col];
    if (table.block == 0) {
      const int d = table.owner;
      rows_a<GradT>(r, d)[b * c.dim_a[d] + c.a_col[t] + k] = go;
      continue;
    }
    const int64_t count = c.bag_counts[t * c.batch + b];
    float g = to_float(go);
    if (c.mean) g = count > 0 ? g / static_cast<float>(count) : 0.0f;
    for (int d = 0; d < c.world; ++d) {
      const int64_t bc = c.b_col[d * c.num_tables + t];
      if (bc >= 0) rows_b(r, c, d)[b * c.dim_b[d] + bc + k] = g;
    }
  }
}

}  // namespace

int route_count_cuda(const RouteSource& src, int64_t* lengths, int64_t* counts, int64_t* bag_counts,
                     RouteCheck* check, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t num_counts = src.num_tables * src.world;
  launch_kernel(init_kernel, grid_for(num_counts), kThreads, 0, stream, counts, num_counts, check);
  if (const int e = launch_status(stream)) return e;
  const int64_t bags = src.num_tables * src.batch;
  return SPEMBED_INDEX_SWITCH(src.index_type, IdxT, [&] {
    launch_kernel(count_kernel<IdxT>, grid_for(bags + 1), kThreads, 0, stream, src, lengths, counts,
                  bag_counts, check);
    if (const int e = launch_status(stream)) return e;
    launch_kernel(finish_check_kernel<IdxT>, 1, 1, 0, stream, src, check);
    return launch_status(stream);
  });
}

int route_scan_temp_bytes(int64_t max_items, size_t* bytes) {
  size_t exclusive = 0, inclusive = 0;
  if (const int e = scan<false>(nullptr, exclusive, nullptr, nullptr, max_items, nullptr)) return e;
  if (const int e = scan<true>(nullptr, inclusive, nullptr, nullptr, max_items, nullptr)) return e;
  *bytes = std::max(exclusive, inclusive);
  return 0;
}

int route_scatter_cuda(const RouteSource& src, const int64_t* lengths, int64_t* cursor,
                       int64_t num_lengths, int64_t* ids, float* weights, const RouteScanTemp& temp,
                       void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  if (const int e = scan<false>(temp, lengths, cursor, num_lengths, stream)) return e;
  const int64_t bags = src.num_tables * src.batch;
  if (bags == 0) return 0;
  return SPEMBED_INDEX_SWITCH(src.index_type, IdxT, [&] {
    launch_kernel(scatter_kernel<IdxT>, grid_for(bags), kThreads, 0, stream, src, cursor, ids,
                  weights);
    return launch_status(stream);
  });
}

int route_assemble_cuda(const RouteAssemble& a, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t n = a.num_shards * a.total_batch;
  const int64_t split = a.num_a * a.total_batch;
  if (const int e = scan<false>(a.scan_temp, a.recv_lengths, a.recv_start, n, stream)) return e;
  launch_kernel(reorder_kernel, grid_for(n), kThreads, 0, stream, a,
                static_cast<const int64_t*>(a.recv_start), a.bag_length, a.bag_source);
  if (const int e = launch_status(stream)) return e;
  if (const int e = scan<true>(a.scan_temp, a.bag_length, a.offsets_a + 1, split, stream)) return e;
  if (const int e =
          scan<true>(a.scan_temp, a.bag_length + split, a.offsets_b + 1, n - split, stream)) {
    return e;
  }
  if (n == 0) return 0;
  launch_kernel(copy_bags_kernel, grid_for(n * 32), kThreads, 0, stream, a,
                static_cast<const int64_t*>(a.bag_length),
                static_cast<const int64_t*>(a.bag_source));
  return launch_status(stream);
}

int route_combine_cuda(const RouteCombine& c, const RouteDeviceRows& rows, DType out_dtype,
                       void* output, int64_t out_stride, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t n = c.batch * c.total_dim;
  if (n == 0) return 0;
  return SPEMBED_DTYPE_SWITCH(out_dtype, OutT, [&] {
    launch_kernel(combine_kernel<OutT>, grid_for(n), kThreads, 0, stream, c, rows,
                  static_cast<OutT*>(output), out_stride);
    return launch_status(stream);
  });
}

int route_split_grad_cuda(const RouteCombine& c, const RouteDeviceRows& rows, const void* grad,
                          DType grad_dtype, int64_t grad_stride, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  const int64_t n = c.batch * c.total_dim;
  if (n == 0) return 0;
  return SPEMBED_DTYPE_SWITCH(grad_dtype, GradT, [&] {
    launch_kernel(split_grad_kernel<GradT>, grid_for(n), kThreads, 0, stream, c, rows,
                  static_cast<const GradT*>(grad), grad_stride);
    return launch_status(stream);
  });
}

}  // namespace spembed::detail
