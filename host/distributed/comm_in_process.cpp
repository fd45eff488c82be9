// The in-process communicator: world ranks as host threads sharing one state.
// Each collective publishes this rank's buffers, meets the others at a
// barrier, copies what is addressed to it, and meets them again so no rank
// reuses a buffer another is still reading. Over CUDA memory a rank first waits
// for its stream (so its sends are written) and copies with cudaMemcpy.
#include <cuda_runtime_api.h>

#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <vector>

#include "host/common/errors.h"
#include "host/distributed/comm.h"

namespace spembed::detail {
namespace {

struct Shared {
  explicit Shared(int ranks)
      : world(ranks), gather(static_cast<size_t>(ranks)), sends(static_cast<size_t>(ranks)) {}

  void barrier() {
    std::unique_lock<std::mutex> lock(mutex);
    const uint64_t mine = generation;
    if (++arrived == world) {
      arrived = 0;
      ++generation;
      cv.notify_all();
      return;
    }
    cv.wait(lock, [&] { return generation != mine; });
  }

  const int world;
  std::mutex mutex;
  std::condition_variable cv;
  int arrived = 0;
  uint64_t generation = 0;
  std::vector<const int64_t*> gather;
  struct Sends {
    const CommPiece* pieces = nullptr;
    size_t count = 0;
  };
  std::vector<Sends> sends;
};

class InProcessComm final : public spembed_comm_st {
 public:
  InProcessComm(std::shared_ptr<Shared> shared, int r, DLDeviceType device)
      : shared_(std::move(shared)) {
    rank = r;
    world = shared_->world;
    device_type = device;
  }

  spembed_status_t all_gather_host(const int64_t* send, int64_t count, int64_t* recv,
                                   void*) override {
    shared_->gather[static_cast<size_t>(rank)] = send;
    shared_->barrier();
    for (int r = 0; r < world; ++r) {
      std::memcpy(recv + static_cast<int64_t>(r) * count, shared_->gather[static_cast<size_t>(r)],
                  static_cast<size_t>(count) * sizeof(int64_t));
    }
    shared_->barrier();
    return SPEMBED_STATUS_SUCCESS;
  }

  spembed_status_t exchange(const CommPiece* sends, size_t num_sends, const CommPiece* recvs,
                            size_t num_recvs, void* stream) override {
    cudaError_t cuda_error = cudaSuccess;
    if (device_type == kDLCUDA)
      cuda_error = cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
    // Published even after a failure: the peers are waiting at the barrier.
    shared_->sends[static_cast<size_t>(rank)] = {sends, num_sends};
    shared_->barrier();
    // The k-th receive from a peer takes the peer's k-th send to this rank.
    bool ok = true;
    std::vector<size_t> cursor(static_cast<size_t>(world), 0);
    for (size_t i = 0; i < num_recvs; ++i) {
      const CommPiece& r = recvs[i];
      const Shared::Sends& from = shared_->sends[static_cast<size_t>(r.peer)];
      size_t& k = cursor[static_cast<size_t>(r.peer)];
      while (k < from.count && from.pieces[k].peer != rank) ++k;
      if (k == from.count || from.pieces[k].bytes != r.bytes) {
        ok = false;
        break;
      }
      if (r.bytes > 0 && device_type == kDLCUDA && cuda_error == cudaSuccess) {
        cuda_error = cudaMemcpy(r.data, from.pieces[k].data, r.bytes, cudaMemcpyDefault);
      } else if (r.bytes > 0 && device_type != kDLCUDA) {
        std::memcpy(r.data, from.pieces[k].data, r.bytes);
      }
      ++k;
    }
    shared_->barrier();
    if (cuda_error != cudaSuccess) {
      cudaGetLastError();
      return fail(SPEMBED_STATUS_CUDA_ERROR, "in-process communicator (rank %d): %s", rank,
                  cudaGetErrorString(cuda_error));
    }
    if (!ok) {
      return fail(SPEMBED_STATUS_INTERNAL_ERROR,
                  "in-process communicator: rank %d's receives do not match its peers' sends",
                  rank);
    }
    return SPEMBED_STATUS_SUCCESS;
  }

 private:
  std::shared_ptr<Shared> shared_;
};

}  // namespace
}  // namespace spembed::detail

using spembed::detail::fail;
using spembed::detail::guarded;

namespace {

spembed_status_t create_in_process(int world, DLDeviceType device, spembed_comm_t* comms) {
  if (comms == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "comms: must not be NULL");
  if (world < 1 || world > 1024) {
    return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "world: %d must be in [1, 1024]", world);
  }
  auto shared = std::make_shared<spembed::detail::Shared>(world);
  std::vector<std::unique_ptr<spembed_comm_st>> made;
  for (int r = 0; r < world; ++r) {
    made.push_back(std::make_unique<spembed::detail::InProcessComm>(shared, r, device));
  }
  for (int r = 0; r < world; ++r) comms[r] = made[static_cast<size_t>(r)].release();
  return SPEMBED_STATUS_SUCCESS;
}

}  // namespace

extern "C" spembed_status_t spembed_comm_create_in_process(int world, spembed_comm_t* comms) {
  return guarded("spembed_comm_create_in_process",
                 [&] { return create_in_process(world, kDLCPU, comms); });
}

extern "C" spembed_status_t spembed_comm_create_in_process_cuda(int world, spembed_comm_t* comms) {
  return guarded("spembed_comm_create_in_process_cuda",
                 [&] { return create_in_process(world, kDLCUDA, comms); });
}

extern "C" spembed_status_t spembed_comm_destroy(spembed_comm_t comm) {
  return guarded("spembed_comm_destroy", [&] {
    if (comm == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "comm: must not be NULL");
    delete comm;
    return SPEMBED_STATUS_SUCCESS;
  });
}

extern "C" spembed_status_t spembed_comm_rank(spembed_comm_t comm, int* rank, int* world) {
  return guarded("spembed_comm_rank", [&] {
    if (comm == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "comm: must not be NULL");
    if (rank == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "rank: must not be NULL");
    if (world == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "world: must not be NULL");
    *rank = comm->rank;
    *world = comm->world;
    return SPEMBED_STATUS_SUCCESS;
  });
}
