// CPU implementation of the embedding bag backward: the oracle of the CUDA
// tests and the path used without a GPU.
//
// 1. Every position whose id contributes (not padding, in range) becomes an
//    entry (linearized row, position); MEAN counts each bag's entries.
// 2. The entries are sorted by (row, position) with a stable radix sort on
//    the row (positions start in order): each row's contributions form one
//    run, in increasing position. For MAX only the first position of each
//    bag in a run carries the bag's gradient (a row repeated in a bag gets it
//    once), and since a bag's positions are contiguous, the other positions
//    of that bag directly follow it in the run and are dropped.
// 3. Runs are split over threads (distinct runs write distinct rows). A run
//    is reduced in the documented order: chunks of SPEMBED_BACKWARD_CHUNK
//    contributions, each summed sequentially in float32 from +0, then the
//    chunk sums added in order. The row sum then feeds (a), (b) and (c).
//    Columns are independent: they go in vectors
//    (embedding_bag_backward_cpu_impl.h, compiled per instruction set).
// (d) is computed per position, before (c) updates any weight.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include "kernels/common/cpu_isa.h"
#include "kernels/common/cpu_parallel.h"
#include "kernels/embedding_bag/embedding_bag_backward.h"
#include "kernels/embedding_bag/embedding_bag_backward_cpu_rows.h"
#include "kernels/embedding_bag/optimizer_math.h"

namespace spembed::detail {
namespace {

struct BackwardEntry {
  int64_t key;  // linearized row: row_base of the table + id
  int64_t position;
};

// The sorted entries, their runs and each position's bag: what every
// instruction set's loops share.
class BackwardPlan {
 public:
  template <typename Index>
  void build(const EmbeddingBagBackwardParams& p) {
    p_ = &p;
    none_ = p.pooling == SPEMBED_POOLING_NONE;
    const auto* ids = static_cast<const Index*>(p.indices);
    const auto* offsets = static_cast<const Index*>(p.offsets);
    const int64_t bags = none_ ? p.nnz : p.num_bags();
    if (!none_ && offsets != nullptr) {
      bag_.resize(static_cast<size_t>(p.nnz));
      parallel_for(bags, 1024, [&](int64_t b, int64_t e) {
        for (int64_t g = b; g < e; ++g) {
          const auto first = static_cast<int64_t>(offsets[g]);
          const auto last = static_cast<int64_t>(offsets[g + 1]);
          for (int64_t i = first; i < last; ++i) bag_[static_cast<size_t>(i)] = g;
        }
      });
    }
    if (p.pooling == SPEMBED_POOLING_MEAN) count.assign(static_cast<size_t>(bags), 0);
    std::vector<BackwardEntry> unsorted;
    unsorted.reserve(static_cast<size_t>(p.nnz));
    for (int64_t g = 0; g < bags; ++g) {
      const int64_t first = none_ ? g : bag_begin(offsets, g);
      const int64_t last = none_ ? g + 1 : bag_begin(offsets, g + 1);
      const BackwardTableMeta& t = p.tables[none_ ? 0 : g / p.bags_per_table];
      for (int64_t i = first; i < last; ++i) {
        const auto id = static_cast<int64_t>(ids[i]);
        if (!contributes(id, t)) continue;
        unsorted.push_back(BackwardEntry{t.row_base + id, i});
      }
      if (!count.empty()) {
        count[static_cast<size_t>(g)] = static_cast<int64_t>(unsorted.size());
      }
    }
    if (!count.empty()) {  // running totals -> per-bag counts
      for (size_t g = count.size(); g-- > 1;) count[g] -= count[g - 1];
    }
    radix_sort(std::move(unsorted), p.total_rows);
    if (p.pooling == SPEMBED_POOLING_MAX) drop_repeats_within_bags();
    run_begin.clear();
    for (size_t k = 0; k < entries.size(); ++k) {
      if (k == 0 || entries[k].key != entries[k - 1].key) {
        run_begin.push_back(static_cast<int64_t>(k));
      }
    }
    run_begin.push_back(static_cast<int64_t>(entries.size()));
  }

  int64_t bag_of(int64_t position) const {
    if (none_) return position;
    if (bag_.empty()) return p_->fixed_bag_size > 0 ? position / p_->fixed_bag_size : 0;
    return bag_[static_cast<size_t>(position)];
  }

  bool contributes(int64_t id, const BackwardTableMeta& t) const {
    return !(p_->padding_idx >= 0 && id == p_->padding_idx) && id >= 0 && id < t.rows;
  }

  std::vector<BackwardEntry> entries;  // sorted by (key, position)
  std::vector<int64_t> run_begin;      // runs of equal keys, and the end
  std::vector<int64_t> count;          // MEAN: contributing ids per bag

 private:
  template <typename Index>
  int64_t bag_begin(const Index* offsets, int64_t g) const {
    return offsets ? static_cast<int64_t>(offsets[g]) : g * p_->fixed_bag_size;
  }

  // Least-significant-digit radix sort on the key, 11 bits a pass, over the
  // bits keys below key_end can have. Stable, so positions stay in order.
  void radix_sort(std::vector<BackwardEntry> in, int64_t key_end) {
    constexpr int kBits = 11;
    constexpr size_t kBuckets = size_t{1} << kBits;
    int bits = 0;
    while (bits < 63 && (int64_t{1} << bits) < key_end) ++bits;
    entries.resize(in.size());
    std::vector<size_t> start(kBuckets);
    for (int shift = 0; shift < bits; shift += kBits) {
      std::fill(start.begin(), start.end(), 0);
      for (const BackwardEntry& e : in)
        ++start[static_cast<size_t>(e.key >> shift) & (kBuckets - 1)];
      size_t sum = 0;
      for (size_t& s : start) sum += std::exchange(s, sum);
      for (const BackwardEntry& e : in) {
        entries[start[static_cast<size_t>(e.key >> shift) & (kBuckets - 1)]++] = e;
      }
      in.swap(entries);
    }
    entries.swap(in);
  }

  void drop_repeats_within_bags() {
    size_t kept = 0;
    for (size_t k = 0; k < entries.size(); ++k) {
      if (kept > 0 && entries[kept - 1].key == entries[k].key &&
          bag_of(entries[kept - 1].position) == bag_of(entries[k].position)) {
        continue;
      }
      entries[kept++] = entries[k];
    }
    entries.resize(kept);
  }

  const EmbeddingBagBackwardParams* p_ = nullptr;
  bool none_ = false;
  std::vector<int64_t> bag_;  // with offsets: each position's bag
};

}  // namespace

#define SPEMBED_CPU_ISA_IMPL "kernels/embedding_bag/embedding_bag_backward_cpu_impl.h"
#include "kernels/common/cpu_isa_copies.inc"

namespace {

template <typename Index>
void backward_cpu(const EmbeddingBagBackwardParams& p) {
  BackwardPlan plan;
  plan.build<Index>(p);
  switch (cpu_isa()) {
#if defined(__x86_64__)
    case CpuIsa::kAvx512:
      cpu_avx512::backward<Index>(p, plan);
      break;
    case CpuIsa::kAvx2:
      cpu_avx2::backward<Index>(p, plan);
      break;
#endif
    default:
      cpu_base::backward<Index>(p, plan);
      break;
  }
  if (p.num_unique != nullptr) p.num_unique[0] = static_cast<int64_t>(plan.run_begin.size()) - 1;
}

}  // namespace

void embedding_bag_backward_cpu(const EmbeddingBagBackwardParams& p) {
  if (p.table_dtype == DType::kF64) {
    embedding_bag_backward_cpu_f64(p);  // float64 gradients and states
    return;
  }
  if (p.index_type == IndexType::kI32) {
    backward_cpu<int32_t>(p);
  } else {
    backward_cpu<int64_t>(p);
  }
}

}  // namespace spembed::detail
