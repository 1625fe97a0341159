/*
 * Results must be bitwise identical for any thread count: every block's
 * forward and backward is run with 1, 2, 3 and 8 threads on shapes big
 * enough to be split, and the outputs and gradients compared with memcmp.
 */
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

static const int thread_counts[] = {1, 2, 3, 8};
#define N_COUNTS (sizeof thread_counts / sizeof thread_counts[0])

/* Runs everything once with `threads` and stores all results in out[]. */
typedef struct run_result {
    float *buf;
    size_t n;
} run_result;

static void append(run_result *r, const float *x, size_t n)
{
    r->buf = realloc(r->buf, (r->n + n) * sizeof(float));
    ck_assert_ptr_nonnull(r->buf);
    memcpy(r->buf + r->n, x, n * sizeof(float));
    r->n += n;
}

static run_result run_all_blocks(int threads)
{
    run_result r = {NULL, 0};
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    tb_rng rng;
    tb_rng_init(&rng, 2024);

    /* Linear, forward + backward, including the weight-gradient reduction
     * over 257 rows and a bias sum. */
    enum { N = 257, IN = 129, OUT = 131 };
    tb_linear lin;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, IN, OUT, 1, &rng), TB_OK);
    float *x = tbt_alloc(N * IN * sizeof(float)), *y = tbt_alloc(N * OUT * sizeof(float));
    float *dy = tbt_alloc(N * OUT * sizeof(float)), *dx = tbt_alloc(N * IN * sizeof(float));
    tbt_fill_uniform(x, N * IN, -1, 1, 1);
    tbt_fill_uniform(dy, N * OUT, -1, 1, 2);
    tb_tensor xt = tb_tensor_2d(x, N, IN), yt = tb_tensor_2d(y, N, OUT);
    tb_tensor dyt = tb_tensor_2d(dy, N, OUT), dxt = tb_tensor_2d(dx, N, IN);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &xt, &yt), TB_OK);
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &xt, &dyt, &dxt), TB_OK);
    append(&r, lin.weight.value, lin.weight.numel);
    append(&r, y, N * OUT);
    append(&r, dx, N * IN);
    append(&r, lin.weight.grad, lin.weight.numel);
    append(&r, lin.bias.grad, lin.bias.numel);

    /* Embedding with many repeated ids (scatter-add). */
    tb_embedding emb;
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, 50, IN, &rng), TB_OK);
    int32_t ids[N];
    for (int i = 0; i < N; i++)
        ids[i] = (i * 13) % 50;
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, ids, N, &xt), TB_OK);
    ck_assert_int_eq(tb_embedding_backward(&ctx, &emb, ids, N, &xt), TB_OK);
    append(&r, x, N * IN);
    append(&r, emb.weight.grad, emb.weight.numel);

    /* Elementwise and row ops on y / dy. */
    ck_assert_int_eq(tb_gelu_forward(&ctx, TB_GELU_EXACT, &yt, &yt), TB_OK);
    ck_assert_int_eq(tb_gelu_backward(&ctx, TB_GELU_TANH, &yt, &dyt, &dyt), TB_OK);
    append(&r, y, N * OUT);
    append(&r, dy, N * OUT);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &yt, &yt), TB_OK);
    ck_assert_int_eq(tb_softmax_backward(&ctx, &yt, &dyt, &dyt), TB_OK);
    append(&r, y, N * OUT);
    append(&r, dy, N * OUT);
    tb_dropout_cache dc;
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.25f, &rng, &yt, &yt, &dc), TB_OK);
    ck_assert_int_eq(tb_dropout_backward(&ctx, &dyt, &dc, &dyt), TB_OK);
    ck_assert_int_eq(tb_relu_backward(&ctx, &yt, &dyt, &dyt), TB_OK);
    ck_assert_int_eq(tb_residual_backward(&ctx, &dyt, &yt), TB_OK);
    append(&r, y, N * OUT);
    append(&r, dy, N * OUT);

    /* Cross-entropy: the loss is a reduction over rows. */
    int32_t tg[N];
    for (int i = 0; i < N; i++)
        tg[i] = i % 7 == 0 ? -100 : (i * 3) % OUT;
    size_t cb;
    ck_assert_int_eq(tb_cross_entropy_cache_size(N, &cb), TB_OK);
    void *cache = tbt_alloc(cb);
    float loss;
    tbt_fill_uniform(y, N * OUT, -5, 5, 3);
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, NULL, &yt, tg, N, &loss, cache, cb), TB_OK);
    ck_assert_int_eq(tb_cross_entropy_backward(&ctx, NULL, &yt, tg, N, 1.0f, cache, cb, &dyt),
                     TB_OK);
    append(&r, &loss, 1);
    append(&r, dy, N * OUT);

    /* RNG fills. */
    ck_assert_int_eq(tb_rng_fill_normal(&ctx, &rng, x, N * IN, 0.0f, 1.0f), TB_OK);
    append(&r, x, N * IN);

    free(cache);
    free(x), free(y), free(dy), free(dx);
    tb_linear_free(&lin);
    tb_embedding_free(&emb);
    return r;
}

START_TEST(bitwise_identical_for_any_thread_count)
{
    run_result ref = run_all_blocks(thread_counts[0]);
    for (size_t k = 1; k < N_COUNTS; k++) {
        run_result r = run_all_blocks(thread_counts[k]);
        ck_assert_uint_eq(r.n, ref.n);
        size_t first_diff = r.n;
        for (size_t i = 0; i < r.n && first_diff == r.n; i++)
            if (memcmp(&r.buf[i], &ref.buf[i], sizeof(float)) != 0)
                first_diff = i;
        ck_assert_msg(first_diff == r.n, "%d threads differ from 1 thread at element %zu of %zu",
                      thread_counts[k], first_diff, r.n);
        free(r.buf);
    }
    free(ref.buf);
}
END_TEST

Suite *suite_threads(void)
{
    Suite *s = suite_create("threads");
    TCase *tc = tcase_create("determinism");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, bitwise_identical_for_any_thread_count);
    suite_add_tcase(s, tc);
    return s;
}
