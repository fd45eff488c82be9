// CPU implementation of the embedding bag forward: the oracle of the CUDA
// tests and the path used without a GPU. Bags are split over threads; within a
// bag, rows are accumulated in float32 (float64 for float64 tables) in the
// order of the ids, which is the order the CUDA kernels use too.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/common/accumulate.h"
#include "kernels/common/cpu_parallel.h"
#include "kernels/common/host_half.h"
#include "kernels/embedding_bag/embedding_bag_forward.h"

namespace spembed::detail {
namespace {

// float16 -> float through a 256 KiB table built once: the bit-twiddling
// conversion has branches for subnormals and specials, and made the fp16 CPU
// path ~10x slower than fp32.
const std::vector<float> g_half_to_float = [] {
  std::vector<float> t(65536);
  for (uint32_t h = 0; h < 65536; ++h) t[h] = half_to_float(static_cast<uint16_t>(h));
  return t;
}();

// Element loads and stores; the dtype is a template argument so the inner
// loops carry no switch.
template <DType kType>
typename AccumulatorOf<kType>::type load(const void* base, int64_t i) {
  if constexpr (kType == DType::kF64) return static_cast<const double*>(base)[i];
  if constexpr (kType == DType::kF32) return static_cast<const float*>(base)[i];
  if constexpr (kType == DType::kF16) return g_half_to_float[static_cast<const uint16_t*>(base)[i]];
  if constexpr (kType == DType::kBF16) return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
}

template <DType kType, typename Acc>
void store(void* base, int64_t i, Acc v) {
  if constexpr (kType == DType::kF64) static_cast<double*>(base)[i] = v;
  if constexpr (!std::is_same_v<Acc, float>) return;  // a float64 table's output is float64
  if constexpr (kType == DType::kF32) static_cast<float*>(base)[i] = v;
  if constexpr (kType == DType::kF16) static_cast<uint16_t*>(base)[i] = float_to_half(v);
  if constexpr (kType == DType::kBF16) static_cast<uint16_t*>(base)[i] = float_to_bf16(v);
}

// Calls fn(std::integral_constant<DType, t>{}) for the runtime dtype t.
template <typename Fn>
void dispatch_dtype(DType t, Fn&& fn) {
  switch (t) {
    case DType::kF32:
      fn(std::integral_constant<DType, DType::kF32>{});
      break;
    case DType::kF16:
      fn(std::integral_constant<DType, DType::kF16>{});
      break;
    case DType::kBF16:
      fn(std::integral_constant<DType, DType::kBF16>{});
      break;
    case DType::kF64:
      fn(std::integral_constant<DType, DType::kF64>{});
      break;
  }
}

template <typename Index, DType kTable, DType kOut>
class ForwardCpu {
  using Acc = typename AccumulatorOf<kTable>::type;

 public:
  explicit ForwardCpu(const EmbeddingBagForwardParams& p)
      : p_(p),
        ids_(static_cast<const Index*>(p.indices)),
        offsets_(static_cast<const Index*>(p.offsets)),
        weights_(static_cast<const Acc*>(p.weights)) {}

  void run() const {
    // Thresholds keep thread start-up (~tens of microseconds) below the work.
    if (p_.pooling == SPEMBED_POOLING_NONE) {
      parallel_for(p_.nnz, 4096, [&](int64_t begin, int64_t end) { gather(begin, end); });
    } else {
      parallel_for(p_.num_bags(), 256, [&](int64_t begin, int64_t end) { pool(begin, end); });
    }
  }

 private:
  // Row of `id` in table `t`, or null when the id contributes nothing
  // (padding, or out of range under SKIP; ERROR was rejected before).
  const void* row(const TableMeta& t, int64_t id) const {
    if ((p_.padding_idx >= 0 && id == p_.padding_idx) || id < 0 || id >= t.rows) return nullptr;
    const char* base = static_cast<const char*>(t.data);
    return base + id * t.row_stride * dtype_bytes(p_.table_dtype);
  }

  void gather(int64_t begin, int64_t end) const {
    const TableMeta& t = p_.tables[0];
    for (int64_t i = begin; i < end; ++i) {
      const void* r = row(t, static_cast<int64_t>(ids_[i]));
      const Acc w = weights_ ? weights_[i] : Acc(1);
      const int64_t out = i * p_.out_row_stride;
      for (int32_t d = 0; d < t.dim; ++d) {
        const Acc v = r ? (weights_ ? w * load<kTable>(r, d) : load<kTable>(r, d)) : Acc(0);
        store<kOut>(p_.output, out + d, v);
      }
    }
  }

  void pool(int64_t begin, int64_t end) const {
    std::vector<Acc> acc(static_cast<size_t>(p_.max_dim));
    std::vector<int64_t> arg(static_cast<size_t>(p_.max_dim));
    const bool is_max = p_.pooling == SPEMBED_POOLING_MAX;
    for (int64_t g = begin; g < end; ++g) {
      const TableMeta& t = p_.tables[g / p_.bags_per_table];
      const int64_t out_row = g % p_.bags_per_table;
      const int64_t first = offsets_ ? static_cast<int64_t>(offsets_[g]) : g * p_.fixed_bag_size;
      const int64_t last =
          offsets_ ? static_cast<int64_t>(offsets_[g + 1]) : first + p_.fixed_bag_size;
      std::fill(acc.begin(), acc.begin() + t.dim, Acc(0));
      std::fill(arg.begin(), arg.begin() + t.dim, int64_t{-1});
      int64_t count = 0;
      for (int64_t i = first; i < last; ++i) {
        const int64_t id = static_cast<int64_t>(ids_[i]);
        const void* r = row(t, id);
        if (r == nullptr) continue;
        ++count;
        if (is_max) {
          for (int32_t d = 0; d < t.dim; ++d) {
            const Acc v = load<kTable>(r, d);
            // The first pooled row sets the max; later rows replace it only
            // when strictly greater, so ties keep the earlier row.
            if (count == 1 || v > acc[d]) {
              acc[d] = v;
              arg[d] = id;
            }
          }
        } else if (weights_) {
          const Acc w = weights_[i];
          for (int32_t d = 0; d < t.dim; ++d) acc[d] += w * load<kTable>(r, d);
        } else {
          for (int32_t d = 0; d < t.dim; ++d) acc[d] += load<kTable>(r, d);
        }
      }
      const bool mean = p_.pooling == SPEMBED_POOLING_MEAN && count > 0;
      const int64_t out = out_row * p_.out_row_stride + t.out_col;
      for (int32_t d = 0; d < t.dim; ++d) {
        Acc v = count == 0 ? Acc(0) : acc[d];
        if (mean) v = v / static_cast<Acc>(count);
        store<kOut>(p_.output, out + d, v);
      }
      if (is_max && p_.argmax != nullptr) {
        Index* argmax = static_cast<Index*>(p_.argmax) + out_row * p_.argmax_row_stride + t.out_col;
        for (int32_t d = 0; d < t.dim; ++d) argmax[d] = static_cast<Index>(arg[d]);
      }
    }
  }

  const EmbeddingBagForwardParams& p_;
  const Index* ids_;
  const Index* offsets_;
  const Acc* weights_;
};

}  // namespace

void embedding_bag_forward_cpu(const EmbeddingBagForwardParams& p) {
  dispatch_dtype(p.table_dtype, [&](auto table) {
    dispatch_dtype(p.out_dtype, [&](auto out) {
      if (p.index_type == IndexType::kI32) {
        ForwardCpu<int32_t, table.value, out.value>(p).run();
      } else {
        ForwardCpu<int64_t, table.value, out.value>(p).run();
      }
    });
  });
}

}  // namespace spembed::detail
