// CPU and CUDA implementations of the embedding bag ops (schemas in
// register.cpp). Each one shapes its outputs, fetches scratch through the
// library's workspace query from torch's allocator and calls the C API on
// torch's current stream.
#include "embedding_bag_ops.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <list>
#include <memory>
#include <mutex>
#include <tuple>
#include <vector>

#include "spembed/spembed.hpp"
#include "torch_glue.h"

namespace spembed_torch {
namespace {

// What the library computes and keeps for a table of `weight`'s dtype
// (gradients, per-sample weights, optimizer states): float64 for float64
// tables, float32 for the others.
at::ScalarType acc_type(const at::Tensor& weight) {
  return weight.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace

namespace {

using OptTensor = std::optional<at::Tensor>;

spembed_embedding_bag_options_t make_options(const LookupArgs& a) {
  spembed_embedding_bag_options_t o;
  spembed_embedding_bag_options_init(&o);
  TORCH_CHECK_VALUE(a.mode >= SPEMBED_POOLING_SUM && a.mode <= SPEMBED_POOLING_NONE,
                    "spembed: mode ", a.mode, " must be 0 (sum), 1 (mean), 2 (max) or 3 (none)");
  TORCH_CHECK_VALUE(
      a.bounds_policy == SPEMBED_BOUNDS_ERROR || a.bounds_policy == SPEMBED_BOUNDS_SKIP,
      "spembed: bounds_policy ", a.bounds_policy, " must be 0 (error) or 1 (skip)");
  o.pooling = static_cast<spembed_pooling_t>(a.mode);
  o.padding_idx = a.padding_idx < 0 ? -1 : a.padding_idx;
  o.bounds_policy = static_cast<spembed_bounds_policy_t>(a.bounds_policy);
  o.fixed_bag_size = a.fixed_bag_size;
  o.scale_grad_by_freq = a.scale_grad_by_freq != 0 ? 1 : 0;
  return o;
}

// Contiguous version of an optional input (the C API takes compact ids,
// offsets and weights).
at::Tensor compact(const OptTensor& t) {
  return t.has_value() && t->defined() ? t->contiguous() : at::Tensor();
}

DLTensor* view_or_null(std::optional<View>& v, const at::Tensor& t) {
  if (!t.defined()) return nullptr;
  v.emplace(t);
  return v->get();
}

// A table as the C API takes it: innermost stride 1.
at::Tensor usable_table(const at::Tensor& w) {
  TORCH_CHECK_VALUE(w.dim() == 2, "spembed: weight must be 2-D [rows, dim], got ", w.dim(), "-D");
  return w.stride(1) == 1 ? w : w.contiguous();
}

int64_t bag_count(const LookupArgs& a, int64_t nnz, int64_t num_tables, const at::Tensor& offsets) {
  if (a.mode == SPEMBED_POOLING_NONE) return nnz;
  if (a.fixed_bag_size > 0) return nnz / (a.fixed_bag_size * num_tables);
  TORCH_CHECK_VALUE(offsets.defined(), "spembed: offsets are required unless fixed_bag_size > 0 ",
                    "or mode is none");
  TORCH_CHECK_VALUE(offsets.dim() == 1 && offsets.numel() >= 1, "spembed: offsets must be 1-D ",
                    "with at least one entry, got shape ", offsets.sizes());
  return (offsets.numel() - 1) / num_tables;
}

at::Tensor report_if_checked(const c10::Device& device, int bounds_policy) {
  (void)bounds_policy;
  return device.is_cuda() && sync_checks() ? new_report(device) : at::Tensor();
}

// The table batch describing `tables`, cached by the views' full description
// (pointer, shape, stride, dtype, device): a batch holds only metadata, so a
// hit is correct even when the memory now belongs to another tensor.
// Creating a CUDA batch uploads metadata and synchronises; the cache makes
// that a one-time cost per set of tables.
class BatchCache {
 public:
  spembed_table_batch_t get(spembed_handle_t handle, const std::vector<at::Tensor>& tables) {
    std::vector<int64_t> key;
    key.reserve(tables.size() * 5 + 2);
    key.push_back(reinterpret_cast<intptr_t>(handle));
    key.push_back(tables.empty() ? -1 : static_cast<int64_t>(tables[0].scalar_type()));
    for (const at::Tensor& t : tables) {
      key.push_back(reinterpret_cast<intptr_t>(t.data_ptr()));
      key.push_back(t.size(0));
      key.push_back(t.size(1));
      key.push_back(t.stride(0));
      key.push_back(t.is_cuda() ? t.get_device() : -1);
    }
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->first == key) {
        entries_.splice(entries_.begin(), entries_, it);  // most recent first
        return entries_.front().second->get();
      }
    }
    std::vector<View> views;
    views.reserve(tables.size());
    std::vector<DLTensor> dls;
    for (const at::Tensor& t : tables) {
      views.emplace_back(t);
      dls.push_back(views.back().dl);
    }
    spembed_table_batch_t batch = nullptr;
    check(spembed_table_batch_create(handle, dls.data(), static_cast<int64_t>(dls.size()), &batch),
          "table_batch_create");
    entries_.emplace_front(std::move(key), std::make_unique<Owned>(batch));
    if (entries_.size() > kCapacity) entries_.pop_back();
    return batch;
  }

 private:
  // Enough for every collection of a model plus a few transient ones; an
  // evicted batch is simply re-created.
  static constexpr size_t kCapacity = 64;
  struct Owned {
    explicit Owned(spembed_table_batch_t b) : batch(b) {}
    ~Owned() { spembed_table_batch_destroy(batch); }
    spembed_table_batch_t get() const { return batch; }
    spembed_table_batch_t batch;
  };
  std::mutex mutex_;
  std::list<std::pair<std::vector<int64_t>, std::unique_ptr<Owned>>> entries_;
};

BatchCache& batch_cache() {
  static auto* cache = new BatchCache;  // leaked on purpose: no teardown-order issues
  return *cache;
}

std::vector<at::Tensor> usable_tables(const std::vector<at::Tensor>& weights) {
  TORCH_CHECK_VALUE(!weights.empty(), "spembed: weights must hold at least one table");
  std::vector<at::Tensor> out;
  out.reserve(weights.size());
  for (const at::Tensor& w : weights) {
    TORCH_CHECK_VALUE(w.dim() == 2 && w.stride(1) == 1, "spembed: every table must be 2-D with ",
                      "a contiguous last dimension (batched tables are used in place)");
    out.push_back(w);
  }
  return out;
}

spembed_optimizer_options_t make_optimizer(const OptimizerArgs& o) {
  spembed_optimizer_options_t opt;
  spembed_optimizer_options_init(&opt);
  TORCH_CHECK_VALUE(o.optimizer >= SPEMBED_OPTIMIZER_SGD && o.optimizer <= SPEMBED_OPTIMIZER_ADAM,
                    "spembed: optimizer ", o.optimizer,
                    " must be 0 (sgd), 1 (adagrad), 2 (rowwise_adagrad) or 3 (adam)");
  opt.optimizer = static_cast<spembed_optimizer_t>(o.optimizer);
  opt.learning_rate = static_cast<float>(o.lr);
  opt.eps = static_cast<float>(o.eps);
  opt.beta1 = static_cast<float>(o.beta1);
  opt.beta2 = static_cast<float>(o.beta2);
  opt.weight_decay = static_cast<float>(o.weight_decay);
  opt.step = o.step;
  opt.stochastic_rounding = o.stochastic_rounding ? 1 : 0;
  opt.seed = static_cast<uint64_t>(o.seed);
  return opt;
}

spembed_backward_algorithm_t algorithm(bool deterministic) {
  return deterministic ? SPEMBED_BACKWARD_DETERMINISTIC : SPEMBED_BACKWARD_ATOMIC;
}

// Inputs of a backward call, made compact, with their views.
struct BackwardInputs {
  at::Tensor indices, offsets, psw, argmax, grad_output;
  std::optional<View> vi, vo, vw, va, vg;
  spembed_embedding_bag_options_t options;
  BackwardInputs(const at::Tensor& go, const at::Tensor& idx, const OptTensor& offs,
                 const OptTensor& w, const OptTensor& am, const LookupArgs& a)
      : indices(idx.contiguous()),
        offsets(compact(offs)),
        psw(compact(w)),
        argmax(compact(am)),
        grad_output(go.contiguous()),
        options(make_options(a)) {
    if (argmax.defined() && argmax.numel() == 0 && a.mode != SPEMBED_POOLING_MAX) {
      argmax = at::Tensor();  // the forward's placeholder for modes without argmax
    }
  }
  template <typename Args>
  void fill(Args& args) {
    args.indices = view_or_null(vi, indices);
    args.offsets = view_or_null(vo, offsets);
    args.per_sample_weights = view_or_null(vw, psw);
    args.argmax = view_or_null(va, argmax);
    args.grad_output = view_or_null(vg, grad_output);
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor> embedding_bag(const at::Tensor& weight_in,
                                                 const at::Tensor& indices_in,
                                                 const OptTensor& offsets_in,
                                                 const OptTensor& psw_in, const LookupArgs& a,
                                                 std::optional<at::ScalarType> output_dtype) {
  const at::Tensor weight = usable_table(weight_in);
  const at::Tensor indices = indices_in.contiguous();
  const at::Tensor offsets = compact(offsets_in);
  const at::Tensor psw = compact(psw_in);
  const spembed_embedding_bag_options_t options = make_options(a);
  const c10::Device device = weight.device();
  c10::DeviceGuard guard(device);
  const int64_t bags = bag_count(a, indices.numel(), 1, offsets);
  at::Tensor output = at::empty(
      {bags, weight.size(1)}, weight.options().dtype(output_dtype.value_or(weight.scalar_type())));
  at::Tensor argmax = a.mode == SPEMBED_POOLING_MAX
                          ? at::empty({bags, weight.size(1)}, indices.options())
                          : at::empty({0}, indices.options());
  spembed_handle_t h = handle_for(device);
  size_t ws_bytes = 0;
  check(spembed_embedding_bag_forward_workspace_size(h, View(weight).dl.device.device_type,
                                                     &ws_bytes),
        "embedding_bag");
  at::Tensor ws = workspace(device, ws_bytes);
  at::Tensor report = report_if_checked(device, a.bounds_policy);
  View vt(weight), vi(indices), vout(output);
  std::optional<View> vo, vw, va, vr;
  check(spembed_embedding_bag_forward(
            h, vt.get(), vi.get(), view_or_null(vo, offsets), view_or_null(vw, psw), &options,
            vout.get(), a.mode == SPEMBED_POOLING_MAX ? view_or_null(va, argmax) : nullptr,
            view_or_null(vr, report), ws.defined() ? ws.data_ptr() : nullptr, ws_bytes,
            stream_for(device)),
        "embedding_bag");
  check_report(report, "embedding_bag");
  return {output, argmax};
}

// The single-table backward call shared by the ops: workspace from torch's
// allocator through the size query, the call on torch's current stream, and
// the device's bounds report checked (see sync_checks).
static void run_backward(const spembed_embedding_bag_backward_args_t& args,
                         const BackwardInputs& in, const at::Tensor& weight, const LookupArgs& a,
                         spembed_backward_algorithm_t alg, const char* op) {
  const c10::Device device = weight.device();
  spembed_handle_t h = handle_for(device);
  size_t ws_bytes = 0;
  check(spembed_embedding_bag_backward_workspace_size(
            h, args.table->device.device_type, dl_dtype(in.indices.scalar_type(), "indices"),
            in.indices.numel(), weight.size(0), weight.size(1), alg, &ws_bytes),
        op);
  at::Tensor ws = workspace(device, ws_bytes);
  at::Tensor report = report_if_checked(device, a.bounds_policy);
  std::optional<View> vr;
  check(spembed_embedding_bag_backward(h, &args, &in.options, alg, view_or_null(vr, report),
                                       ws.defined() ? ws.data_ptr() : nullptr, ws_bytes,
                                       stream_for(device)),
        op);
  check_report(report, op);
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward(
    const at::Tensor& grad_output, const at::Tensor& weight_in, const at::Tensor& indices,
    const OptTensor& offsets, const OptTensor& psw, const OptTensor& argmax, const LookupArgs& a,
    bool deterministic, bool weight_grad, bool psw_grad) {
  const at::Tensor weight = usable_table(weight_in);
  const c10::Device device = weight.device();
  c10::DeviceGuard guard(device);
  BackwardInputs in(grad_output, indices, offsets, psw, argmax, a);
  spembed_embedding_bag_backward_args_t args{};
  in.fill(args);
  View vt(weight);
  args.table = vt.get();
  at::Tensor grad_table = weight_grad
                              ? at::zeros(weight.sizes(), weight.options().dtype(acc_type(weight)))
                              : at::Tensor();
  at::Tensor grad_psw =
      psw_grad ? at::empty({in.indices.numel()}, weight.options().dtype(acc_type(weight)))
               : at::Tensor();
  std::optional<View> vg, vp;
  args.grad_table = view_or_null(vg, grad_table);
  args.grad_per_sample_weights = view_or_null(vp, grad_psw);
  if (weight_grad || psw_grad) {
    run_backward(args, in, weight, a, algorithm(deterministic), "embedding_bag_backward");
  }
  return {weight_grad ? grad_table.to(weight.scalar_type()) : at::empty({0}, weight.options()),
          psw_grad ? grad_psw : at::empty({0}, weight.options().dtype(acc_type(weight)))};
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward_sparse(
    const at::Tensor& grad_output, const at::Tensor& weight_in, const at::Tensor& indices,
    const OptTensor& offsets, const OptTensor& psw, const OptTensor& argmax, const LookupArgs& a) {
  const at::Tensor weight = usable_table(weight_in);
  const c10::Device device = weight.device();
  c10::DeviceGuard guard(device);
  BackwardInputs in(grad_output, indices, offsets, psw, argmax, a);
  spembed_embedding_bag_backward_args_t args{};
  in.fill(args);
  View vt(weight);
  args.table = vt.get();
  const int64_t capacity = in.indices.numel();
  at::Tensor ids = at::empty({capacity}, in.indices.options());
  at::Tensor rows = at::empty({capacity, weight.size(1)}, weight.options().dtype(acc_type(weight)));
  at::Tensor count = at::zeros({1}, weight.options().dtype(at::kLong));
  View vid(ids), vrows(rows), vcount(count);
  args.unique_ids = vid.get();
  args.unique_grads = vrows.get();
  args.num_unique = vcount.get();
  run_backward(args, in, weight, a, SPEMBED_BACKWARD_DETERMINISTIC,
               "embedding_bag_backward_sparse");
  // U is data-dependent: reading it is the one synchronisation of this op.
  const int64_t u = count.to(at::kCPU).item<int64_t>();
  return {ids.narrow(0, 0, u), rows.narrow(0, 0, u).to(weight.scalar_type())};
}

void embedding_bag_fused_step(const at::Tensor& weight, const OptTensor& state1,
                              const OptTensor& state2, const at::Tensor& grad_output,
                              const at::Tensor& indices, const OptTensor& offsets,
                              const OptTensor& psw, const OptTensor& argmax, const LookupArgs& a,
                              const OptimizerArgs& o) {
  TORCH_CHECK_VALUE(weight.dim() == 2 && weight.stride(1) == 1, "spembed: weight must be 2-D ",
                    "with a contiguous last dimension (it is updated in place)");
  const c10::Device device = weight.device();
  c10::DeviceGuard guard(device);
  BackwardInputs in(grad_output, indices, offsets, psw, argmax, a);
  spembed_embedding_bag_backward_args_t args{};
  in.fill(args);
  View vt(weight);
  args.table = vt.get();
  std::optional<View> vs1, vs2;
  args.state1 = state1.has_value() ? view_or_null(vs1, *state1) : nullptr;
  args.state2 = state2.has_value() ? view_or_null(vs2, *state2) : nullptr;
  const spembed_optimizer_options_t opt = make_optimizer(o);
  args.optimizer = &opt;
  run_backward(args, in, weight, a, SPEMBED_BACKWARD_DETERMINISTIC, "embedding_bag_fused_step");
}

std::tuple<at::Tensor, at::Tensor> embedding_bag_batched(
    const std::vector<at::Tensor>& weights_in, const at::Tensor& indices_in,
    const OptTensor& offsets_in, const OptTensor& psw_in, const LookupArgs& a,
    std::optional<at::ScalarType> output_dtype) {
  const std::vector<at::Tensor> weights = usable_tables(weights_in);
  const at::Tensor indices = indices_in.contiguous();
  const at::Tensor offsets = compact(offsets_in);
  const at::Tensor psw = compact(psw_in);
  const spembed_embedding_bag_options_t options = make_options(a);
  TORCH_CHECK_NOT_IMPLEMENTED(a.mode != SPEMBED_POOLING_NONE,
                              "spembed: mode none is not available for batched tables");
  const c10::Device device = weights[0].device();
  c10::DeviceGuard guard(device);
  const int64_t num_tables = static_cast<int64_t>(weights.size());
  const int64_t b = bag_count(a, indices.numel(), num_tables, offsets);
  int64_t total_dim = 0;
  for (const at::Tensor& w : weights) total_dim += w.size(1);
  spembed_handle_t h = handle_for(device);
  spembed_table_batch_t batch = batch_cache().get(h, weights);
  at::Tensor output = at::empty(
      {b, total_dim}, weights[0].options().dtype(output_dtype.value_or(weights[0].scalar_type())));
  at::Tensor argmax = a.mode == SPEMBED_POOLING_MAX ? at::empty({b, total_dim}, indices.options())
                                                    : at::empty({0}, indices.options());
  size_t ws_bytes = 0;
  check(spembed_embedding_bag_forward_workspace_size(h, View(weights[0]).dl.device.device_type,
                                                     &ws_bytes),
        "embedding_bag_batched");
  at::Tensor ws = workspace(device, ws_bytes);
  at::Tensor report = report_if_checked(device, a.bounds_policy);
  View vi(indices), vout(output);
  std::optional<View> vo, vw, va, vr;
  check(spembed_embedding_bag_batched_forward(
            h, batch, vi.get(), view_or_null(vo, offsets), view_or_null(vw, psw), &options,
            vout.get(), a.mode == SPEMBED_POOLING_MAX ? view_or_null(va, argmax) : nullptr,
            view_or_null(vr, report), ws.defined() ? ws.data_ptr() : nullptr, ws_bytes,
            stream_for(device)),
        "embedding_bag_batched");
  check_report(report, "embedding_bag_batched");
  return {output, argmax};
}

void embedding_renorm_(const at::Tensor& weight, const at::Tensor& indices_in, double max_norm,
                       double norm_type, int64_t bounds_policy) {
  const char* op = "embedding_renorm_";
  TORCH_CHECK_VALUE(weight.dim() == 2, "spembed: weight must be 2-D [rows, dim], got ",
                    weight.dim(), "-D");
  TORCH_CHECK_VALUE(bounds_policy == SPEMBED_BOUNDS_ERROR || bounds_policy == SPEMBED_BOUNDS_SKIP,
                    "spembed: bounds_policy ", bounds_policy, " must be 0 (error) or 1 (skip)");
  const c10::Device device = weight.device();
  c10::DeviceGuard guard(device);
  const DLDataType index_dtype = dl_dtype(indices_in.scalar_type(), "indices");
  const at::Tensor indices = indices_in.reshape({-1}).contiguous();
  // The C API takes rows with unit column stride, at least dim apart; any
  // other layout (a transposed or expanded weight) goes through a copy.
  const bool in_place = weight.stride(1) == 1 && weight.stride(0) >= weight.size(1);
  const at::Tensor table =
      in_place ? weight : at::empty(weight.sizes(), weight.options()).copy_(weight);
  View vt(table), vi(indices);
  spembed_handle_t h = handle_for(device);
  size_t ws_bytes = 0;
  check(spembed_embedding_renorm_workspace_size(h, vt.dl.device.device_type, index_dtype,
                                                indices.numel(), &ws_bytes),
        op);
  at::Tensor ws = workspace(device, ws_bytes);
  at::Tensor report = report_if_checked(device, static_cast<int>(bounds_policy));
  std::optional<View> vr;
  check(spembed_embedding_renorm(h, vt.get(), vi.get(), max_norm, norm_type,
                                 static_cast<spembed_bounds_policy_t>(bounds_policy),
                                 view_or_null(vr, report), ws.defined() ? ws.data_ptr() : nullptr,
                                 ws_bytes, stream_for(device)),
        op);
  check_report(report, op);
  if (!in_place) weight.copy_(table);
}

namespace {

// Shared by the batched backward and the batched fused step.
void run_batched_backward(const std::vector<at::Tensor>& weights, BackwardInputs& in,
                          spembed_embedding_bag_batched_backward_args_t& args, const LookupArgs& a,
                          bool deterministic, const char* op) {
  const c10::Device device = weights[0].device();
  spembed_handle_t h = handle_for(device);
  spembed_table_batch_t batch = batch_cache().get(h, weights);
  in.fill(args);
  size_t ws_bytes = 0;
  check(spembed_embedding_bag_batched_backward_workspace_size(
            h, batch, dl_dtype(in.indices.scalar_type(), "indices"), in.indices.numel(),
            algorithm(deterministic), &ws_bytes),
        op);
  at::Tensor ws = workspace(device, ws_bytes);
  at::Tensor report = report_if_checked(device, a.bounds_policy);
  std::optional<View> vr;
  check(spembed_embedding_bag_batched_backward(
            h, batch, &args, &in.options, algorithm(deterministic), view_or_null(vr, report),
            ws.defined() ? ws.data_ptr() : nullptr, ws_bytes, stream_for(device)),
        op);
  check_report(report, op);
}

std::vector<DLTensor> dl_list(const std::vector<at::Tensor>& ts) {
  std::vector<DLTensor> out;
  out.reserve(ts.size());
  for (const at::Tensor& t : ts) out.push_back(View(t).dl);  // metadata lives in `ts`
  return out;
}

}  // namespace

std::tuple<std::vector<at::Tensor>, at::Tensor> embedding_bag_batched_backward(
    const at::Tensor& grad_output, const std::vector<at::Tensor>& weights_in,
    const at::Tensor& indices, const OptTensor& offsets, const OptTensor& psw,
    const OptTensor& argmax, const LookupArgs& a, bool deterministic, bool weight_grad,
    bool psw_grad) {
  const std::vector<at::Tensor> weights = usable_tables(weights_in);
  c10::DeviceGuard guard(weights[0].device());
  BackwardInputs in(grad_output, indices, offsets, psw, argmax, a);
  spembed_embedding_bag_batched_backward_args_t args{};
  std::vector<at::Tensor> grads;
  if (weight_grad) {
    for (const at::Tensor& w : weights)
      grads.push_back(at::zeros(w.sizes(), w.options().dtype(acc_type(w))));
  }
  std::vector<DLTensor> grad_views = dl_list(grads);
  args.grad_tables = weight_grad ? grad_views.data() : nullptr;
  at::Tensor grad_psw =
      psw_grad ? at::empty({in.indices.numel()}, weights[0].options().dtype(acc_type(weights[0])))
               : at::empty({0}, weights[0].options().dtype(acc_type(weights[0])));
  std::optional<View> vp;
  args.grad_per_sample_weights = psw_grad ? view_or_null(vp, grad_psw) : nullptr;
  if (weight_grad || psw_grad) {
    run_batched_backward(weights, in, args, a, deterministic, "embedding_bag_batched_backward");
  }
  for (size_t t = 0; t < grads.size(); ++t) grads[t] = grads[t].to(weights[t].scalar_type());
  return {grads, grad_psw};
}

void embedding_bag_batched_fused_step(const std::vector<at::Tensor>& weights_in,
                                      const std::vector<at::Tensor>& states1,
                                      const std::vector<at::Tensor>& states2,
                                      const at::Tensor& grad_output, const at::Tensor& indices,
                                      const OptTensor& offsets, const OptTensor& psw,
                                      const OptTensor& argmax, const LookupArgs& a,
                                      const OptimizerArgs& o) {
  const std::vector<at::Tensor> weights = usable_tables(weights_in);
  c10::DeviceGuard guard(weights[0].device());
  BackwardInputs in(grad_output, indices, offsets, psw, argmax, a);
  spembed_embedding_bag_batched_backward_args_t args{};
  std::vector<DLTensor> s1 = dl_list(states1), s2 = dl_list(states2);
  TORCH_CHECK_VALUE(states1.empty() || states1.size() == weights.size(),
                    "spembed: states1 must be empty or hold one tensor per table");
  TORCH_CHECK_VALUE(states2.empty() || states2.size() == weights.size(),
                    "spembed: states2 must be empty or hold one tensor per table");
  args.states1 = states1.empty() ? nullptr : s1.data();
  args.states2 = states2.empty() ? nullptr : s2.data();
  const spembed_optimizer_options_t opt = make_optimizer(o);
  args.optimizer = &opt;
  run_batched_backward(weights, in, args, a, true, "embedding_bag_batched_fused_step");
}

}  // namespace spembed_torch
