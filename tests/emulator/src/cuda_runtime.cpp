// The CUDA runtime API of the emulation build, linked in place of cudart:
// one device with an H200's limits, device memory on the host heap (exact
// sizes, filled with kPoisonByte), streams that run everything in order at
// once, events, and graphs recorded by stream capture and replayed.
//
// Errors follow the real runtime: a bad argument or launch configuration is
// returned once (and by the next cudaGetLastError); a fault inside a kernel
// is sticky: every later call returns it, until cudaDeviceReset (which on
// hardware would need a new process; the emulator's tests use it to go on).
#include <cuda_runtime_api.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "scheduler.h"
#include "spembed_emulator/runtime.h"

namespace spembed::emu {
namespace {

constexpr int kSmCount = 132;
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kDefaultMaxDynamicSmem = 48 * 1024;
constexpr int kOptInMaxDynamicSmem = 227 * 1024;
constexpr int kSmemPerSm = 228 * 1024;
constexpr size_t kDeviceMemoryBytes = size_t{141} << 30;

struct Graph {
  std::vector<std::function<void()>> nodes;
};

struct Stream {
  Graph* capture = nullptr;  // while capturing
};

struct Event {
  std::chrono::steady_clock::time_point when{};
  bool recorded = false;
};

struct Runtime {
  std::recursive_mutex mutex;
  std::map<const char*, size_t> allocations;  // base -> bytes
  std::unordered_map<const void*, int> max_dynamic_smem;
  std::unordered_map<const void*, long long> launches_by_kernel;
  std::unordered_map<const void*, std::string> kernel_names;
  cudaError_t sticky = cudaSuccess;
  std::string last_fault;
  long long launches = 0;
  long long faults = 0;
  Stream default_stream;
  int device = 0;
  std::atomic<int> compute_capability{90};
};

Runtime& rt() {
  static Runtime* r = new Runtime;  // never destroyed: used by static destructors
  return *r;
}

thread_local cudaError_t t_last_error = cudaSuccess;

cudaError_t fail(cudaError_t e) {
  if (e != cudaSuccess) t_last_error = e;
  return e;
}

// The sticky error, or success.
cudaError_t sticky() { return rt().sticky; }

Stream& stream_of(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread
             ? rt().default_stream
             : *reinterpret_cast<Stream*>(s);
}

// Runs `work` now, or records it when the stream is capturing.
cudaError_t in_stream_order(cudaStream_t s, std::function<void()> work) {
  if (cudaError_t e = sticky()) return fail(e);
  Stream& st = stream_of(s);
  if (st.capture != nullptr) {
    st.capture->nodes.push_back(std::move(work));
  } else {
    work();
  }
  return sticky() != cudaSuccess ? fail(sticky()) : cudaSuccess;
}

// Whether [p, p + bytes) lies inside one device allocation.
bool is_device_range(const void* p, size_t bytes) {
  Runtime& r = rt();
  std::lock_guard<std::recursive_mutex> lock(r.mutex);
  const auto* c = static_cast<const char*>(p);
  auto it = r.allocations.upper_bound(c);
  if (it == r.allocations.begin()) return false;
  --it;
  return c >= it->first && c + bytes <= it->first + it->second;
}

bool copy_sides_ok(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (bytes == 0) return true;
  const bool dst_device = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_device = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (dst_device && !is_device_range(dst, bytes)) return false;
  if (src_device && !is_device_range(src, bytes)) return false;
  return kind >= cudaMemcpyHostToHost && kind <= cudaMemcpyDefault;
}

}  // namespace

void launch(const void* kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
            cudaStream_t stream, std::function<void()> thread_body) {
  const unsigned long long threads =
      static_cast<unsigned long long>(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || grid.x == 0 || grid.y == 0 || grid.z == 0 ||
      threads > kMaxThreadsPerBlock || block.z > 64 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 2147483647u) {
    fail(cudaErrorInvalidConfiguration);
    return;
  }
  int limit = kDefaultMaxDynamicSmem;
  {
    Runtime& r = rt();
    std::lock_guard<std::recursive_mutex> lock(r.mutex);
    auto it = r.max_dynamic_smem.find(kernel);
    if (it != r.max_dynamic_smem.end()) limit = it->second;
  }
  if (dynamic_smem_bytes > static_cast<size_t>(limit)) {
    fail(cudaErrorInvalidValue);
    return;
  }
  auto run = [kernel, grid, block, dynamic_smem_bytes, body = std::move(thread_body)] {
    GridLaunch g;
    g.kernel = kernel;
    g.grid = grid;
    g.block = block;
    g.dynamic_smem_bytes = dynamic_smem_bytes;
    g.thread_body = body;
    const std::string fault = run_grid(g);
    Runtime& r = rt();
    std::lock_guard<std::recursive_mutex> lock(r.mutex);
    ++r.launches;
    ++r.launches_by_kernel[kernel];
    if (!fault.empty()) {
      std::fprintf(stderr, "spembed emulator: kernel fault: %s\n", fault.c_str());
      ++r.faults;
      r.last_fault = fault;
      r.sticky = cudaErrorLaunchFailure;
    }
  };
  in_stream_order(stream, std::move(run));
}

cudaError_t enqueue_host_work(cudaStream_t stream, const char*, std::function<void()> work) {
  return in_stream_order(stream, std::move(work));
}

std::string last_fault() {
  std::lock_guard<std::recursive_mutex> lock(rt().mutex);
  return rt().last_fault;
}
long long launches_run() { return rt().launches; }

long long launches_of(const std::string& name_part) {
  Runtime& r = rt();
  std::lock_guard<std::recursive_mutex> lock(r.mutex);
  long long n = 0;
  for (const auto& [kernel, count] : r.launches_by_kernel) {
    auto it = r.kernel_names.find(kernel);
    if (it == r.kernel_names.end()) it = r.kernel_names.emplace(kernel, describe_code(kernel)).first;
    if (it->second.find(name_part) != std::string::npos) n += count;
  }
  return n;
}
long long faults_found() { return rt().faults; }

int set_compute_capability(int capability) { return rt().compute_capability.exchange(capability); }

}  // namespace spembed::emu

using spembed::emu::fail;
using spembed::emu::rt;
using spembed::emu::sticky;

extern "C" {

// ---- Errors -------------------------------------------------------------------

cudaError_t cudaGetLastError(void) {
  if (sticky() != cudaSuccess) return sticky();
  const cudaError_t e = spembed::emu::t_last_error;
  spembed::emu::t_last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError(void) {
  return sticky() != cudaSuccess ? sticky() : spembed::emu::t_last_error;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    case cudaErrorNotSupported: return "cudaErrorNotSupported";
    default: return "cudaErrorUnknown";
  }
}

const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorLaunchFailure:
      return "unspecified launch failure (emulator: kernel fault, see stderr)";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    default: return "unknown error (emulator)";
  }
}

// ---- Device -------------------------------------------------------------------

cudaError_t cudaGetDeviceCount(int* count) {
  if (count == nullptr) return fail(cudaErrorInvalidValue);
  *count = 1;
  return cudaSuccess;
}

cudaError_t cudaGetDevice(int* device) {
  if (device == nullptr) return fail(cudaErrorInvalidValue);
  *device = rt().device;
  return cudaSuccess;
}

cudaError_t cudaSetDevice(int device) {
  if (device != 0) return fail(cudaErrorInvalidDevice);
  return sticky() != cudaSuccess ? sticky() : cudaSuccess;
}

cudaError_t cudaDeviceSynchronize(void) { return sticky(); }

cudaError_t cudaDeviceReset(void) {
  std::lock_guard<std::recursive_mutex> lock(rt().mutex);
  rt().sticky = cudaSuccess;
  rt().last_fault.clear();
  spembed::emu::t_last_error = cudaSuccess;
  return cudaSuccess;
}

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (value == nullptr) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  using namespace spembed::emu;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *value = kSmCount; break;
    case cudaDevAttrMaxThreadsPerBlock: *value = kMaxThreadsPerBlock; break;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = kDefaultMaxDynamicSmem; break;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = kOptInMaxDynamicSmem; break;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = kSmemPerSm; break;
    case cudaDevAttrComputeCapabilityMajor: *value = rt().compute_capability / 10; break;
    case cudaDevAttrComputeCapabilityMinor: *value = rt().compute_capability % 10; break;
    case cudaDevAttrWarpSize: *value = 32; break;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = 2048; break;
    case cudaDevAttrMaxRegistersPerBlock: *value = 65536; break;
    case cudaDevAttrMaxRegistersPerMultiprocessor: *value = 65536; break;
    case cudaDevAttrMaxGridDimX: *value = 2147483647; break;
    case cudaDevAttrMaxGridDimY: *value = 65535; break;
    case cudaDevAttrMaxGridDimZ: *value = 65535; break;
    case cudaDevAttrMaxBlockDimX: *value = 1024; break;
    case cudaDevAttrMaxBlockDimY: *value = 1024; break;
    case cudaDevAttrMaxBlockDimZ: *value = 64; break;
    case cudaDevAttrL2CacheSize: *value = 50 * 1024 * 1024; break;
    case cudaDevAttrClockRate: *value = 1980000; break;
    case cudaDevAttrMemoryClockRate: *value = 3201000; break;
    case cudaDevAttrGlobalMemoryBusWidth: *value = 6144; break;
    default: return fail(cudaErrorInvalidValue);
  }
  return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (prop == nullptr) return fail(cudaErrorInvalidValue);
  if (device != 0) return fail(cudaErrorInvalidDevice);
  using namespace spembed::emu;
  std::memset(prop, 0, sizeof(*prop));
  std::snprintf(prop->name, sizeof(prop->name), "spembed emulator (H200 limits)");
  prop->totalGlobalMem = kDeviceMemoryBytes;
  prop->sharedMemPerBlock = kDefaultMaxDynamicSmem;
  prop->sharedMemPerBlockOptin = kOptInMaxDynamicSmem;
  prop->sharedMemPerMultiprocessor = kSmemPerSm;
  prop->regsPerBlock = 65536;
  prop->warpSize = 32;
  prop->maxThreadsPerBlock = kMaxThreadsPerBlock;
  prop->maxThreadsDim[0] = 1024;
  prop->maxThreadsDim[1] = 1024;
  prop->maxThreadsDim[2] = 64;
  prop->maxGridSize[0] = 2147483647;
  prop->maxGridSize[1] = 65535;
  prop->maxGridSize[2] = 65535;
  prop->major = rt().compute_capability / 10;
  prop->minor = rt().compute_capability % 10;
  prop->multiProcessorCount = kSmCount;
  prop->maxThreadsPerMultiProcessor = 2048;
  prop->l2CacheSize = 50 * 1024 * 1024;
  return cudaSuccess;
}

cudaError_t cudaDriverGetVersion(int* v) {
  if (v == nullptr) return fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaRuntimeGetVersion(int* v) {
  if (v == nullptr) return fail(cudaErrorInvalidValue);
  *v = CUDART_VERSION;
  return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t* free_bytes, size_t* total) {
  if (free_bytes == nullptr || total == nullptr) return fail(cudaErrorInvalidValue);
  *total = spembed::emu::kDeviceMemoryBytes;
  *free_bytes = *total;
  return sticky();
}

// ---- Memory -------------------------------------------------------------------

cudaError_t cudaMalloc(void** ptr, size_t bytes) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  if (cudaError_t e = sticky()) return fail(e);
  *ptr = nullptr;
  if (bytes == 0) return cudaSuccess;
  void* p = nullptr;
  // 256-byte aligned as cudaMalloc; exactly `bytes` long, so AddressSanitizer
  // reports the first byte past the end.
  if (posix_memalign(&p, 256, bytes) != 0 || p == nullptr) return fail(cudaErrorMemoryAllocation);
  std::memset(p, spembed::emu::kPoisonByte, bytes);
  std::lock_guard<std::recursive_mutex> lock(rt().mutex);
  rt().allocations[static_cast<const char*>(p)] = bytes;
  *ptr = p;
  return cudaSuccess;
}

cudaError_t cudaFree(void* ptr) {
  if (ptr == nullptr) return cudaSuccess;
  std::lock_guard<std::recursive_mutex> lock(rt().mutex);
  auto it = rt().allocations.find(static_cast<const char*>(ptr));
  if (it == rt().allocations.end()) return fail(cudaErrorInvalidValue);
  rt().allocations.erase(it);
  std::free(ptr);
  return sticky();
}

cudaError_t cudaMallocHost(void** ptr, size_t bytes) {
  if (ptr == nullptr) return fail(cudaErrorInvalidValue);
  *ptr = std::malloc(bytes == 0 ? 1 : bytes);
  return *ptr != nullptr ? cudaSuccess : fail(cudaErrorMemoryAllocation);
}

cudaError_t cudaFreeHost(void* ptr) {
  std::free(ptr);
  return cudaSuccess;
}

cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* attr, const void* ptr) {
  if (attr == nullptr) return fail(cudaErrorInvalidValue);
  std::memset(attr, 0, sizeof(*attr));
  if (spembed::emu::is_device_range(ptr, 1)) {
    attr->type = cudaMemoryTypeDevice;
    attr->device = 0;
    attr->devicePointer = const_cast<void*>(ptr);
  } else {
    attr->type = cudaMemoryTypeUnregistered;
    attr->device = -2;
    attr->hostPointer = const_cast<void*>(ptr);
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t stream) {
  if (bytes > 0 && (dst == nullptr || src == nullptr)) return fail(cudaErrorInvalidValue);
  if (!spembed::emu::copy_sides_ok(dst, src, bytes, kind)) return fail(cudaErrorInvalidValue);
  return spembed::emu::in_stream_order(stream, [=] {
    if (bytes > 0) std::memmove(dst, src, bytes);
  });
}

cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  if (spembed::emu::stream_of(nullptr).capture != nullptr) {
    return fail(cudaErrorStreamCaptureUnsupported);
  }
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemsetAsync(void* dst, int value, size_t bytes, cudaStream_t stream) {
  if (bytes > 0 && !spembed::emu::is_device_range(dst, bytes)) return fail(cudaErrorInvalidValue);
  return spembed::emu::in_stream_order(stream, [=] {
    if (bytes > 0) std::memset(dst, value, bytes);
  });
}

cudaError_t cudaMemset(void* dst, int value, size_t bytes) {
  return cudaMemsetAsync(dst, value, bytes, nullptr);
}

// ---- Streams and events ------------------------------------------------------

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* stream, unsigned int) {
  if (stream == nullptr) return fail(cudaErrorInvalidValue);
  *stream = reinterpret_cast<cudaStream_t>(new spembed::emu::Stream);
  return cudaSuccess;
}

cudaError_t cudaStreamCreate(cudaStream_t* stream) { return cudaStreamCreateWithFlags(stream, 0); }

cudaError_t cudaStreamCreateWithPriority(cudaStream_t* stream, unsigned int flags, int) {
  return cudaStreamCreateWithFlags(stream, flags);
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
  if (stream == nullptr) return fail(cudaErrorInvalidResourceHandle);
  delete reinterpret_cast<spembed::emu::Stream*>(stream);
  return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) {
  if (spembed::emu::stream_of(stream).capture != nullptr) {
    return fail(cudaErrorStreamCaptureUnsupported);
  }
  return sticky();
}

cudaError_t cudaStreamQuery(cudaStream_t) { return sticky(); }

cudaError_t cudaStreamWaitEvent(cudaStream_t, cudaEvent_t, unsigned int) { return sticky(); }

cudaError_t cudaStreamBeginCapture(cudaStream_t stream, cudaStreamCaptureMode) {
  spembed::emu::Stream& s = spembed::emu::stream_of(stream);
  if (stream == nullptr || s.capture != nullptr) return fail(cudaErrorIllegalState);
  s.capture = new spembed::emu::Graph;
  return sticky();
}

cudaError_t cudaStreamEndCapture(cudaStream_t stream, cudaGraph_t* graph) {
  if (graph == nullptr) return fail(cudaErrorInvalidValue);
  spembed::emu::Stream& s = spembed::emu::stream_of(stream);
  if (s.capture == nullptr) return fail(cudaErrorIllegalState);
  *graph = reinterpret_cast<cudaGraph_t>(s.capture);
  s.capture = nullptr;
  return sticky();
}

cudaError_t cudaStreamIsCapturing(cudaStream_t stream, cudaStreamCaptureStatus* status) {
  if (status == nullptr) return fail(cudaErrorInvalidValue);
  *status = spembed::emu::stream_of(stream).capture != nullptr ? cudaStreamCaptureStatusActive
                                                               : cudaStreamCaptureStatusNone;
  return cudaSuccess;
}

cudaError_t cudaGraphInstantiate(cudaGraphExec_t* exec, cudaGraph_t graph, unsigned long long) {
  if (exec == nullptr || graph == nullptr) return fail(cudaErrorInvalidValue);
  auto* copy = new spembed::emu::Graph(*reinterpret_cast<spembed::emu::Graph*>(graph));
  *exec = reinterpret_cast<cudaGraphExec_t>(copy);
  return sticky();
}

cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t stream) {
  if (exec == nullptr) return fail(cudaErrorInvalidValue);
  const auto* g = reinterpret_cast<const spembed::emu::Graph*>(exec);
  for (const auto& node : g->nodes) {
    if (cudaError_t e = spembed::emu::in_stream_order(stream, node)) return e;
  }
  return cudaSuccess;
}

cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
  delete reinterpret_cast<spembed::emu::Graph*>(graph);
  return cudaSuccess;
}

cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
  delete reinterpret_cast<spembed::emu::Graph*>(exec);
  return cudaSuccess;
}

cudaError_t cudaEventCreateWithFlags(cudaEvent_t* event, unsigned int) {
  if (event == nullptr) return fail(cudaErrorInvalidValue);
  *event = reinterpret_cast<cudaEvent_t>(new spembed::emu::Event);
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* event) { return cudaEventCreateWithFlags(event, 0); }

cudaError_t cudaEventDestroy(cudaEvent_t event) {
  delete reinterpret_cast<spembed::emu::Event*>(event);
  return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
  if (event == nullptr) return fail(cudaErrorInvalidResourceHandle);
  auto* ev = reinterpret_cast<spembed::emu::Event*>(event);
  return spembed::emu::in_stream_order(stream, [ev] {
    ev->when = std::chrono::steady_clock::now();
    ev->recorded = true;
  });
}

cudaError_t cudaEventSynchronize(cudaEvent_t) { return sticky(); }

cudaError_t cudaEventQuery(cudaEvent_t) { return sticky(); }

cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end) {
  if (ms == nullptr || start == nullptr || end == nullptr) return fail(cudaErrorInvalidValue);
  const auto* a = reinterpret_cast<const spembed::emu::Event*>(start);
  const auto* b = reinterpret_cast<const spembed::emu::Event*>(end);
  if (!a->recorded || !b->recorded) return fail(cudaErrorInvalidResourceHandle);
  *ms = std::chrono::duration<float, std::milli>(b->when - a->when).count();
  return cudaSuccess;
}

// ---- Kernel attributes -------------------------------------------------------

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (func == nullptr) return fail(cudaErrorInvalidDeviceFunction);
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) {
    if (value < 0 || value > spembed::emu::kOptInMaxDynamicSmem) return fail(cudaErrorInvalidValue);
    std::lock_guard<std::recursive_mutex> lock(rt().mutex);
    rt().max_dynamic_smem[func] = value;
  }
  return sticky();
}

// Occupancy by threads and shared memory only: the emulator does not know a
// kernel's registers (the real build's ptxas report does).
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void* func,
                                                          int block_size, size_t dynamic_smem) {
  if (blocks == nullptr || func == nullptr || block_size <= 0) return fail(cudaErrorInvalidValue);
  int n = 2048 / block_size;
  if (n > 32) n = 32;
  const size_t per_block = dynamic_smem + 1024;
  const int by_smem = static_cast<int>(spembed::emu::kSmemPerSm / per_block);
  if (by_smem < n) n = by_smem;
  *blocks = n;
  return sticky();
}

}  // extern "C"
