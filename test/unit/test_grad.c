/*
 * Gradient norms, clipping and EWC (grad.h): clipping against
 * torch.nn.utils.clip_grad_norm_ (test/oracle/gen_grad.py; frozen
 * parameters neither counted nor clipped; norm within 1e-6 relative, the
 * clipped gradients within rtol 1e-6), the EWC penalty, its gradient by
 * finite differences and the Fisher sum.
 */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const clip_cases[] = {"clip_below", "clip_above", "clip_tiny"};

START_TEST(test_clip_oracle)
{
    const char *name = clip_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tbt_four f;
    tbt_four_init(&ctx, &f);
    for (int i = 0; i < 3; i++) {
        char nm[16];
        snprintf(nm, sizeof nm, "g%d", i);
        tbt_reft g = tbt_ref_get(ref, nm);
        memcpy(f.p[i].grad, g.data, g.n * sizeof(float));
    }
    for (int k = 0; k < 4; k++)
        f.p[3].grad[k] = 1e6f; /* frozen: neither counted nor clipped */
    double norm;
    CHECK_OK(ctx, tb_clip_grad_norm(&ctx, &f.list, tbt_ref_scalar(ref, "max_norm"), &norm));
    const float want = tbt_ref_scalar(ref, "total_norm");
    ck_assert_msg(fabs(norm - want) <= 1e-6 * want, "%s: norm %.9g, torch %.9g", name, norm,
                  (double)want);
    for (int i = 0; i < 3; i++) {
        char nm[16], lbl[64];
        snprintf(nm, sizeof nm, "clipped%d", i);
        tbt_reft w = tbt_ref_get(ref, nm);
        snprintf(lbl, sizeof lbl, "%s.%s", name, nm);
        tbt_assert_close(lbl, f.p[i].grad, w.data, w.n, 1e-6, 1e-9);
    }
    ck_assert(f.p[3].grad[0] == 1e6f);
    tbt_four_free(&f);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_clip_manifest_tested)
{
    const tbt_names c = {clip_cases, ARRAY_LEN(clip_cases)};
    ck_assert_uint_eq(tbt_check_manifest("clip_cases.txt", "test_grad.c", tbt_name_listed, &c),
                      ARRAY_LEN(clip_cases));
}
END_TEST

/* ---- EWC ---------------------------------------------------------------------- */

typedef struct ewc_prob {
    tb_ctx ctx;
    tb_ewc ewc;
    tbt_four f;
    float lambda;
} ewc_prob;

static double ewc_loss(void *user)
{
    ewc_prob *p = user;
    /* The penalty adds to gradients: use a scratch copy of them. */
    double pen;
    CHECK_OK(p->ctx, tb_ewc_penalty(&p->ctx, &p->ewc, &p->f.list, p->lambda, &pen));
    return pen;
}

START_TEST(test_ewc_penalty_gradient_and_fisher)
{
    ewc_prob p;
    tbt_ctx_init(&p.ctx, 2);
    tbt_four_init(&p.ctx, &p.f);
    tbt_fill_uniform(p.f.mem, 2 * (51 + 17 + 17 + 4), -1, 1, 41);
    p.lambda = 3.0f;
    CHECK_OK(p.ctx, tb_ewc_init(&p.ctx, &p.ewc, &p.f.list));
    ck_assert_uint_eq(p.ewc.n, 51 + 17 + 17);
    /* Fisher: two "batches" with weight 1/2: F = (g1^2 + g2^2) / 2. */
    float *g1 = tbt_alloc(p.ewc.n * sizeof(float));
    size_t at = 0;
    for (int i = 0; i < 3; i++) {
        memcpy(g1 + at, p.f.p[i].grad, p.f.p[i].numel * sizeof(float));
        at += p.f.p[i].numel;
    }
    CHECK_OK(p.ctx, tb_ewc_accumulate_fisher(&p.ctx, &p.ewc, &p.f.list, 0.5f));
    for (int i = 0; i < 3; i++)
        for (size_t k = 0; k < p.f.p[i].numel; k++)
            p.f.p[i].grad[k] *= -2.0f;
    CHECK_OK(p.ctx, tb_ewc_accumulate_fisher(&p.ctx, &p.ewc, &p.f.list, 0.5f));
    for (size_t k = 0; k < p.ewc.n; k++) {
        const float want = 0.5f * (g1[k] * g1[k]) + 0.5f * ((-2.0f * g1[k]) * (-2.0f * g1[k]));
        ck_assert_msg(fabsf(p.ewc.fisher[k] - want) <= 1e-6f * want, "F[%zu] = %g, want %g", k,
                      (double)p.ewc.fisher[k], (double)want);
    }
    /* Move away from theta*: the penalty is lambda/2 sum F d^2. */
    for (int i = 0; i < 3; i++)
        for (size_t k = 0; k < p.f.p[i].numel; k++)
            p.f.p[i].value[k] += 0.1f * (float)((k % 5) + 1) * (i == 1 ? -1.0f : 1.0f);
    double want = 0.0;
    at = 0;
    for (int i = 0; i < 3; i++)
        for (size_t k = 0; k < p.f.p[i].numel; k++, at++) {
            const double d = (double)p.f.p[i].value[k] - (double)p.ewc.anchor[at];
            want += 0.5 * 3.0 * (double)p.ewc.fisher[at] * d * d;
        }
    for (int i = 0; i < 4; i++)
        memset(p.f.p[i].grad, 0, p.f.p[i].numel * sizeof(float));
    double pen;
    CHECK_OK(p.ctx, tb_ewc_penalty(&p.ctx, &p.ewc, &p.f.list, p.lambda, &pen));
    ck_assert_msg(fabs(pen - want) <= 1e-9 * want && want > 0, "penalty %g, want %g", pen, want);
    /* Its gradient, against finite differences of the penalty. */
    float *grad = tbt_alloc(p.ewc.n * sizeof(float));
    at = 0;
    for (int i = 0; i < 3; i++) {
        memcpy(grad + at, p.f.p[i].grad, p.f.p[i].numel * sizeof(float));
        at += p.f.p[i].numel;
    }
    at = 0;
    for (int i = 0; i < 3; i++) {
        char lbl[64];
        snprintf(lbl, sizeof lbl, "ewc.p%d", i);
        tbt_gradcheck(lbl, p.f.p[i].value, p.f.p[i].numel, grad + at, ewc_loss, &p, 1e-2, 1e-3,
                      1e-4, 64);
        at += p.f.p[i].numel;
    }
    /* Errors: another trainable set, bad lambda. */
    p.f.p[3].trainable = 1;
    ck_assert_int_eq(tb_ewc_penalty(&p.ctx, &p.ewc, &p.f.list, 1.0f, NULL), TB_ERR_SHAPE);
    p.f.p[3].trainable = 0;
    ck_assert_int_eq(tb_ewc_penalty(&p.ctx, &p.ewc, &p.f.list, -1.0f, NULL), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_ewc_accumulate_fisher(&p.ctx, &p.ewc, &p.f.list, NAN),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_ewc_penalty(&p.ctx, NULL, &p.f.list, 1.0f, NULL), TB_ERR_NULL_ARG);
    tb_ewc_free(&p.ewc);
    ck_assert_int_eq(tb_ewc_penalty(&p.ctx, &p.ewc, &p.f.list, 1.0f, NULL), TB_ERR_STATE);
    tb_ewc_free(&p.ewc);
    free(g1);
    free(grad);
    tbt_four_free(&p.f);
}
END_TEST

Suite *suite_grad(void)
{
    Suite *s = suite_create("grad");
    TCase *tc = tcase_create("grad");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_clip_oracle, 0, (int)ARRAY_LEN(clip_cases));
    tcase_add_test(tc, test_clip_manifest_tested);
    tcase_add_test(tc, test_ewc_penalty_gradient_and_fisher);
    suite_add_tcase(s, tc);
    return s;
}
