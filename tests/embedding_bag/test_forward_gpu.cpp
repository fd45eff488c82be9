// The CUDA implementation against the CPU one (and both against the
// independent reference in test_util.cpp) through the public C API: the same
// problem runs on CUDA tensors with poisoned outputs and on CPU tensors.
// Also the CUDA-only behaviour: device-side checks and the report, the
// workspace contract, streams and graph capture, tables past 2^31 elements,
// and argument validation with CUDA tensors.
//
// Every test that needs a device skips when none is usable and fails instead
// when SPEMBED_REQUIRE_GPU=1 (see gpu_util.h). The MixedDevices tests need no
// device: the library must reject them before touching one.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "gpu_util.h"
#include "renorm_util.h"
#include "test_util.h"

namespace spembed_test {
namespace {

// ---- running a Problem on the device ----------------------------------------------

// Device copies of a Problem's tensors and the call on them. Not movable: the
// call points into the members.
class DeviceProblem {
 public:
  DeviceProblem(spembed_handle_t handle, Problem& p) {
    tables_.reserve(p.tables.size());
    for (const HostTensor& t : p.tables) tables_.emplace_back(t);
    indices_ = DeviceTensor(p.indices);
    if (p.has_offsets) offsets_ = DeviceTensor(p.offsets_t);
    if (p.spec.weighted) weights_ = DeviceTensor(p.weights_t);
    output_ = DeviceTensor(p.output);
    if (p.spec.with_argmax) argmax_ = DeviceTensor(p.argmax);
    if (p.spec.with_report) report_ = DeviceTensor(p.report);

    call.batched = p.spec.batched;
    call.table = tables_[0].dl();
    call.indices = indices_.dl();
    call.offsets = p.has_offsets ? offsets_.dl() : nullptr;
    call.weights = p.spec.weighted ? weights_.dl() : nullptr;
    call.options = &p.options;
    call.output = output_.dl();
    call.argmax = p.spec.with_argmax ? argmax_.dl() : nullptr;
    call.report = p.spec.with_report ? report_.dl() : nullptr;
    if (p.spec.batched) {
      std::vector<DLTensor> views;
      for (DeviceTensor& t : tables_) views.push_back(*t.dl());
      batch_ = std::make_unique<TableBatch>(handle, views);
      batch_status = batch_->create_status();
      call.batch = batch_->get();
    }
  }
  DeviceProblem(const DeviceProblem&) = delete;
  DeviceProblem& operator=(const DeviceProblem&) = delete;

  // Copies the outputs back into host tensors laid out like p's.
  void download(HostTensor* output, HostTensor* argmax, HostTensor* report) const {
    if (output != nullptr) output_.download(*output);
    if (argmax != nullptr) argmax_.download(*argmax);
    if (report != nullptr) report_.download(*report);
  }
  void reupload_output(const HostTensor& output) { output_.upload(output); }

  ForwardCall call;
  spembed_status_t batch_status = SPEMBED_STATUS_SUCCESS;

 private:
  std::vector<DeviceTensor> tables_;
  DeviceTensor indices_, offsets_, weights_, output_, argmax_, report_;
  std::unique_ptr<TableBatch> batch_;
};

// Shared set-up of the device tests: skip or fail without a device, a handle
// bound to the current device, and a workspace of the queried size.
template <class Base>
class CudaFixture : public Base {
 protected:
  void SetUp() override {
    SPEMBED_REQUIRE_CUDA_OR_SKIP();
    handle_ = std::make_unique<Handle>();
    ASSERT_EQ(handle_->create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    int device = -2;
    ASSERT_EQ(spembed_handle_device(handle(), &device), SPEMBED_STATUS_SUCCESS);
    ASSERT_EQ(device, current_device())
        << "CUDA is usable but the handle did not bind to the current device";
    ASSERT_EQ(spembed_embedding_bag_forward_workspace_size(handle(), kDLCUDA, &ws_bytes_),
              SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    workspace_ = std::make_unique<DeviceBuffer>(ws_bytes_);
  }

  spembed_handle_t handle() const { return handle_->get(); }

  spembed_status_t run_device(DeviceProblem& dp, cudaStream_t stream = nullptr) {
    dp.call.workspace = workspace_->get();
    dp.call.workspace_bytes = ws_bytes_;
    dp.call.stream = stream;
    return dp.call.run(handle());
  }

  // Runs p on CUDA and on the CPU and checks both against p.expected
  // (exactly where the expected bound is 0), the argmax, the row padding left
  // untouched, and the report.
  void compare_with_cpu(Problem& p) {
    const std::vector<uint8_t> before = p.output.bytes();
    HostTensor gpu_out = p.output.clone();
    HostTensor gpu_argmax = p.spec.with_argmax ? p.argmax.clone() : HostTensor();
    HostTensor gpu_report = p.spec.with_report ? p.report.clone() : HostTensor();
    {
      DeviceProblem dp(handle(), p);
      ASSERT_EQ(dp.batch_status, SPEMBED_STATUS_SUCCESS) << spembed_last_error();
      const spembed_status_t st = run_device(dp);
      ASSERT_EQ(st, SPEMBED_STATUS_SUCCESS)
          << spembed_status_string(st) << ": " << spembed_last_error();
      dp.download(&gpu_out, p.spec.with_argmax ? &gpu_argmax : nullptr,
                  p.spec.with_report ? &gpu_report : nullptr);
    }
    const spembed_status_t cst = run_forward_cpu(handle(), p);
    ASSERT_EQ(cst, SPEMBED_STATUS_SUCCESS)
        << spembed_status_string(cst) << ": " << spembed_last_error();
    EXPECT_EQ(check_output("cpu", p.output, before, p.expected), 0);
    EXPECT_EQ(check_output("cuda", gpu_out, before, p.expected), 0);
    if (p.spec.with_argmax) {
      EXPECT_EQ(check_argmax("cpu", p.argmax, p.expected), 0);
      EXPECT_EQ(check_argmax("cuda", gpu_argmax, p.expected), 0);
    }
    if (p.spec.with_report) {
      const Expected& e = p.expected;
      for (const HostTensor* r : {&p.report, &gpu_report}) {
        SCOPED_TRACE(r == &p.report ? "cpu report" : "cuda report");
        EXPECT_EQ(r->get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
        EXPECT_EQ(r->get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), e.bad_count);
        EXPECT_EQ(r->get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), e.bad_position);
        if (e.bad_count > 0) {
          EXPECT_EQ(r->get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), e.bad_value);
        }
        EXPECT_EQ(r->get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
      }
    }
  }

  std::unique_ptr<Handle> handle_;
  size_t ws_bytes_ = 0;
  std::unique_ptr<DeviceBuffer> workspace_;
};

using CudaTest = CudaFixture<::testing::Test>;

// ---- parametrised sweeps --------------------------------------------------------

struct Mode {
  spembed_pooling_t pooling;
  bool weighted;
};
const Mode kModes[] = {{SPEMBED_POOLING_SUM, false},  {SPEMBED_POOLING_SUM, true},
                       {SPEMBED_POOLING_MEAN, false}, {SPEMBED_POOLING_MAX, false},
                       {SPEMBED_POOLING_NONE, false}, {SPEMBED_POOLING_NONE, true}};
const int64_t kDims[] = {1, 3, 16, 64, 128, 257, 1024};
// With SPEMBED_TEST_SHAPES=small (the emulation build) the longest bags are
// shorter: the same paths, many 16-byte loads in flight per lane.
std::vector<int64_t> bag_lengths() {
  if (small_shapes()) return {0, 1, 7, 32, 200, 600};
  return {0, 1, 7, 32, 200, 5000};
}
// Bag lengths of the mixed pattern (bag_len = -1): every awkward length below
// a block, empty bags among them.
const std::vector<int64_t> kMixedLengths = {1, 0, 7, 32, 200, 1, 0, 3, 7, 1, 32, 5};

struct GpuParam {
  DLDataType table;
  DLDataType out;
  DLDataType index;
  Mode mode;
  int64_t dim;
  int64_t bag_len;  // -1: kMixedLengths
  DataKind data;
};

std::string gpu_name(const GpuParam& g) {
  return dtype_name(g.table) + "_to_" + dtype_name(g.out) + "_" + dtype_name(g.index) + "_" +
         pooling_name(g.mode.pooling) + (g.mode.weighted ? "Weighted" : "") + "_dim" +
         std::to_string(g.dim) +
         (g.bag_len < 0 ? std::string("_mixed") : "_len" + std::to_string(g.bag_len)) +
         (g.data == DataKind::kInt ? "_int" : "_real");
}

std::string gpu_param_name(const ::testing::TestParamInfo<GpuParam>& info) {
  return gpu_name(info.param);
}

// What GoogleTest prints for GetParam() (instead of a byte dump).
void PrintTo(const GpuParam& g, std::ostream* os) {
  *os << "table=" << dtype_name(g.table) << " out=" << dtype_name(g.out)
      << " idx=" << dtype_name(g.index) << " pooling=" << pooling_name(g.mode.pooling)
      << " weighted=" << (g.mode.weighted ? "yes" : "no") << " dim=" << g.dim
      << " bag_len=" << (g.bag_len < 0 ? std::string("mixed") : std::to_string(g.bag_len))
      << " data=" << (g.data == DataKind::kInt ? "int" : "real");
}

// Elements (nnz * dim) and ids per case are capped so the CPU side (library
// and reference) stays in milliseconds: 2^20 elements, 2^17 ids (2^14 and
// 2^11 with small shapes, where every GPU thread is a CPU fiber).
int64_t max_elements() { return small_shapes() ? int64_t{1} << 14 : int64_t{1} << 20; }
int64_t max_ids() { return small_shapes() ? int64_t{1} << 11 : int64_t{1} << 17; }

ProblemSpec spec_for(const GpuParam& g) {
  ProblemSpec s;
  s.table_dtype = g.table;
  s.out_dtype = g.out;
  s.index_dtype = g.index;
  s.pooling = g.mode.pooling;
  s.weighted = g.mode.weighted;
  s.with_argmax = g.mode.pooling == SPEMBED_POOLING_MAX;
  s.dims = {g.dim};
  s.data = g.data;
  s.seed = std::hash<std::string>{}(gpu_name(g));
  if (g.bag_len < 0) {
    s.rows = 1000;
    s.bag_lengths = kMixedLengths;
    s.padding_idx = 3;
    s.padding_fraction = 0.05;
  } else {
    s.rows = 500;
    const int64_t bags =
        g.bag_len == 0
            ? 64
            : std::clamp<int64_t>(
                  std::min(max_elements() / (g.bag_len * g.dim), max_ids() / g.bag_len), 1, 64);
    s.bag_lengths.assign(static_cast<size_t>(bags), g.bag_len);
    if (g.data == DataKind::kInt) {
      s.bounds_policy = SPEMBED_BOUNDS_SKIP;
      s.bad_id_fraction = 0.01;
    }
  }
  return s;
}

class GpuVsCpu : public CudaFixture<::testing::TestWithParam<GpuParam>> {};

TEST_P(GpuVsCpu, Matches) {
  Problem p = make_problem(spec_for(GetParam()));
  compare_with_cpu(p);
}

const std::pair<DLDataType, DLDataType> kDtypePairs[] = {
    {kF32, kF32}, {kF16, kF16}, {kBF16, kBF16}, {kF16, kF32}, {kBF16, kF32}, {kF64, kF64}};

// Full cross of dtypes x index types x modes x dims on the mixed bag lengths,
// integer-valued data (exact comparisons).
std::vector<GpuParam> cross_params() {
  std::vector<GpuParam> v;
  for (const auto& [table, out] : kDtypePairs) {
    for (DLDataType index : {kI32, kI64}) {
      for (const Mode& m : kModes) {
        for (int64_t dim : kDims) {
          v.push_back({table, out, index, m, dim, -1, DataKind::kInt});
        }
      }
    }
  }
  return v;
}

// Full cross of modes x dims x bag lengths, in three dtype / data variants:
// fp32 with real data (bounds), fp16 with integer data (exact, SKIP policy
// with bad ids), bf16 into fp32 with real data.
std::vector<GpuParam> bag_length_params() {
  struct Variant {
    DLDataType table, out, index;
    DataKind data;
  };
  const Variant variants[] = {{kF32, kF32, kI64, DataKind::kReal},
                              {kF16, kF16, kI32, DataKind::kInt},
                              {kBF16, kF32, kI64, DataKind::kReal},
                              {kF64, kF64, kI32, DataKind::kReal}};
  std::vector<GpuParam> v;
  for (const Variant& var : variants) {
    for (const Mode& m : kModes) {
      for (int64_t dim : kDims) {
        for (int64_t len : bag_lengths()) {
          v.push_back({var.table, var.out, var.index, m, dim, len, var.data});
        }
      }
    }
  }
  return v;
}

INSTANTIATE_TEST_SUITE_P(Cross, GpuVsCpu, ::testing::ValuesIn(cross_params()), gpu_param_name);
INSTANTIATE_TEST_SUITE_P(BagLength, GpuVsCpu, ::testing::ValuesIn(bag_length_params()),
                         gpu_param_name);

// ---- targeted cases -------------------------------------------------------------

ProblemSpec base_spec(DLDataType table, DLDataType out, spembed_pooling_t pooling, int64_t dim,
                      uint64_t seed) {
  ProblemSpec s;
  s.table_dtype = table;
  s.out_dtype = out;
  s.pooling = pooling;
  s.with_argmax = pooling == SPEMBED_POOLING_MAX;
  s.dims = {dim};
  s.rows = 300;
  s.bag_lengths = kMixedLengths;
  s.seed = seed;
  return s;
}

TEST_F(CudaTest, UnalignedRowStrideAndBase) {
  // Row stride dim + 1 and a 2-byte byte_offset: no row starts 16-byte aligned,
  // so a vectorised path must not be taken.
  for (DLDataType t : {kF16, kBF16, kF32, kF64}) {
    for (int64_t dim : {16, 64, 128}) {
      for (spembed_pooling_t pooling :
           {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MAX, SPEMBED_POOLING_NONE}) {
        SCOPED_TRACE(dtype_name(t) + " dim " + std::to_string(dim) + " " + pooling_name(pooling));
        ProblemSpec s = base_spec(t, t, pooling, dim, 100 + static_cast<uint64_t>(dim));
        s.table_row_pad = 1;
        s.table_byte_offset = dtype_bytes(t);
        s.out_row_pad = 1;
        Problem p = make_problem(s);
        compare_with_cpu(p);
      }
    }
  }
}

TEST_F(CudaTest, AlignedStrideLargerThanDim) {
  // Strides that keep 16-byte alignment but exceed dim: padding elements are
  // NaN, so a vector load that spills into them would show.
  struct Case {
    DLDataType t;
    int64_t dim, pad;
  };
  for (const Case& c :
       {Case{kF16, 64, 8}, Case{kF32, 64, 4}, Case{kBF16, 128, 24}, Case{kF16, 8, 8},
        Case{kF32, 256, 12}, Case{kF64, 32, 2}, Case{kF64, 6, 1}}) {
    for (spembed_pooling_t pooling :
         {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX}) {
      SCOPED_TRACE(dtype_name(c.t) + " dim " + std::to_string(c.dim) + " " + pooling_name(pooling));
      ProblemSpec s = base_spec(c.t, c.t, pooling, c.dim, 200 + static_cast<uint64_t>(c.pad));
      s.table_row_pad = c.pad;
      s.out_row_pad = c.pad;
      Problem p = make_problem(s);
      compare_with_cpu(p);
    }
  }
}

TEST_F(CudaTest, FixedBagSize) {
  for (int64_t len : {1, 7, 32, 200}) {
    for (int64_t dim : {3, 64}) {
      for (spembed_pooling_t pooling :
           {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX}) {
        SCOPED_TRACE("len " + std::to_string(len) + " dim " + std::to_string(dim) + " " +
                     pooling_name(pooling));
        ProblemSpec s = base_spec(kF32, kF32, pooling, dim, 300 + static_cast<uint64_t>(len));
        s.bag_lengths.assign(10, 0);
        s.fixed_bag_size = len;
        s.index_dtype = len % 2 ? kI32 : kI64;
        Problem p = make_problem(s);
        compare_with_cpu(p);
      }
    }
  }
}

TEST_F(CudaTest, PaddingIdx) {
  for (spembed_pooling_t pooling :
       {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX, SPEMBED_POOLING_NONE}) {
    for (double fraction : {0.3, 1.0}) {
      SCOPED_TRACE(pooling_name(pooling) + " padding fraction " + std::to_string(fraction));
      ProblemSpec s = base_spec(kF16, kF32, pooling, 33, 400);
      s.padding_idx = 0;
      s.padding_fraction = fraction;
      s.weighted = pooling == SPEMBED_POOLING_SUM;
      Problem p = make_problem(s);
      compare_with_cpu(p);
    }
  }
}

TEST_F(CudaTest, SkipPolicyMatchesCpu) {
  for (spembed_pooling_t pooling :
       {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX, SPEMBED_POOLING_NONE}) {
    for (DLDataType index : {kI32, kI64}) {
      SCOPED_TRACE(pooling_name(pooling) + " " + dtype_name(index));
      ProblemSpec s = base_spec(kBF16, kBF16, pooling, 20, 500);
      s.index_dtype = index;
      s.bounds_policy = SPEMBED_BOUNDS_SKIP;
      s.bad_id_fraction = 0.2;
      s.padding_idx = 7;
      s.padding_fraction = 0.1;
      Problem p = make_problem(s);
      ASSERT_GT(p.expected.bad_count, 1);
      compare_with_cpu(p);
    }
  }
}

TEST_F(CudaTest, BatchedMixedDims) {
  const std::vector<int64_t> dims = {1, 3, 16, 64, 128, 257};
  struct Case {
    DLDataType table, out, index;
  };
  for (int64_t batch : {int64_t{1}, small_shapes() ? int64_t{97} : int64_t{1023}}) {
    for (const Case& c :
         {Case{kF32, kF32, kI64}, Case{kF16, kF32, kI32}, Case{kBF16, kBF16, kI64}}) {
      for (const Mode& m : {Mode{SPEMBED_POOLING_SUM, false}, Mode{SPEMBED_POOLING_SUM, true},
                            Mode{SPEMBED_POOLING_MEAN, false}, Mode{SPEMBED_POOLING_MAX, false}}) {
        SCOPED_TRACE("B " + std::to_string(batch) + " " + dtype_name(c.table) + "->" +
                     dtype_name(c.out) + " " + pooling_name(m.pooling) +
                     (m.weighted ? " weighted" : ""));
        ProblemSpec s = base_spec(c.table, c.out, m.pooling, 1, 600 + static_cast<uint64_t>(batch));
        s.batched = true;
        s.dims = dims;
        s.index_dtype = c.index;
        s.weighted = m.weighted;
        s.rows = 200;
        s.out_row_pad = 5;
        s.padding_idx = 2;
        s.padding_fraction = 0.02;
        s.bag_lengths.clear();
        Rng lengths(static_cast<uint64_t>(batch));
        for (size_t i = 0; i < dims.size() * static_cast<size_t>(batch); ++i) {
          // Mostly short bags with some empty and some longer than a warp.
          const int64_t r = lengths.uniform_int(0, 9);
          s.bag_lengths.push_back(r == 0 ? 0 : r < 8 ? lengths.uniform_int(1, 20) : 70);
        }
        Problem p = make_problem(s);
        compare_with_cpu(p);
      }
    }
  }
}

TEST_F(CudaTest, BatchedFixedBagSizeAndLongBags) {
  ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_SUM, 1, 700);
  s.batched = true;
  s.dims = {257, 1, 64};
  s.bag_lengths.assign(3 * 5, 0);
  s.fixed_bag_size = 3;
  Problem p = make_problem(s);
  compare_with_cpu(p);
  ProblemSpec l = base_spec(kF16, kF32, SPEMBED_POOLING_MAX, 1, 701);
  l.batched = true;
  l.dims = {3, 128};
  l.bag_lengths = {5000, 0, 1, 5000};  // B = 2
  Problem q = make_problem(l);
  compare_with_cpu(q);
}

TEST_F(CudaTest, AccumulatesInIdOrder) {
  // spembed.h: "Accumulation is in float32, in the order of the ids within
  // each bag." With 2^24 first, every following +1 rounds away (ties to even)
  // and the final -2^24 leaves 0; any other association keeps some of the 1s.
  for (int64_t ones : {1, 298, 4998}) {
    SCOPED_TRACE(std::to_string(ones) + " ones");
    const double big = std::ldexp(1.0, 24);
    HostTensor table = make_matrix(kF32, 3, 2, {big, big, 1, 1, -big, -big});
    std::vector<int64_t> ids{0};
    ids.insert(ids.end(), static_cast<size_t>(ones), 1);
    ids.push_back(2);
    const auto n = static_cast<int64_t>(ids.size());
    HostTensor idx = make_index_tensor(kI64, ids);
    HostTensor offs = make_index_tensor(kI64, {0, n});
    HostTensor out(kF32, {1, 2});
    DeviceTensor dt(table), di(idx), doffs(offs), dout(out);
    const spembed_status_t st = spembed_embedding_bag_forward(
        handle(), dt.dl(), di.dl(), doffs.dl(), nullptr, nullptr, dout.dl(), nullptr, nullptr,
        workspace_->get(), ws_bytes_, nullptr);
    ASSERT_EQ(st, SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    dout.download(out);
    EXPECT_EQ(out.get(0, 0), 0.0);
    EXPECT_EQ(out.get(0, 1), 0.0);
  }
}

TEST_F(CudaTest, NonDefaultStream) {
  cudaStream_t stream = nullptr;
  SPEMBED_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  ProblemSpec s = base_spec(kF16, kF16, SPEMBED_POOLING_MEAN, 64, 800);
  Problem p = make_problem(s);
  HostTensor out = p.output.clone();
  const auto before = p.output.bytes();
  {
    DeviceProblem dp(handle(), p);
    ASSERT_EQ(run_device(dp, stream), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    SPEMBED_CUDA_CHECK(cudaStreamSynchronize(stream));
    dp.download(&out, nullptr, nullptr);
  }
  SPEMBED_CUDA_CHECK(cudaStreamDestroy(stream));
  EXPECT_EQ(check_output("cuda stream", out, before, p.expected), 0);
}

TEST_F(CudaTest, CapturedInACudaGraph) {
  // The header promises no allocation or synchronisation in the op: a global
  // capture fails if the library calls a forbidden API while capturing.
  cudaStream_t stream = nullptr;
  SPEMBED_CUDA_CHECK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_MAX, 40, 900);
  s.bounds_policy = SPEMBED_BOUNDS_SKIP;
  s.bad_id_fraction = 0.05;
  Problem p = make_problem(s);
  const auto before = p.output.bytes();
  HostTensor out = p.output.clone(), amax = p.argmax.clone(), report = p.report.clone();
  {
    DeviceProblem dp(handle(), p);
    cudaGraph_t graph = nullptr;
    SPEMBED_CUDA_CHECK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
    const spembed_status_t st = run_device(dp, stream);
    const cudaError_t end = cudaStreamEndCapture(stream, &graph);
    ASSERT_EQ(st, SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    ASSERT_EQ(end, cudaSuccess) << cudaGetErrorString(end);
    cudaGraphExec_t exec = nullptr;
    SPEMBED_CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
    for (int replay = 0; replay < 2; ++replay) {
      SCOPED_TRACE("replay " + std::to_string(replay));
      dp.reupload_output(p.output);  // poisoned again
      SPEMBED_CUDA_CHECK(cudaGraphLaunch(exec, stream));
      SPEMBED_CUDA_CHECK(cudaStreamSynchronize(stream));
      dp.download(&out, &amax, &report);
      EXPECT_EQ(check_output("graph", out, before, p.expected), 0);
      EXPECT_EQ(check_argmax("graph", amax, p.expected), 0);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), p.expected.bad_count);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), p.expected.bad_position);
    }
    SPEMBED_CUDA_CHECK(cudaGraphExecDestroy(exec));
    SPEMBED_CUDA_CHECK(cudaGraphDestroy(graph));
  }
  SPEMBED_CUDA_CHECK(cudaStreamDestroy(stream));
}

// ---- device-side data checks ----------------------------------------------------

// spembed_embedding_renorm on CUDA against the CPU on the same inputs
// (tables of every dtype, ids with a hot row and repeats): bitwise for norm
// types 1 and 2 (the same summation order), within the float64 reference's
// bound for 3 (powf differs by an ulp between host and device). Then the
// bounds policies (ERROR writes nothing and reports; SKIP matches the CPU)
// and a too-small workspace.
class CudaRenorm : public CudaTest {
 protected:
  // Runs p on the device; returns the call's status, the table downloaded
  // into p.table and the report into *report.
  spembed_status_t run_renorm(RenormProblem& p, spembed_bounds_policy_t policy, HostTensor* report,
                              size_t workspace_cut = 0) {
    DeviceTensor table(p.table), ids(p.indices), dev_report(*report);
    size_t bytes = 0;
    EXPECT_EQ(spembed_embedding_renorm_workspace_size(handle(), kDLCUDA, p.indices.dtype(),
                                                      p.indices.size(0), &bytes),
              SPEMBED_STATUS_SUCCESS);
    DeviceBuffer ws(bytes);
    const spembed_status_t status =
        spembed_embedding_renorm(handle(), table.dl(), ids.dl(), p.max_norm, p.norm_type, policy,
                                 dev_report.dl(), ws.get(), bytes - workspace_cut, nullptr);
    SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
    table.download(p.table);
    dev_report.download(*report);
    return status;
  }
  spembed_status_t run_renorm_cpu(RenormProblem& p, spembed_bounds_policy_t policy) {
    return spembed_embedding_renorm(handle(), p.table.dl(), p.indices.dl(), p.max_norm, p.norm_type,
                                    policy, nullptr, nullptr, 0, nullptr);
  }
};

TEST_F(CudaRenorm, MatchesCpu) {
  uint64_t seed = 900;
  const int64_t nnz = small_shapes() ? 300 : 20000;
  for (DLDataType dtype : {kF32, kF16, kBF16, kF64}) {
    for (DLDataType index : {kI32, kI64}) {
      for (double norm_type : {1.0, 2.0, 3.0}) {
        for (int64_t dim :
             small_shapes() ? std::vector<int64_t>{5, 130} : std::vector<int64_t>{5, 64, 130}) {
          SCOPED_TRACE(dtype_name(dtype) + " " + dtype_name(index) + " p " +
                       std::to_string(norm_type) + " dim " + std::to_string(dim));
          RenormProblem gpu = make_renorm_problem(dtype, index, 400, dim, nnz, ++seed);
          gpu.norm_type = norm_type;
          gpu.max_norm = median_row_norm(gpu.table, norm_type);
          RenormProblem cpu{gpu.table.clone(), gpu.indices.clone(), gpu.max_norm, norm_type};
          const std::vector<uint8_t> original = gpu.table.bytes();
          const RenormExpected e =
              reference_renorm(gpu, unit_roundoff(dtype), subnormal_spacing(dtype));
          HostTensor report = make_report();
          ASSERT_EQ(run_renorm(gpu, SPEMBED_BOUNDS_ERROR, &report), SPEMBED_STATUS_SUCCESS)
              << spembed_last_error();
          EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
          ASSERT_EQ(run_renorm_cpu(cpu, SPEMBED_BOUNDS_ERROR), SPEMBED_STATUS_SUCCESS);
          EXPECT_FALSE(gpu.table.bytes_equal(original)) << "no row was renormalised";
          if (norm_type != 3.0) {
            EXPECT_TRUE(gpu.table.bytes_equal(cpu.table.bytes())) << "CUDA differs from the CPU";
          }
          for (int64_t r = 0; r < 400; ++r) {
            for (int64_t c = 0; c < dim; ++c) {
              const size_t k = static_cast<size_t>(r * dim + c);
              ASSERT_LE(std::fabs(gpu.table.get(r, c) - e.values[k]), e.bounds[k])
                  << "row " << r << " col " << c;
            }
          }
        }
      }
    }
  }
}

TEST_F(CudaRenorm, BoundsPoliciesAndWorkspace) {
  RenormProblem p = make_renorm_problem(kF16, kI64, 64, 24, 200, 31, /*bad_ids=*/4);
  p.max_norm = 0.8;
  const std::vector<uint8_t> before = p.table.bytes();
  HostTensor report = make_report();
  // ERROR: the call is queued (the check runs on the device), nothing is
  // written, the report names the failure.
  ASSERT_EQ(run_renorm(p, SPEMBED_BOUNDS_ERROR, &report), SPEMBED_STATUS_SUCCESS);
  EXPECT_TRUE(p.table.bytes_equal(before));
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 4);
  // SKIP: the valid ids as on the CPU, bad ones counted.
  RenormProblem cpu{p.table.clone(), p.indices.clone(), p.max_norm, p.norm_type};
  ASSERT_EQ(run_renorm(p, SPEMBED_BOUNDS_SKIP, &report), SPEMBED_STATUS_SUCCESS);
  ASSERT_EQ(run_renorm_cpu(cpu, SPEMBED_BOUNDS_SKIP), SPEMBED_STATUS_SUCCESS);
  EXPECT_TRUE(p.table.bytes_equal(cpu.table.bytes()));
  EXPECT_FALSE(p.table.bytes_equal(before));
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 4);
  // A workspace one byte short: refused before anything is queued.
  const std::vector<uint8_t> after = p.table.bytes();
  EXPECT_EQ(run_renorm(p, SPEMBED_BOUNDS_SKIP, &report, 1), SPEMBED_STATUS_WORKSPACE_TOO_SMALL);
  EXPECT_NE(std::string(spembed_last_error()).find("workspace"), std::string::npos);
  EXPECT_TRUE(p.table.bytes_equal(after));
}

class CudaDataChecks : public CudaTest {
 protected:
  // Runs p on the device expecting SUCCESS from the call, outputs untouched
  // bit for bit, and returns the downloaded report.
  HostTensor run_expect_untouched(Problem& p) {
    HostTensor out = p.output.clone();
    HostTensor amax = p.spec.with_argmax ? p.argmax.clone() : HostTensor();
    HostTensor report = p.report.clone();
    const auto out_before = p.output.bytes();
    const auto amax_before = p.spec.with_argmax ? p.argmax.bytes() : std::vector<uint8_t>();
    DeviceProblem dp(handle(), p);
    EXPECT_EQ(dp.batch_status, SPEMBED_STATUS_SUCCESS);
    const spembed_status_t st = run_device(dp);
    EXPECT_EQ(st, SPEMBED_STATUS_SUCCESS)
        << "on CUDA the data checks run on the device; the call itself succeeds: "
        << spembed_status_string(st) << ": " << spembed_last_error();
    dp.download(&out, p.spec.with_argmax ? &amax : nullptr, &report);
    EXPECT_TRUE(out.bytes_equal(out_before)) << "output written despite the failed check";
    if (p.spec.with_argmax) {
      EXPECT_TRUE(amax.bytes_equal(amax_before)) << "argmax written despite the failed check";
    }
    return report;
  }
};

TEST_F(CudaDataChecks, OutOfRangeUnderErrorPolicy) {
  for (DLDataType index : {kI32, kI64}) {
    for (spembed_pooling_t pooling :
         {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MAX, SPEMBED_POOLING_NONE}) {
      SCOPED_TRACE(dtype_name(index) + " " + pooling_name(pooling));
      ProblemSpec s = base_spec(kF16, kF32, pooling, 64, 1000);
      s.index_dtype = index;
      s.bag_lengths.assign(30, 200);  // 6000 ids
      Problem p = make_problem(s);
      // Bad ids at 5000, 900 and 77 (written out of order): 77 is the smallest.
      p.ids[5000] = -3;
      p.ids[900] = s.rows + 12345;
      p.ids[77] = s.rows;
      p.indices = make_index_tensor(index, p.ids);
      const HostTensor report = run_expect_untouched(p);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 3);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 77);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), s.rows);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
      EXPECT_EQ(spembed_report_status(static_cast<const int64_t*>(report.dl()->data)),
                SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
      const std::string msg = spembed_last_error();
      EXPECT_TRUE(mentions_any(msg, {"77"}) && mentions_any(msg, {"300"})) << msg;
    }
  }
}

TEST_F(CudaDataChecks, OutOfRangeInBatchedUsesOwnTableRows) {
  ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_SUM, 1, 1100);
  s.batched = true;
  s.dims = {4, 8};
  s.rows = 50;
  s.bag_lengths = {3, 4, 5, 6};  // table 0: ids 0..6, table 1: ids 7..17
  Problem p = make_problem(s);
  // Rebuild table 1 with 10 rows so that id 20 is valid in table 0 only.
  p.tables[1] = HostTensor(kF32, {10, 8});
  p.tables[1].fill_bytes(0);
  for (size_t k = 7; k < p.ids.size(); ++k) p.ids[k] %= 10;
  p.ids[3] = 20;   // table 0: valid
  p.ids[9] = 20;   // table 1: bad
  p.ids[15] = 11;  // table 1: bad
  p.indices = make_index_tensor(kI64, p.ids);
  const HostTensor report = run_expect_untouched(p);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 2);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 9);
  EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 20);
}

TEST_F(CudaDataChecks, BadOffsets) {
  struct Case {
    std::string what;
    std::function<void(std::vector<int64_t>&, int64_t)> breaks;
    int64_t position;
  };
  // 40 bags of 25 ids.
  const Case cases[] = {
      {"decreasing at 5", [](std::vector<int64_t>& o, int64_t) { o[6] = o[5] - 1; }, 5},
      {"decreasing at 30", [](std::vector<int64_t>& o, int64_t) { o[30] = o[31] + 3; }, 30},
      {"first not 0", [](std::vector<int64_t>& o, int64_t) { o[0] = 1; }, 0},
      {"last below nnz", [](std::vector<int64_t>& o, int64_t nnz) { o[40] = nnz - 1; }, 40},
      {"last above nnz", [](std::vector<int64_t>& o, int64_t nnz) { o[40] = nnz + 1000; }, 40},
  };
  for (const Case& c : cases) {
    for (DLDataType index : {kI32, kI64}) {
      SCOPED_TRACE(c.what + " " + dtype_name(index));
      ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_MAX, 16, 1200);
      s.index_dtype = index;
      s.bag_lengths.assign(40, 25);
      Problem p = make_problem(s);
      c.breaks(p.offsets, p.nnz());
      p.offsets_t = make_index_tensor(index, p.offsets);
      const HostTensor report = run_expect_untouched(p);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INVALID_ARGUMENT);
      EXPECT_EQ(report.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), c.position);
      EXPECT_EQ(spembed_report_status(static_cast<const int64_t*>(report.dl()->data)),
                SPEMBED_STATUS_INVALID_ARGUMENT);
      EXPECT_TRUE(mentions_any(spembed_last_error(), {"offsets"})) << spembed_last_error();
    }
  }
}

// NONE ignores offsets on both devices (spembed.h): bad offsets give the
// output of no offsets and a clean report, on CUDA as on the CPU (before,
// both checked them; the backward on CUDA did not).
TEST_F(CudaDataChecks, NoneIgnoresOffsets) {
  for (DLDataType index : {kI32, kI64}) {
    SCOPED_TRACE(dtype_name(index));
    ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_NONE, 16, 1250);
    s.index_dtype = index;
    s.with_report = true;
    s.weighted = true;
    Problem p = make_problem(s);
    ASSERT_FALSE(p.has_offsets);
    p.has_offsets = true;
    p.offsets = {5, 3, 0, p.nnz() + 7};  // not from 0, decreasing, last != nnz
    p.offsets_t = make_index_tensor(index, p.offsets);
    compare_with_cpu(p);  // p.expected ignores offsets; clean reports on both devices
  }
}

TEST_F(CudaDataChecks, CleanDataReport) {
  ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_SUM, 8, 1300);
  Problem p = make_problem(s);
  compare_with_cpu(p);  // checks the report fields against the clean expectation
}

// ---- workspace --------------------------------------------------------------------

class CudaWorkspace : public CudaTest {
 protected:
  void expect_rejected(void* ws, size_t bytes, spembed_status_t want) {
    ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_SUM, 8, 1400);
    Problem p = make_problem(s);
    HostTensor out = p.output.clone(), report = p.report.clone();
    const auto out_before = p.output.bytes(), report_before = p.report.bytes();
    DeviceProblem dp(handle(), p);
    dp.call.workspace = ws;
    dp.call.workspace_bytes = bytes;
    const spembed_status_t st = dp.call.run(handle());
    EXPECT_EQ(st, want) << spembed_status_string(st) << ": " << spembed_last_error();
    EXPECT_TRUE(mentions_any(spembed_last_error(), {"workspace"})) << spembed_last_error();
    dp.download(&out, nullptr, &report);
    EXPECT_TRUE(out.bytes_equal(out_before));
    EXPECT_TRUE(report.bytes_equal(report_before));
  }
};

TEST_F(CudaWorkspace, QueryIsPositive) { EXPECT_GT(ws_bytes_, 0u); }

TEST_F(CudaWorkspace, TooSmall) {
  ASSERT_GT(ws_bytes_, 0u);
  expect_rejected(workspace_->get(), ws_bytes_ - 1, SPEMBED_STATUS_WORKSPACE_TOO_SMALL);
  expect_rejected(nullptr, 0, SPEMBED_STATUS_WORKSPACE_TOO_SMALL);
}

TEST_F(CudaWorkspace, NullWithNonZeroSize) {
  ASSERT_GT(ws_bytes_, 0u);
  expect_rejected(nullptr, ws_bytes_, SPEMBED_STATUS_INVALID_ARGUMENT);
}

TEST_F(CudaWorkspace, Misaligned) {
  // spembed.h asks for 256-byte alignment; 8 bytes off is below what any
  // 8-byte atomic on the record needs, so it must be refused.
  DeviceBuffer big(ws_bytes_ + 256);
  expect_rejected(static_cast<char*>(big.get()) + 8, ws_bytes_, SPEMBED_STATUS_INVALID_ARGUMENT);
}

TEST_F(CudaWorkspace, LargerIsFine) {
  DeviceBuffer big(ws_bytes_ + 4096);
  ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_SUM, 8, 1500);
  Problem p = make_problem(s);
  HostTensor out = p.output.clone();
  const auto before = p.output.bytes();
  DeviceProblem dp(handle(), p);
  dp.call.workspace = big.get();
  dp.call.workspace_bytes = big.size();
  ASSERT_EQ(dp.call.run(handle()), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  dp.download(&out, nullptr, nullptr);
  EXPECT_EQ(check_output("cuda", out, before, p.expected), 0);
}

// ---- a table past 2^31 elements ---------------------------------------------------

TEST_F(CudaTest, TableLargerThan2To31Elements) {
  constexpr int64_t kDim = 64;
  const int64_t rows = (int64_t{1} << 31) / kDim + 1000;  // 2^31 + 64000 elements
  const size_t bytes = static_cast<size_t>(rows * kDim) * 2;
  void* raw = nullptr;
  const cudaError_t err = cudaMalloc(&raw, bytes);
  if (err != cudaSuccess) {
    cudaGetLastError();
    GTEST_SKIP() << "cannot allocate the " << bytes << "-byte table: " << cudaGetErrorString(err);
  }
  std::unique_ptr<void, void (*)(void*)> guard(raw, [](void* q) { cudaFree(q); });
  // NaN everywhere: a read from a wrongly computed (32-bit wrapped) address shows.
  SPEMBED_CUDA_CHECK(cudaMemset(raw, 0xFF, bytes));

  // The rows the lookups use: past 2^31 elements, at the very end, just
  // below the boundary, and near the start.
  const std::vector<int64_t> used = {
      rows - 1, rows - 2, (int64_t{1} << 31) / kDim + 7, (int64_t{1} << 31) / kDim - 1, 5, 0};
  for (DLDataType index : {kI32, kI64}) {
    for (spembed_pooling_t pooling :
         {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MAX, SPEMBED_POOLING_NONE}) {
      SCOPED_TRACE(dtype_name(index) + " " + pooling_name(pooling));
      // A small problem over rows 0..5 computes the expectation; its ids are
      // then mapped onto the used rows of the big table.
      ProblemSpec s = base_spec(kF16, kF32, pooling, kDim, 1600);
      s.index_dtype = index;
      s.rows = static_cast<int64_t>(used.size());
      s.bag_lengths = {3, 5, 0, 8, 1, 12};
      Problem p = make_problem(s);
      for (size_t r = 0; r < used.size(); ++r) {
        SPEMBED_CUDA_CHECK(
            cudaMemcpy(static_cast<char*>(raw) + static_cast<size_t>(used[r] * kDim) * 2,
                       p.tables[0].storage() + p.tables[0].element_byte(static_cast<int64_t>(r), 0),
                       kDim * 2, cudaMemcpyHostToDevice));
      }
      std::vector<int64_t> big_ids;
      for (int64_t id : p.ids) big_ids.push_back(used[static_cast<size_t>(id)]);
      HostTensor idx = make_index_tensor(index, big_ids);
      DeviceTensor di(idx);
      DeviceTensor doffs = p.has_offsets ? DeviceTensor(p.offsets_t) : DeviceTensor();
      DeviceTensor dout(p.output);
      DeviceTensor damax = s.with_argmax ? DeviceTensor(p.argmax) : DeviceTensor();
      int64_t shape[2] = {rows, kDim};
      DLTensor table{};
      table.data = raw;
      table.device = DLDevice{kDLCUDA, current_device()};
      table.ndim = 2;
      table.dtype = kF16;
      table.shape = shape;
      const auto before = p.output.bytes();
      const spembed_status_t st = spembed_embedding_bag_forward(
          handle(), &table, di.dl(), p.has_offsets ? doffs.dl() : nullptr, nullptr, &p.options,
          dout.dl(), s.with_argmax ? damax.dl() : nullptr, nullptr, workspace_->get(), ws_bytes_,
          nullptr);
      ASSERT_EQ(st, SPEMBED_STATUS_SUCCESS) << spembed_last_error();
      HostTensor out = p.output.clone();
      dout.download(out);
      EXPECT_EQ(check_output("cuda big table", out, before, p.expected), 0);
      if (s.with_argmax) {
        Expected e = p.expected;
        for (int64_t& a : e.argmax) {
          if (a >= 0) a = used[static_cast<size_t>(a)];
        }
        HostTensor amax = p.argmax.clone();
        damax.download(amax);
        EXPECT_EQ(check_argmax("cuda big table", amax, e), 0);
      }
    }
  }
}

// ---- argument validation with CUDA tensors ------------------------------------------

class CudaValidation : public CudaTest {
 protected:
  void SetUp() override {
    CudaTest::SetUp();
    if (this->IsSkipped() || this->HasFatalFailure()) return;
    ProblemSpec s = base_spec(kF32, kF32, SPEMBED_POOLING_SUM, 8, 1700);
    problem_ = std::make_unique<Problem>(make_problem(s));
    dp_ = std::make_unique<DeviceProblem>(handle(), *problem_);
    dp_->call.workspace = workspace_->get();
    dp_->call.workspace_bytes = ws_bytes_;
  }
  // Runs the (broken) call, expecting `want`, a message naming one of
  // `names`, and the device output and report untouched.
  void expect_rejected(spembed_status_t want, const std::vector<std::string>& names) {
    const spembed_status_t st = dp_->call.run(handle());
    const std::string msg = spembed_last_error();
    EXPECT_EQ(st, want) << spembed_status_string(st) << ": " << msg;
    EXPECT_TRUE(mentions_any(msg, names))
        << "message \"" << msg << "\" names none of " << ::testing::PrintToString(names);
    HostTensor out = problem_->output.clone(), report = problem_->report.clone();
    dp_->download(&out, nullptr, &report);
    EXPECT_TRUE(out.bytes_equal(problem_->output.bytes())) << "output written";
    EXPECT_TRUE(report.bytes_equal(problem_->report.bytes())) << "report written";
  }
  std::unique_ptr<Problem> problem_;
  std::unique_ptr<DeviceProblem> dp_;
};

TEST_F(CudaValidation, BaselineSucceeds) {
  EXPECT_EQ(dp_->call.run(handle()), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
}

TEST_F(CudaValidation, WrongOutputShape) {
  DLTensor bad = *dp_->call.output;
  int64_t shape[2] = {bad.shape[0] + 1, bad.shape[1]};
  bad.shape = shape;
  bad.strides = nullptr;
  // Point the bad view at the real output storage: nothing may be written.
  dp_->call.output = &bad;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
}

TEST_F(CudaValidation, WrongTableDtype) {
  DLTensor bad = *dp_->call.table;
  bad.dtype = kI32;
  dp_->call.table = &bad;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
}

TEST_F(CudaValidation, HostIndicesWithDeviceTable) {
  dp_->call.indices = problem_->indices.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"indices", "device"});
}

TEST_F(CudaValidation, HostReportWithDeviceTensors) {
  HostTensor host_report = make_report();
  const auto before = host_report.bytes();
  dp_->call.report = host_report.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"report", "device"});
  EXPECT_TRUE(host_report.bytes_equal(before));
}

TEST_F(CudaValidation, OtherDeviceOrdinal) {
  // An ordinal that is not the handle's device (and may not exist).
  const int other = current_device() + 1;
  DLTensor t = *dp_->call.table, i = *dp_->call.indices, o = *dp_->call.offsets,
           out = *dp_->call.output, r = *dp_->call.report;
  for (DLTensor* v : {&t, &i, &o, &out, &r}) v->device.device_id = other;
  dp_->call.table = &t;
  dp_->call.indices = &i;
  dp_->call.offsets = &o;
  dp_->call.output = &out;
  dp_->call.report = &r;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table", "device"});
}

TEST_F(CudaValidation, CpuTableBatchWithDeviceIndices) {
  std::vector<DLTensor> views{*problem_->tables[0].dl()};
  TableBatch batch(handle(), views);
  ASSERT_EQ(batch.create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  dp_->call.batched = true;
  dp_->call.batch = batch.get();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"device", "indices", "batch"});
}

TEST_F(CudaValidation, TableBatchWithMixedDevices) {
  std::vector<DLTensor> views{*dp_->call.table, *problem_->tables[0].dl()};
  auto* sentinel = reinterpret_cast<spembed_table_batch_t>(uintptr_t{0x1234});
  spembed_table_batch_t batch = sentinel;
  EXPECT_EQ(spembed_table_batch_create(handle(), views.data(), 2, &batch),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"tables[1]"})) << spembed_last_error();
  EXPECT_EQ(batch, sentinel);
}

// ---- mixed devices: rejected before any device access (no GPU needed) --------------

// A tensor that claims to be on kDLCUDA but points at host memory full of
// poison. The library must reject the mixed call from the views alone; if it
// read or wrote the memory, the poison would show.
class MixedDevices : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(handle_.create_status(), SPEMBED_STATUS_SUCCESS);
    table_ = make_matrix(kF32, 4, 2, {1, 2, 3, 4, 5, 6, 7, 8});
    indices_ = make_index_tensor(kI64, {0, 1, 3});
    offsets_ = make_index_tensor(kI64, {0, 1, 3});
    output_ = HostTensor(kF32, {2, 2});
  }
  void expect_rejected(const std::vector<std::string>& names) {
    const auto before_out = output_.bytes();
    const auto before_table = table_.bytes();
    const spembed_status_t st = spembed_embedding_bag_forward(
        handle_.get(), table_.dl(), indices_.dl(), offsets_.dl(), nullptr, nullptr, output_.dl(),
        nullptr, nullptr, nullptr, 0, nullptr);
    EXPECT_EQ(st, SPEMBED_STATUS_INVALID_ARGUMENT)
        << spembed_status_string(st) << ": " << spembed_last_error();
    EXPECT_TRUE(mentions_any(spembed_last_error(), names))
        << spembed_last_error() << " names none of " << ::testing::PrintToString(names);
    EXPECT_TRUE(output_.bytes_equal(before_out));
    EXPECT_TRUE(table_.bytes_equal(before_table));
  }
  Handle handle_;
  HostTensor table_, indices_, offsets_, output_;
};

TEST_F(MixedDevices, CudaTableWithCpuTensors) {
  table_.set_view_device(DLDevice{kDLCUDA, 0});
  expect_rejected({"device", "table", "indices"});
}

TEST_F(MixedDevices, CudaOutputWithCpuTensors) {
  output_.set_view_device(DLDevice{kDLCUDA, 0});
  expect_rejected({"device", "output"});
}

TEST_F(MixedDevices, CudaOffsetsWithCpuTensors) {
  offsets_.set_view_device(DLDevice{kDLCUDA, 0});
  expect_rejected({"device", "offsets"});
}

}  // namespace
}  // namespace spembed_test
