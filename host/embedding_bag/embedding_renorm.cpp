// C API of the max_norm renormalisation (spembed_embedding_renorm): argument
// validation, the id checks (on the CPU before anything is written; on CUDA on
// the device, as the forward's), then the CPU implementation or the CUDA
// launcher by the table's device.
#include "kernels/embedding_bag/embedding_renorm.h"

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "host/common/api_common.h"
#include "host/common/errors.h"
#include "host/common/handle.h"
#include "host/common/tensor_checks.h"
#include "host/embedding_bag/data_checks.h"
#include "host/embedding_bag/embedding_bag_common.h"

namespace spembed::detail {
namespace {

constexpr const char* kWorkspaceQuery = "spembed_embedding_renorm_workspace_size";

spembed_status_t check_positive(double value, const char* name) {
  if (!std::isfinite(value) || value <= 0.0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: %g must be finite and > 0", name, value);
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t prepare(DLTensor* table, const DLTensor* indices, double max_norm,
                         double norm_type, spembed_bounds_policy_t bounds_policy, DLTensor* report,
                         void* workspace, size_t workspace_bytes, RenormParams* p) {
  // The ids as a single-table NONE lookup: its checks are the forward's.
  spembed_embedding_bag_options_t given;
  spembed_embedding_bag_options_init(&given);
  given.pooling = SPEMBED_POOLING_NONE;
  given.bounds_policy = bounds_policy;
  spembed_embedding_bag_options_t options;
  SPEMBED_RETURN_IF_ERROR(resolve_options(&given, &options));
  SPEMBED_RETURN_IF_ERROR(describe_table(*table, "table", &p->table_dtype, &p->table));
  if (indices == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "indices: must not be NULL");
  EmbeddingBagForwardParams& c = p->checks;
  SPEMBED_RETURN_IF_ERROR(check_lookup_inputs(table->device, p->table_dtype, 1, indices, nullptr,
                                              nullptr, options, &c));
  SPEMBED_RETURN_IF_ERROR(check_positive(max_norm, "max_norm"));
  SPEMBED_RETURN_IF_ERROR(check_positive(norm_type, "norm_type"));
  SPEMBED_RETURN_IF_ERROR(check_report(report, table->device, &c.report));
  c.table_dtype = p->table_dtype;
  c.pooling = SPEMBED_POOLING_NONE;
  c.bounds_policy = options.bounds_policy;
  c.padding_idx = -1;
  c.single_table = p->table;
  c.tables = &c.single_table;
  c.max_dim = p->table.dim;
  p->index_type = c.index_type;
  p->indices = c.indices;
  p->nnz = c.nnz;
  p->max_norm = max_norm;
  p->norm_type = norm_type;
  p->bounds_policy = options.bounds_policy;
  if (table->device.device_type == kDLCUDA) {
    SPEMBED_RETURN_IF_ERROR(check_cuda_workspace(
        workspace, workspace_bytes, embedding_renorm_cuda_workspace_bytes(p->index_type, p->nnz),
        kWorkspaceQuery));
    p->workspace = workspace;
    c.workspace = workspace;  // the check record comes first
  }
  return SPEMBED_STATUS_SUCCESS;
}

}  // namespace
}  // namespace spembed::detail

using namespace spembed::detail;

extern "C" {

spembed_status_t spembed_embedding_renorm_workspace_size(spembed_handle_t handle,
                                                         DLDeviceType device_type,
                                                         DLDataType index_dtype, int64_t nnz,
                                                         size_t* bytes) {
  return guarded(kWorkspaceQuery, [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    if (bytes == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "bytes: must not be NULL");
    SPEMBED_RETURN_IF_ERROR(check_device_type(device_type));
    SPEMBED_RETURN_IF_ERROR(check_index_query(index_dtype, nnz));
    const IndexType index_type = index_dtype.bits == 32 ? IndexType::kI32 : IndexType::kI64;
    *bytes = device_type == kDLCUDA ? embedding_renorm_cuda_workspace_bytes(index_type, nnz) : 0;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_embedding_renorm(spembed_handle_t handle, DLTensor* table,
                                          const DLTensor* indices, double max_norm,
                                          double norm_type, spembed_bounds_policy_t bounds_policy,
                                          DLTensor* report, void* workspace, size_t workspace_bytes,
                                          spembed_stream_t stream) {
  return guarded("spembed_embedding_renorm", [&] {
    SPEMBED_RETURN_IF_ERROR(check_handle(handle));
    if (table == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "table: must not be NULL");
    SPEMBED_RETURN_IF_ERROR(check_op_device(handle, *table, "table"));
    RenormParams p;
    SPEMBED_RETURN_IF_ERROR(prepare(table, indices, max_norm, norm_type, bounds_policy, report,
                                    workspace, workspace_bytes, &p));
    if (table->device.device_type == kDLCPU) {
      SPEMBED_RETURN_IF_ERROR(conclude_data_checks(p.checks, check_data_cpu(p.checks)));
      embedding_renorm_cpu(p);
      return SPEMBED_STATUS_SUCCESS;
    }
    return launch_on_device(table->device.device_id,
                            [&] { return embedding_renorm_cuda(p, stream); });
  });
}

}  // extern "C"
