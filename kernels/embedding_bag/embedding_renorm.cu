// CUDA max_norm renormalisation (spembed_embedding_renorm). Queues on the
// caller's stream, without synchronising or allocating:
//   1. the forward's id checks into the record at the start of the workspace
//      (bad ids counted; under ERROR they stop step 3);
//   2. a radix sort of the ids (CUB, keys only), so that equal ids are
//      neighbours and each row is handled once;
//   3. one warp per sorted id that starts a run: the row's norm in the order
//      embedding_renorm.h states (the CPU's too), then the scaled row;
//   4. the report, if asked for.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <type_traits>

#include "kernels/common/accumulate.h"
#include "kernels/common/kernel_launch.cuh"
#include "kernels/common/static_switch.cuh"
#include "kernels/embedding_bag/embedding_bag_backward_workspace.h"
#include "kernels/embedding_bag/embedding_bag_forward_launch.cuh"
#include "kernels/embedding_bag/embedding_renorm.h"

namespace spembed::detail {
namespace {

constexpr size_t kAlign = 256;
constexpr size_t align_up(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }
constexpr int64_t kMaxRenormGrid = 65535;

// Table element <-> its accumulation type (double for double tables).
template <typename T>
__device__ __forceinline__ accumulator_t<T> to_acc(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return v;
}

template <typename T>
__device__ __forceinline__ T from_acc(accumulator_t<T> v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(v);
  if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(v);
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return v;
}

template <typename IdxT, typename TableT>
__global__ void __launch_bounds__(kRenormBlockThreads)
    renorm_kernel(const __grid_constant__ RenormParams p, const IdxT* sorted) {
  const auto* record = static_cast<const DataCheckRecord*>(p.checks.workspace);
  if (p.bounds_policy == SPEMBED_BOUNDS_ERROR && record->bad_index_count != 0) return;
  const int lane = static_cast<int>(threadIdx.x) & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (kRenormBlockThreads / 32);
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * kRenormBlockThreads + threadIdx.x) / 32;
  const int64_t dim = p.table.dim;
  using Acc = accumulator_t<TableT>;
  const auto norm_type = static_cast<Acc>(p.norm_type);
  const auto max_norm = static_cast<Acc>(p.max_norm);
  for (int64_t i = first; i < p.nnz; i += warps) {
    // Warp-uniform: every lane reads the same ids.
    const auto id = static_cast<int64_t>(sorted[i]);
    if (id < 0 || id >= p.table.rows) continue;
    if (i > 0 && static_cast<int64_t>(sorted[i - 1]) == id) continue;
    TableT* row = static_cast<TableT*>(const_cast<void*>(p.table.data)) + id * p.table.row_stride;
    Acc sum = 0;
    for (int64_t c = lane; c < dim; c += 32) {
      sum = opt_add(sum, renorm_term(to_acc(row[c]), norm_type));
    }
    for (int d = 16; d >= 1; d /= 2) sum = opt_add(sum, __shfl_xor_sync(0xffffffffu, sum, d));
    const Acc scale = renorm_scale(renorm_norm(sum, norm_type), max_norm);
    if (scale == Acc(1)) continue;
    for (int64_t c = lane; c < dim; c += 32) {
      row[c] = from_acc<TableT>(opt_mul(to_acc(row[c]), scale));
    }
  }
}

// The sort's storage for nnz ids of IdxT (temp == nullptr: the size query,
// which launches nothing), or the sort itself.
template <typename IdxT>
cudaError_t sort_ids(void* temp, size_t& temp_bytes, const IdxT* ids, IdxT* sorted, int64_t nnz,
                     cudaStream_t stream) {
  if (nnz < (int64_t{1} << 31)) {
    return cub::DeviceRadixSort::SortKeys(temp, temp_bytes, ids, sorted, static_cast<int>(nnz), 0,
                                          static_cast<int>(sizeof(IdxT) * 8), stream);
  }
  return cub::DeviceRadixSort::SortKeys(temp, temp_bytes, ids, sorted, nnz, 0,
                                        static_cast<int>(sizeof(IdxT) * 8), stream);
}

// The sort's storage, bounded without a device (CUB's own query reads the
// device's architecture): the backward's bound for its sorts of n keys
// (embedding_bag_backward_workspace.h), plus the alternate buffer of n keys
// the pointer form of the sort keeps there. The call checks the bound
// against CUB's query.
size_t sort_bytes_bound(IndexType index_type, int64_t nnz) {
  return backward_cub_temp_bound(nnz) +
         static_cast<size_t>(nnz) * (index_type == IndexType::kI32 ? 4 : 8);
}

}  // namespace

size_t embedding_renorm_cuda_workspace_bytes(IndexType index_type, int64_t nnz) {
  const size_t ids = static_cast<size_t>(nnz) * (index_type == IndexType::kI32 ? 4 : 8);
  return kForwardWorkspaceBytes + align_up(ids) + align_up(sort_bytes_bound(index_type, nnz));
}

int embedding_renorm_cuda(const RenormParams& p, void* stream_handle) {
  const auto stream = static_cast<cudaStream_t>(stream_handle);
  if (const int error = launch_reset_check_record(p.checks, stream)) return error;
  if (p.nnz > 0) {
    if (const int error = launch_data_checks(p.checks, /*check_ids=*/true, stream)) return error;
    char* base = static_cast<char*>(p.workspace) + kForwardWorkspaceBytes;
    const size_t ids_bytes =
        align_up(static_cast<size_t>(p.nnz) * (p.index_type == IndexType::kI32 ? 4 : 8));
    void* temp = base + ids_bytes;
    const int error = SPEMBED_INDEX_SWITCH(p.index_type, IdxT, [&] {
      auto* sorted = reinterpret_cast<IdxT*>(base);
      size_t temp_bytes = 0;
      cudaError_t e = sort_ids<IdxT>(nullptr, temp_bytes, static_cast<const IdxT*>(p.indices),
                                     sorted, p.nnz, stream);
      if (e != cudaSuccess) return static_cast<int>(e);
      if (temp_bytes > sort_bytes_bound(p.index_type, p.nnz)) {
        return static_cast<int>(cudaErrorInvalidValue);
      }
      e = sort_ids<IdxT>(temp, temp_bytes, static_cast<const IdxT*>(p.indices), sorted, p.nnz,
                         stream);
      if (e != cudaSuccess) return static_cast<int>(e);
      const int64_t blocks = (p.nnz + kRenormBlockThreads / 32 - 1) / (kRenormBlockThreads / 32);
      const auto grid = static_cast<unsigned>(std::min(blocks, kMaxRenormGrid));
      return SPEMBED_TABLE_DTYPE_SWITCH(p.table_dtype, TableT, [&] {
        launch_kernel(renorm_kernel<IdxT, TableT>, grid, kRenormBlockThreads, 0, stream, p,
                      static_cast<const IdxT*>(sorted));
        return launch_status(stream);
      });
    });
    if (error != 0) return error;
  }
  if (p.checks.report != nullptr) return launch_write_report(p.checks, stream);
  return 0;
}

}  // namespace spembed::detail
