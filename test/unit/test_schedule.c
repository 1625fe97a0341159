/*
 * Learning-rate schedules (schedule.h): the factors against transformers'
 * schedule functions (test/oracle/gen_schedule.py), a user callback, and
 * the shape of warm-up + cosine (0 at the first step, 1 after the warm-up,
 * monotone, the floor at and after the end). Tolerance: rtol 1e-6 + atol
 * 1e-7 on factors in [0, 1] (a wrong warm-up or decay is off by > 1e-2).
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

static const char *const sched_cases[] = {
    "sched_constant_w7",          "sched_cosine_w10_n100_min0.1", "sched_cosine_w0_n50",
    "sched_linear_w5_n40_min0.2", "sched_linear_w0_n17",
};

START_TEST(test_schedule_oracle)
{
    const char *name = sched_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const int kind = tbt_ref_i32_scalar(ref, "kind");
    const tb_lr_kind kinds[3] = {TB_LR_CONSTANT, TB_LR_WARMUP_COSINE, TB_LR_WARMUP_LINEAR};
    tb_lr_schedule s = tb_lr_schedule_make(kinds[kind], (uint64_t)tbt_ref_i32_scalar(ref, "warmup"),
                                           (uint64_t)tbt_ref_i32_scalar(ref, "total"),
                                           tbt_ref_scalar(ref, "min_factor"));
    ck_assert_int_eq(tb_lr_schedule_check(&s), TB_OK);
    tbt_reft want = tbt_ref_get(ref, "factors");
    float *got = tbt_alloc(want.n * sizeof(float));
    for (size_t t = 0; t < want.n; t++)
        got[t] = tb_lr_factor(&s, t);
    char lbl[96];
    snprintf(lbl, sizeof lbl, "%s.factors", name);
    tbt_assert_close(lbl, got, want.data, want.n, 1e-6, 1e-7);
    /* Past the end the factor stays at the floor (documented). */
    if (kind != 0)
        ck_assert(tb_lr_factor(&s, want.n + 1000) == got[want.n - 1]);
    free(got);
    tbt_ref_free(ref);
}
END_TEST

static float halve_every_10(uint64_t step, void *user)
{
    (void)user;
    return ldexpf(1.0f, -(int)(step / 10));
}

START_TEST(test_schedule_callback_and_shapes)
{
    tb_lr_schedule s = tb_lr_schedule_make(TB_LR_CALLBACK, 0, 0, 0.0f);
    s.fn = halve_every_10;
    ck_assert_int_eq(tb_lr_schedule_check(&s), TB_OK);
    ck_assert(tb_lr_factor(&s, 9) == 1.0f && tb_lr_factor(&s, 10) == 0.5f);
    /* Warm-up then cosine: 0 at the first step, 1 at the end of the
     * warm-up, the floor at and after the end, monotone in between. */
    s = tb_lr_schedule_make(TB_LR_WARMUP_COSINE, 4, 20, 0.25f);
    ck_assert(tb_lr_factor(&s, 0) == 0.0f);
    ck_assert(tb_lr_factor(&s, 2) == 0.5f);
    ck_assert(tb_lr_factor(&s, 4) == 1.0f);
    ck_assert(fabsf(tb_lr_factor(&s, 20) - 0.25f) < 1e-7f);
    ck_assert(tb_lr_factor(&s, 1000) == tb_lr_factor(&s, 20));
    for (uint64_t t = 5; t <= 20; t++)
        ck_assert(tb_lr_factor(&s, t) <= tb_lr_factor(&s, t - 1));
}
END_TEST

START_TEST(test_schedule_manifest_tested)
{
    const tbt_names s = {sched_cases, ARRAY_LEN(sched_cases)};
    ck_assert_uint_eq(tbt_check_manifest("sched_cases.txt", "test_schedule.c", tbt_name_listed, &s),
                      ARRAY_LEN(sched_cases));
}
END_TEST

Suite *suite_schedule(void)
{
    Suite *s = suite_create("schedule");
    TCase *tc = tcase_create("schedule");
    tcase_set_timeout(tc, 60);
    tcase_add_loop_test(tc, test_schedule_oracle, 0, (int)ARRAY_LEN(sched_cases));
    tcase_add_test(tc, test_schedule_manifest_tested);
    tcase_add_test(tc, test_schedule_callback_and_shapes);
    suite_add_tcase(s, tc);
    return s;
}
