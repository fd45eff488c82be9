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
 *  - Embedding tables are float32, float16, bfloat16 or float64. The
 *    embedding bag ops accumulate in the table's accumulation dtype: float64
 *    for float64 tables, float32 for the others. What a call computes or
 *    keeps besides its output is in that dtype too: per-sample weights and
 *    their gradient, dense and row-sparse gradients, optimizer states. A
 *    float64 table's output / grad_output is float64, and only a float64
 *    table takes a float64 output / grad_output (else INVALID_ARGUMENT).
 *    Attention takes no float64 (INVALID_ARGUMENT).
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
  /* Backward only (the forward ignores it): non-zero divides each row's
   * gradient by the number of ids of that row in the call (padding and
   * skipped ids not counted), as torch's scale_grad_by_freq. The row's sum is
   * formed as documented at SPEMBED_BACKWARD_CHUNK, then divided once (one
   * float32 rounding). It needs the rows grouped, so ATOMIC then runs the
   * sorted reduction too. Not with MAX pooling (INVALID_ARGUMENT, as torch).
   * Default 0. */
  int scale_grad_by_freq;
} spembed_embedding_bag_options_t;

typedef struct spembed_handle_st* spembed_handle_t;
typedef struct spembed_table_batch_st* spembed_table_batch_t;

/* ---- library ---------------------------------------------------------------- */

int spembed_get_version(void);
const char* spembed_status_string(spembed_status_t status);
/* This thread's message for its last failed call ("" if none). Valid until the
 * thread's next spembed call. */
const char* spembed_last_error(void);

/* Threads the CPU implementation (kDLCPU tensors) uses, for the whole process.
 * 0 restores the default: the SPEMBED_NUM_THREADS environment variable if set,
 * else the hardware threads. The threads are started once and kept; results do
 * not depend on the count. The torch op layer sets it to
 * torch.get_num_threads() before each CPU call. Negative: INVALID_ARGUMENT. */
spembed_status_t spembed_set_num_threads(int threads);
/* The thread count CPU calls use now (never below 1). */
spembed_status_t spembed_get_num_threads(int* threads);

/* One piece of a CPU parallel region: runs piece `index` of the region `context`. */
typedef void (*spembed_parallel_task_t)(void* context, int64_t index);
/* Runs task(context, i) exactly once for every i in [0, n), on any threads of
 * its choosing, and returns when all have returned. */
typedef void (*spembed_parallel_runner_t)(int64_t n, spembed_parallel_task_t task, void* context,
                                          void* user);
/* Runs the CPU implementation's parallel regions on the caller's threads
 * instead of spembed's own pool: a framework's OpenMP threads, say, which
 * otherwise spin on the cores spembed's threads need. Regions with more than one piece and
 * more than one thread (spembed_set_num_threads) go to runner(..., user);
 * the pieces are what spembed's pool would run, so results are the same.
 * NULL restores spembed's pool. Set it before CPU calls start, not while
 * other threads make them. */
spembed_status_t spembed_set_cpu_parallel_runner(spembed_parallel_runner_t runner, void* user);

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
 *  table    [rows, dim] float32 / float16 / bfloat16 / float64; strides[1] == 1,
 *           strides[0] >= dim; float64 data 8-byte aligned.
 *  indices  [nnz] int32 or int64, contiguous.
 *  offsets  [bags + 1], same dtype as indices, contiguous: first 0, last nnz,
 *           non-decreasing. NULL when options->fixed_bag_size > 0 (then
 *           bags = nnz / fixed_bag_size). Ignored when pooling is NONE: NULL
 *           or any tensor, neither checked nor read (forward and backward,
 *           CPU and CUDA alike).
 *  per_sample_weights  [nnz] float32 (float64 with a float64 table) or NULL;
 *           only with SUM or NONE.
 *  options  NULL for the defaults.
 *  output   [bags, dim] (NONE: [nnz, dim]) float32 / float16 / bfloat16 (float64
 *           with, and only with, a float64 table); strides[1] == 1,
 *           strides[0] >= dim. Empty bags give zeros.
 *  argmax   NULL, or with MAX: [bags, dim], dtype of indices, strides[1] == 1:
 *           the row that gave each output element, -1 where the bag pooled nothing.
 *  report   NULL, or int64 [SPEMBED_REPORT_SIZE] (see above).
 * Accumulation is in float32 (float64 for float64 tables), in the order of
 * the ids within each bag. */
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

/* ---- embedding renorm (max_norm) ------------------------------------------- */

/* Renormalises, in place, the rows of `table` that `indices` names, as
 * torch.embedding_renorm_ (what F.embedding_bag's max_norm does before the
 * lookup): each distinct row r named by a valid id, whose norm
 * (sum over the row of |w|^norm_type)^(1 / norm_type) exceeds max_norm, is
 * multiplied by max_norm / (norm + 1e-7). Every row is handled once however
 * often it is named, so the result is deterministic.
 *  table    [rows, dim] float32 / float16 / bfloat16 / float64, row stride >= dim;
 *           updated in place (rows no valid id names are not touched).
 *  indices  [nnz] int32 or int64, contiguous, on the table's device.
 *  max_norm > 0 and finite; norm_type > 0 and finite (1 and 2 are exact
 *           sums of |w| and w^2; others use powf).
 *  bounds_policy  ids outside [0, rows): ERROR (nothing is written; CPU
 *           returns INDEX_OUT_OF_RANGE, CUDA records it in `report`) or
 *           SKIP (ignored, counted in `report`). padding rows are renormalised
 *           like any other (torch does the same).
 * Numerics: the norm is summed in float32 (float64 for float64 tables, with
 * max_norm and norm_type as given and pow), lane by lane over columns
 * c = j, j + 32, ... (j = 0..31), then the 32 partial sums are added pairwise
 * (distance 16, 8, 4, 2, 1); the scale and the products are in that dtype,
 * rounded once each. CPU and CUDA follow the same order, so for norm_type 1 and 2 they
 * agree bitwise.
 * Workspace: 0 on the CPU; on CUDA what ..._workspace_size says for nnz ids
 * (the ids are sorted there), 256-byte aligned. */
spembed_status_t spembed_embedding_renorm_workspace_size(spembed_handle_t handle,
                                                         DLDeviceType device_type,
                                                         DLDataType index_dtype, int64_t nnz,
                                                         size_t* bytes);
spembed_status_t spembed_embedding_renorm(spembed_handle_t handle, DLTensor* table,
                                          const DLTensor* indices, double max_norm,
                                          double norm_type, spembed_bounds_policy_t bounds_policy,
                                          DLTensor* report, void* workspace,
                                          size_t workspace_bytes, spembed_stream_t stream);

/* ---- embedding bag backward ------------------------------------------------- */

/* How the gradient is reduced per table row.
 *  DETERMINISTIC (default): ids are sorted by row (radix sort over only the
 *    bits the row count needs); each row's gradient is summed in the order of
 *    its ids' positions; no floating-point atomics. Bitwise identical results
 *    run to run, on the same inputs and device.
 *  ATOMIC: the dense gradient (a) is accumulated with float atomics, without
 *    a sort: same values up to rounding order. Outputs (b) and (c) need the
 *    rows grouped, so they always use the sorted reduction.
 * Summation order of the deterministic path (the CPU implementation uses the
 * same, so the two agree bitwise): a row's contributions in increasing
 * position of their ids, in consecutive chunks of SPEMBED_BACKWARD_CHUNK
 * contributions; each chunk summed sequentially in float32 (float64 for
 * float64 tables) from 0, then the
 * chunk sums added sequentially; then, for (a), added to grad_table once. */
#define SPEMBED_BACKWARD_CHUNK 256
typedef enum spembed_backward_algorithm {
  SPEMBED_BACKWARD_DETERMINISTIC = 0,
  SPEMBED_BACKWARD_ATOMIC = 1
} spembed_backward_algorithm_t;

/* Fused optimizer step on the touched rows only (rows no id touched are left
 * alone, like torch.optim.SparseAdam; for SGD and Adagrad this equals the dense
 * step, since an untouched row's gradient is zero and weight decay is applied
 * to touched rows only). g is a row's reduced gradient, w its weights,
 * wd the weight decay, lr the learning rate; g' = g + wd * w.
 *  SGD:              w -= lr * g'
 *  ADAGRAD:          s += g'^2 (element-wise state [rows, dim]); w -= lr * g' / (sqrt(s) + eps)
 *  ROWWISE_ADAGRAD:  s += mean over the row of g'^2 (state [rows]); w -= lr * g' / (sqrt(s) + eps)
 *  ADAM:             m = b1 m + (1 - b1) g'; v = b2 v + (1 - b2) g'^2 (states [rows, dim]);
 *                    w -= lr * (m / (1 - b1^step)) / (sqrt(v / (1 - b2^step)) + eps)
 * These are torch.optim.SGD / Adagrad (lr_decay 0, initial accumulator in the
 * state) / Adam (amsgrad off, L2 weight decay) applied to the touched rows.
 * State is float32; float64 tables keep float64 state and are updated in
 * float64 (the float hyperparameters widened exactly). float16 / bfloat16
 * weights are updated in float32 and
 * rounded back to nearest, or stochastically when stochastic_rounding is set
 * (random bits from `seed`, the row and the column: reproducible for one seed). */
typedef enum spembed_optimizer {
  SPEMBED_OPTIMIZER_SGD = 0,
  SPEMBED_OPTIMIZER_ADAGRAD = 1,
  SPEMBED_OPTIMIZER_ROWWISE_ADAGRAD = 2,
  SPEMBED_OPTIMIZER_ADAM = 3
} spembed_optimizer_t;

typedef struct spembed_optimizer_options {
  spembed_optimizer_t optimizer; /* default SGD */
  float learning_rate;           /* default 0.01 */
  float eps;                     /* default 1e-8 (Adam), used by the Adagrads too (torch: 1e-10) */
  float beta1;                   /* default 0.9 */
  float beta2;                   /* default 0.999 */
  float weight_decay;            /* default 0 */
  int64_t step;                  /* Adam's step count t >= 1 for the bias correction; default 1 */
  int stochastic_rounding;       /* non-zero: round fp16 / bf16 weights stochastically */
  uint64_t seed;                 /* of the stochastic rounding */
} spembed_optimizer_options_t;

void spembed_optimizer_options_init(spembed_optimizer_options_t* options);

/* What the backward of one table reads and writes. Inputs are those of the
 * forward call; outputs are any non-empty subset of (a)-(d). */
typedef struct spembed_embedding_bag_backward_args {
  const DLTensor* indices;            /* as in the forward */
  const DLTensor* offsets;            /* as in the forward (NULL with fixed_bag_size, or NONE) */
  const DLTensor* per_sample_weights; /* as in the forward, or NULL */
  const DLTensor* argmax;             /* MAX: the forward's argmax (required) */
  const DLTensor* grad_output;        /* shaped like the forward's output, float32 / float16 / bfloat16
                                       * (float64 with, and only with, a float64 table) */

  /* (a) dense: [rows, dim] float32 (float64 for a float64 table); the gradient is ADDED to it. */
  DLTensor* grad_table;
  /* (b) row-sparse: unique_ids [capacity] (dtype of indices) gets the touched
   * rows in increasing order, unique_grads [capacity, dim] float32 (float64 for a float64 table) their
   * gradients, num_unique int64 [1] their count U (written on the device, no
   * host sync). capacity >= nnz (the worst case); entries past U are not written. */
  DLTensor* unique_ids;
  DLTensor* unique_grads;
  DLTensor* num_unique;
  /* The forward's table (required: it gives rows, dim and dtype). (c)
   * updates it in place; (d) reads it. state1 / state2 as the optimizer
   * needs (see spembed_optimizer_t), NULL otherwise. */
  DLTensor* table;
  DLTensor* state1;
  DLTensor* state2;
  const spembed_optimizer_options_t* optimizer; /* non-NULL selects (c) */
  /* (d) gradient of the per-sample weights [nnz], the weights' dtype (SUM or NONE; needs
   * `table` as read before any optimizer step of this call). */
  DLTensor* grad_per_sample_weights;
} spembed_embedding_bag_backward_args_t;

/* Bytes of workspace the backward needs for `nnz` ids of `index_dtype` into
 * a table of `rows` x `dim` (0 on the CPU). The same for every output set,
 * both algorithms and any number of bags. It grows with nnz (sort and run
 * buffers, about 56 bytes per id with 32-bit positions, i.e. for nnz < 2^31 - 2
 * and rows < 2^32 - 1) and with nnz * dim / 16 bytes for the partial sums
 * of rows hit more than SPEMBED_BACKWARD_CHUNK times. 256-byte aligned. */
spembed_status_t spembed_embedding_bag_backward_workspace_size(
    spembed_handle_t handle, DLDeviceType device_type, DLDataType index_dtype, int64_t nnz,
    int64_t rows, int64_t dim, spembed_backward_algorithm_t algorithm, size_t* bytes);

/* Backward of spembed_embedding_bag_forward. `options` must be the forward's.
 * padding_idx rows get no gradient; out-of-range ids follow options.bounds_policy
 * as in the forward (reported the same way through `report`, may be NULL). */
spembed_status_t spembed_embedding_bag_backward(
    spembed_handle_t handle, const spembed_embedding_bag_backward_args_t* args,
    const spembed_embedding_bag_options_t* options, spembed_backward_algorithm_t algorithm,
    DLTensor* report, void* workspace, size_t workspace_bytes, spembed_stream_t stream);

/* Backward of the table-batched forward. Per-table outputs are arrays of T
 * views in the batch's table order; the batch's tables are what (c) updates
 * and (d) reads. (b) uses linearized rows: row r of table t is
 * r + (rows of tables 0..t-1); unique_grads is [capacity, max dim] float32 and
 * a row of a narrower table has zeros past its dim. */
typedef struct spembed_embedding_bag_batched_backward_args {
  const DLTensor* indices;
  const DLTensor* offsets;
  const DLTensor* per_sample_weights;
  const DLTensor* argmax;       /* MAX: the forward's argmax [B, total_dim] */
  const DLTensor* grad_output;  /* [B, total_dim] */
  DLTensor* grad_tables;        /* (a) T views [rows_t, dim_t] float32, or NULL */
  DLTensor* unique_ids;         /* (b) [capacity] int64 linearized rows, or NULL */
  DLTensor* unique_grads;       /* (b) [capacity, max dim] float32 (float64 tables: float64) */
  DLTensor* num_unique;         /* (b) int64 [1] */
  DLTensor* states1;            /* (c) T views, or NULL */
  DLTensor* states2;            /* (c) T views (Adam), or NULL */
  const spembed_optimizer_options_t* optimizer; /* non-NULL selects (c) */
  DLTensor* grad_per_sample_weights; /* (d) [nnz] float32, or NULL */
} spembed_embedding_bag_batched_backward_args_t;

/* The workspace of spembed_embedding_bag_batched_backward for `nnz` ids in
 * all over `batch`'s tables (0 for a CPU batch). */
spembed_status_t spembed_embedding_bag_batched_backward_workspace_size(
    spembed_handle_t handle, spembed_table_batch_t batch, DLDataType index_dtype, int64_t nnz,
    spembed_backward_algorithm_t algorithm, size_t* bytes);

spembed_status_t spembed_embedding_bag_batched_backward(
    spembed_handle_t handle, spembed_table_batch_t batch,
    const spembed_embedding_bag_batched_backward_args_t* args,
    const spembed_embedding_bag_options_t* options, spembed_backward_algorithm_t algorithm,
    DLTensor* report, void* workspace, size_t workspace_bytes, spembed_stream_t stream);

/* ---- varlen attention ------------------------------------------------------ */

/* Masked attention over packed (jagged) sequences: self-attention over each
 * user's history (query length == key length) and target attention (a
 * sequence's candidate items as queries against its history).
 *
 * Layout. B sequences; sequence b has Lq = cu_seqlens_q[b+1] - cu_seqlens_q[b]
 * queries and Lk = cu_seqlens_k[b+1] - cu_seqlens_k[b] keys.
 *  q           [total_q, heads, head_dim]     float32 / float16 / bfloat16
 *  k, v        [total_k, kv_heads, head_dim]  same dtype; heads % kv_heads == 0:
 *              query head h reads kv head h / (heads / kv_heads) (GQA / MQA)
 *  cu_seqlens_q, cu_seqlens_k  int32 [B + 1]: first 0, non-decreasing, last
 *              total_q (total_k)
 *  out (O)     [total_q, heads, head_dim], dtype of q
 *  lse         NULL or float32 [heads, total_q]: the natural log of the sum of
 *              exp(scale * q.k) over the keys the query sees
 * head_dim is any value in [1, 256]. Every tensor's innermost dimension must be
 * contiguous (stride 1); the token and head strides may be anything >= a
 * compact layout's (views of a fused QKV projection work). cu_seqlens and lse
 * are contiguous.
 *
 * Mask. Query i (0-based within its sequence) sees key j (within the same
 * sequence) when 0 <= j < Lk and
 *   CAUSAL:                     j <= i + Lk - Lq        (aligned bottom-right)
 *   window_left  >= 0:          j >= i + Lk - Lq - window_left
 *   window_right >= 0:          j <= i + Lk - Lq + window_right
 * (with CAUSAL a window_right > 0 changes nothing). A query that sees no key
 * (an empty key sequence, or a row the mask hides fully) gets O = 0, LSE =
 * -inf and zero gradients, never NaN.
 *
 * Numerics. Scores, softmax and accumulation in float32 on CUDA (float64 on
 * CPU). float16 / bfloat16 calls with head_dim a multiple of 8 up to 128 and
 * 16-byte aligned rows run on tensor cores on sm_80 and newer (float32
 * accumulation); the rest widen inputs to float32 and run on the CUDA cores
 * (docs/attention.md).
 *
 * Data checks. On CPU the offsets are checked before anything is written and
 * a bad one fails the call (INVALID_ARGUMENT naming the entry). On CUDA the
 * host never reads them: a check kernel does, and on a bad entry the compute
 * kernels write nothing; `report` (optional, as for the embedding bag ops)
 * then gets status INVALID_ARGUMENT and SPEMBED_REPORT_BAD_OFFSET_POSITION =
 * i for a bad cu_seqlens_q[i], B + 1 + i for a bad cu_seqlens_k[i]. */
typedef enum spembed_attention_mask {
  SPEMBED_ATTENTION_MASK_NONE = 0,
  SPEMBED_ATTENTION_MASK_CAUSAL = 1
} spembed_attention_mask_t;

/* Initialise with spembed_attention_options_init and change what differs. */
typedef struct spembed_attention_options {
  spembed_attention_mask_t mask; /* default NONE */
  int64_t window_left;           /* -1 (default): no left limit; else >= 0, see above */
  int64_t window_right;          /* -1 (default): no right limit; else >= 0 */
  float scale;                   /* 0 (default): 1 / sqrt(head_dim); else finite, non-zero */
  /* Upper bounds of the query / key lengths, or 0 (default): unknown. Hints
   * only, used to pick the kernel configuration; results are correct whatever
   * they are (the host never reads cu_seqlens on CUDA). */
  int64_t max_seqlen_q;
  int64_t max_seqlen_k;
} spembed_attention_options_t;

void spembed_attention_options_init(spembed_attention_options_t* options);

/* Bytes of workspace the forward needs on `device_type` for `batch` sequences
 * (B), `total_q` query tokens and `heads` query heads (0 on the CPU). 256-byte
 * aligned; grows with B only (a check record and the tile schedule). */
spembed_status_t spembed_varlen_attention_forward_workspace_size(spembed_handle_t handle,
                                                                DLDeviceType device_type,
                                                                int64_t batch, int64_t total_q,
                                                                int64_t heads, size_t* bytes);

/* O = softmax(scale * Q K^T + mask) V per sequence and head; see above.
 * options NULL for the defaults; lse and report may be NULL. */
spembed_status_t spembed_varlen_attention_forward(
    spembed_handle_t handle, const DLTensor* q, const DLTensor* k, const DLTensor* v,
    const DLTensor* cu_seqlens_q, const DLTensor* cu_seqlens_k,
    const spembed_attention_options_t* options, DLTensor* out, DLTensor* lse, DLTensor* report,
    void* workspace, size_t workspace_bytes, spembed_stream_t stream);

/* Bytes of workspace the backward needs (0 on the CPU): the forward's, plus
 * float32 [heads, total_q] for rowsum(dO * O). */
spembed_status_t spembed_varlen_attention_backward_workspace_size(spembed_handle_t handle,
                                                                 DLDeviceType device_type,
                                                                 int64_t batch, int64_t total_q,
                                                                 int64_t heads, size_t* bytes);

/* Gradients of the forward. out and lse are the forward's (lse is required);
 * dout is shaped like out; dq like q, dk and dv like k (all of q's dtype).
 * options must be the forward's. The gradients are overwritten, not added to.
 * deterministic != 0 asks for results bitwise identical run to run; the
 * current CUDA kernels are deterministic either way (each output element is
 * summed by one thread in a fixed order, no atomics), so the flag costs
 * nothing today and keeps the contract if a faster atomic path is added. */
spembed_status_t spembed_varlen_attention_backward(
    spembed_handle_t handle, const DLTensor* q, const DLTensor* k, const DLTensor* v,
    const DLTensor* out, const DLTensor* dout, const DLTensor* lse, const DLTensor* cu_seqlens_q,
    const DLTensor* cu_seqlens_k, const spembed_attention_options_t* options, int deterministic,
    DLTensor* dq, DLTensor* dk, DLTensor* dv, DLTensor* report, void* workspace,
    size_t workspace_bytes, spembed_stream_t stream);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* SPEMBED_SPEMBED_H_ */
