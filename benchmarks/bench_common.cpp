#include "bench_common.h"

#include <cuda_fp16.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace spembed_bench {

Config g_config;
GpuContext* g_gpu = nullptr;
spembed_handle_t g_cpu_handle = nullptr;

void register_timed(const std::string& name, int iters,
                    std::function<void(benchmark::State&)> body) {
  benchmark::RegisterBenchmark(name.c_str(),
                               [body = std::move(body)](benchmark::State& state) {
                                 try {
                                   body(state);
                                 } catch (const std::exception& e) {
                                   state.SkipWithError(e.what());
                                 }
                               })
      ->UseManualTime()
      ->Iterations(iters)
      ->Unit(benchmark::kMicrosecond);
}

// ---- errors ------------------------------------------------------------------------

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

// ---- shapes and ids ------------------------------------------------------------------

namespace {

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

}  // namespace

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

DLDataType float_type(Elem e) {
  return DLDataType{static_cast<uint8_t>(kDLFloat), static_cast<uint8_t>(8 * elem_bytes(e)), 1};
}

// ---- results summary -------------------------------------------------------------------

namespace {

struct Row {
  std::string group;  // shape/dist/dtype/pooling (backward: shape/dist/fp32/output)
  std::string peer;
  double us;
  double gbps;
  double pct;
};
std::vector<Row> g_rows;

}  // namespace

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
      "\nSummary (median of %d timed runs; GB/s by the byte models above; %% of the %s "
      "copy bandwidth %.0f GB/s; speedup = peer time / spembed time)\n",
      g_config.iters, g_config.gpu ? "device" : "host", g_config.copy_gbps);
  if (!g_config.gpu && !g_config.iters_given) {
    std::printf("(the backward's CPU cases: median of %d timed runs)\n", kCpuBackwardIters);
  }
  std::printf("%-60s %-15s %11s %9s %7s %8s\n", "case", "peer", "us", "GB/s", "%copy", "speedup");
  const std::vector<std::string> speedup = speedup_cells(g_rows);
  for (size_t i = 0; i < g_rows.size(); ++i) {
    const Row& r = g_rows[i];
    std::printf("%-60s %-15s %11.1f %9.1f %6.1f%% %8s\n", r.group.c_str(), r.peer.c_str(), r.us,
                r.gbps, r.pct, speedup[i].c_str());
  }
}

// ---- GPU ------------------------------------------------------------------------------------

DeviceBuffer::DeviceBuffer(size_t n, const char* what) : bytes(n) {
  const cudaError_t err = cudaMalloc(&ptr, std::max<size_t>(n, 1));
  if (err != cudaSuccess) {
    ptr = nullptr;
    cudaGetLastError();  // a failed allocation must not be reported by a later launch
    char msg[160];
    std::snprintf(msg, sizeof(msg), "cannot allocate %.2f GB of device memory for %s (%s)",
                  static_cast<double>(n) / 1e9, what, cudaGetErrorString(err));
    throw std::runtime_error(msg);
  }
}

void flush_l2() {
  check_cuda(flush_l2_by_reading(g_gpu->flush.ptr, g_gpu->flush.bytes,
                                 g_gpu->flush_sink.as<unsigned>(), g_gpu->stream),
             "L2 flush");
}

// ---- CPU --------------------------------------------------------------------------------------

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

}  // namespace spembed_bench
