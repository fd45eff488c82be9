// spembed_bench, backward: the embedding bag backward, alone and fused with
// each optimizer, on the forward's shapes (registered after the forward's
// benchmarks in the same binary; machinery in bench_common.h).
//
// Outputs (the `what` part of a name ebb/<shape>/<ids>/fp32/<what>/<peer>):
//   grad             (a) dense gradient [E, D] fp32, ADDED to a buffer zeroed
//                    before each run (the zeroing is not timed)
//   rows             (b) row-sparse gradient: unique ids, their gradients, U
//   sgd, adagrad, rowwise_adagrad, adam
//                    (c) the optimizer step on the touched rows, in place
// Peers:
//   spembed          spembed_embedding_bag_backward / _batched_backward,
//                    SPEMBED_BACKWARD_DETERMINISTIC
//   spembed_atomic   the same with SPEMBED_BACKWARD_ATOMIC; (a) only: (b) and
//                    (c) always use the sorted reduction, so ATOMIC does not
//                    apply to them and is not run
//   stock            one thread per (id, column), atomicAdd into the dense
//                    gradient (baseline_kernels.h); (a) only; one launch per
//                    table; GPU only
//   torch            torch_embedding_bag_backward.py (separate process)
// Inputs: SUM pooling, fp32 tables and fp32 grad_output [B, total dim] (values
// k / 16), int64 ids and offsets, default options (bounds policy ERROR), Adam
// step 1, default hyper-parameters. Ids: uniform, Zipf(1.05), Zipf(1.2) on
// every shape, and hot30 (one row takes 30% of the lookups, id_sampler.h) on
// the first shape.
//
// Byte model (stated in the output and the JSON context), per table t with
// nnz_t ids, dim_t columns and U_t distinct ids (counted on the host from the
// generated ids), summed over tables:
//   nnz_t * dim_t * 4      grad_output rows read, once per id (repeats counted)
//   + per output:
//     grad             2 * U_t * dim_t * 4      touched gradient rows read + written
//     rows             U_t * (8 + dim_t * 4)    unique ids + their gradients written
//     sgd              2 * U_t * dim_t * 4      touched weight rows read + written
//     adagrad          4 * U_t * dim_t * 4      + element-wise state read + written
//     rowwise_adagrad  2 * U_t * dim_t * 4 + 2 * U_t * 4   + one state float per row
//     adam             6 * U_t * dim_t * 4      + two element-wise states
//   + nnz * 8 + (T * B + 1) * 8   int64 ids and offsets read once (the index
//                                 work: the sort's extra passes are not counted)
// The same model for every peer and every distribution; with Zipf ids the hot
// rows are L2 hits, so the rate is an effective one.
//
// Checks before timing: (a) is compared with the stock kernel's result (CPU
// path: a plain host scatter), exactly: every sum here is of at most 2^20
// multiples of 1/16, bounded by 2^20 in magnitude, hence exact in fp32 in any
// order; (b) must report num_unique == U; every spembed call's report must be
// clean. The optimizer cases keep updating the same table and states run
// after run (the step's cost does not depend on the values).
#include <benchmark/benchmark.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "baseline_kernels.h"
#include "bench_common.h"
#include "id_sampler.h"
#include "spembed/spembed.h"

namespace spembed_bench {
namespace {

// ---- cases --------------------------------------------------------------------------

enum class Output { kDense, kSparse, kSgd, kAdagrad, kRowwiseAdagrad, kAdam };
// Registration order within a case: states are reused from adagrad to adam.
constexpr Output kOutputs[] = {Output::kDense,          Output::kSparse,  Output::kSgd,
                               Output::kRowwiseAdagrad, Output::kAdagrad, Output::kAdam};

const char* output_name(Output o) {
  switch (o) {
    case Output::kDense:
      return "grad";
    case Output::kSparse:
      return "rows";
    case Output::kSgd:
      return "sgd";
    case Output::kAdagrad:
      return "adagrad";
    case Output::kRowwiseAdagrad:
      return "rowwise_adagrad";
    case Output::kAdam:
      return "adam";
  }
  return "?";
}

bool is_optimizer(Output o) { return o != Output::kDense && o != Output::kSparse; }

spembed_optimizer_t optimizer_of(Output o) {
  switch (o) {
    case Output::kAdagrad:
      return SPEMBED_OPTIMIZER_ADAGRAD;
    case Output::kRowwiseAdagrad:
      return SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD;
    case Output::kAdam:
      return SPEMBED_OPTIMIZER_ADAM;
    default:
      return SPEMBED_OPTIMIZER_SGD;
  }
}

// Layout of the optimizer states an output needs.
enum class StateLayout { kNone, kRowwise, kElementwise };
StateLayout state_layout(Output o) {
  switch (o) {
    case Output::kAdagrad:
    case Output::kAdam:
      return StateLayout::kElementwise;
    case Output::kRowwiseAdagrad:
      return StateLayout::kRowwise;
    default:
      return StateLayout::kNone;
  }
}

struct BwdSpec {
  Shape shape;
  Dist dist;
  Output output;
  std::string ids_key() const { return shape.name + "/" + dist_name(dist); }
  std::string group() const { return ids_key() + "/fp32/" + output_name(output); }
};

// ---- host data of a (shape, ids) ------------------------------------------------------

struct HostIds {
  std::string key;
  std::vector<int64_t> ids, offsets;
  std::vector<int64_t> unique;  // U_t per table
  int64_t total_unique = 0;
};
HostIds* g_host = nullptr;

const HostIds& host_ids(const BwdSpec& c) {
  if (g_host == nullptr) g_host = new HostIds;
  if (g_host->key != c.ids_key()) {
    const Shape& s = c.shape;
    g_host->key.clear();
    g_host->ids = make_ids(s, c.dist);
    g_host->offsets = make_offsets(s);
    g_host->unique.assign(static_cast<size_t>(s.tables()), 0);
    g_host->total_unique = 0;
    std::vector<uint8_t> seen;
    for (int64_t t = 0; t < s.tables(); ++t) {
      seen.assign(static_cast<size_t>(s.rows), 0);
      int64_t u = 0;
      const int64_t* ids = g_host->ids.data() + t * s.nnz_per_table();
      for (int64_t j = 0; j < s.nnz_per_table(); ++j) {
        uint8_t& flag = seen[static_cast<size_t>(ids[j])];
        u += flag == 0 ? 1 : 0;
        flag = 1;
      }
      g_host->unique[static_cast<size_t>(t)] = u;
      g_host->total_unique += u;
    }
    g_host->key = c.ids_key();
  }
  return *g_host;
}

double bwd_model_bytes(const BwdSpec& c, const HostIds& h) {
  const Shape& s = c.shape;
  double bytes =
      8.0 * static_cast<double>(s.nnz()) + 8.0 * static_cast<double>(s.tables() * s.bags + 1);
  for (int64_t t = 0; t < s.tables(); ++t) {
    const double dim = static_cast<double>(s.dims[static_cast<size_t>(t)]);
    const double u = static_cast<double>(h.unique[static_cast<size_t>(t)]);
    bytes += static_cast<double>(s.nnz_per_table()) * dim * 4.0;
    switch (c.output) {
      case Output::kDense:
      case Output::kSgd:
        bytes += 2.0 * u * dim * 4.0;
        break;
      case Output::kSparse:
        bytes += u * (8.0 + dim * 4.0);
        break;
      case Output::kAdagrad:
        bytes += 4.0 * u * dim * 4.0;
        break;
      case Output::kRowwiseAdagrad:
        bytes += 2.0 * u * dim * 4.0 + 2.0 * u * 4.0;
        break;
      case Output::kAdam:
        bytes += 6.0 * u * dim * 4.0;
        break;
    }
  }
  if (c.output == Output::kSparse) bytes += 8.0;  // num_unique
  return bytes;
}

// ---- memory of either path --------------------------------------------------------------

// Device memory on the GPU path, host memory on the CPU path.
class Buffer {
 public:
  Buffer() = default;
  Buffer(size_t bytes, const char* what) {
    if (g_config.gpu) {
      dev_ = DeviceBuffer(bytes, what);
    } else {
      try {
        host_.resize(bytes);
      } catch (const std::bad_alloc&) {
        throw std::runtime_error(std::string("cannot allocate host memory for ") + what);
      }
    }
  }
  void* ptr() const { return g_config.gpu ? dev_.ptr : const_cast<uint8_t*>(host_.data()); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr());
  }
  size_t bytes() const { return g_config.gpu ? dev_.bytes : host_.size(); }
  bool empty() const { return g_config.gpu ? dev_.ptr == nullptr : host_.empty(); }
  // Queued on the stream on the GPU path.
  void zero() {
    if (g_config.gpu) {
      check_cuda(cudaMemsetAsync(dev_.ptr, 0, dev_.bytes, g_gpu->stream), "cudaMemsetAsync");
    } else {
      std::memset(host_.data(), 0, host_.size());
    }
  }
  void copy_from(const void* src) {
    if (g_config.gpu) {
      check_cuda(cudaMemcpy(dev_.ptr, src, dev_.bytes, cudaMemcpyHostToDevice), "upload");
    } else {
      std::memcpy(host_.data(), src, host_.size());
    }
  }

 private:
  DeviceBuffer dev_;
  std::vector<uint8_t> host_;
};

// fp32 [rows, dim] of k / 16 values (fill_table's pattern).
Buffer fp32_values(int64_t rows, int64_t dim, uint64_t salt, const char* what) {
  Buffer b(static_cast<size_t>(rows * dim) * 4, what);
  if (g_config.gpu) {
    check_cuda(fill_table(b.ptr(), Elem::kF32, rows, dim, salt, g_gpu->stream), "fill_table");
  } else {
    const std::vector<uint8_t> host = cpu_table(Elem::kF32, rows, dim, salt);
    b.copy_from(host.data());
  }
  return b;
}

DLDevice op_device() {
  return g_config.gpu ? DLDevice{kDLCUDA, g_gpu->device} : DLDevice{kDLCPU, 0};
}
spembed_handle_t op_handle() { return g_config.gpu ? g_gpu->handle : g_cpu_handle; }
spembed_stream_t op_stream() { return g_config.gpu ? g_gpu->stream : nullptr; }

// ---- the inputs and outputs of the current case -------------------------------------------

struct BwdCase {
  std::string ids_key, shape_key;
  Output states_for = Output::kDense;  // the output whose run left the states (kDense: none)
  StateLayout layout = StateLayout::kNone;

  Buffer ids, offsets;
  // Per shape.
  std::vector<Buffer> tables;
  std::vector<View> table_views;
  spembed_table_batch_t batch = nullptr;
  Buffer grad_output;
  Buffer workspace;
  // Per output, allocated on demand, freed when another output needs the room.
  std::vector<Buffer> grads;
  std::vector<View> grad_views;
  Buffer unique_ids, unique_grads, num_unique;
  std::vector<Buffer> states1, states2;
  std::vector<View> state1_views, state2_views;

  void drop_grads() {
    grads.clear();
    grad_views.clear();
  }
  void drop_unique() {
    unique_ids = Buffer();
    unique_grads = Buffer();
    num_unique = Buffer();
  }
  void drop_states() {
    states1.clear();
    states2.clear();
    state1_views.clear();
    state2_views.clear();
    layout = StateLayout::kNone;
    states_for = Output::kDense;
  }
  void drop_shape() {
    drop_grads();
    drop_unique();
    drop_states();
    if (batch != nullptr) spembed_table_batch_destroy(batch);
    batch = nullptr;
    tables.clear();
    table_views.clear();
    grad_output = Buffer();
    workspace = Buffer();
    shape_key.clear();
  }
  void drop_all() {
    drop_shape();
    ids = Buffer();
    offsets = Buffer();
    ids_key.clear();
  }
  ~BwdCase() { drop_all(); }
};
BwdCase* g_bwd = nullptr;
bool g_forward_released = false;

void prepare_inputs(const BwdSpec& c, const HostIds& h) {
  if (!g_forward_released) {
    release_forward_inputs();
    g_forward_released = true;
  }
  if (g_bwd == nullptr) g_bwd = new BwdCase;
  const Shape& s = c.shape;
  const DLDevice dev = op_device();
  if (g_bwd->shape_key != s.name) {
    g_bwd->drop_all();  // free before allocating the next shape's inputs
    for (int64_t t = 0; t < s.tables(); ++t) {
      const int64_t dim = s.dims[static_cast<size_t>(t)];
      g_bwd->tables.push_back(fp32_values(s.rows, dim, static_cast<uint64_t>(t + 1), "a table"));
    }
    for (int64_t t = 0; t < s.tables(); ++t) {
      g_bwd->table_views.emplace_back(
          g_bwd->tables[static_cast<size_t>(t)].ptr(), dev, kFloat32,
          std::initializer_list<int64_t>{s.rows, s.dims[static_cast<size_t>(t)]});
    }
    if (s.batched) {
      std::vector<DLTensor> views;
      for (const View& v : g_bwd->table_views) views.push_back(v.t);
      check_spembed(
          spembed_table_batch_create(op_handle(), views.data(), s.tables(), &g_bwd->batch),
          "spembed_table_batch_create");
    }
    g_bwd->grad_output = fp32_values(s.bags, s.total_dim(), 1000, "grad_output");
    size_t ws = 0;
    for (spembed_backward_algorithm_t alg :
         {SPEMBED_BACKWARD_DETERMINISTIC, SPEMBED_BACKWARD_ATOMIC}) {
      size_t bytes = 0;
      const spembed_status_t st =
          s.batched ? spembed_embedding_bag_batched_backward_workspace_size(
                          op_handle(), g_bwd->batch, kInt64, s.nnz(), alg, &bytes)
                    : spembed_embedding_bag_backward_workspace_size(
                          op_handle(), dev.device_type, kInt64, s.nnz(), s.rows, s.dims[0], alg,
                          &bytes);
      check_spembed(st, "backward workspace size");
      ws = std::max(ws, bytes);
    }
    if (ws > 0) g_bwd->workspace = Buffer(ws, "the workspace");
    g_bwd->shape_key = s.name;
  }
  if (g_bwd->ids_key != c.ids_key()) {
    g_bwd->ids_key.clear();
    g_bwd->ids = Buffer(h.ids.size() * 8, "ids");
    g_bwd->ids.copy_from(h.ids.data());
    g_bwd->offsets = Buffer(h.offsets.size() * 8, "offsets");
    g_bwd->offsets.copy_from(h.offsets.data());
    g_bwd->ids_key = c.ids_key();
  }
  // The uploads above may still be in flight (pageable cudaMemcpy) and the
  // fills are queued on the benchmark's non-blocking stream.
  if (g_config.gpu) check_cuda(cudaDeviceSynchronize(), "inputs");
}

// Allocates what `o` writes, after freeing what it does not.
void prepare_outputs(const BwdSpec& c) {
  const Shape& s = c.shape;
  const DLDevice dev = op_device();
  const Output o = c.output;
  if (o != Output::kDense) g_bwd->drop_grads();
  if (o != Output::kSparse) g_bwd->drop_unique();
  const StateLayout layout = state_layout(o);
  if (g_bwd->layout != layout) g_bwd->drop_states();
  if (o != Output::kAdam) {
    g_bwd->states2.clear();
    g_bwd->state2_views.clear();
  }
  // Per-table buffers are built aside and kept only when all were allocated,
  // so a failed allocation leaves nothing half made.
  if (o == Output::kDense && g_bwd->grads.empty()) {
    std::vector<Buffer> grads;
    for (int64_t t = 0; t < s.tables(); ++t) {
      const int64_t dim = s.dims[static_cast<size_t>(t)];
      grads.emplace_back(static_cast<size_t>(s.rows * dim) * 4, "the dense gradient");
    }
    g_bwd->grads = std::move(grads);
    for (int64_t t = 0; t < s.tables(); ++t) {
      g_bwd->grad_views.emplace_back(
          g_bwd->grads[static_cast<size_t>(t)].ptr(), dev, kFloat32,
          std::initializer_list<int64_t>{s.rows, s.dims[static_cast<size_t>(t)]});
    }
  }
  if (o == Output::kSparse && g_bwd->num_unique.empty()) {
    g_bwd->drop_unique();
    g_bwd->unique_ids = Buffer(static_cast<size_t>(s.nnz()) * 8, "unique_ids");
    g_bwd->unique_grads = Buffer(static_cast<size_t>(s.nnz() * s.max_dim()) * 4, "unique_grads");
    g_bwd->num_unique = Buffer(8, "num_unique");
  }
  auto alloc_states = [&](std::vector<Buffer>& states, std::vector<View>& views) {
    if (!states.empty()) return;
    std::vector<Buffer> made;
    for (int64_t t = 0; t < s.tables(); ++t) {
      const int64_t dim = s.dims[static_cast<size_t>(t)];
      const int64_t per_row = layout == StateLayout::kRowwise ? 1 : dim;
      made.emplace_back(static_cast<size_t>(s.rows * per_row) * 4, "optimizer states");
    }
    states = std::move(made);
    for (int64_t t = 0; t < s.tables(); ++t) {
      void* p = states[static_cast<size_t>(t)].ptr();
      if (layout == StateLayout::kRowwise) {
        views.emplace_back(p, dev, kFloat32, std::initializer_list<int64_t>{s.rows});
      } else {
        views.emplace_back(p, dev, kFloat32,
                           std::initializer_list<int64_t>{s.rows, s.dims[static_cast<size_t>(t)]});
      }
    }
  };
  if (layout != StateLayout::kNone) {
    alloc_states(g_bwd->states1, g_bwd->state1_views);
    g_bwd->layout = layout;
    if (o == Output::kAdam) alloc_states(g_bwd->states2, g_bwd->state2_views);
    if (g_bwd->states_for != o) {  // fresh states for each optimizer
      for (Buffer& b : g_bwd->states1) b.zero();
      for (Buffer& b : g_bwd->states2) b.zero();
      g_bwd->states_for = o;
    }
  }
}

// ---- the spembed call --------------------------------------------------------------------

std::vector<DLTensor> tensors(const std::vector<View>& views) {
  std::vector<DLTensor> v;
  for (const View& x : views) v.push_back(x.t);
  return v;
}

// One backward call on the current case; `report` may be null.
spembed_status_t call_spembed(const BwdSpec& c, spembed_backward_algorithm_t alg,
                              DLTensor* report) {
  const Shape& s = c.shape;
  const DLDevice dev = op_device();
  const View ids(g_bwd->ids.ptr(), dev, kInt64, {s.nnz()});
  const View offsets(g_bwd->offsets.ptr(), dev, kInt64, {s.tables() * s.bags + 1});
  const View grad_output(g_bwd->grad_output.ptr(), dev, kFloat32, {s.bags, s.total_dim()});
  View unique_ids, unique_grads, num_unique;
  const bool sparse = c.output == Output::kSparse;
  if (sparse) {
    unique_ids = View(g_bwd->unique_ids.ptr(), dev, kInt64, {s.nnz()});
    unique_grads = View(g_bwd->unique_grads.ptr(), dev, kFloat32, {s.nnz(), s.max_dim()});
    num_unique = View(g_bwd->num_unique.ptr(), dev, kInt64, {1});
  }
  spembed_optimizer_options_t opt;
  spembed_optimizer_options_init(&opt);
  opt.optimizer = optimizer_of(c.output);
  const bool optimize = is_optimizer(c.output);
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_options_init(&options);  // SUM, bounds policy ERROR

  std::vector<DLTensor> grads = tensors(g_bwd->grad_views);
  std::vector<DLTensor> states1 = tensors(g_bwd->state1_views);
  std::vector<DLTensor> states2 = tensors(g_bwd->state2_views);
  if (s.batched) {
    spembed_embedding_bag_batched_backward_args_t a{};
    a.indices = &ids.t;
    a.offsets = &offsets.t;
    a.grad_output = &grad_output.t;
    if (c.output == Output::kDense) a.grad_tables = grads.data();
    if (sparse) {
      a.unique_ids = &unique_ids.t;
      a.unique_grads = &unique_grads.t;
      a.num_unique = &num_unique.t;
    }
    if (optimize) {
      a.states1 = states1.empty() ? nullptr : states1.data();
      a.states2 = states2.empty() ? nullptr : states2.data();
      a.optimizer = &opt;
    }
    return spembed_embedding_bag_batched_backward(op_handle(), g_bwd->batch, &a, &options, alg,
                                                  report, g_bwd->workspace.ptr(),
                                                  g_bwd->workspace.bytes(), op_stream());
  }
  spembed_embedding_bag_backward_args_t a{};
  // Always given: the library takes rows and dim from it (updated by (c) only).
  a.table = &g_bwd->table_views[0].t;
  a.indices = &ids.t;
  a.offsets = &offsets.t;
  a.grad_output = &grad_output.t;
  if (c.output == Output::kDense) a.grad_table = &grads[0];
  if (sparse) {
    a.unique_ids = &unique_ids.t;
    a.unique_grads = &unique_grads.t;
    a.num_unique = &num_unique.t;
  }
  if (optimize) {
    a.state1 = states1.empty() ? nullptr : &states1[0];
    a.state2 = states2.empty() ? nullptr : &states2[0];
    a.optimizer = &opt;
  }
  return spembed_embedding_bag_backward(op_handle(), &a, &options, alg, report,
                                        g_bwd->workspace.ptr(), g_bwd->workspace.bytes(),
                                        op_stream());
}

void zero_grads() {
  for (Buffer& b : g_bwd->grads) b.zero();
}

// ---- GPU ---------------------------------------------------------------------------------

void run_stock(const BwdSpec& c, const std::vector<Buffer>& grads) {
  const Shape& s = c.shape;
  int64_t col = 0;
  for (int64_t t = 0; t < s.tables(); ++t) {
    const int64_t dim = s.dims[static_cast<size_t>(t)];
    const int64_t first = t * s.nnz_per_table();
    check_cuda(stock_embedding_bag_backward(
                   grads[static_cast<size_t>(t)].as<float>(), dim, g_bwd->ids.as<int64_t>() + first,
                   s.nnz_per_table(), g_bwd->offsets.as<int64_t>() + t * s.bags, s.bags, first,
                   g_bwd->grad_output.as<float>(), s.total_dim(), col, g_gpu->stream),
               "stock backward");
    col += dim;
  }
}

// The dense gradient of the current case against the stock kernel's, table by
// table through one scratch buffer. Returns "" or what differs.
std::string verify_dense(const BwdSpec& c) {
  const Shape& s = c.shape;
  Buffer ref(static_cast<size_t>(s.rows * s.max_dim()) * 4, "the reference gradient");
  auto* result = g_gpu->check.as<unsigned long long>();
  int64_t col = 0;
  for (int64_t t = 0; t < s.tables(); ++t) {
    const int64_t dim = s.dims[static_cast<size_t>(t)];
    const int64_t first = t * s.nnz_per_table();
    ref.zero();
    check_cuda(stock_embedding_bag_backward(
                   ref.as<float>(), dim, g_bwd->ids.as<int64_t>() + first, s.nnz_per_table(),
                   g_bwd->offsets.as<int64_t>() + t * s.bags, s.bags, first,
                   g_bwd->grad_output.as<float>(), s.total_dim(), col, g_gpu->stream),
               "stock backward");
    col += dim;
    const unsigned long long init[2] = {0ull, ~0ull};
    check_cuda(cudaMemcpyAsync(result, init, sizeof(init), cudaMemcpyHostToDevice, g_gpu->stream),
               "check init");
    check_cuda(count_mismatches(g_bwd->grads[static_cast<size_t>(t)].ptr(), ref.ptr(), Elem::kF32,
                                s.rows * dim, 0.0, result, g_gpu->stream),
               "compare");
    unsigned long long got[2];
    check_cuda(cudaMemcpyAsync(got, result, sizeof(got), cudaMemcpyDeviceToHost, g_gpu->stream),
               "check readback");
    check_cuda(cudaStreamSynchronize(g_gpu->stream), "verify");
    if (got[0] != 0) {
      return std::to_string(got[0]) + " of " + std::to_string(s.rows * dim) +
             " gradient elements of table " + std::to_string(t) +
             " differ from the stock kernel's, first at element " + std::to_string(got[1]);
    }
  }
  return "";
}

void bench_gpu(benchmark::State& state, const BwdSpec& c, const std::string& peer) {
  const HostIds& h = host_ids(c);
  prepare_inputs(c, h);
  prepare_outputs(c);
  const bool dense = c.output == Output::kDense;
  const spembed_backward_algorithm_t alg =
      peer == "spembed_atomic" ? SPEMBED_BACKWARD_ATOMIC : SPEMBED_BACKWARD_DETERMINISTIC;
  auto run = [&] {
    if (peer == "stock") {
      run_stock(c, g_bwd->grads);
    } else {
      check_spembed(call_spembed(c, alg, nullptr), "spembed backward");
    }
  };
  auto prepare = [&] {
    if (dense) zero_grads();
  };
  // First run, with the checks.
  prepare();
  if (peer == "stock") {
    run();
  } else {
    const DLDevice dev = op_device();
    const View report_view(g_gpu->check.ptr, dev, kInt64, {SPEMBED_REPORT_SIZE});
    DLTensor report_t = report_view.t;
    check_spembed(call_spembed(c, alg, &report_t), "spembed backward");
    int64_t host_report[SPEMBED_REPORT_SIZE];
    check_cuda(cudaMemcpyAsync(host_report, g_gpu->check.ptr, sizeof(host_report),
                               cudaMemcpyDeviceToHost, g_gpu->stream),
               "report readback");
    check_cuda(cudaStreamSynchronize(g_gpu->stream), "spembed backward");
    check_spembed(spembed_report_status(host_report), "spembed backward report");
    std::string mismatch;
    if (dense) mismatch = verify_dense(c);
    if (c.output == Output::kSparse) {
      int64_t u = -1;
      check_cuda(cudaMemcpy(&u, g_bwd->num_unique.ptr(), 8, cudaMemcpyDeviceToHost), "num_unique");
      if (u != h.total_unique) {
        mismatch = "num_unique = " + std::to_string(u) + ", the ids hold " +
                   std::to_string(h.total_unique) + " distinct rows";
      }
    }
    if (!mismatch.empty()) {
      state.SkipWithError(mismatch.c_str());
      return;
    }
  }
  for (int i = 1; i < kGpuWarmup; ++i) time_gpu_run(prepare, run);
  std::vector<double> seconds;
  for (auto _ : state) {
    const double sec = time_gpu_run(prepare, run);
    state.SetIterationTime(sec);
    seconds.push_back(sec);
  }
  report(state, c.group(), peer, std::move(seconds), bwd_model_bytes(c, h));
}

// ---- CPU ---------------------------------------------------------------------------------

// The dense gradient of the current case against a plain host scatter (exact,
// as on the GPU). Returns "" or what differs.
std::string verify_dense_cpu(const BwdSpec& c, const HostIds& h) {
  const Shape& s = c.shape;
  const float* go = g_bwd->grad_output.as<float>();
  std::vector<float> ref;
  int64_t col = 0;
  for (int64_t t = 0; t < s.tables(); ++t) {
    const int64_t dim = s.dims[static_cast<size_t>(t)];
    ref.assign(static_cast<size_t>(s.rows * dim), 0.0f);
    for (int64_t b = 0; b < s.bags; ++b) {
      const int64_t bag = t * s.bags + b;
      for (int64_t j = h.offsets[static_cast<size_t>(bag)];
           j < h.offsets[static_cast<size_t>(bag) + 1]; ++j) {
        float* row = ref.data() + h.ids[static_cast<size_t>(j)] * dim;
        const float* g = go + b * s.total_dim() + col;
        for (int64_t d = 0; d < dim; ++d) row[d] += g[d];
      }
    }
    const float* got = g_bwd->grads[static_cast<size_t>(t)].as<float>();
    for (int64_t i = 0; i < s.rows * dim; ++i) {
      if (got[i] != ref[static_cast<size_t>(i)]) {
        return "gradient element " + std::to_string(i) + " of table " + std::to_string(t) + " is " +
               std::to_string(got[i]) + ", a plain scatter gives " +
               std::to_string(ref[static_cast<size_t>(i)]);
      }
    }
    col += dim;
  }
  return "";
}

void bench_cpu(benchmark::State& state, const BwdSpec& c, const std::string& peer) {
  const HostIds& h = host_ids(c);
  prepare_inputs(c, h);
  prepare_outputs(c);
  const bool dense = c.output == Output::kDense;
  const spembed_backward_algorithm_t alg =
      peer == "spembed_atomic" ? SPEMBED_BACKWARD_ATOMIC : SPEMBED_BACKWARD_DETERMINISTIC;
  auto run = [&] { check_spembed(call_spembed(c, alg, nullptr), "spembed backward (CPU)"); };
  if (dense) zero_grads();
  run();
  std::string mismatch;
  if (dense) mismatch = verify_dense_cpu(c, h);
  if (c.output == Output::kSparse && *g_bwd->num_unique.as<int64_t>() != h.total_unique) {
    mismatch = "num_unique = " + std::to_string(*g_bwd->num_unique.as<int64_t>()) +
               ", the ids hold " + std::to_string(h.total_unique) + " distinct rows";
  }
  if (!mismatch.empty()) {
    state.SkipWithError(mismatch.c_str());
    return;
  }
  for (int i = 1; i < kCpuWarmup; ++i) run();
  std::vector<double> seconds = time_cpu_iterations(
      state,
      [&] {
        if (dense) zero_grads();
      },
      run);
  report(state, c.group(), peer, std::move(seconds), bwd_model_bytes(c, h));
}

// ---- registration -------------------------------------------------------------------------

void register_bwd(const BwdSpec& c, const std::string& peer) {
  const std::string name = std::string(g_config.gpu ? "ebb/" : "ebb_cpu/") + c.group() + "/" + peer;
  register_timed(name, capped_iters(kCpuBackwardIters), [c, peer](benchmark::State& state) {
    if (g_config.gpu) {
      bench_gpu(state, c, peer);
    } else {
      bench_cpu(state, c, peer);
    }
  });
}

}  // namespace

const char* backward_byte_model() {
  return "Backward byte model, per table (nnz_t ids, dim_t, U_t distinct ids counted on the "
         "host): nnz_t*dim_t*4 (grad_output rows read, once per id) + grad: 2*U_t*dim_t*4 "
         "(gradient rows read + written) | rows: U_t*(8 + dim_t*4) (unique ids and gradients "
         "written) | sgd: 2*U_t*dim_t*4 (weights read + written) | adagrad: 4*U_t*dim_t*4 "
         "(+ state) | rowwise_adagrad: 2*U_t*dim_t*4 + 2*U_t*4 | adam: 6*U_t*dim_t*4 (+ two "
         "states); plus nnz*8 + (T*B+1)*8 (int64 ids and offsets read once; sort passes not "
         "counted). Same model for Zipf ids (L2 hits make it effective). Backward peers: "
         "spembed = deterministic, spembed_atomic = SPEMBED_BACKWARD_ATOMIC (dense gradient "
         "only: the row-sparse output and the optimizer steps always use the sorted reduction, "
         "so ATOMIC does not apply to them), stock = atomicAdd scatter, one thread per (id, "
         "column) (GPU only).\n";
}

void register_backward() {
  const std::vector<Shape> shapes = issue_shapes(!g_config.gpu);
  for (const Shape& shape : shapes) {
    std::vector<Dist> dists = {Dist::kUniform, Dist::kZipf105, Dist::kZipf120};
    if (&shape == &shapes.front()) dists.push_back(Dist::kHot30);
    for (Dist dist : dists) {
      for (Output o : kOutputs) {
        const BwdSpec c{shape, dist, o};
        register_bwd(c, "spembed");
        if (o == Output::kDense) {
          register_bwd(c, "spembed_atomic");
          if (g_config.gpu) register_bwd(c, "stock");
        }
      }
    }
  }
}

void release_backward_inputs() {
  delete g_bwd;
  g_bwd = nullptr;
  delete g_host;
  g_host = nullptr;
}

}  // namespace spembed_bench
