#include "gpu_util.h"

#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <utility>

namespace spembed_test {

namespace {

struct Probe {
  bool usable = false;
  std::string why;
};

Probe probe() {
  Probe p;
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    p.why = std::string("cudaGetDeviceCount: ") + cudaGetErrorName(err) + ": " +
            cudaGetErrorString(err);
    return p;
  }
  if (count == 0) {
    p.why = "cudaGetDeviceCount reports 0 devices";
    return p;
  }
  // Creating the context is where a broken driver or a busy/exclusive device shows.
  const cudaError_t ctx = cudaFree(nullptr);
  if (ctx != cudaSuccess) {
    p.why = std::string("creating a context failed: ") + cudaGetErrorName(ctx) + ": " +
            cudaGetErrorString(ctx);
    return p;
  }
  p.usable = true;
  return p;
}

}  // namespace

bool cuda_usable(std::string* why) {
  static const Probe p = probe();
  if (why != nullptr) *why = p.why;
  return p.usable;
}

bool small_shapes() {
  const char* v = std::getenv("SPEMBED_TEST_SHAPES");
  return v != nullptr && std::strcmp(v, "small") == 0;
}

bool gpu_required() {
  const char* v = std::getenv("SPEMBED_REQUIRE_GPU");
  return v != nullptr && std::strcmp(v, "1") == 0;
}

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + " failed: " + cudaGetErrorName(err) + ": " +
                             cudaGetErrorString(err));
  }
}

int current_device() {
  int d = 0;
  SPEMBED_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

DeviceTensor::DeviceTensor(const HostTensor& host)
    : bytes_(host.storage_bytes()), shape_(host.shape()) {
  // At least one byte so the pointer is never null, as on the host.
  SPEMBED_CUDA_CHECK(cudaMalloc(&ptr_, bytes_ == 0 ? 1 : bytes_));
  upload(host);
  const DLTensor* h = host.dl();
  view_ = *h;
  view_.data = ptr_;
  view_.device = DLDevice{kDLCUDA, current_device()};
  view_.shape = shape_.data();
  if (h->strides != nullptr) {
    strides_.assign(h->strides, h->strides + h->ndim);
    view_.strides = strides_.data();
  }
}

DeviceTensor::~DeviceTensor() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

DeviceTensor::DeviceTensor(DeviceTensor&& o) noexcept { *this = std::move(o); }

DeviceTensor& DeviceTensor::operator=(DeviceTensor&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = o.bytes_;
    shape_ = std::move(o.shape_);
    strides_ = std::move(o.strides_);
    view_ = o.view_;
    view_.shape = shape_.empty() ? nullptr : shape_.data();
    view_.strides = strides_.empty() ? nullptr : strides_.data();
  }
  return *this;
}

void DeviceTensor::download(HostTensor& host) const {
  if (host.storage_bytes() != bytes_) throw std::invalid_argument("download: layout differs");
  SPEMBED_CUDA_CHECK(cudaDeviceSynchronize());
  SPEMBED_CUDA_CHECK(cudaMemcpy(host.storage(), ptr_, bytes_, cudaMemcpyDeviceToHost));
}

void DeviceTensor::upload(const HostTensor& host) {
  if (host.storage_bytes() != bytes_) throw std::invalid_argument("upload: layout differs");
  SPEMBED_CUDA_CHECK(cudaMemcpy(ptr_, host.storage(), bytes_, cudaMemcpyHostToDevice));
}

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  SPEMBED_CUDA_CHECK(cudaMalloc(&ptr_, bytes == 0 ? 1 : bytes));
}

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

}  // namespace spembed_test
