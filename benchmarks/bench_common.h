// Machinery shared by the benchmarks of spembed_bench (embedding_bag_bench.cpp,
// the forward; embedding_bag_backward_bench.cpp, the backward): configuration,
// the benchmark shapes and ids, DLPack views, device buffers, the GPU timing
// with its L2 flush, and the results summary. See embedding_bag_bench.cpp for
// the method (copy bandwidth, timing, CPU fallback).
#pragma once

#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "baseline_kernels.h"
#include "id_sampler.h"
#include "spembed/spembed.h"

struct cusparseContext;

namespace spembed_bench {

// ---- configuration -------------------------------------------------------------

constexpr uint64_t kSeed = 0x5EED;  // the Python scripts use the same seed
constexpr int kGpuWarmup = 3;       // first launch loads modules; then caches settle
constexpr int kCpuWarmup = 1;
// Reduction of the benchmark shapes for the CPU path: keeps the whole CPU run
// under two minutes on two cores and its tables within a few hundred MB.
constexpr int64_t kCpuBagDivisor = 64;
constexpr int64_t kCpuRowDivisor = 100;
// The mixed-dim variant cycles through these dims (DLRM-style widths, all
// multiples of 16 bytes in fp16 and fp32).
constexpr std::array<int64_t, 8> kMixedDims = {16, 32, 48, 64, 96, 128, 192, 256};

// Timed runs of each backward benchmark on the CPU path unless --iters is
// given: keeps the CPU run of the binary (CI, two cores) within two minutes.
constexpr int kCpuBackwardIters = 3;

struct Config {
  bool gpu = false;
  int iters = 0;
  bool iters_given = false;  // --iters=N on the command line
  double copy_gbps = 0.0;    // reference bandwidth, GB/s (1e9 bytes)
  size_t l2_bytes = 0;
};
extern Config g_config;

// The timed runs of a benchmark whose CPU path is capped at `cpu_iters` runs
// unless --iters is given.
inline int capped_iters(int cpu_iters) {
  return g_config.gpu || g_config.iters_given ? g_config.iters
                                              : std::min(g_config.iters, cpu_iters);
}

// Registers `name`: `iters` runs, timed manually, reported in microseconds;
// an exception thrown by `body` marks the benchmark skipped with its message.
void register_timed(const std::string& name, int iters,
                    std::function<void(benchmark::State&)> body);

// ---- errors ------------------------------------------------------------------------

void check_cuda(cudaError_t err, const char* what);
void check_spembed(spembed_status_t st, const char* what);

// ---- shapes and ids ------------------------------------------------------------------

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
  int64_t max_dim() const {
    int64_t m = 0;
    for (int64_t d : dims) m = d > m ? d : m;
    return m;
  }
};

// The benchmark shapes (benchmarks/README.md), reduced (bags / 64, rows / 100) for the CPU.
std::vector<Shape> issue_shapes(bool reduced);

// Ids of all tables, table-major; table t's ids use the generator's counters
// from t * nnz_per_table and scatter shift t (mirrored by the Python scripts).
std::vector<int64_t> make_ids(const Shape& s, Dist dist);
// offsets [T * B + 1]: every bag holds bag_size ids.
std::vector<int64_t> make_offsets(const Shape& s);

// ---- DLPack views ----------------------------------------------------------------------

DLDataType float_type(Elem e);
inline const DLDataType kInt64{static_cast<uint8_t>(kDLInt), 64, 1};
inline const DLDataType kFloat32{static_cast<uint8_t>(kDLFloat), 32, 1};

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

// ---- results summary -------------------------------------------------------------------

// Records the median of `seconds` as the benchmark's counters (us, GBps,
// pct_copy_bw, model_bytes) and as a row of the summary printed at the end.
// In the summary, a group's other peers get a speedup against its peer named
// exactly "spembed".
void report(benchmark::State& state, const std::string& group, const std::string& peer,
            std::vector<double> seconds, double bytes);
void print_summary();

// The summary's speedup cell of each row (a struct with group, peer and us):
// the row's time over that of its group's "spembed" row, as "1.23x"; "-" for
// spembed's own rows and groups without one.
template <typename Row>
std::vector<std::string> speedup_cells(const std::vector<Row>& rows) {
  std::map<std::string, double> spembed_us;
  for (const Row& r : rows) {
    if (r.peer == "spembed") spembed_us[r.group] = r.us;
  }
  std::vector<std::string> cells;
  for (const Row& r : rows) {
    const auto it = spembed_us.find(r.group);
    char speedup[32] = "-";
    if (it != spembed_us.end() && r.peer != "spembed") {
      std::snprintf(speedup, sizeof(speedup), "%.2fx", r.us / it->second);
    }
    cells.emplace_back(speedup);
  }
  return cells;
}

// ---- GPU ------------------------------------------------------------------------------------

struct DeviceBuffer {
  void* ptr = nullptr;
  size_t bytes = 0;
  DeviceBuffer() = default;
  // Throws std::runtime_error naming `what` and the size when cudaMalloc
  // fails (and clears the runtime's last error, so later launches are not
  // blamed for it).
  explicit DeviceBuffer(size_t n, const char* what = "cudaMalloc");
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
  DeviceBuffer d(host.size() * sizeof(T), "upload");
  check_cuda(cudaMemcpy(d.ptr, host.data(), d.bytes, cudaMemcpyHostToDevice), "upload");
  return d;
}

struct GpuContext {
  cudaStream_t stream = nullptr;
  cudaEvent_t start = nullptr;
  cudaEvent_t stop = nullptr;
  DeviceBuffer flush;
  DeviceBuffer flush_sink;
  DeviceBuffer workspace;  // the forward's
  DeviceBuffer check;      // [2] mismatch count and first position; then the spembed report
  spembed_handle_t handle = nullptr;
  cusparseContext* cusparse = nullptr;
  int device = 0;
};
extern GpuContext* g_gpu;              // set up by main on the GPU path
extern spembed_handle_t g_cpu_handle;  // set up by main on the CPU path

void flush_l2();

// Runs `prepare` (untimed: e.g. zeroing an output that is accumulated into),
// flushes L2, then times `run` (which queues work on the stream) with events.
template <typename Prepare, typename Run>
double time_gpu_run(Prepare&& prepare, Run&& run) {
  prepare();
  flush_l2();
  check_cuda(cudaEventRecord(g_gpu->start, g_gpu->stream), "cudaEventRecord");
  run();
  check_cuda(cudaEventRecord(g_gpu->stop, g_gpu->stream), "cudaEventRecord");
  check_cuda(cudaEventSynchronize(g_gpu->stop), "run");
  float ms = 0.0f;
  check_cuda(cudaEventElapsedTime(&ms, g_gpu->start, g_gpu->stop), "cudaEventElapsedTime");
  return ms * 1e-3;
}

template <typename Run>
double time_gpu_run(Run&& run) {
  return time_gpu_run([] {}, run);
}

// ---- CPU --------------------------------------------------------------------------------------

// One timed run per benchmark iteration: `prepare` (untimed), then `run`
// timed by the steady clock and set as the iteration's time. Returns the
// seconds of the runs.
template <typename Prepare, typename Run>
std::vector<double> time_cpu_iterations(benchmark::State& state, Prepare&& prepare, Run&& run) {
  std::vector<double> seconds;
  for (auto _ : state) {
    prepare();
    const auto t0 = std::chrono::steady_clock::now();
    run();
    const auto t1 = std::chrono::steady_clock::now();
    const double sec = std::chrono::duration<double>(t1 - t0).count();
    state.SetIterationTime(sec);
    seconds.push_back(sec);
  }
  return seconds;
}

template <typename Run>
std::vector<double> time_cpu_iterations(benchmark::State& state, Run&& run) {
  return time_cpu_iterations(
      state, [] {}, run);
}

uint64_t mix64(uint64_t z);
// The host twin of fill_table (baseline_kernels.h): k / 16 values, k in [-16, 16].
std::vector<uint8_t> cpu_table(Elem elem, int64_t rows, int64_t dim, uint64_t salt);

// ---- hooks between the forward and backward benchmarks --------------------------------------

// Frees the forward's inputs (device or host) so that the backward's largest
// cases have the memory; the forward rebuilds them if it runs again.
void release_forward_inputs();
// Registers the backward benchmarks (embedding_bag_backward_bench.cpp), after
// the forward's, on the path g_config selects.
void register_backward();
// Frees the backward's inputs; main calls it before destroying the handle.
void release_backward_inputs();
// Lines describing the backward's byte model, printed by main.
const char* backward_byte_model();

// ---- hooks of the attention benchmarks (attention_bench.cpp) --------------------------------

// Registers the attention benchmarks after the embedding bag ones, on the path
// g_config selects (its GPU state is created here).
void register_attention();
// Prints the attention rows of the run (case, peer, us, TFLOP/s, speedup).
void print_attention_summary();
// Frees the attention inputs and the cuBLAS handle; main calls it before
// tearing down the GPU context.
void release_attention_inputs();
// Lines describing the attention FLOP model and peers, printed by main.
const char* attention_flop_model();

// ---- hooks of the sharded collection benchmarks (sharded_bench.cpp) --------------------------

// Registers the sharded-vs-unsharded step benchmarks, on the path g_config selects.
void register_sharded();
// Frees their inputs; main calls it before tearing down the GPU context.
void release_sharded_inputs();

}  // namespace spembed_bench
