#include "torch_glue.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdlib>
#include <mutex>
#include <string>

namespace spembed_torch {

DLDataType dl_dtype(at::ScalarType type, const char* name) {
  switch (type) {
    case at::kFloat:
      return {kDLFloat, 32, 1};
    case at::kDouble:
      return {kDLFloat, 64, 1};
    case at::kHalf:
      return {kDLFloat, 16, 1};
    case at::kBFloat16:
      return {kDLBfloat, 16, 1};
    case at::kInt:
      return {kDLInt, 32, 1};
    case at::kLong:
      return {kDLInt, 64, 1};
    default:
      C10_THROW_ERROR(ValueError,
                      std::string("spembed: ") + name + ": dtype " + c10::toString(type) +
                          " is not supported (float32, float16, bfloat16, float64, int32, int64)");
  }
}

View::View(const at::Tensor& t) {
  dl.data = t.data_ptr();  // the storage offset is already applied
  if (t.is_cuda()) {
    dl.device = {kDLCUDA, static_cast<int32_t>(t.get_device())};
  } else {
    TORCH_CHECK_VALUE(t.is_cpu(), "spembed: tensors must be on the CPU or a CUDA device, got ",
                      t.device());
    dl.device = {kDLCPU, 0};
  }
  dl.ndim = static_cast<int32_t>(t.dim());
  dl.dtype = dl_dtype(t.scalar_type(), "tensor");
  dl.shape = const_cast<int64_t*>(t.sizes().data());
  dl.strides = const_cast<int64_t*>(t.strides().data());
  dl.byte_offset = 0;
}

namespace {

// Handles are never destroyed: they own no device memory, and destroying
// them at process exit would race with CUDA's own teardown.
constexpr int kMaxDevices = 64;  // c10's DeviceIndex range is int8; 64 covers any node
std::mutex g_handles_mutex;
std::array<spembed_handle_t, kMaxDevices> g_cuda_handles{};
spembed_handle_t g_cpu_handle = nullptr;

#if SPEMBED_TORCH_OPENMP
// Built against torch's OpenMP runtime (python_bindings/CMakeLists.txt),
// spembed's parallel regions run on torch's intra-op threads: with a pool of
// its own, torch's OpenMP threads (which spin for a while after each torch
// op) and spembed's threads would contend for the same cores. Pieces are
// handed out through a counter, as spembed's own pool does, so uneven pieces
// still balance.
void run_on_torch_threads(int64_t pieces, spembed_parallel_task_t task, void* context, void*) {
  std::atomic<int64_t> next{0};
  const int64_t workers = std::min<int64_t>(pieces, at::get_num_threads());
  at::parallel_for(0, workers, 1, [&](int64_t, int64_t) {
    for (int64_t i = next.fetch_add(1, std::memory_order_relaxed); i < pieces;
         i = next.fetch_add(1, std::memory_order_relaxed)) {
      task(context, i);
    }
  });
}
#endif

// torch.set_num_threads governs spembed's CPU threads too: the count is
// passed on before each CPU call, and only when it changed (a relaxed load
// and a compare otherwise).
void sync_cpu_threads() {
#if SPEMBED_TORCH_OPENMP
  static const bool runner_installed = [] {
    check(spembed_set_cpu_parallel_runner(run_on_torch_threads, nullptr),
          "spembed_set_cpu_parallel_runner");
    return true;
  }();
  (void)runner_installed;
#endif
  static std::atomic<int> last{0};
  const int threads = at::get_num_threads();
  if (threads > 0 && last.load(std::memory_order_relaxed) != threads) {
    last.store(threads, std::memory_order_relaxed);
    check(spembed_set_num_threads(threads), "spembed_set_num_threads");
  }
}

}  // namespace

spembed_handle_t handle_for(const c10::Device& device) {
  if (!device.is_cuda()) sync_cpu_threads();
  std::lock_guard<std::mutex> lock(g_handles_mutex);
  if (!device.is_cuda()) {
    if (g_cpu_handle == nullptr) check(spembed_create(&g_cpu_handle), "spembed_create");
    return g_cpu_handle;
  }
  const int index = device.index();
  TORCH_CHECK(index >= 0 && index < kMaxDevices, "spembed: CUDA device index ", index,
              " out of range");
  spembed_handle_t& h = g_cuda_handles[static_cast<size_t>(index)];
  if (h == nullptr) {
    c10::DeviceGuard guard(device);  // a handle binds to the current device
    check(spembed_create(&h), "spembed_create");
    int bound = -1;
    check(spembed_handle_device(h, &bound), "spembed_handle_device");
    TORCH_CHECK(bound == index, "spembed: the library sees no usable CUDA device ", index,
                " (bound to ", bound, "); is the driver working?");
  }
  return h;
}

spembed_stream_t stream_for(const c10::Device& device) {
  if (!device.is_cuda()) return nullptr;
  c10::impl::VirtualGuardImpl impl(device.type());
  return static_cast<spembed_stream_t>(impl.getStream(device).native_handle());
}

at::Tensor workspace(const c10::Device& device, size_t bytes) {
  if (bytes == 0) return at::Tensor();
  return at::empty({static_cast<int64_t>(bytes)},
                   at::TensorOptions().dtype(at::kByte).device(device));
}

void check(spembed_status_t status, const char* op) {
  if (status == SPEMBED_STATUS_SUCCESS) return;
  const std::string message = std::string("spembed.") + op + ": " + spembed_status_string(status) +
                              ": " + spembed_last_error();
  switch (status) {
    case SPEMBED_STATUS_INVALID_ARGUMENT:
    case SPEMBED_STATUS_WORKSPACE_TOO_SMALL:
      C10_THROW_ERROR(ValueError, message);
    case SPEMBED_STATUS_INDEX_OUT_OF_RANGE:
      C10_THROW_ERROR(IndexError, message);
    case SPEMBED_STATUS_NOT_SUPPORTED:
      C10_THROW_ERROR(NotImplementedError, message);
    default:
      C10_THROW_ERROR(Error, message);
  }
}

at::Tensor new_report(const c10::Device& device) {
  return at::empty({SPEMBED_REPORT_SIZE}, at::TensorOptions().dtype(at::kLong).device(device));
}

void check_report(const at::Tensor& report, const char* op) {
  if (!report.defined() || !report.is_cuda()) return;
  const at::Tensor host = report.to(at::kCPU);  // waits for the op
  const int64_t* r = host.data_ptr<int64_t>();
  int64_t values[SPEMBED_REPORT_SIZE];
  for (int i = 0; i < SPEMBED_REPORT_SIZE; ++i) values[i] = r[i];
  check(spembed_report_status(values), op);
}

}  // namespace spembed_torch

namespace spembed_torch {

bool sync_checks() {
  static const bool enabled = [] {
    const char* v = std::getenv("SPEMBED_SYNC_CHECKS");
    return v == nullptr || std::string(v) != "0";
  }();
  return enabled;
}

}  // namespace spembed_torch
