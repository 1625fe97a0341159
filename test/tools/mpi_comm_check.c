/* libtblocks_mpi's communicator on a real MPI job (run by
 * test/scripts/mpi_gpt.sh with mpirun -np 3): all-gather of variable-size
 * blocks (rank r sends r * 3 bytes: rank 0 none), broadcast from the last
 * rank, barrier, the same split into many small MPI calls
 * (tb_mpi_comm_set_max_call_bytes: the path collectives of more than
 * INT_MAX bytes take), the data-parallel reduction against one process's
 * (its collectives split too), and the argument checks. Prints "ok rank R" per rank; exits 1 on a mismatch. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "tblocks.h"
#include "tblocks_mpi.h"

/* MPI's profiling interface: the library (linked statically) calls these,
 * which count the calls and the largest count, then call MPI's own. */
static long n_bcast, n_allgatherv;
static int max_count;
int MPI_Bcast(void *buf, int count, MPI_Datatype type, int root, MPI_Comm comm)
{
    n_bcast++;
    max_count = count > max_count ? count : max_count;
    return PMPI_Bcast(buf, count, type, root, comm);
}
int MPI_Allgatherv(const void *send, int send_count, MPI_Datatype send_type, void *recv,
                   const int recv_counts[], const int displs[], MPI_Datatype recv_type,
                   MPI_Comm comm)
{
    int size = 0, total = 0;
    MPI_Comm_size(comm, &size);
    for (int i = 0; i < size; i++)
        total += recv_counts[i];
    n_allgatherv++;
    max_count = total > max_count ? total : max_count;
    return PMPI_Allgatherv(send, send_count, send_type, recv, recv_counts, displs, recv_type,
                           comm);
}
static void reset_counts(void)
{
    n_bcast = n_allgatherv = 0;
    max_count = 0;
}

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
    /* Split collectives: at most 5 bytes per MPI call. Blocks of r * 3 + 1
     * bytes (1, 4, 7, ...: the last ones split into pieces) of value
     * 100 + r, and a 13-byte broadcast from rank 1 % P. */
    if (!rc && tb_mpi_comm_set_max_call_bytes(&ctx, &c, 5) != TB_OK)
        rc = fail(rank, "set_max_call_bytes(5)", &ctx);
    total = 0;
    long want_bcasts = 0;
    for (int r = 0; r < P; r++) {
        sizes[r] = (size_t)r * 3 + 1, total += sizes[r];
        want_bcasts += (long)(sizes[r] + 4) / 5;
    }
    memset(send, 100 + rank, sizeof send);
    memset(recv, 0, sizeof recv);
    reset_counts();
    if (!rc && tb_comm_allgatherv(&ctx, &c, send, sizes[rank], recv, sizes) != TB_OK)
        rc = fail(rank, "split allgatherv", &ctx);
    /* Within 5 bytes in all (P <= 2) one MPI_Allgatherv, else one
     * broadcast per started 5 bytes of each block. */
    if (!rc && (total <= 5 ? n_allgatherv != 1 || n_bcast != 0
                           : n_allgatherv != 0 || n_bcast != want_bcasts || max_count > 5))
        rc = fail(rank, "split allgatherv: not the expected MPI calls", &ctx);
    off = 0;
    for (int r = 0; r < P && !rc; r++)
        for (size_t i = 0; i < sizes[r]; i++, off++)
            if (recv[off] != 100 + r)
                rc = fail(rank, "split allgatherv: wrong bytes", &ctx);
    for (size_t i = total; i < sizeof recv && !rc; i++)
        if (recv[i] != 0)
            rc = fail(rank, "split allgatherv wrote past the blocks", &ctx);
    unsigned char b13[14];
    for (int i = 0; i < 14; i++)
        b13[i] = rank == 1 % P ? (unsigned char)(i * 7 + 1) : 0;
    b13[13] = (unsigned char)(200 + rank);
    reset_counts();
    if (!rc && tb_comm_broadcast(&ctx, &c, b13, 13, (size_t)(1 % P)) != TB_OK)
        rc = fail(rank, "split broadcast", &ctx);
    if (!rc && (n_bcast != 3 || max_count != 5))
        rc = fail(rank, "split broadcast: not 3 MPI calls of at most 5 bytes", &ctx);
    for (int i = 0; i < 13 && !rc; i++)
        if (b13[i] != (unsigned char)(i * 7 + 1))
            rc = fail(rank, "split broadcast: wrong bytes", &ctx);
    if (!rc && b13[13] != (unsigned char)(200 + rank))
        rc = fail(rank, "split broadcast wrote past its buffer", &ctx);
    /* Split, with an empty block whose rank passes send = NULL: blocks of
     * r * 3 bytes of value 50 + r. */
    total = 0;
    for (int r = 0; r < P; r++)
        sizes[r] = (size_t)r * 3, total += sizes[r];
    memset(send, 50 + rank, sizeof send);
    memset(recv, 0, sizeof recv);
    if (!rc && tb_comm_allgatherv(&ctx, &c, rank ? send : NULL, sizes[rank], recv, sizes) != TB_OK)
        rc = fail(rank, "split allgatherv with an empty block", &ctx);
    off = 0;
    for (int r = 0; r < P && !rc; r++)
        for (size_t i = 0; i < sizes[r]; i++, off++)
            if (recv[off] != 50 + r)
                rc = fail(rank, "split allgatherv with an empty block: wrong bytes", &ctx);
    /* Out of range, or not an MPI communicator: refused, and the limit of
     * 5 kept (the 13-byte broadcast is split as before). */
    tb_comm single;
    tb_comm_single(&single);
    if (!rc && (tb_mpi_comm_set_max_call_bytes(&ctx, &c, 0) != TB_ERR_INVALID_ARG ||
                tb_mpi_comm_set_max_call_bytes(&ctx, &c, (size_t)INT_MAX + 1) !=
                    TB_ERR_INVALID_ARG ||
                tb_mpi_comm_set_max_call_bytes(&ctx, &single, 5) != TB_ERR_INVALID_ARG ||
                tb_mpi_comm_set_max_call_bytes(&ctx, NULL, 5) != TB_ERR_NULL_ARG))
        rc = fail(rank, "a bad max_call_bytes was not refused", &ctx);
    reset_counts();
    if (!rc && (tb_comm_broadcast(&ctx, &c, b13, 13, (size_t)(1 % P)) != TB_OK || n_bcast != 3))
        rc = fail(rank, "the limit changed after refused settings", &ctx);
    /* The reduction below moves its gradients 64 bytes per MPI call. */
    if (!rc && tb_mpi_comm_set_max_call_bytes(&ctx, &c, 64) != TB_OK)
        rc = fail(rank, "set_max_call_bytes(64)", &ctx);
    reset_counts();
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
    if (!rc && P > 1 && (n_bcast == 0 || max_count > 64))
        rc = fail(rank, "the reduction's collectives were not split into 64-byte calls", &ctx);
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
