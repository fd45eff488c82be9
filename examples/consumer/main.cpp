// Mean-pools two bags of a 4 x 2 float table on the CPU with the C++ API and
// checks the result: the smallest complete use of an installed spembed.
#include <spembed/spembed_distributed.h>

#include <cstdio>
#include <spembed/spembed.hpp>

int main() {
  float table[4][2] = {{1, 2}, {3, 4}, {5, 6}, {7, 8}};
  int64_t ids[3] = {0, 3, 2};
  int64_t offsets[3] = {0, 2, 3};  // bag 0 = rows {0, 3}, bag 1 = row {2}
  float out[2][2] = {};
  int64_t table_shape[2] = {4, 2}, ids_shape[1] = {3}, offsets_shape[1] = {3},
          out_shape[2] = {2, 2};
  const DLDevice cpu{kDLCPU, 0};
  const DLDataType f32{kDLFloat, 32, 1}, i64{kDLInt, 64, 1};
  DLTensor t{table, cpu, 2, f32, table_shape, nullptr, 0};
  DLTensor i{ids, cpu, 1, i64, ids_shape, nullptr, 0};
  DLTensor o{offsets, cpu, 1, i64, offsets_shape, nullptr, 0};
  DLTensor y{out, cpu, 2, f32, out_shape, nullptr, 0};

  spembed::Handle handle;
  spembed::ForwardExtras extras;
  extras.offsets = &o;
  handle.embedding_bag_forward(
      t, i, y, spembed::EmbeddingBagOptions().with_pooling(SPEMBED_POOLING_MEAN), extras);
  const float expected[2][2] = {{4, 5}, {5, 6}};
  for (int b = 0; b < 2; ++b) {
    for (int d = 0; d < 2; ++d) {
      if (out[b][d] != expected[b][d]) {
        std::printf("consumer: out[%d][%d] = %g, expected %g\n", b, d, out[b][d], expected[b][d]);
        return 1;
      }
    }
  }
  // The distributed header is installed too: a one-rank in-process communicator.
  spembed_comm_t comm = nullptr;
  int rank = -1, world = -1;
  if (spembed_comm_create_in_process(1, &comm) != SPEMBED_STATUS_SUCCESS ||
      spembed_comm_rank(comm, &rank, &world) != SPEMBED_STATUS_SUCCESS || rank != 0 || world != 1 ||
      spembed_comm_destroy(comm) != SPEMBED_STATUS_SUCCESS) {
    std::printf("consumer: in-process communicator failed: %s\n", spembed_last_error());
    return 1;
  }
  std::printf("consumer: spembed %d OK\n", spembed::version());
  return 0;
}
