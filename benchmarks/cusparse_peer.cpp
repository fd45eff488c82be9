#include "cusparse_peer.h"

#include <cuda_runtime_api.h>

namespace spembed_bench {
namespace {

const float kOne = 1.0f;
const float kZero = 0.0f;

// The CSR algorithms to try, best-documented for row-major operands first.
constexpr cusparseSpMMAlg_t kCandidates[] = {CUSPARSE_SPMM_CSR_ALG2, CUSPARSE_SPMM_CSR_ALG1,
                                             CUSPARSE_SPMM_CSR_ALG3, CUSPARSE_SPMM_ALG_DEFAULT};

}  // namespace

CusparseSpmm::CusparseSpmm(cusparseHandle_t handle, Elem elem, std::vector<SpmmPart> parts)
    : handle_(handle), value_type_(elem == Elem::kF32 ? CUDA_R_32F : CUDA_R_16F) {
  for (SpmmPart& p : parts) {
    cusparseSpMatDescr_t a = nullptr;
    cusparseDnMatDescr_t b = nullptr;
    cusparseDnMatDescr_t c = nullptr;
    cusparseStatus_t st = cusparseCreateCsr(
        &a, p.bags, p.rows, p.nnz, const_cast<int64_t*>(p.row_ptr), const_cast<int64_t*>(p.col_ind),
        const_cast<void*>(p.values), CUSPARSE_INDEX_64I, CUSPARSE_INDEX_64I,
        CUSPARSE_INDEX_BASE_ZERO, value_type_);
    if (st == CUSPARSE_STATUS_SUCCESS) {
      a_.push_back(a);
      st = cusparseCreateDnMat(&b, p.rows, p.dim, p.dim, const_cast<void*>(p.table), value_type_,
                               CUSPARSE_ORDER_ROW);
    }
    if (st == CUSPARSE_STATUS_SUCCESS) {
      b_.push_back(b);
      st = cusparseCreateDnMat(&c, p.bags, p.dim, p.ld_out, p.out, value_type_, CUSPARSE_ORDER_ROW);
    }
    if (st == CUSPARSE_STATUS_SUCCESS) c_.push_back(c);
    if (st != CUSPARSE_STATUS_SUCCESS) {
      error_ = std::string("descriptor creation failed: ") + cusparseGetErrorString(st);
      return;
    }
  }
  for (cusparseSpMMAlg_t alg : kCandidates) {
    bool ok = true;
    for (size_t i = 0; i < a_.size() && ok; ++i) {
      size_t bytes = 0;
      ok = cusparseSpMM_bufferSize(handle_, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                   CUSPARSE_OPERATION_NON_TRANSPOSE, &kOne, a_[i], b_[i], &kZero,
                                   c_[i], CUDA_R_32F, alg, &bytes) == CUSPARSE_STATUS_SUCCESS;
    }
    if (ok) algorithms_.push_back(alg);
  }
  if (algorithms_.empty()) {
    error_ = elem == Elem::kF32
                 ? "cusparseSpMM accepts no CSR algorithm for these operands"
                 : "cusparseSpMM accepts no CSR algorithm for fp16 A/B/C with fp32 compute";
  }
}

CusparseSpmm::~CusparseSpmm() {
  release_buffers();
  for (auto d : a_) cusparseDestroySpMat(d);
  for (auto d : b_) cusparseDestroyDnMat(d);
  for (auto d : c_) cusparseDestroyDnMat(d);
}

void CusparseSpmm::release_buffers() {
  for (void* p : buffers_) cudaFree(p);
  buffers_.clear();
}

bool CusparseSpmm::select(cusparseSpMMAlg_t alg) {
  release_buffers();
  selected_ = alg;
  for (size_t i = 0; i < a_.size(); ++i) {
    size_t bytes = 0;
    if (cusparseSpMM_bufferSize(handle_, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                CUSPARSE_OPERATION_NON_TRANSPOSE, &kOne, a_[i], b_[i], &kZero,
                                c_[i], CUDA_R_32F, alg, &bytes) != CUSPARSE_STATUS_SUCCESS) {
      return false;
    }
    void* buffer = nullptr;
    if (bytes > 0 && cudaMalloc(&buffer, bytes) != cudaSuccess) return false;
    buffers_.push_back(buffer);
    if (cusparseSpMM_preprocess(handle_, CUSPARSE_OPERATION_NON_TRANSPOSE,
                                CUSPARSE_OPERATION_NON_TRANSPOSE, &kOne, a_[i], b_[i], &kZero,
                                c_[i], CUDA_R_32F, alg, buffer) != CUSPARSE_STATUS_SUCCESS) {
      return false;
    }
  }
  return true;
}

cusparseStatus_t CusparseSpmm::run() {
  for (size_t i = 0; i < a_.size(); ++i) {
    const cusparseStatus_t st =
        cusparseSpMM(handle_, CUSPARSE_OPERATION_NON_TRANSPOSE, CUSPARSE_OPERATION_NON_TRANSPOSE,
                     &kOne, a_[i], b_[i], &kZero, c_[i], CUDA_R_32F, selected_, buffers_[i]);
    if (st != CUSPARSE_STATUS_SUCCESS) return st;
  }
  return CUSPARSE_STATUS_SUCCESS;
}

const char* CusparseSpmm::algorithm_name(cusparseSpMMAlg_t alg) {
  switch (alg) {
    case CUSPARSE_SPMM_CSR_ALG1:
      return "CSR_ALG1";
    case CUSPARSE_SPMM_CSR_ALG2:
      return "CSR_ALG2";
    case CUSPARSE_SPMM_CSR_ALG3:
      return "CSR_ALG3";
    case CUSPARSE_SPMM_ALG_DEFAULT:
      return "ALG_DEFAULT";
    default:
      return "other";
  }
}

}  // namespace spembed_bench
