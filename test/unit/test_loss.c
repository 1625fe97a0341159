/*
 * tb_cross_entropy_*: errors and the all-ignored case, finite differences,
 * PyTorch oracle (F.cross_entropy).
 * Oracle cases: the block is run on the exact inputs, weights and upstream
 * gradients that test/oracle/gen_loss.py fed to PyTorch, and its results are
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

START_TEST(cross_entropy_errors_and_all_ignored)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float logits[3 * 4], d[12];
    tbt_fill_uniform(logits, 12, -2, 2, 8);
    tb_tensor lt = tb_tensor_2d(logits, 3, 4), dt = tb_tensor_2d(d, 3, 4);
    size_t bytes;
    ck_assert_int_eq(tb_cross_entropy_cache_size(3, &bytes), TB_OK);
    ck_assert_int_eq(tb_cross_entropy_cache_size(SIZE_MAX / 2, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_cross_entropy_cache_size(3, &bytes), TB_OK);
    void *cache = tbt_alloc(bytes);
    float loss = TBT_SENTINEL;
    tb_cross_entropy_config cfg = tb_cross_entropy_default_config();
    ck_assert_int_eq(cfg.ignore_index, -100);
    int32_t bad[3] = {0, 4, 1}, neg[3] = {0, -1, 1}, ign[3] = {-100, -100, -100};
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, &cfg, &lt, bad, 3, &loss, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "targets[1] = 4"));
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, &cfg, &lt, neg, 3, &loss, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, &cfg, &lt, ign, 2, &loss, cache, bytes),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, &cfg, &lt, ign, 3, &loss, cache, bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, &cfg, &lt, ign, 3, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert(loss == TBT_SENTINEL);
    tb_cross_entropy_config badcfg = cfg;
    badcfg.reduction = (tb_reduction)7;
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, &badcfg, &lt, ign, 3, &loss, cache, bytes),
                     TB_ERR_INVALID_ARG);
    /* Backward before forward: the cache is not valid. */
    memset(cache, 0, bytes);
    ck_assert_int_eq(
        tb_cross_entropy_backward(&ctx, &cfg, &lt, ign, 3, 1.0f, cache, bytes, &dt),
        TB_ERR_STATE);
    /* Documented: all targets ignored -> loss 0 and zero gradient (not NaN). */
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, NULL, &lt, ign, 3, &loss, cache, bytes),
                     TB_OK);
    ck_assert(loss == 0.0f);
    tbt_fill_sentinel(d, 12);
    ck_assert_int_eq(
        tb_cross_entropy_backward(&ctx, NULL, &lt, ign, 3, 1.0f, cache, bytes, &dt), TB_OK);
    for (int i = 0; i < 12; i++)
        ck_assert(d[i] == 0.0f);
    /* Cache from a different row count is refused. */
    tb_tensor two = tb_tensor_2d(logits, 2, 4);
    ck_assert_int_eq(tb_cross_entropy_forward(&ctx, NULL, &two, ign, 2, &loss, cache, bytes),
                     TB_OK);
    ck_assert_int_eq(
        tb_cross_entropy_backward(&ctx, NULL, &lt, ign, 3, 1.0f, cache, bytes, &dt),
        TB_ERR_STATE);
    /* No cache (an evaluation loss): the same loss, bit for bit; backward
     * needs one. */
    const int32_t tg[3] = {1, -100, 3};
    float with_cache, without;
    CHECK_OK(ctx, tb_cross_entropy_forward(&ctx, NULL, &lt, tg, 3, &with_cache, cache, bytes));
    CHECK_OK(ctx, tb_cross_entropy_forward(&ctx, NULL, &lt, tg, 3, &without, NULL, 0));
    ck_assert(memcmp(&with_cache, &without, sizeof without) == 0 && without > 0.0f);
    ck_assert_int_eq(tb_cross_entropy_backward(&ctx, NULL, &lt, tg, 3, 1.0f, NULL, bytes, &dt),
                     TB_ERR_NULL_ARG);
    free(cache);
}
END_TEST

/* ---- cross-entropy ------------------------------------------------------- */

typedef struct ce_prob {
    tb_ctx ctx;
    tb_cross_entropy_config cfg;
    float *logits;
    int32_t *targets;
    size_t n, v, cache_bytes;
    void *cache;
} ce_prob;

static double ce_loss(void *user)
{
    ce_prob *p = user;
    tb_tensor l = tb_tensor_2d(p->logits, p->n, p->v);
    float loss;
    ck_assert_int_eq(tb_cross_entropy_forward(&p->ctx, &p->cfg, &l, p->targets, p->n, &loss,
                                              p->cache, p->cache_bytes),
                     TB_OK);
    return loss;
}

static void check_ce(size_t n, size_t v, tb_reduction red, float dloss)
{
    ce_prob p;
    tbt_ctx_init(&p.ctx, 1);
    p.cfg = tb_cross_entropy_default_config();
    p.cfg.reduction = red;
    p.n = n, p.v = v;
    p.logits = tbt_alloc(n * v * sizeof(float));
    p.targets = tbt_alloc(n * sizeof(int32_t));
    float *d = tbt_alloc(n * v * sizeof(float));
    tbt_fill_uniform(p.logits, n * v, -3, 3, n + v);
    for (size_t i = 0; i < n; i++)
        p.targets[i] = (i % 4 == 3) ? -100 : (int32_t)((i * 5) % v);
    ck_assert_int_eq(tb_cross_entropy_cache_size(n, &p.cache_bytes), TB_OK);
    p.cache = tbt_alloc(p.cache_bytes);
    ce_loss(&p);
    tb_tensor l = tb_tensor_2d(p.logits, n, v), dt = tb_tensor_2d(d, n, v);
    ck_assert_int_eq(tb_cross_entropy_backward(&p.ctx, &p.cfg, &l, p.targets, n, 1.0f, p.cache,
                                               p.cache_bytes, &dt),
                     TB_OK);
    char label[96];
    snprintf(label, sizeof label, "cross_entropy[%zux%zu,%s].dlogits", n, v,
             red == TB_REDUCTION_MEAN ? "mean" : "sum");
    tbt_gradcheck(label, p.logits, n * v, d, ce_loss, &p, TBT_FD_H, TBT_FD_RTOL, red == TB_REDUCTION_MEAN ? TBT_FD_ATOL / 10 : TBT_FD_ATOL, TBT_FD_MAX_CHECKS);
    /* dloss scales the gradient linearly (used for accumulation). The
     * gradient check left the cache of a perturbed forward: refill it. */
    ce_loss(&p);
    float *d2 = tbt_alloc(n * v * sizeof(float));
    tb_tensor d2t = tb_tensor_2d(d2, n, v);
    ck_assert_int_eq(tb_cross_entropy_backward(&p.ctx, &p.cfg, &l, p.targets, n, dloss, p.cache,
                                               p.cache_bytes, &d2t),
                     TB_OK);
    for (size_t i = 0; i < n * v; i++)
        ck_assert_msg(fabsf(d2[i] - dloss * d[i]) <= 1e-6f + 1e-5f * fabsf(dloss * d[i]),
                      "dloss=%g: element %zu is %.9g, expected %.9g", (double)dloss, i,
                      (double)d2[i], (double)(dloss * d[i]));
    free(p.logits), free(p.targets), free(p.cache), free(d), free(d2);
}

START_TEST(cross_entropy_gradients)
{
    check_ce(1, 3, TB_REDUCTION_MEAN, 0.5f);
    check_ce(3, 17, TB_REDUCTION_MEAN, 2.0f);
    check_ce(17, 33, TB_REDUCTION_SUM, 0.25f);
    check_ce(2, 257, TB_REDUCTION_SUM, 3.0f);
}
END_TEST

/* ---- helpers ------------------------------------------------------------ */

/* For a reference that PyTorch computes as exactly zero everywhere (e.g. the
 * loss and gradient of a 1-class cross-entropy), any tolerance-based
 * comparison is degenerate; require exact equality instead. */
static void assert_exact_zero(const char *lbl, const float *got, const float *want, size_t n)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        ck_assert_msg(want[i] == 0.0f, "%s: reference is not all zero", lbl);
        if (!(got[i] == 0.0f) && bad++ == 0)
            first = i;
    }
    printf("  compare %-40s n=%-7zu exact zero (reference is identically 0)%s\n", lbl, n,
           bad ? "  MISMATCH" : "");
    fflush(stdout);
    ck_assert_msg(bad == 0, "%s: %zu of %zu elements are not exactly 0; first at %zu: %.9g", lbl,
                  bad, n, first, (double)got[first]);
}

/* ---- Cross-entropy -------------------------------------------------------
 *
 * loss: per-row lse - x[target], reduced. The row terms are accurate to a
 * few ulp of lse (|lse| <= 85 for the large-logit case: ~1e-5 absolute per
 * row, relative ~1e-7 of the loss there); the reduction adds ~sqrt(N) ulp.
 *   rtol 1e-5, atol 1e-6 (loss values are 1.2 .. 265, so atol is
 *   negligible; rtol allows ~170 ulp).
 * dlogits = scale * (softmax - onehot), scale = dloss / counted (mean) or
 * dloss (sum). softmax is computed as exp(x - lse): the rounding of
 * x - lse (<= 6e-8 * |x - lse| relative, |x - lse| <= 170 for the
 * large-logit case) gives a relative error up to ~1e-5 there, ~3e-7 for
 * the |logits| <= 3 cases.
 *   rtol 3e-5: covers the large-logit case with margin; a 1e-3 error fails;
 *   atol = 1e-7 * scale: at the target column p - 1 cancels, leaving an
 *              absolute error of ~1 ulp(1) * scale = 6e-8 * scale (small p
 *              elsewhere stay relative-accurate). `scale` is the natural
 *              unit of the gradient (|dlogits| <= scale), so this is 1e-7
 *              of the largest possible entry whatever the reduction, N or
 *              dloss (measured: <= 1.8e-7 absolute for scale = 1/15).
 */
static const double CE_LOSS_RTOL = 1e-5, CE_LOSS_ATOL = 1e-6;
static const double CE_GRAD_RTOL = 3e-5, CE_GRAD_ATOL_REL = 1e-7;

static const char *const ce_cases[] = {
    "ce_v1_mean",          "ce_v3_mean_ign100",  "ce_v3_sum_ign100",  "ce_v17_mean_ign5",
    "ce_v17_sum_ign5",     "ce_v257_mean_ign100", "ce_v257_sum_ignm1", "ce_v257_mean_noign",
    "ce_v17_mean_n1",      "ce_v17_mean_large",
};

START_TEST(test_oracle_cross_entropy)
{
    const char *name = ce_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tbt_reft logits = tbt_ref_get(ref, "logits"), dl_ref = tbt_ref_get(ref, "dlogits");
    size_t n_targets;
    const int32_t *targets = tbt_ref_i32(ref, "targets", &n_targets);
    const float want_loss = tbt_ref_scalar(ref, "loss");
    const float dloss = tbt_ref_scalar(ref, "dloss");
    const int32_t red = tbt_ref_i32_scalar(ref, "reduction");
    ck_assert(red == 0 || red == 1);
    tb_cross_entropy_config cfg = tb_cross_entropy_default_config();
    cfg.ignore_index = tbt_ref_i32_scalar(ref, "ignore_index");
    cfg.reduction = red == 0 ? TB_REDUCTION_MEAN : TB_REDUCTION_SUM;

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float *lb = tbt_ref_dup(&logits), *dlb = tbt_nan_buffer(dl_ref.n);
    tb_tensor lt = tbt_view_like(lb, &logits), dlt = tbt_view_like(dlb, &dl_ref);
    size_t cache_bytes;
    CHECK_OK(ctx, tb_cross_entropy_cache_size(tb_tensor_rows(&lt), &cache_bytes));
    void *cache = tbt_alloc(cache_bytes);
    float loss = NAN;
    CHECK_OK(ctx, tb_cross_entropy_forward(&ctx, &cfg, &lt, targets, n_targets, &loss, cache,
                                           cache_bytes));
    CHECK_OK(ctx, tb_cross_entropy_backward(&ctx, &cfg, &lt, targets, n_targets, dloss, cache,
                                            cache_bytes, &dlt));

    size_t counted = 0;
    for (size_t i = 0; i < n_targets; i++)
        counted += targets[i] != cfg.ignore_index;
    ck_assert_uint_gt(counted, 0);
    const double scale = fabs((double)dloss) / (red == 0 ? (double)counted : 1.0);

    char blk[96], lbl[128];
    snprintf(blk, sizeof blk, "ce[N=%zu,V=%zu,%s,ign=%ld]", tb_tensor_rows(&lt),
             tb_tensor_cols(&lt), red == 0 ? "mean" : "sum", (long)cfg.ignore_index);
    if (tb_tensor_cols(&lt) == 1) {
        /* One class: PyTorch's loss and gradient are exactly 0. */
        assert_exact_zero(tbt_label(lbl, sizeof lbl, blk, "loss"), &loss, &want_loss, 1);
        assert_exact_zero(tbt_label(lbl, sizeof lbl, blk, "dlogits"), dlb, dl_ref.data, dl_ref.n);
    } else {
        tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "loss"), &loss, &want_loss, 1, CE_LOSS_RTOL,
                         CE_LOSS_ATOL);
        tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, "dlogits"), dlb, dl_ref.data, dl_ref.n,
                         CE_GRAD_RTOL, CE_GRAD_ATOL_REL * scale);
    }
    /* Ignored rows: exactly zero gradient, as in PyTorch. */
    const size_t v = tb_tensor_cols(&lt);
    for (size_t r = 0; r < n_targets; r++)
        if (targets[r] == cfg.ignore_index)
            for (size_t j = 0; j < v; j++)
                ck_assert_msg(dlb[r * v + j] == 0.0f && dl_ref.data[r * v + j] == 0.0f,
                              "%s: ignored row %zu has dlogits[%zu] = %g", blk, r, j,
                              (double)dlb[r * v + j]);
    free(cache);
    free(lb);
    free(dlb);
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_loss.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(ce_cases); k++)
        if (strcmp(ce_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_loss_all_cases_tested)
{
    ck_assert_uint_gt(
        tbt_check_manifest("loss_cases.txt", "test_loss.c", case_is_tested, NULL), 0);
}
END_TEST

Suite *suite_loss(void)
{
    Suite *s = suite_create("loss");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, cross_entropy_errors_and_all_ignored);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 120);
    tcase_add_test(t1, cross_entropy_gradients);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("pytorch");
    tcase_set_timeout(t2, 60);
    tcase_add_loop_test(t2, test_oracle_cross_entropy, 0, (int)ARRAY_LEN(ce_cases));
    tcase_add_test(t2, test_loss_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
