// Test helpers of spembed_embedding_renorm: a random problem and an
// independent float64 reference written from the header's semantics.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <set>
#include <vector>

#include "test_util.h"

namespace spembed_test {

struct RenormProblem {
  HostTensor table;    // [rows, dim], row stride dim + pad
  HostTensor indices;  // [nnz]
  double max_norm = 1.0;
  double norm_type = 2.0;
};

// rows x dim of `dtype` with values in about [-2, 2] (norms around the
// max_norm the tests use), ids with repeats (a hot row and rows named twice),
// every id valid unless bad_ids is set.
inline RenormProblem make_renorm_problem(DLDataType dtype, DLDataType index_dtype, int64_t rows,
                                         int64_t dim, int64_t nnz, uint64_t seed,
                                         int64_t bad_ids = 0) {
  Rng rng(seed);
  RenormProblem p;
  p.table = HostTensor(dtype, {rows, dim}, {dim + 3, 1});
  fill_random(p.table, rng, DataKind::kReal);
  std::vector<int64_t> ids;
  for (int64_t i = 0; i < nnz; ++i) {
    ids.push_back(i % 3 == 0 ? 1 : rng.uniform_int(0, rows - 1));  // row 1 is hot
  }
  for (int64_t b = 0; b < bad_ids && nnz > 0; ++b) {
    ids[static_cast<size_t>(rng.uniform_int(0, nnz - 1))] = b % 2 == 0 ? rows + b : -1 - b;
  }
  p.indices = make_index_tensor(index_dtype, ids);
  return p;
}

// Unit roundoff of a table dtype, and its smallest (subnormal) spacing.
inline double unit_roundoff(DLDataType t) {
  return t.bits == 64 ? 0x1p-53 : t.bits == 32 ? 0x1p-24 : t.code == kDLBfloat ? 0x1p-8 : 0x1p-11;
}
inline double subnormal_spacing(DLDataType t) {
  return t.bits == 64          ? 0x1p-1074
         : t.bits == 32        ? 0x1p-149
         : t.code == kDLBfloat ? 0x1p-133
                               : 0x1p-24;
}

// The median of the rows' norm_type-norms: as max_norm, about half the rows
// exceed it.
inline double median_row_norm(const HostTensor& table, double norm_type) {
  std::vector<double> norms;
  for (int64_t r = 0; r < table.size(0); ++r) {
    double sum = 0.0;
    for (int64_t c = 0; c < table.size(1); ++c)
      sum += std::pow(std::fabs(table.get(r, c)), norm_type);
    norms.push_back(std::pow(sum, 1.0 / norm_type));
  }
  std::nth_element(norms.begin(), norms.begin() + static_cast<long>(norms.size() / 2), norms.end());
  return norms[norms.size() / 2];
}

// The table after the renormalisation, in float64, with the bound per element
// (float32 sums of dim terms, a square root or power, a division, a product,
// the table dtype's rounding).
struct RenormExpected {
  std::vector<double> values;  // [rows * dim]
  std::vector<double> bounds;
  std::vector<bool> named;  // per row: some valid id names it
};

// unit_roundoff: of the table dtype; absolute_spacing: its smallest spacing
// (subnormal results round to a multiple of it: fp16's 2^-24).
inline RenormExpected reference_renorm(const RenormProblem& p, double unit_roundoff,
                                       double absolute_spacing) {
  const int64_t rows = p.table.size(0), dim = p.table.size(1);
  RenormExpected e;
  e.named.assign(static_cast<size_t>(rows), false);
  for (int64_t i = 0; i < p.indices.size(0); ++i) {
    const int64_t id = p.indices.get_int(i);
    if (id >= 0 && id < rows) e.named[static_cast<size_t>(id)] = true;
  }
  for (int64_t r = 0; r < rows; ++r) {
    double sum = 0.0, abs_max = 0.0;
    for (int64_t c = 0; c < dim; ++c) {
      const double x = std::fabs(p.table.get(r, c));
      sum += std::pow(x, p.norm_type);
      abs_max = std::max(abs_max, x);
    }
    const double norm = std::pow(sum, 1.0 / p.norm_type);
    const bool scaled = e.named[static_cast<size_t>(r)] && norm > p.max_norm;
    const double scale = scaled ? p.max_norm / (norm + 1e-7) : 1.0;
    // float32 error of the norm and scale: about (dim + 8) u relative, on
    // values near 1: a few 1e-6. A norm within that of max_norm may go
    // either way: such rows are allowed both.
    const double rel = (static_cast<double>(dim) + 8.0) * 1.2e-7 * (p.norm_type == 2.0 ? 1 : 4);
    const bool borderline =
        e.named[static_cast<size_t>(r)] && std::fabs(norm - p.max_norm) <= rel * p.max_norm;
    for (int64_t c = 0; c < dim; ++c) {
      const double x = p.table.get(r, c);
      e.values.push_back(x * scale);
      // Rows left alone are bitwise unchanged (bound 0).
      e.bounds.push_back(borderline ? std::fabs(x) * (1.0 - scale + 2.0 * rel + 2.0 * unit_roundoff)
                         : scaled
                             ? std::fabs(x * scale) * (rel + 2.0 * unit_roundoff) + absolute_spacing
                             : 0.0);
    }
  }
  return e;
}

}  // namespace spembed_test
