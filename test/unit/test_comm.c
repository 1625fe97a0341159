/* comm.h: the communicator interface, the one-process communicator, the
 * micro-batch split and streams, and the data-parallel gradient reduction,
 * bitwise the same for any number of ranks. Without MPI: P ranks run as
 * threads of this process over a fake communicator (fake_comm below); the
 * MPI implementation runs the same training in test/scripts/mpi_gpt.sh. */
#define _POSIX_C_SOURCE 200809L /* pthread_barrier_t */
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "tblocks.h"
#include "testutil.h"

/* ---- a fake multi-rank communicator: ranks are threads ----------------------- */

enum { MAX_RANKS = 8 };

typedef struct fake_world {
    size_t size;
    pthread_barrier_t bar;
    const void *send[MAX_RANKS];
    size_t send_bytes[MAX_RANKS];
    void *bcast;
} fake_world;

typedef struct fake_rank {
    fake_world *w;
    size_t rank;
} fake_rank;

static tb_status fake_allgatherv(void *user, tb_ctx *ctx, const void *send, size_t send_bytes,
                                 void *recv, const size_t *recv_bytes)
{
    fake_rank *r = user;
    fake_world *w = r->w;
    w->send[r->rank] = send;
    w->send_bytes[r->rank] = send_bytes;
    pthread_barrier_wait(&w->bar);
    size_t off = 0;
    tb_status s = TB_OK;
    for (size_t i = 0; i < w->size; i++) {
        if (w->send_bytes[i] != recv_bytes[i])
            s = tb_ctx_set_error(ctx, TB_ERR_INVALID_ARG, "fake: rank %zu sent %zu bytes, %zu "
                                 "expected", i, w->send_bytes[i], recv_bytes[i]);
        else if (recv_bytes[i])
            memcpy((char *)recv + off, w->send[i], recv_bytes[i]);
        off += recv_bytes[i];
    }
    pthread_barrier_wait(&w->bar); /* nobody reuses send before all copied */
    return s;
}

static tb_status fake_broadcast(void *user, tb_ctx *ctx, void *buf, size_t bytes, size_t root)
{
    (void)ctx;
    fake_rank *r = user;
    if (r->rank == root)
        r->w->bcast = buf;
    pthread_barrier_wait(&r->w->bar);
    if (r->rank != root && bytes)
        memcpy(buf, r->w->bcast, bytes);
    pthread_barrier_wait(&r->w->bar);
    return TB_OK;
}

static tb_status fake_barrier(void *user, tb_ctx *ctx)
{
    (void)ctx;
    fake_rank *r = user;
    pthread_barrier_wait(&r->w->bar);
    return TB_OK;
}

static void fake_comm(tb_comm *c, fake_rank *r)
{
    memset(c, 0, sizeof *c);
    c->rank = r->rank;
    c->size = r->w->size;
    c->user = r;
    c->allgatherv = fake_allgatherv;
    c->broadcast = fake_broadcast;
    c->barrier = fake_barrier;
}

/* Run fn(rank's comm, arg + rank * arg_stride) on P threads. */
typedef void (*rank_fn)(tb_comm *comm, void *arg);
typedef struct rank_job {
    fake_rank r;
    rank_fn fn;
    void *arg;
} rank_job;

static void *rank_main(void *p)
{
    rank_job *j = p;
    tb_comm c;
    fake_comm(&c, &j->r);
    j->fn(&c, j->arg);
    return NULL;
}

static void run_ranks(size_t P, rank_fn fn, void *args, size_t arg_stride)
{
    ck_assert(P >= 1 && P <= MAX_RANKS);
    fake_world w;
    memset(&w, 0, sizeof w);
    w.size = P;
    ck_assert_int_eq(pthread_barrier_init(&w.bar, NULL, (unsigned)P), 0);
    pthread_t th[MAX_RANKS];
    rank_job jobs[MAX_RANKS];
    for (size_t i = 0; i < P; i++) {
        jobs[i] = (rank_job){{&w, i}, fn, (char *)args + i * arg_stride};
        ck_assert_int_eq(pthread_create(&th[i], NULL, rank_main, &jobs[i]), 0);
    }
    for (size_t i = 0; i < P; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&w.bar);
}

/* ---- the one-process communicator and the checked collectives ---------------- */

START_TEST(test_comm_single_and_checks)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_comm c;
    tb_comm_single(&c);
    ck_assert_uint_eq(c.rank, 0);
    ck_assert_uint_eq(c.size, 1);
    ck_assert_int_eq(tb_comm_check(&ctx, &c), TB_OK);
    const char send[5] = "abcd";
    char recv[5] = {0};
    size_t rb = 5;
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, send, 5, recv, &rb), TB_OK);
    ck_assert_str_eq(recv, "abcd");
    ck_assert_int_eq(tb_comm_broadcast(&ctx, &c, recv, 5, 0), TB_OK);
    ck_assert_int_eq(tb_comm_barrier(&ctx, &c), TB_OK);
    rb = 0;
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, NULL, 0, NULL, &rb), TB_OK);

    /* Bad arguments: a status and a message, nothing written. */
    memset(recv, 'x', sizeof recv);
    rb = 5;
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, NULL, send, 5, recv, &rb), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, send, 4, recv, &rb), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "send_bytes 4"));
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, NULL, 5, recv, &rb), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, send, 5, NULL, &rb), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, send, 5, recv, NULL), TB_ERR_NULL_ARG);
    char both[8] = "abcdefg";
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, both + 2, 5, both, &rb), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "recv overlaps send"));
    ck_assert_str_eq(both, "abcdefg");
    for (size_t i = 0; i < sizeof recv; i++)
        ck_assert_int_eq(recv[i], 'x');
    ck_assert_int_eq(tb_comm_broadcast(&ctx, &c, recv, 5, 1), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_comm_broadcast(&ctx, &c, NULL, 5, 0), TB_ERR_NULL_ARG);
    tb_comm bad = c;
    bad.rank = 1;
    ck_assert_int_eq(tb_comm_barrier(&ctx, &bad), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "rank 1 of size 1"));
    bad = c;
    bad.size = 0;
    ck_assert_int_eq(tb_comm_check(&ctx, &bad), TB_ERR_INVALID_ARG);
    bad = c;
    bad.allgatherv = NULL;
    ck_assert_int_eq(tb_comm_barrier(&ctx, &bad), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_comm_check(&ctx, NULL), TB_ERR_NULL_ARG);
    tb_comm_single(NULL); /* ignored */
}
END_TEST

/* ---- the split and the streams ------------------------------------------------ */

START_TEST(test_dp_split_covers_in_order)
{
    for (size_t K = 1; K <= 13; K++)
        for (size_t P = 1; P <= 8; P++) {
            size_t next = 0, lo = K, hi = 0;
            for (size_t r = 0; r < P; r++) {
                size_t f, n;
                ck_assert_int_eq(tb_dp_split(K, P, r, &f, &n), TB_OK);
                ck_assert_msg(f == next, "K %zu P %zu rank %zu starts at %zu, not %zu", K, P, r,
                              f, next);
                next = f + n;
                lo = n < lo ? n : lo, hi = n > hi ? n : hi;
            }
            ck_assert_uint_eq(next, K);    /* every index once, in rank order */
            ck_assert_uint_le(hi - lo, 1); /* balanced */
        }
    size_t f, n;
    ck_assert_int_eq(tb_dp_split(0, 1, 0, &f, &n), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dp_split(4, 0, 0, &f, &n), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dp_split(4, 2, 2, &f, &n), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dp_split(4, 2, 0, NULL, &n), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_dp_split(SIZE_MAX, 4, 3, &f, &n), TB_ERR_OVERFLOW);
}
END_TEST

START_TEST(test_dp_rng_streams)
{
    tb_rng base, a, b;
    tb_rng_init(&base, 7);
    const tb_rng kept = base;
    uint32_t x[4][8];
    tb_dp_rng(&a, &base, 3, 1);
    tb_dp_rng(&b, &base, 3, 1);
    ck_assert(a.key == b.key && a.counter == b.counter);
    ck_assert(memcmp(&base, &kept, sizeof base) == 0); /* base not advanced */
    const uint64_t args[4][2] = {{3, 1}, {3, 2}, {4, 1}, {1, 3}};
    for (int i = 0; i < 4; i++) {
        tb_dp_rng(&a, &base, args[i][0], args[i][1]);
        for (int j = 0; j < 8; j++)
            x[i][j] = (uint32_t)tb_rng_next(&a);
    }
    for (int i = 0; i < 4; i++)
        for (int j = i + 1; j < 4; j++)
            ck_assert_msg(memcmp(x[i], x[j], sizeof x[i]) != 0, "streams %d and %d are equal", i,
                          j);
    tb_rng other;
    tb_rng_init(&other, 8);
    tb_dp_rng(&b, &other, 3, 1);
    tb_dp_rng(&a, &base, 3, 1);
    ck_assert(a.key != b.key);
    tb_dp_rng(NULL, &base, 0, 0); /* ignored */
}
END_TEST

/* ---- the reduction -------------------------------------------------------------- */

enum { N_A = 1000, N_B = 37, N_FROZEN = 5, MAX_K = 9 };

/* Parameters "a" (N_A), "frozen" (not trainable: skipped) and "b" (N_B). */
typedef struct three {
    tb_param a, frozen, b;
    tb_param_list list;
} three;

static void three_init(tb_ctx *ctx, three *t)
{
    const size_t na = N_A, nf = N_FROZEN, nb = N_B;
    ck_assert_int_eq(tb_param_init(ctx, &t->a, 1, &na, 0), TB_OK);
    ck_assert_int_eq(tb_param_init(ctx, &t->frozen, 1, &nf, 0), TB_OK);
    ck_assert_int_eq(tb_param_init(ctx, &t->b, 1, &nb, 0), TB_OK);
    t->frozen.trainable = 0;
    ck_assert_int_eq(tb_param_list_init(ctx, &t->list), TB_OK);
    ck_assert_int_eq(tb_param_list_add(ctx, &t->list, "", "a", &t->a), TB_OK);
    ck_assert_int_eq(tb_param_list_add(ctx, &t->list, "", "frozen", &t->frozen), TB_OK);
    ck_assert_int_eq(tb_param_list_add(ctx, &t->list, "", "b", &t->b), TB_OK);
}

static void three_free(three *t)
{
    tb_param_list_free(&t->list);
    tb_param_free(&t->a), tb_param_free(&t->frozen), tb_param_free(&t->b);
}

/* Micro-batch k's "gradient": magnitudes over seven decades, so that
 * float addition in another order gives other bits. */
static void micro_grad(size_t k, float *g, size_t n, uint64_t salt)
{
    tbt_fill_uniform(g, n, -1.0f, 1.0f, 1000 * salt + k);
    const float scale = powf(10.0f, (float)((int)(k % 7) - 3));
    for (size_t i = 0; i < n; i++)
        g[i] *= scale;
}

/* Compute and store this rank's micro-batches' gradients (micro_grad, salts
 * 1 and 2) and losses k + 0.5, all but `skip` (SIZE_MAX: none). */
static void store_micro_batches(tb_ctx *ctx, tb_dp_reducer *r, three *t, size_t skip)
{
    for (size_t k = r->first; k < r->first + r->count; k++) {
        tb_param_list_zero_grad(&t->list);
        micro_grad(k, t->a.grad, N_A, 1);
        micro_grad(k, t->b.grad, N_B, 2);
        if (k != skip)
            tb_dp_reducer_store(ctx, r, &t->list, k, (float)k + 0.5f);
    }
}

typedef struct reduce_job {
    size_t K;
    int threads;
    size_t skip; /* a micro-batch this rank does not store (SIZE_MAX: none) */
    tb_status st_init, st_reduce;
    float a[N_A], b[N_B], frozen0, losses[MAX_K];
    char err[TB_ERROR_DETAIL_MAX];
} reduce_job;

static void reduce_rank(tb_comm *comm, void *arg)
{
    reduce_job *j = arg;
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = j->threads;
    three t;
    three_init(&ctx, &t);
    tb_dp_reducer r;
    j->st_init = tb_dp_reducer_init(&ctx, &r, comm, &t.list, j->K);
    if (j->st_init == TB_OK) {
        store_micro_batches(&ctx, &r, &t, j->skip);
        for (size_t i = 0; i < N_A; i++)
            t.a.grad[i] = -7.0f; /* what a failed reduction must leave */
        t.frozen.grad[0] = 42.0f; /* what every reduction must leave */
        j->st_reduce = tb_dp_reducer_reduce(&ctx, &r, &t.list, j->losses);
    }
    memcpy(j->a, t.a.grad, sizeof j->a);
    memcpy(j->b, t.b.grad, sizeof j->b);
    j->frozen0 = t.frozen.grad[0];
    snprintf(j->err, sizeof j->err, "%s", tb_ctx_error(&ctx));
    tb_dp_reducer_free(&r);
    three_free(&t);
}

/* g_0 + g_1 + ... in index order (want), and in reverse (other). */
static void reference_sum(size_t K, size_t n, uint64_t salt, float *want, float *other)
{
    float *g = tbt_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        want[i] = 0.0f, other[i] = 0.0f;
    for (size_t k = 0; k < K; k++) {
        micro_grad(k, g, n, salt);
        for (size_t i = 0; i < n; i++)
            want[i] = k == 0 ? g[i] : want[i] + g[i];
    }
    for (size_t k = K; k-- > 0;) {
        micro_grad(k, g, n, salt);
        for (size_t i = 0; i < n; i++)
            other[i] = k == K - 1 ? g[i] : other[i] + g[i];
    }
    free(g);
}

/* One process and P = 2..8 fake ranks (1 and 2 threads each) give the
 * in-order sum bit for bit on every rank; the reverse order would not. */
START_TEST(test_dp_reduce_bitwise_any_rank_count)
{
    static float want_a[N_A], want_b[N_B], other_a[N_A], other_b[N_B];
    const size_t Ks[3] = {1, 7, MAX_K};
    size_t runs = 0;
    for (size_t ki = 0; ki < 3; ki++) {
        const size_t K = Ks[ki];
        reference_sum(K, N_A, 1, want_a, other_a);
        reference_sum(K, N_B, 2, want_b, other_b);
        if (K > 2) {
            size_t differ = 0;
            for (size_t i = 0; i < N_A; i++)
                differ += want_a[i] != other_a[i];
            ck_assert_msg(differ > 0, "K %zu: the order of the sum does not matter here: the "
                          "test would not see a wrong order", K);
        }
        /* The one-process communicator, in this thread. */
        static reduce_job one;
        memset(&one, 0, sizeof one);
        one.K = K, one.threads = 2, one.skip = SIZE_MAX;
        tb_comm single;
        tb_comm_single(&single);
        reduce_rank(&single, &one);
        ck_assert_int_eq(one.st_init, TB_OK);
        ck_assert_msg(one.st_reduce == TB_OK, "%s", one.err);
        ck_assert(memcmp(one.a, want_a, sizeof want_a) == 0);
        ck_assert(memcmp(one.b, want_b, sizeof want_b) == 0);
        ck_assert(one.frozen0 == 42.0f); /* a frozen parameter's gradient is not touched */
        for (size_t k = 0; k < K; k++)
            ck_assert(one.losses[k] == (float)k + 0.5f);
        for (size_t P = 2; P <= MAX_RANKS; P++)
            for (int th = 1; th <= 2; th++) {
                static reduce_job jobs[MAX_RANKS];
                memset(jobs, 0, sizeof jobs);
                for (size_t r = 0; r < P; r++)
                    jobs[r].K = K, jobs[r].threads = th, jobs[r].skip = SIZE_MAX;
                run_ranks(P, reduce_rank, jobs, sizeof jobs[0]);
                for (size_t r = 0; r < P; r++) {
                    ck_assert_msg(jobs[r].st_init == TB_OK && jobs[r].st_reduce == TB_OK,
                                  "K %zu P %zu rank %zu: %s", K, P, r, jobs[r].err);
                    ck_assert_msg(memcmp(jobs[r].a, want_a, sizeof want_a) == 0 &&
                                      memcmp(jobs[r].b, want_b, sizeof want_b) == 0,
                                  "K %zu P %zu rank %zu threads %d: not the in-order sum", K, P,
                                  r, th);
                    ck_assert(memcmp(jobs[r].losses, one.losses, K * sizeof(float)) == 0);
                }
                runs++;
            }
    }
    printf("  dp reduce: %zu fake multi-rank runs (P 2..8, K 1/7/9, 1-2 threads) equal the "
           "one-process in-order sum bit for bit\n", runs);
}
END_TEST

/* A micro-batch one rank did not store fails the reduction on EVERY rank
 * (none waits, none goes on with a partial sum), gradients unchanged. */
START_TEST(test_dp_reduce_missing_micro_batch)
{
    static reduce_job jobs[3];
    memset(jobs, 0, sizeof jobs);
    for (size_t r = 0; r < 3; r++)
        jobs[r].K = 6, jobs[r].threads = 1, jobs[r].skip = r == 1 ? 3 : SIZE_MAX;
    run_ranks(3, reduce_rank, jobs, sizeof jobs[0]);
    for (size_t r = 0; r < 3; r++) {
        ck_assert_int_eq(jobs[r].st_reduce, TB_ERR_STATE);
        ck_assert_msg(strstr(jobs[r].err, "micro-batch 3 of 6 was not stored"), "%s",
                      jobs[r].err);
        for (size_t i = 0; i < N_A; i++)
            ck_assert(jobs[r].a[i] == -7.0f);
    }
    /* One process: the same. */
    static reduce_job one;
    memset(&one, 0, sizeof one);
    one.K = 4, one.threads = 1, one.skip = 0;
    tb_comm single;
    tb_comm_single(&single);
    reduce_rank(&single, &one);
    ck_assert_int_eq(one.st_reduce, TB_ERR_STATE);
}
END_TEST

START_TEST(test_dp_reducer_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    three t;
    three_init(&ctx, &t);
    tb_comm c;
    tb_comm_single(&c);
    tb_dp_reducer r;
    ck_assert_int_eq(tb_dp_reducer_init(&ctx, &r, &c, &t.list, 0), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dp_reducer_init(&ctx, &r, NULL, &t.list, 2), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_dp_reducer_init(&ctx, NULL, &c, &t.list, 2), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_dp_reducer_init(NULL, &r, &c, &t.list, 2), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_dp_reducer_init(&ctx, &r, &c, &t.list, SIZE_MAX / 2), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_dp_reducer_init(&ctx, &r, &c, &t.list, 2), TB_OK);
    ck_assert_uint_eq(r.numel, N_A + N_B);
    ck_assert_int_eq(tb_dp_reducer_store(&ctx, &r, &t.list, 2, 0.0f), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "micro-batch 2 is not this rank's"));
    ck_assert_int_eq(tb_dp_reducer_store(&ctx, NULL, &t.list, 0, 0.0f), TB_ERR_NULL_ARG);
    /* The list changed (a parameter frozen): refused, by store and reduce. */
    t.b.trainable = 0;
    ck_assert_int_eq(tb_dp_reducer_store(&ctx, &r, &t.list, 0, 0.0f), TB_ERR_STATE);
    ck_assert_int_eq(tb_dp_reducer_reduce(&ctx, &r, &t.list, NULL), TB_ERR_STATE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "the reducer was made for"));
    t.b.trainable = 1;
    ck_assert_int_eq(tb_dp_reducer_store(&ctx, &r, &t.list, 0, 1.0f), TB_OK);
    ck_assert_int_eq(tb_dp_reducer_store(&ctx, &r, &t.list, 1, 2.0f), TB_OK);
    ck_assert_int_eq(tb_dp_reducer_reduce(&ctx, &r, &t.list, NULL), TB_OK);
    /* The slots are free again: a second reduce without stores fails. */
    ck_assert_int_eq(tb_dp_reducer_reduce(&ctx, &r, &t.list, NULL), TB_ERR_STATE);
    tb_dp_reducer_free(&r);
    tb_dp_reducer_free(&r); /* twice is fine */
    tb_dp_reducer_free(NULL);
    ck_assert_int_eq(tb_dp_reducer_reduce(&ctx, &r, &t.list, NULL), TB_ERR_NULL_ARG);
    three_free(&t);
}
END_TEST

/* ---- training: a linear regression over P fake ranks ----------------------------- */

enum { IN = 6, OUT = 3, MB = 5, K_TRAIN = 5, STEPS = 6, NP = OUT * IN + OUT };

typedef struct train_job {
    size_t K;
    int zero;                 /* ZeRO-1 (tb_zero) instead of one tb_adam */
    uint64_t from, to;        /* steps [from, to) */
    const float *start;       /* NULL, or NP values (weight, bias) to start from */
    const tb_adam *start_opt; /* with start: the unsharded state to start from */
    size_t poison_rank;       /* a rank whose gradient gets a NaN before step 0 (SIZE_MAX) */
    tb_status st;
    float w[OUT * IN], bias[OUT], loss[STEPS], m[NP], v[NP];
    uint64_t step, skipped;
    size_t shard_floats;      /* moments this rank holds (per moment) */
    size_t state_bytes;
    char err[TB_ERROR_DETAIL_MAX];
} train_job;

/* Micro-batch data from the micro-batch's own stream, a Linear, the mean
 * squared error (its gradient 2 (y - t) / (MB OUT K)), AdamW with weight
 * decay 0.1 and a no-decay group (the bias) at lr 0.02. */
static void train_rank(tb_comm *comm, void *arg)
{
    train_job *j = arg;
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    ctx.num_threads = 1;
    tb_rng rng;
    tb_rng_init(&rng, 11);
    tb_linear lin;
    tb_param_list list;
    tb_adam opt, full;
    tb_zero z;
    tb_dp_reducer r;
    memset(&opt, 0, sizeof opt), memset(&full, 0, sizeof full), memset(&z, 0, sizeof z);
    memset(&r, 0, sizeof r);
    tb_param_list_init(&ctx, &list);
    tb_status s = tb_linear_init(&ctx, &lin, IN, OUT, 1, &rng);
    const tb_rng base = rng;
    tb_adam_config oc = tb_adamw_default_config();
    oc.lr = 0.05f;
    oc.weight_decay = 0.1f;
    if (s == TB_OK)
        s = tb_linear_params(&ctx, &lin, "lin.", &list);
    if (s == TB_OK && j->start) {
        memcpy(lin.weight.value, j->start, OUT * IN * sizeof(float));
        memcpy(lin.bias.value, j->start + OUT * IN, OUT * sizeof(float));
    }
    /* The unsharded state: the optimizer itself, or (ZeRO) what its state
     * is gathered into and scattered from. */
    if (s == TB_OK)
        s = tb_adam_init(&ctx, &full, &list, &oc);
    if (s == TB_OK)
        s = tb_adam_add_group(&ctx, &full, 0.02f, 0.0f, tb_select_no_decay, NULL, NULL);
    if (s == TB_OK && j->start_opt) {
        memcpy(full.m, j->start_opt->m, NP * sizeof(float));
        memcpy(full.v, j->start_opt->v, NP * sizeof(float));
        full.step = j->start_opt->step, full.skipped = j->start_opt->skipped;
    }
    if (s == TB_OK && j->zero) {
        size_t nsel = 0;
        s = tb_zero_init(&ctx, &z, comm, &list, &oc);
        if (s == TB_OK)
            s = tb_zero_add_group(&ctx, &z, &list, 0.02f, 0.0f, tb_select_no_decay, NULL, &nsel);
        if (s == TB_OK && nsel != 1)
            s = tb_ctx_set_error(&ctx, TB_ERR_STATE, "test: %zu no-decay parameters", nsel);
        if (s == TB_OK)
            s = tb_zero_scatter_state(&ctx, &z, &full);
        j->shard_floats = z.opt.n_state;
        j->state_bytes = tb_zero_state_bytes(&z);
    }
    if (s == TB_OK)
        s = tb_dp_reducer_init(&ctx, &r, comm, &list, j->K);
    float x[MB * IN], y[MB * OUT], dy[MB * OUT], tgt[MB * OUT], losses[MAX_K];
    for (uint64_t step = j->from; s == TB_OK && step < j->to; step++) {
        for (size_t k = r.first; s == TB_OK && k < r.first + r.count; k++) {
            tb_rng rs;
            tb_dp_rng(&rs, &base, step, k);
            tb_rng_fill_uniform(&ctx, &rs, x, MB * IN, -1.0f, 1.0f);
            for (size_t b = 0; b < MB; b++)
                for (size_t o = 0; o < OUT; o++)
                    tgt[b * OUT + o] = x[b * IN + o] * 2.0f - x[b * IN + o + 1];
            tb_tensor xt = tb_tensor_2d(x, MB, IN), yt = tb_tensor_2d(y, MB, OUT);
            tb_tensor dyt = tb_tensor_2d(dy, MB, OUT);
            tb_param_list_zero_grad(&list);
            s = tb_linear_forward(&ctx, &lin, &xt, &yt);
            double l = 0.0;
            for (size_t i = 0; i < MB * OUT; i++) {
                const float d = y[i] - tgt[i];
                l += (double)d * d;
                dy[i] = 2.0f * d / (float)(MB * OUT * j->K);
            }
            if (s == TB_OK)
                s = tb_linear_backward(&ctx, &lin, &xt, &dyt, NULL);
            if (s == TB_OK)
                s = tb_dp_reducer_store(&ctx, &r, &list, k, (float)(l / (MB * OUT)));
        }
        if (s == TB_OK)
            s = tb_dp_reducer_reduce(&ctx, &r, &list, losses);
        if (s == TB_OK && step == j->from && comm->rank == j->poison_rank)
            z.views[0].grad[0] = NAN; /* only this rank's shard sees it */
        if (s == TB_OK)
            s = j->zero ? tb_zero_step(&ctx, &z, &list, 1.0f) : tb_adam_step(&ctx, &full, 1.0f);
        float mean = 0.0f;
        for (size_t k = 0; s == TB_OK && k < j->K; k++)
            mean += losses[k] / (float)j->K;
        j->loss[step] = mean;
    }
    if (s == TB_OK && j->zero)
        s = tb_zero_gather_state(&ctx, &z, &full);
    j->st = s;
    memcpy(j->w, lin.weight.value, sizeof j->w);
    memcpy(j->bias, lin.bias.value, sizeof j->bias);
    memcpy(j->m, full.m, sizeof j->m);
    memcpy(j->v, full.v, sizeof j->v);
    j->step = j->zero ? z.opt.step : full.step;
    j->skipped = j->zero ? z.opt.skipped : full.skipped;
    snprintf(j->err, sizeof j->err, "%s", tb_ctx_error(&ctx));
    tb_dp_reducer_free(&r);
    tb_zero_free(&z);
    tb_adam_free(&full);
    tb_adam_free(&opt);
    tb_param_list_free(&list);
    tb_linear_free(&lin);
}

static train_job job_of(size_t K, int zero, uint64_t from, uint64_t to)
{
    train_job j;
    memset(&j, 0, sizeof j);
    j.K = K, j.zero = zero, j.from = from, j.to = to, j.poison_rank = SIZE_MAX;
    return j;
}

/* The same weights, losses and moments as `want` (bitwise). */
static int same_run(const train_job *a, const train_job *want)
{
    return memcmp(a->w, want->w, sizeof a->w) == 0 &&
           memcmp(a->bias, want->bias, sizeof a->bias) == 0 &&
           memcmp(a->loss + a->from, want->loss + a->from,
                  (a->to - a->from) * sizeof(float)) == 0 &&
           memcmp(a->m, want->m, sizeof a->m) == 0 && memcmp(a->v, want->v, sizeof a->v) == 0 &&
           a->step == want->step;
}

/* STEPS AdamW steps over K_TRAIN micro-batches: the weights and the loss
 * curve of P = 2..5 fake ranks equal one process's bit for bit, on every
 * rank, and training learns. */
START_TEST(test_dp_training_bitwise)
{
    static train_job one;
    one = job_of(K_TRAIN, 0, 0, STEPS);
    tb_comm single;
    tb_comm_single(&single);
    train_rank(&single, &one);
    ck_assert_msg(one.st == TB_OK, "%s", one.err);
    ck_assert_msg(one.loss[STEPS - 1] < one.loss[0], "the loss did not fall: %g -> %g",
                  (double)one.loss[0], (double)one.loss[STEPS - 1]);
    for (size_t P = 2; P <= 5; P++) {
        static train_job jobs[MAX_RANKS];
        for (size_t r = 0; r < P; r++)
            jobs[r] = job_of(K_TRAIN, 0, 0, STEPS);
        run_ranks(P, train_rank, jobs, sizeof jobs[0]);
        for (size_t r = 0; r < P; r++) {
            ck_assert_msg(jobs[r].st == TB_OK, "P %zu rank %zu: %s", P, r, jobs[r].err);
            ck_assert_msg(same_run(&jobs[r], &one),
                          "P %zu rank %zu: weights, losses or moments differ from one process",
                          P, r);
        }
    }
    printf("  dp training: loss %.4f -> %.4f in %d steps, the same bits for 1..5 ranks\n",
           (double)one.loss[0], (double)one.loss[STEPS - 1], STEPS);
}
END_TEST

/* ZeRO-1: the moments sharded over P = 1..5 ranks (each holds ~1/P of
 * them), bitwise the unsharded run's weights, losses and (gathered)
 * moments; saved state of 2 ranks resumed by 3 and by 1 continues as the
 * straight run. */
START_TEST(test_zero_bitwise_and_resharded)
{
    static train_job one;
    one = job_of(K_TRAIN, 0, 0, STEPS);
    tb_comm single;
    tb_comm_single(&single);
    train_rank(&single, &one);
    ck_assert_msg(one.st == TB_OK, "%s", one.err);
    static train_job z1;
    z1 = job_of(K_TRAIN, 1, 0, STEPS);
    train_rank(&single, &z1);
    ck_assert_msg(z1.st == TB_OK && same_run(&z1, &one), "ZeRO on one process differs: %s",
                  z1.err);
    ck_assert_uint_eq(z1.shard_floats, NP);
    for (size_t P = 2; P <= 5; P++) {
        static train_job jobs[MAX_RANKS];
        for (size_t r = 0; r < P; r++)
            jobs[r] = job_of(K_TRAIN, 1, 0, STEPS);
        run_ranks(P, train_rank, jobs, sizeof jobs[0]);
        size_t total = 0;
        for (size_t r = 0; r < P; r++) {
            ck_assert_msg(jobs[r].st == TB_OK, "P %zu rank %zu: %s", P, r, jobs[r].err);
            ck_assert_msg(same_run(&jobs[r], &one),
                          "ZeRO P %zu rank %zu: weights, losses or moments differ from the "
                          "unsharded optimizer", P, r);
            ck_assert_uint_le(jobs[r].shard_floats, (NP + P - 1) / P);
            total += jobs[r].shard_floats;
        }
        ck_assert_uint_eq(total, NP); /* every moment on exactly one rank */
    }
    /* 3 steps on 2 ranks, the gathered state resumed by 3 ranks and by 1. */
    static train_job first[2], then3[3], then1;
    for (int r = 0; r < 2; r++)
        first[r] = job_of(K_TRAIN, 1, 0, 3);
    run_ranks(2, train_rank, first, sizeof first[0]);
    ck_assert_msg(first[0].st == TB_OK, "%s", first[0].err);
    float start[NP];
    memcpy(start, first[0].w, sizeof first[0].w);
    memcpy(start + OUT * IN, first[0].bias, sizeof first[0].bias);
    tb_adam saved;
    memset(&saved, 0, sizeof saved);
    saved.m = first[0].m, saved.v = first[0].v, saved.step = first[0].step;
    for (int r = 0; r < 3; r++) {
        then3[r] = job_of(K_TRAIN, 1, 3, STEPS);
        then3[r].start = start, then3[r].start_opt = &saved;
    }
    run_ranks(3, train_rank, then3, sizeof then3[0]);
    then1 = job_of(K_TRAIN, 0, 3, STEPS);
    then1.start = start, then1.start_opt = &saved;
    train_rank(&single, &then1);
    for (int r = 0; r < 3; r++)
        ck_assert_msg(then3[r].st == TB_OK && same_run(&then3[r], &one),
                      "2 ranks then 3 (rank %d) differ from the straight run: %s", r,
                      then3[r].err);
    ck_assert_msg(then1.st == TB_OK && same_run(&then1, &one),
                  "2 ranks then 1 unsharded differ from the straight run: %s", then1.err);
    printf("  zero-1: sharded moments over 1..5 ranks bitwise the unsharded AdamW; 2 ranks "
           "-> 3 and -> 1 resume exactly; per-rank state %zu of %d floats at P = 5\n",
           (size_t)((NP + 4) / 5), NP);
}
END_TEST

/* A step one rank's shard refuses (a NaN only it sees) is refused by
 * every rank: nothing changes anywhere and every rank counts it. */
START_TEST(test_zero_refusal_is_everyones)
{
    static train_job ref[3], jobs[3];
    for (int r = 0; r < 3; r++) {
        ref[r] = job_of(K_TRAIN, 1, 0, 0);
        jobs[r] = job_of(K_TRAIN, 1, 0, 1);
        jobs[r].poison_rank = 1;
    }
    run_ranks(3, train_rank, ref, sizeof ref[0]); /* no step: the initial weights */
    run_ranks(3, train_rank, jobs, sizeof jobs[0]);
    for (int r = 0; r < 3; r++) {
        ck_assert_msg(jobs[r].st == TB_ERR_NON_FINITE, "rank %d: %s (%s)", r,
                      tb_strerror(jobs[r].st), jobs[r].err);
        ck_assert_msg(r == 1 || strstr(jobs[r].err, "rank 1 refused"), "%s", jobs[r].err);
        ck_assert(jobs[r].step == 0 && jobs[r].skipped == 1);
        ck_assert(memcmp(jobs[r].w, ref[r].w, sizeof ref[r].w) == 0);
        ck_assert(memcmp(jobs[r].bias, ref[r].bias, sizeof ref[r].bias) == 0);
    }
}
END_TEST

/* Fewer parameters than ranks: a rank may own nothing and still takes
 * part; the result is the unsharded one. */
typedef struct tiny_job {
    int zero;
    tb_status st;
    float value[2];
    size_t n_state;
} tiny_job;

static void tiny_rank(tb_comm *comm, void *arg)
{
    tiny_job *j = arg;
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    const size_t two = 2;
    tb_param p;
    tb_param_list list;
    tb_param_init(&ctx, &p, 1, &two, 0);
    tb_param_list_init(&ctx, &list);
    tb_param_list_add(&ctx, &list, "", "p", &p);
    p.value[0] = 1.0f, p.value[1] = 2.0f, p.grad[0] = 0.5f, p.grad[1] = -0.25f;
    const tb_adam_config oc = tb_adamw_default_config();
    tb_zero z;
    tb_adam a;
    memset(&z, 0, sizeof z), memset(&a, 0, sizeof a);
    if (j->zero) {
        j->st = tb_zero_init(&ctx, &z, comm, &list, &oc);
        for (int k = 0; j->st == TB_OK && k < 3; k++)
            j->st = tb_zero_step(&ctx, &z, &list, 1.0f);
        j->n_state = z.opt.n_state;
    } else {
        j->st = tb_adam_init(&ctx, &a, &list, &oc);
        for (int k = 0; j->st == TB_OK && k < 3; k++)
            j->st = tb_adam_step(&ctx, &a, 1.0f);
    }
    memcpy(j->value, p.value, sizeof j->value);
    tb_zero_free(&z);
    tb_adam_free(&a);
    tb_param_list_free(&list);
    tb_param_free(&p);
}

START_TEST(test_zero_more_ranks_than_parameters)
{
    tiny_job one = {0, TB_OK, {0, 0}, 0}, jobs[5];
    tb_comm single;
    tb_comm_single(&single);
    tiny_rank(&single, &one);
    ck_assert_int_eq(one.st, TB_OK);
    memset(jobs, 0, sizeof jobs);
    for (int r = 0; r < 5; r++)
        jobs[r].zero = 1;
    run_ranks(5, tiny_rank, jobs, sizeof jobs[0]);
    size_t total = 0;
    for (int r = 0; r < 5; r++) {
        ck_assert_int_eq(jobs[r].st, TB_OK);
        ck_assert(memcmp(jobs[r].value, one.value, sizeof one.value) == 0);
        total += jobs[r].n_state;
    }
    ck_assert_uint_eq(total, 2);
}
END_TEST

START_TEST(test_zero_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    three t;
    three_init(&ctx, &t);
    tb_comm c;
    tb_comm_single(&c);
    const tb_adam_config oc = tb_adamw_default_config();
    tb_zero z;
    ck_assert_int_eq(tb_zero_init(&ctx, &z, &c, &t.list, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_zero_init(&ctx, &z, NULL, &t.list, &oc), TB_ERR_NULL_ARG);
    tb_adam_config bad = oc;
    bad.eps = 0.0f;
    ck_assert_int_eq(tb_zero_init(&ctx, &z, &c, &t.list, &bad), TB_ERR_INVALID_ARG);
    ck_assert_ptr_null(z.flat); /* left empty */
    ck_assert_int_eq(tb_zero_init(&ctx, &z, &c, &t.list, &oc), TB_OK);
    ck_assert_uint_eq(z.numel, N_A + N_B);
    ck_assert_uint_eq(z.n_views, 2); /* the frozen parameter is not there */
    tb_adam wrong;
    tb_param_list two;
    tb_param_list_init(&ctx, &two);
    tb_param_list_add(&ctx, &two, "", "a", &t.a);
    ck_assert_int_eq(tb_adam_init(&ctx, &wrong, &two, &oc), TB_OK);
    ck_assert_int_eq(tb_zero_gather_state(&ctx, &z, &wrong), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_zero_scatter_state(&ctx, &z, &wrong), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_zero_step(&ctx, &z, &two, 1.0f), TB_ERR_STATE);
    ck_assert_int_eq(tb_zero_add_group(&ctx, &z, &t.list, 0.1f, 0.0f, NULL, NULL, NULL),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_zero_step(&ctx, NULL, &t.list, 1.0f), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_zero_step(&ctx, &z, &t.list, -1.0f), TB_ERR_INVALID_ARG);
    ck_assert_uint_eq(tb_zero_state_bytes(NULL), 0);
    ck_assert_uint_gt(tb_zero_state_bytes(&z), 2 * (N_A + N_B) * sizeof(float));
    tb_adam_free(&wrong);
    tb_param_list_free(&two);
    tb_zero_free(&z);
    tb_zero_free(&z);
    tb_zero_free(NULL);
    three_free(&t);
}
END_TEST

/* The fake communicator's broadcast and barrier (what gpt uses to share
 * rank 0's checkpoint status). */
typedef struct bcast_job {
    int value;
    tb_status st;
} bcast_job;

static void bcast_rank(tb_comm *comm, void *arg)
{
    bcast_job *j = arg;
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    j->value = comm->rank == 2 ? 77 : (int)comm->rank;
    j->st = tb_comm_broadcast(&ctx, comm, &j->value, sizeof j->value, 2);
    if (j->st == TB_OK)
        j->st = tb_comm_barrier(&ctx, comm);
}

START_TEST(test_comm_broadcast_fake)
{
    bcast_job jobs[4];
    memset(jobs, 0, sizeof jobs);
    run_ranks(4, bcast_rank, jobs, sizeof jobs[0]);
    for (int r = 0; r < 4; r++) {
        ck_assert_int_eq(jobs[r].st, TB_OK);
        ck_assert_int_eq(jobs[r].value, 77);
    }
}
END_TEST

/* ---- the counting communicator ---------------------------------------------------- */

/* Each rank wraps its communicator with a counter and runs an all-gather of
 * blocks of 5, 0 and 11 bytes, a broadcast of an int from rank 2, a
 * barrier, a refused all-gather (not counted), and one gradient reduction
 * of K = 7 micro-batches. */
typedef struct count_job {
    tb_status st[4];
    tb_comm_counts after_collectives, after_reduce;
    unsigned char got[16];
    int value;
    size_t count, numel;
    float a[N_A];
} count_job;

static void count_rank(tb_comm *comm, void *arg)
{
    count_job *j = arg;
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    tb_comm c;
    tb_comm_counter counter;
    if ((j->st[0] = tb_comm_counting_init(&ctx, &c, &counter, comm)) != TB_OK)
        return;
    ck_assert_uint_eq(c.rank, comm->rank);
    ck_assert_uint_eq(c.size, comm->size);
    const size_t blocks[3] = {5, 0, 11};
    unsigned char mine[11];
    for (size_t i = 0; i < sizeof mine; i++)
        mine[i] = (unsigned char)(10 * comm->rank + i);
    j->st[1] = tb_comm_allgatherv(&ctx, &c, blocks[comm->rank] ? mine : NULL,
                                  blocks[comm->rank], j->got, blocks);
    j->value = comm->rank == 2 ? 1234 : -1;
    if (j->st[1] == TB_OK)
        j->st[1] = tb_comm_broadcast(&ctx, &c, &j->value, sizeof j->value, 2);
    if (j->st[1] == TB_OK)
        j->st[1] = tb_comm_barrier(&ctx, &c);
    /* Every rank claims rank (r + 1) % 3 sends one byte more than it does:
     * the fake refuses it on every rank, and nothing is counted. */
    size_t wrong[3] = {5, 0, 11};
    wrong[(comm->rank + 1) % 3]++;
    unsigned char sink[32];
    j->st[2] = tb_comm_allgatherv(&ctx, &c, wrong[comm->rank] ? mine : NULL,
                                  wrong[comm->rank], sink, wrong);
    j->after_collectives = counter.counts;
    three t;
    three_init(&ctx, &t);
    tb_dp_reducer r;
    j->st[3] = tb_dp_reducer_init(&ctx, &r, &c, &t.list, 7);
    if (j->st[3] == TB_OK) {
        store_micro_batches(&ctx, &r, &t, SIZE_MAX);
        j->st[3] = tb_dp_reducer_reduce(&ctx, &r, &t.list, NULL);
        j->count = r.count;
        j->numel = r.numel;
    }
    memcpy(j->a, t.a.grad, sizeof j->a);
    j->after_reduce = counter.counts;
    tb_dp_reducer_free(&r);
    three_free(&t);
}

START_TEST(test_comm_counting)
{
    count_job jobs[3];
    memset(jobs, 0, sizeof jobs);
    run_ranks(3, count_rank, jobs, sizeof jobs[0]);
    float want[N_A], other[N_A];
    reference_sum(7, N_A, 1, want, other);
    const size_t blocks[3] = {5, 0, 11};
    for (size_t r = 0; r < 3; r++) {
        const count_job *j = &jobs[r];
        ck_assert_int_eq(j->st[0], TB_OK);
        ck_assert_int_eq(j->st[1], TB_OK);
        ck_assert_int_eq(j->st[2], TB_ERR_INVALID_ARG);
        ck_assert_int_eq(j->st[3], TB_OK);
        /* The collectives' results are the wrapped communicator's. */
        for (size_t i = 0; i < 5; i++)
            ck_assert_uint_eq(j->got[i], i);
        for (size_t i = 0; i < 11; i++)
            ck_assert_uint_eq(j->got[5 + i], 20 + i);
        ck_assert_int_eq(j->value, 1234);
        ck_assert(memcmp(j->a, want, sizeof want) == 0);
        /* Three collectives (the refused one not counted): this rank's block
         * to 2 others, rank 2's int to 2 others; the others' blocks, and
         * the int off rank 2. */
        const size_t b = sizeof(int);
        ck_assert_uint_eq(j->after_collectives.calls, 3);
        ck_assert_uint_eq(j->after_collectives.sent_bytes, 2 * blocks[r] + (r == 2 ? 2 * b : 0));
        ck_assert_uint_eq(j->after_collectives.recv_bytes, 16 - blocks[r] + (r == 2 ? 0 : b));
        /* The reduction: one all-gather of every micro-batch's slot of
         * numel + 2 floats (comm.h's cost): this rank's to each other rank,
         * every other rank's to this one. */
        ck_assert_uint_eq(j->numel, N_A + N_B);
        const uint64_t slot = (uint64_t)(j->numel + 2) * sizeof(float);
        ck_assert_uint_eq(j->after_reduce.calls - j->after_collectives.calls, 1);
        ck_assert_uint_eq(j->after_reduce.sent_bytes - j->after_collectives.sent_bytes,
                          2 * j->count * slot);
        ck_assert_uint_eq(j->after_reduce.recv_bytes - j->after_collectives.recv_bytes,
                          (7 - j->count) * slot);
    }
    ck_assert_uint_eq(jobs[0].count + jobs[1].count + jobs[2].count, 7);
}
END_TEST

START_TEST(test_comm_counting_errors)
{
    tb_ctx ctx;
    tb_ctx_init(&ctx);
    tb_comm one, c;
    tb_comm_single(&one);
    tb_comm_counter counter;
    ck_assert_int_eq(tb_comm_counting_init(&ctx, NULL, &counter, &one), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_comm_counting_init(&ctx, &c, NULL, &one), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_comm_counting_init(&ctx, &c, &counter, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_comm_counting_init(&ctx, &one, &counter, &one), TB_ERR_INVALID_ARG);
    tb_comm bad = one;
    bad.size = 0;
    ck_assert_int_eq(tb_comm_counting_init(&ctx, &c, &counter, &bad), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "size 0"));
    /* One process: calls counted, nothing sent or received. */
    ck_assert_int_eq(tb_comm_counting_init(&ctx, &c, &counter, &one), TB_OK);
    float x[3] = {1, 2, 3}, y[3] = {0};
    const size_t bytes[1] = {sizeof x};
    ck_assert_int_eq(tb_comm_allgatherv(&ctx, &c, x, sizeof x, y, bytes), TB_OK);
    ck_assert(memcmp(x, y, sizeof x) == 0);
    ck_assert_int_eq(tb_comm_broadcast(&ctx, &c, x, sizeof x, 0), TB_OK);
    ck_assert_int_eq(tb_comm_barrier(&ctx, &c), TB_OK);
    ck_assert_uint_eq(counter.counts.calls, 3);
    ck_assert_uint_eq(counter.counts.sent_bytes, 0);
    ck_assert_uint_eq(counter.counts.recv_bytes, 0);
}
END_TEST

Suite *suite_comm(void)
{
    Suite *s = suite_create("comm");
    TCase *tc = tcase_create("comm");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_comm_single_and_checks);
    tcase_add_test(tc, test_dp_split_covers_in_order);
    tcase_add_test(tc, test_dp_rng_streams);
    tcase_add_test(tc, test_dp_reduce_bitwise_any_rank_count);
    tcase_add_test(tc, test_dp_reduce_missing_micro_batch);
    tcase_add_test(tc, test_dp_reducer_errors);
    tcase_add_test(tc, test_dp_training_bitwise);
    tcase_add_test(tc, test_zero_bitwise_and_resharded);
    tcase_add_test(tc, test_zero_refusal_is_everyones);
    tcase_add_test(tc, test_zero_more_ranks_than_parameters);
    tcase_add_test(tc, test_zero_errors);
    tcase_add_test(tc, test_comm_broadcast_fake);
    tcase_add_test(tc, test_comm_counting);
    tcase_add_test(tc, test_comm_counting_errors);
    suite_add_tcase(s, tc);
    return s;
}
