// CPU backward of float64 tables (embedding_bag_backward_cpu.cpp sends them
// here): scalar loops in which every sum, gradient, per-sample weight and
// optimizer state is float64. The vectorized loops of the other dtypes keep
// float32 states; this file keeps float64 out of them.
//
// 1. Every position whose id contributes (not padding, in range) becomes an
//    entry (linearized row, position, bag); MEAN counts each bag's entries.
// 2. The entries are sorted by (row, position): each row's contributions
//    form one run, in increasing position. For MAX only the first position of
//    each bag in a run carries the bag's gradient (a row repeated in a bag
//    gets it once), and since a bag's positions are contiguous, the other
//    positions of that bag directly follow it in the run and are dropped.
// 3. Runs are split over threads (distinct runs write distinct rows). A run
//    is reduced in the documented order: chunks of SPEMBED_BACKWARD_CHUNK
//    contributions, each summed sequentially in float64 from +0, then the
//    chunk sums added in order. The row sum then feeds (a), (b) and (c).
// (d) is computed per position, before (c) updates any weight.
#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "kernels/common/accumulate.h"
#include "kernels/common/cpu_parallel.h"
#include "kernels/common/host_half.h"
#include "kernels/embedding_bag/embedding_bag_backward.h"
#include "kernels/embedding_bag/embedding_bag_backward_cpu_rows.h"
#include "kernels/embedding_bag/optimizer_math.h"

namespace spembed::detail {
namespace {

// As the accumulation type Acc.
template <typename Acc>
Acc load(DType type, const void* base, int64_t i) {
  switch (type) {
    case DType::kF64:
      return static_cast<Acc>(static_cast<const double*>(base)[i]);
    case DType::kF16:
      return half_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::kBF16:
      return bf16_to_float(static_cast<const uint16_t*>(base)[i]);
    case DType::kF32:
      break;
  }
  return static_cast<const float*>(base)[i];
}

// Stores an updated weight (float64: no rounding, so stochastic rounding
// does not apply).
void store_weight(DType type, void* base, int64_t i, double v, bool, uint64_t, int64_t, int32_t) {
  static_cast<double*>(base)[i] = v;  // float64 tables only
}

struct Entry {
  int64_t key;  // linearized row: row_base of the table + id
  int64_t position;
  int64_t bag;
};

template <typename Index, typename Acc>
class BackwardCpu {
 public:
  explicit BackwardCpu(const EmbeddingBagBackwardParams& p)
      : p_(p),
        ids_(static_cast<const Index*>(p.indices)),
        offsets_(static_cast<const Index*>(p.offsets)),
        weights_(static_cast<const Acc*>(p.weights)),
        none_(p.pooling == SPEMBED_POOLING_NONE) {}

  void run() {
    collect();
    if (p_.grad_weights != nullptr) {
      parallel_for(p_.nnz, 4096, [&](int64_t b, int64_t e) { weight_grads(b, e); });
    }
    std::sort(entries_.begin(), entries_.end(), [](const Entry& a, const Entry& b) {
      return a.key < b.key || (a.key == b.key && a.position < b.position);
    });
    if (p_.pooling == SPEMBED_POOLING_MAX) drop_repeats_within_bags();
    find_runs();
    const int64_t runs = static_cast<int64_t>(run_begin_.size()) - 1;
    parallel_for(runs, 256, [&](int64_t b, int64_t e) { reduce_runs(b, e); });
    if (p_.num_unique != nullptr) p_.num_unique[0] = runs;
  }

 private:
  int64_t table_of_bag(int64_t bag) const { return none_ ? 0 : bag / p_.bags_per_table; }
  int64_t out_row_of_bag(int64_t bag) const { return none_ ? bag : bag % p_.bags_per_table; }
  const BackwardTableMeta& table(int64_t t) const { return p_.tables[t]; }

  bool contributes(int64_t id, const BackwardTableMeta& t) const {
    return !(p_.padding_idx >= 0 && id == p_.padding_idx) && id >= 0 && id < t.rows;
  }

  int64_t bag_begin(int64_t bag) const {
    return offsets_ ? static_cast<int64_t>(offsets_[bag]) : bag * p_.fixed_bag_size;
  }

  // Entries of the contributing positions, and each bag of each position.
  void collect() {
    const int64_t bags = none_ ? p_.nnz : p_.num_bags();
    bag_of_.assign(static_cast<size_t>(p_.nnz), 0);
    count_.assign(static_cast<size_t>(bags), 0);
    entries_.reserve(static_cast<size_t>(p_.nnz));
    for (int64_t g = 0; g < bags; ++g) {
      const int64_t begin = none_ ? g : bag_begin(g);
      const int64_t end = none_ ? g + 1 : bag_begin(g + 1);
      const BackwardTableMeta& t = table(table_of_bag(g));
      for (int64_t i = begin; i < end; ++i) {
        bag_of_[static_cast<size_t>(i)] = g;
        const int64_t id = static_cast<int64_t>(ids_[i]);
        if (!contributes(id, t)) continue;
        entries_.push_back(Entry{t.row_base + id, i, g});
        ++count_[static_cast<size_t>(g)];
      }
    }
  }

  void drop_repeats_within_bags() {
    size_t kept = 0;
    for (size_t k = 0; k < entries_.size(); ++k) {
      if (kept > 0 && entries_[kept - 1].key == entries_[k].key &&
          entries_[kept - 1].bag == entries_[k].bag) {
        continue;
      }
      entries_[kept++] = entries_[k];
    }
    entries_.resize(kept);
  }

  void find_runs() {
    run_begin_.clear();
    for (size_t k = 0; k < entries_.size(); ++k) {
      if (k == 0 || entries_[k].key != entries_[k - 1].key) {
        run_begin_.push_back(static_cast<int64_t>(k));
      }
    }
    run_begin_.push_back(static_cast<int64_t>(entries_.size()));
  }

  Acc grad_out(int64_t out_row, int64_t column) const {
    return load<Acc>(p_.grad_dtype, p_.grad_output, out_row * p_.grad_row_stride + column);
  }

  // Adds the contribution of entry `e` to column d to `acc`.
  Acc accumulate(Acc acc, const Entry& e, const BackwardTableMeta& t, int32_t d) const {
    const int64_t r = out_row_of_bag(e.bag);
    const int64_t column = none_ ? d : t.grad_col + d;
    const Acc go = grad_out(r, column);
    switch (p_.pooling) {
      case SPEMBED_POOLING_MEAN:
        return acc + go / static_cast<Acc>(count_[static_cast<size_t>(e.bag)]);
      case SPEMBED_POOLING_MAX: {
        const auto* argmax = static_cast<const Index*>(p_.argmax);
        const int64_t winner = static_cast<int64_t>(argmax[r * p_.argmax_row_stride + column]);
        return winner == e.key - t.row_base ? acc + go : acc + Acc(0);
      }
      case SPEMBED_POOLING_SUM:
      case SPEMBED_POOLING_NONE:
        break;
    }
    return weights_ ? acc + weights_[e.position] * go : acc + go;
  }

  void reduce_runs(int64_t first_run, int64_t end_run) const {
    std::vector<Acc> sum(static_cast<size_t>(p_.max_dim));
    std::vector<Acc> chunk(static_cast<size_t>(p_.max_dim));
    for (int64_t u = first_run; u < end_run; ++u) {
      const int64_t begin = run_begin_[static_cast<size_t>(u)];
      const int64_t end = run_begin_[static_cast<size_t>(u) + 1];
      const Entry& head = entries_[static_cast<size_t>(begin)];
      const BackwardTableMeta& t = table(table_of_bag(head.bag));
      const int32_t dim = t.dim;
      for (int64_t c = begin; c < end; c += SPEMBED_BACKWARD_CHUNK) {
        const int64_t c_end = std::min<int64_t>(end, c + SPEMBED_BACKWARD_CHUNK);
        std::fill(chunk.begin(), chunk.begin() + dim, Acc(0));
        for (int64_t k = c; k < c_end; ++k) {
          const Entry& e = entries_[static_cast<size_t>(k)];
          for (int32_t d = 0; d < dim; ++d) chunk[d] = accumulate(chunk[d], e, t, d);
        }
        if (c == begin) {
          std::copy(chunk.begin(), chunk.begin() + dim, sum.begin());
        } else {
          for (int32_t d = 0; d < dim; ++d) sum[d] = sum[d] + chunk[d];
        }
      }
      if (p_.scale_grad_by_freq) {
        const auto frequency = static_cast<Acc>(end - begin);
        for (int32_t d = 0; d < dim; ++d) sum[d] = sum[d] / frequency;
      }
      write_row(u, head.key, t, sum.data());
    }
  }

  void write_row(int64_t u, int64_t key, const BackwardTableMeta& t, const Acc* g) const {
    write_row_gradients(p_, u, key, t, g);
    if (p_.has_optimizer) step(key, key - t.row_base, t, g);
  }

  void step(int64_t key, int64_t row, const BackwardTableMeta& t, const Acc* g) const {
    const spembed_optimizer_options_t& o = p_.optimizer;
    const int64_t base = row * t.weight_stride;
    const bool sr = o.stochastic_rounding != 0;
    auto weight = [&](int32_t d) { return load<Acc>(p_.table_dtype, t.weights, base + d); };
    auto store = [&](int32_t d, Acc w) {
      store_weight(p_.table_dtype, t.weights, base + d, w, sr, o.seed, key, d);
    };
    switch (o.optimizer) {
      case SPEMBED_OPTIMIZER_SGD:
        for (int32_t d = 0; d < t.dim; ++d) {
          const Acc w = weight(d);
          store(d, opt_sgd(w, opt_decayed_grad(g[d], w, o.weight_decay), o.learning_rate));
        }
        break;
      case SPEMBED_OPTIMIZER_ADAGRAD: {
        Acc* s = static_cast<Acc*>(t.state1) + row * t.state1_stride;
        for (int32_t d = 0; d < t.dim; ++d) {
          const Acc w = weight(d);
          const Acc gp = opt_decayed_grad(g[d], w, o.weight_decay);
          store(d, opt_adagrad(w, gp, s[d], o.learning_rate, o.eps));
        }
        break;
      }
      case SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD: {
        Acc& s = static_cast<Acc*>(t.state1)[row * t.state1_stride];
        Acc squares = 0;
        for (int32_t d = 0; d < t.dim; ++d) {
          squares = opt_rowwise_square_accumulate(
              squares, opt_decayed_grad(g[d], weight(d), o.weight_decay));
        }
        s = opt_rowwise_state(s, squares, t.dim);
        for (int32_t d = 0; d < t.dim; ++d) {
          const Acc w = weight(d);
          const Acc gp = opt_decayed_grad(g[d], w, o.weight_decay);
          store(d, opt_rowwise_adagrad(w, gp, s, o.learning_rate, o.eps));
        }
        break;
      }
      case SPEMBED_OPTIMIZER_ADAM: {
        Acc* m = static_cast<Acc*>(t.state1) + row * t.state1_stride;
        Acc* v = static_cast<Acc*>(t.state2) + row * t.state2_stride;
        for (int32_t d = 0; d < t.dim; ++d) {
          const Acc w = weight(d);
          const Acc gp = opt_decayed_grad(g[d], w, o.weight_decay);
          store(d, opt_adam(w, gp, m[d], v[d], o.learning_rate, o.beta1, o.beta2, o.eps,
                            static_cast<Acc>(p_.adam_bias_correction1),
                            static_cast<Acc>(p_.adam_bias_correction2)));
        }
        break;
      }
    }
  }

  // (d): the dot product of the bag's output gradient with the id's row.
  void weight_grads(int64_t begin, int64_t end) const {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = bag_of_[static_cast<size_t>(i)];
      const BackwardTableMeta& t = table(table_of_bag(g));
      const int64_t id = static_cast<int64_t>(ids_[i]);
      Acc dot = 0;
      if (contributes(id, t)) {
        const int64_t r = out_row_of_bag(g);
        const int64_t col0 = none_ ? 0 : t.grad_col;
        for (int32_t d = 0; d < t.dim; ++d) {
          dot = dot + grad_out(r, col0 + d) *
                          load<Acc>(p_.table_dtype, t.weights, id * t.weight_stride + d);
        }
      }
      static_cast<Acc*>(p_.grad_weights)[i] = dot;
    }
  }

  const EmbeddingBagBackwardParams& p_;
  const Index* ids_;
  const Index* offsets_;
  const Acc* weights_;
  const bool none_;
  std::vector<int64_t> bag_of_;
  std::vector<int64_t> count_;
  std::vector<Entry> entries_;
  std::vector<int64_t> run_begin_;
};

}  // namespace

void embedding_bag_backward_cpu_f64(const EmbeddingBagBackwardParams& p) {
  if (p.index_type == IndexType::kI32) {
    BackwardCpu<int32_t, double>(p).run();
  } else {
    BackwardCpu<int64_t, double>(p).run();
  }
}

}  // namespace spembed::detail
