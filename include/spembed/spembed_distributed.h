/*
 * spembed distributed: a sharded (model-parallel) embedding-bag collection
 * over a communicator. Plain C99 API on top of spembed.h; needs no NCCL or
 * CUDA header. docs/distributed.md describes the data flow.
 *
 * Model
 *  - T tables; table t has rows_t x dim_t. Each table is placed by a plan
 *    entry: TABLE_WISE (whole on one owner rank) or ROW_WISE (rows split in
 *    contiguous blocks of ceil(rows_t / world): rank r owns global rows
 *    [r * blk, min(rows_t, (r + 1) * blk)); ranks past the end own none).
 *  - Each rank runs its local batch of B_local samples (B_local may differ
 *    between ranks, and be 0): ids / offsets table-major as in
 *    spembed_embedding_bag_batched_forward (offsets [T * B_local + 1]; bag
 *    t * B_local + b is sample b's bag of table t; ids are global rows of
 *    their table). The output is [B_local, sum of dims] for its own samples.
 *  - Results equal the unsharded table batch run on the global batch (the
 *    ranks' local batches concatenated in rank order): see docs/distributed.md
 *    for where they are bitwise equal and where summation order differs.
 *
 * Collective calls
 *  - forward and backward are collective: every rank of the communicator
 *    calls them for the same step, in the same order. A rank whose arguments
 *    or data are bad still takes part in every exchange of the call, and then
 *    every rank returns the failure (the first failing rank's status; a rank
 *    that was fine says which rank failed). Nothing is written on failure.
 *  - The other functions are local (no communication).
 *
 * Devices
 *  - The communicator fixes the device: CPU tensors (kDLCPU) with the
 *    in-process communicator (N ranks as N host threads of one process); CUDA
 *    tensors on the handle's device with the NCCL communicator, or with the
 *    CUDA in-process one (threads sharing one GPU; tests, emulation build).
 *  - On CUDA every step is queued on the call's stream. The host waits for
 *    the device twice per forward (the checks and counts before the
 *    exchanges, the local lookups' statuses before writing the output) and
 *    once per backward (the counts); docs/distributed.md.
 */
#ifndef SPEMBED_SPEMBED_DISTRIBUTED_H_
#define SPEMBED_SPEMBED_DISTRIBUTED_H_

#include "spembed/spembed.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Same type as NCCL's ncclComm_t, declared here so users need no NCCL header
 * (skipped when nccl.h came first: C99 forbids repeating a typedef). */
#ifndef NCCL_H_
struct ncclComm;
typedef struct ncclComm* ncclComm_t;
#endif

typedef struct spembed_comm_st* spembed_comm_t;
typedef struct spembed_sharded_collection_st* spembed_sharded_collection_t;

/* ---- communicators ----------------------------------------------------------- */

/* A communicator over the caller's NCCL communicator (borrowed: it must
 * outlive the spembed communicator), on the handle's CUDA device. Rank and
 * world come from NCCL. Its exchanges are ncclSend / ncclRecv in one group
 * on the call's stream; the counts all-gather copies to the host and
 * synchronises the stream. NCCL is loaded at run time (libnccl.so.2), so
 * libspembed has no link dependency on it: NOT_SUPPORTED when it cannot be
 * loaded, or in a build without nccl.h. Allocates a small device buffer. */
spembed_status_t spembed_comm_create_nccl(spembed_handle_t handle, ncclComm_t nccl,
                                          spembed_comm_t* comm);

/* `world` communicators (ranks 0 .. world - 1, comms[r] is rank r) for world
 * host threads of this process, exchanging CPU tensors through shared memory
 * and barriers. Each rank's thread uses only its own communicator. Destroy
 * every one of them (the shared state goes with the last). world in [1, 1024]. */
spembed_status_t spembed_comm_create_in_process(int world, spembed_comm_t* comms);
/* The same for CUDA tensors: the ranks' threads share the CUDA device of the
 * handle each passes to spembed_sharded_collection_create, each rank with its
 * own stream. An exchange waits for the rank's stream (its sends are then
 * written), meets the others, and copies with cudaMemcpy. Meant for tests and
 * for the emulation build (which runs the CUDA path on the CPU); across GPUs
 * use the NCCL communicator. */
spembed_status_t spembed_comm_create_in_process_cuda(int world, spembed_comm_t* comms);

spembed_status_t spembed_comm_destroy(spembed_comm_t comm);
spembed_status_t spembed_comm_rank(spembed_comm_t comm, int* rank, int* world);

/* ---- plan -------------------------------------------------------------------- */

typedef enum spembed_sharding {
  SPEMBED_SHARDING_TABLE_WISE = 0,
  SPEMBED_SHARDING_ROW_WISE = 1
} spembed_sharding_t;

typedef struct spembed_table_spec {
  int64_t rows;            /* >= 1 */
  int64_t dim;             /* >= 1 */
  double ids_per_sample;   /* expected ids per sample (the planner's load measure), >= 0 */
} spembed_table_spec_t;

/* One entry per table. `owner` is the rank of a TABLE_WISE table (ignored,
 * and set to -1 by the planner, for ROW_WISE). */
typedef struct spembed_shard_plan_entry {
  spembed_sharding_t sharding;
  int owner;
} spembed_shard_plan_entry_t;

/* Greedy plan. Bytes of a table: rows x dim x (bytes of table_dtype) plus the
 * optimizer's state (float32: ADAGRAD and ADAM rows x dim, twice for ADAM;
 * ROWWISE_ADAGRAD rows). Tables are placed in decreasing bytes (ties: lower
 * index first). A table larger than budget_bytes becomes ROW_WISE (each rank
 * gets its block); the others go TABLE_WISE to the rank of least load
 * (sum of ids_per_sample of its tables; ties: lower rank) among those whose
 * bytes still fit the budget. A table that fits nowhere is an
 * INVALID_ARGUMENT naming it; `plan` is then not written. */
spembed_status_t spembed_shard_plan_propose(const spembed_table_spec_t* specs, int64_t num_tables,
                                            int world, DLDataType table_dtype,
                                            spembed_optimizer_t optimizer, int64_t budget_bytes,
                                            spembed_shard_plan_entry_t* plan);

/* One shard a rank holds: `rows` rows of `table` starting at global row
 * `first_row`, `dim` wide. */
typedef struct spembed_shard_shape {
  int64_t table;
  int64_t rows;
  int64_t first_row;
  int64_t dim;
} spembed_shard_shape_t;

/* The shards `rank` holds under `plan`, in its local order: TABLE_WISE shards
 * by table index, then ROW_WISE shards by table index; ROW_WISE blocks with no
 * rows are left out. `shapes` NULL: only *count is written; else it has
 * room for *count entries as a previous call returned. The caller allocates
 * each shard [rows, dim] (and optimizer states of that shape) and passes them
 * to spembed_sharded_collection_create / _backward in this order. */
spembed_status_t spembed_shard_plan_local_shards(const spembed_table_spec_t* specs,
                                                 int64_t num_tables,
                                                 const spembed_shard_plan_entry_t* plan,
                                                 int world, int rank,
                                                 spembed_shard_shape_t* shapes, int64_t* count);

/* ---- sharded collection ------------------------------------------------------- */

/* Creates this rank's part of the collection (local: no communication; every
 * rank must pass the same specs, plan, options and capacities).
 *  comm      the rank's communicator (rank and world come from it); borrowed.
 *  shards    num_shards views as spembed_shard_plan_local_shards lists them
 *            ([rows, dim], table_dtype, the communicator's device: CPU for
 *            spembed_comm_create_in_process, the handle's CUDA device for the
 *            others); borrowed, they must outlive the collection. NULL
 *            when num_shards is 0.
 *  options   the collection's pooling (SUM, MEAN, or MAX when every table is
 *            TABLE_WISE; ROW_WISE with MAX and NONE are NOT_SUPPORTED),
 *            padding_idx (applies to every table), bounds policy,
 *            scale_grad_by_freq; fixed_bag_size must be 0. NULL: defaults.
 *  max_local_batch, max_local_ids  capacity: the largest B_local and the
 *            largest number of ids any rank passes in one call (>= 0). They
 *            size the workspace; a call over them is INVALID_ARGUMENT. */
spembed_status_t spembed_sharded_collection_create(
    spembed_handle_t handle, const spembed_table_spec_t* specs, int64_t num_tables,
    const spembed_shard_plan_entry_t* plan, DLDataType table_dtype, spembed_comm_t comm,
    const DLTensor* shards, int64_t num_shards, const spembed_embedding_bag_options_t* options,
    int64_t max_local_batch, int64_t max_local_ids, spembed_sharded_collection_t* collection);

spembed_status_t spembed_sharded_collection_destroy(spembed_sharded_collection_t collection);

/* Bytes of workspace forward and backward need at the capacity given to
 * create, on the collection's device (host memory for CPU tensors, device
 * memory for CUDA ones); 16-byte aligned. It holds the routed ids and the
 * exchanged rows of one call: it grows with world x (max_local_ids +
 * max_local_batch x (num_tables + sum of dims)); on CUDA it also holds the
 * local lookups' and backward's own workspace; docs/distributed.md. */
spembed_status_t spembed_sharded_collection_workspace_size(spembed_sharded_collection_t collection,
                                                           size_t* bytes);

/* Sharded pooled lookup (collective).
 *  indices  [nnz] int32 / int64, table-major, global rows; nnz <= max_local_ids.
 *  offsets  [num_tables * B_local + 1], dtype of indices; B_local <= max_local_batch.
 *  per_sample_weights  [nnz] float32 or NULL (SUM only).
 *  output   [B_local, sum of dims] float32 / float16 / bfloat16, strides[1] == 1.
 *  report   NULL or int64 [SPEMBED_REPORT_SIZE] on the collection's device:
 *           this rank's own ids and offsets (positions are in this rank's
 *           `indices`). The return status already says what it says.
 * Out-of-range ids follow options.bounds_policy on every rank; under ERROR
 * any rank's bad id fails the call on every rank. */
spembed_status_t spembed_sharded_collection_forward(
    spembed_sharded_collection_t collection, const DLTensor* indices, const DLTensor* offsets,
    const DLTensor* per_sample_weights, DLTensor* output, DLTensor* report, void* workspace,
    size_t workspace_bytes, spembed_stream_t stream);

/* Backward with a fused optimizer step on this rank's shards (collective).
 * Inputs as in the forward of the same step; grad_output [B_local, sum of
 * dims] float32 / float16 / bfloat16. states1 / states2: num_shards views in
 * local shard order as the optimizer needs (see spembed_optimizer_t), else
 * NULL. Every row gets the sum over the global batch of its contributions,
 * then one optimizer step, exactly as spembed_embedding_bag_batched_backward
 * on the global batch. The ids are routed again (the forward keeps no state;
 * with MAX the owners recompute the forward's argmax). */
spembed_status_t spembed_sharded_collection_backward(
    spembed_sharded_collection_t collection, const DLTensor* indices, const DLTensor* offsets,
    const DLTensor* per_sample_weights, const DLTensor* grad_output, DLTensor* states1,
    DLTensor* states2, const spembed_optimizer_options_t* optimizer, DLTensor* report,
    void* workspace, size_t workspace_bytes, spembed_stream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* SPEMBED_SPEMBED_DISTRIBUTED_H_ */
