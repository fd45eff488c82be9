// (a) and (b) of one reduced row, shared by the CPU backward's vectorized
// loops (float32 gradients) and its float64-table loops: add the row's
// gradient g to the dense gradient, and write the row-sparse entry u.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/embedding_bag/embedding_bag_backward_params.h"

namespace spembed::detail {

template <typename Acc>  // float, or double for float64 tables
void write_row_gradients(const EmbeddingBagBackwardParams& p, int64_t u, int64_t key,
                         const BackwardTableMeta& t, const Acc* g) {
  const int32_t dim = t.dim;
  if (t.grad_table != nullptr) {
    Acc* out = static_cast<Acc*>(t.grad_table) + (key - t.row_base) * t.grad_table_stride;
    for (int32_t d = 0; d < dim; ++d) out[d] = out[d] + g[d];
  }
  if (p.unique_ids != nullptr) {
    if (p.num_tables > 1 || p.index_type == IndexType::kI64) {
      static_cast<int64_t*>(p.unique_ids)[u] = key;
    } else {
      static_cast<int32_t*>(p.unique_ids)[u] = static_cast<int32_t>(key);
    }
    Acc* out = static_cast<Acc*>(p.unique_grads) + u * p.unique_grads_stride;
    std::copy(g, g + dim, out);
    std::fill(out + dim, out + p.max_dim, Acc(0));
  }
}

}  // namespace spembed::detail
