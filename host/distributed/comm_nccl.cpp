// The NCCL communicator. NCCL is opened at run time (dlopen), so that
// libspembed loads on machines without it; nccl.h gives only the types.
#include <cuda_runtime_api.h>
#include <dlfcn.h>

#include <memory>
#include <mutex>

#include "host/common/api_common.h"
#include "host/common/errors.h"
#include "host/common/handle.h"
#include "host/distributed/comm.h"

#if SPEMBED_HAVE_NCCL_H
#include <nccl.h>
#endif

using spembed::detail::CommPiece;
using spembed::detail::fail;
using spembed::detail::guarded;

#if SPEMBED_HAVE_NCCL_H
namespace {

struct NcclApi {
  decltype(&ncclSend) send = nullptr;
  decltype(&ncclRecv) recv = nullptr;
  decltype(&ncclGroupStart) group_start = nullptr;
  decltype(&ncclGroupEnd) group_end = nullptr;
  decltype(&ncclAllGather) all_gather = nullptr;
  decltype(&ncclCommCount) count = nullptr;
  decltype(&ncclCommUserRank) user_rank = nullptr;
  decltype(&ncclCommCuDevice) cu_device = nullptr;
  decltype(&ncclGetErrorString) error_string = nullptr;
  bool ok = false;
};

// Loaded once per process; the library is never closed.
const NcclApi& nccl_api() {
  static NcclApi api;
  static std::once_flag once;
  std::call_once(once, [] {
    void* lib = dlopen("libnccl.so.2", RTLD_NOW | RTLD_GLOBAL);
    if (lib == nullptr) return;
    auto get = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib, name));
      return fn != nullptr;
    };
    api.ok = get(api.send, "ncclSend") && get(api.recv, "ncclRecv") &&
             get(api.group_start, "ncclGroupStart") && get(api.group_end, "ncclGroupEnd") &&
             get(api.all_gather, "ncclAllGather") && get(api.count, "ncclCommCount") &&
             get(api.user_rank, "ncclCommUserRank") && get(api.cu_device, "ncclCommCuDevice") &&
             get(api.error_string, "ncclGetErrorString");
  });
  return api;
}

class NcclComm final : public spembed_comm_st {
 public:
  NcclComm(ncclComm_t nccl, int device, int r, int w, void* gather, size_t gather_values)
      : nccl_(nccl),
        device_(device),
        gather_(static_cast<int64_t*>(gather)),
        gather_values_(gather_values) {
    rank = r;
    world = w;
    device_type = kDLCUDA;
  }
  ~NcclComm() override { cudaFree(gather_); }

  spembed_status_t all_gather_host(const int64_t* send, int64_t count, int64_t* recv,
                                   void* stream) override {
    const NcclApi& api = nccl_api();
    const size_t n = static_cast<size_t>(count);
    if (n * static_cast<size_t>(world + 1) > gather_values_) {
      return fail(SPEMBED_STATUS_INTERNAL_ERROR,
                  "NCCL communicator: all-gather of %zu values "
                  "exceeds its buffer",
                  n);
    }
    auto s = static_cast<cudaStream_t>(stream);
    int64_t* mine = gather_ + n * static_cast<size_t>(world);
    cudaError_t e = cudaMemcpyAsync(mine, send, n * 8, cudaMemcpyHostToDevice, s);
    if (e != cudaSuccess) return cuda_failed(e);
    const ncclResult_t r = api.all_gather(mine, gather_, n, ncclInt64, nccl_, s);
    if (r != ncclSuccess) return nccl_failed(r, "ncclAllGather");
    e = cudaMemcpyAsync(recv, gather_, n * static_cast<size_t>(world) * 8, cudaMemcpyDeviceToHost,
                        s);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s);  // the counts decide the host's next step
    return e == cudaSuccess ? SPEMBED_STATUS_SUCCESS : cuda_failed(e);
  }

  spembed_status_t exchange(const CommPiece* sends, size_t num_sends, const CommPiece* recvs,
                            size_t num_recvs, void* stream) override {
    const NcclApi& api = nccl_api();
    auto s = static_cast<cudaStream_t>(stream);
    ncclResult_t r = api.group_start();
    // Both sides list the same pieces, so skipping empty ones keeps them matched.
    for (size_t i = 0; r == ncclSuccess && i < num_sends; ++i) {
      if (sends[i].bytes == 0) continue;
      r = api.send(sends[i].data, sends[i].bytes, ncclUint8, sends[i].peer, nccl_, s);
    }
    for (size_t i = 0; r == ncclSuccess && i < num_recvs; ++i) {
      if (recvs[i].bytes == 0) continue;
      r = api.recv(recvs[i].data, recvs[i].bytes, ncclUint8, recvs[i].peer, nccl_, s);
    }
    const ncclResult_t end = api.group_end();
    if (r != ncclSuccess) return nccl_failed(r, "ncclSend / ncclRecv");
    return end == ncclSuccess ? SPEMBED_STATUS_SUCCESS : nccl_failed(end, "ncclGroupEnd");
  }

 private:
  spembed_status_t nccl_failed(ncclResult_t r, const char* what) {
    return fail(SPEMBED_STATUS_INTERNAL_ERROR, "NCCL communicator (rank %d): %s failed: %s", rank,
                what, nccl_api().error_string(r));
  }
  spembed_status_t cuda_failed(cudaError_t e) {
    return fail(SPEMBED_STATUS_CUDA_ERROR, "NCCL communicator (rank %d): %s", rank,
                cudaGetErrorString(e));
  }

  ncclComm_t nccl_;
  int device_;
  int64_t* gather_;
  size_t gather_values_;
};

}  // namespace
#endif

extern "C" spembed_status_t spembed_comm_create_nccl(spembed_handle_t handle, ncclComm_t nccl,
                                                     spembed_comm_t* comm) {
  return guarded("spembed_comm_create_nccl", [&]() -> spembed_status_t {
    SPEMBED_RETURN_IF_ERROR(spembed::detail::check_handle(handle));
    if (nccl == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "nccl: must not be NULL");
    if (comm == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "comm: must not be NULL");
#if SPEMBED_HAVE_NCCL_H
    const NcclApi& api = nccl_api();
    if (!api.ok) {
      return fail(SPEMBED_STATUS_NOT_SUPPORTED,
                  "spembed_comm_create_nccl: libnccl.so.2 could not be loaded (or lacks a symbol)");
    }
    if (handle->cuda_device < 0) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "handle: serves the CPU only; NCCL needs CUDA");
    }
    int world = 0, rank = 0, device = -1;
    if (api.count(nccl, &world) != ncclSuccess || api.user_rank(nccl, &rank) != ncclSuccess ||
        api.cu_device(nccl, &device) != ncclSuccess) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "nccl: rank, size or device query failed");
    }
    if (device != handle->cuda_device) {
      return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "nccl: on cuda:%d but the handle serves cuda:%d",
                  device, handle->cuda_device);
    }
    // The all-gather of a call's record: (world + 1) ranks' worth of 8 + 2 * world values.
    const size_t values = static_cast<size_t>(world + 1) * static_cast<size_t>(8 + 2 * world);
    void* gather = nullptr;
    int current = -1;
    cudaGetDevice(&current);
    if (current != device) cudaSetDevice(device);
    const cudaError_t e = cudaMalloc(&gather, values * 8);
    if (current != device) cudaSetDevice(current);
    if (e != cudaSuccess) {
      cudaGetLastError();
      return fail(SPEMBED_STATUS_ALLOC_FAILED, "spembed_comm_create_nccl: cudaMalloc failed: %s",
                  cudaGetErrorString(e));
    }
    *comm = new NcclComm(nccl, device, rank, world, gather, values);
    return SPEMBED_STATUS_SUCCESS;
#else
    return fail(SPEMBED_STATUS_NOT_SUPPORTED, "spembed_comm_create_nccl: built without nccl.h");
#endif
  });
}
