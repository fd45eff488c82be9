// Bad arguments to the distributed API: a clear status, a message naming the
// argument, nothing written, and (for the collective calls) every rank fails
// without hanging when one rank's arguments are bad.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "spembed/spembed.h"
#include "spembed/spembed_distributed.h"
#include "test_util.h"

namespace {

using namespace spembed_test;

constexpr auto TW = SPEMBED_SHARDING_TABLE_WISE;
constexpr auto RW = SPEMBED_SHARDING_ROW_WISE;

void expect_fails(spembed_status_t got, spembed_status_t want, const std::string& names) {
  EXPECT_EQ(got, want) << spembed_last_error();
  EXPECT_NE(std::string(spembed_last_error()).find(names), std::string::npos)
      << "message: " << spembed_last_error() << " should name " << names;
}

// ---- planner ----------------------------------------------------------------

TEST(ShardPlan, GreedyTableWiseByLoadAndRowWiseWhenTooLarge) {
  // f32, SGD: bytes = rows * dim * 4.
  const std::vector<spembed_table_spec_t> specs{
      {100, 4, 1.0},   // 1600 B
      {1000, 8, 5.0},  // 32000 B: over the budget, ROW_WISE
      {50, 4, 3.0},    // 800 B
      {60, 4, 2.0}};   // 960 B
  std::vector<spembed_shard_plan_entry_t> plan(4, {TW, 99});
  ASSERT_EQ(spembed_shard_plan_propose(specs.data(), 4, 2, kF32, SPEMBED_OPTIMIZER_SGD, 20000,
                                       plan.data()),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  EXPECT_EQ(plan[1].sharding, RW);
  EXPECT_EQ(plan[1].owner, -1);
  // After the ROW_WISE table both ranks carry load 2.5: table 0 (largest) to
  // rank 0, then table 3 to rank 1 (load 2.5 < 3.5), then table 2 to rank 1
  // (4.5 vs 3.5: rank 0).
  EXPECT_EQ(plan[0].sharding, TW);
  EXPECT_EQ(plan[0].owner, 0);
  EXPECT_EQ(plan[3].owner, 1);
  EXPECT_EQ(plan[2].owner, 0);
}

TEST(ShardPlan, OptimizerStateCountsAndUnplaceableTableIsNamed) {
  // 100 x 4 f32 = 1600 B; with Adam 3x = 4800 B: over a 4000 B budget, and as
  // ROW_WISE over 1 rank the block is the whole table: no fit.
  const std::vector<spembed_table_spec_t> specs{{10, 4, 1.0}, {100, 4, 1.0}};
  std::vector<spembed_shard_plan_entry_t> plan(2, {TW, 7});
  ASSERT_EQ(spembed_shard_plan_propose(specs.data(), 2, 1, kF32, SPEMBED_OPTIMIZER_SGD, 4000,
                                       plan.data()),
            SPEMBED_STATUS_SUCCESS);
  plan.assign(2, {TW, 7});
  expect_fails(spembed_shard_plan_propose(specs.data(), 2, 1, kF32, SPEMBED_OPTIMIZER_ADAM, 4000,
                                          plan.data()),
               SPEMBED_STATUS_INVALID_ARGUMENT, "specs[1]");
  EXPECT_EQ(plan[0].owner, 7);  // not written
  expect_fails(spembed_shard_plan_propose(specs.data(), 2, 0, kF32, SPEMBED_OPTIMIZER_SGD, 4000,
                                          plan.data()),
               SPEMBED_STATUS_INVALID_ARGUMENT, "world");
  expect_fails(spembed_shard_plan_propose(specs.data(), 2, 2, kI32, SPEMBED_OPTIMIZER_SGD, 4000,
                                          plan.data()),
               SPEMBED_STATUS_INVALID_ARGUMENT, "table_dtype");
  expect_fails(
      spembed_shard_plan_propose(specs.data(), 2, 2, kF32, SPEMBED_OPTIMIZER_SGD, 0, plan.data()),
      SPEMBED_STATUS_INVALID_ARGUMENT, "budget_bytes");
  expect_fails(
      spembed_shard_plan_propose(nullptr, 2, 2, kF32, SPEMBED_OPTIMIZER_SGD, 10, plan.data()),
      SPEMBED_STATUS_INVALID_ARGUMENT, "specs");
  const std::vector<spembed_table_spec_t> bad{{0, 4, 1.0}};
  expect_fails(
      spembed_shard_plan_propose(bad.data(), 1, 2, kF32, SPEMBED_OPTIMIZER_SGD, 10, plan.data()),
      SPEMBED_STATUS_INVALID_ARGUMENT, "specs[0]");
}

TEST(ShardPlan, LocalShardsRowBlocksAndRanksPastTheEnd) {
  const std::vector<spembed_table_spec_t> specs{{3, 4, 1.0}, {10, 2, 1.0}, {5, 8, 1.0}};
  const std::vector<spembed_shard_plan_entry_t> plan{{RW, -1}, {RW, -1}, {TW, 3}};
  const std::vector<std::vector<spembed_shard_shape_t>> want{
      {{0, 1, 0, 4}, {1, 3, 0, 2}},
      {{0, 1, 1, 4}, {1, 3, 3, 2}},
      {{0, 1, 2, 4}, {1, 3, 6, 2}},
      {{2, 5, 0, 8}, {1, 1, 9, 2}}};  // TABLE_WISE first; table 0 has no rows here
  for (int r = 0; r < 4; ++r) {
    int64_t count = -1;
    ASSERT_EQ(spembed_shard_plan_local_shards(specs.data(), 3, plan.data(), 4, r, nullptr, &count),
              SPEMBED_STATUS_SUCCESS);
    ASSERT_EQ(count, static_cast<int64_t>(want[static_cast<size_t>(r)].size()));
    std::vector<spembed_shard_shape_t> got(static_cast<size_t>(count), {-1, -1, -1, -1});
    ASSERT_EQ(
        spembed_shard_plan_local_shards(specs.data(), 3, plan.data(), 4, r, got.data(), &count),
        SPEMBED_STATUS_SUCCESS);
    for (size_t j = 0; j < got.size(); ++j) {
      const auto& w = want[static_cast<size_t>(r)][j];
      EXPECT_EQ(got[j].table, w.table) << r << "," << j;
      EXPECT_EQ(got[j].rows, w.rows) << r << "," << j;
      EXPECT_EQ(got[j].first_row, w.first_row) << r << "," << j;
      EXPECT_EQ(got[j].dim, w.dim) << r << "," << j;
    }
  }
  int64_t count = 0;
  expect_fails(spembed_shard_plan_local_shards(specs.data(), 3, plan.data(), 4, 4, nullptr, &count),
               SPEMBED_STATUS_INVALID_ARGUMENT, "rank");
  const std::vector<spembed_shard_plan_entry_t> bad_owner{{RW, -1}, {RW, -1}, {TW, 4}};
  expect_fails(
      spembed_shard_plan_local_shards(specs.data(), 3, bad_owner.data(), 4, 0, nullptr, &count),
      SPEMBED_STATUS_INVALID_ARGUMENT, "plan[2].owner");
  expect_fails(
      spembed_shard_plan_local_shards(specs.data(), 3, plan.data(), 4, 0, nullptr, nullptr),
      SPEMBED_STATUS_INVALID_ARGUMENT, "count");
}

// ---- communicators ----------------------------------------------------------

TEST(ShardComm, InProcessAndNcclArguments) {
  std::vector<spembed_comm_t> comms(3, nullptr);
  expect_fails(spembed_comm_create_in_process(0, comms.data()), SPEMBED_STATUS_INVALID_ARGUMENT,
               "world");
  expect_fails(spembed_comm_create_in_process(2, nullptr), SPEMBED_STATUS_INVALID_ARGUMENT,
               "comms");
  EXPECT_EQ(comms[0], nullptr);
  ASSERT_EQ(spembed_comm_create_in_process(3, comms.data()), SPEMBED_STATUS_SUCCESS);
  for (int r = 0; r < 3; ++r) {
    int rank = -1, world = -1;
    ASSERT_EQ(spembed_comm_rank(comms[static_cast<size_t>(r)], &rank, &world),
              SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(rank, r);
    EXPECT_EQ(world, 3);
  }
  int rank = 0;
  expect_fails(spembed_comm_rank(comms[0], &rank, nullptr), SPEMBED_STATUS_INVALID_ARGUMENT,
               "world");
  for (auto c : comms) EXPECT_EQ(spembed_comm_destroy(c), SPEMBED_STATUS_SUCCESS);
  expect_fails(spembed_comm_destroy(nullptr), SPEMBED_STATUS_INVALID_ARGUMENT, "comm");
  spembed_handle_t handle = nullptr;
  ASSERT_EQ(spembed_create(&handle), SPEMBED_STATUS_SUCCESS);
  spembed_comm_t comm = nullptr;
  expect_fails(spembed_comm_create_nccl(handle, nullptr, &comm), SPEMBED_STATUS_INVALID_ARGUMENT,
               "nccl");
  expect_fails(spembed_comm_create_nccl(nullptr, nullptr, &comm), SPEMBED_STATUS_INVALID_ARGUMENT,
               "handle");
  EXPECT_EQ(comm, nullptr);
  spembed_destroy(handle);
}

// ---- collection ---------------------------------------------------------------

// Two ranks; table 0 TABLE_WISE on rank 1, table 1 ROW_WISE.
struct Fixture {
  static constexpr int kWorld = 2;
  static constexpr int64_t kBatch = 2;
  std::vector<spembed_table_spec_t> specs{{6, 4, 1.0}, {7, 2, 1.0}};
  std::vector<spembed_shard_plan_entry_t> plan{{TW, 1}, {RW, -1}};
  spembed_handle_t handle = nullptr;
  std::vector<spembed_comm_t> comms = std::vector<spembed_comm_t>(kWorld);
  std::vector<std::vector<HostTensor>> shards, states;
  std::vector<std::vector<DLTensor>> views, state_views;
  std::vector<spembed_sharded_collection_t> colls =
      std::vector<spembed_sharded_collection_t>(kWorld);
  std::vector<HostTensor> workspace;
  std::vector<size_t> ws_bytes = std::vector<size_t>(kWorld, 0);  // differ by rank

  Fixture() {
    Rng rng(5);
    EXPECT_EQ(spembed_create(&handle), SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(spembed_comm_create_in_process(kWorld, comms.data()), SPEMBED_STATUS_SUCCESS);
    shards.resize(kWorld);
    states.resize(kWorld);
    views.resize(kWorld);
    state_views.resize(kWorld);
    for (int r = 0; r < kWorld; ++r) {
      std::vector<spembed_shard_shape_t> shapes(4);
      int64_t count = 0;
      EXPECT_EQ(spembed_shard_plan_local_shards(specs.data(), 2, plan.data(), kWorld, r,
                                                shapes.data(), &count),
                SPEMBED_STATUS_SUCCESS);
      for (int64_t j = 0; j < count; ++j) {
        HostTensor s(kF32,
                     {shapes[static_cast<size_t>(j)].rows, shapes[static_cast<size_t>(j)].dim});
        fill_random(s, rng, DataKind::kReal);
        shards[static_cast<size_t>(r)].push_back(std::move(s));
        HostTensor st(kF32,
                      {shapes[static_cast<size_t>(j)].rows, shapes[static_cast<size_t>(j)].dim});
        fill_random(st, rng, DataKind::kReal);
        states[static_cast<size_t>(r)].push_back(std::move(st));
      }
      for (auto& s : shards[static_cast<size_t>(r)])
        views[static_cast<size_t>(r)].push_back(*s.dl());
      for (auto& s : states[static_cast<size_t>(r)])
        state_views[static_cast<size_t>(r)].push_back(*s.dl());
      EXPECT_EQ(spembed_sharded_collection_create(
                    handle, specs.data(), 2, plan.data(), kF32, comms[static_cast<size_t>(r)],
                    views[static_cast<size_t>(r)].data(), count, nullptr, kBatch, 8,
                    &colls[static_cast<size_t>(r)]),
                SPEMBED_STATUS_SUCCESS)
          << spembed_last_error();
      size_t& bytes = ws_bytes[static_cast<size_t>(r)];
      EXPECT_EQ(spembed_sharded_collection_workspace_size(colls[static_cast<size_t>(r)], &bytes),
                SPEMBED_STATUS_SUCCESS);
      workspace.emplace_back(kU8, std::vector<int64_t>{static_cast<int64_t>(bytes) + 16});
    }
  }
  ~Fixture() {
    for (auto c : colls) spembed_sharded_collection_destroy(c);
    for (auto c : comms) spembed_comm_destroy(c);
    spembed_destroy(handle);
  }
};

// One rank's call arguments, valid unless a test breaks them.
struct Args {
  HostTensor ids = make_index_tensor(kI64, {0, 5, 6, 1, 3, 6});
  HostTensor offsets = make_index_tensor(kI64, {0, 1, 2, 4, 6});  // 2 tables x 2 samples
  HostTensor weights = make_f32_tensor({0.5f, 1, 1, 1, 1, 1});
  HostTensor output = HostTensor(kF32, {2, 6});
  HostTensor grad = HostTensor(kF32, {2, 6});
  DLTensor* ids_p = ids.dl();
  DLTensor* offsets_p = offsets.dl();
  DLTensor* weights_p = nullptr;
  DLTensor* output_p = output.dl();
  DLTensor* grad_p = grad.dl();
  void* ws = nullptr;
  size_t ws_bytes = 0;
  Args() {
    output.fill_bytes(kPoisonByte);
    Rng rng(3);
    fill_random(grad, rng, DataKind::kReal);
  }
};

using Breaker = std::function<void(Args&)>;

// Runs forward (or backward) on both ranks, rank `bad` with `breaker` applied;
// every rank must fail with `status`, the bad one naming `names`, and nothing
// may be written anywhere.
void expect_collective_fails(bool backward, int bad, const Breaker& breaker,
                             spembed_status_t status, const std::string& names) {
  Fixture f;
  std::vector<Args> args(Fixture::kWorld);
  std::vector<spembed_status_t> got(Fixture::kWorld);
  std::vector<std::string> msg(Fixture::kWorld);
  std::vector<std::vector<std::vector<uint8_t>>> before(Fixture::kWorld);
  for (int r = 0; r < Fixture::kWorld; ++r) {
    Args& a = args[static_cast<size_t>(r)];
    a.ws = f.workspace[static_cast<size_t>(r)].storage();
    a.ws_bytes = f.ws_bytes[static_cast<size_t>(r)];
    if (r == bad) breaker(a);
    for (auto& s : f.shards[static_cast<size_t>(r)])
      before[static_cast<size_t>(r)].push_back(s.bytes());
    for (auto& s : f.states[static_cast<size_t>(r)])
      before[static_cast<size_t>(r)].push_back(s.bytes());
  }
  spembed_optimizer_options_t opt;
  spembed_optimizer_options_init(&opt);
  opt.optimizer = SPEMBED_OPTIMIZER_ADAGRAD;
  std::vector<std::thread> threads;
  for (int r = 0; r < Fixture::kWorld; ++r) {
    threads.emplace_back([&, r] {
      Args& a = args[static_cast<size_t>(r)];
      spembed_sharded_collection_t coll = f.colls[static_cast<size_t>(r)];
      DLTensor* st = f.state_views[static_cast<size_t>(r)].data();
      if (backward) {
        got[static_cast<size_t>(r)] = spembed_sharded_collection_backward(
            coll, a.ids_p, a.offsets_p, a.weights_p, a.grad_p,
            r == bad && names == "states1" ? nullptr : st, nullptr,
            r == bad && names == "optimizer" ? nullptr : &opt, nullptr, a.ws, a.ws_bytes, nullptr);
      } else {
        got[static_cast<size_t>(r)] =
            spembed_sharded_collection_forward(coll, a.ids_p, a.offsets_p, a.weights_p, a.output_p,
                                               nullptr, a.ws, a.ws_bytes, nullptr);
      }
      msg[static_cast<size_t>(r)] = spembed_last_error();
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < Fixture::kWorld; ++r) {
    EXPECT_EQ(got[static_cast<size_t>(r)], status)
        << "rank " << r << ": " << msg[static_cast<size_t>(r)];
    // A mismatch between ranks is seen alike by all of them.
    const bool mutual = names == "dtypes" || names == "per_sample_weights";
    const std::string want = r == bad || mutual ? names : "rank " + std::to_string(bad) + " failed";
    EXPECT_NE(msg[static_cast<size_t>(r)].find(want), std::string::npos)
        << "rank " << r << " message: " << msg[static_cast<size_t>(r)] << " should name " << want;
    const auto bytes = args[static_cast<size_t>(r)].output.bytes();
    for (uint8_t b : bytes) ASSERT_EQ(b, kPoisonByte) << "rank " << r << " wrote its output";
    size_t k = 0;
    for (auto& s : f.shards[static_cast<size_t>(r)]) {
      EXPECT_TRUE(s.bytes_equal(before[static_cast<size_t>(r)][k++])) << "rank " << r << " shard";
    }
    for (auto& s : f.states[static_cast<size_t>(r)]) {
      EXPECT_TRUE(s.bytes_equal(before[static_cast<size_t>(r)][k++])) << "rank " << r << " state";
    }
  }
}

TEST(ShardedValidation, ValidCallsSucceed) {
  // The baseline the failure tests break one argument of.
  Fixture f;
  std::vector<Args> args(Fixture::kWorld);
  std::vector<spembed_status_t> got(Fixture::kWorld, SPEMBED_STATUS_INTERNAL_ERROR);
  std::vector<std::thread> threads;
  for (int r = 0; r < Fixture::kWorld; ++r) {
    threads.emplace_back([&, r] {
      Args& a = args[static_cast<size_t>(r)];
      got[static_cast<size_t>(r)] = spembed_sharded_collection_forward(
          f.colls[static_cast<size_t>(r)], a.ids_p, a.offsets_p, nullptr, a.output_p, nullptr,
          f.workspace[static_cast<size_t>(r)].storage(), f.ws_bytes[static_cast<size_t>(r)],
          nullptr);
    });
  }
  for (auto& t : threads) t.join();
  for (int r = 0; r < Fixture::kWorld; ++r) {
    EXPECT_EQ(got[static_cast<size_t>(r)], SPEMBED_STATUS_SUCCESS);
    EXPECT_FALSE(std::isnan(args[static_cast<size_t>(r)].output.get(0, 0)));
  }
}

TEST(ShardedValidation, ForwardBadArgumentOnOneRank) {
  for (int bad = 0; bad < 2; ++bad) {
    SCOPED_TRACE(bad);
    expect_collective_fails(
        false, bad, [](Args& a) { a.ids_p = nullptr; }, SPEMBED_STATUS_INVALID_ARGUMENT, "indices");
    expect_collective_fails(
        false, bad, [](Args& a) { a.offsets.set_view_shape({4}); }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "offsets: length");
    expect_collective_fails(
        false, bad, [](Args& a) { a.offsets.set_int(1, 3); }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "offsets[1]");
    expect_collective_fails(
        false, bad, [](Args& a) { a.offsets.set_int(4, 5); }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "offsets[4]");
    expect_collective_fails(
        false, bad,
        [](Args& a) {
          a.output.set_view_shape({2, 5});
        },
        SPEMBED_STATUS_INVALID_ARGUMENT, "output");
    expect_collective_fails(
        false, bad, [](Args& a) { a.output.set_view_dtype(kI32); }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "output");
    expect_collective_fails(
        false, bad, [](Args& a) { a.offsets.set_view_dtype(kI32); },
        SPEMBED_STATUS_INVALID_ARGUMENT, "offsets");
    expect_collective_fails(
        false, bad, [](Args& a) { a.ws_bytes -= 1; }, SPEMBED_STATUS_WORKSPACE_TOO_SMALL,
        "workspace");
    expect_collective_fails(
        false, bad, [](Args& a) { a.ws = static_cast<char*>(a.ws) + 8; },
        SPEMBED_STATUS_INVALID_ARGUMENT, "workspace");
    expect_collective_fails(
        false, bad, [](Args& a) { a.ids.set_int(2, 7); }, SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
        "indices[2] = 7");
    expect_collective_fails(
        false, bad, [](Args& a) { a.ids.set_int(0, -1); }, SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
        "indices[0] = -1");
    expect_collective_fails(
        false, bad, [](Args& a) { a.weights_p = a.weights.dl(); }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "per_sample_weights");
    expect_collective_fails(
        false, bad, [](Args& a) { a.output.set_view_dtype(kF16); }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "dtypes");
    expect_collective_fails(
        false, bad,
        [](Args& a) {
          a.offsets = make_index_tensor(kI64, {0, 1, 1, 1, 2, 2, 2});  // B_local 3 > 2
          a.offsets_p = a.offsets.dl();
          a.output = HostTensor(kF32, {3, 6});
          a.output.fill_bytes(kPoisonByte);
          a.output_p = a.output.dl();
          a.ids = make_index_tensor(kI64, {0, 1});
          a.ids_p = a.ids.dl();
        },
        SPEMBED_STATUS_INVALID_ARGUMENT, "max_local_batch");
    expect_collective_fails(
        false, bad,
        [](Args& a) {
          a.ids = make_index_tensor(kI64, std::vector<int64_t>(9, 1));  // 9 > max 8
          a.ids_p = a.ids.dl();
          a.offsets = make_index_tensor(kI64, {0, 9, 9, 9, 9});
          a.offsets_p = a.offsets.dl();
        },
        SPEMBED_STATUS_INVALID_ARGUMENT, "max_local_ids");
    expect_collective_fails(
        false, bad,
        [](Args& a) {
          a.ids.set_view_device(DLDevice{kDLCUDA, 0});
        },
        SPEMBED_STATUS_INVALID_ARGUMENT, "indices: is on cuda:0 but the op runs on cpu:0");
  }
}

TEST(ShardedValidation, BackwardBadArgumentOnOneRank) {
  for (int bad = 0; bad < 2; ++bad) {
    SCOPED_TRACE(bad);
    expect_collective_fails(
        true, bad, [](Args&) {}, SPEMBED_STATUS_INVALID_ARGUMENT, "states1");
    expect_collective_fails(
        true, bad, [](Args&) {}, SPEMBED_STATUS_INVALID_ARGUMENT, "optimizer");
    expect_collective_fails(
        true, bad,
        [](Args& a) {
          a.grad.set_view_shape({2, 7});
        },
        SPEMBED_STATUS_INVALID_ARGUMENT, "grad_output");
    expect_collective_fails(
        true, bad, [](Args& a) { a.grad_p = nullptr; }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "grad_output");
    expect_collective_fails(
        true, bad, [](Args& a) { a.ids.set_int(5, 100); }, SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
        "indices[5] = 100");
    expect_collective_fails(
        true, bad, [](Args& a) { a.offsets.set_int(2, 0); }, SPEMBED_STATUS_INVALID_ARGUMENT,
        "offsets[1]");
  }
}

TEST(ShardedValidation, CreateArguments) {
  Fixture f;
  spembed_sharded_collection_t coll = nullptr;
  auto create = [&](const DLTensor* shards, int64_t n, const spembed_embedding_bag_options_t* o,
                    DLDataType dtype = kF32) {
    return spembed_sharded_collection_create(f.handle, f.specs.data(), 2, f.plan.data(), dtype,
                                             f.comms[1], shards, n, o, 2, 8, &coll);
  };
  std::vector<DLTensor>& v = f.views[1];  // rank 1: table 0 [6, 4], table 1 rows [4, 7) [3, 2]
  expect_fails(create(v.data(), 1, nullptr), SPEMBED_STATUS_INVALID_ARGUMENT, "num_shards");
  expect_fails(create(nullptr, 2, nullptr), SPEMBED_STATUS_INVALID_ARGUMENT, "shards");
  expect_fails(create(v.data(), 2, nullptr, kF16), SPEMBED_STATUS_INVALID_ARGUMENT, "shards[0]");
  expect_fails(create(v.data(), 2, nullptr, kI32), SPEMBED_STATUS_INVALID_ARGUMENT, "table_dtype");
  std::vector<DLTensor> swapped{v[1], v[0]};
  expect_fails(create(swapped.data(), 2, nullptr), SPEMBED_STATUS_INVALID_ARGUMENT, "shards[0]");
  spembed_embedding_bag_options_t o;
  spembed_embedding_bag_options_init(&o);
  o.pooling = SPEMBED_POOLING_MAX;  // table 1 is ROW_WISE
  expect_fails(create(v.data(), 2, &o), SPEMBED_STATUS_NOT_SUPPORTED, "plan[1]: ROW_WISE with MAX");
  o.pooling = SPEMBED_POOLING_NONE;
  expect_fails(create(v.data(), 2, &o), SPEMBED_STATUS_NOT_SUPPORTED, "options.pooling");
  spembed_embedding_bag_options_init(&o);
  o.fixed_bag_size = 2;
  expect_fails(create(v.data(), 2, &o), SPEMBED_STATUS_NOT_SUPPORTED, "options.fixed_bag_size");
  std::vector<DLTensor> on_gpu{v[0], v[1]};
  on_gpu[1].device = DLDevice{kDLCUDA, 0};
  expect_fails(create(on_gpu.data(), 2, nullptr), SPEMBED_STATUS_INVALID_ARGUMENT,
               "shards[1]: is on cuda:0 but the op runs on cpu:0");
  expect_fails(spembed_sharded_collection_create(f.handle, f.specs.data(), 2, f.plan.data(), kF32,
                                                 nullptr, v.data(), 2, nullptr, 2, 8, &coll),
               SPEMBED_STATUS_INVALID_ARGUMENT, "comm");
  expect_fails(spembed_sharded_collection_create(f.handle, f.specs.data(), 2, f.plan.data(), kF32,
                                                 f.comms[1], v.data(), 2, nullptr, -1, 8, &coll),
               SPEMBED_STATUS_INVALID_ARGUMENT, "max_local_batch");
  // A CUDA communicator needs a handle bound to a CUDA device.
  int device = 0;
  ASSERT_EQ(spembed_handle_device(f.handle, &device), SPEMBED_STATUS_SUCCESS);
  if (device < 0) {
    spembed_comm_t cuda_comm = nullptr;
    spembed_comm_t cuda_comms[2] = {nullptr, nullptr};
    ASSERT_EQ(spembed_comm_create_in_process_cuda(2, cuda_comms), SPEMBED_STATUS_SUCCESS);
    cuda_comm = cuda_comms[0];
    expect_fails(spembed_sharded_collection_create(f.handle, f.specs.data(), 2, f.plan.data(), kF32,
                                                   cuda_comm, v.data(), 2, nullptr, 2, 8, &coll),
                 SPEMBED_STATUS_INVALID_ARGUMENT, "handle: serves the CPU only");
    for (spembed_comm_t cc : cuda_comms)
      EXPECT_EQ(spembed_comm_destroy(cc), SPEMBED_STATUS_SUCCESS);
  }
  EXPECT_EQ(coll, nullptr);
  size_t bytes = 0;
  expect_fails(spembed_sharded_collection_workspace_size(nullptr, &bytes),
               SPEMBED_STATUS_INVALID_ARGUMENT, "collection");
  expect_fails(spembed_sharded_collection_destroy(nullptr), SPEMBED_STATUS_INVALID_ARGUMENT,
               "collection");
}

}  // namespace
