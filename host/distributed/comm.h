// The object behind spembed_comm_t: the two collectives the sharded
// collection needs, over threads of one process or over NCCL.
#pragma once

#include <cstddef>
#include <cstdint>

#include "spembed/spembed_distributed.h"

namespace spembed::detail {

// One point-to-point piece of an exchange. Sends and receives between one pair
// of ranks are matched in the order they are listed (as ncclSend / ncclRecv
// in a group); both sides list the same pieces, empty ones included.
struct CommPiece {
  int peer = 0;
  void* data = nullptr;  // a send only reads it
  size_t bytes = 0;
};

}  // namespace spembed::detail

struct spembed_comm_st {
  int rank = 0;
  int world = 1;
  DLDeviceType device_type = kDLCPU;  // where the exchanged buffers live

  virtual ~spembed_comm_st() = default;
  // Every rank's `count` int64 values, in rank order, into `recv` (world *
  // count values). Host memory; the result is on the host when it returns.
  virtual spembed_status_t all_gather_host(const int64_t* send, int64_t count, int64_t* recv,
                                           void* stream) = 0;
  // Every rank's sends and receives of one step, as one group.
  virtual spembed_status_t exchange(const spembed::detail::CommPiece* sends, size_t num_sends,
                                    const spembed::detail::CommPiece* recvs, size_t num_recvs,
                                    void* stream) = 0;
};
