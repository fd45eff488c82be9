// The plan: its checks, the greedy planner, and the layout every rank derives.
#include <algorithm>
#include <cinttypes>
#include <cmath>
#include <numeric>

#include "host/common/errors.h"
#include "host/distributed/layout.h"

namespace spembed::detail {

spembed_status_t check_specs_and_plan(const spembed_table_spec_t* specs, int64_t num_tables,
                                      const spembed_shard_plan_entry_t* plan, int world) {
  if (world < 1) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "world: %d must be >= 1", world);
  if (num_tables < 1 || num_tables > INT32_MAX) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "num_tables: %" PRId64 " must be in [1, 2^31)",
                num_tables);
  }
  if (specs == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "specs: must not be NULL");
  int64_t total_dim = 0;
  for (int64_t t = 0; t < num_tables; ++t) {
    const spembed_table_spec_t& s = specs[t];
    if (s.rows < 1 || s.dim < 1 || s.dim > INT32_MAX) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "specs[%" PRId64 "]: rows %" PRId64 " and dim %" PRId64
                  " must be >= 1 (dim < 2^31)",
                  t, s.rows, s.dim);
    }
    if (!(s.ids_per_sample >= 0.0) || !std::isfinite(s.ids_per_sample)) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "specs[%" PRId64 "].ids_per_sample: must be finite and >= 0", t);
    }
    total_dim += s.dim;
    if (total_dim > INT32_MAX) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "specs: the sum of dims exceeds 2^31 - 1");
    }
  }
  if (plan == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "plan: must not be NULL");
  for (int64_t t = 0; t < num_tables; ++t) {
    const spembed_shard_plan_entry_t& e = plan[t];
    if (e.sharding == SPEMBED_SHARDING_TABLE_WISE) {
      if (e.owner < 0 || e.owner >= world) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                    "plan[%" PRId64 "].owner: %d is not a rank of world %d", t, e.owner, world);
      }
    } else if (e.sharding != SPEMBED_SHARDING_ROW_WISE) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "plan[%" PRId64 "].sharding: %d is not TABLE_WISE or ROW_WISE", t,
                  static_cast<int>(e.sharding));
    }
  }
  return SPEMBED_STATUS_SUCCESS;
}

ShardLayout make_layout(const spembed_table_spec_t* specs, int64_t num_tables,
                        const spembed_shard_plan_entry_t* plan, int world) {
  ShardLayout l;
  const size_t W = static_cast<size_t>(world);
  const size_t T = static_cast<size_t>(num_tables);
  l.world = world;
  l.num_tables = num_tables;
  l.tables.resize(T);
  l.shards.resize(W);
  l.num_a.assign(W, 0);
  l.local_index.assign(W * T, -1);
  l.a_col.assign(T, -1);
  l.b_col.assign(W * T, -1);
  l.dim_a.assign(W, 0);
  l.dim_b.assign(W, 0);
  for (size_t t = 0; t < T; ++t) {
    RouteTable& r = l.tables[t];
    r.rows = specs[t].rows;
    r.dim = specs[t].dim;
    r.out_col = l.total_dim;
    l.total_dim += r.dim;
    if (plan[t].sharding == SPEMBED_SHARDING_ROW_WISE) {
      r.block = (r.rows + world - 1) / world;
      r.owner = -1;
    } else {
      r.owner = plan[t].owner;
    }
  }
  for (size_t d = 0; d < W; ++d) {
    for (size_t t = 0; t < T; ++t) {  // group A
      const RouteTable& r = l.tables[t];
      if (r.block != 0 || r.owner != static_cast<int>(d)) continue;
      l.local_index[d * T + t] = static_cast<int64_t>(l.shards[d].size());
      l.shards[d].push_back({static_cast<int64_t>(t), r.rows, 0, r.dim});
      l.a_col[t] = l.dim_a[d];
      l.dim_a[d] += r.dim;
    }
    l.num_a[d] = static_cast<int64_t>(l.shards[d].size());
    for (size_t t = 0; t < T; ++t) {  // group B
      const RouteTable& r = l.tables[t];
      if (r.block == 0) continue;
      const int64_t first = static_cast<int64_t>(d) * r.block;
      const int64_t rows = std::min(r.rows, first + r.block) - first;
      if (rows <= 0) continue;
      l.local_index[d * T + t] = static_cast<int64_t>(l.shards[d].size());
      l.shards[d].push_back({static_cast<int64_t>(t), rows, first, r.dim});
      l.b_col[d * T + t] = l.dim_b[d];
      l.dim_b[d] += r.dim;
    }
  }
  return l;
}

}  // namespace spembed::detail

using namespace spembed::detail;

namespace {

int64_t state_floats_per_row(spembed_optimizer_t optimizer, int64_t dim) {
  switch (optimizer) {
    case SPEMBED_OPTIMIZER_ADAGRAD:
      return dim;
    case SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD:
      return 1;
    case SPEMBED_OPTIMIZER_ADAM:
      return 2 * dim;
    default:
      return 0;
  }
}

}  // namespace

extern "C" spembed_status_t spembed_shard_plan_propose(
    const spembed_table_spec_t* specs, int64_t num_tables, int world, DLDataType table_dtype,
    spembed_optimizer_t optimizer, int64_t budget_bytes, spembed_shard_plan_entry_t* plan) {
  return guarded("spembed_shard_plan_propose", [&]() -> spembed_status_t {
    if (plan == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "plan: must not be NULL");
    // Check the specs with a placeholder plan (every table on rank 0).
    std::vector<spembed_shard_plan_entry_t> probe(
        num_tables > 0 && num_tables <= INT32_MAX ? static_cast<size_t>(num_tables) : 0,
        spembed_shard_plan_entry_t{SPEMBED_SHARDING_TABLE_WISE, 0});
    SPEMBED_RETURN_IF_ERROR(check_specs_and_plan(specs, num_tables, probe.data(), world));
    int64_t elem = 0;
    if (table_dtype.lanes == 1 && ((table_dtype.code == kDLFloat && table_dtype.bits == 32) ||
                                   (table_dtype.code == kDLFloat && table_dtype.bits == 16) ||
                                   (table_dtype.code == kDLBfloat && table_dtype.bits == 16))) {
      elem = table_dtype.bits / 8;
    } else {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "table_dtype: must be float32, float16 or bfloat16");
    }
    if (optimizer < SPEMBED_OPTIMIZER_SGD || optimizer > SPEMBED_OPTIMIZER_ADAM) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "optimizer: %d is not a spembed_optimizer_t",
                  static_cast<int>(optimizer));
    }
    if (budget_bytes <= 0) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "budget_bytes: %" PRId64 " must be > 0",
                  budget_bytes);
    }
    const size_t T = static_cast<size_t>(num_tables);
    // Bytes per row (float math: rows x dim may be large; doubles hold 2^53).
    auto row_bytes = [&](size_t t) {
      return static_cast<double>(specs[t].dim * elem) +
             4.0 * static_cast<double>(state_floats_per_row(optimizer, specs[t].dim));
    };
    std::vector<size_t> order(T);
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      return static_cast<double>(specs[a].rows) * row_bytes(a) >
             static_cast<double>(specs[b].rows) * row_bytes(b);
    });
    std::vector<double> used(static_cast<size_t>(world), 0.0);
    std::vector<double> load(static_cast<size_t>(world), 0.0);
    std::vector<spembed_shard_plan_entry_t> out(T);
    const double budget = static_cast<double>(budget_bytes);
    for (size_t t : order) {
      const double bytes = static_cast<double>(specs[t].rows) * row_bytes(t);
      if (bytes > budget) {
        const int64_t block = (specs[t].rows + world - 1) / world;
        const double block_bytes = static_cast<double>(block) * row_bytes(t);
        for (int r = 0; r < world; ++r) {
          if (used[static_cast<size_t>(r)] + block_bytes > budget) {
            return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                        "specs[%zu]: table of %.0f bytes does not fit: ROW_WISE blocks of "
                        "%.0f bytes exceed rank %d's budget (%.0f of %" PRId64 " bytes used)",
                        t, bytes, block_bytes, r, used[static_cast<size_t>(r)], budget_bytes);
          }
        }
        for (int r = 0; r < world; ++r) {
          const int64_t rows = std::min(specs[t].rows, (r + 1) * block) - r * block;
          if (rows <= 0) continue;
          used[static_cast<size_t>(r)] += static_cast<double>(rows) * row_bytes(t);
          load[static_cast<size_t>(r)] += specs[t].ids_per_sample * static_cast<double>(rows) /
                                          static_cast<double>(specs[t].rows);
        }
        out[t] = {SPEMBED_SHARDING_ROW_WISE, -1};
        continue;
      }
      int best = -1;
      for (int r = 0; r < world; ++r) {
        if (used[static_cast<size_t>(r)] + bytes > budget) continue;
        if (best < 0 || load[static_cast<size_t>(r)] < load[static_cast<size_t>(best)]) best = r;
      }
      if (best < 0) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                    "specs[%zu]: table of %.0f bytes fits on no rank (budget %" PRId64
                    " bytes per rank; the tables placed before it used the rest)",
                    t, bytes, budget_bytes);
      }
      used[static_cast<size_t>(best)] += bytes;
      load[static_cast<size_t>(best)] += specs[t].ids_per_sample;
      out[t] = {SPEMBED_SHARDING_TABLE_WISE, best};
    }
    std::copy(out.begin(), out.end(), plan);
    return SPEMBED_STATUS_SUCCESS;
  });
}

extern "C" spembed_status_t spembed_shard_plan_local_shards(
    const spembed_table_spec_t* specs, int64_t num_tables, const spembed_shard_plan_entry_t* plan,
    int world, int rank, spembed_shard_shape_t* shapes, int64_t* count) {
  return guarded("spembed_shard_plan_local_shards", [&]() -> spembed_status_t {
    SPEMBED_RETURN_IF_ERROR(check_specs_and_plan(specs, num_tables, plan, world));
    if (rank < 0 || rank >= world) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "rank: %d is not in [0, world=%d)", rank, world);
    }
    if (count == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "count: must not be NULL");
    const ShardLayout l = make_layout(specs, num_tables, plan, world);
    const auto& mine = l.shards[static_cast<size_t>(rank)];
    if (shapes != nullptr) std::copy(mine.begin(), mine.end(), shapes);
    *count = static_cast<int64_t>(mine.size());
    return SPEMBED_STATUS_SUCCESS;
  });
}
