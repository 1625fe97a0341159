/* ex_mpi_main() of the EX_MPI build (ex_mpi.h): the examples' MPI start-up
 * and shutdown, in one place for every _mpi binary. */
#include "ex_mpi.h"

#include <stdio.h>
#include <stdlib.h>

#include "ex_cli.h"
#include "tblocks_mpi.h"

/* Under LeakSanitizer, what Open MPI allocates in MPI_Init and keeps past
 * MPI_Finalize (its plugins are unloaded by then, so their frames cannot
 * even be named in a suppression) is not this program's: leak checking is
 * paused around those calls only. */
#if defined(__SANITIZE_ADDRESS__)
#define EX_LSAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EX_LSAN 1
#endif
#endif
#ifdef EX_LSAN
#include <sanitizer/lsan_interface.h>
#define EX_MPI_UNTRACKED(call) (__lsan_disable(), (call), __lsan_enable())
#else
#define EX_MPI_UNTRACKED(call) ((void)(call))
#endif

int ex_mpi_main(int argc, char **argv, ex_mpi_run_fn run)
{
    tb_comm comm;
    const int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") ||
                         getenv("PMI_RANK") || getenv("PMIX_RANK");
    if (!launched) {
        tb_comm_single(&comm);
        return run(argc, argv, &comm);
    }
    int mpi_rc = MPI_SUCCESS;
    EX_MPI_UNTRACKED(mpi_rc = MPI_Init(&argc, &argv));
    if (mpi_rc != MPI_SUCCESS) {
        fprintf(stderr, "error: MPI_Init failed\n");
        return EX_EXIT_FAILURE;
    }
    tb_ctx mctx;
    tb_ctx_init(&mctx);
    tb_status ms = TB_OK;
    EX_MPI_UNTRACKED(ms = tb_mpi_comm_init(&mctx, &comm, MPI_COMM_WORLD));
    if (ms != TB_OK) {
        fprintf(stderr, "error: %s\n", tb_ctx_error(&mctx));
        MPI_Abort(MPI_COMM_WORLD, EX_EXIT_FAILURE);
    }
    if (comm.rank != 0 && !freopen("/dev/null", "w", stdout)) {
        fprintf(stderr, "error: rank %zu: cannot silence stdout\n", comm.rank);
        MPI_Abort(MPI_COMM_WORLD, EX_EXIT_FAILURE);
    }
    const int rc = run(argc, argv, &comm);
    /* A failure may be one rank's (rank 0 could not open an output) while
     * the others go on into a collective: end them all. Usage errors and
     * success are every rank's alike (the same arguments and data). */
    if (rc == EX_EXIT_FAILURE && comm.size > 1) {
        fflush(stdout);
        fflush(stderr);
        MPI_Abort(MPI_COMM_WORLD, rc);
    }
    EX_MPI_UNTRACKED((tb_mpi_comm_free(&comm), MPI_Finalize()));
    return rc;
}
