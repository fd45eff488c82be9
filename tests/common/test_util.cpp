#include "test_util.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <stdexcept>

namespace spembed_test {

namespace {

uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// Alignment of every storage allocation: what DLPack promises for `data` and
// what cudaMalloc returns.
constexpr size_t kStorageAlignment = 256;

}  // namespace

// ---- dtypes -------------------------------------------------------------------

bool same_dtype(DLDataType a, DLDataType b) {
  return a.code == b.code && a.bits == b.bits && a.lanes == b.lanes;
}

std::string dtype_name(DLDataType t) {
  std::string prefix;
  switch (t.code) {
    case kDLFloat:
      prefix = "f";
      break;
    case kDLBfloat:
      prefix = "bf";
      break;
    case kDLInt:
      prefix = "i";
      break;
    case kDLUInt:
      prefix = "u";
      break;
    default:
      prefix = "code" + std::to_string(t.code) + "_";
  }
  std::string name = prefix + std::to_string(t.bits);
  if (t.lanes != 1) name += "x" + std::to_string(t.lanes);
  return name;
}

size_t dtype_bytes(DLDataType t) { return (static_cast<size_t>(t.bits) * t.lanes + 7) / 8; }

uint16_t float_to_half(float f) {
  const uint32_t x = float_bits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t a = x & 0x7fffffffu;
  if (a >= 0x7f800000u) {  // inf or NaN (NaN keeps a quiet payload bit)
    return static_cast<uint16_t>(sign | 0x7c00u | (a > 0x7f800000u ? 0x0200u : 0u));
  }
  if (a >= 0x477ff000u) {  // >= 65520 = 65504 + half an ulp: the tie rounds up to inf
    return static_cast<uint16_t>(sign | 0x7c00u);
  }
  if (a < 0x38800000u) {  // below 2^-14: a half subnormal (or zero), unit 2^-24
    // Scaling by 2^24 is exact; nearbyint rounds half to even in the default mode.
    const float scaled = bits_float(a) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  const uint32_t exponent = (a >> 23) - 127u + 15u;
  const uint32_t mantissa = a & 0x7fffffu;
  uint32_t h = (exponent << 10) | (mantissa >> 13);
  const uint32_t rest = mantissa & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;  // may carry into the exponent
  return static_cast<uint16_t>(sign | h);
}

float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {
    const float v = std::ldexp(static_cast<float>(mantissa), -24);
    return sign ? -v : v;
  }
  if (exponent == 31) return bits_float(sign | 0x7f800000u | (mantissa << 13));
  return bits_float(sign | ((exponent - 15u + 127u) << 23) | (mantissa << 13));
}

uint16_t float_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x0040u);
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

double round_to(DLDataType t, double v) {
  if (same_dtype(t, kF64)) return v;
  const float f = static_cast<float>(v);
  if (same_dtype(t, kF32)) return f;
  if (same_dtype(t, kF16)) return half_to_float(float_to_half(f));
  if (same_dtype(t, kBF16)) return bf16_to_float(float_to_bf16(f));
  throw std::invalid_argument("round_to: not a float dtype: " + dtype_name(t));
}

double unit_roundoff(DLDataType t) {
  if (same_dtype(t, kF64)) return std::ldexp(1.0, -53);
  if (same_dtype(t, kF32)) return std::ldexp(1.0, -24);
  if (same_dtype(t, kF16)) return std::ldexp(1.0, -11);
  if (same_dtype(t, kBF16)) return std::ldexp(1.0, -8);
  throw std::invalid_argument("unit_roundoff: not a float dtype: " + dtype_name(t));
}

double subnormal_half_ulp(DLDataType t) {
  if (same_dtype(t, kF64)) return std::ldexp(1.0, -1075);
  if (same_dtype(t, kF32)) return std::ldexp(1.0, -150);
  if (same_dtype(t, kF16)) return std::ldexp(1.0, -25);
  if (same_dtype(t, kBF16)) return std::ldexp(1.0, -134);
  throw std::invalid_argument("subnormal_half_ulp: not a float dtype: " + dtype_name(t));
}

double gamma32(int64_t n) {
  const double nu = static_cast<double>(n) * std::ldexp(1.0, -24);
  return nu / (1.0 - nu);
}

// ---- tensors ------------------------------------------------------------------

void HostTensor::Free::operator()(uint8_t* p) const { std::free(p); }

HostTensor::HostTensor(DLDataType dtype, std::vector<int64_t> shape, std::vector<int64_t> strides,
                       uint64_t byte_offset)
    : shape_(std::move(shape)) {
  compact_ = strides.empty();
  if (compact_) {
    strides_.assign(shape_.size(), 1);
    for (size_t d = shape_.size(); d-- > 1;) strides_[d - 1] = strides_[d] * shape_[d];
  } else {
    if (strides.size() != shape_.size()) throw std::invalid_argument("HostTensor: strides rank");
    strides_ = std::move(strides);
  }
  int64_t footprint = 1;
  for (size_t d = 0; d < shape_.size(); ++d) {
    if (shape_[d] == 0) footprint = 0;
  }
  if (footprint != 0) {
    for (size_t d = 0; d < shape_.size(); ++d) footprint += (shape_[d] - 1) * strides_[d];
  }
  storage_bytes_ =
      static_cast<size_t>(byte_offset) + static_cast<size_t>(footprint) * dtype_bytes(dtype);
  // Never a null pointer, even for an empty tensor: the empty-tensor-with-null
  // case is tested on its own.
  const size_t alloc =
      std::max<size_t>(kStorageAlignment, (storage_bytes_ + kStorageAlignment - 1) /
                                              kStorageAlignment * kStorageAlignment);
  auto* p = static_cast<uint8_t*>(std::aligned_alloc(kStorageAlignment, alloc));
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, kPoisonByte, alloc);
  storage_.reset(p, Free());
  view_.dtype = dtype;
  view_.device = DLDevice{kDLCPU, 0};
  view_.byte_offset = byte_offset;
  view_shape_ = shape_;
  if (!compact_) view_strides_ = strides_;
  sync_view();
}

void HostTensor::sync_view() {
  view_.data = storage_.get();
  view_.ndim = static_cast<int>(view_shape_.size());
  view_.shape = view_shape_.empty() ? nullptr : view_shape_.data();
  view_.strides = view_strides_.empty() ? nullptr : view_strides_.data();
}

void HostTensor::set_view_shape(std::vector<int64_t> shape) {
  view_shape_ = std::move(shape);
  view_.shape = view_shape_.empty() ? nullptr : view_shape_.data();
  view_.ndim = static_cast<int>(view_shape_.size());
}

void HostTensor::set_view_strides(std::vector<int64_t> strides) {
  view_strides_ = std::move(strides);
  view_.strides = view_strides_.empty() ? nullptr : view_strides_.data();
}

int64_t HostTensor::stride(int d) const { return strides_[static_cast<size_t>(d)]; }

int64_t HostTensor::offset_of(int64_t a, int64_t b, int nd) const {
  if (static_cast<int>(shape_.size()) != nd) throw std::out_of_range("HostTensor: rank");
  if (a < 0 || a >= shape_[0]) throw std::out_of_range("HostTensor: index 0");
  if (nd == 1) return a * strides_[0];
  if (b < 0 || b >= shape_[1]) throw std::out_of_range("HostTensor: index 1");
  return a * strides_[0] + b * strides_[1];
}

double HostTensor::get_at(int64_t elem) const {
  const uint8_t* p =
      storage_.get() + view_.byte_offset + static_cast<size_t>(elem) * dtype_bytes(view_.dtype);
  const DLDataType t = view_.dtype;
  if (same_dtype(t, kF32)) {
    float v;
    std::memcpy(&v, p, 4);
    return v;
  }
  if (same_dtype(t, kF64)) {
    double v;
    std::memcpy(&v, p, 8);
    return v;
  }
  if (same_dtype(t, kF16) || same_dtype(t, kBF16)) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return same_dtype(t, kF16) ? half_to_float(v) : bf16_to_float(v);
  }
  return static_cast<double>(get_int_at(elem));
}

void HostTensor::set_at(int64_t elem, double v) {
  uint8_t* p =
      storage_.get() + view_.byte_offset + static_cast<size_t>(elem) * dtype_bytes(view_.dtype);
  const DLDataType t = view_.dtype;
  if (same_dtype(t, kF32)) {
    const float f = static_cast<float>(v);
    std::memcpy(p, &f, 4);
  } else if (same_dtype(t, kF64)) {
    std::memcpy(p, &v, 8);
  } else if (same_dtype(t, kF16)) {
    const uint16_t h = float_to_half(static_cast<float>(v));
    std::memcpy(p, &h, 2);
  } else if (same_dtype(t, kBF16)) {
    const uint16_t h = float_to_bf16(static_cast<float>(v));
    std::memcpy(p, &h, 2);
  } else {
    throw std::invalid_argument("HostTensor::set: use set_int for " + dtype_name(t));
  }
}

int64_t HostTensor::get_int(int64_t i) const { return get_int_at(offset_of(i, 0, 1)); }

int64_t HostTensor::get_int(int64_t r, int64_t c) const { return get_int_at(offset_of(r, c, 2)); }

int64_t HostTensor::get_int_at(int64_t elem) const {
  const uint8_t* p =
      storage_.get() + view_.byte_offset + static_cast<size_t>(elem) * dtype_bytes(view_.dtype);
  const DLDataType t = view_.dtype;
  if (same_dtype(t, kI64)) {
    int64_t v;
    std::memcpy(&v, p, 8);
    return v;
  }
  if (same_dtype(t, kI32)) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
  }
  if (same_dtype(t, kI16)) {
    int16_t v;
    std::memcpy(&v, p, 2);
    return v;
  }
  if (same_dtype(t, kU8)) return *p;
  throw std::invalid_argument("HostTensor::get_int: " + dtype_name(t));
}

void HostTensor::set_int(int64_t i, int64_t v) { set_int_at(offset_of(i, 0, 1), v); }

void HostTensor::set_int(int64_t r, int64_t c, int64_t v) { set_int_at(offset_of(r, c, 2), v); }

void HostTensor::set_int_at(int64_t elem, int64_t v) {
  uint8_t* p =
      storage_.get() + view_.byte_offset + static_cast<size_t>(elem) * dtype_bytes(view_.dtype);
  const DLDataType t = view_.dtype;
  if (same_dtype(t, kI64)) {
    std::memcpy(p, &v, 8);
  } else if (same_dtype(t, kI32)) {
    const auto w = static_cast<int32_t>(v);
    std::memcpy(p, &w, 4);
  } else if (same_dtype(t, kI16)) {
    const auto w = static_cast<int16_t>(v);
    std::memcpy(p, &w, 2);
  } else if (same_dtype(t, kU8)) {
    *p = static_cast<uint8_t>(v);
  } else {
    throw std::invalid_argument("HostTensor::set_int: " + dtype_name(t));
  }
}

void HostTensor::read_row(int64_t r, std::vector<double>* out) const {
  const int64_t cols = shape_.at(1);
  out->resize(static_cast<size_t>(cols));
  if (cols == 0) return;
  const DLDataType t = view_.dtype;
  const size_t eb = dtype_bytes(t);
  const uint8_t* p = storage_.get() + element_byte(r, 0);
  const size_t step = static_cast<size_t>(strides_[1]) * eb;
  double* o = out->data();
  if (same_dtype(t, kF32)) {
    for (int64_t c = 0; c < cols; ++c, p += step) {
      float v;
      std::memcpy(&v, p, 4);
      o[c] = v;
    }
  } else if (same_dtype(t, kF16) || same_dtype(t, kBF16)) {
    const bool half = same_dtype(t, kF16);
    for (int64_t c = 0; c < cols; ++c, p += step) {
      uint16_t v;
      std::memcpy(&v, p, 2);
      o[c] = half ? half_to_float(v) : bf16_to_float(v);
    }
  } else {
    for (int64_t c = 0; c < cols; ++c) o[c] = get(r, c);
  }
}

void HostTensor::fill_bytes(uint8_t byte) { std::memset(storage_.get(), byte, storage_bytes_); }

std::vector<uint8_t> HostTensor::bytes() const {
  return std::vector<uint8_t>(storage_.get(), storage_.get() + storage_bytes_);
}

bool HostTensor::bytes_equal(const std::vector<uint8_t>& snapshot) const {
  // (an empty tensor may have no storage: memcmp must not see its null pointer)
  return snapshot.size() == storage_bytes_ &&
         (storage_bytes_ == 0 || std::memcmp(snapshot.data(), storage_.get(), storage_bytes_) == 0);
}

HostTensor HostTensor::clone() const {
  HostTensor c(view_.dtype, shape_, compact_ ? std::vector<int64_t>{} : strides_,
               view_.byte_offset);
  std::memcpy(c.storage_.get(), storage_.get(), storage_bytes_);
  return c;
}

HostTensor::HostTensor(HostTensor&& o) noexcept { *this = std::move(o); }

HostTensor& HostTensor::operator=(HostTensor&& o) noexcept {
  storage_ = std::move(o.storage_);
  storage_bytes_ = o.storage_bytes_;
  shape_ = std::move(o.shape_);
  strides_ = std::move(o.strides_);
  compact_ = o.compact_;
  view_shape_ = std::move(o.view_shape_);
  view_strides_ = std::move(o.view_strides_);
  view_ = o.view_;
  view_.shape = view_shape_.empty() ? nullptr : view_shape_.data();
  view_.strides = view_strides_.empty() ? nullptr : view_strides_.data();
  return *this;
}

size_t HostTensor::element_byte(int64_t r, int64_t c) const {
  const int64_t elem = shape_.size() == 1 ? offset_of(r, 0, 1) : offset_of(r, c, 2);
  return static_cast<size_t>(view_.byte_offset) +
         static_cast<size_t>(elem) * dtype_bytes(view_.dtype);
}

HostTensor make_index_tensor(DLDataType t, const std::vector<int64_t>& values,
                             uint64_t byte_offset) {
  HostTensor h(t, {static_cast<int64_t>(values.size())}, {}, byte_offset);
  for (size_t i = 0; i < values.size(); ++i) h.set_int(static_cast<int64_t>(i), values[i]);
  return h;
}

HostTensor make_f32_tensor(const std::vector<float>& values) {
  HostTensor h(kF32, {static_cast<int64_t>(values.size())});
  for (size_t i = 0; i < values.size(); ++i) h.set(static_cast<int64_t>(i), values[i]);
  return h;
}

HostTensor make_matrix(DLDataType t, int64_t rows, int64_t cols, const std::vector<double>& values,
                       int64_t row_stride, uint64_t byte_offset) {
  if (static_cast<int64_t>(values.size()) != rows * cols) {
    throw std::invalid_argument("make_matrix: need rows * cols values");
  }
  std::vector<int64_t> strides;
  if (row_stride != 0) strides = {row_stride, 1};
  HostTensor h(t, {rows, cols}, strides, byte_offset);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) h.set(r, c, values[static_cast<size_t>(r * cols + c)]);
  }
  return h;
}

HostTensor make_report() {
  HostTensor h(kI64, {SPEMBED_REPORT_SIZE});
  // A pattern no field can legitimately hold, so unwritten fields show.
  h.fill_bytes(0x5A);
  return h;
}

// ---- random data --------------------------------------------------------------

double Rng::value(DataKind kind) {
  if (kind == DataKind::kInt) {
    // 16 values: -8..-1 and 1..8, divided by 4.
    const int64_t k = uniform_int(0, 15);
    return static_cast<double>(k < 8 ? k - 8 : k - 7) / 4.0;
  }
  std::uniform_real_distribution<double> d(-1.0, 1.0);
  return d(gen_);
}

int64_t Rng::uniform_int(int64_t lo, int64_t hi) {
  std::uniform_int_distribution<int64_t> d(lo, hi);
  return d(gen_);
}

void fill_random(HostTensor& t, Rng& rng, DataKind kind) {
  if (t.ndim() == 1) {
    for (int64_t i = 0; i < t.size(0); ++i) t.set(i, rng.value(kind));
    return;
  }
  for (int64_t r = 0; r < t.size(0); ++r) {
    for (int64_t c = 0; c < t.size(1); ++c) t.set(r, c, rng.value(kind));
  }
}

// ---- the embedding bag forward problem ---------------------------------------

std::string pooling_name(spembed_pooling_t p) {
  switch (p) {
    case SPEMBED_POOLING_SUM:
      return "Sum";
    case SPEMBED_POOLING_MEAN:
      return "Mean";
    case SPEMBED_POOLING_MAX:
      return "Max";
    case SPEMBED_POOLING_NONE:
      return "None";
  }
  return "Pooling" + std::to_string(static_cast<int>(p));
}

Problem make_problem(const ProblemSpec& spec) {
  Problem p;
  p.spec = spec;
  p.num_tables = static_cast<int64_t>(spec.dims.size());
  if (p.num_tables < 1 || (!spec.batched && p.num_tables != 1)) {
    throw std::invalid_argument("make_problem: one table unless batched");
  }
  const bool none = spec.pooling == SPEMBED_POOLING_NONE;
  const auto num_lengths = static_cast<int64_t>(spec.bag_lengths.size());
  if (num_lengths % p.num_tables != 0) {
    throw std::invalid_argument("make_problem: bag_lengths must be num_tables * B");
  }
  std::vector<int64_t> lengths = spec.bag_lengths;
  if (spec.fixed_bag_size > 0) std::fill(lengths.begin(), lengths.end(), spec.fixed_bag_size);
  p.bags_per_table = num_lengths / p.num_tables;

  Rng rng(spec.seed);
  p.total_dim = 0;
  for (int64_t t = 0; t < p.num_tables; ++t) {
    const int64_t dim = spec.dims[static_cast<size_t>(t)];
    p.col_offsets.push_back(p.total_dim);
    p.total_dim += dim;
    std::vector<int64_t> strides;
    if (spec.table_row_pad != 0) strides = {dim + spec.table_row_pad, 1};
    HostTensor table(spec.table_dtype, {spec.rows, dim}, strides, spec.table_byte_offset);
    fill_random(table, rng, spec.data);
    p.tables.push_back(std::move(table));
  }

  p.offsets.push_back(0);
  for (int64_t g = 0; g < static_cast<int64_t>(lengths.size()); ++g) {
    for (int64_t k = 0; k < lengths[static_cast<size_t>(g)]; ++k) {
      int64_t id = rng.uniform_int(0, spec.rows - 1);
      const double u = std::uniform_real_distribution<double>(0.0, 1.0)(rng.gen());
      if (u < spec.bad_id_fraction) {
        // Half negative, half past the end, at varying distances.
        const int64_t dist = rng.uniform_int(0, 1000);
        id = rng.uniform_int(0, 1) ? -1 - dist : spec.rows + dist;
      } else if (spec.padding_idx >= 0 && u < spec.bad_id_fraction + spec.padding_fraction) {
        id = spec.padding_idx;
      }
      p.ids.push_back(id);
    }
    p.offsets.push_back(static_cast<int64_t>(p.ids.size()));
  }
  if (spec.weighted) {
    for (size_t k = 0; k < p.ids.size(); ++k) {
      p.weights.push_back(static_cast<float>(rng.value(spec.data)));
    }
  }

  p.indices = make_index_tensor(spec.index_dtype, p.ids);
  p.has_offsets = spec.fixed_bag_size == 0 && !none;
  if (p.has_offsets) p.offsets_t = make_index_tensor(spec.index_dtype, p.offsets);
  if (spec.weighted) {
    // The accumulation dtype: float64 with float64 tables (the same values).
    p.weights_t = make_f32_tensor(p.weights);
    if (same_dtype(spec.table_dtype, kF64)) {
      HostTensor w(kF64, {p.nnz()});
      for (int64_t k = 0; k < p.nnz(); ++k) w.set(k, p.weights[static_cast<size_t>(k)]);
      p.weights_t = std::move(w);
    }
  }

  const int64_t out_rows = none ? p.nnz() : p.bags_per_table;
  std::vector<int64_t> out_strides;
  if (spec.out_row_pad != 0) out_strides = {p.total_dim + spec.out_row_pad, 1};
  p.output = HostTensor(spec.out_dtype, {out_rows, p.total_dim}, out_strides);
  if (spec.with_argmax) p.argmax = HostTensor(spec.index_dtype, {out_rows, p.total_dim});
  if (spec.with_report) p.report = make_report();

  spembed_embedding_bag_options_init(&p.options);
  p.options.pooling = spec.pooling;
  p.options.padding_idx = spec.padding_idx;
  p.options.bounds_policy = spec.bounds_policy;
  p.options.fixed_bag_size = spec.fixed_bag_size;
  p.options.scale_grad_by_freq = spec.scale_grad_by_freq ? 1 : 0;

  p.expected = reference_forward(p);
  return p;
}

Expected reference_forward(const Problem& p) {
  const ProblemSpec& s = p.spec;
  const bool none = s.pooling == SPEMBED_POOLING_NONE;
  const DLDataType out_t = s.out_dtype;
  const double uo = unit_roundoff(out_t);
  const double sub = subnormal_half_ulp(out_t);
  const bool exact_data = s.data == DataKind::kInt;

  Expected e;
  e.rows = none ? p.nnz() : p.bags_per_table;
  e.cols = p.total_dim;
  const auto n_out = static_cast<size_t>(e.rows * e.cols);
  e.value.assign(n_out, 0.0);
  e.bound.assign(n_out, 0.0);
  if (s.pooling == SPEMBED_POOLING_MAX) e.argmax.assign(n_out, -1);

  for (int64_t k = 0; k < p.nnz(); ++k) {
    const int64_t id = p.ids[static_cast<size_t>(k)];
    const bool padding = s.padding_idx >= 0 && id == s.padding_idx;
    if ((id < 0 || id >= s.rows) && !padding) {
      if (e.bad_count == 0) {
        e.bad_position = k;
        e.bad_value = id;
      }
      ++e.bad_count;
    }
  }

  auto pooled = [&](int64_t id) {
    return !(s.padding_idx >= 0 && id == s.padding_idx) && id >= 0 && id < s.rows;
  };
  auto weight = [&](int64_t k) {
    return p.weights.empty() ? 1.0f : p.weights[static_cast<size_t>(k)];
  };

  std::vector<double> row;
  if (none) {
    const HostTensor& table = p.tables[0];
    for (int64_t k = 0; k < p.nnz(); ++k) {
      const int64_t id = p.ids[static_cast<size_t>(k)];
      if (!pooled(id)) continue;  // zeros
      table.read_row(id, &row);
      const float w = weight(k);
      for (int64_t c = 0; c < e.cols; ++c) {
        // One float32 product: exact to mimic, so NONE is always compared exactly.
        // float64 tables: one float64 product.
        const double prod = same_dtype(s.table_dtype, kF64)
                                ? w * row[static_cast<size_t>(c)]
                                : double{w * static_cast<float>(row[static_cast<size_t>(c)])};
        e.value[static_cast<size_t>(k * e.cols + c)] = round_to(out_t, prod);
      }
    }
    return e;
  }

  std::vector<double> sum, sum_abs, best;
  std::vector<int64_t> best_row;
  for (int64_t t = 0; t < p.num_tables; ++t) {
    const HostTensor& table = p.tables[static_cast<size_t>(t)];
    const int64_t dim = table.size(1);
    const int64_t col0 = p.col_offsets[static_cast<size_t>(t)];
    for (int64_t b = 0; b < p.bags_per_table; ++b) {
      const int64_t g = t * p.bags_per_table + b;
      const int64_t begin = p.offsets[static_cast<size_t>(g)];
      const int64_t end = p.offsets[static_cast<size_t>(g + 1)];
      sum.assign(static_cast<size_t>(dim), 0.0);
      sum_abs.assign(static_cast<size_t>(dim), 0.0);
      best.assign(static_cast<size_t>(dim), 0.0);
      best_row.assign(static_cast<size_t>(dim), -1);
      int64_t n = 0;
      for (int64_t k = begin; k < end; ++k) {
        const int64_t id = p.ids[static_cast<size_t>(k)];
        if (!pooled(id)) continue;
        const double w = weight(k);
        table.read_row(id, &row);
        for (int64_t c = 0; c < dim; ++c) {
          const double v = row[static_cast<size_t>(c)];
          const double term = w * v;  // exact: a product of two floats fits a double
          sum[static_cast<size_t>(c)] += term;
          sum_abs[static_cast<size_t>(c)] += std::fabs(term);
          if (best_row[static_cast<size_t>(c)] < 0 || v > best[static_cast<size_t>(c)]) {
            best[static_cast<size_t>(c)] = v;
            best_row[static_cast<size_t>(c)] = id;
          }
        }
        ++n;
      }
      for (int64_t c = 0; c < dim; ++c) {
        const size_t o = static_cast<size_t>(b * e.cols + col0 + c);
        const auto ci = static_cast<size_t>(c);
        if (n == 0) continue;  // an empty bag: zeros, argmax -1
        if (s.pooling == SPEMBED_POOLING_MAX) {
          e.value[o] = round_to(out_t, best[ci]);
          e.argmax[o] = best_row[ci];
          continue;
        }
        // Rounding error of the float32 accumulation: zero for integer-valued
        // data (every partial sum is representable), else gamma(terms) * sum|terms|,
        // one more rounding per term for the weight product.
        const double acc_err =
            exact_data ? 0.0 : gamma32(n + (p.weights.empty() ? 0 : 1)) * sum_abs[ci];
        if (s.pooling == SPEMBED_POOLING_SUM) {
          if (acc_err == 0.0) {
            e.value[o] = round_to(out_t, sum[ci]);
          } else {
            e.value[o] = sum[ci];
            e.bound[o] = acc_err + uo * (std::fabs(sum[ci]) + acc_err) + sub;
          }
        } else {  // MEAN: the division (or a reciprocal and a product) adds gamma(2)
          const double m = sum[ci] / static_cast<double>(n);
          const double em = acc_err / static_cast<double>(n);
          const double err = em + gamma32(2) * (std::fabs(m) + em);
          e.value[o] = m;
          e.bound[o] = err + uo * (std::fabs(m) + err) + sub;
        }
      }
    }
  }
  return e;
}

// ---- running -----------------------------------------------------------------

spembed_status_t ForwardCall::run(spembed_handle_t handle) const {
  if (batched) {
    return spembed_embedding_bag_batched_forward(handle, batch, indices, offsets, weights, options,
                                                 output, argmax, report, workspace, workspace_bytes,
                                                 stream);
  }
  return spembed_embedding_bag_forward(handle, table, indices, offsets, weights, options, output,
                                       argmax, report, workspace, workspace_bytes, stream);
}

namespace {

// The call on p's own host tensors (batch left null for the caller to set).
ForwardCall host_call(Problem& p) {
  ForwardCall c;
  c.batched = p.spec.batched;
  c.table = p.tables[0].dl();
  c.indices = p.indices.dl();
  c.offsets = p.has_offsets ? p.offsets_t.dl() : nullptr;
  c.weights = p.spec.weighted ? p.weights_t.dl() : nullptr;
  c.options = &p.options;
  c.output = p.output.dl();
  c.argmax = p.spec.with_argmax ? p.argmax.dl() : nullptr;
  c.report = p.spec.with_report ? p.report.dl() : nullptr;
  return c;
}

}  // namespace

TableBatch::TableBatch(spembed_handle_t handle, const std::vector<DLTensor>& tables) {
  status_ = spembed_table_batch_create(handle, tables.data(), static_cast<int64_t>(tables.size()),
                                       &batch_);
}

TableBatch::~TableBatch() {
  if (batch_ != nullptr) spembed_table_batch_destroy(batch_);
}

spembed_status_t run_forward_cpu(spembed_handle_t handle, Problem& p) {
  ForwardCall c = host_call(p);
  if (!p.spec.batched) return c.run(handle);
  std::vector<DLTensor> views;
  for (HostTensor& t : p.tables) views.push_back(*t.dl());
  TableBatch batch(handle, views);
  if (batch.create_status() != SPEMBED_STATUS_SUCCESS) {
    ADD_FAILURE() << "spembed_table_batch_create: " << spembed_status_string(batch.create_status())
                  << ": " << spembed_last_error();
    return batch.create_status();
  }
  c.batch = batch.get();
  return c.run(handle);
}

// ---- checking -----------------------------------------------------------------

namespace {

constexpr int kMaxReported = 8;

// Byte ranges of a row-major 2-D tensor's storage that hold none of its
// elements: the byte_offset prefix and each row's padding up to the next row.
std::vector<std::pair<size_t, size_t>> uncovered_ranges(const HostTensor& t, int64_t rows,
                                                        int64_t cols) {
  std::vector<std::pair<size_t, size_t>> ranges;
  if (rows == 0 || cols == 0) {
    ranges.emplace_back(0, t.storage_bytes());
    return ranges;
  }
  ranges.emplace_back(0, t.element_byte(0, 0));
  const size_t eb = dtype_bytes(t.dtype());
  for (int64_t r = 0; r + 1 < rows; ++r) {
    ranges.emplace_back(t.element_byte(r, cols - 1) + eb, t.element_byte(r + 1, 0));
  }
  return ranges;
}

}  // namespace

int64_t check_output(const std::string& what, const HostTensor& output,
                     const std::vector<uint8_t>& before, const Expected& e) {
  int64_t bad = 0;
  if (output.size(0) != e.rows || output.size(1) != e.cols || output.stride(1) != 1) {
    ADD_FAILURE() << what << ": output layout differs from the expected one";
    return 1;
  }
  std::vector<double> row;
  for (int64_t r = 0; r < e.rows; ++r) {
    output.read_row(r, &row);
    for (int64_t c = 0; c < e.cols; ++c) {
      const size_t o = static_cast<size_t>(r * e.cols + c);
      const double got = row[static_cast<size_t>(c)];
      const double want = e.value[o];
      const double bound = e.bound[o];
      const bool ok = bound == 0.0 ? got == want : std::fabs(got - want) <= bound;
      if (!ok && bad++ < kMaxReported) {
        ADD_FAILURE() << what << ": output[" << r << "][" << c << "] = " << got << ", expected "
                      << want
                      << (bound == 0.0 ? std::string(" exactly")
                                       : " within " + std::to_string(bound));
      }
    }
  }
  // Bytes outside the logical output (row padding, byte_offset prefix) must
  // still hold what was there before the call.
  const uint8_t* now = output.storage();
  int64_t stray = 0;
  for (const auto& [begin, end] : uncovered_ranges(output, e.rows, e.cols)) {
    for (size_t i = begin; i < end && i < before.size(); ++i) {
      if (now[i] != before[i] && stray++ < kMaxReported) {
        ADD_FAILURE() << what << ": byte " << i
                      << " of the output storage, outside the output's elements, was written";
      }
    }
  }
  return bad + stray;
}

int64_t check_argmax(const std::string& what, const HostTensor& argmax, const Expected& e) {
  int64_t bad = 0;
  for (int64_t r = 0; r < e.rows; ++r) {
    for (int64_t c = 0; c < e.cols; ++c) {
      const size_t o = static_cast<size_t>(r * e.cols + c);
      const int64_t v = argmax.get_int(r, c);
      if (v != e.argmax[o] && bad++ < kMaxReported) {
        ADD_FAILURE() << what << ": argmax[" << r << "][" << c << "] = " << v << ", expected "
                      << e.argmax[o];
      }
    }
  }
  return bad;
}

// ---- misc ---------------------------------------------------------------------

Handle::Handle() { status_ = spembed_create(&h_); }

Handle::~Handle() {
  if (h_ != nullptr) spembed_destroy(h_);
}

bool mentions_any(const std::string& message, const std::vector<std::string>& names) {
  return std::any_of(names.begin(), names.end(),
                     [&](const std::string& n) { return message.find(n) != std::string::npos; });
}

}  // namespace spembed_test
