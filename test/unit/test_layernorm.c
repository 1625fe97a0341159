/*
 * tb_layernorm_*: finite differences, numerical robustness against
 * double-precision references, error paths and the PyTorch oracle
 * (torch.nn.LayerNorm). The tests that run the three normalization blocks
 * together (robustness of LayerNorm and RMSNorm, in place / accumulation /
 * frozen parameters, parameter enumeration, bitwise determinism across
 * thread counts) live here, with the first block they test
 * (docs/adding_a_block.md, "Test layout").
 * Finite differences, double-precision references and the PyTorch oracle
 * (test/oracle/gen_layernorm.py) share the helpers and tolerances of the
 * normalization section of testutil.h, where they are justified.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

START_TEST(layernorm_gradients)
{
    for (size_t a = 0; a < 3; a++)
        for (size_t b = 0; b < 4; b++)
            tbt_check_norm_grad(TBT_K_LN, TBT_GRAD_ROWS[a], TBT_GRAD_COLS[b], TB_NORM_SCALE | TB_NORM_SHIFT,
                            1e-5f, TB_MODE_TRAINING, NULL, "");
    tbt_check_norm_grad(TBT_K_LN, 3, 17, TB_NORM_SCALE, 1e-5f, TB_MODE_TRAINING, NULL, ",nobias");
    tbt_check_norm_grad(TBT_K_LN, 17, 3, 0, 1e-3f, TB_MODE_TRAINING, NULL, ",noaffine");
    tbt_check_norm_grad(TBT_K_LN, 2, 33, TB_NORM_SHIFT, 1e-5f, TB_MODE_TRAINING, NULL, ",shiftonly");
}
END_TEST

START_TEST(large_offset_vs_double)
{
    float *x = tbt_offset_rows(5, 64, 11);
    tbt_check_rownorm_vs_double(1, 5, 64, x, 1e-5f, "mean1e4,std1e-2");
    tbt_check_rownorm_vs_double(0, 5, 64, x, 1e-6f, "mean1e4,std1e-2");
    free(x);
    x = tbt_offset_rows(3, 768, 12);
    tbt_check_rownorm_vs_double(1, 3, 768, x, 1e-5f, "mean1e4,std1e-2");
    free(x);
}
END_TEST

START_TEST(long_rows_vs_double)
{
    enum { R = 3, C = 8192 };
    float *x = tbt_alloc(R * C * sizeof(float));
    tbt_fill_uniform(x, R * C, -2, 2, 21);
    for (size_t j = 0; j < C; j++) /* offsets 0, 3, -50 (mean/std ~ 40) */
        x[C + j] += 3.0f, x[2 * C + j] -= 50.0f;
    tbt_check_rownorm_vs_double(1, R, C, x, 1e-5f, "long");
    tbt_check_rownorm_vs_double(0, R, C, x, 1e-6f, "long");
    free(x);
}
END_TEST

/* Constant rows: x - mean = 0 exactly, so y is the bias exactly and the
 * gradient rstd * (g - mean(g)) is finite (rstd = 1/sqrt(eps)). */
START_TEST(constant_rows)
{
    static const size_t cols[2] = {33, 8192};
    static const float values[4] = {0.0f, 2.5f, -1234.5678f, 1e6f};
    for (int k = 0; k < 2; k++) {
        const size_t c = cols[k], rows = 4, n = rows * c;
        float *x = tbt_alloc(n * sizeof(float));
        for (size_t r = 0; r < rows; r++)
            for (size_t j = 0; j < c; j++)
                x[r * c + j] = values[r];
        tbt_check_rownorm_vs_double(1, rows, c, x, 1e-5f, "constant");
        /* Exactness: y == bias (affine) and y == 0 (no affine). */
        tb_ctx ctx;
        tbt_ctx_init(&ctx, 2);
        float *y = tbt_alloc(n * sizeof(float));
        tb_tensor xt = tb_tensor_2d(x, rows, c), yt = tb_tensor_2d(y, rows, c);
        for (unsigned flags = 0; flags <= (TB_NORM_SCALE | TB_NORM_SHIFT); flags++) {
            tb_layernorm ln;
            CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, c, 1e-5f, flags));
            if (flags & TB_NORM_SCALE)
                tbt_fill_uniform(ln.weight.value, c, -2, 2, 5);
            if (flags & TB_NORM_SHIFT)
                tbt_fill_uniform(ln.bias.value, c, -2, 2, 6);
            CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, NULL, 0));
            for (size_t i = 0; i < n; i++) {
                const float want = (flags & TB_NORM_SHIFT) ? ln.bias.value[i % c] : 0.0f;
                ck_assert_msg(y[i] == want, "layernorm constant row, flags %u: y[%zu] = %.9g, "
                              "expected %.9g exactly", flags, i, (double)y[i], (double)want);
            }
            tb_layernorm_free(&ln);
        }
        /* RMSNorm: a zero row gives exactly 0 and a finite gradient. */
        tb_rmsnorm rn;
        CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, c, 1e-6f, TB_NORM_SCALE));
        CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, NULL, 0));
        for (size_t j = 0; j < c; j++)
            ck_assert_msg(y[j] == 0.0f, "rmsnorm zero row: y[%zu] = %g", j, (double)y[j]);
        tb_rmsnorm_free(&rn);
        tbt_check_rownorm_vs_double(0, rows, c, x, 1e-6f, "constant");
        free(y);
        free(x);
    }
}
END_TEST

/* A NaN or infinity makes its LayerNorm row NaN and leaves the others alone. */
START_TEST(layernorm_nonfinite_rows)
{
    enum { R = 4, C = 17 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
    float x[R * C], y[R * C], y0[R * C];
    tbt_fill_spread(x, R, C, 1, 4);
    tb_tensor xt = tb_tensor_2d(x, R, C), yt = tb_tensor_2d(y, R, C), y0t = tb_tensor_2d(y0, R, C);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &y0t, NULL, 0));
    x[1 * C + 5] = NAN;
    x[2 * C + 0] = INFINITY;
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, NULL, 0));
    for (size_t j = 0; j < C; j++) {
        ck_assert_msg(isnan(y[C + j]) && isnan(y[2 * C + j]), "column %zu of the NaN/inf rows "
                      "is %g / %g, expected NaN", j, (double)y[C + j], (double)y[2 * C + j]);
        ck_assert(memcmp(&y[j], &y0[j], sizeof(float)) == 0);
        ck_assert(memcmp(&y[3 * C + j], &y0[3 * C + j], sizeof(float)) == 0);
    }
    tb_layernorm_free(&ln);
}
END_TEST

START_TEST(layernorm_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_layernorm ln;
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;
    /* init */
    ck_assert_int_eq(tb_layernorm_init(NULL, &ln, 4, 1e-5f, aff), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, NULL, 4, 1e-5f, aff), TB_ERR_NULL_ARG);
    const float bad_eps[] = {0.0f, -0.0f, -1e-5f, NAN, INFINITY, -INFINITY};
    for (size_t k = 0; k < sizeof bad_eps / sizeof bad_eps[0]; k++) {
        memset(&ln, 0x5A, sizeof ln);
        ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 4, bad_eps[k], aff), TB_ERR_INVALID_ARG);
        ck_assert_msg(ln.storage == NULL && ln.weight.value == NULL && ln.bias.value == NULL,
                      "layernorm not left empty after a failed init");
        tb_layernorm_free(&ln);
    }
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 0, 1e-5f, aff), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 4, 1e-5f, TB_NORM_GLOBAL_STATS),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 4, 1e-5f, 0x80u), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, SIZE_MAX / 2, 1e-5f, aff), TB_ERR_OVERFLOW);
    tb_layernorm_free(NULL);
    /* cache size */
    size_t bytes;
    ck_assert_int_eq(tb_layernorm_cache_size(3, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_cache_size(SIZE_MAX / 2, &bytes), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_layernorm_cache_size(3, &bytes), TB_OK);
    size_t bytes2;
    ck_assert_int_eq(tb_layernorm_cache_size(2, &bytes2), TB_OK);
    ck_assert_uint_le(bytes2, bytes);

    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, 4, 1e-5f, aff));
    tbt_fill_uniform(ln.weight.value, 4, 0.5f, 1.5f, 1);
    float x[12], y[12], dy[12], dx[12];
    tbt_fill_uniform(x, 12, -1, 1, 2);
    tbt_fill_uniform(dy, 12, -1, 1, 3);
    unsigned char *cbuf = tbt_alloc(bytes + 16);
    float *cache = (float *)(void *)cbuf;
    tbt_fill_sentinel(y, 12);
    tb_tensor xt = tb_tensor_2d(x, 3, 4), yt = tb_tensor_2d(y, 3, 4);
    tb_tensor dyt = tb_tensor_2d(dy, 3, 4), dxt = tb_tensor_2d(dx, 3, 4);
    tb_tensor x_cols = tb_tensor_2d(x, 4, 3), y_rows = tb_tensor_2d(y, 2, 4);
    tb_tensor y_cols = tb_tensor_2d(y, 2, 6), x_zero = tb_tensor_2d(x, 0, 4);
    tb_tensor x_null = tb_tensor_2d(NULL, 3, 4), x_5d = xt;
    x_5d.ndim = 5;
    tb_tensor x_0d = xt;
    x_0d.ndim = 0;
    ck_assert_int_eq(tb_layernorm_forward(NULL, &ln, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, NULL, &xt, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, NULL, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, NULL, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_null, &yt, cache, bytes), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_cols, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &y_rows, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &y_cols, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_zero, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_5d, &yt, cache, bytes), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_0d, &yt, cache, bytes), TB_ERR_SHAPE);
    /* element count * sizeof(float) overflowing size_t (tensor.h) */
    tb_tensor x_huge = tb_tensor_3d(x, SIZE_MAX / 8, 16, 4);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &x_huge, &yt, cache, bytes), TB_ERR_OVERFLOW);
    memset(cbuf, 0x77, bytes + 16);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, bytes - 1),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &xt, &yt, cbuf + 1, bytes + 8),
                     TB_ERR_INVALID_ARG);
    for (size_t i = 0; i < bytes + 16; i++)
        ck_assert_msg(cbuf[i] == 0x77, "cache byte %zu written on error", i);
    tb_layernorm empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &empty, &xt, &yt, cache, bytes), TB_ERR_STATE);
    tbt_assert_untouched_what(y, 12, "layernorm y");
    ck_assert_str_ne(tb_ctx_error(&ctx), "");

    /* Backward: never-filled cache, cache from another row count, shapes,
     * dx overlapping x; nothing written on error. */
    tbt_fill_sentinel(dx, 12);
    memset(cbuf, 0, bytes + 16);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt),
                     TB_ERR_STATE);
    tb_tensor x2 = tb_tensor_2d(x, 2, 4), y2 = tb_tensor_2d(y, 2, 4);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &x2, &y2, cache, bytes));
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt),
                     TB_ERR_STATE);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, bytes));
    tb_tensor dy_rows = tb_tensor_2d(dy, 2, 4), dx_cols = tb_tensor_2d(dx, 4, 3);
    tb_tensor dx_on_x = tb_tensor_2d(x, 3, 4);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dy_rows, cache, bytes, &dxt),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dx_cols),
                     TB_ERR_SHAPE);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes - 1, &dxt),
                     TB_ERR_BUFFER_TOO_SMALL);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, NULL, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, NULL, cache, bytes, &dxt),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, NULL),
                     TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dx_on_x),
                     TB_ERR_INVALID_ARG);
    tbt_assert_untouched_what(dx, 12, "layernorm dx");
    for (size_t j = 0; j < 4; j++)
        ck_assert(ln.weight.grad[j] == 0.0f && ln.bias.grad[j] == 0.0f);
    float xcopy[12];
    memcpy(xcopy, x, sizeof x);
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt));
    ck_assert(memcmp(xcopy, x, sizeof x) == 0);
    free(cbuf);
    tb_layernorm_free(&ln);
    tb_layernorm_free(&ln); /* freeing twice is fine: left empty */
    ck_assert_ptr_null(ln.storage);
}
END_TEST

/* In place (y over x, dx over dy) gives the same bits; backward adds into
 * the parameter gradients and skips frozen ones. */
START_TEST(aliasing_accumulation_and_frozen)
{
    enum { N = 9, C = 13 };
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float x[N * C], dy[N * C], y[N * C], dx[N * C], xi[N * C], dyi[N * C];
    tbt_fill_spread(x, N, C, 1, 19);
    tbt_fill_uniform(dy, N * C, -1, 1, 20);
    tb_tensor xt = tb_tensor_2d(x, N, C), yt = tb_tensor_2d(y, N, C);
    tb_tensor dyt = tb_tensor_2d(dy, N, C), dxt = tb_tensor_2d(dx, N, C);
    tb_tensor xit = tb_tensor_3d(xi, 3, 3, C), dyit = tb_tensor_3d(dyi, 3, 3, C);
    size_t bytes = 0, b1;
    CHECK_OK(ctx, tb_layernorm_cache_size(N, &b1));
    bytes = b1;
    CHECK_OK(ctx, tb_rmsnorm_cache_size(N, &b1));
    bytes = b1 > bytes ? b1 : bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(C, &b1));
    bytes = b1 > bytes ? b1 : bytes;
    void *cache = tbt_alloc(bytes);
    for (int k = 0; k < 3; k++) {
        const char *name = k == 0 ? "layernorm" : k == 1 ? "rmsnorm" : "batchnorm";
        tb_layernorm ln;
        tb_rmsnorm rn;
        tb_batchnorm bn;
        tb_param *w, *b = NULL;
        if (k == 0) {
            CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
            w = &ln.weight, b = &ln.bias;
        } else if (k == 1) {
            CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, TB_NORM_SCALE));
            w = &rn.weight;
        } else {
            CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f,
                                            TB_NORM_SCALE | TB_NORM_SHIFT));
            w = &bn.weight, b = &bn.bias;
        }
        tbt_fill_away_from_zero(w->value, C, -1.5f, 1.5f, 0.5f, 21);
        if (b)
            tbt_fill_uniform(b->value, C, -0.5f, 0.5f, 22);
        /* out of place, then in place on a 3-D view of a copy */
        memcpy(xi, x, sizeof x);
        memcpy(dyi, dy, sizeof dy);
#define FWD(X, Y) (k == 0   ? tb_layernorm_forward(&ctx, &ln, (X), (Y), cache, bytes) \
                   : k == 1 ? tb_rmsnorm_forward(&ctx, &rn, (X), (Y), cache, bytes)  \
                            : tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, (X), NULL, (Y), cache, bytes))
#define BWD(X, DY, DX) (k == 0   ? tb_layernorm_backward(&ctx, &ln, (X), (DY), cache, bytes, (DX)) \
                        : k == 1 ? tb_rmsnorm_backward(&ctx, &rn, (X), (DY), cache, bytes, (DX))  \
                                 : tb_batchnorm_backward(&ctx, &bn, (X), NULL, (DY), cache, bytes, (DX)))
        CHECK_OK(ctx, FWD(&xt, &yt));
        CHECK_OK(ctx, BWD(&xt, &dyt, &dxt));
        float *g1 = tbt_alloc(C * sizeof(float)), *gb1 = tbt_alloc(C * sizeof(float));
        memcpy(g1, w->grad, C * sizeof(float));
        if (b)
            memcpy(gb1, b->grad, C * sizeof(float));
        /* second backward (same cache, same x): gradients add up */
        CHECK_OK(ctx, BWD(&xt, &dyt, &dyit));
        for (size_t j = 0; j < C; j++) {
            ck_assert_msg(w->grad[j] == g1[j] + g1[j], "%s: weight.grad does not accumulate",
                          name);
            if (b)
                ck_assert_msg(b->grad[j] == gb1[j] + gb1[j], "%s: bias.grad does not accumulate",
                              name);
        }
        ck_assert_msg(memcmp(dyi, dx, sizeof dx) == 0, "%s: dx differs between calls", name);
        /* in place: dx over dy (x intact), then y over x */
        memcpy(dyi, dy, sizeof dy);
        CHECK_OK(ctx, FWD(&xt, &yt));
        CHECK_OK(ctx, BWD(&xt, &dyit, &dyit));
        ck_assert_msg(memcmp(dyi, dx, sizeof dx) == 0, "%s: in-place backward differs", name);
        CHECK_OK(ctx, FWD(&xit, &xit));
        ck_assert_msg(memcmp(xi, y, sizeof y) == 0, "%s: in-place forward differs", name);
        /* frozen weight: no gradient; the bias still gets one */
        memset(w->grad, 0, C * sizeof(float));
        if (b)
            memset(b->grad, 0, C * sizeof(float));
        w->trainable = 0;
        CHECK_OK(ctx, FWD(&xt, &yt));
        CHECK_OK(ctx, BWD(&xt, &dyt, &dxt));
        for (size_t j = 0; j < C; j++) {
            ck_assert_msg(w->grad[j] == 0.0f, "%s: frozen weight got a gradient", name);
            if (b)
                ck_assert_msg(b->grad[j] == gb1[j], "%s: bias gradient %g, expected %g", name,
                              (double)b->grad[j], (double)gb1[j]);
        }
        ck_assert_msg(memcmp(dyi, dx, sizeof dx) == 0, "%s: dx depends on the weight's flag",
                      name);
#undef FWD
#undef BWD
        free(g1);
        free(gb1);
        if (k == 0)
            tb_layernorm_free(&ln);
        else if (k == 1)
            tb_rmsnorm_free(&rn);
        else
            tb_batchnorm_free(&bn);
    }
    free(cache);
}
END_TEST

/* ======================================================================
 * Parameter enumeration
 * ==================================================================== */

static void expect_param(const tb_param_list *list, size_t idx, const char *name, size_t c,
                         int trainable, int has_grad, float init)
{
    ck_assert_uint_gt(list->count, idx);
    const tb_named_param *e = &list->items[idx];
    ck_assert_str_eq(e->name, name);
    ck_assert_ptr_nonnull(e->param);
    ck_assert_int_eq(e->param->trainable != 0, trainable);
    ck_assert_msg((e->param->grad != NULL) == has_grad, "%s: grad is %s", name,
                  e->param->grad ? "non-NULL" : "NULL");
    ck_assert_uint_eq(e->param->ndim, 1);
    ck_assert_uint_eq(e->param->shape[0], c);
    ck_assert_uint_eq(e->param->numel, c);
    for (size_t j = 0; j < c; j++) {
        ck_assert_msg(e->param->value[j] == init, "%s[%zu] = %g, expected %g", name, j,
                      (double)e->param->value[j], (double)init);
        if (has_grad)
            ck_assert(e->param->grad[j] == 0.0f);
    }
}

START_TEST(params_enumeration)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_param_list list;
    enum { C = 6 };
    const unsigned aff = TB_NORM_SCALE | TB_NORM_SHIFT;

    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, aff));
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_layernorm_params(&ctx, &ln, "h.0.ln_1", &list));
    ck_assert_uint_eq(list.count, 2);
    expect_param(&list, 0, "h.0.ln_1.weight", C, 1, 1, 1.0f);
    expect_param(&list, 1, "h.0.ln_1.bias", C, 1, 1, 0.0f);
    ck_assert_ptr_eq(list.items[0].param, &ln.weight);
    ck_assert_int_eq(tb_layernorm_params(&ctx, &ln, "h.0.ln_1", &list), TB_ERR_DUPLICATE);
    ck_assert_int_eq(tb_layernorm_params(&ctx, &ln, "x", NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_params(NULL, &ln, "x", &list), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_layernorm_params(&ctx, NULL, "x", &list), TB_ERR_NULL_ARG);
    tb_layernorm_free(&ln);
    /* weight only; no parameters; uninitialised */
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE));
    CHECK_OK(ctx, tb_layernorm_params(&ctx, &ln, NULL, &list));
    ck_assert_uint_eq(list.count, 3);
    expect_param(&list, 2, "weight", C, 1, 1, 1.0f);
    ck_assert_ptr_null(ln.bias.value);
    tb_layernorm_free(&ln);
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, 0));
    CHECK_OK(ctx, tb_layernorm_params(&ctx, &ln, "none", &list));
    ck_assert_uint_eq(list.count, 3);
    tb_layernorm_free(&ln);
    ck_assert_int_eq(tb_layernorm_params(&ctx, &ln, "freed", &list), TB_ERR_STATE);
    tb_param_list_free(&list);

    tb_rmsnorm rn;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, TB_NORM_SCALE));
    CHECK_OK(ctx, tb_rmsnorm_params(&ctx, &rn, "h.1.rms", &list));
    ck_assert_uint_eq(list.count, 1);
    expect_param(&list, 0, "h.1.rms.weight", C, 1, 1, 1.0f);
    tb_rmsnorm_free(&rn);
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, 0));
    CHECK_OK(ctx, tb_rmsnorm_params(&ctx, &rn, "plain", &list));
    ck_assert_uint_eq(list.count, 1);
    tb_rmsnorm_free(&rn);
    ck_assert_int_eq(tb_rmsnorm_params(&ctx, &rn, "freed", &list), TB_ERR_STATE);
    tb_param_list_free(&list);

    tb_batchnorm bn;
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, aff));
    CHECK_OK(ctx, tb_batchnorm_params(&ctx, &bn, "bn", &list));
    ck_assert_uint_eq(list.count, 4);
    expect_param(&list, 0, "bn.weight", C, 1, 1, 1.0f);
    expect_param(&list, 1, "bn.bias", C, 1, 1, 0.0f);
    expect_param(&list, 2, "bn.running_mean", C, 0, 0, 0.0f);
    expect_param(&list, 3, "bn.running_var", C, 0, 0, 1.0f);
    ck_assert_ptr_eq(tb_param_list_find(&list, "bn.running_var"), &bn.running_var);
    ck_assert_uint_eq(tb_param_list_numel(&list, 1), 2 * C);
    ck_assert_uint_eq(tb_param_list_numel(&list, 0), 4 * C);
    tb_param_list_zero_grad(&list); /* skips the buffers without gradient */
    tb_batchnorm_free(&bn);
    tb_param_list_free(&list);
    /* Without affine parameters the buffers are still listed. */
    CHECK_OK(ctx, tb_param_list_init(&ctx, &list));
    CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, C, 1e-5f, 0.1f, TB_NORM_GLOBAL_STATS));
    CHECK_OK(ctx, tb_batchnorm_params(&ctx, &bn, NULL, &list));
    ck_assert_uint_eq(list.count, 2);
    expect_param(&list, 0, "running_mean", C, 0, 0, 0.0f);
    expect_param(&list, 1, "running_var", C, 0, 0, 1.0f);
    ck_assert_ptr_null(bn.weight.value);
    ck_assert_ptr_null(bn.bias.value);
    tb_batchnorm_free(&bn);
    ck_assert_int_eq(tb_batchnorm_params(&ctx, &bn, "freed", &list), TB_ERR_STATE);
    tb_param_list_free(&list);
}
END_TEST

/* ======================================================================
 * Bitwise determinism across thread counts
 * ==================================================================== */

typedef struct run_out {
    float *buf;
    size_t n;
} run_out;

static void append(run_out *r, const float *x, size_t n)
{
    r->buf = realloc(r->buf, (r->n + n) * sizeof(float));
    ck_assert_ptr_nonnull(r->buf);
    memcpy(r->buf + r->n, x, n * sizeof(float));
    r->n += n;
}

static run_out run_norms(int threads)
{
    run_out out = {NULL, 0};
    tb_ctx ctx;
    tbt_ctx_init(&ctx, threads);
    enum { R = 4096, C = 768, BN_N = 1000, BN_C = 64 };
    float *x = tbt_alloc((size_t)R * C * sizeof(float)), *y = tbt_alloc((size_t)R * C * sizeof(float));
    float *dy = tbt_alloc((size_t)R * C * sizeof(float)), *dx = tbt_alloc((size_t)R * C * sizeof(float));
    tbt_fill_uniform(x, (size_t)R * C, -2, 3, 1);
    tbt_fill_uniform(dy, (size_t)R * C, -1, 1, 2);
    tb_tensor xt = tb_tensor_3d(x, 8, R / 8, C), yt = tb_tensor_3d(y, 8, R / 8, C);
    tb_tensor dyt = tb_tensor_3d(dy, 8, R / 8, C), dxt = tb_tensor_3d(dx, 8, R / 8, C);
    size_t bytes, b2;
    CHECK_OK(ctx, tb_layernorm_cache_size(R, &bytes));
    CHECK_OK(ctx, tb_rmsnorm_cache_size(R, &b2));
    bytes = b2 > bytes ? b2 : bytes;
    CHECK_OK(ctx, tb_batchnorm_cache_size(BN_C, &b2));
    bytes = b2 > bytes ? b2 : bytes;
    void *cache = tbt_alloc(bytes);

    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
    tbt_fill_uniform(ln.weight.value, C, -1.5f, 1.5f, 3);
    tbt_fill_uniform(ln.bias.value, C, -0.5f, 0.5f, 4);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, bytes));
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, bytes, &dxt));
    append(&out, y, (size_t)R * C);
    append(&out, dx, (size_t)R * C);
    append(&out, ln.weight.grad, C);
    append(&out, ln.bias.grad, C);
    tb_layernorm_free(&ln);

    tb_rmsnorm rn;
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-6f, TB_NORM_SCALE));
    tbt_fill_uniform(rn.weight.value, C, -1.5f, 1.5f, 5);
    CHECK_OK(ctx, tb_rmsnorm_forward(&ctx, &rn, &xt, &yt, cache, bytes));
    CHECK_OK(ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &dyt, cache, bytes, &dxt));
    append(&out, y, (size_t)R * C);
    append(&out, dx, (size_t)R * C);
    append(&out, rn.weight.grad, C);
    tb_rmsnorm_free(&rn);

    /* BatchNorm: 1000 positions x 64 channels, without and with a mask. */
    tb_tensor bx = tb_tensor_2d(x, BN_N, BN_C), by = tb_tensor_2d(y, BN_N, BN_C);
    tb_tensor bdy = tb_tensor_2d(dy, BN_N, BN_C), bdx = tb_tensor_2d(dx, BN_N, BN_C);
    uint8_t *valid = tbt_alloc(BN_N);
    for (size_t r = 0; r < BN_N; r++)
        valid[r] = (uint8_t)((r * 7) % 11 != 3);
    for (int m = 0; m < 2; m++) {
        tb_batchnorm bn;
        CHECK_OK(ctx, tb_batchnorm_init(&ctx, &bn, BN_C, 1e-5f, 0.1f,
                                        TB_NORM_SCALE | TB_NORM_SHIFT));
        tbt_fill_uniform(bn.weight.value, BN_C, -1.5f, 1.5f, 6);
        tbt_fill_uniform(bn.bias.value, BN_C, -0.5f, 0.5f, 7);
        const uint8_t *v = m ? valid : NULL;
        CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &bx, v, &by, cache, bytes));
        CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &bx, v, &bdy, cache, bytes, &bdx));
        append(&out, y, (size_t)BN_N * BN_C);
        append(&out, dx, (size_t)BN_N * BN_C);
        append(&out, bn.weight.grad, BN_C);
        append(&out, bn.bias.grad, BN_C);
        append(&out, bn.running_mean.value, BN_C);
        append(&out, bn.running_var.value, BN_C);
        CHECK_OK(ctx, tb_batchnorm_forward(&ctx, &bn, TB_MODE_INFERENCE, &bx, v, &by, cache, bytes));
        CHECK_OK(ctx, tb_batchnorm_backward(&ctx, &bn, &bx, v, &bdy, cache, bytes, &bdx));
        append(&out, y, (size_t)BN_N * BN_C);
        append(&out, dx, (size_t)BN_N * BN_C);
        append(&out, bn.weight.grad, BN_C);
        tb_batchnorm_free(&bn);
    }
    free(valid);
    free(cache), free(x), free(y), free(dy), free(dx);
    return out;
}

START_TEST(bitwise_identical_for_1_2_3_threads)
{
    run_out ref = run_norms(1);
    for (int t = 2; t <= 3; t++) {
        run_out r = run_norms(t);
        ck_assert_uint_eq(r.n, ref.n);
        size_t first = r.n;
        for (size_t i = 0; i < r.n && first == r.n; i++)
            if (memcmp(&r.buf[i], &ref.buf[i], sizeof(float)) != 0)
                first = i;
        ck_assert_msg(first == r.n, "%d threads differ from 1 thread at element %zu of %zu", t,
                      first, r.n);
        free(r.buf);
    }
    free(ref.buf);
}
END_TEST

/* ---- LayerNorm ------------------------------------------------------------ */

static const char *const layernorm_cases[] = {
    "layernorm_1x1_affine_eps1e-5",    "layernorm_1x1_affine_eps1e-3",
    "layernorm_1x1_nobias_eps1e-5",    "layernorm_1x1_plain_eps1e-3",
    "layernorm_3x17_affine_eps1e-5",   "layernorm_3x17_affine_eps1e-3",
    "layernorm_3x17_nobias_eps1e-5",   "layernorm_3x17_plain_eps1e-3",
    "layernorm_17x33_affine_eps1e-5",  "layernorm_17x33_affine_eps1e-3",
    "layernorm_17x33_nobias_eps1e-5",  "layernorm_17x33_plain_eps1e-3",
    "layernorm_2x3x50_affine_eps1e-5", "layernorm_2x3x50_affine_eps1e-3",
    "layernorm_2x3x50_nobias_eps1e-5", "layernorm_2x3x50_plain_eps1e-3",
    "layernorm_4x768_affine_eps1e-5",  "layernorm_4x768_affine_eps1e-3",
    "layernorm_4x768_nobias_eps1e-5",  "layernorm_4x768_plain_eps1e-3",
    "layernorm_2x8192_affine_eps1e-5", "layernorm_2x8192_affine_eps1e-3",
    "layernorm_2x8192_nobias_eps1e-5", "layernorm_2x8192_plain_eps1e-3",
    "layernorm_offset1e4_7x96",        "layernorm_constrows_6x40",
    "layernorm_constrows_6x40_plain",
};

START_TEST(test_norm_oracle_layernorm)
{
    const char *name = layernorm_cases[_i];
    tbt_ref *ref = tbt_ref_load(name);
    const float eps = tbt_ref_scalar(ref, "eps");
    const int affine = tbt_ref_i32_scalar(ref, "affine");
    const int has_bias = tbt_ref_i32_scalar(ref, "has_bias");
    const int f32_ok = tbt_ref_i32_scalar(ref, "f32_accurate");
    tbt_reft x = tbt_ref_get(ref, "x"), dy = tbt_ref_get(ref, "dy"), y_ref = tbt_ref_get(ref, "y");
    const size_t c = x.shape[x.ndim - 1], rows = x.n / c;
    ck_assert_uint_eq(dy.n, x.n);
    ck_assert_uint_eq(y_ref.n, x.n);
    const unsigned flags = (affine ? TB_NORM_SCALE : 0u) | (has_bias ? TB_NORM_SHIFT : 0u);

    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, c, eps, flags));
    const float *w = NULL, *b = NULL;
    if (affine) {
        tbt_reft wr = tbt_ref_get(ref, "weight");
        ck_assert_uint_eq(wr.n, c);
        ck_assert_ptr_nonnull(ln.weight.value);
        memcpy(ln.weight.value, wr.data, c * sizeof(float));
        memset(ln.weight.grad, 0, c * sizeof(float));
        w = wr.data;
    }
    if (has_bias) {
        tbt_reft br = tbt_ref_get(ref, "bias");
        ck_assert_uint_eq(br.n, c);
        ck_assert_ptr_nonnull(ln.bias.value);
        memcpy(ln.bias.value, br.data, c * sizeof(float));
        memset(ln.bias.grad, 0, c * sizeof(float));
        b = br.data;
    }
    size_t cache_bytes;
    CHECK_OK(ctx, tb_layernorm_cache_size(rows, &cache_bytes));
    void *cache = tbt_alloc(cache_bytes);
    float *xb = tbt_ref_dup(&x), *dyb = tbt_ref_dup(&dy);
    float *yb = tbt_nan_buffer(x.n), *dxb = tbt_nan_buffer(x.n);
    tb_tensor xt = tbt_view_like(xb, &x), dyt = tbt_view_like(dyb, &dy);
    tb_tensor yt = tbt_view_like(yb, &x), dxt = tbt_view_like(dxb, &x);
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, cache_bytes));
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &dyt, cache, cache_bytes, &dxt));

    const tbt_norm_units u = tbt_norm_row_units(x.data, dy.data, w, rows, c, eps, 1);
    const double u_y = tbt_max_abs_f(tbt_ref_get(ref, "y_f64").data, x.n);
    char blk[128], sx[32];
    tbt_shape_str(sx, sizeof sx, x.ndim, x.shape);
    snprintf(blk, sizeof blk, "layernorm[%s%s%s,eps=%.0e]", sx,
             strstr(name, "offset") ? ",mean1e4"
             : strstr(name, "constrows") ? ",constrows" : "",
             affine ? (has_bias ? "" : ",nobias") : ",noaffine", (double)eps);
    /* Constant rows (every row when C = 1): x - mean = 0 exactly, so
     * y = 0 * w + b is the bias (0 without) exactly. */
    size_t n_const = 0, bad = 0, first_bad = 0;
    for (size_t r = 0; r < rows; r++) {
        int constant = 1;
        for (size_t j = 1; j < c; j++)
            constant &= x.data[r * c + j] == x.data[r * c];
        if (!constant)
            continue;
        n_const++;
        for (size_t j = 0; j < c; j++)
            if (yb[r * c + j] != (b ? b[j] : 0.0f) && bad++ == 0)
                first_bad = r * c + j;
    }
    if (n_const) {
        char lbl[192];
        snprintf(lbl, sizeof lbl, "%s.y_const_rows", blk);
        printf("  compare %-40s rows=%-4zu exact: y == bias%s\n", lbl, n_const,
               bad ? "  MISMATCH" : "");
        fflush(stdout);
        ck_assert_msg(bad == 0, "%s: %zu elements of constant rows differ from the bias; "
                      "y[%zu] = %.9g, bias %.9g", blk, bad, first_bad, (double)yb[first_bad],
                      (double)(b ? b[first_bad % c] : 0.0f));
    }
    if (c == 1) {
        /* dx = rstd * (g - mean(g)) = 0 and dweight = sum dy * 0 = 0. */
        tbt_norm_check_zero_at_scale(ref, blk, "dx", dxb, x.n, u.dx);
        if (affine)
            tbt_norm_check_zero_at_scale(ref, blk, "dweight", ln.weight.grad, c, u.db);
    } else {
        tbt_norm_check_vs(ref, blk, "y", yb, x.n, u_y, f32_ok);
        tbt_norm_check_vs(ref, blk, "dx", dxb, x.n, u.dx, f32_ok);
        if (affine)
            tbt_norm_check_vs(ref, blk, "dweight", ln.weight.grad, c, u.dw, f32_ok);
    }
    if (has_bias)
        tbt_norm_check_vs(ref, blk, "dbias", ln.bias.grad, c, u.db, f32_ok);
    free(cache);
    free(xb);
    free(dyb);
    free(yb);
    free(dxb);
    tb_layernorm_free(&ln);
    tbt_ref_free(ref);
}
END_TEST

/* ---- Coverage: every case gen_layernorm.py wrote is tested here ---------------- */

static int case_is_tested(const char *name, const void *user)
{
    (void)user;
    for (size_t k = 0; k < ARRAY_LEN(layernorm_cases); k++)
        if (strcmp(layernorm_cases[k], name) == 0)
            return 1;
    return 0;
}

START_TEST(test_layernorm_all_cases_tested)
{
    const size_t n =
        tbt_check_manifest("layernorm_cases.txt", "test_layernorm.c", case_is_tested, NULL);
    ck_assert_uint_eq(n, ARRAY_LEN(layernorm_cases));
}
END_TEST

Suite *suite_layernorm(void)
{
    Suite *s = suite_create("layernorm");
    TCase *t0 = tcase_create("finite_differences");
    tcase_set_timeout(t0, 120);
    tcase_add_test(t0, layernorm_gradients);
    suite_add_tcase(s, t0);
    TCase *t1 = tcase_create("robustness");
    tcase_set_timeout(t1, 60);
    tcase_add_test(t1, large_offset_vs_double);
    tcase_add_test(t1, long_rows_vs_double);
    tcase_add_test(t1, constant_rows);
    tcase_add_test(t1, layernorm_nonfinite_rows);
    suite_add_tcase(s, t1);
    TCase *t2 = tcase_create("errors");
    tcase_add_test(t2, layernorm_errors);
    suite_add_tcase(s, t2);
    TCase *t3 = tcase_create("semantics");
    tcase_set_timeout(t3, 60);
    tcase_add_test(t3, aliasing_accumulation_and_frozen);
    tcase_add_test(t3, params_enumeration);
    suite_add_tcase(s, t3);
    TCase *t4 = tcase_create("threads");
    tcase_set_timeout(t4, 180);
    tcase_add_test(t4, bitwise_identical_for_1_2_3_threads);
    suite_add_tcase(s, t4);
    TCase *t5 = tcase_create("pytorch");
    tcase_set_timeout(t5, 60);
    tcase_add_loop_test(t5, test_norm_oracle_layernorm, 0, (int)ARRAY_LEN(layernorm_cases));
    tcase_add_test(t5, test_layernorm_all_cases_tested);
    suite_add_tcase(s, t5);
    return s;
}
