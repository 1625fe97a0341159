/*
 * tb_contrastive_*: CLIP's symmetric contrastive loss. Against transformers'
 * CLIPModel loss (gen_contrastive.py; float32 and float64 PyTorch, every
 * gradient from autograd), finite differences of every input and of
 * logit_scale, the clamp, 1 vs 2 threads bit for bit, bad input.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "tblocks.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static tb_param scale_param(float *value, float *grad)
{
    tb_param p;
    const size_t one = 1;
    ck_assert_int_eq(tb_param_view(NULL, &p, value, grad, 1, &one), TB_OK);
    return p;
}

/* ---- bad input ------------------------------------------------------------------------------ */

START_TEST(contrastive_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    enum { N = 3, D = 4 };
    float img[N * D], txt[N * D], di[N * D], dt[N * D], lg[N * N], sv = 2.0f, sg = 0.0f, loss;
    tbt_fill_uniform(img, N * D, -1, 1, 1);
    tbt_fill_uniform(txt, N * D, -1, 1, 2);
    tb_tensor it = tb_tensor_2d(img, N, D), tt = tb_tensor_2d(txt, N, D);
    tb_tensor dit = tb_tensor_2d(di, N, D), dtt = tb_tensor_2d(dt, N, D);
    tb_tensor lt = tb_tensor_2d(lg, N, N), bad_lt = tb_tensor_2d(lg, N, N - 1);
    tb_param p = scale_param(&sv, &sg);
    size_t bytes;
    ck_assert_int_eq(tb_contrastive_cache_size(N, D, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_contrastive_cache_size(SIZE_MAX / 2, 2, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_contrastive_cache_size((size_t)1 << 33, 1, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_contrastive_cache_size(N, D, &bytes), TB_OK);
    void *cache = tbt_alloc(bytes);
    /* NULLs */
    ck_assert_int_eq(tb_contrastive_forward(&ctx, NULL, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, NULL, &p, &loss, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, NULL, &loss, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, NULL, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_contrastive_forward(NULL, &it, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &it, &tt, &p, 1.0f, NULL, bytes, &dit, &dtt),
                     TB_ERR_NULL_ARG);
    /* shapes: zero sizes, mismatches, a logit_scale of 2 floats */
    tb_tensor z = it;
    z.shape[1] = 0;
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &z, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_SHAPE);
    z = it;
    z.shape[0] = 0;
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &z, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_SHAPE);
    tb_tensor t2 = tb_tensor_2d(txt, N - 1, D);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &t2, &p, &loss, NULL, cache, bytes),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, &bad_lt, cache, bytes),
                     TB_ERR_SHAPE);
    float two[2] = {1.0f, 1.0f};
    const size_t n2 = 2;
    tb_param p2;
    CHECK_OK(ctx, tb_param_view(&ctx, &p2, two, NULL, 1, &n2));
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p2, &loss, NULL, cache, bytes),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, NULL, cache, bytes - 4),
                     TB_ERR_BUFFER_TOO_SMALL);
    /* backward before any forward */
    memset(cache, 0, bytes);
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &it, &tt, &p, 1.0f, cache, bytes, &dit, &dtt),
                     TB_ERR_STATE);
    /* non-finite scale, embeddings; a zero row */
    sv = NAN;
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_NON_FINITE);
    sv = 100.0f; /* exp overflows float */
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_NON_FINITE);
    sv = 2.0f;
    img[5] = INFINITY;
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_NON_FINITE);
    img[5] = NAN;
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, NULL, NULL, 0),
                     TB_ERR_NON_FINITE);
    img[5] = 0.5f;
    float saved[D];
    memcpy(saved, txt + D, sizeof saved);
    memset(txt + D, 0, sizeof saved);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, NULL, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "txt row 1"));
    memcpy(txt + D, saved, sizeof saved);
    /* aliasing: outputs over inputs */
    tb_tensor over = tb_tensor_2d(img, N, N);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, &over, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, img, NULL, cache, bytes),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_contrastive_forward(&ctx, &it, &tt, &p, &loss, &lt, cache, bytes), TB_OK);
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &it, &tt, &p, 1.0f, cache, bytes, &it, &dtt),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &it, &tt, &p, 1.0f, cache, bytes, &dit, &dit),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &it, &tt, &p, NAN, cache, bytes, &dit, &dtt),
                     TB_ERR_NON_FINITE);
    sv = 2.5f; /* the cache holds logits of another scale */
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &it, &tt, &p, 1.0f, cache, bytes, &dit, &dtt),
                     TB_ERR_STATE);
    sv = 2.0f;
    tb_tensor i2 = tb_tensor_2d(img, N, D - 1), t3 = tb_tensor_2d(txt, N, D - 1);
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &i2, &t3, &p, 1.0f, cache, bytes, &dit, &dtt),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_contrastive_backward(&ctx, &it, &tt, &p, 1.0f, cache, bytes, &dit, &dtt),
                     TB_OK);
    ck_assert(sg != 0.0f);
    free(cache);
}
END_TEST

/* ---- the clamp and the initial value ------------------------------------------------------- */

START_TEST(contrastive_clamp)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    const tb_contrastive_config c = tb_contrastive_default_config();
    ck_assert_float_eq(c.init_logit_scale, (float)log(1.0 / 0.07));
    ck_assert_float_eq(c.max_logit_scale, (float)log(100.0));
    ck_assert_float_eq(c.min_logit_scale, 0.0f);
    float v = 0.0f, g = 0.0f;
    tb_param p = scale_param(&v, &g);
    ck_assert_int_eq(tb_contrastive_init_scale(&ctx, NULL, &p), TB_OK);
    ck_assert_float_eq(v, c.init_logit_scale);
    ck_assert_float_eq(expf(v), expf((float)log(1.0 / 0.07))); /* scale 14.2857 */
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, NULL, &p), TB_OK);
    ck_assert_float_eq(v, c.init_logit_scale); /* inside: untouched */
    v = 7.0f;
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, NULL, &p), TB_OK);
    ck_assert_float_eq(v, (float)log(100.0));
    ck_assert(fabsf(expf(v) - 100.0f) < 1e-4f);
    v = -0.5f;
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, &c, &p), TB_OK);
    ck_assert_float_eq(v, 0.0f);
    v = INFINITY;
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, NULL, &p), TB_OK);
    ck_assert_float_eq(v, (float)log(100.0));
    v = NAN;
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, NULL, &p), TB_ERR_NON_FINITE);
    tb_contrastive_config bad = c;
    bad.min_logit_scale = 5.0f;
    v = 1.0f;
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, &bad, &p), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, NULL, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_contrastive_init_scale(&ctx, NULL, NULL), TB_ERR_NULL_ARG);
    float three[3] = {0};
    const size_t n3 = 3;
    CHECK_OK(ctx, tb_param_view(&ctx, &p, three, NULL, 1, &n3));
    ck_assert_int_eq(tb_contrastive_clamp_scale(&ctx, NULL, &p), TB_ERR_SHAPE);
}
END_TEST

/* ---- PyTorch (transformers' CLIPModel loss) --------------------------------------------------
 *
 * Tolerances relative to each tensor's scale (max |ref|): the library
 * accumulates dots and sums in double, float32 PyTorch in float.
 *   vs float32 PyTorch: rtol 1e-4, atol 2e-5 * max|ref|;
 *   vs float64 PyTorch: rtol 2e-5, atol 5e-6 * max|ref|.
 * A gradient that is exactly zero in theory (N = 1: one class; D = 1: a
 * normalised scalar is +-1 whatever it was) is checked to be below 1e-6
 * (both sides) instead.
 */
static const double RTOL32 = 1e-4, ATOL32 = 2e-5, RTOL64 = 2e-5, ATOL64 = 5e-6;

static const int case_n[] = {1, 3, 17, 64};
static const int case_d[] = {1, 3, 17, 33, 512};
#define N_CASES (ARRAY_LEN(case_n) * ARRAY_LEN(case_d))

static void case_name(char *buf, size_t size, int k)
{
    snprintf(buf, size, "contrastive_n%d_d%d", case_n[k / (int)ARRAY_LEN(case_d)],
             case_d[k % (int)ARRAY_LEN(case_d)]);
}

static void check_tensor(const char *blk, const char *what, const float *got, const tbt_ref *ref,
                         const char *name32, const char *name64, int zero)
{
    char lbl[160];
    tbt_reft r32 = tbt_ref_get(ref, name32), r64 = tbt_ref_get(ref, name64);
    if (zero) {
        double g = tbt_max_abs_f(got, r32.n), w = tbt_max_abs_f(r64.data, r64.n);
        printf("  zero %s.%s max|got|=%.3e max|f64|=%.3e\n", blk, what, g, w);
        ck_assert_msg(g <= 1e-6 && w <= 1e-6, "%s.%s: should be 0: got %g, f64 %g", blk, what, g,
                      w);
        return;
    }
    const double s32 = tbt_max_abs_f(r32.data, r32.n), s64 = tbt_max_abs_f(r64.data, r64.n);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, what), got, r32.data, r32.n, RTOL32,
                     ATOL32 * s32);
    char w64[64];
    snprintf(w64, sizeof w64, "%s_vs_f64", what);
    tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, w64), got, r64.data, r64.n, RTOL64,
                     ATOL64 * s64);
}

typedef struct run_out {
    float loss, ds;
    float *lpi, *di, *dt;
} run_out;

static run_out run_case(int threads, const float *img, const float *txt, float s, float dloss,
                        size_t n, size_t d)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    run_out o;
    o.lpi = tbt_nan_buffer(n * n), o.di = tbt_nan_buffer(n * d), o.dt = tbt_nan_buffer(n * d);
    float sv = s;
    o.ds = 0.0f;
    tb_param p = scale_param(&sv, &o.ds);
    tb_tensor it = tb_tensor_2d((float *)img, n, d), tt = tb_tensor_2d((float *)txt, n, d);
    tb_tensor lt = tb_tensor_2d(o.lpi, n, n), dit = tb_tensor_2d(o.di, n, d),
              dtt = tb_tensor_2d(o.dt, n, d);
    size_t bytes;
    CHECK_OK(ctx, tb_contrastive_cache_size(n, d, &bytes));
    void *cache = tbt_alloc(bytes);
    CHECK_OK(ctx, tb_contrastive_forward(&ctx, &it, &tt, &p, &o.loss, &lt, cache, bytes));
    float loss2 = NAN; /* without a cache: the same loss */
    CHECK_OK(ctx, tb_contrastive_forward(&ctx, &it, &tt, &p, &loss2, NULL, NULL, 0));
    ck_assert(memcmp(&loss2, &o.loss, sizeof loss2) == 0);
    CHECK_OK(ctx, tb_contrastive_backward(&ctx, &it, &tt, &p, dloss, cache, bytes, &dit, &dtt));
    free(cache);
    return o;
}

static void free_out(run_out *o)
{
    free(o->lpi), free(o->di), free(o->dt);
}

START_TEST(contrastive_vs_pytorch)
{
    char name[64];
    case_name(name, sizeof name, _i);
    tbt_ref *ref = tbt_ref_load(name);
    tbt_reft img = tbt_ref_get(ref, "img"), txt = tbt_ref_get(ref, "txt");
    const size_t n = img.shape[0], d = img.shape[1];
    const float s = tbt_ref_scalar(ref, "logit_scale"), dloss = tbt_ref_scalar(ref, "dloss");
    run_out o = run_case(2, img.data, txt.data, s, dloss, n, d);
    char blk[96];
    snprintf(blk, sizeof blk, "contrastive[N=%zu,D=%zu,s=%.3f]", n, d, (double)s);
    check_tensor(blk, "loss", &o.loss, ref, "loss", "loss_f64", n == 1);
    check_tensor(blk, "logits_per_image", o.lpi, ref, "logits_per_image", "logits_per_image_f64",
                 0);
    check_tensor(blk, "dimg", o.di, ref, "dimg", "dimg_f64", n == 1 || d == 1);
    check_tensor(blk, "dtxt", o.dt, ref, "dtxt", "dtxt_f64", n == 1 || d == 1);
    check_tensor(blk, "dlogit_scale", &o.ds, ref, "dlogit_scale", "dlogit_scale_f64", n == 1);
    /* One thread: bit for bit the same. */
    run_out o1 = run_case(1, img.data, txt.data, s, dloss, n, d);
    ck_assert(memcmp(&o1.loss, &o.loss, sizeof o.loss) == 0);
    ck_assert(memcmp(&o1.ds, &o.ds, sizeof o.ds) == 0);
    ck_assert(memcmp(o1.lpi, o.lpi, n * n * sizeof(float)) == 0);
    ck_assert(memcmp(o1.di, o.di, n * d * sizeof(float)) == 0);
    ck_assert(memcmp(o1.dt, o.dt, n * d * sizeof(float)) == 0);
    free_out(&o);
    free_out(&o1);
    tbt_ref_free(ref);
}
END_TEST

/* A tiny random CLIPModel's own forward(return_loss=True): its projected
 * embeddings (caught with hooks, with their autograd gradients), its loss,
 * logits_per_image and logit_scale.grad; float32 only, same tolerances. */
START_TEST(contrastive_vs_clipmodel)
{
    tbt_ref *ref = tbt_ref_load("contrastive_clipmodel");
    tbt_reft img = tbt_ref_get(ref, "img"), txt = tbt_ref_get(ref, "txt");
    const size_t n = img.shape[0], d = img.shape[1];
    const float s = tbt_ref_scalar(ref, "logit_scale"), dloss = tbt_ref_scalar(ref, "dloss");
    run_out o = run_case(2, img.data, txt.data, s, dloss, n, d);
    static const char *const names[] = {"loss", "logits_per_image", "dimg", "dtxt",
                                        "dlogit_scale"};
    const float *got[] = {&o.loss, o.lpi, o.di, o.dt, &o.ds};
    char blk[96], lbl[160];
    snprintf(blk, sizeof blk, "CLIPModel[N=%zu,D=%zu]", n, d);
    for (size_t k = 0; k < ARRAY_LEN(names); k++) {
        tbt_reft r = tbt_ref_get(ref, names[k]);
        tbt_assert_close(tbt_label(lbl, sizeof lbl, blk, names[k]), got[k], r.data, r.n, RTOL32,
                         ATOL32 * tbt_max_abs_f(r.data, r.n));
    }
    free_out(&o);
    tbt_ref_free(ref);
}
END_TEST

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    char buf[64];
    if (strcmp(name, "contrastive_clipmodel") == 0)
        return 1;
    for (int k = 0; k < (int)N_CASES; k++) {
        case_name(buf, sizeof buf, k);
        if (strcmp(buf, name) == 0)
            return 1;
    }
    return 0;
}

START_TEST(contrastive_all_cases_tested)
{
    ck_assert_uint_eq(tbt_check_manifest("contrastive_cases.txt", "test_contrastive.c",
                                         case_is_tested, NULL),
                      N_CASES + 1);
}
END_TEST

/* ---- finite differences --------------------------------------------------------------------- */

typedef struct fd_prob {
    tb_ctx ctx;
    float *img, *txt, s;
    size_t n, d;
} fd_prob;

static double fd_loss(void *user)
{
    fd_prob *f = user;
    float g = 0.0f, loss;
    tb_param p = scale_param(&f->s, &g);
    tb_tensor it = tb_tensor_2d(f->img, f->n, f->d), tt = tb_tensor_2d(f->txt, f->n, f->d);
    CHECK_OK(f->ctx, tb_contrastive_forward(&f->ctx, &it, &tt, &p, &loss, NULL, NULL, 0));
    return loss;
}

START_TEST(contrastive_finite_differences)
{
    static const size_t shapes[][2] = {{3, 3}, {17, 17}, {3, 33}, {17, 2}};
    for (size_t k = 0; k < ARRAY_LEN(shapes); k++) {
        fd_prob f;
        tbt_ctx_init(&f.ctx, 2);
        f.n = shapes[k][0], f.d = shapes[k][1];
        const size_t nd = f.n * f.d;
        f.img = tbt_alloc(nd * sizeof(float));
        f.txt = tbt_alloc(nd * sizeof(float));
        tbt_fill_uniform(f.img, nd, -1, 1, 10 + k);
        tbt_fill_uniform(f.txt, nd, -1, 1, 20 + k);
        /* Rows of norm 0.5 .. 1.5: a short row makes x / ||x|| too curved
         * for a step of 1e-3. */
        for (size_t r = 0; r < 2 * f.n; r++) {
            float *row = (r < f.n ? f.img : f.txt) + (r % f.n) * f.d;
            double ss = 0.0;
            for (size_t j = 0; j < f.d; j++)
                ss += (double)row[j] * row[j];
            const double want = 0.5 + 0.5 * (double)(r % 3);
            for (size_t j = 0; j < f.d; j++)
                row[j] = (float)(row[j] * want / sqrt(ss));
        }
        f.s = 1.5f; /* scale 4.5: a loss that is neither saturated nor flat */
        float *di = tbt_alloc(nd * sizeof(float)), *dt = tbt_alloc(nd * sizeof(float));
        float g = 0.25f; /* added to */
        tb_param p = scale_param(&f.s, &g);
        tb_tensor it = tb_tensor_2d(f.img, f.n, f.d), tt = tb_tensor_2d(f.txt, f.n, f.d);
        tb_tensor dit = tb_tensor_2d(di, f.n, f.d), dtt = tb_tensor_2d(dt, f.n, f.d);
        size_t bytes;
        CHECK_OK(f.ctx, tb_contrastive_cache_size(f.n, f.d, &bytes));
        void *cache = tbt_alloc(bytes);
        float loss;
        CHECK_OK(f.ctx, tb_contrastive_forward(&f.ctx, &it, &tt, &p, &loss, NULL, cache, bytes));
        CHECK_OK(f.ctx,
                 tb_contrastive_backward(&f.ctx, &it, &tt, &p, 1.0f, cache, bytes, &dit, &dtt));
        g -= 0.25f;
        char lbl[96];
        snprintf(lbl, sizeof lbl, "contrastive[%zux%zu].dimg", f.n, f.d);
        tbt_gradcheck(lbl, f.img, nd, di, fd_loss, &f, 1e-3f, 1e-2, 1e-3, 60);
        snprintf(lbl, sizeof lbl, "contrastive[%zux%zu].dtxt", f.n, f.d);
        tbt_gradcheck(lbl, f.txt, nd, dt, fd_loss, &f, 1e-3f, 1e-2, 1e-3, 60);
        snprintf(lbl, sizeof lbl, "contrastive[%zux%zu].dlogit_scale", f.n, f.d);
        tbt_gradcheck(lbl, &f.s, 1, &g, fd_loss, &f, 1e-3f, 1e-2, 1e-3, 1);
        free(f.img), free(f.txt), free(di), free(dt), free(cache);
    }
}
END_TEST

Suite *suite_contrastive(void)
{
    Suite *s = suite_create("contrastive");
    TCase *t0 = tcase_create("errors");
    tcase_add_test(t0, contrastive_errors);
    tcase_add_test(t0, contrastive_clamp);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("finite_differences");
    tcase_set_timeout(t1, 120);
    tcase_add_test(t1, contrastive_finite_differences);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("pytorch");
    tcase_set_timeout(t2, 120);
    tcase_add_loop_test(t2, contrastive_vs_pytorch, 0, (int)N_CASES);
    tcase_add_test(t2, contrastive_vs_clipmodel);
    tcase_add_test(t2, contrastive_all_cases_tested);
    suite_add_tcase(s, t2);
    return s;
}
