// The sharded collection on the CPU over the in-process communicator: each
// rank a thread, compared with the unsharded table batch run on the global
// batch (the ranks' batches in rank order), over several optimizer steps.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

#include "sharded_test_util.h"
#include "spembed/spembed.h"
#include "spembed/spembed_distributed.h"
#include "test_util.h"

namespace {

using namespace spembed_test;

// Everything one rank owns across the steps.
struct RankState {
  spembed_comm_t comm = nullptr;
  std::vector<spembed_shard_shape_t> shapes;
  std::vector<HostTensor> shards, states1, states2;
  std::vector<DLTensor> shard_views, s1_views, s2_views;
  spembed_sharded_collection_t coll = nullptr;
  HostTensor workspace;
  spembed_status_t fwd = SPEMBED_STATUS_SUCCESS, bwd = SPEMBED_STATUS_SUCCESS;
  std::string fwd_msg, bwd_msg;
  HostTensor output, report;
};

// Runs `c` and compares with the unsharded collection step by step.
void run_case(const Case& c) {
  SCOPED_TRACE(::testing::Message() << "world " << c.world << " seed " << c.seed);
  Rng rng(c.seed);
  const int64_t T = static_cast<int64_t>(c.rows.size());
  const int64_t D = total_dim(c);
  spembed_handle_t handle = nullptr;
  ASSERT_EQ(spembed_create(&handle), SPEMBED_STATUS_SUCCESS);

  // The unsharded collection.
  FullTables f = make_full_tables(c, rng);
  const std::vector<spembed_table_spec_t>& specs = f.specs;
  std::vector<HostTensor>& full = f.tables;
  std::vector<HostTensor>& full_s1 = f.states1;
  std::vector<HostTensor>& full_s2 = f.states2;

  // Sharded: each rank's shards cut from the same initial tables.
  std::vector<RankState> ranks(static_cast<size_t>(c.world));
  std::vector<spembed_comm_t> comms(static_cast<size_t>(c.world));
  ASSERT_EQ(spembed_comm_create_in_process(c.world, comms.data()), SPEMBED_STATUS_SUCCESS);
  const spembed_embedding_bag_options_t options = case_options(c);
  const int64_t max_batch = *std::max_element(c.batch.begin(), c.batch.end());
  const int64_t max_ids = max_batch * T * 4 + 1;
  for (int r = 0; r < c.world; ++r) {
    RankState& rs = ranks[static_cast<size_t>(r)];
    rs.comm = comms[static_cast<size_t>(r)];
    LocalShards local;
    cut_local_shards(c, specs, r, full, full_s1, full_s2, &local);
    if (::testing::Test::HasFatalFailure()) return;
    const auto count = static_cast<int64_t>(local.shapes.size());
    rs.shapes = std::move(local.shapes);
    rs.shards = std::move(local.shards);
    rs.states1 = std::move(local.states1);
    rs.states2 = std::move(local.states2);
    for (auto& s : rs.shards) rs.shard_views.push_back(*s.dl());
    for (auto& s : rs.states1) rs.s1_views.push_back(*s.dl());
    for (auto& s : rs.states2) rs.s2_views.push_back(*s.dl());
    ASSERT_EQ(spembed_sharded_collection_create(
                  handle, specs.data(), T, c.plan.data(), c.table_dtype, rs.comm,
                  rs.shard_views.empty() ? nullptr : rs.shard_views.data(), count, &options,
                  max_batch, max_ids, &rs.coll),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    size_t bytes = 0;
    ASSERT_EQ(spembed_sharded_collection_workspace_size(rs.coll, &bytes), SPEMBED_STATUS_SUCCESS);
    rs.workspace = HostTensor(kU8, {static_cast<int64_t>(bytes) + 1});
  }
  std::vector<DLTensor> full_views, full_s1_views, full_s2_views;
  for (auto& t : full) full_views.push_back(*t.dl());
  for (auto& t : full_s1) full_s1_views.push_back(*t.dl());
  for (auto& t : full_s2) full_s2_views.push_back(*t.dl());
  spembed_table_batch_t ref_batch = nullptr;
  ASSERT_EQ(spembed_table_batch_create(handle, full_views.data(), T, &ref_batch),
            SPEMBED_STATUS_SUCCESS);

  const bool expect_error = c.bad_rank >= 0 && c.bounds == SPEMBED_BOUNDS_ERROR;
  for (int step = 1; step <= c.steps; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    std::vector<Batch> local;
    for (int r = 0; r < c.world; ++r) local.push_back(make_batch(c, r, rng));
    const Batch g = concat(c, local);
    int64_t Btot = 0;
    for (int64_t b : c.batch) Btot += b;

    // Reference forward.
    HostTensor g_ids = make_index_tensor(c.index_dtype, g.ids);
    HostTensor g_offs = make_index_tensor(c.index_dtype, g.offsets);
    HostTensor g_w = make_f32_tensor(g.weights);
    HostTensor ref_out(c.out_dtype, {Btot, D});
    ref_out.fill_bytes(kPoisonByte);
    const bool max = c.pooling == SPEMBED_POOLING_MAX;
    HostTensor ref_argmax(c.index_dtype, {Btot, D});
    if (!expect_error) {
      ASSERT_EQ(spembed_embedding_bag_batched_forward(handle, ref_batch, g_ids.dl(), g_offs.dl(),
                                                      c.weighted ? g_w.dl() : nullptr, &options,
                                                      ref_out.dl(), max ? ref_argmax.dl() : nullptr,
                                                      nullptr, nullptr, 0, nullptr),
                SPEMBED_STATUS_SUCCESS)
          << spembed_last_error();
    }

    // Sharded forward.
    std::vector<HostTensor> ids, offs, ws, grads;
    for (int r = 0; r < c.world; ++r) {
      const Batch& b = local[static_cast<size_t>(r)];
      ids.push_back(make_index_tensor(c.index_dtype, b.ids));
      offs.push_back(make_index_tensor(c.index_dtype, b.offsets));
      ws.push_back(make_f32_tensor(b.weights));
      RankState& rs = ranks[static_cast<size_t>(r)];
      rs.output = HostTensor(c.out_dtype, {c.batch[static_cast<size_t>(r)], D});
      rs.output.fill_bytes(kPoisonByte);
      rs.report = make_report();
      rs.workspace.fill_bytes(kPoisonByte);
    }
    run_ranks(c.world, [&](int r) {
      RankState& rs = ranks[static_cast<size_t>(r)];
      rs.fwd = spembed_sharded_collection_forward(
          rs.coll, ids[static_cast<size_t>(r)].dl(), offs[static_cast<size_t>(r)].dl(),
          c.weighted ? ws[static_cast<size_t>(r)].dl() : nullptr, rs.output.dl(), rs.report.dl(),
          rs.workspace.storage(), rs.workspace.storage_bytes(), nullptr);
      rs.fwd_msg = spembed_last_error();
    });
    if (expect_error) {
      for (int r = 0; r < c.world; ++r) {
        RankState& rs = ranks[static_cast<size_t>(r)];
        EXPECT_EQ(rs.fwd, SPEMBED_STATUS_INDEX_OUT_OF_RANGE) << "rank " << r << ": " << rs.fwd_msg;
        EXPECT_NE(rs.fwd_msg.find(r == c.bad_rank ? "indices[" : "rank "), std::string::npos)
            << rs.fwd_msg;
        const std::vector<uint8_t> bytes = rs.output.bytes();
        EXPECT_TRUE(
            std::all_of(bytes.begin(), bytes.end(), [](uint8_t v) { return v == kPoisonByte; }))
            << "rank " << r << " wrote its output";
        EXPECT_EQ(rs.report.get_int(SPEMBED_REPORT_STATUS),
                  r == c.bad_rank ? SPEMBED_STATUS_INDEX_OUT_OF_RANGE : SPEMBED_STATUS_SUCCESS);
      }
    } else {
      int64_t first = 0;
      for (int r = 0; r < c.world; ++r) {
        RankState& rs = ranks[static_cast<size_t>(r)];
        ASSERT_EQ(rs.fwd, SPEMBED_STATUS_SUCCESS) << "rank " << r << ": " << rs.fwd_msg;
        const Batch& b = local[static_cast<size_t>(r)];
        const int64_t B = c.batch[static_cast<size_t>(r)];
        int64_t col = 0;
        for (int64_t t = 0; t < T; ++t) {
          const int64_t dim = c.dims[static_cast<size_t>(t)];
          for (int64_t s = 0; s < B; ++s) {
            // Bound for ROW_WISE: two float32 sums of the same n terms in
            // different orders, then one rounding each to the output dtype.
            const int64_t bag = t * B + s;
            for (int64_t d = 0; d < dim; ++d) {
              const double got = rs.output.get(s, col + d);
              const double want = ref_out.get(first + s, col + d);
              if (c.plan[static_cast<size_t>(t)].sharding == TW) {
                ASSERT_EQ(got, want) << "rank " << r << " table " << t << " sample " << s;
              } else {
                double abs_sum = 0.0;
                int64_t n = 0;
                for (int64_t i = b.offsets[static_cast<size_t>(bag)];
                     i < b.offsets[static_cast<size_t>(bag + 1)]; ++i) {
                  const int64_t id = b.ids[static_cast<size_t>(i)];
                  if (id == c.padding_idx || id < 0 || id >= c.rows[static_cast<size_t>(t)])
                    continue;
                  const double w = c.weighted ? b.weights[static_cast<size_t>(i)] : 1.0;
                  abs_sum += std::fabs(w * full[static_cast<size_t>(t)].get(id, d));
                  ++n;
                }
                // (the weights here are the pre-step tables': the reference
                // forward read the same values)
                if (c.pooling == SPEMBED_POOLING_MEAN && n > 0) abs_sum /= static_cast<double>(n);
                const double bound = 2.0 * gamma32(n + 1) * abs_sum +
                                     2.0 * unit_roundoff(c.out_dtype) * std::fabs(want) +
                                     2.0 * subnormal_half_ulp(c.out_dtype);
                ASSERT_LE(std::fabs(got - want), bound)
                    << "rank " << r << " table " << t << " sample " << s << " col " << d;
              }
            }
          }
          col += dim;
        }
        first += B;
      }
    }

    // Backward with the optimizer step, both sides.
    HostTensor g_grad(c.out_dtype, {Btot, D});
    fill_random(g_grad, rng, DataKind::kReal);
    spembed_optimizer_options_t opt;
    spembed_optimizer_options_init(&opt);
    opt.optimizer = c.optimizer;
    opt.learning_rate = 0.05f;
    opt.weight_decay = 0.01f;
    opt.eps = 1e-6f;
    opt.step = step;
    if (!expect_error) {
      spembed_embedding_bag_batched_backward_args_t args{};
      args.indices = g_ids.dl();
      args.offsets = g_offs.dl();
      args.per_sample_weights = c.weighted ? g_w.dl() : nullptr;
      args.grad_output = g_grad.dl();
      args.argmax = max ? ref_argmax.dl() : nullptr;
      args.states1 = full_s1_views.empty() ? nullptr : full_s1_views.data();
      args.states2 = full_s2_views.empty() ? nullptr : full_s2_views.data();
      args.optimizer = &opt;
      ASSERT_EQ(spembed_embedding_bag_batched_backward(handle, ref_batch, &args, &options,
                                                       SPEMBED_BACKWARD_DETERMINISTIC, nullptr,
                                                       nullptr, 0, nullptr),
                SPEMBED_STATUS_SUCCESS)
          << spembed_last_error();
    }
    int64_t first = 0;
    for (int r = 0; r < c.world; ++r) {
      grads.push_back(rows_of(g_grad, first, c.batch[static_cast<size_t>(r)]));
      first += c.batch[static_cast<size_t>(r)];
    }
    std::vector<std::vector<std::vector<uint8_t>>> before(static_cast<size_t>(c.world));
    for (int r = 0; r < c.world; ++r) {
      for (auto& s : ranks[static_cast<size_t>(r)].shards)
        before[static_cast<size_t>(r)].push_back(s.bytes());
    }
    run_ranks(c.world, [&](int r) {
      RankState& rs = ranks[static_cast<size_t>(r)];
      rs.bwd = spembed_sharded_collection_backward(
          rs.coll, ids[static_cast<size_t>(r)].dl(), offs[static_cast<size_t>(r)].dl(),
          c.weighted ? ws[static_cast<size_t>(r)].dl() : nullptr,
          grads[static_cast<size_t>(r)].dl(), rs.s1_views.empty() ? nullptr : rs.s1_views.data(),
          rs.s2_views.empty() ? nullptr : rs.s2_views.data(), &opt, nullptr, rs.workspace.storage(),
          rs.workspace.storage_bytes(), nullptr);
      rs.bwd_msg = spembed_last_error();
    });
    for (int r = 0; r < c.world; ++r) {
      RankState& rs = ranks[static_cast<size_t>(r)];
      if (expect_error) {
        EXPECT_EQ(rs.bwd, SPEMBED_STATUS_INDEX_OUT_OF_RANGE) << rs.bwd_msg;
        for (size_t j = 0; j < rs.shards.size(); ++j) {
          EXPECT_TRUE(rs.shards[j].bytes_equal(before[static_cast<size_t>(r)][j]))
              << "rank " << r << " shard " << j << " changed on error";
        }
        continue;
      }
      ASSERT_EQ(rs.bwd, SPEMBED_STATUS_SUCCESS) << "rank " << r << ": " << rs.bwd_msg;
      // Every row gets the same contributions in the same order: bitwise.
      for (size_t j = 0; j < rs.shapes.size(); ++j) {
        const auto& s = rs.shapes[j];
        const HostTensor& want = full[static_cast<size_t>(s.table)];
        for (int64_t row = 0; row < s.rows; ++row) {
          for (int64_t d = 0; d < s.dim; ++d) {
            ASSERT_EQ(rs.shards[j].get(row, d), want.get(s.first_row + row, d))
                << "rank " << r << " table " << s.table << " row " << s.first_row + row;
          }
          if (!rs.states1.empty()) {
            const HostTensor& w1 = full_s1[static_cast<size_t>(s.table)];
            if (w1.ndim() == 1) {
              ASSERT_EQ(rs.states1[j].get(row), w1.get(s.first_row + row));
            } else {
              for (int64_t d = 0; d < s.dim; ++d) {
                ASSERT_EQ(rs.states1[j].get(row, d), w1.get(s.first_row + row, d));
              }
            }
          }
          if (!rs.states2.empty()) {
            for (int64_t d = 0; d < s.dim; ++d) {
              ASSERT_EQ(rs.states2[j].get(row, d),
                        full_s2[static_cast<size_t>(s.table)].get(s.first_row + row, d));
            }
          }
        }
      }
    }
  }
  for (auto& rs : ranks) {
    EXPECT_EQ(spembed_sharded_collection_destroy(rs.coll), SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(spembed_comm_destroy(rs.comm), SPEMBED_STATUS_SUCCESS);
  }
  spembed_table_batch_destroy(ref_batch);
  spembed_destroy(handle);
}

class ShardedOptimizers : public ::testing::TestWithParam<spembed_optimizer_t> {};

TEST_P(ShardedOptimizers, MatchesUnshardedEveryWorldAndPooling) {
  for (int world = 1; world <= 4; ++world) {
    for (spembed_pooling_t pooling : {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN}) {
      Case c;
      c.world = world;
      c.optimizer = GetParam();
      c.pooling = pooling;
      c.batch.clear();
      for (int r = 0; r < world; ++r) c.batch.push_back(2 + r % 3);
      // Table 3 on the last rank; with world 4, ranks 1 and 2 own no TABLE_WISE
      // table, and table 2 (3 rows) has fewer rows than ranks.
      c.plan[3].owner = world - 1;
      c.seed = static_cast<uint64_t>(100 * world + pooling * 10 + GetParam());
      run_case(c);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(All, ShardedOptimizers,
                         ::testing::Values(SPEMBED_OPTIMIZER_SGD, SPEMBED_OPTIMIZER_ADAGRAD,
                                           SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD,
                                           SPEMBED_OPTIMIZER_ADAM));

TEST(Sharded, MaxPoolingTableWise) {
  for (int world = 1; world <= 4; ++world) {
    for (spembed_optimizer_t opt : {SPEMBED_OPTIMIZER_SGD, SPEMBED_OPTIMIZER_ADAM}) {
      Case c;
      c.world = world;
      c.batch.clear();
      for (int r = 0; r < world; ++r) c.batch.push_back(3 - r % 2);
      c.plan = {{TW, 0}, {TW, world - 1}, {TW, world / 2}, {TW, 0}};
      c.pooling = SPEMBED_POOLING_MAX;
      c.padding_idx = world == 3 ? 1 : -1;
      c.table_dtype = world == 2 ? kBF16 : kF32;
      c.optimizer = opt;
      c.seed = 300 + static_cast<uint64_t>(world * 10 + opt);
      run_case(c);
      if (::testing::Test::HasFatalFailure()) return;
    }
  }
}

TEST(Sharded, WeightedInt32Fp16TablesBf16Output) {
  for (int world : {1, 3}) {
    Case c;
    c.world = world;
    c.batch.assign(static_cast<size_t>(world), 3);
    c.plan[3].owner = world - 1;
    c.weighted = true;
    c.index_dtype = kI32;
    c.table_dtype = kF16;
    c.out_dtype = kBF16;
    c.optimizer = SPEMBED_OPTIMIZER_ADAGRAD;
    c.seed = 7 + static_cast<uint64_t>(world);
    run_case(c);
  }
}

TEST(Sharded, EmptyLocalBatchEmptyFeatureAndPadding) {
  Case c;
  c.world = 3;
  c.batch = {0, 4, 2};                              // rank 0 has no samples
  c.plan = {{TW, 2}, {RW, -1}, {RW, -1}, {TW, 2}};  // ranks 0 and 1 own no TABLE_WISE table
  c.empty_table = 1;                                // ROW_WISE table 1 gets no ids on rank 2
  c.empty_rank = 2;
  c.padding_idx = 2;
  c.pooling = SPEMBED_POOLING_MEAN;
  c.optimizer = SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
  run_case(c);
}

TEST(Sharded, RankWithoutShards) {
  for (spembed_optimizer_t opt : {SPEMBED_OPTIMIZER_ADAGRAD, SPEMBED_OPTIMIZER_ADAM}) {
    Case c;
    c.world = 3;
    c.rows = {40, 2, 2, 25};  // ROW_WISE blocks of 1 row: rank 2 holds none
    c.plan = {{TW, 0}, {RW, -1}, {RW, -1}, {TW, 1}};
    c.batch = {2, 3, 4};
    c.pooling = SPEMBED_POOLING_MEAN;
    c.optimizer = opt;
    c.seed = 500 + static_cast<uint64_t>(opt);
    run_case(c);
  }
}

TEST(Sharded, AllRanksEmpty) {
  Case c;
  c.world = 2;
  c.batch = {0, 0};
  c.steps = 1;
  run_case(c);
}

TEST(Sharded, SkipPolicyDropsBadIdsOnEveryRank) {
  Case c;
  c.world = 4;
  c.batch = {3, 1, 2, 4};
  c.bounds = SPEMBED_BOUNDS_SKIP;
  c.pooling = SPEMBED_POOLING_MEAN;
  c.optimizer = SPEMBED_OPTIMIZER_ADAM;
  run_case(c);
}

TEST(Sharded, OutOfRangeIdOnOneRankFailsEveryRank) {
  for (int bad = 0; bad < 3; ++bad) {
    Case c;
    c.world = 3;
    c.batch = {2, 3, 1};
    c.plan[3].owner = 2;
    c.bad_rank = bad;
    c.steps = 1;
    c.seed = 40 + static_cast<uint64_t>(bad);
    run_case(c);
  }
}

}  // namespace
