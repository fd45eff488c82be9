// Where every table lives under a plan, as every rank computes it alike: the
// local shard order of each rank and the column layout of the exchanged rows.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/distributed/route.h"
#include "spembed/spembed_distributed.h"

namespace spembed::detail {

struct ShardLayout {
  int world = 1;
  int64_t num_tables = 0;
  int64_t total_dim = 0;
  std::vector<RouteTable> tables;
  // Per rank d: its shards, TABLE_WISE ones (group A) first, then ROW_WISE
  // ones with rows (group B); each group by table index.
  std::vector<std::vector<spembed_shard_shape_t>> shards;
  std::vector<int64_t> num_a;        // [world] shards of group A
  std::vector<int64_t> local_index;  // [world * T]: table's local position, or -1
  std::vector<int64_t> a_col;        // [T]: TABLE_WISE table's column in its owner's group A rows
  std::vector<int64_t> b_col;  // [world * T]: ROW_WISE table's column in d's group B rows, or -1
  std::vector<int64_t> dim_a;  // [world]
  std::vector<int64_t> dim_b;  // [world]
};

// Specs and plan valid for `world` ranks (messages name the entry), as the
// functions `function` names.
spembed_status_t check_specs_and_plan(const spembed_table_spec_t* specs, int64_t num_tables,
                                      const spembed_shard_plan_entry_t* plan, int world);

ShardLayout make_layout(const spembed_table_spec_t* specs, int64_t num_tables,
                        const spembed_shard_plan_entry_t* plan, int world);

}  // namespace spembed::detail
