// Schemas of torch.ops.spembed.* and their CPU / CUDA kernels. Fake (meta)
// kernels and autograd are registered from Python (spembed/_meta.py,
// spembed/_autograd.py) through torch.library.
//
// Common arguments: pooling 0 sum, 1 mean, 2 max, 3 none; padding_idx < 0 for
// none; bounds_policy 0 error, 1 skip; fixed_bag_size > 0 replaces offsets
// (then None) for bags of equal size. Offsets are [bags + 1] (the last is nnz);
// torch's include_last_offset=False form is converted in Python. pooling,
// bounds_policy and optimizer are values of spembed.h's spembed_pooling_t,
// spembed_bounds_policy_t and spembed_optimizer_t (Python: spembed/_enums.py).
// scale_grad_by_freq (the last argument, default 0): non-zero divides each
// row's weight gradient (dense, row-sparse, or the one a fused step applies)
// by the row's number of ids in the call, padding and skipped ids not
// counted, as torch's scale_grad_by_freq. The forward ops take it too, ignore
// it, and hand it to their autograd backward (spembed/_autograd.py).
#include <torch/library.h>

#include "embedding_bag_ops.h"
#include "huge_pages.h"

namespace spembed_torch {
namespace {

using OptTensor = std::optional<at::Tensor>;

LookupArgs lookup(int64_t mode, int64_t padding_idx, int64_t bounds_policy,
                  int64_t fixed_bag_size, int64_t scale_grad_by_freq = 0) {
  return {mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq};
}

std::vector<at::Tensor> to_vector(at::TensorList list) { return {list.begin(), list.end()}; }

std::tuple<at::Tensor, at::Tensor> op_embedding_bag(const at::Tensor& weight,
                                                    const at::Tensor& indices,
                                                    const OptTensor& offsets,
                                                    const OptTensor& psw, int64_t mode,
                                                    int64_t padding_idx, int64_t bounds_policy,
                                                    int64_t fixed_bag_size,
                                                    std::optional<at::ScalarType> output_dtype,
                                                    int64_t scale_grad_by_freq) {
  return embedding_bag(
      weight, indices, offsets, psw,
      lookup(mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq), output_dtype);
}

std::tuple<at::Tensor, at::Tensor> op_embedding_bag_backward(
    const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& indices,
    const OptTensor& offsets, const OptTensor& psw, const OptTensor& argmax, int64_t mode,
    int64_t padding_idx, int64_t bounds_policy, int64_t fixed_bag_size, bool deterministic,
    bool weight_grad, bool psw_grad, int64_t scale_grad_by_freq) {
  return embedding_bag_backward(
      grad_output, weight, indices, offsets, psw, argmax,
      lookup(mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq),
      deterministic, weight_grad, psw_grad);
}

std::tuple<at::Tensor, at::Tensor> op_embedding_bag_backward_sparse(
    const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& indices,
    const OptTensor& offsets, const OptTensor& psw, const OptTensor& argmax, int64_t mode,
    int64_t padding_idx, int64_t bounds_policy, int64_t fixed_bag_size,
    int64_t scale_grad_by_freq) {
  return embedding_bag_backward_sparse(
      grad_output, weight, indices, offsets, psw, argmax,
      lookup(mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq));
}

void op_embedding_bag_fused_step(const at::Tensor& weight, const OptTensor& state1,
                                 const OptTensor& state2, const at::Tensor& grad_output,
                                 const at::Tensor& indices, const OptTensor& offsets,
                                 const OptTensor& psw, const OptTensor& argmax, int64_t mode,
                                 int64_t padding_idx, int64_t bounds_policy,
                                 int64_t fixed_bag_size, int64_t optimizer, double lr, double eps,
                                 double beta1, double beta2, double weight_decay, int64_t step,
                                 int64_t seed, bool stochastic_rounding,
                                 int64_t scale_grad_by_freq) {
  embedding_bag_fused_step(
      weight, state1, state2, grad_output, indices, offsets, psw, argmax,
      lookup(mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq),
      {optimizer, lr, eps, beta1, beta2, weight_decay, step, seed, stochastic_rounding});
}

std::tuple<at::Tensor, at::Tensor> op_embedding_bag_batched(
    at::TensorList weights, const at::Tensor& indices, const OptTensor& offsets,
    const OptTensor& psw, int64_t mode, int64_t padding_idx, int64_t bounds_policy,
    int64_t fixed_bag_size, std::optional<at::ScalarType> output_dtype,
    int64_t scale_grad_by_freq) {
  return embedding_bag_batched(
      to_vector(weights), indices, offsets, psw,
      lookup(mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq), output_dtype);
}

std::tuple<std::vector<at::Tensor>, at::Tensor> op_embedding_bag_batched_backward(
    const at::Tensor& grad_output, at::TensorList weights, const at::Tensor& indices,
    const OptTensor& offsets, const OptTensor& psw, const OptTensor& argmax, int64_t mode,
    int64_t padding_idx, int64_t bounds_policy, int64_t fixed_bag_size, bool deterministic,
    bool weight_grad, bool psw_grad, int64_t scale_grad_by_freq) {
  return embedding_bag_batched_backward(
      grad_output, to_vector(weights), indices, offsets, psw, argmax,
      lookup(mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq), deterministic,
      weight_grad, psw_grad);
}

void op_embedding_bag_batched_fused_step(
    at::TensorList weights, at::TensorList states1, at::TensorList states2,
    const at::Tensor& grad_output, const at::Tensor& indices, const OptTensor& offsets,
    const OptTensor& psw, const OptTensor& argmax, int64_t mode, int64_t padding_idx,
    int64_t bounds_policy, int64_t fixed_bag_size, int64_t optimizer, double lr, double eps,
    double beta1, double beta2, double weight_decay, int64_t step, int64_t seed,
    bool stochastic_rounding, int64_t scale_grad_by_freq) {
  embedding_bag_batched_fused_step(
      to_vector(weights), to_vector(states1), to_vector(states2), grad_output, indices, offsets,
      psw, argmax, lookup(mode, padding_idx, bounds_policy, fixed_bag_size, scale_grad_by_freq),
      {optimizer, lr, eps, beta1, beta2, weight_decay, step, seed, stochastic_rounding});
}

}  // namespace
}  // namespace spembed_torch

#define SPEMBED_LOOKUP_ARGS "int pooling, int padding_idx, int bounds_policy, int fixed_bag_size"
#define SPEMBED_SCALE_GRAD_ARG "int scale_grad_by_freq=0"
#define SPEMBED_OPTIMIZER_ARGS                                                                 \
  "int optimizer, float lr, float eps, float beta1, float beta2, float weight_decay, int step, " \
  "int seed, bool stochastic_rounding"

TORCH_LIBRARY(spembed, m) {
  // -> (output [bags, dim] or [nnz, dim] for none, argmax [bags, dim] for max else [0])
  m.def("embedding_bag(Tensor weight, Tensor indices, Tensor? offsets, "
        "Tensor? per_sample_weights, " SPEMBED_LOOKUP_ARGS
        ", ScalarType? output_dtype=None, " SPEMBED_SCALE_GRAD_ARG ") -> (Tensor, Tensor)");
  // -> (grad_weight like weight or [0], grad_per_sample_weights [nnz] float32 or [0])
  m.def("embedding_bag_backward(Tensor grad_output, Tensor weight, Tensor indices, "
        "Tensor? offsets, Tensor? per_sample_weights, Tensor? argmax, " SPEMBED_LOOKUP_ARGS
        ", bool deterministic, bool weight_grad, bool per_sample_weights_grad, "
        SPEMBED_SCALE_GRAD_ARG ") -> (Tensor, Tensor)");
  // -> (unique_ids [U] sorted, unique_grads [U, dim] in weight's dtype); U is data-dependent.
  m.def("embedding_bag_backward_sparse(Tensor grad_output, Tensor weight, Tensor indices, "
        "Tensor? offsets, Tensor? per_sample_weights, Tensor? argmax, " SPEMBED_LOOKUP_ARGS
        ", " SPEMBED_SCALE_GRAD_ARG ") -> (Tensor, Tensor)");
  // Applies the optimizer to the touched rows of weight (and its states) in place.
  m.def("embedding_bag_fused_step(Tensor(a!) weight, Tensor(b!)? state1, Tensor(c!)? state2, "
        "Tensor grad_output, Tensor indices, Tensor? offsets, Tensor? per_sample_weights, "
        "Tensor? argmax, " SPEMBED_LOOKUP_ARGS ", " SPEMBED_OPTIMIZER_ARGS
        ", " SPEMBED_SCALE_GRAD_ARG ") -> ()");
  // max_norm: renormalises in place the rows of weight that indices name whose
  // norm_type-norm exceeds max_norm, as torch.embedding_renorm_ (padding rows
  // included); bounds_policy as above. Not differentiable: call it under no_grad.
  m.def("embedding_renorm_(Tensor(a!) weight, Tensor indices, float max_norm, "
        "float norm_type, int bounds_policy) -> ()");
  // -> (output [B, sum of dims], argmax like output for max else [0])
  m.def("embedding_bag_batched(Tensor[] weights, Tensor indices, Tensor? offsets, "
        "Tensor? per_sample_weights, " SPEMBED_LOOKUP_ARGS
        ", ScalarType? output_dtype=None, " SPEMBED_SCALE_GRAD_ARG ") -> (Tensor, Tensor)");
  m.def("embedding_bag_batched_backward(Tensor grad_output, Tensor[] weights, Tensor indices, "
        "Tensor? offsets, Tensor? per_sample_weights, Tensor? argmax, " SPEMBED_LOOKUP_ARGS
        ", bool deterministic, bool weight_grad, bool per_sample_weights_grad, "
        SPEMBED_SCALE_GRAD_ARG ") -> (Tensor[], Tensor)");
  m.def("embedding_bag_batched_fused_step(Tensor(a!)[] weights, Tensor(b!)[] states1, "
        "Tensor(c!)[] states2, Tensor grad_output, Tensor indices, Tensor? offsets, "
        "Tensor? per_sample_weights, Tensor? argmax, " SPEMBED_LOOKUP_ARGS
        ", " SPEMBED_OPTIMIZER_ARGS ", " SPEMBED_SCALE_GRAD_ARG ") -> ()");
  // -> (out like q, lse float32 [heads, total_q]). scale 0: 1/sqrt(head_dim); window < 0: none.
  m.def("varlen_attention(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, "
        "Tensor cu_seqlens_k, bool causal=False, float scale=0., int window_left=-1, "
        "int window_right=-1, int max_seqlen_q=0, int max_seqlen_k=0) -> (Tensor, Tensor)");
  m.def("varlen_attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor out, "
        "Tensor lse, Tensor cu_seqlens_q, Tensor cu_seqlens_k, bool causal, float scale, "
        "int window_left, int window_right, bool deterministic=True) -> (Tensor, Tensor, Tensor)");
  // -> a contiguous copy of a CPU tensor, on transparent huge pages from 2 MiB on (CPU only).
  m.def("to_huge_pages(Tensor src) -> Tensor");
}

// One implementation serves both devices: the tensors' device picks the
// library's CPU or CUDA path.
#define SPEMBED_IMPLS(m)                                                                      \
  m.impl("embedding_bag", &spembed_torch::op_embedding_bag);                                  \
  m.impl("embedding_bag_backward", &spembed_torch::op_embedding_bag_backward);                \
  m.impl("embedding_bag_backward_sparse", &spembed_torch::op_embedding_bag_backward_sparse);  \
  m.impl("embedding_bag_fused_step", &spembed_torch::op_embedding_bag_fused_step);            \
  m.impl("embedding_renorm_", &spembed_torch::embedding_renorm_);                             \
  m.impl("embedding_bag_batched", &spembed_torch::op_embedding_bag_batched);                  \
  m.impl("embedding_bag_batched_backward", &spembed_torch::op_embedding_bag_batched_backward); \
  m.impl("embedding_bag_batched_fused_step",                                                  \
         &spembed_torch::op_embedding_bag_batched_fused_step);                                \
  m.impl("varlen_attention", &spembed_torch::varlen_attention);                               \
  m.impl("varlen_attention_backward", &spembed_torch::varlen_attention_backward)

TORCH_LIBRARY_IMPL(spembed, CPU, m) {
  SPEMBED_IMPLS(m);
  m.impl("to_huge_pages", &spembed_torch::to_huge_pages);
}
TORCH_LIBRARY_IMPL(spembed, CUDA, m) { SPEMBED_IMPLS(m); }
