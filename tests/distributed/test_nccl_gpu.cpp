// The NCCL communicator with one rank on one GPU: creation, the host
// all-gather and a send / receive to itself, and the sharded collection over
// it against the unsharded path. Skips without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>
#include <nccl.h>

#include <algorithm>
#include <string>
#include <vector>

#include "gpu_util.h"
#include "host/distributed/comm.h"
#include "sharded_gpu_check.h"
#include "spembed/spembed.h"
#include "spembed/spembed_distributed.h"
#include "test_util.h"

namespace {

using namespace spembed_test;

// One NCCL rank on the current device, a handle, the spembed communicator
// over it, and a stream.
class NcclComm : public ::testing::Test {
 protected:
  void SetUp() override {
    SPEMBED_REQUIRE_CUDA_OR_SKIP();
    int device = 0;
    SPEMBED_CUDA_CHECK(cudaGetDevice(&device));
    ASSERT_EQ(ncclCommInitAll(&nccl, 1, &device), ncclSuccess);
    ASSERT_EQ(spembed_create(&handle), SPEMBED_STATUS_SUCCESS);
    ASSERT_EQ(spembed_comm_create_nccl(handle, nccl, &comm), SPEMBED_STATUS_SUCCESS)
        << spembed_last_error();
    SPEMBED_CUDA_CHECK(cudaStreamCreate(&stream));
  }
  void TearDown() override {
    if (stream != nullptr) cudaStreamDestroy(stream);
    if (comm != nullptr) {
      EXPECT_EQ(spembed_comm_destroy(comm), SPEMBED_STATUS_SUCCESS);
    }
    if (nccl != nullptr) ncclCommDestroy(nccl);
    if (handle != nullptr) spembed_destroy(handle);
  }
  ncclComm_t nccl = nullptr;
  spembed_handle_t handle = nullptr;
  spembed_comm_t comm = nullptr;
  cudaStream_t stream = nullptr;
};

TEST_F(NcclComm, WorldOneExchanges) {
  int rank = -1, world = -1;
  ASSERT_EQ(spembed_comm_rank(comm, &rank, &world), SPEMBED_STATUS_SUCCESS);
  EXPECT_EQ(rank, 0);
  EXPECT_EQ(world, 1);

  const std::vector<int64_t> record{3, -5, 7, 11, 13};
  std::vector<int64_t> gathered(record.size(), -1);
  ASSERT_EQ(comm->all_gather_host(record.data(), static_cast<int64_t>(record.size()),
                                  gathered.data(), stream),
            SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  EXPECT_EQ(gathered, record);

  // Two pieces to itself, matched in order.
  const size_t n = 4096;
  std::vector<uint8_t> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<uint8_t>((i * 37 + 11) & 0xff);
  uint8_t *src = nullptr, *dst = nullptr;
  SPEMBED_CUDA_CHECK(cudaMalloc(&src, n));
  SPEMBED_CUDA_CHECK(cudaMalloc(&dst, n));
  SPEMBED_CUDA_CHECK(cudaMemcpy(src, host.data(), n, cudaMemcpyHostToDevice));
  SPEMBED_CUDA_CHECK(cudaMemset(dst, 0xff, n));
  const spembed::detail::CommPiece sends[2] = {{0, src, 1000}, {0, src + 1000, n - 1000}};
  const spembed::detail::CommPiece recvs[2] = {{0, dst, 1000}, {0, dst + 1000, n - 1000}};
  ASSERT_EQ(comm->exchange(sends, 2, recvs, 2, stream), SPEMBED_STATUS_SUCCESS)
      << spembed_last_error();
  SPEMBED_CUDA_CHECK(cudaStreamSynchronize(stream));
  std::vector<uint8_t> back(n, 0);
  SPEMBED_CUDA_CHECK(cudaMemcpy(back.data(), dst, n, cudaMemcpyDeviceToHost));
  EXPECT_EQ(back, host);

  cudaFree(src);
  cudaFree(dst);
}

// World size 1 over NCCL equals the unsharded path (sharded_gpu_check.h).
TEST_F(NcclComm, WorldOneCollectionEqualsUnsharded) {
  expect_world_one_equals_unsharded(handle, comm, stream);
}

}  // namespace
