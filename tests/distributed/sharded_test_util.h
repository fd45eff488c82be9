// What the sharded collection's tests share: a case (tables, plan, per-rank
// batches, options), its random per-rank batches with the edge cases (empty
// bags, row-block edges, padding, out-of-range ids), the global batch they
// make, and running the ranks as threads.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include "spembed/spembed.h"
#include "spembed/spembed_distributed.h"
#include "test_util.h"

namespace spembed_test {

inline constexpr auto TW = SPEMBED_SHARDING_TABLE_WISE;
inline constexpr auto RW = SPEMBED_SHARDING_ROW_WISE;

struct Case {
  int world = 2;
  std::vector<int64_t> rows{40, 9, 3, 25};
  std::vector<int64_t> dims{8, 4, 5, 16};
  std::vector<spembed_shard_plan_entry_t> plan{{TW, 0}, {RW, -1}, {RW, -1}, {TW, 1}};
  std::vector<int64_t> batch{3, 2};  // per rank
  DLDataType table_dtype = kF32;
  DLDataType out_dtype = kF32;
  DLDataType index_dtype = kI64;
  spembed_pooling_t pooling = SPEMBED_POOLING_SUM;
  bool weighted = false;
  int64_t padding_idx = -1;
  spembed_bounds_policy_t bounds = SPEMBED_BOUNDS_ERROR;
  spembed_optimizer_t optimizer = SPEMBED_OPTIMIZER_SGD;
  int steps = 3;
  int bad_rank = -1;     // this rank gets out-of-range ids
  int empty_table = -1;  // this table gets no ids on rank empty_rank
  int empty_rank = -1;
  uint64_t seed = 1;
};

struct Batch {
  std::vector<int64_t> ids, offsets;
  std::vector<float> weights;
};

inline int64_t total_dim(const Case& c) {
  int64_t s = 0;
  for (int64_t d : c.dims) s += d;
  return s;
}

// One rank's table-major batch: empty bags, block-edge ids, padding, bad ids.
inline Batch make_batch(const Case& c, int rank, Rng& rng) {
  Batch b;
  const int64_t T = static_cast<int64_t>(c.rows.size());
  const int64_t B = c.batch[static_cast<size_t>(rank)];
  b.offsets.push_back(0);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t rows = c.rows[static_cast<size_t>(t)];
    const int64_t block = (rows + c.world - 1) / c.world;
    for (int64_t s = 0; s < B; ++s) {
      int64_t len = rng.uniform_int(0, 4);
      if (t == c.empty_table && rank == c.empty_rank) len = 0;
      for (int64_t i = 0; i < len; ++i) {
        int64_t id = rng.uniform_int(0, rows - 1);
        const int64_t kind = rng.uniform_int(0, 9);
        if (kind < 3) {  // a row-block edge
          const int64_t k = rng.uniform_int(0, c.world);
          id = std::clamp<int64_t>(k * block - rng.uniform_int(0, 1), 0, rows - 1);
        } else if (kind == 3 && c.padding_idx >= 0) {
          id = c.padding_idx;
        } else if (kind == 4 && (c.bounds == SPEMBED_BOUNDS_SKIP || rank == c.bad_rank)) {
          id = rng.uniform_int(0, 1) ? -1 - rng.uniform_int(0, 3) : rows + rng.uniform_int(0, 3);
        }
        b.ids.push_back(id);
        b.weights.push_back(static_cast<float>(rng.value(DataKind::kReal)));
      }
      b.offsets.push_back(static_cast<int64_t>(b.ids.size()));
    }
  }
  if (rank == c.bad_rank && T * B > 0) {
    // At least one bad id, whatever the draw: in the last bag (table T - 1).
    b.ids.push_back(c.rows.back() + 7);
    b.weights.push_back(0.5f);
    ++b.offsets.back();
  }
  return b;
}

// The global batch: for each table, the ranks' bags in rank order.
inline Batch concat(const Case& c, const std::vector<Batch>& local) {
  Batch g;
  g.offsets.push_back(0);
  const int64_t T = static_cast<int64_t>(c.rows.size());
  for (int64_t t = 0; t < T; ++t) {
    for (int r = 0; r < c.world; ++r) {
      const Batch& b = local[static_cast<size_t>(r)];
      const int64_t B = c.batch[static_cast<size_t>(r)];
      for (int64_t s = 0; s < B; ++s) {
        const int64_t bag = t * B + s;
        for (int64_t i = b.offsets[static_cast<size_t>(bag)];
             i < b.offsets[static_cast<size_t>(bag + 1)]; ++i) {
          g.ids.push_back(b.ids[static_cast<size_t>(i)]);
          g.weights.push_back(b.weights[static_cast<size_t>(i)]);
        }
        g.offsets.push_back(static_cast<int64_t>(g.ids.size()));
      }
    }
  }
  return g;
}

inline HostTensor rows_of(const HostTensor& full, int64_t first, int64_t rows) {
  const bool vec = full.ndim() == 1;
  HostTensor out(full.dtype(),
                 vec ? std::vector<int64_t>{rows} : std::vector<int64_t>{rows, full.size(1)});
  for (int64_t r = 0; r < rows; ++r) {
    if (vec) {
      out.set(r, full.get(first + r));
    } else {
      for (int64_t d = 0; d < full.size(1); ++d) out.set(r, d, full.get(first + r, d));
    }
  }
  return out;
}

inline void run_ranks(int world, const std::function<void(int)>& body) {
  std::vector<std::thread> threads;
  for (int r = 0; r < world; ++r) threads.emplace_back(body, r);
  for (auto& t : threads) t.join();
}

inline int state_count(spembed_optimizer_t o) {
  return o == SPEMBED_OPTIMIZER_SGD ? 0 : (o == SPEMBED_OPTIMIZER_ADAM ? 2 : 1);
}

inline HostTensor make_state(spembed_optimizer_t o, int64_t rows, int64_t dim, Rng& rng) {
  HostTensor s(kF32, o == SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD ? std::vector<int64_t>{rows}
                                                            : std::vector<int64_t>{rows, dim});
  for (int64_t r = 0; r < rows; ++r) {
    if (s.ndim() == 1) {
      s.set(r, 0.1 + std::fabs(rng.value(DataKind::kReal)));
    } else {
      for (int64_t d = 0; d < dim; ++d) s.set(r, d, 0.1 + std::fabs(rng.value(DataKind::kReal)));
    }
  }
  return s;
}

// The case's unsharded tables and optimizer states (random), and their specs.
struct FullTables {
  std::vector<spembed_table_spec_t> specs;
  std::vector<HostTensor> tables, states1, states2;
};

inline FullTables make_full_tables(const Case& c, Rng& rng) {
  FullTables f;
  for (size_t t = 0; t < c.rows.size(); ++t) {
    const int64_t rows = c.rows[t];
    const int64_t dim = c.dims[t];
    f.tables.emplace_back(c.table_dtype, std::vector<int64_t>{rows, dim});
    fill_random(f.tables.back(), rng, DataKind::kReal);
    if (state_count(c.optimizer) >= 1) f.states1.push_back(make_state(c.optimizer, rows, dim, rng));
    if (state_count(c.optimizer) >= 2) f.states2.push_back(make_state(c.optimizer, rows, dim, rng));
    f.specs.push_back({rows, dim, 1.0});
  }
  return f;
}

// The collection's options for the case.
inline spembed_embedding_bag_options_t case_options(const Case& c) {
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_options_init(&options);
  options.pooling = c.pooling;
  options.padding_idx = c.padding_idx;
  options.bounds_policy = c.bounds;
  return options;
}

// Rank r's shards under the case's plan, in local order, cut from the full
// tables and optimizer states (states1 / states2 empty when full_s1 / full_s2 are).
struct LocalShards {
  std::vector<spembed_shard_shape_t> shapes;
  std::vector<HostTensor> shards, states1, states2;
};

inline void cut_local_shards(const Case& c, const std::vector<spembed_table_spec_t>& specs, int r,
                             const std::vector<HostTensor>& full,
                             const std::vector<HostTensor>& full_s1,
                             const std::vector<HostTensor>& full_s2, LocalShards* out) {
  const auto T = static_cast<int64_t>(specs.size());
  int64_t count = -1;
  ASSERT_EQ(
      spembed_shard_plan_local_shards(specs.data(), T, c.plan.data(), c.world, r, nullptr, &count),
      SPEMBED_STATUS_SUCCESS);
  out->shapes.resize(static_cast<size_t>(count));
  ASSERT_EQ(spembed_shard_plan_local_shards(specs.data(), T, c.plan.data(), c.world, r,
                                            out->shapes.data(), &count),
            SPEMBED_STATUS_SUCCESS);
  for (const auto& s : out->shapes) {
    const auto t = static_cast<size_t>(s.table);
    out->shards.push_back(rows_of(full[t], s.first_row, s.rows));
    if (!full_s1.empty()) out->states1.push_back(rows_of(full_s1[t], s.first_row, s.rows));
    if (!full_s2.empty()) out->states2.push_back(rows_of(full_s2[t], s.first_row, s.rows));
  }
}

}  // namespace spembed_test
