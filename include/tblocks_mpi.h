/**
 * @file tblocks_mpi.h
 * @brief libtblocks_mpi: the communicator interface of comm.h over MPI (a
 * separate static library, `pkg-config tblocks-mpi`, built when an MPI
 * compiler wrapper is found; libtblocks itself has no MPI dependency).
 *
 * The caller initialises MPI (MPI_Init or MPI_Init_thread) and finalises
 * it after tb_mpi_comm_free(). The communicator works on a duplicate of the
 * MPI communicator it is given, with MPI_ERRORS_RETURN set, so an MPI error
 * becomes TB_ERR_IO with MPI's message in ctx instead of an abort inside
 * the library. Byte blocks are sent as MPI_BYTE. MPI counts are ints: a
 * collective of more than INT_MAX bytes (or of more than the limit set by
 * tb_mpi_comm_set_max_call_bytes()) is split into several MPI calls, the
 * same on every rank; an all-gather split this way is done as each rank's
 * block broadcast in turn, in pieces of at most that many bytes. A rank
 * whose piece fails returns its error at once; a peer still waiting for a
 * later piece from a rank that is alive can then wait, where the single
 * call would have failed on every rank (a rank that dies is reported as
 * before).
 */
#ifndef TBLOCKS_MPI_H
#define TBLOCKS_MPI_H

#include <mpi.h>

#include "tblocks/comm.h"

#ifdef __cplusplus
extern "C" {
#endif

/**
 * @brief Make a communicator over (a duplicate of) an MPI communicator.
 * @param ctx Context (for the message).
 * @param comm Receives the communicator; free it with tb_mpi_comm_free().
 * @param mpi_comm The MPI communicator, e.g. MPI_COMM_WORLD; MPI must be
 *        initialised.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_STATE (MPI not initialised);
 *         TB_ERR_IO (an MPI call failed, MPI's message in ctx);
 *         TB_ERR_NO_MEMORY.
 */
tb_status tb_mpi_comm_init(tb_ctx *ctx, tb_comm *comm, MPI_Comm mpi_comm);

/**
 * @brief Set the most bytes one MPI call of this communicator moves
 * (default INT_MAX, MPI's count limit); larger collectives are split into
 * several calls. Every rank must set the same value before its next
 * collective (the split is computed on each rank, and ranks that split
 * differently would not match their calls). For tests of the split, and
 * for MPI builds or transports with a smaller limit.
 * @param ctx Context (for the message).
 * @param comm A communicator made by tb_mpi_comm_init().
 * @param bytes 1..INT_MAX.
 * @return TB_OK; TB_ERR_NULL_ARG; TB_ERR_INVALID_ARG (bytes out of range,
 *         or comm not made by tb_mpi_comm_init()).
 */
tb_status tb_mpi_comm_set_max_call_bytes(tb_ctx *ctx, tb_comm *comm, size_t bytes);

/**
 * @brief Release a communicator made by tb_mpi_comm_init() (its MPI
 * duplicate); comm is zeroed. NULL or a zeroed comm is fine.
 * @param comm Communicator.
 */
void tb_mpi_comm_free(tb_comm *comm);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_MPI_H */
