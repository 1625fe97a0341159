/* Bad input and documented edge cases of every block: each returns its
 * documented status, records a detail, and leaves outputs untouched. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "suites.h"
#include "testutil.h"

#define SENTINEL 12345.0f

static void fill_sentinel(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = SENTINEL;
}

static void assert_untouched(const float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(x[i] == SENTINEL, "output element %zu was written on error", i);
}

START_TEST(linear_rejects_bad_input)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 3);
    tb_linear lin;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 0, 4, 1, &rng), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 0, 1, &rng), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 4, 1, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init(NULL, &lin, 4, 4, 1, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, NULL, 4, 4, 1, &rng), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 4, 3, 1, &rng), TB_OK);

    float xd[8], yd[6], dyd[6], dxd[8];
    tbt_fill_uniform(xd, 8, -1, 1, 1);
    tbt_fill_uniform(dyd, 6, -1, 1, 2);
    fill_sentinel(yd, 6);
    tb_tensor x = tb_tensor_2d(xd, 2, 4), y = tb_tensor_2d(yd, 2, 3);
    tb_tensor dy = tb_tensor_2d(dyd, 2, 3), dx = tb_tensor_2d(dxd, 2, 4);

    tb_tensor xbad = tb_tensor_2d(xd, 4, 2); /* wrong last dim */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &xbad, &y), TB_ERR_SHAPE);
    tb_tensor ybad = tb_tensor_2d(yd, 1, 3); /* wrong rows */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &ybad), TB_ERR_SHAPE);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "rows"));
    tb_tensor ybad2 = tb_tensor_2d(yd, 2, 2); /* wrong cols */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &ybad2), TB_ERR_SHAPE);
    tb_tensor zero = tb_tensor_2d(xd, 0, 4);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &zero, &y), TB_ERR_SHAPE);
    tb_tensor nodata = tb_tensor_2d(NULL, 2, 4);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &nodata, &y), TB_ERR_NULL_ARG);
    tb_tensor toomany = x;
    toomany.ndim = 5;
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &toomany, &y), TB_ERR_SHAPE);
    tb_tensor overflow = tb_tensor_3d(xd, SIZE_MAX / 8, 16, 4);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &overflow, &y), TB_ERR_OVERFLOW);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, NULL, &y), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, NULL), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_forward(&ctx, NULL, &x, &y), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_linear_forward(NULL, &lin, &x, &y), TB_ERR_NULL_ARG);
    tb_tensor alias = tb_tensor_2d(xd, 2, 3); /* y overlapping x */
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &alias), TB_ERR_INVALID_ARG);
    assert_untouched(yd, 6);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &y), TB_OK);

    /* Backward: nothing written (dx or gradients) on a shape error. */
    fill_sentinel(dxd, 8);
    float gw0 = lin.weight.grad[0];
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &ybad, &dx), TB_ERR_SHAPE);
    tb_tensor dxbad = tb_tensor_2d(dxd, 2, 3);
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, &dxbad), TB_ERR_SHAPE);
    assert_untouched(dxd, 8);
    ck_assert(lin.weight.grad[0] == gw0);
    tb_tensor dx_on_x = tb_tensor_2d(xd, 2, 4); /* x is still needed for dW */
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, &dx_on_x), TB_ERR_INVALID_ARG);
    ck_assert(lin.weight.grad[0] == gw0);
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, NULL), TB_OK); /* dx optional */
    ck_assert(lin.weight.grad[0] != gw0);

    /* A frozen weight gets no gradient; the bias still does. */
    memset(lin.weight.grad, 0, lin.weight.numel * sizeof(float));
    memset(lin.bias.grad, 0, lin.bias.numel * sizeof(float));
    lin.weight.trainable = 0;
    ck_assert_int_eq(tb_linear_backward(&ctx, &lin, &x, &dy, &dx), TB_OK);
    for (size_t i = 0; i < lin.weight.numel; i++)
        ck_assert(lin.weight.grad[i] == 0.0f);
    ck_assert(lin.bias.grad[0] == dyd[0] + dyd[3]);

    tb_linear empty;
    memset(&empty, 0, sizeof empty);
    ck_assert_int_eq(tb_linear_forward(&ctx, &empty, &x, &y), TB_ERR_STATE);
    tb_linear_free(&lin);
}
END_TEST

START_TEST(linear_3d_input_and_no_bias)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 5);
    tb_linear lin;
    ck_assert_int_eq(tb_linear_init(&ctx, &lin, 3, 2, 0, &rng), TB_OK);
    ck_assert_ptr_null(lin.bias.value);
    float xd[2 * 3 * 3], yd[2 * 3 * 2];
    tbt_fill_uniform(xd, 18, -1, 1, 11);
    tb_tensor x = tb_tensor_3d(xd, 2, 3, 3), y = tb_tensor_3d(yd, 2, 3, 2);
    ck_assert_int_eq(tb_linear_forward(&ctx, &lin, &x, &y), TB_OK);
    for (size_t r = 0; r < 6; r++)
        for (size_t o = 0; o < 2; o++) {
            double want = 0;
            for (size_t i = 0; i < 3; i++)
                want += (double)xd[r * 3 + i] * lin.weight.value[o * 3 + i];
            ck_assert(fabs(yd[r * 2 + o] - want) <= 1e-6 + 1e-6 * fabs(want));
        }
    tb_linear_free(&lin);
}
END_TEST

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
    fill_sentinel(out, 12);
    tb_tensor o = tb_tensor_2d(out, 3, 4);
    int32_t neg[3] = {0, -1, 2}, big[3] = {0, 1, 5}, ok[3] = {4, 0, 4};
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, neg, 3, &o), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "ids[1]"));
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, big, 3, &o), TB_ERR_INVALID_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "ids[2] = 5"));
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, ok, 2, &o), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, ok, 0, &o), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_embedding_forward(&ctx, &emb, NULL, 3, &o), TB_ERR_NULL_ARG);
    assert_untouched(out, 12);
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

START_TEST(softmax_edge_cases)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float x[4 * 3] = {-INFINITY, -INFINITY, -INFINITY, /* all masked -> zeros */
                      1.0f, -INFINITY, 1.0f,            /* partly masked */
                      1e30f, 1e30f, -1e30f,             /* huge values */
                      NAN, 0.0f, 1.0f};                 /* NaN poisons its row */
    float y[12];
    tb_tensor xt = tb_tensor_2d(x, 4, 3), yt = tb_tensor_2d(y, 4, 3);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &xt, &yt), TB_OK);
    for (int j = 0; j < 3; j++)
        ck_assert(y[j] == 0.0f);
    ck_assert(y[3] == 0.5f && y[4] == 0.0f && y[5] == 0.5f);
    ck_assert(y[6] == 0.5f && y[7] == 0.5f && y[8] == 0.0f);
    ck_assert(isnan(y[9]) && isnan(y[10]) && isnan(y[11]));
    /* Rows sum to one at any length. */
    enum { C = 1031 };
    float *a = tbt_alloc(C * sizeof(float)), *b = tbt_alloc(C * sizeof(float));
    tbt_fill_uniform(a, C, -30, 30, 4);
    tb_tensor at = tb_tensor_1d(a, C), bt = tb_tensor_1d(b, C);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &at, &bt), TB_OK);
    double s = 0;
    for (int j = 0; j < C; j++)
        s += b[j];
    ck_assert(fabs(s - 1.0) < 1e-5);
    tb_tensor bad = tb_tensor_2d(y, 3, 4);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &xt, &bad), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_softmax_backward(&ctx, &xt, &bad, &yt), TB_ERR_SHAPE);
    /* In-place works. */
    ck_assert_int_eq(tb_softmax_forward(&ctx, &at, &at), TB_OK);
    ck_assert(memcmp(a, b, C * sizeof(float)) == 0);
    free(a);
    free(b);
}
END_TEST

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
    float loss = SENTINEL;
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
    ck_assert(loss == SENTINEL);
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
    fill_sentinel(d, 12);
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

START_TEST(dropout_errors_and_modes)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    tb_rng rng;
    tb_rng_init(&rng, 1);
    float x[10], y[10];
    tbt_fill_uniform(x, 10, -1, 1, 2);
    tb_tensor xt = tb_tensor_1d(x, 10), yt = tb_tensor_1d(y, 10), y9 = tb_tensor_1d(y, 9);
    tb_dropout_cache c;
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, -0.1f, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 1.5f, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, NAN, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    memset(&c, 0x5A, sizeof c);
    tb_dropout_cache before = c;
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, NULL, &xt, &yt, &c),
                     TB_ERR_NULL_ARG);
    ck_assert(memcmp(&c, &before, sizeof c) == 0); /* untouched on error */
    ck_assert_int_eq(tb_dropout_forward(&ctx, (tb_mode)3, 0.5f, &rng, &xt, &yt, &c),
                     TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, &rng, &xt, &y9, &c),
                     TB_ERR_SHAPE);
    ck_assert_uint_eq(rng.counter, 0); /* failed calls do not consume the stream */
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, &rng, &xt, &yt, &c), TB_OK);
    ck_assert_uint_eq(rng.counter, 10);
    ck_assert_int_eq(tb_dropout_backward(&ctx, &y9, &c, &y9), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_dropout_backward(&ctx, &yt, NULL, &yt), TB_ERR_NULL_ARG);
    ck_assert_ptr_nonnull(strstr(tb_ctx_error(&ctx), "tb_dropout_forward"));
    /* No cache (no backward follows): the same mask, the stream advanced. */
    float y2[10];
    tb_tensor y2t = tb_tensor_1d(y2, 10);
    rng.counter = 0;
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_TRAINING, 0.5f, &rng, &xt, &y2t, NULL),
                     TB_OK);
    ck_assert_uint_eq(rng.counter, 10);
    ck_assert(memcmp(y, y2, sizeof y) == 0);
    /* Inference needs no stream and is the identity. */
    ck_assert_int_eq(tb_dropout_forward(&ctx, TB_MODE_INFERENCE, 0.5f, NULL, &xt, &yt, &c), TB_OK);
    ck_assert(memcmp(x, y, sizeof x) == 0);
}
END_TEST

START_TEST(elementwise_errors)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float a[6], b[6], c[5];
    tbt_fill_uniform(a, 6, -1, 1, 2);
    tbt_fill_uniform(b, 6, -1, 1, 3);
    tb_tensor at = tb_tensor_2d(a, 2, 3), bt = tb_tensor_1d(b, 6), ct = tb_tensor_1d(c, 5);
    ck_assert_int_eq(tb_gelu_forward(&ctx, (tb_gelu_approx)9, &at, &bt), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_gelu_forward(&ctx, TB_GELU_EXACT, &at, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_gelu_backward(&ctx, TB_GELU_TANH, &at, &bt, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_relu_forward(&ctx, &at, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_relu_backward(&ctx, &at, &ct, &bt), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_residual_forward(&ctx, &at, &ct, &bt), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_residual_backward(&ctx, &at, &ct), TB_ERR_SHAPE);
    ck_assert_int_eq(tb_gelu_forward(NULL, TB_GELU_EXACT, &at, &bt), TB_ERR_NULL_ARG);
    ck_assert_int_eq(tb_relu_forward(&ctx, NULL, &bt), TB_ERR_NULL_ARG);
    /* Views of the same element count but different shapes are accepted. */
    ck_assert_int_eq(tb_relu_forward(&ctx, &at, &bt), TB_OK);
    /* ReLU: gradient 0 at exactly 0 (as PyTorch); NaN propagates forward. */
    float z[3] = {0.0f, NAN, -0.0f}, g[3] = {1, 1, 1}, o[3];
    tb_tensor zt = tb_tensor_1d(z, 3), gt = tb_tensor_1d(g, 3), ot = tb_tensor_1d(o, 3);
    ck_assert_int_eq(tb_relu_backward(&ctx, &zt, &gt, &ot), TB_OK);
    ck_assert(o[0] == 0.0f && o[2] == 0.0f);
    ck_assert_int_eq(tb_relu_forward(&ctx, &zt, &ot), TB_OK);
    ck_assert(isnan(o[1]));
    /* Residual: forward adds, backward accumulates. */
    float x1[3] = {1, 2, 3}, f1[3] = {10, 20, 30}, y1[3], dx1[3] = {1, 1, 1};
    tb_tensor x1t = tb_tensor_1d(x1, 3), f1t = tb_tensor_1d(f1, 3), y1t = tb_tensor_1d(y1, 3),
              dx1t = tb_tensor_1d(dx1, 3);
    ck_assert_int_eq(tb_residual_forward(&ctx, &x1t, &f1t, &y1t), TB_OK);
    ck_assert(y1[0] == 11 && y1[1] == 22 && y1[2] == 33);
    ck_assert_int_eq(tb_residual_backward(&ctx, &x1t, &dx1t), TB_OK);
    ck_assert(dx1[0] == 2 && dx1[1] == 3 && dx1[2] == 4);
}
END_TEST

START_TEST(partial_overlap_is_rejected)
{
    /* In place (same pointer) is allowed; an output shifted into its input
     * would be read after being overwritten, so it is refused. */
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 2);
    float buf[40];
    tbt_fill_uniform(buf, 40, -1, 1, 9);
    tb_tensor a = tb_tensor_2d(buf, 4, 8), shifted = tb_tensor_2d(buf + 3, 4, 8);
    ck_assert_int_eq(tb_gelu_forward(&ctx, TB_GELU_TANH, &a, &shifted), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_relu_forward(&ctx, &a, &shifted), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_softmax_forward(&ctx, &a, &shifted), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_residual_forward(&ctx, &a, &a, &shifted), TB_ERR_INVALID_ARG);
    tb_layernorm ln;
    ck_assert_int_eq(tb_layernorm_init(&ctx, &ln, 8, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT), TB_OK);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &a, &shifted, NULL, 0), TB_ERR_INVALID_ARG);
    ck_assert_int_eq(tb_layernorm_forward(&ctx, &ln, &a, &a, NULL, 0), TB_OK); /* in place */
    tb_layernorm_free(&ln);
    ck_assert_int_eq(tb_gelu_forward(&ctx, TB_GELU_TANH, &a, &a), TB_OK);
}
END_TEST

START_TEST(batchnorm_backward_needs_the_forward_mask)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    tb_batchnorm bn;
    ck_assert_int_eq(tb_batchnorm_init(&ctx, &bn, 3, 1e-5f, 0.1f, TB_NORM_SCALE | TB_NORM_SHIFT),
                     TB_OK);
    float x[5 * 3], y[5 * 3], dx[5 * 3];
    tbt_fill_uniform(x, 15, -1, 1, 4);
    uint8_t m1[5] = {1, 1, 0, 1, 0}, m2[5] = {1, 0, 1, 1, 0}; /* same count, other rows */
    size_t cb;
    ck_assert_int_eq(tb_batchnorm_cache_size(3, &cb), TB_OK);
    void *cache = tbt_alloc(cb);
    tb_tensor xt = tb_tensor_2d(x, 5, 3), yt = tb_tensor_2d(y, 5, 3), dxt = tb_tensor_2d(dx, 5, 3);
    ck_assert_int_eq(tb_batchnorm_forward(&ctx, &bn, TB_MODE_TRAINING, &xt, m1, &yt, cache, cb),
                     TB_OK);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, m2, &yt, cache, cb, &dxt), TB_ERR_STATE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, NULL, &yt, cache, cb, &dxt), TB_ERR_STATE);
    ck_assert_int_eq(tb_batchnorm_backward(&ctx, &bn, &xt, m1, &yt, cache, cb, &dxt), TB_OK);
    free(cache);
    tb_batchnorm_free(&bn);
}
END_TEST

/* Every block's cache goes through one header check (src/core/cache_header.c):
 * the same statuses, and details that name the forward call, the size
 * query and the field that differs. */
static void expect_detail(const tb_ctx *ctx, tb_status got, tb_status want, const char *a,
                          const char *b)
{
    ck_assert_msg(got == want, "got %s, expected %s (%s)", tb_strerror(got), tb_strerror(want),
                  tb_ctx_error(ctx));
    ck_assert_msg(strstr(tb_ctx_error(ctx), a) && (!b || strstr(tb_ctx_error(ctx), b)),
                  "detail '%s' lacks '%s' or '%s'", tb_ctx_error(ctx), a, b ? b : "");
}

START_TEST(cache_headers_are_checked_alike)
{
    tb_ctx ctx;
    tbt_ctx_init(&ctx, 1);
    enum { R = 6, C = 4 };
    float x[R * C], y[R * C], dx[R * C];
    tbt_fill_uniform(x, R * C, -1, 1, 3);
    tb_tensor xt = tb_tensor_2d(x, R, C), yt = tb_tensor_2d(y, R, C), dxt = tb_tensor_2d(dx, R, C);
    tb_tensor x5 = tb_tensor_2d(x, R - 1, C), y5 = tb_tensor_2d(y, R - 1, C);
    tb_tensor dx5 = tb_tensor_2d(dx, R - 1, C);
    size_t ln_bytes, ce_bytes;
    CHECK_OK(ctx, tb_layernorm_cache_size(R, &ln_bytes));
    CHECK_OK(ctx, tb_cross_entropy_cache_size(R, &ce_bytes));
    const size_t big = ln_bytes > ce_bytes ? ln_bytes : ce_bytes;
    unsigned char *cache = tbt_alloc(big + 16);
    memset(cache, 0, big + 16);
    tb_layernorm ln;
    CHECK_OK(ctx, tb_layernorm_init(&ctx, &ln, C, 1e-5f, TB_NORM_SCALE | TB_NORM_SHIFT));
    /* LayerNorm: missing, too small, misaligned, never filled, other rows. */
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, NULL, ln_bytes, &dxt),
                  TB_ERR_NULL_ARG, "cache must not be NULL", "tb_layernorm_forward");
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes - 1, &dxt),
                  TB_ERR_BUFFER_TOO_SMALL, "rows = 6", "tb_layernorm_cache_size()");
    expect_detail(&ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, ln_bytes - 1),
                  TB_ERR_BUFFER_TOO_SMALL, "rows = 6", "tb_layernorm_cache_size()");
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache + 2, ln_bytes, &dxt),
                  TB_ERR_INVALID_ARG, "not aligned for float", NULL);
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes, &dxt),
                  TB_ERR_STATE, "not filled by tb_layernorm_forward", "another block's");
    CHECK_OK(ctx, tb_layernorm_forward(&ctx, &ln, &xt, &yt, cache, ln_bytes));
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &x5, &y5, cache, ln_bytes, &dx5),
                  TB_ERR_STATE, "filled with rows = 6", "this call has 5");
    /* A LayerNorm cache is not an RMSNorm one (the same layout, another magic). */
    tb_rmsnorm rn;
    CHECK_OK(ctx, tb_rmsnorm_init(&ctx, &rn, C, 1e-5f, TB_NORM_SCALE));
    expect_detail(&ctx, tb_rmsnorm_backward(&ctx, &rn, &xt, &yt, cache, ln_bytes, &dxt),
                  TB_ERR_STATE, "not filled by tb_rmsnorm_forward", NULL);
    CHECK_OK(ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes, &dxt));
    /* Cross-entropy: the same checks and words. */
    const int32_t tg[R] = {0, 1, 2, 3, 0, 1};
    float loss;
    expect_detail(&ctx, tb_cross_entropy_backward(&ctx, NULL, &xt, tg, R, 1.0f, NULL, ce_bytes,
                                                  &dxt),
                  TB_ERR_NULL_ARG, "cache must not be NULL", "tb_cross_entropy_forward");
    expect_detail(&ctx, tb_cross_entropy_forward(&ctx, NULL, &xt, tg, R, &loss, cache,
                                                 ce_bytes - 1),
                  TB_ERR_BUFFER_TOO_SMALL, "rows = 6", "tb_cross_entropy_cache_size()");
    expect_detail(&ctx, tb_cross_entropy_backward(&ctx, NULL, &xt, tg, R, 1.0f, cache, ce_bytes,
                                                  &dxt),
                  TB_ERR_STATE, "not filled by tb_cross_entropy_forward", "another block's");
    CHECK_OK(ctx, tb_cross_entropy_forward(&ctx, NULL, &xt, tg, R, &loss, cache, ce_bytes));
    expect_detail(&ctx, tb_cross_entropy_backward(&ctx, NULL, &x5, tg, R - 1, 1.0f, cache,
                                                  ce_bytes, &dx5),
                  TB_ERR_STATE, "filled with rows = 6", "this call has 5");
    expect_detail(&ctx, tb_layernorm_backward(&ctx, &ln, &xt, &yt, cache, ln_bytes, &dxt),
                  TB_ERR_STATE, "not filled by tb_layernorm_forward", NULL);
    tb_rmsnorm_free(&rn);
    tb_layernorm_free(&ln);
    free(cache);
}
END_TEST

Suite *suite_blocks(void)
{
    Suite *s = suite_create("blocks");
    TCase *tc = tcase_create("errors_and_edges");
    tcase_add_test(tc, linear_rejects_bad_input);
    tcase_add_test(tc, linear_3d_input_and_no_bias);
    tcase_add_test(tc, embedding_rejects_bad_ids);
    tcase_add_test(tc, softmax_edge_cases);
    tcase_add_test(tc, cross_entropy_errors_and_all_ignored);
    tcase_add_test(tc, dropout_errors_and_modes);
    tcase_add_test(tc, elementwise_errors);
    tcase_add_test(tc, partial_overlap_is_rejected);
    tcase_add_test(tc, batchnorm_backward_needs_the_forward_mask);
    tcase_add_test(tc, cache_headers_are_checked_alike);
    suite_add_tcase(s, tc);
    return s;
}
