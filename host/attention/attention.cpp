// C API of the varlen attention forward and backward: argument validation,
// then dispatch to the CPU implementation or the CUDA launcher by the
// tensors' device. Nothing is written before every check has passed; on CPU
// that includes the cu_seqlens data, on CUDA those are checked on the device
// (kernels/attention/attention.cu).
#include "kernels/attention/attention.h"

#include <cuda_runtime_api.h>

#include <cinttypes>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "host/common/api_common.h"
#include "host/common/errors.h"
#include "host/common/handle.h"
#include "host/common/tensor_checks.h"

namespace spembed::detail {
namespace {

constexpr DLDataType kInt32{kDLInt, 32, 1};

spembed_status_t resolve_attention_options(const spembed_attention_options_t* given,
                                           spembed_attention_options_t* options) {
  spembed_attention_options_init(options);
  if (given == nullptr) return SPEMBED_STATUS_SUCCESS;
  // Read the enum as a raw int: a C caller may store any value in it.
  static_assert(sizeof(spembed_attention_mask_t) == sizeof(int), "C enums are int-sized");
  int mask = 0;
  std::memcpy(&mask, &given->mask, sizeof(int));
  if (mask != SPEMBED_ATTENTION_MASK_NONE && mask != SPEMBED_ATTENTION_MASK_CAUSAL) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "options.mask: unknown value %d", mask);
  }
  *options = *given;
  if (options->window_left < -1) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "options.window_left: %" PRId64 " must be -1 (no limit) or >= 0",
                options->window_left);
  }
  if (options->window_right < -1) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "options.window_right: %" PRId64 " must be -1 (no limit) or >= 0",
                options->window_right);
  }
  if (!std::isfinite(options->scale)) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "options.scale: must be finite (0 selects 1/sqrt(head_dim))");
  }
  if (options->max_seqlen_q < 0 || options->max_seqlen_k < 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "options.max_seqlen_%s: %" PRId64 " must be >= 0 (0: unknown)",
                options->max_seqlen_q < 0 ? "q" : "k",
                options->max_seqlen_q < 0 ? options->max_seqlen_q : options->max_seqlen_k);
  }
  return SPEMBED_STATUS_SUCCESS;
}

// A [tokens, heads, head_dim] view. `tokens`, `heads` or `head_dim` < 0
// accept any value (the caller reads them back from the shape).
spembed_status_t check_token_tensor(const DLTensor* t, const char* name, DLDevice device,
                                    DLDataType dtype, int64_t tokens, int64_t heads,
                                    int64_t head_dim, TokenTensor* out) {
  if (t == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must not be NULL", name);
  SPEMBED_RETURN_IF_ERROR(check_same_device(*t, name, device));
  SPEMBED_RETURN_IF_ERROR(check_dtype_is(*t, name, dtype, "the dtype of q"));
  if (t->ndim != 3 || t->shape == nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: must be 3-D [tokens, heads, head_dim], got ndim=%d", name, t->ndim);
  }
  const int64_t n = t->shape[0], h = t->shape[1], d = t->shape[2];
  if (n < 0 || h < 1 || d < 1 || n > INT32_MAX || h > INT32_MAX) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: shape [%" PRId64 ", %" PRId64 ", %" PRId64
                "] must have tokens in [0, 2^31), heads >= 1 and head_dim >= 1",
                name, n, h, d);
  }
  if (tokens >= 0 && n != tokens) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: has %" PRId64 " tokens, expected %" PRId64,
                name, n, tokens);
  }
  if (heads >= 0 && h != heads) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: has %" PRId64 " heads, expected %" PRId64,
                name, h, heads);
  }
  if (head_dim >= 0 && d != head_dim) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: head_dim is %" PRId64 ", expected %" PRId64 " (q's head_dim)", name, d,
                head_dim);
  }
  int64_t token_stride = h * d, head_stride = d;
  if (t->strides != nullptr) {
    if (t->strides[2] != 1 && d > 1) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "%s: the head_dim stride is %" PRId64 "; it must be 1", name, t->strides[2]);
    }
    head_stride = h > 1 ? t->strides[1] : d;
    token_stride = n > 1 ? t->strides[0] : (h - 1) * head_stride + d;
    // Heads and tokens must not overlap (outputs would race; inputs would be
    // a layout no projection produces).
    if (head_stride < d || token_stride < (h - 1) * head_stride + d) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "%s: strides [%" PRId64 ", %" PRId64
                  ", 1] overlap; need head stride >= "
                  "head_dim and token stride >= (heads - 1) * head stride + head_dim",
                  name, t->strides[0], t->strides[1]);
    }
  }
  const void* data = nullptr;
  SPEMBED_RETURN_IF_ERROR(check_data(*t, name, &data));
  out->data = data;
  out->token_stride = token_stride;
  out->head_stride = head_stride;
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_cu_seqlens(const DLTensor* t, const char* name, DLDevice device,
                                  int64_t entries, const int32_t** data) {
  if (t == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must not be NULL", name);
  SPEMBED_RETURN_IF_ERROR(check_same_device(*t, name, device));
  SPEMBED_RETURN_IF_ERROR(check_dtype_is(*t, name, kInt32, "int32"));
  SPEMBED_RETURN_IF_ERROR(check_vector(*t, name, entries));
  if (t->shape[0] < 1) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must hold B + 1 >= 1 entries", name);
  }
  const void* pointer = nullptr;
  SPEMBED_RETURN_IF_ERROR(check_data(*t, name, &pointer));
  *data = static_cast<const int32_t*>(pointer);
  return SPEMBED_STATUS_SUCCESS;
}

// On CPU: first entry 0, non-decreasing, last `total`. Returns the position
// of the first bad entry, or -1.
int64_t first_bad_offset(const int32_t* cu, int64_t batch, int64_t total) {
  if (cu[0] != 0) return 0;
  for (int64_t i = 0; i < batch; ++i) {
    if (cu[i] > cu[i + 1]) return i;
  }
  return cu[batch] != total ? batch : -1;
}

spembed_status_t check_offsets_cpu(const int32_t* cu, const char* name, int64_t batch,
                                   int64_t total, const char* total_name) {
  const int64_t i = first_bad_offset(cu, batch, total);
  if (i < 0) return SPEMBED_STATUS_SUCCESS;
  if (i == 0 && cu[0] != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s[0]=%d: must be 0", name, cu[0]);
  }
  if (i < batch) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s[%" PRId64 "]=%d > %s[%" PRId64 "]=%d: must be non-decreasing", name, i, cu[i],
                name, i + 1, cu[i + 1]);
  }
  return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
              "%s[%" PRId64 "]=%d: the last entry must equal %s=%" PRId64, name, batch, cu[batch],
              total_name, total);
}

// The arguments both directions share: q, k, v, cu_seqlens, options, out,
// lse (required: `lse_required`), report, workspace.
struct CommonArgs {
  const DLTensor* q;
  const DLTensor* k;
  const DLTensor* v;
  const DLTensor* cu_seqlens_q;
  const DLTensor* cu_seqlens_k;
  const spembed_attention_options_t* options;
  const DLTensor* out;
  const DLTensor* lse;
  bool lse_required;
  DLTensor* report;
};

spembed_status_t prepare_common(spembed_handle_t handle, const CommonArgs& a, DLDevice* device,
                                AttentionParams* p) {
  SPEMBED_RETURN_IF_ERROR(check_handle(handle));
  spembed_attention_options_t opts;
  SPEMBED_RETURN_IF_ERROR(resolve_attention_options(a.options, &opts));
  if (a.q == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "q: must not be NULL");
  SPEMBED_RETURN_IF_ERROR(check_op_device(handle, *a.q, "q"));
  *device = a.q->device;
  SPEMBED_RETURN_IF_ERROR(check_float_dtype(*a.q, "q", &p->dtype));
  SPEMBED_RETURN_IF_ERROR(check_token_tensor(a.q, "q", *device, a.q->dtype, -1, -1, -1, &p->q));
  p->total_q = a.q->shape[0];
  p->heads = static_cast<int>(a.q->shape[1]);
  const int64_t d = a.q->shape[2];
  if (d > kAttentionMaxHeadDim) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "q: head_dim %" PRId64 " must be in [1, %d]", d,
                kAttentionMaxHeadDim);
  }
  p->head_dim = static_cast<int>(d);
  SPEMBED_RETURN_IF_ERROR(check_token_tensor(a.k, "k", *device, a.q->dtype, -1, -1, d, &p->k));
  p->total_k = a.k->shape[0];
  p->kv_heads = static_cast<int>(a.k->shape[1]);
  if (p->heads % p->kv_heads != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "k: kv_heads=%d must divide q's heads=%d (GQA / MQA)", p->kv_heads, p->heads);
  }
  SPEMBED_RETURN_IF_ERROR(
      check_token_tensor(a.v, "v", *device, a.q->dtype, p->total_k, p->kv_heads, d, &p->v));

  SPEMBED_RETURN_IF_ERROR(
      check_cu_seqlens(a.cu_seqlens_q, "cu_seqlens_q", *device, -1, &p->cu_seqlens_q));
  p->batch = a.cu_seqlens_q->shape[0] - 1;
  if (a.cu_seqlens_k != nullptr && a.cu_seqlens_k->ndim == 1 && a.cu_seqlens_k->shape != nullptr &&
      a.cu_seqlens_k->shape[0] != p->batch + 1) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "cu_seqlens_k: has %" PRId64 " entries but cu_seqlens_q has %" PRId64
                "; both must be [B + 1]",
                a.cu_seqlens_k->shape[0], p->batch + 1);
  }
  SPEMBED_RETURN_IF_ERROR(
      check_cu_seqlens(a.cu_seqlens_k, "cu_seqlens_k", *device, p->batch + 1, &p->cu_seqlens_k));

  SPEMBED_RETURN_IF_ERROR(
      check_token_tensor(a.out, "out", *device, a.q->dtype, p->total_q, p->heads, d, &p->out));
  if (a.lse == nullptr && a.lse_required) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "lse: must not be NULL (the forward's lse)");
  }
  if (a.lse != nullptr) {
    SPEMBED_RETURN_IF_ERROR(check_same_device(*a.lse, "lse", *device));
    SPEMBED_RETURN_IF_ERROR(check_dtype_is(*a.lse, "lse", kFloat32, "float32"));
    int64_t row_stride = 0;
    SPEMBED_RETURN_IF_ERROR(check_matrix(*a.lse, "lse", p->heads, p->total_q, &row_stride));
    if (row_stride != p->total_q && p->heads > 1) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "lse: must be contiguous [heads, total_q], got row stride %" PRId64, row_stride);
    }
    const void* data = nullptr;
    SPEMBED_RETURN_IF_ERROR(check_data(*a.lse, "lse", &data));
    p->lse = static_cast<float*>(const_cast<void*>(data));
  }
  SPEMBED_RETURN_IF_ERROR(check_report(a.report, *device, &p->report));

  p->band =
      make_band(opts.mask == SPEMBED_ATTENTION_MASK_CAUSAL, opts.window_left, opts.window_right);
  p->scale = opts.scale != 0.f ? opts.scale : 1.f / std::sqrt(static_cast<float>(d));
  p->max_seqlen_q = opts.max_seqlen_q;
  p->max_seqlen_k = opts.max_seqlen_k;
  return SPEMBED_STATUS_SUCCESS;
}

// The cu_seqlens data (CPU); writes the report when one was given.
spembed_status_t check_offsets_and_report(const AttentionParams& p) {
  spembed_status_t status =
      check_offsets_cpu(p.cu_seqlens_q, "cu_seqlens_q", p.batch, p.total_q, "total_q");
  int64_t position = -1;
  if (status != SPEMBED_STATUS_SUCCESS) {
    position = first_bad_offset(p.cu_seqlens_q, p.batch, p.total_q);
  } else {
    status = check_offsets_cpu(p.cu_seqlens_k, "cu_seqlens_k", p.batch, p.total_k, "total_k");
    if (status != SPEMBED_STATUS_SUCCESS) {
      position = p.batch + 1 + first_bad_offset(p.cu_seqlens_k, p.batch, p.total_k);
    }
  }
  if (p.report != nullptr) {
    p.report[SPEMBED_REPORT_STATUS] = status;
    p.report[SPEMBED_REPORT_BAD_INDEX_COUNT] = 0;
    p.report[SPEMBED_REPORT_BAD_INDEX_POSITION] = -1;
    p.report[SPEMBED_REPORT_BAD_INDEX_VALUE] = 0;
    p.report[SPEMBED_REPORT_BAD_OFFSET_POSITION] = position;
  }
  return status;
}

spembed_status_t check_size_query(spembed_handle_t handle, DLDeviceType device_type, int64_t batch,
                                  int64_t total_q, int64_t heads, size_t* bytes) {
  SPEMBED_RETURN_IF_ERROR(check_handle(handle));
  if (bytes == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "bytes: must not be NULL");
  SPEMBED_RETURN_IF_ERROR(check_device_type(device_type));
  if (batch < 0 || batch >= INT32_MAX) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "batch: %" PRId64 " must be in [0, 2^31 - 1)",
                batch);
  }
  if (total_q < 0 || total_q > INT32_MAX) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "total_q: %" PRId64 " must be in [0, 2^31)",
                total_q);
  }
  if (heads < 1 || heads > INT32_MAX) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "heads: %" PRId64 " must be in [1, 2^31)", heads);
  }
  return SPEMBED_STATUS_SUCCESS;
}

}  // namespace
}  // namespace spembed::detail

using namespace spembed::detail;

extern "C" {

void spembed_attention_options_init(spembed_attention_options_t* options) {
  if (options == nullptr) return;
  options->mask = SPEMBED_ATTENTION_MASK_NONE;
  options->window_left = -1;
  options->window_right = -1;
  options->scale = 0.f;
  options->max_seqlen_q = 0;
  options->max_seqlen_k = 0;
}

spembed_status_t spembed_varlen_attention_forward_workspace_size(spembed_handle_t handle,
                                                                 DLDeviceType device_type,
                                                                 int64_t batch, int64_t total_q,
                                                                 int64_t heads, size_t* bytes) {
  return guarded("spembed_varlen_attention_forward_workspace_size", [&] {
    SPEMBED_RETURN_IF_ERROR(check_size_query(handle, device_type, batch, total_q, heads, bytes));
    *bytes = device_type == kDLCUDA ? AttentionWorkspace::forward_bytes(batch) : 0;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_varlen_attention_backward_workspace_size(spembed_handle_t handle,
                                                                  DLDeviceType device_type,
                                                                  int64_t batch, int64_t total_q,
                                                                  int64_t heads, size_t* bytes) {
  return guarded("spembed_varlen_attention_backward_workspace_size", [&] {
    SPEMBED_RETURN_IF_ERROR(check_size_query(handle, device_type, batch, total_q, heads, bytes));
    *bytes = device_type == kDLCUDA ? AttentionWorkspace::backward_bytes(batch, total_q, heads) : 0;
    return SPEMBED_STATUS_SUCCESS;
  });
}

spembed_status_t spembed_varlen_attention_forward(
    spembed_handle_t handle, const DLTensor* q, const DLTensor* k, const DLTensor* v,
    const DLTensor* cu_seqlens_q, const DLTensor* cu_seqlens_k,
    const spembed_attention_options_t* options, DLTensor* out, DLTensor* lse, DLTensor* report,
    void* workspace, size_t workspace_bytes, spembed_stream_t stream) {
  return guarded("spembed_varlen_attention_forward", [&] {
    AttentionParams p;
    DLDevice device{};
    SPEMBED_RETURN_IF_ERROR(prepare_common(
        handle, CommonArgs{q, k, v, cu_seqlens_q, cu_seqlens_k, options, out, lse, false, report},
        &device, &p));
    if (device.device_type == kDLCPU) {
      SPEMBED_RETURN_IF_ERROR(check_offsets_and_report(p));
      attention_forward_cpu(p);
      return SPEMBED_STATUS_SUCCESS;
    }
    SPEMBED_RETURN_IF_ERROR(
        check_cuda_workspace(workspace, workspace_bytes, AttentionWorkspace::forward_bytes(p.batch),
                             "spembed_varlen_attention_forward_workspace_size"));
    p.workspace = workspace;
    return launch_on_device(device.device_id, [&] { return attention_forward_cuda(p, stream); });
  });
}

spembed_status_t spembed_varlen_attention_backward(
    spembed_handle_t handle, const DLTensor* q, const DLTensor* k, const DLTensor* v,
    const DLTensor* out, const DLTensor* dout, const DLTensor* lse, const DLTensor* cu_seqlens_q,
    const DLTensor* cu_seqlens_k, const spembed_attention_options_t* options, int deterministic,
    DLTensor* dq, DLTensor* dk, DLTensor* dv, DLTensor* report, void* workspace,
    size_t workspace_bytes, spembed_stream_t stream) {
  return guarded("spembed_varlen_attention_backward", [&] {
    AttentionParams p;
    DLDevice device{};
    SPEMBED_RETURN_IF_ERROR(prepare_common(
        handle, CommonArgs{q, k, v, cu_seqlens_q, cu_seqlens_k, options, out, lse, true, report},
        &device, &p));
    const DLDataType dtype = q->dtype;
    SPEMBED_RETURN_IF_ERROR(
        check_token_tensor(dout, "dout", device, dtype, p.total_q, p.heads, p.head_dim, &p.dout));
    SPEMBED_RETURN_IF_ERROR(
        check_token_tensor(dq, "dq", device, dtype, p.total_q, p.heads, p.head_dim, &p.dq));
    SPEMBED_RETURN_IF_ERROR(
        check_token_tensor(dk, "dk", device, dtype, p.total_k, p.kv_heads, p.head_dim, &p.dk));
    SPEMBED_RETURN_IF_ERROR(
        check_token_tensor(dv, "dv", device, dtype, p.total_k, p.kv_heads, p.head_dim, &p.dv));
    p.deterministic = deterministic != 0;
    if (device.device_type == kDLCPU) {
      SPEMBED_RETURN_IF_ERROR(check_offsets_and_report(p));
      attention_backward_cpu(p);
      return SPEMBED_STATUS_SUCCESS;
    }
    SPEMBED_RETURN_IF_ERROR(check_cuda_workspace(
        workspace, workspace_bytes, AttentionWorkspace::backward_bytes(p.batch, p.total_q, p.heads),
        "spembed_varlen_attention_backward_workspace_size"));
    p.workspace = workspace;
    return launch_on_device(device.device_id, [&] { return attention_backward_cuda(p, stream); });
  });
}

}  // extern "C"
