// spembed_bench: embedding bag forward (pooled lookup), spembed against the
// stock paths, on the shapes of the issue.
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
#include "cusparse_peer.h"
#include "id_sampler.h"
#include "spembed/spembed.h"

namespace spembed_bench {
namespace {

// ---- configuration -----------------------------------------------------------

constexpr uint64_t kSeed = 0x5EED;  // the Python script uses the same seed
constexpr int kGpuWarmup = 3;       // first launch loads modules; then caches settle
constexpr int kCpuWarmup = 1;
constexpr int kDefaultGpuIters = 50;
constexpr int kDefaultCpuIters = 10;
// Reduction of the issue's shapes for the CPU path: keeps the whole CPU run
// under two minutes on two cores and its tables within a few hundred MB.
constexpr int64_t kCpuBagDivisor = 64;
constexpr int64_t kCpuRowDivisor = 100;
// Copy-bandwidth buffer: large against any L2 (50 MB on H100) yet small
// against device memory.
constexpr size_t kGpuCopyBytes = size_t{1} << 30;
constexpr size_t kCpuCopyBytes = size_t{256} << 20;
constexpr int kCopyRuns = 10;
// The mixed-dim variant cycles through these dims (DLRM-style widths, all
// multiples of 16 bytes in fp16 and fp32).
constexpr std::array<int64_t, 8> kMixedDims = {16, 32, 48, 64, 96, 128, 192, 256};

struct Config {
  bool gpu = false;
  int iters = 0;
  double copy_gbps = 0.0;  // reference bandwidth, GB/s (1e9 bytes)
  size_t l2_bytes = 0;
};
Config g_config;

// ---- errors -------------------------------------------------------------------

void check_cuda(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
  }
}

void check_spembed(spembed_status_t st, const char* what) {
  if (st != SPEMBED_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(what) + ": " + spembed_status_string(st) + ": " +
                             spembed_last_error());
  }
}

// ---- shapes -----------------------------------------------------------------

struct Shape {
  std::string name;
  bool batched = false;       // the table-batched API (T tables, one launch)
  int64_t bags = 0;           // B, per table
  int64_t bag_size = 0;       // L
  int64_t rows = 0;           // E, per table
  std::vector<int64_t> dims;  // one per table

  int64_t tables() const { return static_cast<int64_t>(dims.size()); }
  int64_t nnz_per_table() const { return bags * bag_size; }
  int64_t nnz() const { return tables() * nnz_per_table(); }
  int64_t total_dim() const {
    int64_t s = 0;
    for (int64_t d : dims) s += d;
    return s;
  }
};

std::string count_name(int64_t n) {
  if (n % 1000000 == 0) return std::to_string(n / 1000000) + "M";
  if (n % 1000 == 0) return std::to_string(n / 1000) + "k";
  return std::to_string(n);
}

Shape make_shape(bool batched, int64_t tables, int64_t bags, int64_t bag_size, int64_t dim,
                 int64_t rows, bool mixed, bool reduced) {
  Shape s;
  s.batched = batched;
  s.bags = reduced ? std::max<int64_t>(8, bags / kCpuBagDivisor) : bags;
  s.bag_size = bag_size;
  s.rows = reduced ? std::max<int64_t>(1000, rows / kCpuRowDivisor) : rows;
  for (int64_t t = 0; t < tables; ++t) {
    s.dims.push_back(mixed ? kMixedDims[static_cast<size_t>(t) % kMixedDims.size()] : dim);
  }
  s.name = (batched ? "T" + std::to_string(tables) + "_" : std::string()) + "B" +
           std::to_string(s.bags) + "_L" + std::to_string(bag_size) + "_D" +
           (mixed ? std::string("mix16-256") : std::to_string(dim)) + "_E" + count_name(s.rows);
  return s;
}

std::vector<Shape> issue_shapes(bool reduced) {
  std::vector<Shape> v;
  v.push_back(make_shape(false, 1, 65536, 32, 128, 10000000, false, reduced));
  v.push_back(make_shape(false, 1, 65536, 1, 16, 1000000, false, reduced));
  v.push_back(make_shape(false, 1, 65536, 1, 32, 1000000, false, reduced));
  v.push_back(make_shape(false, 1, 2048, 150, 128, 5000000, false, reduced));
  for (int64_t rows : {100000, 1000000}) {
    for (int64_t bags : {512, 16384}) {
      v.push_back(make_shape(true, 32, bags, 20, 128, rows, false, reduced));
    }
  }
  for (int64_t bags : {512, 16384}) {
    v.push_back(make_shape(true, 32, bags, 20, 0, 1000000, true, reduced));
  }
  return v;
}

double model_bytes(const Shape& s, Elem elem) {
  const double eb = elem_bytes(elem);
  double rows_read = 0.0;
  for (int64_t d : s.dims) rows_read += static_cast<double>(s.nnz_per_table()) * d * eb;
  return rows_read + 8.0 * static_cast<double>(s.nnz()) +
         8.0 * static_cast<double>(s.tables() * s.bags + 1) +
         static_cast<double>(s.bags) * static_cast<double>(s.total_dim()) * eb;
}

// Ids of all tables, table-major; table t's ids use the generator's counters
// from t * nnz_per_table and scatter shift t (mirrored by the Python script).
std::vector<int64_t> make_ids(const Shape& s, Dist dist) {
  std::vector<int64_t> ids(static_cast<size_t>(s.nnz()));
  for (int64_t t = 0; t < s.tables(); ++t) {
    const int64_t first = t * s.nnz_per_table();
    generate_ids(dist, s.rows, kSeed, static_cast<uint64_t>(first), static_cast<uint64_t>(t),
                 ids.data() + first, s.nnz_per_table());
  }
  return ids;
}

std::vector<int64_t> make_offsets(const Shape& s) {
  std::vector<int64_t> offsets(static_cast<size_t>(s.tables() * s.bags + 1));
  for (size_t i = 0; i < offsets.size(); ++i) offsets[i] = static_cast<int64_t>(i) * s.bag_size;
  return offsets;
}

// ---- DLPack views -------------------------------------------------------------

DLDataType float_type(Elem e) {
  return DLDataType{static_cast<uint8_t>(kDLFloat), static_cast<uint8_t>(8 * elem_bytes(e)), 1};
}
const DLDataType kInt64{static_cast<uint8_t>(kDLInt), 64, 1};

// A DLTensor that owns its shape array.
struct View {
  std::array<int64_t, 2> shape{};
  DLTensor t{};
  View() = default;
  View(void* data, DLDevice dev, DLDataType dtype, std::initializer_list<int64_t> dims) {
    std::copy(dims.begin(), dims.end(), shape.begin());
    t.data = data;
    t.device = dev;
    t.ndim = static_cast<int32_t>(dims.size());
    t.dtype = dtype;
    t.shape = shape.data();
  }
  View(const View& o) : shape(o.shape), t(o.t) { t.shape = shape.data(); }
  View& operator=(const View& o) {
    shape = o.shape;
    t = o.t;
    t.shape = shape.data();
    return *this;
  }
};

// ---- results summary ------------------------------------------------------------

struct Row {
  std::string group;  // shape/dist/dtype/pooling
  std::string peer;
  double us;
  double gbps;
  double pct;
};
std::vector<Row> g_rows;

void report(benchmark::State& state, const std::string& group, const std::string& peer,
            std::vector<double> seconds, double bytes) {
  if (seconds.empty()) return;
  std::sort(seconds.begin(), seconds.end());
  const double median = seconds[seconds.size() / 2];
  const double gbps = bytes / median / 1e9;
  const double pct = 100.0 * gbps / g_config.copy_gbps;
  state.counters["us"] = median * 1e6;
  state.counters["GBps"] = gbps;
  state.counters["pct_copy_bw"] = pct;
  state.counters["model_bytes"] = bytes;
  g_rows.push_back({group, peer, median * 1e6, gbps, pct});
}

void print_summary() {
  if (g_rows.empty()) return;
  std::printf(
      "\nSummary (median of %d timed runs; GB/s by the byte model above; %% of the %s "
      "copy bandwidth %.0f GB/s; speedup = peer time / spembed time)\n",
      g_config.iters, g_config.gpu ? "device" : "host", g_config.copy_gbps);
  std::printf("%-48s %-9s %11s %9s %7s %8s\n", "case", "peer", "us", "GB/s", "%copy", "speedup");
  std::map<std::string, double> spembed_us;
  for (const Row& r : g_rows) {
    if (r.peer.rfind("spembed", 0) == 0) spembed_us[r.group] = r.us;
  }
  for (const Row& r : g_rows) {
    const auto it = spembed_us.find(r.group);
    char speedup[32] = "-";
    if (it != spembed_us.end() && r.peer.rfind("spembed", 0) != 0) {
      std::snprintf(speedup, sizeof(speedup), "%.2fx", r.us / it->second);
    }
    std::printf("%-48s %-9s %11.1f %9.1f %6.1f%% %8s\n", r.group.c_str(), r.peer.c_str(), r.us,
                r.gbps, r.pct, speedup);
  }
}

// ---- GPU: device memory and the inputs of the current case ------------------------

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t n) : bytes(n) {
    check_cuda(cudaMalloc(&ptr, std::max<size_t>(n, 1)), "cudaMalloc");
  }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr(std::exchange(o.ptr, nullptr)), bytes(o.bytes) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    std::swap(ptr, o.ptr);
    std::swap(bytes, o.bytes);
    return *this;
  }
  ~DeviceBuffer() { cudaFree(ptr); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr);
  }
};

template <typename T>
DeviceBuffer upload(const std::vector<T>& host) {
  DeviceBuffer d(host.size() * sizeof(T));
  check_cuda(cudaMemcpy(d.ptr, host.data(), d.bytes, cudaMemcpyHostToDevice), "upload");
  return d;
}

struct GpuContext {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  DeviceBuffer flush;
  DeviceBuffer flush_sink;
  DeviceBuffer workspace;
  DeviceBuffer check;  // [2] mismatch count and first position; then the spembed report
  spembed_handle_t handle = nullptr;
  cusparseHandle_t cusparse = nullptr;
  int device = 0;
};
GpuContext* g_gpu = nullptr;

void flush_l2() {
  check_cuda(flush_l2_by_reading(g_gpu->flush.ptr, g_gpu->flush.bytes,
                                 g_gpu->flush_sink.as<unsigned>(), g_gpu->stream),
             "L2 flush");
}

// Flushes L2, then times `run` (which queues work on the stream) with events.
template <typename Run>
double time_gpu_run(Run&& run) {
  flush_l2();
  check_cuda(cudaEventRecord(g_gpu->start, g_gpu->stream), "cudaEventRecord");
  run();
  check_cuda(cudaEventRecord(g_gpu->stop, g_gpu->stream), "cudaEventRecord");
  check_cuda(cudaEventSynchronize(g_gpu->stop), "run");
  float ms = 0.0f;
  check_cuda(cudaEventElapsedTime(&ms, g_gpu->start, g_gpu->stop), "cudaEventElapsedTime");
  return ms * 1e-3;
}

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
spembed_handle_t g_cpu_handle = nullptr;

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::vector<uint8_t> cpu_table(Elem elem, int64_t rows, int64_t dim, uint64_t salt) {
  const int64_t n = rows * dim;
  std::vector<uint8_t> bytes(static_cast<size_t>(n * elem_bytes(elem)));
  for (int64_t i = 0; i < n; ++i) {
    const uint64_t h = mix64(salt * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(i));
    const float v = static_cast<float>(static_cast<int>(h % 33) - 16) / 16.0f;
    if (elem == Elem::kF32) {
      std::memcpy(bytes.data() + 4 * i, &v, 4);
    } else {
      const __half half_v = __float2half_rn(v);
      std::memcpy(bytes.data() + 2 * i, &half_v, 2);
    }
  }
  return bytes;
}

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
  std::vector<double> seconds;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const auto t1 = std::chrono::steady_clock::now();
    const double sec = std::chrono::duration<double>(t1 - t0).count();
    state.SetIterationTime(sec);
    seconds.push_back(sec);
  }
  report(state, c.group(), "spembed", std::move(seconds), model_bytes(s, c.elem));
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
  benchmark::RegisterBenchmark(name.c_str(),
                               [c, fn](benchmark::State& state) {
                                 try {
                                   fn(state, c);
                                 } catch (const std::exception& e) {
                                   state.SkipWithError(e.what());
                                 }
                               })
      ->UseManualTime()
      ->Iterations(g_config.iters)
      ->Unit(benchmark::kMicrosecond);
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
}  // namespace spembed_bench

int main(int argc, char** argv) {
  using namespace spembed_bench;
  bool force_cpu = false;
  int iters = 0;
  parse_own_flags(&argc, argv, &force_cpu, &iters);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  std::printf("spembed_bench: embedding bag forward, spembed %d vs cuSPARSE SpMM vs naive\n",
              spembed_get_version());
  std::printf(
      "Byte model: rows read (nnz * dim * elem, repeats counted) + int64 ids + int64 "
      "offsets + output written; the same for Zipf ids, where L2 hits make it an "
      "effective rate.\n");
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
  benchmark::AddCustomContext("path", g_config.gpu ? "gpu" : "cpu (reduced shapes)");
  benchmark::AddCustomContext(
      "byte_model",
      "nnz*dim*elem (rows read, repeats counted) + nnz*8 (ids) + (bags+1)*8 (offsets) + "
      "bags*total_dim*elem (output); same model for Zipf ids (L2 hits make it effective)");
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
  benchmark::RunSpecifiedBenchmarks();
  print_summary();
  if (g_config.gpu) {
    teardown_gpu();
  } else {
    delete g_cpu_case;
    spembed_destroy(g_cpu_handle);
  }
  benchmark::Shutdown();
  return 0;
}
