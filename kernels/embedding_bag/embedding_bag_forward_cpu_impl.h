// The forward's CPU loops, included by embedding_bag_forward_cpu.cpp once per
// instruction set inside a namespace of its own (see kernels/common/cpu_isa.h).
// No include guard for that reason.
//
// Per bag and column the sum runs over the ids in order, from +0 in the
// accumulator type, adding w * x (weighted) or x: the order of the CUDA
// kernels. Columns are independent, so they go in vectors of kLanes, in
// blocks of up to 8 vectors that stay in registers while the bag's rows
// stream past; the next rows are prefetched a few ids ahead.

#include "kernels/common/cpu_simd.h"

// Ids ahead of the current one whose rows are prefetched: 16 is ~1.3x
// faster than 8 on 128-byte rows of a 1M-row table with uniform ids (each
// row's first touch waits for a page walk, and more rows in flight hide more
// of it); none is ~25% slower than either.
constexpr int64_t kPrefetchIds = 16;

template <typename Index, typename T>
class Forward {
 public:
  using A = acc_t<T>;
  using V = vec_t<A>;
  static constexpr int kL = kLanes<A>;

  explicit Forward(const EmbeddingBagForwardParams& p)
      : p_(p),
        ids_(static_cast<const Index*>(p.indices)),
        offsets_(static_cast<const Index*>(p.offsets)),
        weights_(static_cast<const A*>(p.weights)),
        out_(p.output) {}

  void run() const {
    if (p_.pooling == SPEMBED_POOLING_NONE) {
      parallel_for(p_.nnz, 2048, [&](int64_t b, int64_t e) {
        if (p_.weights) {
          gather<true>(b, e);
        } else {
          gather<false>(b, e);
        }
      });
    } else if (p_.pooling == SPEMBED_POOLING_MAX) {
      parallel_for(p_.num_bags(), 256, [&](int64_t b, int64_t e) { pool_max(b, e); });
    } else {
      parallel_for(p_.num_bags(), 128, [&](int64_t b, int64_t e) {
        if (p_.weights) {
          pool<true>(b, e);
        } else {
          pool<false>(b, e);
        }
      });
    }
  }

 private:
  int64_t bag_begin(int64_t g) const {
    return offsets_ ? static_cast<int64_t>(offsets_[g]) : g * p_.fixed_bag_size;
  }

  bool valid(int64_t id, int64_t rows) const {
    return static_cast<uint64_t>(id) < static_cast<uint64_t>(rows) && id != p_.padding_idx;
  }

  // Whether every id in [first, last) contributes: the loops then skip the checks.
  bool all_valid(int64_t first, int64_t last, int64_t rows) const {
    bool ok = true;
    for (int64_t i = first; i < last; ++i) ok &= valid(static_cast<int64_t>(ids_[i]), rows);
    return ok;
  }

  // Output element `o` (an element offset into p.output) set to v, or
  // elements [o, o + kL) to the lanes of v: one branch per vector on the
  // output dtype, none per element.
  void store_one(int64_t o, A v) const {
    if constexpr (std::is_same_v<A, double>) {
      static_cast<double*>(out_)[o] = v;
    } else if (p_.out_dtype == DType::kF16) {
      static_cast<f16_t*>(out_)[o] = from_acc<f16_t>(v);
    } else if (p_.out_dtype == DType::kBF16) {
      static_cast<bf16_t*>(out_)[o] = from_acc<bf16_t>(v);
    } else {
      static_cast<float*>(out_)[o] = v;
    }
  }
  void store_vec(int64_t o, V v) const {
    if constexpr (std::is_same_v<A, double>) {
      vstore(static_cast<double*>(out_) + o, v);
    } else if (p_.out_dtype == DType::kF16) {
      vstore(static_cast<f16_t*>(out_) + o, v);
    } else if (p_.out_dtype == DType::kBF16) {
      vstore(static_cast<bf16_t*>(out_) + o, v);
    } else {
      vstore(static_cast<float*>(out_) + o, v);
    }
  }

  const T* row(const TableMeta& t, int64_t id) const {
    return static_cast<const T*>(t.data) + id * t.row_stride;
  }

  // Adds columns [col, col + kNv * kL) of row ids_[i] (times its weight) to
  // acc; with kPrefetch also prefetches the same bytes at `ahead`, one line
  // after each vector that starts one (the prefetches spread over the loads
  // instead of queueing in a burst).
  template <int kNv, bool kWeighted, bool kChecked, bool kPrefetch>
  SPEMBED_CPU_INLINE void add_row(const TableMeta& t, const T* base, int64_t i, const char* ahead,
                                  V (&acc)[kNv]) const {
    constexpr int64_t kStep = kL * static_cast<int64_t>(sizeof(T));  // bytes of T per vector
    const auto id = static_cast<int64_t>(ids_[i]);
    if (kChecked && !valid(id, t.rows)) {
      if (kPrefetch) prefetch_bytes(ahead, kNv * kStep);
      return;
    }
    const T* r = base + id * t.row_stride;
    [[maybe_unused]] V w;
    if constexpr (kWeighted) w = vbroadcast<V>(weights_[i]);
    for (int v = 0; v < kNv; ++v) {
      if constexpr (kWeighted) {
        acc[v] = acc[v] + w * vload(r + v * kL);
      } else {
        acc[v] = acc[v] + vload(r + v * kL);
      }
      if (kPrefetch && v * kStep % 64 == 0) __builtin_prefetch(ahead + v * kStep, 0, 3);
    }
  }

  // Sums columns [col, col + kNv * kL) of one bag into acc. Ids in
  // [first, last); rows of ids in [last, prefetch_end) are prefetched too
  // (the next bags').
  template <int kNv, bool kWeighted, bool kChecked>
  SPEMBED_CPU_INLINE void accumulate(const TableMeta& t, int64_t first, int64_t last,
                                     int64_t prefetch_end, int32_t col, V (&acc)[kNv]) const {
    for (int v = 0; v < kNv; ++v) acc[v] = V{};
    const T* base = static_cast<const T*>(t.data) + col;
    // Two loops, so that the one over most ids has no per-id test of whether
    // an id kPrefetchIds ahead exists.
    const int64_t prefetched = std::max(first, std::min(last, prefetch_end - kPrefetchIds));
    int64_t i = first;
    for (; i < prefetched; ++i) {
      add_row<kNv, kWeighted, kChecked, true>(
          t, base, i, row_address(base, static_cast<int64_t>(ids_[i + kPrefetchIds]), t.row_stride),
          acc);
    }
    for (; i < last; ++i) add_row<kNv, kWeighted, kChecked, false>(t, base, i, nullptr, acc);
  }

  // Output columns [col, col + kNv * kL) of one bag (see accumulate).
  template <int kNv, bool kWeighted, bool kChecked>
  void block(const TableMeta& t, int64_t first, int64_t last, int64_t prefetch_end, int32_t col,
             A divisor, int64_t out) const {
    V acc[kNv];
    accumulate<kNv, kWeighted, kChecked>(t, first, last, prefetch_end, col, acc);
    if (divisor != A(1)) {
      const V d = vbroadcast<V>(divisor);
      for (int v = 0; v < kNv; ++v) acc[v] = acc[v] / d;
    }
    for (int v = 0; v < kNv; ++v) store_vec(out + col + v * kL, acc[v]);
  }

  // Bags [g, g_end) of table t when every id contributes and a row is kNv
  // whole vectors: what bag() and block() decide per bag (the column blocks,
  // the checks, the output type) is decided once here. Same sums as block().
  template <int kNv, bool kWeighted, typename Out>
  void one_block_bags(const TableMeta& t, int64_t g, int64_t g_end, int64_t prefetch_end,
                      int64_t out, bool mean) const {
    Out* o = static_cast<Out*>(out_) + out;
    for (int64_t last = bag_begin(g); g < g_end; ++g, o += p_.out_row_stride) {
      const int64_t first = last;
      last = bag_begin(g + 1);
      V acc[kNv];
      if (last - first == 1 && first + kPrefetchIds < prefetch_end) {
        // A bag of one id (single-valued features), with accumulate's sum
        // (+0 plus the row) and prefetch, without its loops.
        const T* base = static_cast<const T*>(t.data);
        for (int v = 0; v < kNv; ++v) acc[v] = V{};
        add_row<kNv, kWeighted, false, true>(
            t, base, first,
            row_address(base, static_cast<int64_t>(ids_[first + kPrefetchIds]), t.row_stride), acc);
      } else {
        accumulate<kNv, kWeighted, false>(t, first, last, prefetch_end, 0, acc);
      }
      if (mean && last - first > 1) {  // block()'s divisor != 1
        const V d = vbroadcast<V>(static_cast<A>(last - first));
        for (int v = 0; v < kNv; ++v) acc[v] = acc[v] / d;
      }
      for (int v = 0; v < kNv; ++v) vstore(o + v * kL, acc[v]);
    }
  }

  // one_block_bags for a row of `vectors` vectors (1, 2, 4 or 8) and the
  // output's type; false (nothing done) for other rows.
  template <bool kWeighted>
  bool try_one_block_bags(const TableMeta& t, int64_t g, int64_t g_end, int64_t prefetch_end,
                          int64_t out, bool mean) const {
    if (t.dim % kL != 0) return false;
    auto with_out = [&](auto rows_of) {
      constexpr int kNv = decltype(rows_of)::value;
      if constexpr (std::is_same_v<A, double>) {
        one_block_bags<kNv, kWeighted, double>(t, g, g_end, prefetch_end, out, mean);
      } else if (p_.out_dtype == DType::kF16) {
        one_block_bags<kNv, kWeighted, f16_t>(t, g, g_end, prefetch_end, out, mean);
      } else if (p_.out_dtype == DType::kBF16) {
        one_block_bags<kNv, kWeighted, bf16_t>(t, g, g_end, prefetch_end, out, mean);
      } else {
        one_block_bags<kNv, kWeighted, float>(t, g, g_end, prefetch_end, out, mean);
      }
      return true;
    };
    switch (t.dim / kL) {
      case 1:
        return with_out(std::integral_constant<int, 1>{});
      case 2:
        return with_out(std::integral_constant<int, 2>{});
      case 4:
        return with_out(std::integral_constant<int, 4>{});
      case 8:
        return with_out(std::integral_constant<int, 8>{});
      default:
        return false;
    }
  }

  // Where row `id` starts, for a prefetch. The address is formed in
  // integers: the id may be one the loops skip (out of range, where no
  // pointer may point), and a prefetch of any address is harmless.
  static const char* row_address(const T* base, int64_t id, int64_t row_stride) {
    return reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(base) +
                                         static_cast<uintptr_t>(id) *
                                             static_cast<uintptr_t>(row_stride) * sizeof(T));
  }

  // Columns [col, dim) one at a time (dims that are not a multiple of kL).
  template <bool kWeighted, bool kChecked>
  void tail(const TableMeta& t, int64_t first, int64_t last, int32_t col, A divisor,
            int64_t out) const {
    for (int32_t d = col; d < t.dim; ++d) {
      A acc = A(0);
      for (int64_t i = first; i < last; ++i) {
        const auto id = static_cast<int64_t>(ids_[i]);
        if (kChecked && !valid(id, t.rows)) continue;
        const A x = to_acc(row(t, id)[d]);
        acc = kWeighted ? acc + weights_[i] * x : acc + x;
      }
      if (divisor != A(1)) acc = acc / divisor;
      store_one(out + d, acc);
    }
  }

  template <bool kWeighted, bool kChecked>
  void bag(const TableMeta& t, int64_t first, int64_t last, int64_t prefetch_end, A divisor,
           int64_t out) const {
    const int32_t full = t.dim / kL;  // whole vectors
    int32_t col = 0;
    for (int32_t left = full; left > 0;) {
      if (left >= 8) {
        block<8, kWeighted, kChecked>(t, first, last, prefetch_end, col, divisor, out);
        left -= 8;
        col += 8 * kL;
      } else if (left >= 4) {
        block<4, kWeighted, kChecked>(t, first, last, prefetch_end, col, divisor, out);
        left -= 4;
        col += 4 * kL;
      } else if (left >= 2) {
        block<2, kWeighted, kChecked>(t, first, last, prefetch_end, col, divisor, out);
        left -= 2;
        col += 2 * kL;
      } else {
        block<1, kWeighted, kChecked>(t, first, last, prefetch_end, col, divisor, out);
        left -= 1;
        col += kL;
      }
      prefetch_end = last;  // the first block prefetched the next bags' rows
    }
    if (col < t.dim) tail<kWeighted, kChecked>(t, first, last, col, divisor, out);
  }

  // SUM and MEAN over bags [begin, end), one table's bags at a time.
  template <bool kWeighted>
  void pool(int64_t begin, int64_t end) const {
    const bool mean = p_.pooling == SPEMBED_POOLING_MEAN;
    for (int64_t g = begin; g < end;) {
      const int64_t table = g / p_.bags_per_table;
      const TableMeta& t = p_.tables[table];
      const int64_t table_end = std::min(end, (table + 1) * p_.bags_per_table);
      // Prefetch into the next bags of this chunk while they use this table.
      const int64_t prefetch_end = bag_begin(table_end);
      int64_t out = (g % p_.bags_per_table) * p_.out_row_stride + t.out_col;
      if (p_.all_ids_contribute &&
          try_one_block_bags<kWeighted>(t, g, table_end, prefetch_end, out, mean)) {
        g = table_end;
        continue;
      }
      int64_t last = bag_begin(g);
      for (; g < table_end; ++g, out += p_.out_row_stride) {
        const int64_t first = last;
        last = bag_begin(g + 1);
        if (p_.all_ids_contribute || all_valid(first, last, t.rows)) {
          const int64_t count = last - first;
          const A divisor = mean && count > 0 ? static_cast<A>(count) : A(1);
          bag<kWeighted, false>(t, first, last, prefetch_end, divisor, out);
        } else {
          int64_t count = 0;
          for (int64_t i = first; i < last; ++i)
            count += valid(static_cast<int64_t>(ids_[i]), t.rows);
          const A divisor = mean && count > 0 ? static_cast<A>(count) : A(1);
          bag<kWeighted, true>(t, first, last, prefetch_end, divisor, out);
        }
      }
    }
  }

  // NONE: output row i is row ids[i] (times its weight), or zeros.
  template <bool kWeighted>
  void gather(int64_t begin, int64_t end) const {
    const TableMeta& t = p_.tables[0];
    const int32_t full = t.dim / kL * kL;
    const int64_t row_bytes = static_cast<int64_t>(t.dim) * static_cast<int64_t>(sizeof(T));
    for (int64_t i = begin; i < end; ++i) {
      if (i + kPrefetchIds < end) {
        const auto ahead = static_cast<int64_t>(ids_[i + kPrefetchIds]);
        if (valid(ahead, t.rows)) prefetch_bytes(row(t, ahead), row_bytes);
      }
      const int64_t out = i * p_.out_row_stride;
      const auto id = static_cast<int64_t>(ids_[i]);
      if (!valid(id, t.rows)) {
        for (int32_t d = 0; d < t.dim; ++d) store_one(out + d, A(0));
        continue;
      }
      const T* r = row(t, id);
      const A w = kWeighted ? weights_[i] : A(1);
      int32_t d = 0;
      for (; d < full; d += kL) {
        const V x = vload(r + d);
        store_vec(out + d, kWeighted ? vbroadcast<V>(w) * x : x);
      }
      for (; d < t.dim; ++d) {
        const A x = to_acc(r[d]);
        store_one(out + d, kWeighted ? w * x : x);
      }
    }
  }

  // MAX: the first pooled row sets each column's max; later rows replace it
  // only when strictly greater, so ties keep the earlier row.
  void pool_max(int64_t begin, int64_t end) const {
    std::vector<A> acc(static_cast<size_t>(p_.max_dim));
    std::vector<int64_t> arg(static_cast<size_t>(p_.max_dim));
    for (int64_t g = begin; g < end; ++g) {
      const TableMeta& t = p_.tables[g / p_.bags_per_table];
      const int64_t out_row = g % p_.bags_per_table;
      const int64_t first = bag_begin(g);
      const int64_t last = bag_begin(g + 1);
      std::fill(acc.begin(), acc.begin() + t.dim, A(0));
      std::fill(arg.begin(), arg.begin() + t.dim, int64_t{-1});
      int64_t count = 0;
      for (int64_t i = first; i < last; ++i) {
        const auto id = static_cast<int64_t>(ids_[i]);
        if (!valid(id, t.rows)) continue;
        const T* r = row(t, id);
        if (count++ == 0) {
          for (int32_t d = 0; d < t.dim; ++d) {
            acc[d] = to_acc(r[d]);
            arg[d] = id;
          }
          continue;
        }
        for (int32_t d = 0; d < t.dim; ++d) {
          const A v = to_acc(r[d]);
          if (v > acc[d]) {
            acc[d] = v;
            arg[d] = id;
          }
        }
      }
      const int64_t out = out_row * p_.out_row_stride + t.out_col;
      for (int32_t d = 0; d < t.dim; ++d) store_one(out + d, count == 0 ? A(0) : acc[d]);
      if (p_.argmax != nullptr) {
        Index* argmax = static_cast<Index*>(p_.argmax) + out_row * p_.argmax_row_stride + t.out_col;
        for (int32_t d = 0; d < t.dim; ++d) argmax[d] = static_cast<Index>(arg[d]);
      }
    }
  }

  const EmbeddingBagForwardParams& p_;
  const Index* ids_;
  const Index* offsets_;
  const A* weights_;  // per-sample weights (the accumulator type), or null
  void* out_;
};

// The host's id check (scan_ids_cpu): one branch-free pass, so that it
// vectorizes. Ids compare as unsigned, so negative ones are out of range.
template <typename Index>
IdScan scan_ids(const Index* ids, int64_t begin, int64_t end, int64_t rows, int64_t padding_idx) {
  using U = std::make_unsigned_t<Index>;
  constexpr int64_t kMaxId = std::numeric_limits<Index>::max();
  const U limit = rows > kMaxId ? static_cast<U>(kMaxId) + 1 : static_cast<U>(rows);
  const bool has_padding = padding_idx >= 0 && padding_idx <= kMaxId;
  const U padding = has_padding ? static_cast<U>(padding_idx) : U(0);
  const U padding_flag = has_padding ? U(1) : U(0);
  U bad = 0;
  U not_contributing = 0;
  for (int64_t i = begin; i < end; ++i) {
    const auto u = static_cast<U>(ids[i]);
    const U outside = u >= limit ? U(1) : U(0);
    const U is_padding = u == padding ? padding_flag : U(0);
    bad |= outside & (is_padding ^ U(1));
    not_contributing |= outside | is_padding;
  }
  return IdScan{bad != 0, not_contributing != 0};
}

// The host's offsets check (offsets_decrease_cpu): whether offsets[b] >
// offsets[b + 1] for some b in [begin, end), in one branch-free pass. It
// vectorizes in the AVX2 / AVX-512 copies (64-bit compares) and only with an
// integer flag: GCC leaves the loop scalar with a bool one.
template <typename Index>
bool offsets_decrease(const Index* offsets, int64_t begin, int64_t end) {
  using U = std::make_unsigned_t<Index>;
  U decreases = 0;
  for (int64_t b = begin; b < end; ++b) decreases |= offsets[b] > offsets[b + 1] ? U(1) : U(0);
  return decreases != 0;
}

inline void forward(const EmbeddingBagForwardParams& p) {
  dispatch_element(p.table_dtype, [&](auto element) {
    using T = decltype(element);
    if (p.index_type == IndexType::kI32) {
      Forward<int32_t, T>(p).run();
    } else {
      Forward<int64_t, T>(p).run();
    }
  });
}
