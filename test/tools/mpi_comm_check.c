/* libtblocks_mpi's communicator on a real MPI job (run by
 * test/scripts/mpi_gpt.sh with mpirun -np 3): all-gather of variable-size
 * blocks (rank r sends r * 3 bytes: rank 0 none), broadcast from the last
 * rank, barrier, the data-parallel reduction against one process's, and
 * the argument checks. Prints "ok rank R" per rank; exits 1 on a mismatch. */
#include <stdio.h>
#include <string.h>

#include "tblocks.h"
#include "tblocks_mpi.h"

static int fail(int rank, const char *what, const tb_ctx *ctx)
{
    fprintf(stderr, "rank %d: %s (%s)\n", rank, what, tb_ctx_error(ctx));
    return 1;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    tb_comm c;
    int rc = 0;
    if (tb_mpi_comm_init(&ctx, &c, MPI_COMM_WORLD) != TB_OK) {
        fprintf(stderr, "init: %s\n", tb_ctx_error(&ctx));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const int rank = (int)c.rank, P = (int)c.size;
    /* All-gather: rank r contributes r * 3 bytes of value r + 1. */
    size_t sizes[16], total = 0;
    unsigned char send[64], recv[1024];
    for (int r = 0; r < P; r++)
        sizes[r] = (size_t)r * 3, total += sizes[r];
    memset(send, rank + 1, sizeof send);
    if (tb_comm_allgatherv(&ctx, &c, rank ? send : NULL, sizes[rank], recv, sizes) != TB_OK)
        rc = fail(rank, "allgatherv", &ctx);
    size_t off = 0;
    for (int r = 0; r < P && !rc; r++)
        for (size_t i = 0; i < sizes[r]; i++, off++)
            if (recv[off] != r + 1)
                rc = fail(rank, "allgatherv: wrong bytes", &ctx);
    /* Broadcast from the last rank. */
    int v = rank == P - 1 ? 4242 : -1;
    if (!rc && (tb_comm_broadcast(&ctx, &c, &v, sizeof v, (size_t)P - 1) != TB_OK || v != 4242))
        rc = fail(rank, "broadcast", &ctx);
    if (!rc && tb_comm_barrier(&ctx, &c) != TB_OK)
        rc = fail(rank, "barrier", &ctx);
    /* A size that disagrees with recv_bytes is refused before MPI sees it. */
    if (!rc && tb_comm_allgatherv(&ctx, &c, send, sizes[rank] + 1, recv, sizes) !=
                   TB_ERR_INVALID_ARG)
        rc = fail(rank, "a bad size was not refused", &ctx);
    /* The reduction: 7 micro-batches of a 1000-float gradient whose values
     * span decades; the sum equals one process's in-order sum. */
    enum { N = 1000, K = 7 };
    static float value[N], grad[N], want[N];
    const size_t n = N;
    tb_param p;
    tb_param_list list;
    tb_dp_reducer red;
    if (!rc && (tb_param_view(&ctx, &p, value, grad, 1, &n) != TB_OK ||
                tb_param_list_init(&ctx, &list) != TB_OK ||
                tb_param_list_add(&ctx, &list, "", "p", &p) != TB_OK ||
                tb_dp_reducer_init(&ctx, &red, &c, &list, K) != TB_OK))
        rc = fail(rank, "reducer init", &ctx);
    for (size_t k = 0; !rc && k < K; k++) {
        tb_rng g;
        tb_rng_init(&g, 100 + k);
        float scale = 1.0f;
        for (size_t e = 0; e < k % 5; e++)
            scale *= 10.0f;
        for (size_t i = 0; i < N; i++) {
            const float x = (tb_rng_uniform(&g) - 0.5f) * scale;
            want[i] = k == 0 ? x : want[i] + x;
            grad[i] = x;
        }
        if (k >= red.first && k < red.first + red.count &&
            tb_dp_reducer_store(&ctx, &red, &list, k, (float)k) != TB_OK)
            rc = fail(rank, "store", &ctx);
    }
    float losses[K];
    if (!rc && tb_dp_reducer_reduce(&ctx, &red, &list, losses) != TB_OK)
        rc = fail(rank, "reduce", &ctx);
    if (!rc && memcmp(grad, want, sizeof want) != 0)
        rc = fail(rank, "the reduced gradient is not the in-order sum", &ctx);
    for (int k = 0; !rc && k < K; k++)
        if (losses[k] != (float)k)
            rc = fail(rank, "losses", &ctx);
    if (!rc) {
        tb_dp_reducer_free(&red);
        tb_param_list_free(&list);
        printf("ok rank %d of %d\n", rank, P);
    }
    fflush(stdout);
    if (rc)
        MPI_Abort(MPI_COMM_WORLD, 1);
    tb_mpi_comm_free(&c);
    MPI_Finalize();
    return 0;
}
