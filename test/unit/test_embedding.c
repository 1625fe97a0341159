/*
 * tb_embedding_*: errors and repeated ids, finite differences, PyTorch
 * oracle (torch.nn.Embedding).
 * Oracle cases: the block is run on the exact inputs, weights and upstream
 * gradients that test/oracle/gen_embedding.py fed to PyTorch, and its results are
 * compared with PyTorch's (tolerance rule and conventions: testutil.h;
 * outputs pre-filled with NaN, parameter gradients zeroed first because
 * backward ADDS into them). Finite differences: tbt_gradcheck() with the
 * shared step and tolerance of testutil.h (TBT_FD_*).
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

START_TEST(embedding_rejects_bad_ids)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_embedding emb;
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, 0, 4, &rng), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, 5, 0, &rng), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_embedding_init(&ctx, &emb, 5, 4, &rng), TB_OK);
    float out[12];
    tbt_fill_sentinel(out, 12);
    tb_tensor o = tb_tensor_2d(out, 3, 4);
    int32_t neg[3] = {0, -1, 2}, big[3] = {0, 1, 5}, ok[3] = {4, 0, 4};
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, neg, 3, &o), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "ids[1]"));
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, big, 3, &o), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "ids[2] = 5"));
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, ok, 2, &o), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, ok, 0, &o), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, NULL, 3, &o), TB_ERR_NULL_ARG);
    tbt_assert_untouched(out, 12);
    ck_assert_int_eq(tb_embedding_backward(&ctx, &emb, big, 3, &o), TB_ERR_INVALID_ARG);
    for (size_t i = 0; i < emb.weight.numel; i++)
        ck_assert(emb.weight.grad[i] == 0.0f);
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, ok, 3, &o), TB_OK);
    ck_assert(memcmp(out, emb.weight.value + 16, 4 * sizeof(float)) == 0);
    ck_assert(memcmp(out + 4, emb.weight.value, 4 * sizeof(float)) == 0);
    /* Repeated ids accumulate. */
    float g[12];
    for (int i = 0; i < 12; i++)
        g[i] = (float)(i + 1);
    tb_tensor gt = tb_tensor_2d(g, 3, 4);
    ck_assert_int_eq(tb_embedding_backward(&ctx, &emb, ok, 3, &gt), TB_OK);
    ck_assert(emb.weight.grad[16] == 1.0f + 9.0f);
    ck_assert(emb.weight.grad[0] == 5.0f);
    ck_assert(emb.weight.grad[4] == 0.0f);
    tb_embedding_free(&emb);
}
END_TEST

/* ---- embedding --------------------------------------------------------- */

typedef struct emb_prob {
    tb_ctx ctx;
    tb_embedding emb;
    int32_t *ids;
    float *y, *w;
    size_t n;
} emb_prob;

static double emb_loss(void *user)
{
    emb_prob *p = user;
    tb_tensor y = tb_tensor_2d(p->y, p->n, p->emb.dim);
    ck_assert_int_eq(tb_embedding_forward(&p->ctx, &p->emb, p->ids, p->n, &y), TB_OK);
    return tbt_dot(p->w, p->y, p->n * p->emb.dim);
}

START_TEST(embedding_gradients)
{
    emb_prob p;
    tbt_ctx_init(&p.ctx, 1);
    tb_rng rng;
    tb_rng_init(&rng, 77);
    ck_assert_int_eq(tb_embedding_init(&p.ctx, &p.emb, 13, 17, &rng), TB_OK);
    p.n = 33;
    p.ids = tbt_alloc(p.n * sizeof(int32_t));
    for (size_t i = 0; i < p.n; i++)
        p.ids[i] = (int32_t)((i * 7) % 11); /* repeats; rows 11, 12 unused */
    p.y = tbt_alloc(p.n * 17 * sizeof(float));
    p.w = tbt_alloc(p.n * 17 * sizeof(float));
    tbt_fill_uniform(p.w, p.n * 17, -1, 1, 5);
    tb_tensor dy = tb_tensor_2d(p.w, p.n, 17);
    ck_assert_int_eq(tb_embedding_backward(&p.ctx, &p.emb, p.ids, p.n, &dy), TB_OK);
    tbt_gradcheck("embedding[33 ids,13x17].dW", p.emb.weight.value, 13 * 17, p.emb.weight.grad,
                  emb_loss, &p, TBT_FD_H, TBT_FD_RTOL, TBT_FD_ATOL, 0);
    tb_embedding_free(&p.emb);
    free(p.ids), free(p.y), free(p.w);
}
END_TEST

/* ---- Embedding -----------------------------------------------------------
 *
 * Forward is a row copy: it must be bit-exact (rtol 0, atol 0).
 * Backward sums the dy rows of repeated ids (at most 5 equal ids here,
 * |dy| < 1): a different summation order changes the result by at most a
 * few ulp of the partial sums (~5 * 6e-8 * 2), so rtol 1e-6 and atol 1e-6
 * are ample and still 1000x below a 1e-3 error. Rows never looked up must
 * stay exactly 0, which those tolerances also require (|want| = 0).
 */
static const double EMB_RTOL = 1e-6, EMB_ATOL = 1e-6;

static const char *const embedding_cases[] = {
    "embedding_17x33_n17", "embedding_257x50_n53", "embedding_1x3_n3", "embedding_3x1_n5",
};

START_TEST(test_oracle_embedding)
{
    const char *name = embedding_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    size_t n_ids;
    const int32_t *ids = tbt_ref_i32(ref, "ids", &n_ids);
    tbt_reft w = tbt_ref_get(ref, "weight"), dy = tbt_ref_get(ref, "dy");
    tbt_reft y_ref = tbt_ref_get(ref, "y"), dw_ref = tbt_ref_get(ref, "dweight");
    ck_assert_uint_eq(w.ndim, 2);

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 2);
    tb_embedding emb;
    CHECK_OK(ctx, tb_embedding_init(&ctx, &emb, w.shape[0], w.shape[1], &rng));
    memcpy(emb.weight.value, w.data, w.n * sizeof(float));
    memset(emb.weight.grad, 0, w.n * sizeof(float));

    float *dyb = tbt_ref_dup(&dy), *yb = tbt_nan_buffer(y_ref.n);
    tb_tensor yt = tbt_view_like(yb, &y_ref), dyt = tbt_view_like(dyb, &dy);
    CHECK_OK(ctx, tb_embedding_forward(&ctx, &emb, ids, n_ids, &yt));
    CHECK_OK(ctx, tb_embedding_backward(&ctx, &emb, ids, n_ids, &dyt));

    char blk[96], lbl[128];
    snprintf(blk, sizeof blk, "embedding[%zux%zu,n=%zu]", w.shape[0], w.shape[1], n_ids);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "y"), yb, y_ref.data, y_ref.n, 0.0, 0.0);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dW"), emb.weight.grad, dw_ref.data, dw_ref.n,
                     EMB_RTOL, EMB_ATOL);
    free(dyb);
    free(yb);
    tb_embedding_free(&emb);
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_embedding.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(embedding_cases); k++)
        if (strcmp(embedding_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_embedding_all_cases_tested)
{
    ck_assert_uint_gt(
        tbt_check_manifest("embedding_cases.txt", "test_embedding.c", case_is_tested, NULL), 0);
}
END_TEST

Suite *suite_embedding(void)
{
    Suite *s = suite_create("embedding");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, embedding_rejects_bad_ids);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 120);
    tcase_add_test(t1, embedding_gradients);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("pytorch");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_embedding, 0, (int)ARRAY_LEN(embedding_cases));
    tcase_add_test(t2, test_embedding_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
