// Helpers shared by spembed's tests: owning host tensors that hand out DLTensor
// views, fp16 / bf16 conversion written independently of the library, seeded
// random data, poisoning, and an independent reference of the embedding bag
// forward (double accumulation) with error bounds derived from the numerics.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "spembed/spembed.h"

namespace spembed_test {

// ---- dtypes -------------------------------------------------------------------

constexpr DLDataType kF32{kDLFloat, 32, 1};
constexpr DLDataType kF16{kDLFloat, 16, 1};
constexpr DLDataType kBF16{kDLBfloat, 16, 1};
constexpr DLDataType kF64{kDLFloat, 64, 1};
constexpr DLDataType kI16{kDLInt, 16, 1};
constexpr DLDataType kI32{kDLInt, 32, 1};
constexpr DLDataType kI64{kDLInt, 64, 1};
constexpr DLDataType kU8{kDLUInt, 8, 1};

bool same_dtype(DLDataType a, DLDataType b);
std::string dtype_name(DLDataType t);  // "f32", "f16", "bf16", "i32", ...
size_t dtype_bytes(DLDataType t);

// Round to nearest, ties to even; NaN stays NaN, overflow gives infinity.
uint16_t float_to_half(float f);
float half_to_float(uint16_t h);
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t b);

// The value of `v` after storing it as float32 / float16 / bfloat16.
double round_to(DLDataType t, double v);
// Unit roundoff (half an ulp, relative) of a float dtype: 2^-24, 2^-11, 2^-8.
double unit_roundoff(DLDataType t);
// Largest absolute rounding error in the dtype's subnormal range (half the
// smallest subnormal): 2^-150, 2^-25, 2^-134.
double subnormal_half_ulp(DLDataType t);

// ---- tensors ------------------------------------------------------------------

// An owning host tensor. Storage is 256-byte aligned (the alignment DLPack and
// cudaMalloc give) and starts `byte_offset` bytes before element 0, so views
// exercise DLTensor::byte_offset. Strides are in elements; empty means compact.
class HostTensor {
 public:
  HostTensor() = default;
  HostTensor(DLDataType dtype, std::vector<int64_t> shape, std::vector<int64_t> strides = {},
             uint64_t byte_offset = 0);
  HostTensor(HostTensor&& o) noexcept;
  HostTensor& operator=(HostTensor&& o) noexcept;
  // A deep copy (same shape, strides, byte_offset and bytes).
  HostTensor clone() const;

  // A view of this tensor. The pointers in it live as long as this object.
  DLTensor* dl() { return &view_; }
  const DLTensor* dl() const { return &view_; }

  DLDataType dtype() const { return view_.dtype; }
  int ndim() const { return view_.ndim; }
  int64_t size(int d) const { return shape_[static_cast<size_t>(d)]; }
  int64_t stride(int d) const;  // in elements, compact strides when none were given
  // Bytes from the start of the storage to one past the last element.
  size_t storage_bytes() const { return storage_bytes_; }
  uint8_t* storage() { return storage_.get(); }
  const uint8_t* storage() const { return storage_.get(); }
  const std::vector<int64_t>& shape() const { return shape_; }

  // Element access by coordinates (1-D: (i), 2-D: (r, c)), converted from / to
  // double. Float dtypes round to nearest even on store.
  double get(int64_t i) const { return get_at(offset_of(i, 0, 1)); }
  double get(int64_t r, int64_t c) const { return get_at(offset_of(r, c, 2)); }
  void set(int64_t i, double v) { set_at(offset_of(i, 0, 1), v); }
  void set(int64_t r, int64_t c, double v) { set_at(offset_of(r, c, 2), v); }
  // Integer element access (exact for int64).
  int64_t get_int(int64_t i) const;
  int64_t get_int(int64_t r, int64_t c) const;
  void set_int(int64_t i, int64_t v);
  void set_int(int64_t r, int64_t c, int64_t v);
  // Row r of a 2-D float tensor as doubles (one dtype dispatch per row, for
  // the reference and the checks on large outputs).
  void read_row(int64_t r, std::vector<double>* out) const;
  // Byte position of element (r, c) (1-D: (i, 0)) from the start of the storage.
  size_t element_byte(int64_t r, int64_t c) const;

  void fill_bytes(uint8_t byte);
  std::vector<uint8_t> bytes() const;  // the whole storage
  bool bytes_equal(const std::vector<uint8_t>& snapshot) const;

  // Changes the view only (for bad-argument tests): the storage stays.
  void set_view_dtype(DLDataType t) { view_.dtype = t; }
  void set_view_device(DLDevice d) { view_.device = d; }
  void set_view_data(void* data) { view_.data = data; }
  void set_view_shape(std::vector<int64_t> shape);
  void set_view_strides(std::vector<int64_t> strides);

 private:
  int64_t offset_of(int64_t a, int64_t b, int nd) const;  // element offset
  double get_at(int64_t elem) const;
  void set_at(int64_t elem, double v);
  int64_t get_int_at(int64_t elem) const;
  void set_int_at(int64_t elem, int64_t v);
  void sync_view();

  struct Free {
    void operator()(uint8_t* p) const;
  };
  std::shared_ptr<uint8_t> storage_;
  size_t storage_bytes_ = 0;
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;  // always explicit here
  bool compact_ = true;           // view passes strides = NULL
  std::vector<int64_t> view_shape_;
  std::vector<int64_t> view_strides_;
  DLTensor view_{};
};

// A 1-D int32 / int64 tensor holding `values`.
HostTensor make_index_tensor(DLDataType t, const std::vector<int64_t>& values,
                             uint64_t byte_offset = 0);
// A 1-D float32 tensor holding `values`.
HostTensor make_f32_tensor(const std::vector<float>& values);
// A 2-D tensor [rows, cols] of dtype `t` with the given row stride (0: cols),
// filled row-major from `values` (rows * cols of them).
HostTensor make_matrix(DLDataType t, int64_t rows, int64_t cols, const std::vector<double>& values,
                       int64_t row_stride = 0, uint64_t byte_offset = 0);
// An int64 [SPEMBED_REPORT_SIZE] tensor filled with a recognisable pattern.
HostTensor make_report();

// All-ones bytes: NaN for every float dtype, -1 for integers.
constexpr uint8_t kPoisonByte = 0xFF;

// ---- random data --------------------------------------------------------------

enum class DataKind {
  // Multiples of 1/4 in [-2, 2] without 0: every sum and weighted sum of up to
  // 2^16 terms is exact in float32, so results can be compared exactly.
  kInt,
  // Uniform in [-1, 1) rounded to the tensor's dtype: comparisons use bounds.
  kReal,
};

class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double value(DataKind kind);
  int64_t uniform_int(int64_t lo, int64_t hi);  // inclusive
  std::mt19937_64& gen() { return gen_; }

 private:
  std::mt19937_64 gen_;
};

// Fills every element of a float tensor (within its shape) with rng values.
void fill_random(HostTensor& t, Rng& rng, DataKind kind);

// ---- the embedding bag forward problem ---------------------------------------

// What a case looks like; make_problem turns it into tensors and the expected
// result. Bags are table-major as in the batched API; a single-table lookup is
// num_tables = 1 through spembed_embedding_bag_forward.
struct ProblemSpec {
  DLDataType table_dtype = kF32;
  DLDataType out_dtype = kF32;
  DLDataType index_dtype = kI64;
  spembed_pooling_t pooling = SPEMBED_POOLING_SUM;
  bool weighted = false;
  bool with_argmax = false;       // MAX only
  bool batched = false;           // spembed_embedding_bag_batched_forward
  std::vector<int64_t> dims{16};  // one per table
  int64_t rows = 100;             // per table
  int64_t table_row_pad = 0;      // row stride = dim + pad (elements)
  uint64_t table_byte_offset = 0;
  int64_t out_row_pad = 0;  // output row stride = cols + pad
  // Bag lengths, table-major: num_tables * B entries (ignored by NONE, which
  // uses nnz = sum of them). With fixed_bag_size > 0, every bag has that length.
  std::vector<int64_t> bag_lengths{3, 0, 1};
  int64_t fixed_bag_size = 0;
  int64_t padding_idx = -1;
  spembed_bounds_policy_t bounds_policy = SPEMBED_BOUNDS_ERROR;
  bool scale_grad_by_freq = false;  // options.scale_grad_by_freq (the backward's)
  // Fraction of ids made out of range (negative or >= rows), for SKIP tests.
  double bad_id_fraction = 0.0;
  // Fraction of ids set to padding_idx (when padding_idx >= 0).
  double padding_fraction = 0.0;
  DataKind data = DataKind::kInt;
  bool with_report = true;
  uint64_t seed = 1;
};

// The independent reference: the expected value of each output element and
// the largest error the library may make there (0: must match exactly).
struct Expected {
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<double> value;
  std::vector<double> bound;
  std::vector<int64_t> argmax;  // MAX only
  // Report the library must produce (SKIP / clean data).
  int64_t bad_count = 0;
  int64_t bad_position = -1;
  int64_t bad_value = 0;
};

struct Problem {
  ProblemSpec spec;
  int64_t num_tables = 1;
  int64_t bags_per_table = 0;  // B
  int64_t total_dim = 0;
  std::vector<int64_t> col_offsets;  // per table
  std::vector<int64_t> ids;          // nnz
  std::vector<int64_t> offsets;      // num_tables * B + 1 (always, for the reference)
  std::vector<float> weights;        // nnz or empty
  std::vector<HostTensor> tables;
  HostTensor indices;
  HostTensor offsets_t;  // valid when has_offsets
  HostTensor weights_t;  // valid when spec.weighted
  HostTensor output;     // poisoned
  HostTensor argmax;     // valid when spec.with_argmax, poisoned
  HostTensor report;     // valid when spec.with_report
  bool has_offsets = true;
  spembed_embedding_bag_options_t options{};
  Expected expected;

  int64_t nnz() const { return static_cast<int64_t>(ids.size()); }
};

Problem make_problem(const ProblemSpec& spec);

// The reference for problem `p` from p.tables, p.ids, p.offsets, p.weights and
// p.spec. Out-of-range ids are skipped (the SKIP semantics).
Expected reference_forward(const Problem& p);

// Error bound helpers (exposed for tests of the bounds themselves).
// gamma(n) = n u / (1 - n u), u = 2^-24: with n float32 roundings, in any
// order, the computed sum differs from the exact one by at most
// gamma(n) * sum |terms| (Higham, Accuracy and Stability of Numerical
// Algorithms, 2nd ed., lemma 3.1 and section 4.2).
double gamma32(int64_t n);

// One call of either forward entry point, as views. `batched` picks
// spembed_embedding_bag_batched_forward (with `batch`), else `table` is used.
struct ForwardCall {
  bool batched = false;
  const DLTensor* table = nullptr;
  spembed_table_batch_t batch = nullptr;
  const DLTensor* indices = nullptr;
  const DLTensor* offsets = nullptr;
  const DLTensor* weights = nullptr;
  const spembed_embedding_bag_options_t* options = nullptr;
  DLTensor* output = nullptr;
  DLTensor* argmax = nullptr;
  DLTensor* report = nullptr;
  void* workspace = nullptr;
  size_t workspace_bytes = 0;
  spembed_stream_t stream = nullptr;

  spembed_status_t run(spembed_handle_t handle) const;
};

// RAII owner of a table batch.
class TableBatch {
 public:
  TableBatch(spembed_handle_t handle, const std::vector<DLTensor>& tables);
  ~TableBatch();
  TableBatch(const TableBatch&) = delete;
  TableBatch& operator=(const TableBatch&) = delete;
  spembed_table_batch_t get() const { return batch_; }
  spembed_status_t create_status() const { return status_; }

 private:
  spembed_table_batch_t batch_ = nullptr;
  spembed_status_t status_ = SPEMBED_STATUS_INTERNAL_ERROR;
};

// Runs p on the CPU through the C API (creating a table batch when batched)
// and returns the status; the outputs land in p's host tensors.
spembed_status_t run_forward_cpu(spembed_handle_t handle, Problem& p);

// Compares an output (and argmax) against the expected values. Elements
// outside [rows, cols] but inside the row stride must be unchanged from
// `before` (the poisoned bytes). Returns the number of mismatches and adds a
// failure for the first few, each prefixed with `what`.
int64_t check_output(const std::string& what, const HostTensor& output,
                     const std::vector<uint8_t>& before, const Expected& e);
int64_t check_argmax(const std::string& what, const HostTensor& argmax, const Expected& e);
// Short text for case names.
std::string pooling_name(spembed_pooling_t p);

// RAII owner of a handle.
class Handle {
 public:
  Handle();
  ~Handle();
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  spembed_handle_t get() const { return h_; }
  spembed_status_t create_status() const { return status_; }

 private:
  spembed_handle_t h_ = nullptr;
  spembed_status_t status_ = SPEMBED_STATUS_INTERNAL_ERROR;
};

// True when `message` contains at least one of `names`.
bool mentions_any(const std::string& message, const std::vector<std::string>& names);

}  // namespace spembed_test
