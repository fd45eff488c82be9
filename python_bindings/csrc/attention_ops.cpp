// CPU and CUDA implementations of the varlen attention ops (schemas in
// register.cpp): O and the log-sum-exp in one call, and the backward.
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <optional>

#include "embedding_bag_ops.h"
#include "torch_glue.h"

namespace spembed_torch {
namespace {

spembed_attention_options_t make_options(const at::Tensor& q, bool causal, double scale,
                                         int64_t window_left, int64_t window_right,
                                         int64_t max_seqlen_q, int64_t max_seqlen_k) {
  spembed_attention_options_t o;
  spembed_attention_options_init(&o);
  o.mask = causal ? SPEMBED_ATTENTION_MASK_CAUSAL : SPEMBED_ATTENTION_MASK_NONE;
  o.window_left = window_left < 0 ? -1 : window_left;
  o.window_right = window_right < 0 ? -1 : window_right;
  o.scale = static_cast<float>(scale);
  o.max_seqlen_q = max_seqlen_q;
  o.max_seqlen_k = max_seqlen_k;
  TORCH_CHECK_VALUE(q.dim() == 3, "spembed.varlen_attention: q must be 3-D [total_q, heads, ",
                    "head_dim], got shape ", q.sizes());
  return o;
}

// The C API needs a unit innermost stride; other strides are taken as they are.
at::Tensor inner_contiguous(const at::Tensor& t) {
  return t.dim() > 0 && t.stride(-1) != 1 ? t.contiguous() : t;
}

at::Tensor report_if_checked(const c10::Device& device) {
  return device.is_cuda() && sync_checks() ? new_report(device) : at::Tensor();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> varlen_attention(const at::Tensor& q_in, const at::Tensor& k_in,
                                                    const at::Tensor& v_in,
                                                    const at::Tensor& cu_q_in,
                                                    const at::Tensor& cu_k_in, bool causal,
                                                    double scale, int64_t window_left,
                                                    int64_t window_right, int64_t max_seqlen_q,
                                                    int64_t max_seqlen_k) {
  const spembed_attention_options_t options = make_options(
      q_in, causal, scale, window_left, window_right, max_seqlen_q, max_seqlen_k);
  const at::Tensor q = inner_contiguous(q_in), k = inner_contiguous(k_in),
                   v = inner_contiguous(v_in);
  const at::Tensor cu_q = cu_q_in.contiguous(), cu_k = cu_k_in.contiguous();
  const c10::Device device = q.device();
  c10::DeviceGuard guard(device);
  at::Tensor out = at::empty(q.sizes(), q.options());
  at::Tensor lse = at::empty({q.size(1), q.size(0)}, q.options().dtype(at::kFloat));
  spembed_handle_t h = handle_for(device);
  View vq(q), vk(k), vv(v), vcq(cu_q), vck(cu_k), vout(out), vlse(lse);
  size_t ws_bytes = 0;
  check(spembed_varlen_attention_forward_workspace_size(
            h, vq.dl.device.device_type, cu_q.numel() > 0 ? cu_q.numel() - 1 : 0, q.size(0),
            q.size(1), &ws_bytes),
        "varlen_attention");
  at::Tensor ws = workspace(device, ws_bytes);
  at::Tensor report = report_if_checked(device);
  std::optional<View> vr;
  if (report.defined()) vr.emplace(report);
  check(spembed_varlen_attention_forward(h, vq.get(), vk.get(), vv.get(), vcq.get(), vck.get(),
                                         &options, vout.get(), vlse.get(),
                                         vr ? vr->get() : nullptr,
                                         ws.defined() ? ws.data_ptr() : nullptr, ws_bytes,
                                         stream_for(device)),
        "varlen_attention");
  check_report(report, "varlen_attention");
  return {out, lse};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward(
    const at::Tensor& grad_out_in, const at::Tensor& q_in, const at::Tensor& k_in,
    const at::Tensor& v_in, const at::Tensor& out_in, const at::Tensor& lse_in,
    const at::Tensor& cu_q_in, const at::Tensor& cu_k_in, bool causal, double scale,
    int64_t window_left, int64_t window_right, bool deterministic) {
  const spembed_attention_options_t options =
      make_options(q_in, causal, scale, window_left, window_right, 0, 0);
  const at::Tensor q = inner_contiguous(q_in), k = inner_contiguous(k_in),
                   v = inner_contiguous(v_in), out = inner_contiguous(out_in),
                   dout = inner_contiguous(grad_out_in);
  const at::Tensor lse = lse_in.contiguous(), cu_q = cu_q_in.contiguous(),
                   cu_k = cu_k_in.contiguous();
  const c10::Device device = q.device();
  c10::DeviceGuard guard(device);
  at::Tensor dq = at::empty(q.sizes(), q.options());
  at::Tensor dk = at::empty(k.sizes(), q.options());
  at::Tensor dv = at::empty(v.sizes(), q.options());
  spembed_handle_t h = handle_for(device);
  View vq(q), vk(k), vv(v), vo(out), vdo(dout), vlse(lse), vcq(cu_q), vck(cu_k), vdq(dq), vdk(dk),
      vdv(dv);
  size_t ws_bytes = 0;
  check(spembed_varlen_attention_backward_workspace_size(
            h, vq.dl.device.device_type, cu_q.numel() > 0 ? cu_q.numel() - 1 : 0, q.size(0),
            q.size(1), &ws_bytes),
        "varlen_attention_backward");
  at::Tensor ws = workspace(device, ws_bytes);
  at::Tensor report = report_if_checked(device);
  std::optional<View> vr;
  if (report.defined()) vr.emplace(report);
  check(spembed_varlen_attention_backward(
            h, vq.get(), vk.get(), vv.get(), vo.get(), vdo.get(), vlse.get(), vcq.get(), vck.get(),
            &options, deterministic ? 1 : 0, vdq.get(), vdk.get(), vdv.get(),
            vr ? vr->get() : nullptr, ws.defined() ? ws.data_ptr() : nullptr, ws_bytes,
            stream_for(device)),
        "varlen_attention_backward");
  check_report(report, "varlen_attention_backward");
  return {dq, dk, dv};
}

}  // namespace spembed_torch
