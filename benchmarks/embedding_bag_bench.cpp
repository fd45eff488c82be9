// spembed_bench: embedding bag forward (pooled lookup), spembed against the
// stock paths, on the shapes listed in benchmarks/README.md. The backward's
// benchmarks live in embedding_bag_backward_bench.cpp and register into the
// same binary; the machinery both use is in bench_common.h.
//
// Peers, run one after another on the same inputs in the same process:
//   spembed   spembed_embedding_bag_forward / _batched_forward (C API, default
//             options: SUM, no padding, bounds policy ERROR).
//   cusparse  cusparseSpMM, bags as a CSR matrix times the table (see
//             cusparse_peer.h); the fastest CSR algorithm is picked per case,
//             outside the timed runs, and its workspace is preprocessed.
//   naive     one thread per output element (baseline_kernels.h).
//   torch     F.embedding_bag, from benchmarks/torch_embedding_bag.py (a
//             separate process; scripts/bench_report.py merges the two).
//
// Byte model (the same for every peer and every distribution):
//   bytes = sum over tables of nnz_t * dim_t * elem   rows read, repeats counted
//         + nnz * 8                                   int64 ids
//         + (bags + 1) * 8                            int64 offsets
//         + bags_per_table * total_dim * elem         output written
// Output dtype = table dtype. With Zipf ids many rows are L2 hits, so the
// GB/s of the Zipf cases is an effective rate that can exceed the copy
// bandwidth; the model is not changed for them.
//
// Timing (GPU): per benchmark, warm-up runs (the first one's output is checked
// against the naive kernel's), then `--iters` timed runs. Before every timed
// run L2 is flushed by reading a buffer of twice its size (reading leaves
// clean lines, so no write-back of the flush lands in the timed run); each
// run is bracketed by CUDA events on one stream. The counters (us, GBps,
// pct_copy_bw) come from the median run; Google Benchmark's Time column is
// the mean. The copy bandwidth is measured first: the best of a 1 GiB
// device-to-device cudaMemcpyAsync and a 16-byte-vector copy kernel,
// counting bytes read plus bytes written.
//
// Without a usable GPU (or with --force_cpu) the same C API runs on CPU
// tensors on reduced shapes (bags / 64, rows / 100), timed by the wall clock
// without cache flushing, against the host's multi-threaded memcpy bandwidth:
// a smoke test of the harness and the CPU path, not a performance claim.
#include <benchmark/benchmark.h>
#include <cuda_fp16.h>
#include <cuda_runtime_api.h>
#include <cusparse.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "baseline_kernels.h"
#include "bench_common.h"
#include "cusparse_peer.h"
#include "id_sampler.h"
#include "spembed/spembed.h"

namespace spembed_bench {
namespace {

// ---- configuration -----------------------------------------------------------

constexpr int kDefaultGpuIters = 50;
constexpr int kDefaultCpuIters = 10;
// Copy-bandwidth buffer: large against any L2 (50 MB on H100) yet small
// against device memory.
constexpr size_t kGpuCopyBytes = size_t{1} << 30;
constexpr size_t kCpuCopyBytes = size_t{256} << 20;
constexpr int kCopyRuns = 10;

// ---- byte model ---------------------------------------------------------------

double model_bytes(const Shape& s, Elem elem) {
  const double eb = elem_bytes(elem);
  double rows_read = 0.0;
  for (int64_t d : s.dims) rows_read += static_cast<double>(s.nnz_per_table()) * d * eb;
  return rows_read + 8.0 * static_cast<double>(s.nnz()) +
         8.0 * static_cast<double>(s.tables() * s.bags + 1) +
         static_cast<double>(s.bags) * static_cast<double>(s.total_dim()) * eb;
}

// ---- GPU: the inputs of the current case ---------------------------------------------

// The inputs of one case, kept while consecutive benchmarks share them: ids
// per (shape, dist), tables per (shape, dtype), reference per full case.
struct GpuCase {
  std::string ids_key, tables_key, ref_key;
  DeviceBuffer ids, offsets;
  std::vector<DeviceBuffer> tables;
  std::vector<View> table_views;
  DeviceBuffer naive_tables;  // NaiveTable[T]
  spembed_table_batch_t batch = nullptr;
  DeviceBuffer out, ref;

  void drop_tables() {
    if (batch != nullptr) spembed_table_batch_destroy(batch);
    batch = nullptr;
    tables.clear();
    table_views.clear();
    naive_tables = DeviceBuffer();
    tables_key.clear();
  }
  ~GpuCase() { drop_tables(); }
};
GpuCase* g_case = nullptr;

struct CaseSpec {
  Shape shape;
  Dist dist;
  Elem elem;
  bool mean;
  std::string group() const {
    return shape.name + "/" + dist_name(dist) + "/" + (elem == Elem::kF32 ? "fp32" : "fp16") + "/" +
           (mean ? "mean" : "sum");
  }
  int64_t out_elems() const { return shape.bags * shape.total_dim(); }
};

cudaError_t run_naive(const CaseSpec& c, void* out) {
  const Shape& s = c.shape;
  if (!s.batched) {
    return naive_embedding_bag(g_case->tables[0].ptr, c.elem, s.dims[0], g_case->ids.as<int64_t>(),
                               g_case->offsets.as<int64_t>(), s.bags, c.mean, out, g_gpu->stream);
  }
  return naive_embedding_bag_batched(
      g_case->naive_tables.as<NaiveTable>(), static_cast<int>(s.tables()), c.elem, s.total_dim(),
      g_case->ids.as<int64_t>(), g_case->offsets.as<int64_t>(), s.bags, out, g_gpu->stream);
}

void prepare_gpu_case(const CaseSpec& c) {
  const Shape& s = c.shape;
  const std::string ids_key = s.name + "/" + dist_name(c.dist);
  const std::string tables_key = s.name + (c.elem == Elem::kF32 ? "/fp32" : "/fp16");
  const std::string ref_key = c.group();
  if (g_case->ids_key != ids_key) {
    g_case->ids_key.clear();
    g_case->ref_key.clear();
    g_case->ids = upload(make_ids(s, c.dist));
    g_case->offsets = upload(make_offsets(s));
    g_case->ids_key = ids_key;
  }
  if (g_case->tables_key != tables_key) {
    g_case->ref_key.clear();
    g_case->drop_tables();
    g_case->out = DeviceBuffer();
    g_case->ref = DeviceBuffer();
    const DLDevice dev{kDLCUDA, g_gpu->device};
    std::vector<NaiveTable> naive;
    int64_t col = 0;
    for (int64_t t = 0; t < s.tables(); ++t) {
      const int64_t dim = s.dims[static_cast<size_t>(t)];
      DeviceBuffer table(static_cast<size_t>(s.rows * dim * elem_bytes(c.elem)));
      check_cuda(
          fill_table(table.ptr, c.elem, s.rows, dim, static_cast<uint64_t>(t + 1), g_gpu->stream),
          "fill_table");
      g_case->table_views.emplace_back(table.ptr, dev, float_type(c.elem),
                                       std::initializer_list<int64_t>{s.rows, dim});
      naive.push_back(NaiveTable{table.ptr, dim, col});
      col += dim;
      g_case->tables.push_back(std::move(table));
    }
    g_case->naive_tables = upload(naive);
    if (s.batched) {
      std::vector<DLTensor> views;
      for (const View& v : g_case->table_views) views.push_back(v.t);
      check_spembed(
          spembed_table_batch_create(g_gpu->handle, views.data(), s.tables(), &g_case->batch),
          "spembed_table_batch_create");
    }
    const size_t out_bytes = static_cast<size_t>(c.out_elems() * elem_bytes(c.elem));
    g_case->out = DeviceBuffer(out_bytes);
    g_case->ref = DeviceBuffer(out_bytes);
    g_case->tables_key = tables_key;
  }
  if (g_case->ref_key != ref_key) {
    check_cuda(run_naive(c, g_case->ref.ptr), "naive reference");
    check_cuda(cudaStreamSynchronize(g_gpu->stream), "naive reference");
    g_case->ref_key = ref_key;
  }
}

// Poisons the output, runs once and compares with the naive reference.
// Returns "" or what differs. The poison bytes 0x7B make a large finite value
// in fp32 (1.3e36) and fp16 (61280), never a sum of this benchmark's tables,
// so unwritten elements show; finite, so that cuSPARSE's beta = 0 * C stays 0.
template <typename Run>
std::string run_and_verify(const CaseSpec& c, Run&& run) {
  constexpr int kPoisonByte = 0x7B;
  check_cuda(cudaMemsetAsync(g_case->out.ptr, kPoisonByte, g_case->out.bytes, g_gpu->stream),
             "poison");
  run();
  auto* result = g_gpu->check.as<unsigned long long>();
  const unsigned long long init[2] = {0ull, ~0ull};
  check_cuda(cudaMemcpyAsync(result, init, sizeof(init), cudaMemcpyHostToDevice, g_gpu->stream),
             "check init");
  // fp32 sums of k/16 values are exact; MEAN divides (one rounding, and
  // cuSPARSE multiplies by a rounded 1/len instead); fp16 output rounds once
  // from fp32, and a peer that accumulates in fp16 would be caught here.
  const double tol = c.elem == Elem::kF16 ? 1e-3 : (c.mean ? 1e-6 : 0.0);
  check_cuda(count_mismatches(g_case->out.ptr, g_case->ref.ptr, c.elem, c.out_elems(), tol, result,
                              g_gpu->stream),
             "compare");
  unsigned long long got[2];
  check_cuda(cudaMemcpyAsync(got, result, sizeof(got), cudaMemcpyDeviceToHost, g_gpu->stream),
             "check readback");
  check_cuda(cudaStreamSynchronize(g_gpu->stream), "verify");
  if (got[0] == 0) return "";
  return std::to_string(got[0]) + " of " + std::to_string(c.out_elems()) +
         " output elements differ from the naive reference, first at element " +
         std::to_string(got[1]);
}

// The common body of a GPU benchmark: verify, warm up, time.
template <typename Run>
void gpu_benchmark(benchmark::State& state, const CaseSpec& c, const std::string& peer, Run&& run) {
  const std::string mismatch = run_and_verify(c, run);
  if (!mismatch.empty()) {
    state.SkipWithError(mismatch.c_str());
    return;
  }
  for (int i = 1; i < kGpuWarmup; ++i) time_gpu_run(run);
  std::vector<double> seconds;
  for (auto _ : state) {
    const double s = time_gpu_run(run);
    state.SetIterationTime(s);
    seconds.push_back(s);
  }
  report(state, c.group(), peer, std::move(seconds), model_bytes(c.shape, c.elem));
}

void bench_spembed_gpu(benchmark::State& state, const CaseSpec& c) {
  prepare_gpu_case(c);
  const Shape& s = c.shape;
  const DLDevice dev{kDLCUDA, g_gpu->device};
  const View ids(g_case->ids.ptr, dev, kInt64, {s.nnz()});
  const View offsets(g_case->offsets.ptr, dev, kInt64, {s.tables() * s.bags + 1});
  const View out(g_case->out.ptr, dev, float_type(c.elem), {s.bags, s.total_dim()});
  const View report_view(g_gpu->check.ptr, dev, kInt64, {SPEMBED_REPORT_SIZE});
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_options_init(&options);
  options.pooling = c.mean ? SPEMBED_POOLING_MEAN : SPEMBED_POOLING_SUM;
  auto call = [&](DLTensor* report_tensor) {
    DLTensor out_t = out.t;
    if (s.batched) {
      return spembed_embedding_bag_batched_forward(
          g_gpu->handle, g_case->batch, &ids.t, &offsets.t, nullptr, &options, &out_t, nullptr,
          report_tensor, g_gpu->workspace.ptr, g_gpu->workspace.bytes, g_gpu->stream);
    }
    return spembed_embedding_bag_forward(
        g_gpu->handle, &g_case->table_views[0].t, &ids.t, &offsets.t, nullptr, &options, &out_t,
        nullptr, report_tensor, g_gpu->workspace.ptr, g_gpu->workspace.bytes, g_gpu->stream);
  };
  // One call with a report, to learn that spembed accepted the data.
  DLTensor report_t = report_view.t;
  check_spembed(call(&report_t), "spembed forward");
  int64_t host_report[SPEMBED_REPORT_SIZE];
  check_cuda(cudaMemcpy(host_report, g_gpu->check.ptr, sizeof(host_report), cudaMemcpyDeviceToHost),
             "report readback");
  check_spembed(spembed_report_status(host_report), "spembed report");
  gpu_benchmark(state, c, "spembed", [&] { check_spembed(call(nullptr), "spembed forward"); });
}

void bench_naive_gpu(benchmark::State& state, const CaseSpec& c) {
  prepare_gpu_case(c);
  gpu_benchmark(state, c, "naive", [&] { check_cuda(run_naive(c, g_case->out.ptr), "naive"); });
}

// Values of the CSR matrix: 1 (SUM) or 1/len (MEAN), in the table's type.
DeviceBuffer csr_values(const CaseSpec& c) {
  const float v = c.mean ? 1.0f / static_cast<float>(c.shape.bag_size) : 1.0f;
  if (c.elem == Elem::kF32) {
    return upload(std::vector<float>(static_cast<size_t>(c.shape.nnz()), v));
  }
  return upload(std::vector<__half>(static_cast<size_t>(c.shape.nnz()), __float2half_rn(v)));
}

void bench_cusparse_gpu(benchmark::State& state, const CaseSpec& c) {
  prepare_gpu_case(c);
  const Shape& s = c.shape;
  const DeviceBuffer values = csr_values(c);
  // CSR row pointers must start at 0: every table gets its own copy of its
  // bags' offsets, rebased.
  std::vector<int64_t> rebased(static_cast<size_t>(s.bags + 1));
  for (size_t b = 0; b < rebased.size(); ++b) rebased[b] = static_cast<int64_t>(b) * s.bag_size;
  const DeviceBuffer row_ptr = upload(rebased);
  std::vector<SpmmPart> parts;
  int64_t col = 0;
  for (int64_t t = 0; t < s.tables(); ++t) {
    const int64_t dim = s.dims[static_cast<size_t>(t)];
    const int64_t first = t * s.nnz_per_table();
    parts.push_back(SpmmPart{
        s.bags, s.rows, s.nnz_per_table(), row_ptr.as<int64_t>(), g_case->ids.as<int64_t>() + first,
        static_cast<const char*>(values.ptr) + first * elem_bytes(c.elem),
        g_case->tables[static_cast<size_t>(t)].ptr, dim,
        static_cast<char*>(g_case->out.ptr) + col * elem_bytes(c.elem), s.total_dim()});
    col += dim;
  }
  CusparseSpmm spmm(g_gpu->cusparse, c.elem, std::move(parts));
  if (!spmm.error().empty()) {
    state.SkipWithError(("skipped: " + spmm.error()).c_str());
    return;
  }
  auto run = [&] {
    const cusparseStatus_t st = spmm.run();
    if (st != CUSPARSE_STATUS_SUCCESS) {
      throw std::runtime_error(std::string("cusparseSpMM: ") + cusparseGetErrorString(st));
    }
  };
  // Pick the fastest accepted algorithm: median of a few flushed runs each
  // (the first is a warm-up).
  constexpr int kTuneRuns = 5;
  cusparseSpMMAlg_t best = spmm.algorithms().front();
  double best_s = 1e30;
  std::string tried;
  for (cusparseSpMMAlg_t alg : spmm.algorithms()) {
    if (!spmm.select(alg)) continue;
    std::vector<double> t;
    try {
      for (int i = 0; i < kTuneRuns + 1; ++i) t.push_back(time_gpu_run(run));
    } catch (const std::runtime_error&) {
      continue;  // accepted at bufferSize, failed at run: not a candidate
    }
    std::sort(t.begin() + 1, t.end());
    tried += std::string(tried.empty() ? "" : ",") + CusparseSpmm::algorithm_name(alg);
    const double median = t[1 + kTuneRuns / 2];
    if (median < best_s) {
      best_s = median;
      best = alg;
    }
  }
  if (tried.empty() || !spmm.select(best)) {
    state.SkipWithError("skipped: no cuSPARSE SpMM algorithm ran on these operands");
    return;
  }
  state.SetLabel(std::string(CusparseSpmm::algorithm_name(best)) + " (fastest of " + tried + ")");
  gpu_benchmark(state, c, "cusparse", run);
}

double measure_gpu_copy_bandwidth() {
  DeviceBuffer src(kGpuCopyBytes);
  DeviceBuffer dst(kGpuCopyBytes);
  check_cuda(cudaMemset(src.ptr, 1, src.bytes), "cudaMemset");
  auto best_gbps = [&](auto&& run) {
    double best = 1e30;
    for (int i = 0; i < kCopyRuns + 1; ++i) {
      const double s = time_gpu_run(run);
      if (i > 0) best = std::min(best, s);  // run 0 is a warm-up
    }
    return 2.0 * static_cast<double>(kGpuCopyBytes) / best / 1e9;
  };
  const double memcpy_gbps = best_gbps([&] {
    check_cuda(
        cudaMemcpyAsync(dst.ptr, src.ptr, kGpuCopyBytes, cudaMemcpyDeviceToDevice, g_gpu->stream),
        "cudaMemcpyAsync");
  });
  const double kernel_gbps = best_gbps(
      [&] { check_cuda(copy_bytes(src.ptr, dst.ptr, kGpuCopyBytes, g_gpu->stream), "copy"); });
  std::printf(
      "Copy bandwidth (1 GiB device to device, bytes read + written, best of %d): "
      "cudaMemcpyAsync %.0f GB/s, copy kernel %.0f GB/s\n",
      kCopyRuns, memcpy_gbps, kernel_gbps);
  benchmark::AddCustomContext("copy_memcpy_GBps", std::to_string(memcpy_gbps));
  benchmark::AddCustomContext("copy_kernel_GBps", std::to_string(kernel_gbps));
  return std::max(memcpy_gbps, kernel_gbps);
}

void setup_gpu(int device) {
  g_gpu = new GpuContext;
  g_gpu->device = device;
  check_cuda(cudaSetDevice(device), "cudaSetDevice");
  cudaDeviceProp prop{};
  check_cuda(cudaGetDeviceProperties(&prop, device), "cudaGetDeviceProperties");
  int l2 = 0;
  check_cuda(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, device), "L2 size");
  g_config.l2_bytes = static_cast<size_t>(l2);
  std::printf("GPU %d: %s, %d SMs, L2 %.1f MB, %.1f GB memory\n", device, prop.name,
              prop.multiProcessorCount, l2 / 1e6, static_cast<double>(prop.totalGlobalMem) / 1e9);
  benchmark::AddCustomContext("device", prop.name);
  benchmark::AddCustomContext("l2_bytes", std::to_string(l2));

  check_cuda(cudaStreamCreateWithFlags(&g_gpu->stream, cudaStreamNonBlocking), "stream");
  check_cuda(cudaEventCreate(&g_gpu->start), "event");
  check_cuda(cudaEventCreate(&g_gpu->stop), "event");
  // Twice L2, rounded to 16 bytes: whatever a run left in L2 is evicted.
  g_gpu->flush = DeviceBuffer((2 * g_config.l2_bytes + 15) / 16 * 16);
  check_cuda(cudaMemset(g_gpu->flush.ptr, 0, g_gpu->flush.bytes), "cudaMemset");
  g_gpu->flush_sink = DeviceBuffer(sizeof(unsigned));
  g_gpu->check = DeviceBuffer(SPEMBED_REPORT_SIZE * sizeof(int64_t));
  check_spembed(spembed_create(&g_gpu->handle), "spembed_create");
  int handle_device = -1;
  check_spembed(spembed_handle_device(g_gpu->handle, &handle_device), "spembed_handle_device");
  if (handle_device != device) {
    throw std::runtime_error("spembed handle serves device " + std::to_string(handle_device) +
                             ", expected " + std::to_string(device));
  }
  size_t ws = 0;
  check_spembed(spembed_embedding_bag_forward_workspace_size(g_gpu->handle, kDLCUDA, &ws),
                "workspace size");
  g_gpu->workspace = DeviceBuffer(ws);
  if (cusparseCreate(&g_gpu->cusparse) != CUSPARSE_STATUS_SUCCESS) {
    throw std::runtime_error("cusparseCreate failed");
  }
  cusparseSetStream(g_gpu->cusparse, g_gpu->stream);
  g_case = new GpuCase;
  g_config.copy_gbps = measure_gpu_copy_bandwidth();
}

void teardown_gpu() {
  delete g_case;
  g_case = nullptr;
  cusparseDestroy(g_gpu->cusparse);
  spembed_destroy(g_gpu->handle);
  cudaEventDestroy(g_gpu->start);
  cudaEventDestroy(g_gpu->stop);
  cudaStreamDestroy(g_gpu->stream);
  delete g_gpu;
  g_gpu = nullptr;
}

// ---- CPU path --------------------------------------------------------------------

struct CpuCase {
  std::string ids_key, tables_key;
  std::vector<int64_t> ids, offsets;
  std::vector<std::vector<uint8_t>> tables;
  std::vector<View> table_views;
  spembed_table_batch_t batch = nullptr;
  std::vector<uint8_t> out;

  void drop_tables() {
    if (batch != nullptr) spembed_table_batch_destroy(batch);
    batch = nullptr;
    tables.clear();
    table_views.clear();
    tables_key.clear();
  }
  ~CpuCase() { drop_tables(); }
};
CpuCase* g_cpu_case = nullptr;

void prepare_cpu_case(const CaseSpec& c) {
  const Shape& s = c.shape;
  const std::string ids_key = s.name + "/" + dist_name(c.dist);
  const std::string tables_key = s.name + (c.elem == Elem::kF32 ? "/fp32" : "/fp16");
  if (g_cpu_case->ids_key != ids_key) {
    g_cpu_case->ids = make_ids(s, c.dist);
    g_cpu_case->offsets = make_offsets(s);
    g_cpu_case->ids_key = ids_key;
  }
  if (g_cpu_case->tables_key != tables_key) {
    g_cpu_case->drop_tables();
    const DLDevice dev{kDLCPU, 0};
    for (int64_t t = 0; t < s.tables(); ++t) {
      const int64_t dim = s.dims[static_cast<size_t>(t)];
      g_cpu_case->tables.push_back(cpu_table(c.elem, s.rows, dim, static_cast<uint64_t>(t + 1)));
      g_cpu_case->table_views.emplace_back(g_cpu_case->tables.back().data(), dev,
                                           float_type(c.elem),
                                           std::initializer_list<int64_t>{s.rows, dim});
    }
    if (s.batched) {
      std::vector<DLTensor> views;
      for (const View& v : g_cpu_case->table_views) views.push_back(v.t);
      check_spembed(
          spembed_table_batch_create(g_cpu_handle, views.data(), s.tables(), &g_cpu_case->batch),
          "spembed_table_batch_create");
    }
    g_cpu_case->out.assign(static_cast<size_t>(c.out_elems() * elem_bytes(c.elem)), 0);
    g_cpu_case->tables_key = tables_key;
  }
}

void bench_spembed_cpu(benchmark::State& state, const CaseSpec& c) {
  prepare_cpu_case(c);
  const Shape& s = c.shape;
  const DLDevice dev{kDLCPU, 0};
  const View ids(g_cpu_case->ids.data(), dev, kInt64, {s.nnz()});
  const View offsets(g_cpu_case->offsets.data(), dev, kInt64, {s.tables() * s.bags + 1});
  View out(g_cpu_case->out.data(), dev, float_type(c.elem), {s.bags, s.total_dim()});
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_options_init(&options);
  options.pooling = c.mean ? SPEMBED_POOLING_MEAN : SPEMBED_POOLING_SUM;
  auto run = [&] {
    const spembed_status_t st =
        s.batched ? spembed_embedding_bag_batched_forward(g_cpu_handle, g_cpu_case->batch, &ids.t,
                                                          &offsets.t, nullptr, &options, &out.t,
                                                          nullptr, nullptr, nullptr, 0, nullptr)
                  : spembed_embedding_bag_forward(g_cpu_handle, &g_cpu_case->table_views[0].t,
                                                  &ids.t, &offsets.t, nullptr, &options, &out.t,
                                                  nullptr, nullptr, nullptr, 0, nullptr);
    check_spembed(st, "spembed forward (CPU)");
  };
  for (int i = 0; i < kCpuWarmup; ++i) run();
  report(state, c.group(), "spembed", time_cpu_iterations(state, run), model_bytes(s, c.elem));
}

// memcpy on every hardware thread (spembed's CPU path is multi-threaded).
double measure_cpu_copy_bandwidth() {
  std::vector<uint8_t> src(kCpuCopyBytes, 1);
  std::vector<uint8_t> dst(kCpuCopyBytes, 0);
  const size_t threads = std::max(1u, std::thread::hardware_concurrency());
  auto copy_all = [&] {
    std::vector<std::thread> pool;
    for (size_t t = 0; t < threads; ++t) {
      const size_t begin = kCpuCopyBytes * t / threads;
      const size_t end = kCpuCopyBytes * (t + 1) / threads;
      pool.emplace_back([&, begin, end] { std::memcpy(&dst[begin], &src[begin], end - begin); });
    }
    for (auto& th : pool) th.join();
  };
  double best = 1e30;
  for (int i = 0; i < kCopyRuns + 1; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    copy_all();
    benchmark::ClobberMemory();
    const auto t1 = std::chrono::steady_clock::now();
    if (i > 0) best = std::min(best, std::chrono::duration<double>(t1 - t0).count());
  }
  const double gbps = 2.0 * static_cast<double>(kCpuCopyBytes) / best / 1e9;
  std::printf(
      "Copy bandwidth (256 MiB host memcpy on %zu threads, bytes read + written, best of "
      "%d): %.1f GB/s\n",
      threads, kCopyRuns, gbps);
  benchmark::AddCustomContext("copy_memcpy_GBps", std::to_string(gbps));
  return gbps;
}

// ---- registration -------------------------------------------------------------------

using BenchFn = void (*)(benchmark::State&, const CaseSpec&);

void register_case(const CaseSpec& c, const char* peer, BenchFn fn) {
  const std::string name = std::string(g_config.gpu ? "eb/" : "eb_cpu/") + c.group() + "/" + peer;
  register_timed(name, g_config.iters, [c, fn](benchmark::State& state) { fn(state, c); });
}

void register_all() {
  const std::vector<Shape> shapes = issue_shapes(!g_config.gpu);
  for (const Shape& shape : shapes) {
    for (Dist dist : {Dist::kUniform, Dist::kZipf105, Dist::kZipf120}) {
      for (Elem elem : {Elem::kF32, Elem::kF16}) {
        // One MEAN case: the first (largest) shape, uniform ids, fp32.
        const bool with_mean =
            &shape == &shapes.front() && dist == Dist::kUniform && elem == Elem::kF32;
        for (bool mean : {false, true}) {
          if (mean && !with_mean) continue;
          const CaseSpec c{shape, dist, elem, mean};
          if (g_config.gpu) {
            register_case(c, "spembed", bench_spembed_gpu);
            register_case(c, "cusparse", bench_cusparse_gpu);
            register_case(c, "naive", bench_naive_gpu);
          } else {
            register_case(c, "spembed", bench_spembed_cpu);
          }
        }
      }
    }
  }
}

// Removes the flags this binary owns from argv; leaves the rest for Google
// Benchmark.
void parse_own_flags(int* argc, char** argv, bool* force_cpu, int* iters) {
  int kept = 1;
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--force_cpu") {
      *force_cpu = true;
    } else if (arg.rfind("--iters=", 0) == 0) {
      *iters = std::max(1, std::atoi(arg.c_str() + 8));
    } else {
      argv[kept++] = argv[i];
    }
  }
  *argc = kept;
}

}  // namespace

void release_forward_inputs() {
  if (g_case != nullptr) {
    g_case->drop_tables();
    g_case->ids = DeviceBuffer();
    g_case->offsets = DeviceBuffer();
    g_case->out = DeviceBuffer();
    g_case->ref = DeviceBuffer();
    g_case->ids_key.clear();
    g_case->ref_key.clear();
  }
  if (g_cpu_case != nullptr) {
    g_cpu_case->drop_tables();
    g_cpu_case->ids = std::vector<int64_t>();
    g_cpu_case->offsets = std::vector<int64_t>();
    g_cpu_case->out = std::vector<uint8_t>();
    g_cpu_case->ids_key.clear();
  }
}

}  // namespace spembed_bench

int main(int argc, char** argv) {
  using namespace spembed_bench;
  bool force_cpu = false;
  int iters = 0;
  parse_own_flags(&argc, argv, &force_cpu, &iters);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  std::printf(
      "spembed_bench: embedding bag forward, spembed %d vs cuSPARSE SpMM vs naive; "
      "backward, spembed deterministic vs atomic vs stock atomicAdd scatter; varlen "
      "attention forward and backward, spembed vs cuBLAS GEMMs + masked softmax\n",
      spembed_get_version());
  std::printf(
      "Forward byte model: rows read (nnz * dim * elem, repeats counted) + int64 ids + int64 "
      "offsets + output written; the same for Zipf ids, where L2 hits make it an "
      "effective rate.\n%s%s",
      backward_byte_model(), attention_flop_model());
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  g_config.gpu = !force_cpu && err == cudaSuccess && devices > 0;
  if (!g_config.gpu) {
    if (force_cpu) {
      std::printf("--force_cpu: running the CPU path on reduced shapes\n");
    } else {
      std::printf(
          "No CUDA GPU found: running the CPU path on reduced shapes; GPU numbers need "
          "a GPU machine (cudaGetDeviceCount: %s)\n",
          err == cudaSuccess ? "0 devices" : cudaGetErrorString(err));
    }
  }
  g_config.iters = iters > 0 ? iters : (g_config.gpu ? kDefaultGpuIters : kDefaultCpuIters);
  g_config.iters_given = iters > 0;
  benchmark::AddCustomContext("path", g_config.gpu ? "gpu" : "cpu (reduced shapes)");
  benchmark::AddCustomContext(
      "byte_model",
      "nnz*dim*elem (rows read, repeats counted) + nnz*8 (ids) + (bags+1)*8 (offsets) + "
      "bags*total_dim*elem (output); same model for Zipf ids (L2 hits make it effective)");
  benchmark::AddCustomContext("backward_byte_model", backward_byte_model());
  benchmark::AddCustomContext("timing", g_config.gpu
                                            ? "CUDA events, L2 flushed (read 2x L2) before each "
                                              "run, median of timed runs in the counters"
                                            : "wall clock, no cache flush, median of runs");
  try {
    if (g_config.gpu) {
      setup_gpu(0);
    } else {
      check_spembed(spembed_create(&g_cpu_handle), "spembed_create");
      benchmark::AddCustomContext("device", "host CPU (no GPU used)");
      g_cpu_case = new CpuCase;
      g_config.copy_gbps = measure_cpu_copy_bandwidth();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "set-up failed: %s\n", e.what());
    return 1;
  }
  benchmark::AddCustomContext("copy_GBps", std::to_string(g_config.copy_gbps));
  register_all();
  register_backward();
  register_attention();
  register_sharded();
  benchmark::RunSpecifiedBenchmarks();
  print_summary();
  print_attention_summary();
  release_backward_inputs();
  release_attention_inputs();
  release_sharded_inputs();
  if (g_config.gpu) {
    teardown_gpu();
  } else {
    delete g_cpu_case;
    spembed_destroy(g_cpu_handle);
  }
  benchmark::Shutdown();
  return 0;
}
