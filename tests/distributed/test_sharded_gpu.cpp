// The sharded collection's CUDA data path over the CUDA in-process
// communicator (ranks as threads sharing the device), against the CPU path on
// the same data: outputs, reports, statuses, and every shard and optimizer
// state after each step, bitwise (the CPU path is itself checked against the
// unsharded collection in test_sharded_cpu; CPU and CUDA lookups and
// deterministic backward sum in the same order). Runs on a GPU, or on the CPU
// under the emulation build.
#include <gtest/gtest.h>

#include <memory>
#include <string>
#include <vector>

#include "gpu_util.h"
#include "sharded_gpu_check.h"
#include "sharded_test_util.h"
#include "spembed/spembed.h"
#include "spembed/spembed_distributed.h"
#include "test_util.h"

namespace {

using namespace spembed_test;

// One rank's collection on one device; `cuda` mirrors on the device.
struct RankSide {
  spembed_comm_t comm = nullptr;
  std::vector<spembed_shard_shape_t> shapes;
  std::vector<HostTensor> shards, states1, states2;          // CPU side: the tensors themselves
  std::vector<DeviceTensor> d_shards, d_states1, d_states2;  // CUDA side
  std::vector<DLTensor> shard_views, s1_views, s2_views;
  spembed_sharded_collection_t coll = nullptr;
  HostTensor workspace;
  std::unique_ptr<DeviceBuffer> d_workspace;
  size_t workspace_bytes = 0;
  spembed_status_t status = SPEMBED_STATUS_SUCCESS;
  std::string message;
};

// All ranks of one device.
struct Side {
  bool cuda = false;
  std::vector<RankSide> ranks;

  void* workspace(int r) {
    RankSide& rs = ranks[static_cast<size_t>(r)];
    return cuda ? rs.d_workspace->get() : rs.workspace.storage();
  }
  // The current shards / states of rank r on the host.
  std::vector<HostTensor> snapshot(int r, int which) {
    RankSide& rs = ranks[static_cast<size_t>(r)];
    std::vector<HostTensor>& host = which == 0 ? rs.shards : which == 1 ? rs.states1 : rs.states2;
    std::vector<DeviceTensor>& dev = which == 0   ? rs.d_shards
                                     : which == 1 ? rs.d_states1
                                                  : rs.d_states2;
    std::vector<HostTensor> out;
    for (size_t j = 0; j < host.size(); ++j) {
      HostTensor h = host[j].clone();
      if (cuda) dev[j].download(h);
      out.push_back(std::move(h));
    }
    return out;
  }
};

void make_side(const Case& c, spembed_handle_t handle, bool cuda,
               const std::vector<spembed_table_spec_t>& specs, const std::vector<HostTensor>& full,
               const std::vector<HostTensor>& full_s1, const std::vector<HostTensor>& full_s2,
               const spembed_embedding_bag_options_t& options, Side* side) {
  const int64_t T = static_cast<int64_t>(specs.size());
  side->cuda = cuda;
  side->ranks.resize(static_cast<size_t>(c.world));
  std::vector<spembed_comm_t> comms(static_cast<size_t>(c.world));
  ASSERT_EQ(cuda ? spembed_comm_create_in_process_cuda(c.world, comms.data())
                 : spembed_comm_create_in_process(c.world, comms.data()),
            SPEMBED_STATUS_SUCCESS);
  const int64_t max_batch = *std::max_element(c.batch.begin(), c.batch.end());
  const int64_t max_ids = max_batch * T * 4 + 1;
  for (int r = 0; r < c.world; ++r) {
    RankSide& rs = side->ranks[static_cast<size_t>(r)];
    rs.comm = comms[static_cast<size_t>(r)];
    LocalShards local;
    cut_local_shards(c, specs, r, full, full_s1, full_s2, &local);
    if (::testing::Test::HasFatalFailure()) return;
    const auto count = static_cast<int64_t>(local.shapes.size());
    rs.shapes = std::move(local.shapes);
    rs.shards = std::move(local.shards);
    rs.states1 = std::move(local.states1);
    rs.states2 = std::move(local.states2);
    auto views = [&](std::vector<HostTensor>& host, std::vector<DeviceTensor>& dev,
                     std::vector<DLTensor>& out) {
      for (auto& h : host) {
        if (cuda) {
          dev.emplace_back(h);
          out.push_back(*dev.back().dl());
        } else {
          out.push_back(*h.dl());
        }
      }
    };
    views(rs.shards, rs.d_shards, rs.shard_views);
    views(rs.states1, rs.d_states1, rs.s1_views);
    views(rs.states2, rs.d_states2, rs.s2_views);
    ASSERT_EQ(spembed_sharded_collection_create(
                  handle, specs.data(), T, c.plan.data(), c.table_dtype, rs.comm,
                  rs.shard_views.empty() ? nullptr : rs.shard_views.data(), count, &options,
                  max_batch, max_ids, &rs.coll),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    ASSERT_EQ(spembed_sharded_collection_workspace_size(rs.coll, &rs.workspace_bytes),
              SPEMBED_STATUS_SUCCESS);
    if (cuda) {
      rs.d_workspace = std::make_unique<DeviceBuffer>(rs.workspace_bytes + 1);
    } else {
      rs.workspace = HostTensor(kU8, {static_cast<int64_t>(rs.workspace_bytes) + 1});
    }
  }
}

void destroy_side(Side& side) {
  for (auto& rs : side.ranks) {
    EXPECT_EQ(spembed_sharded_collection_destroy(rs.coll), SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(spembed_comm_destroy(rs.comm), SPEMBED_STATUS_SUCCESS);
  }
}

// A rank's inputs of one step, on the host and (for the CUDA side) on the device.
struct StepInputs {
  HostTensor ids, offsets, weights, grad;
  DeviceTensor d_ids, d_offsets, d_weights, d_grad;
};

void expect_same(const HostTensor& cpu, const HostTensor& gpu, const std::string& what) {
  EXPECT_TRUE(cpu.bytes_equal(gpu.bytes())) << what << " differs between the CPU and CUDA paths";
}

void run_case(const Case& c) {
  SCOPED_TRACE(::testing::Message() << "world " << c.world << " seed " << c.seed);
  Rng rng(c.seed);
  const int64_t D = total_dim(c);
  spembed_handle_t handle = nullptr;
  ASSERT_EQ(spembed_create(&handle), SPEMBED_STATUS_SUCCESS);
  FullTables f = make_full_tables(c, rng);
  const std::vector<spembed_table_spec_t>& specs = f.specs;
  std::vector<HostTensor>& full = f.tables;
  std::vector<HostTensor>& full_s1 = f.states1;
  std::vector<HostTensor>& full_s2 = f.states2;
  const spembed_embedding_bag_options_t options = case_options(c);
  Side sides[2];
  for (int k = 0; k < 2; ++k) {
    make_side(c, handle, k == 1, specs, full, full_s1, full_s2, options, &sides[k]);
    if (::testing::Test::HasFatalFailure()) return;
  }

  for (int step = 1; step <= c.steps; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    std::vector<StepInputs> in(static_cast<size_t>(c.world));
    for (int r = 0; r < c.world; ++r) {
      const Batch b = make_batch(c, r, rng);
      StepInputs& s = in[static_cast<size_t>(r)];
      s.ids = make_index_tensor(c.index_dtype, b.ids);
      s.offsets = make_index_tensor(c.index_dtype, b.offsets);
      s.weights = make_f32_tensor(b.weights);
      s.grad = HostTensor(c.out_dtype, {c.batch[static_cast<size_t>(r)], D});
      fill_random(s.grad, rng, DataKind::kReal);
      s.d_ids = DeviceTensor(s.ids);
      s.d_offsets = DeviceTensor(s.offsets);
      s.d_weights = DeviceTensor(s.weights);
      s.d_grad = DeviceTensor(s.grad);
    }

    // Forward on both sides from poisoned outputs and workspaces.
    std::vector<HostTensor> outputs[2], reports[2];
    for (int k = 0; k < 2; ++k) {
      Side& side = sides[k];
      std::vector<DeviceTensor> d_out(static_cast<size_t>(c.world));
      std::vector<DeviceTensor> d_report(static_cast<size_t>(c.world));
      for (int r = 0; r < c.world; ++r) {
        HostTensor out(c.out_dtype, {c.batch[static_cast<size_t>(r)], D});
        out.fill_bytes(kPoisonByte);
        outputs[k].push_back(std::move(out));
        reports[k].push_back(make_report());
        if (side.cuda) {
          d_out[static_cast<size_t>(r)] = DeviceTensor(outputs[k].back());
          d_report[static_cast<size_t>(r)] = DeviceTensor(reports[k].back());
          SPEMBED_CUDA_CHECK(cudaMemset(side.workspace(r), kPoisonByte,
                                        side.ranks[static_cast<size_t>(r)].workspace_bytes));
        } else {
          side.ranks[static_cast<size_t>(r)].workspace.fill_bytes(kPoisonByte);
        }
      }
      run_ranks(c.world, [&](int r) {
        const auto i = static_cast<size_t>(r);
        RankSide& rs = side.ranks[i];
        StepInputs& s = in[i];
        rs.status = spembed_sharded_collection_forward(
            rs.coll, side.cuda ? s.d_ids.dl() : s.ids.dl(),
            side.cuda ? s.d_offsets.dl() : s.offsets.dl(),
            c.weighted ? (side.cuda ? s.d_weights.dl() : s.weights.dl()) : nullptr,
            side.cuda ? d_out[i].dl() : outputs[k][i].dl(),
            side.cuda ? d_report[i].dl() : reports[k][i].dl(), side.workspace(r),
            rs.workspace_bytes, nullptr);
        rs.message = spembed_last_error();
      });
      if (side.cuda) {
        SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
        for (int r = 0; r < c.world; ++r) {
          d_out[static_cast<size_t>(r)].download(outputs[k][static_cast<size_t>(r)]);
          d_report[static_cast<size_t>(r)].download(reports[k][static_cast<size_t>(r)]);
        }
      }
    }
    bool failed = false;
    for (int r = 0; r < c.world; ++r) {
      const auto i = static_cast<size_t>(r);
      SCOPED_TRACE(::testing::Message() << "forward, rank " << r);
      const RankSide& cpu = sides[0].ranks[i];
      const RankSide& gpu = sides[1].ranks[i];
      EXPECT_EQ(gpu.status, cpu.status) << "cpu: " << cpu.message << "; cuda: " << gpu.message;
      EXPECT_EQ(gpu.message, cpu.message);
      failed = failed || cpu.status != SPEMBED_STATUS_SUCCESS;
      expect_same(outputs[0][i], outputs[1][i], "output");
      expect_same(reports[0][i], reports[1][i], "report");
    }
    if (failed) {
      EXPECT_TRUE(c.bad_rank >= 0) << "a case without bad ids failed";
    }

    // Backward with the optimizer step on both sides.
    spembed_optimizer_options_t opt;
    spembed_optimizer_options_init(&opt);
    opt.optimizer = c.optimizer;
    opt.learning_rate = 0.05f;
    opt.weight_decay = 0.01f;
    opt.eps = 1e-6f;
    opt.step = step;
    for (int k = 0; k < 2; ++k) {
      Side& side = sides[k];
      run_ranks(c.world, [&](int r) {
        const auto i = static_cast<size_t>(r);
        RankSide& rs = side.ranks[i];
        StepInputs& s = in[i];
        rs.status = spembed_sharded_collection_backward(
            rs.coll, side.cuda ? s.d_ids.dl() : s.ids.dl(),
            side.cuda ? s.d_offsets.dl() : s.offsets.dl(),
            c.weighted ? (side.cuda ? s.d_weights.dl() : s.weights.dl()) : nullptr,
            side.cuda ? s.d_grad.dl() : s.grad.dl(),
            rs.s1_views.empty() ? nullptr : rs.s1_views.data(),
            rs.s2_views.empty() ? nullptr : rs.s2_views.data(), &opt, nullptr, side.workspace(r),
            rs.workspace_bytes, nullptr);
        rs.message = spembed_last_error();
      });
      if (side.cuda) SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
    }
    for (int r = 0; r < c.world; ++r) {
      const auto i = static_cast<size_t>(r);
      SCOPED_TRACE(::testing::Message() << "backward, rank " << r);
      const RankSide& cpu = sides[0].ranks[i];
      const RankSide& gpu = sides[1].ranks[i];
      EXPECT_EQ(gpu.status, cpu.status) << "cpu: " << cpu.message << "; cuda: " << gpu.message;
      for (int which = 0; which < 3; ++which) {
        const std::vector<HostTensor> a = sides[0].snapshot(r, which);
        const std::vector<HostTensor> b = sides[1].snapshot(r, which);
        for (size_t j = 0; j < a.size(); ++j) {
          expect_same(a[j], b[j],
                      (which == 0   ? "shard "
                       : which == 1 ? "states1 "
                                    : "states2 ") +
                          std::to_string(j));
        }
      }
    }
    if (::testing::Test::HasFailure()) break;
  }
  for (Side& side : sides) destroy_side(side);
  spembed_destroy(handle);
}

class ShardedGpu : public ::testing::Test {
 protected:
  void SetUp() override { SPEMBED_REQUIRE_CUDA_OR_SKIP(); }
};

TEST_F(ShardedGpu, MatchesCpuPathEveryWorldPoolingAndOptimizer) {
  const int max_world = small_shapes() ? 3 : 4;
  for (int world = 1; world <= max_world; ++world) {
    for (spembed_pooling_t pooling : {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN}) {
      Case c;
      c.world = world;
      c.pooling = pooling;
      c.optimizer = static_cast<spembed_optimizer_t>(
          SPEMBED_OPTIMIZER_SGD + (world + pooling) % 4);  // every optimizer across the loop
      c.batch.clear();
      for (int r = 0; r < world; ++r) c.batch.push_back(2 + r % 3);
      c.plan[3].owner = world - 1;
      c.steps = 2;
      c.seed = static_cast<uint64_t>(700 + 10 * world + pooling);
      run_case(c);
      if (HasFailure()) return;
    }
  }
}

TEST_F(ShardedGpu, MaxPoolingTableWiseBf16) {
  Case c;
  c.world = 3;
  c.batch = {3, 2, 3};
  c.plan = {{TW, 0}, {TW, 2}, {TW, 1}, {TW, 0}};
  c.pooling = SPEMBED_POOLING_MAX;
  c.padding_idx = 1;
  c.table_dtype = kBF16;
  c.optimizer = SPEMBED_OPTIMIZER_ADAM;
  c.steps = 2;
  run_case(c);
}

TEST_F(ShardedGpu, WeightedInt32Fp16TablesBf16Output) {
  Case c;
  c.world = 2;
  c.batch = {3, 3};
  c.weighted = true;
  c.index_dtype = kI32;
  c.table_dtype = kF16;
  c.out_dtype = kBF16;
  c.optimizer = SPEMBED_OPTIMIZER_ADAGRAD;
  c.steps = 2;
  run_case(c);
}

TEST_F(ShardedGpu, EmptyBatchesAndRanksWithoutShards) {
  Case c;
  c.world = 3;
  c.batch = {0, 4, 2};
  c.rows = {40, 2, 2, 25};  // ROW_WISE blocks of 1 row: rank 2 holds none of them
  c.plan = {{TW, 1}, {RW, -1}, {RW, -1}, {TW, 1}};
  c.empty_table = 1;
  c.empty_rank = 2;
  c.padding_idx = 0;
  c.pooling = SPEMBED_POOLING_MEAN;
  c.optimizer = SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
  run_case(c);
  Case all_empty;
  all_empty.batch = {0, 0};
  all_empty.steps = 1;
  run_case(all_empty);
}

TEST_F(ShardedGpu, SkipPolicyAndOneBadRank) {
  Case skip;
  skip.world = 3;
  skip.batch = {3, 1, 2};
  skip.bounds = SPEMBED_BOUNDS_SKIP;
  skip.steps = 2;
  run_case(skip);
  for (int bad = 0; bad < 2; ++bad) {
    Case c;
    c.world = 2;
    c.batch = {2, 3};
    c.bad_rank = bad;
    c.steps = 1;
    c.seed = 90 + static_cast<uint64_t>(bad);
    run_case(c);
  }
}

// With one rank the CUDA path equals the unsharded table batch (the check
// test_nccl_gpu runs over NCCL).
TEST_F(ShardedGpu, WorldOneEqualsUnsharded) {
  spembed_handle_t handle = nullptr;
  ASSERT_EQ(spembed_create(&handle), SPEMBED_STATUS_SUCCESS);
  spembed_comm_t comm = nullptr;
  ASSERT_EQ(spembed_comm_create_in_process_cuda(1, &comm), SPEMBED_STATUS_SUCCESS);
  cudaStream_t stream = nullptr;
  SPEMBED_CUDA_CHECK(cudaStreamCreate(&stream));
  expect_world_one_equals_unsharded(handle, comm, stream);
  cudaStreamDestroy(stream);
  EXPECT_EQ(spembed_comm_destroy(comm), SPEMBED_STATUS_SUCCESS);
  spembed_destroy(handle);
}

// A rank passing a host tensor to the CUDA collection: every rank fails with
// the argument named on that rank, and no output is written.
TEST_F(ShardedGpu, HostTensorOnOneRankFailsEveryRank) {
  Case c;
  c.world = 2;
  c.batch = {2, 2};
  Rng rng(5);
  spembed_handle_t handle = nullptr;
  ASSERT_EQ(spembed_create(&handle), SPEMBED_STATUS_SUCCESS);
  std::vector<HostTensor> full;
  std::vector<spembed_table_spec_t> specs;
  for (size_t t = 0; t < c.rows.size(); ++t) {
    full.emplace_back(c.table_dtype, std::vector<int64_t>{c.rows[t], c.dims[t]});
    fill_random(full.back(), rng, DataKind::kReal);
    specs.push_back({c.rows[t], c.dims[t], 1.0});
  }
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_options_init(&options);
  Side side;
  make_side(c, handle, /*cuda=*/true, specs, full, {}, {}, options, &side);
  if (HasFatalFailure()) return;
  std::vector<StepInputs> in(2);
  std::vector<HostTensor> out(2);
  std::vector<DeviceTensor> d_out(2);
  for (int r = 0; r < 2; ++r) {
    const auto i = static_cast<size_t>(r);
    const Batch b = make_batch(c, r, rng);
    in[i].ids = make_index_tensor(c.index_dtype, b.ids);
    in[i].offsets = make_index_tensor(c.index_dtype, b.offsets);
    in[i].d_ids = DeviceTensor(in[i].ids);
    in[i].d_offsets = DeviceTensor(in[i].offsets);
    out[i] = HostTensor(c.out_dtype, {c.batch[i], total_dim(c)});
    out[i].fill_bytes(kPoisonByte);
    d_out[i] = DeviceTensor(out[i]);
  }
  run_ranks(2, [&](int r) {
    const auto i = static_cast<size_t>(r);
    RankSide& rs = side.ranks[i];
    // Rank 1's offsets stay on the host.
    rs.status = spembed_sharded_collection_forward(
        rs.coll, in[i].d_ids.dl(), r == 1 ? in[i].offsets.dl() : in[i].d_offsets.dl(), nullptr,
        d_out[i].dl(), nullptr, side.workspace(r), rs.workspace_bytes, nullptr);
    rs.message = spembed_last_error();
  });
  for (int r = 0; r < 2; ++r) {
    const auto i = static_cast<size_t>(r);
    EXPECT_EQ(side.ranks[i].status, SPEMBED_STATUS_INVALID_ARGUMENT) << side.ranks[i].message;
    EXPECT_NE(side.ranks[i].message.find(r == 1 ? "offsets: is on cpu:0" : "rank 1 failed"),
              std::string::npos)
        << side.ranks[i].message;
    HostTensor got = out[i].clone();
    d_out[i].download(got);
    EXPECT_TRUE(got.bytes_equal(out[i].bytes())) << "rank " << r << " wrote its output";
  }
  destroy_side(side);
  spembed_destroy(handle);
}

}  // namespace
