// The NCCL communicator: placeholder until NCCL is wired in (NOT_SUPPORTED).
#include "host/common/api_common.h"
#include "host/common/errors.h"
#include "host/distributed/comm.h"

using spembed::detail::fail;
using spembed::detail::guarded;

extern "C" spembed_status_t spembed_comm_create_nccl(spembed_handle_t handle, ncclComm_t nccl,
                                                     spembed_comm_t* comm) {
  return guarded("spembed_comm_create_nccl", [&] {
    SPEMBED_RETURN_IF_ERROR(spembed::detail::check_handle(handle));
    if (nccl == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "nccl: must not be NULL");
    if (comm == nullptr) return fail(SPEMBED_STATUS_INVALID_ARGUMENT, "comm: must not be NULL");
    return fail(SPEMBED_STATUS_NOT_SUPPORTED, "spembed_comm_create_nccl: this build has no NCCL");
  });
}
