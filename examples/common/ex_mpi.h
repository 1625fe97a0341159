/*
 * One program, two builds: an example that can train data-parallel
 * (docs/data_parallel.md) is built once as itself and once with EX_MPI and
 * libtblocks_mpi as <name>_mpi. Its main() is
 *
 *     return ex_mpi_main(argc, argv, run);
 *
 * and run(argc, argv, comm) does the work on the processes comm names:
 *   - plain build: the one-process communicator (tb_comm_single()), no MPI;
 *   - EX_MPI build, started by a launcher (mpirun, mpiexec, srun: one of
 *     OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMI_RANK, PMIX_RANK is set): MPI is
 *     started and comm is MPI_COMM_WORLD's (tb_mpi_comm_init()); only rank
 *     0's stdout is kept; a run that returns EX_EXIT_FAILURE on a job of
 *     several processes ends the job (MPI_Abort), since the others may be
 *     waiting in a collective for it;
 *   - EX_MPI build started alone: one process, MPI not started at all
 *     (Open MPI's singleton start-up costs most of a second).
 * The implementation of the EX_MPI build is examples/common/mpi/ex_mpi.c,
 * compiled only for the _mpi binaries (make: MPI_EXAMPLES).
 */
#ifndef EX_MPI_H
#define EX_MPI_H

#include "tblocks.h"

/* A program's body: argc/argv as main() got them, comm the processes it
 * runs on (rank 0 prints and writes). Returns the exit status. */
typedef int (*ex_mpi_run_fn)(int argc, char **argv, const tb_comm *comm);

#ifdef EX_MPI
int ex_mpi_main(int argc, char **argv, ex_mpi_run_fn run);
#else
static inline int ex_mpi_main(int argc, char **argv, ex_mpi_run_fn run)
{
    tb_comm one;
    tb_comm_single(&one);
    return run(argc, argv, &one);
}
#endif

#endif /* EX_MPI_H */
