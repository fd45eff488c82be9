// The stock path for pooled lookups: bags as a CSR matrix A [bags, rows] (row
// pointers = the bag offsets, column indices = the ids, values 1 for SUM or
// 1/len for MEAN) times the table B [rows, dim] (row-major), written into
// C [bags, dim] (row-major, leading dimension ld_out) by cusparseSpMM with
// fp32 compute. A table-batched lookup is one SpMM per table, each writing its
// column slice of the shared output.
#pragma once

#include <cusparse.h>

#include <cstdint>
#include <string>
#include <vector>

#include "baseline_kernels.h"

namespace spembed_bench {

struct SpmmPart {
  int64_t bags;
  int64_t rows;
  int64_t nnz;
  const int64_t* row_ptr;  // [bags + 1], starting at 0
  const int64_t* col_ind;  // [nnz]
  const void* values;      // [nnz] of the table's type
  const void* table;       // [rows, dim], row stride dim
  int64_t dim;
  void* out;  // [bags, dim] with leading dimension ld_out
  int64_t ld_out;
};

class CusparseSpmm {
 public:
  CusparseSpmm(cusparseHandle_t handle, Elem elem, std::vector<SpmmPart> parts);
  ~CusparseSpmm();
  CusparseSpmm(const CusparseSpmm&) = delete;
  CusparseSpmm& operator=(const CusparseSpmm&) = delete;

  // Why this cuSPARSE cannot serve these operands, or "" if it can.
  const std::string& error() const { return error_; }
  // The SpMM algorithms (CSR ones and the default) it accepts for them.
  const std::vector<cusparseSpMMAlg_t>& algorithms() const { return algorithms_; }

  // Allocates the workspace of `alg` (outside any timed region) and runs
  // cusparseSpMM_preprocess, which the docs recommend for a sparsity pattern
  // that is multiplied repeatedly. Returns false on a cuSPARSE/CUDA error.
  bool select(cusparseSpMMAlg_t alg);
  // One SpMM per part on the handle's stream with the selected algorithm.
  cusparseStatus_t run();

  static const char* algorithm_name(cusparseSpMMAlg_t alg);

 private:
  void release_buffers();

  cusparseHandle_t handle_;
  std::string error_;
  std::vector<cusparseSpMatDescr_t> a_;
  std::vector<cusparseDnMatDescr_t> b_;
  std::vector<cusparseDnMatDescr_t> c_;
  std::vector<void*> buffers_;
  std::vector<cusparseSpMMAlg_t> algorithms_;
  cusparseSpMMAlg_t selected_ = CUSPARSE_SPMM_ALG_DEFAULT;
  cudaDataType value_type_;
};

}  // namespace spembed_bench
