#include "host/common/tensor_checks.h"

#include <cinttypes>

#include "host/common/errors.h"
#include "host/common/handle.h"

namespace spembed::detail {

const char* device_name(DLDeviceType type) {
  switch (type) {
    case kDLCPU:
      return "cpu";
    case kDLCUDA:
      return "cuda";
    case kDLCUDAHost:
      return "cuda_host";
    case kDLCUDAManaged:
      return "cuda_managed";
    default:
      return "unsupported device";
  }
}

spembed_status_t check_op_device(spembed_handle_t handle, const DLTensor& tensor,
                                 const char* name) {
  const DLDevice d = tensor.device;
  if (d.device_type == kDLCPU) return SPEMBED_STATUS_SUCCESS;
  if (d.device_type != kDLCUDA) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: device type %d (%s) is not supported; use kDLCPU or kDLCUDA", name,
                static_cast<int>(d.device_type), device_name(d.device_type));
  }
  if (handle->cuda_device < 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: is on cuda:%d but the handle found no usable CUDA device", name, d.device_id);
  }
  if (d.device_id != handle->cuda_device) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: is on cuda:%d but the handle was created for cuda:%d", name, d.device_id,
                handle->cuda_device);
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_same_device(const DLTensor& tensor, const char* name, DLDevice device) {
  if (tensor.device.device_type != device.device_type ||
      tensor.device.device_id != device.device_id) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: is on %s:%d but the op runs on %s:%d", name,
                device_name(tensor.device.device_type), tensor.device.device_id,
                device_name(device.device_type), device.device_id);
  }
  return SPEMBED_STATUS_SUCCESS;
}

namespace {
bool is(DLDataType t, uint8_t code, uint8_t bits) {
  return t.code == code && t.bits == bits && t.lanes == 1;
}
}  // namespace

spembed_status_t check_float_dtype(const DLTensor& tensor, const char* name, DType* dtype,
                                   bool allow_f64) {
  const DLDataType t = tensor.dtype;
  if (is(t, kDLFloat, 32)) {
    *dtype = DType::kF32;
  } else if (is(t, kDLFloat, 16)) {
    *dtype = DType::kF16;
  } else if (is(t, kDLBfloat, 16)) {
    *dtype = DType::kBF16;
  } else if (allow_f64 && is(t, kDLFloat, 64)) {
    *dtype = DType::kF64;
  } else {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: dtype (code %d, %d bits, %d lanes) is not supported; use float32, float16%s",
                name, t.code, t.bits, t.lanes,
                allow_f64 ? ", bfloat16 or float64" : " or bfloat16");
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_index_dtype(const DLTensor& tensor, const char* name, IndexType* type) {
  const DLDataType t = tensor.dtype;
  if (is(t, kDLInt, 32)) {
    *type = IndexType::kI32;
  } else if (is(t, kDLInt, 64)) {
    *type = IndexType::kI64;
  } else {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: dtype (code %d, %d bits, %d lanes) is not supported; use int32 or int64", name,
                t.code, t.bits, t.lanes);
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_dtype_is(const DLTensor& tensor, const char* name, DLDataType expected,
                                const char* expected_name) {
  const DLDataType t = tensor.dtype;
  if (t.code != expected.code || t.bits != expected.bits || t.lanes != expected.lanes) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: dtype (code %d, %d bits, %d lanes) must be %s", name, t.code, t.bits, t.lanes,
                expected_name);
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_vector(const DLTensor& tensor, const char* name, int64_t length) {
  if (tensor.ndim != 1 || tensor.shape == nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must be 1-D, got ndim=%d", name, tensor.ndim);
  }
  if (tensor.shape[0] < 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: negative length %" PRId64, name,
                tensor.shape[0]);
  }
  if (length >= 0 && tensor.shape[0] != length) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: length is %" PRId64 ", expected %" PRId64,
                name, tensor.shape[0], length);
  }
  if (tensor.strides != nullptr && tensor.shape[0] > 1 && tensor.strides[0] != 1) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must be contiguous, got stride %" PRId64,
                name, tensor.strides[0]);
  }
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_matrix(const DLTensor& tensor, const char* name, int64_t rows, int64_t cols,
                              int64_t* row_stride) {
  if (tensor.ndim != 2 || tensor.shape == nullptr) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: must be 2-D, got ndim=%d", name, tensor.ndim);
  }
  const int64_t r = tensor.shape[0];
  const int64_t c = tensor.shape[1];
  if (r < 0 || c < 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: negative shape [%" PRId64 ", %" PRId64 "]",
                name, r, c);
  }
  if ((rows >= 0 && r != rows) || c != cols) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                "%s: shape is [%" PRId64 ", %" PRId64 "], expected [%" PRId64 ", %" PRId64 "]",
                name, r, c, rows >= 0 ? rows : r, cols);
  }
  int64_t stride = c;
  if (tensor.strides != nullptr) {
    if (c > 1 && tensor.strides[1] != 1) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                  "%s: inner stride is %" PRId64 "; rows must be contiguous (stride 1)", name,
                  tensor.strides[1]);
    }
    if (r > 1) {
      stride = tensor.strides[0];
      if (stride < c) {
        return fail(SPEMBED_STATUS_INVALID_ARGUMENT,
                    "%s: row stride %" PRId64 " is smaller than the row length %" PRId64, name,
                    stride, c);
      }
    }
  }
  *row_stride = stride;
  return SPEMBED_STATUS_SUCCESS;
}

spembed_status_t check_data(const DLTensor& tensor, const char* name, const void** data) {
  int64_t elements = 1;
  for (int i = 0; i < tensor.ndim; ++i) elements *= tensor.shape[i];
  if (tensor.data == nullptr && elements != 0) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "%s: data is NULL", name);
  }
  *data = tensor.data == nullptr ? nullptr : data_of(tensor);
  return SPEMBED_STATUS_SUCCESS;
}

}  // namespace spembed::detail
