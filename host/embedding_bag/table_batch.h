// The opaque object behind spembed_table_batch_t.
#pragma once

#include <vector>

#include "kernels/embedding_bag/embedding_bag_params.h"
#include "spembed/spembed.h"

struct spembed_table_batch_st {
  spembed_handle_t handle = nullptr;
  DLDevice device{};
  spembed::detail::DType dtype{};
  std::vector<spembed::detail::TableMeta> tables;       // host copy, used by validation and CPU
  spembed::detail::TableMeta* device_tables = nullptr;  // CUDA copy of `tables`
  int64_t total_dim = 0;
  int32_t max_dim = 0;
  bool rows_16b_aligned = false;
};
