// spembed C++ API: RAII owners and exceptions over the C API in spembed.h.
// Header-only; every function calls exactly one C function.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#include "spembed/spembed.h"

namespace spembed {

// Thrown for every status other than SUCCESS; what() is the library's message.
class Error : public std::runtime_error {
 public:
  Error(spembed_status_t status, const std::string& message)
      : std::runtime_error(std::string(spembed_status_string(status)) + ": " + message),
        status_(status) {}
  spembed_status_t status() const noexcept { return status_; }

 private:
  spembed_status_t status_;
};

inline void check(spembed_status_t status) {
  if (status != SPEMBED_STATUS_SUCCESS) throw Error(status, spembed_last_error());
}

inline int version() { return spembed_get_version(); }

// Throws the failure a report (copied to the host) records, if any.
inline void check_report(const int64_t (&report)[SPEMBED_REPORT_SIZE]) {
  check(spembed_report_status(report));
}

struct EmbeddingBagOptions : spembed_embedding_bag_options_t {
  EmbeddingBagOptions() { spembed_embedding_bag_options_init(this); }
  EmbeddingBagOptions& with_pooling(spembed_pooling_t p) { pooling = p; return *this; }
  EmbeddingBagOptions& with_padding_idx(int64_t i) { padding_idx = i; return *this; }
  EmbeddingBagOptions& with_bounds_policy(spembed_bounds_policy_t b) { bounds_policy = b; return *this; }
  EmbeddingBagOptions& with_fixed_bag_size(int64_t l) { fixed_bag_size = l; return *this; }
};

// Optional arguments of the forward ops, by name.
struct ForwardExtras {
  const DLTensor* offsets = nullptr;
  const DLTensor* per_sample_weights = nullptr;
  DLTensor* argmax = nullptr;
  DLTensor* report = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  spembed_stream_t stream = nullptr;
};

struct OptimizerOptions : spembed_optimizer_options_t {
  OptimizerOptions() { spembed_optimizer_options_init(this); }
  OptimizerOptions& with_optimizer(spembed_optimizer_t o) { optimizer = o; return *this; }
  OptimizerOptions& with_learning_rate(float lr) { learning_rate = lr; return *this; }
  OptimizerOptions& with_eps(float e) { eps = e; return *this; }
  OptimizerOptions& with_betas(float b1, float b2) { beta1 = b1; beta2 = b2; return *this; }
  OptimizerOptions& with_weight_decay(float wd) { weight_decay = wd; return *this; }
  OptimizerOptions& with_step(int64_t t) { step = t; return *this; }
  OptimizerOptions& with_stochastic_rounding(uint64_t s) {
    stochastic_rounding = 1;
    seed = s;
    return *this;
  }
};

// Inputs and outputs of the backward ops: the C structs, value-initialised
// ({}) to all NULL, then filled by name.
using EmbeddingBagBackwardArgs = spembed_embedding_bag_backward_args_t;
using EmbeddingBagBatchedBackwardArgs = spembed_embedding_bag_batched_backward_args_t;

// Optional arguments of the backward ops, by name.
struct BackwardExtras {
  spembed_backward_algorithm_t algorithm = SPEMBED_BACKWARD_DETERMINISTIC;
  DLTensor* report = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  spembed_stream_t stream = nullptr;
};

class TableBatch;

class Handle {
 public:
  Handle() { check(spembed_create(&handle_)); }
  ~Handle() {
    if (handle_ != nullptr) spembed_destroy(handle_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Handle& operator=(Handle&& other) noexcept {
    std::swap(handle_, other.handle_);
    return *this;
  }

  spembed_handle_t get() const noexcept { return handle_; }
  int cuda_device() const {
    int device = -1;
    check(spembed_handle_device(handle_, &device));
    return device;
  }
  size_t forward_workspace_size(DLDeviceType device) const {
    size_t bytes = 0;
    check(spembed_embedding_bag_forward_workspace_size(handle_, device, &bytes));
    return bytes;
  }

  size_t backward_workspace_size(
      DLDeviceType device, DLDataType index_dtype, int64_t nnz, int64_t rows, int64_t dim,
      spembed_backward_algorithm_t algorithm = SPEMBED_BACKWARD_DETERMINISTIC) const {
    size_t bytes = 0;
    check(spembed_embedding_bag_backward_workspace_size(handle_, device, index_dtype, nnz, rows,
                                                        dim, algorithm, &bytes));
    return bytes;
  }
  inline size_t batched_backward_workspace_size(
      const TableBatch& batch, DLDataType index_dtype, int64_t nnz,
      spembed_backward_algorithm_t algorithm = SPEMBED_BACKWARD_DETERMINISTIC) const;

  void embedding_bag_forward(const DLTensor& table, const DLTensor& indices, DLTensor& output,
                             const EmbeddingBagOptions& options = {},
                             const ForwardExtras& extras = {}) const {
    check(spembed_embedding_bag_forward(handle_, &table, &indices, extras.offsets,
                                        extras.per_sample_weights, &options, &output,
                                        extras.argmax, extras.report, extras.workspace,
                                        extras.workspace_bytes, extras.stream));
  }

  inline void embedding_bag_batched_forward(const TableBatch& batch, const DLTensor& indices,
                                            DLTensor& output,
                                            const EmbeddingBagOptions& options = {},
                                            const ForwardExtras& extras = {}) const;

  void embedding_bag_backward(const EmbeddingBagBackwardArgs& args,
                              const EmbeddingBagOptions& options = {},
                              const BackwardExtras& extras = {}) const {
    check(spembed_embedding_bag_backward(handle_, &args, &options, extras.algorithm,
                                         extras.report, extras.workspace,
                                         extras.workspace_bytes, extras.stream));
  }

  inline void embedding_bag_batched_backward(const TableBatch& batch,
                                             const EmbeddingBagBatchedBackwardArgs& args,
                                             const EmbeddingBagOptions& options = {},
                                             const BackwardExtras& extras = {}) const;

 private:
  spembed_handle_t handle_ = nullptr;
};

class TableBatch {
 public:
  TableBatch(const Handle& handle, const DLTensor* tables, int64_t num_tables) {
    check(spembed_table_batch_create(handle.get(), tables, num_tables, &batch_));
  }
  ~TableBatch() {
    if (batch_ != nullptr) spembed_table_batch_destroy(batch_);
  }
  TableBatch(const TableBatch&) = delete;
  TableBatch& operator=(const TableBatch&) = delete;
  TableBatch(TableBatch&& other) noexcept : batch_(std::exchange(other.batch_, nullptr)) {}
  TableBatch& operator=(TableBatch&& other) noexcept {
    std::swap(batch_, other.batch_);
    return *this;
  }

  spembed_table_batch_t get() const noexcept { return batch_; }
  int64_t total_dim() const {
    int64_t dim = 0;
    check(spembed_table_batch_total_dim(batch_, &dim));
    return dim;
  }

 private:
  spembed_table_batch_t batch_ = nullptr;
};

inline void Handle::embedding_bag_batched_forward(const TableBatch& batch,
                                                  const DLTensor& indices, DLTensor& output,
                                                  const EmbeddingBagOptions& options,
                                                  const ForwardExtras& extras) const {
  check(spembed_embedding_bag_batched_forward(
      handle_, batch.get(), &indices, extras.offsets, extras.per_sample_weights, &options,
      &output, extras.argmax, extras.report, extras.workspace, extras.workspace_bytes,
      extras.stream));
}

inline size_t Handle::batched_backward_workspace_size(
    const TableBatch& batch, DLDataType index_dtype, int64_t nnz,
    spembed_backward_algorithm_t algorithm) const {
  size_t bytes = 0;
  check(spembed_embedding_bag_batched_backward_workspace_size(handle_, batch.get(), index_dtype,
                                                              nnz, algorithm, &bytes));
  return bytes;
}

inline void Handle::embedding_bag_batched_backward(const TableBatch& batch,
                                                   const EmbeddingBagBatchedBackwardArgs& args,
                                                   const EmbeddingBagOptions& options,
                                                   const BackwardExtras& extras) const {
  check(spembed_embedding_bag_batched_backward(handle_, batch.get(), &args, &options,
                                               extras.algorithm, extras.report, extras.workspace,
                                               extras.workspace_bytes, extras.stream));
}

}  // namespace spembed

// ---- varlen attention ----------------------------------------------------------
namespace spembed {

struct AttentionOptions : spembed_attention_options_t {
  AttentionOptions() { spembed_attention_options_init(this); }
  AttentionOptions& with_mask(spembed_attention_mask_t m) { mask = m; return *this; }
  AttentionOptions& with_causal() { mask = SPEMBED_ATTENTION_MASK_CAUSAL; return *this; }
  AttentionOptions& with_window(int64_t left, int64_t right) {
    window_left = left;
    window_right = right;
    return *this;
  }
  AttentionOptions& with_scale(float s) { scale = s; return *this; }
  AttentionOptions& with_max_seqlens(int64_t q, int64_t k) {
    max_seqlen_q = q;
    max_seqlen_k = k;
    return *this;
  }
};

// Optional arguments of the attention ops, by name.
struct AttentionExtras {
  DLTensor* report = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  spembed_stream_t stream = nullptr;
};

inline size_t varlen_attention_forward_workspace_size(const Handle& handle, DLDeviceType device,
                                                      int64_t batch, int64_t total_q,
                                                      int64_t heads) {
  size_t bytes = 0;
  check(spembed_varlen_attention_forward_workspace_size(handle.get(), device, batch, total_q,
                                                        heads, &bytes));
  return bytes;
}

inline size_t varlen_attention_backward_workspace_size(const Handle& handle, DLDeviceType device,
                                                       int64_t batch, int64_t total_q,
                                                       int64_t heads) {
  size_t bytes = 0;
  check(spembed_varlen_attention_backward_workspace_size(handle.get(), device, batch, total_q,
                                                         heads, &bytes));
  return bytes;
}

// `lse` may be NULL.
inline void varlen_attention_forward(const Handle& handle, const DLTensor& q, const DLTensor& k,
                                     const DLTensor& v, const DLTensor& cu_seqlens_q,
                                     const DLTensor& cu_seqlens_k, DLTensor& out, DLTensor* lse,
                                     const AttentionOptions& options = {},
                                     const AttentionExtras& extras = {}) {
  check(spembed_varlen_attention_forward(handle.get(), &q, &k, &v, &cu_seqlens_q, &cu_seqlens_k,
                                         &options, &out, lse, extras.report, extras.workspace,
                                         extras.workspace_bytes, extras.stream));
}

inline void varlen_attention_backward(const Handle& handle, const DLTensor& q, const DLTensor& k,
                                      const DLTensor& v, const DLTensor& out,
                                      const DLTensor& dout, const DLTensor& lse,
                                      const DLTensor& cu_seqlens_q, const DLTensor& cu_seqlens_k,
                                      DLTensor& dq, DLTensor& dk, DLTensor& dv,
                                      const AttentionOptions& options = {},
                                      bool deterministic = true,
                                      const AttentionExtras& extras = {}) {
  check(spembed_varlen_attention_backward(
      handle.get(), &q, &k, &v, &out, &dout, &lse, &cu_seqlens_q, &cu_seqlens_k, &options,
      deterministic ? 1 : 0, &dq, &dk, &dv, extras.report, extras.workspace,
      extras.workspace_bytes, extras.stream));
}

}  // namespace spembed
