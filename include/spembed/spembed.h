/*
 * spembed: fused CUDA kernels for the sparse side of recommender models.
 * Plain C API. Usable from C99 and C++; needs only <dlpack/dlpack.h>.
 *
 * Conventions
 *  - Tensors are DLPack DLTensor views, borrowed for the duration of the call.
 *    A NULL `strides` means compact row-major. `byte_offset` is honoured.
 *  - The device of the tensors (kDLCPU or kDLCUDA) picks the implementation.
 *    All tensors of one call live on the same device; a CUDA tensor must be
 *    on the device the handle was created for.
 *  - Every function returns a spembed_status_t. On failure,
 *    spembed_last_error() returns this thread's message naming the argument.
 *    Argument checks happen before anything is written: a rejected call
 *    leaves every output untouched.
 *  - CUDA work is queued on `stream` and never synchronises, allocates or
 *    prints in the op itself, so ops may be captured in a CUDA graph.
 *    `stream` is ignored for CPU tensors; NULL is the legacy default stream.
 *
 * Thread safety
 *  - A handle may be used from several threads at once provided each call
 *    uses its own outputs and workspace; a table batch likewise.
 *  - spembed_last_error() is thread-local.
 *  - create/destroy of one handle or table batch must not race with its use.
 */
#ifndef SPEMBED_SPEMBED_H_
#define SPEMBED_SPEMBED_H_

#include <stddef.h>
#include <stdint.h>

#include <dlpack/dlpack.h>

#ifdef __cplusplus
extern "C" {
#endif

#define SPEMBED_VERSION_MAJOR 0
#define SPEMBED_VERSION_MINOR 1
#define SPEMBED_VERSION_PATCH 0
/* MAJOR * 10000 + MINOR * 100 + PATCH, the value spembed_get_version returns. */
#define SPEMBED_VERSION \
  (SPEMBED_VERSION_MAJOR * 10000 + SPEMBED_VERSION_MINOR * 100 + SPEMBED_VERSION_PATCH)

/* Same type as cudaStream_t, declared here so C users need no CUDA headers. */
struct CUstream_st;
typedef struct CUstream_st* spembed_stream_t;

typedef enum spembed_status {
  SPEMBED_STATUS_SUCCESS = 0,
  SPEMBED_STATUS_INVALID_ARGUMENT = 1,   /* wrong shape, dtype, device, null, bad offsets */
  SPEMBED_STATUS_NOT_SUPPORTED = 2,      /* valid request this build cannot serve */
  SPEMBED_STATUS_INDEX_OUT_OF_RANGE = 3, /* an id < 0 or >= rows under SPEMBED_BOUNDS_ERROR */
  SPEMBED_STATUS_WORKSPACE_TOO_SMALL = 4,
  SPEMBED_STATUS_CUDA_ERROR = 5,         /* the CUDA runtime reported an error */
  SPEMBED_STATUS_ALLOC_FAILED = 6,       /* only create functions allocate */
  SPEMBED_STATUS_INTERNAL_ERROR = 7
} spembed_status_t;

typedef enum spembed_pooling {
  SPEMBED_POOLING_SUM = 0,
  SPEMBED_POOLING_MEAN = 1, /* sum / number of rows pooled (padding and skipped ids not counted) */
  SPEMBED_POOLING_MAX = 2,  /* element-wise max; optional argmax row per output element */
  SPEMBED_POOLING_NONE = 3  /* gathered rows [nnz, dim], scaled by per-sample weights if given */
} spembed_pooling_t;

/* What an id outside [0, rows) does (padding_idx excepted). The table is never
 * read or written outside its rows under either policy.
 *  ERROR (default): the call fails and no output is written. On CPU the call
 *    returns SPEMBED_STATUS_INDEX_OUT_OF_RANGE. On CUDA the check runs on the
 *    device, so the call returns SUCCESS and the failure is recorded in the
 *    report (see below); the outputs are still left unwritten.
 *  SKIP: the id contributes nothing and is not counted by MEAN; the number of
 *    such ids and the first one are recorded in the report.
 * ERROR is the default because a silently skipped id hides data bugs; it costs
 * one extra read of the ids on CUDA. */
typedef enum spembed_bounds_policy {
  SPEMBED_BOUNDS_ERROR = 0,
  SPEMBED_BOUNDS_SKIP = 1
} spembed_bounds_policy_t;

/* Report of the checks made on the data of a call (ids and offsets): an
 * optional int64 tensor of SPEMBED_REPORT_SIZE elements on the op's device.
 * On CUDA it is written asynchronously on `stream`; copy it to the host and
 * pass it to spembed_report_status() to turn it into a status and message. */
typedef enum spembed_report_field {
  SPEMBED_REPORT_STATUS = 0,            /* a spembed_status_t: SUCCESS, INVALID_ARGUMENT (offsets) or INDEX_OUT_OF_RANGE */
  SPEMBED_REPORT_BAD_INDEX_COUNT = 1,   /* ids outside [0, rows) */
  SPEMBED_REPORT_BAD_INDEX_POSITION = 2, /* smallest position in `indices` of such an id, or -1 */
  SPEMBED_REPORT_BAD_INDEX_VALUE = 3,   /* the id found there */
  SPEMBED_REPORT_BAD_OFFSET_POSITION = 4, /* smallest i with a bad offsets[i] (see below), or -1 */
  SPEMBED_REPORT_SIZE = 5
} spembed_report_field_t;

/* A bad offset: offsets[0] != 0 (i = 0), offsets[i] > offsets[i+1] (i), or
 * offsets[bags] != nnz (i = bags). */

/* Options of the embedding bag ops. Initialise with
 * spembed_embedding_bag_options_init and change what differs. */
typedef struct spembed_embedding_bag_options {
  spembed_pooling_t pooling;             /* default SUM */
  int64_t padding_idx;                   /* < 0: none (default -1). The row contributes nothing and is not counted. */
  spembed_bounds_policy_t bounds_policy; /* default ERROR */
  int64_t fixed_bag_size;                /* > 0: every bag has this many ids and `offsets` must be NULL; default 0 */
} spembed_embedding_bag_options_t;

typedef struct spembed_handle_st* spembed_handle_t;
typedef struct spembed_table_batch_st* spembed_table_batch_t;

/* ---- library ---------------------------------------------------------------- */

int spembed_get_version(void);
const char* spembed_status_string(spembed_status_t status);
/* This thread's message for its last failed call ("" if none). Valid until the
 * thread's next spembed call. */
const char* spembed_last_error(void);

/* A handle binds to the current CUDA device if one is usable, else to the CPU
 * only. It allocates nothing on the device. */
spembed_status_t spembed_create(spembed_handle_t* handle);
/* Destroying NULL is an INVALID_ARGUMENT error (so is using a destroyed handle:
 * undefined). Table batches made with a handle must be destroyed first. */
spembed_status_t spembed_destroy(spembed_handle_t handle);
/* The CUDA device the handle serves, or -1 when it serves the CPU only. */
spembed_status_t spembed_handle_device(spembed_handle_t handle, int* cuda_device);

/* Turns a report copied to the host into a status, and on failure sets this
 * thread's last error to a message naming the position and value. */
spembed_status_t spembed_report_status(const int64_t report[SPEMBED_REPORT_SIZE]);

/* ---- embedding bag forward -------------------------------------------------- */

void spembed_embedding_bag_options_init(spembed_embedding_bag_options_t* options);

/* Bytes of workspace the embedding bag forward ops need on `device_type`
 * (kDLCPU needs none). The workspace must be aligned to 16 bytes (any
 * cudaMalloc or caching-allocator block is). */
spembed_status_t spembed_embedding_bag_forward_workspace_size(spembed_handle_t handle,
                                                             DLDeviceType device_type,
                                                             size_t* bytes);

/* Pooled lookup into one table.
 *  table    [rows, dim] float32 / float16 / bfloat16; strides[1] == 1, strides[0] >= dim.
 *  indices  [nnz] int32 or int64, contiguous.
 *  offsets  [bags + 1], same dtype as indices, contiguous: first 0, last nnz,
 *           non-decreasing. NULL when options->fixed_bag_size > 0 (then
 *           bags = nnz / fixed_bag_size) or when pooling is NONE.
 *  per_sample_weights  [nnz] float32 or NULL; only with SUM or NONE.
 *  options  NULL for the defaults.
 *  output   [bags, dim] (NONE: [nnz, dim]) float32 / float16 / bfloat16;
 *           strides[1] == 1, strides[0] >= dim. Empty bags give zeros.
 *  argmax   NULL, or with MAX: [bags, dim], dtype of indices, strides[1] == 1:
 *           the row that gave each output element, -1 where the bag pooled nothing.
 *  report   NULL, or int64 [SPEMBED_REPORT_SIZE] (see above).
 * Accumulation is in float32, in the order of the ids within each bag. */
spembed_status_t spembed_embedding_bag_forward(spembed_handle_t handle, const DLTensor* table,
                                               const DLTensor* indices, const DLTensor* offsets,
                                               const DLTensor* per_sample_weights,
                                               const spembed_embedding_bag_options_t* options,
                                               DLTensor* output, DLTensor* argmax,
                                               DLTensor* report, void* workspace,
                                               size_t workspace_bytes, spembed_stream_t stream);

/* ---- table-batched embedding bag forward ------------------------------------ */

/* Describes T tables that are looked up together. `tables` is an array of T
 * views [rows_t, dim_t] with one dtype and one device (strides as above). The
 * views' data must outlive the batch. On CUDA this uploads a small metadata
 * array once (it allocates and synchronises: create batches at set-up time). */
spembed_status_t spembed_table_batch_create(spembed_handle_t handle, const DLTensor* tables,
                                            int64_t num_tables, spembed_table_batch_t* batch);
/* A batch is used only with the handle that created it (else INVALID_ARGUMENT). */
spembed_status_t spembed_table_batch_destroy(spembed_table_batch_t batch);
/* Sum of the tables' dims: the width of the batched output. */
spembed_status_t spembed_table_batch_total_dim(spembed_table_batch_t batch, int64_t* total_dim);

/* Pooled lookup into T tables in one launch.
 *  indices  [nnz] int32 / int64, table-major: the ids of table 0's bags first.
 *           Ids are rows of their own table.
 *  offsets  [T * B + 1], same dtype (bag t*B + b is table t, sample b); NULL
 *           with fixed_bag_size > 0 (then nnz = T * B * fixed_bag_size).
 *  output   [B, total_dim]: table t's pooled rows at columns
 *           [sum of dims before t, + dim_t).
 *  argmax   NULL, or with MAX: shaped like output, dtype of indices.
 * Pooling NONE is not available here (rows of different widths): NOT_SUPPORTED. padding_idx
 * applies to every table. Other arguments as in spembed_embedding_bag_forward. */
spembed_status_t spembed_embedding_bag_batched_forward(
    spembed_handle_t handle, spembed_table_batch_t batch, const DLTensor* indices,
    const DLTensor* offsets, const DLTensor* per_sample_weights,
    const spembed_embedding_bag_options_t* options, DLTensor* output, DLTensor* argmax,
    DLTensor* report, void* workspace, size_t workspace_bytes, spembed_stream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SPEMBED_SPEMBED_H_ */
