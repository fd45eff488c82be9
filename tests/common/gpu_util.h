// CUDA side of the test helpers: whether a device is usable (skip or fail),
// device mirrors of HostTensor, and error checking that throws (GoogleTest
// reports an exception escaping a test as a failure of that test).
#pragma once

#include <cuda_runtime_api.h>

#include <string>
#include <vector>

#include "test_util.h"

namespace spembed_test {

// True when the CUDA runtime sees a device and can create a context on it.
// Otherwise false with the reason in *why. Probed once per process.
bool cuda_usable(std::string* why);
// SPEMBED_REQUIRE_GPU=1 in the environment.
bool gpu_required();
// SPEMBED_TEST_SHAPES=small in the environment: the suites keep every code
// path but use fewer and smaller cases (the emulation build runs the GPU
// suites on the CPU, under sanitizers, in CI).
bool small_shapes();

// Skips the current test when no device is usable, or fails it when
// SPEMBED_REQUIRE_GPU=1. Use in a test body or in SetUp(). The skip message is
// matched by ctest's SKIP_REGULAR_EXPRESSION (tests/CMakeLists.txt); the
// failure message deliberately is not.
#define SPEMBED_REQUIRE_CUDA_OR_SKIP()                                                      \
  do {                                                                                      \
    std::string spembed_why_;                                                               \
    if (!::spembed_test::cuda_usable(&spembed_why_)) {                                      \
      if (::spembed_test::gpu_required()) {                                                 \
        FAIL() << "SPEMBED_REQUIRE_GPU=1 is set but CUDA cannot be used: " << spembed_why_; \
      }                                                                                     \
      GTEST_SKIP() << "no usable CUDA device, skipping (set SPEMBED_REQUIRE_GPU=1 to fail " \
                      "instead): "                                                          \
                   << spembed_why_;                                                         \
    }                                                                                       \
  } while (0)

// Throws std::runtime_error naming the call when it does not return cudaSuccess.
void cuda_check(cudaError_t err, const char* what);
#define SPEMBED_CUDA_CHECK(call) ::spembed_test::cuda_check((call), #call)

// A device copy of a HostTensor: same shape, strides, byte_offset and storage
// bytes (so poisoned padding travels too), on the current device.
class DeviceTensor {
 public:
  DeviceTensor() = default;
  explicit DeviceTensor(const HostTensor& host);
  ~DeviceTensor();
  DeviceTensor(DeviceTensor&& o) noexcept;
  DeviceTensor& operator=(DeviceTensor&& o) noexcept;
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;

  DLTensor* dl() { return &view_; }
  // Copies the device storage into `host` (which must have the same layout).
  void download(HostTensor& host) const;
  void upload(const HostTensor& host);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
  std::vector<int64_t> shape_;
  std::vector<int64_t> strides_;
  DLTensor view_{};
};

// Device memory without a tensor (workspaces, huge tables).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);  // throws when cudaMalloc fails
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  void* get() const { return ptr_; }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

int current_device();

}  // namespace spembed_test
