/**
 * @file comm.h
 * @brief Data-parallel training: a communicator interface (rank, size and
 * three collectives), its single-process implementation, and the gradient
 * reduction whose result is bitwise the same for any number of processes.
 *
 * The library has no MPI dependency: a communicator is a plain struct of
 * function pointers and a user pointer. tb_comm_single() makes the
 * one-process communicator; libtblocks_mpi (tblocks_mpi.h, built when an
 * MPI compiler wrapper is found) makes one over an MPI communicator; a test
 * may make its own (test_comm.c runs P ranks as threads in one process).
 *
 * **Determinism across process counts** (docs/data_parallel.md). An
 * optimizer step's global batch is cut into `n_micro` fixed micro-batches
 * whose boundaries do not depend on the number of processes P.
 * tb_dp_split() gives rank r the contiguous range of micro-batch indices it
 * computes. Each micro-batch's gradient is computed into ZEROED gradient
 * buffers (never accumulated onto another micro-batch's: `g1 + g2`
 * computed by a GEMM with beta = 1 is not bitwise `g1` plus a separately
 * computed `g2`) and copied out with tb_dp_reducer_store(); then
 * tb_dp_reducer_reduce() gathers every micro-batch's gradient to every rank
 * and adds them in micro-batch index order,
 *
 *     g = g_0;  g += g_1;  g += g_2;  ...  g += g_{n_micro - 1}
 *
 * element by element in float, never in an order the transport chooses.
 * One process runs the same arithmetic with all micro-batches local, so
 * P = 1, 2, 3, ... agree bit for bit. Random streams belong to a
 * micro-batch (tb_dp_rng(): a function of a base stream, the step and the
 * micro-batch index), never to a process.
 *
 * ZeRO-1 (tb_zero) shards AdamW's moments across the ranks: each rank
 * updates its slice of the flattened parameters and the parameters are
 * all-gathered, bitwise as one unsharded optimizer.
 *
 * Cost: every rank receives all n_micro gradients (n_micro x the trainable
 * parameter count floats of memory and traffic per step). That is the price
 * of the simplest fixed order; a fixed tree over micro-batch index would
 * move fewer bytes and keeps the same promise.
 */
#ifndef TBLOCKS_COMM_H
#define TBLOCKS_COMM_H

#include <stddef.h>
#include <stdint.h>

#include "context.h"
#include "optim.h"
#include "param.h"
#include "rng.h"
#include "status.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @brief A communicator: `size` processes, this one `rank`, and the
 * collectives training needs. Every rank must call the same collectives in
 * the same order. An implementation reports failure as a tb_status with a
 * message in ctx (tb_ctx_set_error()); it must return (not hang) when it
 * can tell that a peer is gone.
 */
typedef struct tb_comm {
    size_t rank; /**< This process, 0..size-1. */
    size_t size; /**< Processes, >= 1. */
    void *user;  /**< The implementation's state, passed to every call. */
    /**
     * All-gather of variable-size blocks: rank i contributes recv_bytes[i]
     * bytes (send_bytes == recv_bytes[rank]); every rank receives all of
     * them, rank 0's first, packed without gaps in recv. send may be NULL
     * when send_bytes is 0; recv must not overlap send.
     */
    tb_status (*allgatherv)(void *user, tb_ctx *ctx, const void *send, size_t send_bytes,
                            void *recv, const size_t *recv_bytes);
    /** Copy `bytes` bytes of buf on rank `root` into buf on every rank. */
    tb_status (*broadcast)(void *user, tb_ctx *ctx, void *buf, size_t bytes, size_t root);
    /** Return when every rank has called it. */
    tb_status (*barrier)(void *user, tb_ctx *ctx);
} tb_comm;

/**
 * @brief The one-process communicator (rank 0 of 1): all-gather copies
 * send to recv, broadcast and barrier do nothing. It needs no free.
 * @param comm Receives the communicator (ignored if NULL).
 */
void tb_comm_single(tb_comm *comm);

/**
 * @brief Check a communicator's fields: non-NULL function pointers,
 * size >= 1, rank < size.
 * @param ctx Context (for the message); may be NULL.
 * @param comm Communicator.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG naming the field.
 */
tb_status tb_comm_check(tb_ctx *ctx, const tb_comm *comm);

/**
 * @brief All-gather of variable-size byte blocks (see tb_comm::allgatherv),
 * with the arguments checked first.
 * @param ctx Context.
 * @param comm Communicator.
 * @param send This rank's recv_bytes[rank] bytes (NULL allowed if 0).
 * @param send_bytes Must equal recv_bytes[rank].
 * @param recv Receives the sum of recv_bytes bytes; must not overlap send.
 * @param recv_bytes comm->size block sizes, the same on every rank.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (a size mismatch or
 *         overlap); TB_ERR_OVERFLOW (the total does not fit in size_t); or
 *         the implementation's status (e.g. TB_ERR_IO for a lost peer).
 */
tb_status tb_comm_allgatherv(tb_ctx *ctx, const tb_comm *comm, const void *send,
                             size_t send_bytes, void *recv, const size_t *recv_bytes);

/**
 * @brief Broadcast `bytes` bytes of buf from rank `root` to every rank.
 * @param ctx Context.
 * @param comm Communicator.
 * @param buf Buffer of `bytes` bytes (NULL allowed if 0).
 * @param bytes Bytes, the same on every rank.
 * @param root Rank whose buffer is sent, < comm->size.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG; or the
 *         implementation's status.
 */
tb_status tb_comm_broadcast(tb_ctx *ctx, const tb_comm *comm, void *buf, size_t bytes,
                            size_t root);

/**
 * @brief Wait for every rank.
 * @param ctx Context.
 * @param comm Communicator.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG; or the
 *         implementation's status.
 */
tb_status tb_comm_barrier(tb_ctx *ctx, const tb_comm *comm);

/**
 * @brief What a counting communicator (tb_comm_counting_init()) has moved:
 * payload bytes, as the collectives' arguments define them, not what the
 * transport puts on the wire (a ring or a tree forwards data, and headers
 * are not counted, so the wire carries at least this much).
 */
typedef struct tb_comm_counts {
    uint64_t calls;      /**< Collectives that returned TB_OK (all three kinds). */
    uint64_t sent_bytes; /**< This rank's bytes delivered to others: an all-gather's
                              block times (size - 1), a broadcast's buffer times
                              (size - 1) on its root. */
    uint64_t recv_bytes; /**< Other ranks' bytes received: an all-gather's blocks
                              but this rank's, a broadcast's buffer off its root. */
} tb_comm_counts;

/**
 * @brief The state of a counting communicator: the communicator it
 * forwards to and the counts so far. Plain data the caller owns; it must
 * outlive the communicator made from it.
 */
typedef struct tb_comm_counter {
    tb_comm inner;         /**< The wrapped communicator (a copy of its fields). */
    tb_comm_counts counts; /**< Counts since init (reset them by assigning zeros). */
} tb_comm_counter;

/**
 * @brief Make `out` a communicator that forwards every collective to
 * `inner` and counts, in `counter`, the calls that succeed and their
 * payload bytes (tb_comm_counts): how a training loop measures what one
 * step communicates. Same rank and size as inner; the collectives'
 * results are inner's exactly.
 * @param ctx Context (for the message); may be NULL.
 * @param out Receives the counting communicator.
 * @param counter Receives a copy of inner and zero counts; must outlive out.
 * @param inner A valid communicator (tb_comm_check()).
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (inner is not valid).
 */
tb_status tb_comm_counting_init(tb_ctx *ctx, tb_comm *out, tb_comm_counter *counter,
                                const tb_comm *inner);

/**
 * @brief The micro-batches rank `rank` of `size` computes: the contiguous
 * indices [*first, *first + *count), with first = floor(rank n_micro /
 * size). Counts differ by at most one; a rank may get none when
 * n_micro < size.
 * @param n_micro Micro-batches per step, >= 1.
 * @param size Processes, >= 1.
 * @param rank < size.
 * @param first Receives the first index.
 * @param count Receives the number of indices.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG; TB_ERR_OVERFLOW
 *         (rank * n_micro does not fit in size_t).
 */
tb_status tb_dp_split(size_t n_micro, size_t size, size_t rank, size_t *first, size_t *count);

/**
 * @brief The random stream of micro-batch `micro` of optimizer step `step`:
 * a fresh stream whose key is a hash of base's key and counter, step and
 * micro (base is not advanced). Every rank, and one process alone, draws
 * the same numbers for the same micro-batch.
 * @param out Receives the stream (ignored if NULL).
 * @param base The run's stream (e.g. the one a checkpoint keeps).
 * @param step Optimizer step.
 * @param micro Micro-batch index within the step.
 */
void tb_dp_rng(tb_rng *out, const tb_rng *base, uint64_t step, uint64_t micro);

/**
 * @brief Buffers of the deterministic gradient reduction over a parameter
 * list's trainable parameters that have gradients (in list order, as the
 * optimizer sees them). Each slot holds one micro-batch: its gradients,
 * its loss and a flag saying it was stored (so that every rank sees a
 * missing micro-batch and fails the same way instead of some waiting).
 */
typedef struct tb_dp_reducer {
    const tb_comm *comm;    /**< The communicator (not owned). */
    size_t n_micro;         /**< Micro-batches per step. */
    size_t first;           /**< This rank's first micro-batch (tb_dp_split()). */
    size_t count;           /**< This rank's micro-batches. */
    size_t numel;           /**< Gradient floats per micro-batch. */
    size_t n_params;        /**< List entries the reducer was made for. */
    float *local;           /**< count slots of numel + 2 floats. */
    float *all;             /**< n_micro slots of numel + 2 floats. */
    size_t *recv_bytes;     /**< comm->size block sizes. */
    tb_allocator allocator; /**< Hooks the buffers came from. */
} tb_dp_reducer;

/**
 * @brief Allocate the reduction's buffers for list (its trainable
 * parameters with gradients, counted now) and n_micro micro-batches split
 * over comm by tb_dp_split().
 * @param ctx Context.
 * @param r Reducer to initialise; left empty on failure.
 * @param comm Communicator; must outlive r.
 * @param list Parameters.
 * @param n_micro Micro-batches per step, >= 1.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG; TB_ERR_STATE (a
 *         stale list, see param.h); TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY.
 */
tb_status tb_dp_reducer_init(tb_ctx *ctx, tb_dp_reducer *r, const tb_comm *comm,
                             const tb_param_list *list, size_t n_micro);

/**
 * @brief Release the reducer's buffers; r is left empty.
 * @param r Reducer; NULL or an empty reducer is fine.
 */
void tb_dp_reducer_free(tb_dp_reducer *r);

/**
 * @brief Copy the list's current gradients and the loss into micro-batch
 * `micro`'s slot. Call it once per local micro-batch, after computing its
 * gradient into zeroed gradients (tb_param_list_zero_grad() first).
 * @param ctx Context.
 * @param r Reducer.
 * @param list The list r was made for (same trainable parameters).
 * @param micro Micro-batch index, in [r->first, r->first + r->count).
 * @param loss The micro-batch's loss (any value; reported back by reduce).
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (micro not local);
 *         TB_ERR_STATE (the list changed since init, or a stale list).
 */
tb_status tb_dp_reducer_store(tb_ctx *ctx, tb_dp_reducer *r, const tb_param_list *list,
                              size_t micro, float loss);

/**
 * @brief Gather every micro-batch's slot to every rank and write
 * g_0 + g_1 + ... + g_{n_micro-1} (added in index order, in float) into the
 * list's gradients; the slots are then free for the next step. A
 * collective: every rank calls it once per step, after storing all of its
 * micro-batches.
 * @param ctx Context.
 * @param r Reducer.
 * @param list The list r was made for.
 * @param losses Receives the n_micro losses in index order, or NULL.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_STATE (a micro-batch of any rank
 *         was not stored: every rank returns it, the gradients unchanged;
 *         or the list changed); or the communicator's status.
 */
tb_status tb_dp_reducer_reduce(tb_ctx *ctx, tb_dp_reducer *r, tb_param_list *list,
                               float *losses);

/* ---- ZeRO-1: the optimizer state sharded across ranks ------------------------ */

/**
 * @brief ZeRO stage 1: AdamW whose moments are sharded across the ranks.
 *
 * The list's trainable parameters (with gradients, in list order) are seen
 * as one flat vector of N floats; rank r owns the contiguous shard
 * [floor(r N / P), floor((r + 1) N / P)). `opt` is an ordinary tb_adam over
 * views of that shard (one 1-D view per parameter piece, under the
 * parameter's name), so it holds about 2 N / P floats of moments instead of
 * 2 N. tb_zero_step() updates the shard from the (already reduced, equal on
 * every rank) gradients and all-gathers the parameters. Adam's update is
 * element by element, so the result is bitwise that of one tb_adam over the
 * whole list (tested for 1..5 ranks).
 */
typedef struct tb_zero {
    const tb_comm *comm;    /**< The communicator (not owned). */
    size_t numel;           /**< N: trainable floats over all parameters. */
    size_t lo;              /**< This rank's shard: [lo, hi) of the flat vector. */
    size_t hi;              /**< End of the shard. */
    size_t n_params;        /**< Trainable list entries at init. */
    tb_param *views;        /**< n_views views of shard pieces (value and grad). */
    size_t *view_of;        /**< n_views: the list index each view is part of. */
    size_t *view_at;        /**< n_views: the view's first element in its parameter. */
    size_t n_views;         /**< Shard pieces. */
    tb_param_list list;     /**< The views, named as their parameters. */
    tb_adam opt;            /**< AdamW over the shard. */
    float *flat;            /**< N floats: all-gathered parameter values. */
    float *save;            /**< 4 (hi - lo) floats: the shard before a step. */
    size_t *recv_bytes;     /**< comm->size shard sizes in bytes. */
    tb_allocator allocator; /**< Hooks the buffers came from. */
} tb_zero;

/**
 * @brief Shard the list's trainable parameters over comm and set up AdamW
 * (cfg) for this rank's shard.
 * @param ctx Context.
 * @param z State to initialise; left empty on failure.
 * @param comm Communicator; must outlive z.
 * @param list Parameters; every rank must pass the same list (same names,
 *        shapes and values).
 * @param cfg Optimizer configuration (as tb_adam_init()).
 * @return As tb_adam_init(); TB_ERR_OVERFLOW; TB_ERR_NO_MEMORY.
 */
tb_status tb_zero_init(tb_ctx *ctx, tb_zero *z, const tb_comm *comm, const tb_param_list *list,
                       const tb_adam_config *cfg);

/**
 * @brief Release z's optimizer state and buffers; z is left empty.
 * @param z State; NULL or an empty z is fine.
 */
void tb_zero_free(tb_zero *z);

/**
 * @brief tb_adam_add_group() for a sharded optimizer: `select` is asked
 * about the FULL parameters (name and shape), as it would be for an
 * unsharded tb_adam over list, and every shard piece of a selected
 * parameter moves into the new group.
 * @param ctx Context.
 * @param z State.
 * @param list The list z was made for.
 * @param lr The group's learning rate.
 * @param weight_decay The group's weight decay.
 * @param select Predicate (param.h).
 * @param user Passed to select.
 * @param n_selected Receives how many full parameters were selected, or NULL.
 * @return As tb_adam_add_group(); TB_ERR_STATE if the list changed.
 */
tb_status tb_zero_add_group(tb_ctx *ctx, tb_zero *z, const tb_param_list *list, float lr,
                            float weight_decay, tb_param_select_fn select, void *user,
                            size_t *n_selected);

/**
 * @brief One AdamW step of this rank's shard, then the parameters
 * all-gathered into every parameter of list. A collective. If the step is
 * refused on any rank (TB_ERR_NON_FINITE: a non-finite gradient or an
 * overflow in that rank's shard), it is refused on every rank: shards that
 * were updated are restored, every rank's `opt.skipped` counts it, and
 * nothing changes anywhere.
 * @param ctx Context.
 * @param z State.
 * @param list The list z was made for (its gradients equal on every rank).
 * @param lr_factor As tb_adam_step().
 * @return TB_OK; as tb_adam_step(); TB_ERR_STATE if the list changed; or
 *         the communicator's status.
 */
tb_status tb_zero_step(tb_ctx *ctx, tb_zero *z, tb_param_list *list, float lr_factor);

/**
 * @brief This rank's optimizer memory: its shard's moments and slots
 * (tb_adam_state_bytes()) plus the step's buffers (the gathered parameters
 * and the shard's saved copy).
 * @param z State.
 * @return Bytes (0 for NULL).
 */
size_t tb_zero_state_bytes(const tb_zero *z);

/**
 * @brief Fill `full`, an unsharded tb_adam over the same list (made with
 * tb_adam_init() with the same configuration; its groups are not
 * changed), with every rank's moments, the step and the skipped count: a
 * coherent optimizer state, e.g. for tb_checkpoint_save(). A collective;
 * every rank receives the whole state.
 * @param ctx Context.
 * @param z State.
 * @param full Receives the state; must have the list's trainable
 *        parameters in list order.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (full does not match,
 *         or AMSGrad differs); TB_ERR_NO_MEMORY; or the communicator's status.
 */
tb_status tb_zero_gather_state(tb_ctx *ctx, tb_zero *z, tb_adam *full);

/**
 * @brief Take this rank's shard of the moments, the step and the skipped
 * count from `full` (an unsharded state, e.g. just loaded from a
 * checkpoint written by any number of processes). Not a collective.
 * @param ctx Context.
 * @param z State.
 * @param full The unsharded state over the same list.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (full does not match).
 */
tb_status tb_zero_scatter_state(tb_ctx *ctx, tb_zero *z, const tb_adam *full);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_COMM_H */
