// Checks of DLTensor arguments. Each returns SUCCESS or fails with a message
// that starts with the argument's name.
#pragma once

#include <cstdint>

#include "kernels/common/types.h"
#include "spembed/spembed.h"

namespace spembed::detail {

// The device every tensor of a call must share, and the handle that serves it.
spembed_status_t check_op_device(spembed_handle_t handle, const DLTensor& tensor, const char* name);
spembed_status_t check_same_device(const DLTensor& tensor, const char* name, DLDevice device);

// float32, float16 or bfloat16; float64 too when `allow_f64` (the embedding
// bag ops; attention does not take it).
spembed_status_t check_float_dtype(const DLTensor& tensor, const char* name, DType* dtype,
                                   bool allow_f64 = false);
spembed_status_t check_index_dtype(const DLTensor& tensor, const char* name, IndexType* type);
spembed_status_t check_dtype_is(const DLTensor& tensor, const char* name, DLDataType expected,
                                const char* expected_name);

// A contiguous 1-D tensor; `length` < 0 accepts any length.
spembed_status_t check_vector(const DLTensor& tensor, const char* name, int64_t length);

// A 2-D tensor with unit inner stride and row stride >= cols. `rows` < 0
// accepts any number of rows. Returns the row stride in elements.
spembed_status_t check_matrix(const DLTensor& tensor, const char* name, int64_t rows, int64_t cols,
                              int64_t* row_stride);

// First element (data + byte_offset); null data is accepted only when empty.
spembed_status_t check_data(const DLTensor& tensor, const char* name, const void** data);

inline void* data_of(const DLTensor& t) { return static_cast<char*>(t.data) + t.byte_offset; }

const char* device_name(DLDeviceType type);

}  // namespace spembed::detail
