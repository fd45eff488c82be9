// A check both CUDA communicators run (test_sharded_gpu with the CUDA
// in-process one, test_nccl_gpu with NCCL): with one rank, the sharded
// collection (two TABLE_WISE tables and a ROW_WISE one, which is then whole on
// rank 0) against the unsharded table batch on the same CUDA tensors, over
// three SUM + Adagrad steps with per-sample weights: outputs, weights and
// states bitwise (one rank, so every row's contributions come in the same
// order on both paths).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "gpu_util.h"
#include "sharded_test_util.h"
#include "spembed/spembed.h"
#include "spembed/spembed_distributed.h"
#include "test_util.h"

namespace spembed_test {

inline void expect_world_one_equals_unsharded(spembed_handle_t handle, spembed_comm_t comm,
                                              cudaStream_t stream) {
  Rng rng(2026);
  const std::vector<int64_t> rows{1000, 37, 5000};
  const std::vector<int64_t> dims{64, 16, 128};
  const std::vector<spembed_shard_plan_entry_t> plan{{SPEMBED_SHARDING_TABLE_WISE, 0},
                                                     {SPEMBED_SHARDING_ROW_WISE, -1},
                                                     {SPEMBED_SHARDING_TABLE_WISE, 0}};
  const int64_t T = 3, B = 64, D = 64 + 16 + 128;
  std::vector<spembed_table_spec_t> specs;
  // Two copies of every table and state: unsharded and sharded.
  std::vector<HostTensor> host_tables, host_states;
  std::vector<DeviceTensor> ref_tables, ref_states, tables, states;
  for (int64_t t = 0; t < T; ++t) {
    specs.push_back({rows[static_cast<size_t>(t)], dims[static_cast<size_t>(t)], 8.0});
    HostTensor tab(kF32, {rows[static_cast<size_t>(t)], dims[static_cast<size_t>(t)]});
    fill_random(tab, rng, DataKind::kReal);
    HostTensor st = make_state(SPEMBED_OPTIMIZER_ADAGRAD, rows[static_cast<size_t>(t)],
                               dims[static_cast<size_t>(t)], rng);
    ref_tables.emplace_back(tab);
    tables.emplace_back(tab);
    ref_states.emplace_back(st);
    states.emplace_back(st);
    host_tables.push_back(std::move(tab));
    host_states.push_back(std::move(st));
  }
  // Local shard order: TABLE_WISE tables 0 and 2, then ROW_WISE table 1.
  const size_t order[3] = {0, 2, 1};
  std::vector<DLTensor> ref_views, ref_state_views, shard_views, state_views;
  for (size_t t = 0; t < 3; ++t) {
    ref_views.push_back(*ref_tables[t].dl());
    ref_state_views.push_back(*ref_states[t].dl());
    shard_views.push_back(*tables[order[t]].dl());
    state_views.push_back(*states[order[t]].dl());
  }
  spembed_table_batch_t ref_batch = nullptr;
  ASSERT_EQ(spembed_table_batch_create(handle, ref_views.data(), T, &ref_batch),
            SPEMBED_STATUS_SUCCESS);
  spembed_sharded_collection_t coll = nullptr;
  ASSERT_EQ(spembed_sharded_collection_create(handle, specs.data(), T, plan.data(), kF32, comm,
                                              shard_views.data(), T, nullptr, B, B * T * 8, &coll),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  size_t coll_bytes = 0, fwd_bytes = 0, bwd_bytes = 0;
  ASSERT_EQ(spembed_sharded_collection_workspace_size(coll, &coll_bytes), SPEMBED_STATUS_SUCCESS);
  ASSERT_EQ(spembed_embedding_bag_forward_workspace_size(handle, kDLCUDA, &fwd_bytes),
            SPEMBED_STATUS_SUCCESS);
  ASSERT_EQ(spembed_embedding_bag_batched_backward_workspace_size(
                handle, ref_batch, kI64, B * T * 8, SPEMBED_BACKWARD_DETERMINISTIC, &bwd_bytes),
            SPEMBED_STATUS_SUCCESS);
  DeviceBuffer coll_ws(coll_bytes);
  DeviceBuffer ref_ws(std::max(fwd_bytes, bwd_bytes));

  spembed_optimizer_options_t opt;
  spembed_optimizer_options_init(&opt);
  opt.optimizer = SPEMBED_OPTIMIZER_ADAGRAD;
  opt.learning_rate = 0.05f;
  for (int step = 1; step <= 3; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    std::vector<int64_t> ids, offsets{0};
    std::vector<float> weights;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t b = 0; b < B; ++b) {
        const int64_t len = rng.uniform_int(0, 8);
        for (int64_t i = 0; i < len; ++i) {
          ids.push_back(rng.uniform_int(0, rows[static_cast<size_t>(t)] - 1));
          weights.push_back(static_cast<float>(rng.value(DataKind::kReal)));
        }
        offsets.push_back(static_cast<int64_t>(ids.size()));
      }
    }
    HostTensor h_ids = make_index_tensor(kI64, ids), h_offs = make_index_tensor(kI64, offsets);
    HostTensor h_w = make_f32_tensor(weights);
    DeviceTensor d_ids(h_ids), d_offs(h_offs), d_w(h_w);
    HostTensor out(kF32, {B, D}), ref_out(kF32, {B, D});
    out.fill_bytes(kPoisonByte);
    ref_out.fill_bytes(kPoisonByte);
    DeviceTensor d_out(out), d_ref_out(ref_out);
    spembed_embedding_bag_options_t options;
    spembed_embedding_bag_options_init(&options);
    ASSERT_EQ(spembed_embedding_bag_batched_forward(handle, ref_batch, d_ids.dl(), d_offs.dl(),
                                                    d_w.dl(), &options, d_ref_out.dl(), nullptr,
                                                    nullptr, ref_ws.get(), ref_ws.size(), stream),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    ASSERT_EQ(
        spembed_sharded_collection_forward(coll, d_ids.dl(), d_offs.dl(), d_w.dl(), d_out.dl(),
                                           nullptr, coll_ws.get(), coll_ws.size(), stream),
        SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    SPEMBED_CUDA_CHECK(cudaStreamSynchronize(stream));
    d_out.download(out);
    d_ref_out.download(ref_out);
    EXPECT_TRUE(out.bytes_equal(ref_out.bytes())) << "forward output differs from unsharded";

    HostTensor grad(kF32, {B, D});
    fill_random(grad, rng, DataKind::kReal);
    DeviceTensor d_grad(grad);
    spembed_embedding_bag_batched_backward_args_t args{};
    args.indices = d_ids.dl();
    args.offsets = d_offs.dl();
    args.per_sample_weights = d_w.dl();
    args.grad_output = d_grad.dl();
    args.states1 = ref_state_views.data();
    args.optimizer = &opt;
    ASSERT_EQ(spembed_embedding_bag_batched_backward(handle, ref_batch, &args, &options,
                                                     SPEMBED_BACKWARD_DETERMINISTIC, nullptr,
                                                     ref_ws.get(), ref_ws.size(), stream),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    ASSERT_EQ(spembed_sharded_collection_backward(coll, d_ids.dl(), d_offs.dl(), d_w.dl(),
                                                  d_grad.dl(), state_views.data(), nullptr, &opt,
                                                  nullptr, coll_ws.get(), coll_ws.size(), stream),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    SPEMBED_CUDA_CHECK(cudaStreamSynchronize(stream));
    for (size_t t = 0; t < 3; ++t) {
      HostTensor a = host_tables[t].clone(), b = host_tables[t].clone();
      ref_tables[t].download(a);
      tables[t].download(b);
      EXPECT_TRUE(a.bytes_equal(b.bytes())) << "table " << t << " differs after the step";
      HostTensor sa = host_states[t].clone(), sb = host_states[t].clone();
      ref_states[t].download(sa);
      states[t].download(sb);
      EXPECT_TRUE(sa.bytes_equal(sb.bytes())) << "state of table " << t << " differs";
    }
  }
  EXPECT_EQ(spembed_sharded_collection_destroy(coll), SPEMBED_STATUS_SUCCESS);
  spembed_table_batch_destroy(ref_batch);
}

}  // namespace spembed_test
