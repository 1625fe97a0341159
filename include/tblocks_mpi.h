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
 * the library. Byte blocks are sent as MPI_BYTE; one collective moves at
 * most INT_MAX bytes in total (TB_ERR_OVERFLOW beyond).
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
 * @brief Release a communicator made by tb_mpi_comm_init() (its MPI
 * duplicate); comm is zeroed. NULL or a zeroed comm is fine.
 * @param comm Communicator.
 */
void tb_mpi_comm_free(tb_comm *comm);

#ifdef __cplusplus
}
#endif

#endif /* TBLOCKS_MPI_H */
