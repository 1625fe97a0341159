/*
 * Collective bandwidth over MPI, for the data-parallel docs
 * (docs/data_parallel.md; run by test/bench/dp.sh under mpirun):
 *
 *   allreduce  MPI_Allreduce (float sum, in place) of N bytes: what a
 *              conventional data-parallel step would use;
 *   allgather  tb_comm_allgatherv through libtblocks_mpi, every rank a
 *              block of N / P bytes: the collective libtblocks' reduction
 *              (tb_dp_reducer) and ZeRO-1 use.
 *
 * Each size: a warm-up, then repetitions until at least 0.2 s, the best
 * time (all ranks synchronised by a barrier before each call, the slowest
 * rank's time counted). Reported as algorithm bandwidth (N / time) and bus
 * bandwidth (NCCL-tests' convention: x 2(P-1)/P for an all-reduce, x (P-1)/P
 * for an all-gather; what each link carried), and the bus bandwidth as a
 * share of this machine's single-thread triad bandwidth measured in the
 * same run (on one machine the transport is a memory copy at best).
 */
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "tblocks.h"
#include "tblocks_mpi.h"

/* Seconds for one call, the slowest rank's, best over repetitions. */
static double best_time(int kind, const tb_comm *comm, tb_ctx *ctx, float *buf, float *recv,
                        size_t bytes, const size_t *blocks)
{
    double best = 1e30, spent = 0.0;
    for (int rep = 0; rep < 1000 && (rep < 4 || spent < 0.2); rep++) {
        MPI_Barrier(MPI_COMM_WORLD);
        const double t0 = MPI_Wtime();
        if (kind == 0) {
            MPI_Allreduce(MPI_IN_PLACE, buf, (int)(bytes / sizeof(float)), MPI_FLOAT, MPI_SUM,
                          MPI_COMM_WORLD);
        } else if (tb_comm_allgatherv(ctx, comm, buf, blocks[comm->rank], recv, blocks) != TB_OK) {
            fprintf(stderr, "bench_comm: %s\n", tb_ctx_error(ctx));
            MPI_Abort(MPI_COMM_WORLD, 1);
        }
        double t = MPI_Wtime() - t0, slowest = 0.0;
        MPI_Allreduce(&t, &slowest, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
        if (rep > 0 && slowest < best) /* rep 0: the warm-up */
            best = slowest;
        spent += slowest;
    }
    return best;
}

int main(int argc, char **argv)
{
    MPI_Init(&argc, &argv);
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    tb_comm comm;
    if (tb_mpi_comm_init(&ctx, &comm, MPI_COMM_WORLD) != TB_OK) {
        fprintf(stderr, "bench_comm: %s\n", tb_ctx_error(&ctx));
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    const size_t P = comm.size;
    const size_t max_bytes = (size_t)64 << 20;
    float *buf = calloc(max_bytes / sizeof(float), sizeof(float));
    float *recv = calloc(max_bytes / sizeof(float), sizeof(float));
    size_t *blocks = calloc(P, sizeof *blocks);
    if (!buf || !recv || !blocks) {
        fprintf(stderr, "bench_comm: out of memory\n");
        MPI_Abort(MPI_COMM_WORLD, 1);
    }
    double triad = 0.0;
    char cpu[128] = "";
    if (comm.rank == 0) {
        bench_cpu_model(cpu, sizeof cpu);
        triad = bench_triad(1, (size_t)16 << 20);
        printf("bench_comm: %zu processes on %s; single-thread triad %.1f GB/s\n", P, cpu, triad);
        printf("tsv\t#comm\tcollective\tprocesses\tbytes\tus\talg_GBps\tbus_GBps\tbus_pct_triad\n");
        printf("%-10s %10s %10s %10s %10s %8s\n", "collective", "bytes", "time us", "alg GB/s",
               "bus GB/s", "% triad");
    }
    const char *names[2] = {"allreduce", "allgather"};
    for (int kind = 0; kind < 2; kind++)
        for (size_t bytes = (size_t)4 << 10; bytes <= max_bytes; bytes *= 4) {
            /* The all-gather's blocks: bytes / P each (whole floats), the
             * remainder on the last rank. */
            const size_t floats = bytes / sizeof(float);
            for (size_t r = 0; r < P; r++)
                blocks[r] = (floats / P) * sizeof(float);
            blocks[P - 1] += (floats % P) * sizeof(float);
            const double t = best_time(kind, &comm, &ctx, buf, recv, bytes, blocks);
            const double alg = (double)bytes / t / 1e9;
            const double bus = alg * (kind == 0 ? 2.0 : 1.0) * (double)(P - 1) / (double)P;
            if (comm.rank == 0) {
                printf("%-10s %10zu %10.1f %10.2f %10.2f %7.1f%%\n", names[kind], bytes, t * 1e6,
                       alg, bus, triad > 0 ? 100.0 * bus / triad : 0.0);
                printf("tsv\tcomm\t%s\t%zu\t%zu\t%.2f\t%.3f\t%.3f\t%.1f\n", names[kind], P, bytes,
                       t * 1e6, alg, bus, triad > 0 ? 100.0 * bus / triad : 0.0);
            }
        }
    free(buf), free(recv), free(blocks);
    tb_mpi_comm_free(&comm);
    MPI_Finalize();
    return 0;
}
