// spembed_bench, sharded: the cost of the sharded collection over the
// unsharded table batch, at world size 1, on one training step (forward, then
// backward with the fused SGD step).
//
// Peers (group sharded/<shape>/uniform/fwd+bwd_sgd):
//   spembed     spembed_embedding_bag_batched_forward + _batched_backward
//               (DETERMINISTIC, SGD) on the whole batch
//   sharded_w1  spembed_sharded_collection_forward + _backward, one rank over
//               the in-process communicator (CUDA one on the GPU path), half
//               the tables TABLE_WISE and half ROW_WISE (one block each)
// The difference is what sharding adds when there is nothing to exchange:
// the id checks and counts and their read-back (the host waits for the
// device), bucketizing, assembling, the copies of the exchanges to itself, the
// combine / split, and, for the ROW_WISE half, float32 partial rows.
// (NCCL at world size 1 is checked for correctness by test_nccl_gpu; its
// timing would add NCCL's self-copies instead of cudaMemcpy's.)
//
// Byte model, for both peers: 2 * nnz * dim * 4 (a table row read per id in
// the forward, a gradient row per id in the backward) + 2 * U * dim * 4 (the
// touched rows read and written by SGD), U the distinct rows, plus the int64
// ids and offsets once; an effective rate for comparing the two, not a roofline.
//
// Check before timing: the sharded forward's output equals the unsharded one
// bitwise (one rank: the same sums in the same order).
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "bench_common.h"
#include "spembed/spembed.h"
#include "spembed/spembed_distributed.h"

namespace spembed_bench {
namespace {

// Memory of the benchmark's path: device memory on the GPU, host otherwise.
struct Memory {
  DeviceBuffer device;
  std::vector<uint64_t> host;  // 8-byte units: every buffer here is 8-aligned
  explicit Memory(size_t bytes = 0) {
    if (bytes == 0) return;
    if (g_config.gpu) {
      device = DeviceBuffer(bytes, "sharded bench");
    } else {
      host.assign((bytes + 7) / 8, 0);
    }
  }
  void* get() { return g_config.gpu ? device.ptr : static_cast<void*>(host.data()); }
  void copy_from(const void* src, size_t bytes) {
    if (g_config.gpu) {
      check_cuda(cudaMemcpy(device.ptr, src, bytes, cudaMemcpyHostToDevice), "upload");
    } else {
      std::memcpy(host.data(), src, bytes);
    }
  }
  void copy_to(void* dst, size_t bytes) {
    if (g_config.gpu) {
      check_cuda(cudaMemcpy(dst, device.ptr, bytes, cudaMemcpyDeviceToHost), "download");
    } else {
      std::memcpy(dst, host.data(), bytes);
    }
  }
};

DLDevice path_device() {
  return g_config.gpu ? DLDevice{kDLCUDA, g_gpu->device} : DLDevice{kDLCPU, 0};
}
spembed_handle_t path_handle() { return g_config.gpu ? g_gpu->handle : g_cpu_handle; }
spembed_stream_t path_stream() { return g_config.gpu ? g_gpu->stream : nullptr; }

// The inputs and both peers' objects of one shape.
struct ShardedCase {
  Shape shape;
  std::vector<Memory> tables;
  std::vector<View> table_views, shard_views;
  Memory ids, offsets, grad, out, ref_out, batch_ws, coll_ws;
  size_t batch_ws_bytes = 0, coll_ws_bytes = 0;
  spembed_table_batch_t batch = nullptr;
  spembed_comm_t comm = nullptr;
  spembed_sharded_collection_t coll = nullptr;
  double bytes = 0.0;

  explicit ShardedCase(const Shape& s) : shape(s) {
    const int64_t T = s.tables();
    const DLDevice dev = path_device();
    std::vector<spembed_table_spec_t> specs;
    std::vector<spembed_shard_plan_entry_t> plan;
    for (int64_t t = 0; t < T; ++t) {
      const int64_t dim = s.dims[static_cast<size_t>(t)];
      const std::vector<uint8_t> values = cpu_table(Elem::kF32, s.rows, dim, 100 + t);
      tables.emplace_back(values.size());
      tables.back().copy_from(values.data(), values.size());
      table_views.push_back(View(tables.back().get(), dev, kFloat32, {s.rows, dim}));
      specs.push_back({s.rows, dim, static_cast<double>(s.bag_size)});
      plan.push_back({t % 2 == 0 ? SPEMBED_SHARDING_TABLE_WISE : SPEMBED_SHARDING_ROW_WISE,
                      t % 2 == 0 ? 0 : -1});
    }
    // Local order at world 1: the TABLE_WISE tables, then the ROW_WISE ones.
    for (int parity = 0; parity < 2; ++parity) {
      for (int64_t t = parity; t < T; t += 2)
        shard_views.push_back(table_views[static_cast<size_t>(t)]);
    }
    const std::vector<int64_t> h_ids = make_ids(s, Dist::kUniform);
    const std::vector<int64_t> h_offs = make_offsets(s);
    ids = Memory(8 * h_ids.size());
    ids.copy_from(h_ids.data(), 8 * h_ids.size());
    offsets = Memory(8 * h_offs.size());
    offsets.copy_from(h_offs.data(), 8 * h_offs.size());
    const size_t out_bytes = static_cast<size_t>(4 * s.bags * s.total_dim());
    std::vector<float> h_grad(static_cast<size_t>(s.bags * s.total_dim()));
    for (size_t i = 0; i < h_grad.size(); ++i) h_grad[i] = static_cast<float>(i % 17) / 64.0f;
    grad = Memory(out_bytes);
    grad.copy_from(h_grad.data(), out_bytes);
    out = Memory(out_bytes);
    ref_out = Memory(out_bytes);

    std::vector<DLTensor> views;
    for (const View& v : table_views) views.push_back(v.t);
    check_spembed(spembed_table_batch_create(path_handle(), views.data(), T, &batch),
                  "table batch");
    size_t fwd = 0, bwd = 0;
    check_spembed(
        spembed_embedding_bag_forward_workspace_size(path_handle(), dev.device_type, &fwd),
        "forward workspace size");
    check_spembed(spembed_embedding_bag_batched_backward_workspace_size(
                      path_handle(), batch, kInt64, s.nnz(), SPEMBED_BACKWARD_DETERMINISTIC, &bwd),
                  "backward workspace size");
    batch_ws_bytes = std::max(fwd, bwd);
    batch_ws = Memory(std::max<size_t>(batch_ws_bytes, 16));

    check_spembed(g_config.gpu ? spembed_comm_create_in_process_cuda(1, &comm)
                               : spembed_comm_create_in_process(1, &comm),
                  "communicator");
    std::vector<DLTensor> shards;
    for (const View& v : shard_views) shards.push_back(v.t);
    check_spembed(
        spembed_sharded_collection_create(path_handle(), specs.data(), T, plan.data(), kFloat32,
                                          comm, shards.data(), T, nullptr, s.bags, s.nnz(), &coll),
        "sharded collection");
    check_spembed(spembed_sharded_collection_workspace_size(coll, &coll_ws_bytes),
                  "sharded workspace size");
    coll_ws = Memory(coll_ws_bytes);

    std::set<int64_t> distinct;
    double touched = 0.0;
    for (int64_t t = 0; t < T; ++t) {
      distinct.clear();
      const auto first = h_ids.begin() + t * s.nnz_per_table();
      distinct.insert(first, first + s.nnz_per_table());
      touched += static_cast<double>(distinct.size()) *
                 static_cast<double>(s.dims[static_cast<size_t>(t)]);
    }
    bytes =
        2.0 * static_cast<double>(s.bag_size * s.bags) * static_cast<double>(s.total_dim()) * 4 +
        2.0 * touched * 4 + 8.0 * static_cast<double>(h_ids.size() + h_offs.size());
  }

  ~ShardedCase() {
    if (coll != nullptr) spembed_sharded_collection_destroy(coll);
    if (comm != nullptr) spembed_comm_destroy(comm);
    if (batch != nullptr) spembed_table_batch_destroy(batch);
  }

  View ids_view() { return View(ids.get(), path_device(), kInt64, {shape.nnz()}); }
  View offsets_view() {
    return View(offsets.get(), path_device(), kInt64, {shape.tables() * shape.bags + 1});
  }
  View rows_view(Memory& m) {
    return View(m.get(), path_device(), kFloat32, {shape.bags, shape.total_dim()});
  }

  void step_unsharded(Memory& output) {
    View i = ids_view(), o = offsets_view(), y = rows_view(output), g = rows_view(grad);
    spembed_embedding_bag_options_t options;
    spembed_embedding_bag_options_init(&options);
    check_spembed(spembed_embedding_bag_batched_forward(
                      path_handle(), batch, &i.t, &o.t, nullptr, &options, &y.t, nullptr, nullptr,
                      batch_ws.get(), batch_ws_bytes, path_stream()),
                  "unsharded forward");
    spembed_optimizer_options_t opt;
    spembed_optimizer_options_init(&opt);
    spembed_embedding_bag_batched_backward_args_t args{};
    args.indices = &i.t;
    args.offsets = &o.t;
    args.grad_output = &g.t;
    args.optimizer = &opt;
    check_spembed(spembed_embedding_bag_batched_backward(
                      path_handle(), batch, &args, &options, SPEMBED_BACKWARD_DETERMINISTIC,
                      nullptr, batch_ws.get(), batch_ws_bytes, path_stream()),
                  "unsharded backward");
  }

  void forward_sharded(Memory& output) {
    View i = ids_view(), o = offsets_view(), y = rows_view(output);
    check_spembed(spembed_sharded_collection_forward(coll, &i.t, &o.t, nullptr, &y.t, nullptr,
                                                     coll_ws.get(), coll_ws_bytes, path_stream()),
                  "sharded forward");
  }

  void step_sharded(Memory& output) {
    forward_sharded(output);
    View i = ids_view(), o = offsets_view(), g = rows_view(grad);
    spembed_optimizer_options_t opt;
    spembed_optimizer_options_init(&opt);
    check_spembed(
        spembed_sharded_collection_backward(coll, &i.t, &o.t, nullptr, &g.t, nullptr, nullptr, &opt,
                                            nullptr, coll_ws.get(), coll_ws_bytes, path_stream()),
        "sharded backward");
  }
};

std::unique_ptr<ShardedCase> g_case;

ShardedCase& case_for(const Shape& s) {
  if (!g_case || g_case->shape.name != s.name) {
    g_case.reset();
    g_case = std::make_unique<ShardedCase>(s);
  }
  return *g_case;
}

void bench_step(benchmark::State& state, const Shape& s, const std::string& peer) {
  ShardedCase& c = case_for(s);
  const bool sharded = peer == "sharded_w1";
  // The check: one forward of each path on the current tables, bitwise.
  c.forward_sharded(c.out);
  {
    View i = c.ids_view(), o = c.offsets_view(), y = c.rows_view(c.ref_out);
    spembed_embedding_bag_options_t options;
    spembed_embedding_bag_options_init(&options);
    check_spembed(spembed_embedding_bag_batched_forward(
                      path_handle(), c.batch, &i.t, &o.t, nullptr, &options, &y.t, nullptr, nullptr,
                      c.batch_ws.get(), c.batch_ws_bytes, path_stream()),
                  "unsharded forward");
  }
  if (g_config.gpu) check_cuda(cudaStreamSynchronize(g_gpu->stream), "check");
  const size_t n = static_cast<size_t>(4 * s.bags * s.total_dim());
  std::vector<uint8_t> a(n), b(n);
  c.out.copy_to(a.data(), n);
  c.ref_out.copy_to(b.data(), n);
  if (a != b) {
    state.SkipWithError("the sharded forward differs from the unsharded one");
    return;
  }
  auto run = [&] {
    if (sharded) {
      c.step_sharded(c.out);
    } else {
      c.step_unsharded(c.out);
    }
  };
  std::vector<double> seconds;
  if (g_config.gpu) {
    for (int i = 0; i < kGpuWarmup; ++i) time_gpu_run(run);
    for (auto _ : state) {
      const double sec = time_gpu_run(run);
      state.SetIterationTime(sec);
      seconds.push_back(sec);
    }
  } else {
    for (int i = 0; i < kCpuWarmup; ++i) run();
    seconds = time_cpu_iterations(state, run);
  }
  report(state, "sharded/" + s.name + "/uniform/fwd+bwd_sgd", sharded ? peer : "spembed",
         std::move(seconds), c.bytes);
}

}  // namespace

void register_sharded() {
  for (const Shape& s : issue_shapes(!g_config.gpu)) {
    // The table-batched shapes of 100k-row tables: the collection's home.
    if (!s.batched || s.rows != (g_config.gpu ? 100000 : 1000)) continue;
    for (const char* peer : {"spembed", "sharded_w1"}) {
      const std::string name = std::string(g_config.gpu ? "sharded/" : "sharded_cpu/") + s.name +
                               "/uniform/fwd+bwd_sgd/" + peer;
      register_timed(name, capped_iters(kCpuBackwardIters),
                     [s, peer](benchmark::State& state) { bench_step(state, s, peer); });
    }
  }
}

void release_sharded_inputs() { g_case.reset(); }

}  // namespace spembed_bench
