// Every public entry point with bad input, on CPU tensors: the right status,
// a message (spembed_last_error) that names the argument, and every output
// bit-for-bit untouched. Validation with CUDA tensors lives in
// test_forward_gpu.cpp.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace spembed_test {
namespace {

// ---- library-level functions ----------------------------------------------------

TEST(Library, VersionMacrosMatchGetVersion) {
  EXPECT_EQ(spembed_get_version(), SPEMBED_VERSION);
  EXPECT_EQ(SPEMBED_VERSION,
            SPEMBED_VERSION_MAJOR * 10000 + SPEMBED_VERSION_MINOR * 100 + SPEMBED_VERSION_PATCH);
  EXPECT_GE(SPEMBED_VERSION_MINOR, 0);
  EXPECT_LT(SPEMBED_VERSION_MINOR, 100);
  EXPECT_LT(SPEMBED_VERSION_PATCH, 100);
}

TEST(Library, StatusStringsAreDistinctAndNonEmpty) {
  const spembed_status_t all[] = {SPEMBED_STATUS_SUCCESS,
                                  SPEMBED_STATUS_INVALID_ARGUMENT,
                                  SPEMBED_STATUS_NOT_SUPPORTED,
                                  SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
                                  SPEMBED_STATUS_WORKSPACE_TOO_SMALL,
                                  SPEMBED_STATUS_CUDA_ERROR,
                                  SPEMBED_STATUS_ALLOC_FAILED,
                                  SPEMBED_STATUS_INTERNAL_ERROR};
  std::set<std::string> names;
  for (spembed_status_t s : all) {
    const char* name = spembed_status_string(s);
    ASSERT_NE(name, nullptr) << static_cast<int>(s);
    EXPECT_GT(std::strlen(name), 0u) << static_cast<int>(s);
    names.insert(name);
  }
  EXPECT_EQ(names.size(), sizeof(all) / sizeof(all[0]));
  // An unknown value is checked by c_client.c: C may pass any int.
}

TEST(Library, LastErrorIsThreadLocalAndEmptyInitially) {
  std::string fresh = "not run";
  std::thread([&] { fresh = spembed_last_error(); }).join();
  EXPECT_EQ(fresh, "");
  // An error in this thread...
  ASSERT_EQ(spembed_create(nullptr), SPEMBED_STATUS_INVALID_ARGUMENT);
  const std::string mine = spembed_last_error();
  EXPECT_FALSE(mine.empty());
  // ... is not seen by another thread, and another thread's error does not
  // replace this thread's message.
  std::string other = "not run";
  std::thread([&] {
    other = spembed_last_error();
    spembed_handle_device(nullptr, nullptr);
  }).join();
  EXPECT_EQ(other, "");
  EXPECT_EQ(std::string(spembed_last_error()), mine);
}

TEST(Library, CreateRejectsNull) {
  EXPECT_EQ(spembed_create(nullptr), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"handle"})) << spembed_last_error();
}

TEST(Library, CreateAndDestroy) {
  spembed_handle_t h = nullptr;
  ASSERT_EQ(spembed_create(&h), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  ASSERT_NE(h, nullptr);
  int device = -7;
  ASSERT_EQ(spembed_handle_device(h, &device), SPEMBED_STATUS_SUCCESS);
  EXPECT_GE(device, -1);  // -1: CPU only; else a CUDA ordinal
  EXPECT_EQ(spembed_destroy(h), SPEMBED_STATUS_SUCCESS);
}

TEST(Library, DestroyNullDoesNotCrash) {
  // Either convention (a no-op like free(NULL), or a rejected argument) is
  // acceptable; a crash is not.
  const spembed_status_t s = spembed_destroy(nullptr);
  EXPECT_TRUE(s == SPEMBED_STATUS_SUCCESS || s == SPEMBED_STATUS_INVALID_ARGUMENT)
      << spembed_status_string(s);
  const spembed_status_t b = spembed_table_batch_destroy(nullptr);
  EXPECT_TRUE(b == SPEMBED_STATUS_SUCCESS || b == SPEMBED_STATUS_INVALID_ARGUMENT)
      << spembed_status_string(b);
}

TEST(Library, HandleDeviceRejectsNulls) {
  int device = 42;
  EXPECT_EQ(spembed_handle_device(nullptr, &device), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"handle"})) << spembed_last_error();
  EXPECT_EQ(device, 42);
  Handle h;
  ASSERT_EQ(h.create_status(), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(spembed_handle_device(h.get(), nullptr), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"cuda_device"})) << spembed_last_error();
}

TEST(Library, OptionsInitDefaults) {
  spembed_embedding_bag_options_t o;
  std::memset(&o, 0x5A, sizeof o);
  spembed_embedding_bag_options_init(&o);
  EXPECT_EQ(o.pooling, SPEMBED_POOLING_SUM);
  EXPECT_EQ(o.padding_idx, -1);
  EXPECT_EQ(o.bounds_policy, SPEMBED_BOUNDS_ERROR);
  EXPECT_EQ(o.fixed_bag_size, 0);
  spembed_embedding_bag_options_init(nullptr);  // a no-op, not a crash
}

TEST(Library, ReportStatus) {
  EXPECT_EQ(spembed_report_status(nullptr), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"report"})) << spembed_last_error();

  const int64_t clean[SPEMBED_REPORT_SIZE] = {SPEMBED_STATUS_SUCCESS, 0, -1, 0, -1};
  EXPECT_EQ(spembed_report_status(clean), SPEMBED_STATUS_SUCCESS);
  // SKIP: success with a count.
  const int64_t skipped[SPEMBED_REPORT_SIZE] = {SPEMBED_STATUS_SUCCESS, 3, 5, -9, -1};
  EXPECT_EQ(spembed_report_status(skipped), SPEMBED_STATUS_SUCCESS);

  const int64_t bad_id[SPEMBED_REPORT_SIZE] = {SPEMBED_STATUS_INDEX_OUT_OF_RANGE, 2, 17, 123456,
                                               -1};
  EXPECT_EQ(spembed_report_status(bad_id), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  const std::string m1 = spembed_last_error();
  EXPECT_TRUE(mentions_any(m1, {"17"}) && mentions_any(m1, {"123456"})) << m1;
  EXPECT_TRUE(mentions_any(m1, {"indices"})) << m1;

  const int64_t bad_offset[SPEMBED_REPORT_SIZE] = {SPEMBED_STATUS_INVALID_ARGUMENT, 0, -1, 0, 9};
  EXPECT_EQ(spembed_report_status(bad_offset), SPEMBED_STATUS_INVALID_ARGUMENT);
  const std::string m2 = spembed_last_error();
  EXPECT_TRUE(mentions_any(m2, {"offsets"}) && mentions_any(m2, {"9"})) << m2;

  const int64_t garbage[SPEMBED_REPORT_SIZE] = {42, 0, -1, 0, -1};
  EXPECT_NE(spembed_report_status(garbage), SPEMBED_STATUS_SUCCESS);
}

TEST(Library, WorkspaceSizeQuery) {
  Handle h;
  ASSERT_EQ(h.create_status(), SPEMBED_STATUS_SUCCESS);
  size_t bytes = 12345;
  ASSERT_EQ(spembed_embedding_bag_forward_workspace_size(h.get(), kDLCPU, &bytes),
            SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(bytes, 0u);  // the CPU needs none

  bytes = 12345;
  EXPECT_EQ(spembed_embedding_bag_forward_workspace_size(nullptr, kDLCPU, &bytes),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"handle"})) << spembed_last_error();
  EXPECT_EQ(bytes, 12345u);
  EXPECT_EQ(spembed_embedding_bag_forward_workspace_size(h.get(), kDLCPU, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"bytes"})) << spembed_last_error();

  // A device type no implementation serves: invalid or unsupported, not success.
  const spembed_status_t s =
      spembed_embedding_bag_forward_workspace_size(h.get(), kDLVulkan, &bytes);
  EXPECT_TRUE(s == SPEMBED_STATUS_INVALID_ARGUMENT || s == SPEMBED_STATUS_NOT_SUPPORTED)
      << spembed_status_string(s);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"device"})) << spembed_last_error();
  EXPECT_EQ(bytes, 12345u);
}

// ---- spembed_embedding_bag_forward ------------------------------------------------

// A valid call (table [10, 4] f32, 6 int64 ids in 3 bags, SUM, output [3, 4],
// report) that each test breaks in one way.
class ForwardValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(handle_.create_status(), SPEMBED_STATUS_SUCCESS);
    reset();
  }

  // Back to the valid baseline call.
  void reset() {
    Rng rng(7);
    table_ = HostTensor(kF32, {10, 4});
    fill_random(table_, rng, DataKind::kInt);
    indices_ = make_index_tensor(kI64, {0, 1, 2, 3, 4, 5});
    offsets_ = make_index_tensor(kI64, {0, 2, 2, 6});
    weights_ = make_f32_tensor({1, 2, 3, 4, 5, 6});
    output_ = HostTensor(kF32, {3, 4});
    argmax_ = HostTensor(kI64, {3, 4});
    report_ = make_report();
    spembed_embedding_bag_options_init(&options_);
    handle = handle_.get();
    table = table_.dl();
    indices = indices_.dl();
    offsets = offsets_.dl();
    weights = nullptr;
    options = &options_;
    output = output_.dl();
    argmax = nullptr;
    report = report_.dl();
    workspace = nullptr;
    workspace_bytes = 0;
  }

  spembed_status_t call() {
    return spembed_embedding_bag_forward(handle, table, indices, offsets, weights, options, output,
                                         argmax, report, workspace, workspace_bytes, nullptr);
  }

  // Runs the call expecting `want`, a message naming one of `names`, and the
  // output, argmax and report storage unchanged.
  void expect_rejected(spembed_status_t want, const std::vector<std::string>& names,
                       bool report_untouched = true) {
    const auto out_before = output_.bytes();
    const auto amax_before = argmax_.bytes();
    const auto report_before = report_.bytes();
    const spembed_status_t got = call();
    const std::string msg = spembed_last_error();
    EXPECT_EQ(got, want) << "got " << spembed_status_string(got) << ": " << msg;
    EXPECT_TRUE(mentions_any(msg, names))
        << "message \"" << msg << "\" names none of: " << ::testing::PrintToString(names);
    EXPECT_TRUE(output_.bytes_equal(out_before)) << "output written by a rejected call";
    EXPECT_TRUE(argmax_.bytes_equal(amax_before)) << "argmax written by a rejected call";
    if (report_untouched) {
      EXPECT_TRUE(report_.bytes_equal(report_before)) << "report written by a rejected call";
    }
  }

  void expect_success() {
    const spembed_status_t got = call();
    EXPECT_EQ(got, SPEMBED_STATUS_SUCCESS)
        << spembed_status_string(got) << ": " << spembed_last_error();
  }

  Handle handle_;
  HostTensor table_, indices_, offsets_, weights_, output_, argmax_, report_;
  spembed_embedding_bag_options_t options_{};

  // What call() passes; tests repoint these.
  spembed_handle_t handle = nullptr;
  const DLTensor* table = nullptr;
  const DLTensor* indices = nullptr;
  const DLTensor* offsets = nullptr;
  const DLTensor* weights = nullptr;
  const spembed_embedding_bag_options_t* options = nullptr;
  DLTensor* output = nullptr;
  DLTensor* argmax = nullptr;
  DLTensor* report = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
};

TEST_F(ForwardValidation, BaselineSucceeds) {
  expect_success();
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
}

TEST_F(ForwardValidation, NullHandle) {
  handle = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"handle"});
}

TEST_F(ForwardValidation, NullTable) {
  table = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
}

TEST_F(ForwardValidation, NullIndices) {
  indices = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"indices"});
}

TEST_F(ForwardValidation, NullOutput) {
  output = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
}

TEST_F(ForwardValidation, NullOffsetsWithoutFixedBagSize) {
  offsets = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets"});
}

TEST_F(ForwardValidation, NullDataPointers) {
  table_.set_view_data(nullptr);
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
  reset();
  indices_.set_view_data(nullptr);
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"indices"});
  reset();
  offsets_.set_view_data(nullptr);
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets"});
  reset();
  output_.set_view_data(nullptr);
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
}

TEST_F(ForwardValidation, TableDtype) {
  for (DLDataType t : {DLDataType{kDLFloat, 64, 2}, kI32, kU8, DLDataType{kDLFloat, 32, 4}}) {
    SCOPED_TRACE(dtype_name(t));
    HostTensor bad(t, {10, 4});
    table = bad.dl();
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
  }
}

// A float64 table goes with float64 outputs and per-sample weights only, its
// data 8-byte aligned; the accepted call writes its output.
TEST_F(ForwardValidation, Float64TablePairsWithFloat64) {
  HostTensor t64(kF64, {10, 4});
  Rng rng(64);
  fill_random(t64, rng, DataKind::kReal);
  table = t64.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output", "float64"});
  HostTensor out64(kF64, {3, 4});
  out64.fill_bytes(kPoisonByte);
  output = out64.dl();
  HostTensor w32(kF32, {6});
  fill_random(w32, rng, DataKind::kInt);
  weights = w32.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"per_sample_weights", "float64"});
  HostTensor w64(kF64, {6});
  fill_random(w64, rng, DataKind::kInt);
  weights = w64.dl();
  HostTensor misaligned(kF64, {10, 4}, {}, 4);
  table = misaligned.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table", "aligned"});
  table = t64.dl();
  ASSERT_EQ(call(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  // Bags {0, 1}, {}, {2, 3, 4, 5}: double sums in id order, bit for bit.
  const int64_t first[3] = {0, 2, 2};
  const int64_t last[3] = {2, 2, 6};
  for (int64_t b = 0; b < 3; ++b) {
    for (int64_t c = 0; c < 4; ++c) {
      double sum = 0.0;
      for (int64_t i = first[b]; i < last[b]; ++i) sum += w64.get(i) * t64.get(i, c);
      EXPECT_EQ(out64.get(b, c), sum) << "bag " << b << " column " << c;
    }
  }
}

TEST_F(ForwardValidation, IndicesDtype) {
  for (DLDataType t : {kI16, kU8, kF32, DLDataType{kDLUInt, 64, 1}}) {
    SCOPED_TRACE(dtype_name(t));
    HostTensor bad(t, {6});
    bad.fill_bytes(0);
    indices = bad.dl();
    HostTensor offs = make_index_tensor(kI64, {0, 2, 2, 6});
    offs.set_view_dtype(t);  // same dtype for both, so only the dtype is wrong
    offsets = offs.dl();
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"indices"});
  }
}

TEST_F(ForwardValidation, OffsetsDtypeDiffersFromIndices) {
  HostTensor offs = make_index_tensor(kI32, {0, 2, 2, 6});
  offsets = offs.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets"});
}

TEST_F(ForwardValidation, WeightsDtype) {
  for (DLDataType t : {kF16, kBF16, kF64, kI32}) {
    SCOPED_TRACE(dtype_name(t));
    HostTensor bad(t, {6});
    weights = bad.dl();
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"per_sample_weights"});
  }
}

TEST_F(ForwardValidation, OutputDtype) {
  for (DLDataType t : {kF64, kI32, kI64}) {
    SCOPED_TRACE(dtype_name(t));
    HostTensor bad(t, {3, 4});
    const auto before = bad.bytes();
    output = bad.dl();
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
    EXPECT_TRUE(bad.bytes_equal(before));
  }
}

TEST_F(ForwardValidation, ArgmaxDtypeMustMatchIndices) {
  options_.pooling = SPEMBED_POOLING_MAX;
  argmax_ = HostTensor(kI32, {3, 4});
  argmax = argmax_.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"argmax"});
  argmax_ = HostTensor(kF32, {3, 4});
  argmax = argmax_.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"argmax"});
}

TEST_F(ForwardValidation, Ranks) {
  table_.set_view_shape({40});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
  table_.set_view_shape({10, 4, 1});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
  reset();
  indices_.set_view_shape({2, 3});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"indices"});
  reset();
  offsets_.set_view_shape({1, 4});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets"});
  reset();
  output_.set_view_shape({12});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  reset();
  weights_.set_view_shape({6, 1});
  weights = weights_.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"per_sample_weights"});
}

TEST_F(ForwardValidation, NegativeShape) {
  table_.set_view_shape({-10, 4});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
}

TEST_F(ForwardValidation, OffsetsOfLengthZero) {
  offsets_.set_view_shape({0});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets"});
}

TEST_F(ForwardValidation, OutputRowsMustBeBags) {
  HostTensor bad(kF32, {4, 4});
  output = bad.dl();
  const auto before = bad.bytes();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  EXPECT_TRUE(bad.bytes_equal(before));
}

TEST_F(ForwardValidation, OutputColsMustBeDim) {
  HostTensor bad(kF32, {3, 5}, {}, 0);
  output = bad.dl();
  const auto before = bad.bytes();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  EXPECT_TRUE(bad.bytes_equal(before));
}

TEST_F(ForwardValidation, WeightsLengthMustBeNnz) {
  HostTensor w = make_f32_tensor({1, 2, 3, 4, 5});
  weights = w.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"per_sample_weights"});
}

TEST_F(ForwardValidation, ArgmaxShape) {
  options_.pooling = SPEMBED_POOLING_MAX;
  for (std::vector<int64_t> shape :
       {std::vector<int64_t>{3, 5}, std::vector<int64_t>{2, 4}, std::vector<int64_t>{12}}) {
    SCOPED_TRACE(::testing::PrintToString(shape));
    argmax_ = HostTensor(kI64, shape);
    argmax = argmax_.dl();
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"argmax"});
  }
}

TEST_F(ForwardValidation, TableStrides) {
  HostTensor inner(kF32, {10, 4}, {8, 2});
  table = inner.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
  HostTensor narrow(kF32, {10, 4}, {3, 1});  // rows overlap
  table = narrow.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
  HostTensor column_major(kF32, {10, 4}, {1, 10});
  table = column_major.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table"});
}

TEST_F(ForwardValidation, OutputStrides) {
  HostTensor inner(kF32, {3, 4}, {8, 2});
  output = inner.dl();
  auto before = inner.bytes();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  EXPECT_TRUE(inner.bytes_equal(before));
  HostTensor narrow(kF32, {3, 4}, {3, 1});
  output = narrow.dl();
  before = narrow.bytes();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  EXPECT_TRUE(narrow.bytes_equal(before));
}

TEST_F(ForwardValidation, OneDimensionalStrides) {
  HostTensor idx(kI64, {6}, {2});
  for (int64_t i = 0; i < 6; ++i) idx.set_int(i, i);
  indices = idx.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"indices"});
  indices = indices_.dl();
  HostTensor offs(kI64, {4}, {2});
  offs.set_int(0, 0);
  offs.set_int(1, 2);
  offs.set_int(2, 2);
  offs.set_int(3, 6);
  offsets = offs.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets"});
  offsets = offsets_.dl();
  HostTensor w(kF32, {6}, {2});
  for (int64_t i = 0; i < 6; ++i) w.set(i, 1.0);
  weights = w.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"per_sample_weights"});
}

TEST_F(ForwardValidation, ExplicitUnitStrideOnOneDimensionalTensorsIsFine) {
  indices_.set_view_strides({1});
  offsets_.set_view_strides({1});
  expect_success();
}

TEST_F(ForwardValidation, MixedDeviceTypes) {
  // A device type no implementation serves. The data pointer is host memory
  // holding poison, so a read would also show.
  table_.set_view_device(DLDevice{kDLVulkan, 0});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"table", "device"});
  reset();
  output_.set_view_device(DLDevice{kDLExtDev, 0});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output", "device"});
}

TEST_F(ForwardValidation, UnservedDeviceTypeEverywhere) {
  const DLDevice vk{kDLVulkan, 0};
  table_.set_view_device(vk);
  indices_.set_view_device(vk);
  offsets_.set_view_device(vk);
  output_.set_view_device(vk);
  report_.set_view_device(vk);
  const auto before = output_.bytes();
  const spembed_status_t s = call();
  EXPECT_TRUE(s == SPEMBED_STATUS_NOT_SUPPORTED || s == SPEMBED_STATUS_INVALID_ARGUMENT)
      << spembed_status_string(s) << ": " << spembed_last_error();
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"device", "table"})) << spembed_last_error();
  EXPECT_TRUE(output_.bytes_equal(before));
}

TEST_F(ForwardValidation, OffsetsMustBeNonDecreasing) {
  HostTensor offs = make_index_tensor(kI64, {0, 3, 2, 6});
  offsets = offs.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets[1]=3 > offsets[2]=2"}, false);
}

TEST_F(ForwardValidation, OffsetsMustBeNonDecreasingInt32) {
  HostTensor idx = make_index_tensor(kI32, {0, 1, 2, 3, 4, 5, 6, 7, 8, 9});
  HostTensor offs = make_index_tensor(kI32, {0, 1, 2, 3, 4, 5, 6, 12, 9, 10});
  HostTensor out(kF32, {9, 4});
  output_ = std::move(out);
  indices = idx.dl();
  offsets = offs.dl();
  output = output_.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets[7]=12 > offsets[8]=9"}, false);
}

// The check runs in blocks of bags; the first decrease is the one named,
// whichever block it is in and whatever later blocks hold.
TEST_F(ForwardValidation, FirstDecreasingOffsetAcrossBlocks) {
  constexpr int64_t kBags = 10000;
  std::vector<int64_t> ids(kBags), offs(kBags + 1);
  for (int64_t b = 0; b <= kBags; ++b) offs[b] = b;  // one id per bag
  for (int64_t i = 0; i < kBags; ++i) ids[i] = i % 10;
  offs[9000] = 9005;  // a later decrease, in another block
  for (const int64_t first : {int64_t{4095}, int64_t{5000}, int64_t{8191}}) {
    std::vector<int64_t> with_first = offs;
    with_first[first] = first + 2;  // offsets[first] > offsets[first + 1]
    HostTensor idx = make_index_tensor(kI64, ids);
    HostTensor o = make_index_tensor(kI64, with_first);
    output_ = HostTensor(kF32, {kBags, 4});
    indices = idx.dl();
    offsets = o.dl();
    output = output_.dl();
    const std::string want = "offsets[" + std::to_string(first) + "]=" + std::to_string(first + 2) +
                             " > offsets[" + std::to_string(first + 1) +
                             "]=" + std::to_string(first + 1);
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {want}, false);
  }
}

TEST_F(ForwardValidation, NegativeOffset) {
  HostTensor offs = make_index_tensor(kI64, {0, -1, 2, 6});
  offsets = offs.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets[0]=0 > offsets[1]=-1"}, false);
}

TEST_F(ForwardValidation, FirstOffsetMustBeZero) {
  HostTensor offs = make_index_tensor(kI64, {1, 2, 2, 6});
  offsets = offs.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets[0]"}, false);
}

TEST_F(ForwardValidation, LastOffsetMustBeNnz) {
  HostTensor short_end = make_index_tensor(kI64, {0, 2, 2, 5});
  offsets = short_end.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets[3]"}, false);
  // Past the end: reading ids up to 9 would overrun `indices`.
  HostTensor long_end = make_index_tensor(kI64, {0, 2, 2, 9});
  offsets = long_end.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets[3]"}, false);
}

TEST_F(ForwardValidation, BadOffsetReportIfWritten) {
  // The header does not say whether a CPU call rejected for its offsets fills
  // the report; if it does, the fields must be right.
  HostTensor offs = make_index_tensor(kI64, {0, 3, 2, 6});
  offsets = offs.dl();
  const auto before = report_.bytes();
  ASSERT_EQ(call(), SPEMBED_STATUS_INVALID_ARGUMENT);
  if (!report_.bytes_equal(before)) {
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INVALID_ARGUMENT);
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), 1);
  }
}

TEST_F(ForwardValidation, OutOfRangeIdUnderError) {
  for (DLDataType t : {kI32, kI64}) {
    SCOPED_TRACE(dtype_name(t));
    // Positions 4 (10 = rows) and 5 (-1) are bad; 4 is the first.
    HostTensor idx = make_index_tensor(t, {0, 1, 2, 3, 10, -1});
    HostTensor offs = make_index_tensor(t, {0, 2, 2, 6});
    indices = idx.dl();
    offsets = offs.dl();
    report_ = make_report();
    report = report_.dl();
    expect_rejected(SPEMBED_STATUS_INDEX_OUT_OF_RANGE, {"indices[4]"}, false);
    EXPECT_TRUE(mentions_any(spembed_last_error(), {"10"})) << spembed_last_error();
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 2);
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 4);
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 10);
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
    EXPECT_EQ(spembed_report_status(static_cast<const int64_t*>(report_.dl()->data)),
              SPEMBED_STATUS_INDEX_OUT_OF_RANGE);
  }
}

TEST_F(ForwardValidation, NegativeIdUnderError) {
  HostTensor idx = make_index_tensor(kI64, {0, -7654321, 2, 3, 4, 5});
  indices = idx.dl();
  expect_rejected(SPEMBED_STATUS_INDEX_OUT_OF_RANGE, {"indices[1]"}, false);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"-7654321"})) << spembed_last_error();
}

TEST_F(ForwardValidation, OutOfRangeIdUnderErrorWithoutReport) {
  report = nullptr;
  HostTensor idx = make_index_tensor(kI64, {0, 1, 2, 99, 4, 5});
  indices = idx.dl();
  expect_rejected(SPEMBED_STATUS_INDEX_OUT_OF_RANGE, {"indices[3]"});
}

TEST_F(ForwardValidation, OutOfRangeIdUnderSkip) {
  options_.bounds_policy = SPEMBED_BOUNDS_SKIP;
  HostTensor idx = make_index_tensor(kI64, {0, 1, 2, 3, 10, -1});
  indices = idx.dl();
  expect_success();
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 2);
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 4);
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 10);
  // Bag 2 = {2, 3, 10, -1} pools rows 2 and 3 only.
  for (int64_t c = 0; c < 4; ++c) {
    EXPECT_EQ(output_.get(2, c), table_.get(2, c) + table_.get(3, c));
  }
}

TEST_F(ForwardValidation, WeightsOnlyWithSumOrNone) {
  weights = weights_.dl();
  for (spembed_pooling_t p : {SPEMBED_POOLING_MEAN, SPEMBED_POOLING_MAX}) {
    SCOPED_TRACE(pooling_name(p));
    options_.pooling = p;
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"per_sample_weights"});
  }
}

TEST_F(ForwardValidation, ArgmaxOnlyWithMax) {
  argmax = argmax_.dl();
  for (spembed_pooling_t p : {SPEMBED_POOLING_SUM, SPEMBED_POOLING_MEAN}) {
    SCOPED_TRACE(pooling_name(p));
    options_.pooling = p;
    expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"argmax"});
  }
  options_.pooling = SPEMBED_POOLING_NONE;
  offsets = nullptr;
  output_ = HostTensor(kF32, {6, 4});
  argmax_ = HostTensor(kI64, {6, 4});
  output = output_.dl();
  argmax = argmax_.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"argmax"});
}

TEST_F(ForwardValidation, NoneOutputIsNnzRows) {
  options_.pooling = SPEMBED_POOLING_NONE;
  offsets = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});  // [3, 4], not [6, 4]
  output_ = HostTensor(kF32, {6, 4});
  output = output_.dl();
  expect_success();
}

// NONE ignores offsets: bad values, a wrong length or dtype, or offsets next
// to fixed_bag_size give the same output as NULL offsets, and a clean report
// (spembed.h; the backward and the CUDA paths do the same).
TEST_F(ForwardValidation, NoneIgnoresOffsets) {
  options_.pooling = SPEMBED_POOLING_NONE;
  output_ = HostTensor(kF32, {6, 4});
  output = output_.dl();
  offsets = nullptr;
  expect_success();
  const auto want = output_.bytes();
  HostTensor bad_values = make_index_tensor(kI64, {3, 1, 0, 9});   // not from 0, decreasing, != nnz
  HostTensor wrong_dtype = make_index_tensor(kI32, {0, 2, 2, 6});  // not the dtype of indices
  HostTensor wrong_length = make_index_tensor(kI64, {0, 2, 2, 6, 6, 6, 6});  // 6 bags
  for (const HostTensor* o : {&bad_values, &wrong_dtype, &wrong_length}) {
    offsets = o->dl();
    output_.fill_bytes(kPoisonByte);
    report_ = make_report();
    report = report_.dl();
    expect_success();
    EXPECT_TRUE(output_.bytes_equal(want)) << "offsets changed the NONE output";
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_STATUS), SPEMBED_STATUS_SUCCESS);
    EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_OFFSET_POSITION), -1);
  }
  options_.fixed_bag_size = 2;  // NONE with a fixed bag size: offsets still ignored
  offsets = bad_values.dl();
  expect_success();
  EXPECT_TRUE(output_.bytes_equal(want));
}

TEST_F(ForwardValidation, FixedBagSizeWithOffsets) {
  options_.fixed_bag_size = 2;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets", "fixed_bag_size"});
}

TEST_F(ForwardValidation, NnzNotAMultipleOfFixedBagSize) {
  options_.fixed_bag_size = 4;  // 6 ids
  offsets = nullptr;
  output_ = HostTensor(kF32, {1, 4});
  output = output_.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"fixed_bag_size", "indices"});
}

TEST_F(ForwardValidation, FixedBagSizeOutputRows) {
  options_.fixed_bag_size = 3;  // 2 bags, output has 3 rows
  offsets = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  output_ = HostTensor(kF32, {2, 4});
  output = output_.dl();
  expect_success();
}

TEST_F(ForwardValidation, NegativeFixedBagSize) {
  options_.fixed_bag_size = -2;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"fixed_bag_size"});
}

TEST_F(ForwardValidation, BadEnums) {
  // A C caller can store any int in an enum field. Write the bytes as C would:
  // a static_cast to an out-of-range enum value is undefined in C++.
  const int pooling = 17;
  static_assert(sizeof(options_.pooling) == sizeof(int), "C enums are int-sized here");
  std::memcpy(&options_.pooling, &pooling, sizeof pooling);
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"pooling"});
  spembed_embedding_bag_options_init(&options_);
  const int policy = 9;
  std::memcpy(&options_.bounds_policy, &policy, sizeof policy);
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"bounds_policy"});
}

TEST_F(ForwardValidation, NegativePaddingIdxMeansNone) {
  options_.padding_idx = -5;
  expect_success();
  for (int64_t c = 0; c < 4; ++c) {
    EXPECT_EQ(output_.get(0, c), table_.get(0, c) + table_.get(1, c));
  }
}

TEST_F(ForwardValidation, PaddingIdxRowIsNotPooled) {
  options_.padding_idx = 1;
  options_.pooling = SPEMBED_POOLING_MEAN;
  expect_success();
  for (int64_t c = 0; c < 4; ++c) EXPECT_EQ(output_.get(0, c), table_.get(0, c));
}

TEST_F(ForwardValidation, ReportTensor) {
  HostTensor i32(kI32, {SPEMBED_REPORT_SIZE});
  report = i32.dl();
  auto before = i32.bytes();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"report"});
  EXPECT_TRUE(i32.bytes_equal(before));
  HostTensor short_report(kI64, {SPEMBED_REPORT_SIZE - 1});
  report = short_report.dl();
  before = short_report.bytes();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"report"});
  EXPECT_TRUE(short_report.bytes_equal(before));
  HostTensor two_d(kI64, {1, SPEMBED_REPORT_SIZE});
  report = two_d.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"report"});
}

TEST_F(ForwardValidation, CpuIgnoresWorkspace) {
  std::vector<uint8_t> ws(64, 0xAB);
  workspace = ws.data();
  workspace_bytes = 1;
  expect_success();
  EXPECT_EQ(ws, std::vector<uint8_t>(64, 0xAB));
}

// ---- table batches ---------------------------------------------------------------

class BatchValidation : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(handle_.create_status(), SPEMBED_STATUS_SUCCESS);
    Rng rng(11);
    for (int64_t dim : {4, 1, 3}) {
      HostTensor t(kF32, {5, dim});
      fill_random(t, rng, DataKind::kInt);
      tables_.push_back(std::move(t));
    }
  }
  std::vector<DLTensor> views() {
    std::vector<DLTensor> v;
    for (HostTensor& t : tables_) v.push_back(*t.dl());
    return v;
  }
  void expect_create_rejected(const std::vector<DLTensor>& v, int64_t n,
                              const std::vector<std::string>& names) {
    auto* sentinel = reinterpret_cast<spembed_table_batch_t>(uintptr_t{0x1234});
    spembed_table_batch_t batch = sentinel;
    const spembed_status_t s =
        spembed_table_batch_create(handle_.get(), v.empty() ? nullptr : v.data(), n, &batch);
    EXPECT_EQ(s, SPEMBED_STATUS_INVALID_ARGUMENT) << spembed_status_string(s);
    EXPECT_TRUE(mentions_any(spembed_last_error(), names))
        << spembed_last_error() << " names none of " << ::testing::PrintToString(names);
    EXPECT_EQ(batch, sentinel) << "batch written by a rejected call";
  }
  Handle handle_;
  std::vector<HostTensor> tables_;
};

TEST_F(BatchValidation, CreateRejectsNulls) {
  std::vector<DLTensor> v = views();
  spembed_table_batch_t batch = nullptr;
  EXPECT_EQ(spembed_table_batch_create(nullptr, v.data(), 3, &batch),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"handle"})) << spembed_last_error();
  EXPECT_EQ(batch, nullptr);
  EXPECT_EQ(spembed_table_batch_create(handle_.get(), v.data(), 3, nullptr),
            SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"batch"})) << spembed_last_error();
  expect_create_rejected({}, 3, {"tables"});
}

TEST_F(BatchValidation, CreateRejectsTableCount) {
  std::vector<DLTensor> v = views();
  expect_create_rejected(v, 0, {"num_tables"});
  expect_create_rejected(v, -1, {"num_tables"});
}

TEST_F(BatchValidation, CreateRejectsBadTables) {
  {
    std::vector<DLTensor> v = views();
    HostTensor f16(kF16, {5, 1});
    v[1] = *f16.dl();  // dtypes differ
    expect_create_rejected(v, 3, {"tables[1]"});
  }
  {
    std::vector<DLTensor> v = views();
    HostTensor i32(kI32, {5, 1});
    v[0] = *i32.dl();
    v[1] = *i32.dl();
    v[2] = *i32.dl();
    expect_create_rejected(v, 3, {"tables"});
  }
  {
    std::vector<DLTensor> v = views();
    HostTensor inner(kF32, {5, 3}, {6, 2});
    v[2] = *inner.dl();
    expect_create_rejected(v, 3, {"tables[2]"});
  }
  {
    std::vector<DLTensor> v = views();
    HostTensor narrow(kF32, {5, 3}, {2, 1});
    v[2] = *narrow.dl();
    expect_create_rejected(v, 3, {"tables[2]"});
  }
  {
    std::vector<DLTensor> v = views();
    v[1].ndim = 1;
    expect_create_rejected(v, 3, {"tables[1]"});
  }
  {
    std::vector<DLTensor> v = views();
    v[1].device = DLDevice{kDLVulkan, 0};
    expect_create_rejected(v, 3, {"tables[1]"});
  }
  {
    std::vector<DLTensor> v = views();
    v[0].data = nullptr;
    expect_create_rejected(v, 3, {"tables[0]"});
  }
}

TEST_F(BatchValidation, TotalDim) {
  TableBatch batch(handle_.get(), views());
  ASSERT_EQ(batch.create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  int64_t total = -3;
  EXPECT_EQ(spembed_table_batch_total_dim(nullptr, &total), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"batch"})) << spembed_last_error();
  EXPECT_EQ(total, -3);
  EXPECT_EQ(spembed_table_batch_total_dim(batch.get(), nullptr), SPEMBED_STATUS_INVALID_ARGUMENT);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"total_dim"})) << spembed_last_error();
  EXPECT_EQ(spembed_table_batch_total_dim(batch.get(), &total), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(total, 8);
}

TEST_F(BatchValidation, BatchDoesNotKeepTheViewArray) {
  // The DLTensor array is borrowed for the call only: only the data must outlive the batch.
  std::vector<DLTensor> v = views();
  TableBatch batch(handle_.get(), v);
  ASSERT_EQ(batch.create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
  for (DLTensor& t : v) {
    t.shape = nullptr;
    t.ndim = 0;
  }
  v.clear();
  v.shrink_to_fit();
  int64_t total = 0;
  EXPECT_EQ(spembed_table_batch_total_dim(batch.get(), &total), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(total, 8);
}

// A valid batched call (3 tables of dims 4, 1, 3; B = 2; SUM) broken one way per test.
class BatchedForwardValidation : public BatchValidation {
 protected:
  void SetUp() override {
    BatchValidation::SetUp();
    batch_ = std::make_unique<TableBatch>(handle_.get(), views());
    ASSERT_EQ(batch_->create_status(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
    indices_ = make_index_tensor(kI64, {0, 1, 2, 3, 4, 0, 1, 2, 3});
    offsets_ = make_index_tensor(kI64, {0, 2, 3, 3, 6, 7, 9});
    output_ = HostTensor(kF32, {2, 8});
    argmax_ = HostTensor(kI64, {2, 8});
    report_ = make_report();
    spembed_embedding_bag_options_init(&options_);
    batch = batch_->get();
    handle = handle_.get();
    indices = indices_.dl();
    offsets = offsets_.dl();
    output = output_.dl();
    report = report_.dl();
  }
  spembed_status_t call() {
    return spembed_embedding_bag_batched_forward(handle, batch, indices, offsets, weights,
                                                 &options_, output, argmax, report, nullptr, 0,
                                                 nullptr);
  }
  void expect_rejected(spembed_status_t want, const std::vector<std::string>& names,
                       bool report_untouched = true) {
    const auto out_before = output_.bytes();
    const auto amax_before = argmax_.bytes();
    const auto report_before = report_.bytes();
    const spembed_status_t got = call();
    const std::string msg = spembed_last_error();
    EXPECT_EQ(got, want) << "got " << spembed_status_string(got) << ": " << msg;
    EXPECT_TRUE(mentions_any(msg, names))
        << "message \"" << msg << "\" names none of: " << ::testing::PrintToString(names);
    EXPECT_TRUE(output_.bytes_equal(out_before)) << "output written by a rejected call";
    EXPECT_TRUE(argmax_.bytes_equal(amax_before)) << "argmax written by a rejected call";
    if (report_untouched) {
      EXPECT_TRUE(report_.bytes_equal(report_before));
    }
  }

  std::unique_ptr<TableBatch> batch_;
  HostTensor indices_, offsets_, output_, argmax_, report_;
  spembed_embedding_bag_options_t options_{};
  spembed_handle_t handle = nullptr;
  spembed_table_batch_t batch = nullptr;
  const DLTensor* indices = nullptr;
  const DLTensor* offsets = nullptr;
  const DLTensor* weights = nullptr;
  DLTensor* output = nullptr;
  DLTensor* argmax = nullptr;
  DLTensor* report = nullptr;
};

TEST_F(BatchedForwardValidation, BaselineSucceeds) {
  EXPECT_EQ(call(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
}

TEST_F(BatchedForwardValidation, NullHandleAndBatch) {
  handle = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"handle"});
  handle = handle_.get();
  batch = nullptr;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"batch"});
}

TEST_F(BatchedForwardValidation, BatchOfAnotherHandle) {
  Handle other;
  ASSERT_EQ(other.create_status(), SPEMBED_STATUS_SUCCESS);
  handle = other.get();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"batch"});
}

TEST_F(BatchedForwardValidation, OutputWidthMustBeTotalDim) {
  HostTensor bad(kF32, {2, 7});
  output = bad.dl();
  const auto before = bad.bytes();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  EXPECT_TRUE(bad.bytes_equal(before));
}

TEST_F(BatchedForwardValidation, OffsetsLengthMustBeTablesTimesBagsPlusOne) {
  HostTensor offs = make_index_tensor(kI64, {0, 2, 3, 3, 6, 9});
  offsets = offs.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets", "output"});
}

TEST_F(BatchedForwardValidation, NonMonotonicOffsets) {
  HostTensor offs = make_index_tensor(kI64, {0, 2, 3, 7, 6, 7, 9});
  offsets = offs.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets[3]=7 > offsets[4]=6"}, false);
}

TEST_F(BatchedForwardValidation, NoneIsNotAvailable) {
  // The header says NONE is not available in batched form; a rejected request
  // either way (invalid for this op, or unsupported), never a success.
  options_.pooling = SPEMBED_POOLING_NONE;
  offsets = nullptr;
  const auto before = output_.bytes();
  const spembed_status_t s = call();
  EXPECT_TRUE(s == SPEMBED_STATUS_INVALID_ARGUMENT || s == SPEMBED_STATUS_NOT_SUPPORTED)
      << spembed_status_string(s);
  EXPECT_TRUE(mentions_any(spembed_last_error(), {"pooling", "NONE"})) << spembed_last_error();
  EXPECT_TRUE(output_.bytes_equal(before));
}

TEST_F(BatchedForwardValidation, FixedBagSize) {
  options_.fixed_bag_size = 2;
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"offsets", "fixed_bag_size"});
  offsets = nullptr;
  // 9 ids, T * B * 2 = 12.
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"fixed_bag_size", "indices"});
  HostTensor idx = make_index_tensor(kI64, {0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1});
  indices = idx.dl();
  // Every table has 5 rows: all ids are valid.
  EXPECT_EQ(call(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
}

TEST_F(BatchedForwardValidation, IdsAreRowsOfTheirOwnTable) {
  // Give table 1 (the dim-1 table) only 2 rows by rebuilding the batch.
  tables_[1] = HostTensor(kF32, {2, 1});
  tables_[1].fill_bytes(0);
  batch_ = std::make_unique<TableBatch>(handle_.get(), views());
  ASSERT_EQ(batch_->create_status(), SPEMBED_STATUS_SUCCESS);
  batch = batch_->get();
  // Positions 3..5 are table 1's bag 1: ids {3, 4, 0}: 3 and 4 are bad there.
  expect_rejected(SPEMBED_STATUS_INDEX_OUT_OF_RANGE, {"indices[3]"}, false);
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_COUNT), 2);
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_POSITION), 3);
  EXPECT_EQ(report_.get_int(SPEMBED_REPORT_BAD_INDEX_VALUE), 3);
}

TEST_F(BatchedForwardValidation, ArgmaxAndWeights) {
  argmax = argmax_.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"argmax"});  // SUM
  options_.pooling = SPEMBED_POOLING_MAX;
  HostTensor narrow(kI64, {2, 7});
  argmax = narrow.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"argmax"});
  argmax = argmax_.dl();
  HostTensor w = make_f32_tensor({1, 1, 1, 1, 1, 1, 1, 1, 1});
  weights = w.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"per_sample_weights"});
  weights = nullptr;
  EXPECT_EQ(call(), SPEMBED_STATUS_SUCCESS) << spembed_last_error();
}

TEST_F(BatchedForwardValidation, OutputDtypeAndStrides) {
  HostTensor f64(kF64, {2, 8});
  output = f64.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
  HostTensor inner(kF32, {2, 8}, {16, 2});
  output = inner.dl();
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"output"});
}

TEST_F(BatchedForwardValidation, IndicesDeviceMustMatchTables) {
  indices_.set_view_device(DLDevice{kDLVulkan, 0});
  expect_rejected(SPEMBED_STATUS_INVALID_ARGUMENT, {"indices", "device"});
}

}  // namespace
}  // namespace spembed_test
