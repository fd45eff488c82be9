/* A client written in C99 that uses only spembed.h and spembed_distributed.h:
 * proves the headers are valid C and the library links from C. Runs a SUM
 * lookup on CPU tensors against hand-computed values (directly, and through a
 * one-rank sharded collection) and checks that a bad call is rejected with a
 * status and a message. Prints "N passed, M failed" and exits non-zero on
 * failure. */
#include <spembed/spembed.h>
#include <spembed/spembed_distributed.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int passed = 0;
static int failed = 0;

static void check(int ok, const char* what) {
  if (ok) {
    ++passed;
  } else {
    ++failed;
    fprintf(stderr, "FAILED: %s\n", what);
  }
}

static DLTensor view(void* data, DLDataType dtype, int ndim, int64_t* shape) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCPU;
  t.device.device_id = 0;
  t.ndim = ndim;
  t.dtype = dtype;
  t.shape = shape;
  t.strides = NULL; /* compact */
  t.byte_offset = 0;
  return t;
}

int main(void) {
  const DLDataType f32 = {kDLFloat, 32, 1};
  const DLDataType i64 = {kDLInt, 64, 1};
  const DLDataType f64 = {kDLFloat, 64, 1};

  /* table [4, 2]; bags {0, 2}, {}, {3, 3, 1} */
  float table[8] = {1.0f, 2.0f, -3.0f, 0.5f, 10.0f, 20.0f, 0.25f, -4.0f};
  int64_t indices[5] = {0, 2, 3, 3, 1};
  int64_t offsets[4] = {0, 2, 2, 5};
  float output[6];
  int64_t table_shape[2] = {4, 2};
  int64_t indices_shape[1] = {5};
  int64_t offsets_shape[1] = {4};
  int64_t output_shape[2] = {3, 2};
  const float expected[6] = {11.0f, 22.0f, 0.0f, 0.0f, -2.5f, -7.5f};

  DLTensor t_table = view(table, f32, 2, table_shape);
  DLTensor t_indices = view(indices, i64, 1, indices_shape);
  DLTensor t_offsets = view(offsets, i64, 1, offsets_shape);
  DLTensor t_output = view(output, f32, 2, output_shape);

  spembed_handle_t handle = NULL;
  spembed_embedding_bag_options_t options;
  spembed_status_t status;
  int i;

  check(spembed_get_version() == SPEMBED_VERSION, "spembed_get_version() == SPEMBED_VERSION");
  check(spembed_create(&handle) == SPEMBED_STATUS_SUCCESS && handle != NULL, "spembed_create");

  spembed_embedding_bag_options_init(&options);
  check(options.pooling == SPEMBED_POOLING_SUM, "default pooling is SUM");

  memset(output, 0xFF, sizeof output); /* NaN poison */
  status = spembed_embedding_bag_forward(handle, &t_table, &t_indices, &t_offsets, NULL, &options,
                                         &t_output, NULL, NULL, NULL, 0, NULL);
  check(status == SPEMBED_STATUS_SUCCESS, "SUM forward succeeds");
  if (status != SPEMBED_STATUS_SUCCESS) {
    fprintf(stderr, "  %s: %s\n", spembed_status_string(status), spembed_last_error());
  }
  for (i = 0; i < 6; ++i) {
    char what[64];
    snprintf(what, sizeof what, "output[%d] == %g (got %g)", i, (double)expected[i],
             (double)output[i]);
    check(output[i] == expected[i], what);
  }

  /* A float64 table is rejected, the message names it, the output stays put. */
  {
    double table64[8] = {0};
    DLTensor t_bad = view(table64, f64, 2, table_shape);
    float before[6];
    memset(output, 0xFF, sizeof output);
    memcpy(before, output, sizeof output);
    status = spembed_embedding_bag_forward(handle, &t_bad, &t_indices, &t_offsets, NULL, &options,
                                           &t_output, NULL, NULL, NULL, 0, NULL);
    check(status == SPEMBED_STATUS_INVALID_ARGUMENT, "float64 table gives INVALID_ARGUMENT");
    check(strstr(spembed_last_error(), "table") != NULL, "the message names \"table\"");
    check(memcmp(before, output, sizeof output) == 0, "a rejected call writes no output");
    check(strlen(spembed_status_string(status)) > 0, "status string is not empty");
  }

  /* C may pass any int as an enum: an unknown status still has a name,
   * distinct from the real ones; an unknown pooling is rejected by name. */
  {
    const char* unknown = spembed_status_string((spembed_status_t)1234);
    check(unknown != NULL && strlen(unknown) > 0, "unknown status has a name");
    check(unknown != NULL && strcmp(unknown, spembed_status_string(SPEMBED_STATUS_SUCCESS)) != 0 &&
              strcmp(unknown, spembed_status_string(SPEMBED_STATUS_INTERNAL_ERROR)) != 0,
          "unknown status name differs from the real ones");
    options.pooling = (spembed_pooling_t)17;
    memset(output, 0xFF, sizeof output);
    status = spembed_embedding_bag_forward(handle, &t_table, &t_indices, &t_offsets, NULL, &options,
                                           &t_output, NULL, NULL, NULL, 0, NULL);
    check(status == SPEMBED_STATUS_INVALID_ARGUMENT, "pooling 17 gives INVALID_ARGUMENT");
    check(strstr(spembed_last_error(), "pooling") != NULL, "the message names \"pooling\"");
    spembed_embedding_bag_options_init(&options);
  }

  /* The same lookup through a one-rank sharded collection (in-process). */
  {
    spembed_comm_t comm = NULL;
    spembed_sharded_collection_t coll = NULL;
    spembed_table_spec_t spec;
    spembed_shard_plan_entry_t plan;
    int64_t count = -1;
    size_t bytes = 0;
    void* workspace = NULL;
    spec.rows = 4;
    spec.dim = 2;
    spec.ids_per_sample = 1.0;
    plan.sharding = SPEMBED_SHARDING_TABLE_WISE;
    plan.owner = 0;
    check(spembed_comm_create_in_process(1, &comm) == SPEMBED_STATUS_SUCCESS,
          "spembed_comm_create_in_process");
    check(spembed_shard_plan_local_shards(&spec, 1, &plan, 1, 0, NULL, &count) ==
                  SPEMBED_STATUS_SUCCESS &&
              count == 1,
          "one local shard");
    check(spembed_sharded_collection_create(handle, &spec, 1, &plan, f32, comm, &t_table, 1, NULL,
                                            3, 5, &coll) == SPEMBED_STATUS_SUCCESS,
          "spembed_sharded_collection_create");
    check(spembed_sharded_collection_workspace_size(coll, &bytes) == SPEMBED_STATUS_SUCCESS,
          "spembed_sharded_collection_workspace_size");
    workspace = malloc(bytes > 0 ? bytes : 1); /* malloc aligns to 16 on our targets */
    memset(output, 0xFF, sizeof output);
    status = spembed_sharded_collection_forward(coll, &t_indices, &t_offsets, NULL, &t_output,
                                                NULL, workspace, bytes, NULL);
    check(status == SPEMBED_STATUS_SUCCESS, "sharded forward succeeds");
    for (i = 0; i < 6; ++i) check(output[i] == expected[i], "sharded SUM value");
    check(spembed_sharded_collection_destroy(coll) == SPEMBED_STATUS_SUCCESS,
          "spembed_sharded_collection_destroy");
    check(spembed_comm_destroy(comm) == SPEMBED_STATUS_SUCCESS, "spembed_comm_destroy");
    free(workspace);
  }

  check(spembed_destroy(handle) == SPEMBED_STATUS_SUCCESS, "spembed_destroy");

  printf("c_client: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
