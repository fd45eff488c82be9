// The backward's CPU loops, included by embedding_bag_backward_cpu.cpp once
// per instruction set inside a namespace of its own (see
// kernels/common/cpu_isa.h). No include guard for that reason.
// Tables of float32 / float16 / bfloat16 only: their gradients, per-sample
// weights and optimizer states are float32 (the params' void pointers are
// float*). float64 tables take embedding_bag_backward_cpu_f64.cpp.

#include "kernels/common/cpu_simd.h"

template <typename Index, typename G>
class Backward {
 public:
  using A = acc_t<G>;  // the reduction's accumulator
  using V = vec_t<A>;
  static constexpr int kL = kLanes<A>;

  // `write` stores a row's reduced gradient: (a), (b) and (c).
  using WriteRow = void (*)(const EmbeddingBagBackwardParams&, int64_t u, int64_t key,
                            const BackwardTableMeta&, const float* g);

  Backward(const EmbeddingBagBackwardParams& p, const BackwardPlan& plan, WriteRow write)
      : p_(p),
        write_(write),
        plan_(plan),
        ids_(static_cast<const Index*>(p.indices)),
        go_(static_cast<const G*>(p.grad_output)) {}

  void run() const {
    if (p_.grad_weights != nullptr) {
      dispatch_element(p_.table_dtype, [&](auto table) {
        parallel_for(p_.nnz, 2048,
                     [&](int64_t b, int64_t e) { weight_grads<decltype(table)>(b, e); });
      });
    }
    const int64_t runs = static_cast<int64_t>(plan_.run_begin.size()) - 1;
    if (p_.pooling == SPEMBED_POOLING_MAX) {
      parallel_for(runs, 64, [&](int64_t b, int64_t e) { reduce_runs<kMax>(b, e); });
    } else if (p_.pooling == SPEMBED_POOLING_MEAN) {
      parallel_for(runs, 64, [&](int64_t b, int64_t e) { reduce_runs<kMean>(b, e); });
    } else if (p_.weights != nullptr) {
      parallel_for(runs, 64, [&](int64_t b, int64_t e) { reduce_runs<kWeighted>(b, e); });
    } else {
      parallel_for(runs, 64, [&](int64_t b, int64_t e) { reduce_runs<kSum>(b, e); });
    }
  }

 private:
  enum Mode { kSum, kWeighted, kMean, kMax };

  bool none() const { return p_.pooling == SPEMBED_POOLING_NONE; }
  int64_t out_row_of_bag(int64_t bag) const { return none() ? bag : bag % p_.bags_per_table; }
  int64_t table_of_bag(int64_t bag) const { return none() ? 0 : bag / p_.bags_per_table; }

  // grad_output's row of `bag`, at the first column of table `t`.
  const G* grad_row(int64_t bag, const BackwardTableMeta& t) const {
    return go_ + out_row_of_bag(bag) * p_.grad_row_stride + (none() ? 0 : t.grad_col);
  }

  // Columns [col, col + kNv * kL) of entries [c, c_end) into acc.
  template <Mode kMode, int kNv>
  void chunk_block(int64_t c, int64_t c_end, const BackwardTableMeta& t, int32_t col,
                   A* acc) const {
    V sum[kNv];
    for (int v = 0; v < kNv; ++v) sum[v] = V{};
    for (int64_t k = c; k < c_end; ++k) {
      const int64_t position = plan_.entries[static_cast<size_t>(k)].position;
      const int64_t bag = plan_.bag_of(position);
      const G* g = grad_row(bag, t) + col;
      if constexpr (kMode == kWeighted) {
        const V w = vbroadcast<V>(static_cast<A>(static_cast<const float*>(p_.weights)[position]));
        for (int v = 0; v < kNv; ++v) sum[v] = sum[v] + w * vload(g + v * kL);
      } else if constexpr (kMode == kMean) {
        const V n = vbroadcast<V>(static_cast<A>(plan_.count[static_cast<size_t>(bag)]));
        for (int v = 0; v < kNv; ++v) sum[v] = sum[v] + vload(g + v * kL) / n;
      } else {
        for (int v = 0; v < kNv; ++v) sum[v] = sum[v] + vload(g + v * kL);
      }
    }
    for (int v = 0; v < kNv; ++v) std::memcpy(acc + col + v * kL, &sum[v], sizeof(V));
  }

  // Columns [col, dim) of entries [c, c_end), one at a time (MAX: all).
  template <Mode kMode>
  void chunk_tail(int64_t c, int64_t c_end, const BackwardTableMeta& t, int32_t col, int64_t key,
                  A* acc) const {
    for (int32_t d = col; d < t.dim; ++d) acc[d] = A(0);
    for (int64_t k = c; k < c_end; ++k) {
      const int64_t position = plan_.entries[static_cast<size_t>(k)].position;
      const int64_t bag = plan_.bag_of(position);
      const G* g = grad_row(bag, t);
      if constexpr (kMode == kMax) {
        const int64_t r = out_row_of_bag(bag);
        const Index* argmax =
            static_cast<const Index*>(p_.argmax) + r * p_.argmax_row_stride + t.grad_col;
        const int64_t id = key - t.row_base;
        for (int32_t d = col; d < t.dim; ++d) {
          acc[d] = static_cast<int64_t>(argmax[d]) == id ? acc[d] + to_acc(g[d]) : acc[d] + A(0);
        }
      } else {
        for (int32_t d = col; d < t.dim; ++d) {
          const A x = to_acc(g[d]);
          if constexpr (kMode == kWeighted) {
            acc[d] = acc[d] + static_cast<A>(static_cast<const float*>(p_.weights)[position]) * x;
          } else if constexpr (kMode == kMean) {
            acc[d] = acc[d] + x / static_cast<A>(plan_.count[static_cast<size_t>(bag)]);
          } else {
            acc[d] = acc[d] + x;
          }
        }
      }
    }
  }

  // One chunk's sums, every column, into acc.
  template <Mode kMode>
  void chunk(int64_t c, int64_t c_end, const BackwardTableMeta& t, int64_t key, A* acc) const {
    int32_t col = 0;
    if constexpr (kMode != kMax) {
      for (int32_t left = t.dim / kL; left > 0;) {
        if (left >= 8) {
          chunk_block<kMode, 8>(c, c_end, t, col, acc);
          left -= 8, col += 8 * kL;
        } else if (left >= 4) {
          chunk_block<kMode, 4>(c, c_end, t, col, acc);
          left -= 4, col += 4 * kL;
        } else if (left >= 2) {
          chunk_block<kMode, 2>(c, c_end, t, col, acc);
          left -= 2, col += 2 * kL;
        } else {
          chunk_block<kMode, 1>(c, c_end, t, col, acc);
          left -= 1, col += kL;
        }
      }
    }
    if (col < t.dim) chunk_tail<kMode>(c, c_end, t, col, key, acc);
  }

  // Inlined on purpose: GCC finds a function that only loads and prefetches
  // pure, and drops calls to it whose result is unused (prefetches and all).
  SPEMBED_CPU_INLINE void prefetch_run(int64_t u) const {
    const BackwardEntry& head =
        plan_.entries[static_cast<size_t>(plan_.run_begin[static_cast<size_t>(u)])];
    const int64_t bag = plan_.bag_of(head.position);
    const BackwardTableMeta& t = p_.tables[table_of_bag(bag)];
    const int64_t row = head.key - t.row_base;
    const int64_t floats = static_cast<int64_t>(t.dim) * 4;
    prefetch_bytes(grad_row(bag, t), static_cast<int64_t>(t.dim) * static_cast<int64_t>(sizeof(G)));
    if (p_.has_optimizer) {
      const int64_t element = dtype_bytes(p_.table_dtype);
      prefetch_bytes(static_cast<const char*>(t.weights) + row * t.weight_stride * element,
                     static_cast<int64_t>(t.dim) * element);
      if (t.state1 != nullptr) {
        prefetch_bytes(static_cast<float*>(t.state1) + row * t.state1_stride,
                       t.state1_stride == 1 ? 4 : floats);
      }
      if (t.state2 != nullptr)
        prefetch_bytes(static_cast<float*>(t.state2) + row * t.state2_stride, floats);
    }
    if (t.grad_table != nullptr)
      prefetch_bytes(static_cast<float*>(t.grad_table) + row * t.grad_table_stride, floats);
  }

  static constexpr int64_t kPrefetchRuns = 4;

  template <Mode kMode>
  void reduce_runs(int64_t first_run, int64_t end_run) const {
    std::vector<A> sum(static_cast<size_t>(p_.max_dim));
    std::vector<A> part(static_cast<size_t>(p_.max_dim));
    std::vector<float> row32(static_cast<size_t>(p_.max_dim));
    for (int64_t u = first_run; u < end_run; ++u) {
      const int64_t begin = plan_.run_begin[static_cast<size_t>(u)];
      const int64_t end = plan_.run_begin[static_cast<size_t>(u) + 1];
      const BackwardEntry& head = plan_.entries[static_cast<size_t>(begin)];
      const BackwardTableMeta& t = p_.tables[table_of_bag(plan_.bag_of(head.position))];
      const int32_t dim = t.dim;
      // The rows a few runs ahead will update (table, optimizer state,
      // dense gradient) are far apart in memory: fetch them early.
      if (u + kPrefetchRuns < end_run) prefetch_run(u + kPrefetchRuns);
      chunk<kMode>(begin, std::min<int64_t>(end, begin + SPEMBED_BACKWARD_CHUNK), t, head.key,
                   sum.data());
      for (int64_t c = begin + SPEMBED_BACKWARD_CHUNK; c < end; c += SPEMBED_BACKWARD_CHUNK) {
        chunk<kMode>(c, std::min<int64_t>(end, c + SPEMBED_BACKWARD_CHUNK), t, head.key,
                     part.data());
        for (int32_t d = 0; d < dim; ++d) sum[d] = sum[d] + part[d];
      }
      if (p_.scale_grad_by_freq) {
        const auto frequency = static_cast<A>(end - begin);
        for (int32_t d = 0; d < dim; ++d) sum[d] = sum[d] / frequency;
      }
      for (int32_t d = 0; d < dim; ++d) row32[d] = static_cast<float>(sum[d]);
      write_(p_, u, head.key, t, row32.data());
    }
  }

  // (d): the dot product of the bag's output gradient with the id's row,
  // summed in column order.
  template <typename T>
  void weight_grads(int64_t begin, int64_t end) const {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t bag = plan_.bag_of(i);
      const BackwardTableMeta& t = p_.tables[table_of_bag(bag)];
      const auto id = static_cast<int64_t>(ids_[i]);
      A dot = A(0);
      if (plan_.contributes(id, t)) {
        const G* g = grad_row(bag, t);
        const T* w = static_cast<const T*>(t.weights) + id * t.weight_stride;
        for (int32_t d = 0; d < t.dim; ++d) {
          dot = dot + to_acc(g[d]) * static_cast<A>(to_acc(w[d]));
        }
      }
      static_cast<float*>(p_.grad_weights)[i] = static_cast<float>(dot);
    }
  }

  const EmbeddingBagBackwardParams& p_;
  WriteRow write_;
  const BackwardPlan& plan_;
  const Index* ids_;
  const G* go_;
};

// (a), (b) and (c) for one row of a table of T: per row, not per element.
template <typename T>
class RowWriter {
 public:
  static void write(const EmbeddingBagBackwardParams& p, int64_t u, int64_t key,
                    const BackwardTableMeta& t, const float* g) {
    RowWriter(p).write_row(u, key, t, g);
  }

 private:
  explicit RowWriter(const EmbeddingBagBackwardParams& p) : p_(p) {}

  void write_row(int64_t u, int64_t key, const BackwardTableMeta& t, const float* g) const {
    write_row_gradients(p_, u, key, t, g);
    if (p_.has_optimizer) step(key, key - t.row_base, t, g);
  }

  // Stores updated weights w[0, n) of a row's columns [col, col + n)
  // (nearest even, or stochastic: the random bits follow the column).
  void store_weights(T* out, const float* w, int32_t col, int32_t n, int64_t key) const {
    if constexpr (std::is_same_v<T, f16_t> || std::is_same_v<T, bf16_t>) {
      const spembed_optimizer_options_t& o = p_.optimizer;
      if (o.stochastic_rounding != 0) {
        for (int32_t d = 0; d < n; ++d) {
          const uint32_t random = sr_random_bits(o.seed, key, col + d);
          out[col + d].bits = std::is_same_v<T, f16_t> ? sr_float_to_half(w[d], random)
                                                       : sr_float_to_bf16(w[d], random);
        }
        return;
      }
    }
    for (int32_t d = 0; d < n; ++d) out[col + d] = from_acc<T>(w[d]);
  }

  void step(int64_t key, int64_t row, const BackwardTableMeta& t, const float* g) const {
    const spembed_optimizer_options_t& o = p_.optimizer;
    T* weights = static_cast<T*>(t.weights) + row * t.weight_stride;
    const int32_t dim = t.dim;
    // float32 weights are updated in place; others through a float32 copy.
    float* w = nullptr;
    [[maybe_unused]] float copy[kStepColumns];
    const bool in_place = std::is_same_v<T, float>;
    for (int32_t base = 0; base < dim; base += kStepColumns) {
      const int32_t n = std::min<int32_t>(kStepColumns, dim - base);
      if constexpr (std::is_same_v<T, float>) {
        w = weights + base;
      } else {
        w = copy;
        for (int32_t d = 0; d < n; ++d) w[d] = static_cast<float>(to_acc(weights[base + d]));
      }
      const float* gb = g + base;
      switch (o.optimizer) {
        case SPEMBED_OPTIMIZER_SGD:
          for (int32_t d = 0; d < n; ++d) {
            w[d] = opt_sgd(w[d], opt_decayed_grad(gb[d], w[d], o.weight_decay), o.learning_rate);
          }
          break;
        case SPEMBED_OPTIMIZER_ADAGRAD: {
          float* s = static_cast<float*>(t.state1) + row * t.state1_stride + base;
          for (int32_t d = 0; d < n; ++d) {
            const float gp = opt_decayed_grad(gb[d], w[d], o.weight_decay);
            w[d] = opt_adagrad(w[d], gp, s[d], o.learning_rate, o.eps);
          }
          break;
        }
        case SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD:
          rowwise_adagrad(key, row, t, g);
          return;
        case SPEMBED_OPTIMIZER_ADAM: {
          float* m = static_cast<float*>(t.state1) + row * t.state1_stride + base;
          float* v = static_cast<float*>(t.state2) + row * t.state2_stride + base;
          for (int32_t d = 0; d < n; ++d) {
            const float gp = opt_decayed_grad(gb[d], w[d], o.weight_decay);
            w[d] = opt_adam(w[d], gp, m[d], v[d], o.learning_rate, o.beta1, o.beta2, o.eps,
                            static_cast<float>(p_.adam_bias_correction1),
                            static_cast<float>(p_.adam_bias_correction2));
          }
          break;
        }
      }
      if (!in_place) store_weights(weights, w, base, n, key);
    }
  }

  // The row's state needs every column's g'^2 first (summed in column order).
  void rowwise_adagrad(int64_t key, int64_t row, const BackwardTableMeta& t, const float* g) const {
    const spembed_optimizer_options_t& o = p_.optimizer;
    T* weights = static_cast<T*>(t.weights) + row * t.weight_stride;
    float& s = static_cast<float*>(t.state1)[row * t.state1_stride];
    float squares = 0.0f;
    for (int32_t d = 0; d < t.dim; ++d) {
      const auto w = static_cast<float>(to_acc(weights[d]));
      squares = opt_rowwise_square_accumulate(squares, opt_decayed_grad(g[d], w, o.weight_decay));
    }
    s = opt_rowwise_state(s, squares, t.dim);
    float copy[kStepColumns];
    for (int32_t base = 0; base < t.dim; base += kStepColumns) {
      const int32_t n = std::min<int32_t>(kStepColumns, t.dim - base);
      for (int32_t d = 0; d < n; ++d) {
        const auto w = static_cast<float>(to_acc(weights[base + d]));
        const float gp = opt_decayed_grad(g[base + d], w, o.weight_decay);
        copy[d] = opt_rowwise_adagrad(w, gp, s, o.learning_rate, o.eps);
      }
      if constexpr (std::is_same_v<T, float>) {
        std::copy(copy, copy + n, weights + base);
      } else {
        store_weights(weights, copy, base, n, key);
      }
    }
  }

  static constexpr int32_t kStepColumns = 256;

  const EmbeddingBagBackwardParams& p_;
};

template <typename Index>
void backward(const EmbeddingBagBackwardParams& p, const BackwardPlan& plan) {
  dispatch_element(p.table_dtype, [&](auto table) {
    const auto write = &RowWriter<decltype(table)>::write;
    dispatch_element(p.grad_dtype,
                     [&](auto grad) { Backward<Index, decltype(grad)>(p, plan, write).run(); });
  });
}
