/*
 * Token sampling (sample.h):
 *   - tb_logits_process against transformers' logits processors
 *     (test/oracle/gen_sample.py): repetition penalty (> 1 and < 1),
 *     no-repeat n-grams (n = 1, 2, 3), temperature, top-k (k = 1, ties
 *     kept), top-p, and all of them together; removed tokens must be -inf
 *     exactly where transformers puts -inf, the rest within 1e-6;
 *   - tb_sample_token draws from the softmax of the processed logits (the
 *     empirical frequencies of 200000 seeded draws match it), greedy takes
 *     the first maximum, a seed reproduces the draws;
 *   - bad options and histories are refused.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char *const sample_cases[] = {
    "sample_plain",        "sample_temperature0.7", "sample_topk5",
    "sample_topk1",        "sample_topp0.9",        "sample_topp0.3_t1.5",
    "sample_topk10_topp0.8", "sample_penalty1.3",   "sample_penalty0.7",
    "sample_ngram2",       "sample_ngram3",         "sample_ngram1",
    "sample_all",          "sample_greedy_penalty_ngram",
};

static tb_sampler_config config_of(const tbt_ref *ref)
{
    tb_sampler_config c = tb_sampler_default_config();
    c.temperature = tbt_ref_scalar(ref, "temperature");
    c.top_k = (size_t)tbt_ref_i32_scalar(ref, "top_k");
    c.top_p = tbt_ref_scalar(ref, "top_p");
    c.repetition_penalty = tbt_ref_scalar(ref, "penalty");
    c.no_repeat_ngram = (size_t)tbt_ref_i32_scalar(ref, "ngram");
    return c;
}

START_TEST(test_sample_oracle)
{
    const char *name = sample_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const tb_sampler_config cfg = config_of(ref);
    size_t nh;
    const int32_t *hist = tbt_ref_i32(ref, "history", &nh);
    tbt_reft in = tbt_ref_get(ref, "logits"), want = tbt_ref_get(ref, "want");
    float *got = tbt_ref_dup(&in);
    CHECK_OK(ctx, tb_logits_process(&ctx, &cfg, hist, nh, got, in.n));
    size_t removed = 0;
    for (size_t v = 0; v < in.n; v++) {
        const int gi = isinf(got[v]) && got[v] < 0, wi = isinf(want.data[v]) && want.data[v] < 0;
        ck_assert_msg(gi == wi, "%s: token %zu is %g here, %g in transformers", name, v,
                      (double)got[v], (double)want.data[v]);
        removed += (size_t)wi;
        if (!wi)
            ck_assert_msg(fabsf(got[v] - want.data[v]) <= 1e-6f * (1.0f + fabsf(want.data[v])),
                          "%s: logit %zu = %.9g, transformers %.9g", name, v, (double)got[v],
                          (double)want.data[v]);
    }
    printf("  check   %-40s %zu of %zu tokens removed, as transformers\n", name, removed, in.n);
    /* Greedy picks the first maximum of the processed logits. */
    if (cfg.temperature == 0.0f) {
        float *l2 = tbt_ref_dup(&in);
        int32_t tok;
        CHECK_OK(ctx, tb_sample_token(&ctx, &cfg, hist, nh, l2, in.n, NULL, &tok));
        size_t best = 0;
        for (size_t v = 1; v < in.n; v++)
            if (want.data[v] > want.data[best])
                best = v;
        ck_assert_int_eq(tok, (int32_t)best);
        free(l2);
    }
    free(got);
    tbt_ref_free(ref);
}
END_TEST

START_TEST(test_sample_manifest)
{
    const tbt_names l = {sample_cases, ARRAY_LEN(sample_cases)};
    ck_assert_uint_eq(tbt_check_manifest("sample_cases.txt", "test_sample.c", tbt_name_listed, &l),
                      ARRAY_LEN(sample_cases));
}
END_TEST

/* 200000 draws with top-k 4 and temperature 0.8 from fixed logits: each
 * token's frequency is within 5 standard errors of its probability, tokens
 * outside the top 4 never appear, and the same seed repeats the draws. */
START_TEST(test_sample_distribution)
{
    enum { V = 9, DRAWS = 200000 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const float base[V] = {0.3f, 2.0f, -1.0f, 1.5f, 0.1f, 1.9f, -3.0f, 1.0f, 0.0f};
    tb_sampler_config cfg = tb_sampler_default_config();
    cfg.temperature = 0.8f;
    cfg.top_k = 4;
    /* The distribution: softmax(base / 0.8) over the 4 largest. */
    double p[V] = {0}, z = 0.0;
    const int top[4] = {1, 5, 3, 7};
    for (int k = 0; k < 4; k++)
        z += exp((double)(base[top[k]] / 0.8f));
    for (int k = 0; k < 4; k++)
        p[top[k]] = exp((double)(base[top[k]] / 0.8f)) / z;
    size_t count[V] = {0};
    tb_rng rng, again;
    tb_rng_init(&rng, 12);
    tb_rng_init(&again, 12);
    for (int d = 0; d < DRAWS; d++) {
        float l[V], l2[V];
        memcpy(l, base, sizeof l);
        memcpy(l2, base, sizeof l2);
        int32_t t, t2;
        CHECK_OK(ctx, tb_sample_token(&ctx, &cfg, NULL, 0, l, V, &rng, &t));
        CHECK_OK(ctx, tb_sample_token(&ctx, &cfg, NULL, 0, l2, V, &again, &t2));
        ck_assert_int_eq(t, t2);
        ck_assert(t >= 0 && t < V);
        count[t]++;
    }
    double worst = 0.0;
    for (int v = 0; v < V; v++) {
        const double f = (double)count[v] / DRAWS, se = sqrt(p[v] * (1 - p[v]) / DRAWS);
        if (p[v] == 0.0) {
            ck_assert_msg(count[v] == 0, "token %d outside the top 4 drawn %zu times", v, count[v]);
            continue;
        }
        const double zs = fabs(f - p[v]) / se;
        worst = zs > worst ? zs : worst;
        ck_assert_msg(zs < 5.0, "token %d: frequency %.5f, probability %.5f (%.1f SE)", v, f, p[v],
                      zs);
    }
    printf("  check   sampling: %d draws match softmax(top-4 / 0.8) within %.2f standard errors\n",
           DRAWS, worst);
}
END_TEST

START_TEST(test_sample_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    float l[4] = {1, 2, 3, 4};
    const int32_t hist[2] = {1, 4};
    tb_sampler_config c = tb_sampler_default_config();
    int32_t t;
    tb_rng rng;
    tb_rng_init(&rng, 1);
    ck_assert_int_eq(tb_logits_process(&ctx, &c, hist, 2, l, 4), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_logits_process(&ctx, &c, NULL, 2, l, 4), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_logits_process(&ctx, NULL, NULL, 0, l, 4), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_logits_process(&ctx, &c, NULL, 0, l, 0), TB_ERR_INVALID_ARG);
    c.temperature = -1.0f;
    ck_assert_int_eq(tb_logits_process(&ctx, &c, NULL, 0, l, 4), TB_ERR_INVALID_ARG);
    c = tb_sampler_default_config();
    c.top_p = 0.0f;
    ck_assert_int_eq(tb_logits_process(&ctx, &c, NULL, 0, l, 4), TB_ERR_INVALID_ARG);
    c.top_p = 1.5f;
    ck_assert_int_eq(tb_logits_process(&ctx, &c, NULL, 0, l, 4), TB_ERR_INVALID_ARG);
    c = tb_sampler_default_config();
    c.repetition_penalty = 0.0f;
    ck_assert_int_eq(tb_logits_process(&ctx, &c, NULL, 0, l, 4), TB_ERR_INVALID_ARG);
    c = tb_sampler_default_config();
    ck_assert_int_eq(tb_sample_token(&ctx, &c, NULL, 0, l, 4, NULL, &t), TB_ERR_NULL_ARG);
    float dead[3] = {-INFINITY, -INFINITY, -INFINITY};
    ck_assert_int_eq(tb_sample_token(&ctx, &c, NULL, 0, dead, 3, &rng, &t), TB_ERR_NON_FINITE);
    float nan3[3] = {1.0f, NAN, 0.0f};
    ck_assert_int_eq(tb_sample_token(&ctx, &c, NULL, 0, nan3, 3, &rng, &t), TB_ERR_NON_FINITE);
    /* Greedy with a tie takes the first; no rng needed. */
    c.temperature = 0.0f;
    float tie[4] = {1, 5, 5, 2};
    CHECK_OK(ctx, tb_sample_token(&ctx, &c, NULL, 0, tie, 4, NULL, &t));
    ck_assert_int_eq(t, 1);
}
END_TEST

Suite *suite_sample(void)
{
    Suite *s = suite_create("sample");
    TCase *tc = tcase_create("sampling");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_sample_oracle, 0, (int)ARRAY_LEN(sample_cases));
    tcase_add_test(tc, test_sample_manifest);
    tcase_add_test(tc, test_sample_distribution);
    tcase_add_test(tc, test_sample_errors);
    suite_add_tcase(s, tc);
    return s;
}
