// The embedding bag ops on at::Tensor (CPU and CUDA). Argument meanings are
// those of the schemas in register.cpp.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>
#include <vector>

namespace spembed_torch {

// The lookup options every embedding bag op takes (see spembed.h):
// mode a spembed_pooling_t (0 sum, 1 mean, 2 max, 3 none); padding_idx < 0
// for none; bounds_policy a spembed_bounds_policy_t (0 error, 1 skip);
// fixed_bag_size > 0 with offsets None; scale_grad_by_freq non-zero divides
// each row's gradient by its number of ids in the call (backward only: the
// forward ignores it). The schemas take int64_t; the ops check the range and
// cast (make_options). Python: spembed/_enums.py.
struct LookupArgs {
  int64_t mode;
  int64_t padding_idx;
  int64_t bounds_policy;
  int64_t fixed_bag_size;
  int64_t scale_grad_by_freq = 0;
};

// optimizer a spembed_optimizer_t (0 sgd, 1 adagrad, 2 rowwise adagrad, 3 adam).
struct OptimizerArgs {
  int64_t optimizer;
  double lr, eps, beta1, beta2, weight_decay;
  int64_t step;
  int64_t seed;
  bool stochastic_rounding;
};

std::tuple<at::Tensor, at::Tensor> embedding_bag(const at::Tensor& weight,
                                                 const at::Tensor& indices,
                                                 const std::optional<at::Tensor>& offsets,
                                                 const std::optional<at::Tensor>& psw,
                                                 const LookupArgs& a,
                                                 std::optional<at::ScalarType> output_dtype);

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward(
    const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets, const std::optional<at::Tensor>& psw,
    const std::optional<at::Tensor>& argmax, const LookupArgs& a, bool deterministic,
    bool weight_grad, bool psw_grad);

std::tuple<at::Tensor, at::Tensor> embedding_bag_backward_sparse(
    const at::Tensor& grad_output, const at::Tensor& weight, const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets, const std::optional<at::Tensor>& psw,
    const std::optional<at::Tensor>& argmax, const LookupArgs& a);

void embedding_bag_fused_step(const at::Tensor& weight, const std::optional<at::Tensor>& state1,
                              const std::optional<at::Tensor>& state2,
                              const at::Tensor& grad_output, const at::Tensor& indices,
                              const std::optional<at::Tensor>& offsets,
                              const std::optional<at::Tensor>& psw,
                              const std::optional<at::Tensor>& argmax, const LookupArgs& a,
                              const OptimizerArgs& o);

std::tuple<at::Tensor, at::Tensor> embedding_bag_batched(
    const std::vector<at::Tensor>& weights, const at::Tensor& indices,
    const std::optional<at::Tensor>& offsets, const std::optional<at::Tensor>& psw,
    const LookupArgs& a, std::optional<at::ScalarType> output_dtype);

std::tuple<std::vector<at::Tensor>, at::Tensor> embedding_bag_batched_backward(
    const at::Tensor& grad_output, const std::vector<at::Tensor>& weights,
    const at::Tensor& indices, const std::optional<at::Tensor>& offsets,
    const std::optional<at::Tensor>& psw, const std::optional<at::Tensor>& argmax,
    const LookupArgs& a, bool deterministic, bool weight_grad, bool psw_grad);

void embedding_bag_batched_fused_step(const std::vector<at::Tensor>& weights,
                                      const std::vector<at::Tensor>& states1,
                                      const std::vector<at::Tensor>& states2,
                                      const at::Tensor& grad_output, const at::Tensor& indices,
                                      const std::optional<at::Tensor>& offsets,
                                      const std::optional<at::Tensor>& psw,
                                      const std::optional<at::Tensor>& argmax,
                                      const LookupArgs& a, const OptimizerArgs& o);

// max_norm: renormalises, in place, each distinct row of weight that a valid
// id of indices (any shape, int32 / int64) names and whose norm_type-norm
// exceeds max_norm, as torch.embedding_renorm_ (spembed_embedding_renorm).
// A weight whose rows are not compact (last stride != 1, or rows overlapping)
// is renormalised in a compact copy that is then copied back into it.
void embedding_renorm_(const at::Tensor& weight, const at::Tensor& indices, double max_norm,
                       double norm_type, int64_t bounds_policy);

// Varlen attention (attention_ops.cpp). scale 0 means 1/sqrt(head_dim);
// window_left / window_right < 0 mean unlimited.
std::tuple<at::Tensor, at::Tensor> varlen_attention(const at::Tensor& q, const at::Tensor& k,
                                                    const at::Tensor& v,
                                                    const at::Tensor& cu_seqlens_q,
                                                    const at::Tensor& cu_seqlens_k, bool causal,
                                                    double scale, int64_t window_left,
                                                    int64_t window_right, int64_t max_seqlen_q,
                                                    int64_t max_seqlen_k);

std::tuple<at::Tensor, at::Tensor, at::Tensor> varlen_attention_backward(
    const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
    const at::Tensor& out, const at::Tensor& lse, const at::Tensor& cu_seqlens_q,
    const at::Tensor& cu_seqlens_k, bool causal, double scale, int64_t window_left,
    int64_t window_right, bool deterministic);

}  // namespace spembed_torch
