/* The comm.h communicator over MPI (tblocks_mpi.h). */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tblocks_mpi.h"

typedef struct mpi_state {
    MPI_Comm comm;
    int *counts, *displs; /* size entries, for MPI_Allgatherv */
    size_t max_call;      /* most bytes one MPI call moves, 1..INT_MAX (default INT_MAX) */
} mpi_state;

/* TB_ERR_IO with "fn: MPI's message". */
static tb_status mpi_fail(tb_ctx *ctx, const char *fn, int err)
{
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(err, msg, &len) != MPI_SUCCESS)
        snprintf(msg, sizeof msg, "MPI error %d", err);
    return tb_ctx_set_error(ctx, TB_ERR_IO, "%s: %s (a peer process may have failed)", fn, msg);
}

/* A collective larger than st->max_call bytes is split into several MPI
 * calls, every rank making the same calls in the same order (each rank
 * knows every block size). The all-gather then becomes, for each rank i in
 * turn, broadcasts of its block in pieces of at most max_call bytes from i,
 * straight into recv: no staging buffer, and no int displacement (the
 * offsets into recv may pass INT_MAX; only the counts must not). */
static tb_status chunked_bcast(mpi_state *st, tb_ctx *ctx, const char *fn, unsigned char *buf,
                               size_t bytes, int root)
{
    for (size_t off = 0; off < bytes; off += st->max_call) {
        const size_t n = bytes - off < st->max_call ? bytes - off : st->max_call;
        const int err = MPI_Bcast(buf + off, (int)n, MPI_BYTE, root, st->comm);
        if (err != MPI_SUCCESS)
            return mpi_fail(ctx, fn, err);
    }
    return TB_OK;
}

static tb_status mpi_allgatherv(void *user, tb_ctx *ctx, const void *send, size_t send_bytes,
                                void *recv, const size_t *recv_bytes)
{
    mpi_state *st = user;
    int size, rank;
    MPI_Comm_size(st->comm, &size);
    MPI_Comm_rank(st->comm, &rank);
    size_t total = 0;
    int fits = 1; /* the whole gather in one MPI call */
    for (int i = 0; i < size; i++) {
        if (recv_bytes[i] > SIZE_MAX - total)
            return tb_ctx_set_error(ctx, TB_ERR_OVERFLOW,
                                    "tb_mpi allgatherv: the blocks' total overflows size_t");
        total += recv_bytes[i];
        if (total > st->max_call)
            fits = 0;
    }
    if (!fits) {
        unsigned char *out = recv;
        size_t at = 0;
        for (int i = 0; i < size; i++) {
            if (i == rank && send_bytes)
                memcpy(out + at, send, send_bytes);
            const tb_status s = chunked_bcast(st, ctx, "tb_mpi allgatherv", out + at,
                                              recv_bytes[i], i);
            if (s != TB_OK)
                return s;
            at += recv_bytes[i];
        }
        return TB_OK;
    }
    total = 0;
    for (int i = 0; i < size; i++) {
        st->displs[i] = (int)total; /* total <= max_call <= INT_MAX */
        st->counts[i] = (int)recv_bytes[i];
        total += recv_bytes[i];
    }
    /* MPI wants a non-NULL buffer even for 0 bytes on some implementations. */
    static const unsigned char none;
    const int err = MPI_Allgatherv(send_bytes ? send : &none, (int)send_bytes, MPI_BYTE, recv,
                                   st->counts, st->displs, MPI_BYTE, st->comm);
    return err == MPI_SUCCESS ? TB_OK : mpi_fail(ctx, "tb_mpi allgatherv", err);
}

static tb_status mpi_broadcast(void *user, tb_ctx *ctx, void *buf, size_t bytes, size_t root)
{
    mpi_state *st = user;
    if (bytes == 0) {
        static unsigned char none;
        const int err = MPI_Bcast(&none, 0, MPI_BYTE, (int)root, st->comm);
        return err == MPI_SUCCESS ? TB_OK : mpi_fail(ctx, "tb_mpi broadcast", err);
    }
    return chunked_bcast(st, ctx, "tb_mpi broadcast", buf, bytes, (int)root);
}

static tb_status mpi_barrier(void *user, tb_ctx *ctx)
{
    mpi_state *st = user;
    const int err = MPI_Barrier(st->comm);
    return err == MPI_SUCCESS ? TB_OK : mpi_fail(ctx, "tb_mpi barrier", err);
}

tb_status tb_mpi_comm_init(tb_ctx *ctx, tb_comm *comm, MPI_Comm mpi_comm)
{
    if (!comm)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG, "tb_mpi_comm_init: comm must not be NULL");
    memset(comm, 0, sizeof *comm);
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited)
        return tb_ctx_set_error(ctx, TB_ERR_STATE,
                                "tb_mpi_comm_init: MPI is not initialised (call MPI_Init first)");
    mpi_state *st = calloc(1, sizeof *st);
    if (!st)
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tb_mpi_comm_init: out of memory");
    int err = MPI_Comm_dup(mpi_comm, &st->comm);
    if (err != MPI_SUCCESS) {
        free(st);
        return mpi_fail(ctx, "tb_mpi_comm_init", err);
    }
    int rank = 0, size = 0;
    if ((err = MPI_Comm_set_errhandler(st->comm, MPI_ERRORS_RETURN)) != MPI_SUCCESS ||
        (err = MPI_Comm_rank(st->comm, &rank)) != MPI_SUCCESS ||
        (err = MPI_Comm_size(st->comm, &size)) != MPI_SUCCESS) {
        MPI_Comm_free(&st->comm);
        free(st);
        return mpi_fail(ctx, "tb_mpi_comm_init", err);
    }
    st->counts = calloc((size_t)size, sizeof(int));
    st->displs = calloc((size_t)size, sizeof(int));
    if (!st->counts || !st->displs) {
        MPI_Comm_free(&st->comm);
        free(st->counts), free(st->displs), free(st);
        return tb_ctx_set_error(ctx, TB_ERR_NO_MEMORY, "tb_mpi_comm_init: out of memory");
    }
    st->max_call = INT_MAX;
    comm->rank = (size_t)rank;
    comm->size = (size_t)size;
    comm->user = st;
    comm->allgatherv = mpi_allgatherv;
    comm->broadcast = mpi_broadcast;
    comm->barrier = mpi_barrier;
    return TB_OK;
}

tb_status tb_mpi_comm_set_max_call_bytes(tb_ctx *ctx, tb_comm *comm, size_t bytes)
{
    if (!comm)
        return tb_ctx_set_error(ctx, TB_ERR_NULL_ARG,
                                "tb_mpi_comm_set_max_call_bytes: comm must not be NULL");
    if (!comm->user || comm->allgatherv != mpi_allgatherv)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tb_mpi_comm_set_max_call_bytes: comm was not made by "
                                "tb_mpi_comm_init");
    if (bytes == 0 || bytes > (size_t)INT_MAX)
        return tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG,
                                "tb_mpi_comm_set_max_call_bytes: %zu bytes is outside 1..INT_MAX",
                                bytes);
    ((mpi_state *)comm->user)->max_call = bytes;
    return TB_OK;
}

void tb_mpi_comm_free(tb_comm *comm)
{
    if (!comm || !comm->user)
        return;
    mpi_state *st = comm->user;
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin)
        MPI_Comm_free(&st->comm);
    free(st->counts), free(st->displs), free(st);
    memset(comm, 0, sizeof *comm);
}
