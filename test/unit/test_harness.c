/*
 * The comparison harness can FAIL: on a real PyTorch oracle case
 * (linear_17x33x50_bias), tbt_compare() with the oracle tolerances accepts
 * the library's true result and rejects a negated, zeroed, slightly
 * perturbed (one element by 1e-3 relative) or NaN-poisoned one; and it
 * reports an all-zero reference as degenerate (so an all-zero result can
 * never pass against it).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

/* The Linear tolerances of test_linear.c (see the justification there). */
static const double H_RTOL = 2e-5, H_ATOL = 2e-6;

static const char *const H_CASE = "linear_17x33x50_bias";

/* What the harness compares: our results for one oracle case. */
typedef struct h_result {
    tbt_ref *ref;
    tb_linear lin;
    float *y, *dx;
    const float *y_ref, *dx_ref, *dw_ref;
    size_t ny, ndx, ndw;
} h_result;

static void h_run(h_result *r)
{
    memset(r, 0, sizeof *r);
    r->ref = tbt_ref_load(H_CASE);
    size_t nx, nw, nb, ndy, xnd, xs[4], ws[4];
    const float *x = tbt_ref_f32(r->ref, "x", &nx, &xnd, xs);
    const float *w = tbt_ref_f32(r->ref, "weight", &nw, NULL, ws);
    const float *b = tbt_ref_f32(r->ref, "bias", &nb, NULL, NULL);
    const float *dy = tbt_ref_f32(r->ref, "dy", &ndy, NULL, NULL);
    r->y_ref = tbt_ref_f32(r->ref, "y", &r->ny, NULL, NULL);
    r->dx_ref = tbt_ref_f32(r->ref, "dx", &r->ndx, NULL, NULL);
    r->dw_ref = tbt_ref_f32(r->ref, "dweight", &r->ndw, NULL, NULL);
    ck_assert_uint_eq(xnd, 2);
    const size_t n = xs[0], in = ws[1], out = ws[0];
    ck_assert_uint_eq(nb, out);
    ck_assert_uint_eq(ndy, n * out);

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    ck_assert_int_eq(tb_linear_init(&ctx, &r->lin, in, out, 1, &rng), TB_OK);
    memcpy(r->lin.weight.value, w, nw * sizeof(float));
    memcpy(r->lin.bias.value, b, nb * sizeof(float));
    memset(r->lin.weight.grad, 0, nw * sizeof(float));
    memset(r->lin.bias.grad, 0, nb * sizeof(float));
    float *xb = tbt_alloc(nx * sizeof(float)), *dyb = tbt_alloc(ndy * sizeof(float));
    memcpy(xb, x, nx * sizeof(float));
    memcpy(dyb, dy, ndy * sizeof(float));
    r->y = tbt_alloc(r->ny * sizeof(float));
    r->dx = tbt_alloc(r->ndx * sizeof(float));
    tb_tensor xt = tb_tensor_2d(xb, n, in), dyt = tb_tensor_2d(dyb, n, out);
    tb_tensor yt = tb_tensor_2d(r->y, n, out), dxt = tb_tensor_2d(r->dx, n, in);
    ck_assert_int_eq(tb_linear_forward(&ctx, &r->lin, &xt, &yt), TB_OK);
    ck_assert_int_eq(tb_linear_backward(&ctx, &r->lin, &xt, &dyt, &dxt), TB_OK);
    free(xb);
    free(dyb);
}

static void h_free(h_result *r)
{
    free(r->y);
    free(r->dx);
    tb_linear_free(&r->lin);
    tbt_ref_free(r->ref);
}

static void h_print(const char *what, const tbt_cmp *c)
{
    printf("  harness %-34s ok=%d n_bad=%-5zu degenerate=%d max_abs=%.3e\n", what, c->ok,
           c->n_bad, c->degenerate, c->max_abs_err);
    fflush(stdout);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

/* Index of an element whose |want| is the median magnitude (a typical
 * element, not just the largest one). */
static size_t median_index(const float *want, size_t n)
{
    float *mag = tbt_alloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        mag[i] = fabsf(want[i]);
    qsort(mag, n, sizeof(float), cmp_float);
    const float med = mag[n / 2];
    free(mag);
    for (size_t i = 0; i < n; i++)
        if (fabsf(want[i]) == med)
            return i;
    return 0;
}

/* Every corruption of `got` (a correct result for `want`) must be rejected. */
static void check_tampering(const char *name, const float *got, const float *want, size_t n)
{
    char what[96];
    float *t = tbt_alloc(n * sizeof(float));
    tbt_cmp c;

    /* Unmodified: accepted. */
    c = tbt_compare(got, want, n, H_RTOL, H_ATOL);
    snprintf(what, sizeof what, "%s unmodified", name);
    h_print(what, &c);
    ck_assert_msg(c.ok == 1 && c.n_bad == 0 && !c.degenerate, "%s: correct result rejected", name);

    /* Negated (sign-flipped gradient). */
    for (size_t i = 0; i < n; i++)
        t[i] = -got[i];
    c = tbt_compare(t, want, n, H_RTOL, H_ATOL);
    snprintf(what, sizeof what, "%s negated", name);
    h_print(what, &c);
    ck_assert_msg(c.ok == 0 && c.n_bad > n / 2, "%s: negated result accepted", name);

    /* Zeroed. */
    memset(t, 0, n * sizeof(float));
    c = tbt_compare(t, want, n, H_RTOL, H_ATOL);
    snprintf(what, sizeof what, "%s zeroed", name);
    h_print(what, &c);
    ck_assert_msg(c.ok == 0 && c.n_bad > n / 2 && !c.degenerate, "%s: zero result accepted",
                  name);

    /* One element off by 1e-3 relative: the largest and a typical (median
     * magnitude) element, each alone. */
    size_t largest = 0;
    for (size_t i = 1; i < n; i++)
        if (fabsf(want[i]) > fabsf(want[largest]))
            largest = i;
    const size_t picks[2] = {largest, median_index(want, n)};
    const char *pick_names[2] = {"largest", "median"};
    for (int k = 0; k < 2; k++) {
        const size_t i = picks[k];
        memcpy(t, got, n * sizeof(float));
        t[i] = got[i] * (1.0f + 1e-3f);
        c = tbt_compare(t, want, n, H_RTOL, H_ATOL);
        snprintf(what, sizeof what, "%s [%zu]*(1+1e-3) (%s)", name, i, pick_names[k]);
        h_print(what, &c);
        ck_assert_msg(c.ok == 0 && c.n_bad == 1 && c.worst == i,
                      "%s: element %zu (|want| = %g) perturbed by 1e-3 relative was accepted",
                      name, i, (double)fabsf(want[i]));
    }

    /* A NaN injected into one element (in the middle). */
    memcpy(t, got, n * sizeof(float));
    t[n / 2] = NAN;
    c = tbt_compare(t, want, n, H_RTOL, H_ATOL);
    snprintf(what, sizeof what, "%s NaN at [%zu]", name, n / 2);
    h_print(what, &c);
    ck_assert_msg(c.ok == 0 && c.n_bad == 1 && c.worst == n / 2, "%s: NaN accepted", name);

    /* An infinity, likewise. */
    memcpy(t, got, n * sizeof(float));
    t[0] = INFINITY;
    c = tbt_compare(t, want, n, H_RTOL, H_ATOL);
    snprintf(what, sizeof what, "%s +inf at [0]", name);
    h_print(what, &c);
    ck_assert_msg(c.ok == 0 && c.n_bad == 1, "%s: inf accepted", name);
    free(t);
}

START_TEST(test_harness_rejects_wrong_gradients)
{
    h_result r;
    h_run(&r);
    check_tampering("linear[17x33->50].dW", r.lin.weight.grad, r.dw_ref, r.ndw);
    check_tampering("linear[17x33->50].dx", r.dx, r.dx_ref, r.ndx);
    check_tampering("linear[17x33->50].y", r.y, r.y_ref, r.ny);
    h_free(&r);
}
END_TEST

START_TEST(test_harness_degenerate_reference)
{
    h_result r;
    h_run(&r);
    float *zeros = tbt_alloc(r.ndw * sizeof(float));
    /* Our real gradient against an all-zero reference: degenerate, not ok. */
    tbt_cmp c = tbt_compare(r.lin.weight.grad, zeros, r.ndw, H_RTOL, H_ATOL);
    h_print("all-zero reference vs dW", &c);
    ck_assert_int_eq(c.degenerate, 1);
    ck_assert_int_eq(c.ok, 0);
    /* Even a matching (all-zero) result must not pass an all-zero reference. */
    c = tbt_compare(zeros, zeros, r.ndw, H_RTOL, H_ATOL);
    h_print("all-zero reference vs all-zero", &c);
    ck_assert_int_eq(c.n_bad, 0);
    ck_assert_int_eq(c.degenerate, 1);
    ck_assert_int_eq(c.ok, 0);
    /* A reference that is tiny compared with atol is degenerate too. */
    for (size_t i = 0; i < r.ndw; i++)
        zeros[i] = (float)(5.0 * H_ATOL) * (i % 2 ? 1.0f : -1.0f);
    c = tbt_compare(zeros, zeros, r.ndw, H_RTOL, H_ATOL);
    h_print("reference below 10*atol", &c);
    ck_assert_int_eq(c.degenerate, 1);
    ck_assert_int_eq(c.ok, 0);
    free(zeros);
    h_free(&r);
}
END_TEST

Suite *suite_harness(void)
{
    Suite *s = suite_create("harness");
    TCase *tc = tcase_create("compare_can_fail");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_harness_rejects_wrong_gradients);
    tcase_add_test(tc, test_harness_degenerate_reference);
    suite_add_tcase(s, tc);
    return s;
}
