/* The C99 client on kDLCUDA tensors: spembed.h plus the CUDA runtime's C API,
 * nothing else. A SUM and a MEAN lookup against hand-computed values, an
 * out-of-range id reported on the device with nothing written, and the dense
 * gradient of the backward (deterministic). Without a usable device it prints
 * the skip message (ctest SKIP_REGULAR_EXPRESSION), or fails when
 * SPEMBED_REQUIRE_GPU=1. Prints "N passed, M failed". */
#include <cuda_runtime_api.h>
#include <spembed/spembed.h>
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

static int cuda_ok(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    fprintf(stderr, "FAILED: %s: %s\n", what, cudaGetErrorString(e));
    ++failed;
    return 0;
  }
  return 1;
}

static DLTensor view(void* data, DLDataType dtype, int ndim, int64_t* shape) {
  DLTensor t;
  memset(&t, 0, sizeof t);
  t.data = data;
  t.device.device_type = kDLCUDA;
  t.device.device_id = 0;
  t.ndim = ndim;
  t.dtype = dtype;
  t.shape = shape;
  return t;
}

/* A device copy of `bytes` of host data (poison 0xFF when `host` is NULL). */
static void* to_device(const void* host, size_t bytes) {
  void* p = NULL;
  if (!cuda_ok(cudaMalloc(&p, bytes), "cudaMalloc")) return NULL;
  if (host != NULL) {
    cuda_ok(cudaMemcpy(p, host, bytes, cudaMemcpyHostToDevice), "cudaMemcpy H2D");
  } else {
    cuda_ok(cudaMemset(p, 0xFF, bytes), "cudaMemset");
  }
  return p;
}

static void from_device(void* host, const void* dev, size_t bytes) {
  cuda_ok(cudaMemcpy(host, dev, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy D2H");
}

static void check_floats(const float* got, const float* expected, int n, const char* name) {
  int i;
  for (i = 0; i < n; ++i) {
    char what[96];
    snprintf(what, sizeof what, "%s[%d] == %g (got %g)", name, i, (double)expected[i],
             (double)got[i]);
    check(got[i] == expected[i], what);
  }
}

int main(void) {
  const DLDataType f32 = {kDLFloat, 32, 1};
  const DLDataType i64 = {kDLInt, 64, 1};
  const char* require = getenv("SPEMBED_REQUIRE_GPU");
  int devices = 0;
  /* table [4, 2]; bags {0, 2}, {}, {3, 3, 1} */
  const float table[8] = {1.0f, 2.0f, -3.0f, 0.5f, 10.0f, 20.0f, 0.25f, -4.0f};
  const int64_t indices[5] = {0, 2, 3, 3, 1};
  const int64_t bad_indices[5] = {0, 2, 3, 4, 1};
  const int64_t offsets[4] = {0, 2, 2, 5};
  const float sum_expected[6] = {11.0f, 22.0f, 0.0f, 0.0f, -2.5f, -7.5f};
  const float mean_expected[6] = {5.5f, 11.0f, 0.0f, 0.0f, -2.5f / 3.0f, -7.5f / 3.0f};
  /* d table = sum over ids of their bag's output gradient. */
  const float grad_out[6] = {1.0f, -1.0f, 5.0f, 5.0f, 0.5f, 2.0f};
  const float grad_expected[8] = {1.0f, -1.0f, 0.5f, 2.0f, 1.0f, -1.0f, 1.0f, 4.0f};
  int64_t table_shape[2] = {4, 2};
  int64_t indices_shape[1] = {5};
  int64_t offsets_shape[1] = {4};
  int64_t output_shape[2] = {3, 2};
  int64_t report_shape[1] = {SPEMBED_REPORT_SIZE};
  float host_out[8];
  int64_t host_report[SPEMBED_REPORT_SIZE];
  spembed_handle_t handle = NULL;
  spembed_embedding_bag_options_t options;
  spembed_embedding_bag_backward_args_t args;
  spembed_status_t status;
  size_t ws_bytes = 0;
  size_t bwd_bytes = 0;
  void *d_table, *d_indices, *d_bad, *d_offsets, *d_out, *d_report, *d_grad_out, *d_grad_table;
  void *workspace = NULL, *bwd_workspace = NULL;
  DLTensor t_table, t_indices, t_bad, t_offsets, t_out, t_report, t_grad_out, t_grad_table;

  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    if (require != NULL && strcmp(require, "1") == 0) {
      fprintf(stderr, "FAILED: SPEMBED_REQUIRE_GPU=1 is set but CUDA cannot be used\n");
      return 1;
    }
    printf("c_client_cuda: no usable CUDA device, skipping\n");
    return 0;
  }

  d_table = to_device(table, sizeof table);
  d_indices = to_device(indices, sizeof indices);
  d_bad = to_device(bad_indices, sizeof bad_indices);
  d_offsets = to_device(offsets, sizeof offsets);
  d_out = to_device(NULL, 6 * sizeof(float));
  d_report = to_device(NULL, sizeof host_report);
  d_grad_out = to_device(grad_out, sizeof grad_out);
  d_grad_table = to_device(NULL, sizeof table);
  if (failed > 0) return 1;
  t_table = view(d_table, f32, 2, table_shape);
  t_indices = view(d_indices, i64, 1, indices_shape);
  t_bad = view(d_bad, i64, 1, indices_shape);
  t_offsets = view(d_offsets, i64, 1, offsets_shape);
  t_out = view(d_out, f32, 2, output_shape);
  t_report = view(d_report, i64, 1, report_shape);
  t_grad_out = view(d_grad_out, f32, 2, output_shape);
  t_grad_table = view(d_grad_table, f32, 2, table_shape);

  check(spembed_create(&handle) == SPEMBED_STATUS_SUCCESS, "spembed_create");
  check(spembed_embedding_bag_forward_workspace_size(handle, kDLCUDA, &ws_bytes) ==
                SPEMBED_STATUS_SUCCESS &&
            ws_bytes > 0,
        "forward workspace size > 0 on CUDA");
  workspace = to_device(NULL, ws_bytes);
  spembed_embedding_bag_options_init(&options);

  status = spembed_embedding_bag_forward(handle, &t_table, &t_indices, &t_offsets, NULL, &options,
                                         &t_out, NULL, &t_report, workspace, ws_bytes, NULL);
  check(status == SPEMBED_STATUS_SUCCESS, "SUM forward succeeds");
  from_device(host_out, d_out, 6 * sizeof(float));
  check_floats(host_out, sum_expected, 6, "sum");
  from_device(host_report, d_report, sizeof host_report);
  check(spembed_report_status(host_report) == SPEMBED_STATUS_SUCCESS, "clean report");

  options.pooling = SPEMBED_POOLING_MEAN;
  cuda_ok(cudaMemset(d_out, 0xFF, 6 * sizeof(float)), "cudaMemset");
  status = spembed_embedding_bag_forward(handle, &t_table, &t_indices, &t_offsets, NULL, &options,
                                         &t_out, NULL, NULL, workspace, ws_bytes, NULL);
  check(status == SPEMBED_STATUS_SUCCESS, "MEAN forward succeeds");
  from_device(host_out, d_out, 6 * sizeof(float));
  check_floats(host_out, mean_expected, 6, "mean");

  /* id 4 of a 4-row table under ERROR: reported, output untouched. */
  options.pooling = SPEMBED_POOLING_SUM;
  cuda_ok(cudaMemset(d_out, 0xFF, 6 * sizeof(float)), "cudaMemset");
  status = spembed_embedding_bag_forward(handle, &t_table, &t_bad, &t_offsets, NULL, &options,
                                         &t_out, NULL, &t_report, workspace, ws_bytes, NULL);
  check(status == SPEMBED_STATUS_SUCCESS, "the call itself succeeds (the check is on the device)");
  from_device(host_report, d_report, sizeof host_report);
  check(spembed_report_status(host_report) == SPEMBED_STATUS_INDEX_OUT_OF_RANGE,
        "report says INDEX_OUT_OF_RANGE");
  check(host_report[SPEMBED_REPORT_BAD_INDEX_POSITION] == 3, "bad id at position 3");
  check(host_report[SPEMBED_REPORT_BAD_INDEX_VALUE] == 4, "bad id value 4");
  from_device(host_out, d_out, 6 * sizeof(float));
  {
    unsigned char poison[6 * sizeof(float)];
    memset(poison, 0xFF, sizeof poison);
    check(memcmp(host_out, poison, sizeof poison) == 0, "nothing written on a bad id");
  }

  /* Dense gradient, deterministic algorithm, added to a zeroed grad table. */
  check(spembed_embedding_bag_backward_workspace_size(handle, kDLCUDA, i64, 5, 4, 2,
                                                      SPEMBED_BACKWARD_DETERMINISTIC,
                                                      &bwd_bytes) == SPEMBED_STATUS_SUCCESS,
        "backward workspace size");
  bwd_workspace = to_device(NULL, bwd_bytes);
  cuda_ok(cudaMemset(d_grad_table, 0, sizeof table), "cudaMemset");
  memset(&args, 0, sizeof args);
  args.indices = &t_indices;
  args.offsets = &t_offsets;
  args.grad_output = &t_grad_out;
  args.grad_table = &t_grad_table;
  args.table = &t_table;
  status = spembed_embedding_bag_backward(handle, &args, &options, SPEMBED_BACKWARD_DETERMINISTIC,
                                          NULL, bwd_workspace, bwd_bytes, NULL);
  check(status == SPEMBED_STATUS_SUCCESS, "backward succeeds");
  if (status != SPEMBED_STATUS_SUCCESS) fprintf(stderr, "  %s\n", spembed_last_error());
  from_device(host_out, d_grad_table, sizeof table);
  check_floats(host_out, grad_expected, 8, "grad_table");
  check(cudaDeviceSynchronize() == cudaSuccess, "no CUDA error at the end");

  check(spembed_destroy(handle) == SPEMBED_STATUS_SUCCESS, "spembed_destroy");
  cudaFree(workspace);
  cudaFree(bwd_workspace);
  cudaFree(d_table);
  cudaFree(d_indices);
  cudaFree(d_bad);
  cudaFree(d_offsets);
  cudaFree(d_out);
  cudaFree(d_report);
  cudaFree(d_grad_out);
  cudaFree(d_grad_table);
  printf("c_client_cuda: %d passed, %d failed\n", passed, failed);
  return failed == 0 ? 0 : 1;
}
